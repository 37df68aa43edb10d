//! The baseline: a bare TLS forwarder, a TLS sink, and a load generator
//! of pre-encoded frames.
//!
//! [`Bare`] takes frames exactly as the box does — the same rustls server
//! configuration ([`TlsMaterial::server_config`]: TLS 1.3, client
//! certificate required, from the same development PKI), the same framing
//! ([`read_body`] then [`Frame::decode_body`], which is [`read_frame`]
//! keeping the bytes) — and forwards the same bytes to the next hop its
//! type leads to, over one [`Link`] per next hop that sends one frame at a
//! time and waits for its reply, as the box's delivery workers do. Unlike
//! the box it keeps nothing, checks nothing and records nothing: each
//! frame is queued for its next hop (waiting while that queue is full) and
//! answered `accepted` at once.
//!
//! [`Sink`] answers every frame `accepted` as soon as it is read and
//! counts what it got (and when the first frame whose message id starts
//! with a given prefix arrived: the backlog measurement uses that).
//!
//! [`drive`] opens `conns` links and sends each link's pre-encoded frames
//! round and round, one at a time, until its window ends.
//!
//! [`read_frame`]: ifrelay::net::read_frame

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ifrelay_proto::frame::{DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use ifrelay_proto::{
    Accepted, AgencyCode, Body, Frame, MessageId, MessageType, Party, PermitFields, PermitId,
    PermitIssued, PermitRequest, PersonCode, Provision, Query, Route, Serial, SerialNotice,
    SignedPermit,
};
use ifrelay_tls::TlsMaterial;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::BenchError;
use crate::sim::crypto::{encrypt_to, RequesterKey};
use crate::sim::ims::sim_payload;
use crate::testbed::prefix;
use ifrelay::net::{now_millis, read_body, IdGen, Link};

/// A connection with no frame for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// Dialling, and waiting for one reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued per next hop in the forwarder.
const QUEUE: usize = 4096;
/// Attempts at one frame before the forwarder counts it as lost.
const ATTEMPTS: usize = 3;

/// Writes `bytes` and flushes within [`REPLY_TIMEOUT`].
async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    tokio::time::timeout(REPLY_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}

/// `accepted` for `id`, from `own`, encoded.
fn accepted(ids: &IdGen, own: &Party, id: MessageId) -> Vec<u8> {
    Frame::new(
        ids.next(),
        own.clone(),
        now_millis(),
        Body::Accepted(Accepted { in_reply_to: id }),
    )
    .encode()
}

/// A listener's tasks, stopped by one token.
struct Tasks {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    fn new() -> Self {
        Tasks {
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }
}

/// Accepts TLS connections on `listener` and runs `serve` on each.
fn accept_loop<F, Fut>(tasks: &Tasks, listener: TcpListener, server: Arc<ServerConfig>, serve: F)
where
    F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(server);
    let cancel = tasks.cancel.clone();
    let tracker = tasks.tracker.clone();
    let serve = Arc::new(serve);
    tasks.tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((tcp, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let cancel = cancel.clone();
            let serve = Arc::clone(&serve);
            tracker.spawn(async move {
                let _ = tcp.set_nodelay(true);
                let tls = tokio::select! {
                    () = cancel.cancelled() => return,
                    t = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp)) => t,
                };
                if let Ok(Ok(tls)) = tls {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = serve(tls) => {}
                    }
                }
            });
        }
    });
}

/// What a [`Sink`] has seen.
#[derive(Debug, Default)]
struct SinkSeen {
    frames: AtomicU64,
    watched: AtomicU64,
    first_watched: Mutex<Option<Instant>>,
}

/// A TLS listener that answers every frame `accepted` at once.
pub struct Sink {
    addr: SocketAddr,
    seen: Arc<SinkSeen>,
    tasks: Tasks,
}

