//! A full disk or failing disk at commit (R-AV-2, R-OPS-1): with a storage
//! backend that can be told to fail (`ifrelay_store::fault`), a failed
//! commit reports `is_storage_full`, exposes nothing of its batch, leaves
//! the chain heads where they were, and once space returns the very next
//! batch commits on the same `Store` (which reopens the file by itself)
//! and both chains verify (R-SEC-6). A failed fsync, whose outcome on disk
//! is unknown, still leaves consistent chains. Every case runs twice: on a
//! real file and on a `MemoryFile`, the store the engine fuzz target uses.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::path::PathBuf;

use common::{access, serial, simple_record, CACHE};
use ifrelay_store::fault::{FaultSwitch, FaultyBackend, MemoryFile};
use ifrelay_store::{Store, StoreError};
use redb::backends::FileBackend;

/// Where the faulty store keeps its bytes.
enum Medium {
    File {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Memory(MemoryFile),
}

struct Rig {
    medium: Medium,
    faults: FaultSwitch,
    store: Store,
}

impl Rig {
    /// Closes the faulty store and opens what it left with no faults: the
    /// file with `Store::open`, the memory on a clean backend. Returns the
    /// temporary directory of a file too, to keep it while the store lives.
    fn reopen_plainly(self) -> (Store, Option<tempfile::TempDir>) {
        let Rig { medium, store, .. } = self;
        drop(store);
        match medium {
            Medium::File { path, _dir } => (Store::open(&path, CACHE).unwrap(), Some(_dir)),
            Medium::Memory(memory) => (
                Store::open_with_faults(&memory, &FaultSwitch::new(), CACHE).unwrap(),
                None,
            ),
        }
    }
}

/// Both media, each with a fresh store.
fn rigs() -> [Rig; 2] {
    rigs_with_cache(CACHE)
}

fn rigs_with_cache(cache: usize) -> [Rig; 2] {
    [file_rig(cache), memory_rig(cache)]
}

fn file_rig(cache: usize) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let faults = FaultSwitch::new();
    let store = {
        let (path, faults) = (path.clone(), faults.clone());
        Store::open_with_backend(
            move || {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                let inner = FileBackend::new(file).map_err(std::io::Error::other)?;
                Ok(FaultyBackend::new(inner, faults.clone()))
            },
            cache,
        )
        .unwrap()
    };
    Rig {
        medium: Medium::File { _dir: dir, path },
        faults,
        store,
    }
}

fn memory_rig(cache: usize) -> Rig {
    let memory = MemoryFile::new();
    let faults = FaultSwitch::new();
    let store = Store::open_with_faults(&memory, &faults, cache).unwrap();
    Rig {
        medium: Medium::Memory(memory),
        faults,
        store,
    }
}

/// One batch touching every kind of row.
fn full_batch(store: &mut Store, n: u32) -> Result<(u64, u64), StoreError> {
    let mut b = store.begin()?;
    let rec = b.append_record(1_700_000_000_000, simple_record(n))?;
    let acc = b.append_access(access(n))?;
    b.push_outbox("core", b"frame")?;
    b.put_process(&serial(n), b"state")?;
    b.put_prefix(u64::from(n), b"prefix")?;
    b.commit()?;
    Ok((rec, acc))
}

#[test]
fn after_a_disk_full_commit_the_next_batch_commits_and_the_chains_verify() {
    for rig in rigs() {
        after_a_disk_full_commit(rig);
    }
}

fn after_a_disk_full_commit(mut rig: Rig) {
    rig.store.boot(1_700_000_000_000).unwrap();
    let reader = rig.store.reader();
    for n in 1..=5 {
        assert_eq!(
            full_batch(&mut rig.store, n).unwrap(),
            (u64::from(n), u64::from(n))
        );
    }

    rig.faults.set_disk_full(true);
    let err = full_batch(&mut rig.store, 6).unwrap_err();
    assert!(err.is_storage_full(), "{err:?}");
    // Still full: the next attempt fails too, without a panic.
    let err = full_batch(&mut rig.store, 6).unwrap_err();
    assert!(matches!(err, StoreError::Db { .. }), "{err:?}");

    // Space returns: the same Store carries on from the old heads.
    rig.faults.set_disk_full(false);
    assert_eq!(full_batch(&mut rig.store, 6).unwrap(), (6, 6));

    // The reader taken before the failure works again and sees exactly one
    // batch 6.
    let report = reader.verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.last_seq, Some(6));
    assert_eq!(report.access_log.last_seq, Some(6));
    assert_eq!(reader.record_count().unwrap(), 6);
    assert_eq!(reader.outbox_len().unwrap(), 6);
    assert_eq!(reader.process_count().unwrap(), 6);
    assert_eq!(
        reader.current_prefix().unwrap(),
        Some((6, b"prefix".to_vec()))
    );

    // And the file itself, opened plainly, agrees.
    let (mut store, _dir) = rig.reopen_plainly();
    let report = store.reader().verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.checked, 6);
    let boot = store.boot(1_700_000_000_000).unwrap();
    assert_eq!(boot.outbox_len, 6);
    let core = store.reader().outbox_for("core", None, 100).unwrap();
    assert_eq!(core.last().unwrap().seq, 6);
    // The index kept in step with the outbox through the failed commits.
    assert_eq!(
        store.reader().outbox_destinations().unwrap(),
        [("core".to_owned(), 6)]
    );
}

