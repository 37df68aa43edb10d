//! Tampered data detection on both hash chains (R-SEC-6) over the records
//! (R-REC-1) and the access log (R-REC-5): intact after many appends across
//! reopens, and every kind of raw-row tampering — an edited entry, a removed
//! entry (middle, first, last), an inserted entry (wrong link, perfect link
//! after the head, in the middle by renumbering), a renumbered or swapped
//! entry, an edited anchor — is reported with the right kind at the right
//! seq, without disturbing the other chain. Every tampered file is verified
//! twice, read-only (`ReadOnlyStore`, as `ifrelay verify-store` does) and
//! through an open `Store`, and both must report the same; a tampered copy
//! is reported damaged while the original stays intact.
#![allow(clippy::unwrap_used)]

mod common;

use common::{append_both, TempStore};
use ifrelay_store::{
    chain_hash, tables, ChainDefect, ChainName, ChainReport, ChainSummary, DefectKind,
};
use redb::ReadableTable;

type OwnedRow = ([u8; 32], [u8; 32], Vec<u8>);

const CHAINS: [ChainName; 2] = [ChainName::Records, ChainName::AccessLog];

fn table(chain: ChainName) -> tables::ChainTable {
    match chain {
        ChainName::Records => tables::RECORDS,
        ChainName::AccessLog => tables::ACCESS_LOG,
    }
}

fn summary(report: &ChainReport, chain: ChainName) -> &ChainSummary {
    match chain {
        ChainName::Records => &report.records,
        ChainName::AccessLog => &report.access_log,
    }
}

fn other(chain: ChainName) -> ChainName {
    match chain {
        ChainName::Records => ChainName::AccessLog,
        _ => ChainName::Records,
    }
}

fn d(seq: u64, kind: DefectKind) -> ChainDefect {
    ChainDefect { seq, kind }
}

/// A store holding entries 1..=10 in both chains, closed.
fn ten() -> TempStore {
    let t = TempStore::new();
    let mut store = t.open();
    append_both(&mut store, 1, 10, 3);
    assert!(store.reader().verify_chains().unwrap().is_intact());
    t
}

fn get(txn: &redb::WriteTransaction, chain: ChainName, seq: u64) -> OwnedRow {
    let t = txn.open_table(table(chain)).unwrap();
    let g = t.get(seq).unwrap().unwrap();
    let (p, h, b) = g.value();
    (p, h, b.to_vec())
}

fn put(txn: &redb::WriteTransaction, chain: ChainName, seq: u64, row: &OwnedRow) {
    let mut t = txn.open_table(table(chain)).unwrap();
    t.insert(seq, (row.0, row.1, row.2.as_slice())).unwrap();
}

fn remove(txn: &redb::WriteTransaction, chain: ChainName, seq: u64) -> OwnedRow {
    let row = get(txn, chain, seq);
    txn.open_table(table(chain)).unwrap().remove(seq).unwrap();
    row
}

/// Changes the `at` field of a stored body (both chains' bodies have one),
/// keeping it a valid entry.
fn edited(body: &[u8]) -> Vec<u8> {
    let mut v: ciborium::Value = ciborium::from_reader(body).unwrap();
    let map = v.as_map_mut().unwrap();
    let at = map
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("at"))
        .unwrap();
    let old = i128::from(at.1.as_integer().unwrap());
    at.1 = ciborium::Value::Integer(i64::try_from(old + 1).unwrap().into());
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out).unwrap();
    assert_ne!(out, body);
    out
}

/// Verifies the closed file read-only, then through an opened store, and
/// checks both agree.
fn verify(t: &TempStore) -> ChainReport {
    let read_only = t.read_only().unwrap().verify_chains().unwrap();
    let store = t.open();
    let report = store.reader().verify_chains().unwrap();
    assert_eq!(
        read_only, report,
        "read-only and in-box verification differ"
    );
    report
}

/// Tampers with the closed file, verifies it, and checks that `chain`
/// shows exactly `expected` while the other chain is intact.
fn check(
    t: &TempStore,
    chain: ChainName,
    tamper: impl FnOnce(&redb::WriteTransaction),
    expected: &[ChainDefect],
) {
    t.raw(tamper);
    let report = verify(t);
    assert!(!report.is_intact());
    assert_eq!(summary(&report, chain).defects, expected, "{chain}");
    assert!(summary(&report, other(chain)).is_intact());
}

