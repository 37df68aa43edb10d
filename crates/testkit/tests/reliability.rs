//! Keeping promises when things go wrong: duplicate frames are answered
//! again but never handled twice (DESIGN "Wire format"); a step that is not
//! answered in time closes its process and tells the parties (R-COM-2); an
//! unreachable or too slow next hop is retried, then the process is closed
//! (R-COM-2);
//! a peer announcing it stops closes what waits on it; the box announces
//! its start and stop (R-COM-3); outside service hours new processes are
//! refused (R-AV-1).

use std::time::Duration;

use ifrelay::config::ConfigFile;
use ifrelay_proto::{
    Body, BoxStatus, Frame, MessageId, Party, PermitRequest, PrefixCheck, PrefixResult, Reason,
    Serial, SerialPurpose, SerialRequest, StatusEvent,
};
use ifrelay_testkit::sim::ims::FlowErrorKind;
use ifrelay_testkit::testbed::{agencies, prefix, Testbed};

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

/// Issues a serial and binds the testbed's A→B prefix; returns the serial.
async fn bound_serial(bed: &Testbed) -> Serial {
    let (a, b) = agencies();
    let reply = bed.nodes[0]
        .ims
        .send(Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        }))
        .await
        .expect("serial");
    let Body::SerialIssued(issued) = reply.body else {
        panic!("no serial: {reply:?}")
    };
    let reply = bed.nodes[0]
        .ims
        .send(Body::PrefixCheck(PrefixCheck {
            serial: issued.serial.clone(),
            prefix: prefix(&a, &b, "JM010"),
        }))
        .await
        .expect("prefix check");
    assert!(matches!(
        reply.body,
        Body::PrefixResult(PrefixResult { ok: true, .. })
    ));
    issued.serial
}

/// The reply must be a refusal with `reason`.
fn assert_refused(reply: &Frame, reason: Reason) {
    assert!(
        matches!(&reply.body, Body::Refused(r) if r.reason == reason),
        "wanted {reason}: {reply:?}"
    );
}

/// Sends a permit request for `serial` as box A's IMS over a fresh link
/// (its simulator may be gone) and expects it accepted.
async fn request_permit_directly(bed: &Testbed, serial: &Serial, message_id: &str) {
    let (a, b) = agencies();
    let (ims, box_a) = (Party::ims(a.clone()), Party::is(a.clone()));
    let mut link = bed
        .pki
        .link(&ims, &box_a, bed.nodes[0].running().agency_side)
        .await
        .expect("link");
    let request = Frame::new(
        id(message_id),
        ims,
        0,
        Body::PermitRequest(PermitRequest {
            serial: serial.clone(),
            prefix: prefix(&a, &b, "JM010"),
        }),
    );
    let reply = link.request(&request).await.expect("permit request");
    assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");
}

