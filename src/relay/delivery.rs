//! Delivery of outbox entries to their next hop.
//!
//! The outbox lives in the store, indexed by destination. One worker task
//! per destination pages through its own entries in seq order (a few
//! hundred at a time, so a backlog of a million costs no memory and
//! resending starts at once after a restart), sends each over one TLS link
//! and waits for the hop reply, then hands the reply to the engine, which
//! records it and removes the entry (R-COM-4). The engine wakes a worker
//! after each commit that added entries for it.
//!
//! Retries: a transient refusal ("not now") is retried with backoff for as
//! long as it lasts; an unreachable or silent next hop is retried
//! `retry_count` times, then the engine decides (R-COM-2): an entry an open
//! process depends on is given up and the process closed; anything else is
//! kept and resent once the peer is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ifrelay_proto::{AgencyCode, Body};
use ifrelay_store::StoreReader;
use rustls::ClientConfig;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::destination::{Destination, OutboxItem};
use super::engine::{Delivery, Input, Undeliverable, Verdict};
use crate::net::{Link, LinkError};

/// Entries a worker reads from the store at a time.
pub const PAGE: usize = 256;

/// Longest wait between two attempts at one entry.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How to reach the configured destinations.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub agency: AgencyCode,
    pub core: std::net::SocketAddr,
    pub ims: std::net::SocketAddr,
    pub tls: Arc<ClientConfig>,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub retry_backoff: Duration,
    /// Failed attempts before the engine is asked what to do.
    pub retry_count: u32,
    pub max_frame: usize,
}

/// What the engine tells delivery after a commit.
#[derive(Debug, Clone)]
pub enum Notice {
    /// New entries for this destination are durable.
    Wake(Destination),
    /// A commit failed: entries whose delivery was not recorded are still
    /// in the outbox; every worker reads its outbox again from the start
    /// (the next hop drops what it already has by message id).
    Rewind,
}

/// Shared between the dispatcher and one worker.
#[derive(Debug, Default)]
struct Signal {
    wake: Notify,
    rewinds: AtomicU64,
}

