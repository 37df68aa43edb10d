//! Frames over a byte stream, and the outgoing TLS link.
//!
//! [`read_frame_within`] reads the 4-byte length first and refuses an
//! oversized frame before reading any of its body; then the body grows by
//! what arrives, [`READ_CHUNK`] bytes at most per read, each read charged
//! to the box's in-flight [`Budget`] ([`budget`]), never the length the
//! prefix announces. Decoding is the two steps of
//! [`ifrelay_proto::Scan`]: the scan measures the tree decoding will build,
//! the budget is charged for it, and only then is it built. The frame
//! comes back with what it holds of the budget ([`Received`]), which goes
//! back when the frame has been handled or dropped. A decode error leaves
//! the stream in sync (the whole body was consumed), so only
//! [`ReadError::TooLarge`] and I/O errors end a connection. [`Link`] is one
//! mutually authenticated TLS connection to a known party, used by the
//! box's delivery workers and by every simulator: send a frame, wait for
//! the hop reply.

pub mod budget;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use budget::{Budget, Held, Starved, SMALL_FRAME};
use ifrelay_proto::frame::{self, TooLarge, LENGTH_PREFIX};
use ifrelay_proto::{DecodeError, Frame, MessageId, Party, Reason};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The peer closed the stream cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The connection failed, or the budget had no room for the frame's
    /// bytes within the read timeout (`TimedOut`, its source a
    /// [`Starved`]): the frame is dropped with the connection.
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
    /// The stream cannot be resynchronised; answer and close.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The frame was read whole but is not acceptable (including
    /// `E_TOO_LARGE` and `E_BUSY` when decoding it would not fit in the
    /// budget); the stream is still in sync.
    #[error("undecodable frame: {0}")]
    Decode(DecodeError),
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// The peer stopped sending, or closed, in the middle of a frame.
    #[error("frame cut off after {got} of {expected} bytes")]
    Truncated { got: usize, expected: usize },
}

/// Most bytes asked of the stream in one read while a body arrives. It
/// bounds what a connection holds beyond its charge in the budget.
pub const READ_CHUNK: usize = 16 * 1024;

/// One decoded frame and what it holds of the in-flight budget; keep
/// [`Received::held`] until the frame has been handled.
#[derive(Debug)]
pub struct Received {
    pub frame: Frame,
    pub held: Held,
}

/// Reads one whole frame body, refusing it before the body is read when
/// the announced length exceeds `max`, without charging any budget (for
/// tools and simulators). See [`read_body_within`].
///
/// # Errors
/// See [`ReadError`].
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    idle: Duration,
) -> Result<Vec<u8>, ReadError> {
    let (body, _) = read_body_within(stream, max, idle, &Budget::unlimited()).await?;
    Ok(body)
}

/// Reads one whole frame body into a buffer that grows by what arrives,
/// charging each read to `budget`. `idle` bounds the wait for the frame to
/// start and, separately, for the rest of its prefix, for each read of its
/// body and for room in the budget, so a peer that stops mid-frame cannot
/// hold the connection, nor the budget.
///
/// # Errors
/// See [`ReadError`].
pub async fn read_body_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    idle: Duration,
    budget: &Budget,
) -> Result<(Vec<u8>, Held), ReadError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    let first = tokio::time::timeout(idle, stream.read(&mut prefix))
        .await
        .map_err(|_| ReadError::Timeout(idle))??;
    if first == 0 {
        return Err(ReadError::Closed);
    }
    read_rest(stream, &mut prefix[first..], idle, first, LENGTH_PREFIX).await?;
    let len = frame::body_len(prefix, max)?;
    let large = len > SMALL_FRAME;
    let mut held = budget.account();
    let mut reserved = false;
    let mut body = Vec::new();
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK);
        grow(&mut body, want, len);
        // Once a frame has started, a stall, a close or a reset (a peer
        // that hangs up with unread data sends RST) all mean the same: the
        // frame never ended.
        let mut part = (&mut *stream).take(want as u64);
        let n = match tokio::time::timeout(idle, part.read_buf(&mut body)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => 0,
        };
        if n == 0 {
            return Err(ReadError::Truncated {
                got: body.len(),
                expected: len,
            });
        }
        let starved = |e: Starved| std::io::Error::new(std::io::ErrorKind::TimedOut, e);
        if large && !reserved {
            held.reserve_large(len, idle).await.map_err(starved)?;
            reserved = true;
        }
        held.charge_received(n, idle).await.map_err(starved)?;
    }
    held.arrived();
    Ok((body, held))
}

