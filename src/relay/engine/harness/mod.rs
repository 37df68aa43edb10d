//! The engine driven synchronously, without sockets or threads: for the
//! engine's tests and the `engine_sequences` fuzz target.
//!
//! A [`Harness`] owns a real [`Engine`] on a real store file. Each call
//! to [`Harness::run`] is one batch: the inputs are handled against one
//! write transaction, committed, and the replies and verdicts returned
//! in input order — exactly what [`Engine::run`] does for the listeners,
//! minus the channel — then an index step takes every entry the batch
//! appended, as a quiet engine's next step would. The clock is the harness's own ([`Harness::now`]),
//! so step timers and serial dates can be tested at any instant;
//! [`Harness::reboot`] boots a new engine on the same store, as a restart
//! (or a crash: nothing but the store survives either) would.
//!
//! [`Harness::on_faulty_store`] runs the engine on a store in memory whose
//! writes, syncs and reads fail on command (`ifrelay_store::fault`,
//! re-exported here as [`MemoryFile`] and [`FaultSwitch`]): the engine fuzz
//! target and the failed-commit tests. Its [`Harness::reboot`] drops the
//! store and opens the same memory again, as a restarted process opens the
//! same file.
//!
//! [`Fixture`] (in `fixture.rs`) is a small network around the box — its
//! IMS, the core with a deterministic Ed25519 key, one peer box — that
//! builds the distribution, signed permits and messages a flow needs.
//!
//! Invariant: the harness adds no behaviour; everything observable comes
//! from the engine's own batch loop and the store.

mod fixture;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ifrelay_proto::{Body, Frame, MessageId, Millis, Party, Reason, Serial, StatusEvent};
pub use ifrelay_store::fault::{FaultSwitch, MemoryFile};
use ifrelay_store::{Direction, Store, StoreError, StoreReader};
use tokio::sync::{mpsc, oneshot};

pub use self::fixture::{Fixture, FAR_FUTURE};
use super::dedup::{decode_seen, fingerprint};
use super::{Engine, EngineConfig, EngineStats};
use crate::net::now_millis;
use crate::relay::channel::{Delivery, FrameInput, Input, Notice, Peer, Undeliverable, Verdict};
use crate::relay::destination::{party_label, Destination, OutboxItem};
use crate::relay::process::Process;

/// Store cache for a harness: small, the store is small.
const CACHE_BYTES: usize = 4 << 20;

/// What went wrong driving the engine: the store, or an outbox entry the
/// harness could not read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    #[error("the store failed")]
    Store(#[from] StoreError),
    #[error("outbox entry {seq} is unreadable: {text}")]
    Outbox { seq: u64, text: String },
}

/// One input of a batch, as the listeners and delivery would send it;
/// the harness makes the answer channels.
// Events live for one batch of a test; boxing them would only cost
// readability.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Event {
    /// A frame from an authenticated peer.
    Frame(Peer, Frame),
    /// A refusal a listener noted before the engine (only logged).
    Refused {
        terminal: SocketAddr,
        reason: Reason,
    },
    /// The next hop answered an outbox entry.
    Delivered(OutboxItem, Body),
    /// Delivery gave up reaching the next hop of an outbox entry.
    Undeliverable(OutboxItem),
    /// The one-second tick.
    Tick,
    /// The supervisor announces a lifecycle event.
    Announce(StatusEvent),
}

/// What one input got once its batch committed (or failed).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The reply to a frame or an announcement.
    pub reply: Option<Body>,
    /// The verdict on an undeliverable entry.
    pub verdict: Option<Verdict>,
}

/// Everything durable or decided about the box, for comparing before and
/// after an input: a refused input must change nothing here but
/// `access`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub records: u64,
    pub access: u64,
    /// (destination, seq, frame bytes) of every outbox entry.
    pub outbox: Vec<(String, u64, Vec<u8>)>,
    /// The engine's processes, by serial.
    pub processes: BTreeMap<Serial, Process>,
    pub stored_processes: u64,
    /// Remembered frames (duplicate suppression).
    pub seen: u64,
    pub prefix_version: Option<u64>,
    pub epoch: u64,
}

