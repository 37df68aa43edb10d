//! Every table of the store file, in one place.
//!
//! Public for forensic tools and tamper tests, which open the file with redb
//! directly (while no [`crate::Store`] has it open) to inspect or alter raw
//! rows. The firmware itself only touches these tables through
//! [`crate::Store`], [`crate::Batch`], [`crate::StoreReader`] and
//! [`crate::ReadOnlyStore`].
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
//! - [`USERS`]: `user id -> opaque account` (the maintenance console's
//!   users; created with the first one).
//! - [`PREFIX`]: `version -> opaque CBOR snapshot`; every version is kept,
//!   [`PREFIX_CURRENT_KEY`] in [`META`] names the current one.
//! - [`OUTBOX`]: `seq -> (destination, frame)`.
//! - [`OUTBOX_BY_DESTINATION`]: index `(destination, seq) -> ()`, so
//!   delivery pages through one destination's backlog in seq order without
//!   loading the outbox; [`OUTBOX_COUNTS`]: `destination -> entries`, a
//!   row only while the count is above zero. Both are written in the same
//!   transaction as [`OUTBOX`]; [`OUTBOX_INDEX_NEXT_KEY`] in [`META`] says
//!   up to which outbox seq they are known complete.
//! - [`SEEN`]: duplicate suppression (DESIGN "Wire format": duplicates are
//!   dropped by message id), `(sender, message_id) -> (at, reply)`, where
//!   `reply` is the encoded reply body sent the first time; [`SEEN_BY_TIME`]:
//!   index `(at, sender, message_id) -> ()` for pruning by age. The key is a
//!   redb tuple rather than a joined `sender\0id` string, so no separator
//!   can ever be ambiguous and both parts read back without splitting.
//! - Search indexes of [`RECORDS`] (schema version 2, issue 9):
//!   [`RECORDS_BY_CODE`], [`RECORDS_BY_REQUESTER`], [`RECORDS_BY_PROVIDER`],
//!   [`RECORDS_BY_BUSINESS`], [`RECORDS_BY_INFO_NAME`], [`RECORDS_BY_ITEM`]
//!   (one row per item): `(key, seq) -> ()`, so one key's records come in
//!   seq order and a page starts at any seq; [`RECORDS_BY_TIME`]:
//!   `(at, seq) -> ()` for every record appended at or after the time of
//!   the last row already in it, so its rows are in seq order and in time
//!   order at once (a time range is a seq range); the few records appended
//!   with an earlier time (the clock stepped back) go to
//!   [`RECORDS_OUT_OF_TIME_ORDER`] `seq -> at` instead. The access log has
//!   the same by key ([`ACCESS_BY_PARTY`], [`ACCESS_BY_AGENCY`],
//!   [`ACCESS_BY_STAFF`], [`ACCESS_BY_SERIAL`]) and by time
//!   ([`ACCESS_BY_TIME`], [`ACCESS_OUT_OF_TIME_ORDER`]). None of them is
//!   covered by the chains: all are written in the transaction of the row
//!   they index, removed with it, and can be rebuilt from the chains.
//!
//! Schema version decision: the four tables above were added after version
//! 1 was released, without a bump. No existing table changed its key or
//! value type, so a version-1 file of the earlier firmware opens as is:
//! missing tables are created, and the outbox index and counters are built
//! from [`OUTBOX`] in one pass inside one write transaction (see
//! [`crate::Store::open`]). An earlier firmware opening a newer file ignores
//! the tables it does not know; when it pushed or removed outbox entries
//! meanwhile, the next open of this firmware notices (counter marker or row
//! counts disagree) and rebuilds the index. Bump [`SCHEMA_VERSION`] only
//! when an existing table's layout or an encoded value's format changes.
//!
//! Version 2 (issue 9) adds the search indexes. A version-1 file is
//! migrated by [`crate::Store::open`]: the index tables are created and
//! filled from [`RECORDS`] and [`ACCESS_LOG`] and the version is set to 2,
//! all in one durable write transaction. [`crate::ReadOnlyStore`] opens a
//! version-1 file for verification (the chains did not change); a search
//! of it that needs an index answers [`crate::StoreError::NeedsMigration`].

