//! `ifrelay-store`: the redb store of the Interface System box.
//!
//! Owns everything that must survive a power cut (R-AV-2): the serial epoch
//! (R-SER-1), the versioned prefix list and masters, the per-serial process
//! states, the outbox of frames not yet acknowledged, and the two
//! append-only, hash-chained logs — provision records (R-REC-1..4) and the
//! access log (R-REC-5/6) — whose chains make a later edit, removal or
//! insertion detectable (R-SEC-6).
//!
//! Shape:
//! - [`Store`] is owned by the relay engine's single writer thread. It opens
//!   the file, bumps the epoch at [`Store::boot`] and hands out one
//!   [`Batch`] at a time: one redb write transaction, committed with
//!   `Durability::Immediate` (one fsync for many messages: group commit).
//! - [`StoreReader`] is a cheap, `Send + Sync` clone for readers on other
//!   threads (search, export, verification, monitoring); it only ever uses
//!   read transactions, so it never blocks the writer.
//! - [`ReadOnlyStore`] opens a store file for inspection without ever
//!   writing it — no create, repair, migration or index rebuild — also
//!   while a box has it open and commits: `ifrelay verify-store`.
//! - Damage on disk: [`ReadOnlyStore::open`] and [`Store::open`] check
//!   every page of the last commit against redb's checksums before any row
//!   is read (`integrity`: redb's own check, run over a copy-on-write view
//!   of the read-only file), and refuse a damaged file with
//!   [`StoreError::Damaged`], leaving it as it is. [`survey_damaged`]
//!   then says where, reading row by row — in a process that may die.
//! - The outbox is indexed per destination, so delivery pages through a
//!   backlog of any size ([`StoreReader::outbox_for`]) instead of loading
//!   it at boot; accepted frames are remembered by `(sender, message id)`
//!   ([`Batch::seen`], [`Batch::put_seen`], [`Batch::prune_seen`]) so a
//!   resent frame gets its first reply again (duplicate suppression).
//! - Records and access log are searched through secondary indexes
//!   written beside each chain row ([`StoreReader::search_records_page`],
//!   [`StoreReader::search_access_page`], cursor paging by seq), and
//!   deleted by age in bounded steps ([`Batch::delete_records_before`],
//!   [`Batch::delete_access_before`]); a file of schema version 1 gets its
//!   indexes built by [`Store::open`] (see `index`).
//! - [`tables`] holds every `TableDefinition`, public for forensic tools and
//!   tamper tests.
//! - `fault` (cargo feature `fault-injection`, off by default): storage
//!   that fails on command, for tests and fuzz targets.
//!
//! Modules, each importing only modules listed above it (no cycles):
//! - `tables`, `model`, `fault`: none;
//! - `chain`: tables; `error`: chain; `schema`: error, tables;
//! - `integrity` (the page check, read-only): error;
//! - `shared` (the handle writer and readers share): error;
//! - `index` (search indexes: maintenance, builds, paged search): chain,
//!   error, model, tables;
//! - `verify` (the chain walk): chain, error, model, schema, tables;
//! - `writer` (open, prepare, migrate, reopen): chain, error, index, schema,
//!   shared, tables;
//! - `batch`: writer, chain, error, index, model, tables;
//! - `readonly`: integrity, verify, index, schema, chain, error, tables;
//! - `snapshot` (paged raw rows for exports): readonly, chain, error,
//!   model, schema, tables;
//! - `reader`: shared, snapshot, verify, index, chain, error, model,
//!   tables;
//! - `survey` (where a damaged file is damaged): readonly, verify, chain,
//!   error, tables;
//! - `store`: readonly, writer, batch, reader, error, model, tables (and
//!   `fault`).
//!
//! Invariants kept here:
//! - Sequence numbers of records, access log and outbox only grow, across
//!   restarts and policy deletions; they are never reused.
//! - The in-memory chain heads change only when a batch commits; a failed or
//!   dropped batch leaves them (and the file) as they were.
//! - After an I/O error redb refuses every further operation on that handle;
//!   the store then reopens the file before the next batch, so the box
//!   recovers by itself once space returns.
//! - Nothing reachable from [`ReadOnlyStore`] can write the file.
//! - No row of an existing file is read, by a reader or the writer, before
//!   its last commit passed the page check; a damaged file is never
//!   written.

mod batch;
mod chain;
mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod index;
mod integrity;
mod model;
mod reader;
mod readonly;
mod schema;
mod shared;
mod snapshot;
mod store;
mod survey;
pub mod tables;
mod verify;
mod wal;
mod writer;

pub use batch::Batch;
pub use chain::{
    chain_hash, ChainDefect, ChainMark, ChainName, ChainReport, ChainSummary, DefectKind,
    MAX_REPORTED_DEFECTS,
};
pub use error::StoreError;
pub use model::{
    AccessEntry, AccessFilter, AgeCount, BootState, ChainedAccess, ChainedRecord, Direction,
    OutboxEntry, PageCursor, Record, RecordFilter, RecordKind, SeenEntry, Side,
};
pub use reader::StoreReader;
pub use readonly::ReadOnlyStore;
pub use snapshot::{RawAccess, RawRecord, Snapshot};
pub use store::Store;
pub use survey::{survey_damaged, SurveyEvent};
pub use wal::{log_path, LogOptions, LogStats};
