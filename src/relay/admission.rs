//! Who gets a connection, per listener (protocol.md §1, "Admission"):
//! two budgets that never take from each other.
//!
//! - **Handshakes**: a connection that has not yet completed TLS and the
//!   party check holds a [`HandshakePermit`] — one of
//!   `limits.max_handshakes` places of the listener and one of
//!   `limits.max_handshakes_per_source` places of its source address. A
//!   connection whose address has all its places taken waits for one, in
//!   a line of at most [`WAITING_PER_PLACE`] per place (a client that
//!   opens a burst of connections is served a few at a time), within its
//!   handshake deadline; beyond the line, or when the listener has no
//!   place at all, it is refused at once. An address that floods the
//!   listener with connections that never finish TLS so uses up only its
//!   own places and line, and never an authenticated slot.
//! - **Slots**: an authenticated connection holds a [`Slot`] for the rest
//!   of its life: at most `limits.max_connections` per listener, of which
//!   `limits.reserved_connections` only the core and the own IMS may use
//!   (they take the reserve first, so peer boxes keep the shared part).
//!
//! Invariant: every place in line, permit and slot is released by
//! `Drop`, so a connection task that ends by any path — error, timeout,
//! cancellation, panic — gives its place back; the counts never leak.

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

/// Connections that may wait, per handshake place, for one to free.
pub const WAITING_PER_PLACE: usize = 4;

/// Why a connection got no place in line for a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Its address has all its places taken and its line full.
    Source,
    /// The listener has every handshake place taken, or its line full.
    Listener,
}

impl Full {
    pub fn describe(self) -> &'static str {
        match self {
            Full::Source => "too many handshakes under way or waiting from this address",
            Full::Listener => "too many handshakes under way on this listener",
        }
    }
}

/// One source address: its places, and how many connections hold or
/// wait for one.
#[derive(Debug)]
struct Source {
    places: Arc<Semaphore>,
    queued: usize,
}

/// Every source with a connection in line, and their number in all.
#[derive(Debug, Default)]
struct Line {
    sources: HashMap<IpAddr, Source>,
    queued: usize,
}

type SharedLine = Arc<Mutex<Line>>;

fn lock(line: &SharedLine) -> std::sync::MutexGuard<'_, Line> {
    line.lock().unwrap_or_else(|p| p.into_inner())
}

/// The budgets of one listener.
#[derive(Debug)]
pub struct Admission {
    handshakes: Arc<Semaphore>,
    line: SharedLine,
    per_source: usize,
    max_queued: usize,
    shared: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    limits: AdmissionLimits,
}

/// A connection's place in line for a handshake (held or awaited).
#[derive(Debug)]
pub struct Ticket {
    line: SharedLine,
    ip: IpAddr,
    places: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut line = lock(&self.line);
        line.queued = line.queued.saturating_sub(1);
        if let Some(source) = line.sources.get_mut(&self.ip) {
            source.queued = source.queued.saturating_sub(1);
            if source.queued == 0 {
                line.sources.remove(&self.ip);
            }
        }
    }
}

impl Ticket {
    /// Waits for a handshake place of the connection's address, then of
    /// the listener (the caller bounds the wait by the handshake deadline).
    pub async fn admitted(self) -> HandshakePermit {
        let closed = "invariant: admission semaphores are never closed";
        let source = self.places.clone().acquire_owned().await.expect(closed);
        let overall = self.handshakes.clone().acquire_owned().await.expect(closed);
        HandshakePermit {
            _overall: overall,
            _source: source,
            _ticket: self,
        }
    }
}

/// Held by a connection until its TLS handshake and party check are done.
#[derive(Debug)]
pub struct HandshakePermit {
    _overall: OwnedSemaphorePermit,
    _source: OwnedSemaphorePermit,
    _ticket: Ticket,
}