use redb::{MultimapTableDefinition, TableDefinition};

/// The layout version this firmware reads and writes. A file with a
/// higher version is refused rather than misread.
pub const SCHEMA_VERSION: u64 = 2;

/// The previous layout version, which [`crate::Store::open`] migrates.
pub const SCHEMA_VERSION_WITHOUT_SEARCH_INDEXES: u64 = 1;

/// A row of [`RECORDS`] or [`ACCESS_LOG`]: `(prev_hash, hash, CBOR body)`.
pub type ChainRow<'a> = ([u8; 32], [u8; 32], &'a [u8]);
/// A row of [`CHAIN_MARKS`]: `(anchor_seq, anchor_hash, head_seq, head_hash)`.
pub type ChainMarkRow = (u64, [u8; 32], u64, [u8; 32]);
/// The type of [`RECORDS`] and [`ACCESS_LOG`].
pub type ChainTable = TableDefinition<'static, u64, ChainRow<'static>>;

/// Counters and versions. Keys: [`SCHEMA_VERSION_KEY`], [`EPOCH_KEY`],
/// [`OUTBOX_NEXT_KEY`], [`OUTBOX_INDEX_NEXT_KEY`], [`PREFIX_CURRENT_KEY`].
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key in [`META`]: records appended before this time (ms) may be
/// deleted: a deletion confirmed at the console (R-REC-4).
pub const RECORDS_DELETION_CONFIRMED_KEY: &str = "records_deletion_confirmed_before";
/// Key in [`META`]: the schema version of the file.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";
/// Key in [`META`]: the serial epoch of the current boot (R-SER-1).
pub const EPOCH_KEY: &str = "epoch";
/// Key in [`META`]: the next outbox sequence number (never reused).
pub const OUTBOX_NEXT_KEY: &str = "outbox_next";
/// Key in [`META`]: the value of [`OUTBOX_NEXT_KEY`] when the outbox index
/// ([`OUTBOX_BY_DESTINATION`], [`OUTBOX_COUNTS`]) was last written with
/// it. A differing or missing value means something that does not keep the
/// index (an earlier firmware) pushed entries, and the index is rebuilt.
pub const OUTBOX_INDEX_NEXT_KEY: &str = "outbox_index_next";
/// Key in [`META`]: the id of the store's redo log (`wal.rs`), written
/// when the log is created; a log with another id is refused.
pub const LOG_ID_KEY: &str = "log_id";
/// Key in [`META`]: the number of the last logged batch this state holds.
pub const LOG_BATCH_KEY: &str = "log_batch";
/// Key in [`META`]: the log offset after that batch's entry, where
/// recovery starts reading.
pub const LOG_END_KEY: &str = "log_end";
/// Key in [`META`]: the current prefix version, absent until the first one.
pub const PREFIX_CURRENT_KEY: &str = "prefix_current";
/// Key in [`META`]: the last record whose search index rows are written
/// (`index.rs`); the records after it are searched by scanning their rows.
/// Absent in a file whose every record is indexed (schema 2 before the
/// index lag).
pub const RECORDS_INDEXED_KEY: &str = "records_indexed_through";
/// Key in [`META`]: as [`RECORDS_INDEXED_KEY`], for the access log.
pub const ACCESS_INDEXED_KEY: &str = "access_indexed_through";

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

/// A search index by one key: `(key, seq) -> ()`.
pub type KeyIndex = TableDefinition<'static, (&'static str, u64), ()>;
/// A time index: `(at, seq) -> ()`, rows in seq and time order at once.
pub type TimeIndex = TableDefinition<'static, (i64, u64), ()>;
/// Entries appended with a time before the last time-indexed one:
/// `seq -> at`.
pub type OutOfTimeOrder = TableDefinition<'static, u64, i64>;