/// Makes room for `want` more bytes: doubling, but never beyond the
/// announced `len`, and never ahead of what arrives by more than that.
fn grow(body: &mut Vec<u8>, want: usize, len: usize) {
    if body.capacity() - body.len() >= want {
        return;
    }
    let target = body
        .capacity()
        .saturating_mul(2)
        .max(body.len() + want)
        .min(len);
    body.reserve_exact(target - body.len());
}

/// Fills `buf` once a frame has started; a stall or a close before it is
/// full is [`ReadError::Truncated`].
async fn read_rest<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    idle: Duration,
    already: usize,
    expected: usize,
) -> Result<(), ReadError> {
    let mut got = 0;
    while got < buf.len() {
        let n = match tokio::time::timeout(idle, stream.read(&mut buf[got..])).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => 0,
        };
        if n == 0 {
            return Err(ReadError::Truncated {
                got: already + got,
                expected,
            });
        }
        got += n;
    }
    Ok(())
}

/// Reads and decodes one frame without charging any budget (for tools and
/// simulators). See [`read_frame_within`].
///
/// # Errors
/// See [`ReadError`].
pub async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    idle: Duration,
) -> Result<Frame, ReadError> {
    Ok(read_frame_within(stream, max, idle, &Budget::unlimited())
        .await?
        .frame)
}

/// Reads and decodes one frame under `budget`: the body's bytes as they
/// arrive, then the tree its decoding builds, before it is built. A frame
/// whose decoding would need more than the whole budget is refused
/// `E_TOO_LARGE`, one that finds no room within `idle` `E_BUSY`; both
/// leave the stream in sync.
///
/// # Errors
/// See [`ReadError`].
pub async fn read_frame_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    idle: Duration,
    budget: &Budget,
) -> Result<Received, ReadError> {
    let (body, mut held) = read_body_within(stream, max, idle, budget).await?;
    let len = body.len();
    let scan = off_runtime(len, move || Frame::scan(body))
        .await?
        .map_err(ReadError::Decode)?;
    let tree = scan.tree_bytes();
    // The tree and the typed frame made from it exist together for a while.
    let need = tree.saturating_mul(2);
    let refuse = |reason: Reason, text: String| {
        let mut e = DecodeError::new(reason, text);
        e.message_id = scan.message_id().cloned();
        ReadError::Decode(e)
    };
    if need > budget.decode_limit() {
        return Err(refuse(
            Reason::TooLarge,
            format!(
                "decoding this frame of {len} bytes would take about {need} bytes, more than the \
                 box's budget for decoding ({} bytes, half of limits.in_flight_bytes)",
                budget.decode_limit()
            ),
        ));
    }
    if held.charge_decoding(need, idle).await.is_err() {
        return Err(refuse(
            Reason::Busy,
            "the box is at its budget of bytes in flight; send again later".to_owned(),
        ));
    }
    let frame = off_runtime(len.max(tree), move || scan.decode())
        .await?
        .map_err(ReadError::Decode)?;
    // What stays is the typed frame, built from the tree: about as large
    // (the body and the tree are gone; keys skipped were never built).
    held.decoded(tree);
    Ok(Received { frame, held })
}

/// Runs `f` here when `size` is small, else on the blocking pool: a large
/// frame of many tiny CBOR items takes a while to scan or decode, and off
/// the runtime's workers it cannot stall other connections.
async fn off_runtime<T: Send + 'static>(
    size: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReadError> {
    if size <= DECODE_INLINE_BYTES {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReadError::Io(std::io::Error::other(format!("decoder task failed: {e}"))))
}

/// Frames up to this size are decoded on the task that read them; larger
/// ones on the blocking pool.
pub const DECODE_INLINE_BYTES: usize = 64 * 1024;

/// Writes pre-encoded frame bytes (prefix included) and flushes, within
/// `limit`: a peer that reads nothing cannot hold the writer.
///
/// # Errors
/// The I/O error of the write, or `TimedOut`.
pub async fn write_bytes<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    write_unflushed(stream, bytes, limit).await?;
    flush_within(stream, limit).await
}

