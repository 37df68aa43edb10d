//! Chain verification over one read transaction (R-SEC-6): the walk that
//! both [`crate::StoreReader::verify_chains`] (inside the running box) and
//! [`crate::ReadOnlyStore::verify_chains`] (a verifier that never writes)
//! run, so the two can never disagree about what is a defect.
//!
//! Invariants: only reads; one snapshot for both chains; a defect is a
//! finding in the [`ChainReport`], never an `Err`. A missing chain table
//! or missing chain marks count as empty, so a dropped table is reported
//! as a defect against the marks rather than as a failure to read.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, TableError};

use crate::chain::{ChainMark, ChainName, ChainReport, ChainSummary, Walker};
use crate::error::{db, StoreError};
use crate::model::{AccessEntry, RecordBody};
use crate::schema;
use crate::tables;

/// Walks both chains from their anchors over `txn` and reports counts,
/// head hashes and every defect found.
///
/// # Errors
/// [`StoreError::Db`] when the file cannot be read;
/// [`StoreError::SchemaUnknown`] for a chain table of another type.
pub(crate) fn chains(txn: &ReadTransaction) -> Result<ChainReport, StoreError> {
    Ok(ChainReport {
        records: chain(txn, ChainName::Records)?,
        access_log: chain(txn, ChainName::AccessLog)?,
    })
}

/// Walks one chain from its anchor over `txn`.
///
/// # Errors
/// As [`chains`].
pub(crate) fn chain(txn: &ReadTransaction, chain: ChainName) -> Result<ChainSummary, StoreError> {
    let mark = match optional(txn.open_table(tables::CHAIN_MARKS))? {
        None => ChainMark::GENESIS,
        Some(marks) => marks
            .get(chain.key())
            .map_err(db("read chain marks"))?
            .map_or(ChainMark::GENESIS, |g| ChainMark::from_row(g.value())),
    };
    match chain {
        ChainName::Records => walk(txn, chain, mark, |b| {
            ciborium::from_reader::<RecordBody, _>(b)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        ChainName::AccessLog => walk(txn, chain, mark, |b| {
            ciborium::from_reader::<AccessEntry, _>(b)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    }
}

/// A table that may be absent: `None` then.
fn optional<K: redb::Key + 'static, V: redb::Value + 'static>(
    opened: Result<ReadOnlyTable<K, V>, TableError>,
) -> Result<Option<ReadOnlyTable<K, V>>, StoreError> {
    match opened {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(schema::table_error(e)),
    }
}

/// Walks every stored row of `chain` in key order.
fn walk(
    txn: &ReadTransaction,
    chain: ChainName,
    mark: ChainMark,
    check_body: impl Fn(&[u8]) -> Result<(), String>,
) -> Result<ChainSummary, StoreError> {
    let mut walker = Walker::new(chain, mark);
    if let Some(table) = optional(txn.open_table(chain.table()))? {
        for row in table.iter().map_err(db("read chain"))? {
            let (k, v) = row.map_err(db("read chain"))?;
            let (prev, hash, body) = v.value();
            walker.visit(k.value(), &prev, &hash, body, check_body(body));
        }
    }
    Ok(walker.finish())
}
