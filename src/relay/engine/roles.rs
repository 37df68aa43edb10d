//! Which party may send which message type on which listener: one table.
//!
//! Invariant: a frame whose type its sender may not send on that listener
//! is refused `E_ROLE` before any state is looked at, so no step handler
//! ever sees a message from a party that may not send it.

use ifrelay_proto::{Body, Reason, Role};

use super::reply::{refuse, Refusal};
use crate::relay::channel::{Listener, Peer};

/// Which message types each party may send on each listener.
pub(super) fn check_role(peer: &Peer, body: &Body) -> Result<(), Refusal> {
    let t = body.type_name();
    let allowed: &[&str] = match (peer.listener, peer.party.role) {
        (Listener::AgencySide, Role::Ims) => &[
            "serial_request",
            "prefix_check",
            "permit_request",
            "query",
            "query_accepted",
            "query_complete",
            "provision",
            "provision_received",
            "provision_complete",
            "process_error",
            "box_status",
        ],
        (Listener::CoreSide, Role::Core) => &[
            "permit",
            "permit_refused",
            "query",
            "query_accepted",
            "distribution",
            "process_error",
            "box_status",
        ],
        (Listener::CoreSide, Role::Is) => &[
            "provision",
            "provision_received",
            "process_error",
            "box_status",
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
