//! Read-only verification (STYLE "verifiers never write", R-SEC-6):
//! `ReadOnlyStore` changes no byte and no modification time of what it
//! verifies (also a mode-0400 copy); refuses a missing path (creating
//! nothing), a directory, an empty file, a file that is not redb, a newer
//! or foreign schema, a file a crash left for repair, and a file held by a
//! program that does not share it, each with its own error; and verifies
//! while a writer commits to the same file — a thread of this process, or
//! another process — always on one committed snapshot, so a running box
//! is reported intact.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{access, append_both, simple_record, TempStore, CACHE};
use ifrelay_store::{tables, ReadOnlyStore, Store, StoreError};
use redb::TableDefinition;

/// An old modification time set before verifying: any write would move it
/// to now, whatever the file system's time granularity.
const OLD_MTIME: Duration = Duration::from_secs(1_000_000_000);

/// Contents, length and modification time of a file.
fn fingerprint(path: &Path) -> (Vec<u8>, SystemTime) {
    let meta = std::fs::metadata(path).unwrap();
    (std::fs::read(path).unwrap(), meta.modified().unwrap())
}

fn set_old_mtime(path: &Path) {
    let file = File::options().append(true).open(path).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + OLD_MTIME)
        .unwrap();
}

/// A closed store holding `n` entries in both chains.
fn store_with(n: u32) -> TempStore {
    let t = TempStore::new();
    let mut store = t.open_shared();
    append_both(&mut store, 1, n, 7);
    t
}

#[test]
fn verifying_a_closed_store_changes_no_byte_and_no_mtime() {
    let t = store_with(30);
    set_old_mtime(&t.path);
    let before = fingerprint(&t.path);
    {
        let ro = ReadOnlyStore::open(&t.path).unwrap();
        assert_eq!(ro.path(), t.path);
        for _ in 0..3 {
            let report = ro.verify_chains().unwrap();
            assert!(report.is_intact(), "{report:?}");
            assert_eq!(report.records.checked, 30);
            assert_eq!(report.access_log.checked, 30);
        }
    }
    let after = fingerprint(&t.path);
    assert!(
        before.0 == after.0,
        "the verifier changed bytes of the file"
    );
    assert_eq!(before.1, after.1, "the verifier moved the mtime");
    assert_eq!(after.1, SystemTime::UNIX_EPOCH + OLD_MTIME);
}

#[cfg(unix)]
#[test]
fn a_read_only_copy_of_mode_0400_verifies_and_stays_as_it_was() {
    use std::os::unix::fs::PermissionsExt;
    let t = store_with(12);
    let copy = t.dir.path().join("copy.redb");
    std::fs::copy(&t.path, &copy).unwrap();
    set_old_mtime(&copy);
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o400)).unwrap();
    let before = fingerprint(&copy);

    let report = ReadOnlyStore::open(&copy).unwrap().verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.checked, 12);

    let after = fingerprint(&copy);
    assert!(
        before.0 == after.0,
        "the verifier changed bytes of the copy"
    );
    assert_eq!(before.1, after.1);
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o400);
}

