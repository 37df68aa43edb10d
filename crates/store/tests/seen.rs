//! Duplicate suppression (DESIGN "Wire format": duplicates are dropped by
//! message id; R-COM-4 resends must not be handled twice): a frame accepted
//! once is found again by `(sender, message id)` with the reply first sent
//! — inside the same uncommitted batch, after commit, and after a reopen;
//! pruning removes only entries older than the cut, at most `max` per call,
//! with their time-index rows; a dropped batch remembers nothing; a time
//! index that lost rows is rebuilt on open so pruning reaches every entry.
#![allow(clippy::unwrap_used)]

mod common;

use common::TempStore;
use ifrelay_store::{tables, SeenEntry};
use redb::{ReadableTable, ReadableTableMetadata};

fn entry(at: i64, reply: &[u8]) -> Option<SeenEntry> {
    Some(SeenEntry {
        at,
        reply: reply.to_vec(),
    })
}

/// Rows of the time index, read raw from the file (no store open).
fn time_index_rows(t: &TempStore) -> Vec<(i64, String, String)> {
    t.raw(|txn| {
        let table = txn.open_table(tables::SEEN_BY_TIME).unwrap();
        table
            .iter()
            .unwrap()
            .map(|row| {
                let (k, _) = row.unwrap();
                let (at, sender, id) = k.value();
                (at, sender.to_owned(), id.to_owned())
            })
            .collect()
    })
}

#[test]
fn an_accepted_frame_is_found_in_its_own_batch_after_commit_and_after_reopen() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        let mut b = store.begin().unwrap();
        assert_eq!(b.seen("core", "m-1").unwrap(), None);
        b.put_seen("core", "m-1", 1_000, b"reply-1").unwrap();
        // Visible at once inside the uncommitted batch.
        assert_eq!(b.seen("core", "m-1").unwrap(), entry(1_000, b"reply-1"));
        // The key is the pair: same id from another sender, or another id
        // from the same sender, is a different frame.
        assert_eq!(b.seen("is/271004", "m-1").unwrap(), None);
        assert_eq!(b.seen("core", "m-2").unwrap(), None);
        b.put_seen("is/271004", "m-1", 1_001, b"reply-other")
            .unwrap();
        b.commit().unwrap();

        assert_eq!(store.reader().seen_len().unwrap(), 2);
        let b = store.begin().unwrap();
        assert_eq!(b.seen("core", "m-1").unwrap(), entry(1_000, b"reply-1"));
        assert_eq!(
            b.seen("is/271004", "m-1").unwrap(),
            entry(1_001, b"reply-other")
        );
        drop(b);
    }
    let mut store = t.open();
    assert_eq!(store.reader().seen_len().unwrap(), 2);
    let b = store.begin().unwrap();
    assert_eq!(b.seen("core", "m-1").unwrap(), entry(1_000, b"reply-1"));
    assert_eq!(
        b.seen("is/271004", "m-1").unwrap(),
        entry(1_001, b"reply-other")
    );
}

#[test]
fn a_separator_inside_a_sender_or_id_cannot_make_two_keys_collide() {
    let t = TempStore::new();
    let mut store = t.open();
    let mut b = store.begin().unwrap();
    b.put_seen("a\0b", "c", 1, b"first").unwrap();
    b.put_seen("a", "b\0c", 2, b"second").unwrap();
    assert_eq!(b.seen("a\0b", "c").unwrap(), entry(1, b"first"));
    assert_eq!(b.seen("a", "b\0c").unwrap(), entry(2, b"second"));
    b.commit().unwrap();
    assert_eq!(store.reader().seen_len().unwrap(), 2);
}