/// Waits until the core has a `process_error` with `reason` for `serial`.
async fn core_hears(bed: &Testbed, serial: &Serial, reason: Reason, what: &str) {
    let core = &bed.core;
    eventually(what, || {
        core.stats()
            .process_errors
            .iter()
            .any(|(_, e)| &e.serial == serial && e.reason == reason)
    })
    .await;
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_frame_gets_the_same_answer_and_is_handled_once() {
    let (_dir, bed) = bed_with(|_| {}).await;
    let (a, _) = agencies();
    let ims = Party::ims(a.clone());
    let mut link = bed
        .pki
        .link(
            &ims,
            &Party::is(a.clone()),
            bed.nodes[0].running().agency_side,
        )
        .await
        .expect("link");
    let request = Frame::new(
        id("dup-1"),
        ims.clone(),
        1,
        Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        }),
    );
    let first = link.request(&request).await.expect("first");
    // The same frame again, sent later (another sent_at), as a sender
    // whose first reply was lost would.
    let mut again = request.clone();
    again.header.sent_at = 2;
    let second = link.request(&again).await.expect("second");
    let (Body::SerialIssued(x), Body::SerialIssued(y)) = (&first.body, &second.body) else {
        panic!("{first:?} / {second:?}")
    };
    assert_eq!(x.serial, y.serial, "the same serial, not a second one");
    let reader = bed.nodes[0].running().reader();
    let log = reader.access_log(0, 10_000).expect("log");
    assert!(log
        .iter()
        .any(|e| e.entry.message_id.as_deref() == Some("dup-1") && e.entry.outcome == "duplicate"));

    // The same id under another sender's name is an identity lie first.
    let mut forged = request.clone();
    forged.header.from = Party::ims(agencies().1);
    let reply = link.request(&forged).await.expect("answered");
    assert_refused(&reply, Reason::Identity);

    // The same id for a different frame is refused.
    let other = Frame::new(
        id("dup-1"),
        ims.clone(),
        3,
        Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::CodeIssue,
        }),
    );
    let reply = link.request(&other).await.expect("answered");
    assert_refused(&reply, Reason::Duplicate);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_that_never_comes_times_out_and_both_parties_are_told() {
    let (_dir, bed) = bed_with(|f| f.timeouts.permit_ms = 400).await;
    let (a, b) = agencies();
    // The core accepts the request but cannot reach box A with the permit.
    bed.core
        .register_box(a.clone(), "127.0.0.1:9".parse().expect("addr"));
    let serial = bound_serial(&bed).await;
    let reply = bed.nodes[0]
        .ims
        .send(Body::PermitRequest(PermitRequest {
            serial: serial.clone(),
            prefix: prefix(&a, &b, "JM010"),
        }))
        .await
        .expect("permit request");
    assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");
    let ims = bed.nodes[0].ims.clone();
    eventually("the IMS hears of the timeout", || {
        ims.stats()
            .process_errors
            .iter()
            .any(|e| e.serial == serial && e.reason == Reason::Timeout)
    })
    .await;
    let core = &bed.core;
    eventually("the core hears of the timeout", || {
        core.stats()
            .process_errors
            .iter()
            .any(|(_, e)| e.serial == serial && e.reason == Reason::Timeout)
    })
    .await;
    assert_eq!(
        bed.nodes[0]
            .running()
            .reader()
            .process_count()
            .expect("count"),
        0,
        "the process is closed and its binding erased"
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ims_closes_the_process_after_the_retries_and_the_core_is_told() {
    let (_dir, bed) = bed_with(|f| {
        f.timeouts.retry_count = 2;
        f.timeouts.retry_backoff_ms = 20;
        f.timeouts.connect_ms = 200;
        // The stopping notice to the vanished IMS cannot drain.
        f.timeouts.shutdown_grace_ms = 300;
    })
    .await;
    let serial = bound_serial(&bed).await;
    // The IMS goes away: the permit the box relays to it cannot arrive.
    // Restarting the box then queues its undeliverable "started" notice —
    // an entry kept forever — ahead of the permit: giving up must still
    // find the permit behind it.
    bed.nodes[0].ims.shutdown().await;
    let mut bed = bed;
    bed.stop_box(0).await;
    bed.start_box(0).await.expect("box restarts");
    request_permit_directly(&bed, &serial, "perm-1").await;
    core_hears(
        &bed,
        &serial,
        Reason::PeerUnreachable,
        "the IMS was unreachable",
    )
    .await;
    let reader = bed.nodes[0].running().reader();
    assert_eq!(reader.process_count().expect("count"), 0);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_stopping_closes_what_waits_on_it() {
    let (_dir, bed) = bed_with(|_| {}).await;
    let (a, b) = agencies();
    bed.core
        .register_box(a.clone(), "127.0.0.1:9".parse().expect("addr"));
    let serial = bound_serial(&bed).await;
    bed.nodes[0]
        .ims
        .send(Body::PermitRequest(PermitRequest {
            serial: serial.clone(),
            prefix: prefix(&a, &b, "JM010"),
        }))
        .await
        .expect("permit request");
    // The permit is now awaited from the core; the core says it stops.
    let mut core_link = bed
        .pki
        .link(
            &Party::core(),
            &Party::is(a.clone()),
            bed.nodes[0].running().core_side,
        )
        .await
        .expect("link");
    let notice = Frame::new(
        id("core-stop-1"),
        Party::core(),
        0,
        Body::BoxStatus(BoxStatus {
            event: StatusEvent::Stopping,
        }),
    );
    let reply = core_link.request(&notice).await.expect("answered");
    assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");
    let ims = bed.nodes[0].ims.clone();
    eventually("the IMS hears the core stopped", || {
        ims.stats()
            .process_errors
            .iter()
            .any(|e| e.serial == serial && e.reason == Reason::PeerStopped)
    })
    .await;
    assert_eq!(
        bed.nodes[0]
            .running()
            .reader()
            .process_count()
            .expect("count"),
        0
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_box_announces_its_start_and_its_stop() {
    let (_dir, mut bed) = bed_with(|_| {}).await;
    let a_party = Party::is(agencies().0);
    let core = &bed.core;
    let ims = bed.nodes[0].ims.clone();
    eventually("core and IMS hear 'started'", || {
        core.stats()
            .box_status
            .contains(&(a_party.clone(), StatusEvent::Started))
            && ims.stats().box_status.contains(&StatusEvent::Started)
    })
    .await;
    bed.stop_box(0).await;
    // The stop waits for the notices to drain before it returns.
    assert!(bed
        .core
        .stats()
        .box_status
        .contains(&(a_party.clone(), StatusEvent::Stopping)));
    assert!(ims.stats().box_status.contains(&StatusEvent::Stopping));
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_service_hours_new_processes_are_refused() {
    let (_dir, bed) = bed_with(|f| {
        f.service.enforced = true;
        f.service.daily_stop = "00:00-24:00".into();
    })
    .await;
    let reply = bed.nodes[0]
        .ims
        .send(Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        }))
        .await
        .expect("answered");
    match &reply.body {
        Body::Refused(r) => {
            assert_eq!(r.reason, Reason::NotInService);
            assert!(r.text.contains("stopped daily 00:00-24:00"), "{}", r.text);
        }
        other => panic!("not refused: {other:?}"),
    }
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_and_connections_over_the_limit_refused() {
    use tokio::io::AsyncReadExt;
    let (_dir, bed) = bed_with(|f| {
        f.limits.io_timeout_ms = 300;
        f.limits.max_connections = 3;
    })
    .await;
    let addr = bed.nodes[0].running().agency_side;
    // A client that connects and says nothing is cut off after the I/O
    // timeout (the TLS handshake never starts).
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the box closes the silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Three connections in their handshake fill the listener's budget for
    // them (at most max_connections); a fourth is reset at once — so
    // early that its connect may already see the reset — and the access
    // log says E_BUSY.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("tcp"));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    if let Ok(mut extra) = tokio::net::TcpStream::connect(addr).await {
        let n = tokio::time::timeout(Duration::from_millis(250), extra.read(&mut buf))
            .await
            .expect("closed before the I/O timeout could")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    let reader = bed.nodes[0].running().reader().clone();
    eventually("E_BUSY in the access log", || {
        reader
            .access_log(0, 10_000)
            .expect("log")
            .iter()
            .any(|e| e.entry.outcome == "E_BUSY")
    })
    .await;
    drop(held);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_frames_on_one_connection_are_answered_in_order() {
    let (_dir, bed) = bed_with(|_| {}).await;
    let (a, _) = agencies();
    let ims = Party::ims(a.clone());
    let link = bed
        .pki
        .link(
            &ims,
            &Party::is(a.clone()),
            bed.nodes[0].running().agency_side,
        )
        .await
        .expect("link");
    let (mut rd, mut wr) = link.into_split();
    // 50 frames written before any answer is read: the box keeps reading
    // while earlier frames wait for their commit, and answers in order.
    let ids: Vec<MessageId> = (0..50).map(|i| id(&format!("pipe-{i}"))).collect();
    for id in &ids {
        let frame = Frame::new(
            id.clone(),
            ims.clone(),
            0,
            Body::SerialRequest(SerialRequest {
                purpose: SerialPurpose::Query,
            }),
        );
        wr.send(&frame.encode()).await.expect("write");
    }
    let mut serials = std::collections::HashSet::new();
    for want in &ids {
        let reply = rd.next_reply().await.expect("reply");
        assert_eq!(reply.body.in_reply_to(), Some(want), "answers in order");
        let Body::SerialIssued(s) = reply.body else {
            panic!("not a serial: {reply:?}")
        };
        assert!(serials.insert(s.serial));
    }
    // Fewer commits than frames: the engine batched them.
    let stats = bed.nodes[0].running().stats();
    assert!(stats.inputs > stats.batches, "{stats:?}");
    bed.shutdown().await;
}

/// An intermediate server that answers every frame, but only after
/// `delay`: slower than the box's reply timeout.
async fn slow_ims(bed: &Testbed, delay: Duration) -> std::net::SocketAddr {
    let (a, _) = agencies();
    let tls = bed
        .pki
        .material(&Party::ims(a))
        .expect("tls")
        .server_config()
        .expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let own = Party::ims(agencies().0);
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, own) = (acceptor.clone(), own.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut n = 0u32;
                while let Ok(frame) =
                    ifrelay::net::read_frame(&mut stream, 1 << 22, Duration::from_secs(30)).await
                {
                    tokio::time::sleep(delay).await;
                    n += 1;
                    let reply = Frame::new(
                        id(&format!("slow-{n}")),
                        own.clone(),
                        0,
                        Body::Accepted(ifrelay_proto::Accepted {
                            in_reply_to: frame.header.id,
                        }),
                    );
                    let _ = ifrelay::net::write_bytes(&mut stream, &reply.encode(), delay).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_slower_than_the_reply_timeout_counts_as_unreachable() {
    let (_dir, mut bed) = bed_with(|f| {
        f.timeouts.retry_count = 2;
        f.timeouts.retry_backoff_ms = 20;
        f.timeouts.reply_ms = 150;
        f.timeouts.shutdown_grace_ms = 300;
    })
    .await;
    let serial = bound_serial(&bed).await;
    // Box A's IMS becomes a slow one: it answers after 1 s.
    let slow = slow_ims(&bed, Duration::from_secs(1)).await;
    let path = bed.nodes[0].config_path.clone();
    let mut file =
        ConfigFile::parse(&std::fs::read_to_string(&path).expect("read")).expect("parse");
    file.ims.address = slow.to_string();
    std::fs::write(&path, file.to_toml_string().expect("toml")).expect("write");
    bed.stop_box(0).await;
    bed.start_box(0).await.expect("restart");
    request_permit_directly(&bed, &serial, "slow-permit-1").await;
    // The permit cannot be handed over in time: after the retries the
    // process is closed and the core told.
    core_hears(
        &bed,
        &serial,
        Reason::PeerUnreachable,
        "the IMS did not answer in time",
    )
    .await;
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_permit_is_refused_and_the_ims_told_at_once() {
    let (_dir, bed) = bed_with(|f| f.timeouts.permit_ms = 500).await;
    let (a, b) = agencies();
    // The core issues permits that are out of date when they arrive.
    bed.core.issue_expired_permits(Duration::from_secs(1));
    let result = bed.nodes[0].ims.run_query(prefix(&a, &b, "JM010")).await;
    let err = result.expect_err("no flow on an expired permit");
    // The box refused the permit (R-PRM-2) and closed the process at once,
    // telling the IMS why instead of letting its permit timer run out.
    assert_eq!(err.reason(), Some(Reason::PermitInvalid), "{err}");
    assert!(
        matches!(&err.kind, FlowErrorKind::ProcessError { text, .. } if text.contains("expired")),
        "{err}"
    );
    // The core hears the box's refusal on its own connection, which may
    // come a moment after the IMS's notice: wait for it, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let heard = |r: &ifrelay_testkit::sim::serve::PeerRefusal| {
        r.message_type == "permit"
            && r.reason == Reason::PermitInvalid
            && r.text.contains("expired")
    };
    let mut refusals = bed.core.stats().peer_refusals;
    while !refusals.iter().any(heard) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        refusals = bed.core.stats().peer_refusals;
    }
    assert!(refusals.iter().any(heard), "{refusals:?}");
    bed.shutdown().await;
}
