//! Conversations: opening one by handles, reading one, and listing the caller's, page by page.

use crate::field::{
    between_one_and, optional, required, required_each, required_text, unique, FieldError, Within,
};
use crate::limits::{MAX_CONVERSATIONS_PER_PAGE, MAX_MEMBERS};
use crate::{pb, Bytes, ConsentState, ConversationId, DeviceId, Handle, Role, UserId};

/// Open (create on first use) the conversation between the caller and these users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenConversation {
    /// 1 to [`MAX_MEMBERS`] distinct handles: one for a 1:1, more for a group. The caller
    /// is a member whether or not their own handle is listed.
    pub handles: Vec<Handle>,
}

impl OpenConversation {
    pub(crate) fn to_pb(&self) -> pb::OpenConversation {
        pb::OpenConversation {
            handles: self.handles.iter().map(|h| h.as_str().to_owned()).collect(),
        }
    }

    pub(crate) fn from_pb(raw: pb::OpenConversation) -> Result<Self, FieldError> {
        between_one_and("handles", raw.handles.len(), MAX_MEMBERS)?;
        let handles = raw
            .handles
            .into_iter()
            .map(|h| required_text("handles", h, Handle::new))
            .collect::<Result<Vec<_>, _>>()?;
        unique("handles", &handles)?;
        Ok(Self { handles })
    }
}

/// List the caller's conversations in ascending id order, one page at a time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListConversations {
    /// `None` for the first page; otherwise the last id of the previous page.
    pub after: Option<ConversationId>,
}

impl ListConversations {
    pub(crate) fn to_pb(self) -> pb::ListConversations {
        pb::ListConversations {
            after: self
                .after
                .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                .unwrap_or_default(),
        }
    }

    pub(crate) fn from_pb(raw: pb::ListConversations) -> Result<Self, FieldError> {
        Ok(Self {
            after: optional("after", &raw.after, ConversationId::from_bytes)?,
        })
    }
}

/// A member of a conversation, with the devices a send must address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member.
    pub user_id: UserId,
    /// Their handle.
    pub handle: Handle,
    /// Their role.
    pub role: Role,
    /// Their current (not revoked) devices.
    pub devices: Vec<DeviceId>,
    /// Their consent to messaging: for a patient, whether staff may message them; for anyone
    /// else `NotApplicable`.
    pub consent: ConsentState,
}

impl Member {
    fn to_pb(&self) -> pb::Member {
        pb::Member {
            user_id: Bytes::copy_from_slice(self.user_id.as_bytes()),
            handle: self.handle.as_str().to_owned(),
            role: self.role.to_pb(),
            devices: self
                .devices
                .iter()
                .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                .collect(),
            consent: self.consent.to_pb(),
        }
    }

    fn from_pb(raw: pb::Member) -> Result<Self, FieldError> {
        Ok(Self {
            user_id: required("user_id", &raw.user_id, UserId::from_bytes)?,
            handle: required_text("handle", raw.handle, Handle::new)?,
            role: Role::from_pb("role", raw.role)?,
            devices: required_each("devices", &raw.devices, DeviceId::from_bytes)?,
            consent: ConsentState::from_pb("consent", raw.consent)?,
        })
    }
}

/// A conversation and its members (the caller among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The conversation.
    pub id: ConversationId,
    /// 1 to [`MAX_MEMBERS`] members.
    pub members: Vec<Member>,
}

impl Conversation {
    /// Every current device of every member: the devices a send must address, less the
    /// sending device.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.members.iter().flat_map(|m| m.devices.iter())
    }

    pub(crate) fn to_pb(&self) -> pb::Conversation {
        pb::Conversation {
            conversation_id: Bytes::copy_from_slice(self.id.as_bytes()),
            members: self.members.iter().map(Member::to_pb).collect(),
        }
    }

    pub(crate) fn from_pb(raw: pb::Conversation) -> Result<Self, FieldError> {
        between_one_and("members", raw.members.len(), MAX_MEMBERS)?;
        Ok(Self {
            id: required(
                "conversation_id",
                &raw.conversation_id,
                ConversationId::from_bytes,
            )?,
            members: raw
                .members
                .into_iter()
                .map(|m| Member::from_pb(m).within("members"))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// One page of the caller's conversations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationList {
    /// At most [`MAX_CONVERSATIONS_PER_PAGE`], in ascending id order.
    pub conversations: Vec<Conversation>,
    /// Whether another page follows; ask with `after` = the last id of this one.
    pub more: bool,
}

impl ConversationList {
    pub(crate) fn to_pb(&self) -> pb::ConversationList {
        pb::ConversationList {
            conversations: self.conversations.iter().map(Conversation::to_pb).collect(),
            more: self.more,
        }
    }

    pub(crate) fn from_pb(raw: pb::ConversationList) -> Result<Self, FieldError> {
        crate::field::at_most(
            "conversations",
            raw.conversations.len(),
            MAX_CONVERSATIONS_PER_PAGE,
        )?;
        Ok(Self {
            conversations: raw
                .conversations
                .into_iter()
                .map(|c| Conversation::from_pb(c).within("conversations"))
                .collect::<Result<_, _>>()?,
            more: raw.more,
        })
    }
}
