//! Frames over a byte stream, and the outgoing TLS link.
//!
//! [`read_frame`] reads the 4-byte length first and refuses an oversized
//! frame before reading any of its body; a decode error leaves the stream
//! in sync (the whole body was consumed), so only [`ReadError::TooLarge`]
//! and I/O errors end a connection. [`Link`] is one mutually authenticated
//! TLS connection to a known party, used by the box's delivery workers and
//! by every simulator: send a frame, wait for the hop reply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ifrelay_proto::frame::{self, TooLarge, LENGTH_PREFIX};
use ifrelay_proto::{DecodeError, Frame, MessageId, Party};
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
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
    /// The stream cannot be resynchronised; answer and close.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The frame was read whole but is not acceptable; the stream is still
    /// in sync.
    #[error("undecodable frame: {0}")]
    Decode(DecodeError),
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// The peer stopped sending, or closed, in the middle of a frame.
    #[error("frame cut off after {got} of {expected} bytes")]
    Truncated { got: usize, expected: usize },
}

/// Reads one whole frame body, refusing it before the body is read when
/// the announced length exceeds `max`. `idle` bounds the wait for the
/// frame to start and, separately, for the rest of its prefix and for its
/// body, so a peer that stops mid-frame cannot hold the connection.
///
/// # Errors
/// See [`ReadError`].
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    idle: Duration,
) -> Result<Vec<u8>, ReadError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    let first = tokio::time::timeout(idle, stream.read(&mut prefix))
        .await
        .map_err(|_| ReadError::Timeout(idle))??;
    if first == 0 {
        return Err(ReadError::Closed);
    }
    read_rest(stream, &mut prefix[first..], idle, first, LENGTH_PREFIX).await?;
    let len = frame::body_len(prefix, max)?;
    let mut body = vec![0u8; len];
    read_rest(stream, &mut body, idle, 0, len).await?;
    Ok(body)
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
        // Once a frame has started, a stall, a close or a reset (a peer
        // that hangs up with unread data sends RST) all mean the same: the
        // frame never ended.
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

/// Reads and decodes one frame.
///
/// # Errors
/// See [`ReadError`].
pub async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    idle: Duration,
) -> Result<Frame, ReadError> {
    let body = read_body(stream, max, idle).await?;
    if body.len() <= DECODE_INLINE_BYTES {
        return Frame::decode_body(&body).map_err(ReadError::Decode);
    }
    // A large frame of many tiny CBOR items can take a second of CPU to
    // decode; off the runtime's workers it cannot stall other connections.
    tokio::task::spawn_blocking(move || Frame::decode_body(&body))
        .await
        .map_err(|e| ReadError::Io(std::io::Error::other(format!("decoder task failed: {e}"))))?
        .map_err(ReadError::Decode)
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
        })
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
        Ok(read_frame(&mut self.stream, self.max_frame, self.reply_timeout).await?)
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
}

impl LinkReader {
    /// The next reply on the link.
    ///
    /// # Errors
    /// [`LinkError::Read`], including a timeout.
    pub async fn next_reply(&mut self) -> Result<Frame, LinkError> {
        Ok(read_frame(&mut self.rd, self.max_frame, self.reply_timeout).await?)
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
    use ifrelay_proto::message::{Distribution, Masters};
    use ifrelay_proto::Body;

    fn distribution(key_len: usize) -> Frame {
        Frame::new(
            MessageId::new("d-1").expect("id"),
            Party::core(),
            1,
            Body::Distribution(Distribution {
                version: 1,
                prefixes: Vec::new(),
                masters: Masters::default(),
                core_key: vec![7; key_len],
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
}
