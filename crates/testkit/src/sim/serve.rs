//! The plumbing every simulator shares: the TLS listener and its
//! per-connection frame loop, the per-destination outbox that dials peers,
//! a small pool of request links, and the counters all of them feed.
//!
//! Invariants:
//! - a listener answers every request frame with exactly one reply frame
//!   on the same connection, in order; the handler never sends anything
//!   itself — what it wants sent afterwards runs as [`Reply::then`], after
//!   the reply is written or its write failed (the frame was handled and
//!   its reply remembered either way);
//! - a frame whose `from` is not the certificate's party is refused with
//!   [`Reason::Identity`] and never reaches the handler;
//! - **duplicate suppression**, as the box does it (protocol.md §5.2,
//!   §5.3): a frame answered with anything but `refused` is remembered by
//!   (sender party, message id) with a fingerprint of what it says and the
//!   reply sent. A frame arriving again under a remembered id gets the
//!   same reply body again and its handler is not run (nor its
//!   [`Reply::then`]); it is counted as a duplicate. The same id for a
//!   frame that says something else is refused [`Reason::Duplicate`]. A
//!   refused frame is not remembered, so a resend after a transient
//!   refusal is handled normally. Concurrent copies of one frame are
//!   serialised, so the handler runs at most once even when two arrive at
//!   the same moment on different connections. Memory is bounded: the last
//!   [`NetOptions::dedup_capacity`] ids (default
//!   [`DEFAULT_DEDUP_CAPACITY`], 100,000) are kept, oldest forgotten first;
//!   0 turns suppression off;
//! - frames to one destination leave in the order they were queued over
//!   one link that is re-dialled on error, pipelined: up to 32 are on the
//!   wire at once and the peer's in-order replies are matched with the
//!   oldest unanswered. On a connection failure, a lost or mismatched
//!   reply or a transient refusal ([`Reason::is_transient`]) the link is
//!   dropped and everything unanswered is resent byte for byte (same
//!   message ids), oldest first (from the refused frame on), with
//!   exponential backoff capped at [`NetOptions::max_backoff`]; the peer
//!   answers what it already handled from its duplicate memory. A frame is
//!   tried until it is answered, [`NetOptions::attempts`] are spent or
//!   [`NetOptions::give_up_after`] has passed; frames sent behind one
//!   refused for now are not charged an attempt for it;
//! - every task is spawned on the node's [`TaskTracker`] and ends when its
//!   [`CancellationToken`] is cancelled.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ifrelay_proto::frame::DEFAULT_MAX_FRAME;
use ifrelay_proto::{Accepted, Body, Frame, MessageId, Party, Reason, Refused, Serial};
use ifrelay_tls::TlsMaterial;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::{ClientConfig, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SimError;
use ifrelay::net::{
    now_millis, read_frame, write_bytes, IdGen, Link, LinkError, LinkReader, LinkWriter, ReadError,
};

/// How many (sender, message id) pairs a listener remembers by default
/// for duplicate suppression.
pub const DEFAULT_DEDUP_CAPACITY: usize = 100_000;

/// First pause of [`NetOptions::retrying_for`] (and of the intermediate
/// server's resilient requests).
pub const RESEND_BACKOFF: Duration = Duration::from_millis(50);

/// Longest pause of [`NetOptions::retrying_for`] (and of the intermediate
/// server's resilient requests).
pub const RESEND_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// Timeouts, bounds and retry policy of one simulator node.
///
/// Delivery of a queued frame stops at the first of: an answer that is not
/// a transient refusal, `attempts` tries, or `give_up_after` (when set)
/// since the first try. To keep trying through a box restart use
/// [`NetOptions::retrying_for`], e.g. `NetOptions::retrying_for(30 s)`.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Dialling a peer, TCP and TLS handshake together.
    pub connect_timeout: Duration,
    /// Waiting for the hop reply to a frame sent.
    pub reply_timeout: Duration,
    /// A served connection with no frame for this long is closed.
    pub idle_timeout: Duration,
    /// Largest frame body accepted or expected.
    pub max_frame: usize,
    /// Connections served at once; further ones wait in the backlog.
    pub max_connections: usize,
    /// Frames waiting per destination; beyond it sending answers busy.
    pub queue_len: usize,
    /// Delivery attempts per frame before it is given up (`u32::MAX`: no
    /// limit by count; use `give_up_after` then).
    pub attempts: u32,
    /// Pause before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// The pause between attempts never exceeds this.
    pub max_backoff: Duration,
    /// Give a frame up once this long has passed since its first attempt
    /// (checked before each further attempt; an attempt under way still
    /// runs to its connect and reply timeouts). `None`: only `attempts`
    /// limits.
    pub give_up_after: Option<Duration>,
    /// (Sender, message id) pairs remembered for duplicate suppression;
    /// 0 turns it off. Each entry holds the sender, the id, a 32-byte
    /// fingerprint and the reply body (a few hundred bytes for the usual
    /// `accepted`).
    pub dedup_capacity: usize,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            connect_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: 256,
            queue_len: 1024,
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            give_up_after: None,
            dedup_capacity: DEFAULT_DEDUP_CAPACITY,
        }
    }
}

