//! The engine driven synchronously, without sockets or threads: for the
//! engine's tests and the `engine_sequences` fuzz target.
//!
//! A [`Harness`] owns a real [`Engine`] on a real store file. Each call
//! to [`Harness::run`] is one batch: the inputs are handled against one
//! write transaction, committed, and the replies and verdicts returned
//! in input order — exactly what [`Engine::run`] does for the listeners,
//! minus the channel. The clock is the harness's own ([`Harness::now`]),
//! so step timers and serial dates can be tested at any instant;
//! [`Harness::reboot`] boots a new engine on the same store, as a restart
//! (or a crash: nothing but the store survives either) would.
//!
//! [`Fixture`] is a small network around the box — its IMS, the core with
//! a deterministic Ed25519 key, one peer box — that builds the
//! distribution, signed permits and messages a flow needs.
//!
//! Invariant: the harness adds no behaviour; everything observable comes
//! from the engine's own batch loop and the store.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ifrelay_proto::{
    AgencyCode, Body, Distribution, Frame, Masters, MessageId, Millis, Party, PermitFields,
    PermitIssued, PersonCode, Prefix, PrefixEntry, Provision, Query, Reason, Route, Serial,
    SignedPermit, StatusEvent,
};
use ifrelay_store::{Direction, Store, StoreError, StoreReader};
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio::sync::{mpsc, oneshot};

