//! The two TLS listeners of the box and the handling of each connection.
//!
//! The accept loop survives bad peers: a refused address, a failed
//! handshake or a wrong certificate ends only that connection, is logged
//! (tracing and access log, coalesced per source by [`RefusalLog`]) and
//! the loop goes on. Admission has two budgets per listener
//! ([`Admission`]): connections still in their TLS handshake hold a
//! handshake permit (bounded per source address, where a short line may
//! wait for one, and overall, with a short deadline), authenticated ones
//! a slot (with a reserve only the core and
//! the own IMS may use), so a flood that never finishes TLS cannot take
//! the place of an authenticated peer. Each connection reads frames,
//! checks each against its sender's rate ([`RateLimiter`]; beyond it
//! `E_BUSY` at once), hands it to the engine and writes the engine's
//! answers in order; a frame that cannot be decoded is answered with its
//! reason code and the connection stays open (the stream is still in
//! sync), except for an oversized frame, after which the stream cannot be
//! trusted and is closed.
//!
//! Invariants: a connection task holds its permit or slot (RAII) for its
//! whole life and nothing else, so every way it ends gives its place
//! back; its reader and writer each stop when the other has gone, and
//! every wait of either is bounded by a timeout, the box stopping or the
//! other half ending — a peer that stops reading is dropped after
//! `limits.io_timeout_ms` even while it keeps sending.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ifrelay_proto::{AgencyCode, Body, Frame, MessageId, Party, Reason, Refused, Role};
use ifrelay_store::Direction;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::admission::{Admission, AdmissionLimits, Occupancy, Ticket};
use super::channel::{FrameInput, Input, Listener, Peer};
use super::rates::{Class, RateLimiter};
use super::refusal_log::{self, Refusal, RefusalLog};
use crate::health::PeerBook;
use crate::logging::Causes;
use crate::net::{
    flush_within, now_millis, read_frame_within, write_bytes, write_unflushed, Budget, Held, IdGen,
    ReadError, Received, WRITE_BUFFER_BYTES,
};

/// Who may connect to a listener, and the limits of its connections.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub listener: Listener,
    pub agency: AgencyCode,
    pub core_allow: Vec<ipnet::IpNet>,
    pub ims_allow: Vec<ipnet::IpNet>,
    pub peer_allow: Vec<ipnet::IpNet>,
    pub deny_agencies: Vec<AgencyCode>,
    /// Handshake and connection budgets (`limits.*`).
    pub admission: AdmissionLimits,
    pub max_frame: usize,
    /// The box's bytes in flight, shared by both listeners and delivery:
    /// a frame is read as it arrives under it and holds its share until
    /// the engine has answered it.
    pub budget: Budget,
    pub io_timeout: Duration,
    /// The TLS handshake and party check must be done within this (and
    /// within `io_timeout`, whichever is shorter).
    pub handshake_timeout: Duration,
}