/// Held by an authenticated connection for the rest of its life.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// Connections of a listener at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    /// In their TLS handshake (holding a handshake place).
    pub handshaking: usize,
    /// Waiting for a handshake place.
    pub waiting: usize,
    /// Authenticated, holding a slot.
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
            line: Arc::new(Mutex::new(Line::default())),
            per_source,
            max_queued: handshakes * (1 + WAITING_PER_PLACE),
            shared: Arc::new(Semaphore::new(max_connections - reserved)),
            reserve: Arc::new(Semaphore::new(reserved)),
            limits: effective,
        }
    }

    /// The budgets in force (after the bounds of [`Admission::new`]).
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// A place in line for a connection from `ip` to do its TLS
    /// handshake; [`Ticket::admitted`] waits for the place itself.
    ///
    /// # Errors
    /// [`Full`] when the listener has no handshake place free, or the
    /// line of its address or of the listener is full.
    pub fn enter(&self, ip: IpAddr) -> Result<Ticket, Full> {
        if self.handshakes.available_permits() == 0 {
            return Err(Full::Listener);
        }
        let ip = ip.to_canonical();
        let mut line = lock(&self.line);
        if line.queued >= self.max_queued {
            return Err(Full::Listener);
        }
        let per_source = self.per_source;
        let source = line.sources.entry(ip).or_insert_with(|| Source {
            places: Arc::new(Semaphore::new(per_source)),
            queued: 0,
        });
        if source.queued >= per_source * (1 + WAITING_PER_PLACE) {
            return Err(Full::Source);
        }
        source.queued += 1;
        let places = source.places.clone();
        line.queued += 1;
        Ok(Ticket {
            line: self.line.clone(),
            ip,
            places,
            handshakes: self.handshakes.clone(),
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

    /// How many connections hold or wait for a place now.
    pub fn occupancy(&self) -> Occupancy {
        let l = &self.limits;
        let handshaking = l.max_handshakes - self.handshakes.available_permits();
        let queued = lock(&self.line).queued;
        Occupancy {
            handshaking,
            waiting: queued.saturating_sub(handshaking),
            authenticated: l.max_connections
                - self.shared.available_permits()
                - self.reserve.available_permits(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    async fn permit(a: &Admission, from: &str) -> HandshakePermit {
        let ticket = a.enter(ip(from)).expect("a place in line");
        tokio::time::timeout(Duration::from_millis(100), ticket.admitted())
            .await
            .expect("a place at once")
    }

    #[tokio::test]
    async fn handshakes_are_bounded_per_source_and_overall_and_given_back() {
        let a = Admission::new(limits(256, 16, 4, 2));
        let x1 = permit(&a, "10.0.0.1").await;
        let x2 = permit(&a, "::ffff:10.0.0.1").await;
        // A third from the same address waits for one of its places...
        let waiting = a.enter(ip("10.0.0.1")).expect("in line");
        let mut third = tokio::spawn(waiting.admitted());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished());
        assert_eq!(a.occupancy().waiting, 1);
        // ...while another address is served at once.
        let y1 = permit(&a, "10.0.0.2").await;
        drop(x1);
        let x3 = tokio::time::timeout(Duration::from_secs(1), &mut third)
            .await
            .expect("admitted once a place is free")
            .expect("task");
        // Every place of the listener taken: refused at once.
        let y2 = permit(&a, "10.0.0.2").await;
        assert_eq!(a.enter(ip("10.0.0.3")).err(), Some(Full::Listener));
        assert_eq!(a.occupancy().handshaking, 4);
        drop((x2, x3, y1, y2));
        let o = a.occupancy();
        assert_eq!((o.handshaking, o.waiting), (0, 0), "every place given back");
        assert!(lock(&a.line).sources.is_empty());
    }

    #[tokio::test]
    async fn the_line_of_an_address_is_bounded() {
        let a = Admission::new(limits(256, 16, 64, 2));
        let held = [permit(&a, "10.0.0.1").await, permit(&a, "10.0.0.1").await];
        let line: Vec<Ticket> = (0..2 * WAITING_PER_PLACE)
            .map(|_| a.enter(ip("10.0.0.1")).expect("in line"))
            .collect();
        assert_eq!(a.enter(ip("10.0.0.1")).err(), Some(Full::Source));
        assert!(
            a.enter(ip("10.0.0.2")).is_ok(),
            "other addresses unaffected"
        );
        drop(line);
        drop(held);
        assert_eq!(lock(&a.line).queued, 0);
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

    #[tokio::test]
    async fn budgets_fit_a_small_listener() {
        let a = Admission::new(limits(3, 16, 64, 8));
        assert_eq!(a.limits(), limits(3, 2, 3, 3));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(permit(&a, "127.0.0.1").await);
        }
        // The listener has no place left: no line, refused at once.
        assert_eq!(a.enter(ip("127.0.0.1")).err(), Some(Full::Listener));
        drop(held);
    }
}
