//! Every table of the store file, in one place.
//!
//! Public for forensic tools and tamper tests, which open the file with redb
//! directly (while no [`crate::Store`] has it open) to inspect or alter raw
//! rows. The firmware itself only touches these tables through
//! [`crate::Store`], [`crate::Batch`] and [`crate::StoreReader`].
//!
//! Layout (schema version [`SCHEMA_VERSION`]):
//! - [`META`]: counters and versions, keyed by the `*_KEY` constants.
//! - [`CHAIN_MARKS`]: per chain, `(anchor_seq, anchor_hash, head_seq,
//!   head_hash)`. The anchor is the hash the first stored entry links to (32
//!   zero bytes until a policy deletion moves it); the head is the last entry
//!   ever appended, so truncating the tail is detectable too.
//! - [`RECORDS`], [`ACCESS_LOG`]: `seq -> (prev_hash, hash, body)` where
//!   `body` is the CBOR the hash covers: see [`crate::chain_hash`].
//! - [`RECORDS_BY_SERIAL`]: secondary index `serial -> seq` for search;
//!   not covered by the chain (it can be rebuilt from [`RECORDS`]).
//! - [`PROCESSES`]: `serial -> opaque engine state`.
//! - [`PREFIX`]: `version -> opaque CBOR snapshot`; every version is kept,
//!   [`PREFIX_CURRENT_KEY`] in [`META`] names the current one.
//! - [`OUTBOX`]: `seq -> (destination, frame)`.

use redb::{MultimapTableDefinition, TableDefinition};

/// The layout version this firmware reads and writes. A file with a
/// higher version is refused rather than misread.
pub const SCHEMA_VERSION: u64 = 1;

/// A row of [`RECORDS`] or [`ACCESS_LOG`]: `(prev_hash, hash, CBOR body)`.
pub type ChainRow<'a> = ([u8; 32], [u8; 32], &'a [u8]);
/// A row of [`CHAIN_MARKS`]: `(anchor_seq, anchor_hash, head_seq, head_hash)`.
pub type ChainMarkRow = (u64, [u8; 32], u64, [u8; 32]);
/// The type of [`RECORDS`] and [`ACCESS_LOG`].
pub type ChainTable = TableDefinition<'static, u64, ChainRow<'static>>;

/// Counters and versions. Keys: [`SCHEMA_VERSION_KEY`], [`EPOCH_KEY`],
/// [`OUTBOX_NEXT_KEY`], [`PREFIX_CURRENT_KEY`].
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key in [`META`]: the schema version of the file.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";
/// Key in [`META`]: the serial epoch of the current boot (R-SER-1).
pub const EPOCH_KEY: &str = "epoch";
/// Key in [`META`]: the next outbox sequence number (never reused).
pub const OUTBOX_NEXT_KEY: &str = "outbox_next";
/// Key in [`META`]: the current prefix version, absent until the first one.
pub const PREFIX_CURRENT_KEY: &str = "prefix_current";

/// Per chain `(anchor_seq, anchor_hash, head_seq, head_hash)`, keyed by
/// [`crate::ChainName::key`].
pub const CHAIN_MARKS: TableDefinition<&str, ChainMarkRow> = TableDefinition::new("chain_marks");

/// Provision and query records: `seq -> (prev_hash, hash, CBOR body)`.
pub const RECORDS: ChainTable = TableDefinition::new("records");
/// Access log: `seq -> (prev_hash, hash, CBOR body)`.
pub const ACCESS_LOG: ChainTable = TableDefinition::new("access_log");
/// Search index of [`RECORDS`] by processing serial.
pub const RECORDS_BY_SERIAL: MultimapTableDefinition<&str, u64> =
    MultimapTableDefinition::new("records_by_serial");

/// State of each live process, keyed by processing serial.
pub const PROCESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("processes");
/// Every prefix list version received, as opaque CBOR.
pub const PREFIX: TableDefinition<u64, &[u8]> = TableDefinition::new("prefix");
/// Frames waiting to be delivered: `seq -> (destination, frame)`.
pub const OUTBOX: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("outbox");

/// Names of every plain table of the layout, to tell a complete file from
/// one that lacks tables.
pub(crate) const TABLE_NAMES: [&str; 7] = [
    "meta",
    "chain_marks",
    "records",
    "access_log",
    "processes",
    "prefix",
    "outbox",
];
/// Names of every multimap table of the layout.
pub(crate) const MULTIMAP_NAMES: [&str; 1] = ["records_by_serial"];
