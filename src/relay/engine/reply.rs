//! What a sender hears: refusals (and the faults that stop a handler),
//! the hop replies built before the id they answer is known, and the
//! refusal of a batch whose commit failed.
//!
//! Invariant: every reply leaves the engine through [`with_reply_to`] (or
//! carries the id itself), so `in_reply_to` names the frame it answers.

use ifrelay_proto::{Accepted, Body, MessageId, Reason, Refused, MAX_TEXT};
use ifrelay_store::StoreError;

use crate::relay::destination::Destination;

/// A refusal: reason code and text for the sender.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) reason: Reason,
    pub(super) text: String,
}

pub(super) fn refuse(reason: Reason, text: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        text: text.into(),
    }
}

/// Failure inside a batch: refuse one input, or abandon the batch.
#[derive(Debug)]
pub(super) enum Fault {
    Refuse(Refusal),
    /// Refused, and the process it belonged to was closed with notices
    /// already in the outbox (the batch keeps them).
    RefuseAndTell(Refusal, Vec<Destination>),
    Store(StoreError),
}

impl Fault {
    /// The refusal and the notices already queued with it, or the store
    /// error that stopped the handling.
    pub(super) fn into_refusal(self) -> Result<(Refusal, Vec<Destination>), StoreError> {
        match self {
            Fault::Refuse(r) => Ok((r, Vec::new())),
            Fault::RefuseAndTell(r, outbox) => Ok((r, outbox)),
            Fault::Store(e) => Err(e),
        }
    }
}

impl From<Refusal> for Fault {
    fn from(r: Refusal) -> Self {
        Fault::Refuse(r)
    }
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Self {
        Fault::Store(e)
    }
}

pub(super) fn accepted() -> Body {
    Body::Accepted(Accepted {
        in_reply_to: placeholder_id(),
    })
}

/// Replies are built before the id they answer is at hand; the engine
/// fills `in_reply_to` in [`with_reply_to`].
pub(super) fn placeholder_id() -> MessageId {
    MessageId::new("pending").expect("invariant: literal id is valid")
}

pub(super) fn with_reply_to(body: Body, id: &MessageId) -> Body {
    match body {
        Body::Accepted(_) => Body::Accepted(Accepted {
            in_reply_to: id.clone(),
        }),
        Body::SerialIssued(mut m) => {
            m.in_reply_to = id.clone();
            Body::SerialIssued(m)
        }
        Body::PrefixResult(mut m) => {
            m.in_reply_to = id.clone();
            Body::PrefixResult(m)
        }
        Body::Refused(mut m) => {
            m.in_reply_to = Some(id.clone());
            Body::Refused(m)
        }
        other => other,
    }
}

pub(super) fn store_refusal(e: &StoreError) -> Body {
    Body::Refused(Refused {
        in_reply_to: None,
        reason: Reason::Store,
        text: if e.is_storage_full() {
            "the box's disk is full; nothing was kept, send again later".to_owned()
        } else {
            "the box's store could not commit; nothing was kept, send again later".to_owned()
        },
    })
}

/// `text` cut to [`MAX_TEXT`] bytes on a character boundary.
pub(super) fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
