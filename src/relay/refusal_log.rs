//! Access-log notes of what a listener refuses before the engine —
//! connections (address, limits, handshake, party) and frames over their
//! sender's rate — coalesced so that a flood cannot fill the disk
//! (protocol.md §5.5).
//!
//! Per listener, refusals are grouped by kind: source address, party
//! (when known), direction, operation and reason. The first of a kind
//! goes to the access log at once, as it always did; the ones that follow
//! within [`PERIOD`] are only counted, and when the period is over one
//! entry carries their number (operation `<operation> x<n>`, terminal
//! `<address>:0`). So a source costs the store at most two entries per
//! kind per period, however fast it is refused.
//!
//! Invariants: at most [`MAX_KINDS`] kinds are tracked; refusals of kinds
//! beyond that are counted under the source `0.0.0.0` and no party. A
//! count is never lost while the engine takes notes: periods are closed
//! by [`RefusalLog::flush`] and, for the rest, when the log is dropped.
//! Notes never wait for the engine: when its queue is full, the note is
//! dropped and the journal says so.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ifrelay_proto::{MessageId, Party, Reason};
use ifrelay_store::Direction;
use tokio::sync::mpsc;

use super::channel::Input;
use super::destination::party_label;

/// How long refusals of one kind are counted before their entry.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Most kinds of refusal tracked at once, per listener.
pub const MAX_KINDS: usize = 1024;

/// One refusal made before the engine.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub terminal: SocketAddr,
    pub party: Option<Party>,
    pub direction: Direction,
    pub operation: &'static str,
    pub message_id: Option<MessageId>,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    source: IpAddr,
    party: Option<Party>,
    direction: Direction,
    operation: &'static str,
    reason: Reason,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    more: u64,
}

/// The coalescing access-log notes of one listener.
#[derive(Debug)]
pub struct RefusalLog {
    engine: mpsc::Sender<Input>,
    period: Duration,
    windows: Mutex<HashMap<Kind, Window>>,
}

