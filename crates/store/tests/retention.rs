//! Retention deletion by age (issue 9 item 5, R-REC-4, R-REC-6):
//! `delete_records_before` / `delete_access_before` remove the oldest
//! entries appended before the cutoff in bounded steps, never one appended
//! at or after it (also when the clock stepped back), remove their index
//! rows with them, and leave chains that still verify. Entries still
//! waiting for their index rows are never deleted by age.
#![allow(clippy::unwrap_used)]

mod common;

use common::{access, serial, simple_record, TempStore};
use ifrelay_proto::PersonCode;
use ifrelay_store::{tables, AccessFilter, PageCursor, RecordFilter, Store};
use redb::ReadableTableMetadata;

/// Records 1..=n at times 1000, 2000, ... and one access entry each at
/// the same times, with their index rows (a deletion by age reads the
/// time index; the engine's index step has run by then).
fn fill(store: &mut Store, times: &[i64]) {
    let mut b = store.begin().unwrap();
    for (i, at) in times.iter().enumerate() {
        let n = u32::try_from(i).unwrap() + 1;
        b.append_record(*at, simple_record(n)).unwrap();
        let mut e = access(n);
        e.at = *at;
        b.append_access(e).unwrap();
    }
    b.commit().unwrap();
    store.index_pending(usize::MAX).unwrap();
}

fn times(n: i64) -> Vec<i64> {
    (1..=n).map(|i| i * 1000).collect()
}

#[test]
fn deletion_by_age_goes_in_bounded_steps_and_keeps_everything_newer() {
    let t = TempStore::new();
    let mut store = t.open();
    fill(&mut store, &times(50));
    let r = store.reader();
    // Cutoff 30,500: records 1..=30 are older.
    let mut removed = Vec::new();
    loop {
        let mut b = store.begin().unwrap();
        let n = b.delete_records_before(30_500, 7).unwrap();
        let m = b.delete_access_before(30_500, 7).unwrap();
        b.commit().unwrap();
        assert!(n <= 7 && m <= 7);
        assert_eq!(n, m);
        removed.push(n);
        if n < 7 {
            break;
        }
    }
    assert_eq!(removed, [7, 7, 7, 7, 2]);
    assert_eq!(r.record_count().unwrap(), 20);
    assert_eq!(r.access_count().unwrap(), 20);
    assert_eq!(r.records(0, 1).unwrap()[0].at, 31_000);
    let report = r.verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.anchor_seq, 30);
    assert_eq!(report.access_log.anchor_seq, 30);
    // Nothing more is due at the same cutoff, and an older cutoff takes
    // nothing.
    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_before(30_500, 100).unwrap(), 0);
    assert_eq!(b.delete_records_before(1_000, 100).unwrap(), 0);
    b.commit().unwrap();
    assert_eq!(r.record_count().unwrap(), 20);
}

#[test]
fn an_entry_appended_at_the_cutoff_is_kept() {
    let t = TempStore::new();
    let mut store = t.open();
    fill(&mut store, &times(5));
    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_before(3_000, 100).unwrap(), 2);
    b.commit().unwrap();
    assert_eq!(store.reader().records(0, 1).unwrap()[0].at, 3_000);
}

#[test]
fn a_clock_step_back_never_lets_a_newer_entry_go() {
    let t = TempStore::new();
    let mut store = t.open();
    // seq 3 was appended after the clock stepped back to 1,500; seq 4 at
    // 9,000 is newer than the cutoff, so seq 5 (2,500) stays with it.
    fill(&mut store, &[1_000, 2_000, 1_500, 9_000, 2_500, 10_000]);
    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_before(5_000, 100).unwrap(), 3);
    b.commit().unwrap();
    let left: Vec<i64> = store
        .reader()
        .records(0, 10)
        .unwrap()
        .iter()
        .map(|c| c.at)
        .collect();
    assert_eq!(left, [9_000, 2_500, 10_000]);

    // The same after an earlier deletion removed the time-indexed entry
    // before an out-of-time-order one: seq 2 (at 2,000) goes, seq 3 (at
    // 1,900, after the step back) is newer than the cutoff 1,800.
    let t = TempStore::new();
    let mut store = t.open();
    fill(&mut store, &[1_000, 2_000, 1_900, 3_000]);
    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_through(2).unwrap(), 2);
    b.commit().unwrap();
    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_before(1_800, 100).unwrap(), 0);
    b.commit().unwrap();
    assert_eq!(store.reader().record_count().unwrap(), 2);
}

#[test]
fn deletion_removes_every_index_row_of_what_it_removed() {
    let t = TempStore::new();
    let mut store = t.open_shared();
    fill(&mut store, &times(40));
    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_before(20_500, 1000).unwrap(), 20);
    assert_eq!(b.delete_access_before(20_500, 1000).unwrap(), 20);
    b.commit().unwrap();
    let r = store.reader();
    // Searches through each index find only what is left.
    let code = PersonCode::new("CODE-A").unwrap();
    let (by_code, _) = r
        .search_records_page(
            &RecordFilter {
                code: Some(code),
                ..RecordFilter::default()
            },
            PageCursor::START,
            100,
        )
        .unwrap();
    assert_eq!(by_code.len(), 20);
    assert!(by_code.iter().all(|c| c.seq > 20));
    let (by_serial, _) = r
        .search_access_page(
            &AccessFilter {
                serial: Some(serial(5)),
                ..AccessFilter::default()
            },
            PageCursor::START,
            100,
        )
        .unwrap();
    assert!(by_serial.is_empty());
    drop(store);
    // Raw row counts: one row per remaining entry in every index.
    let counts = t.raw(|txn| {
        let len = |def: tables::KeyIndex| txn.open_table(def).unwrap().len().unwrap();
        (
            len(tables::RECORDS_BY_CODE),
            len(tables::RECORDS_BY_REQUESTER),
            len(tables::RECORDS_BY_ITEM),
            txn.open_table(tables::RECORDS_BY_TIME)
                .unwrap()
                .len()
                .unwrap(),
            txn.open_multimap_table(tables::RECORDS_BY_SERIAL)
                .unwrap()
                .len()
                .unwrap(),
            len(tables::ACCESS_BY_PARTY),
            len(tables::ACCESS_BY_SERIAL),
            txn.open_table(tables::ACCESS_BY_TIME)
                .unwrap()
                .len()
                .unwrap(),
        )
    });
    assert_eq!(counts, (20, 20, 20, 20, 20, 20, 20, 20));
}

#[test]
fn entries_waiting_for_their_index_rows_are_not_deleted_by_age() {
    let t = TempStore::new();
    let mut store = t.open();
    let mut b = store.begin().unwrap();
    for n in 1..=5u32 {
        b.append_record(i64::from(n) * 1000, simple_record(n))
            .unwrap();
    }
    b.commit().unwrap();
    store.index_pending(2).unwrap();
    let mut b = store.begin().unwrap();
    // All five are older than the cutoff; only the two indexed may go now.
    assert_eq!(b.delete_records_before(i64::MAX, 100).unwrap(), 2);
    b.commit().unwrap();
    store.index_pending(usize::MAX).unwrap();
    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_before(i64::MAX, 100).unwrap(), 3);
    b.commit().unwrap();
    assert_eq!(store.reader().record_count().unwrap(), 0);
    assert!(store.reader().verify_chains().unwrap().is_intact());
}
