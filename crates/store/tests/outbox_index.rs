//! The outbox indexed per destination, so delivery resends a pending
//! backlog to the core or the IMS once they are reachable again (R-COM-4)
//! page by page instead of loading it whole: entries of interleaved
//! destinations page in seq order with `after_seq`, removal and reopen keep
//! the index and counts right, a store written without the index (or one an
//! earlier firmware changed behind its back) gets it rebuilt on open, and a
//! backlog filled in bulk reads back from its first page.
#![allow(clippy::unwrap_used)]

mod common;

use common::TempStore;
use ifrelay_store::{tables, OutboxEntry, Store, StoreError};
use redb::{ReadableTable, ReadableTableMetadata};

fn seqs(entries: &[OutboxEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

fn frame(n: u64) -> Vec<u8> {
    format!("frame-{n}").into_bytes()
}

/// Pushes 20 frames alternating core, is/271004, core, ims/131016, ...:
/// core gets the odd seqs, the two others share the even ones.
fn push_interleaved(store: &mut Store) {
    let mut b = store.begin().unwrap();
    for n in 1..=20u64 {
        let destination = match n % 4 {
            1 | 3 => "core",
            2 => "is/271004",
            _ => "ims/131016",
        };
        assert_eq!(b.push_outbox(destination, &frame(n)).unwrap(), n);
    }
    b.commit().unwrap();
}

/// Every page of `destination`, `page` entries at a time.
fn all_pages(store: &Store, destination: &str, page: usize) -> Vec<Vec<u64>> {
    let reader = store.reader();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let got = reader.outbox_for(destination, after, page).unwrap();
        if got.is_empty() {
            return pages;
        }
        // Strictly after `after`: a page that does not advance would
        // otherwise loop here for ever.
        assert!(
            after.is_none_or(|a| got[0].seq > a),
            "{destination}: page after {after:?} starts at {}",
            got[0].seq
        );
        assert!(got.len() <= page);
        for e in &got {
            assert_eq!(e.destination, destination);
            assert_eq!(e.frame, frame(e.seq));
        }
        after = got.last().map(|e| e.seq);
        pages.push(seqs(&got));
    }
}

fn destinations(store: &Store) -> Vec<(String, u64)> {
    store.reader().outbox_destinations().unwrap()
}

fn dests(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect()
}

#[test]
fn interleaved_destinations_page_in_seq_order_and_removal_and_reopen_keep_the_index() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        push_interleaved(&mut store);
        assert_eq!(
            all_pages(&store, "core", 4),
            [vec![1, 3, 5, 7], vec![9, 11, 13, 15], vec![17, 19]]
        );
        assert_eq!(
            all_pages(&store, "is/271004", 100),
            [vec![2, 6, 10, 14, 18]]
        );
        assert_eq!(
            all_pages(&store, "ims/131016", 2),
            [vec![4, 8], vec![12, 16], vec![20]]
        );
        // after_seq need not be one of the destination's seqs.
        let r = store.reader();
        assert_eq!(seqs(&r.outbox_for("core", Some(10), 2).unwrap()), [11, 13]);
        assert!(r.outbox_for("core", Some(19), 10).unwrap().is_empty());
        assert!(r.outbox_for("core", Some(u64::MAX), 10).unwrap().is_empty());
        assert!(r.outbox_for("core", None, 0).unwrap().is_empty());
        // A name that is a prefix of another is its own destination.
        assert!(r.outbox_for("cor", None, 10).unwrap().is_empty());
        assert!(r.outbox_for("is", None, 10).unwrap().is_empty());
        assert_eq!(
            destinations(&store),
            dests(&[("core", 10), ("ims/131016", 5), ("is/271004", 5)])
        );

        // Delivered entries leave the index and the counts; a destination
        // with nothing left is no longer listed.
        let mut b = store.begin().unwrap();
        for seq in [1, 5, 19, 2, 6, 10, 14, 18] {
            assert!(b.remove_outbox(seq).unwrap());
        }
        assert!(!b.remove_outbox(1).unwrap());
        assert!(!b.remove_outbox(999).unwrap());
        b.commit().unwrap();
        assert_eq!(
            all_pages(&store, "core", 3),
            [vec![3, 7, 9], vec![11, 13, 15], vec![17]]
        );
        assert!(all_pages(&store, "is/271004", 3).is_empty());
        assert_eq!(
            destinations(&store),
            dests(&[("core", 7), ("ims/131016", 5)])
        );

        // A dropped batch changes neither.
        let mut b = store.begin().unwrap();
        assert!(b.remove_outbox(3).unwrap());
        b.push_outbox("is/271004", b"lost").unwrap();
        drop(b);
        assert_eq!(
            destinations(&store),
            dests(&[("core", 7), ("ims/131016", 5)])
        );
    }
    // The index rows themselves went with the entries (a stale row would be
    // skipped by `outbox_for`, so check the table), and the marker follows
    // the counter so the next open trusts the index.
    assert_eq!(index_len(&t), 12);
    let (next, marker) = t.raw(|txn| {
        let meta = txn.open_table(tables::META).unwrap();
        let get = |key| meta.get(key).unwrap().map(|g| g.value());
        (
            get(tables::OUTBOX_NEXT_KEY),
            get(tables::OUTBOX_INDEX_NEXT_KEY),
        )
    });
    assert_eq!((next, marker), (Some(21), Some(21)));
    let mut store = t.open();
    assert_eq!(store.boot(1_700_000_000_000).unwrap().outbox_len, 12);
    assert_eq!(
        all_pages(&store, "core", 100),
        [vec![3, 7, 9, 11, 13, 15, 17]]
    );
    assert_eq!(
        all_pages(&store, "ims/131016", 100),
        [vec![4, 8, 12, 16, 20]]
    );
    assert_eq!(
        destinations(&store),
        dests(&[("core", 7), ("ims/131016", 5)])
    );
    // New entries join the index after the reopen, with fresh seqs.
    let mut b = store.begin().unwrap();
    assert_eq!(b.push_outbox("is/271004", &frame(21)).unwrap(), 21);
    b.commit().unwrap();
    assert_eq!(all_pages(&store, "is/271004", 100), [vec![21]]);
}

