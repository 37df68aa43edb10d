//! What the box itself can take when its senders pipeline: frames sent
//! over a few connections with many in flight each, so that one commit
//! can carry many frames of one connection.
//!
//! The frames are `prefix_check` re-checks of one bound serial from the
//! box's own intermediate server (fresh message ids): each is handled by
//! the engine, logged in the access log and answered after a durable
//! commit like any accepted frame, but creates no process and relays
//! nothing, so the box's state does not grow. It measures the box's
//! durable accept rate (engine, store, TLS), not relaying; a relayed frame
//! costs about two such inputs (the frame, and its next hop's answer).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ifrelay_proto::frame::DEFAULT_MAX_FRAME;
use ifrelay_proto::{
    AgencyCode, Body, Frame, MessageId, Party, PrefixCheck, SerialPurpose, SerialRequest,
};
use ifrelay_tls::TlsMaterial;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use super::BenchError;
use crate::testbed::prefix;
use ifrelay::net::{now_millis, read_frame, Link};

/// How long a reply may take before a connection gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What an ingest run got.
#[derive(Debug, Clone, Default)]
pub struct Ingest {
    pub conns: usize,
    pub window: usize,
    /// Replies that were `prefix_result` OK.
    pub ok: u64,
    /// Any other reply.
    pub other: u64,
    pub first_other: Option<String>,
    pub elapsed: Duration,
}

impl Ingest {
    pub fn frames_per_s(&self) -> f64 {
        super::load::per_s(self.ok, self.elapsed)
    }
}

/// Sends pipelined `prefix_check` frames to the box of `agency` at its
/// agency-side `addr`, as its intermediate server (`tls`), over `conns`
/// connections with up to `window` unanswered frames each, for `window_time`.
///
/// # Errors
/// When no serial can be obtained or a connection cannot be opened.
pub async fn run(
    agency: &AgencyCode,
    peer: &AgencyCode,
    addr: SocketAddr,
    tls: &TlsMaterial,
    conns: usize,
    window: usize,
    window_time: Duration,
) -> Result<Ingest, BenchError> {
    let me = Party::ims(agency.clone());
    let the_box = Party::is(agency.clone());
    let client = tls.client_config()?;
    let tag = format!("ingest{}", now_millis());
    let frame = |n: String, body: Body| -> Result<Frame, BenchError> {
        Ok(Frame::new(
            MessageId::new(n)?,
            me.clone(),
            now_millis(),
            body,
        ))
    };

    // One serial, bound by a first prefix check.
    let mut link = Link::connect(
        addr,
        &the_box,
        Arc::clone(&client),
        REPLY_TIMEOUT,
        REPLY_TIMEOUT,
        DEFAULT_MAX_FRAME,
    )
    .await?;
    let reply = link
        .request(&frame(
            format!("{tag}-serial"),
            Body::SerialRequest(SerialRequest {
                purpose: SerialPurpose::Query,
            }),
        )?)
        .await?;
    let Body::SerialIssued(issued) = reply.body else {
        return Err(format!("serial_request answered {}", reply.body.type_name()).into());
    };
    let check = Body::PrefixCheck(PrefixCheck {
        serial: issued.serial,
        prefix: prefix(agency, peer, "JM010"),
    });
    let reply = link
        .request(&frame(format!("{tag}-bind"), check.clone())?)
        .await?;
    if !matches!(&reply.body, Body::PrefixResult(r) if r.ok) {
        return Err(format!("the first prefix_check was answered {:?}", reply.body).into());
    }
    drop(link);

    let name = ifrelay_tls::identity::server_name(&the_box)?;
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns.max(1) {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(Arc::clone(&client))
            .connect(name.clone(), tcp)
            .await?;
        streams.push(tls);
    }

    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let first_other = Arc::new(std::sync::Mutex::new(None::<String>));
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + window_time;
    let mut set = tokio::task::JoinSet::new();
    for (c, stream) in streams.into_iter().enumerate() {
        let template = frame(format!("{tag}-c{c}"), check.clone())?;
        let conn = Connection {
            tag: format!("{tag}-c{c}"),
            template,
            window: window.max(1),
            deadline,
            ok: Arc::clone(&ok),
            other: Arc::clone(&other),
            first_other: Arc::clone(&first_other),
        };
        set.spawn(conn.run(stream));
    }
    while set.join_next().await.is_some() {}
    let first_other = first_other
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Ingest {
        conns,
        window,
        ok: ok.load(Ordering::Relaxed),
        other: other.load(Ordering::Relaxed),
        first_other,
        elapsed: t0.elapsed(),
    })
}

/// One pipelined connection: a writer keeping up to `window` frames
/// unanswered, and a reader that reads only when a reply is owed (so no
/// read is ever cut off mid-frame).
struct Connection {
    tag: String,
    template: Frame,
    window: usize,
    deadline: tokio::time::Instant,
    ok: Arc<AtomicU64>,
    other: Arc<AtomicU64>,
    first_other: Arc<std::sync::Mutex<Option<String>>>,
}

impl Connection {
    async fn run(self, stream: tokio_rustls::client::TlsStream<TcpStream>) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let permits = Semaphore::new(self.window);
        let sent = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        let wake = tokio::sync::Notify::new();
        let writer = async {
            let mut n = 0u64;
            while tokio::time::Instant::now() < self.deadline {
                let Ok(p) = permits.acquire().await else {
                    break;
                };
                p.forget();
                let mut f = self.template.clone();
                let Ok(id) = MessageId::new(format!("{}-{n}", self.tag)) else {
                    break;
                };
                f.header.id = id;
                n += 1;
                if wr.write_all(&f.encode()).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::AcqRel);
                wake.notify_one();
            }
            done.store(true, Ordering::Release);
            wake.notify_one();
        };
        let reader = async {
            let mut got = 0u64;
            loop {
                if got < sent.load(Ordering::Acquire) {
                    let Ok(reply) = read_frame(&mut rd, DEFAULT_MAX_FRAME, REPLY_TIMEOUT).await
                    else {
                        break;
                    };
                    got += 1;
                    self.note(&reply.body);
                    permits.add_permits(1);
                } else if done.load(Ordering::Acquire) {
                    if got >= sent.load(Ordering::Acquire) {
                        break;
                    }
                } else {
                    let _ = tokio::time::timeout(Duration::from_millis(20), wake.notified()).await;
                }
            }
            // Unblock a writer waiting for a permit if the reader failed.
            permits.close();
        };
        tokio::join!(writer, reader);
    }

    fn note(&self, body: &Body) {
        match body {
            Body::PrefixResult(r) if r.ok => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                self.other.fetch_add(1, Ordering::Relaxed);
                self.first_other
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert_with(|| format!("{other:?}"));
            }
        }
    }
}