use super::{Engine, EngineConfig, EngineStats, StepTimeouts};
use crate::net::now_millis;
use crate::relay::channel::{
    Delivery, FrameInput, Input, Listener, Notice, Peer, Undeliverable, Verdict,
};
use crate::relay::destination::{Destination, OutboxItem};
use crate::relay::hours::ServiceHours;
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

    /// Boots an engine on `store`, with the harness clock at `now`.
    ///
    /// # Errors
    /// The store's, when it cannot boot.
    pub fn boot(store: Store, cfg: EngineConfig, now: Millis) -> Result<Harness, StoreError> {
        let reader = store.reader();
        let (tx, notices) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let (engine, _ids) = Engine::boot(store, cfg.clone(), tx, stats.clone())?;
        Ok(Harness {
            engine,
            cfg,
            reader,
            notices,
            stats,
            now,
            next_id: 0,
        })
    }

    /// Stops this engine and boots a new one on the same store, keeping
    /// the clock: a restart, or a crash after the last commit.
    ///
    /// # Errors
    /// The store's, when it cannot boot.
    pub fn reboot(self) -> Result<Harness, StoreError> {
        let Harness {
            engine,
            cfg,
            now,
            next_id,
            ..
        } = self;
        let mut h = Harness::boot(engine.store, cfg, now)?;
        // Frame ids keep counting: the store remembers the old ones, and
        // a reused id would be answered from the duplicate table.
        h.next_id = next_id;
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
        let mut out = Vec::new();
        while let Ok(n) = self.notices.try_recv() {
            if let Notice::Wake(d) = n {
                out.push(d);
            }
        }
        out
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

/// The parties around one box (agency `131016`, requester of a prefix to
/// agency `271004`, and provider of the reverse prefix), and a core whose
/// permit key is derived from a fixed seed, so runs are reproducible.
pub struct Fixture {
    pub own: AgencyCode,
    pub other: AgencyCode,
    /// Where the other agency's box listens (inside the allowed peer
    /// network of [`Fixture::config`]).
    pub other_endpoint: SocketAddr,
    /// Where this box's core-side listener is, as permits name it.
    pub own_endpoint: SocketAddr,
    key: Ed25519KeyPair,
    permits: u64,
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

impl Fixture {
    /// Default step timeouts of [`Fixture::config`].
    pub const STEPS: StepTimeouts = StepTimeouts {
        permit: Duration::from_secs(30),
        query_accepted: Duration::from_secs(30),
        provision_complete: Duration::from_secs(60),
        idle_process: Duration::from_secs(120),
    };

    pub fn new() -> Fixture {
        Fixture {
            own: code("131016"),
            other: code("271004"),
            other_endpoint: SocketAddr::from(([127, 0, 0, 2], 7443)),
            own_endpoint: SocketAddr::from(([127, 0, 0, 1], 7443)),
            key: Ed25519KeyPair::from_seed_unchecked(&[7; 32])
                .expect("invariant: any 32 bytes are an Ed25519 seed"),
            permits: 0,
        }
    }

    /// The box's configuration: always in service, loopback peers.
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            agency: self.own.clone(),
            peer_allow: vec!["127.0.0.0/8".parse().expect("invariant: literal network")],
            clock_synced: false,
            hours: ServiceHours::always(),
            steps: Fixture::STEPS,
        }
    }

    /// The core's permit-signing public key.
    pub fn core_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// This box asks the other agency (requester side).
    pub fn prefix(&self) -> Prefix {
        prefix(&self.own, &self.other)
    }

    /// The other agency asks this box (provider side).
    pub fn reverse_prefix(&self) -> Prefix {
        prefix(&self.other, &self.own)
    }

    /// A prefix list holding both prefixes, with the core key.
    pub fn distribution(&self, version: u64) -> Distribution {
        let entries = [self.prefix(), self.reverse_prefix()]
            .into_iter()
            .flat_map(|p| {
                p.items
                    .iter()
                    .map(|item| PrefixEntry {
                        requester: p.requester.clone(),
                        provider: p.provider.clone(),
                        business: p.business.clone(),
                        info_name: p.info_name.clone(),
                        item: item.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Distribution {
            version,
            prefixes: entries,
            masters: Masters::default(),
            core_key: self.core_key(),
        }
    }

    /// Signs `fields` with the core's key.
    pub fn sign(&self, fields: &PermitFields) -> SignedPermit {
        let mut permit = SignedPermit::unsigned(fields);
        permit.sig = self.key.sign(&permit.signing_input()).as_ref().to_vec();
        permit
    }

    /// The fields of a permit for `serial` and `prefix`, routing the
    /// provision to the requester's box and the receipt to the
    /// provider's, valid for `ttl` from `now`.
    pub fn permit_fields(
        &mut self,
        serial: &Serial,
        prefix: &Prefix,
        now: Millis,
        ttl: Duration,
    ) -> PermitFields {
        self.permits += 1;
        let endpoint = |agency: &AgencyCode| {
            if *agency == self.own {
                self.own_endpoint
            } else {
                self.other_endpoint
            }
        };
        PermitFields {
            permit_id: code(&format!("P-{}", self.permits)),
            issuer: Party::core(),
            serial: serial.clone(),
            prefix: prefix.clone(),
            route: Route {
                agency: prefix.requester.clone(),
                endpoint: endpoint(&prefix.requester).to_string(),
            },
            provider_route: Route {
                agency: prefix.provider.clone(),
                endpoint: endpoint(&prefix.provider).to_string(),
            },
            issued_at: now,
            expires_at: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// A signed permit for `serial` and `prefix`, valid for ten minutes.
    pub fn permit(&mut self, serial: &Serial, prefix: &Prefix, now: Millis) -> SignedPermit {
        let fields = self.permit_fields(serial, prefix, now, Duration::from_secs(600));
        self.sign(&fields)
    }

    /// The core's `permit` message.
    pub fn permit_issued(serial: &Serial, permit: &SignedPermit) -> Body {
        Body::Permit(PermitIssued {
            serial: serial.clone(),
            permit: permit.clone(),
        })
    }

    /// A query under `permit`, with a well-formed key and a code.
    pub fn query(serial: &Serial, prefix: &Prefix, permit: &SignedPermit) -> Query {
        Query {
            serial: serial.clone(),
            prefix: prefix.clone(),
            permit: permit.clone(),
            public_key: vec![9; 32],
            code: code::<PersonCode>("C-abc"),
        }
    }

    /// A provision under `permit`, with an opaque body.
    pub fn provision(serial: &Serial, prefix: &Prefix, permit: &SignedPermit) -> Provision {
        Provision {
            serial: serial.clone(),
            prefix: prefix.clone(),
            permit: permit.clone(),
            body: vec![1, 2, 3, 4],
        }
    }

    /// This box's IMS, on the agency-side listener.
    pub fn ims(&self) -> Peer {
        peer(Party::ims(self.own.clone()), Listener::AgencySide, 40_001)
    }

    /// The core, on the core-side listener.
    pub fn core(&self) -> Peer {
        peer(Party::core(), Listener::CoreSide, 40_002)
    }

    /// The other agency's box, on the core-side listener.
    pub fn other_box(&self) -> Peer {
        peer(Party::is(self.other.clone()), Listener::CoreSide, 40_003)
    }
}

fn peer(party: Party, listener: Listener, port: u16) -> Peer {
    Peer {
        party,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        listener,
    }
}

fn prefix(requester: &AgencyCode, provider: &AgencyCode) -> Prefix {
    let mut items = heapless::Vec::new();
    for item in ["I001", "I002"] {
        items
            .push(code(item))
            .expect("invariant: two items fit a prefix");
    }
    Prefix {
        requester: requester.clone(),
        business: code("B010"),
        provider: provider.clone(),
        info_name: code("N020"),
        items,
    }
}

/// A literal code of the fixture.
fn code<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("invariant: fixture codes are valid")
}