/// Makes the file look as an earlier firmware wrote it: the outbox and its
/// counter, but no index tables and no index marker.
fn strip_index(t: &TempStore) {
    t.raw(|txn| {
        assert!(txn.delete_table(tables::OUTBOX_BY_DESTINATION).unwrap());
        assert!(txn.delete_table(tables::OUTBOX_COUNTS).unwrap());
        txn.delete_table(tables::SEEN).unwrap();
        txn.delete_table(tables::SEEN_BY_TIME).unwrap();
        txn.open_table(tables::META)
            .unwrap()
            .remove(tables::OUTBOX_INDEX_NEXT_KEY)
            .unwrap();
    });
}

fn index_len(t: &TempStore) -> u64 {
    t.raw(|txn| {
        txn.open_table(tables::OUTBOX_BY_DESTINATION)
            .unwrap()
            .len()
            .unwrap()
    })
}

#[test]
fn a_store_written_without_the_index_gets_it_built_on_open() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        push_interleaved(&mut store);
        let mut b = store.begin().unwrap();
        assert!(b.remove_outbox(1).unwrap());
        b.commit().unwrap();
    }
    strip_index(&t);
    {
        let mut store = t.open();
        assert_eq!(
            destinations(&store),
            dests(&[("core", 9), ("ims/131016", 5), ("is/271004", 5)])
        );
        assert_eq!(
            all_pages(&store, "core", 5),
            [vec![3, 5, 7, 9, 11], vec![13, 15, 17, 19]]
        );
        assert_eq!(
            all_pages(&store, "is/271004", 100),
            [vec![2, 6, 10, 14, 18]]
        );
        // The rest of the store carries on as before.
        assert_eq!(store.reader().seen_len().unwrap(), 0);
        let mut b = store.begin().unwrap();
        assert_eq!(b.push_outbox("core", &frame(21)).unwrap(), 21);
        assert!(b.remove_outbox(3).unwrap());
        b.commit().unwrap();
    }
    // Built durably, once: the file holds the index, and a further open
    // keeps it (9 - 1 + 1 core entries).
    assert_eq!(index_len(&t), 19);
    let store = t.open();
    assert_eq!(
        destinations(&store),
        dests(&[("core", 9), ("ims/131016", 5), ("is/271004", 5)])
    );
    assert_eq!(
        all_pages(&store, "core", 100),
        [vec![5, 7, 9, 11, 13, 15, 17, 19, 21]]
    );
}

#[test]
fn an_empty_store_written_without_the_index_opens() {
    let t = TempStore::new();
    drop(t.open());
    strip_index(&t);
    let mut store = t.open();
    assert!(destinations(&store).is_empty());
    let mut b = store.begin().unwrap();
    assert_eq!(b.push_outbox("core", &frame(1)).unwrap(), 1);
    b.commit().unwrap();
    assert_eq!(all_pages(&store, "core", 10), [vec![1]]);
}

#[test]
fn entries_pushed_or_removed_by_a_firmware_without_the_index_are_reindexed() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        push_interleaved(&mut store);
    }
    // An earlier firmware pushes seq 21 (moving the counter) and delivers
    // seq 1, without touching the index: the row counts still agree, only
    // the marker no longer matches the counter.
    t.raw(|txn| {
        let mut outbox = txn.open_table(tables::OUTBOX).unwrap();
        outbox
            .insert(21, ("is/271004", frame(21).as_slice()))
            .unwrap();
        outbox.remove(1).unwrap();
        txn.open_table(tables::META)
            .unwrap()
            .insert(tables::OUTBOX_NEXT_KEY, 22)
            .unwrap();
    });
    {
        let store = t.open();
        assert_eq!(
            all_pages(&store, "is/271004", 100),
            [vec![2, 6, 10, 14, 18, 21]]
        );
        assert_eq!(
            destinations(&store),
            dests(&[("core", 9), ("ims/131016", 5), ("is/271004", 6)])
        );
    }
    assert_eq!(index_len(&t), 20);
    // It only delivers, so the counter stays: the row counts no longer
    // match.
    t.raw(|txn| {
        let mut outbox = txn.open_table(tables::OUTBOX).unwrap();
        outbox.remove(3).unwrap();
        outbox.remove(4).unwrap();
    });
    let store = t.open();
    assert_eq!(
        all_pages(&store, "core", 100),
        [vec![5, 7, 9, 11, 13, 15, 17, 19]]
    );
    assert_eq!(
        destinations(&store),
        dests(&[("core", 8), ("ims/131016", 4), ("is/271004", 6)])
    );
    drop(store);
    assert_eq!(index_len(&t), 18);
}

