//! The serial epoch bumped at boot (R-SER-1, R-AV-2): it strictly
//! increases across reopens even when the clock goes backwards or is
//! unset, follows a clock that jumped forward, and is on disk when
//! `boot` returns.
#![allow(clippy::unwrap_used)]

mod common;

use common::TempStore;
use ifrelay_store::tables;
use redb::ReadableTable;

#[test]
fn epoch_strictly_increases_across_reopens_even_when_the_clock_goes_back() {
    let t = TempStore::new();
    let mut epochs = Vec::new();
    // Clock: normal, far behind, unset (0), negative, behind again.
    for now in [
        1_700_000_000_000i64,
        1_600_000_000_000,
        0,
        -5_000,
        1_699_999_999_999,
    ] {
        let mut store = t.open();
        let boot = store.boot(now).unwrap();
        assert_eq!(store.reader().epoch().unwrap(), boot.epoch);
        epochs.push(boot.epoch);
    }
    assert_eq!(epochs[0], 1_700_000_000);
    for pair in epochs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "epochs {epochs:?}");
    }
}

#[test]
fn epoch_follows_a_clock_that_moved_forward() {
    let t = TempStore::new();
    let mut store = t.open();
    assert_eq!(store.reader().epoch().unwrap(), 0, "no boot yet");
    assert_eq!(store.boot(1_000_000).unwrap().epoch, 1_000);
    // Two boots within the same second still differ.
    assert_eq!(store.boot(1_000_500).unwrap().epoch, 1_001);
    assert_eq!(store.boot(9_000_000).unwrap().epoch, 9_000);
}

#[test]
fn boot_is_durable_without_any_later_commit() {
    let t = TempStore::new();
    let epoch = {
        let mut store = t.open();
        store.boot(1_700_000_000_000).unwrap().epoch
        // Dropped right away: nothing else is committed.
    };
    // Read the raw file, not through the store.
    let on_disk = t.raw(|txn| {
        txn.open_table(tables::META)
            .unwrap()
            .get(tables::EPOCH_KEY)
            .unwrap()
            .map(|g| g.value())
    });
    assert_eq!(on_disk, Some(epoch));
    let store = t.open();
    assert_eq!(store.reader().epoch().unwrap(), epoch);
}

#[test]
fn a_restore_of_an_old_file_gets_a_newer_epoch_than_the_backup_had() {
    // Backup taken after the first boot; the box then booted again and
    // issued serials; the backup is restored: the next epoch must differ
    // from both earlier ones.
    let t = TempStore::new();
    let first = t.open().boot(1_700_000_000_000).unwrap().epoch;
    let backup = t.dir.path().join("backup.redb");
    std::fs::copy(&t.path, &backup).unwrap();
    let second = t.open().boot(1_700_000_100_000).unwrap().epoch;
    std::fs::copy(&backup, &t.path).unwrap();
    let restored = t.open().boot(1_700_000_200_000).unwrap().epoch;
    assert!(
        restored > second && second > first,
        "{first} {second} {restored}"
    );
}
