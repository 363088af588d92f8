//! `medrelay-client`: a command-line medrelay client over the SDK's transport.
//!
//! The device's keys, sessions and profile live in one encrypted key store file inside the
//! home directory (`--home`, `MEDRELAY_HOME`, default `$HOME/.medrelay`, created mode 0700).
//! Its passphrase comes from `MEDRELAY_PASSPHRASE`, or a prompt when stdin is a terminal.
//! Output is JSON (one object per line) on stdout; every failure is one line on stderr and a
//! non-zero exit status.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use medrelay_proto::{
    ClientMessageId, Conversation, ConversationId, DeviceLabel, ErrorCode, Handle, InviteCode,
    InviteSpec, Role,
};
use medrelay_sdk::transport::{
    Client, ClientOptions, Incoming, ReceivedMessage, ServerConfig, ServerUrl, TransportError,
};
use medrelay_sdk::{FileKeyStore, KdfParams, KeyStoreError};
use rand_core::OsRng;
use serde_json::{json, Value};

/// The key store's file name inside the home directory.
const KEYSTORE_FILE: &str = "keystore.mrks";
/// Test-only: cheap Argon2 parameters when creating a key store (never for real use).
const WEAK_KDF_ENV: &str = "MEDRELAY_TEST_WEAK_KDF";
const PASSPHRASE_ENV: &str = "MEDRELAY_PASSPHRASE";
/// After the first message, `recv` stops once no new one came for this long.
const RECV_IDLE: Duration = Duration::from_secs(1);

type Store = FileKeyStore<OsRng>;

#[derive(Parser, Debug)]
#[command(
    name = "medrelay-client",
    version,
    about = "medrelay end-to-end encrypted messaging client"
)]
struct Cli {
    /// Directory holding this device's encrypted key store.
    #[arg(long, env = "MEDRELAY_HOME", global = true)]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enrol this device with an invite code (creates the key store).
    Enroll(EnrollArgs),
    /// Show who this device is.
    Whoami,
    /// Create an invite for a new user, or for another device of your own account.
    Invite(InviteArgs),
    /// Send a text message.
    Send(SendArgs),
    /// Print waiting messages as JSON lines and acknowledge them.
    Recv(RecvArgs),
    /// List your conversations as JSON lines.
    Conversations,
    /// Show the safety numbers with a user's devices.
    SafetyNumber(SafetyArgs),
}

#[derive(Args, Debug)]
struct EnrollArgs {
    /// Server address, wss://HOST:PORT.
    #[arg(long)]
    server: String,
    /// The server's CA certificate (PEM), e.g. DATA/certs/ca.pem.
    #[arg(long)]
    ca: PathBuf,
    /// The invite code.
    #[arg(long)]
    code: String,
    /// A label for this device (no personal information).
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleArg {
    Patient,
    Staff,
    Admin,
}

#[derive(Args, Debug)]
struct InviteArgs {
    /// The new user's role.
    #[arg(
        long,
        value_enum,
        required_unless_present = "device",
        conflicts_with = "device"
    )]
    role: Option<RoleArg>,
    /// The new user's handle.
    #[arg(long, required_unless_present = "device", conflicts_with = "device")]
    handle: Option<String>,
    /// Invite another device of your own account instead.
    #[arg(long)]
    device: bool,
    /// Print {"code", "expires_at_ms"} instead of the bare code.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SendArgs {
    /// The recipient's handle (opens or creates your 1:1 conversation).
    #[arg(
        long,
        required_unless_present = "conversation",
        conflicts_with = "conversation"
    )]
    to: Option<String>,
    /// A conversation id (hex).
    #[arg(long)]
    conversation: Option<String>,
    /// A client message id (32 hex digits) to make a scripted retry idempotent.
    #[arg(long)]
    client_message_id: Option<String>,
    /// The text.
    text: String,
}

#[derive(Args, Debug)]
struct RecvArgs {
    /// Seconds to wait for the first message.
    #[arg(long, default_value_t = 5)]
    wait: u64,
}