#[test]
fn pruning_removes_only_older_entries_at_most_max_per_call_with_their_index_rows() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        let mut b = store.begin().unwrap();
        for n in 0..10i64 {
            b.put_seen("core", &format!("m-{n}"), 100 + n, b"r")
                .unwrap();
        }
        // Timestamps before the epoch of the clock sort before positive
        // ones, not after.
        b.put_seen("ims/131016", "early", -5, b"r").unwrap();
        b.commit().unwrap();
        assert_eq!(store.reader().seen_len().unwrap(), 11);

        // Older than 105: "early" and m-0..m-4, six entries; at most 4 now.
        let mut b = store.begin().unwrap();
        assert_eq!(b.prune_seen(105, 4).unwrap(), 4);
        // Oldest first: "early", m-0, m-1, m-2 are gone.
        assert_eq!(b.seen("ims/131016", "early").unwrap(), None);
        assert_eq!(b.seen("core", "m-2").unwrap(), None);
        assert_eq!(b.seen("core", "m-3").unwrap(), entry(103, b"r"));
        b.commit().unwrap();
        assert_eq!(store.reader().seen_len().unwrap(), 7);

        let mut b = store.begin().unwrap();
        assert_eq!(b.prune_seen(105, 4).unwrap(), 2);
        assert_eq!(b.prune_seen(105, 4).unwrap(), 0);
        assert_eq!(b.prune_seen(1_000, 0).unwrap(), 0);
        // The cut is strict: the entry at exactly 105 stays.
        assert_eq!(b.seen("core", "m-5").unwrap(), entry(105, b"r"));
        assert_eq!(b.seen("core", "m-4").unwrap(), None);
        b.commit().unwrap();
        assert_eq!(store.reader().seen_len().unwrap(), 5);
    }
    // Both tables lost the same rows: the index holds exactly the five
    // entries left.
    let rows = time_index_rows(&t);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        [105, 106, 107, 108, 109]
    );
}

#[test]
fn putting_an_entry_again_moves_its_time_so_pruning_follows_the_latest() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        let mut b = store.begin().unwrap();
        b.put_seen("core", "m-1", 10, b"old").unwrap();
        b.commit().unwrap();
        let mut b = store.begin().unwrap();
        b.put_seen("core", "m-1", 50, b"new").unwrap();
        // The cut lies between the two times: nothing is older than it.
        assert_eq!(b.prune_seen(20, 100).unwrap(), 0);
        assert_eq!(b.seen("core", "m-1").unwrap(), entry(50, b"new"));
        b.commit().unwrap();
    }
    assert_eq!(time_index_rows(&t), [(50, "core".into(), "m-1".into())]);
}

#[test]
fn a_dropped_batch_remembers_nothing() {
    let t = TempStore::new();
    let mut store = t.open();
    let mut b = store.begin().unwrap();
    b.put_seen("core", "m-1", 1, b"r").unwrap();
    drop(b);
    assert_eq!(store.reader().seen_len().unwrap(), 0);
    let mut b = store.begin().unwrap();
    assert_eq!(b.seen("core", "m-1").unwrap(), None);
    b.put_seen("core", "m-2", 2, b"r").unwrap();
    b.commit().unwrap();

    // A dropped prune leaves the entry too.
    let mut b = store.begin().unwrap();
    assert_eq!(b.prune_seen(100, 10).unwrap(), 1);
    drop(b);
    assert_eq!(store.reader().seen_len().unwrap(), 1);
    drop(store);
    assert_eq!(time_index_rows(&t), [(2, "core".into(), "m-2".into())]);
}

#[test]
fn a_time_index_that_lost_rows_is_rebuilt_on_open() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        let mut b = store.begin().unwrap();
        b.put_seen("core", "m-1", 10, b"r").unwrap();
        b.put_seen("core", "m-2", 20, b"r").unwrap();
        b.commit().unwrap();
    }
    t.raw(|txn| {
        let mut index = txn.open_table(tables::SEEN_BY_TIME).unwrap();
        index.remove((10, "core", "m-1")).unwrap();
        assert_eq!(index.len().unwrap(), 1);
    });
    {
        let mut store = t.open();
        let mut b = store.begin().unwrap();
        // Without the rebuild m-1 could never be pruned.
        assert_eq!(b.prune_seen(100, 10).unwrap(), 2);
        b.commit().unwrap();
        assert_eq!(store.reader().seen_len().unwrap(), 0);
    }
    assert!(time_index_rows(&t).is_empty());
}