impl NetOptions {
    /// The defaults, but delivery keeps trying every frame for `period`
    /// (no limit by count), pausing [`RESEND_BACKOFF`] at first and at
    /// most [`RESEND_BACKOFF_CAP`], so a peer that restarts within
    /// `period` costs time, not frames. The per-destination queue is
    /// raised to 65,536 frames, since frames pile up while a peer is down.
    pub fn retrying_for(period: Duration) -> Self {
        NetOptions {
            attempts: u32::MAX,
            backoff: RESEND_BACKOFF,
            max_backoff: RESEND_BACKOFF_CAP,
            give_up_after: Some(period),
            queue_len: 65_536,
            ..NetOptions::default()
        }
    }
}

/// What a handler answers: the reply frame's body, and optionally work to
/// run once the reply has been written (typically: queue frames to send).
pub struct Reply {
    pub body: Body,
    pub then: Option<Box<dyn FnOnce() + Send>>,
}

impl Reply {
    /// Just the reply.
    pub fn body(body: Body) -> Self {
        Reply { body, then: None }
    }

    /// `accepted` for the frame `id`.
    pub fn accepted(id: &MessageId) -> Self {
        Reply::body(Body::Accepted(Accepted {
            in_reply_to: id.clone(),
        }))
    }

    /// `accepted` for `id`, then `after` once the reply is on the wire.
    pub fn accepted_then(id: &MessageId, after: impl FnOnce() + Send + 'static) -> Self {
        Reply {
            body: Body::Accepted(Accepted {
                in_reply_to: id.clone(),
            }),
            then: Some(Box::new(after)),
        }
    }

    /// `refused` for the frame `id`.
    pub fn refused(id: &MessageId, reason: Reason, text: impl Into<String>) -> Self {
        Reply::body(refused(Some(id.clone()), reason, text))
    }
}

/// A `refused` body.
pub fn refused(in_reply_to: Option<MessageId>, reason: Reason, text: impl Into<String>) -> Body {
    Body::Refused(Refused {
        in_reply_to,
        reason,
        text: text.into(),
    })
}

/// Answers one request frame from an authenticated peer.
pub type Handler = Arc<dyn Fn(&Party, Frame) -> Reply + Send + Sync>;

/// A frame a peer refused, as seen by the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRefusal {
    /// Who refused it.
    pub to: Party,
    /// The refused frame's `type`.
    pub message_type: &'static str,
    pub serial: Option<Serial>,
    pub reason: Reason,
    pub text: String,
}

/// Why a queued frame was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The peer answered `refused`; the frame is not sent again.
    #[error("refused: {reason}: {text}")]
    Refused { reason: Reason, text: String },
    /// Every attempt failed to bring back a reply.
    #[error("unreachable after {attempts} attempts; last error: {last}")]
    Unreachable { attempts: u32, last: String },
    /// The simulator shut down before the frame was delivered.
    #[error("the simulator stopped before delivery")]
    Stopped,
}

/// Outcome of one queued frame: the peer's reply, or why there is none.
pub type Delivery = Result<Frame, DeliveryError>;

struct Job {
    frame: Frame,
    done: Option<oneshot::Sender<Delivery>>,
}

/// Frames an outbox keeps in flight to one destination: the peer answers
/// in order, so up to this many wait on it at once instead of one.
const OUTBOX_WINDOW: usize = 32;

/// A queued frame being delivered, with its attempt bookkeeping.
struct Outgoing {
    frame: Frame,
    /// The frame encoded once: every resend is the same bytes.
    bytes: Vec<u8>,
    done: Option<oneshot::Sender<Delivery>>,
    /// Attempts that count towards [`NetOptions::attempts`].
    made: u32,
    /// When it is given up ([`NetOptions::give_up_after`] after its first
    /// counted attempt).
    deadline: Option<tokio::time::Instant>,
    /// Times it was written to a link.
    writes: u32,
    last: String,
    /// The last answer, when it was a transient refusal.
    refusal: Option<(Reason, String)>,
}

impl Outgoing {
    fn new(job: Job) -> Self {
        Outgoing {
            bytes: job.frame.encode(),
            frame: job.frame,
            done: job.done,
            made: 0,
            deadline: None,
            writes: 0,
            last: String::from("no attempt made"),
            refusal: None,
        }
    }

    /// Counts one attempt.
    fn attempted(&mut self, give_up_after: Option<Duration>) {
        if self.made == 0 {
            self.deadline = give_up_after.map(|d| tokio::time::Instant::now() + d);
        }
        self.made = self.made.saturating_add(1);
    }

    /// Takes back the attempt counted when it was written, because it
    /// never got an answer of its own (an earlier frame was refused for
    /// now and the link dropped).
    fn unattempted(&mut self) {
        self.made = self.made.saturating_sub(1);
        if self.made == 0 {
            self.deadline = None;
        }
    }

