//! The redo log (crates/store/src/wal.rs, docs/architecture.md "The
//! durable path"): a batch is durable once its log entry is synced, redb
//! is made durable only at checkpoints, and an open replays what redb
//! lost. Kills are modelled by copying both files while the store is
//! still open (what a killed process leaves), power cuts by the memory
//! backend's crash copy (redb back to its last durable commit).
#![allow(clippy::unwrap_used)]

mod common;

use common::{access, serial, simple_record, TempStore, CACHE};
use ifrelay_store::fault::{FaultSwitch, MemoryFile};
use ifrelay_store::{log_path, LogOptions, Store, StoreError};

const NOW: i64 = 1_700_000_000_000;

/// One batch as the engine writes it for one flow step: a record, an
/// access entry, a process state and an outbox frame.
fn step(store: &mut Store, n: u32, frame: &[u8]) -> Result<(), StoreError> {
    let mut b = store.begin()?;
    b.append_record(NOW + i64::from(n), simple_record(n))?;
    b.append_access(access(n))?;
    b.put_process(&serial(n), &[n as u8; 40])?;
    b.push_outbox("core", frame)?;
    b.commit()
}

fn no_checkpoints() -> LogOptions {
    LogOptions {
        checkpoint_batches: u64::MAX,
        checkpoint_bytes: u64::MAX,
        ..LogOptions::default()
    }
}

/// Copies the store file and its log as a killed process leaves them.
fn kill_copy(t: &TempStore, name: &str) -> std::path::PathBuf {
    let copy = t.dir.path().join(name);
    std::fs::copy(&t.path, &copy).unwrap();
    std::fs::copy(log_path(&t.path), log_path(&copy)).unwrap();
    copy
}

fn assert_intact(store: &Store, records: u64) {
    let r = store.reader();
    assert_eq!(r.record_count().unwrap(), records);
    assert_eq!(r.access_count().unwrap(), records);
    let report = r.verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
}

#[test]
fn batches_after_the_last_checkpoint_survive_a_kill_through_the_log() {
    let t = TempStore::new();
    let mut store = Store::open_with_log(&t.path, CACHE, no_checkpoints()).unwrap();
    store.boot(NOW).unwrap();
    for n in 1..=20 {
        step(&mut store, n, b"frame").unwrap();
    }
    let copy = kill_copy(&t, "killed.redb");
    std::mem::forget(store);

    let store = Store::open(&copy, CACHE).unwrap();
    assert_eq!(
        store.replayed_at_open(),
        20,
        "every batch came from the log"
    );
    assert_intact(&store, 20);
    assert_eq!(store.reader().outbox_len().unwrap(), 20);
    assert_eq!(store.reader().process_count().unwrap(), 20);
    drop(store);
    // The replay was made durable: the next open has nothing to replay.
    let store = Store::open(&copy, CACHE).unwrap();
    assert_eq!(store.replayed_at_open(), 0);
    assert_intact(&store, 20);
}

#[test]
fn a_checkpoint_bounds_what_is_replayed() {
    let t = TempStore::new();
    let options = LogOptions {
        checkpoint_batches: 8,
        ..no_checkpoints()
    };
    let mut store = Store::open_with_log(&t.path, CACHE, options).unwrap();
    store.boot(NOW).unwrap();
    for n in 1..=20 {
        step(&mut store, n, b"frame").unwrap();
    }
    let copy = kill_copy(&t, "killed.redb");
    std::mem::forget(store);
    // Batches 1-8 logged, 9 a checkpoint, 10-17 logged, 18 a checkpoint,
    // 19-20 logged: only the last two wait in the log.
    let store = Store::open(&copy, CACHE).unwrap();
    assert_eq!(store.replayed_at_open(), 2);
    assert_intact(&store, 20);
}

#[test]
fn a_torn_last_entry_is_cut_off_and_everything_before_it_replays() {
    let t = TempStore::new();
    let mut store = Store::open_with_log(&t.path, CACHE, no_checkpoints()).unwrap();
    store.boot(NOW).unwrap();
    for n in 1..=19 {
        step(&mut store, n, b"frame").unwrap();
    }
    step(&mut store, 20, &[0xab; 600]).unwrap();
    let copy = kill_copy(&t, "torn.redb");
    std::mem::forget(store);
    // A write that reached the disk only in part: the last entry's tail.
    let mut log = std::fs::read(log_path(&copy)).unwrap();
    let last = log.iter().rposition(|b| *b == 0xab).unwrap();
    log[last - 100] ^= 0x01;
    std::fs::write(log_path(&copy), &log).unwrap();

    let store = Store::open(&copy, CACHE).unwrap();
    assert_eq!(store.replayed_at_open(), 19);
    assert_intact(&store, 19);
}

