//! The `ifrelay` binary as staff and CI use it: a bad configuration is
//! refused with the field named and exit code 78 before anything is bound;
//! usage errors exit 2 and `--help` works per command (`identity`'s
//! behaviour is in `tests/identity.rs`); `run` creates the
//! store's directory (0700); a failing command prints each cause once.
//! (`verify-store` on a real box's store, and the demo, are tested in
//! `crates/testkit/tests/demo.rs`.)

use std::process::Command;

mod common;
use common::Site;

fn ifrelay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ifrelay"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn an_invalid_configuration_names_the_field_and_exits_78() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[box]
agency = "13 10 16"
[listen]
core_side = "127.0.0.1:7443"
agency_side = "127.0.0.1:7444"
[tls]
ca = "ca.pem"
cert = "cert.pem"
key = "key.pem"
[store]
path = "ifrelay.redb"
[core]
address = "127.0.0.1:7000"
allow = ["127.0.0.1/32"]
[ims]
address = "127.0.0.1:7100"
allow = ["127.0.0.1/32"]
"#,
    )
    .expect("write");
    let file = file.to_string_lossy().into_owned();
    for args in [
        vec!["check-config", file.as_str()],
        vec!["run", "--config", file.as_str()],
        vec!["identity", "--config", file.as_str()],
    ] {
        let out = ifrelay(&args);
        assert_eq!(
            out.status.code(),
            Some(78),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("box.agency"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = ifrelay(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_is_there_for_every_command() {
    let out = ifrelay(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for command in ["run", "check-config", "identity", "verify-store"] {
        assert!(help.contains(command), "{help}");
        let out = ifrelay(&[command, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{command} --help");
        assert!(text(&out.stdout).contains("Usage: ifrelay"), "{command}");
    }
    assert!(!help.contains("demo"), "the firmware has no demo: {help}");
    assert_eq!(ifrelay(&["demo"]).status.code(), Some(2));
}

/// Every line of `stderr` once, and no line's text inside another: a
/// cause printed in its error's message and again as "caused by" fails.
fn assert_each_cause_once(stderr: &str) {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("caused by: "))
        .filter(|l| !l.is_empty())
        .collect();
    assert!(!lines.is_empty(), "nothing printed");
    for (i, line) in lines.iter().enumerate() {
        for (j, other) in lines.iter().enumerate() {
            assert!(
                i == j || !other.contains(line),
                "{line:?} is printed twice:\n{stderr}"
            );
        }
    }
}

#[test]
fn failing_commands_print_each_cause_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.toml");
    let out = ifrelay(&["check-config", &missing.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(78));
    assert_each_cause_once(&text(&out.stderr));

    let out = ifrelay(&[
        "verify-store",
        &dir.path().join("mistyped.redb").to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(74), "{}", text(&out.stderr));
    assert_each_cause_once(&text(&out.stderr));
    assert!(
        !dir.path().join("mistyped.redb").exists(),
        "verify-store created a store"
    );

    // A port already taken: the bind error and its OS cause, once each.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let site = Site::new(dir.path());
    let config = site.config(
        &taken.local_addr().expect("addr").to_string(),
        "var/ifrelay.redb",
    );
    let out = ifrelay(&["run", "--config", &config.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert_each_cause_once(&stderr);
}

#[test]
fn run_creates_the_store_directory_with_mode_0700_and_logs_plain_text() {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let site = Site::new(dir.path());
    let config = site.config("127.0.0.1:0", "store/ifrelay.redb");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ifrelay"))
        .args(["run", "--config", &config.to_string_lossy()])
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let store = dir.path().join("store/ifrelay.redb");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !store.exists() && std::time::Instant::now() < deadline {
        assert!(child.try_wait().expect("wait").is_none(), "the box exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Let it log its start, then stop it the orderly way.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().expect("wait");
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    assert!(store.exists(), "no store was created: {log}");
    let mode = std::fs::metadata(dir.path().join("store"))
        .expect("store directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(status.code(), Some(0), "{log}");
    // stderr is a pipe here, not a terminal: no colour escapes.
    assert!(log.contains("box started"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file: {log:?}"
    );
}
