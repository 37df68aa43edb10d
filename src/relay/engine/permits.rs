//! Permits (R-PRM-2) and the routes they sign: whether a permit from the
//! core may be relayed (requester side) or acted on (provider side), and
//! where its routes lead.
//!
//! Invariants: a permit is used only after its signature verified with
//! the distributed core key, its issuer is the core, it has not expired,
//! and it names the serial and prefix it is used with; a route is used
//! only when its endpoint is an `ip:port` inside the allowed peer
//! networks (R-SEC-5). Checks only read; they never change state.

use std::net::SocketAddr;

use ifrelay_proto::{
    Millis, Party, PermitFields, PermitIssued, Query, Reason, Route, SignedPermit, MAX_ADDRESS,
};

use super::config::EngineConfig;
use super::prefix::PrefixState;
use super::reply::{refuse, Refusal};
use crate::relay::destination::Destination;
use crate::relay::process::Process;

/// Checks the core's signature, the issuer and the validity window.
pub(super) fn verify(
    list: Option<&PrefixState>,
    permit: &SignedPermit,
    now: Millis,
) -> Result<PermitFields, Refusal> {
    let key = list
        .map(|p| p.core_key.as_slice())
        .ok_or_else(|| refuse(Reason::NoPrefixList, "no core key distributed yet"))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(&permit.signing_input(), &permit.sig)
        .map_err(|_| {
            refuse(
                Reason::PermitInvalid,
                "the permit's signature does not verify with the core's key",
            )
        })?;
    let fields = permit.fields().map_err(|e| refuse(e.reason, e.text))?;
    if fields.issuer != Party::core() {
        return Err(refuse(
            Reason::PermitInvalid,
            "the permit was not issued by the core",
        ));
    }
    check_expiry(&fields, now)?;
    Ok(fields)
}

/// A permit is good only until its `expires_at`.
pub(super) fn check_expiry(fields: &PermitFields, now: Millis) -> Result<(), Refusal> {
    if now > fields.expires_at {
        return Err(refuse(
            Reason::PermitInvalid,
            format!(
                "the permit {} expired {} ms ago; ask for a new one",
                fields.permit_id,
                now - fields.expires_at
            ),
        ));
    }
    Ok(())
}

/// The checks a permit from the core must pass before the requester's box
/// relays it: signature, issuer, expiry, binding to the request, and
/// routes.
pub(super) fn for_requester(
    cfg: &EngineConfig,
    list: Option<&PrefixState>,
    p: &Process,
    m: &PermitIssued,
    now: Millis,
) -> Result<PermitFields, Refusal> {
    let fields = verify(list, &m.permit, now)?;
    if fields.serial != m.serial || Some(&fields.prefix) != p.prefix.as_ref() {
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
    list: Option<&PrefixState>,
    m: &Query,
    now: Millis,
) -> Result<PermitFields, Refusal> {
    let fields = verify(list, &m.permit, now)?;
    if fields.serial != m.serial
        || fields.prefix != m.prefix
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
