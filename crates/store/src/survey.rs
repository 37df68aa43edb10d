//! [`survey_damaged`]: where a damaged store file is damaged, as far as
//! reading it row by row can tell — the second half of `ifrelay
//! verify-store`'s CORRUPT verdict.
//!
//! The integrity check ([`crate::ReadOnlyStore::open`]) says *that* a page
//! of the last commit does not match its checksum; redb does not say which
//! page or table. This walk reads every row of every table of the layout
//! through a read-only handle, announcing each table before it reads it,
//! and reports what reads wrong: redb errors, chain defects (an entry of
//! the records or the access log whose bytes no longer match its hash names
//! its sequence number), missing tables.
//!
//! **It reads a file known to be damaged, so redb may panic on it** (or, in
//! a release build, abort the process). Run it only in a process of its
//! own whose death is a finding: `ifrelay verify-store` runs it in a child
//! of the same binary and reports the table being read when the child died.
//!
//! Invariants: only reads (the handle is redb's read-only one over an
//! `O_RDONLY` descriptor); every table is announced before its first read,
//! so the last announcement before a crash names where the reader stopped.

use std::path::Path;

use redb::{
    MultimapTableDefinition, ReadTransaction, ReadableDatabase, ReadableMultimapTable,
    ReadableTable, TableDefinition, TableError,
};

use crate::chain::ChainName;
use crate::error::StoreError;
use crate::readonly;
use crate::tables;
use crate::verify;

/// One step of [`survey_damaged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SurveyEvent {
    /// Every row of this table is read next.
    Reading(&'static str),
    /// Something in `table` read wrong (`"header"`: the file's header;
    /// `"file"`: the file as a whole).
    Finding {
        /// The table, `"header"` or `"file"`.
        table: &'static str,
        /// What read wrong, in words.
        what: String,
    },
}

/// Reads every row of every table of the store file at `path` and tells
/// `on` what it reads and what it finds (see the module documentation).
///
/// **May panic or abort inside redb on a damaged file: call it only in a
/// process that may die.**
pub fn survey_damaged(path: &Path, mut on: impl FnMut(SurveyEvent)) {
    let file = |what: String| SurveyEvent::Finding {
        table: "file",
        what,
    };
    let db = match readonly::pin(path) {
        Ok(db) => db,
        Err(StoreError::Damaged { detail, .. }) => {
            return on(SurveyEvent::Finding {
                table: "header",
                what: detail,
            })
        }
        Err(e) => return on(file(chain_text(&e))),
    };
    let txn = match db.begin_read() {
        Ok(txn) => txn,
        Err(e) => return on(file(chain_text(&e))),
    };
    for table in SURVEYED {
        on(SurveyEvent::Reading(table.name()));
        let findings = match table {
            Surveyed::Chain(chain) => read_chain(&txn, chain),
            Surveyed::Rows(read, _) => read(&txn),
        };
        for what in findings {
            on(SurveyEvent::Finding {
                table: table.name(),
                what,
            });
        }
    }
}

/// A table of the layout and how to read it.
#[derive(Clone, Copy)]
enum Surveyed {
    Chain(ChainName),
    Rows(fn(&ReadTransaction) -> Vec<String>, &'static str),
}

impl Surveyed {
    fn name(self) -> &'static str {
        match self {
            Surveyed::Chain(chain) => chain.key(),
            Surveyed::Rows(_, name) => name,
        }
    }
}