#[test]
fn chains_stay_intact_over_many_batches_and_reopens() {
    let t = TempStore::new();
    let mut total = 0u64;
    for round in 0..4u32 {
        let mut store = t.open();
        store.boot(1_700_000_000_000).unwrap();
        append_both(&mut store, round * 50 + 1, 50, 7);
        total += 50;
        let r = store.reader();
        let report = r.verify_chains().unwrap();
        assert!(report.is_intact(), "{report:?}");
        for chain in CHAINS {
            let s = summary(&report, chain);
            assert_eq!(
                (s.checked, s.first_seq, s.last_seq),
                (total, Some(1), Some(total))
            );
        }
        let last = r.records(total, 1).unwrap();
        assert_eq!(report.records.head_hash, last[0].hash);
        assert_eq!(
            report.access_log.head_hash,
            r.access_log(total, 1).unwrap()[0].hash
        );
        assert_eq!(r.record_count().unwrap(), total);
        assert_eq!(r.access_count().unwrap(), total);
    }
}

#[test]
fn an_edited_entry_is_a_hash_mismatch_at_that_entry() {
    for chain in CHAINS {
        let t = ten();
        check(
            &t,
            chain,
            |txn| {
                let (p, h, b) = get(txn, chain, 5);
                put(txn, chain, 5, &(p, h, edited(&b)));
            },
            &[d(5, DefectKind::HashMismatch)],
        );
    }
}

#[test]
fn an_edited_entry_with_a_recomputed_hash_breaks_the_next_link() {
    for chain in CHAINS {
        let t = ten();
        check(
            &t,
            chain,
            |txn| {
                let (p, _, b) = get(txn, chain, 5);
                let b = edited(&b);
                let h = chain_hash(chain, &p, 5, &b);
                put(txn, chain, 5, &(p, h, b));
            },
            &[d(6, DefectKind::BrokenLink)],
        );
    }
}

#[test]
fn a_garbage_body_with_a_recomputed_hash_is_undecodable() {
    for chain in CHAINS {
        let t = ten();
        t.raw(|txn| {
            let (p, _, _) = get(txn, chain, 5);
            let b = b"\xff\x00garbage".to_vec();
            let h = chain_hash(chain, &p, 5, &b);
            put(txn, chain, 5, &(p, h, b));
        });
        let report = verify(&t);
        let defects = &summary(&report, chain).defects;
        assert!(matches!(
            defects.as_slice(),
            [
                ChainDefect {
                    seq: 5,
                    kind: DefectKind::Undecodable { .. }
                },
                ChainDefect {
                    seq: 6,
                    kind: DefectKind::BrokenLink
                }
            ]
        ));
    }
}

#[test]
fn a_removed_middle_entry_is_a_gap_and_a_broken_link() {
    for chain in CHAINS {
        let t = ten();
        check(
            &t,
            chain,
            |txn| {
                remove(txn, chain, 5);
            },
            &[
                d(6, DefectKind::Gap { expected: 5 }),
                d(6, DefectKind::BrokenLink),
            ],
        );
    }
}

#[test]
fn a_removed_first_entry_no_longer_matches_the_anchor() {
    for chain in CHAINS {
        let t = ten();
        check(
            &t,
            chain,
            |txn| {
                remove(txn, chain, 1);
            },
            &[
                d(2, DefectKind::Gap { expected: 1 }),
                d(2, DefectKind::AnchorMismatch),
            ],
        );
    }
}

#[test]
fn a_truncated_tail_is_a_head_mismatch() {
    for chain in CHAINS {
        let t = ten();
        check(
            &t,
            chain,
            |txn| {
                remove(txn, chain, 10);
                remove(txn, chain, 9);
            },
            &[d(8, DefectKind::HeadMismatch { recorded_head: 10 })],
        );
    }
}

#[test]
fn an_inserted_entry_with_a_wrong_link_is_a_broken_link() {
    for chain in CHAINS {
        let t = ten();
        check(
            &t,
            chain,
            |txn| {
                // Correct-looking: a real body, a hash that matches its own
                // (fabricated) link.
                let (_, _, b) = get(txn, chain, 10);
                let p = [0xAA; 32];
                let h = chain_hash(chain, &p, 11, &b);
                put(txn, chain, 11, &(p, h, b));
            },
            &[
                d(11, DefectKind::BrokenLink),
                d(11, DefectKind::HeadMismatch { recorded_head: 10 }),
            ],
        );
    }
}

#[test]
fn an_entry_appended_with_a_perfect_link_is_still_caught_by_the_head() {
    for chain in CHAINS {
        let t = ten();
        check(
            &t,
            chain,
            |txn| {
                let (_, p, b) = get(txn, chain, 10);
                let b = edited(&b);
                let h = chain_hash(chain, &p, 11, &b);
                put(txn, chain, 11, &(p, h, b));
            },
            &[d(11, DefectKind::HeadMismatch { recorded_head: 10 })],
        );
    }
}

