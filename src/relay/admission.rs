//! Who gets a connection, per listener (protocol.md §1, "Admission"):
//! two budgets that never take from each other.
//!
//! - **Handshakes**: a connection that has not yet completed TLS and the
//!   party check holds a [`HandshakePermit`] — at most
//!   `limits.max_handshakes` per listener and
//!   `limits.max_handshakes_per_source` from one address. An address
//!   that floods the listener with connections that never finish TLS
//!   uses up only its own share, and never an authenticated slot.
//! - **Slots**: an authenticated connection holds a [`Slot`] for the rest
//!   of its life: at most `limits.max_connections` per listener, of which
//!   `limits.reserved_connections` only the core and the own IMS may use
//!   (they take the reserve first, so peer boxes keep the shared part).
//!
//! Invariant: every permit is released by `Drop`, so a connection task
//! that ends by any path — error, timeout, cancellation, panic — gives
//! its place back; the counts never leak.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budgets of one listener, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub max_connections: usize,
    pub reserved_connections: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_source: usize,
}

/// Why a connection got no handshake permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Its address has `max_handshakes_per_source` under way.
    Source,
    /// The listener has `max_handshakes` under way.
    Listener,
}

impl Full {
    pub fn describe(self) -> &'static str {
        match self {
            Full::Source => "too many handshakes under way from this address",
            Full::Listener => "too many handshakes under way on this listener",
        }
    }
}

/// Handshakes under way per source address.
type Sources = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The budgets of one listener.
#[derive(Debug)]
pub struct Admission {
    handshakes: Arc<Semaphore>,
    sources: Sources,
    per_source: usize,
    shared: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    limits: AdmissionLimits,
}

/// Held by a connection until its TLS handshake and party check are done.
#[derive(Debug)]
pub struct HandshakePermit {
    _overall: OwnedSemaphorePermit,
    sources: Sources,
    ip: IpAddr,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = sources.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                sources.remove(&self.ip);
            }
        }
    }
}

/// Held by an authenticated connection for the rest of its life.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// Connections of a listener at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub handshaking: usize,
    pub authenticated: usize,
}

impl Admission {
    /// The budgets of `limits`: the handshake budget is at most
    /// `max_connections` (a listener of 3 connections has at most 3
    /// handshakes under way), the per-source one at most that, and the
    /// reserve leaves peer boxes at least one slot.
    pub fn new(limits: AdmissionLimits) -> Self {
        let max_connections = limits.max_connections.max(1);
        let handshakes = limits.max_handshakes.clamp(1, max_connections);
        let per_source = limits.max_handshakes_per_source.clamp(1, handshakes);
        let reserved = limits.reserved_connections.min(max_connections - 1);
        let effective = AdmissionLimits {
            max_connections,
            reserved_connections: reserved,
            max_handshakes: handshakes,
            max_handshakes_per_source: per_source,
        };
        Self {
            handshakes: Arc::new(Semaphore::new(handshakes)),
            sources: Arc::new(Mutex::new(HashMap::new())),
            per_source,
            shared: Arc::new(Semaphore::new(max_connections - reserved)),
            reserve: Arc::new(Semaphore::new(reserved)),
            limits: effective,
        }
    }

    /// The budgets in force (after the bounds of [`Admission::new`]).
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// A place for a connection from `ip` to do its TLS handshake.
    ///
    /// # Errors
    /// [`Full`] when its address or the listener has no handshake left.
    pub fn handshake(&self, ip: IpAddr) -> Result<HandshakePermit, Full> {
        let ip = ip.to_canonical();
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let under_way = sources.get(&ip).copied().unwrap_or(0);
        if under_way >= self.per_source {
            return Err(Full::Source);
        }
        let overall = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full::Listener)?;
        sources.insert(ip, under_way + 1);
        Ok(HandshakePermit {
            _overall: overall,
            sources: self.sources.clone(),
            ip,
        })
    }

    /// A slot for an authenticated connection; `reserved` parties (the
    /// core, the own IMS) may also take from the reserve, and do so first.
    pub fn slot(&self, reserved: bool) -> Option<Slot> {
        let permit = if reserved {
            self.reserve
                .clone()
                .try_acquire_owned()
                .or_else(|_| self.shared.clone().try_acquire_owned())
        } else {
            self.shared.clone().try_acquire_owned()
        };
        permit.ok().map(|p| Slot { _permit: p })
    }

    /// How many connections hold a place now.
    pub fn occupancy(&self) -> Occupancy {
        let l = &self.limits;
        Occupancy {
            handshaking: l.max_handshakes - self.handshakes.available_permits(),
            authenticated: l.max_connections
                - self.shared.available_permits()
                - self.reserve.available_permits(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(conns: usize, reserved: usize, hs: usize, per_source: usize) -> AdmissionLimits {
        AdmissionLimits {
            max_connections: conns,
            reserved_connections: reserved,
            max_handshakes: hs,
            max_handshakes_per_source: per_source,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn handshakes_are_bounded_per_source_and_overall_and_given_back() {
        let a = Admission::new(limits(256, 16, 4, 2));
        let x1 = a.handshake(ip("10.0.0.1")).expect("first");
        let x2 = a
            .handshake(ip("::ffff:10.0.0.1"))
            .expect("second, same address");
        assert_eq!(a.handshake(ip("10.0.0.1")).err(), Some(Full::Source));
        let y1 = a.handshake(ip("10.0.0.2")).expect("other address");
        let y2 = a.handshake(ip("10.0.0.2")).expect("other address");
        assert_eq!(a.handshake(ip("10.0.0.3")).err(), Some(Full::Listener));
        assert_eq!(a.occupancy().handshaking, 4);
        drop(x1);
        drop(y1);
        assert!(a.handshake(ip("10.0.0.1")).is_ok());
        drop(x2);
        assert!(a.handshake(ip("10.0.0.3")).is_ok());
        drop(y2);
        assert_eq!(a.occupancy().handshaking, 0, "every permit given back");
        assert!(a.sources.lock().expect("lock").is_empty());
    }

    #[test]
    fn peers_never_take_the_reserve() {
        let a = Admission::new(limits(5, 2, 64, 8));
        let peers: Vec<Slot> = (0..3).map(|_| a.slot(false).expect("shared")).collect();
        assert!(a.slot(false).is_none(), "the shared part is full");
        let core = a.slot(true).expect("the reserve");
        let ims = a.slot(true).expect("the reserve");
        assert!(a.slot(true).is_none());
        assert_eq!(a.occupancy().authenticated, 5);
        drop(peers);
        drop((core, ims));
        assert_eq!(a.occupancy().authenticated, 0);
        // The privileged take the reserve first, leaving the shared part.
        let _core = a.slot(true).expect("reserve");
        let _ims = a.slot(true).expect("reserve");
        let _more = a.slot(true).expect("shared");
        assert!(a.slot(false).is_some());
    }

    #[test]
    fn budgets_fit_a_small_listener() {
        let a = Admission::new(limits(3, 16, 64, 8));
        assert_eq!(a.limits(), limits(3, 2, 3, 3));
        let held: Vec<_> = (0..3)
            .map(|_| a.handshake(ip("127.0.0.1")).expect("within 3"))
            .collect();
        assert!(a.handshake(ip("127.0.0.1")).is_err());
        drop(held);
    }
}
