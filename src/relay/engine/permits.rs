//! Permits (R-PRM-2) and the routes they sign: whether a permit from the
//! core may be relayed (requester side) or acted on (provider side), and
//! where its routes lead.
//!
//! Invariants: a permit is used only after [`permit::verify`] accepted it
//! (signature by the distributed core key, fields, issuer, expiry) and it
//! names the serial and prefix it is used with; a refused permit is
//! answered with the verifier's reason and text, so boxes and simulators
//! agree; a route is used only when its endpoint is an `ip:port` inside
//! the allowed peer networks (R-SEC-5). Checks only read; they never
//! change state.

use std::net::SocketAddr;

use ifrelay_proto::permit::{self, PermitError};
use ifrelay_proto::{
    Millis, PermitFields, PermitIssued, Query, Reason, Route, SignedPermit, MAX_ADDRESS,
};

use super::config::EngineConfig;
use super::prefix::Lists;
use super::reply::{refuse, Refusal};
use crate::relay::destination::Destination;
use crate::relay::process::Process;

/// Checks the core's signature, the fields, the issuer and the validity
/// window, through the one verifier every party uses
/// ([`ifrelay_proto::permit::verify`]), with the core keys of the list in
/// force that are valid now. No list means no core key: refused
/// [`Reason::NoPrefixList`]; a list whose keys are all outside their
/// windows: [`Reason::PermitInvalid`].
pub(super) fn verify(
    lists: &Lists,
    permit: &SignedPermit,
    now: Millis,
) -> Result<PermitFields, Refusal> {
    if !lists.has_list() {
        return Err(refusal(PermitError::NoKey));
    }
    let keys = lists.core_keys_at(now);
    if keys.is_empty() {
        return Err(refuse(
            Reason::PermitInvalid,
            "no core key of the list in force is valid now",
        ));
    }
    permit::verify(permit, &keys, now).map_err(refusal)
}

/// A permit is good only until its `expires_at`; checked again when the
/// query uses a permit verified earlier.
pub(super) fn check_expiry(fields: &PermitFields, now: Millis) -> Result<(), Refusal> {
    fields.check_expiry(now).map_err(refusal)
}

/// The refusal the box answers for a permit that fails verification: the
/// error's own reason and text.
fn refusal(e: PermitError) -> Refusal {
    refuse(e.reason(), e.text())
}

/// The checks a permit from the core must pass before the requester's box
/// relays it: signature, issuer, expiry, binding to the request, and
/// routes.
pub(super) fn for_requester(
    cfg: &EngineConfig,
    lists: &Lists,
    p: &Process,
    m: &PermitIssued,
    now: Millis,
) -> Result<PermitFields, Refusal> {
    let fields = verify(lists, &m.permit, now)?;
    let bound = p
        .prefix
        .as_ref()
        .is_some_and(|prefix| fields.check_serial_and_prefix(&m.serial, prefix).is_ok());
    if !bound {
        return Err(refuse(
            Reason::PermitInvalid,
            "the permit's serial or prefix differs from the request",
        ));
    }
    if fields.route.agency != cfg.agency {
        return Err(refuse(
            Reason::PermitInvalid,
            format!(
                "the permit routes to {}, not to this box",
                fields.route.agency
            ),
        ));
    }
    // The provision-received notice will go to this route: refuse a
    // permit whose provider route is unusable now, not after the
    // provision has been relayed.
    if fields.provider_route.agency != fields.prefix.provider {
        return Err(refuse(
            Reason::PermitInvalid,
            "the permit's provider route names another agency than the provider",
        ));
    }
    peer_destination(cfg, &fields.provider_route)
        .map_err(|r| refuse(Reason::PermitInvalid, r.text))?;
    Ok(fields)
}

/// The checks the permit of a query from the core must pass before the
/// provider's box acts on it: signature, issuer, expiry, the query's
/// serial and prefix, this box as provider, and the route back to the
/// requester.
pub(super) fn for_provider(
    cfg: &EngineConfig,
    lists: &Lists,
    m: &Query,
    now: Millis,
) -> Result<PermitFields, Refusal> {
    let fields = verify(lists, &m.permit, now)?;
    if fields
        .check_serial_and_prefix(&m.serial, &m.prefix)
        .is_err()
        || fields.provider_route.agency != cfg.agency
        || m.prefix.provider != cfg.agency
    {
        return Err(refuse(
            Reason::PermitInvalid,
            "the permit does not match the query's serial, prefix or provider",
        ));
    }
    if fields.route.agency != m.prefix.requester {
        return Err(refuse(
            Reason::PermitInvalid,
            "the permit routes to another agency than the requester",
        ));
    }
    peer_destination(cfg, &fields.route).map_err(|r| refuse(Reason::PermitInvalid, r.text))?;
    Ok(fields)
}

/// R-QRY-6: the query's own format, beyond what decoding checked.
pub(super) fn check_query_format(m: &Query) -> Result<(), Refusal> {
    if m.permit.signed.is_empty() || m.permit.sig.is_empty() {
        return Err(refuse(
            Reason::NoPermit,
            "the query carries an empty permit",
        ));
    }
    if m.public_key.is_empty() {
        return Err(refuse(
            Reason::NoPublicKey,
            "the query carries no public key",
        ));
    }
    if m.public_key.len() != 32 {
        return Err(refuse(
            Reason::InvalidField,
            format!(
                "public_key is {} bytes; an X25519 key is 32",
                m.public_key.len()
            ),
        ));
    }
    Ok(())
}

/// The peer box a signed route leads to, if its endpoint may be dialled.
pub(super) fn peer_destination(cfg: &EngineConfig, route: &Route) -> Result<Destination, Refusal> {
    if route.endpoint.len() > MAX_ADDRESS {
        return Err(refuse(
            Reason::Route,
            format!("route endpoint is longer than {MAX_ADDRESS} bytes"),
        ));
    }
    let endpoint: SocketAddr = route.endpoint.parse().map_err(|_| {
        refuse(
            Reason::Route,
            format!("route endpoint {:?} is not ip:port", route.endpoint),
        )
    })?;
    if !cfg.peer_allow.iter().any(|n| n.contains(&endpoint.ip())) {
        return Err(refuse(
            Reason::Route,
            format!("route endpoint {endpoint} is outside the allowed peer networks"),
        ));
    }
    Ok(Destination::PeerIs {
        agency: route.agency.clone(),
        endpoint,
    })
}