#[derive(Args, Debug)]
struct SafetyArgs {
    /// The other user's handle.
    #[arg(long)]
    handle: String,
    /// Print JSON lines {"device_id", "safety_number"}.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("medrelay-client: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("medrelay-client: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// One line: the error chain, plus what to do for a server refusal.
fn describe(error: &anyhow::Error) -> String {
    let mut line = format!("{error:#}");
    if let Some(TransportError::Server(wire)) = error.downcast_ref::<TransportError>() {
        if let Some(hint) = hint(wire.code) {
            line.push_str(" — ");
            line.push_str(hint);
        }
    }
    line.replace('\n', " ")
}

fn hint(code: ErrorCode) -> Option<&'static str> {
    Some(match code {
        ErrorCode::NotFound => "check the handle or conversation id",
        ErrorCode::AuthFailed => "if this persists, the device was revoked and must enrol again",
        ErrorCode::LoggedOff => "run the command again to log in",
        ErrorCode::RateLimited | ErrorCode::Internal | ErrorCode::Unavailable => "try again later",
        ErrorCode::LockedOut => "wait, then try again",
        ErrorCode::UnsupportedVersion => "upgrade medrelay-client",
        _ => return None,
    })
}

async fn run(cli: Cli) -> Result<()> {
    let home = home_dir(cli.home)?;
    match cli.command {
        Command::Enroll(args) => enroll(&home, args).await,
        Command::Whoami => {
            let mut client = connect(&home).await?;
            let me = whoami_json(&mut client).await?;
            print_line(&me)
        }
        Command::Invite(args) => invite(&home, args).await,
        Command::Send(args) => send(&home, args).await,
        Command::Recv(args) => recv(&home, args).await,
        Command::Conversations => {
            let mut client = connect(&home).await?;
            for c in client.list_conversations().await? {
                print_line(&conversation_json(&c))?;
            }
            Ok(())
        }
        Command::SafetyNumber(args) => safety_number(&home, args).await,
    }
}

fn home_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(home) = flag.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(home);
    }
    let user_home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("no home directory: pass --home DIR or set MEDRELAY_HOME"))?;
    Ok(PathBuf::from(user_home).join(".medrelay"))
}

fn keystore_path(home: &Path) -> PathBuf {
    home.join(KEYSTORE_FILE)
}

fn passphrase(confirm: bool) -> Result<zeroize::Zeroizing<String>> {
    if let Some(p) = std::env::var_os(PASSPHRASE_ENV) {
        let p = p
            .into_string()
            .map_err(|_| anyhow!("{PASSPHRASE_ENV} is not valid UTF-8"))?;
        if p.is_empty() {
            bail!("{PASSPHRASE_ENV} is empty; set it to the key store's passphrase");
        }
        return Ok(zeroize::Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no passphrase for the key store: set {PASSPHRASE_ENV} (stdin is not a terminal, so \
             it cannot be prompted for)"
        );
    }
    let first = zeroize::Zeroizing::new(
        rpassword::prompt_password("Key store passphrase: ").context("reading the passphrase")?,
    );
    if first.is_empty() {
        bail!("the passphrase must not be empty");
    }
    if confirm {
        let again = zeroize::Zeroizing::new(
            rpassword::prompt_password("Repeat the passphrase: ")
                .context("reading the passphrase")?,
        );
        if *again != *first {
            bail!("the two passphrases differ; nothing was created");
        }
    }
    Ok(first)
}

fn create_home(home: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(home)
        .with_context(|| format!("creating the home directory {}", home.display()))
}