impl Snapshot {
    /// `self` with the access-log count of `other`: equal to `other` when
    /// only the access log differs.
    pub fn but_access(&self, other: &Snapshot) -> Snapshot {
        Snapshot {
            access: other.access,
            ..self.clone()
        }
    }
}

/// A real engine on a real store, driven one batch at a time.
pub struct Harness {
    engine: Engine,
    cfg: EngineConfig,
    reader: StoreReader,
    notices: mpsc::UnboundedReceiver<Notice>,
    /// Wake-ups read from `notices` and not yet taken by [`Self::woken`].
    wakes: Vec<Destination>,
    /// Rewinds read from `notices` and not yet counted by
    /// [`Self::rewinds`].
    rewinds: u64,
    /// The memory and the switch of a store opened by
    /// [`Self::on_faulty_store`], for [`Self::reboot`] to open again.
    faulty: Option<(MemoryFile, FaultSwitch)>,
    stats: Arc<Mutex<EngineStats>>,
    now: Millis,
    next_id: u64,
}

impl Harness {
    /// Opens (or creates) the store at `path` and boots an engine on it.
    ///
    /// # Errors
    /// The store's, when it cannot open or boot.
    pub fn open(path: &Path, cfg: EngineConfig) -> Result<Harness, StoreError> {
        Harness::boot(Store::open(path, CACHE_BYTES)?, cfg, now_millis())
    }

    /// Opens (or creates, when `memory` is empty) a store on `memory` whose
    /// operations fail whenever `faults` says, and boots an engine on it.
    /// The caller keeps clones of both: it arms and clears `faults` around
    /// the batches it wants to fail, and may open `memory` again after the
    /// harness is gone.
    ///
    /// # Errors
    /// The store's, when it cannot open or boot (an armed fault can make
    /// either fail).
    pub fn on_faulty_store(
        memory: &MemoryFile,
        faults: &FaultSwitch,
        cfg: EngineConfig,
    ) -> Result<Harness, StoreError> {
        let store = Store::open_with_faults(memory, faults, CACHE_BYTES)?;
        let mut h = Harness::boot(store, cfg, now_millis())?;
        h.faulty = Some((memory.clone(), faults.clone()));
        Ok(h)
    }

    /// Boots an engine on `store`, with the harness clock at `now`.
    ///
    /// # Errors
    /// The store's, when it cannot boot.
    pub fn boot(store: Store, cfg: EngineConfig, now: Millis) -> Result<Harness, StoreError> {
        let reader = store.reader();
        let (tx, notices) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let (engine, _ids) = Engine::boot(store, cfg.clone(), tx, stats.clone(), now)?;
        Ok(Harness {
            engine,
            cfg,
            reader,
            notices,
            wakes: Vec::new(),
            rewinds: 0,
            faulty: None,
            stats,
            now,
            next_id: 0,
        })
    }

    /// Stops this engine and boots a new one on the same store, keeping
    /// the clock: a restart, or a crash after the last commit. A harness
    /// [`on_faulty_store`](Self::on_faulty_store) closes its store and opens
    /// the same memory again (through the same switch), as a new process
    /// opens the same file; any other keeps its open store.
    ///
    /// # Errors
    /// The store's, when it cannot open or boot.
    pub fn reboot(self) -> Result<Harness, StoreError> {
        let cfg = self.cfg.clone();
        self.reboot_with(cfg)
    }

    /// As [`Harness::reboot`], under another configuration (say, other
    /// pinned roots).
    ///
    /// # Errors
    /// As [`Harness::reboot`].
    pub fn reboot_with(self, cfg: EngineConfig) -> Result<Harness, StoreError> {
        let Harness {
            engine,
            now,
            next_id,
            faulty,
            ..
        } = self;
        let store = match &faulty {
            Some((memory, faults)) => {
                // The old handle must be gone first: the memory, like a
                // file, refuses a second writer.
                drop(engine);
                Store::open_with_faults(memory, faults, CACHE_BYTES)?
            }
            None => engine.store,
        };
        let mut h = Harness::boot(store, cfg, now)?;
        // Frame ids keep counting: the store remembers the old ones, and
        // a reused id would be answered from the duplicate table.
        h.next_id = next_id;
        h.faulty = faulty;
        Ok(h)
    }

