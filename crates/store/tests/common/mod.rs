//! Shared fixtures of the store integration tests: sample records and
//! access entries, opening a store (or a read-only view of it) in a
//! temporary directory, and raw access to the file for tamper tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use ifrelay_proto::{
    AgencyCode, BusinessCode, InfoNameCode, ItemCode, PermitId, PersonCode, Prefix, Serial,
};
use ifrelay_store::{
    AccessEntry, Direction, ReadOnlyStore, Record, RecordKind, Side, Store, StoreError,
};

/// Page cache for tests: small, as on the box.
pub const CACHE: usize = 4 * 1024 * 1024;

pub struct TempStore {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempStore {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        TempStore { dir, path }
    }

    pub fn open(&self) -> Store {
        Store::open(&self.path, CACHE).unwrap()
    }

    /// Opens the store without a redo log, shared with read-only handles
    /// (for tests of the redb file alone and of reading beside a writer).
    pub fn open_shared(&self) -> Store {
        Store::open_shared(&self.path, CACHE).unwrap()
    }

    /// Opens the file for inspection only (never writes).
    pub fn read_only(&self) -> Result<ReadOnlyStore, StoreError> {
        ReadOnlyStore::open(&self.path)
    }

    /// Runs `f` on a raw write transaction of the file (no store open).
    pub fn raw<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> T) -> T {
        raw(&self.path, f)
    }
}

pub fn raw<T>(path: &Path, f: impl FnOnce(&redb::WriteTransaction) -> T) -> T {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    let out = f(&txn);
    txn.commit().unwrap();
    out
}

pub fn serial(n: u32) -> Serial {
    Serial::new(&format!("131016-20250101-1-{n}")).unwrap()
}

pub fn agency(s: &str) -> AgencyCode {
    AgencyCode::new(s).unwrap()
}

/// A record with every field set from a few knobs.
pub fn record(serial: Serial, kind: RecordKind, side: Side) -> Record {
    let mut items = heapless::Vec::new();
    items.push(ItemCode::new("ITEM01").unwrap()).unwrap();
    Record {
        kind,
        side,
        serial,
        prefix: Prefix {
            requester: agency("131016"),
            business: BusinessCode::new("JM0001").unwrap(),
            provider: agency("271004"),
            info_name: InfoNameCode::new("TK0001").unwrap(),
            items,
        },
        code: Some(PersonCode::new("CODE-A").unwrap()),
        permit_id: Some(PermitId::new("permit-1").unwrap()),
        counterpart: Some(agency("271004")),
        query_requested_at: 1_700_000_000_000,
        provision_at: None,
        clock_synced: true,
    }
}

pub fn simple_record(n: u32) -> Record {
    record(serial(n), RecordKind::Query, Side::Requester)
}

pub fn access(n: u32) -> AccessEntry {
    AccessEntry {
        at: 1_700_000_000_000 + i64::from(n),
        terminal: "10.0.0.2:40000".into(),
        party: "ims/131016".into(),
        agency: Some(agency("131016")),
        staff: None,
        direction: Direction::In,
        operation: "query".into(),
        message_id: Some(format!("m-{n}")),
        serial: Some(serial(n)),
        business: Some(BusinessCode::new("JM0001").unwrap()),
        info_name: Some(InfoNameCode::new("TK0001").unwrap()),
        items: vec![ItemCode::new("ITEM01").unwrap()],
        outcome: "accepted".into(),
    }
}

/// Appends `n` records and `n` access entries numbered from `start`, in
/// batches of `per_batch`.
pub fn append_both(store: &mut Store, start: u32, n: u32, per_batch: u32) {
    let mut i = 0;
    while i < n {
        let mut batch = store.begin().unwrap();
        for _ in 0..per_batch.min(n - i) {
            let k = start + i;
            batch
                .append_record(1_700_000_000_000 + i64::from(k), simple_record(k))
                .unwrap();
            batch.append_access(access(k)).unwrap();
            i += 1;
        }
        batch.commit().unwrap();
    }
}
