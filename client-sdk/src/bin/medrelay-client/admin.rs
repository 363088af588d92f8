//! `medrelay-client admin ...`: the admin policy module from the command line: retention and
//! legal hold, the org archive, the retention sweeper and the access log.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use medrelay_proto::limits::{MAX_ACCESS_LOG_PAGE, MAX_ARCHIVE_DAYS, MAX_MAIL_DAYS};
use medrelay_proto::{AccessLogEntry, AccessLogFilter, ConversationId, X25519PublicKey};
use medrelay_sdk::archive::{ExportHeader, ExportItem, EXPORT_FORMAT};
use serde_json::json;

use super::{connect, parse_handle, print_line, Directory};

#[derive(Subcommand, Debug)]
pub(crate) enum AdminCommand {
    /// How long undelivered mail and the org archive are kept.
    Retention {
        #[command(subcommand)]
        action: RetentionAction,
    },
    /// Legal holds: org-wide, or on one conversation; nothing held expires.
    Hold {
        #[command(subcommand)]
        action: HoldAction,
    },
    /// The org archive: every message also sealed to the privacy officer's offline key.
    Archive {
        #[command(subcommand)]
        action: ArchiveAction,
    },
    /// Run the retention sweeper now (it also runs by itself); prints what it did.
    Sweep,
    /// The tamper-evident access log: verify it, export it.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum RetentionAction {
    /// Print the retention settings, holds and archive state.
    Show,
    /// Change retention; what is not given stays as it is.
    Set(RetentionArgs),
}

#[derive(Args, Debug)]
pub(crate) struct RetentionArgs {
    /// Days an undelivered message waits before it is deleted and shredded (1 to 3650).
    #[arg(long, value_name = "DAYS")]
    mail_days: Option<u32>,
    /// Days the org archive keeps each message (1 to 36500; six years is 2190).
    #[arg(long, value_name = "DAYS")]
    archive_days: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum HoldAction {
    /// Print the holds.
    List,
    /// Place a legal hold: on the whole org (--org) or on one conversation.
    Add(HoldArgs),
    /// Lift a legal hold; the next sweep then expires what is past retention.
    Remove(HoldArgs),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["org", "conversation"])))]
