//! Delivery of outbox entries to their next hop.
//!
//! One worker task per destination keeps one TLS link and sends its
//! entries in outbox order, one at a time, waiting for the hop reply; so
//! the messages of a process reach each peer in the order they were
//! accepted. A frame leaves the outbox only when the engine has recorded
//! the next hop's answer (R-COM-4: unanswered entries are sent again after
//! reconnecting, and after a restart from the stored outbox).
//!
//! Queues are bounded: when a destination's queue is full the entry stays
//! in the durable outbox and is picked up at the next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ifrelay_proto::AgencyCode;
use rustls::ClientConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::destination::{Destination, OutboxItem};
use super::engine::{Delivery, Input};
use crate::net::{Link, LinkError};

/// Entries one destination may have queued in memory.
pub const QUEUE_PER_DESTINATION: usize = 65_536;

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
    pub max_frame: usize,
}

/// Routes outbox items to per-destination workers until cancelled.
pub async fn dispatch(
    cfg: DeliveryConfig,
    mut items: mpsc::UnboundedReceiver<OutboxItem>,
    engine: mpsc::Sender<Input>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut workers: HashMap<Destination, mpsc::Sender<OutboxItem>> = HashMap::new();
    loop {
        let item = tokio::select! {
            () = shutdown.cancelled() => break,
            item = items.recv() => match item { Some(i) => i, None => break },
        };
        let queue = workers.entry(item.destination.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE_PER_DESTINATION);
            let span = tracing::info_span!("deliver", to = %item.destination.key());
            tracker.spawn(
                worker(
                    cfg.clone(),
                    item.destination.clone(),
                    rx,
                    engine.clone(),
                    shutdown.clone(),
                )
                .instrument(span),
            );
            tx
        });
        if let Err(e) = queue.try_send(item) {
            let item = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
            };
            tracing::warn!(seq = item.seq, destination = %item.destination.key(), "delivery queue full; entry stays in the outbox until restart");
        }
    }
}

async fn worker(
    cfg: DeliveryConfig,
    destination: Destination,
    mut queue: mpsc::Receiver<OutboxItem>,
    engine: mpsc::Sender<Input>,
    shutdown: CancellationToken,
) {
    let party = destination.party(&cfg.agency);
    let addr = match &destination {
        Destination::Core => cfg.core,
        Destination::Ims => cfg.ims,
        Destination::PeerIs { endpoint, .. } => *endpoint,
    };
    let mut link: Option<Link> = None;
    let mut backoff = cfg.retry_backoff;
    loop {
        let item = tokio::select! {
            () = shutdown.cancelled() => return,
            item = queue.recv() => match item { Some(i) => i, None => return },
        };
        // Retry this entry until the next hop answers or we stop; the
        // entry is durable, so stopping loses nothing.
        loop {
            if link.is_none() {
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
                    Ok(l) => {
                        link = Some(l);
                        backoff = cfg.retry_backoff;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "next hop unreachable");
                        if sleep_or_stop(&shutdown, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let Some(l) = link.as_mut() else { continue };
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = l.request_encoded(&item.meta.message_id, &item.bytes) => r,
            };
            match result {
                Ok(reply) if is_transient_refusal(&reply.body) => {
                    // "Not now" from the next hop: keep the entry, try again.
                    tracing::info!(seq = item.seq, retry_in = ?backoff, "next hop busy; will resend");
                    if sleep_or_stop(&shutdown, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Ok(reply) => {
                    backoff = cfg.retry_backoff;
                    let terminal = l.peer();
                    if engine
                        .send(Input::Delivered(Box::new(Delivery {
                            item,
                            terminal,
                            reply: reply.body,
                        })))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    link = None;
                    if matches!(e, LinkError::Mismatched { .. }) {
                        tracing::error!(error = %e, "next hop answered another frame; reconnecting");
                    } else {
                        tracing::warn!(error = %e, "delivery failed; reconnecting");
                    }
                    if sleep_or_stop(&shutdown, backoff).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Longest wait between two attempts at one entry.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn is_transient_refusal(body: &ifrelay_proto::Body) -> bool {
    matches!(body, ifrelay_proto::Body::Refused(r) if r.reason.is_transient())
}

/// Sleeps for `d`; true when shutdown came first.
async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}
