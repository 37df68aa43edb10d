//! Hostile and careless peers against a real box on loopback (issue 7,
//! items 1, 2 and 4, and their rows of item 8): a peer that pipelines
//! without ever reading is dropped after the write timeout, and every way
//! a connection ends gives its place back; a flood of connections that
//! never start TLS — from another address, or from the IMS's own — leaves
//! the IMS answered within a second and costs the access log a handful of
//! entries; peer boxes cannot take the core's reserve; a peer box sending
//! thousands of `box_status` frames meets its rate and gets `E_BUSY`
//! without the store growing. Every test is bounded in time and count.
//! The attackers themselves are `ifrelay_testkit::hostile`, which the
//! benchmark's flood mix runs all at once.

use std::net::SocketAddr;
use std::time::Duration;

use ifrelay::config::ConfigFile;
use ifrelay::net::Link;
use ifrelay::relay::channel::Listener;
use ifrelay_proto::{
    Body, BoxStatus, Frame, MessageId, Party, Reason, SerialNotice, SerialPurpose, SerialRequest,
    StatusEvent,
};
use ifrelay_store::Direction;
use ifrelay_testkit::hostile::{
    flood_box_status, ims_serial_requests, pipeline_without_reading, tcp_from, TlsLessFlood,
};
use ifrelay_testkit::testbed::{agencies, Testbed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The floods load both cores; tests of this file take turns.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn bed_with(tweak: impl Fn(&mut ConfigFile)) -> (tempfile::TempDir, Testbed) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Testbed::start_with(dir.path(), tweak)
        .await
        .expect("testbed starts");
    (dir, bed)
}

fn id(text: &str) -> MessageId {
    MessageId::new(text).expect("valid id")
}

fn frame(from: &Party, n: &str, body: Body) -> Frame {
    Frame::new(id(n), from.clone(), 0, body)
}

fn started() -> Body {
    Body::BoxStatus(BoxStatus {
        event: StatusEvent::Started,
    })
}

fn serial_request() -> Body {
    Body::SerialRequest(SerialRequest {
        purpose: SerialPurpose::Query,
    })
}

/// A serial no box ever issued: the engine answers `E_UNKNOWN_SERIAL`.
fn unknown_receipt() -> Body {
    Body::ProvisionReceived(SerialNotice {
        serial: "271004-20270101-1-1".parse().expect("serial"),
    })
}

/// A TLS connection as `me` to the box `server` at `addr`, over `tcp`.
async fn tls_over(
    bed: &Testbed,
    me: &Party,
    server: &Party,
    tcp: TcpStream,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let client = bed
        .pki
        .material(me)
        .expect("material")
        .client_config()
        .expect("client config");
    ifrelay_testkit::hostile::tls_over(client, server, tcp)
        .await
        .expect("handshake")
}

/// Waits until `what` holds, for at most 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The access-log entries after `seq` of the store at `path`, read after
/// its box has stopped.
fn log_after_stop(path: &std::path::Path, seq: u64) -> Vec<ifrelay_store::ChainedAccess> {
    let store = ifrelay_store::Store::open(path, 16 << 20).expect("the stopped box's store");
    let reader = store.reader();
    reader.access_log(seq + 1, 100_000).expect("log")
}

/// Sends `body` on a fresh link and returns the reply.
async fn ask(
    bed: &Testbed,
    me: &Party,
    server: &Party,
    addr: SocketAddr,
    n: &str,
    body: Body,
) -> Frame {
    let mut link = bed.pki.link(me, server, addr).await.expect("link");
    link.request(&frame(me, n, body)).await.expect("reply")
}