pub(crate) struct HoldArgs {
    /// The whole organisation.
    #[arg(long)]
    org: bool,
    /// One conversation, by id (conversation ids appear in the access log).
    #[arg(long, value_name = "ID")]
    conversation: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ArchiveAction {
    /// Turn the archive on with the public key printed by `medrelay archive keygen` on the
    /// privacy officer's machine. Clients then seal every message to it.
    Enable(EnableArgs),
    /// Turn the archive off (what it holds stays until its retention ends).
    Disable,
    /// Export the archive (sealed; only the privacy officer's key opens it, with
    /// `medrelay archive open --key FILE --in FILE`).
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub(crate) struct EnableArgs {
    /// The archive public key, 64 hexadecimal digits.
    #[arg(long, value_name = "HEX")]
    public_key: String,
}

#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// Messages stored on or after this day (YYYY-MM-DD, UTC).
    #[arg(long, value_name = "DATE")]
    since: String,
    /// The file to write (refuses to overwrite).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditAction {
    /// Check the hash chain and signed checkpoints on the server now; names the first broken
    /// entry and exits non-zero if there is one.
    Verify,
    /// Print the organisation's access-log entries, oldest first.
    Export(AuditExportArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

#[derive(Args, Debug)]
pub(crate) struct AuditExportArgs {
    /// Entries on or after this day (YYYY-MM-DD, UTC).
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// Entries before this day (YYYY-MM-DD, UTC).
    #[arg(long, value_name = "DATE")]
    until: Option<String>,
    /// Only this action (request kind, e.g. send, login, set_retention).
    #[arg(long)]
    action: Option<String>,
    /// Only this user's actions, by handle.
    #[arg(long, value_name = "HANDLE")]
    actor: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
}

/// Midnight UTC of a `YYYY-MM-DD` day, in ms since the Unix epoch.
fn day_ms(flag: &str, text: &str) -> Result<u64> {
    let format = time::format_description::parse_borrowed::<2>("[year]-[month]-[day]")
        .map_err(|e| anyhow!("date format: {e}"))?;
    let date = time::Date::parse(text.trim(), &format)
        .map_err(|_| anyhow!("{flag} must be a date like 2026-01-31"))?;
    let seconds = date.midnight().assume_utc().unix_timestamp();
    u64::try_from(seconds)
        .map(|s| s * 1000)
        .map_err(|_| anyhow!("{flag} must be after 1970-01-01"))
}

fn conversation_id(text: &str) -> Result<ConversationId> {
    text.trim()
        .parse()
        .map_err(|_| anyhow!("--conversation must be a conversation id (32 hexadecimal digits)"))
}

pub(crate) async fn run(home: &Path, command: AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Retention { action } => retention(home, action).await,
        AdminCommand::Hold { action } => hold(home, action).await,
        AdminCommand::Archive { action } => archive(home, action).await,
        AdminCommand::Sweep => {
            let mut client = connect(home).await?;
            let report = client.run_sweep().await?;
            print_line(&serde_json::to_value(report)?)
        }
        AdminCommand::Audit { action } => audit(home, action).await,
    }
}

async fn retention(home: &Path, action: RetentionAction) -> Result<()> {
    let mut client = connect(home).await?;
    match action {
        RetentionAction::Show => {
            let retention = client.get_retention().await?;
            print_line(&json!({
                "mail_days": retention.mail_days,
                "archive_days": retention.archive_days,
                "audit_days": retention.audit_days,
                "legal_hold": retention.legal_hold,
                "held_conversations": retention
                    .held_conversations
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                "archive_enabled": retention.archive_public_key.is_some(),
                "archive_public_key": retention.archive_public_key.map(|k| hex::encode(k.as_bytes())),
            }))
        }
        RetentionAction::Set(args) => {
            if args.mail_days.is_none() && args.archive_days.is_none() {
                bail!("give --mail-days, --archive-days or both");
            }
            if let Some(days) = args.mail_days {
                if !(1..=MAX_MAIL_DAYS).contains(&days) {
                    bail!("--mail-days must be 1 to {MAX_MAIL_DAYS}");
                }
            }
            if let Some(days) = args.archive_days {
                if !(1..=MAX_ARCHIVE_DAYS).contains(&days) {
                    bail!("--archive-days must be 1 to {MAX_ARCHIVE_DAYS}");
                }
            }
            let current = client.get_retention().await?;
            let mail_days = args.mail_days.unwrap_or(current.mail_days);
            let archive_days = args.archive_days.unwrap_or(current.archive_days);
            client.set_retention(mail_days, archive_days).await?;
            print_line(&json!({ "mail_days": mail_days, "archive_days": archive_days }))
        }
    }
}

async fn hold(home: &Path, action: HoldAction) -> Result<()> {
    let mut client = connect(home).await?;
    let (args, held) = match action {
        HoldAction::List => {
            let retention = client.get_retention().await?;
            return print_line(&json!({
                "org": retention.legal_hold,
                "conversations": retention
                    .held_conversations
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            }));
        }
        HoldAction::Add(args) => (args, true),
        HoldAction::Remove(args) => (args, false),
    };
    if args.org {
        client.set_hold(None, held).await?;
        return print_line(&json!({ "org": held }));
    }
    let id = conversation_id(args.conversation.as_deref().unwrap_or_default())?;
    client.set_hold(Some(id), held).await?;
    print_line(&json!({ "conversation": id.to_string(), "held": held }))
}

async fn archive(home: &Path, action: ArchiveAction) -> Result<()> {
    match action {
        ArchiveAction::Enable(args) => {
            let bytes = hex::decode(args.public_key.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| {
                    anyhow!(
                        "--public-key must be 64 hexadecimal digits (from medrelay archive keygen)"
                    )
                })?;
            let mut client = connect(home).await?;
            client
                .set_archive_key(Some(X25519PublicKey::from(bytes)))
                .await?;
            print_line(&json!({ "archive_enabled": true }))
        }
        ArchiveAction::Disable => {
            let mut client = connect(home).await?;
            client.set_archive_key(None).await?;
            print_line(&json!({ "archive_enabled": false }))
        }
        ArchiveAction::Export(args) => export_archive(home, args).await,
    }
}

async fn export_archive(home: &Path, args: ExportArgs) -> Result<()> {
    let since_ms = day_ms("--since", &args.since)?;
    let mut client = connect(home).await?;
    let directory = Directory::load(&mut client).await.ok();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&args.out).with_context(|| {
        format!(
            "could not create {} (it must not exist yet)",
            args.out.display()
        )
    })?;
    let mut out = std::io::BufWriter::new(file);
    let header = ExportHeader {
        format: EXPORT_FORMAT.to_owned(),
        org_id: client.profile().org_id.to_string(),
        since_ms,
        exported_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    let mut after = 0u64;
    let mut count = 0u64;
    loop {
        let page = client.export_archive(since_ms, after).await?;
        for item in &page.items {
            let line = ExportItem {
                seq: item.seq,
                conversation_id: item.conversation_id.to_string(),
                message_id: item.message_id.to_string(),
                sender_user_id: item.sender_user_id.to_string(),
                sender_handle: directory
                    .as_ref()
                    .map(|d| d.handle_of(&item.sender_user_id)),
                sender_device_id: item.sender_device_id.to_string(),
                server_time_ms: item.server_time_ms,
                sealed: hex::encode(&item.sealed),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
            count += 1;
        }
        if page.done {
            break;
        }
        if page.next_after_seq <= after {
            bail!("the server's archive pages did not advance; try again later");
        }
        after = page.next_after_seq;
        eprintln!("medrelay-client: {count} archived messages exported so far...");
    }
    out.flush()?;
    out.get_ref().sync_all()?;
    print_line(&json!({ "exported": count, "out": args.out.display().to_string() }))
}

async fn audit(home: &Path, action: AuditAction) -> Result<()> {
    let mut client = connect(home).await?;
    match action {
        AuditAction::Verify => {
            let status = client.verify_access_log().await?;
            match &status.broken {
                None => print_line(&json!({
                    "ok": true,
                    "entries": status.entries,
                    "checkpoints": status.checkpoints,
                    "unsealed": status.unsealed,
                })),
                Some((entry, reason)) => {
                    print_line(&json!({ "ok": false, "entry": entry, "reason": reason }))?;
                    bail!("the access log is broken at entry {entry}: {reason}")
                }
            }
        }
        AuditAction::Export(args) => {
            let actor = match &args.actor {
                Some(handle) => {
                    let handle = parse_handle("--actor", handle)?;
                    let directory = Directory::load(&mut client).await?;
                    Some(directory.user("--actor", &handle)?.user_id)
                }
                None => None,
            };
            let mut filter = AccessLogFilter {
                since_ms: args
                    .since
                    .as_deref()
                    .map(|d| day_ms("--since", d))
                    .transpose()?,
                until_ms: args
                    .until
                    .as_deref()
                    .map(|d| day_ms("--until", d))
                    .transpose()?,
                action: args.action.clone(),
                actor_user_id: actor,
                after_seq: 0,
                limit: u32::try_from(MAX_ACCESS_LOG_PAGE).unwrap_or(u32::MAX),
            };
            let mut out = std::io::stdout().lock();
            if matches!(args.format, Format::Csv) {
                writeln!(
                    out,
                    "seq,at_ms,user,device,role,action,objects,outcome,source,hash"
                )?;
            }
            loop {
                let page = client.export_access_log(filter.clone()).await?;
                for entry in &page.entries {
                    write_entry(&mut out, entry, args.format)?;
                }
                if page.done {
                    break;
                }
                if page.next_after_seq <= filter.after_seq {
                    bail!("the server's access-log pages did not advance; try again later");
                }
                filter.after_seq = page.next_after_seq;
            }
            out.flush()?;
            Ok(())
        }
    }
}

fn write_entry(out: &mut impl Write, entry: &AccessLogEntry, format: Format) -> Result<()> {
    let user = entry.user_id.map(|u| u.to_string()).unwrap_or_default();
    let device = entry.device_id.map(|d| d.to_string()).unwrap_or_default();
    let role = entry.role.map(|r| r.as_str()).unwrap_or_default();
    match format {
        Format::Jsonl => writeln!(
            out,
            "{}",
            json!({
                "seq": entry.seq, "at_ms": entry.at_ms, "user": user, "device": device,
                "role": role, "action": entry.action, "objects": entry.objects,
                "outcome": entry.outcome, "source": entry.source,
                "hash": hex::encode(entry.hash),
            })
        )?,
        Format::Csv => writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{}",
            entry.seq,
            entry.at_ms,
            user,
            device,
            role,
            csv_field(&entry.action),
            csv_field(&entry.objects.join(" ")),
            csv_field(&entry.outcome),
            csv_field(&entry.source),
            hex::encode(entry.hash)
        )?,
    }
    Ok(())
}

/// A CSV field, quoted when it holds a separator or quote.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}