impl ListenerConfig {
    /// Whether `ip` may open a connection to this listener at all.
    fn address_allowed(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        let nets: Vec<&ipnet::IpNet> = match self.listener {
            Listener::AgencySide => self.ims_allow.iter().collect(),
            Listener::CoreSide => self.core_allow.iter().chain(&self.peer_allow).collect(),
        };
        nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether `party` may use the reserve of authenticated slots: the
    /// core and the own IMS (the only parties besides peer boxes that a
    /// listener lets in).
    fn reserved(party: &Party) -> bool {
        matches!(party.role, Role::Core | Role::Ims)
    }

    /// Whether the authenticated `party` may use this listener from `ip`
    /// (R-SEC-5: certificate, role and address must all fit).
    fn party_allowed(&self, party: &Party, ip: std::net::IpAddr) -> Result<(), (Reason, String)> {
        let ip = ip.to_canonical();
        let in_nets = |nets: &[ipnet::IpNet]| nets.iter().any(|n| n.contains(&ip));
        match (self.listener, party.role) {
            (Listener::AgencySide, Role::Ims) if party.agency.as_ref() == Some(&self.agency) => {
                if in_nets(&self.ims_allow) {
                    Ok(())
                } else {
                    Err((
                        Reason::Identity,
                        format!("{party} may not connect from {ip}"),
                    ))
                }
            }
            (Listener::CoreSide, Role::Core) => {
                if in_nets(&self.core_allow) {
                    Ok(())
                } else {
                    Err((
                        Reason::Identity,
                        format!("the core may not connect from {ip}"),
                    ))
                }
            }
            (Listener::CoreSide, Role::Is) => {
                let agency = party.agency.as_ref();
                if agency == Some(&self.agency) {
                    Err((Reason::Identity, "a box does not talk to itself".to_owned()))
                } else if agency.is_some_and(|a| self.deny_agencies.contains(a)) {
                    Err((
                        Reason::Identity,
                        format!("{party} is denied by configuration"),
                    ))
                } else if in_nets(&self.peer_allow) {
                    Ok(())
                } else {
                    Err((
                        Reason::Identity,
                        format!("{party} may not connect from {ip}"),
                    ))
                }
            }
            _ => Err((
                Reason::Role,
                format!("{party} may not connect to this listener"),
            )),
        }
    }
}

/// Shared by every connection of one listener.
pub struct ServerContext {
    pub config: ListenerConfig,
    pub acceptor: TlsAcceptor,
    pub engine: mpsc::Sender<Input>,
    pub own: Party,
    pub ids: Arc<IdGen>,
    /// Per-sender rates, shared by both listeners.
    pub rates: Arc<RateLimiter>,
    /// Where each peer's last frame is noted, for `status`.
    pub peers: Arc<PeerBook>,
    admission: Admission,
    refusals: RefusalLog,
}

impl ServerContext {
    pub fn new(
        config: ListenerConfig,
        acceptor: TlsAcceptor,
        engine: mpsc::Sender<Input>,
        own: Party,
        ids: Arc<IdGen>,
        rates: Arc<RateLimiter>,
        peers: Arc<PeerBook>,
    ) -> Self {
        Self {
            admission: Admission::new(config.admission),
            refusals: RefusalLog::new(engine.clone(), refusal_log::PERIOD),
            config,
            acceptor,
            engine,
            own,
            ids,
            rates,
            peers,
        }
    }

    /// The connections holding a place on this listener now.
    pub fn occupancy(&self) -> Occupancy {
        self.admission.occupancy()
    }

    /// Writes the entries of every period of coalesced refusals, over or
    /// not (the box is stopping).
    pub fn flush_refusals(&self) {
        self.refusals.flush(true);
    }

    /// Notes a refusal in the access log (coalesced) and in the journal:
    /// at `warn` when it got an entry of its own, at `debug` when it was
    /// only counted.
    fn refused(&self, refusal: Refusal, text: &str) {
        let (terminal, reason, operation) = (refusal.terminal, refusal.reason, refusal.operation);
        if self.refusals.note(refusal) {
            tracing::warn!(%terminal, %reason, operation, "{text}");
        } else {
            tracing::debug!(%terminal, %reason, operation, "{text} (counted)");
        }
    }

    /// Notes the refusal of a connection (no frame read).
    fn connection_refused(
        &self,
        addr: SocketAddr,
        party: Option<Party>,
        operation: &'static str,
        reason: Reason,
        text: &str,
    ) {
        let refusal = Refusal {
            terminal: addr,
            party,
            direction: Direction::Connection,
            operation,
            message_id: None,
            reason,
        };
        self.refused(refusal, text);
    }
}

/// How often periods of coalesced refusals are checked for their end.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Accepts connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = flush.tick() => {
                ctx.refusals.flush(false);
                continue;
            }
            a = listener.accept() => a,
        };
        let (tcp, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!(error = %Causes(&e), "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !ctx.config.address_allowed(addr.ip()) {
            refuse_before_tls(
                &ctx,
                tcp,
                addr,
                Reason::Identity,
                "connection from an address outside every allow-list refused",
            );
            continue;
        }
        let ticket = match ctx.admission.enter(addr.ip()) {
            Ok(ticket) => ticket,
            Err(full) => {
                refuse_before_tls(&ctx, tcp, addr, Reason::Busy, full.describe());
                continue;
            }
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("conn", listener = ?ctx.config.listener, peer = %addr);
        tracker.spawn(
            // The permit, and later the slot, live exactly as long as
            // this task, whichever way it ends.
            async move { connection(tcp, addr, ticket, &ctx, &shutdown).await }.instrument(span),
        );
    }
    // Counts of periods not over yet; the rest when the last connection
    // lets go of the context.
    ctx.refusals.flush(true);
}

