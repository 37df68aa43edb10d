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
    let whole = chains_unless(txn, &|| false)?;
    Ok(whole.unwrap_or_else(|| unreachable!("a walk never stopped is whole")))
}

/// As [`chains`], checking `stop` every [`STOP_EVERY`] rows: `None` when
/// it said to stop (a box shutting down does not wait for a long walk).
///
/// # Errors
/// As [`chains`].
pub(crate) fn chains_unless(
    txn: &ReadTransaction,
    stop: &dyn Fn() -> bool,
) -> Result<Option<ChainReport>, StoreError> {
    let Some(records) = chain_unless(txn, ChainName::Records, stop)? else {
        return Ok(None);
    };
    let Some(access_log) = chain_unless(txn, ChainName::AccessLog, stop)? else {
        return Ok(None);
    };
    Ok(Some(ChainReport {
        records,
        access_log,
    }))
}

/// Rows walked between two looks at the stop flag.
const STOP_EVERY: u64 = 4096;

/// Walks one chain from its anchor over `txn`.
///
/// # Errors
/// As [`chains`].
pub(crate) fn chain(txn: &ReadTransaction, chain: ChainName) -> Result<ChainSummary, StoreError> {
    let whole = chain_unless(txn, chain, &|| false)?;
    Ok(whole.unwrap_or_else(|| unreachable!("a walk never stopped is whole")))
}

fn chain_unless(
    txn: &ReadTransaction,
    chain: ChainName,
    stop: &dyn Fn() -> bool,
) -> Result<Option<ChainSummary>, StoreError> {
    let mark = match optional(txn.open_table(tables::CHAIN_MARKS))? {
        None => ChainMark::GENESIS,
        Some(marks) => marks
            .get(chain.key())
            .map_err(db("read chain marks"))?
            .map_or(ChainMark::GENESIS, |g| ChainMark::from_row(g.value())),
    };
    match chain {
        ChainName::Records => walk(txn, chain, mark, stop, |b| {
            ciborium::from_reader::<RecordBody, _>(b)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        ChainName::AccessLog => walk(txn, chain, mark, stop, |b| {
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
    stop: &dyn Fn() -> bool,
    check_body: impl Fn(&[u8]) -> Result<(), String>,
) -> Result<Option<ChainSummary>, StoreError> {
    let mut walker = Walker::new(chain, mark);
    if let Some(table) = optional(txn.open_table(chain.table()))? {
        for (n, row) in (1u64..).zip(table.iter().map_err(db("read chain"))?) {
            let (k, v) = row.map_err(db("read chain"))?;
            let (prev, hash, body) = v.value();
            walker.visit(k.value(), &prev, &hash, body, check_body(body));
            if n % STOP_EVERY == 0 && stop() {
                return Ok(None);
            }
        }
    }
    Ok(Some(walker.finish()))
}