#[test]
fn the_ring_wraps_through_checkpoints_and_loses_nothing() {
    let t = TempStore::new();
    let options = LogOptions {
        size: 64 << 10,
        ..no_checkpoints()
    };
    let mut store = Store::open_with_log(&t.path, CACHE, options).unwrap();
    store.boot(NOW).unwrap();
    for n in 1..=200 {
        step(&mut store, n, &noise(n, 700)).unwrap();
    }
    let copy = kill_copy(&t, "wrapped.redb");
    std::mem::forget(store);
    assert_eq!(std::fs::metadata(log_path(&copy)).unwrap().len(), 64 << 10);
    let store = Store::open(&copy, CACHE).unwrap();
    let replayed = store.replayed_at_open();
    assert!(replayed > 0 && replayed < 60, "replayed {replayed}");
    assert_intact(&store, 200);
    assert_eq!(store.reader().outbox_len().unwrap(), 200);
}

#[test]
fn a_missing_or_foreign_log_is_refused_and_the_right_one_opens_again() {
    let a = TempStore::new();
    let b = TempStore::new();
    for t in [&a, &b] {
        let mut store = t.open();
        store.boot(NOW).unwrap();
        step(&mut store, 1, b"frame").unwrap();
    }
    let own_log = std::fs::read(log_path(&a.path)).unwrap();

    std::fs::copy(log_path(&b.path), log_path(&a.path)).unwrap();
    let err = Store::open(&a.path, CACHE).unwrap_err();
    assert!(matches!(err, StoreError::LogUnusable { .. }), "{err}");
    assert!(err.to_string().contains("another store"), "{err}");

    std::fs::remove_file(log_path(&a.path)).unwrap();
    let err = Store::open(&a.path, CACHE).unwrap_err();
    assert!(matches!(err, StoreError::LogMissing { .. }), "{err}");
    assert!(!log_path(&a.path).exists(), "a missing log was created");

    // With its own log back, the store opens with everything in it.
    std::fs::write(log_path(&a.path), own_log).unwrap();
    let store = Store::open(&a.path, CACHE).unwrap();
    assert_intact(&store, 1);
}

#[test]
fn a_store_with_a_log_is_not_opened_without_it() {
    let t = TempStore::new();
    drop(t.open());
    let err = Store::open_shared(&t.path, CACHE).unwrap_err();
    assert!(matches!(err, StoreError::NeedsLog { .. }), "{err}");
}

#[test]
fn the_box_holds_its_store_exclusively() {
    let t = TempStore::new();
    let store = t.open();
    let err = t.read_only().unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    drop(store);
    assert!(t.read_only().unwrap().verify_chains().unwrap().is_intact());
}

#[test]
fn a_batch_whose_log_sync_failed_is_never_replayed_after_the_next_checkpoint() {
    let memory = MemoryFile::new();
    let faults = FaultSwitch::new();
    let mut store = Store::open_with_faults(&memory, &faults, CACHE).unwrap();
    store.boot(NOW).unwrap();
    step(&mut store, 1, b"frame").unwrap();
    faults.fail_next_sync();
    assert!(step(&mut store, 2, b"frame").is_err());
    // The failed entry is in the log's memory; the next batch is a
    // checkpoint that makes its number stale.
    step(&mut store, 3, b"frame").unwrap();
    let after_checkpoint = memory.crash_copy();
    step(&mut store, 4, b"frame").unwrap();
    let after_next = memory.crash_copy();
    drop(store);

    for (copy, records) in [(after_checkpoint, 2), (after_next, 3)] {
        let store = Store::open_with_faults(&copy, &FaultSwitch::new(), CACHE).unwrap();
        assert_intact(&store, records);
        let serials: Vec<String> = store
            .reader()
            .records(0, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.record.serial.as_str().to_owned())
            .collect();
        assert!(
            !serials.contains(&serial(2).as_str().to_owned()),
            "{serials:?}"
        );
    }
}

#[test]
fn a_power_cut_replays_every_logged_batch_onto_the_last_durable_commit() {
    let memory = MemoryFile::new();
    let mut store = Store::open_with_faults(&memory, &FaultSwitch::new(), CACHE).unwrap();
    store.boot(NOW).unwrap();
    for n in 1..=30 {
        step(&mut store, n, b"frame").unwrap();
    }
    let cut = memory.crash_copy();
    drop(store);
    let store = Store::open_with_faults(&cut, &FaultSwitch::new(), CACHE).unwrap();
    assert!(store.replayed_at_open() > 0);
    assert_intact(&store, 30);
}

#[test]
fn a_retention_deletion_is_replayed_after_a_kill() {
    let t = TempStore::new();
    let mut store = Store::open_with_log(&t.path, CACHE, no_checkpoints()).unwrap();
    store.boot(NOW).unwrap();
    for n in 1..=10 {
        step(&mut store, n, b"frame").unwrap();
    }
    // A deletion by age reads the time index: the engine's index step
    // has run by then.
    store.index_pending(usize::MAX).unwrap();
    // Records 1..=6 were appended before NOW + 7.
    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_before(NOW + 7, 100).unwrap(), 6);
    assert_eq!(b.delete_access_before(i64::MAX, 4).unwrap(), 4);
    b.commit().unwrap();
    let copy = kill_copy(&t, "deleted.redb");
    std::mem::forget(store);

    let store = Store::open(&copy, CACHE).unwrap();
    assert_eq!(store.replayed_at_open(), 11);
    let r = store.reader();
    assert_eq!(r.record_count().unwrap(), 4);
    assert_eq!(r.access_count().unwrap(), 6);
    let report = r.verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.anchor_seq, 6);
    assert_eq!(report.access_log.anchor_seq, 4);
    // The index rows of the deleted records went with them.
    let gone = r
        .search_records(
            &ifrelay_store::RecordFilter {
                serial: Some(serial(3)),
                ..ifrelay_store::RecordFilter::default()
            },
            10,
        )
        .unwrap();
    assert!(gone.is_empty());
}