/// Records by this side's pseudonymous person code.
pub const RECORDS_BY_CODE: KeyIndex = TableDefinition::new("records_by_code");
/// Records by requesting agency.
pub const RECORDS_BY_REQUESTER: KeyIndex = TableDefinition::new("records_by_requester");
/// Records by providing agency.
pub const RECORDS_BY_PROVIDER: KeyIndex = TableDefinition::new("records_by_provider");
/// Records by business code.
pub const RECORDS_BY_BUSINESS: KeyIndex = TableDefinition::new("records_by_business");
/// Records by info name code.
pub const RECORDS_BY_INFO_NAME: KeyIndex = TableDefinition::new("records_by_info_name");
/// Records by item code, one row per item of the prefix.
pub const RECORDS_BY_ITEM: KeyIndex = TableDefinition::new("records_by_item");
/// Records by the time they were appended.
pub const RECORDS_BY_TIME: TimeIndex = TableDefinition::new("records_by_time");
/// Records appended with a time before the last time-indexed record.
pub const RECORDS_OUT_OF_TIME_ORDER: OutOfTimeOrder =
    TableDefinition::new("records_out_of_time_order");

/// Access-log entries by party (`core`, `is/131016`, ...).
pub const ACCESS_BY_PARTY: KeyIndex = TableDefinition::new("access_by_party");
/// Access-log entries by agency.
pub const ACCESS_BY_AGENCY: KeyIndex = TableDefinition::new("access_by_agency");
/// Access-log entries by console user.
pub const ACCESS_BY_STAFF: KeyIndex = TableDefinition::new("access_by_staff");
/// Access-log entries by processing serial.
pub const ACCESS_BY_SERIAL: KeyIndex = TableDefinition::new("access_by_serial");
/// Access-log entries by time.
pub const ACCESS_BY_TIME: TimeIndex = TableDefinition::new("access_by_time");
/// Access-log entries with a time before the last time-indexed entry.
pub const ACCESS_OUT_OF_TIME_ORDER: OutOfTimeOrder =
    TableDefinition::new("access_out_of_time_order");

/// State of each live process, keyed by processing serial.
pub const PROCESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("processes");
/// Console accounts: `user id -> opaque CBOR` (the firmware's
/// `console::accounts::User`). Absent until the first account is stored.
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Every prefix list version received, as opaque CBOR.
pub const PREFIX: TableDefinition<u64, &[u8]> = TableDefinition::new("prefix");
/// Frames waiting to be delivered: `seq -> (destination, frame)`.
pub const OUTBOX: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("outbox");
/// Index of [`OUTBOX`] by destination: `(destination, seq) -> ()`.
pub const OUTBOX_BY_DESTINATION: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("outbox_by_destination");
/// Entries waiting per destination; a destination without entries has no
/// row.
pub const OUTBOX_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("outbox_counts");

/// A row of [`SEEN`]: `(at, encoded reply body)`.
pub type SeenRow<'a> = (i64, &'a [u8]);
/// Frames already accepted: `(sender, message_id) -> (at, reply)`.
pub const SEEN: TableDefinition<(&str, &str), SeenRow<'static>> = TableDefinition::new("seen");
/// Index of [`SEEN`] by time: `(at, sender, message_id) -> ()`.
pub const SEEN_BY_TIME: TableDefinition<(i64, &str, &str), ()> =
    TableDefinition::new("seen_by_time");

/// Names of every plain table of the layout, to tell a complete file from
/// one that lacks tables.
pub(crate) const TABLE_NAMES: [&str; 25] = [
    "meta",
    "chain_marks",
    "records",
    "access_log",
    "processes",
    "prefix",
    "outbox",
    "outbox_by_destination",
    "outbox_counts",
    "seen",
    "seen_by_time",
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
/// Names of every multimap table of the layout.
pub(crate) const MULTIMAP_NAMES: [&str; 1] = ["records_by_serial"];
