//! What must survive a restart (R-AV-2): process states, the versioned
//! prefix list with its atomic switch of the current version, and the
//! outbox with sequence numbers that never repeat — plus the guarantee that
//! a batch dropped without commit leaves nothing behind, in the file or in
//! the chain heads.
#![allow(clippy::unwrap_used)]

mod common;

use common::{access, serial, simple_record, TempStore};
use ifrelay_store::{OutboxEntry, StoreError};

#[test]
fn processes_survive_reopen_and_removals_stick() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        let mut b = store.begin().unwrap();
        b.put_process(&serial(2), b"two").unwrap();
        b.put_process(&serial(1), b"one").unwrap();
        b.put_process(&serial(3), b"three").unwrap();
        b.commit().unwrap();
        let mut b = store.begin().unwrap();
        b.put_process(&serial(1), b"one, later").unwrap();
        assert!(b.remove_process(&serial(3)).unwrap());
        assert!(!b.remove_process(&serial(9)).unwrap());
        b.commit().unwrap();
    }
    let mut store = t.open();
    assert_eq!(store.reader().process_count().unwrap(), 2);
    let boot = store.boot(1_700_000_000_000).unwrap();
    assert_eq!(
        boot.processes,
        vec![
            (serial(1), b"one, later".to_vec()),
            (serial(2), b"two".to_vec())
        ]
    );
}

#[test]
fn prefix_versions_are_kept_and_the_current_one_switches_atomically() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        let reader = store.reader();
        assert_eq!(reader.current_prefix().unwrap(), None);

        let mut b = store.begin().unwrap();
        b.put_prefix(1, b"v1").unwrap();
        b.commit().unwrap();

        let mut b = store.begin().unwrap();
        b.put_prefix(2, b"v2").unwrap();
        // Not committed: a reader still sees version 1.
        assert_eq!(reader.current_prefix().unwrap(), Some((1, b"v1".to_vec())));
        drop(b);
        assert_eq!(reader.current_prefix().unwrap(), Some((1, b"v1".to_vec())));
        assert_eq!(reader.prefix_version(2).unwrap(), None);

        let mut b = store.begin().unwrap();
        b.put_prefix(2, b"v2").unwrap();
        b.commit().unwrap();
        assert_eq!(reader.current_prefix().unwrap(), Some((2, b"v2".to_vec())));

        // Older versions are refused, a stored version is immutable, the
        // same bytes again are accepted.
        let mut b = store.begin().unwrap();
        assert!(matches!(
            b.put_prefix(1, b"v1"),
            Err(StoreError::PrefixVersionStale {
                version: 1,
                current: 2
            })
        ));
        assert!(matches!(
            b.put_prefix(2, b"other"),
            Err(StoreError::PrefixVersionConflict { version: 2 })
        ));
        b.put_prefix(2, b"v2").unwrap();
        b.commit().unwrap();
    }
    let mut store = t.open();
    let boot = store.boot(1_700_000_000_000).unwrap();
    assert_eq!(
        boot.prefixes,
        vec![(1, b"v1".to_vec()), (2, b"v2".to_vec())],
        "every stored version, oldest first"
    );
    assert_eq!(
        store.reader().prefix_version(1).unwrap(),
        Some(b"v1".to_vec())
    );

    // Pruning removes the versions below the one given, atomically.
    let mut b = store.begin().unwrap();
    b.put_prefix(3, b"v3").unwrap();
    assert_eq!(b.prune_prefixes_below(2).unwrap(), 1);
    b.commit().unwrap();
    let boot = store.boot(1_700_000_000_001).unwrap();
    assert_eq!(
        boot.prefixes,
        vec![(2, b"v2".to_vec()), (3, b"v3".to_vec())]
    );
    assert_eq!(store.reader().prefix_version(1).unwrap(), None);
}

