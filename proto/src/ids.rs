//! Identifiers: 16 random bytes each, one newtype per kind so they cannot be mixed up.
//!
//! `Display` and `FromStr` use the full lowercase hex; `Debug` shows only a short prefix.
//! Serde writes the raw bytes in binary formats and hex in human-readable ones.

use rand_core::RngCore;

use crate::fixed_bytes::fixed_bytes_newtype;
use crate::limits::ID_LEN;

/// Declares an id newtype with its shared impls and a `random` constructor.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; ID_LEN]);

        fixed_bytes_newtype!($name, ID_LEN);

        impl $name {
            /// A fresh id from `rng`. Pass a cryptographic RNG: ids must be unguessable.
            pub fn random(rng: &mut impl RngCore) -> Self {
                let mut bytes = [0u8; ID_LEN];
                rng.fill_bytes(&mut bytes);
                Self(bytes)
            }
        }
    };
}

id_type!(
    /// An organisation (a clinic). Every user, device and conversation belongs to one.
    OrgId
);
id_type!(
    /// A person: patient, staff member or admin. Pseudonymous: audit logs show this, not names.
    UserId
);
id_type!(
    /// One enrolled device of a user, with its own keys.
    DeviceId
);
id_type!(
    /// A conversation (1:1 or group).
    ConversationId
);
id_type!(
    /// A message as stored by the server, assigned when a send is accepted.
    MessageId
);
id_type!(
    /// A message as named by its sender, chosen at random by the sending device; a repeated
    /// send with the same one is idempotent.
    ClientMessageId
);
id_type!(
    /// A care team: a named group of staff that can be assigned to patients as a whole.
    TeamId
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProtoError;

    #[test]
    fn from_bytes_takes_exactly_sixteen() {
        assert!(DeviceId::from_bytes(&[7; 16]).is_ok());
        assert_eq!(
            DeviceId::from_bytes(&[7; 15]),
            Err(ProtoError::WrongLength {
                expected: 16,
                actual: 15
            })
        );
        assert_eq!(
            DeviceId::from_bytes(&[]),
            Err(ProtoError::WrongLength {
                expected: 16,
                actual: 0
            })
        );
        assert!(UserId::from_bytes(&[7; 17]).is_err());
        assert_eq!(
            TeamId::from_bytes(&[7; 16]).map(TeamId::to_array),
            Ok([7; 16])
        );
    }

    #[test]
    fn hex_display_round_trips() {
        let id = ConversationId::from([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text, "ab".repeat(16));
        assert_eq!(text.parse::<ConversationId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<ConversationId>(), Ok(id));
        assert_eq!(
            "abc".parse::<ConversationId>(),
            Err(ProtoError::InvalidHex { expected: 32 })
        );
        assert!("zz".repeat(16).parse::<ConversationId>().is_err());
    }

    #[test]
    fn debug_shows_only_a_prefix() {
        let id = MessageId::from([0x12; 16]);
        assert_eq!(format!("{id:?}"), "MessageId(12121212…)");
    }

    #[test]
    fn random_ids_differ() {
        let mut rng = rand_core::OsRng;
        assert_ne!(OrgId::random(&mut rng), OrgId::random(&mut rng));
    }

    #[test]
    fn serde_is_bytes_in_postcard_and_hex_in_json() -> Result<(), Box<dyn std::error::Error>> {
        let id = UserId::from([1; 16]);
        let bin = postcard::to_allocvec(&id)?;
        assert_eq!(bin.len(), 17, "a length byte and the 16 raw bytes");
        assert_eq!(postcard::from_bytes::<UserId>(&bin)?, id);
        let json = serde_json::to_string(&id)?;
        assert_eq!(json, format!("\"{}\"", "01".repeat(16)));
        assert_eq!(serde_json::from_str::<UserId>(&json)?, id);
        assert!(serde_json::from_str::<UserId>("\"0102\"").is_err());
        assert!(postcard::from_bytes::<UserId>(&[3, 1, 2, 3]).is_err());
        Ok(())
    }
}
