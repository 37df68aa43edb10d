//! Signals a box may receive on the appliance (issue 7 item 7): SIGHUP,
//! SIGUSR1, SIGUSR2 and SIGPIPE are logged (the first three) and ignored —
//! the box keeps serving; only SIGTERM, SIGINT and SIGQUIT end it, through
//! the one shutdown path (exit 0, store flushed, `stopping` announced).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Site;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn listening(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

#[test]
fn stray_signals_are_ignored_and_only_the_stop_signals_end_the_box() {
    for stop in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
        let dir = tempfile::tempdir().expect("temp dir");
        let site = Site::new(dir.path());
        let core_side = free_port();
        let config = site.config(&core_side.to_string(), "var/ifrelay.redb");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ifrelay"))
            .args(["run", "--config", &config.to_string_lossy()])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the box starts");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !listening(core_side) {
            assert!(Instant::now() < deadline, "the box did not start listening");
            assert!(child.try_wait().expect("wait").is_none(), "the box exited");
            std::thread::sleep(Duration::from_millis(20));
        }
        for stray in [
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGPIPE,
        ] {
            kill(pid, stray).expect("signal sent");
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                child.try_wait().expect("wait").is_none(),
                "{stray} ended the box"
            );
        }
        assert!(listening(core_side), "the box stopped serving");

        kill(pid, stop).expect("stop signal sent");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "{stop} did not stop the box");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut log = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut log);
        }
        assert_eq!(status.code(), Some(0), "{stop}: {log}");
        for stray in ["SIGHUP", "SIGUSR1", "SIGUSR2"] {
            assert!(
                log.contains(&format!("signal ignored signal=\"{stray}\"")) || log.contains(stray),
                "{stray} not logged: {log}"
            );
        }
        assert!(log.contains("stop requested"), "{log}");
        assert!(log.contains("box stopped"), "{log}");
    }
}
