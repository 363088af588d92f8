//! The transport's decisions as pure functions, so each is unit-tested without a socket:
//! which devices a send addresses, which need a new session, what to fetch, what to do after
//! `DEVICES_MISMATCH`, which session wins a simultaneous initiation, and how long to back off.

use std::collections::BTreeSet;
use std::time::Duration;

use medrelay_proto::{Conversation, DeviceId, ErrorCode, FetchPrekeys, UserId, WireError};

/// How many times a send is re-planned after `DEVICES_MISMATCH` before giving up.
pub const MAX_MISMATCH_RETRIES: u32 = 3;

/// One device a send must carry an envelope for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Recipient {
    /// The device's user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
}

/// Every current device of every member, the sender's own other devices included, the sending
/// device excluded (protocol "Sending", step 1). Sorted, no device twice.
pub fn recipients(conversation: &Conversation, own_device: &DeviceId) -> Vec<Recipient> {
    let mut out: Vec<Recipient> = conversation
        .members
        .iter()
        .flat_map(|m| {
            m.devices.iter().map(|d| Recipient {
                user: m.user_id,
                device: *d,
            })
        })
        .filter(|r| r.device != *own_device)
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.device == b.device);
    out
}

/// The recipients without a stored session: those need a prekey bundle.
pub fn needing_sessions(
    recipients: &[Recipient],
    has_session: impl Fn(&DeviceId) -> bool,
) -> Vec<Recipient> {
    recipients
        .iter()
        .filter(|r| !has_session(&r.device))
        .copied()
        .collect()
}

/// The `fetch_prekeys` request for exactly these devices (their users, deduplicated, and the
/// device list, so no other device's one-time prekey is spent).
pub fn fetch_request(needed: &[Recipient]) -> FetchPrekeys {
    let users: BTreeSet<UserId> = needed.iter().map(|r| r.user).collect();
    FetchPrekeys {
        user_ids: users.into_iter().collect(),
        devices: needed.iter().map(|r| r.device).collect(),
    }
}

/// What to do after a refused send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MismatchPlan {
    /// Delete these sessions (devices that are no longer recipients), fetch the conversation
    /// again, re-encrypt and resend with the same client message id.
    Retry {
        /// Sessions to delete.
        delete_sessions: Vec<DeviceId>,
    },
    /// Give up with the error.
    GiveUp,
}

/// Plans the retry after a refused send: only `DEVICES_MISMATCH` is retried, and only
/// [`MAX_MISMATCH_RETRIES`] times (`retries_so_far` counts earlier ones).
pub fn plan_mismatch(error: &WireError, retries_so_far: u32) -> MismatchPlan {
    if error.code != ErrorCode::DevicesMismatch || retries_so_far >= MAX_MISMATCH_RETRIES {
        return MismatchPlan::GiveUp;
    }
    MismatchPlan::Retry {
        delete_sessions: error.stale_devices.clone(),
    }
}

pub use crate::delivery::keep_existing_session;

/// Reconnection delays: exponential from `initial`, doubling to `max`, with "equal jitter"
/// (a uniformly random point in the upper half of the step) so clients that dropped together
/// do not return together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based), given a random `jitter` in
    /// `0..=u32::MAX`: between half and all of `min(initial * 2^attempt, max)`.
    pub fn delay(&self, attempt: u32, jitter: u32) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let half = step / 2;
        let extra = half.mul_f64(f64::from(jitter) / f64::from(u32::MAX));
        half + extra
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use crate::session::Session;
    use medrelay_proto::{ConsentState, ConversationId, Handle, Member, Role};

    fn dev(b: u8) -> DeviceId {
        DeviceId::from_array([b; 16])
    }
    fn user(b: u8) -> UserId {
        UserId::from_array([b; 16])
    }
    fn conversation() -> Conversation {
        Conversation {
            id: ConversationId::from_array([9; 16]),
            members: vec![
                Member {
                    user_id: user(1),
                    handle: Handle::new("staff1").unwrap(),
                    role: Role::Staff,
                    devices: vec![dev(10), dev(11)],
                    consent: ConsentState::NotApplicable,
                },
                Member {
                    user_id: user(2),
                    handle: Handle::new("pat").unwrap(),
                    role: Role::Patient,
                    devices: vec![dev(20)],
                    consent: ConsentState::Accepted,
                },
            ],
        }
    }

    #[test]
    fn fan_out_covers_every_device_but_our_own() {
        let r = recipients(&conversation(), &dev(10));
        let devices: Vec<_> = r.iter().map(|r| r.device).collect();
        assert_eq!(devices, vec![dev(11), dev(20)]);
        assert_eq!(r[0].user, user(1), "our own other device is a recipient");
        assert_eq!(r[1].user, user(2));
        // A member with no other device: nothing to address.
        let mut c = conversation();
        c.members.truncate(1);
        c.members[0].devices = vec![dev(10)];
        assert!(recipients(&c, &dev(10)).is_empty());
    }

    #[test]
    fn only_devices_without_sessions_are_fetched() {
        let r = recipients(&conversation(), &dev(10));
        let needed = needing_sessions(&r, |d| *d == dev(11));
        assert_eq!(needed.len(), 1);
        let fetch = fetch_request(&needed);
        assert_eq!(fetch.user_ids, vec![user(2)]);
        assert_eq!(fetch.devices, vec![dev(20)]);
        let all = fetch_request(&r);
        assert_eq!(all.user_ids, vec![user(1), user(2)], "users deduplicated");
        assert_eq!(all.devices.len(), 2);
    }

    #[test]
    fn mismatch_is_retried_a_bounded_number_of_times() {
        let e = WireError::devices_mismatch(vec![dev(30)], vec![dev(20)]);
        assert_eq!(
            plan_mismatch(&e, 0),
            MismatchPlan::Retry {
                delete_sessions: vec![dev(20)]
            }
        );
        assert_eq!(
            plan_mismatch(&e, MAX_MISMATCH_RETRIES),
            MismatchPlan::GiveUp
        );
        let other = WireError::new(ErrorCode::Forbidden, "no");
        assert_eq!(plan_mismatch(&other, 0), MismatchPlan::GiveUp);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0), Duration::from_millis(50));
        assert_eq!(b.delay(0, u32::MAX), Duration::from_millis(100));
        assert_eq!(b.delay(3, u32::MAX), Duration::from_millis(800));
        assert_eq!(b.delay(20, u32::MAX), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX, 0), Duration::from_secs(15));
        for attempt in 0..40 {
            let d = b.delay(attempt, u32::MAX / 3);
            assert!(d <= b.max && d >= Duration::from_millis(50));
        }
    }

    #[test]
    fn simultaneous_initiation_settles_on_the_lower_device_id() {
        use crate::DeviceIdentity;
        use rand::rngs::StdRng;
        use rand::SeedableRng;
        let mut rng = StdRng::seed_from_u64(3);
        let alice = DeviceIdentity::generate(&mut rng, 0);
        let bob = DeviceIdentity::generate(&mut rng, 0);
        let ours = Session::initiate(&alice, &bob.prekey_bundle(Some(1)), &mut rng).unwrap();
        assert!(keep_existing_session(Some(&ours), &dev(1), &dev(2)));
        assert!(!keep_existing_session(Some(&ours), &dev(2), &dev(1)));
        assert!(!keep_existing_session(None, &dev(1), &dev(2)));
    }
}
