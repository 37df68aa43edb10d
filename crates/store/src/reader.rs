//! [`StoreReader`]: everything that reads the store from other threads —
//! listing, counting, search (R-REC-2), export input (R-REC-3), chain
//! verification (R-SEC-6), and the outbox paged per destination for
//! delivery.
//!
//! Invariants: only read transactions are used, so a reader never blocks
//! the writer and always sees a committed snapshot; each call uses one
//! snapshot, so its answer is consistent. Nothing here changes the file.

use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::chain::{ChainName, ChainReport};
use crate::error::{db, StoreError};
use crate::index;
use crate::model::{
    AccessFilter, AgeCount, ChainedAccess, ChainedRecord, OutboxEntry, PageCursor, RecordFilter,
};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::tables;
use crate::verify;

/// A cheap, cloneable, `Send + Sync` handle for reading the store.
#[derive(Debug, Clone)]
pub struct StoreReader {
    shared: Arc<Shared>,
}

impl StoreReader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        StoreReader { shared }
    }

    /// Runs `f` on a fresh read transaction, noting I/O failures so the
    /// writer reopens the file.
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = self.shared.db().and_then(|database: Arc<Database>| {
            let txn = database
                .begin_read()
                .map_err(db("begin read transaction"))?;
            f(&txn)
        });
        self.shared.track(result)
    }

    /// Up to `limit` records from `from_seq` on, in seq order.
    ///
    /// # Errors
    /// [`StoreError::Db`], or [`StoreError::Corrupt`] for an undecodable
    /// row.
    pub fn records(&self, from_seq: u64, limit: usize) -> Result<Vec<ChainedRecord>, StoreError> {
        self.search_records(
            &RecordFilter {
                from_seq,
                ..RecordFilter::default()
            },
            limit,
        )
    }

    /// Up to `limit` access-log entries from `from_seq` on, in seq order.
    ///
    /// # Errors
    /// [`StoreError::Db`], or [`StoreError::Corrupt`] for an undecodable
    /// row.
    pub fn access_log(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChainedAccess>, StoreError> {
        self.read(|txn| {
            let table = txn
                .open_table(tables::ACCESS_LOG)
                .map_err(db("open table access_log"))?;
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            for row in table.range(from_seq..).map_err(db("read access log"))? {
                let (k, v) = row.map_err(db("read access log"))?;
                out.push(index::decode_access(k.value(), v.value())?);
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Records matching `filter`, at most `limit`, in seq order (R-REC-2):
    /// the first page of [`StoreReader::search_records_page`].
    ///
    /// # Errors
    /// As [`StoreReader::search_records_page`].
    pub fn search_records(
        &self,
        filter: &RecordFilter,
        limit: usize,
    ) -> Result<Vec<ChainedRecord>, StoreError> {
        Ok(self
            .search_records_page(filter, PageCursor::START, limit)?
            .0)
    }

    /// One page of the records matching `filter` (R-REC-2): at most
    /// `limit`, in seq order, after `cursor` (and from `filter.from_seq`),
    /// with the cursor of the next page when this one is full (`None`: no
    /// more matches in this snapshot). A serial, a person code, an item,
    /// an info name, a business, a provider or a requester is looked up
    /// through its index (in that order of preference, the first set
    /// drives the search), a time range through the time index; the other
    /// criteria narrow what the index yields. Records appended between
    /// two pages come after the cursor, so paging is stable.
    ///
    /// # Errors
    /// [`StoreError::Db`], or [`StoreError::Corrupt`] for an undecodable
    /// row.
    pub fn search_records_page(
        &self,
        filter: &RecordFilter,
        cursor: PageCursor,
        limit: usize,
    ) -> Result<(Vec<ChainedRecord>, Option<PageCursor>), StoreError> {
        self.read(|txn| index::search_records(txn, filter, cursor, limit))
    }

    /// One page of the access-log entries matching `filter` (R-REC-2,
    /// R-REC-6), as [`StoreReader::search_records_page`]: a serial, a
    /// console user, an agency or a party drives the search through its
    /// index, a time range through the time index.
    ///
    /// # Errors
    /// As [`StoreReader::search_records_page`].
    pub fn search_access_page(
        &self,
        filter: &AccessFilter,
        cursor: PageCursor,
        limit: usize,
    ) -> Result<(Vec<ChainedAccess>, Option<PageCursor>), StoreError> {
        self.read(|txn| index::search_access(txn, filter, cursor, limit))
    }

    /// How many records were appended before `cutoff`, oldest and newest
    /// time among them: what a deletion by retention would remove
    /// (R-REC-4), shown before the user confirms it. Reads the time
    /// index, not the records: fast over millions.
    ///
    /// # Errors
    /// As [`StoreReader::search_records_page`].
    pub fn records_before(&self, cutoff: i64) -> Result<AgeCount, StoreError> {
        self.read(|txn| index::count_before(txn, ChainName::Records, cutoff))
    }

    /// Number of stored records.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn record_count(&self) -> Result<u64, StoreError> {
        self.count(tables::RECORDS)
    }

    /// Number of stored access-log entries.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn access_count(&self) -> Result<u64, StoreError> {
        self.count(tables::ACCESS_LOG)
    }

    /// Number of frames waiting in the outbox.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        self.count(tables::OUTBOX)
    }

    /// Up to `limit` outbox entries of `destination`, in seq order, with a
    /// seq strictly after `after_seq` (all when `None`). Pages through a
    /// backlog of any size through the destination index: pass the last
    /// seq of one page as `after_seq` of the next.
    ///
    /// # Errors
    /// [`StoreError::Db`]; [`StoreError::Corrupt`] when an index row names
    /// an entry of another destination (the file was altered). An index
    /// row whose entry is gone is skipped.
    pub fn outbox_for(
        &self,
        destination: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let from = match after_seq {
            None => 0,
            Some(seq) => match seq.checked_add(1) {
                Some(from) => from,
                None => return Ok(Vec::new()),
            },
        };
        self.read(|txn| {
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            let index = txn
                .open_table(tables::OUTBOX_BY_DESTINATION)
                .map_err(db("open table outbox_by_destination"))?;
            let outbox = txn
                .open_table(tables::OUTBOX)
                .map_err(db("open table outbox"))?;
            for row in index
                .range((destination, from)..=(destination, u64::MAX))
                .map_err(db("read outbox index"))?
            {
                let (k, _) = row.map_err(db("read outbox index"))?;
                let seq = k.value().1;
                let Some(entry) = outbox.get(seq).map_err(db("read outbox"))? else {
                    tracing::warn!(
                        seq,
                        destination,
                        "store: outbox index names a missing entry; skipped"
                    );
                    continue;
                };
                let (stored, frame) = entry.value();
                if stored != destination {
                    return Err(StoreError::Corrupt {
                        what: "outbox index row",
                        key: format!("{destination}/{seq}"),
                        detail: format!("the entry is for {stored}"),
                    });
                }
                out.push(OutboxEntry {
                    seq,
                    destination: destination.to_owned(),
                    frame: frame.to_vec(),
                });
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Every destination with frames waiting, with how many, in name
    /// order. Reads the per-destination counters kept by
    /// [`crate::Batch::push_outbox`] and [`crate::Batch::remove_outbox`],
    /// so it costs one row per destination however long the backlog.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn outbox_destinations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|txn| {
            let counts = txn
                .open_table(tables::OUTBOX_COUNTS)
                .map_err(db("open table outbox_counts"))?;
            let mut out = Vec::new();
            for row in counts.iter().map_err(db("read outbox counts"))? {
                let (k, v) = row.map_err(db("read outbox counts"))?;
                out.push((k.value().to_owned(), v.value()));
            }
            Ok(out)
        })
    }

    /// Number of remembered frames (duplicate suppression).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn seen_len(&self) -> Result<u64, StoreError> {
        self.count(tables::SEEN)
    }

    /// Number of live processes.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn process_count(&self) -> Result<u64, StoreError> {
        self.count(tables::PROCESSES)
    }

    /// Every console account, `(id, account)` in id order (none before
    /// the first is stored).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn users(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|txn| {
            let table = match txn.open_table(tables::USERS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(db("open table users")(e)),
            };
            let mut out = Vec::new();
            for row in table.iter().map_err(db("read users"))? {
                let (k, v) = row.map_err(db("read users"))?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// Console account `id`, if stored.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn user(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|txn| {
            let table = match txn.open_table(tables::USERS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(db("open table users")(e)),
            };
            let value = table.get(id).map_err(db("read user"))?;
            Ok(value.map(|v| v.value().to_vec()))
        })
    }

    fn count<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: redb::TableDefinition<'static, K, V>,
    ) -> Result<u64, StoreError> {
        self.read(|txn| {
            txn.open_table(def)
                .map_err(db("open table"))?
                .len()
                .map_err(db("count rows"))
        })
    }

    /// The time before which a deletion of records was confirmed at the
    /// console ([`crate::Batch::confirm_records_deletion`]); `None`: never.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn records_deletion_confirmed(&self) -> Result<Option<i64>, StoreError> {
        self.read(|txn| {
            let meta = txn
                .open_table(tables::META)
                .map_err(db("open table meta"))?;
            Ok(meta
                .get(tables::RECORDS_DELETION_CONFIRMED_KEY)
                .map_err(db("read meta"))?
                .and_then(|g| i64::try_from(g.value()).ok())
                .filter(|&t| t > 0))
        })
    }

    /// The serial epoch of the current boot (0 before the first boot).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn epoch(&self) -> Result<u64, StoreError> {
        self.read(|txn| {
            let meta = txn
                .open_table(tables::META)
                .map_err(db("open table meta"))?;
            Ok(meta
                .get(tables::EPOCH_KEY)
                .map_err(db("read epoch"))?
                .map_or(0, |g| g.value()))
        })
    }

    /// The current prefix snapshot `(version, opaque CBOR)`, if any.
    ///
    /// # Errors
    /// [`StoreError::Db`], or [`StoreError::Corrupt`] when the current
    /// version has no snapshot.
    pub fn current_prefix(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.read(|txn| {
            let meta = txn
                .open_table(tables::META)
                .map_err(db("open table meta"))?;
            let Some(version) = meta
                .get(tables::PREFIX_CURRENT_KEY)
                .map_err(db("read prefix version"))?
                .map(|g| g.value())
            else {
                return Ok(None);
            };
            let prefix = txn
                .open_table(tables::PREFIX)
                .map_err(db("open table prefix"))?;
            let snapshot = prefix
                .get(version)
                .map_err(db("read prefix"))?
                .ok_or_else(|| StoreError::Corrupt {
                    what: "current prefix version",
                    key: version.to_string(),
                    detail: "no snapshot is stored for it".into(),
                })?
                .value()
                .to_vec();
            Ok(Some((version, snapshot)))
        })
    }

    /// A stored prefix version, current or not.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn prefix_version(&self, version: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|txn| {
            let prefix = txn
                .open_table(tables::PREFIX)
                .map_err(db("open table prefix"))?;
            Ok(prefix
                .get(version)
                .map_err(db("read prefix"))?
                .map(|g| g.value().to_vec()))
        })
    }

    /// One committed state of the running store, read a page at a time
    /// (an export at the console). It holds a read transaction: the
    /// writer goes on, but pages freed meanwhile are reused only after
    /// the snapshot is dropped, so keep it for one export only.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the file cannot be read.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let result = self.shared.db().and_then(|database: Arc<Database>| {
            database.begin_read().map_err(db("begin read transaction"))
        });
        self.shared.track(result).map(Snapshot::new)
    }

    /// Walks both chains from their anchors over one snapshot and reports
    /// counts, head hashes and every defect found (R-SEC-6). A defect is
    /// not an `Err`: the report says what is wrong and where.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the file cannot be read.
    pub fn verify_chains(&self) -> Result<ChainReport, StoreError> {
        self.read(verify::chains)
    }

    /// As [`StoreReader::verify_chains`], looking at `stop` every few
    /// thousand entries: `None` when it said to stop, so a box that shuts
    /// down does not wait for a walk over millions of entries.
    ///
    /// # Errors
    /// As [`StoreReader::verify_chains`].
    pub fn verify_chains_unless(
        &self,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<ChainReport>, StoreError> {
        self.read(|txn| verify::chains_unless(txn, stop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
        assert_send_sync_clone::<StoreReader>();
    }
}
