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
//! This file owns the batch loop and the commit; the submodules own one
//! concern each, and only ever depend downwards (upper ones first):
//!
//! - `harness` (feature `test-support`): the engine driven synchronously,
//!   for tests and fuzzing;
//! - `handle`: one input — identity, duplicates, roles, hours, the step;
//! - `requester`, `provider`, `closing`, `status`, `timers`, `delivered`:
//!   the steps and events, as methods on the state;
//! - `state`: the state and the primitive changes (save, close, queue);
//! - `permits`, `access`, `dedup`, `roles`, `prefix`, `reply`, `config`:
//!   checks, log entries and values, with no state of their own.
//!
//! Invariants:
//! - every input produces exactly one access-log entry in the same commit
//!   as its effects (R-REC-5);
//! - a refused input changes nothing but the access log;
//! - when a commit fails, every input of the batch is answered
//!   [`Reason::Store`] and the in-memory state is reloaded from the store
//!   before the next batch, so memory never runs ahead of disk.
//!
//! [`Reason::Store`]: ifrelay_proto::Reason::Store

mod access;
mod closing;
mod config;
mod dedup;
mod delivered;
mod handle;
#[cfg(feature = "test-support")]
pub mod harness;
mod permits;
mod prefix;
mod provider;
mod reply;
mod requester;
mod roles;
mod state;
mod status;
mod timers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ifrelay_proto::{Body, Party, Reason};
use ifrelay_store::{BootState, Store, StoreError};
use tokio::sync::mpsc;

pub use self::config::{EngineConfig, RetentionPolicy, StepTimeouts};
pub use self::dedup::SEEN_RETENTION;
use self::prefix::Lists;
use self::reply::store_refusal;
use self::state::{Handled, Relay};
pub use self::timers::RETENTION_DELETE_PER_TICK;
use super::channel::{FrameInput, Input, Notice, Verdict};
use super::destination::Destination;
use super::process::Process;
use crate::net::{now_millis, IdGen};

/// Most inputs handled in one commit.
pub const MAX_BATCH: usize = 256;
/// A commit this long counts in [`EngineStats::slow_commits`].
pub const SLOW_COMMIT: Duration = Duration::from_millis(20);
/// Most entries of each chain one index step indexes: bounds how long an
/// input that arrives during a step waits (about 1 ms here).
pub const INDEX_STEP: usize = 256;
/// Entries waiting for their index rows beyond which the engine takes an
/// index step even while inputs wait: bounds the rows a search scans.
pub const INDEX_BACKLOG: usize = 1024;
/// Between busy batches, fewer waiting entries than this wait for
/// [`INDEX_QUIET`] to pass, so rows go in bulk.
pub const INDEX_BULK: usize = 64;
/// A quiet engine indexes what waits once this long passed since its
/// last index step.
pub const INDEX_QUIET: Duration = Duration::from_millis(200);

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
    /// Index steps taken between batches, entries they indexed, and the
    /// microseconds they took.
    pub index_steps: u64,
    pub indexed: u64,
    pub indexing_us: u64,
    /// What the store's redo log wrote (bytes per frame in the bench).
    pub log: ifrelay_store::LogStats,
    pub refused: HashMap<Reason, u64>,
}

/// The engine and its state. Runs on its own thread via [`Engine::run`].
pub struct Engine {
    store: Store,
    relay: Relay,
    /// A commit failed: reload from the store before the next batch.
    needs_reload: bool,
    deliver: mpsc::UnboundedSender<Notice>,
    stats: Arc<Mutex<EngineStats>>,
}

