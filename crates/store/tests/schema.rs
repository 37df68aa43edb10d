//! Opening files this firmware must not write (R-AV-2, R-SEC-6): a file of
//! a newer schema version, a redb file of another program, a file whose
//! tables have other types, and a file that is not a database are refused
//! with a clear error and left untouched; a file of the current schema
//! opens and keeps its data. Readers stop when the store is dropped.
#![allow(clippy::unwrap_used)]

mod common;

use common::{append_both, TempStore, CACHE};
use ifrelay_store::{tables, Store, StoreError};
use redb::{ReadableTable, TableDefinition};

#[test]
fn a_newer_schema_version_is_refused_and_left_alone() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        append_both(&mut store, 1, 3, 3);
    }
    t.raw(|txn| {
        txn.open_table(tables::META)
            .unwrap()
            .insert(tables::SCHEMA_VERSION_KEY, tables::SCHEMA_VERSION + 1)
            .unwrap();
    });
    let err = Store::open(&t.path, CACHE).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported }
            if found == tables::SCHEMA_VERSION + 1 && supported == tables::SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer"), "{err:?}");
    // Untouched: the version is still the newer one.
    let v = t.raw(|txn| {
        txn.open_table(tables::META)
            .unwrap()
            .get(tables::SCHEMA_VERSION_KEY)
            .unwrap()
            .unwrap()
            .value()
    });
    assert_eq!(v, tables::SCHEMA_VERSION + 1);
}

#[test]
fn a_foreign_redb_file_is_refused() {
    let t = TempStore::new();
    let foreign: TableDefinition<&str, &str> = TableDefinition::new("settings");
    t.raw(|txn| {
        txn.open_table(foreign).unwrap().insert("a", "b").unwrap();
    });
    let err = Store::open(&t.path, CACHE).unwrap_err();
    assert!(matches!(err, StoreError::SchemaUnknown { .. }), "{err:?}");
    // Nothing was added to it.
    let names: Vec<String> = t.raw(|txn| {
        use redb::TableHandle;
        txn.list_tables()
            .unwrap()
            .map(|h| h.name().to_owned())
            .collect()
    });
    assert_eq!(names, ["settings"]);
}

#[test]
fn a_meta_table_of_another_type_is_refused() {
    let t = TempStore::new();
    let meta: TableDefinition<&str, &str> = TableDefinition::new("meta");
    t.raw(|txn| {
        txn.open_table(meta)
            .unwrap()
            .insert("schema_version", "1")
            .unwrap();
    });
    let err = Store::open(&t.path, CACHE).unwrap_err();
    assert!(matches!(err, StoreError::SchemaUnknown { .. }), "{err:?}");
}

#[test]
fn an_older_unknown_schema_version_is_refused() {
    let t = TempStore::new();
    drop(t.open());
    t.raw(|txn| {
        txn.open_table(tables::META)
            .unwrap()
            .insert(tables::SCHEMA_VERSION_KEY, 0)
            .unwrap();
    });
    let err = Store::open(&t.path, CACHE).unwrap_err();
    assert!(matches!(err, StoreError::SchemaUnknown { .. }), "{err:?}");
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let t = TempStore::new();
    std::fs::write(&t.path, vec![0x42u8; 8192]).unwrap();
    let err = Store::open(&t.path, CACHE).unwrap_err();
    assert!(matches!(err, StoreError::Db { .. }), "{err:?}");
}

#[test]
fn the_current_schema_reopens_with_its_data() {
    let t = TempStore::new();
    {
        let mut store = t.open();
        append_both(&mut store, 1, 3, 3);
    }
    let store = t.open();
    assert_eq!(store.reader().record_count().unwrap(), 3);
}

#[test]
fn readers_stop_when_the_store_is_dropped_and_the_file_is_released() {
    let t = TempStore::new();
    let store = t.open();
    let reader = store.reader();
    assert_eq!(reader.record_count().unwrap(), 0);
    drop(store);
    assert!(matches!(
        reader.record_count(),
        Err(StoreError::Unavailable)
    ));
    // The file is free for the next owner even though the reader lives on.
    let store = t.open();
    assert_eq!(store.reader().record_count().unwrap(), 0);
}
