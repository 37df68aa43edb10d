//! A box whose critical task dies ends its process with exit code 70
//! instead of limping on and answering `E_BUSY` forever (issue 6 item 5,
//! STYLE "a dead critical task ends the process"). The firmware binary is
//! the one `cargo test` builds, with the `fault-injection` feature the
//! test kit asks for: `IFRELAY_FAULT=<task>` kills that task half a second
//! after start.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ifrelay::net::{now_millis, IdGen};
use ifrelay_proto::{Body, Frame, Party, Reason, SerialPurpose, SerialRequest};
use ifrelay_testkit::testbed::{agencies, write_box_config, Pki};

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

struct Outcome {
    code: Option<i32>,
    log: String,
    busy_answers: usize,
    answered: usize,
}

/// Runs the box with `fault`, asking for serials every 50 ms until the
/// process ends (at most 30 s).
async fn run_with_fault(dir: &Path, fault: &str) -> Outcome {
    let pki = Pki::new(&dir.join("pki")).expect("pki");
    let (own, _) = agencies();
    let agency_side = free_port();
    let config = write_box_config(
        dir,
        &pki,
        &own,
        (free_port(), agency_side),
        free_port(),
        free_port(),
    )
    .expect("config");
    let log_path = dir.join("box.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new(ifrelay_testkit::firmware::binary().expect("firmware binary"))
        .args(["run", "--config"])
        .arg(&config)
        .env("IFRELAY_FAULT", fault)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("box starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut busy_answers, mut answered) = (0, 0);
    let ids = IdGen::new("fail-loudly").expect("id prefix");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        let ims = Party::ims(own.clone());
        if let Ok(mut link) = pki.link(&ims, &Party::is(own.clone()), agency_side).await {
            let request = Frame::new(
                ids.next(),
                ims.clone(),
                now_millis(),
                Body::SerialRequest(SerialRequest {
                    purpose: SerialPurpose::Query,
                }),
            );
            if let Ok(reply) = link.request(&request).await {
                answered += 1;
                if matches!(&reply.body, Body::Refused(r) if r.reason == Reason::Busy) {
                    busy_answers += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Outcome {
        code: status.and_then(|s| s.code()),
        log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        busy_answers,
        answered,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_ends_the_process_with_exit_70() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_with_fault(dir.path(), "engine-panic").await;
    assert_eq!(out.code, Some(70), "{}", out.log);
    assert!(
        out.log.contains("critical task `relay engine` panicked"),
        "{}",
        out.log
    );
    // At most the frames in flight when the engine died see `E_BUSY`;
    // the box does not go on refusing everything.
    assert!(
        out.busy_answers <= 2,
        "{} E_BUSY answers of {}",
        out.busy_answers,
        out.answered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_returns_ends_the_process_with_exit_70() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_with_fault(dir.path(), "core-listener-exit").await;
    assert_eq!(out.code, Some(70), "{}", out.log);
    assert!(
        out.log
            .contains("critical task `core-side listener` ended unexpectedly"),
        "{}",
        out.log
    );
}
