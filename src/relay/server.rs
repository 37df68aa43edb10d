//! The two TLS listeners of the box and the handling of each connection.
//!
//! The accept loop survives bad peers: a refused address, a failed
//! handshake or a wrong certificate ends only that connection, is logged
//! (tracing and access log) and the loop goes on. Connections are bounded
//! by a semaphore per listener. Each connection reads one frame at a time,
//! hands it to the engine and writes the engine's answer; a frame that
//! cannot be decoded is answered with its reason code and the connection
//! stays open (the stream is still in sync), except for an oversized
//! frame, after which the stream cannot be trusted and is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ifrelay_proto::{AgencyCode, Body, Frame, MessageId, Party, Reason, Refused, Role};
use ifrelay_store::Direction;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::channel::{FrameInput, Input, Listener, Peer};
use crate::logging::Causes;
use crate::net::{
    flush_within, now_millis, read_frame, write_bytes, write_unflushed, IdGen, ReadError,
    WRITE_BUFFER_BYTES,
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
    pub max_connections: usize,
    pub max_frame: usize,
    pub io_timeout: Duration,
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
}

/// Accepts connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(ctx.config.max_connections));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
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
            tracing::warn!(%addr, "connection from an address outside every allow-list refused");
            note_refused(&ctx, addr, None, "connect", None, Reason::Identity).await;
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%addr, "connection limit reached; refused");
            note_refused(&ctx, addr, None, "connect", None, Reason::Busy).await;
            continue;
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("conn", listener = ?ctx.config.listener, peer = %addr);
        tracker.spawn(
            async move {
                connection(tcp, addr, &ctx, &shutdown).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn note_refused(
    ctx: &ServerContext,
    addr: SocketAddr,
    party: Option<Party>,
    operation: &str,
    message_id: Option<MessageId>,
    reason: Reason,
) {
    let input = Input::Refused {
        terminal: addr,
        party,
        direction: if matches!(operation, "connect" | "tls_handshake") {
            Direction::Connection
        } else {
            Direction::In
        },
        operation: operation.to_owned(),
        message_id,
        reason,
    };
    // Logging must not let a flood of bad peers block the box: when the
    // engine queue is full the note is dropped (tracing still has it).
    if ctx.engine.try_send(input).is_err() {
        tracing::warn!(%addr, %reason, "access-log note dropped: engine busy");
    }
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    ctx: &ServerContext,
    shutdown: &CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        h = tokio::time::timeout(ctx.config.io_timeout, ctx.acceptor.accept(tcp)) => h,
    };
    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(error = %Causes(&e), "TLS handshake refused");
            note_refused(ctx, addr, None, "tls_handshake", None, Reason::Identity).await;
            return;
        }
        Err(_) => {
            tracing::warn!("TLS handshake timed out");
            note_refused(ctx, addr, None, "tls_handshake", None, Reason::Timeout).await;
            return;
        }
    };
    let party = match ifrelay_tls::connection_party(tls.get_ref().1) {
        Ok(p) => p,
        Err(e) => {
            // E_MY_NUMBER for a name holding one; the error never prints it.
            tracing::warn!(error = %Causes(&e), "peer certificate names no party");
            let _ = send_refusal(&mut tls, ctx, None, e.reason(), &e.to_string()).await;
            note_refused(ctx, addr, None, "connect", None, e.reason()).await;
            return;
        }
    };
    if let Err((reason, text)) = ctx.config.party_allowed(&party, addr.ip()) {
        tracing::warn!(%party, %reason, %text, "peer refused");
        let _ = send_refusal(&mut tls, ctx, None, reason, &text).await;
        note_refused(ctx, addr, Some(party), "connect", None, reason).await;
        return;
    }
    tracing::debug!(%party, "peer authenticated");
    let peer = Peer {
        party: party.clone(),
        addr,
        listener: ctx.config.listener,
    };
    // Pipelining: the reader goes on reading while earlier frames wait for
    // their commit; the writer answers strictly in arrival order. The queue
    // between them bounds the frames in flight on one connection.
    let (mut rd, wr) = tokio::io::split(tls);
    let (queue, mut answers) = mpsc::channel::<Pending>(MAX_IN_FLIGHT_PER_CONNECTION);
    let writer_gone = CancellationToken::new();
    let reader_stop = writer_gone.clone();
    let reader = async move {
        // Owns the queue: when the reader ends, the writer finishes what
        // is in flight and stops.
        let queue = queue;
        loop {
            let read = tokio::select! {
                () = shutdown.cancelled() => return,
                () = reader_stop.cancelled() => return,
                r = read_frame(&mut rd, ctx.config.max_frame, ctx.config.io_timeout) => r,
            };
            let pending = match read {
                Ok(frame) => submit(ctx, &peer, frame),
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
                    tracing::info!(got, expected, "truncated frame; closing");
                    note_refused(
                        ctx,
                        addr,
                        Some(party.clone()),
                        "frame",
                        None,
                        Reason::Malformed,
                    )
                    .await;
                    return;
                }
                Err(ReadError::TooLarge(e)) => {
                    // Answered, then the stream cannot be trusted: close.
                    tracing::warn!(error = %Causes(&e), "oversized frame; closing");
                    note_refused(
                        ctx,
                        addr,
                        Some(party.clone()),
                        "frame",
                        None,
                        Reason::TooLarge,
                    )
                    .await;
                    let body = refusal_body(None, Reason::TooLarge, &e.to_string());
                    let _ = queue.send(Pending::Ready(Box::new(body))).await;
                    return;
                }
                Err(ReadError::Decode(e)) => {
                    tracing::info!(reason = %e.reason, text = %e.text, "undecodable frame refused");
                    let id = e.message_id.clone();
                    note_refused(
                        ctx,
                        addr,
                        Some(party.clone()),
                        "frame",
                        id.clone(),
                        e.reason,
                    )
                    .await;
                    Pending::Ready(Box::new(refusal_body(id, e.reason, &e.text)))
                }
            };
            if queue.send(pending).await.is_err() {
                return;
            }
        }
    };
    let writer = async {
        let mut wr = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, wr);
        let limit = ctx.config.io_timeout;
        // Answers that are ready one after another share one flush; the
        // writer flushes before it waits for anything.
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
                Pending::Engine(id, mut rx) => match rx.try_recv() {
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
            if write_unflushed(&mut wr, &reply.encode(), limit)
                .await
                .is_err()
            {
                break;
            }
        }
        writer_gone.cancel();
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
    /// The engine will answer after its commit.
    Engine(MessageId, oneshot::Receiver<Body>),
    /// Answered already (refused before the engine).
    Ready(Box<Body>),
}

/// Hands a decoded frame to the engine, or answers busy at once.
fn submit(ctx: &ServerContext, peer: &Peer, frame: Frame) -> Pending {
    let id = frame.header.id.clone();
    let (tx, rx) = oneshot::channel();
    let input = Input::Frame(Box::new(FrameInput {
        peer: peer.clone(),
        frame,
        reply: tx,
    }));
    match ctx.engine.try_send(input) {
        Ok(()) => Pending::Engine(id, rx),
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

/// Binds a listener's address; a separate step so the supervisor can
/// report every bound address before serving.
///
/// # Errors
/// The bind error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Builds the acceptor from a server configuration.
pub fn acceptor(config: Arc<ServerConfig>) -> TlsAcceptor {
    TlsAcceptor::from(config)
}