/// Starts a worker for every destination that has entries, then routes
/// the engine's notices to workers, starting them as needed, until
/// cancelled.
pub async fn dispatch(
    cfg: DeliveryConfig,
    reader: StoreReader,
    mut notices: mpsc::UnboundedReceiver<Notice>,
    engine: mpsc::Sender<Input>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut workers: HashMap<Destination, Arc<Signal>> = HashMap::new();
    let start = |destination: Destination, workers: &mut HashMap<Destination, Arc<Signal>>| {
        workers
            .entry(destination.clone())
            .or_insert_with(|| {
                let signal = Arc::new(Signal::default());
                let span = tracing::info_span!("deliver", to = %destination.key());
                tracker.spawn(
                    worker(
                        cfg.clone(),
                        destination,
                        reader.clone(),
                        signal.clone(),
                        engine.clone(),
                        shutdown.clone(),
                    )
                    .instrument(span),
                );
                signal
            })
            .clone()
    };
    match reader.outbox_destinations() {
        Ok(pending) => {
            for (key, count) in pending {
                match Destination::parse(&key) {
                    Ok(d) => {
                        tracing::info!(to = %key, count, "resending outbox after start");
                        start(d, &mut workers);
                    }
                    Err(text) => tracing::error!(%key, %text, "outbox destination unreadable"),
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list the outbox; new entries still go out"),
    }
    loop {
        let notice = tokio::select! {
            () = shutdown.cancelled() => break,
            n = notices.recv() => match n { Some(n) => n, None => break },
        };
        match notice {
            Notice::Wake(d) => start(d, &mut workers).wake.notify_one(),
            Notice::Rewind => {
                for signal in workers.values() {
                    signal.rewinds.fetch_add(1, Ordering::Relaxed);
                    signal.wake.notify_one();
                }
            }
        }
    }
}

/// Per-destination connection state.
struct Worker {
    cfg: DeliveryConfig,
    destination: Destination,
    addr: std::net::SocketAddr,
    party: ifrelay_proto::Party,
    link: Option<Link>,
    backoff: Duration,
    engine: mpsc::Sender<Input>,
    shutdown: CancellationToken,
}

/// What became of one entry.
enum Sent {
    /// The next hop answered; the engine has the answer.
    Answered,
    /// The engine gave the entry up (its process is closed).
    GivenUp,
    /// Stopping.
    Stopped,
}

async fn worker(
    cfg: DeliveryConfig,
    destination: Destination,
    reader: StoreReader,
    signal: Arc<Signal>,
    engine: mpsc::Sender<Input>,
    shutdown: CancellationToken,
) {
    let addr = match &destination {
        Destination::Core => cfg.core,
        Destination::Ims => cfg.ims,
        Destination::PeerIs { endpoint, .. } => *endpoint,
    };
    let mut w = Worker {
        party: destination.party(&cfg.agency),
        backoff: cfg.retry_backoff,
        cfg,
        destination,
        addr,
        link: None,
        engine,
        shutdown,
    };
    let key = w.destination.key();
    let mut cursor: Option<u64> = None;
    let mut rewinds_seen = signal.rewinds.load(Ordering::Relaxed);
    loop {
        let rewinds = signal.rewinds.load(Ordering::Relaxed);
        if rewinds != rewinds_seen {
            rewinds_seen = rewinds;
            cursor = None;
        }
        let page = match reader.outbox_for(&key, cursor, PAGE) {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox; retrying");
                if sleep_or_stop(&w.shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        if page.is_empty() {
            tokio::select! {
                () = w.shutdown.cancelled() => return,
                () = signal.wake.notified() => continue,
            }
        }
        for entry in page {
            cursor = Some(entry.seq);
            let item = match OutboxItem::from_stored(entry.seq, &entry.destination, entry.frame) {
                Ok(item) => item,
                Err(text) => {
                    tracing::error!(seq = entry.seq, %text, "outbox entry unreadable; skipped");
                    continue;
                }
            };
            match w.send(item).await {
                Sent::Answered | Sent::GivenUp => {}
                Sent::Stopped => return,
            }
            if signal.rewinds.load(Ordering::Relaxed) != rewinds_seen {
                break;
            }
        }
    }
}

impl Worker {
    /// Sends one entry until the next hop answers, the engine gives it up,
    /// or we stop.
    async fn send(&mut self, item: OutboxItem) -> Sent {
        let mut failures: u32 = 0;
        loop {
            if failures > self.cfg.retry_count {
                match self.ask_engine(&item).await {
                    Some(Verdict::GiveUp) => return Sent::GivenUp,
                    Some(Verdict::Keep) => failures = 0,
                    None => return Sent::Stopped,
                }
            }
            if self.link.is_none() {
                let connect = Link::connect(
                    self.addr,
                    &self.party,
                    self.cfg.tls.clone(),
                    self.cfg.connect_timeout,
                    self.cfg.reply_timeout,
                    self.cfg.max_frame,
                );
                match tokio::select! {
                    () = self.shutdown.cancelled() => return Sent::Stopped,
                    r = connect => r,
                } {
                    Ok(l) => self.link = Some(l),
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, retry_in = ?self.backoff, "next hop unreachable");
                        if self.pause().await {
                            return Sent::Stopped;
                        }
                        continue;
                    }
                }
            }
            let Some(link) = self.link.as_mut() else {
                continue;
            };
            let result = tokio::select! {
                () = self.shutdown.cancelled() => return Sent::Stopped,
                r = link.request_encoded(&item.meta.message_id, &item.bytes) => r,
            };
            match result {
                Ok(reply) if is_transient_refusal(&reply.body) => {
                    // "Not now": reachable, so this is not a failure that
                    // counts towards giving up.
                    tracing::info!(seq = item.seq, retry_in = ?self.backoff, "next hop busy; will resend");
                    if self.pause().await {
                        return Sent::Stopped;
                    }
                }
                Ok(reply) => {
                    self.backoff = self.cfg.retry_backoff;
                    let terminal = link.peer();
                    let delivered = Input::Delivered(Box::new(Delivery {
                        item,
                        terminal,
                        reply: reply.body,
                    }));
                    return if self.engine.send(delivered).await.is_err() {
                        Sent::Stopped
                    } else {
                        Sent::Answered
                    };
                }
                Err(e) => {
                    self.link = None;
                    failures += 1;
                    if matches!(e, LinkError::Mismatched { .. }) {
                        tracing::error!(error = %e, "next hop answered another frame; reconnecting");
                    } else {
                        tracing::warn!(error = %e, failures, "delivery failed; reconnecting");
                    }
                    if self.pause().await {
                        return Sent::Stopped;
                    }
                }
            }
        }
    }

    /// Waits the current backoff, then doubles it; true when stopping.
    async fn pause(&mut self) -> bool {
        let stop = sleep_or_stop(&self.shutdown, self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        stop
    }

    async fn ask_engine(&self, item: &OutboxItem) -> Option<Verdict> {
        let (tx, rx) = oneshot::channel();
        let ask = Input::Undeliverable(Box::new(Undeliverable {
            item: item.clone(),
            verdict: tx,
        }));
        self.engine.send(ask).await.ok()?;
        tokio::select! {
            () = self.shutdown.cancelled() => None,
            v = rx => v.ok(),
        }
    }
}

fn is_transient_refusal(body: &Body) -> bool {
    matches!(body, Body::Refused(r) if r.reason.is_transient())
}

/// Sleeps for `d`; true when shutdown came first.
async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}