/// Writes frame bytes without flushing, within `limit`. On a buffered
/// stream several frames then leave in one TLS record and one system call
/// at the next [`flush_within`].
///
/// # Errors
/// The I/O error of the write, or `TimedOut`.
pub async fn write_unflushed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(limit, stream.write_all(bytes))
        .await
        .map_err(|_| {
            timed_out(format!(
                "peer did not take {} bytes within {limit:?}",
                bytes.len()
            ))
        })?
}

/// Flushes what earlier writes left buffered, within `limit`.
///
/// # Errors
/// The I/O error of the flush, or `TimedOut`.
pub async fn flush_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(limit, stream.flush())
        .await
        .map_err(|_| {
            timed_out(format!(
                "peer did not take buffered frames within {limit:?}"
            ))
        })?
}

fn timed_out(text: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, text)
}

/// Frames buffered before a write reaches the socket: enough for a window
/// of small frames in one go; a larger frame bypasses the buffer.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Why a link could not deliver a frame and bring back its reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("cannot connect to {party} at {addr}")]
    Connect {
        party: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out connecting to {party} at {addr}")]
    ConnectTimeout { party: String, addr: SocketAddr },
    #[error("bad server identity {party}: {text}")]
    Identity { party: String, text: String },
    #[error("cannot read the reply")]
    Read(#[from] ReadError),
    #[error("cannot write the frame")]
    Write(#[source] std::io::Error),
    #[error("the reply answers {got:?}, not {want}")]
    Mismatched {
        want: MessageId,
        got: Option<MessageId>,
    },
}

/// One TLS connection to a known party.
pub struct Link {
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    max_frame: usize,
    reply_timeout: Duration,
    /// What replies are charged to; unlimited unless [`Link::with_budget`].
    budget: Budget,
}

impl Link {
    /// Connects to `addr` and verifies that its certificate names `party`.
    ///
    /// # Errors
    /// [`LinkError::Connect`], [`LinkError::ConnectTimeout`] or
    /// [`LinkError::Identity`].
    pub async fn connect(
        addr: SocketAddr,
        party: &Party,
        tls: Arc<ClientConfig>,
        connect_timeout: Duration,
        reply_timeout: Duration,
        max_frame: usize,
    ) -> Result<Link, LinkError> {
        let name = ifrelay_tls::identity::server_name(party).map_err(|e| LinkError::Identity {
            party: party.to_string(),
            text: e.to_string(),
        })?;
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            TlsConnector::from(tls).connect(name, tcp).await
        };
        let stream = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| LinkError::ConnectTimeout {
                party: party.to_string(),
                addr,
            })?
            .map_err(|source| LinkError::Connect {
                party: party.to_string(),
                addr,
                source,
            })?;
        // webpki matched the name (case-insensitively, wildcards allowed);
        // hold the server to the listener's own rule: exactly one party
        // name, and the expected one.
        let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
        ifrelay_tls::verify_peer(certs, party).map_err(|e| LinkError::Identity {
            party: party.to_string(),
            text: e.to_string(),
        })?;
        Ok(Link {
            stream,
            peer: addr,
            max_frame,
            reply_timeout,
            budget: Budget::unlimited(),
        })
    }

    /// Charges the replies read on this link to `budget` (the box's own,
    /// for its delivery workers).
    #[must_use]
    pub fn with_budget(mut self, budget: Budget) -> Link {
        self.budget = budget;
        self
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends encoded frame bytes and reads the reply, without checking
    /// which frame it answers (for malformed-input tests).
    ///
    /// # Errors
    /// [`LinkError::Write`] or [`LinkError::Read`].
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<Frame, LinkError> {
        write_bytes(&mut self.stream, bytes, self.reply_timeout)
            .await
            .map_err(LinkError::Write)?;
        let reply = read_frame_within(
            &mut self.stream,
            self.max_frame,
            self.reply_timeout,
            &self.budget,
        )
        .await?;
        Ok(reply.frame)
    }

    /// Writes bytes and waits for nothing: for tests that cut a frame off
    /// and then drop the link.
    ///
    /// # Errors
    /// [`LinkError::Write`].
    pub async fn write_only(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        write_bytes(&mut self.stream, bytes, self.reply_timeout)
            .await
            .map_err(LinkError::Write)
    }

    /// Sends a frame and returns the reply that answers it.
    ///
    /// # Errors
    /// As [`Link::send_raw`], and [`LinkError::Mismatched`] when the reply
    /// names another frame.
    pub async fn request(&mut self, frame: &Frame) -> Result<Frame, LinkError> {
        self.request_encoded(&frame.header.id, &frame.encode())
            .await
    }

    /// As [`Link::request`], for a frame already encoded (from the outbox).
    ///
    /// # Errors
    /// As [`Link::request`].
    pub async fn request_encoded(
        &mut self,
        id: &MessageId,
        bytes: &[u8],
    ) -> Result<Frame, LinkError> {
        let reply = self.send_raw(bytes).await?;
        match reply.body.in_reply_to() {
            Some(got) if got == id => Ok(reply),
            got => Err(LinkError::Mismatched {
                want: id.clone(),
                got: got.cloned(),
            }),
        }
    }
}

/// The receiving half of a split [`Link`]: hop replies, in order.
pub struct LinkReader {
    rd: tokio::io::ReadHalf<TlsStream<TcpStream>>,
    max_frame: usize,
    reply_timeout: Duration,
    budget: Budget,
}

impl LinkReader {
    /// The next reply on the link.
    ///
    /// # Errors
    /// [`LinkError::Read`], including a timeout.
    pub async fn next_reply(&mut self) -> Result<Frame, LinkError> {
        let reply = read_frame_within(
            &mut self.rd,
            self.max_frame,
            self.reply_timeout,
            &self.budget,
        )
        .await?;
        Ok(reply.frame)
    }
}

/// The sending half of a split [`Link`].
pub struct LinkWriter {
    wr: tokio::io::BufWriter<tokio::io::WriteHalf<TlsStream<TcpStream>>>,
    timeout: Duration,
}

impl LinkWriter {
    /// Writes one encoded frame and flushes it.
    ///
    /// # Errors
    /// [`LinkError::Write`].
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        write_bytes(&mut self.wr, bytes, self.timeout)
            .await
            .map_err(LinkError::Write)
    }

    /// Buffers one encoded frame; it leaves at the next [`Self::flush`]
    /// (or earlier, when the buffer fills).
    ///
    /// # Errors
    /// [`LinkError::Write`].
    pub async fn queue(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        write_unflushed(&mut self.wr, bytes, self.timeout)
            .await
            .map_err(LinkError::Write)
    }

    /// Sends what [`Self::queue`] buffered.
    ///
    /// # Errors
    /// [`LinkError::Write`].
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        flush_within(&mut self.wr, self.timeout)
            .await
            .map_err(LinkError::Write)
    }
}

