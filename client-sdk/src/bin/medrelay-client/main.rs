//! `medrelay-client`: a command-line medrelay client over the SDK's transport.
//!
//! The device's keys, sessions and profile live in one encrypted key store file inside the
//! home directory (`--home`, `MEDRELAY_HOME`, default `$HOME/.medrelay`, created mode 0700).
//! Its passphrase comes from `MEDRELAY_PASSPHRASE`, or a prompt when stdin is a terminal.
//! Staff and admins also log in as a person: the account password comes from
//! `MEDRELAY_PASSWORD` (a new one, for `password`, from `MEDRELAY_NEW_PASSWORD`), or a prompt
//! when stdin is a terminal. Output is JSON (one object per line) on stdout; every failure is
//! one line on stderr, with a hint where there is one, and exit status 1.

mod admin;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use medrelay_proto::limits::{
    MAX_BREAK_GLASS_MS, MAX_IDLE_TIMEOUT_MS, MAX_SESSION_LIFETIME_MS, MIN_IDLE_TIMEOUT_MS,
};
use medrelay_proto::{
    Cidr, ClientMessageId, ConsentState, ConsentText, Conversation, ConversationId, DeviceId,
    DeviceLabel, ErrorCode, Handle, InviteCode, InviteSpec, Password, Permission, Reason,
    RecoveryCode, Role, RoleAllowList, SecondFactor, Team, TeamId, TeamName, TotpCode, UserId,
    UserInfo,
};
use medrelay_sdk::transport::{
    Client, ClientOptions, Incoming, ReceivedMessage, ServerConfig, ServerUrl, TransportError,
};
use medrelay_sdk::{FileKeyStore, KdfParams, KeyStoreError};
use rand_core::OsRng;
use serde_json::{json, Value};

/// The key store's file name inside the home directory.
const KEYSTORE_FILE: &str = "keystore.mrks";
/// Test-only: cheap Argon2 parameters when creating a key store (never for real use). Honoured
/// by debug builds only: a release binary always uses [`KdfParams::OWASP`].
const WEAK_KDF_ENV: &str = "MEDRELAY_TEST_WEAK_KDF";
const PASSPHRASE_ENV: &str = "MEDRELAY_PASSPHRASE";
/// The account password of a staff member or admin (`setup-credentials`, `login`, and the
/// current one for `password`).
const PASSWORD_ENV: &str = "MEDRELAY_PASSWORD";
/// The new password for `password`.
const NEW_PASSWORD_ENV: &str = "MEDRELAY_NEW_PASSWORD";
/// What to run to log in, for hints.
const LOGIN_HINT: &str = "medrelay-client login --totp CODE";
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
    /// Staff and admins, once after enrolment: set your password (MEDRELAY_PASSWORD) and get
    /// your authenticator secret and recovery codes, shown this once.
    SetupCredentials,
    /// Staff and admins: log in on this device with your password (MEDRELAY_PASSWORD) and an
    /// authenticator or recovery code.
    Login(LoginArgs),
    /// End this device's login session.
    Logout,
    /// Change your password: the current one from MEDRELAY_PASSWORD, the new one from
    /// MEDRELAY_NEW_PASSWORD.
    Password,
    /// Patients: show, accept or withdraw the clinic's consent to messaging.
    Consent {
        #[command(subcommand)]
        action: ConsentAction,
    },
    /// List the organisation's users as JSON lines (needs manage_staff or manage_care_teams).
    Users,
    /// List devices as JSON lines: yours, or another user's with --handle.
    Devices(DevicesArgs),
    /// Revoke a device at once (yours, or anyone's with manage_staff).
    Revoke(RevokeArgs),
    /// Deactivate a user: every device revoked, no further enrolment.
    Deactivate(DeactivateArgs),
    /// Replace the permissions granted to a user beyond their role's.
    Permissions(PermissionsArgs),
    /// Create a care team, or set its members.
    Team {
        #[command(subcommand)]
        action: TeamAction,
    },
    /// List the care teams as JSON lines.
    Teams,
    /// Replace who cares for a patient (staff directly and teams).
    Assign(AssignArgs),
    /// Show or change the organisation's policy: session timeouts, allow-lists, consent text.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Grant a staff member emergency access to a patient's conversation.
    BreakGlass(BreakGlassArgs),
    /// The clinic's archive key this device seals every message to: show its fingerprint, or
    /// accept a new one after checking it with the clinic's privacy officer.
    ArchiveKey {
        #[command(subcommand)]
        action: ArchiveKeyAction,
    },
    /// Admins: retention and legal hold, the org archive, the sweeper, the access log.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("factor").required(true).args(["totp", "recovery_code"])))]