/// Closes a connection before TLS, with a reset rather than a close:
/// nothing was read, nothing is owed, and a flood of such connections
/// leaves no socket behind in TIME_WAIT.
fn refuse_before_tls(
    ctx: &ServerContext,
    tcp: TcpStream,
    addr: SocketAddr,
    reason: Reason,
    text: &str,
) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
    ctx.connection_refused(addr, None, "connect", reason, text);
}

/// One connection: handshake and party check under a handshake permit,
/// then frames under a slot.
async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    ticket: Ticket,
    ctx: &ServerContext,
    shutdown: &CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    // One deadline for waiting for a handshake place and the handshake.
    let deadline = ctx.config.handshake_timeout.min(ctx.config.io_timeout);
    let until = tokio::time::Instant::now() + deadline;
    let permit = tokio::select! {
        () = shutdown.cancelled() => return,
        () = tokio::time::sleep_until(until) => None,
        p = ticket.admitted() => Some(p),
    };
    let Some(permit) = permit else {
        // Its place in line is given back; nothing was read.
        let text = format!("no handshake place free from this address within {deadline:?}");
        refuse_before_tls(ctx, tcp, addr, Reason::Busy, &text);
        return;
    };
    // Pinned here rather than inside a timeout, so that on the deadline
    // the permit is given back before the socket closes: a client that
    // sees the close and connects again finds the place free.
    let accept = ctx.acceptor.accept(tcp);
    tokio::pin!(accept);
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        () = tokio::time::sleep_until(until) => None,
        h = &mut accept => Some(h),
    };
    let mut tls = match handshake {
        Some(Ok(tls)) => tls,
        Some(Err(e)) => {
            let text = format!("TLS handshake refused: {}", Causes(&e));
            ctx.connection_refused(addr, None, "tls_handshake", Reason::Identity, &text);
            return;
        }
        None => {
            drop(permit);
            let text = format!("TLS handshake not done within {deadline:?}");
            ctx.connection_refused(addr, None, "tls_handshake", Reason::Timeout, &text);
            return;
        }
    };
    let party = match ifrelay_tls::connection_party(tls.get_ref().1) {
        Ok(p) => p,
        Err(e) => {
            // E_MY_NUMBER for a name holding one; the error never prints it.
            let text = format!("peer certificate names no party: {}", Causes(&e));
            let _ = send_refusal(&mut tls, ctx, None, e.reason(), &e.to_string()).await;
            ctx.connection_refused(addr, None, "connect", e.reason(), &text);
            return;
        }
    };
    if let Err((reason, text)) = ctx.config.party_allowed(&party, addr.ip()) {
        let _ = send_refusal(&mut tls, ctx, None, reason, &text).await;
        let text = format!("peer refused: {text}");
        ctx.connection_refused(addr, Some(party), "connect", reason, &text);
        return;
    }
    let Some(slot) = ctx.admission.slot(ListenerConfig::reserved(&party)) else {
        let text = "connection limit reached; send again later, or pipeline on fewer connections";
        let _ = send_refusal(&mut tls, ctx, None, Reason::Busy, text).await;
        ctx.connection_refused(addr, Some(party), "connect", Reason::Busy, text);
        return;
    };
    drop(permit);
    tracing::debug!(%party, "peer authenticated");
    let peer = Peer {
        party,
        addr,
        listener: ctx.config.listener,
    };
    frames(tls, &peer, ctx, shutdown).await;
    drop(slot);
}

/// Waits for room in the queue to the writer, unless the writer has
/// gone (it may be stuck on a peer that reads nothing). False when the
/// reader must stop.
async fn enqueue(
    queue: &mpsc::Sender<Pending>,
    writer_gone: &CancellationToken,
    p: Pending,
) -> bool {
    tokio::select! {
        () = writer_gone.cancelled() => false,
        sent = queue.send(p) => sent.is_ok(),
    }
}

