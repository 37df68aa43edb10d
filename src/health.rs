//! What the box knows of its own health for `status` (issue 10 item 7):
//! each peer's connection state and last contact ([`PeerBook`], written
//! by the listeners and the delivery workers), and the state of the last
//! hash-chain verification ([`ChainCheck`], run by a thread of its own at
//! start and once a day).
//!
//! Invariants: writers only replace small values under a short lock, so
//! the relay never waits on the console; nothing here reaches the store
//! except the chain check, which reads one snapshot off the relay's
//! threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use ifrelay_proto::{Millis, Party};
use ifrelay_store::StoreReader;

/// The box's connection to one peer, as the delivery worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Connected (since).
    Connected(Millis),
    /// The last attempt failed (when, failures in a row, why).
    Failing {
        at: Millis,
        failures: u32,
        why: String,
    },
}

/// What is known of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSeen {
    /// The box's own connection to it, once one was tried.
    pub outbound: Option<Outbound>,
    /// The last frame it answered to the box.
    pub last_answer: Option<Millis>,
    /// The last frame it sent the box.
    pub last_heard: Option<Millis>,
}

/// Every peer's [`PeerSeen`], shared by the listeners, the delivery
/// workers and the console.
#[derive(Debug, Default)]
pub struct PeerBook {
    peers: Mutex<HashMap<Party, PeerSeen>>,
}

impl PeerBook {
    fn with(&self, party: &Party, f: impl FnOnce(&mut PeerSeen)) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        match peers.get_mut(party) {
            Some(seen) => f(seen),
            None => f(peers.entry(party.clone()).or_default()),
        }
    }

    /// `party` sent the box a frame at `now`.
    pub fn heard(&self, party: &Party, now: Millis) {
        self.with(party, |s| s.last_heard = Some(now));
    }

    /// The box's connection to `party` is up.
    pub fn connected(&self, party: &Party, now: Millis) {
        self.with(party, |s| s.outbound = Some(Outbound::Connected(now)));
    }

    /// `party` answered a frame the box delivered.
    pub fn answered(&self, party: &Party, now: Millis) {
        self.with(party, |s| s.last_answer = Some(now));
    }

    /// Reaching `party` failed, `failures` times in a row.
    pub fn failed(&self, party: &Party, now: Millis, failures: u32, why: &str) {
        self.with(party, |s| {
            s.outbound = Some(Outbound::Failing {
                at: now,
                failures,
                why: why.chars().take(60).collect(),
            });
        });
    }

    /// Every peer seen, by name.
    pub fn snapshot(&self) -> Vec<(String, PeerSeen)> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(String, PeerSeen)> = peers
            .iter()
            .map(|(p, s)| (p.to_string(), s.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The state of the hash-chain verification (R-SEC-6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ChainState {
    /// Not finished once since the start.
    #[default]
    Pending,
    /// Both chains verified at `at`.
    Intact { at: Millis, entries: u64 },
    /// Defects found at `at` (how many; the first, described).
    Broken {
        at: Millis,
        defects: usize,
        first: String,
    },
    /// The store could not be read.
    Failed { at: Millis, why: String },
}

/// How often the chains are verified again.
pub const CHAIN_CHECK_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The chain verification thread and its latest state.
pub struct ChainCheck {
    state: Arc<Mutex<ChainState>>,
    stop: Arc<AtomicBool>,
    /// Dropped to wake the thread from its wait between checks.
    wake: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ChainCheck {
    /// Starts verifying at once, then every `every`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(
        reader: StoreReader,
        clock: fn() -> Millis,
        every: Duration,
    ) -> std::io::Result<ChainCheck> {
        let state = Arc::new(Mutex::new(ChainState::Pending));
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, asleep) = mpsc::channel::<()>();
        let (s, flag) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("chain-check".into())
            .spawn(move || loop {
                let stopping = || flag.load(Ordering::Acquire);
                match check(&reader, clock(), &stopping) {
                    Some(result) => *s.lock().unwrap_or_else(PoisonError::into_inner) = result,
                    None => return,
                }
                // Until the next check, or until the stop drops `wake`.
                match asleep.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(ChainCheck {
            state,
            stop,
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// A handle to read the latest state.
    pub fn state(&self) -> Arc<Mutex<ChainState>> {
        self.state.clone()
    }

    /// Stops the thread: a verification under way stops within a few
    /// thousand entries.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("chain check: its thread panicked");
            }
        }
    }
}

/// One verification; `None` when stopped before it ended.
fn check(reader: &StoreReader, now: Millis, stop: &dyn Fn() -> bool) -> Option<ChainState> {
    Some(match reader.verify_chains_unless(stop) {
        Ok(None) => return None,
        Ok(Some(report)) if report.is_intact() => {
            tracing::info!(
                records = report.records.checked,
                access_log = report.access_log.checked,
                "chain check: both chains verify"
            );
            ChainState::Intact {
                at: now,
                entries: report.records.checked + report.access_log.checked,
            }
        }
        Ok(Some(report)) => {
            let defects: Vec<String> = report
                .records
                .defects
                .iter()
                .chain(&report.access_log.defects)
                .map(|d| format!("{:?} at {}", d.kind, d.seq))
                .collect();
            tracing::error!(defects = defects.len(), first = ?defects.first(), "chain check: the chains do NOT verify");
            ChainState::Broken {
                at: now,
                defects: defects.len(),
                first: defects.into_iter().next().unwrap_or_default(),
            }
        }
        Err(e) => {
            tracing::error!(error = %crate::logging::Causes(&e), "chain check: cannot read the store");
            ChainState::Failed {
                at: now,
                why: e.to_string(),
            }
        }
    })
}
