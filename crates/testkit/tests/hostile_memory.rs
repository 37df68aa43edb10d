//! Hostile peers against the box's memory (issue 7, item 3, and its rows
//! of item 8), each against a real `ifrelay run` child process over
//! loopback, with its resident set read from `/proc/<pid>/status`:
//!
//! - sixteen authenticated connections each send one 4 MiB frame holding
//!   about four million empty maps under a key no type defines, refused
//!   `E_IDENTITY` afterwards, all at once: the box's peak resident set
//!   (`VmHWM`) stays at most 128 MiB (it grew by about 130 MiB per frame
//!   when the decoder built the tree);
//! - 200 authenticated connections announce a 4 MiB frame and stall (some
//!   after sending part of it), while 250 more send 4 MiB − 1 bytes slowly:
//!   the resident set stays at most 128 MiB throughout, a query flow of
//!   the own IMS still completes, and once they are gone the resident set
//!   is back near where it was (it grew by about a gigabyte and kept
//!   389 MB when every announced body was allocated up front).
//!
//! Both are bounded: sixteen frames, and a flood of eight seconds.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ciborium::Value;
use ifrelay::config::ConfigFile;
use ifrelay::net::Link;
use ifrelay_proto::frame::DEFAULT_MAX_FRAME;
use ifrelay_proto::{Body, Party, Reason};
use ifrelay_testkit::bench::machine::memory_kib;
use ifrelay_testkit::testbed::{agencies, prefix, Testbed, TestbedOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The bound of issue 7: peak resident set of a box, in KiB.
const LIMIT_KIB: u64 = 128 * 1024;

/// How far above its resident set before the flood a box may stay once
/// the flood is gone, in KiB: what the allocator keeps for reuse of the
/// 450 connections' TLS state (13 MiB while they are open) and buffers,
/// and the store's pages touched by the flows that ran meanwhile. 14 MiB
/// (debug) to 18 MiB (release) were measured; the old box kept 20 MiB of
/// a smaller flood, and 389 MB of the issue's.
const SETTLE_MARGIN_KIB: u64 = 32 * 1024;

/// The floods load both cores; tests of this file take turns.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A testbed whose boxes run as `ifrelay run` child processes.
async fn bed(tweak: impl Fn(&mut ConfigFile)) -> (tempfile::TempDir, Testbed) {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = TestbedOptions {
        child_binary: Some(ifrelay_testkit::firmware::binary().expect("firmware binary")),
        ..TestbedOptions::default()
    };
    let bed = Testbed::start_opts(dir.path(), &tweak, options)
        .await
        .expect("testbed starts");
    (dir, bed)
}

/// Process id of box `i`.
fn pid(bed: &Testbed, i: usize) -> u32 {
    bed.nodes[i]
        .child
        .as_ref()
        .expect("the box runs as a child process")
        .pid()
}

/// (peak, current) resident set of `pid`, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    memory_kib(pid).expect("/proc/<pid>/status of the box")
}