    /// Notes an attempt that brought back no reply.
    fn failed(&mut self, last: &str) {
        last.clone_into(&mut self.last);
        self.refusal = None;
    }
}

/// An outbox's link, split for pipelining.
struct OutConn {
    reader: LinkReader,
    writer: LinkWriter,
    /// How many of the pending frames are on the wire.
    sent: usize,
    /// Whether it has answered a frame (a failure then may just mean the
    /// peer closed it while it sat idle).
    answered: bool,
}

/// Stripes serialising the handling of copies of one frame (by a hash of
/// sender and id), so a duplicate arriving while the first copy is being
/// handled waits for its remembered reply instead of running the handler.
const DEDUP_STRIPES: usize = 64;

/// What a listener remembers of a frame it answered without refusing.
struct Remembered {
    /// SHA-256 of the frame with a neutral id and send time.
    print: [u8; 32],
    /// The reply body sent (its `in_reply_to` names the frame).
    reply: Body,
}

/// The last `capacity` answered frames by (sender, id), oldest dropped
/// first.
struct SeenCache {
    capacity: usize,
    map: HashMap<(Party, MessageId), Remembered>,
    order: VecDeque<(Party, MessageId)>,
}

impl SeenCache {
    fn new(capacity: usize) -> Self {
        SeenCache {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, key: &(Party, MessageId)) -> Option<&Remembered> {
        self.map.get(key)
    }

    fn insert(&mut self, key: (Party, MessageId), value: Remembered) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }
}

/// One simulated party: identity, TLS configurations, id generator,
/// outboxes, counters, and the tasks it runs.
pub(crate) struct Node {
    pub(crate) own: Party,
    pub(crate) ids: IdGen,
    pub(crate) opts: NetOptions,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    queues: Mutex<HashMap<(Party, SocketAddr), mpsc::Sender<Job>>>,
    frames_refused: AtomicU64,
    deliveries_failed: AtomicU64,
    duplicates_received: AtomicU64,
    frames_resent: AtomicU64,
    peer_refusals: Mutex<Vec<PeerRefusal>>,
    seen: Mutex<SeenCache>,
    stripes: Vec<Mutex<()>>,
    stripe_hash: RandomState,
    /// The id put in place of a frame's own when fingerprinting it.
    neutral_id: MessageId,
    changed: watch::Sender<u64>,
}

/// Locks a mutex, recovering the data if a holder panicked: simulator
/// state stays usable for the remaining assertions of a test.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hex of `n` random bytes (or of the clock, if the random source fails).
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        let t = now_millis().to_be_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = t[i % t.len()];
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A per-run id prefix: the party's short name, the start time and a
/// random part, so a restarted simulator never reuses an id.
pub(crate) fn run_prefix(own: &Party) -> String {
    let who = match &own.agency {
        Some(a) => format!("{}{}", own.role, a),
        None => own.role.to_string(),
    };
    // Letters only: a run of exactly twelve digits with a valid check
    // digit would be refused by the box's My Number screen.
    let millis = u64::try_from(now_millis()).unwrap_or(0);
    format!("{who}-{}{}", letters(millis), letters_of(&random_hex(3)))
}

/// `n` written in base 26 with the letters A–Z.
fn letters(mut n: u64) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'A' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Hex digits mapped to letters (0 → a … f → p).
fn letters_of(hex: &str) -> String {
    hex.chars()
        .map(|c| {
            c.to_digit(16)
                .and_then(|d| char::from_u32(u32::from(b'a') + d))
                .unwrap_or('x')
        })
        .collect()
}

impl Node {
    pub(crate) fn new(
        own: Party,
        tls: &TlsMaterial,
        opts: NetOptions,
    ) -> Result<Arc<Node>, SimError> {
        let ids = IdGen::new(run_prefix(&own)).map_err(|source| SimError::Identity {
            party: own.clone(),
            source,
        })?;
        let neutral_id = MessageId::new("x").map_err(|source| SimError::Identity {
            party: own.clone(),
            source,
        })?;
        let (changed, _) = watch::channel(0);
        Ok(Arc::new(Node {
            own,
            ids,
            server: tls.server_config()?,
            client: tls.client_config()?,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            queues: Mutex::new(HashMap::new()),
            frames_refused: AtomicU64::new(0),
            deliveries_failed: AtomicU64::new(0),
            duplicates_received: AtomicU64::new(0),
            frames_resent: AtomicU64::new(0),
            peer_refusals: Mutex::new(Vec::new()),
            seen: Mutex::new(SeenCache::new(opts.dedup_capacity)),
            stripes: (0..DEDUP_STRIPES).map(|_| Mutex::new(())).collect(),
            stripe_hash: RandomState::new(),
            neutral_id,
            opts,
            changed,
        }))
    }

    /// A frame from this node with a fresh id, stamped now.
    pub(crate) fn frame(&self, body: Body) -> Frame {
        Frame::new(self.ids.next(), self.own.clone(), now_millis(), body)
    }

    /// Marks the node's observable state as changed (wakes waiters).
    pub(crate) fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn frames_refused(&self) -> u64 {
        self.frames_refused.load(Ordering::Relaxed)
    }

