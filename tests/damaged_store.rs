//! A store file damaged on disk (issue 7 item 6): single bytes of a real
//! store — records, access log, duplicate-suppression entries, written
//! through the store's own API — changed at seeded positions, then the
//! firmware binary run on each copy as staff would run it.
//!
//! For every copy `ifrelay verify-store` must end with a verdict and one
//! of its exit codes (0 intact, 1 tampered, 65 CORRUPT, 74 not verifiable
//! — a changed "recovery required" flag reads as a crash), never a panic
//! (exit 101) or a signal. `ifrelay run` — on every copy verify-store
//! calls CORRUPT, and on a sample of the others — must refuse a CORRUPT
//! copy with exit 65, the recovery procedure, and the file left byte for
//! byte as it was; on any other copy it must start and serve (accept a
//! connection), then stop in order. It never starts on a CORRUPT copy.
//!
//! Budget: one store of about 1 MiB copied per run; 150 seeded positions
//! spread over the whole file plus a few aimed at the header and at rows,
//! each verified; `run` on about 30 + the CORRUPT ones (a refusal costs one
//! page check, a start about half a second in a debug build).

#[path = "../crates/store/tests/common/mod.rs"]
mod store_fixtures;

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Site;
use ifrelay_store::Store;

/// Random positions over the whole file.
const RANDOM_RUNS: u64 = 150;
/// Every this many non-CORRUPT copies, `run` is tried too.
const RUN_EVERY: usize = 8;

/// Seeded positions: SplitMix64, so every run of the test damages the same
/// bytes and a failure names a seed that reproduces it.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The store every copy starts from: two chains of 300 entries and 100
/// remembered frames, committed in batches as the engine commits them.
/// Without a redo log, so that the file alone is the whole store (the box
/// creates a log when it first opens a copy).
fn build_store(path: &Path) {
    let mut store = Store::open_shared(path, store_fixtures::CACHE).expect("store opens");
    store.boot(1_700_000_000_000).expect("boot");
    store_fixtures::append_both(&mut store, 1, 300, 20);
    let mut batch = store.begin().expect("batch");
    for n in 0..100 {
        batch
            .put_seen(
                "ims/131016",
                &format!("msg-{n}"),
                4_000_000_000_000 + n,
                b"\xa1\x64type\x68accepted",
            )
            .expect("seen");
    }
    batch.commit().expect("commit");
}

/// Where to change a byte, and what to XOR it with.
#[derive(Debug, Clone, Copy)]
struct Flip {
    name: &'static str,
    seed: u64,
    at: usize,
    xor: u8,
}

fn flips(base: &[u8]) -> Vec<Flip> {
    let mut out: Vec<Flip> = (0..RANDOM_RUNS)
        .map(|seed| {
            let r = splitmix(seed);
            Flip {
                name: "random",
                seed,
                at: usize::try_from(r % base.len() as u64).expect("fits"),
                xor: u8::try_from((r >> 56) % 255 + 1).expect("nonzero byte"),
            }
        })
        .collect();
    let find = |needle: &[u8]| {
        base.windows(needle.len())
            .position(|w| w == needle)
            .expect("the row's bytes are in the file")
    };
    let aimed = [
        ("signature", 2, 0x20),
        ("god byte: primary slot", 9, 0x01),
        ("god byte: recovery flag", 9, 0x02),
        ("page size", 13, 0x01),
        ("commit slot 0", 64 + 40, 0x04),
        ("commit slot 1", 192 + 40, 0x04),
        ("commit slot 1 checksum", 192 + 120, 0x80),
        ("access entry m-17", find(b"m-17") + 2, 0x01),
        ("record CODE-A", find(b"CODE-A") + 1, 0x40),
        ("seen msg-42", find(b"msg-42") + 4, 0x01),
    ];
    out.extend(aimed.into_iter().map(|(name, at, xor)| Flip {
        name,
        seed: 0,
        at,
        xor,
    }));
    out
}

fn ifrelay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ifrelay"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// How `run` ended on one copy.
enum RunOutcome {
    /// Started, accepted a connection on its core-side listener, and
    /// stopped in order on SIGTERM.
    Served,
    /// Ended by itself before starting.
    Refused(Output),
}

