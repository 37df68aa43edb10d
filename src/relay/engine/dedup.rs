//! Duplicate suppression: what is remembered of an accepted frame, and
//! for how long.
//!
//! Every accepted frame is remembered by (sender, message id) with a
//! fingerprint of its content and the reply it got, in the same commit as
//! its effects. Invariants: the same frame again gets the same reply and
//! changes nothing else; the same id with other content is refused
//! `E_DUPLICATE`; refused frames are never remembered, so a resend after
//! `E_BUSY` or `E_STORE` is handled afresh.

use std::time::Duration;

use ifrelay_proto::{Body, Frame, MessageId, Party};

/// How long a message id is remembered for duplicate suppression: longer
/// than any sender keeps retrying one frame.
pub const SEEN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Most remembered ids forgotten per tick, so pruning never makes one
/// commit large.
pub(super) const SEEN_PRUNE_PER_TICK: usize = 2048;

/// A digest of what a frame says, apart from its id and send time: a
/// resend of the same frame has the same fingerprint.
pub(super) fn fingerprint(frame: &Frame) -> [u8; 32] {
    use sha2::Digest;
    let id = MessageId::new("x").expect("invariant: literal id is valid");
    let neutral = Frame::new(id, frame.header.from.clone(), 0, frame.body.clone());
    sha2::Sha256::digest(neutral.encode_body()).into()
}

/// What is remembered of an accepted frame: its fingerprint and the reply.
pub(super) fn encode_seen(print: &[u8; 32], reply: &Body, own: &Party) -> Vec<u8> {
    let id = MessageId::new("x").expect("invariant: literal id is valid");
    let mut out = print.to_vec();
    out.extend(Frame::new(id, own.clone(), 0, reply.clone()).encode_body());
    out
}

/// The remembered reply, when `print` matches the remembered fingerprint.
pub(super) fn decode_seen(stored: &[u8], print: &[u8; 32]) -> Option<Body> {
    let (head, reply) = stored.split_at_checked(32)?;
    if head != print {
        return None;
    }
    Frame::decode_body(reply).ok().map(|f| f.body)
}