impl Engine {
    /// Boots the store (bumping the serial epoch durably) and loads the
    /// state as of `now` (which stored list is in force). Delivery finds
    /// the outbox in the store by itself.
    ///
    /// # Errors
    /// The store's error when it cannot boot.
    pub fn boot(
        mut store: Store,
        cfg: EngineConfig,
        deliver: mpsc::UnboundedSender<Notice>,
        stats: Arc<Mutex<EngineStats>>,
        now: ifrelay_proto::Millis,
    ) -> Result<(Engine, Arc<IdGen>), StoreError> {
        let boot = store.boot(now)?;
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
                lists: Lists::default(),
                processes: HashMap::new(),
                records_deletion_confirmed: None,
            },
            needs_reload: false,
            deliver,
            stats,
        };
        engine.load(boot, now);
        // Entries the last run left without index rows (or replayed from
        // the log) get them before the first search or retention step.
        engine.index_step(usize::MAX);
        Ok((engine, ids))
    }

    /// Replaces the in-memory state with `boot`'s. Stored distributions
    /// are verified again against the pinned roots (R-SEC-6): one that
    /// fails (altered on disk, written by a version without signatures,
    /// or certified by a root no longer pinned) is not held, and the box
    /// waits for the core's next distribution.
    fn load(&mut self, boot: BootState, now: ifrelay_proto::Millis) {
        self.relay.epoch = boot.epoch;
        self.relay.serial_counter = 0;
        let mut trusted = Vec::new();
        for (version, bytes) in boot.prefixes {
            let checked = ciborium::from_reader::<ifrelay_proto::Distribution, _>(&bytes[..])
                .map_err(|e| e.to_string())
                .and_then(|d| {
                    ifrelay_proto::distribution::verify_stored(&d, &self.relay.cfg.roots)
                        .map_err(|e| e.to_string())
                });
            match checked {
                Ok(t) if t.fields.version == version => trusted.push(t),
                Ok(t) => tracing::error!(
                    version,
                    signed_version = t.fields.version,
                    "stored distribution is filed under another version; not held"
                ),
                Err(error) => tracing::error!(
                    version,
                    %error,
                    "stored distribution does not verify against the pinned roots; not held, the box waits for the core's next distribution"
                ),
            }
        }
        self.relay.lists = Lists::from_stored(trusted, now);
        self.relay.records_deletion_confirmed = self
            .store
            .reader()
            .records_deletion_confirmed()
            .unwrap_or_else(|error| {
                // Records are then kept until the deletion is confirmed
                // again: the safe side.
                tracing::error!(%error, "cannot read the confirmed records deletion");
                None
            });
        self.relay.processes = boot
            .processes
            .into_iter()
            .filter_map(|(serial, bytes)| match Process::decode(&bytes) {
                Ok(p) => Some((serial, p)),
                Err(e) => {
                    tracing::error!(%serial, error = %crate::logging::Causes(&e), "stored process unreadable; skipped");
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
        let mut last_index_step = Instant::now();
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
                self.run_batch(&mut batch, now_millis());
            }
            if stop {
                break;
            }
            self.index_between_batches(inputs.is_empty(), &mut last_index_step);
        }
        // A clean stop leaves every entry indexed (a rollback to a firmware
        // without index marks then misses nothing) and the log empty (one
        // without log compression then opens the store).
        self.index_step(usize::MAX);
        match self.store.checkpoint() {
            Ok(()) => tracing::info!("relay engine stopped"),
            Err(e) => tracing::warn!(
                error = %crate::logging::Causes(&e),
                "relay engine stopped without its final checkpoint; the next start replays the redo log"
            ),
        }
    }

    /// Writes the search index rows of appended entries in bulk, after
    /// the replies of their batches went out (`ifrelay_store` index.rs):
    /// when the engine is quiet, or when so many wait that searches would
    /// slow down.
    fn index_between_batches(&mut self, quiet: bool, last_step: &mut Instant) {
        let waiting = self.store.unindexed();
        let due = waiting >= INDEX_BACKLOG
            || (quiet
                && waiting > 0
                && (waiting >= INDEX_BULK || last_step.elapsed() >= INDEX_QUIET));
        if !due {
            return;
        }
        self.index_step(INDEX_STEP);
        *last_step = Instant::now();
    }

    /// One index step of at most `max` entries per chain, counted in the
    /// stats; a failure is logged (nothing accepted depends on it).
    pub(crate) fn index_step(&mut self, max: usize) {
        let started = Instant::now();
        let result = self.store.index_pending(max);
        match result {
            Ok(indexed) => {
                let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                stats.index_steps += 1;
                stats.indexed += indexed as u64;
                stats.indexing_us += micros(started.elapsed());
            }
            Err(e) => tracing::warn!(
                error = %crate::logging::Causes(&e),
                "index step failed; searches scan the entries it left until a later step succeeds"
            ),
        }
    }

    /// Handles `inputs` at `now` in one write transaction, commits, then
    /// answers: the one place where effects become visible.
    fn run_batch(&mut self, inputs: &mut Vec<Input>, now: ifrelay_proto::Millis) {
        if self.needs_reload {
            match self.store.boot(now_millis()) {
                Ok(boot) => {
                    self.load(boot, now);
                    self.needs_reload = false;
                    // Deliveries the failed batch did not record are
                    // still in the outbox: read it again from the start.
                    let _ = self.deliver.send(Notice::Rewind);
                    tracing::info!(epoch = self.relay.epoch, "store recovered; state reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %crate::logging::Causes(&e), "store still unavailable");
                    self.fail_all(inputs.drain(..), &e);
                    return;
                }
            }
        }
        if let Some(version) = self.relay.lists.promote(now) {
            tracing::info!(version, "scheduled distribution took effect");
        }
        let mut store_batch = match self.store.begin() {
            Ok(b) => b,
            Err(e) => {
                self.needs_reload = true;
                self.fail_all(inputs.drain(..), &e);
                return;
            }
        };
        let started = Instant::now();
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
        let handled = Instant::now();
        let result = match failure {
            Some(e) => {
                drop(store_batch);
                Err(e)
            }
            None => store_batch.commit(),
        };
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.handling_us += micros(handled.duration_since(started));
            stats.committing_us += micros(handled.elapsed());
            if handled.elapsed() >= SLOW_COMMIT {
                stats.slow_commits += 1;
            }
        }
        match result {
            Ok(()) => {
                let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                let mut woken: Vec<Destination> = Vec::new();
                stats.log = self.store.log_stats();
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
                    let _ = self.deliver.send(Notice::Wake(d));
                }
            }
            Err(e) => {
                tracing::error!(error = %crate::logging::Causes(&e), full = e.is_storage_full(), "commit failed; batch refused");
                self.needs_reload = true;
                for h in done {
                    if let Some((tx, body)) = h.reply {
                        let mut refusal = store_refusal(&e);
                        if let (Body::Refused(r), Some(id)) = (&mut refusal, body.in_reply_to()) {
                            r.in_reply_to = Some(id.clone());
                        }
                        let _ = tx.send(refusal);
                    }
                    // A give-up decided in this batch was not kept: the
                    // worker keeps the entry. A dropped channel would read
                    // as "stopping" and end the worker (and the box).
                    if let Some((tx, _)) = h.verdict {
                        let _ = tx.send(Verdict::Keep);
                    }
                }
                self.fail_all(unhandled.into_iter(), &e);
            }
        }
    }

    fn fail_all(&self, inputs: impl Iterator<Item = Input>, e: &StoreError) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