#[test]
fn outbox_seq_is_monotonic_across_reopen_even_after_removing_the_last_entries() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        let mut b = store.begin().unwrap();
        assert_eq!(b.push_outbox("core", b"f1").unwrap(), 1);
        assert_eq!(b.push_outbox("is/271004", b"f2").unwrap(), 2);
        assert_eq!(b.push_outbox("ims/131016", b"f3").unwrap(), 3);
        b.commit().unwrap();
        let mut b = store.begin().unwrap();
        assert!(b.remove_outbox(3).unwrap());
        assert!(b.remove_outbox(2).unwrap());
        assert!(!b.remove_outbox(2).unwrap());
        b.commit().unwrap();
        // A dropped batch does not consume a seq.
        let mut b = store.begin().unwrap();
        assert_eq!(b.push_outbox("core", b"lost").unwrap(), 4);
        drop(b);
    }
    let mut store = t.open();
    let boot = store.boot(1_700_000_000_000).unwrap();
    assert_eq!(boot.outbox_len, 1);
    assert_eq!(
        store.reader().outbox_for("core", None, 10).unwrap(),
        vec![OutboxEntry {
            seq: 1,
            destination: "core".into(),
            frame: b"f1".to_vec()
        }]
    );
    let mut b = store.begin().unwrap();
    assert_eq!(b.push_outbox("core", b"f4").unwrap(), 4);
    assert!(b.remove_outbox(1).unwrap());
    assert!(b.remove_outbox(4).unwrap());
    b.commit().unwrap();
    drop(store);

    // Empty outbox: the counter still carries on.
    let mut store = t.open();
    assert_eq!(store.reader().outbox_len().unwrap(), 0);
    let mut b = store.begin().unwrap();
    assert_eq!(b.push_outbox("core", b"f5").unwrap(), 5);
    b.commit().unwrap();
    let boot = store.boot(1_700_000_000_000).unwrap();
    assert_eq!(boot.outbox_len, 1);
    let core = store.reader().outbox_for("core", None, 10).unwrap();
    assert_eq!(core.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
}

#[test]
fn a_dropped_batch_leaves_nothing_in_the_file_or_the_chain_heads() {
    let t = TempStore::new();
    let mut store = t.open();
    {
        let mut b = store.begin().unwrap();
        b.put_process(&serial(1), b"p").unwrap();
        b.put_prefix(1, b"v1").unwrap();
        assert_eq!(b.append_record(1, simple_record(1)).unwrap(), 1);
        assert_eq!(b.append_access(access(1)).unwrap(), 1);
        assert_eq!(b.push_outbox("core", b"f").unwrap(), 1);
        // dropped here
    }
    let r = store.reader();
    assert_eq!(r.process_count().unwrap(), 0);
    assert_eq!(r.current_prefix().unwrap(), None);
    assert_eq!(r.record_count().unwrap(), 0);
    assert_eq!(r.access_count().unwrap(), 0);
    assert_eq!(r.outbox_len().unwrap(), 0);
    assert!(r.verify_chains().unwrap().is_intact());

    // The next batch starts from the old heads: seq 1 again, and the chain
    // verifies (it would not if the dropped entries had moved the heads).
    let mut b = store.begin().unwrap();
    assert_eq!(b.append_record(2, simple_record(2)).unwrap(), 1);
    assert_eq!(b.append_access(access(2)).unwrap(), 1);
    assert_eq!(b.push_outbox("core", b"g").unwrap(), 1);
    b.commit().unwrap();
    let report = r.verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(r.records(0, 10).unwrap()[0].record, simple_record(2));
    drop(store);

    let store = t.open();
    let report = store.reader().verify_chains().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.last_seq, Some(1));
}

#[test]
fn records_and_access_entries_read_back_as_written() {
    let t = TempStore::new();
    let mut store = t.open();
    let mut b = store.begin().unwrap();
    for n in 1..=5 {
        b.append_record(100 + i64::from(n), simple_record(n))
            .unwrap();
        b.append_access(access(n)).unwrap();
    }
    b.commit().unwrap();
    let r = store.reader();
    let recs = r.records(2, 2).unwrap();
    assert_eq!(recs.iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(recs[0].at, 102);
    assert_eq!(recs[0].record, simple_record(2));
    assert_eq!(recs[1].prev_hash, recs[0].hash);
    let log = r.access_log(4, 100).unwrap();
    assert_eq!(log.iter().map(|c| c.seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(log[1].entry, access(5));
    assert_eq!(log[1].prev_hash, log[0].hash);
    assert!(r.access_log(1, 0).unwrap().is_empty());
}