    pub(crate) fn deliveries_failed(&self) -> u64 {
        self.deliveries_failed.load(Ordering::Relaxed)
    }

    pub(crate) fn peer_refusals(&self) -> Vec<PeerRefusal> {
        lock(&self.peer_refusals).clone()
    }

    /// Frames received again under an id already answered, and answered
    /// from memory.
    pub(crate) fn duplicates_received(&self) -> u64 {
        self.duplicates_received.load(Ordering::Relaxed)
    }

    /// Frames sent again (same id) after a failure or transient refusal.
    pub(crate) fn frames_resent(&self) -> u64 {
        self.frames_resent.load(Ordering::Relaxed)
    }

    /// Counts one frame sent again.
    pub(crate) fn note_resent(&self) {
        self.frames_resent.fetch_add(1, Ordering::Relaxed);
    }

    /// SHA-256 of what `frame` says apart from its id and send time: a
    /// resend of the same frame has the same fingerprint (as the box's).
    fn fingerprint(&self, frame: &mut Frame) -> [u8; 32] {
        let id = std::mem::replace(&mut frame.header.id, self.neutral_id.clone());
        let sent_at = std::mem::replace(&mut frame.header.sent_at, 0);
        let print = Sha256::digest(frame.encode_body()).into();
        frame.header.id = id;
        frame.header.sent_at = sent_at;
        print
    }

    /// Answers `frame` from `peer`: from memory when its id was answered
    /// before, else with `handler`, remembering any reply but `refused`.
    fn answer(&self, peer: &Party, mut frame: Frame, handler: &Handler) -> Reply {
        if self.opts.dedup_capacity == 0 {
            return handler(peer, frame);
        }
        let key = (peer.clone(), frame.header.id.clone());
        let print = self.fingerprint(&mut frame);
        let stripe = self.stripe_hash.hash_one(&key) as usize % self.stripes.len().max(1);
        // Held while the handler runs (it never awaits): a second copy of
        // this frame waits here and then finds the first one's reply.
        let _serialised = self.stripes.get(stripe).map(lock);
        let known = lock(&self.seen)
            .get(&key)
            .map(|r| (r.print == print, r.reply.clone()));
        match known {
            Some((true, reply)) => {
                self.duplicates_received.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(own = %self.own, %peer, id = %key.1, kind = frame.body.type_name(), "duplicate answered again");
                self.bump();
                Reply::body(reply)
            }
            Some((false, _)) => Reply::refused(
                &key.1,
                Reason::Duplicate,
                format!("message id {} was already used for another frame", key.1),
            ),
            None => {
                let reply = handler(peer, frame);
                if !matches!(reply.body, Body::Refused(_)) {
                    lock(&self.seen).insert(
                        key,
                        Remembered {
                            print,
                            reply: reply.body.clone(),
                        },
                    );
                }
                reply
            }
        }
    }

    /// Dials `to` at `addr` and checks its certificate names `to`.
    pub(crate) async fn connect(&self, to: &Party, addr: SocketAddr) -> Result<Link, SimError> {
        Ok(Link::connect(
            addr,
            to,
            Arc::clone(&self.client),
            self.opts.connect_timeout,
            self.opts.reply_timeout,
            self.opts.max_frame,
        )
        .await?)
    }