#[test]
fn index_steps_lost_in_a_kill_are_taken_again_and_searches_find_everything() {
    let t = TempStore::new();
    let mut store = Store::open_with_log(&t.path, CACHE, no_checkpoints()).unwrap();
    store.boot(NOW).unwrap();
    for n in 1..=10 {
        step(&mut store, n, b"frame").unwrap();
    }
    // Unlogged, not durable: a kill loses them with redb's last commits.
    assert_eq!(store.index_pending(usize::MAX).unwrap(), 20);
    for n in 11..=15 {
        step(&mut store, n, b"frame").unwrap();
    }
    store.index_pending(3).unwrap();
    let copy = kill_copy(&t, "indexed.redb");
    std::mem::forget(store);

    let mut store = Store::open(&copy, CACHE).unwrap();
    assert_eq!(store.replayed_at_open(), 15);
    // The boot's durable state held no index rows: everything waits again.
    assert_eq!(store.unindexed(), 30);
    assert_intact(&store, 15);
    let by_serial = |store: &Store, n: u32| {
        store
            .reader()
            .search_records(
                &ifrelay_store::RecordFilter {
                    serial: Some(serial(n)),
                    ..ifrelay_store::RecordFilter::default()
                },
                10,
            )
            .unwrap()
            .len()
    };
    for n in 1..=15 {
        assert_eq!(by_serial(&store, n), 1, "record {n} before the step");
    }
    assert_eq!(store.index_pending(usize::MAX).unwrap(), 30);
    for n in 1..=15 {
        assert_eq!(by_serial(&store, n), 1, "record {n} after the step, once");
    }
    drop(store);
    // A clean reopen finds the indexes sound and nothing waiting.
    let store = Store::open(&copy, CACHE).unwrap();
    assert_eq!(store.unindexed(), 0);
}

/// `len` bytes that do not compress (an encrypted body), different per `n`.
fn noise(n: u32, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ n.wrapping_mul(0x85eb_ca6b);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// An outbox frame of text that repeats, as protocol frames do.
fn wordy_frame(n: u32) -> Vec<u8> {
    format!(
        "{{\"type\":\"provision\",\"serial\":\"{n:020}\",\"body\":\"{}\"}}",
        "abcdefgh".repeat(256)
    )
    .into_bytes()
}

#[test]
fn entries_are_logged_compressed_and_replay_to_the_same_bytes() {
    let t = TempStore::new();
    let mut store = Store::open_with_log(&t.path, CACHE, no_checkpoints()).unwrap();
    store.boot(NOW).unwrap();
    for n in 1..=10 {
        step(&mut store, n, &wordy_frame(n)).unwrap();
    }
    let stats = store.log_stats();
    assert_eq!(stats.appends, 10);
    assert!(
        stats.entry_bytes * 4 < stats.raw_bytes,
        "entries shrink: {stats:?}"
    );
    assert!(stats.page_bytes >= stats.entry_bytes && stats.page_bytes % 4096 == 0);
    let copy = kill_copy(&t, "killed.redb");
    std::mem::forget(store);

    let store = Store::open(&copy, CACHE).unwrap();
    assert_eq!(store.replayed_at_open(), 10);
    assert_intact(&store, 10);
    let frames = store.reader().outbox_for("core", None, 100).unwrap();
    let expected: Vec<Vec<u8>> = (1..=10).map(wordy_frame).collect();
    let got: Vec<Vec<u8>> = frames.into_iter().map(|e| e.frame).collect();
    assert_eq!(got, expected);
}

#[test]
fn a_checkpoint_at_a_clean_stop_leaves_nothing_to_replay() {
    let t = TempStore::new();
    let mut store = Store::open_with_log(&t.path, CACHE, no_checkpoints()).unwrap();
    store.boot(NOW).unwrap();
    for n in 1..=5 {
        step(&mut store, n, &wordy_frame(n)).unwrap();
    }
    let before = kill_copy(&t, "before.redb");
    store.checkpoint().unwrap();
    assert_eq!(store.log_stats().checkpoints, 2, "the boot's and this one");
    step(&mut store, 6, b"after").unwrap();
    store.checkpoint().unwrap();
    let after = kill_copy(&t, "after.redb");
    std::mem::forget(store);

    let store = Store::open(&before, CACHE).unwrap();
    assert_eq!(
        store.replayed_at_open(),
        5,
        "without it, the log holds them"
    );
    assert_intact(&store, 5);
    drop(store);
    let store = Store::open(&after, CACHE).unwrap();
    assert_eq!(store.replayed_at_open(), 0);
    assert_intact(&store, 6);
}
