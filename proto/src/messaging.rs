//! Sending, delivery and acknowledgement of end-to-end encrypted messages. The server sees
//! only opaque ciphertexts and the ids needed to route them.

use crate::field::{
    at_most, between_one_and, payload, required, required_each, unique, FieldError, Within,
};
use crate::limits::{
    MAX_ACK_IDS, MAX_ARCHIVE_ITEM_BYTES, MAX_CIPHERTEXT_BYTES, MAX_ENVELOPES_PER_SEND,
};
use crate::{pb, Bytes, ClientMessageId, ConversationId, DeviceId, MessageId, UserId};

/// One message's ciphertext for one recipient device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The device it is encrypted for.
    pub recipient_device: DeviceId,
    /// An `e2e.E2eMessage` for that device; 1 to [`MAX_CIPHERTEXT_BYTES`] bytes, opaque to the
    /// server.
    pub ciphertext: Bytes,
}

impl Envelope {
    fn to_pb(&self) -> pb::Envelope {
        pb::Envelope {
            recipient_device: Bytes::copy_from_slice(self.recipient_device.as_bytes()),
            ciphertext: self.ciphertext.clone(),
        }
    }

    fn from_pb(raw: pb::Envelope) -> Result<Self, FieldError> {
        payload("ciphertext", raw.ciphertext.len(), MAX_CIPHERTEXT_BYTES)?;
        Ok(Self {
            recipient_device: required(
                "recipient_device",
                &raw.recipient_device,
                DeviceId::from_bytes,
            )?,
            ciphertext: raw.ciphertext,
        })
    }
}

/// One message, encrypted by the client once per recipient device: every current device of
/// every member, the sender's own other devices included, the sending device excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// Where it goes.
    pub conversation_id: ConversationId,
    /// Chosen by the sender; a repeat from the same device is idempotent.
    pub client_message_id: ClientMessageId,
    /// At most [`MAX_ENVELOPES_PER_SEND`], one per recipient device, no device twice. May be
    /// empty when no other device is a recipient (a sole member on a single device).
    pub envelopes: Vec<Envelope>,
    /// The message sealed to the org archive key (an `e2e.SealedBox`), at most
    /// [`MAX_ARCHIVE_ITEM_BYTES`].
    pub archive_item: Option<Bytes>,
}

impl SendRequest {
    pub(crate) fn to_pb(&self) -> pb::SendRequest {
        pb::SendRequest {
            conversation_id: Bytes::copy_from_slice(self.conversation_id.as_bytes()),
            client_message_id: Bytes::copy_from_slice(self.client_message_id.as_bytes()),
            envelopes: self.envelopes.iter().map(Envelope::to_pb).collect(),
            archive_item: self.archive_item.clone().unwrap_or_default(),
        }
    }

    pub(crate) fn from_pb(raw: pb::SendRequest) -> Result<Self, FieldError> {
        at_most("envelopes", raw.envelopes.len(), MAX_ENVELOPES_PER_SEND)?;
        let archive_item = if raw.archive_item.is_empty() {
            None
        } else {
            payload(
                "archive_item",
                raw.archive_item.len(),
                MAX_ARCHIVE_ITEM_BYTES,
            )?;
            Some(raw.archive_item)
        };
        let envelopes = raw
            .envelopes
            .into_iter()
            .map(|e| Envelope::from_pb(e).within("envelopes"))
            .collect::<Result<Vec<_>, _>>()?;
        unique("envelopes", envelopes.iter().map(|e| &e.recipient_device))?;
        Ok(Self {
            conversation_id: required(
                "conversation_id",
                &raw.conversation_id,
                ConversationId::from_bytes,
            )?,
            client_message_id: required(
                "client_message_id",
                &raw.client_message_id,
                ClientMessageId::from_bytes,
            )?,
            envelopes,
            archive_item,
        })
    }
}

/// The server stored the send durably in every recipient's mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendAccepted {
    /// The server's id for the message.
    pub message_id: MessageId,
    /// Server time at acceptance, ms since the Unix epoch.
    pub server_time_ms: u64,
    /// True if this answers a repeat of an earlier send (same device, same client message id).
    pub duplicate: bool,
}

impl SendAccepted {
    pub(crate) fn to_pb(self) -> pb::SendAccepted {
        pb::SendAccepted {
            message_id: Bytes::copy_from_slice(self.message_id.as_bytes()),
            server_time_ms: self.server_time_ms,
            duplicate: self.duplicate,
        }
    }

    pub(crate) fn from_pb(raw: pb::SendAccepted) -> Result<Self, FieldError> {
        Ok(Self {
            message_id: required("message_id", &raw.message_id, MessageId::from_bytes)?,
            server_time_ms: raw.server_time_ms,
            duplicate: raw.duplicate,
        })
    }
}

/// Pushed to a device for each envelope stored for it, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The server's id for the message; ack it once stored.
    pub message_id: MessageId,
    /// Where it was sent.
    pub conversation_id: ConversationId,
    /// Who sent it, as authenticated by the server.
    pub sender_user_id: UserId,
    /// From which device, as authenticated by the server.
    pub sender_device_id: DeviceId,
    /// Server time at acceptance, ms since the Unix epoch.
    pub server_time_ms: u64,
    /// The envelope's ciphertext, 1 to [`MAX_CIPHERTEXT_BYTES`] bytes.
    pub ciphertext: Bytes,
}

impl Delivery {
    pub(crate) fn to_pb(&self) -> pb::Delivery {
        pb::Delivery {
            message_id: Bytes::copy_from_slice(self.message_id.as_bytes()),
            conversation_id: Bytes::copy_from_slice(self.conversation_id.as_bytes()),
            sender_user_id: Bytes::copy_from_slice(self.sender_user_id.as_bytes()),
            sender_device_id: Bytes::copy_from_slice(self.sender_device_id.as_bytes()),
            server_time_ms: self.server_time_ms,
            ciphertext: self.ciphertext.clone(),
        }
    }

    pub(crate) fn from_pb(raw: pb::Delivery) -> Result<Self, FieldError> {
        payload("ciphertext", raw.ciphertext.len(), MAX_CIPHERTEXT_BYTES)?;
        Ok(Self {
            message_id: required("message_id", &raw.message_id, MessageId::from_bytes)?,
            conversation_id: required(
                "conversation_id",
                &raw.conversation_id,
                ConversationId::from_bytes,
            )?,
            sender_user_id: required("sender_user_id", &raw.sender_user_id, UserId::from_bytes)?,
            sender_device_id: required(
                "sender_device_id",
                &raw.sender_device_id,
                DeviceId::from_bytes,
            )?,
            server_time_ms: raw.server_time_ms,
            ciphertext: raw.ciphertext,
        })
    }
}

/// The device has stored these messages; the server deletes its copies for this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRequest {
    /// 1 to [`MAX_ACK_IDS`] distinct message ids.
    pub message_ids: Vec<MessageId>,
}

impl AckRequest {
    pub(crate) fn to_pb(&self) -> pb::AckRequest {
        pb::AckRequest {
            message_ids: self
                .message_ids
                .iter()
                .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                .collect(),
        }
    }

    pub(crate) fn from_pb(raw: pb::AckRequest) -> Result<Self, FieldError> {
        between_one_and("message_ids", raw.message_ids.len(), MAX_ACK_IDS)?;
        let message_ids = required_each("message_ids", &raw.message_ids, MessageId::from_bytes)?;
        unique("message_ids", &message_ids)?;
        Ok(Self { message_ids })
    }
}
