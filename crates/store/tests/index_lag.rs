//! The index mark (issue 9 item 2, `index.rs`): appends leave their
//! search index rows to a later index step. Searches find entries on both
//! sides of the mark; an index step writes exactly the waiting rows; the
//! waiting entries survive a reopen and a crash of the writer (they are
//! read back from the chain); a policy deletion of entries that never got
//! index rows moves the mark past them and leaves no stray rows.
#![allow(clippy::unwrap_used)]

mod common;

use common::{append_both, TempStore};
use ifrelay_proto::PersonCode;
use ifrelay_store::{tables, AccessFilter, RecordFilter, Store};
use redb::{ReadableTable, ReadableTableMetadata};

/// Rows of the person-code index and of the records' time index, read
/// from the file of a closed store.
fn record_index_rows(t: &TempStore) -> (u64, u64) {
    t.raw(|txn| {
        let by_code = txn
            .open_table(tables::RECORDS_BY_CODE)
            .unwrap()
            .len()
            .unwrap();
        let by_time = txn
            .open_table(tables::RECORDS_BY_TIME)
            .unwrap()
            .len()
            .unwrap();
        (by_code, by_time)
    })
}

fn records_indexed_through(t: &TempStore) -> Option<u64> {
    t.raw(|txn| {
        txn.open_table(tables::META)
            .unwrap()
            .get(tables::RECORDS_INDEXED_KEY)
            .unwrap()
            .map(|g| g.value())
    })
}

