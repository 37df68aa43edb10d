//! The relay engine: the one writer of the store and the owner of every
//! process's state.
//!
//! Inputs from all connections and delivery workers arrive on one bounded
//! channel. The engine thread takes a batch of them, handles each against
//! its in-memory state and one store write transaction, commits once
//! (group commit, one fsync for the batch), and only then answers the
//! senders and hands new outbox entries to delivery. A sender therefore
//! hears "accepted" only for what is durable (DESIGN "Wire format").
//!
//! Invariants:
//! - every input produces exactly one access-log entry in the same commit
//!   as its effects (R-REC-5);
//! - a refused input changes nothing but the access log;
//! - when a commit fails, every input of the batch is answered
//!   [`Reason::Store`] and the in-memory state is reloaded from the store
//!   before the next batch, so memory never runs ahead of disk.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ifrelay_proto::*;
use ifrelay_store::{
    AccessEntry, Batch, BootState, Direction, Record, RecordKind, Side, Store, StoreError,
};
use tokio::sync::{mpsc, oneshot};

use super::delivery::Notice;
use super::destination::{Destination, OutboxItem};
use super::hours::ServiceHours;
use super::process::{Process, Role as ProcRole, Step};
use crate::net::{now_millis, IdGen};

/// Most inputs handled in one commit.
pub const MAX_BATCH: usize = 256;
/// A commit this long counts in [`EngineStats::slow_commits`].
pub const SLOW_COMMIT: Duration = Duration::from_millis(20);

/// How long a message id is remembered for duplicate suppression: longer
/// than any sender keeps retrying one frame.
pub const SEEN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Most remembered ids forgotten per tick, so pruning never makes one
/// commit large.
const SEEN_PRUNE_PER_TICK: usize = 2048;

/// Which listener a frame arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Core system and peer interface systems.
    CoreSide,
    /// The agency's own intermediate server.
    AgencySide,
}

/// Who sent a frame: the party its certificate names, and from where.
#[derive(Debug, Clone)]
pub struct Peer {
    pub party: Party,
    pub addr: SocketAddr,
    pub listener: Listener,
}

/// What the engine is asked to do.
#[derive(Debug)]
pub enum Input {
    /// A decoded frame from an authenticated peer; the reply body goes back
    /// on `reply` after commit.
    Frame(Box<FrameInput>),
    /// Something refused before it reached the engine (undecodable frame,
    /// identity mismatch, refused connection): logged only.
    Refused {
        terminal: SocketAddr,
        party: Option<Party>,
        direction: Direction,
        operation: String,
        message_id: Option<MessageId>,
        reason: Reason,
    },
    /// A delivery worker got the next hop's answer to an outbox entry.
    Delivered(Box<Delivery>),
    /// A second has passed: close processes whose step timed out.
    Tick,
    /// Announce a lifecycle event to the core and the IMS (R-COM-3);
    /// `done` hears `accepted` once the notices are durable.
    Announce {
        event: StatusEvent,
        done: Option<oneshot::Sender<Body>>,
    },
    /// Delivery tried an entry `retry_count` times without reaching the
    /// next hop; the engine decides whether to give it up.
    Undeliverable(Box<Undeliverable>),
    /// Stop after the current batch.
    Stop,
}

/// A frame from an authenticated peer, and where its answer goes.
#[derive(Debug)]
pub struct FrameInput {
    pub peer: Peer,
    pub frame: Frame,
    pub reply: oneshot::Sender<Body>,
}

/// The next hop's answer to an outbox entry.
#[derive(Debug)]
pub struct Delivery {
    pub item: OutboxItem,
    pub terminal: SocketAddr,
    pub reply: Body,
}

/// An entry delivery could not get through.
#[derive(Debug)]
pub struct Undeliverable {
    pub item: OutboxItem,
    pub verdict: oneshot::Sender<Verdict>,
}

/// What delivery does with an entry it could not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its process was closed and the parties told; the entry is gone.
    GiveUp,
    /// No open process depends on it: keep resending (R-COM-4).
    Keep,
}

/// The prefix list and masters currently in force.
#[derive(Debug, Default)]
struct PrefixState {
    version: u64,
    entries: HashSet<PrefixEntry>,
    core_key: Vec<u8>,
}

/// Fixed facts about this box the engine needs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub agency: AgencyCode,
    /// Networks a peer interface system may be dialled at (R-SEC-5).
    pub peer_allow: Vec<ipnet::IpNet>,
    pub clock_synced: bool,
    /// When new processes may start (R-AV-1).
    pub hours: ServiceHours,
    /// How long each step of a process may take (R-COM-2).
    pub steps: StepTimeouts,
}

/// Longest wait for each step of a process; past it the process is closed
/// with `E_TIMEOUT` and both the intermediate server and the core are told.
#[derive(Debug, Clone, Copy)]
pub struct StepTimeouts {
    /// Permit request relayed → permit or refusal from the core.
    pub permit: Duration,
    /// Query relayed → query accepted.
    pub query_accepted: Duration,
    /// Query relayed → provision, receipt and completions all through.
    pub provision_complete: Duration,
    /// Serial issued, bound or permitted, but no query sent.
    pub idle_process: Duration,
}

impl StepTimeouts {
    /// When `p` times out, and which step it is waiting for.
    pub fn deadline(&self, p: &Process) -> (Millis, &'static str) {
        let after = |from: Millis, d: Duration| {
            from.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        };
        let queried = p.query_requested_at.unwrap_or(p.created_at);
        match p.step {
            Step::Issued | Step::Bound | Step::Permitted => {
                (after(p.updated_at, self.idle_process), "query")
            }
            Step::PermitRequested => (after(p.updated_at, self.permit), "permit"),
            Step::QueryRelayed if !p.query_accepted && !p.provision_relayed => {
                (after(queried, self.query_accepted), "query accepted")
            }
            Step::QueryRelayed => (
                after(queried, self.provision_complete),
                "provision and completion",
            ),
        }
    }
}

/// How [`Relay::advance`] stores the process.
#[derive(Debug, Clone, Copy)]
enum Save {
    Keep,
    /// Close it instead when the requester side is done.
    OrClose,
}

/// A refusal: reason code and text for the sender.
#[derive(Debug)]
struct Refusal {
    reason: Reason,
    text: String,
}

fn refuse(reason: Reason, text: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        text: text.into(),
    }
}

/// Failure inside a batch: refuse one input, or abandon the batch.
#[derive(Debug)]
enum Fault {
    Refuse(Refusal),
    /// Refused, and the process it belonged to was closed with notices
    /// already in the outbox (the batch keeps them).
    RefuseAndTell(Refusal, Vec<Destination>),
    Store(StoreError),
}

impl Fault {
    /// The refusal and the notices already queued with it, or the store
    /// error that stopped the handling.
    fn into_refusal(self) -> Result<(Refusal, Vec<Destination>), StoreError> {
        match self {
            Fault::Refuse(r) => Ok((r, Vec::new())),
            Fault::RefuseAndTell(r, outbox) => Ok((r, outbox)),
            Fault::Store(e) => Err(e),
        }
    }
}