/// Reads, hands on and answers the frames of an authenticated connection
/// until either side ends it or the box stops.
async fn frames(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: &Peer,
    ctx: &ServerContext,
    shutdown: &CancellationToken,
) {
    let (addr, party) = (peer.addr, &peer.party);
    let frame_refused = |message_id: Option<MessageId>, reason: Reason, text: &str| {
        let refusal = Refusal {
            terminal: addr,
            party: Some(party.clone()),
            direction: Direction::In,
            operation: "frame",
            message_id,
            reason,
        };
        // Undecodable frames of an authenticated peer each keep their
        // entry (the access log says which frames were refused) — except
        // those of a peer box beyond its rate, which are coalesced like
        // the frames refused for it.
        let over = party.role == Role::Is && ctx.rates.charge(party, Class::Peer).is_err();
        if over {
            ctx.refused(refusal, text);
        } else {
            ctx.refusals.note_each(refusal);
            tracing::info!(%reason, "{text}");
        }
    };
    // Pipelining: the reader goes on reading while earlier frames wait for
    // their commit; the writer answers strictly in arrival order. The queue
    // between them bounds the frames in flight on one connection.
    let (mut rd, wr) = tokio::io::split(tls);
    let (queue, answers) = mpsc::channel::<Pending>(MAX_IN_FLIGHT_PER_CONNECTION);
    // Cancelled when the writer ends, by whatever path.
    let writer_gone = CancellationToken::new();
    let reader = async {
        // Owns the queue: when the reader ends, the writer finishes what
        // is in flight and stops.
        let queue = queue;
        loop {
            let read = tokio::select! {
                () = shutdown.cancelled() => return,
                () = writer_gone.cancelled() => return,
                r = read_frame_within(
                    &mut rd,
                    ctx.config.max_frame,
                    ctx.config.io_timeout,
                    &ctx.config.budget,
                ) => r,
            };
            let pending = match read {
                Ok(received) => submit(ctx, peer, received),
                Err(ReadError::Closed) => return,
                Err(ReadError::Timeout(_)) => {
                    tracing::debug!("idle connection closed");
                    return;
                }
                Err(ReadError::Io(e)) => {
                    tracing::debug!(error = %Causes(&e), "connection ended");
                    return;
                }
                Err(ReadError::Truncated { got, expected }) => {
                    // Nothing can be answered: the frame never ended.
                    let text = format!("truncated frame ({got} of {expected} bytes); closing");
                    frame_refused(None, Reason::Malformed, &text);
                    return;
                }
                Err(ReadError::TooLarge(e)) => {
                    // Answered, then the stream cannot be trusted: close.
                    let text = format!("oversized frame; closing: {}", Causes(&e));
                    frame_refused(None, Reason::TooLarge, &text);
                    let body = refusal_body(None, Reason::TooLarge, &e.to_string());
                    enqueue(&queue, &writer_gone, Pending::Ready(Box::new(body))).await;
                    return;
                }
                Err(ReadError::Decode(e)) => {
                    let id = e.message_id.clone();
                    let text = format!("undecodable frame refused: {}", e.text);
                    frame_refused(id.clone(), e.reason, &text);
                    Pending::Ready(Box::new(refusal_body(id, e.reason, &e.text)))
                }
            };
            // Stops reading after the box stops only once what was read
            // is queued: a frame read is always answered.
            if !enqueue(&queue, &writer_gone, pending).await {
                return;
            }
        }
    };
    let writer = async {
        let _gone = writer_gone.clone().drop_guard();
        // Owned, so that a reader waiting for room wakes when it ends.
        let mut answers = answers;
        let mut wr = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, wr);
        let limit = ctx.config.io_timeout;
        // Answers that are ready one after another share one flush; the
        // writer flushes before it waits for anything. Every write and
        // flush is bounded by the I/O timeout: a peer that takes nothing
        // ends the connection, however much it keeps sending.
        loop {
            let pending = match answers.try_recv() {
                Ok(p) => p,
                Err(_) => {
                    if flush_within(&mut wr, limit).await.is_err() {
                        break;
                    }
                    match answers.recv().await {
                        Some(p) => p,
                        None => return,
                    }
                }
            };
            let body = match pending {
                Pending::Ready(body) => *body,
                // What the frame holds of the budget goes back with its
                // answer.
                Pending::Engine(id, mut rx, _held) => match rx.try_recv() {
                    Ok(body) => body,
                    Err(oneshot::error::TryRecvError::Empty) => {
                        if flush_within(&mut wr, limit).await.is_err() {
                            break;
                        }
                        rx.await.unwrap_or_else(|_| stopping_refusal(id))
                    }
                    Err(oneshot::error::TryRecvError::Closed) => stopping_refusal(id),
                },
            };
            let reply = Frame::new(ctx.ids.next(), ctx.own.clone(), now_millis(), body);
            if let Err(e) = write_unflushed(&mut wr, &reply.encode(), limit).await {
                tracing::info!(error = %Causes(&e), "peer does not take its answers; closing");
                break;
            }
        }
    };
    tokio::join!(reader, writer);
}