    /// Binds `bind` and serves every connection with `handler` until the
    /// node is cancelled.
    pub(crate) async fn listen(
        self: &Arc<Self>,
        bind: SocketAddr,
        handler: Handler,
    ) -> Result<SocketAddr, SimError> {
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| SimError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr: bind, source })?;
        let node = Arc::clone(self);
        self.tracker
            .spawn(async move { node.accept_loop(listener, handler).await });
        Ok(addr)
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, handler: Handler) {
        let acceptor = TlsAcceptor::from(Arc::clone(&self.server));
        let permits = Arc::new(Semaphore::new(self.opts.max_connections.max(1)));
        loop {
            let permit = tokio::select! {
                () = self.cancel.cancelled() => return,
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = self.cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    let node = Arc::clone(&self);
                    let acceptor = acceptor.clone();
                    let handler = Arc::clone(&handler);
                    self.tracker.spawn(async move {
                        node.connection(acceptor, tcp, remote, handler).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(own = %self.own, error = %ifrelay::logging::Causes(&e), "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(
        &self,
        acceptor: TlsAcceptor,
        tcp: TcpStream,
        remote: SocketAddr,
        handler: Handler,
    ) {
        let _ = tcp.set_nodelay(true);
        let handshake = tokio::select! {
            () = self.cancel.cancelled() => return,
            h = tokio::time::timeout(self.opts.connect_timeout, acceptor.accept(tcp)) => h,
        };
        let mut tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(own = %self.own, %remote, error = %ifrelay::logging::Causes(&e), "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(own = %self.own, %remote, "TLS handshake timed out");
                return;
            }
        };
        let peer = match ifrelay_tls::connection_party(tls.get_ref().1) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(own = %self.own, %remote, error = %ifrelay::logging::Causes(&e), "peer has no party identity");
                return;
            }
        };
        loop {
            let read = tokio::select! {
                () = self.cancel.cancelled() => return,
                r = read_frame(&mut tls, self.opts.max_frame, self.opts.idle_timeout) => r,
            };
            let (reply, close) = match read {
                Ok(frame) if frame.header.from != peer => {
                    let text = format!(
                        "the frame claims to come from {}, but the certificate names {peer}",
                        frame.header.from
                    );
                    (
                        Reply::refused(&frame.header.id, Reason::Identity, text),
                        false,
                    )
                }
                Ok(frame) => {
                    tracing::debug!(own = %self.own, %peer, kind = frame.body.type_name(), "frame");
                    (self.answer(&peer, frame, &handler), false)
                }
                Err(ReadError::Decode(e)) => (
                    Reply::body(refused(e.message_id.clone(), e.reason, e.text.clone())),
                    false,
                ),
                Err(ReadError::TooLarge(t)) => (
                    Reply::body(refused(None, Reason::TooLarge, t.to_string())),
                    true,
                ),
                Err(_) => return,
            };
            if let Body::Refused(r) = &reply.body {
                self.frames_refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(own = %self.own, %peer, reason = %r.reason, text = %r.text, "refused a frame");
                self.bump();
            }
            let bytes = self.frame(reply.body).encode();
            let written = write_bytes(&mut tls, &bytes, self.opts.idle_timeout).await;
            // The frame was handled and its reply remembered: a resend gets
            // that reply and never runs the handler again, so what the
            // handler wants sent must go out even when this write failed —
            // as a real node's consequences are committed with the frame.
            if let Some(then) = reply.then {
                then();
            }
            if written.is_err() || close {
                return;
            }
        }
    }

    /// Queues `body` to `to` at `addr`; `done` hears how delivery ended.
    /// Returns the id of the frame queued.
    ///
    /// # Errors
    /// [`SimError::QueueFull`] when the destination's queue is full,
    /// [`SimError::Stopped`] after shutdown.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        to: &Party,
        addr: SocketAddr,
        body: Body,
        done: Option<oneshot::Sender<Delivery>>,
    ) -> Result<MessageId, SimError> {
        if self.cancel.is_cancelled() {
            return Err(SimError::Stopped);
        }
        let frame = self.frame(body);
        let id = frame.header.id.clone();
        let tx = {
            let mut queues = lock(&self.queues);
            queues
                .entry((to.clone(), addr))
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(self.opts.queue_len.max(1));
                    let node = Arc::clone(self);
                    let to = to.clone();
                    self.tracker
                        .spawn(async move { node.outbox(to, addr, rx).await });
                    tx
                })
                .clone()
        };
        tx.try_send(Job { frame, done }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                // The frame is lost: count it like any other given up.
                self.deliveries_failed.fetch_add(1, Ordering::Relaxed);
                self.bump();
                SimError::QueueFull { to: to.clone() }
            }
            mpsc::error::TrySendError::Closed(_) => SimError::Stopped,
        })?;
        Ok(id)
    }

    /// Queues `body` and waits until it is delivered or given up.
    ///
    /// # Errors
    /// As [`Node::enqueue`], and [`SimError::Delivery`].
    pub(crate) async fn deliver(
        self: &Arc<Self>,
        to: &Party,
        addr: SocketAddr,
        body: Body,
    ) -> Result<Frame, SimError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(to, addr, body, Some(tx))?;
        match rx.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(source)) => Err(SimError::Delivery {
                to: to.clone(),
                source,
            }),
            Err(_) => Err(SimError::Stopped),
        }
    }

    async fn outbox(self: Arc<Self>, to: Party, addr: SocketAddr, mut rx: mpsc::Receiver<Job>) {
        let attempts = self.opts.attempts.max(1);
        let first_delay = self.opts.backoff.min(self.opts.max_backoff);
        // Queued frames taken from `rx` and not yet settled, oldest first;
        // the first `conn.sent` of them are on the wire.
        let mut pending: VecDeque<Outgoing> = VecDeque::with_capacity(OUTBOX_WINDOW);
        let mut conn: Option<OutConn> = None;
        let mut delay = first_delay;
        let mut pause = false;
        let mut open = true;
        'run: loop {
            if self.cancel.is_cancelled() {
                break;
            }
            while open && pending.len() < OUTBOX_WINDOW {
                match rx.try_recv() {
                    Ok(job) => pending.push_back(Outgoing::new(job)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if pending.is_empty() {
                if !open {
                    break;
                }
                tokio::select! {
                    () = self.cancel.cancelled() => break,
                    j = rx.recv() => match j {
                        Some(job) => pending.push_back(Outgoing::new(job)),
                        None => open = false,
                    },
                }
                continue;
            }
            let Some(c) = conn.as_mut() else {
                // Before each further attempt: give up what has spent its
                // attempts or its time, then pause, then dial.
                if self.give_up_exhausted(&to, &mut pending, attempts) {
                    delay = first_delay;
                }
                if pending.is_empty() {
                    continue;
                }
                if pause {
                    let now = tokio::time::Instant::now();
                    let wait = pending
                        .iter()
                        .filter(|e| e.made > 0)
                        .filter_map(|e| e.deadline)
                        .min()
                        .map_or(delay, |d| delay.min(d.saturating_duration_since(now)));
                    tokio::select! {
                        () = self.cancel.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                    delay = delay.saturating_mul(2).min(self.opts.max_backoff);
                }
                pause = true;
                let dialled = tokio::select! {
                    () = self.cancel.cancelled() => break,
                    r = self.connect(&to, addr) => r,
                };
                match dialled {
                    Ok(link) => {
                        let (reader, writer) = link.into_split();
                        conn = Some(OutConn {
                            reader,
                            writer,
                            sent: 0,
                            answered: false,
                        });
                    }
                    Err(e) => {
                        // An attempt for every frame that would have gone.
                        let last = e.to_string();
                        for entry in &mut pending {
                            entry.attempted(self.opts.give_up_after);
                            entry.failed(&last);
                        }
                    }
                }
                continue;
            };
            // Put every pending frame not yet on the wire onto it.
            while c.sent < pending.len() {
                let Some(entry) = pending.get_mut(c.sent) else {
                    break;
                };
                if entry.writes > 0 {
                    self.note_resent();
                }
                entry.writes += 1;
                entry.attempted(self.opts.give_up_after);
                let written = tokio::select! {
                    () = self.cancel.cancelled() => break 'run,
                    r = c.writer.queue(&entry.bytes) => r,
                };
                if let Err(e) = written {
                    let last = e.to_string();
                    for entry in pending.iter_mut().take(c.sent + 1) {
                        entry.failed(&last);
                    }
                    pause = !c.answered;
                    conn = None;
                    continue 'run;
                }
                c.sent += 1;
            }
            // One flush for the window just queued.
            let flushed = tokio::select! {
                () = self.cancel.cancelled() => break 'run,
                r = c.writer.flush() => r,
            };
            if let Err(e) = flushed {
                let last = e.to_string();
                for entry in pending.iter_mut().take(c.sent) {
                    entry.failed(&last);
                }
                pause = !c.answered;
                conn = None;
                continue 'run;
            }
            // Then read one reply, which must answer the oldest.
            let read = tokio::select! {
                () = self.cancel.cancelled() => break,
                r = c.reader.next_reply() => r,
            };
            let want = pending.front().map(|e| e.frame.header.id.clone());
            let reply = match read {
                Ok(reply) if reply.body.in_reply_to() == want.as_ref() => reply,
                outcome => {
                    let last = match outcome {
                        Err(e) => e.to_string(),
                        Ok(reply) => LinkError::Mismatched {
                            want: want.unwrap_or_else(|| self.neutral_id.clone()),
                            got: reply.body.in_reply_to().cloned(),
                        }
                        .to_string(),
                    };
                    for entry in pending.iter_mut().take(c.sent) {
                        entry.failed(&last);
                    }
                    // A link that sat idle may have been closed by the
                    // peer: re-dial at once rather than after a pause.
                    pause = !c.answered;
                    conn = None;
                    continue;
                }
            };
            let Some(front) = pending.front_mut() else {
                conn = None;
                continue;
            };
            let result = match &reply.body {
                Body::Refused(r) if r.reason.is_transient() => {
                    // "Not now": back off and send again from this frame
                    // on, over a new link; the frames behind it were not
                    // answered, so their sending does not count as an
                    // attempt (the peer answers any it already handled
                    // from its duplicate memory).
                    front.last = format!("{}: {}", r.reason, r.text);
                    front.refusal = Some((r.reason, r.text.clone()));
                    for entry in pending.iter_mut().take(c.sent).skip(1) {
                        entry.unattempted();
                    }
                    pause = true;
                    conn = None;
                    continue;
                }
                // A resend of a frame whose first reply was lost, to a
                // peer that refuses rather than replays duplicates.
                Body::Refused(r) if r.reason == Reason::Duplicate && front.writes > 1 => Ok(reply),
                Body::Refused(r) => Err(DeliveryError::Refused {
                    reason: r.reason,
                    text: r.text.clone(),
                }),
                _ => Ok(reply),
            };
            c.sent -= 1;
            c.answered = true;
            delay = first_delay;
            if let Some(entry) = pending.pop_front() {
                self.settle(&to, entry, result);
            }
        }
        // Frames under way and whatever is still queued are answered, so
        // no waiter hangs.
        for entry in pending.drain(..) {
            if entry.made > 0 {
                self.settle(&to, entry, Err(DeliveryError::Stopped));
            } else if let Some(done) = entry.done {
                let _ = done.send(Err(DeliveryError::Stopped));
            }
        }
        rx.close();
        while let Ok(job) = rx.try_recv() {
            if let Some(done) = job.done {
                let _ = done.send(Err(DeliveryError::Stopped));
            }
        }
    }

    /// Settles every pending frame (none on the wire) that has spent its
    /// attempts, or its time after at least one attempt. True when any was.
    fn give_up_exhausted(
        &self,
        to: &Party,
        pending: &mut VecDeque<Outgoing>,
        attempts: u32,
    ) -> bool {
        let now = tokio::time::Instant::now();
        let spent = |e: &Outgoing| {
            e.made >= attempts || (e.made > 0 && e.deadline.is_some_and(|d| now >= d))
        };
        if !pending.iter().any(spent) {
            return false;
        }
        let mut kept = VecDeque::with_capacity(pending.len());
        for mut entry in pending.drain(..) {
            if !spent(&entry) {
                kept.push_back(entry);
                continue;
            }
            let result = match entry.refusal.take() {
                // The peer kept answering a transient refusal: that is its
                // answer.
                Some((reason, text)) => Err(DeliveryError::Refused { reason, text }),
                None => Err(DeliveryError::Unreachable {
                    attempts: entry.made,
                    last: std::mem::take(&mut entry.last),
                }),
            };
            self.settle(to, entry, result);
        }
        *pending = kept;
        true
    }

    /// Records how delivery of one queued frame ended and tells its waiter.
    fn settle(&self, to: &Party, entry: Outgoing, result: Delivery) {
        match &result {
            Ok(_) => {}
            Err(DeliveryError::Refused { reason, text }) => {
                tracing::info!(own = %self.own, %to, kind = entry.frame.body.type_name(), %reason, %text, "peer refused");
                lock(&self.peer_refusals).push(PeerRefusal {
                    to: to.clone(),
                    message_type: entry.frame.body.type_name(),
                    serial: entry.frame.body.serial().cloned(),
                    reason: *reason,
                    text: text.clone(),
                });
                self.bump();
            }
            Err(e) => {
                tracing::warn!(own = %self.own, %to, kind = entry.frame.body.type_name(), error = %ifrelay::logging::Causes(&e), "delivery failed");
                self.deliveries_failed.fetch_add(1, Ordering::Relaxed);
                self.bump();
            }
        }
        if let Some(done) = entry.done {
            let _ = done.send(result);
        }
    }

    /// Waits until `probe` returns something, re-probing whenever the
    /// node's state changes, for at most `timeout`.
    ///
    /// # Errors
    /// [`SimError::Timeout`] naming `what`; [`SimError::Stopped`].
    pub(crate) async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<T, SimError> {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(found) = probe() {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SimError::Stopped),
                Err(_) => {
                    return Err(SimError::Timeout {
                        what: what.to_owned(),
                        after: timeout,
                    })
                }
            }
        }
    }

    /// Cancels every task and waits (bounded) for them to end.
    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }
}