#[test]
fn a_missing_path_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mistyped.redb");
    let err = ReadOnlyStore::open(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { path: p } if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains("mistyped.redb"), "{err}");
    assert!(err.to_string().contains("check the path"), "{err}");
    assert!(!path.exists(), "the verifier created {}", path.display());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = ReadOnlyStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotAFile {
                what: "a directory",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_empty_file_is_refused_and_stays_empty() {
    let t = TempStore::new();
    File::create(&t.path).unwrap();
    set_old_mtime(&t.path);
    let before = fingerprint(&t.path);
    let err = t.read_only().unwrap_err();
    assert!(matches!(err, StoreError::EmptyFile { .. }), "{err}");
    assert!(err.to_string().contains("is empty"), "{err}");
    assert_eq!(fingerprint(&t.path), before);
    assert_eq!(std::fs::metadata(&t.path).unwrap().len(), 0);
}

#[test]
fn random_bytes_a_text_file_and_a_short_file_are_not_stores() {
    let t = TempStore::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    let cases: [&[u8]; 3] = [
        &random,
        b"[store]\npath = \"/var/lib/ifrelay/ifrelay.redb\"\n",
        b"red",
    ];
    for bytes in cases {
        std::fs::write(&t.path, bytes).unwrap();
        set_old_mtime(&t.path);
        let before = fingerprint(&t.path);
        let err = t.read_only().unwrap_err();
        assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
        assert!(err.to_string().contains("not a store file"), "{err}");
        assert_eq!(fingerprint(&t.path), before);
    }
}

#[test]
fn a_newer_schema_or_a_foreign_redb_file_is_refused_read_only() {
    let t = store_with(3);
    t.raw(|txn| {
        txn.open_table(tables::META)
            .unwrap()
            .insert(tables::SCHEMA_VERSION_KEY, tables::SCHEMA_VERSION + 1)
            .unwrap();
    });
    let err = t.read_only().unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");

    let foreign = TempStore::new();
    let settings: TableDefinition<&str, &str> = TableDefinition::new("settings");
    foreign.raw(|txn| {
        txn.open_table(settings).unwrap().insert("a", "b").unwrap();
    });
    let err = foreign.read_only().unwrap_err();
    assert!(matches!(err, StoreError::SchemaUnknown { .. }), "{err}");

    let no_version = TempStore::new();
    no_version.raw(|txn| {
        txn.open_table(tables::META)
            .unwrap()
            .insert(tables::EPOCH_KEY, 7)
            .unwrap();
    });
    let err = no_version.read_only().unwrap_err();
    assert!(matches!(err, StoreError::SchemaUnknown { .. }), "{err}");
}

#[test]
fn a_file_left_by_a_crash_needs_repair_and_is_left_alone() {
    // A copy taken while the writer has the file open is what a power cut
    // leaves: unclean, with no writer alive to vouch for it.
    let t = TempStore::new();
    let crashed = t.dir.path().join("crashed.redb");
    {
        let mut store = t.open_shared();
        append_both(&mut store, 1, 10, 5);
        std::fs::copy(&t.path, &crashed).unwrap();
    }
    set_old_mtime(&crashed);
    let before = fingerprint(&crashed);
    let err = ReadOnlyStore::open(&crashed).unwrap_err();
    assert!(matches!(err, StoreError::NeedsRepair { .. }), "{err}");
    assert!(err.to_string().contains("start the box once"), "{err}");
    assert!(
        fingerprint(&crashed) == before,
        "the verifier touched the file"
    );

    // The box's own open repairs it; then it verifies read-only.
    drop(Store::open_shared(&crashed, CACHE).unwrap());
    let report = ReadOnlyStore::open(&crashed)
        .unwrap()
        .verify_chains()
        .unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.checked, 10);
}

#[test]
fn a_file_held_by_a_program_that_does_not_share_it_is_in_use() {
    let t = store_with(2);
    // redb's default (exclusive) mode, as an earlier firmware or a tool
    // opens the file.
    let held = redb::Database::create(&t.path).unwrap();
    let err = t.read_only().unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(std::error::Error::source(&err).is_some());
    drop(held);
    assert!(t.read_only().unwrap().verify_chains().unwrap().is_intact());
}