impl From<Refusal> for Fault {
    fn from(r: Refusal) -> Self {
        Fault::Refuse(r)
    }
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Self {
        Fault::Store(e)
    }
}

/// Counters the supervisor exposes (status, demo, tests).
#[derive(Debug, Default, Clone)]
pub struct EngineStats {
    pub batches: u64,
    pub inputs: u64,
    pub commit_failures: u64,
    /// Microseconds spent handling inputs inside batches (before commit).
    pub handling_us: u64,
    /// Microseconds spent in commits (writing pages and the fsync).
    pub committing_us: u64,
    /// Commits that took [`SLOW_COMMIT`] or longer (a stalled disk shows
    /// here first).
    pub slow_commits: u64,
    pub refused: HashMap<Reason, u64>,
}

/// The engine and its state. Runs on its own thread via [`Engine::run`].
pub struct Engine {
    store: Store,
    relay: Relay,
}

/// The engine's state apart from the store, so that a store batch and the
/// state can be borrowed side by side.
struct Relay {
    cfg: EngineConfig,
    party: Party,
    ids: Arc<IdGen>,
    epoch: u64,
    serial_counter: u64,
    prefix: Option<PrefixState>,
    processes: HashMap<Serial, Process>,
    needs_reload: bool,
    deliver: mpsc::UnboundedSender<Notice>,
    stats: Arc<std::sync::Mutex<EngineStats>>,
}

/// What handling one input left to do after the commit.
struct Handled {
    reply: Option<(oneshot::Sender<Body>, Body)>,
    /// Destinations that got new outbox entries.
    outbox: Vec<Destination>,
    refused: Option<Reason>,
    /// An answer to delivery, sent after the commit.
    verdict: Option<(oneshot::Sender<Verdict>, Verdict)>,
}

impl Engine {
    /// Boots the store (bumping the serial epoch durably) and loads the
    /// state. Delivery finds the outbox in the store by itself.
    ///
    /// # Errors
    /// The store's error when it cannot boot.
    pub fn boot(
        mut store: Store,
        cfg: EngineConfig,
        deliver: mpsc::UnboundedSender<Notice>,
        stats: Arc<std::sync::Mutex<EngineStats>>,
    ) -> Result<(Engine, Arc<IdGen>), StoreError> {
        let boot = store.boot(now_millis())?;
        let party = Party::is(cfg.agency.clone());
        let ids = Arc::new(
            IdGen::new(format!("is-{}-{}", cfg.agency, boot.epoch))
                .expect("invariant: agency codes and digits make valid message ids"),
        );
        let mut engine = Engine {
            store,
            relay: Relay {
                cfg,
                party,
                ids: ids.clone(),
                epoch: boot.epoch,
                serial_counter: 0,
                prefix: None,
                processes: HashMap::new(),
                needs_reload: false,
                deliver,
                stats,
            },
        };
        engine.load(boot);
        Ok((engine, ids))
    }

    /// Replaces the in-memory state with `boot`'s.
    fn load(&mut self, boot: BootState) {
        self.relay.epoch = boot.epoch;
        self.relay.serial_counter = 0;
        self.relay.prefix = boot
            .prefix
            .and_then(|(_, bytes)| ciborium::from_reader::<Distribution, _>(&bytes[..]).ok())
            .map(|d| PrefixState {
                version: d.version,
                entries: d.prefixes.into_iter().collect(),
                core_key: d.core_key,
            });
        self.relay.processes = boot
            .processes
            .into_iter()
            .filter_map(|(serial, bytes)| match Process::decode(&bytes) {
                Ok(p) => Some((serial, p)),
                Err(e) => {
                    tracing::error!(%serial, error = %e, "stored process unreadable; skipped");
                    None
                }
            })
            .collect();
        tracing::info!(
            epoch = boot.epoch,
            processes = self.relay.processes.len(),
            outbox = boot.outbox_len,
            "state loaded"
        );
    }

    /// The engine loop; returns when [`Input::Stop`] arrives or every
    /// sender is gone.
    pub fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        let mut batch: Vec<Input> = Vec::with_capacity(MAX_BATCH);
        loop {
            let Some(first) = inputs.blocking_recv() else {
                break;
            };
            let mut stop = matches!(first, Input::Stop);
            if !stop {
                batch.push(first);
            }
            while !stop && batch.len() < MAX_BATCH {
                match inputs.try_recv() {
                    Ok(Input::Stop) => stop = true,
                    Ok(input) => batch.push(input),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.run_batch(&mut batch);
            }
            if stop {
                break;
            }
        }
        tracing::info!("relay engine stopped");
    }

