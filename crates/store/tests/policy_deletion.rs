//! Policy deletion of records (R-REC-4) and access-log entries (R-REC-6):
//! removing a prefix of a chain moves its anchor to the last removed hash,
//! verification still passes (R-SEC-6), sequence numbers carry on, the
//! serial index forgets the removed records, and deletion beyond the end or
//! over a hole is refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::{append_both, serial, TempStore};
use ifrelay_store::{tables, ChainName, DefectKind, RecordFilter, StoreError};
use redb::ReadableTableMetadata;

#[test]
fn deleting_a_prefix_moves_the_anchor_and_keeps_verification_intact() {
    let t = TempStore::new();
    let mut store = t.open();
    append_both(&mut store, 1, 10, 4);
    // Every entry gets its index rows, so the deletion must remove some.
    store.index_pending(usize::MAX).unwrap();
    let r = store.reader();
    let rec4 = r.records(4, 1).unwrap().remove(0);
    let acc6 = r.access_log(6, 1).unwrap().remove(0);

    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_through(4).unwrap(), 4);
    assert_eq!(b.delete_access_through(6).unwrap(), 6);
    // Idempotent within the already removed range.
    assert_eq!(b.delete_records_through(3).unwrap(), 0);
    b.commit().unwrap();

    let report = r.verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.anchor_seq, 4);
    assert_eq!(report.records.anchor_hash, rec4.hash);
    assert_eq!(report.records.first_seq, Some(5));
    assert_eq!(report.records.checked, 6);
    assert_eq!(report.access_log.anchor_seq, 6);
    assert_eq!(report.access_log.anchor_hash, acc6.hash);
    assert_eq!(r.record_count().unwrap(), 6);
    assert_eq!(r.access_count().unwrap(), 4);
    assert_eq!(r.records(0, 100).unwrap()[0].seq, 5);

    // The serial index forgot the removed records.
    let by_serial = |n| {
        r.search_records(
            &RecordFilter {
                serial: Some(serial(n)),
                ..RecordFilter::default()
            },
            10,
        )
        .unwrap()
    };
    assert!(by_serial(4).is_empty());
    assert_eq!(by_serial(5).len(), 1);
    drop(store);
    let index_len = t.raw(|txn| {
        txn.open_multimap_table(tables::RECORDS_BY_SERIAL)
            .unwrap()
            .len()
            .unwrap()
    });
    assert_eq!(index_len, 6);

    // Across a reopen: still intact, and seqs continue after the head.
    let mut store = t.open();
    assert!(store.reader().verify_chains().unwrap().is_intact());
    let mut b = store.begin().unwrap();
    assert_eq!(b.append_record(1, common::simple_record(11)).unwrap(), 11);
    assert_eq!(b.append_access(common::access(11)).unwrap(), 11);
    b.commit().unwrap();
    assert!(store.reader().verify_chains().unwrap().is_intact());
}

#[test]
fn deleting_everything_leaves_an_empty_intact_chain_that_continues() {
    let t = TempStore::new();
    let mut store = t.open();
    append_both(&mut store, 1, 5, 5);
    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_through(5).unwrap(), 5);
    assert_eq!(b.delete_access_through(5).unwrap(), 5);
    b.commit().unwrap();
    drop(store);

    let mut store = t.open();
    let report = store.reader().verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.checked, 0);
    assert_eq!(report.records.anchor_seq, 5);
    let mut b = store.begin().unwrap();
    assert_eq!(b.append_record(1, common::simple_record(6)).unwrap(), 6);
    b.commit().unwrap();
    let report = store.reader().verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.first_seq, Some(6));
}

#[test]
fn the_new_anchor_still_catches_a_removed_first_entry() {
    let t = TempStore::new();
    let mut store = t.open();
    append_both(&mut store, 1, 8, 8);
    let mut b = store.begin().unwrap();
    b.delete_records_through(3).unwrap();
    b.commit().unwrap();
    drop(store);
    t.raw(|txn| {
        txn.open_table(tables::RECORDS).unwrap().remove(4).unwrap();
    });
    let store = t.open();
    let report = store.reader().verify_chains().unwrap();
    let kinds: Vec<_> = report.records.defects.iter().map(|d| &d.kind).collect();
    assert_eq!(
        kinds,
        [
            &DefectKind::Gap { expected: 4 },
            &DefectKind::AnchorMismatch
        ]
    );
}

#[test]
fn deletion_beyond_the_end_or_over_a_hole_is_refused_and_aborts_cleanly() {
    let t = TempStore::new();
    let mut store = t.open();
    append_both(&mut store, 1, 5, 5);
    let mut b = store.begin().unwrap();
    assert!(matches!(
        b.delete_records_through(6),
        Err(StoreError::DeleteBeyondHead {
            chain: ChainName::Records,
            seq: 6,
            head: 5
        })
    ));
    drop(b);
    drop(store);
    t.raw(|txn| {
        txn.open_table(tables::ACCESS_LOG)
            .unwrap()
            .remove(3)
            .unwrap();
    });
    let mut store = t.open();
    let mut b = store.begin().unwrap();
    assert!(matches!(
        b.delete_access_through(3),
        Err(StoreError::ChainRowMissing {
            chain: ChainName::AccessLog,
            seq: 3
        })
    ));
    drop(b);
    assert_eq!(store.reader().access_count().unwrap(), 4);
    // The deletion above did not move anything: verification still shows
    // the hole the tampering made.
    assert!(!store.reader().verify_chains().unwrap().is_intact());
}