struct LoginArgs {
    /// The 6-digit code your authenticator app shows (each code works once).
    #[arg(long, value_name = "CODE")]
    totp: Option<String>,
    /// One of your recovery codes instead (each works once).
    #[arg(long, value_name = "CODE")]
    recovery_code: Option<String>,
}

#[derive(Subcommand, Debug)]
enum ConsentAction {
    /// Print {"required", "text"}: whether you must accept, and the text to read.
    Show,
    /// Accept the consent text (the one `consent show` prints).
    Accept,
    /// Withdraw your consent: staff can no longer message you.
    Withdraw,
}

#[derive(Args, Debug)]
struct DevicesArgs {
    /// Another user's handle (needs manage_staff); default: your own devices.
    #[arg(long)]
    handle: Option<String>,
}

#[derive(Args, Debug)]
struct RevokeArgs {
    /// The device id (32 hexadecimal digits, from `devices`).
    device_id: String,
}

#[derive(Args, Debug)]
struct DeactivateArgs {
    /// The user's handle.
    #[arg(long)]
    handle: String,
}

#[derive(Args, Debug)]
struct PermissionsArgs {
    /// The user's handle.
    #[arg(long)]
    handle: String,
    /// Comma-separated permissions to grant beyond the role's (an empty string clears them):
    /// invite_patients, message_assigned_patients, see_all_patient_conversations,
    /// manage_staff, change_policy, read_audit_log, export_audit_log, privacy_officer,
    /// manage_care_teams, grant_break_glass.
    #[arg(long, value_name = "P1,P2,...", allow_hyphen_values = true)]
    grant: String,
}

#[derive(Subcommand, Debug)]
enum TeamAction {
    /// Create a care team with no members; prints {"team_id", "name", "staff"}.
    Create(TeamCreateArgs),
    /// Replace a team's staff; prints {"team_id", "name", "staff"}.
    Members(TeamMembersArgs),
}

#[derive(Args, Debug)]
struct TeamCreateArgs {
    /// The team's name (1 to 64 characters, one line).
    name: String,
}

#[derive(Args, Debug)]
struct TeamMembersArgs {
    /// The team id (from `teams` or `team create`).
    #[arg(long)]
    team: String,
    /// Comma-separated staff handles (an empty string empties the team).
    #[arg(long, value_name = "H1,H2,...")]
    staff: String,
}

#[derive(Args, Debug)]
struct AssignArgs {
    /// The patient's handle.
    #[arg(long)]
    patient: String,
    /// Comma-separated staff handles assigned directly.
    #[arg(long, value_name = "H1,H2,...", default_value = "")]
    staff: String,
    /// Comma-separated team ids assigned.
    #[arg(long, value_name = "TEAM_ID,...", default_value = "")]
    team: String,
}

#[derive(Subcommand, Debug)]
enum ArchiveKeyAction {
    /// Print the archive key the server announces, its fingerprint, and whether this device
    /// trusts it.
    Show,
    /// Trust the archive key the server announces now (after checking its fingerprint).
    Accept,
}

#[derive(Subcommand, Debug)]
enum PolicyAction {
    /// Print the policy: session timeouts, allow-lists per role, consent text.
    Show,
    /// Set the staff and admin session timeouts.
    Session(SessionArgs),
    /// Replace one role's IP allow-list (no --cidr allows every address).
    AllowList(AllowListArgs),
    /// Set the consent text patients must accept.
    ConsentText(ConsentTextArgs),
}

#[derive(Args, Debug)]
struct SessionArgs {
    /// Seconds without activity before a session is logged off (1 to 86400).
    #[arg(long, value_name = "SECS")]
    idle_timeout: u64,
    /// Seconds after login when a session ends whatever the activity (the idle timeout to
    /// 604800).
    #[arg(long, value_name = "SECS")]
    session_lifetime: u64,
}