/// How long a peer that never reads goes on if the box does not drop it.
const NEVER_READ_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_dropped_and_every_exit_frees_its_slot() {
    let _turn = HEAVY.lock().await;
    const MAX: u64 = 8;
    let (_dir, bed) = bed_with(|f| {
        f.limits.io_timeout_ms = 1000;
        f.limits.max_connections = MAX;
        f.limits.reserved_connections = 2;
    })
    .await;
    let (a, b) = agencies();
    let (box_a, peer) = (Party::is(a.clone()), Party::is(b.clone()));
    let addr = bed.nodes[0].running().core_side;

    // Three peers pipeline 20,000 frames each and never read: each is
    // dropped once the box's writes stall for io_timeout (its buffers full
    // of replies), though the peer keeps sending. A small receive buffer
    // keeps the peer's side from taking megabytes of replies first.
    let started_at = Instant::now();
    let mut never_readers = Vec::new();
    for i in 0..3 {
        let tcp = tcp_from(addr, "127.0.0.1".parse().expect("ip"), Some(4096))
            .await
            .expect("tcp");
        let tls = tls_over(&bed, &peer, &box_a, tcp).await;
        let peer = peer.clone();
        never_readers.push(tokio::spawn(async move {
            pipeline_without_reading(tls, &peer, &format!("nr{i}"), 20_000, NEVER_READ_LIMIT).await
        }));
    }
    // Three more close abruptly (reset) while the box is writing to them.
    for i in 0..3 {
        let tcp = tcp_from(addr, "127.0.0.1".parse().expect("ip"), Some(4096))
            .await
            .expect("tcp");
        let mut tls = tls_over(&bed, &peer, &box_a, tcp).await;
        for n in 0..500 {
            let bytes = frame(&peer, &format!("cut{i}-{n}"), started()).encode();
            if tls.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = tls.flush().await;
        let _ = tls.get_ref().0.set_zero_linger();
        drop(tls);
    }
    for task in never_readers {
        let (sent, dropped) = task.await.expect("task");
        println!(
            "a peer that never reads: dropped after {sent} frames, {:?} from the start",
            started_at.elapsed()
        );
        assert!(
            dropped,
            "a peer that never reads was not dropped ({sent} frames written)"
        );
    }
    let dropped_after = started_at.elapsed();
    assert!(
        dropped_after < Duration::from_secs(20),
        "dropped only after {dropped_after:?}"
    );

    // Handshakes that fail, more of them than there are slots: garbage
    // instead of a ClientHello, and connections closed at once.
    for i in 0..(MAX + 10) {
        let mut tcp = TcpStream::connect(addr).await.expect("tcp");
        if i % 2 == 0 {
            let _ = tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        }
    }

    // Every place is given back...
    let running = bed.nodes[0].running();
    eventually("every connection of the box ended", || {
        running
            .connections()
            .iter()
            .all(|(_, o)| o.handshaking == 0 && o.waiting == 0 && o.authenticated == 0)
    })
    .await;
    // ...so max_connections + 10 fresh connections in a row are served.
    for i in 0..(MAX + 10) {
        let reply = ask(
            &bed,
            &peer,
            &box_a,
            addr,
            &format!("fresh-{i}"),
            unknown_receipt(),
        )
        .await;
        assert!(
            matches!(&reply.body, Body::Refused(r) if r.reason == Reason::UnknownSerial),
            "connection {i}: {reply:?}"
        );
    }

    // A peer that never reads does not hold up the box's stopping either.
    let tcp = tcp_from(addr, "127.0.0.1".parse().expect("ip"), Some(4096))
        .await
        .expect("tcp");
    let tls = tls_over(&bed, &peer, &box_a, tcp).await;
    let stuck = tokio::spawn({
        let peer = peer.clone();
        async move { pipeline_without_reading(tls, &peer, "stop", 1_000_000, NEVER_READ_LIMIT).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    bed.shutdown().await;
    let took = stopping.elapsed();
    println!("the box stopped in {took:?} with a peer that never reads");
    assert!(took < Duration::from_secs(8), "the stop took {took:?}");
    let (_, dropped) = stuck.await.expect("task");
    assert!(dropped, "the stopping box kept the connection");
}

/// Answer times of the IMS's serial requests for `period` (see
/// [`ims_serial_requests`]): over `link` when given, else each on a fresh
/// connection.
async fn ims_requests(
    bed: &Testbed,
    period: Duration,
    link: Option<Link>,
) -> Vec<Option<Duration>> {
    let (a, _) = agencies();
    let (ims, box_a) = (Party::ims(a.clone()), Party::is(a.clone()));
    let addr = bed.nodes[0].running().agency_side;
    let client = bed
        .pki
        .material(&ims)
        .expect("material")
        .client_config()
        .expect("client config");
    ims_serial_requests(addr, &ims, &box_a, client, ("flood-ims", period), link).await
}

/// Runs a flood of `conns` connections without TLS from `from` to the
/// agency side for `period`, while the IMS asks for serials (over `link`,
/// or a fresh connection each time); checks the IMS's answer times and
/// what the flood cost the access log and the store.
async fn flood_while_the_ims_asks(from: &str, conns: usize, link_first: bool) {
    let (_dir, bed) = bed_with(|_| {}).await;
    let (a, _) = agencies();
    let running = bed.nodes[0].running();
    let addr = running.agency_side;
    let reader = running.reader().clone();
    let store = bed.nodes[0].config.store.path.clone();
    let link = if link_first {
        let (ims, box_a) = (Party::ims(a.clone()), Party::is(a.clone()));
        Some(bed.pki.link(&ims, &box_a, addr).await.expect("link"))
    } else {
        None
    };
    let last_seq = reader.access_count().expect("count");
    let size_before = std::fs::metadata(&store).expect("store").len();

    // Bounded by the stop below; these bounds only guard against a hang.
    let flood = TlsLessFlood::start(
        addr,
        from.parse().expect("ip"),
        conns,
        Instant::now() + Duration::from_secs(60),
        10_000_000,
    );
    // Let the flood reach its pace first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let times = ims_requests(&bed, Duration::from_secs(10), link).await;
    let opened = flood.stop();

    let answered: Vec<Duration> = times.iter().flatten().copied().collect();
    let within = answered
        .iter()
        .filter(|t| **t <= Duration::from_secs(1))
        .count();
    let mut sorted = answered.clone();
    sorted.sort();
    let worst = sorted.last().copied().unwrap_or_default();
    let p99 = sorted
        .get(sorted.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    println!(
        "flood from {from}: {opened} connections; IMS {} requests, {} answered, {within} within 1 s, p99 {p99:?}, worst {worst:?}",
        times.len(),
        answered.len()
    );
    assert!(opened > 2 * conns as u64, "the flood did not run: {opened}");
    assert!(times.len() >= 100, "too few IMS requests: {}", times.len());
    assert!(
        within * 100 >= times.len() * 99,
        "{within} of {} IMS requests answered within 1 s",
        times.len()
    );

    // What the flood cost: a few coalesced entries (the rest counted in
    // them), however many connections were refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let entries = reader.access_log(last_seq + 1, 100_000).expect("log");
    let flood_entries: Vec<_> = entries
        .iter()
        .filter(|e| e.entry.direction == Direction::Connection)
        .collect();
    println!(
        "access log: {} entries from the flood, {} in all; store +{} bytes",
        flood_entries.len(),
        entries.len(),
        std::fs::metadata(&store)
            .expect("store")
            .len()
            .saturating_sub(size_before)
    );
    assert!(!flood_entries.is_empty(), "refused connections are logged");
    assert!(flood_entries.len() <= 20, "{flood_entries:#?}");
    bed.shutdown().await;
    // The counts of the periods still open are written at the stop.
    let entries = log_after_stop(&store, last_seq);
    let summed: u64 = entries
        .iter()
        .filter(|e| e.entry.direction == Direction::Connection)
        .filter_map(|e| e.entry.operation.split_once(" x"))
        .map(|(_, n)| n.parse::<u64>().expect("count"))
        .sum();
    let flood_entries = entries
        .iter()
        .filter(|e| e.entry.direction == Direction::Connection)
        .count();
    println!("after the stop: {flood_entries} entries standing for {summed} more refusals");
    assert!(flood_entries <= 20);
    assert!(summed > conns as u64, "the refusals were counted: {summed}");
    // The IMS's own serials (one entry each) and the flood's few entries:
    // nothing like the megabytes of an entry per refused connection.
    let growth = std::fs::metadata(&store)
        .expect("store")
        .len()
        .saturating_sub(size_before);
    assert!(growth <= 4 << 20, "store grew {growth} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_tls_from_another_address_leaves_the_ims_answered() {
    let _turn = HEAVY.lock().await;
    // The IMS connects afresh for every request, from 127.0.0.1: the
    // flood from 127.0.0.2 uses up only its own address's handshakes.
    flood_while_the_ims_asks("127.0.0.2", 500, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_tls_from_the_ims_address_leaves_its_connection_answered() {
    let _turn = HEAVY.lock().await;
    // The flood comes from the IMS's own address, so new handshakes from
    // there are refused while it lasts; the IMS's authenticated
    // connection holds a slot no handshake can take.
    flood_while_the_ims_asks("127.0.0.1", 500, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_boxes_cannot_take_the_core_reserve() {
    let _turn = HEAVY.lock().await;
    let (_dir, bed) = bed_with(|f| {
        f.limits.max_connections = 6;
        f.limits.reserved_connections = 2;
    })
    .await;
    let (a, b) = agencies();
    let (box_a, peer) = (Party::is(a.clone()), Party::is(b.clone()));
    let running = bed.nodes[0].running();
    let addr = running.core_side;
    // Four peer connections fill the shared part...
    let mut held = Vec::new();
    for i in 0..4 {
        let mut link = bed.pki.link(&peer, &box_a, addr).await.expect("link");
        let reply = link
            .request(&frame(&peer, &format!("hold-{i}"), unknown_receipt()))
            .await
            .expect("served");
        assert!(matches!(&reply.body, Body::Refused(r) if r.reason == Reason::UnknownSerial));
        held.push(link);
    }
    // ...a fifth gets one E_BUSY frame and is closed...
    let mut fifth = bed.pki.link(&peer, &box_a, addr).await.expect("handshake");
    let reply = fifth
        .send_raw(&frame(&peer, "fifth", unknown_receipt()).encode())
        .await
        .expect("a refusal");
    assert!(
        matches!(&reply.body, Body::Refused(r) if r.reason == Reason::Busy && r.in_reply_to.is_none()),
        "{reply:?}"
    );
    // ...while the core still gets a slot from the reserve.
    let core = Party::core();
    let reply = ask(&bed, &core, &box_a, addr, "core-1", started()).await;
    assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");
    let core_side = || {
        running
            .connections()
            .into_iter()
            .find(|(l, _)| *l == Listener::CoreSide)
            .expect("core side")
            .1
    };
    assert!(core_side().authenticated >= 4);
    drop((held, fifth));
    // Only the core simulator's own links, if any, remain.
    eventually("the peers' slots are given back", || {
        core_side().authenticated <= 2
    })
    .await;
    let reply = ask(&bed, &peer, &box_a, addr, "after", unknown_receipt()).await;
    assert!(matches!(&reply.body, Body::Refused(r) if r.reason == Reason::UnknownSerial));
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_box_flooding_box_status_meets_its_rate() {
    let _turn = HEAVY.lock().await;
    const FRAMES: usize = 20_000;
    let (_dir, bed) = bed_with(|_| {}).await;
    let (a, b) = agencies();
    let (box_a, peer) = (Party::is(a.clone()), Party::is(b.clone()));
    let running = bed.nodes[0].running();
    let reader = running.reader().clone();
    let store = bed.nodes[0].config.store.path.clone();
    let last_seq = reader.access_count().expect("count");
    let size_before = std::fs::metadata(&store).expect("store").len();
    let inputs_before = running.stats().inputs;

    let link = bed
        .pki
        .link(&peer, &box_a, running.core_side)
        .await
        .expect("link");
    // Every reply accepted or E_BUSY, all within a minute; the link stays
    // open until the end of the test.
    let flood = flood_box_status(link, &peer, "st", FRAMES, Duration::from_secs(60))
        .await
        .expect("all answered accepted or E_BUSY within a minute");
    let (accepted, busy, elapsed) = (flood.accepted, flood.busy, flood.elapsed);
    println!("{FRAMES} box_status in {elapsed:?}: {accepted} accepted, {busy} E_BUSY");
    // The default rate: a burst of 10, then one a second.
    let allowed = 10 + elapsed.as_secs() as usize + 2;
    assert!(accepted >= 10 && accepted <= allowed, "{accepted} accepted");
    assert_eq!(accepted + busy, FRAMES);
    // The refused frames never reached the engine...
    let inputs = running.stats().inputs - inputs_before;
    assert!(inputs < 100, "{inputs} engine inputs");
    // ...and cost the access log one entry, whose count follows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let entries = reader.access_log(last_seq + 1, 100_000).expect("log");
    let busy_entries = entries
        .iter()
        .filter(|e| e.entry.outcome == "E_BUSY" && e.entry.operation.starts_with("box_status"))
        .count();
    assert_eq!(busy_entries, 1, "one entry for the first refusal");
    assert!(entries.len() <= accepted + 5, "{} entries", entries.len());
    let growth = std::fs::metadata(&store)
        .expect("store")
        .len()
        .saturating_sub(size_before);
    println!(
        "store +{growth} bytes, {} access-log entries",
        entries.len()
    );
    assert!(growth <= 1 << 20, "store grew {growth} bytes");
    bed.shutdown().await;
    let entries = log_after_stop(&store, last_seq);
    let counted: u64 = entries
        .iter()
        .filter(|e| e.entry.outcome == "E_BUSY")
        .filter_map(|e| e.entry.operation.strip_prefix("box_status x"))
        .map(|n| n.parse::<u64>().expect("count"))
        .sum();
    assert_eq!(counted as usize, busy - 1, "the summary counts the rest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_box_beyond_its_rate_gets_e_busy_and_its_garbage_is_logged_coalesced() {
    let _turn = HEAVY.lock().await;
    let (_dir, bed) = bed_with(|f| {
        f.rates.peer_per_s = 1;
        f.rates.peer_burst = 20;
    })
    .await;
    let (a, b) = agencies();
    let (box_a, peer) = (Party::is(a.clone()), Party::is(b.clone()));
    let running = bed.nodes[0].running();
    let reader = running.reader().clone();
    let last_seq = reader.access_count().expect("count");
    let mut link = bed
        .pki
        .link(&peer, &box_a, running.core_side)
        .await
        .expect("link");
    // Undecodable frames are answered as ever, but beyond the peer's rate
    // they no longer cost an entry each.
    for i in 0..300u32 {
        let reply = link
            .send_raw(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, (i & 0xff) as u8])
            .await
            .expect("answered");
        assert!(matches!(&reply.body, Body::Refused(r) if r.reason == Reason::Malformed));
    }
    // The bucket is empty: a well-formed frame gets E_BUSY naming it.
    let reply = link
        .request(&frame(&peer, "after-garbage", unknown_receipt()))
        .await
        .expect("answered");
    match &reply.body {
        Body::Refused(r) => {
            assert_eq!(r.reason, Reason::Busy);
            assert!(r.text.contains("rates.peer_*"), "{}", r.text);
        }
        other => panic!("not refused: {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let entries = reader.access_log(last_seq + 1, 100_000).expect("log");
    let malformed = entries
        .iter()
        .filter(|e| e.entry.outcome == "E_MALFORMED")
        .count();
    println!("300 garbage frames: {malformed} E_MALFORMED entries");
    assert!((20..=24).contains(&malformed), "{malformed} entries");
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_from_the_ims_waits_in_line_and_is_served() {
    let _turn = HEAVY.lock().await;
    const BURST: usize = 32;
    let (_dir, bed) = bed_with(|_| {}).await;
    let (a, _) = agencies();
    let (ims, box_a) = (Party::ims(a.clone()), Party::is(a.clone()));
    let addr = bed.nodes[0].running().agency_side;
    let client = bed
        .pki
        .material(&ims)
        .expect("material")
        .client_config()
        .expect("client config");
    // Four times the address's 8 handshake places, all at once: those
    // over the places wait in line instead of being reset.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let (client, ims, box_a) = (client.clone(), ims.clone(), box_a.clone());
        set.spawn(async move {
            let mut link = Link::connect(
                addr,
                &box_a,
                client,
                Duration::from_secs(5),
                Duration::from_secs(10),
                ifrelay_proto::frame::DEFAULT_MAX_FRAME,
            )
            .await
            .map_err(|e| e.to_string())?;
            let reply = link
                .request(&frame(&ims, &format!("burst-{i}"), serial_request()))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(matches!(reply.body, Body::SerialIssued(_)))
        });
    }
    let mut served = 0;
    while let Some(done) = set.join_next().await {
        match done.expect("task") {
            Ok(true) => served += 1,
            other => panic!("a connection of the burst was not served: {other:?}"),
        }
    }
    assert_eq!(served, BURST);
    bed.shutdown().await;
}