/// The answer to a frame whose engine reply never came: the engine
/// dropped it on its way down.
fn stopping_refusal(id: MessageId) -> Body {
    refusal_body(Some(id), Reason::Internal, "the box is stopping")
}

/// Frames one connection may have waiting for their answers.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 64;

/// An answer the writer of a connection owes, in arrival order.
enum Pending {
    /// The engine will answer after its commit; the frame holds its share
    /// of the in-flight budget until then.
    Engine(MessageId, oneshot::Receiver<Body>, Held),
    /// Answered already (refused before the engine).
    Ready(Box<Body>),
}

/// Hands a decoded frame to the engine, or answers busy at once: over its
/// sender's rate, or the engine's queue full.
fn submit(ctx: &ServerContext, peer: &Peer, received: Received) -> Pending {
    let Received { frame, held } = received;
    let id = frame.header.id.clone();
    if let Err(over) = ctx.rates.admit(&peer.party, &frame.body) {
        let refusal = Refusal {
            terminal: peer.addr,
            party: Some(peer.party.clone()),
            direction: Direction::In,
            operation: frame.body.type_name(),
            message_id: Some(id.clone()),
            reason: Reason::Busy,
        };
        ctx.refused(refusal, &format!("frame refused: {over}"));
        return Pending::Ready(Box::new(refusal_body(
            Some(id),
            Reason::Busy,
            &over.to_string(),
        )));
    }
    ctx.peers.heard(&peer.party, crate::net::now_millis());
    let (tx, rx) = oneshot::channel();
    let input = Input::Frame(Box::new(FrameInput {
        peer: peer.clone(),
        frame,
        reply: tx,
    }));
    match ctx.engine.try_send(input) {
        Ok(()) => Pending::Engine(id, rx, held),
        Err(_) => Pending::Ready(Box::new(refusal_body(
            Some(id),
            Reason::Busy,
            "the box is at its queue limit; send again later",
        ))),
    }
}

fn refusal_body(in_reply_to: Option<MessageId>, reason: Reason, text: &str) -> Body {
    Body::Refused(Refused {
        in_reply_to,
        reason,
        text: text.to_owned(),
    })
}

async fn send_refusal<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &ServerContext,
    in_reply_to: Option<MessageId>,
    reason: Reason,
    text: &str,
) -> std::io::Result<()> {
    let frame = Frame::new(
        ctx.ids.next(),
        ctx.own.clone(),
        now_millis(),
        refusal_body(in_reply_to, reason, text),
    );
    write_bytes(stream, &frame.encode(), ctx.config.io_timeout).await
}

/// Connections the kernel holds for a listener until the accept loop
/// takes them (capped by `net.core.somaxconn`). The standard 128 fills in
/// a moment under a flood of connections and the kernel then drops the
/// handshakes of legitimate clients too, which retry only after a second.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener's address, with a backlog of [`LISTEN_BACKLOG`]; a
/// separate step so the supervisor can report every bound address before
/// serving.
///
/// # Errors
/// The bind error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Builds the acceptor from a server configuration.
pub fn acceptor(config: Arc<ServerConfig>) -> TlsAcceptor {
    TlsAcceptor::from(config)
}