#[derive(Args, Debug)]
struct AllowListArgs {
    /// The role the list applies to.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// An allowed network, e.g. 10.0.0.0/8 or 2001:db8::/32 (repeat for more).
    #[arg(long = "cidr", value_name = "CIDR")]
    cidrs: Vec<String>,
}

#[derive(Args, Debug)]
struct ConsentTextArgs {
    /// The text (line breaks allowed; up to 16 KiB).
    text: String,
}

#[derive(Args, Debug)]
struct BreakGlassArgs {
    /// The staff member who gets access.
    #[arg(long)]
    staff: String,
    /// The patient whose conversation they get access to.
    #[arg(long)]
    patient: String,
    /// Why (one line, up to 500 characters; goes to the access log).
    #[arg(long)]
    reason: String,
    /// For how many minutes (1 to 1440).
    #[arg(long)]
    minutes: u64,
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
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

/// `--help` and `--version` print as usual; a usage error is one line on stderr, exit 1.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let text = error.render().to_string();
    if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let usage = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("Usage:"))
            .unwrap_or_default();
        eprintln!("medrelay-client: a subcommand is missing ({usage}) — see COMMAND --help");
        return ExitCode::FAILURE;
    }
    let mut parts = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.trim_start_matches("error: "));
        }
    }
    eprintln!(
        "medrelay-client: {} — see medrelay-client --help, or COMMAND --help",
        parts.join(" ")
    );
    ExitCode::FAILURE
}

/// One line: the error chain, plus what to do for a server refusal.
fn describe(error: &anyhow::Error) -> String {
    let mut line = format!("{error:#}");
    if let Some(transport) = error.downcast_ref::<TransportError>() {
        if let Some(code) = transport.code() {
            if !line.contains(code.as_str()) {
                line.push_str(&format!(" ({})", code.as_str()));
            }
        }
        if let Some(hint) = hint(transport) {
            line.push_str(" — ");
            line.push_str(&hint);
        }
    }
    line.replace(['\n', '\r'], " ")
}