#[test]
fn a_boot_that_cannot_commit_fails_and_a_later_boot_gets_a_new_epoch() {
    for mut rig in rigs() {
        let first = rig.store.boot(1_700_000_000_000).unwrap().epoch;
        rig.faults.set_disk_full(true);
        let err = rig.store.boot(1_700_000_000_000).unwrap_err();
        assert!(err.is_storage_full(), "{err:?}");
        rig.faults.set_disk_full(false);
        let second = rig.store.boot(1_700_000_000_000).unwrap().epoch;
        assert!(second > first);
        assert_eq!(rig.store.reader().epoch().unwrap(), second);
    }
}

#[test]
fn a_failed_fsync_leaves_consistent_chains_whatever_reached_the_file() {
    for rig in rigs() {
        a_failed_fsync(rig, FaultSwitch::set_sync_errors);
    }
    // The one-shot switch the fuzz target uses does the same.
    for rig in rigs() {
        a_failed_fsync(rig, |faults, on| {
            if on {
                faults.fail_next_sync();
            }
        });
    }
}

fn a_failed_fsync(mut rig: Rig, sync_fails: impl Fn(&FaultSwitch, bool)) {
    for n in 1..=3 {
        full_batch(&mut rig.store, n).unwrap();
    }
    sync_fails(&rig.faults, true);
    let err = full_batch(&mut rig.store, 4).unwrap_err();
    assert!(!err.is_storage_full(), "{err:?}");
    assert!(rig.faults.injected() >= 1);
    sync_fails(&rig.faults, false);

    // Batch 4 may or may not be in the file; either way the next append
    // links to what is there and the chains verify.
    let (rec, acc) = full_batch(&mut rig.store, 5).unwrap();
    assert!(rec == 4 || rec == 5, "seq {rec}");
    assert_eq!(rec, acc);
    let reader = rig.store.reader();
    let report = reader.verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.last_seq, Some(rec));
    assert_eq!(reader.record_count().unwrap(), rec);
}

#[test]
fn a_failure_inside_a_batch_then_a_dropped_batch_still_recovers() {
    // No page cache: a large batch spills pages to the file before commit,
    // so the error surfaces in an operation, and the engine drops the batch.
    for rig in rigs_with_cache(0) {
        a_failure_inside_a_batch(rig);
    }
}

fn a_failure_inside_a_batch(mut rig: Rig) {
    full_batch(&mut rig.store, 1).unwrap();
    rig.faults.set_disk_full(true);
    let failed = {
        let mut b = rig.store.begin().unwrap();
        let big = vec![7u8; 64 * 1024];
        let mut failed = None;
        for n in 0..2000u32 {
            if let Err(e) = b.push_outbox("core", &big) {
                failed = Some((n, e));
                break;
            }
        }
        failed
    };
    let (_, err) = failed.expect("an operation fails once pages spill to a full disk");
    assert!(err.is_storage_full(), "{err:?}");
    // A reader notices too, and tells the writer to reopen.
    assert!(rig.store.reader().record_count().is_err());
    rig.faults.set_disk_full(false);
    assert_eq!(full_batch(&mut rig.store, 2).unwrap(), (2, 2));
    let report = rig.store.reader().verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(rig.store.reader().outbox_len().unwrap(), 2);
}

#[test]
fn a_memory_file_refuses_a_second_store_while_the_first_holds_it() {
    // What keeps a reopen from running beside a handle a reader still
    // holds: the second open is refused, the first store is unharmed, and
    // once it is gone the memory opens again with its data.
    let memory = MemoryFile::new();
    let faults = FaultSwitch::new();
    let mut first = Store::open_with_faults(&memory, &faults, CACHE).unwrap();
    full_batch(&mut first, 1).unwrap();
    let err = Store::open_with_faults(&memory, &faults, CACHE).unwrap_err();
    assert!(matches!(err, StoreError::Db { .. }), "{err:?}");
    full_batch(&mut first, 2).unwrap();
    drop(first);
    let second = Store::open_with_faults(&memory, &faults, CACHE).unwrap();
    assert_eq!(second.reader().record_count().unwrap(), 2);
    assert!(second.reader().verify_chains().unwrap().is_intact());
}