fn open_store(home: &Path) -> Result<Store> {
    let path = keystore_path(home);
    let pass = passphrase(false)?;
    FileKeyStore::open(&path, pass.as_bytes(), OsRng).map_err(|e| match e {
        KeyStoreError::NotFound => anyhow!(
            "no key store at {}: enrol this device first (medrelay-client enroll ...) or pass the right --home",
            path.display()
        ),
        KeyStoreError::WrongPassphraseOrCorrupt => anyhow!(
            "cannot open {}: wrong passphrase ({PASSPHRASE_ENV}), or the file is corrupt",
            path.display()
        ),
        other => anyhow!("cannot open {}: {other}", path.display()),
    })
}

async fn connect(home: &Path) -> Result<Client<Store>> {
    let store = open_store(home)?;
    Ok(Client::connect(ClientOptions::default(), store).await?)
}

fn print_line(value: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}").context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Patient => "patient",
        Role::Staff => "staff",
        Role::Admin => "admin",
    }
}

async fn whoami_json(client: &mut Client<Store>) -> Result<Value> {
    let me = client.whoami().await?;
    Ok(json!({
        "org_id": me.org_id.to_string(),
        "org": me.org_name,
        "user_id": me.user_id.to_string(),
        "device_id": me.device_id.to_string(),
        "handle": me.handle.as_str(),
        "role": role_name(me.role),
        "server": client.profile().server.to_string(),
    }))
}

async fn enroll(home: &Path, args: EnrollArgs) -> Result<()> {
    let url = ServerUrl::parse(&args.server)?;
    let ca_pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("reading the CA certificate {}", args.ca.display()))?;
    let code =
        InviteCode::new(args.code.trim()).map_err(|e| anyhow!("invalid invite code: {e}"))?;
    let label = DeviceLabel::new(args.label).map_err(|e| anyhow!("invalid --label: {e}"))?;
    let path = keystore_path(home);
    if path.exists() {
        bail!(
            "{} already holds an enrolled device; use another --home for another device",
            path.display()
        );
    }
    // Check the CA before creating anything.
    medrelay_sdk::transport::tls::client_config(ca_pem.as_bytes())?;
    create_home(home)?;
    let pass = passphrase(true)?;
    let params = if std::env::var(WEAK_KDF_ENV).is_ok_and(|v| v == "1") {
        KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        }
    } else {
        KdfParams::OWASP
    };
    let store = FileKeyStore::create_with_params(&path, pass.as_bytes(), params, OsRng)
        .with_context(|| format!("creating the key store {}", path.display()))?;
    let server = ServerConfig { url, ca_pem };
    let result = Client::enroll(server, ClientOptions::default(), store, code, label).await;
    let mut client = match result {
        Ok(c) => c,
        Err(e) => {
            // Nothing was enrolled: leave no half-made key store behind.
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
    };
    let me = whoami_json(&mut client).await?;
    print_line(&me)
}

async fn invite(home: &Path, args: InviteArgs) -> Result<()> {
    let spec = if args.device {
        InviteSpec::NewDevice
    } else {
        let role = match args.role {
            Some(RoleArg::Patient) => Role::Patient,
            Some(RoleArg::Staff) => Role::Staff,
            Some(RoleArg::Admin) => Role::Admin,
            None => bail!("--role is required (or --device)"),
        };
        let handle = args
            .handle
            .ok_or_else(|| anyhow!("--handle is required (or --device)"))?;
        let handle = Handle::new(handle).map_err(|e| anyhow!("invalid --handle: {e}"))?;
        InviteSpec::NewUser { role, handle }
    };
    let mut client = connect(home).await?;
    let created = client.create_invite(spec).await?;
    if args.json {
        print_line(&json!({
            "code": created.code.expose(),
            "expires_at_ms": created.expires_at_ms,
            "expires_at": rfc3339(created.expires_at_ms),
        }))
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", created.code.expose()).context("writing to stdout")?;
        out.flush().context("writing to stdout")
    }
}

