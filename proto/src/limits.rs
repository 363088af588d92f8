//! Every limit of the wire protocol, named and documented in one place.
//!
//! Both ends respect these: the server refuses a frame that breaks one (with the error code
//! given on each constant), and the SDK refuses a server frame that does. Server-only limits
//! (connections, rates, timeouts) live in the server crate. `README.md` lists these too; keep
//! the two in step.

/// The protocol version this crate speaks; a frame with another version is refused with
/// `UNSUPPORTED_VERSION`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest encoded frame, either direction (256 KiB). Checked before anything is decoded;
/// a larger frame is refused with `TOO_LARGE`. Every other limit must fit inside this one: a
/// send to 64 devices can carry at most about 4 KiB of ciphertext per device.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Length of every identifier (org, user, device, conversation, message, client message id).
pub const ID_LEN: usize = 16;

/// Length of the challenge nonce the server pushes first on every connection.
pub const NONCE_LEN: usize = 32;

/// Length of an X25519 public key (identity DH key, signed and one-time prekeys).
pub const X25519_PUBLIC_KEY_LEN: usize = 32;

/// Length of an Ed25519 public key (the identity signing key).
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// Length of an Ed25519 signature.
pub const ED25519_SIGNATURE_LEN: usize = 64;

/// Length of an ML-KEM-768 encapsulation (public) key, FIPS 203.
pub const ML_KEM_768_PUBLIC_KEY_LEN: usize = 1184;

/// Most envelopes (recipient devices) in one send; more is `LIMIT_EXCEEDED`.
pub const MAX_ENVELOPES_PER_SEND: usize = 64;

/// Largest ciphertext in one envelope or delivery (64 KiB); larger is `TOO_LARGE`.
pub const MAX_CIPHERTEXT_BYTES: usize = 64 * 1024;

/// Largest archive item (the message sealed to the org archive key): a ciphertext plus room
/// for the sealed box's ephemeral key, tag and the record's ids. Larger is `TOO_LARGE`.
pub const MAX_ARCHIVE_ITEM_BYTES: usize = MAX_CIPHERTEXT_BYTES + 1024;

/// Most one-time prekeys in one enrolment or upload; more is `LIMIT_EXCEEDED`.
pub const MAX_ONE_TIME_PREKEYS_PER_UPLOAD: usize = 100;

/// Shortest handle, in bytes. Handles are lowercase ASCII letters, digits, '.', '-' and '_'.
pub const MIN_HANDLE_LEN: usize = 3;

/// Longest handle, in bytes.
pub const MAX_HANDLE_LEN: usize = 64;

/// Most members of a conversation, the caller included; also the most handles in one
/// `OpenConversation`. More is `LIMIT_EXCEEDED`. Care-team conversations are small, and
/// `MAX_MEMBERS * MAX_DEVICES_PER_USER` must fit one send's `MAX_ENVELOPES_PER_SEND`.
pub const MAX_MEMBERS: usize = 16;

/// Most devices one user may have enrolled at once.
pub const MAX_DEVICES_PER_USER: usize = 4;

// Every device of every member must be reachable in one send.
const _: () = assert!(MAX_MEMBERS * MAX_DEVICES_PER_USER <= MAX_ENVELOPES_PER_SEND);

/// Most message ids in one ack; more is `LIMIT_EXCEEDED`.
pub const MAX_ACK_IDS: usize = 256;

/// Most users in one prekey fetch; more is `LIMIT_EXCEEDED`.
pub const MAX_FETCH_USERS: usize = MAX_MEMBERS;

/// Most devices named in one prekey fetch's device filter; more is `LIMIT_EXCEEDED`.
pub const MAX_FETCH_DEVICES: usize = MAX_ENVELOPES_PER_SEND;

/// Longest invite code, in bytes. Codes are ASCII letters, digits, '-' and '_'.
pub const MAX_INVITE_CODE_LEN: usize = 64;

/// Longest origin a browser may bind its proof to (e.g. `https://clinic.example:8443`).
pub const MAX_ORIGIN_LEN: usize = 256;

/// Longest device label, in bytes of UTF-8.
pub const MAX_DEVICE_LABEL_LEN: usize = 64;

/// Longest org name the server may send, in bytes of UTF-8.
pub const MAX_ORG_NAME_LEN: usize = 128;