impl Sink {
    /// Starts a sink for `own` on a free loopback port; frames whose
    /// message id starts with `watch` are counted apart, with the arrival
    /// time of the first.
    ///
    /// # Errors
    /// When the TLS material is unusable or no port can be bound.
    pub async fn start(
        own: Party,
        tls: &TlsMaterial,
        watch: Option<String>,
    ) -> Result<Sink, BenchError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ids = Arc::new(IdGen::new(format!("sink-{}", now_millis()))?);
        let seen = Arc::new(SinkSeen::default());
        let tasks = Tasks::new();
        let for_conn = Arc::clone(&seen);
        let watch = Arc::new(watch);
        accept_loop(&tasks, listener, tls.server_config()?, move |mut tls| {
            let seen = Arc::clone(&for_conn);
            let ids = Arc::clone(&ids);
            let own = own.clone();
            let watch = Arc::clone(&watch);
            async move {
                while let Ok(body) = read_body(&mut tls, DEFAULT_MAX_FRAME, IDLE).await {
                    let Ok(frame) = Frame::decode_body(&body) else {
                        return;
                    };
                    seen.frames.fetch_add(1, Ordering::Relaxed);
                    if let Some(w) = watch.as_deref() {
                        if frame.header.id.as_str().starts_with(w) {
                            seen.watched.fetch_add(1, Ordering::Relaxed);
                            seen.first_watched
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert_with(Instant::now);
                        }
                    }
                    let reply = accepted(&ids, &own, frame.header.id);
                    if write_all(&mut tls, &reply).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Sink { addr, seen, tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Frames received so far.
    pub fn frames(&self) -> u64 {
        self.seen.frames.load(Ordering::Relaxed)
    }

    /// Frames received whose id starts with the watched prefix.
    pub fn watched(&self) -> u64 {
        self.seen.watched.load(Ordering::Relaxed)
    }

    /// When the first watched frame arrived.
    pub fn first_watched(&self) -> Option<Instant> {
        *self
            .seen
            .first_watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub async fn shutdown(&self) {
        self.tasks.shutdown().await;
    }
}

/// Where a forwarder sends the frames of a type.
#[derive(Debug, Clone)]
pub struct NextHop {
    pub party: Party,
    pub addr: SocketAddr,
}

/// A frame on its way to a next hop.
struct Outgoing {
    id: MessageId,
    bytes: Vec<u8>,
}

/// Counters of a [`Bare`] forwarder.
#[derive(Debug, Default)]
struct BareCounts {
    received: AtomicU64,
    forwarded: AtomicU64,
    lost: AtomicU64,
}

/// The bare TLS forwarder.
pub struct Bare {
    addr: SocketAddr,
    counts: Arc<BareCounts>,
    tasks: Tasks,
}

impl Bare {
    /// Starts a forwarder with `tls`'s identity on a free loopback port;
    /// a frame of type `t` goes to `hops[routes[t]]` (to `hops[0]` when
    /// the type is not listed).
    ///
    /// # Errors
    /// When the TLS material is unusable, no port can be bound or there is
    /// no next hop.
    pub async fn start(
        own: Party,
        tls: &TlsMaterial,
        hops: Vec<NextHop>,
        routes: Routes,
    ) -> Result<Bare, BenchError> {
        if hops.is_empty() {
            return Err("a bare forwarder needs a next hop".into());
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let client = tls.client_config()?;
        let counts = Arc::new(BareCounts::default());
        let tasks = Tasks::new();
        let mut queues = Vec::with_capacity(hops.len());
        for hop in hops {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push(tx);
            let counts = Arc::clone(&counts);
            let cancel = tasks.cancel.clone();
            let client = Arc::clone(&client);
            tasks.tracker.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = forward(hop, client, rx, counts) => {}
                }
            });
        }
        let queues = Arc::new(queues);
        let routes = Arc::new(routes);
        let ids = Arc::new(IdGen::new(format!("bare-{}", now_millis()))?);
        let for_conn = Arc::clone(&counts);
        accept_loop(&tasks, listener, tls.server_config()?, move |mut tls| {
            let counts = Arc::clone(&for_conn);
            let queues = Arc::clone(&queues);
            let routes = Arc::clone(&routes);
            let ids = Arc::clone(&ids);
            let own = own.clone();
            async move {
                while let Ok(body) = read_body(&mut tls, DEFAULT_MAX_FRAME, IDLE).await {
                    let Ok(frame) = Frame::decode_body(&body) else {
                        return;
                    };
                    counts.received.fetch_add(1, Ordering::Relaxed);
                    let hop = routes.get(&frame.body.message_type()).copied().unwrap_or(0);
                    let Some(queue) = queues.get(hop).or(queues.first()) else {
                        return;
                    };
                    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
                    let mut bytes = Vec::with_capacity(LENGTH_PREFIX + body.len());
                    bytes.extend_from_slice(&len.to_be_bytes());
                    bytes.extend_from_slice(&body);
                    let id = frame.header.id;
                    let reply = accepted(&ids, &own, id.clone());
                    if queue.send(Outgoing { id, bytes }).await.is_err() {
                        return;
                    }
                    if write_all(&mut tls, &reply).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Bare {
            addr,
            counts,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Frames read from senders.
    pub fn received(&self) -> u64 {
        self.counts.received.load(Ordering::Relaxed)
    }

    /// Frames the next hop answered.
    pub fn forwarded(&self) -> u64 {
        self.counts.forwarded.load(Ordering::Relaxed)
    }

    /// Frames given up after [`ATTEMPTS`] tries.
    pub fn lost(&self) -> u64 {
        self.counts.lost.load(Ordering::Relaxed)
    }

    pub async fn shutdown(&self) {
        self.tasks.shutdown().await;
    }
}

/// Sends a next hop's frames in order over one link, one at a time.
async fn forward(
    hop: NextHop,
    client: Arc<ClientConfig>,
    mut rx: mpsc::Receiver<Outgoing>,
    counts: Arc<BareCounts>,
) {
    let mut link: Option<Link> = None;
    while let Some(out) = rx.recv().await {
        let mut done = false;
        for _ in 0..ATTEMPTS {
            if link.is_none() {
                link = Link::connect(
                    hop.addr,
                    &hop.party,
                    Arc::clone(&client),
                    CONNECT_TIMEOUT,
                    REPLY_TIMEOUT,
                    DEFAULT_MAX_FRAME,
                )
                .await
                .ok();
            }
            let Some(l) = link.as_mut() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if l.request_encoded(&out.id, &out.bytes).await.is_ok() {
                done = true;
                break;
            }
            link = None;
        }
        let counter = if done {
            &counts.forwarded
        } else {
            &counts.lost
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a [`drive`] run sent.
#[derive(Debug, Default, Clone)]
pub struct Driven {
    /// Frames answered by the target.
    pub sent: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Opens `conns` links to `target` (expected to be `server`) with
/// `client`; then each sends its copy of `frames` (fresh message ids per
/// link) round and round, one at a time, for `window`.
///
/// # Errors
/// When a link cannot be opened or a frame cannot be given an id.
pub async fn drive(
    target: SocketAddr,
    server: &Party,
    client: Arc<ClientConfig>,
    conns: usize,
    frames: &[Frame],
    window: Duration,
    tag: &str,
) -> Result<Driven, BenchError> {
    let mut links = Vec::with_capacity(conns);
    for c in 0..conns {
        let link = Link::connect(
            target,
            server,
            Arc::clone(&client),
            CONNECT_TIMEOUT,
            REPLY_TIMEOUT,
            DEFAULT_MAX_FRAME,
        )
        .await?;
        let mut encoded = Vec::with_capacity(frames.len());
        for (k, f) in frames.iter().enumerate() {
            let mut f = f.clone();
            f.header.id = MessageId::new(format!("bench-{tag}-{c}-{k}"))?;
            encoded.push((f.header.id.clone(), f.encode()));
        }
        links.push((link, encoded));
    }
    let deadline = tokio::time::Instant::now() + window;
    let mut set = tokio::task::JoinSet::new();
    for (mut link, encoded) in links {
        set.spawn(async move {
            let mut d = Driven::default();
            if encoded.is_empty() {
                return d;
            }
            'outer: loop {
                for (id, bytes) in &encoded {
                    if tokio::time::Instant::now() >= deadline {
                        break 'outer;
                    }
                    match link.request_encoded(id, bytes).await {
                        Ok(_) => d.sent += 1,
                        Err(e) => {
                            d.errors += 1;
                            d.first_error.get_or_insert(e.to_string());
                            break 'outer;
                        }
                    }
                }
            }
            d
        });
    }
    let mut total = Driven::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(d) => {
                total.sent += d.sent;
                total.errors += d.errors;
                if total.first_error.is_none() {
                    total.first_error = d.first_error;
                }
            }
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert(e.to_string());
            }
        }
    }
    Ok(total)
}

/// Which next hop (index into the forwarder's hops) each frame type
/// takes.
pub type Routes = HashMap<MessageType, usize>;

/// The relayed frames of one flow, per box, with their routes.
#[derive(Debug, Clone)]
pub struct FlowFrames {
    /// What the requester's box relays, in flow order.
    pub requester: Vec<Frame>,
    pub requester_routes: Routes,
    /// What the provider's box relays, in flow order.
    pub provider: Vec<Frame>,
    pub provider_routes: Routes,
}

/// The frames of one complete flow as the two boxes receive the ones they
/// relay: for the requester's box (agency `a`) permit_request, permit,
/// query, query_accepted, provision, provision_received,
/// provision_complete and query_complete; for the provider's box (`b`)
/// query, query_accepted, provision, provision_received and
/// provision_complete. Same types, fields and sizes as the simulators'
/// (a signed permit, a 32-byte public key, a provision body encrypted to
/// it). Returned with the route each box would take for each type
/// (0 core, 1 own IMS, 2 the peer box).
///
/// # Errors
/// When a code, key or signature cannot be made.
pub fn flow_frames(a: &AgencyCode, b: &AgencyCode) -> Result<FlowFrames, BenchError> {
    let p = prefix(a, b, "JM010");
    let serial = Serial::new(&format!("{a}-20260101-1790000000-1"))?;
    let now = now_millis();
    let fields = PermitFields {
        permit_id: PermitId::new("P-core-BENCHabcdef-1")?,
        issuer: Party::core(),
        serial: serial.clone(),
        prefix: p.clone(),
        route: Route {
            agency: a.clone(),
            endpoint: "127.0.0.1:40001".to_owned(),
        },
        provider_route: Route {
            agency: b.clone(),
            endpoint: "127.0.0.1:40002".to_owned(),
        },
        issued_at: now,
        expires_at: now + 600_000,
    };
    let mut permit = SignedPermit::unsigned(&fields);
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "cannot make a signing key")?;
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| "cannot read the signing key")?;
    permit.sig = key.sign(&permit.signing_input()).as_ref().to_vec();
    let requester = RequesterKey::generate()?;
    let public_key = requester.public_bytes().to_vec();
    let code = PersonCode::new("BENCHCODEABCDEFGHIJK")?;
    let body = encrypt_to(&public_key, &sim_payload(&serial, &p, &code))?;
    let notice = || SerialNotice {
        serial: serial.clone(),
    };
    let query = Body::Query(Query {
        serial: serial.clone(),
        prefix: p.clone(),
        permit: permit.clone(),
        public_key,
        code,
    });
    let provision = Body::Provision(Provision {
        serial: serial.clone(),
        prefix: p.clone(),
        permit: permit.clone(),
        body,
    });
    let id = MessageId::new("bench-template")?;
    let frame = |from: Party, body: Body| Frame::new(id.clone(), from, now, body);
    let (ims_a, ims_b) = (Party::ims(a.clone()), Party::ims(b.clone()));
    let (is_a, is_b) = (Party::is(a.clone()), Party::is(b.clone()));
    let for_a = vec![
        frame(
            ims_a.clone(),
            Body::PermitRequest(PermitRequest {
                serial: serial.clone(),
                prefix: p.clone(),
            }),
        ),
        frame(
            Party::core(),
            Body::Permit(PermitIssued {
                serial: serial.clone(),
                permit,
            }),
        ),
        frame(ims_a.clone(), query.clone()),
        frame(Party::core(), Body::QueryAccepted(notice())),
        frame(is_b, provision.clone()),
        frame(ims_a.clone(), Body::ProvisionReceived(notice())),
        frame(ims_a.clone(), Body::ProvisionComplete(notice())),
        frame(ims_a, Body::QueryComplete(notice())),
    ];
    let routes_a = HashMap::from([
        (MessageType::PermitRequest, 0),
        (MessageType::Permit, 1),
        (MessageType::Query, 0),
        (MessageType::QueryAccepted, 1),
        (MessageType::Provision, 1),
        (MessageType::ProvisionReceived, 2),
        (MessageType::ProvisionComplete, 0),
        (MessageType::QueryComplete, 0),
    ]);
    let for_b = vec![
        frame(Party::core(), query),
        frame(ims_b.clone(), Body::QueryAccepted(notice())),
        frame(ims_b.clone(), provision),
        frame(is_a, Body::ProvisionReceived(notice())),
        frame(ims_b, Body::ProvisionComplete(notice())),
    ];
    let routes_b = HashMap::from([
        (MessageType::Query, 1),
        (MessageType::QueryAccepted, 0),
        (MessageType::Provision, 2),
        (MessageType::ProvisionReceived, 1),
        (MessageType::ProvisionComplete, 0),
    ]);
    Ok(FlowFrames {
        requester: for_a,
        requester_routes: routes_a,
        provider: for_b,
        provider_routes: routes_b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_frames_cover_the_thirteen_relayed_frames() {
        let (a, b) = crate::testbed::agencies();
        let FlowFrames {
            requester: fa,
            requester_routes: ra,
            provider: fb,
            provider_routes: rb,
        } = flow_frames(&a, &b).expect("frames");
        assert_eq!(fa.len() + fb.len(), 13);
        for f in &fa {
            assert!(
                ra.contains_key(&f.body.message_type()),
                "{}",
                f.body.type_name()
            );
            let bytes = f.encode();
            let back = Frame::decode_body(&bytes[LENGTH_PREFIX..]).expect("decodes");
            assert_eq!(back.body.type_name(), f.body.type_name());
        }
        for f in &fb {
            assert!(rb.contains_key(&f.body.message_type()));
        }
    }
}