/// Request links to one peer, reused between requests; each request takes
/// a link of its own, so concurrent requests do not wait for each other.
pub(crate) struct Pool {
    to: Party,
    addr: SocketAddr,
    idle: tokio::sync::Mutex<Vec<Link>>,
}

/// Idle links kept per destination: enough for the benchmark's 48 flows in
/// flight per IMS, so bursts reuse links instead of new TLS handshakes.
const POOL_IDLE: usize = 64;

impl Pool {
    pub(crate) fn new(to: Party, addr: SocketAddr) -> Self {
        Pool {
            to,
            addr,
            idle: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Sends `frame` and returns its reply. A pooled link found closed is
    /// replaced by a fresh one once; any other failure is returned.
    pub(crate) async fn request(&self, node: &Node, frame: &Frame) -> Result<Frame, SimError> {
        let bytes = frame.encode();
        let pooled = self.idle.lock().await.pop();
        if let Some(mut link) = pooled {
            match link.request_encoded(&frame.header.id, &bytes).await {
                Ok(reply) => {
                    self.put_back(link).await;
                    return Ok(reply);
                }
                // Only a link the peer closed while it sat idle is worth a
                // second try; any other failure may mean the frame arrived.
                Err(
                    LinkError::Write(_) | LinkError::Read(ReadError::Closed | ReadError::Io(_)),
                ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut link = node.connect(&self.to, self.addr).await?;
        let reply = link.request_encoded(&frame.header.id, &bytes).await?;
        self.put_back(link).await;
        Ok(reply)
    }

    /// Sends `frame` and returns its reply, sending the same frame (same
    /// id, same bytes) again after a link failure (connect, write, read
    /// timeout, a reply naming another frame) or a transient refusal,
    /// pausing [`RESEND_BACKOFF`] at first, doubling up to
    /// [`RESEND_BACKOFF_CAP`], until it is answered otherwise, `period`
    /// has passed since the first try, or `stop` says the answer no longer
    /// matters. Then the last reply (a transient refusal) or the last
    /// error is returned.
    ///
    /// # Errors
    /// The last [`SimError::Link`] when no reply came; [`SimError::Stopped`]
    /// when the node shuts down while pausing.
    pub(crate) async fn request_until(
        &self,
        node: &Node,
        frame: &Frame,
        period: Duration,
        stop: impl Fn() -> bool,
    ) -> Result<Frame, SimError> {
        let deadline = tokio::time::Instant::now() + period;
        let mut delay = RESEND_BACKOFF;
        let mut first = true;
        loop {
            if !first {
                node.note_resent();
            }
            first = false;
            let outcome = self.request(node, frame).await;
            let again = match &outcome {
                Ok(reply) => matches!(&reply.body, Body::Refused(r) if r.reason.is_transient()),
                Err(SimError::Link(_)) => true,
                Err(_) => false,
            };
            let now = tokio::time::Instant::now();
            if !again || now >= deadline || stop() {
                return outcome;
            }
            match &outcome {
                Ok(reply) => {
                    tracing::debug!(own = %node.own, to = %self.to, kind = frame.body.type_name(), reply = ?reply.body, "transient refusal; sending again")
                }
                Err(e) => {
                    tracing::debug!(own = %node.own, to = %self.to, kind = frame.body.type_name(), error = %ifrelay::logging::Causes(&e), "no reply; sending again")
                }
            }
            let wait = delay.min(deadline.saturating_duration_since(now));
            tokio::select! {
                () = node.cancel.cancelled() => return Err(SimError::Stopped),
                () = tokio::time::sleep(wait) => {}
            }
            delay = delay.saturating_mul(2).min(RESEND_BACKOFF_CAP);
        }
    }

    async fn put_back(&self, link: Link) {
        let mut idle = self.idle.lock().await;
        if idle.len() < POOL_IDLE {
            idle.push(link);
        }
    }
}

/// A stand-in peer for tests: a listener that records every frame it
/// handles and answers each with `accepted`, or with what `answer`
/// returns. Like every simulator listener it suppresses duplicates: a
/// frame arriving again under an id it already answered (not refused) is
/// answered from memory and neither recorded nor passed to `answer` again
/// (see [`RecordingPeer::duplicates_received`]); start it with
/// `dedup_capacity: 0` in [`RecordingPeer::start_with_options`] to see
/// every copy.
pub struct RecordingPeer {
    node: Arc<Node>,
    addr: SocketAddr,
}

/// Decides a [`RecordingPeer`]'s reply; `None` means `accepted`.
pub type Answer = Arc<dyn Fn(&Party, &Frame) -> Option<Body> + Send + Sync>;

impl RecordingPeer {
    /// Starts a peer named `own` on `bind` that accepts everything.
    ///
    /// # Errors
    /// [`SimError::Tls`] or [`SimError::Bind`].
    pub async fn start(
        own: Party,
        bind: SocketAddr,
        tls: &TlsMaterial,
    ) -> Result<(RecordingPeer, mpsc::UnboundedReceiver<(Party, Frame)>), SimError> {
        Self::start_with(own, bind, tls, Arc::new(|_: &Party, _: &Frame| None)).await
    }

    /// As [`RecordingPeer::start`], answering with `answer`.
    ///
    /// # Errors
    /// [`SimError::Tls`] or [`SimError::Bind`].
    pub async fn start_with(
        own: Party,
        bind: SocketAddr,
        tls: &TlsMaterial,
        answer: Answer,
    ) -> Result<(RecordingPeer, mpsc::UnboundedReceiver<(Party, Frame)>), SimError> {
        Self::start_with_options(own, bind, tls, answer, NetOptions::default()).await
    }

    /// As [`RecordingPeer::start_with`], with network options (e.g.
    /// `dedup_capacity: 0` to record every copy of a resent frame).
    ///
    /// # Errors
    /// [`SimError::Tls`] or [`SimError::Bind`].
    pub async fn start_with_options(
        own: Party,
        bind: SocketAddr,
        tls: &TlsMaterial,
        answer: Answer,
        opts: NetOptions,
    ) -> Result<(RecordingPeer, mpsc::UnboundedReceiver<(Party, Frame)>), SimError> {
        let node = Node::new(own, tls, opts)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let handler: Handler = Arc::new(move |peer: &Party, frame: Frame| {
            let id = frame.header.id.clone();
            let body = answer(peer, &frame).unwrap_or(Body::Accepted(Accepted { in_reply_to: id }));
            let _ = tx.send((peer.clone(), frame));
            Reply::body(body)
        });
        let addr = node.listen(bind, handler).await?;
        Ok((RecordingPeer { node, addr }, rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Dials `to` at `addr` with this peer's certificate.
    ///
    /// # Errors
    /// [`SimError::Link`].
    pub async fn connect(&self, to: &Party, addr: SocketAddr) -> Result<Link, SimError> {
        self.node.connect(to, addr).await
    }

    /// A frame from this peer with a fresh id.
    pub fn frame(&self, body: Body) -> Frame {
        self.node.frame(body)
    }

    /// Frames this peer refused (identity mismatches, undecodable frames).
    pub fn frames_refused(&self) -> u64 {
        self.node.frames_refused()
    }

    /// Frames received again under an id already answered, answered from
    /// memory and not recorded again.
    pub fn duplicates_received(&self) -> u64 {
        self.node.duplicates_received()
    }

    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }
}

impl Drop for RecordingPeer {
    fn drop(&mut self) {
        self.node.cancel.cancel();
    }
}