    fn run_batch(&mut self, inputs: &mut Vec<Input>) {
        if self.relay.needs_reload {
            match self.store.boot(now_millis()) {
                Ok(boot) => {
                    self.load(boot);
                    self.relay.needs_reload = false;
                    // Deliveries the failed batch did not record are
                    // still in the outbox: read it again from the start.
                    let _ = self.relay.deliver.send(Notice::Rewind);
                    tracing::info!(epoch = self.relay.epoch, "store recovered; state reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "store still unavailable");
                    self.fail_all(inputs.drain(..), &e);
                    return;
                }
            }
        }
        let now = now_millis();
        let mut store_batch = match self.store.begin() {
            Ok(b) => b,
            Err(e) => {
                self.relay.needs_reload = true;
                self.fail_all(inputs.drain(..), &e);
                return;
            }
        };
        let started = std::time::Instant::now();
        let mut done: Vec<Handled> = Vec::with_capacity(inputs.len());
        let mut failure: Option<StoreError> = None;
        let mut unhandled: Vec<Input> = Vec::new();
        for input in inputs.drain(..) {
            if failure.is_some() {
                unhandled.push(input);
                continue;
            }
            match self.relay.handle(&mut store_batch, now, input) {
                Ok(h) => done.push(h),
                Err(boxed) => {
                    let (e, input) = *boxed;
                    failure = Some(e);
                    unhandled.extend(input);
                }
            }
        }
        let handled = std::time::Instant::now();
        let result = match failure {
            Some(e) => {
                drop(store_batch);
                Err(e)
            }
            None => store_batch.commit(),
        };
        {
            let mut stats = self.relay.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.handling_us += micros(handled.duration_since(started));
            stats.committing_us += micros(handled.elapsed());
            if handled.elapsed() >= SLOW_COMMIT {
                stats.slow_commits += 1;
            }
        }
        match result {
            Ok(()) => {
                let mut stats = self.relay.stats.lock().unwrap_or_else(|p| p.into_inner());
                let mut woken: Vec<Destination> = Vec::new();
                stats.batches += 1;
                stats.inputs += done.len() as u64;
                for h in done {
                    if let Some(reason) = h.refused {
                        *stats.refused.entry(reason).or_default() += 1;
                    }
                    if let Some((tx, body)) = h.reply {
                        let _ = tx.send(body);
                    }
                    if let Some((tx, verdict)) = h.verdict {
                        let _ = tx.send(verdict);
                    }
                    for d in h.outbox {
                        if !woken.contains(&d) {
                            woken.push(d);
                        }
                    }
                }
                for d in woken {
                    // If delivery is gone we are stopping; the entry stays
                    // in the durable outbox for the next start.
                    let _ = self.relay.deliver.send(Notice::Wake(d));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, full = e.is_storage_full(), "commit failed; batch refused");
                self.relay.needs_reload = true;
                for (tx, body) in done.into_iter().filter_map(|h| h.reply) {
                    let mut refusal = store_refusal(&e);
                    if let (Body::Refused(r), Some(id)) = (&mut refusal, body.in_reply_to()) {
                        r.in_reply_to = Some(id.clone());
                    }
                    let _ = tx.send(refusal);
                }
                self.fail_all(unhandled.into_iter(), &e);
            }
        }
    }

    fn fail_all(&self, inputs: impl Iterator<Item = Input>, e: &StoreError) {
        let mut stats = self.relay.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.commit_failures += 1;
        for input in inputs {
            if let Input::Frame(input) = input {
                let FrameInput { reply, frame, .. } = *input;
                let mut body = store_refusal(e);
                if let Body::Refused(r) = &mut body {
                    r.in_reply_to = Some(frame.header.id.clone());
                }
                let _ = reply.send(body);
            } else if let Input::Undeliverable(u) = input {
                // Nothing was decided: the worker keeps the entry.
                let _ = u.verdict.send(Verdict::Keep);
            }
            // A Delivered answer that was not recorded leaves its entry in
            // the outbox; the rewind after the reload sends it again.
            // Refused notes are lost with the batch; tracing has them.
        }
    }
}

impl Relay {
    /// Handles one input. A store error hands the input back so it can be
    /// answered with [`Reason::Store`].
    fn handle(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        input: Input,
    ) -> Result<Handled, Box<(StoreError, Option<Input>)>> {
        match input {
            Input::Frame(input) => {
                let FrameInput { peer, frame, reply } = *input;
                let back = |peer, frame, reply| {
                    Some(Input::Frame(Box::new(FrameInput { peer, frame, reply })))
                };
                // Who sends comes first: a frame that lies about its
                // sender is refused as such, even under a known id.
                if frame.header.from != peer.party {
                    let text = format!(
                        "frame claims to be from {} but the certificate names {}",
                        frame.header.from, peer.party
                    );
                    tracing::info!(peer = %peer.party, addr = %peer.addr, %text, "frame refused");
                    let entry = self.access_in(now, &peer, &frame, Reason::Identity.to_string());
                    if let Err(e) = batch.append_access(entry) {
                        return Err(Box::new((e, back(peer, frame, reply))));
                    }
                    let body = Body::Refused(Refused {
                        in_reply_to: Some(frame.header.id.clone()),
                        reason: Reason::Identity,
                        text,
                    });
                    return Ok(Handled {
                        reply: Some((reply, body)),
                        outbox: Vec::new(),
                        refused: Some(Reason::Identity),
                        verdict: None,
                    });
                }
                let sender = party_label(&peer.party);
                let print = fingerprint(&frame);
                // A frame already accepted is answered again, never handled
                // twice (DESIGN "Wire format"); an id reused for another
                // frame is refused.
                let seen = match batch.seen(&sender, frame.header.id.as_str()) {
                    Ok(seen) => seen,
                    Err(e) => return Err(Box::new((e, back(peer, frame, reply)))),
                };
                if let Some(seen) = seen {
                    let replay = decode_seen(&seen.reply, &print);
                    let (outcome, body, refused) = match replay {
                        Some(body) => ("duplicate".to_owned(), body, None),
                        None => (
                            Reason::Duplicate.to_string(),
                            Body::Refused(Refused {
                                in_reply_to: None,
                                reason: Reason::Duplicate,
                                text: format!(
                                    "message id {} was already used for another frame",
                                    frame.header.id
                                ),
                            }),
                            Some(Reason::Duplicate),
                        ),
                    };
                    let entry = self.access_in(now, &peer, &frame, outcome);
                    if let Err(e) = batch.append_access(entry) {
                        return Err(Box::new((e, back(peer, frame, reply))));
                    }
                    let body = with_reply_to(body, &frame.header.id);
                    return Ok(Handled {
                        reply: Some((reply, body)),
                        outbox: Vec::new(),
                        refused,
                        verdict: None,
                    });
                }
                match self.handle_frame(batch, now, &peer, &frame) {
                    Ok((body, outbox)) => {
                        let outcome = match &body {
                            Body::PrefixResult(r) if !r.ok => r
                                .reason
                                .map_or_else(|| "ng".to_owned(), |r| format!("ng:{r}")),
                            Body::PrefixResult(_) => "ok".to_owned(),
                            _ => "accepted".to_owned(),
                        };
                        let entry = self.access_in(now, &peer, &frame, outcome);
                        if let Err(e) = batch.append_access(entry) {
                            return Err(Box::new((e, back(peer, frame, reply))));
                        }
                        let body = with_reply_to(body, &frame.header.id);
                        let remembered = encode_seen(&print, &body, &self.party);
                        if let Err(e) =
                            batch.put_seen(&sender, frame.header.id.as_str(), now, &remembered)
                        {
                            return Err(Box::new((e, back(peer, frame, reply))));
                        }
                        Ok(Handled {
                            reply: Some((reply, body)),
                            outbox,
                            refused: None,
                            verdict: None,
                        })
                    }
                    Err(fault) => {
                        let (r, outbox) = match fault.into_refusal() {
                            Ok(refusal) => refusal,
                            Err(e) => return Err(Box::new((e, back(peer, frame, reply)))),
                        };
                        tracing::info!(peer = %peer.party, addr = %peer.addr, r#type = frame.body.type_name(), reason = %r.reason, text = %r.text, "frame refused");
                        let entry = self.access_in(now, &peer, &frame, r.reason.to_string());
                        if let Err(e) = batch.append_access(entry) {
                            return Err(Box::new((e, back(peer, frame, reply))));
                        }
                        let body = Body::Refused(Refused {
                            in_reply_to: Some(frame.header.id.clone()),
                            reason: r.reason,
                            text: r.text,
                        });
                        Ok(Handled {
                            reply: Some((reply, body)),
                            outbox,
                            refused: Some(r.reason),
                            verdict: None,
                        })
                    }
                }
            }
            Input::Refused {
                terminal,
                party,
                direction,
                operation,
                message_id,
                reason,
            } => {
                let entry = AccessEntry {
                    at: now,
                    terminal: terminal.to_string(),
                    party: party
                        .as_ref()
                        .map_or_else(|| "unauthenticated".to_owned(), party_label),
                    agency: party.and_then(|p| p.agency),
                    staff: None,
                    direction,
                    operation,
                    message_id: message_id.map(String::from),
                    serial: None,
                    business: None,
                    info_name: None,
                    items: Vec::new(),
                    outcome: reason.to_string(),
                };
                batch
                    .append_access(entry)
                    .map_err(|e| Box::new((e, None)))?;
                Ok(Handled {
                    reply: None,
                    outbox: Vec::new(),
                    refused: Some(reason),
                    verdict: None,
                })
            }
            Input::Delivered(d) => {
                let Delivery {
                    item,
                    terminal,
                    reply,
                } = *d;
                self.handle_delivered(batch, now, item.clone(), terminal, reply.clone())
                    .map_err(|e| {
                        let back = Delivery {
                            item,
                            terminal,
                            reply,
                        };
                        Box::new((e, Some(Input::Delivered(Box::new(back)))))
                    })
            }
            Input::Tick => self.expire(batch, now).map_err(|e| Box::new((e, None))),
            Input::Announce { event, done } => {
                let mut outbox = Vec::new();
                for dest in [Destination::Core, Destination::Ims] {
                    let body = Body::BoxStatus(BoxStatus { event });
                    match self.enqueue(batch, now, dest, body) {
                        Ok(item) => outbox.push(item),
                        Err(e) => return Err(Box::new((e, None))),
                    }
                }
                Ok(Handled {
                    reply: done.map(|tx| (tx, accepted())),
                    outbox,
                    refused: None,
                    verdict: None,
                })
            }
            Input::Undeliverable(u) => {
                let Undeliverable { item, verdict } = *u;
                match self.give_up(batch, now, &item) {
                    Ok((v, outbox)) => Ok(Handled {
                        reply: None,
                        outbox,
                        refused: None,
                        verdict: Some((verdict, v)),
                    }),
                    Err(e) => {
                        let back = Undeliverable { item, verdict };
                        Err(Box::new((e, Some(Input::Undeliverable(Box::new(back))))))
                    }
                }
            }
            Input::Stop => Ok(Handled {
                reply: None,
                outbox: Vec::new(),
                refused: None,
                verdict: None,
            }),
        }
    }

    /// Closes every process whose step timed out (R-COM-2), and forgets
    /// message ids older than [`SEEN_RETENTION`].
    fn expire(&mut self, batch: &mut Batch<'_>, now: Millis) -> Result<Handled, StoreError> {
        let horizon = now.saturating_sub(i64::try_from(SEEN_RETENTION.as_millis()).unwrap_or(0));
        batch.prune_seen(horizon, SEEN_PRUNE_PER_TICK)?;
        let expired: Vec<(Serial, &'static str)> = self
            .processes
            .values()
            .filter_map(|p| {
                let (deadline, waiting) = self.cfg.steps.deadline(p);
                (deadline <= now).then(|| (p.serial.clone(), waiting))
            })
            .collect();
        let mut outbox = Vec::new();
        for (serial, waiting) in expired {
            let text = format!("no {waiting} in time; the process is closed");
            tracing::warn!(%serial, waiting, "process timed out");
            // A serial that never reached the core (issued or bound, no
            // permit requested) concerns only the IMS.
            let reached_core = self
                .processes
                .get(&serial)
                .is_some_and(|p| p.role == ProcRole::Provider || p.step >= Step::PermitRequested);
            let tell: &[Destination] = if reached_core {
                &[Destination::Ims, Destination::Core]
            } else {
                &[Destination::Ims]
            };
            outbox.extend(self.close_and_tell(
                batch,
                now,
                &serial,
                Reason::Timeout,
                &text,
                tell,
            )?);
        }
        Ok(Handled {
            reply: None,
            outbox,
            refused: None,
            verdict: None,
        })
    }

    /// Delivery could not reach the next hop: an open process that depends
    /// on the entry is closed and the other parties told; anything else is
    /// kept for resending once the peer is back (R-COM-2, R-COM-4).
    fn give_up(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        item: &OutboxItem,
    ) -> Result<(Verdict, Vec<Destination>), StoreError> {
        let serial = match &item.meta.serial {
            Some(s) if self.processes.contains_key(s) && item.meta.type_name != "process_error" => {
                s.clone()
            }
            _ => return Ok((Verdict::Keep, Vec::new())),
        };
        batch.remove_outbox(item.seq)?;
        let unreachable = item.destination.party_label(&self.cfg.agency);
        let tell: Vec<Destination> = [Destination::Ims, Destination::Core]
            .into_iter()
            .filter(|d| *d != item.destination)
            .collect();
        let text = format!(
            "{unreachable} could not be reached to deliver {}; the process is closed",
            item.meta.type_name
        );
        tracing::warn!(%serial, %unreachable, "next hop unreachable; process closed");
        let outbox =
            self.close_and_tell(batch, now, &serial, Reason::PeerUnreachable, &text, &tell)?;
        Ok((Verdict::GiveUp, outbox))
    }

    /// Closes `serial` and sends a `process_error` to each of `tell`.
    fn close_and_tell(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        serial: &Serial,
        reason: Reason,
        text: &str,
        tell: &[Destination],
    ) -> Result<Vec<Destination>, StoreError> {
        self.close(batch, serial)?;
        let mut outbox = Vec::new();
        for dest in tell {
            let notice = Body::ProcessError(ProcessError {
                serial: serial.clone(),
                reason,
                text: text.to_owned(),
            });
            outbox.push(self.enqueue(batch, now, dest.clone(), notice)?);
        }
        Ok(outbox)
    }

    /// A peer announced it is stopping: close the processes waiting on it
    /// and tell the own IMS (and the core, when a peer box stopped).
    fn peer_stopping(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Party,
        out: &mut Vec<Destination>,
    ) -> Result<(), StoreError> {
        let waiting: Vec<Serial> = self
            .processes
            .values()
            .filter(|p| waits_on(p, peer))
            .map(|p| p.serial.clone())
            .collect();
        let tell: &[Destination] = if peer.role == Role::Core {
            &[Destination::Ims]
        } else {
            &[Destination::Ims, Destination::Core]
        };
        for serial in waiting {
            let text = format!("{peer} is stopping; the process is closed");
            out.extend(self.close_and_tell(
                batch,
                now,
                &serial,
                Reason::PeerStopped,
                &text,
                tell,
            )?);
        }
        Ok(())
    }

    fn handle_delivered(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        item: OutboxItem,
        terminal: SocketAddr,
        reply: Body,
    ) -> Result<Handled, StoreError> {
        batch.remove_outbox(item.seq)?;
        let outcome = match &reply {
            Body::Refused(r) => r.reason.to_string(),
            _ => "delivered".to_owned(),
        };
        let meta = &item.meta;
        batch.append_access(AccessEntry {
            at: now,
            terminal: terminal.to_string(),
            party: item.destination.party_label(&self.cfg.agency),
            agency: item.destination.agency(&self.cfg.agency),
            staff: None,
            direction: Direction::Out,
            operation: meta.type_name.clone(),
            message_id: Some(meta.message_id.to_string()),
            serial: meta.serial.clone(),
            business: meta.prefix.as_ref().map(|p| p.business.clone()),
            info_name: meta.prefix.as_ref().map(|p| p.info_name.clone()),
            items: meta
                .prefix
                .as_ref()
                .map(|p| p.items.iter().cloned().collect())
                .unwrap_or_default(),
            outcome,
        })?;
        let mut outbox = Vec::new();
        // The next hop refused what we relayed: tell the other side of
        // the process, so that nobody waits for an answer that will not
        // come (R-COM-1). A refusal by the own IMS goes to the core; any
        // other goes to the own IMS. A refused notice is not noticed again,
        // so two refusing peers cannot ping-pong.
        let is_notice = meta.type_name == "process_error";
        if let (Body::Refused(r), Some(serial), false) = (&reply, &meta.serial, is_notice) {
            let notify = if item.destination == Destination::Ims {
                Destination::Core
            } else {
                Destination::Ims
            };
            let notice = Body::ProcessError(ProcessError {
                serial: serial.clone(),
                reason: Reason::PeerRefused,
                text: cut(&format!(
                    "{} refused {}: {} {}",
                    item.destination.party_label(&self.cfg.agency),
                    meta.type_name,
                    r.reason,
                    r.text
                )),
            });
            outbox.push(self.enqueue(batch, now, notify, notice)?);
        }
        Ok(Handled {
            reply: None,
            outbox,
            refused: None,
            verdict: None,
        })
    }

    // ------------------------------------------------------------ frames

    fn handle_frame(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Peer,
        frame: &Frame,
    ) -> Result<(Body, Vec<Destination>), Fault> {
        self.check_role(peer, &frame.body)?;
        let starts_process = matches!(
            (&peer.party.role, &frame.body),
            (Role::Ims, Body::SerialRequest(_)) | (Role::Core, Body::Query(_))
        );
        if starts_process && !self.cfg.hours.is_open(now) {
            return Err(refuse(
                Reason::NotInService,
                format!(
                    "outside service hours ({}); processes under way continue",
                    self.cfg.hours.describe()
                ),
            )
            .into());
        }
        let mut out = Vec::new();
        let body = match (&peer.party.role, &frame.body) {
            // ---- from the own intermediate server
            (Role::Ims, Body::SerialRequest(_)) => self.serial_request(batch, now)?,
            (Role::Ims, Body::PrefixCheck(m)) => self.prefix_check(batch, now, m)?,
            (Role::Ims, Body::PermitRequest(m)) => self.permit_request(batch, now, m, &mut out)?,
            (Role::Ims, Body::Query(m)) => self.query_from_ims(batch, now, m, &mut out)?,
            (Role::Ims, Body::QueryAccepted(m)) => {
                self.query_accepted_from_ims(batch, now, m, &mut out)?
            }
            (Role::Ims, Body::Provision(m)) => self.provision_from_ims(batch, now, m, &mut out)?,
            (Role::Ims, Body::ProvisionReceived(m)) => {
                self.provision_received_from_ims(batch, now, m, &mut out)?
            }
            (Role::Ims, Body::ProvisionComplete(m)) => {
                self.provision_complete(batch, now, m, &mut out)?
            }
            (Role::Ims, Body::QueryComplete(m)) => self.query_complete(batch, now, m, &mut out)?,
            // ---- from the core
            (Role::Core, Body::Permit(m)) => self.permit(batch, now, m, &mut out)?,
            (Role::Core, Body::PermitRefused(m)) => self.permit_refused(batch, now, m, &mut out)?,
            (Role::Core, Body::Query(m)) => self.query_from_core(batch, now, m, &mut out)?,
            (Role::Core, Body::QueryAccepted(m)) => {
                self.query_accepted_from_core(batch, now, m, &mut out)?
            }
            (Role::Core, Body::Distribution(m)) => self.distribution(batch, now, m, &mut out)?,
            // ---- from a peer interface system
            (Role::Is, Body::Provision(m)) => {
                self.provision_from_peer(batch, now, peer, m, &mut out)?
            }
            (Role::Is, Body::ProvisionReceived(m)) => {
                self.provision_received_from_peer(batch, now, peer, m, &mut out)?
            }
            // ---- from anyone
            (_, Body::ProcessError(m)) => self.process_error(batch, now, peer, m, &mut out)?,
            (Role::Core | Role::Is, Body::BoxStatus(m)) if m.event == StatusEvent::Stopping => {
                self.peer_stopping(batch, now, &peer.party, &mut out)?;
                accepted()
            }
            (_, Body::BoxStatus(_)) => accepted(),
            (_, other) => {
                return Err(refuse(
                    Reason::Role,
                    format!("{} may not send {}", peer.party, other.type_name()),
                )
                .into())
            }
        };
        Ok((body, out))
    }

    /// Which message types each party may send on each listener.
    fn check_role(&self, peer: &Peer, body: &Body) -> Result<(), Refusal> {
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

    // ------------------------------------------------ requester side

    fn serial_request(&mut self, batch: &mut Batch<'_>, now: Millis) -> Result<Body, Fault> {
        self.serial_counter += 1;
        let text = format!(
            "{}-{}-{}-{}",
            self.cfg.agency,
            jst_date(now),
            self.epoch,
            self.serial_counter
        );
        let serial = Serial::new(&text)
            .map_err(|e| refuse(Reason::Internal, format!("serial {text}: {e}")))?;
        let process = Process::new_requester(serial.clone(), now);
        self.save(batch, process)?;
        Ok(Body::SerialIssued(SerialIssued {
            in_reply_to: placeholder_id(),
            serial,
        }))
    }

    fn prefix_check(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &PrefixCheck,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        let was_bound = p.step == Step::Bound;
        let ng =
            |relay: &mut Relay, batch: &mut Batch<'_>, reason: Reason| -> Result<Body, Fault> {
                // An NG re-check (say, after a distribution dropped the
                // prefix) erases the earlier binding (R-PFX-2).
                if was_bound {
                    if let Some(p) = relay.processes.get(&m.serial) {
                        let mut p = p.clone();
                        p.step = Step::Issued;
                        p.prefix = None;
                        p.updated_at = now;
                        relay.save(batch, p)?;
                    }
                }
                Ok(Body::PrefixResult(PrefixResult {
                    in_reply_to: placeholder_id(),
                    serial: m.serial.clone(),
                    ok: false,
                    reason: Some(reason),
                }))
            };
        match p.step {
            Step::Issued => {}
            Step::Bound if p.prefix.as_ref() == Some(&m.prefix) => {}
            _ => {
                return Err(refuse(
                    Reason::OutOfSequence,
                    format!("serial {} is past its prefix check", m.serial),
                )
                .into())
            }
        }
        if m.prefix.requester != self.cfg.agency {
            return ng(self, batch, Reason::NotOwnAgency);
        }
        let Some(list) = &self.prefix else {
            return ng(self, batch, Reason::NoPrefixList);
        };
        if !listed(&list.entries, &m.prefix) {
            return ng(self, batch, Reason::PrefixNotListed);
        }
        let mut p = p.clone();
        p.step = Step::Bound;
        p.prefix = Some(m.prefix.clone());
        p.updated_at = now;
        self.save(batch, p)?;
        Ok(Body::PrefixResult(PrefixResult {
            in_reply_to: placeholder_id(),
            serial: m.serial.clone(),
            ok: true,
            reason: None,
        }))
    }

    fn permit_request(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &PermitRequest,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        match p.step {
            Step::Issued => {
                return Err(refuse(
                    Reason::NoBinding,
                    format!(
                        "serial {} has no prefix bound; check the prefix first",
                        m.serial
                    ),
                )
                .into())
            }
            Step::Bound => {}
            _ => {
                return Err(refuse(
                    Reason::OutOfSequence,
                    format!("a permit was already requested for serial {}", m.serial),
                )
                .into())
            }
        }
        if p.prefix.as_ref() != Some(&m.prefix) {
            return Err(refuse(
                Reason::NoBinding,
                format!("serial {} is bound to another prefix", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.step = Step::PermitRequested;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Core,
            Body::PermitRequest(m.clone()),
            out,
        )
    }

    fn permit(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &PermitIssued,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if p.step != Step::PermitRequested {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("no permit was requested for serial {}", m.serial),
            )
            .into());
        }
        let fields = match self.usable_permit(p, m, now) {
            Ok(fields) => fields,
            Err(r) => {
                // The process cannot go on without a usable permit, and the
                // IMS would otherwise wait for its permit timer: close it
                // now and tell the IMS why (R-PRM-2, R-COM-2). The core
                // learns it from the refusal of its frame.
                let text = format!("the core's permit was refused: {}", r.text);
                let outbox = self.close_and_tell(
                    batch,
                    now,
                    &m.serial,
                    r.reason,
                    &text,
                    &[Destination::Ims],
                )?;
                return Err(Fault::RefuseAndTell(r, outbox));
            }
        };
        let mut p = p.clone();
        p.step = Step::Permitted;
        p.permit = Some(m.permit.clone());
        p.permit_fields = Some(fields);
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Ims,
            Body::Permit(m.clone()),
            out,
        )
    }

    /// The checks a permit from the core must pass before it is relayed:
    /// signature, issuer, expiry, binding to the request, and routes.
    fn usable_permit(
        &self,
        p: &Process,
        m: &PermitIssued,
        now: Millis,
    ) -> Result<PermitFields, Refusal> {
        let fields = self.verify_permit(&m.permit, now)?;
        if fields.serial != m.serial || Some(&fields.prefix) != p.prefix.as_ref() {
            return Err(refuse(
                Reason::PermitInvalid,
                "the permit's serial or prefix differs from the request",
            ));
        }
        if fields.route.agency != self.cfg.agency {
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
        self.peer_destination(&fields.provider_route)
            .map_err(|r| refuse(Reason::PermitInvalid, r.text))?;
        Ok(fields)
    }

    fn permit_refused(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &PermitRefused,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if p.step != Step::PermitRequested {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("no permit was requested for serial {}", m.serial),
            )
            .into());
        }
        self.close(batch, &m.serial)?;
        out.push(self.enqueue(batch, now, Destination::Ims, Body::PermitRefused(m.clone()))?);
        Ok(accepted())
    }

    fn query_from_ims(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &Query,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if p.step != Step::Permitted {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} has no permit to query with", m.serial),
            )
            .into());
        }
        if p.prefix.as_ref() != Some(&m.prefix) {
            return Err(refuse(
                Reason::WrongPrefix,
                format!(
                    "the query's prefix differs from serial {}'s binding",
                    m.serial
                ),
            )
            .into());
        }
        check_query_format(m)?;
        if p.permit.as_ref() != Some(&m.permit) {
            return Err(refuse(
                Reason::PermitInvalid,
                "the query carries another permit than the one issued for its serial",
            )
            .into());
        }
        if let Some(fields) = &p.permit_fields {
            check_expiry(fields, now)?;
        }
        let mut p = p.clone();
        p.step = Step::QueryRelayed;
        p.code = Some(m.code.clone());
        p.query_requested_at = Some(now);
        p.updated_at = now;
        let record = self.record(RecordKind::Query, &p, None)?;
        batch.append_record(now, record)?;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Core,
            Body::Query(m.clone()),
            out,
        )
    }

    fn query_accepted_from_core(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if p.step != Step::QueryRelayed || p.query_accepted {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} is not waiting for query accepted", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.query_accepted = true;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Ims,
            Body::QueryAccepted(m.clone()),
            out,
        )
    }

    fn provision_from_peer(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Peer,
        m: &Provision,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        let bound = p.prefix.as_ref();
        if peer.party.agency.as_ref() != bound.map(|b| &b.provider) {
            return Err(refuse(
                Reason::Route,
                format!(
                    "{} is not the provider named for serial {}",
                    peer.party, m.serial
                ),
            )
            .into());
        }
        if p.step != Step::QueryRelayed || p.provision_relayed {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} is not waiting for a provision", m.serial),
            )
            .into());
        }
        if bound != Some(&m.prefix) {
            return Err(refuse(Reason::WrongPrefix, "the provision's prefix differs").into());
        }
        if p.permit.as_ref() != Some(&m.permit) {
            return Err(refuse(
                Reason::PermitInvalid,
                "the provision carries another permit than the query's",
            )
            .into());
        }
        let mut p = p.clone();
        p.provision_relayed = true;
        p.updated_at = now;
        let record = self.record(RecordKind::Provision, &p, Some(now))?;
        batch.append_record(now, record)?;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Ims,
            Body::Provision(m.clone()),
            out,
        )
    }

    fn provision_received_from_ims(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if !p.provision_relayed || p.provision_received {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} has no provision awaiting receipt", m.serial),
            )
            .into());
        }
        let route = p
            .permit_fields
            .as_ref()
            .map(|f| f.provider_route.clone())
            .ok_or_else(|| refuse(Reason::Internal, "process without permit fields"))?;
        let dest = self.peer_destination(&route)?;
        let mut p = p.clone();
        p.provision_received = true;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            dest,
            Body::ProvisionReceived(m.clone()),
            out,
        )
    }

    fn query_complete(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if p.step != Step::QueryRelayed || p.query_complete {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} has no open query to complete", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.query_complete = true;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::OrClose,
            Destination::Core,
            Body::QueryComplete(m.clone()),
            out,
        )
    }

    // ------------------------------------------------ provider side

    fn query_from_core(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &Query,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        if self.processes.contains_key(&m.serial) {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} is already known to this box", m.serial),
            )
            .into());
        }
        check_query_format(m)?;
        let fields = self.verify_permit(&m.permit, now)?;
        if fields.serial != m.serial
            || fields.prefix != m.prefix
            || fields.provider_route.agency != self.cfg.agency
            || m.prefix.provider != self.cfg.agency
        {
            return Err(refuse(
                Reason::PermitInvalid,
                "the permit does not match the query's serial, prefix or provider",
            )
            .into());
        }
        if fields.route.agency != m.prefix.requester {
            return Err(refuse(
                Reason::PermitInvalid,
                "the permit routes to another agency than the requester",
            )
            .into());
        }
        self.peer_destination(&fields.route)
            .map_err(|r| refuse(Reason::PermitInvalid, r.text))?;
        let Some(list) = &self.prefix else {
            return Err(refuse(Reason::NoPrefixList, "no prefix list distributed yet").into());
        };
        if !listed(&list.entries, &m.prefix) {
            return Err(refuse(
                Reason::PrefixNotListed,
                "the query's prefix is not in this box's prefix list",
            )
            .into());
        }
        let mut p = Process::new_requester(m.serial.clone(), now);
        p.role = ProcRole::Provider;
        p.step = Step::QueryRelayed;
        p.prefix = Some(m.prefix.clone());
        p.permit = Some(m.permit.clone());
        p.permit_fields = Some(fields);
        p.code = Some(m.code.clone());
        p.query_requested_at = Some(now);
        let record = self.record(RecordKind::Query, &p, None)?;
        batch.append_record(now, record)?;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Ims,
            Body::Query(m.clone()),
            out,
        )
    }

    fn query_accepted_from_ims(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.provider_process(&m.serial)?;
        if p.query_accepted {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("query {} was already accepted", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.query_accepted = true;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Core,
            Body::QueryAccepted(m.clone()),
            out,
        )
    }

    fn provision_from_ims(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &Provision,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.provider_process(&m.serial)?;
        if p.provision_relayed {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("a provision was already sent for serial {}", m.serial),
            )
            .into());
        }
        if p.prefix.as_ref() != Some(&m.prefix) {
            return Err(refuse(
                Reason::WrongPrefix,
                "the provision's prefix differs from the query's",
            )
            .into());
        }
        if p.permit.as_ref() != Some(&m.permit) {
            return Err(refuse(
                Reason::PermitInvalid,
                "the provision carries another permit than the query's",
            )
            .into());
        }
        let route = p
            .permit_fields
            .as_ref()
            .map(|f| f.route.clone())
            .ok_or_else(|| refuse(Reason::Internal, "process without permit fields"))?;
        let dest = self.peer_destination(&route)?;
        let mut p = p.clone();
        p.provision_relayed = true;
        p.updated_at = now;
        let record = self.record(RecordKind::Provision, &p, Some(now))?;
        batch.append_record(now, record)?;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            dest,
            Body::Provision(m.clone()),
            out,
        )
    }

    fn provision_received_from_peer(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Peer,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.provider_process(&m.serial)?;
        let requester = p.prefix.as_ref().map(|x| &x.requester);
        if peer.party.agency.as_ref() != requester {
            return Err(refuse(
                Reason::Route,
                format!("{} is not the requester of serial {}", peer.party, m.serial),
            )
            .into());
        }
        if !p.provision_relayed || p.provision_received {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} has no provision awaiting receipt", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.provision_received = true;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Ims,
            Body::ProvisionReceived(m.clone()),
            out,
        )
    }

    // ------------------------------------------------ both sides

    fn provision_complete(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.process(&m.serial)?;
        // Both sides complete only after the requester confirmed receipt.
        let ready = p.provision_received;
        if !ready || p.provision_complete {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} has no provision to complete", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.provision_complete = true;
        p.updated_at = now;
        if p.role == ProcRole::Provider {
            self.close(batch, &m.serial)?;
        } else {
            self.save_or_close(batch, p)?;
        }
        out.push(self.enqueue(
            batch,
            now,
            Destination::Core,
            Body::ProvisionComplete(m.clone()),
        )?);
        Ok(accepted())
    }

    fn process_error(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Peer,
        m: &ProcessError,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.process(&m.serial)?;
        // Only a party to the process may end it: the own IMS, the core,
        // or the counterpart agency's box.
        let counterpart = p.prefix.as_ref().map(|x| match p.role {
            ProcRole::Requester => &x.provider,
            ProcRole::Provider => &x.requester,
        });
        if peer.party.role == Role::Is && peer.party.agency.as_ref() != counterpart {
            return Err(refuse(
                Reason::Route,
                format!("{} is not a party to serial {}", peer.party, m.serial),
            )
            .into());
        }
        self.close(batch, &m.serial)?;
        let dest = if peer.party.role == Role::Ims {
            Destination::Core
        } else {
            Destination::Ims
        };
        out.push(self.enqueue(batch, now, dest, Body::ProcessError(m.clone()))?);
        Ok(accepted())
    }

    fn distribution(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &Distribution,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        if m.core_key.len() != 32 {
            return Err(refuse(
                Reason::InvalidField,
                format!(
                    "core_key is {} bytes; an Ed25519 key is 32",
                    m.core_key.len()
                ),
            )
            .into());
        }
        if self.prefix.as_ref().is_some_and(|p| p.version >= m.version) {
            // Older or same version: already in force; acknowledged, not relayed.
            return Ok(accepted());
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(m, &mut bytes)
            .map_err(|e| refuse(Reason::Internal, format!("encoding distribution: {e}")))?;
        batch.put_prefix(m.version, &bytes)?;
        self.prefix = Some(PrefixState {
            version: m.version,
            entries: m.prefixes.iter().cloned().collect(),
            core_key: m.core_key.clone(),
        });
        out.push(self.enqueue(batch, now, Destination::Ims, Body::Distribution(m.clone()))?);
        Ok(accepted())
    }

    // ------------------------------------------------ helpers

    fn process(&self, serial: &Serial) -> Result<&Process, Refusal> {
        self.processes.get(serial).ok_or_else(|| {
            refuse(
                Reason::UnknownSerial,
                format!("no process with serial {serial}"),
            )
        })
    }

    fn requester_process(&self, serial: &Serial) -> Result<&Process, Refusal> {
        let p = self.process(serial)?;
        if p.role != ProcRole::Requester {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {serial} is a provider-side process here"),
            ));
        }
        Ok(p)
    }

    fn provider_process(&self, serial: &Serial) -> Result<&Process, Refusal> {
        let p = self.process(serial)?;
        if p.role != ProcRole::Provider {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {serial} is a requester-side process here"),
            ));
        }
        Ok(p)
    }

    /// The common end of a step: store the process (or close it when it
    /// is done), queue `body` for `dest`, answer `accepted`.
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        p: Process,
        save: Save,
        dest: Destination,
        body: Body,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        match save {
            Save::Keep => self.save(batch, p)?,
            Save::OrClose => self.save_or_close(batch, p)?,
        }
        out.push(self.enqueue(batch, now, dest, body)?);
        Ok(accepted())
    }

    fn save(&mut self, batch: &mut Batch<'_>, p: Process) -> Result<(), StoreError> {
        batch.put_process(&p.serial, &p.encode())?;
        self.processes.insert(p.serial.clone(), p);
        Ok(())
    }

    fn save_or_close(&mut self, batch: &mut Batch<'_>, p: Process) -> Result<(), StoreError> {
        if p.requester_done() {
            self.close(batch, &p.serial)
        } else {
            self.save(batch, p)
        }
    }

    /// Ends a process and erases its binding (R-PFX-2).
    fn close(&mut self, batch: &mut Batch<'_>, serial: &Serial) -> Result<(), StoreError> {
        batch.remove_process(serial)?;
        self.processes.remove(serial);
        Ok(())
    }

    /// Checks the core's signature, the issuer and the validity window
    /// (R-PRM-2).
    fn verify_permit(&self, permit: &SignedPermit, now: Millis) -> Result<PermitFields, Refusal> {
        let key = self
            .prefix
            .as_ref()
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

    fn peer_destination(&self, route: &Route) -> Result<Destination, Refusal> {
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
        if !self
            .cfg
            .peer_allow
            .iter()
            .any(|n| n.contains(&endpoint.ip()))
        {
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

    /// The R-REC-1 record of `p`; every recorded process has its prefix.
    fn record(
        &self,
        kind: RecordKind,
        p: &Process,
        provision_at: Option<Millis>,
    ) -> Result<Record, Refusal> {
        let prefix = p
            .prefix
            .clone()
            .ok_or_else(|| refuse(Reason::Internal, "recorded process without prefix"))?;
        let (side, counterpart) = match p.role {
            ProcRole::Requester => (Side::Requester, prefix.provider.clone()),
            ProcRole::Provider => (Side::Provider, prefix.requester.clone()),
        };
        Ok(Record {
            kind,
            side,
            serial: p.serial.clone(),
            code: p.code.clone(),
            permit_id: p.permit_fields.as_ref().map(|f| f.permit_id.clone()),
            counterpart: Some(counterpart),
            query_requested_at: p.query_requested_at.unwrap_or(p.created_at),
            provision_at,
            clock_synced: self.cfg.clock_synced,
            prefix,
        })
    }

    /// Wraps `body` in a frame from this box and puts it in the outbox.
    fn enqueue(
        &self,
        batch: &mut Batch<'_>,
        now: Millis,
        destination: Destination,
        body: Body,
    ) -> Result<Destination, StoreError> {
        let frame = Frame::new(self.ids.next(), self.party.clone(), now, body);
        batch.push_outbox(&destination.key(), &frame.encode())?;
        Ok(destination)
    }

    fn access_in(&self, now: Millis, peer: &Peer, frame: &Frame, outcome: String) -> AccessEntry {
        let prefix = frame.body.prefix();
        AccessEntry {
            at: now,
            terminal: peer.addr.to_string(),
            party: party_label(&peer.party),
            agency: peer.party.agency.clone(),
            staff: None,
            direction: Direction::In,
            operation: frame.body.type_name().to_owned(),
            message_id: Some(frame.header.id.to_string()),
            serial: frame.body.serial().cloned(),
            business: prefix.map(|p| p.business.clone()),
            info_name: prefix.map(|p| p.info_name.clone()),
            items: prefix
                .map(|p| p.items.iter().cloned().collect())
                .unwrap_or_default(),
            outcome,
        }
    }
}

/// `text` cut to [`MAX_TEXT`] bytes on a character boundary.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A digest of what a frame says, apart from its id and send time: a
/// resend of the same frame has the same fingerprint.
fn fingerprint(frame: &Frame) -> [u8; 32] {
    use sha2::Digest;
    let id = MessageId::new("x").expect("invariant: literal id is valid");
    let neutral = Frame::new(id, frame.header.from.clone(), 0, frame.body.clone());
    sha2::Sha256::digest(neutral.encode_body()).into()
}

/// What is remembered of an accepted frame: its fingerprint and the reply.
fn encode_seen(print: &[u8; 32], reply: &Body, own: &Party) -> Vec<u8> {
    let id = MessageId::new("x").expect("invariant: literal id is valid");
    let mut out = print.to_vec();
    out.extend(Frame::new(id, own.clone(), 0, reply.clone()).encode_body());
    out
}

/// The remembered reply, when `print` matches the remembered fingerprint.
fn decode_seen(stored: &[u8], print: &[u8; 32]) -> Option<Body> {
    let (head, reply) = stored.split_at_checked(32)?;
    if head != print {
        return None;
    }
    Frame::decode_body(reply).ok().map(|f| f.body)
}

/// Whether `p` is waiting for something from `peer`.
fn waits_on(p: &Process, peer: &Party) -> bool {
    let prefix = p.prefix.as_ref();
    match (peer.role, p.role) {
        (Role::Core, ProcRole::Requester) => {
            p.step == Step::PermitRequested || (p.step == Step::QueryRelayed && !p.query_accepted)
        }
        (Role::Is, ProcRole::Requester) => {
            p.step == Step::QueryRelayed
                && !p.provision_relayed
                && prefix.map(|x| &x.provider) == peer.agency.as_ref()
        }
        (Role::Is, ProcRole::Provider) => {
            p.provision_relayed
                && !p.provision_received
                && prefix.map(|x| &x.requester) == peer.agency.as_ref()
        }
        _ => false,
    }
}

/// A permit is good only until its `expires_at`.
fn check_expiry(fields: &PermitFields, now: Millis) -> Result<(), Refusal> {
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

/// R-QRY-6: the query's own format, beyond what decoding checked.
fn check_query_format(m: &Query) -> Result<(), Refusal> {
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

fn listed(entries: &HashSet<PrefixEntry>, prefix: &Prefix) -> bool {
    !prefix.items.is_empty()
        && prefix.items.iter().all(|item| {
            entries.contains(&PrefixEntry {
                requester: prefix.requester.clone(),
                provider: prefix.provider.clone(),
                business: prefix.business.clone(),
                info_name: prefix.info_name.clone(),
                item: item.clone(),
            })
        })
}

/// `"core"`, `"is/131016"`, `"ims/131016"`.
pub fn party_label(p: &Party) -> String {
    match &p.agency {
        Some(a) => format!("{}/{a}", p.role),
        None => p.role.to_string(),
    }
}

fn accepted() -> Body {
    Body::Accepted(Accepted {
        in_reply_to: placeholder_id(),
    })
}

/// Replies are built before the id they answer is at hand; the engine
/// fills `in_reply_to` in [`with_reply_to`].
fn placeholder_id() -> MessageId {
    MessageId::new("pending").expect("invariant: literal id is valid")
}

fn with_reply_to(body: Body, id: &MessageId) -> Body {
    match body {
        Body::Accepted(_) => Body::Accepted(Accepted {
            in_reply_to: id.clone(),
        }),
        Body::SerialIssued(mut m) => {
            m.in_reply_to = id.clone();
            Body::SerialIssued(m)
        }
        Body::PrefixResult(mut m) => {
            m.in_reply_to = id.clone();
            Body::PrefixResult(m)
        }
        Body::Refused(mut m) => {
            m.in_reply_to = Some(id.clone());
            Body::Refused(m)
        }
        other => other,
    }
}

fn store_refusal(e: &StoreError) -> Body {
    Body::Refused(Refused {
        in_reply_to: None,
        reason: Reason::Store,
        text: if e.is_storage_full() {
            "the box's disk is full; nothing was kept, send again later".to_owned()
        } else {
            "the box's store could not commit; nothing was kept, send again later".to_owned()
        },
    })
}

/// `yyyymmdd` of `ms` in Japan Standard Time (UTC+9), the date printed in
/// serials.
pub fn jst_date(ms: Millis) -> String {
    let days = (ms / 1000 + 9 * 3600).div_euclid(86_400);
    let (y, m, d) = super::hours::civil_from_days(days);
    format!("{y:04}{m:02}{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_dates_are_japan_time() {
        // 2026-11-21T15:00:00Z is 2026-11-22 00:00 in Japan.
        assert_eq!(jst_date(1_795_273_200_000), "20261122");
        assert_eq!(jst_date(1_795_273_199_000), "20261121");
        assert_eq!(jst_date(0), "19700101");
    }
}