async fn send(home: &Path, args: SendArgs) -> Result<()> {
    let client_message_id = args
        .client_message_id
        .as_deref()
        .map(|hex| {
            hex.parse::<ClientMessageId>()
                .map_err(|_| anyhow!("--client-message-id must be 32 hexadecimal digits"))
        })
        .transpose()?;
    let to = args
        .to
        .map(|h| Handle::new(h).map_err(|e| anyhow!("invalid --to handle: {e}")))
        .transpose()?;
    let conversation = args
        .conversation
        .as_deref()
        .map(|id| {
            id.parse::<ConversationId>().map_err(|_| {
                anyhow!("--conversation must be a conversation id (32 hexadecimal digits)")
            })
        })
        .transpose()?;
    let mut client = connect(home).await?;
    let conversation_id = match (to, conversation) {
        (_, Some(id)) => id,
        (Some(handle), None) => client.open_conversation(&[handle]).await?.id,
        (None, None) => bail!("give --to HANDLE or --conversation ID"),
    };
    let receipt = client
        .send_text(conversation_id, &args.text, client_message_id)
        .await?;
    print_line(&json!({
        "message_id": receipt.message_id.to_string(),
        "conversation_id": receipt.conversation_id.to_string(),
        "client_message_id": receipt.client_message_id.to_string(),
        "duplicate": receipt.duplicate,
        "server_time_ms": receipt.server_time_ms,
    }))
}

fn rfc3339(ms: u64) -> Option<String> {
    let nanos = i128::from(ms).checked_mul(1_000_000)?;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn message_json(m: &ReceivedMessage) -> Value {
    json!({
        "conversation_id": m.conversation_id.to_string(),
        "from": m.from_handle.as_ref().map(|h| h.as_str()),
        "from_user_id": m.sender_user_id.to_string(),
        "from_device_id": m.sender_device_id.to_string(),
        "message_id": m.message_id.to_string(),
        "text": m.text,
        "sent_at": rfc3339(m.sent_at_ms),
        "sent_at_ms": m.sent_at_ms,
        "server_time_ms": m.server_time_ms,
    })
}

async fn recv(home: &Path, args: RecvArgs) -> Result<()> {
    let mut client = connect(home).await?;
    let first_wait = Duration::from_secs(args.wait);
    let mut got_any = false;
    loop {
        let wait = if got_any { RECV_IDLE } else { first_wait };
        let Some(incoming) = client.recv(wait).await? else {
            return Ok(());
        };
        got_any = true;
        match incoming {
            Incoming::Message(message) => {
                print_line(&message_json(&message))?;
                client.ack(&[message.message_id]).await?;
            }
            Incoming::Undecryptable(u) => {
                eprintln!(
                    "medrelay-client: message {} in conversation {} could not be decrypted; it was \
                     acknowledged and dropped (ask the sender to send it again)",
                    u.message_id, u.conversation_id
                );
            }
        }
    }
}

fn conversation_json(c: &Conversation) -> Value {
    json!({
        "id": c.id.to_string(),
        "members": c.members.iter().map(|m| json!({
            "user_id": m.user_id.to_string(),
            "handle": m.handle.as_str(),
            "role": role_name(m.role),
            "devices": m.devices.len(),
        })).collect::<Vec<_>>(),
    })
}

async fn safety_number(home: &Path, args: SafetyArgs) -> Result<()> {
    let handle = Handle::new(args.handle).map_err(|e| anyhow!("invalid --handle: {e}"))?;
    let mut client = connect(home).await?;
    let conversation = client
        .open_conversation(std::slice::from_ref(&handle))
        .await?;
    let user = conversation
        .members
        .iter()
        .find(|m| m.handle == handle)
        .map(|m| m.user_id)
        .ok_or_else(|| anyhow!("the server's answer does not list that user"))?;
    let numbers = client.safety_numbers(user).await?;
    if numbers.is_empty() {
        bail!("that user has no enrolled device to compare with");
    }
    for n in numbers {
        if args.json {
            print_line(&json!({
                "device_id": n.device_id.to_string(),
                "safety_number": n.number.to_string(),
            }))?;
        } else {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", n.number).context("writing to stdout")?;
        }
    }
    Ok(())
}