#[test]
fn an_entry_inserted_in_the_middle_by_renumbering_the_rest_is_caught() {
    for chain in CHAINS {
        let t = ten();
        t.raw(|txn| {
            for seq in (6..=10).rev() {
                let row = remove(txn, chain, seq);
                put(txn, chain, seq + 1, &row);
            }
            // A perfect fabricated entry 6 linked to entry 5.
            let (_, p, b) = get(txn, chain, 5);
            let b = edited(&b);
            let h = chain_hash(chain, &p, 6, &b);
            put(txn, chain, 6, &(p, h, b));
        });
        let report = verify(&t);
        let s = summary(&report, chain);
        let mut expected = vec![d(7, DefectKind::BrokenLink), d(7, DefectKind::HashMismatch)];
        for seq in 8..=11 {
            expected.push(d(seq, DefectKind::HashMismatch));
        }
        expected.push(d(11, DefectKind::HeadMismatch { recorded_head: 10 }));
        assert_eq!(s.defects, expected, "{chain}");
        assert!(summary(&report, other(chain)).is_intact());
    }
}

#[test]
fn a_renumbered_entry_is_a_gap_and_a_hash_mismatch() {
    for chain in CHAINS {
        let t = ten();
        check(
            &t,
            chain,
            |txn| {
                let row = remove(txn, chain, 10);
                put(txn, chain, 12, &row);
            },
            &[
                d(12, DefectKind::Gap { expected: 10 }),
                d(12, DefectKind::HashMismatch),
                d(12, DefectKind::HeadMismatch { recorded_head: 10 }),
            ],
        );
    }
}

#[test]
fn two_swapped_entries_are_caught() {
    for chain in CHAINS {
        let t = ten();
        check(
            &t,
            chain,
            |txn| {
                let four = get(txn, chain, 4);
                let five = get(txn, chain, 5);
                put(txn, chain, 4, &five);
                put(txn, chain, 5, &four);
            },
            &[
                d(4, DefectKind::BrokenLink),
                d(4, DefectKind::HashMismatch),
                d(5, DefectKind::BrokenLink),
                d(5, DefectKind::HashMismatch),
                d(6, DefectKind::BrokenLink),
            ],
        );
    }
}

#[test]
fn an_edited_anchor_is_an_anchor_mismatch() {
    for chain in CHAINS {
        let t = ten();
        check(
            &t,
            chain,
            |txn| {
                let mut marks = txn.open_table(tables::CHAIN_MARKS).unwrap();
                let mut row = marks.get(chain.key()).unwrap().unwrap().value();
                row.1 = [1; 32];
                marks.insert(chain.key(), row).unwrap();
            },
            &[d(1, DefectKind::AnchorMismatch)],
        );
    }
}

#[test]
fn a_tampered_copy_is_reported_damaged_read_only_and_the_original_stays_intact() {
    let t = ten();
    let copy = TempStore::new();
    std::fs::copy(&t.path, &copy.path).unwrap();
    copy.raw(|txn| {
        let (p, h, b) = get(txn, ChainName::Records, 7);
        put(txn, ChainName::Records, 7, &(p, h, edited(&b)));
    });
    let report = copy.read_only().unwrap().verify_chains().unwrap();
    assert!(!report.is_intact());
    assert_eq!(report.records.defects, [d(7, DefectKind::HashMismatch)]);
    assert!(report.access_log.is_intact());
    let original = t.read_only().unwrap().verify_chains().unwrap();
    assert!(original.is_intact(), "{original:?}");
}

#[test]
fn reading_an_undecodable_row_is_a_corrupt_error_not_a_panic() {
    let t = ten();
    t.raw(|txn| {
        let (p, h, _) = get(txn, ChainName::Records, 3);
        put(txn, ChainName::Records, 3, &(p, h, b"\x01\x02".to_vec()));
    });
    let store = t.open();
    let err = store.reader().records(1, 10).unwrap_err();
    assert!(
        matches!(err, ifrelay_store::StoreError::Corrupt { .. }),
        "{err:?}"
    );
}

#[test]
fn verification_from_another_thread_sees_consistent_snapshots_while_the_writer_commits() {
    let t = TempStore::new();
    let mut store = t.open();
    let reader = store.reader();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let verifier = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut runs = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Acquire) || runs == 0 {
                let report = reader.verify_chains().unwrap();
                assert!(report.is_intact(), "{report:?}");
                assert_eq!(report.records.checked, report.access_log.checked);
                runs += 1;
            }
            runs
        })
    };
    append_both(&mut store, 1, 200, 5);
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert!(verifier.join().unwrap() > 0);
}