fn by_code(store: &Store, code: &str) -> Vec<u64> {
    store
        .reader()
        .search_records(
            &RecordFilter {
                code: Some(PersonCode::new(code).unwrap()),
                ..RecordFilter::default()
            },
            1000,
        )
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

#[test]
fn entries_are_found_before_and_after_their_index_step() {
    let t = TempStore::new();
    let mut store = t.open();
    append_both(&mut store, 1, 10, 3);
    assert_eq!(
        store.unindexed(),
        20,
        "ten records and ten access entries wait"
    );
    // simple_record(n) carries no person code: search by serial instead.
    let serial_of = |store: &Store, n: u32| {
        store
            .reader()
            .search_records(
                &RecordFilter {
                    serial: Some(common::serial(n)),
                    ..RecordFilter::default()
                },
                10,
            )
            .unwrap()
            .len()
    };
    for n in 1..=10 {
        assert_eq!(serial_of(&store, n), 1, "record {n} before any index step");
    }
    assert_eq!(store.index_pending(4).unwrap(), 8, "four of each chain");
    assert_eq!(store.unindexed(), 12);
    for n in 1..=10 {
        assert_eq!(serial_of(&store, n), 1, "record {n} across the mark");
    }
    let staff = store
        .reader()
        .search_access_page(
            &AccessFilter::default(),
            ifrelay_store::PageCursor::START,
            100,
        )
        .unwrap()
        .0;
    assert_eq!(staff.len(), 10);
    assert_eq!(store.index_pending(usize::MAX).unwrap(), 12);
    assert_eq!(store.unindexed(), 0);
    assert_eq!(store.index_pending(usize::MAX).unwrap(), 0, "nothing waits");
    drop(store);
    assert_eq!(records_indexed_through(&t), Some(10));
    let (_, by_time) = record_index_rows(&t);
    assert_eq!(by_time, 10, "one time row per record, none twice");
}

#[test]
fn waiting_entries_survive_a_reopen_and_get_their_rows_once() {
    let t = TempStore::new();
    let mut store = t.open();
    let mut b = store.begin().unwrap();
    for n in 1..=6u32 {
        let mut r = common::simple_record(n);
        r.code = Some(PersonCode::new(if n % 2 == 0 { "CODE-E" } else { "CODE-O" }).unwrap());
        b.append_record(1_000 + i64::from(n), r).unwrap();
    }
    b.commit().unwrap();
    store.index_pending(2).unwrap();
    drop(store);
    assert_eq!(records_indexed_through(&t), Some(2));
    assert_eq!(record_index_rows(&t), (2, 2));

    // The writer's memory is gone; the open reads the waiting entries back.
    let mut store = t.open();
    assert_eq!(store.unindexed(), 4);
    assert_eq!(by_code(&store, "CODE-E"), vec![2, 4, 6]);
    store.index_pending(usize::MAX).unwrap();
    assert_eq!(by_code(&store, "CODE-O"), vec![1, 3, 5]);
    drop(store);
    assert_eq!(record_index_rows(&t), (6, 6));
    let store = t.open();
    assert_eq!(store.unindexed(), 0);
}

#[test]
fn deleting_entries_that_never_got_index_rows_moves_the_mark_past_them() {
    let t = TempStore::new();
    let mut store = t.open();
    append_both(&mut store, 1, 10, 5);
    store.index_pending(3).unwrap();
    let mut b = store.begin().unwrap();
    assert_eq!(b.delete_records_through(7).unwrap(), 7);
    b.commit().unwrap();
    // Records 8..10 wait (and three access entries were indexed, seven wait).
    assert_eq!(store.unindexed(), 3 + 7);
    store.index_pending(usize::MAX).unwrap();
    assert!(store.reader().verify_chains().unwrap().is_intact());
    drop(store);
    assert_eq!(records_indexed_through(&t), Some(10));
    let (_, by_time) = record_index_rows(&t);
    assert_eq!(by_time, 3, "rows for the surviving records 8..10 only");
    // The open finds the indexes sound: nothing to rebuild or index.
    let store = t.open();
    assert_eq!(store.unindexed(), 0);
    assert_eq!(store.reader().record_count().unwrap(), 3);
}

#[test]
fn a_sorted_index_build_writes_the_rows_an_index_step_would() {
    let records = |range: std::ops::Range<u32>| {
        range
            .map(|n| {
                let mut r = common::simple_record(n);
                r.code = Some(PersonCode::new(&format!("CODE-{}", n % 7)).unwrap());
                // The clock steps back once: one record out of time order.
                let at = if n == 40 { 10 } else { 1_000 + i64::from(n) };
                (at, r)
            })
            .collect::<Vec<_>>()
    };
    // One store through batches and index steps, one through the fill.
    let stepped = TempStore::new();
    let mut a = stepped.open();
    let mut b = a.begin().unwrap();
    for (at, r) in records(1..101) {
        b.append_record(at, r).unwrap();
    }
    b.commit().unwrap();
    a.index_pending(usize::MAX).unwrap();
    let filled = TempStore::new();
    let mut f = filled.open_shared();
    assert_eq!(f.fill_records_for_test(records(1..61), 25).unwrap(), 60);
    assert_eq!(f.index_records_sorted_for_test(33).unwrap(), 60);
    assert_eq!(f.fill_records_for_test(records(61..101), 25).unwrap(), 40);
    assert_eq!(
        by_code(&f, "CODE-3"),
        by_code(&a, "CODE-3"),
        "before the second build"
    );
    assert_eq!(f.index_records_sorted_for_test(7).unwrap(), 40);
    assert_eq!(
        f.index_records_sorted_for_test(7).unwrap(),
        0,
        "nothing left"
    );
    for code in 0..7 {
        let code = format!("CODE-{code}");
        assert_eq!(by_code(&f, &code), by_code(&a, &code));
    }
    drop((a, f));
    let rows = |t: &TempStore| {
        t.raw(|txn| {
            (
                txn.open_table(tables::RECORDS_BY_CODE)
                    .unwrap()
                    .len()
                    .unwrap(),
                txn.open_table(tables::RECORDS_BY_TIME)
                    .unwrap()
                    .len()
                    .unwrap(),
                txn.open_table(tables::RECORDS_OUT_OF_TIME_ORDER)
                    .unwrap()
                    .len()
                    .unwrap(),
                txn.open_multimap_table(tables::RECORDS_BY_SERIAL)
                    .unwrap()
                    .len()
                    .unwrap(),
            )
        })
    };
    assert_eq!(rows(&filled), rows(&stepped));
    assert_eq!(rows(&filled), (100, 99, 1, 100));
    assert_eq!(records_indexed_through(&filled), Some(100));
    assert_eq!(filled.open().unindexed(), 0);
}
