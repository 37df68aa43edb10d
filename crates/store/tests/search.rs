//! Record search for the maintenance console (R-REC-2): by serial (through
//! the serial index), time range, each prefix part (requester, provider,
//! business, info name, item), code, kind and side, combined criteria,
//! limits and paging by seq.
#![allow(clippy::unwrap_used)]

mod common;

use common::{agency, record, serial, TempStore};
use ifrelay_proto::{BusinessCode, InfoNameCode, ItemCode, PersonCode};
use ifrelay_store::{Record, RecordFilter, RecordKind, Side, Store};

fn items(codes: &[&str]) -> heapless::Vec<ItemCode, { ifrelay_proto::MAX_ITEMS }> {
    codes.iter().map(|c| ItemCode::new(c).unwrap()).collect()
}

/// Five records, appended at 1000, 2000, ... 5000.
fn fixture() -> (TempStore, Store) {
    let t = TempStore::new();
    let mut store = t.open();
    let r1 = record(serial(1), RecordKind::Query, Side::Requester);
    let mut r2 = record(serial(1), RecordKind::Provision, Side::Requester);
    r2.provision_at = Some(2000);
    let mut r3 = record(serial(2), RecordKind::Query, Side::Provider);
    r3.prefix.requester = agency("271004");
    r3.prefix.provider = agency("131016");
    r3.prefix.business = BusinessCode::new("JM0002").unwrap();
    r3.prefix.info_name = InfoNameCode::new("TK0002").unwrap();
    r3.prefix.items = items(&["ITEM02", "ITEM03"]);
    r3.code = Some(PersonCode::new("CODE-B").unwrap());
    let mut r4 = record(serial(3), RecordKind::Query, Side::Requester);
    r4.prefix.info_name = InfoNameCode::new("TK0002").unwrap();
    r4.code = None;
    let mut r5 = record(serial(4), RecordKind::Provision, Side::Provider);
    r5.prefix.requester = agency("011002");
    r5.prefix.provider = agency("131016");
    let mut b = store.begin().unwrap();
    for (i, r) in [r1, r2, r3, r4, r5].into_iter().enumerate() {
        let at = 1000 * (i64::try_from(i).unwrap() + 1);
        b.append_record(at, r).unwrap();
    }
    b.commit().unwrap();
    (t, store)
}

fn seqs(store: &Store, filter: RecordFilter, limit: usize) -> Vec<u64> {
    store
        .reader()
        .search_records(&filter, limit)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect()
}

fn all() -> RecordFilter {
    RecordFilter::default()
}

#[test]
fn empty_filter_limit_and_paging() {
    let (_t, s) = fixture();
    assert_eq!(seqs(&s, all(), 100), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&s, all(), 2), [1, 2]);
    assert_eq!(
        seqs(
            &s,
            RecordFilter {
                from_seq: 3,
                ..all()
            },
            2
        ),
        [3, 4]
    );
    assert!(seqs(&s, all(), 0).is_empty());
}

#[test]
fn by_serial_uses_every_record_of_that_serial() {
    let (_t, s) = fixture();
    let by = |n| RecordFilter {
        serial: Some(serial(n)),
        ..all()
    };
    assert_eq!(seqs(&s, by(1), 10), [1, 2]);
    assert_eq!(seqs(&s, by(1), 1), [1]);
    assert_eq!(
        seqs(
            &s,
            RecordFilter {
                from_seq: 2,
                ..by(1)
            },
            10
        ),
        [2]
    );
    assert_eq!(
        seqs(
            &s,
            RecordFilter {
                kind: Some(RecordKind::Provision),
                ..by(1)
            },
            10
        ),
        [2]
    );
    assert_eq!(seqs(&s, by(2), 10), [3]);
    assert!(seqs(&s, by(99), 10).is_empty());
    let got: Vec<Record> = s
        .reader()
        .search_records(&by(2), 10)
        .unwrap()
        .into_iter()
        .map(|c| c.record)
        .collect();
    assert_eq!(got[0].code, Some(PersonCode::new("CODE-B").unwrap()));
}

#[test]
fn by_time_range_half_open() {
    let (_t, s) = fixture();
    let range = RecordFilter {
        since: Some(2000),
        until: Some(4000),
        ..all()
    };
    assert_eq!(seqs(&s, range, 10), [2, 3]);
    assert_eq!(
        seqs(
            &s,
            RecordFilter {
                since: Some(4500),
                ..all()
            },
            10
        ),
        [5]
    );
    assert_eq!(
        seqs(
            &s,
            RecordFilter {
                until: Some(1001),
                ..all()
            },
            10
        ),
        [1]
    );
}

#[test]
fn by_each_prefix_part() {
    let (_t, s) = fixture();
    let f = |f: RecordFilter| seqs(&s, f, 10);
    assert_eq!(
        f(RecordFilter {
            requester: Some(agency("271004")),
            ..all()
        }),
        [3]
    );
    assert_eq!(
        f(RecordFilter {
            provider: Some(agency("131016")),
            ..all()
        }),
        [3, 5]
    );
    assert_eq!(
        f(RecordFilter {
            business: Some(BusinessCode::new("JM0002").unwrap()),
            ..all()
        }),
        [3]
    );
    assert_eq!(
        f(RecordFilter {
            info_name: Some(InfoNameCode::new("TK0002").unwrap()),
            ..all()
        }),
        [3, 4]
    );
    assert_eq!(
        f(RecordFilter {
            item: Some(ItemCode::new("ITEM03").unwrap()),
            ..all()
        }),
        [3]
    );
}

#[test]
fn by_code_kind_side_and_combined() {
    let (_t, s) = fixture();
    let f = |f: RecordFilter| seqs(&s, f, 10);
    assert_eq!(
        f(RecordFilter {
            code: Some(PersonCode::new("CODE-A").unwrap()),
            ..all()
        }),
        [1, 2, 5]
    );
    assert_eq!(
        f(RecordFilter {
            code: Some(PersonCode::new("CODE-B").unwrap()),
            ..all()
        }),
        [3]
    );
    assert_eq!(
        f(RecordFilter {
            side: Some(Side::Provider),
            ..all()
        }),
        [3, 5]
    );
    assert_eq!(
        f(RecordFilter {
            kind: Some(RecordKind::Provision),
            ..all()
        }),
        [2, 5]
    );
    assert_eq!(
        f(RecordFilter {
            requester: Some(agency("131016")),
            info_name: Some(InfoNameCode::new("TK0002").unwrap()),
            ..all()
        }),
        [4]
    );
    assert!(f(RecordFilter {
        requester: Some(agency("271004")),
        side: Some(Side::Requester),
        ..all()
    })
    .is_empty());
}