    /// The harness clock: the `now` of the next batch.
    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn set_now(&mut self, now: Millis) {
        self.now = now;
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&mut self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now = self.now.saturating_add(by);
    }

    /// A new frame from `from` with a message id not used before by this
    /// harness.
    pub fn frame(&mut self, from: &Party, body: Body) -> Frame {
        self.next_id += 1;
        let id = MessageId::new(format!("h-{}", self.next_id))
            .expect("invariant: h-<digits> is a valid message id");
        Frame::new(id, from.clone(), self.now, body)
    }

    /// Sends `body` from `peer` in a batch of its own; returns the reply.
    pub fn send(&mut self, peer: &Peer, body: Body) -> Body {
        let frame = self.frame(&peer.party, body);
        self.send_frame(peer, frame)
    }

    /// Sends `frame` from `peer` in a batch of its own; returns the reply.
    pub fn send_frame(&mut self, peer: &Peer, frame: Frame) -> Body {
        let out = self.run(vec![Event::Frame(peer.clone(), frame)]);
        out.into_iter()
            .next()
            .and_then(|o| o.reply)
            .expect("invariant: the engine answers every frame of a batch")
    }

    /// One tick in a batch of its own.
    pub fn tick(&mut self) {
        self.run(vec![Event::Tick]);
    }

    /// Handles `events` as one batch at [`Self::now`] and returns what
    /// each got, in order.
    pub fn run(&mut self, events: Vec<Event>) -> Vec<Outcome> {
        enum Wait {
            Reply(oneshot::Receiver<Body>),
            Verdict(oneshot::Receiver<Verdict>),
            Nothing,
        }
        let mut inputs = Vec::with_capacity(events.len());
        let mut waits = Vec::with_capacity(events.len());
        for event in events {
            let (input, wait) = match event {
                Event::Frame(peer, frame) => {
                    let (reply, rx) = oneshot::channel();
                    let input = FrameInput { peer, frame, reply };
                    (Input::Frame(Box::new(input)), Wait::Reply(rx))
                }
                Event::Refused { terminal, reason } => (
                    Input::Refused {
                        terminal,
                        party: None,
                        direction: Direction::In,
                        operation: "connect".to_owned(),
                        message_id: None,
                        reason,
                    },
                    Wait::Nothing,
                ),
                Event::Delivered(item, reply) => {
                    let terminal = match &item.destination {
                        Destination::PeerIs { endpoint, .. } => *endpoint,
                        Destination::Core | Destination::Ims => {
                            SocketAddr::from(([127, 0, 0, 1], 0))
                        }
                    };
                    let d = Delivery {
                        item,
                        terminal,
                        reply,
                    };
                    (Input::Delivered(Box::new(d)), Wait::Nothing)
                }
                Event::Undeliverable(item) => {
                    let (verdict, rx) = oneshot::channel();
                    let u = Undeliverable { item, verdict };
                    (Input::Undeliverable(Box::new(u)), Wait::Verdict(rx))
                }
                Event::Tick => (Input::Tick, Wait::Nothing),
                Event::Announce(event) => {
                    let (done, rx) = oneshot::channel();
                    let input = Input::Announce {
                        event,
                        done: Some(done),
                    };
                    (input, Wait::Reply(rx))
                }
            };
            inputs.push(input);
            waits.push(wait);
        }
        self.engine.run_batch(&mut inputs, self.now);
        // As a quiet engine does after its batch; when the live engine
        // steps is timing, not behaviour.
        self.engine.index_step(usize::MAX);
        waits
            .into_iter()
            .map(|w| match w {
                Wait::Reply(mut rx) => Outcome {
                    reply: rx.try_recv().ok(),
                    verdict: None,
                },
                Wait::Verdict(mut rx) => Outcome {
                    reply: None,
                    verdict: rx.try_recv().ok(),
                },
                Wait::Nothing => Outcome {
                    reply: None,
                    verdict: None,
                },
            })
            .collect()
    }