fn hint(error: &TransportError) -> Option<String> {
    if let TransportError::ArchiveKeyChanged { .. } = error {
        return Some(
            "compare it with the fingerprint your privacy officer gives you (medrelay-client \
             archive-key show), then: medrelay-client archive-key accept"
                .into(),
        );
    }
    if let TransportError::LoginRequired {
        credentials_required: true,
    } = error
    {
        return Some(format!(
            "set up first: MEDRELAY_PASSWORD=... medrelay-client setup-credentials, then {LOGIN_HINT}"
        ));
    }
    let code = error.code()?;
    let retry_after_s = error
        .wire_error()
        .map(|e| e.retry_after_ms.div_ceil(1000))
        .unwrap_or(0);
    Some(match code {
        ErrorCode::Unauthenticated => format!("log in first: {LOGIN_HINT}"),
        ErrorCode::LoggedOff => format!("you were logged off; log in again: {LOGIN_HINT}"),
        ErrorCode::LockedOut if retry_after_s > 0 => format!(
            "the account is locked after repeated failures; try again in {retry_after_s} seconds \
             (retry_after {retry_after_s} s)"
        ),
        ErrorCode::LockedOut => {
            "the account is locked after repeated failures; wait, then try again".into()
        }
        ErrorCode::NotFound => "check the handle, id or conversation id".into(),
        ErrorCode::AuthFailed => {
            "if this persists, the device was revoked and must enrol again".into()
        }
        ErrorCode::RateLimited if retry_after_s > 0 => {
            format!("try again in {retry_after_s} seconds")
        }
        ErrorCode::RateLimited | ErrorCode::Internal | ErrorCode::Unavailable => {
            "try again later".into()
        }
        ErrorCode::UnsupportedVersion => "upgrade medrelay-client".into(),
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
        Command::SetupCredentials => setup_credentials(&home).await,
        Command::Login(args) => login(&home, args).await,
        Command::Logout => {
            let mut client = connect(&home).await?;
            client.logout().await?;
            print_line(&json!({ "logged_out": true }))
        }
        Command::Password => change_password(&home).await,
        Command::Consent { action } => consent(&home, action).await,
        Command::Users => {
            let mut client = connect(&home).await?;
            for user in client.list_users().await? {
                print_line(&user_json(&user))?;
            }
            Ok(())
        }
        Command::Devices(args) => devices(&home, args).await,
        Command::Revoke(args) => {
            let device_id = args.device_id.trim().parse::<DeviceId>().map_err(|_| {
                anyhow!("DEVICE_ID must be a device id (32 hexadecimal digits, from `devices`)")
            })?;
            let mut client = connect(&home).await?;
            client.revoke_device(device_id).await?;
            print_line(&json!({ "revoked": device_id.to_string() }))
        }
        Command::Deactivate(args) => {
            let handle = parse_handle("--handle", &args.handle)?;
            let mut client = connect(&home).await?;
            let directory = Directory::load(&mut client).await?;
            let user_id = directory.user("--handle", &handle)?.user_id;
            client.deactivate_user(user_id).await?;
            print_line(&json!({ "deactivated": user_id.to_string() }))
        }
        Command::Permissions(args) => permissions(&home, args).await,
        Command::Team { action } => team(&home, action).await,
        Command::Teams => teams(&home).await,
        Command::Assign(args) => assign(&home, args).await,
        Command::Policy { action } => policy(&home, action).await,
        Command::BreakGlass(args) => break_glass(&home, args).await,
        Command::Admin { command } => admin::run(&home, command).await,
        Command::ArchiveKey { action } => {
            let mut client = connect(&home).await?;
            match action {
                ArchiveKeyAction::Show => match client.archive_key().await? {
                    Some((key, fingerprint, trusted)) => print_line(&json!({
                        "archive": true,
                        "public_key": hex::encode(key.as_bytes()),
                        "fingerprint": fingerprint,
                        "trusted": trusted,
                    })),
                    None => print_line(&json!({ "archive": false })),
                },
                ArchiveKeyAction::Accept => {
                    let fingerprint = client.accept_archive_key().await?;
                    print_line(
                        &json!({ "archive": fingerprint.is_some(), "fingerprint": fingerprint }),
                    )
                }
            }
        }
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
    FileKeyStore::open(&path, pass.as_bytes(), OsRng).map_err(|e| store_error(&path, e))
}

/// One clear line for a key store that could not be opened or created.
fn store_error(path: &Path, error: KeyStoreError) -> anyhow::Error {
    match error {
        KeyStoreError::InUse => anyhow!(
            "another medrelay-client is using this profile ({}); wait for it to finish",
            path.parent().unwrap_or(path).display()
        ),
        KeyStoreError::NotFound => anyhow!(
            "no key store at {}: enrol this device first (medrelay-client enroll ...) or pass the right --home",
            path.display()
        ),
        KeyStoreError::WrongPassphraseOrCorrupt => anyhow!(
            "cannot open {}: wrong passphrase ({PASSPHRASE_ENV}), or the file is corrupt",
            path.display()
        ),
        KeyStoreError::UnsupportedVersion(v) => anyhow!(
            "cannot open {}: it was written by an incompatible medrelay-client (key store format {v}); \
             move it aside and enrol this device again",
            path.display()
        ),
        other => anyhow!("cannot open {}: {other}", path.display()),
    }
}

/// The Argon2 parameters for a new key store: the cheap test ones only when asked for and
/// in a debug build.
fn enroll_kdf_params(weak_requested: bool, debug_build: bool) -> KdfParams {
    if weak_requested && debug_build {
        KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        }
    } else {
        KdfParams::OWASP
    }
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

fn consent_name(state: ConsentState) -> &'static str {
    match state {
        ConsentState::NotApplicable => "not_applicable",
        ConsentState::Pending => "pending",
        ConsentState::Accepted => "accepted",
        ConsentState::Withdrawn => "withdrawn",
    }
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Patient => Role::Patient,
            RoleArg::Staff => Role::Staff,
            RoleArg::Admin => Role::Admin,
        }
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
    let params = enroll_kdf_params(
        std::env::var(WEAK_KDF_ENV).is_ok_and(|v| v == "1"),
        cfg!(debug_assertions),
    );
    let store = FileKeyStore::create_with_params(&path, pass.as_bytes(), params, OsRng).map_err(
        |e| match e {
            KeyStoreError::InUse => store_error(&path, e),
            other => anyhow!("creating the key store {}: {other}", path.display()),
        },
    )?;
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
            Some(role) => Role::from(role),
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
    let receipt = match client
        .send_text(conversation_id, &args.text, client_message_id)
        .await
    {
        Ok(receipt) => receipt,
        Err(error) if error.code() == Some(ErrorCode::Forbidden) && client.consent_required() => {
            bail!(
                "{error} — accept the clinic's consent first: medrelay-client consent show, then \
                 medrelay-client consent accept"
            )
        }
        Err(error) => return Err(error.into()),
    };
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
            "consent": consent_name(m.consent),
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

// ---- access control

/// A staff member's or admin's account password: from `var`, else prompted for on a
/// terminal (twice when `confirm`), checked against the password rule before anything is
/// sent.
fn account_password(var: &str, prompt: &str, confirm: bool) -> Result<Password> {
    let text = match std::env::var_os(var) {
        Some(value) => zeroize::Zeroizing::new(
            value
                .into_string()
                .map_err(|_| anyhow!("{var} is not valid UTF-8"))?,
        ),
        None => {
            if !std::io::stdin().is_terminal() {
                bail!(
                    "no password: set {var} (stdin is not a terminal, so it cannot be prompted \
                     for)"
                );
            }
            let first = zeroize::Zeroizing::new(
                rpassword::prompt_password(prompt).context("reading the password")?,
            );
            if confirm {
                let again = zeroize::Zeroizing::new(
                    rpassword::prompt_password("Repeat the password: ")
                        .context("reading the password")?,
                );
                if *again != *first {
                    bail!("the two passwords differ; nothing was changed");
                }
            }
            first
        }
    };
    Password::new(text.as_str())
        .map_err(|_| anyhow!("the password ({var}) must be 12 to 256 characters"))
}

async fn setup_credentials(home: &Path) -> Result<()> {
    let password = account_password(PASSWORD_ENV, "New password: ", true)?;
    let mut client = connect(home).await?;
    if client.profile().role == Role::Patient {
        bail!("patients sign in with their device only; setup-credentials is for staff and admins");
    }
    let setup = match client.setup_credentials(password).await {
        Ok(setup) => setup,
        Err(error) if error.code() == Some(ErrorCode::Forbidden) => {
            bail!("{error} — to change an existing password: medrelay-client password")
        }
        Err(error) => return Err(error.into()),
    };
    print_line(&json!({
        "totp_secret": setup.totp_secret.expose(),
        "otpauth_uri": setup.otpauth_uri.expose(),
        "recovery_codes": setup.recovery_codes.iter().map(|c| c.expose()).collect::<Vec<_>>(),
    }))
}

async fn login(home: &Path, args: LoginArgs) -> Result<()> {
    let second_factor = match (args.totp, args.recovery_code) {
        (Some(code), None) => SecondFactor::Totp(
            TotpCode::new(code.trim())
                .map_err(|_| anyhow!("--totp must be the 6 digits your authenticator app shows"))?,
        ),
        (None, Some(code)) => {
            SecondFactor::Recovery(RecoveryCode::new(code.trim()).map_err(|_| {
                anyhow!("--recovery-code must be one of your recovery codes (8 to 64 of a-z 0-9 -)")
            })?)
        }
        _ => bail!("give --totp CODE or --recovery-code CODE"),
    };
    let password = account_password(PASSWORD_ENV, "Password: ", false)?;
    let mut client = connect(home).await?;
    if client.profile().role == Role::Patient {
        bail!("patients sign in with their device only; login is for staff and admins");
    }
    if client.credentials_required() {
        bail!(
            "no password and authenticator are set up yet: MEDRELAY_PASSWORD=... medrelay-client \
             setup-credentials first"
        );
    }
    let session = match client.login(password, second_factor).await {
        Ok(session) => session,
        Err(error) if error.code() == Some(ErrorCode::AuthFailed) => {
            let message = error
                .wire_error()
                .map(|e| e.message.clone())
                .unwrap_or_default();
            bail!(
                "login refused: {message} (AUTH_FAILED) — check {PASSWORD_ENV}, and use a fresh \
                 authenticator code (each works once) or an unused recovery code"
            )
        }
        Err(error) => return Err(error.into()),
    };
    print_line(&json!({
        "idle_timeout_ms": session.idle_timeout_ms,
        "session_expires_at_ms": session.session_expires_at_ms,
    }))
}

async fn change_password(home: &Path) -> Result<()> {
    let current = account_password(PASSWORD_ENV, "Current password: ", false)?;
    let new = account_password(NEW_PASSWORD_ENV, "New password: ", true)?;
    let mut client = connect(home).await?;
    match client.change_password(current, new).await {
        Ok(()) => print_line(&json!({ "changed": true })),
        Err(error) if error.code() == Some(ErrorCode::AuthFailed) => bail!(
            "the current password ({PASSWORD_ENV}) is wrong (AUTH_FAILED); nothing was changed"
        ),
        Err(error) => Err(error.into()),
    }
}

async fn consent(home: &Path, action: ConsentAction) -> Result<()> {
    let mut client = connect(home).await?;
    match action {
        ConsentAction::Show => print_line(&json!({
            "required": client.consent_required(),
            "text": client.consent_text().map(ConsentText::as_str),
        })),
        ConsentAction::Accept => {
            if client.profile().role != Role::Patient {
                bail!("consent is a patient's to give");
            }
            client.accept_consent().await?;
            print_line(&json!({ "state": consent_name(ConsentState::Accepted) }))
        }
        ConsentAction::Withdraw => {
            if client.profile().role != Role::Patient {
                bail!("consent is a patient's to withdraw");
            }
            client.withdraw_consent().await?;
            print_line(&json!({ "state": consent_name(ConsentState::Withdrawn) }))
        }
    }
}

fn user_json(user: &UserInfo) -> Value {
    json!({
        "user_id": user.user_id.to_string(),
        "handle": user.handle.as_str(),
        "role": role_name(user.role),
        "active": user.active,
        "permissions": user.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "consent": consent_name(user.consent),
    })
}

fn parse_handle(flag: &str, handle: &str) -> Result<Handle> {
    Handle::new(handle.trim()).map_err(|e| anyhow!("invalid {flag} handle: {e}"))
}

/// The non-empty, trimmed entries of a comma-separated list.
fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The org's users, to turn handles into user ids and back (admins have the list).
struct Directory {
    users: Vec<UserInfo>,
}

impl Directory {
    async fn load(client: &mut Client<Store>) -> Result<Self> {
        let users = client
            .list_users()
            .await
            .context("resolving handles needs the list of users")?;
        Ok(Self { users })
    }

    /// The user with `handle`; the error names the flag, not the handle.
    fn user(&self, flag: &str, handle: &Handle) -> Result<&UserInfo> {
        self.users
            .iter()
            .find(|u| u.handle == *handle)
            .ok_or_else(|| {
                anyhow!(
                    "no user with that {flag} handle in your organisation (see medrelay-client \
                     users)"
                )
            })
    }

    /// The users named by a comma-separated list of handles, none twice.
    fn users(&self, flag: &str, list: &str) -> Result<Vec<&UserInfo>> {
        let mut out: Vec<&UserInfo> = Vec::new();
        for handle in split_list(list) {
            let user = self.user(flag, &parse_handle(flag, handle)?)?;
            if !out.iter().any(|u| u.user_id == user.user_id) {
                out.push(user);
            }
        }
        Ok(out)
    }

    /// A user's handle, or their id when unknown.
    fn handle_of(&self, id: &UserId) -> String {
        self.users
            .iter()
            .find(|u| u.user_id == *id)
            .map_or_else(|| id.to_string(), |u| u.handle.as_str().to_owned())
    }
}

async fn devices(home: &Path, args: DevicesArgs) -> Result<()> {
    let handle = args
        .handle
        .as_deref()
        .map(|h| parse_handle("--handle", h))
        .transpose()?;
    let mut client = connect(home).await?;
    let user_id = match handle {
        Some(handle) if handle != client.profile().handle => Some(
            Directory::load(&mut client)
                .await?
                .user("--handle", &handle)?
                .user_id,
        ),
        _ => None,
    };
    for d in client.list_devices(user_id).await? {
        print_line(&json!({
            "device_id": d.device_id.to_string(),
            "label": d.label.as_str(),
            "created_ms": d.created_ms,
            "last_seen_ms": d.last_seen_ms,
            "revoked": d.revoked,
        }))?;
    }
    Ok(())
}

async fn permissions(home: &Path, args: PermissionsArgs) -> Result<()> {
    let handle = parse_handle("--handle", &args.handle)?;
    let mut grants: Vec<Permission> = Vec::new();
    for name in split_list(&args.grant) {
        let permission = name.parse::<Permission>().map_err(|_| {
            anyhow!(
                "unknown permission in --grant; the permissions are: {}",
                Permission::ALL.map(Permission::as_str).join(", ")
            )
        })?;
        if !grants.contains(&permission) {
            grants.push(permission);
        }
    }
    let mut client = connect(home).await?;
    let user_id = Directory::load(&mut client)
        .await?
        .user("--handle", &handle)?
        .user_id;
    client.set_permissions(user_id, grants.clone()).await?;
    print_line(&json!({
        "user_id": user_id.to_string(),
        "grants": grants.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
    }))
}

fn parse_team_id(id: &str) -> Result<TeamId> {
    id.trim()
        .parse::<TeamId>()
        .map_err(|_| anyhow!("a team id is 32 hexadecimal digits (see medrelay-client teams)"))
}

fn team_json(team: &Team, directory: Option<&Directory>) -> Value {
    json!({
        "team_id": team.team_id.to_string(),
        "name": team.name.as_str(),
        "staff": team.staff_user_ids.iter().map(|id| match directory {
            Some(d) => d.handle_of(id),
            None => id.to_string(),
        }).collect::<Vec<_>>(),
    })
}

async fn team(home: &Path, action: TeamAction) -> Result<()> {
    match action {
        TeamAction::Create(args) => {
            let name = TeamName::new(args.name).map_err(|e| anyhow!("invalid team name: {e}"))?;
            let mut client = connect(home).await?;
            let team = client.create_team(name).await?;
            print_line(&team_json(&team, None))
        }
        TeamAction::Members(args) => {
            let team_id = parse_team_id(&args.team)?;
            let mut client = connect(home).await?;
            let directory = Directory::load(&mut client).await?;
            let staff = directory
                .users("--staff", &args.staff)?
                .iter()
                .map(|u| u.user_id)
                .collect();
            let team = client.set_team_members(team_id, staff).await?;
            print_line(&team_json(&team, Some(&directory)))
        }
    }
}

async fn teams(home: &Path) -> Result<()> {
    let mut client = connect(home).await?;
    let teams = client.list_teams().await?;
    // Staff may list teams without the directory: their members then show as user ids.
    let directory = match client.list_users().await {
        Ok(users) => Some(Directory { users }),
        Err(error) if error.code() == Some(ErrorCode::Forbidden) => None,
        Err(error) => return Err(error.into()),
    };
    for team in &teams {
        print_line(&team_json(team, directory.as_ref()))?;
    }
    Ok(())
}

async fn assign(home: &Path, args: AssignArgs) -> Result<()> {
    let patient = parse_handle("--patient", &args.patient)?;
    let mut team_ids: Vec<TeamId> = Vec::new();
    for id in split_list(&args.team) {
        let id = parse_team_id(id)?;
        if !team_ids.contains(&id) {
            team_ids.push(id);
        }
    }
    let mut client = connect(home).await?;
    let directory = Directory::load(&mut client).await?;
    let patient_id = directory.user("--patient", &patient)?.user_id;
    let staff = directory.users("--staff", &args.staff)?;
    let staff_ids = staff.iter().map(|u| u.user_id).collect();
    client
        .assign_care(patient_id, staff_ids, team_ids.clone())
        .await?;
    print_line(&json!({
        "patient": patient.as_str(),
        "staff": staff.iter().map(|u| u.handle.as_str()).collect::<Vec<_>>(),
        "teams": team_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }))
}

async fn policy(home: &Path, action: PolicyAction) -> Result<()> {
    match action {
        PolicyAction::Show => {
            let mut client = connect(home).await?;
            let policy = client.get_policy().await?;
            let allow_lists: serde_json::Map<String, Value> = policy
                .allow_lists
                .iter()
                .map(|list| {
                    (
                        role_name(list.role).to_owned(),
                        json!(list
                            .cidrs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()),
                    )
                })
                .collect();
            print_line(&json!({
                "idle_timeout_ms": policy.idle_timeout_ms,
                "session_lifetime_ms": policy.session_lifetime_ms,
                "allow_lists": allow_lists,
                "consent_text": policy.consent_text.as_ref().map(ConsentText::as_str),
            }))
        }
        PolicyAction::Session(args) => {
            let idle_ms = args.idle_timeout.saturating_mul(1000);
            let lifetime_ms = args.session_lifetime.saturating_mul(1000);
            if !(MIN_IDLE_TIMEOUT_MS..=MAX_IDLE_TIMEOUT_MS).contains(&idle_ms) {
                bail!(
                    "--idle-timeout must be {} to {} seconds",
                    MIN_IDLE_TIMEOUT_MS / 1000,
                    MAX_IDLE_TIMEOUT_MS / 1000
                );
            }
            if !(idle_ms..=MAX_SESSION_LIFETIME_MS).contains(&lifetime_ms) {
                bail!(
                    "--session-lifetime must be at least --idle-timeout and at most {} seconds",
                    MAX_SESSION_LIFETIME_MS / 1000
                );
            }
            let mut client = connect(home).await?;
            client.set_session_policy(idle_ms, lifetime_ms).await?;
            print_line(&json!({
                "idle_timeout_ms": idle_ms,
                "session_lifetime_ms": lifetime_ms,
            }))
        }
        PolicyAction::AllowList(args) => {
            let mut cidrs: Vec<Cidr> = Vec::new();
            for text in &args.cidrs {
                let cidr = text.trim().parse::<Cidr>().map_err(|_| {
                    anyhow!(
                        "--cidr must be an IPv4 or IPv6 address, optionally followed by /prefix \
                         (e.g. 10.0.0.0/8)"
                    )
                })?;
                // Host bits are masked off: 10.1.2.3/8 is 10.0.0.0/8, the same entry.
                if !cidrs.contains(&cidr) {
                    cidrs.push(cidr);
                }
            }
            let role = Role::from(args.role);
            let mut client = connect(home).await?;
            client
                .set_allow_list(RoleAllowList {
                    role,
                    cidrs: cidrs.clone(),
                })
                .await?;
            print_line(&json!({
                "role": role_name(role),
                "cidrs": cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }))
        }
        PolicyAction::ConsentText(args) => {
            let text =
                ConsentText::new(args.text).map_err(|e| anyhow!("invalid consent text: {e}"))?;
            let mut client = connect(home).await?;
            client.set_consent_text(text.clone()).await?;
            print_line(&json!({ "consent_text": text.as_str() }))
        }
    }
}

async fn break_glass(home: &Path, args: BreakGlassArgs) -> Result<()> {
    let staff = parse_handle("--staff", &args.staff)?;
    let patient = parse_handle("--patient", &args.patient)?;
    let reason = Reason::new(args.reason)
        .map_err(|e| anyhow!("--reason must be one line of 1 to 500 characters ({e})"))?;
    let duration_ms = args.minutes.saturating_mul(60_000);
    if !(1..=MAX_BREAK_GLASS_MS).contains(&duration_ms) {
        bail!("--minutes must be 1 to {}", MAX_BREAK_GLASS_MS / 60_000);
    }
    let mut client = connect(home).await?;
    let directory = Directory::load(&mut client).await?;
    let staff_id = directory.user("--staff", &staff)?.user_id;
    let patient_id = directory.user("--patient", &patient)?.user_id;
    let expires_at_ms = client
        .grant_break_glass(staff_id, patient_id, reason, duration_ms)
        .await?;
    print_line(&json!({ "expires_at_ms": expires_at_ms }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_store_in_use_is_one_clear_line() {
        let path = Path::new("/home/someone/.medrelay").join(KEYSTORE_FILE);
        let line = describe(&store_error(&path, KeyStoreError::InUse));
        assert_eq!(
            line,
            "another medrelay-client is using this profile (/home/someone/.medrelay); wait for it to finish"
        );
        let line = describe(&store_error(&path, KeyStoreError::UnsupportedVersion(1)));
        assert!(line.contains("enrol this device again"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn weak_kdf_only_in_debug_builds() {
        assert_eq!(enroll_kdf_params(true, false), KdfParams::OWASP);
        assert_eq!(enroll_kdf_params(false, true), KdfParams::OWASP);
        assert_eq!(enroll_kdf_params(true, true).memory_kib, 256);
    }
}