/// Runs the box on `config` until it logs `box started` (then connects to
/// it and stops it) or ends by itself.
fn run_box(config: &Path) -> RunOutcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ifrelay"))
        .args(["run", "--config", &config.to_string_lossy()])
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("box started") {
                let _ = tx.send(line.clone());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = loop {
        if let Ok(line) = rx.try_recv() {
            break Some(line);
        }
        if child.try_wait().expect("wait").is_some() {
            break None;
        }
        assert!(
            Instant::now() < deadline,
            "the box neither started nor ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let Some(line) = started else {
        let status = child.wait().expect("wait");
        let mut stdout = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = std::io::Read::read_to_end(&mut out, &mut stdout);
        }
        let stderr = reader.join().expect("stderr reader");
        return RunOutcome::Refused(Output {
            status,
            stdout,
            stderr: stderr.into_bytes(),
        });
    };
    let core_side: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("core_side="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no core_side address in {line:?}"));
    TcpStream::connect_timeout(&core_side, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the started box does not accept on {core_side}: {e}"));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    let log = reader.join().expect("stderr reader");
    assert_eq!(
        status.code(),
        Some(0),
        "the box did not stop in order:\n{log}"
    );
    RunOutcome::Served
}

#[test]
fn a_store_with_a_changed_byte_is_corrupt_or_harmless_never_a_panic_never_served_when_corrupt() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let site = Site::new(dir.path());
    let config = site.config("127.0.0.1:0", "store.redb");
    let store = dir.path().join("store.redb");
    let pristine = dir.path().join("pristine.redb");
    build_store(&pristine);
    let base = std::fs::read(&pristine).expect("read the store");

    let mut corrupt = 0;
    let mut others = 0;
    let mut served = 0;
    let mut refused = 0;
    for flip in flips(&base) {
        let what = format!(
            "{} flip (seed {}) at byte {} (page {}, offset {}) ^ {:#04x}",
            flip.name,
            flip.seed,
            flip.at,
            flip.at / 4096,
            flip.at % 4096,
            flip.xor
        );
        let mut bytes = base.clone();
        bytes[flip.at] ^= flip.xor;
        std::fs::write(&store, &bytes).expect("write the copy");

        let out = ifrelay(&["verify-store", &store.to_string_lossy()]);
        let report = text(&out.stdout) + &text(&out.stderr);
        let code = out.status.code();
        assert!(
            matches!(code, Some(0 | 1 | 65 | 74)),
            "{what}: verify-store ended with {:?}:\n{report}",
            out.status
        );
        assert!(!report.contains("panicked"), "{what}:\n{report}");
        match code {
            Some(0) => assert!(report.contains("verdict: INTACT"), "{what}:\n{report}"),
            Some(1) => assert!(report.contains("verdict: TAMPERED"), "{what}:\n{report}"),
            Some(65) => {
                assert!(report.contains("verdict: CORRUPT"), "{what}:\n{report}");
                assert!(report.contains("where: "), "{what}:\n{report}");
            }
            _ => {}
        }
        assert!(
            std::fs::read(&store).expect("read back") == bytes,
            "{what}: verify-store changed the file"
        );

        let is_corrupt = code == Some(65);
        if is_corrupt {
            corrupt += 1;
        } else {
            others += 1;
        }
        if !is_corrupt && flip.name == "random" && others % RUN_EVERY != 1 {
            continue;
        }
        match run_box(&config) {
            RunOutcome::Served => {
                assert!(!is_corrupt, "{what}: the box started on a CORRUPT store");
                served += 1;
            }
            RunOutcome::Refused(out) => {
                let log = text(&out.stderr);
                assert!(
                    is_corrupt,
                    "{what}: the box did not start ({:?}) on a store verify-store calls \
                     {code:?}:\n{report}\n{log}",
                    out.status
                );
                assert_eq!(out.status.code(), Some(65), "{what}:\n{log}");
                assert!(log.contains("is damaged"), "{what}:\n{log}");
                assert!(log.contains("kept for the auditor"), "{what}:\n{log}");
                assert!(
                    log.contains("IT department") && log.contains("national operator"),
                    "{what}:\n{log}"
                );
                assert!(!log.contains("panicked"), "{what}:\n{log}");
                assert!(
                    std::fs::read(&store).expect("read back") == bytes,
                    "{what}: run changed the damaged file"
                );
                refused += 1;
            }
        }
    }
    eprintln!(
        "{corrupt} CORRUPT, {others} not; run refused {refused}, served {served}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(refused, corrupt, "run was tried on every CORRUPT copy");
    assert!(corrupt >= 20, "too few flips hit live pages: {corrupt}");
    assert!(served >= 10, "too few harmless flips were run: {served}");
}

#[test]
fn a_store_left_by_a_crash_is_not_damage_run_starts_on_it() {
    // A copy taken while a writer has the file open is what a power cut
    // leaves: unclean, to be repaired on open.
    let dir = tempfile::tempdir().expect("temp dir");
    let site = Site::new(dir.path());
    let config = site.config("127.0.0.1:0", "store.redb");
    let live = dir.path().join("live.redb");
    {
        let mut store = Store::open(&live, store_fixtures::CACHE).expect("store opens");
        store.boot(1_700_000_000_000).expect("boot");
        store_fixtures::append_both(&mut store, 1, 50, 10);
        std::fs::copy(&live, dir.path().join("store.redb")).expect("copy");
        // The log holds what the file does not: a crash leaves both.
        std::fs::copy(
            ifrelay_store::log_path(&live),
            ifrelay_store::log_path(&dir.path().join("store.redb")),
        )
        .expect("copy the log");
    }
    let out = ifrelay(&[
        "verify-store",
        &dir.path().join("store.redb").to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(74), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("start the box once"));
    assert!(matches!(run_box(&config), RunOutcome::Served));
    let out = ifrelay(&[
        "verify-store",
        &dir.path().join("store.redb").to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("matches its checksum"));
}