/// Most conversations the server sends in one `ConversationList` page; the client asks for the
/// next page with `ListConversations.after`.
pub const MAX_CONVERSATIONS_PER_PAGE: usize = 64;

// ---- access control

/// Shortest password, in characters (Unicode scalar values). Staff and admins choose one at
/// `SetupCredentials`; shorter is `MALFORMED`. The SDK should check it before sending.
pub const MIN_PASSWORD_LEN: usize = 12;

/// Longest password, in characters; longer is `MALFORMED`.
pub const MAX_PASSWORD_LEN: usize = 256;

/// Digits in a TOTP code (RFC 6238, SHA-1, 30 s steps).
pub const TOTP_DIGITS: usize = 6;

/// Shortest recovery code, in characters (`a-z 0-9 -`).
pub const MIN_RECOVERY_CODE_LEN: usize = 8;

/// Longest recovery code, in characters.
pub const MAX_RECOVERY_CODE_LEN: usize = 64;

/// Most recovery codes the server hands out in one `CredentialsSetup`; the SDK refuses more.
pub const MAX_RECOVERY_CODES: usize = 16;

/// Largest secret the server shows once (TOTP secret, `otpauth://` URI, recovery code), in
/// bytes; larger makes the SDK refuse the frame.
pub const MAX_SECRET_TEXT_BYTES: usize = 4 * 1024;

/// Longest care-team name, in characters; longer is `MALFORMED`.
pub const MAX_TEAM_NAME_LEN: usize = 64;

/// Most staff members of one care team; more is `LIMIT_EXCEEDED`.
pub const MAX_TEAM_MEMBERS: usize = 64;

/// Most care teams assigned to one patient; more is `LIMIT_EXCEEDED`. The server also checks
/// that the resulting conversation (patient, direct staff, every team's staff) stays within
/// [`MAX_MEMBERS`].
pub const MAX_TEAMS_PER_PATIENT: usize = 8;

/// Shortest idle timeout an org may set (1 s): after this long without a request the server
/// logs a staff session off (`LOGGED_OFF`). Outside the range is `MALFORMED`.
pub const MIN_IDLE_TIMEOUT_MS: u64 = 1_000;

/// Longest idle timeout an org may set (24 h).
pub const MAX_IDLE_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1_000;

/// Longest session lifetime an org may set (7 days): a login session ends this long after the
/// login whatever the activity. It may not be shorter than the idle timeout.
pub const MAX_SESSION_LIFETIME_MS: u64 = 7 * 24 * 60 * 60 * 1_000;

/// Most CIDRs in one role's IP allow-list; more is `LIMIT_EXCEEDED`.
pub const MAX_ALLOW_LIST_CIDRS: usize = 64;

/// Largest consent text, in bytes of UTF-8 (16 KiB); larger is `TOO_LARGE`.
pub const MAX_CONSENT_TEXT_BYTES: usize = 16 * 1024;

/// Longest break-glass reason, in characters; longer is `MALFORMED`.
pub const MAX_REASON_LEN: usize = 500;

/// Longest break-glass grant (24 h); a duration of 0, or longer than this, is `MALFORMED`.
pub const MAX_BREAK_GLASS_MS: u64 = 24 * 60 * 60 * 1_000;

// A session may not be shorter than the idle timeout that ends it.
const _: () = assert!(MAX_IDLE_TIMEOUT_MS <= MAX_SESSION_LIFETIME_MS);
// A patient's directly assigned staff leave room for the patient in the conversation.
const _: () = assert!(MAX_MEMBERS >= 2);

/// Longest retention of undelivered mail, in days (ten years).
pub const MAX_MAIL_DAYS: u32 = 3_650;

/// Longest retention of the org archive and the access log, in days (a hundred years).
pub const MAX_ARCHIVE_DAYS: u32 = 36_500;

/// Conversations one org may hold under legal hold at once.
pub const MAX_HELD_CONVERSATIONS: usize = 1_024;

/// Most archive items in one export page (the server also keeps a page within the frame limit).
pub const MAX_ARCHIVE_PAGE: usize = 64;

/// Most access-log entries in one export page.
pub const MAX_ACCESS_LOG_PAGE: usize = 256;

/// Longest text field of an access-log entry (action, object, outcome, source, reason).
pub const MAX_AUDIT_TEXT_LEN: usize = 128;

/// Most objects named by one access-log entry.
pub const MAX_AUDIT_OBJECTS: usize = 32;
