//! Upgrading a store of schema version 1 (before the search indexes,
//! issue 9 item 8): `Store::open` builds the indexes from the chains and
//! sets version 2 in one durable transaction, keeping every record, access
//! entry, serial and chain; a read-only open of a version-1 file verifies
//! its chains and says that a search needs the migration.
#![allow(clippy::unwrap_used)]

mod common;

use common::{append_both, serial, TempStore, CACHE};
use ifrelay_proto::PersonCode;
use ifrelay_store::{
    tables, AccessFilter, ChainedRecord, PageCursor, RecordFilter, Store, StoreError,
};
use redb::ReadableTable;

/// The index tables version 1 did not have.
const NEW_IN_V2: [&str; 14] = [
    "records_by_code",
    "records_by_requester",
    "records_by_provider",
    "records_by_business",
    "records_by_info_name",
    "records_by_item",
    "records_by_time",
    "records_out_of_time_order",
    "access_by_party",
    "access_by_agency",
    "access_by_staff",
    "access_by_serial",
    "access_by_time",
    "access_out_of_time_order",
];

/// A store file exactly as version 1 left it: the layout of version 2
/// without the new tables, version 1 in `meta`.
fn version_1_store(t: &TempStore, n: u32) -> Vec<ChainedRecord> {
    let records = {
        let mut store = t.open_shared();
        append_both(&mut store, 1, n, 25);
        store.reader().records(0, usize::MAX).unwrap()
    };
    t.raw(|txn| {
        for name in NEW_IN_V2 {
            let def: redb::TableDefinition<(), ()> = redb::TableDefinition::new(name);
            assert!(txn.delete_table(def).unwrap(), "{name}");
        }
        txn.open_table(tables::META)
            .unwrap()
            .insert(tables::SCHEMA_VERSION_KEY, 1)
            .unwrap();
    });
    records
}

#[test]
fn opening_a_version_1_store_builds_the_indexes_and_keeps_everything() {
    let t = TempStore::new();
    let before = version_1_store(&t, 120);
    let store = Store::open(&t.path, CACHE).unwrap();
    let r = store.reader();
    assert_eq!(r.records(0, usize::MAX).unwrap(), before);
    assert_eq!(r.access_count().unwrap(), 120);
    assert!(r.verify_chains().unwrap().is_intact());
    for n in [1, 60, 120] {
        let by_serial = r
            .search_records(
                &RecordFilter {
                    serial: Some(serial(n)),
                    ..RecordFilter::default()
                },
                10,
            )
            .unwrap();
        assert_eq!(by_serial.len(), 1);
        assert_eq!(by_serial[0].record.serial, serial(n));
    }
    let by_code = r
        .search_records_page(
            &RecordFilter {
                code: before[0].record.code.clone(),
                since: Some(before[10].at),
                until: Some(before[20].at),
                ..RecordFilter::default()
            },
            PageCursor::START,
            100,
        )
        .unwrap()
        .0;
    assert_eq!(by_code.len(), 10);
    let (by_party, _) = r
        .search_access_page(
            &AccessFilter {
                party: Some("ims/131016".into()),
                serial: Some(serial(7)),
                ..AccessFilter::default()
            },
            PageCursor::START,
            10,
        )
        .unwrap();
    assert_eq!(by_party.len(), 1);
    drop(store);
    let version = t.raw(|txn| {
        txn.open_table(tables::META)
            .unwrap()
            .get(tables::SCHEMA_VERSION_KEY)
            .unwrap()
            .unwrap()
            .value()
    });
    assert_eq!(version, tables::SCHEMA_VERSION);
    // New records after the migration are indexed as usual.
    let mut store = Store::open(&t.path, CACHE).unwrap();
    append_both(&mut store, 121, 5, 5);
    let code = PersonCode::new("CODE-A").unwrap();
    let all = store
        .reader()
        .search_records(
            &RecordFilter {
                code: Some(code),
                ..RecordFilter::default()
            },
            1000,
        )
        .unwrap();
    assert_eq!(all.len(), 125);
}

#[test]
fn a_read_only_open_of_a_version_1_store_verifies_and_asks_for_the_migration() {
    let t = TempStore::new();
    version_1_store(&t, 10);
    let ro = t.read_only().unwrap();
    assert!(ro.verify_chains().unwrap().is_intact());
    let err = ro
        .search_records_page(
            &RecordFilter {
                code: Some(PersonCode::new("CODE-A").unwrap()),
                ..RecordFilter::default()
            },
            PageCursor::START,
            10,
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NeedsMigration { found: 1 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("start the box once"), "{err}");
}
