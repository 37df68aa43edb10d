//! [`Snapshot`]: one committed state of a store opened read-only, read a
//! page at a time with the exact stored bytes of every chained row — the
//! input of record exports and backups (R-REC-3, docs/export.md).
//!
//! Invariants: one redb read transaction for the snapshot's life, so every
//! page of an export comes from the same commit and the chain marks match
//! the rows; rows are handed out with the CBOR body exactly as stored, so
//! a reader recomputes each entry's hash ([`crate::chain_hash`]) without
//! re-encoding anything; nothing here writes.

use redb::{ReadTransaction, TableError};

use crate::chain::{ChainMark, ChainName};
use crate::error::{db, from_cbor, StoreError};
use crate::model::{AccessEntry, ChainedAccess, ChainedRecord, RecordBody, RecordFilter};
use crate::readonly::ReadOnlyStore;
use crate::schema;
use crate::tables;

/// One committed state of a read-only store. See the module header.
pub struct Snapshot {
    txn: ReadTransaction,
}

impl core::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

/// A record with the body bytes its hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub record: ChainedRecord,
    /// The stored CBOR of `{at, record}`.
    pub body: Vec<u8>,
}

/// An access-log entry with the body bytes its hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAccess {
    pub entry: ChainedAccess,
    /// The stored CBOR of the entry.
    pub body: Vec<u8>,
}

impl ReadOnlyStore {
    /// Takes a snapshot of the last commit, to read it a page at a time.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the file cannot be read.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::new(self.begin_read()?))
    }
}

impl Snapshot {
    pub(crate) fn new(txn: ReadTransaction) -> Snapshot {
        Snapshot { txn }
    }

    /// Where `chain` starts and ends in this snapshot (the genesis mark
    /// for a store that never held an entry).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn chain_mark(&self, chain: ChainName) -> Result<ChainMark, StoreError> {
        let marks = match self.txn.open_table(tables::CHAIN_MARKS) {
            Ok(marks) => marks,
            Err(TableError::TableDoesNotExist(_)) => return Ok(ChainMark::GENESIS),
            Err(e) => return Err(schema::table_error(e)),
        };
        Ok(marks
            .get(chain.key())
            .map_err(db("read chain marks"))?
            .map_or(ChainMark::GENESIS, |g| ChainMark::from_row(g.value())))
    }

    /// Up to `limit` records matching `filter` (from `filter.from_seq`
    /// on), in seq order, scanning the chain; page on with the last seq
    /// plus one as `from_seq`. Returns the seq to continue from too: past
    /// the last row scanned, so a page of few matches still advances.
    ///
    /// # Errors
    /// [`StoreError::Db`]; [`StoreError::Corrupt`] for an undecodable row.
    pub fn records(
        &self,
        filter: &RecordFilter,
        limit: usize,
    ) -> Result<(Vec<RawRecord>, Option<u64>), StoreError> {
        let table = self
            .txn
            .open_table(tables::RECORDS)
            .map_err(db("open table records"))?;
        let mut out = Vec::new();
        // Bounds the rows scanned per page as well as those returned, so a
        // selective filter still answers in bounded time and memory.
        let mut scanned = 0usize;
        for row in table.range(filter.from_seq..).map_err(db("read records"))? {
            let (k, v) = row.map_err(db("read records"))?;
            let seq = k.value();
            let (prev_hash, hash, body) = v.value();
            let RecordBody { at, record } = from_cbor("record", || seq.to_string(), body)?;
            if filter.matches(seq, at, &record) {
                out.push(RawRecord {
                    record: ChainedRecord {
                        seq,
                        at,
                        prev_hash,
                        hash,
                        record,
                    },
                    body: body.to_vec(),
                });
            }
            scanned += 1;
            if out.len() >= limit || scanned >= limit.saturating_mul(16).max(1) {
                return Ok((out, seq.checked_add(1)));
            }
        }
        Ok((out, None))
    }

    /// Up to `limit` access-log entries from `from_seq` on whose time is
    /// in `since..until` (each bound optional), in seq order; the second
    /// value is where to continue (`None`: the end was reached).
    ///
    /// # Errors
    /// [`StoreError::Db`]; [`StoreError::Corrupt`] for an undecodable row.
    pub fn access_log(
        &self,
        from_seq: u64,
        since: Option<i64>,
        until: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<RawAccess>, Option<u64>), StoreError> {
        let table = self
            .txn
            .open_table(tables::ACCESS_LOG)
            .map_err(db("open table access_log"))?;
        let mut out = Vec::new();
        let mut scanned = 0usize;
        for row in table.range(from_seq..).map_err(db("read access log"))? {
            let (k, v) = row.map_err(db("read access log"))?;
            let seq = k.value();
            let (prev_hash, hash, body) = v.value();
            let entry: AccessEntry = from_cbor("access-log entry", || seq.to_string(), body)?;
            if since.is_none_or(|t| entry.at >= t) && until.is_none_or(|t| entry.at < t) {
                out.push(RawAccess {
                    entry: ChainedAccess {
                        seq,
                        prev_hash,
                        hash,
                        entry,
                    },
                    body: body.to_vec(),
                });
            }
            scanned += 1;
            if out.len() >= limit || scanned >= limit.saturating_mul(16).max(1) {
                return Ok((out, seq.checked_add(1)));
            }
        }
        Ok((out, None))
    }

    /// The current prefix snapshot `(version, opaque CBOR)`, if any: the
    /// distribution whose masters label the codes of an export.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn current_prefix(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let meta = self
            .txn
            .open_table(tables::META)
            .map_err(db("open table meta"))?;
        let Some(version) = meta
            .get(tables::PREFIX_CURRENT_KEY)
            .map_err(db("read prefix version"))?
            .map(|g| g.value())
        else {
            return Ok(None);
        };
        let prefix = self
            .txn
            .open_table(tables::PREFIX)
            .map_err(db("open table prefix"))?;
        Ok(prefix
            .get(version)
            .map_err(db("read prefix"))?
            .map(|g| (version, g.value().to_vec())))
    }
}
