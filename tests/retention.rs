//! Retention deletion driven by the engine's tick (issue 9 item 5;
//! R-REC-4, R-REC-6): each tick deletes a bounded step of the access-log
//! entries past `retention.access_log_years`, and of the records past
//! `retention.records_years` only when `delete_records` is on; nothing
//! inside its period goes, and the chains still verify.

mod steps;

use std::time::Duration;

use ifrelay::relay::engine::harness::{Fixture, Harness};
use ifrelay::relay::engine::{RetentionPolicy, RETENTION_DELETE_PER_TICK};
use ifrelay_proto::{Millis, Serial};
use ifrelay_store::{AccessEntry, Direction, Record, RecordKind, Side, Store};
use steps::NOON_JST;

const DAY: Millis = 24 * 3600 * 1000;
const YEAR: Millis = 365 * DAY;

fn record(f: &Fixture, n: u32) -> Record {
    Record {
        kind: RecordKind::Query,
        side: Side::Requester,
        serial: Serial::new(&format!("131016-20250101-1-{n}")).expect("serial"),
        prefix: f.prefix(),
        code: None,
        permit_id: None,
        counterpart: None,
        query_requested_at: 0,
        provision_at: None,
        clock_synced: false,
    }
}

fn entry(at: Millis) -> AccessEntry {
    AccessEntry {
        at,
        terminal: "127.0.0.1:1".into(),
        party: "core".into(),
        agency: None,
        staff: None,
        direction: Direction::In,
        operation: "box_status".into(),
        message_id: None,
        serial: None,
        business: None,
        info_name: None,
        items: Vec::new(),
        outcome: "accepted".into(),
    }
}

/// A store with `old` records and access entries from 8 years ago, then
/// 10 of each from yesterday.
fn prepared(dir: &std::path::Path, f: &Fixture, old: u32) -> std::path::PathBuf {
    let path = dir.join("ifrelay.redb");
    let mut store = Store::open(&path, 8 << 20).expect("open");
    let mut b = store.begin().expect("begin");
    for n in 0..old + 10 {
        let at = if n < old {
            NOON_JST - 8 * YEAR + Millis::from(n)
        } else {
            NOON_JST - DAY
        };
        b.append_record(at, record(f, n)).expect("record");
        b.append_access(entry(at)).expect("access");
    }
    b.commit().expect("commit");
    path
}

fn config(f: &Fixture, policy: RetentionPolicy) -> ifrelay::relay::engine::EngineConfig {
    let mut cfg = f.config();
    cfg.retention = policy;
    cfg
}

#[test]
fn the_tick_deletes_old_access_entries_in_bounded_steps_and_keeps_records_by_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f = Fixture::new();
    let path = prepared(dir.path(), &f, 1200);
    let store = Store::open(&path, 8 << 20).expect("open");
    let mut h =
        Harness::boot(store, config(&f, RetentionPolicy::keep_records()), NOON_JST).expect("boot");
    let old_access = |h: &Harness| {
        h.reader()
            .access_log(0, usize::MAX)
            .expect("access")
            .iter()
            .filter(|e| e.entry.at < NOON_JST - 7 * YEAR)
            .count()
    };
    assert_eq!(old_access(&h), 1200);
    h.tick();
    assert_eq!(
        old_access(&h),
        1200 - RETENTION_DELETE_PER_TICK,
        "one bounded step per tick"
    );
    for _ in 0..1200 / RETENTION_DELETE_PER_TICK {
        h.tick();
    }
    assert_eq!(old_access(&h), 0);
    // Records are kept until an operator may confirm (delete_records off).
    assert_eq!(h.reader().record_count().expect("count"), 1210);
    // Yesterday's entries stay.
    assert!(h.reader().access_count().expect("count") >= 10);
    let report = h.reader().verify_chains().expect("verify");
    assert!(report.is_intact(), "{report:?}");
}

#[test]
fn with_delete_records_the_tick_deletes_records_past_their_period_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f = Fixture::new();
    let path = prepared(dir.path(), &f, 30);
    let store = Store::open(&path, 8 << 20).expect("open");
    // Records kept 7 years, access log 1 year.
    let mut h = Harness::boot(
        store,
        config(&f, RetentionPolicy::from_years(7, 1, true)),
        NOON_JST,
    )
    .expect("boot");
    for _ in 0..30usize.div_ceil(RETENTION_DELETE_PER_TICK) {
        h.tick();
    }
    let records = h.reader().records(0, usize::MAX).expect("records");
    assert_eq!(records.len(), 10);
    assert!(records.iter().all(|r| r.at == NOON_JST - DAY));
    // Nothing more goes while the clock moves on a little.
    h.advance(Duration::from_secs(3600));
    h.tick();
    assert_eq!(h.reader().record_count().expect("count"), 10);
    let report = h.reader().verify_chains().expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records.anchor_seq, 30);
}