/// Samples the resident set of `pid` until `stop`, keeping the highest.
fn sample(pid: u32, stop: Arc<AtomicBool>) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let most = Arc::new(AtomicU64::new(0));
    let keep = most.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Some((_, rss)) = memory_kib(pid) {
                keep.fetch_max(rss, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (most, task)
}

/// The length prefix and head of a `serial_request` body from `from`
/// whose last key, `x_pad`, holds an array of `n` empty maps (not
/// included).
fn head_with_pad(from: &Party, id: &str, n: u32) -> Vec<u8> {
    let head = [
        ("v", Value::Integer(1.into())),
        ("id", Value::Text(id.into())),
        ("type", Value::Text("serial_request".into())),
        ("sent_at", Value::Integer(1_700_000_000_000i64.into())),
        ("from", Value::serialized(from).expect("party")),
        ("purpose", Value::Text("query".into())),
    ];
    let mut body = vec![0xa0 | (head.len() as u8 + 1)];
    for (k, v) in head {
        ciborium::into_writer(&Value::Text(k.into()), &mut body).expect("vec");
        ciborium::into_writer(&v, &mut body).expect("vec");
    }
    ciborium::into_writer(&Value::Text("x_pad".into()), &mut body).expect("vec");
    body.push(0x9a);
    body.extend_from_slice(&n.to_be_bytes());
    let len = u32::try_from(body.len() + n as usize).expect("fits");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A whole 4 MiB frame of empty maps under `x_pad`.
fn empty_maps_frame(from: &Party, id: &str) -> Vec<u8> {
    let fixed = head_with_pad(from, id, 0).len() - 4;
    let n = u32::try_from(DEFAULT_MAX_FRAME - fixed).expect("fits");
    let mut frame = head_with_pad(from, id, n);
    frame.resize(4 + DEFAULT_MAX_FRAME, 0xa0);
    frame
}

/// How long a debug build of the box, on a loaded machine, may take to
/// read and decode sixteen frames of four million items.
const SLOW_BUILD: Duration = Duration::from_secs(300);

/// A link as `me` to the box `server` at `addr`, waiting up to
/// [`SLOW_BUILD`] for replies.
async fn link(bed: &Testbed, me: &Party, server: &Party, addr: SocketAddr) -> Link {
    let tls = bed
        .pki
        .material(me)
        .expect("material")
        .client_config()
        .expect("client config");
    Link::connect(
        addr,
        server,
        tls,
        Duration::from_secs(10),
        SLOW_BUILD,
        DEFAULT_MAX_FRAME,
    )
    .await
    .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_frames_of_four_million_empty_maps_keep_the_box_under_128_mib() {
    let _heavy = HEAVY.lock().await;
    let (_dir, bed) = bed(|f| {
        // A debug build scans a body of four million items in seconds, and
        // sixteen queue for two cores; the frames behind wait meanwhile for
        // the budget the queued bodies hold, longer than the default read
        // timeout (a release build takes a fraction of a second a body).
        f.limits.io_timeout_ms = SLOW_BUILD.as_millis() as u64;
    })
    .await;
    let pid = pid(&bed, 0);
    let (a, b) = agencies();
    let ims = Party::ims(a.clone());
    let own = Party::is(a.clone());
    let agency_side = bed.nodes[0].ims.box_addr();
    // A flow first, so the resident set before includes what one costs.
    bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("a flow before");
    let (_, before) = memory(pid);

    let mut links = Vec::new();
    for _ in 0..16 {
        links.push(link(&bed, &ims, &own, agency_side).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (most, sampler) = sample(pid, stop.clone());
    let started = Instant::now();
    let mut sends = JoinSet::new();
    for (i, mut link) in links.into_iter().enumerate() {
        // Claims to come from the other agency's IMS: read whole, decoded,
        // then refused for the identity.
        let frame = empty_maps_frame(&Party::ims(b.clone()), &format!("pad-{i}"));
        sends.spawn(async move { link.send_raw(&frame).await });
    }
    let flow = bed.nodes[0].ims.run_query(prefix(&a, &b, "JM010"));
    let (flow, ()) = tokio::join!(flow, async {
        while let Some(sent) = sends.join_next().await {
            let reply = sent.expect("task").expect("a reply to every frame");
            match reply.body {
                Body::Refused(r) => assert_eq!(r.reason, Reason::Identity, "{}", r.text),
                other => panic!("expected E_IDENTITY, got {other:?}"),
            }
        }
    });
    let took = started.elapsed();
    flow.expect("a flow during the frames completes");
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let (peak, after) = memory(pid);
    eprintln!(
        "16 × 4 MiB of empty maps in {took:?}: box VmRSS before {before} KiB, highest sampled {} KiB, after {after} KiB, VmHWM {peak} KiB",
        most.load(Ordering::Relaxed)
    );
    assert!(
        peak <= LIMIT_KIB,
        "peak resident set {peak} KiB exceeds {LIMIT_KIB} KiB"
    );
    bed.shutdown().await;
}

/// A TCP connection to `addr` from `local`.
async fn tcp_from(addr: SocketAddr, local: IpAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// `count` authenticated TLS connections as `me` to `server` at `addr`,
/// handshaking a few at a time from several loopback addresses (the box
/// bounds handshakes per source).
async fn connections(
    bed: &Testbed,
    me: &Party,
    server: &Party,
    addr: SocketAddr,
    count: usize,
) -> Vec<Tls> {
    let client = bed
        .pki
        .material(me)
        .expect("material")
        .client_config()
        .expect("client config");
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ifrelay_tls::identity::server_name(server).expect("name");
    let mut out = Vec::with_capacity(count);
    let mut n = 0u8;
    while out.len() < count {
        let batch = (count - out.len()).min(16);
        let mut set = JoinSet::new();
        for _ in 0..batch {
            n = n.wrapping_add(1);
            let local = IpAddr::from([127, 0, 1, 1 + n % 32]);
            let (connector, name) = (connector.clone(), name.clone());
            set.spawn(async move {
                let tcp = tcp_from(addr, local).await?;
                connector.connect(name, tcp).await
            });
        }
        while let Some(done) = set.join_next().await {
            out.push(done.expect("task").expect("an authenticated connection"));
        }
    }
    out
}

/// How long the slow senders and the flows go on.
const FLOOD: Duration = Duration::from_secs(8);

/// What each slow sender writes every 100 ms: 250 of them offer 40 MB/s,
/// so a box that kept whatever arrived would pass 128 MiB within seconds.
const SLOW_PIECE: usize = 16 * 1024;

/// The read timeout of the flooded box.
const IO_TIMEOUT_MS: u64 = 3000;

/// How long a peer stalled in the middle of a frame may last: the wait for
/// room to finish its frame (it may have to queue behind the others), then
/// the read timeout, and three seconds of scheduling on a loaded machine.
const STALL_DROPPED_WITHIN: Duration = Duration::from_millis(2 * IO_TIMEOUT_MS + 3000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_slow_frames_stay_under_128_mib_and_are_given_back() {
    let _heavy = HEAVY.lock().await;
    let (_dir, bed) = bed(|f| {
        f.limits.max_connections = 600;
        // Peers that stall holding part of a frame are dropped after this.
        f.limits.io_timeout_ms = IO_TIMEOUT_MS;
    })
    .await;
    let pid = pid(&bed, 0);
    let (a, b) = agencies();
    let ims = Party::ims(a.clone());
    let own = Party::is(a.clone());
    let agency_side = bed.nodes[0].ims.box_addr();
    let core_side = bed.nodes[0].config.listen.core_side;
    bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("a flow before");
    let (_, before) = memory(pid);

    // 200 peer boxes announce a 4 MiB frame and stall; one in ten sends
    // 64 KiB of it first (those the read timeout must drop).
    let mut stalled = connections(&bed, &Party::is(b.clone()), &own, core_side, 200).await;
    // 250 IMS connections will send 4 MiB − 1 of a 4 MiB frame, slowly.
    let slow = connections(&bed, &ims, &own, agency_side, 250).await;
    let (_, connected) = memory(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let (most, sampler) = sample(pid, stop.clone());
    let announce = u32::try_from(DEFAULT_MAX_FRAME)
        .expect("fits")
        .to_be_bytes();
    let mut dropped_by_timeout = JoinSet::new();
    for (i, tls) in stalled.iter_mut().enumerate() {
        tls.write_all(&announce).await.expect("prefix");
        if i % 10 == 0 {
            tls.write_all(&[0xa0; 64 * 1024]).await.expect("part");
        }
        tls.flush().await.expect("flush");
    }
    for (i, tls) in stalled.drain(..).enumerate() {
        let part = i % 10 == 0;
        dropped_by_timeout.spawn(async move {
            // Hold the connection; the box closes it (or the flood ends).
            let mut tls = tls;
            let mut buf = [0u8; 64];
            let t0 = Instant::now();
            let closed = tokio::time::timeout(
                FLOOD.max(STALL_DROPPED_WITHIN),
                tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
            )
            .await
            .is_ok();
            (part, closed, t0.elapsed(), tls)
        });
    }
    let sent = Arc::new(AtomicU64::new(0));
    let mut senders = JoinSet::new();
    for tls in slow {
        let sent = sent.clone();
        senders.spawn(async move {
            let mut tls = tls;
            let deadline = Instant::now() + FLOOD;
            if tls.write_all(&announce).await.is_err() {
                return tls;
            }
            let mut left = DEFAULT_MAX_FRAME - 1;
            let piece = [0xa0u8; SLOW_PIECE];
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
        });
    }

    // The own IMS goes on meanwhile.
    let flows_started = Instant::now();
    let mut flows = 0;
    while flows_started.elapsed() < FLOOD - Duration::from_secs(2) {
        bed.nodes[0]
            .ims
            .run_query(prefix(&a, &b, "JM010"))
            .await
            .expect("a flow during the flood completes");
        flows += 1;
    }
    let mut held = Vec::new();
    while let Some(tls) = senders.join_next().await {
        held.push(tls.expect("sender"));
    }
    // Every stalled peer is gone by now: those that only announced their
    // frame after one read timeout, those that sent part of it after at
    // most two (their frame may have waited for room to finish).
    let mut stalls_dropped = 0;
    let mut stalls = 0;
    while let Some(done) = dropped_by_timeout.join_next().await {
        let (_part, closed, after, tls) = done.expect("staller");
        stalls += 1;
        stalls_dropped += usize::from(closed && after <= STALL_DROPPED_WITHIN);
        drop(tls);
    }
    let during = most.load(Ordering::Relaxed);
    // Everyone goes away; the box must give back what they held.
    drop(held);
    let gone = Instant::now();
    let mut settled;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        settled = memory(pid).1;
        if settled <= before + SETTLE_MARGIN_KIB || gone.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let (peak, _) = memory(pid);
    eprintln!(
        "200 stalled + 250 slow for {FLOOD:?}: {} MiB offered by the slow senders; {flows} flows; \
         box VmRSS before {before} KiB, connected {connected} KiB, highest sampled {during} KiB, \
         {settled} KiB {:?} after they closed; VmHWM {peak} KiB; {stalls_dropped} of {stalls} \
         stalled peers dropped by the read timeout",
        sent.load(Ordering::Relaxed) >> 20,
        gone.elapsed(),
    );
    assert!(flows >= 1, "no flow completed during the flood");
    assert!(
        peak <= LIMIT_KIB,
        "peak resident set {peak} KiB exceeds {LIMIT_KIB} KiB"
    );
    assert_eq!(
        stalls_dropped, stalls,
        "a peer stalled in the middle of a frame lasts beyond the read timeout"
    );
    assert!(
        settled <= before + SETTLE_MARGIN_KIB,
        "resident set {settled} KiB after the flood, {before} KiB before"
    );
    bed.shutdown().await;
}
