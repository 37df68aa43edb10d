//! Hostile and careless peers (issue 7): the attackers of
//! `tests/hostile_peers.rs` and `tests/hostile_memory.rs`, and the flood
//! mix of `make bench` that runs them all at once ([`FloodMix`]).
//!
//! - a peer pipelining frames and never reading
//!   ([`pipeline_without_reading`]);
//! - hundreds of connections that never start TLS, each opened again as
//!   soon as the box drops it ([`TlsLessFlood`]);
//! - 4 MiB frames of empty maps under a key no type defines
//!   ([`empty_maps_frame`]);
//! - connections that announce a 4 MiB frame and stall
//!   ([`announce_and_stall`]) or send it slowly ([`send_slowly`]);
//! - a peer box flooding `box_status` ([`flood_box_status`]).
//!
//! Besides them, the own IMS's serial requests timed one by one
//! ([`ims_serial_requests`]), the legitimate traffic whose answer times
//! the tests and the benchmark judge. Every loop here is bounded in count
//! and in time, and all traffic goes to the loopback addresses given.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ciborium::Value;
use ifrelay::net::{Link, LinkReader, LinkWriter};
use ifrelay_proto::frame::DEFAULT_MAX_FRAME;
use ifrelay_proto::{
    Body, BoxStatus, Frame, MessageId, Party, Reason, SerialPurpose, SerialRequest, StatusEvent,
};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Any failure of an attacker that cannot go on.
pub type HostileError = Box<dyn std::error::Error + Send + Sync>;

/// A client's TLS connection to a box.
pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A frame from `from` with id `id` and `body`.
fn frame(from: &Party, id: &str, body: Body) -> Result<Frame, HostileError> {
    Ok(Frame::new(MessageId::new(id)?, from.clone(), 0, body))
}

/// The body every `box_status` flood sends.
fn started() -> Body {
    Body::BoxStatus(BoxStatus {
        event: StatusEvent::Started,
    })
}

/// A TCP connection to `addr` from `local` (any port), with a receive
/// buffer of `rcvbuf` bytes if given.
///
/// # Errors
/// When the socket cannot be bound or the connection is refused.
pub async fn tcp_from(
    addr: SocketAddr,
    local: IpAddr,
    rcvbuf: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

/// A TLS connection over `tcp` to the box `server`, as the party of
/// `client`.
///
/// # Errors
/// When `server` has no valid name or the handshake fails.
pub async fn tls_over(
    client: Arc<ClientConfig>,
    server: &Party,
    tcp: TcpStream,
) -> Result<Tls, HostileError> {
    let name = ifrelay_tls::identity::server_name(server)?;
    Ok(tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await?)
}

/// Pipelines `box_status` frames as `me` and never reads a reply, until
/// the box drops the connection (a write fails) or `max` frames or
/// `limit`. Returns the frames written and whether the box dropped it.
pub async fn pipeline_without_reading(
    mut tls: Tls,
    me: &Party,
    tag: &str,
    max: usize,
    limit: Duration,
) -> (usize, bool) {
    let deadline = Instant::now() + limit;
    let mut sent = 0;
    while Instant::now() < deadline {
        let bytes = if sent < max {
            match frame(me, &format!("{tag}-{sent}"), started()) {
                Ok(f) => f.encode(),
                Err(_) => break,
            }
        } else {
            // All written and the box has not dropped it yet: keep
            // poking so that its close shows as a failed write.
            tokio::time::sleep(Duration::from_millis(100)).await;
            vec![0]
        };
        let write = async {
            tls.write_all(&bytes).await?;
            tls.flush().await
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => sent += usize::from(sent < max),
            Ok(Err(_)) => return (sent, true),
            Err(_) => break,
        }
    }
    (sent, false)
}

/// Connections to a box that never start TLS, each opened again as soon
/// as the box drops it, until [`TlsLessFlood::stop`], `until` or
/// `max_opened` connections in all.
pub struct TlsLessFlood {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    opened: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TlsLessFlood {
    /// Starts `conns` such connections to `addr` from `from`.
    pub fn start(
        addr: SocketAddr,
        from: IpAddr,
        conns: usize,
        until: Instant,
        max_opened: u64,
    ) -> TlsLessFlood {
        let opened = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..conns)
            .map(|_| {
                let (stop, opened) = (stop.clone(), opened.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < until
                        && opened.load(Ordering::Relaxed) < max_opened
                    {
                        let Ok(mut tcp) = tcp_from(addr, from, None).await else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        opened.fetch_add(1, Ordering::Relaxed);
                        // Until the box drops it (or the flood ends).
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
                    }
                })
            })
            .collect();
        TlsLessFlood {
            tasks,
            opened,
            stop,
        }
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Ends the flood at once, closing every connection it holds; returns
    /// the connections opened.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
        self.opened()
    }
}

