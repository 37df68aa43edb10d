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
//! Both are bounded: sixteen frames, and a flood of eight seconds. The
//! attackers themselves are `ifrelay_testkit::hostile`, which the
//! benchmark's flood mix runs all at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ifrelay::config::ConfigFile;
use ifrelay::net::Link;
use ifrelay_proto::frame::DEFAULT_MAX_FRAME;
use ifrelay_proto::{Body, Party, Reason};
use ifrelay_testkit::bench::machine::memory_kib;
use ifrelay_testkit::hostile::{
    announce_and_stall, authenticated_connections, empty_maps_frame, send_slowly, Tls,
};
use ifrelay_testkit::testbed::{agencies, prefix, Testbed, TestbedOptions};
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
        let frame = empty_maps_frame(&Party::ims(b.clone()), &format!("pad-{i}")).expect("frame");
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

/// `count` authenticated TLS connections as `me` to `server` at `addr`
/// (see [`authenticated_connections`]).
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
    authenticated_connections(client, server, addr, count)
        .await
        .expect("an authenticated connection")
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
    let stalled = connections(&bed, &Party::is(b.clone()), &own, core_side, 200).await;
    // 250 IMS connections will send 4 MiB − 1 of a 4 MiB frame, slowly.
    let slow = connections(&bed, &ims, &own, agency_side, 250).await;
    let (_, connected) = memory(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let (most, sampler) = sample(pid, stop.clone());
    // Each held until the box closes it (or the flood ends); one in ten
    // sends 64 KiB of its frame first.
    let mut dropped_by_timeout = announce_and_stall(stalled, 10, FLOOD.max(STALL_DROPPED_WITHIN))
        .await
        .expect("announcements");
    let sent = Arc::new(AtomicU64::new(0));
    let mut senders = JoinSet::new();
    for tls in slow {
        senders.spawn(send_slowly(tls, SLOW_PIECE, FLOOD, sent.clone()));
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
        let stalled = done.expect("staller");
        stalls += 1;
        stalls_dropped += usize::from(stalled.closed && stalled.after <= STALL_DROPPED_WITHIN);
        drop(stalled.tls);
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