#[test]
fn every_refusal_is_its_own_error_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.redb");
    let empty = dir.path().join("empty.redb");
    let text = dir.path().join("notes.txt");
    File::create(&empty).unwrap();
    std::fs::write(&text, "not a store\n").unwrap();
    let errors: Vec<StoreError> = [missing.as_path(), dir.path(), &empty, &text]
        .into_iter()
        .map(|p| ReadOnlyStore::open(p).unwrap_err())
        .collect();
    let kinds: Vec<std::mem::Discriminant<StoreError>> =
        errors.iter().map(std::mem::discriminant).collect();
    for (i, a) in kinds.iter().enumerate() {
        for b in &kinds[i + 1..] {
            assert_ne!(a, b, "{errors:?}");
        }
    }
    for (err, path) in errors
        .iter()
        .zip([&missing, &dir.path().to_path_buf(), &empty, &text])
    {
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn verification_runs_beside_a_writer_thread_of_the_same_process() {
    let t = TempStore::new();
    let mut store = t.open_shared();
    // Long enough that a pass overlaps many commits (dozens, in a debug
    // build).
    append_both(&mut store, 1, 1_000, 500);
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, commits) = (stop.clone(), commits.clone());
        std::thread::spawn(move || {
            let mut next = 1_001u32;
            let frame = vec![0x5a; 1024];
            let mut queued: Vec<u64> = Vec::new();
            while !stop.load(Ordering::Acquire) {
                // Appends, plus outbox churn that frees pages for reuse.
                let mut b = store.begin().unwrap();
                for k in next..next + 5 {
                    b.append_record(1_700_000_000_000, simple_record(k))
                        .unwrap();
                    b.append_access(access(k)).unwrap();
                }
                for seq in queued.drain(..) {
                    b.remove_outbox(seq).unwrap();
                }
                for _ in 0..20 {
                    queued.push(b.push_outbox("core", &frame).unwrap());
                }
                b.commit().unwrap();
                commits.fetch_add(1, Ordering::AcqRel);
                next += 5;
            }
            store
        })
    };

    // One handle kept open across passes, and a fresh open per pass.
    let kept = t.read_only().unwrap();
    let mut seen = Vec::new();
    let mut overlapped = 0;
    for _ in 0..4 {
        for ro in [&kept, &t.read_only().unwrap()] {
            let before = commits.load(Ordering::Acquire);
            let report = ro.verify_chains().unwrap();
            if commits.load(Ordering::Acquire) > before {
                overlapped += 1;
            }
            assert!(report.is_intact(), "{report:?}");
            // Both chains grow in the same commit: one snapshot sees both
            // at the same length.
            assert_eq!(report.records.checked, report.access_log.checked);
            assert_eq!(report.records.checked % 5, 0);
            seen.push(report.records.checked);
        }
    }
    stop.store(true, Ordering::Release);
    let store = writer.join().unwrap();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(
        seen.last() > seen.first(),
        "the writer made no progress: {seen:?}"
    );
    assert!(overlapped > 0, "no pass overlapped a commit");

    let total = store.reader().record_count().unwrap();
    let report = kept.verify_chains().unwrap();
    assert!(report.is_intact());
    assert_eq!(report.records.checked, total);
}

#[test]
fn the_box_starts_and_commits_while_a_verifier_holds_the_file() {
    let t = store_with(4);
    let verifier = t.read_only().unwrap();
    let mut store = t.open_shared();
    store.boot(1_700_000_000_000).unwrap();
    append_both(&mut store, 5, 6, 3);
    let report = verifier.verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.checked, 10);
}

#[test]
fn a_read_only_store_crosses_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ReadOnlyStore>();
}

/// The environment variable that turns [`writer_process`] into the writer
/// of [`verification_runs_beside_a_writer_in_another_process`].
const WRITER_ENV: &str = "IFRELAY_STORE_TEST_WRITER";

/// Not a test of its own: the writing "box" process that
/// [`verification_runs_beside_a_writer_in_another_process`] starts from
/// this test executable. Appends until a stop file appears (at most 60 s).
#[test]
#[ignore = "the writer process of verification_runs_beside_a_writer_in_another_process"]
fn writer_process() {
    let Some(path) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    let stop = path.with_extension("stop");
    let mut store = Store::open_shared(&path, CACHE).unwrap();
    std::fs::write(path.with_extension("started"), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 1u32;
    while !stop.exists() && Instant::now() < deadline {
        append_both(&mut store, next, 5, 5);
        next += 5;
    }
}

/// Kills the writer process if the test fails before it is stopped.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn verification_runs_beside_a_writer_in_another_process() {
    let t = TempStore::new();
    drop(t.open_shared());
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["writer_process", "--exact", "--ignored", "--test-threads=1"])
        .env(WRITER_ENV, &t.path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reap(child);

    // The page check of a read-only open cannot run while a writer opens
    // the file (crates/store/src/integrity.rs): verify once it is open.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !t.path.with_extension("started").exists() {
        assert!(
            Instant::now() < deadline,
            "the writer process did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut seen = Vec::new();
    while seen.len() < 10 {
        assert!(Instant::now() < deadline, "no progress: {seen:?}");
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the writer process ended early"
        );
        let report = t.read_only().unwrap().verify_chains().unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.records.checked, report.access_log.checked);
        if report.records.checked > 0 && seen.last() != Some(&report.records.checked) {
            seen.push(report.records.checked);
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    std::fs::write(t.path.with_extension("stop"), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the writer process did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "writer process: {status}");
    let report = t.read_only().unwrap().verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert!(report.records.checked >= *seen.last().unwrap());
}