/// Every table of [`tables`], small and central ones first.
const SURVEYED: [Surveyed; 27] = [
    Surveyed::Rows(|t| rows(t, tables::META), "meta"),
    Surveyed::Rows(|t| rows(t, tables::CHAIN_MARKS), "chain_marks"),
    Surveyed::Chain(ChainName::Records),
    Surveyed::Chain(ChainName::AccessLog),
    Surveyed::Rows(
        |t| multimap_rows(t, tables::RECORDS_BY_SERIAL),
        "records_by_serial",
    ),
    Surveyed::Rows(|t| rows(t, tables::PROCESSES), "processes"),
    Surveyed::Rows(|t| optional_rows(t, tables::USERS), "users"),
    Surveyed::Rows(|t| rows(t, tables::PREFIX), "prefix"),
    Surveyed::Rows(|t| rows(t, tables::OUTBOX), "outbox"),
    Surveyed::Rows(
        |t| rows(t, tables::OUTBOX_BY_DESTINATION),
        "outbox_by_destination",
    ),
    Surveyed::Rows(|t| rows(t, tables::OUTBOX_COUNTS), "outbox_counts"),
    Surveyed::Rows(|t| rows(t, tables::SEEN), "seen"),
    Surveyed::Rows(|t| rows(t, tables::SEEN_BY_TIME), "seen_by_time"),
    Surveyed::Rows(|t| rows(t, tables::RECORDS_BY_CODE), "records_by_code"),
    Surveyed::Rows(
        |t| rows(t, tables::RECORDS_BY_REQUESTER),
        "records_by_requester",
    ),
    Surveyed::Rows(
        |t| rows(t, tables::RECORDS_BY_PROVIDER),
        "records_by_provider",
    ),
    Surveyed::Rows(
        |t| rows(t, tables::RECORDS_BY_BUSINESS),
        "records_by_business",
    ),
    Surveyed::Rows(
        |t| rows(t, tables::RECORDS_BY_INFO_NAME),
        "records_by_info_name",
    ),
    Surveyed::Rows(|t| rows(t, tables::RECORDS_BY_ITEM), "records_by_item"),
    Surveyed::Rows(|t| rows(t, tables::RECORDS_BY_TIME), "records_by_time"),
    Surveyed::Rows(
        |t| rows(t, tables::RECORDS_OUT_OF_TIME_ORDER),
        "records_out_of_time_order",
    ),
    Surveyed::Rows(|t| rows(t, tables::ACCESS_BY_PARTY), "access_by_party"),
    Surveyed::Rows(|t| rows(t, tables::ACCESS_BY_AGENCY), "access_by_agency"),
    Surveyed::Rows(|t| rows(t, tables::ACCESS_BY_STAFF), "access_by_staff"),
    Surveyed::Rows(|t| rows(t, tables::ACCESS_BY_SERIAL), "access_by_serial"),
    Surveyed::Rows(|t| rows(t, tables::ACCESS_BY_TIME), "access_by_time"),
    Surveyed::Rows(
        |t| rows(t, tables::ACCESS_OUT_OF_TIME_ORDER),
        "access_out_of_time_order",
    ),
];

/// The chain's defects, each with its sequence number.
fn read_chain(txn: &ReadTransaction, chain: ChainName) -> Vec<String> {
    match verify::chain(txn, chain) {
        Ok(summary) => {
            let mut out: Vec<String> = summary
                .defects
                .iter()
                .map(|d| format!("entry seq {}: {:?}", d.seq, d.kind))
                .collect();
            if summary.defects_truncated {
                out.push("more defects not listed".to_owned());
            }
            out
        }
        Err(e) => vec![chain_text(&e)],
    }
}

/// Reads every key and value of a plain table.
fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Vec<String> {
    let table = match txn.open_table(table) {
        Ok(t) => t,
        Err(e) => return vec![table_text(e)],
    };
    let iter = match table.iter() {
        Ok(iter) => iter,
        Err(e) => return vec![chain_text(&e)],
    };
    let mut out = Vec::new();
    for (n, row) in iter.enumerate() {
        match row {
            Ok((k, v)) => {
                std::hint::black_box((k.value(), v.value()));
            }
            Err(e) => {
                out.push(format!("row {}: {}", n + 1, chain_text(&e)));
                break;
            }
        }
    }
    out
}

/// Reads every key and value of a multimap table.
fn multimap_rows<K: redb::Key + 'static, V: redb::Key + 'static>(
    txn: &ReadTransaction,
    table: MultimapTableDefinition<K, V>,
) -> Vec<String> {
    let table = match txn.open_multimap_table(table) {
        Ok(t) => t,
        Err(e) => return vec![table_text(e)],
    };
    let iter = match table.iter() {
        Ok(iter) => iter,
        Err(e) => return vec![chain_text(&e)],
    };
    for (n, row) in iter.enumerate() {
        let values = match row {
            Ok((k, values)) => {
                std::hint::black_box(k.value());
                values
            }
            Err(e) => return vec![format!("key {}: {}", n + 1, chain_text(&e))],
        };
        for value in values {
            match value {
                Ok(v) => {
                    std::hint::black_box(v.value());
                }
                Err(e) => return vec![format!("key {}: {}", n + 1, chain_text(&e))],
            }
        }
    }
    Vec::new()
}

/// [`rows`] of a table that a store has only once it was first written.
fn optional_rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Vec<String> {
    match txn.open_table(table) {
        Err(TableError::TableDoesNotExist(_)) => Vec::new(),
        _ => rows(txn, table),
    }
}

fn table_text(e: TableError) -> String {
    match e {
        TableError::TableDoesNotExist(_) => "the table is missing".to_owned(),
        other => chain_text(&other),
    }
}

/// An error and its causes on one line.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error::ErrorChain(e).to_string()
}
