//! Which party may send which message type on which listener: one table.
//!
//! Invariant: a frame whose type its sender may not send on that listener
//! is refused `E_ROLE` before any state is looked at, so no step handler
//! ever sees a message from a party that may not send it.

use ifrelay_proto::{Body, MessageType as T, Reason, Role};

use super::reply::{refuse, Refusal};
use crate::relay::channel::{Listener, Peer};

/// Which message types each party may send on each listener.
pub(super) fn check_role(peer: &Peer, body: &Body) -> Result<(), Refusal> {
    let t = body.message_type();
    let allowed: &[T] = match (peer.listener, peer.party.role) {
        (Listener::AgencySide, Role::Ims) => &[
            T::SerialRequest,
            T::PrefixCheck,
            T::PermitRequest,
            T::Query,
            T::QueryAccepted,
            T::QueryComplete,
            T::Provision,
            T::ProvisionReceived,
            T::ProvisionComplete,
            T::ProcessError,
            T::BoxStatus,
        ],
        (Listener::CoreSide, Role::Core) => &[
            T::Permit,
            T::PermitRefused,
            T::Query,
            T::QueryAccepted,
            T::Distribution,
            T::ProcessError,
            T::BoxStatus,
        ],
        (Listener::CoreSide, Role::Is) => &[
            T::Provision,
            T::ProvisionReceived,
            T::ProcessError,
            T::BoxStatus,
        ],
        _ => &[],
    };
    if allowed.contains(&t) {
        Ok(())
    } else {
        Err(refuse(
            Reason::Role,
            format!("{} may not send {t} to this box", peer.party),
        ))
    }
}

/// Whether `body` from a party of `role` starts a new process: only these
/// are refused outside service hours (R-AV-1).
pub(super) fn starts_process(role: Role, body: &Body) -> bool {
    matches!(
        (role, body),
        (Role::Ims, Body::SerialRequest(_)) | (Role::Core, Body::Query(_))
    )
}