/// The length prefix and head of a `serial_request` body from `from`
/// whose last key, `x_pad`, holds an array of `n` empty maps (not
/// included).
fn head_with_pad(from: &Party, id: &str, n: u32) -> Result<Vec<u8>, HostileError> {
    let head = [
        ("v", Value::Integer(1.into())),
        ("id", Value::Text(id.into())),
        ("type", Value::Text("serial_request".into())),
        ("sent_at", Value::Integer(1_700_000_000_000i64.into())),
        ("from", Value::serialized(from)?),
        ("purpose", Value::Text("query".into())),
    ];
    let mut body = vec![0xa0 | (head.len() as u8 + 1)];
    for (k, v) in head {
        ciborium::into_writer(&Value::Text(k.into()), &mut body)?;
        ciborium::into_writer(&v, &mut body)?;
    }
    ciborium::into_writer(&Value::Text("x_pad".into()), &mut body)?;
    body.push(0x9a);
    body.extend_from_slice(&n.to_be_bytes());
    let len = u32::try_from(body.len() + n as usize)?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// A whole frame of the largest size (4 MiB) holding about four million
/// empty maps under `x_pad`, a key no type defines: claiming to come from
/// `from`, with id `id`.
///
/// # Errors
/// When `from` or `id` cannot be encoded.
pub fn empty_maps_frame(from: &Party, id: &str) -> Result<Vec<u8>, HostileError> {
    let fixed = head_with_pad(from, id, 0)?.len() - 4;
    let n = u32::try_from(DEFAULT_MAX_FRAME - fixed)?;
    let mut frame = head_with_pad(from, id, n)?;
    frame.resize(4 + DEFAULT_MAX_FRAME, 0xa0);
    Ok(frame)
}

/// How long one connection of [`authenticated_connections`] may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `count` authenticated TLS connections as the party of `client` to
/// `server` at `addr`, handshaking sixteen at a time from the loopback
/// addresses 127.0.1.1–32 (the box bounds handshakes per source).
///
/// # Errors
/// The first connection that fails or takes over 10 s.
pub async fn authenticated_connections(
    client: Arc<ClientConfig>,
    server: &Party,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<Tls>, HostileError> {
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ifrelay_tls::identity::server_name(server)?;
    let mut out = Vec::with_capacity(count);
    let mut n = 0u8;
    while out.len() < count {
        let batch = (count - out.len()).min(16);
        let mut set = JoinSet::new();
        for _ in 0..batch {
            n = n.wrapping_add(1);
            let local = IpAddr::from([127, 0, 1, 1 + n % 32]);
            let (connector, name) = (connector.clone(), name.clone());
            set.spawn(tokio::time::timeout(CONNECT_TIMEOUT, async move {
                let tcp = tcp_from(addr, local, None).await?;
                connector.connect(name, tcp).await
            }));
        }
        while let Some(done) = set.join_next().await {
            out.push(done???);
        }
    }
    Ok(out)
}

/// How one stalled connection ended.
pub struct Stalled {
    /// It sent part of its frame before stalling.
    pub partial: bool,
    /// The box closed it before the wait ran out.
    pub closed: bool,
    /// How long it was held.
    pub after: Duration,
    /// The connection, kept open until the caller drops it.
    pub tls: Tls,
}

/// Announces a frame of the largest size on each of `conns`, sends
/// 64 KiB of it first on one in `partial_every`, then holds each without
/// sending more until the box closes it or `hold` has passed.
///
/// # Errors
/// When an announcement cannot be written.
pub async fn announce_and_stall(
    mut conns: Vec<Tls>,
    partial_every: usize,
    hold: Duration,
) -> std::io::Result<JoinSet<Stalled>> {
    let announce = frame_length(DEFAULT_MAX_FRAME);
    let partial_every = partial_every.max(1);
    for (i, tls) in conns.iter_mut().enumerate() {
        tls.write_all(&announce).await?;
        if i % partial_every == 0 {
            tls.write_all(&[0xa0; 64 * 1024]).await?;
        }
        tls.flush().await?;
    }
    let mut held = JoinSet::new();
    for (i, tls) in conns.into_iter().enumerate() {
        let partial = i % partial_every == 0;
        held.spawn(async move {
            // Hold the connection; the box closes it (or the wait ends).
            let mut tls = tls;
            let mut buf = [0u8; 64];
            let t0 = Instant::now();
            let closed = tokio::time::timeout(hold, tls.read(&mut buf)).await.is_ok();
            Stalled {
                partial,
                closed,
                after: t0.elapsed(),
                tls,
            }
        });
    }
    Ok(held)
}

/// The length prefix announcing a frame of `len` bytes.
fn frame_length(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// Announces a frame of the largest size on `tls` and sends all of it but
/// its last byte, `piece` bytes every 100 ms, for at most `limit`;
/// `sent` counts the bytes written. Returns the connection, still open.
pub async fn send_slowly(mut tls: Tls, piece: usize, limit: Duration, sent: Arc<AtomicU64>) -> Tls {
    let deadline = Instant::now() + limit;
    if tls
        .write_all(&frame_length(DEFAULT_MAX_FRAME))
        .await
        .is_err()
    {
        return tls;
    }
    let mut left = DEFAULT_MAX_FRAME - 1;
    let piece = vec![0xa0u8; piece.max(1)];
    while left > 0 && Instant::now() < deadline {
        let n = left.min(piece.len());
        let write = tokio::time::timeout(Duration::from_secs(1), async {
            tls.write_all(&piece[..n]).await?;
            tls.flush().await
        });
        match write.await {
            Ok(Ok(())) => {
                left -= n;
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            // Held back by the box (its budget is spent), or dropped.
            Ok(Err(_)) => break,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tls
}

/// What a `box_status` flood got back.
pub struct BoxStatusFlood {
    pub accepted: usize,
    /// Refused `E_BUSY`.
    pub busy: usize,
    /// From the first frame written to the last reply read.
    pub elapsed: Duration,
    /// The link, still open (closing it may write the box's last summary
    /// of the refusals).
    pub link: (LinkReader, LinkWriter),
}

/// Sends `frames` `box_status` frames as the peer box `me` over `link`,
/// flushing every 64, while reading every reply; waits at most `limit`
/// for them all.
///
/// # Errors
/// A write or read that fails, a reply other than accepted or `E_BUSY`,
/// or replies missing after `limit`.
pub async fn flood_box_status(
    link: Link,
    me: &Party,
    tag: &str,
    frames: usize,
    limit: Duration,
) -> Result<BoxStatusFlood, HostileError> {
    let (mut rd, mut wr) = link.into_split();
    let t0 = Instant::now();
    let deadline = t0 + limit;
    let writer = {
        let (me, tag) = (me.clone(), tag.to_owned());
        tokio::spawn(async move {
            let write_all = async {
                for n in 0..frames {
                    let bytes = frame(&me, &format!("{tag}-{n}"), started())?.encode();
                    wr.queue(&bytes).await?;
                    if n % 64 == 63 {
                        wr.flush().await?;
                    }
                }
                wr.flush().await?;
                Ok::<_, HostileError>(())
            };
            match tokio::time::timeout_at(deadline, write_all).await {
                Ok(Ok(())) => Ok(wr),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(HostileError::from("box_status frames not written in time")),
            }
        })
    };
    let (mut accepted, mut busy) = (0usize, 0usize);
    let read_all = async {
        for _ in 0..frames {
            let reply = rd.next_reply().await?;
            match &reply.body {
                Body::Accepted(_) => accepted += 1,
                Body::Refused(r) if r.reason == Reason::Busy => busy += 1,
                other => return Err(format!("unexpected answer {other:?}").into()),
            }
        }
        Ok::<_, HostileError>(())
    };
    let read = tokio::time::timeout_at(deadline, read_all).await;
    let elapsed = t0.elapsed();
    let written = writer.await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(format!(
                "{} of {frames} box_status answered within {limit:?}",
                accepted + busy
            )
            .into())
        }
    }
    let wr = written??;
    Ok(BoxStatusFlood {
        accepted,
        busy,
        elapsed,
        link: (rd, wr),
    })
}

/// Answer times of the IMS's serial requests to its box `the_box` at
/// `addr`, one every 50–100 ms for `period`, each timed from its moment
/// in the schedule (so a slow answer delays no later request); `None` for
/// one not answered with a serial within 5 s. Over `link` when given
/// (requests then wait for each other's answers), else each on a fresh
/// connection: TCP, TLS, request. `tag` starts the message ids.
pub async fn ims_serial_requests(
    addr: SocketAddr,
    ims: &Party,
    the_box: &Party,
    client: Arc<ClientConfig>,
    (tag, period): (&str, Duration),
    link: Option<Link>,
) -> Vec<Option<Duration>> {
    timed_serial_requests(addr, ims, the_box, client, (tag, period), link)
        .await
        .into_iter()
        .map(|(_, answer)| answer)
        .collect()
}

/// As [`ims_serial_requests`], each answer time beside when its request
/// was due, counted from the first.
pub async fn timed_serial_requests(
    addr: SocketAddr,
    ims: &Party,
    the_box: &Party,
    client: Arc<ClientConfig>,
    (tag, period): (&str, Duration),
    link: Option<Link>,
) -> Vec<(Duration, Option<Duration>)> {
    let link = link.map(|l| Arc::new(tokio::sync::Mutex::new(l)));
    let first = Instant::now();
    let end = first + period;
    let mut asks = Vec::new();
    let mut n = 0u32;
    while Instant::now() < end {
        n += 1;
        let request = frame(
            ims,
            &format!("{tag}-{n}"),
            Body::SerialRequest(SerialRequest {
                purpose: SerialPurpose::Query,
            }),
        );
        let (link, client, the_box) = (link.clone(), client.clone(), the_box.clone());
        let due = first.elapsed();
        asks.push((
            due,
            tokio::spawn(async move {
                let request = request.ok()?;
                let t0 = Instant::now();
                let answer = async {
                    match link {
                        Some(link) => link.lock().await.request(&request).await.ok(),
                        None => {
                            let fresh = Link::connect(
                                addr,
                                &the_box,
                                client,
                                Duration::from_secs(5),
                                Duration::from_secs(5),
                                DEFAULT_MAX_FRAME,
                            );
                            match fresh.await {
                                Ok(mut fresh) => fresh.request(&request).await.ok(),
                                Err(_) => None,
                            }
                        }
                    }
                };
                let reply = tokio::time::timeout(Duration::from_secs(5), answer)
                    .await
                    .ok()
                    .flatten();
                let ok = matches!(reply.map(|r| r.body), Some(Body::SerialIssued(_)));
                ok.then(|| t0.elapsed())
            }),
        ));
        let pause = 50 + u64::from(n * 37 % 51);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let mut times = Vec::new();
    for (due, ask) in asks {
        // A request task that panicked counts as not answered.
        times.push((due, ask.await.ok().flatten()));
    }
    times
}

/// The box a [`FloodMix`] attacks, and the identities its attackers use.
#[derive(Clone)]
pub struct FloodTarget {
    /// The box's listener for its own IMS.
    pub agency_side: SocketAddr,
    /// The box's listener for the core and peer boxes.
    pub core_side: SocketAddr,
    pub the_box: Party,
    /// TLS of the box's own IMS: the attackers on the agency side hold
    /// its certificate (a misbehaving or compromised IMS).
    pub ims_tls: Arc<ClientConfig>,
    /// A peer box and its TLS: the attackers on the core side.
    pub peer: Party,
    pub peer_tls: Arc<ClientConfig>,
    /// Whom the frames of empty maps claim to come from (another agency's
    /// IMS, so the box refuses them `E_IDENTITY` once decoded).
    pub claimed_sender: Party,
}

/// Every attacker at once against one box, each bounded by
/// [`FloodMix::duration`] and its own count.
#[derive(Debug, Clone)]
pub struct FloodMix {
    pub duration: Duration,
    /// Peers pipelining `box_status` without reading, on the core side,
    /// each reconnecting once dropped.
    pub never_readers: usize,
    pub never_reader_frames: usize,
    /// Connections without TLS, on the agency side from
    /// `tls_less_from`, re-opened as soon as dropped.
    pub tls_less_conns: usize,
    pub tls_less_from: IpAddr,
    pub tls_less_max_opened: u64,
    /// IMS connections sending 4 MiB frames of empty maps, one after the
    /// other, up to `empty_map_frames_each` each.
    pub empty_map_senders: usize,
    pub empty_map_frames_each: usize,
    /// Peer connections announcing a 4 MiB frame and stalling (one in
    /// ten after 64 KiB of it).
    pub stalled: usize,
    /// IMS connections sending 4 MiB − 1 of a 4 MiB frame,
    /// `slow_piece` bytes every 100 ms.
    pub slow: usize,
    pub slow_piece: usize,
    /// The stalled and slow attackers start this long after the others:
    /// once their announced frames hold the box's budget for arriving
    /// frames, the box reads no other large frame until its read timeout
    /// drops it, so the frames of empty maps would never reach the
    /// decoder.
    pub holders_after: Duration,
    /// `box_status` frames per round of the flooding peer box (a fresh
    /// link each round), and most rounds.
    pub box_status_frames: usize,
    pub box_status_rounds: usize,
}

/// How long after [`FloodMix::duration`] an attacker may take to wind
/// down before it is aborted.
pub const WIND_DOWN: Duration = Duration::from_secs(10);

impl FloodMix {
    /// The mix of the benchmark: with the box's default limits (256
    /// connections per listener, 16 of them reserved for the core and the
    /// own IMS) every authenticated attacker gets a place and the own IMS
    /// keeps some.
    pub fn full(duration: Duration) -> FloodMix {
        FloodMix {
            duration,
            never_readers: 3,
            never_reader_frames: 20_000,
            tls_less_conns: 500,
            tls_less_from: IpAddr::from([127, 0, 0, 2]),
            tls_less_max_opened: 1_000_000,
            empty_map_senders: 16,
            empty_map_frames_each: 1_000,
            stalled: 200,
            slow: 150,
            slow_piece: 16 * 1024,
            holders_after: Duration::from_secs(3),
            box_status_frames: 20_000,
            box_status_rounds: 1_000,
        }
    }

    /// A smaller mix for smoke runs (a debug build of the box on a busy
    /// machine).
    pub fn small(duration: Duration) -> FloodMix {
        FloodMix {
            never_readers: 1,
            never_reader_frames: 2_000,
            tls_less_conns: 50,
            empty_map_senders: 2,
            empty_map_frames_each: 2,
            stalled: 20,
            slow: 20,
            holders_after: Duration::from_secs(1),
            box_status_frames: 2_000,
            box_status_rounds: 5,
            ..FloodMix::full(duration)
        }
    }

    /// Opens the authenticated connections of the stalled and slow
    /// attackers, then starts every attacker and returns while they run.
    ///
    /// # Errors
    /// When the authenticated connections cannot be opened.
    pub async fn start(&self, target: &FloodTarget) -> Result<RunningFlood, HostileError> {
        let stalled = authenticated_connections(
            target.peer_tls.clone(),
            &target.the_box,
            target.core_side,
            self.stalled,
        )
        .await?;
        let slow = authenticated_connections(
            target.ims_tls.clone(),
            &target.the_box,
            target.agency_side,
            self.slow,
        )
        .await?;
        let started = Instant::now();
        let deadline = started + self.duration;
        let counts = Arc::new(Tally::default());
        let mut tasks = JoinSet::new();

        let holders_begin = started + self.holders_after.min(self.duration);
        {
            let counts = counts.clone();
            tasks.spawn(async move {
                tokio::time::sleep_until(holders_begin).await;
                let hold = deadline.saturating_duration_since(Instant::now());
                match announce_and_stall(stalled, 10, hold).await {
                    Ok(held) => hold_stalled(held, counts).await,
                    Err(e) => counts.failed("a stalled peer could not announce its frame", &e),
                }
            });
        }
        for tls in slow {
            let counts = counts.clone();
            let sent = Arc::new(AtomicU64::new(0));
            let piece = self.slow_piece;
            tasks.spawn(async move {
                tokio::time::sleep_until(holders_begin).await;
                let left = deadline.saturating_duration_since(Instant::now());
                let tls = send_slowly(tls, piece, left, sent.clone()).await;
                counts.add(&counts.slow_bytes, sent.load(Ordering::Relaxed));
                // Held until the flood ends, as a slow sender would.
                tokio::time::sleep_until(deadline).await;
                drop(tls);
            });
        }
        for i in 0..self.never_readers {
            let (target, counts, mix) = (target.clone(), counts.clone(), self.clone());
            tasks.spawn(async move { never_read(target, mix, i, deadline, counts).await });
        }
        for i in 0..self.empty_map_senders {
            let (target, counts, each) =
                (target.clone(), counts.clone(), self.empty_map_frames_each);
            tasks.spawn(async move { send_empty_maps(target, i, each, deadline, counts).await });
        }
        {
            let (target, counts, mix) = (target.clone(), counts.clone(), self.clone());
            tasks.spawn(async move { flood_status(target, mix, deadline, counts).await });
        }
        let tls_less = TlsLessFlood::start(
            target.agency_side,
            self.tls_less_from,
            self.tls_less_conns,
            deadline,
            self.tls_less_max_opened,
        );
        Ok(RunningFlood {
            started,
            deadline,
            tasks,
            tls_less,
            counts,
        })
    }
}

/// A flood under way ([`FloodMix::start`]).
pub struct RunningFlood {
    started: Instant,
    deadline: Instant,
    tasks: JoinSet<()>,
    tls_less: TlsLessFlood,
    counts: Arc<Tally>,
}

impl RunningFlood {
    /// Waits for every attacker to end (at most [`WIND_DOWN`] after the
    /// flood's duration, then aborts them) and returns what they did.
    pub async fn finish(mut self) -> FloodCounts {
        tokio::time::sleep_until(self.deadline).await;
        let tls_less_opened = self.tls_less.stop();
        let wind_down = self.deadline + WIND_DOWN;
        let mut aborted = 0;
        loop {
            match tokio::time::timeout_at(wind_down, self.tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    aborted = self.tasks.len();
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FloodCounts {
            elapsed: self.started.elapsed(),
            never_read_frames: get(&c.never_read_frames),
            never_readers_dropped: get(&c.never_readers_dropped),
            tls_less_opened,
            empty_map_frames: get(&c.empty_map_frames),
            empty_map_refused_identity: get(&c.empty_map_refused_identity),
            stalled_closed_by_box: get(&c.stalled_closed_by_box),
            stalled: get(&c.stalled),
            slow_bytes: get(&c.slow_bytes),
            box_status_accepted: get(&c.box_status_accepted),
            box_status_busy: get(&c.box_status_busy),
            failures: c
                .failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(what, (n, first))| Failures {
                    what,
                    count: *n,
                    first: first.clone(),
                })
                .collect(),
            aborted,
        }
    }
}

/// What a flood did.
#[derive(Debug, Clone, Default)]
pub struct FloodCounts {
    /// From the start of the attackers to the end of the last one.
    pub elapsed: Duration,
    pub never_read_frames: u64,
    /// Times the box dropped a peer that never reads.
    pub never_readers_dropped: u64,
    pub tls_less_opened: u64,
    /// 4 MiB frames of empty maps sent whole, and those the box answered
    /// `E_IDENTITY` (the rest: other answers, or none before the end).
    pub empty_map_frames: u64,
    pub empty_map_refused_identity: u64,
    /// Stalled connections, and those the box closed while they stalled.
    pub stalled: u64,
    pub stalled_closed_by_box: u64,
    /// Bytes the slow senders got written.
    pub slow_bytes: u64,
    pub box_status_accepted: u64,
    pub box_status_busy: u64,
    /// Attacker steps that failed (a connection refused or dropped, an
    /// answer missing), by kind.
    pub failures: Vec<Failures>,
    /// Attackers still running [`WIND_DOWN`] after the end, aborted.
    pub aborted: usize,
}

/// Attacker steps of one kind that failed.
#[derive(Debug, Clone)]
pub struct Failures {
    pub what: &'static str,
    pub count: u64,
    /// The first one's error, with its causes.
    pub first: String,
}

impl FloodCounts {
    /// One line: what every attacker did.
    pub fn describe(&self) -> String {
        format!(
            "{} connections without TLS; {} frames pipelined by peers that never read ({} drops); \
             {} frames of 4 MiB empty maps ({} E_IDENTITY); {} of {} stalled frames closed by the box; \
             {:.0} MiB sent slowly; box_status {} accepted, {} E_BUSY; {} attacker steps failed{}",
            self.tls_less_opened,
            self.never_read_frames,
            self.never_readers_dropped,
            self.empty_map_frames,
            self.empty_map_refused_identity,
            self.stalled_closed_by_box,
            self.stalled,
            self.slow_bytes as f64 / 1_048_576.0,
            self.box_status_accepted,
            self.box_status_busy,
            self.failures.iter().map(|f| f.count).sum::<u64>(),
            if self.aborted > 0 {
                format!("; {} aborted at the end", self.aborted)
            } else {
                String::new()
            }
        )
    }
}

/// The attackers' counters while they run.
#[derive(Default)]
struct Tally {
    never_read_frames: AtomicU64,
    never_readers_dropped: AtomicU64,
    empty_map_frames: AtomicU64,
    empty_map_refused_identity: AtomicU64,
    stalled: AtomicU64,
    stalled_closed_by_box: AtomicU64,
    slow_bytes: AtomicU64,
    box_status_accepted: AtomicU64,
    box_status_busy: AtomicU64,
    /// What failed: how often, and the first error.
    failures: std::sync::Mutex<std::collections::BTreeMap<&'static str, (u64, String)>>,
}

impl Tally {
    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn failed(&self, what: &'static str, e: &(dyn std::error::Error + 'static)) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = failures.entry(what).or_insert_with(|| (0, with_causes(e)));
        entry.0 += 1;
    }
}

/// `error: cause: cause …`.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Waits for the stalled connections to be closed or held to the end.
async fn hold_stalled(mut held: JoinSet<Stalled>, counts: Arc<Tally>) {
    while let Some(done) = held.join_next().await {
        counts.add(&counts.stalled, 1);
        if let Ok(s) = done {
            counts.add(&counts.stalled_closed_by_box, u64::from(s.closed));
        }
    }
}

/// One peer that pipelines without reading, connecting again each time
/// the box drops it, until `deadline` (at most 100 connections).
async fn never_read(
    target: FloodTarget,
    mix: FloodMix,
    i: usize,
    deadline: Instant,
    counts: Arc<Tally>,
) {
    for round in 0..100 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let connect = async {
            let tcp = tcp_from(target.core_side, IpAddr::from([127, 0, 0, 1]), Some(4096)).await?;
            tls_over(target.peer_tls.clone(), &target.the_box, tcp).await
        };
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|elapsed| Err(elapsed.into()));
        let tls = match connected {
            Ok(tls) => tls,
            Err(e) => {
                counts.failed("a peer that never reads could not connect", e.as_ref());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tag = format!("flood-nr{i}-{round}");
        let (sent, dropped) =
            pipeline_without_reading(tls, &target.peer, &tag, mix.never_reader_frames, left).await;
        counts.add(&counts.never_read_frames, sent as u64);
        counts.add(&counts.never_readers_dropped, u64::from(dropped));
    }
}

/// One IMS connection sending 4 MiB frames of empty maps one after the
/// other, waiting for each answer, until `deadline` or `each` frames.
async fn send_empty_maps(
    target: FloodTarget,
    i: usize,
    each: usize,
    deadline: Instant,
    counts: Arc<Tally>,
) {
    let left = deadline.saturating_duration_since(Instant::now());
    let link = Link::connect(
        target.agency_side,
        &target.the_box,
        target.ims_tls.clone(),
        Duration::from_secs(10),
        left + WIND_DOWN,
        DEFAULT_MAX_FRAME,
    )
    .await;
    let mut link = match link {
        Ok(link) => link,
        Err(e) => return counts.failed("a sender of empty maps could not connect", &e),
    };
    for n in 0..each {
        if Instant::now() >= deadline {
            break;
        }
        let bytes = match empty_maps_frame(&target.claimed_sender, &format!("flood-pad-{i}-{n}")) {
            Ok(bytes) => bytes,
            Err(e) => return counts.failed("a frame of empty maps could not be built", e.as_ref()),
        };
        counts.add(&counts.empty_map_frames, 1);
        match link.send_raw(&bytes).await {
            Ok(reply) => {
                let identity =
                    matches!(&reply.body, Body::Refused(r) if r.reason == Reason::Identity);
                counts.add(&counts.empty_map_refused_identity, u64::from(identity));
            }
            Err(e) => return counts.failed("a frame of empty maps was not answered", &e),
        }
    }
}

/// The peer box flooding `box_status`: rounds on fresh links until
/// `deadline` or `mix.box_status_rounds`.
async fn flood_status(target: FloodTarget, mix: FloodMix, deadline: Instant, counts: Arc<Tally>) {
    for round in 0..mix.box_status_rounds {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let link = Link::connect(
            target.core_side,
            &target.the_box,
            target.peer_tls.clone(),
            Duration::from_secs(5),
            Duration::from_secs(10),
            DEFAULT_MAX_FRAME,
        )
        .await;
        let link = match link {
            Ok(link) => link,
            Err(e) => {
                counts.failed("the box_status flood could not connect", &e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tag = format!("flood-st{round}");
        match flood_box_status(link, &target.peer, &tag, mix.box_status_frames, left).await {
            Ok(flood) => {
                counts.add(&counts.box_status_accepted, flood.accepted as u64);
                counts.add(&counts.box_status_busy, flood.busy as u64);
            }
            // A round cut short by the end of the flood is no failure.
            Err(_) if Instant::now() >= deadline => break,
            Err(e) => counts.failed("a round of the box_status flood failed", e.as_ref()),
        }
    }
}