impl Link {
    /// Splits the link so that frames can be written while earlier replies
    /// are still awaited (pipelining; the peer answers in order).
    pub fn into_split(self) -> (LinkReader, LinkWriter) {
        let (rd, wr) = tokio::io::split(self.stream);
        (
            LinkReader {
                rd,
                max_frame: self.max_frame,
                reply_timeout: self.reply_timeout,
                budget: self.budget,
            },
            LinkWriter {
                wr: tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, wr),
                timeout: self.reply_timeout,
            },
        )
    }
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Generates message ids unique per sender: `<prefix>-<n>`, where the
/// prefix includes something that differs per run (the box uses its boot
/// epoch).
#[derive(Debug)]
pub struct IdGen {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl IdGen {
    /// # Errors
    /// When ids with this prefix would not be valid message ids.
    pub fn new(prefix: impl Into<String>) -> Result<Self, ifrelay_proto::CodeError> {
        let prefix = prefix.into();
        MessageId::new(format!("{prefix}-{}", u64::MAX))?;
        Ok(IdGen {
            prefix,
            next: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub fn next(&self) -> MessageId {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        MessageId::new(format!("{}-{n}", self.prefix))
            .expect("invariant: prefix validated with the longest counter in IdGen::new")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ifrelay_proto::message::{Distribution, KeyCertificate};
    use ifrelay_proto::Body;

    /// A distribution frame whose signed bytes are `len` long (the frame
    /// codec does not look into them).
    fn distribution(len: usize) -> Frame {
        Frame::new(
            MessageId::new("d-1").expect("id"),
            Party::core(),
            1,
            Body::Distribution(Distribution {
                signed: vec![7; len],
                sig: vec![1; 64],
                signer: KeyCertificate {
                    signed: vec![2; 40],
                    sig: vec![3; 64],
                },
            }),
        )
    }

    #[tokio::test]
    async fn frames_on_both_sides_of_the_inline_limit_decode_alike() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let small = distribution(32);
        let large = distribution(DECODE_INLINE_BYTES + 1);
        assert!(large.encode().len() > DECODE_INLINE_BYTES);
        write_bytes(&mut a, &small.encode(), Duration::from_secs(5))
            .await
            .expect("write");
        write_bytes(&mut a, &large.encode(), Duration::from_secs(5))
            .await
            .expect("write");
        let idle = Duration::from_secs(5);
        assert_eq!(
            read_frame(&mut b, 1 << 20, idle).await.expect("small"),
            small
        );
        assert_eq!(
            read_frame(&mut b, 1 << 20, idle).await.expect("large"),
            large
        );
        // A large body that is not CBOR still gets its decode error.
        let mut junk = u32::try_from(DECODE_INLINE_BYTES + 8)
            .expect("fits")
            .to_be_bytes()
            .to_vec();
        junk.extend(std::iter::repeat_n(0xffu8, DECODE_INLINE_BYTES + 8));
        write_bytes(&mut a, &junk, idle).await.expect("write");
        match read_frame(&mut b, 1 << 20, idle).await {
            Err(ReadError::Decode(e)) => assert_eq!(e.reason, ifrelay_proto::Reason::Malformed),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    /// Waits until `f` holds.
    async fn until(f: impl Fn() -> bool) {
        for _ in 0..1000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition never held");
    }

    #[tokio::test]
    async fn a_body_is_charged_as_it_arrives_not_as_announced() {
        let budget = Budget::new(32 << 20);
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let idle = Duration::from_secs(10);
        let reader = {
            let budget = budget.clone();
            tokio::spawn(async move { read_body_within(&mut b, 4 << 20, idle, &budget).await })
        };
        // 4 MiB announced, 1000 bytes sent: 1000 bytes charged.
        let mut start = (4u32 << 20).to_be_bytes().to_vec();
        start.extend(std::iter::repeat_n(7u8, 1000));
        write_bytes(&mut a, &start, idle).await.expect("write");
        until(|| budget.in_flight() == 1000).await;
        assert_eq!(
            budget.large_reserved(),
            4 << 20,
            "its length, reserved to finish"
        );
        // The peer goes away: the frame is cut off and its charge is back.
        drop(a);
        match reader.await.expect("task") {
            Err(ReadError::Truncated { got, expected }) => {
                assert_eq!((got, expected), (1000, 4 << 20));
            }
            other => panic!("expected a truncated frame, got {other:?}"),
        }
        assert_eq!(budget.in_flight(), 0);
    }

    #[test]
    fn the_buffer_grows_with_what_arrives() {
        let len = 4 << 20;
        let mut body = Vec::new();
        let mut most = 0.0f64;
        while body.len() < len {
            let want = (len - body.len()).min(READ_CHUNK);
            grow(&mut body, want, len);
            most = most.max(body.capacity() as f64 / (body.len() + want) as f64);
            body.resize(body.len() + want, 0);
        }
        assert_eq!(body.capacity(), len, "never beyond the announced length");
        assert!(most <= 2.0, "at most twice what has arrived: {most}");
    }

    #[tokio::test]
    async fn reading_pauses_at_the_budget_and_gives_up_after_the_read_timeout() {
        // 64 KiB for frames arriving, 48 KiB of it for large ones.
        let budget = Budget::new(128 << 10);
        let idle = Duration::from_millis(300);
        let frame = |len: usize| {
            let mut out = u32::try_from(len).expect("fits").to_be_bytes().to_vec();
            out.extend(std::iter::repeat_n(7u8, len));
            out
        };
        // Small frames not yet decoded hold 24 KiB.
        let mut waiting = budget.account();
        waiting.charge_received(24 << 10, idle).await.expect("room");
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let reader = {
            let budget = budget.clone();
            tokio::spawn(async move { read_body_within(&mut b, 1 << 20, idle, &budget).await })
        };
        write_bytes(&mut a, &frame(48 << 10), idle)
            .await
            .expect("write");
        until(|| budget.in_flight() == 64 << 10).await;
        // No room for the rest: reading waits...
        tokio::time::sleep(idle / 2).await;
        assert_eq!(budget.in_flight(), 64 << 10);
        // ...and goes on as soon as room is back.
        drop(waiting);
        let (body, held) = reader.await.expect("task").expect("the whole body");
        assert_eq!((body.len(), held.bytes()), (48 << 10, 48 << 10));
        assert_eq!(
            budget.large_reserved(),
            0,
            "arrived: its reservation is back"
        );

        // Still holding it, a second frame gets no room: given up (with
        // its connection) once the read timeout has passed.
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let second = {
            let budget = budget.clone();
            tokio::spawn(async move { read_body_within(&mut b, 1 << 20, idle, &budget).await })
        };
        write_bytes(&mut a, &frame(40 << 10), idle)
            .await
            .expect("write");
        match second.await.expect("task") {
            Err(ReadError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
            other => panic!("expected a timeout, got {other:?}"),
        }
        drop(held);
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn large_frames_arriving_together_all_finish() {
        // Room for only one 40 KiB frame at a time to arrive: the others
        // wait for it, rather than all holding part of theirs for ever.
        let budget = Budget::new(200 << 10);
        let idle = Duration::from_secs(5);
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let (mut a, mut b) = tokio::io::duplex(1 << 20);
            let budget = budget.clone();
            readers.spawn(async move {
                let mut frame = (40u32 << 10).to_be_bytes().to_vec();
                frame.extend(std::iter::repeat_n(7u8, 40 << 10));
                let write = write_bytes(&mut a, &frame, idle);
                let read = read_body_within(&mut b, 1 << 20, idle, &budget);
                let (written, read) = tokio::join!(write, read);
                written.expect("write");
                // Handled at once: what it held goes back.
                read.map(|(body, _)| body.len())
            });
        }
        while let Some(done) = readers.join_next().await {
            assert_eq!(done.expect("task").expect("every frame arrives"), 40 << 10);
        }
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_decoded_frame_keeps_its_charge_until_dropped() {
        let budget = Budget::new(32 << 20);
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let idle = Duration::from_secs(5);
        let small = distribution(32);
        write_bytes(&mut a, &small.encode(), idle)
            .await
            .expect("write");
        let got = read_frame_within(&mut b, 1 << 20, idle, &budget)
            .await
            .expect("frame");
        assert_eq!(got.frame, small);
        assert!(got.held.bytes() > 0);
        assert_eq!(budget.in_flight(), got.held.bytes());
        drop(got);
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_frame_whose_tree_would_not_fit_is_refused_and_the_stream_stays_in_sync() {
        // 200 000 prefix entries that are empty maps: ~13 MB of tree from a
        // 200 kB body, in a 2 MiB budget.
        let budget = Budget::new(2 << 20);
        let idle = Duration::from_secs(5);
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        // `signer`, a key `distribution` defines, as 200,000 empty maps.
        let Ok(ciborium::Value::Map(mut entries)) =
            ciborium::from_reader(distribution(32).encode_body().as_slice())
        else {
            panic!("own encoding is a map");
        };
        entries.retain(|(k, _)| k.as_text() != Some("signer"));
        entries.push((
            ciborium::Value::Text("signer".into()),
            ciborium::Value::Array(vec![ciborium::Value::Map(Vec::new()); 200_000]),
        ));
        let mut head = Vec::new();
        ciborium::into_writer(&ciborium::Value::Map(entries), &mut head).expect("vec");
        let mut wire = u32::try_from(head.len())
            .expect("fits")
            .to_be_bytes()
            .to_vec();
        wire.extend_from_slice(&head);
        let writer = tokio::spawn(async move {
            write_bytes(&mut a, &wire, idle).await.expect("write");
            write_bytes(&mut a, &distribution(32).encode(), idle)
                .await
                .expect("write");
            a
        });
        match read_frame_within(&mut b, 1 << 20, idle, &budget).await {
            Err(ReadError::Decode(e)) => {
                assert_eq!(e.reason, ifrelay_proto::Reason::TooLarge);
                assert_eq!(e.message_id, MessageId::new("d-1").ok());
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(budget.in_flight(), 0);
        let next = read_frame_within(&mut b, 1 << 20, idle, &budget)
            .await
            .expect("the next frame");
        assert_eq!(next.frame, distribution(32));
        drop(writer.await.expect("task"));
    }
}
