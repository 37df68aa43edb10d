//! Delivery of outbox entries to their next hop.
//!
//! The outbox lives in the store, indexed by destination. One worker task
//! per destination reads its own entries in seq order, a window of
//! [`WINDOW`] at a time (so a backlog of a million costs no memory and
//! resending starts at once after a restart), pipelines them over one TLS
//! link, and hands each in-order hop reply to the engine, which records it
//! and removes the entry (R-COM-4). The engine wakes a worker after each
//! commit that added entries for it. On any trouble the link is dropped
//! and everything unanswered is sent again, oldest first; the next hop
//! answers what it already has from its duplicate table.
//!
//! Retries: a transient refusal ("not now") is retried with backoff for as
//! long as it lasts; an unreachable or silent next hop is retried
//! `retry_count` times, then the engine decides (R-COM-2): an entry an open
//! process depends on is given up and the process closed; anything else is
//! kept and resent once the peer is back.

use std::collections::{HashMap, VecDeque};
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

use super::channel::{Delivery, Input, Notice, Undeliverable, Verdict};
use super::destination::{Destination, OutboxItem};
use crate::critical::Guards;
use crate::health::PeerBook;
use crate::logging::Causes;
use crate::net::{Budget, Link, LinkReader, LinkWriter};

/// Frames a worker keeps in flight to one destination (pipelining): the
/// next hop answers in order, so up to this many wait on its commits at
/// once instead of one.
pub const WINDOW: usize = 32;

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
    /// The box's bytes in flight: replies are charged to it as they arrive.
    pub budget: Budget,
    /// Where each peer's connection state goes, for `status`.
    pub peers: Arc<PeerBook>,
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
    guards: Guards,
) {
    let mut workers: HashMap<Destination, Arc<Signal>> = HashMap::new();
    let start = |destination: Destination, workers: &mut HashMap<Destination, Arc<Signal>>| {
        workers
            .entry(destination.clone())
            .or_insert_with(|| {
                let signal = Arc::new(Signal::default());
                let span = tracing::info_span!("deliver", to = %destination.key());
                // A worker that dies would silently stop its destination's
                // deliveries: it is critical like the dispatcher.
                let guard = guards.guard(format!("delivery to {}", destination.key()));
                let work = worker(
                    cfg.clone(),
                    destination,
                    reader.clone(),
                    signal.clone(),
                    engine.clone(),
                    shutdown.clone(),
                );
                tracker.spawn(
                    async move {
                        let _guard = guard;
                        work.await;
                    }
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
        Err(e) => {
            tracing::error!(error = %Causes(&e), "cannot list the outbox; new entries still go out")
        }
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

/// The connection of one worker, split for pipelining.
struct Conn {
    reader: LinkReader,
    writer: LinkWriter,
    peer: std::net::SocketAddr,
    /// How many of the worker's pending entries are on the wire.
    sent: usize,
}

/// Why the current connection is dropped.
enum Trouble {
    /// Counts towards giving up (unreachable, silent, broken).
    Failure,
    /// "Not now" from a reachable peer: back off, but do not count it.
    NotNow,
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
    let party = destination.party(&cfg.agency);
    let key = destination.key();
    // Entries read from the store and not yet answered, in seq order; the
    // first `conn.sent` of them are on the wire.
    let mut pending: VecDeque<OutboxItem> = VecDeque::with_capacity(WINDOW);
    let mut cursor: Option<u64> = None;
    let mut conn: Option<Conn> = None;
    let mut failures: u32 = 0;
    let mut backoff = cfg.retry_backoff;
    let mut rewinds_seen = signal.rewinds.load(Ordering::Relaxed);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let rewinds = signal.rewinds.load(Ordering::Relaxed);
        if rewinds != rewinds_seen {
            rewinds_seen = rewinds;
            pending.clear();
            cursor = None;
            conn = None;
        }
        // Refill the window from the store.
        if pending.len() < WINDOW {
            match reader.outbox_for(&key, cursor, WINDOW - pending.len()) {
                Ok(page) => {
                    for entry in page {
                        cursor = Some(entry.seq);
                        match OutboxItem::from_stored(entry.seq, &entry.destination, entry.frame) {
                            Ok(item) => pending.push_back(item),
                            Err(text) => {
                                tracing::error!(seq = entry.seq, %text, "outbox entry unreadable; skipped");
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %Causes(&e), "cannot read the outbox; retrying");
                    if sleep_or_stop(&shutdown, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        if pending.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = signal.wake.notified() => continue,
            }
        }
        // Too many failures in a row: ask the engine about every entry in
        // the window, not just the oldest (which may be one it keeps
        // forever, like a status notice): entries an open process depends
        // on are given up, the rest kept.
        if failures > cfg.retry_count {
            let mut kept = VecDeque::with_capacity(pending.len());
            for item in pending.drain(..) {
                match ask_engine(&engine, &shutdown, &item).await {
                    Some(Verdict::GiveUp) => {}
                    Some(Verdict::Keep) => kept.push_back(item),
                    None => return,
                }
            }
            pending = kept;
            conn = None;
            failures = 0;
            continue;
        }
        let trouble = match conn.as_mut() {
            None => {
                let connect = Link::connect(
                    addr,
                    &party,
                    cfg.tls.clone(),
                    cfg.connect_timeout,
                    cfg.reply_timeout,
                    cfg.max_frame,
                );
                match tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = connect => r,
                } {
                    Ok(link) => {
                        cfg.peers.connected(&party, crate::net::now_millis());
                        let peer = link.peer();
                        let (reader, writer) = link.with_budget(cfg.budget.clone()).into_split();
                        conn = Some(Conn {
                            reader,
                            writer,
                            peer,
                            sent: 0,
                        });
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %Causes(&e), failures, retry_in = ?backoff, "next hop unreachable");
                        let why = e.to_string();
                        cfg.peers
                            .failed(&party, crate::net::now_millis(), failures + 1, &why);
                        Trouble::Failure
                    }
                }
            }
            Some(c) => match exchange(c, &mut pending, &engine, &shutdown).await {
                Ok(Exchanged::Answered) => {
                    cfg.peers.answered(&party, crate::net::now_millis());
                    failures = 0;
                    backoff = cfg.retry_backoff;
                    continue;
                }
                Ok(Exchanged::Stopped) => return,
                Err(t) => {
                    let why = match t {
                        Trouble::Failure => "the connection failed or went silent",
                        Trouble::NotNow => "busy: asked to send again later",
                    };
                    cfg.peers
                        .failed(&party, crate::net::now_millis(), failures + 1, why);
                    t
                }
            },
        };
        // Drop the connection; what was on the wire is sent again (the
        // next hop answers what it already has from its duplicate table).
        conn = None;
        if matches!(trouble, Trouble::Failure) {
            failures += 1;
        }
        if sleep_or_stop(&shutdown, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The outcome of one step on a connection.
enum Exchanged {
    /// The oldest entry was answered and handed to the engine.
    Answered,
    Stopped,
}

/// Puts every pending entry not yet on the wire onto it, then reads one
/// reply, which must answer the oldest entry.
async fn exchange(
    c: &mut Conn,
    pending: &mut VecDeque<OutboxItem>,
    engine: &mpsc::Sender<Input>,
    shutdown: &CancellationToken,
) -> Result<Exchanged, Trouble> {
    if c.sent < pending.len() {
        // The whole unsent window leaves in one flush: fewer TLS records
        // and system calls than a flush per frame.
        let write = async {
            for item in pending.iter().skip(c.sent) {
                c.writer.queue(&item.bytes).await?;
            }
            c.writer.flush().await
        };
        let written = tokio::select! {
            () = shutdown.cancelled() => return Ok(Exchanged::Stopped),
            r = write => r,
        };
        if let Err(e) = written {
            tracing::warn!(error = %Causes(&e), "delivery failed; reconnecting");
            return Err(Trouble::Failure);
        }
        c.sent = pending.len();
    }
    let read = c.reader.next_reply();
    let reply = match tokio::select! {
        () = shutdown.cancelled() => return Ok(Exchanged::Stopped),
        r = read => r,
    } {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(error = %Causes(&e), "no reply; reconnecting");
            return Err(Trouble::Failure);
        }
    };
    let Some(front) = pending.front() else {
        return Err(Trouble::Failure);
    };
    if reply.body.in_reply_to() != Some(&front.meta.message_id) {
        tracing::error!(want = %front.meta.message_id, got = ?reply.body.in_reply_to(), "next hop answered another frame; reconnecting");
        return Err(Trouble::Failure);
    }
    if is_transient_refusal(&reply.body) {
        tracing::info!(seq = front.seq, "next hop busy; will resend");
        return Err(Trouble::NotNow);
    }
    let Some(item) = pending.pop_front() else {
        return Err(Trouble::Failure);
    };
    c.sent -= 1;
    let delivered = Input::Delivered(Box::new(Delivery {
        item,
        terminal: c.peer,
        reply: reply.body,
    }));
    if engine.send(delivered).await.is_err() {
        return Ok(Exchanged::Stopped);
    }
    Ok(Exchanged::Answered)
}

async fn ask_engine(
    engine: &mpsc::Sender<Input>,
    shutdown: &CancellationToken,
    item: &OutboxItem,
) -> Option<Verdict> {
    let (tx, rx) = oneshot::channel();
    let ask = Input::Undeliverable(Box::new(Undeliverable {
        item: item.clone(),
        verdict: tx,
    }));
    engine.send(ask).await.ok()?;
    tokio::select! {
        () = shutdown.cancelled() => None,
        v = rx => v.ok(),
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