    /// Destinations the engine woke since the last call, in order.
    pub fn woken(&mut self) -> Vec<Destination> {
        self.read_notices();
        std::mem::take(&mut self.wakes)
    }

    /// How many times since the last call the engine told delivery to read
    /// its outbox again from the start (after a failed commit, once the
    /// store is back).
    pub fn rewinds(&mut self) -> u64 {
        self.read_notices();
        std::mem::take(&mut self.rewinds)
    }

    fn read_notices(&mut self) {
        while let Ok(n) = self.notices.try_recv() {
            match n {
                Notice::Wake(d) => self.wakes.push(d),
                Notice::Rewind => self.rewinds += 1,
            }
        }
    }

    /// The reply the store remembers for `frame` (duplicate suppression):
    /// `Some` when a batch that accepted it was committed, and the frame is
    /// the one remembered under its sender and id. Reads through a write
    /// transaction that is then dropped, so nothing is written.
    ///
    /// # Errors
    /// The store's.
    pub fn remembered(&mut self, frame: &Frame) -> Result<Option<Body>, HarnessError> {
        let sender = party_label(&frame.header.from);
        let batch = self.engine.store.begin()?;
        let seen = batch.seen(&sender, frame.header.id.as_str())?;
        drop(batch);
        Ok(seen.and_then(|s| decode_seen(&s.reply, &fingerprint(frame))))
    }

    /// Every outbox entry, by destination then seq, with its frame.
    ///
    /// # Errors
    /// The store's, or [`HarnessError::Outbox`] for an unreadable entry.
    pub fn outbox(&self) -> Result<Vec<(OutboxItem, Frame)>, HarnessError> {
        let mut out = Vec::new();
        for (destination, _) in self.reader.outbox_destinations()? {
            for e in self.reader.outbox_for(&destination, None, usize::MAX)? {
                let seq = e.seq;
                let item = OutboxItem::from_stored(seq, &destination, e.frame)
                    .map_err(|text| HarnessError::Outbox { seq, text })?;
                let frame = item
                    .bytes
                    .get(ifrelay_proto::frame::LENGTH_PREFIX..)
                    .and_then(|b| Frame::decode_body(b).ok())
                    .ok_or_else(|| HarnessError::Outbox {
                        seq,
                        text: "frame does not decode".to_owned(),
                    })?;
                out.push((item, frame));
            }
        }
        Ok(out)
    }

    /// The store's contents and the engine's processes.
    ///
    /// # Errors
    /// The store's.
    pub fn snapshot(&self) -> Result<Snapshot, HarnessError> {
        let mut outbox = Vec::new();
        for (destination, _) in self.reader.outbox_destinations()? {
            for e in self.reader.outbox_for(&destination, None, usize::MAX)? {
                outbox.push((destination.clone(), e.seq, e.frame));
            }
        }
        Ok(Snapshot {
            records: self.reader.record_count()?,
            access: self.reader.access_count()?,
            outbox,
            processes: self
                .engine
                .relay
                .processes
                .iter()
                .map(|(s, p)| (s.clone(), p.clone()))
                .collect(),
            stored_processes: self.reader.process_count()?,
            seen: self.reader.seen_len()?,
            prefix_version: self.reader.current_prefix()?.map(|(v, _)| v),
            epoch: self.reader.epoch()?,
        })
    }

    /// The engine's process of `serial`, if open.
    pub fn process(&self, serial: &Serial) -> Option<&Process> {
        self.engine.relay.processes.get(serial)
    }

    /// A reader of the engine's store.
    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    pub fn stats(&self) -> EngineStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
}
