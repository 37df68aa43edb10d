//! A full disk or failing disk at commit (R-AV-2, R-OPS-1): with a storage
//! backend that can be told to fail, a failed commit reports
//! `is_storage_full`, exposes nothing of its batch, leaves the chain heads
//! where they were, and once space returns the very next batch commits on
//! the same `Store` (which reopens the file by itself) and both chains
//! verify (R-SEC-6). A failed fsync, whose outcome on disk is unknown,
//! still leaves consistent chains.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{access, serial, simple_record, CACHE};
use ifrelay_store::{Store, StoreError};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// What the backend refuses while switched on.
#[derive(Debug, Default)]
struct Faults {
    /// `write` and growing `set_len` fail with ENOSPC.
    full: AtomicBool,
    /// `sync_data` fails with EIO.
    sync: AtomicBool,
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28)
}

/// A file backend that fails on command.
#[derive(Debug)]
struct FaultyBackend {
    inner: FileBackend,
    faults: Arc<Faults>,
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if self.faults.full.load(Ordering::SeqCst) && len > self.inner.len()? {
            return Err(enospc());
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        if self.faults.sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if self.faults.full.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    path: PathBuf,
    faults: Arc<Faults>,
    store: Store,
}

fn rig() -> Rig {
    rig_with_cache(CACHE)
}

fn rig_with_cache(cache: usize) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let faults = Arc::new(Faults::default());
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
                Ok(FaultyBackend {
                    inner: FileBackend::new(file).map_err(io::Error::other)?,
                    faults: faults.clone(),
                })
            },
            cache,
        )
        .unwrap()
    };
    Rig {
        _dir: dir,
        path,
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
    let mut rig = rig();
    rig.store.boot(1_700_000_000_000).unwrap();
    let reader = rig.store.reader();
    for n in 1..=5 {
        assert_eq!(
            full_batch(&mut rig.store, n).unwrap(),
            (u64::from(n), u64::from(n))
        );
    }

    rig.faults.full.store(true, Ordering::SeqCst);
    let err = full_batch(&mut rig.store, 6).unwrap_err();
    assert!(err.is_storage_full(), "{err}");
    // Still full: the next attempt fails too, without a panic.
    let err = full_batch(&mut rig.store, 6).unwrap_err();
    assert!(matches!(err, StoreError::Db { .. }), "{err}");

    // Space returns: the same Store carries on from the old heads.
    rig.faults.full.store(false, Ordering::SeqCst);
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
    drop(rig.store);
    let mut store = Store::open(&rig.path, CACHE).unwrap();
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
    let mut rig = rig();
    let first = rig.store.boot(1_700_000_000_000).unwrap().epoch;
    rig.faults.full.store(true, Ordering::SeqCst);
    let err = rig.store.boot(1_700_000_000_000).unwrap_err();
    assert!(err.is_storage_full(), "{err}");
    rig.faults.full.store(false, Ordering::SeqCst);
    let second = rig.store.boot(1_700_000_000_000).unwrap().epoch;
    assert!(second > first);
    assert_eq!(rig.store.reader().epoch().unwrap(), second);
}

#[test]
fn a_failed_fsync_leaves_consistent_chains_whatever_reached_the_file() {
    let mut rig = rig();
    for n in 1..=3 {
        full_batch(&mut rig.store, n).unwrap();
    }
    rig.faults.sync.store(true, Ordering::SeqCst);
    let err = full_batch(&mut rig.store, 4).unwrap_err();
    assert!(!err.is_storage_full(), "{err}");
    rig.faults.sync.store(false, Ordering::SeqCst);

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
    let mut rig = rig_with_cache(0);
    full_batch(&mut rig.store, 1).unwrap();
    rig.faults.full.store(true, Ordering::SeqCst);
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
    assert!(err.is_storage_full(), "{err}");
    // A reader notices too, and tells the writer to reopen.
    assert!(rig.store.reader().record_count().is_err());
    rig.faults.full.store(false, Ordering::SeqCst);
    assert_eq!(full_batch(&mut rig.store, 2).unwrap(), (2, 2));
    let report = rig.store.reader().verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(rig.store.reader().outbox_len().unwrap(), 2);
}