impl RefusalLog {
    pub fn new(engine: mpsc::Sender<Input>, period: Duration) -> Self {
        Self {
            engine,
            period,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Notes a refusal. Returns `true` when it went to the access log as
    /// an entry of its own (the first of its kind in a period): the caller
    /// logs it at `warn` then, at `debug` otherwise.
    pub fn note(&self, refusal: Refusal) -> bool {
        self.note_at(refusal, Instant::now())
    }

    /// As [`Self::note`], at `now` (tests).
    pub fn note_at(&self, refusal: Refusal, now: Instant) -> bool {
        let mut kind = Kind {
            source: refusal.terminal.ip().to_canonical(),
            party: refusal.party.clone(),
            direction: refusal.direction,
            operation: refusal.operation,
            reason: refusal.reason,
        };
        let mut closed = None;
        {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            if !windows.contains_key(&kind) && windows.len() >= MAX_KINDS {
                kind.source = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                kind.party = None;
            }
            match windows.get_mut(&kind) {
                Some(w) if now.saturating_duration_since(w.opened) < self.period => {
                    w.more += 1;
                    return false;
                }
                Some(w) => {
                    closed = (w.more > 0).then_some(w.more);
                }
                None => {}
            }
            windows.insert(
                kind.clone(),
                Window {
                    opened: now,
                    more: 0,
                },
            );
        }
        if let Some(more) = closed {
            self.summary(&kind, more);
        }
        self.send(Input::Refused {
            terminal: refusal.terminal,
            party: refusal.party,
            direction: refusal.direction,
            operation: refusal.operation.to_owned(),
            message_id: refusal.message_id,
            reason: refusal.reason,
        });
        true
    }

    /// Notes a refusal with an entry of its own, never coalesced: for
    /// the frames of an authenticated peer, each of which the access log
    /// lists (protocol.md §5.5).
    pub fn note_each(&self, refusal: Refusal) {
        self.send(Input::Refused {
            terminal: refusal.terminal,
            party: refusal.party,
            direction: refusal.direction,
            operation: refusal.operation.to_owned(),
            message_id: refusal.message_id,
            reason: refusal.reason,
        });
    }

    /// Writes the entry of every period that is over, or of every period
    /// when `all` (the listener is stopping).
    pub fn flush(&self, all: bool) {
        self.flush_at(Instant::now(), all);
    }

    /// As [`Self::flush`], at `now` (tests).
    pub fn flush_at(&self, now: Instant, all: bool) {
        let closed: Vec<(Kind, u64)> = {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            let mut closed = Vec::new();
            windows.retain(|kind, w| {
                let over = all || now.saturating_duration_since(w.opened) >= self.period;
                if over && w.more > 0 {
                    closed.push((kind.clone(), w.more));
                }
                !over
            });
            closed
        };
        for (kind, more) in closed {
            self.summary(&kind, more);
        }
    }

    /// The one entry standing for `more` refusals of `kind`.
    fn summary(&self, kind: &Kind, more: u64) {
        tracing::warn!(
            source = %kind.source,
            party = kind.party.as_ref().map(party_label).as_deref().unwrap_or("unauthenticated"),
            operation = kind.operation,
            reason = %kind.reason,
            count = more,
            "refused {more} more times in {:?} after the one logged",
            self.period
        );
        self.send(Input::Refused {
            terminal: SocketAddr::new(kind.source, 0),
            party: kind.party.clone(),
            direction: kind.direction,
            operation: format!("{} x{more}", kind.operation),
            message_id: None,
            reason: kind.reason,
        });
    }

    fn send(&self, input: Input) {
        // A flood must never block the box: when the engine's queue is
        // full the note is dropped (the journal still has it).
        if let Err(e) = self.engine.try_send(input) {
            if let Input::Refused {
                terminal, reason, ..
            } = e.into_inner()
            {
                tracing::warn!(%terminal, %reason, "access-log note dropped: engine busy");
            }
        }
    }
}

impl Drop for RefusalLog {
    fn drop(&mut self) {
        self.flush(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(addr: &str, reason: Reason) -> Refusal {
        Refusal {
            terminal: addr.parse().expect("addr"),
            party: None,
            direction: Direction::Connection,
            operation: "connect",
            message_id: None,
            reason,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Input>) -> Vec<(String, String, Reason)> {
        let mut out = Vec::new();
        while let Ok(input) = rx.try_recv() {
            if let Input::Refused {
                terminal,
                operation,
                reason,
                ..
            } = input
            {
                out.push((terminal.to_string(), operation, reason));
            }
        }
        out
    }

    #[test]
    fn a_flood_costs_two_entries_per_kind_and_period() {
        let (tx, mut rx) = mpsc::channel(100);
        let log = RefusalLog::new(tx, PERIOD);
        let t0 = Instant::now();
        let first = (0..1000)
            .filter(|i| log.note_at(refusal(&format!("10.0.0.1:{}", 1000 + i), Reason::Busy), t0))
            .count();
        assert_eq!(first, 1);
        assert!(log.note_at(refusal("10.0.0.2:5", Reason::Busy), t0));
        assert!(log.note_at(refusal("10.0.0.1:5", Reason::Timeout), t0));
        assert_eq!(drain(&mut rx).len(), 3);
        log.flush_at(t0 + PERIOD / 2, false);
        assert!(drain(&mut rx).is_empty(), "the period is not over");
        log.flush_at(t0 + PERIOD, false);
        assert_eq!(
            drain(&mut rx),
            vec![(
                "10.0.0.1:0".to_owned(),
                "connect x999".to_owned(),
                Reason::Busy
            )]
        );
        // The next refusal opens a new period and is logged at once.
        assert!(log.note_at(refusal("10.0.0.1:7", Reason::Busy), t0 + PERIOD));
        assert!(!log.note_at(refusal("10.0.0.1:8", Reason::Busy), t0 + PERIOD));
        drop(log);
        let last = drain(&mut rx);
        assert_eq!(last.len(), 2, "{last:?}");
        assert!(last.contains(&(
            "10.0.0.1:0".to_owned(),
            "connect x1".to_owned(),
            Reason::Busy
        )));
    }

    #[test]
    fn kinds_are_bounded() {
        let (tx, mut rx) = mpsc::channel(4 * MAX_KINDS);
        let log = RefusalLog::new(tx, PERIOD);
        let t0 = Instant::now();
        for i in 0..(2 * MAX_KINDS as u32) {
            let ip = Ipv4Addr::from(0x0a00_0000 + i);
            log.note_at(refusal(&format!("{ip}:1"), Reason::Busy), t0);
        }
        assert!(log.windows.lock().expect("lock").len() <= MAX_KINDS + 1);
        let entries = drain(&mut rx);
        assert_eq!(entries.len(), MAX_KINDS + 1);
        log.flush_at(t0, true);
        assert_eq!(
            drain(&mut rx),
            vec![(
                "0.0.0.0:0".to_owned(),
                format!("connect x{}", MAX_KINDS - 1),
                Reason::Busy
            )]
        );
    }
}