#[test]
fn index_rows_lost_while_the_counts_stay_are_rebuilt_on_open() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        push_interleaved(&mut store);
    }
    // Damage to the index table only: marker and counts still agree with
    // the outbox, the row count of the index does not.
    t.raw(|txn| {
        let mut index = txn.open_table(tables::OUTBOX_BY_DESTINATION).unwrap();
        index.remove(("core", 1)).unwrap();
        index.remove(("core", 3)).unwrap();
    });
    let store = t.open();
    assert_eq!(
        all_pages(&store, "core", 100),
        [vec![1, 3, 5, 7, 9, 11, 13, 15, 17, 19]]
    );
    drop(store);
    assert_eq!(index_len(&t), 20);
}

#[test]
fn an_index_row_naming_another_destinations_entry_is_reported_corrupt() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        push_interleaved(&mut store);
    }
    // Rewrite entry 1 (core) as if it were for an IS: counts and lengths
    // still match, only the contents disagree.
    t.raw(|txn| {
        txn.open_table(tables::OUTBOX)
            .unwrap()
            .insert(1, ("is/999999", frame(1).as_slice()))
            .unwrap();
    });
    let store = t.open();
    let err = store.reader().outbox_for("core", None, 10).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    // Entries after it still page.
    assert_eq!(
        seqs(&store.reader().outbox_for("core", Some(1), 2).unwrap()),
        [3, 5]
    );
}

#[test]
fn a_backlog_filled_in_bulk_reads_back_from_its_first_page() {
    const BACKLOG: u64 = 100_000;
    let t = TempStore::new();
    {
        let mut store = t.open();
        let mut b = store.begin().unwrap();
        assert_eq!(b.push_outbox("ims/131016", &frame(1)).unwrap(), 1);
        b.commit().unwrap();
        let filled = store
            .fill_outbox_for_test("core", (2..=BACKLOG + 1).map(frame), 10_000)
            .unwrap();
        assert_eq!(filled, BACKLOG);
        // Counted as it was filled (not only by the rebuild on reopen).
        assert_eq!(
            destinations(&store),
            dests(&[("core", BACKLOG), ("ims/131016", 1)])
        );
        // The counter moved past the whole backlog.
        let mut b = store.begin().unwrap();
        assert_eq!(
            b.push_outbox("ims/131016", &frame(BACKLOG + 2)).unwrap(),
            BACKLOG + 2
        );
        b.commit().unwrap();
        // An empty fill commits nothing.
        assert_eq!(
            store
                .fill_outbox_for_test("core", std::iter::empty::<Vec<u8>>(), 10)
                .unwrap(),
            0
        );
    }
    // Durable: all of it is there after a reopen.
    let mut store = t.open();
    assert_eq!(
        store.boot(1_700_000_000_000).unwrap().outbox_len,
        BACKLOG + 2
    );
    assert_eq!(
        destinations(&store),
        dests(&[("core", BACKLOG), ("ims/131016", 2)])
    );
    let r = store.reader();
    let first = r.outbox_for("core", None, 256).unwrap();
    assert_eq!(seqs(&first), (2..=257).collect::<Vec<_>>());
    assert!(first.iter().all(|e| e.frame == frame(e.seq)));
    let last = r.outbox_for("core", Some(BACKLOG - 9), 256).unwrap();
    assert_eq!(seqs(&last), (BACKLOG - 8..=BACKLOG + 1).collect::<Vec<_>>());
    assert_eq!(
        seqs(&r.outbox_for("ims/131016", None, 256).unwrap()),
        [1, BACKLOG + 2]
    );
}

#[test]
fn a_bulk_fill_is_durable_when_it_returns() {
    let t = TempStore::new();
    let mut store = t.open();
    let filled = store
        .fill_outbox_for_test("core", (1..=1_000).map(frame), 100)
        .unwrap();
    assert_eq!(filled, 1_000);
    // What a power cut would leave: the files as they are on disk now,
    // without a clean close. The fill is not logged, so the redb file
    // alone must hold it.
    let copy = t.dir.path().join("copy.redb");
    std::fs::copy(&t.path, &copy).unwrap();
    std::fs::copy(
        ifrelay_store::log_path(&t.path),
        ifrelay_store::log_path(&copy),
    )
    .unwrap();
    std::mem::forget(store);
    let store = Store::open(&copy, common::CACHE).unwrap();
    assert_eq!(store.reader().outbox_len().unwrap(), 1_000);
    assert_eq!(destinations(&store), dests(&[("core", 1_000)]));
}
