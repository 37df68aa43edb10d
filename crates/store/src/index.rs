//! The search indexes of the two chains (R-REC-2, issue 9 item 3): writing
//! their rows beside the chain rows, removing them with the rows, building
//! them from the chains (migration), and answering a paged search through
//! them.
//!
//! Invariants (layout in [`crate::tables`]):
//! - Each chain has an index mark, its last indexed seq (in `meta`, see
//!   [`tables::RECORDS_INDEXED_KEY`]). Every stored entry at or before the
//!   mark has exactly one row in its chain's time index or in its
//!   out-of-time-order table, and one row per key it carries in each key
//!   index; no entry after the mark has any. Appends leave their entries
//!   after the mark ([`Unindexed`]); an index step writes the rows of the
//!   oldest of them and moves the mark in one transaction, so the engine
//!   writes index rows in bulk, off the path of its replies, rather than
//!   ten rows per entry in every commit (issue 9 item 2). A removal takes
//!   the rows of the entries at or before the mark with it.
//! - A search reads the indexes for the entries up to the mark and scans
//!   the few rows after it, checking each against the whole filter, so it
//!   finds every stored entry whatever the mark.
//! - The rows of a time index are in seq order and in time order at once:
//!   an entry goes there only when its time is at or after the last row's,
//!   otherwise it goes to the out-of-time-order table. So a time range is
//!   a seq range of the time-indexed entries, found with two lookups.
//! - A search returns entries in seq order after the cursor's seq. Seqs
//!   only grow, so entries appended between two pages all come after the
//!   cursor: paging neither skips nor repeats an entry.
//! - Every candidate an index yields is decoded and checked against the
//!   whole filter, so an index only ever narrows the scan; a dangling index
//!   row (entry removed outside the store) is skipped.

use ifrelay_proto::Millis;
use redb::{MultimapTable, ReadTransaction, ReadableTable, Table, WriteTransaction};

use crate::chain::ChainName;
use crate::error::{db, from_cbor, StoreError};
use crate::model::{AccessEntry, AccessFilter, PageCursor, Record, RecordBody, RecordFilter};
use crate::tables::{self, KeyIndex, OutOfTimeOrder, TimeIndex};

/// The key indexes of the records, in the order [`record_keys`] numbers
/// them. Also the order in which a search picks the index that drives it:
/// the most selective first.
const RECORD_KEY_INDEXES: [KeyIndex; 6] = [
    tables::RECORDS_BY_CODE,
    tables::RECORDS_BY_ITEM,
    tables::RECORDS_BY_INFO_NAME,
    tables::RECORDS_BY_BUSINESS,
    tables::RECORDS_BY_PROVIDER,
    tables::RECORDS_BY_REQUESTER,
];

/// The key indexes of the access log, in the order [`access_keys`]
/// numbers them (most selective first).
const ACCESS_KEY_INDEXES: [KeyIndex; 4] = [
    tables::ACCESS_BY_SERIAL,
    tables::ACCESS_BY_STAFF,
    tables::ACCESS_BY_AGENCY,
    tables::ACCESS_BY_PARTY,
];

/// The key index rows of a record: `(position in RECORD_KEY_INDEXES,
/// key)`.
fn record_keys(r: &Record) -> Vec<(usize, &str)> {
    let mut keys = Vec::with_capacity(5 + r.prefix.items.len());
    if let Some(code) = &r.code {
        keys.push((0, code.as_str()));
    }
    for item in &r.prefix.items {
        keys.push((1, item.as_str()));
    }
    keys.push((2, r.prefix.info_name.as_str()));
    keys.push((3, r.prefix.business.as_str()));
    keys.push((4, r.prefix.provider.as_str()));
    keys.push((5, r.prefix.requester.as_str()));
    keys
}

/// The key index rows of an access-log entry: `(position in
/// ACCESS_KEY_INDEXES, key)`.
fn access_keys(e: &AccessEntry) -> Vec<(usize, &str)> {
    let mut keys = Vec::with_capacity(4);
    if let Some(serial) = &e.serial {
        keys.push((0, serial.as_str()));
    }
    if let Some(staff) = &e.staff {
        keys.push((1, staff.as_str()));
    }
    if let Some(agency) = &e.agency {
        keys.push((2, agency.as_str()));
    }
    keys.push((3, e.party.as_str()));
    keys
}

fn time_tables(chain: ChainName) -> (TimeIndex, OutOfTimeOrder) {
    match chain {
        ChainName::Records => (tables::RECORDS_BY_TIME, tables::RECORDS_OUT_OF_TIME_ORDER),
        ChainName::AccessLog => (tables::ACCESS_BY_TIME, tables::ACCESS_OUT_OF_TIME_ORDER),
    }
}

fn key_tables(chain: ChainName) -> &'static [KeyIndex] {
    match chain {
        ChainName::Records => &RECORD_KEY_INDEXES,
        ChainName::AccessLog => &ACCESS_KEY_INDEXES,
    }
}

/// The key of `chain`'s index mark in [`tables::META`].
const fn mark_key(chain: ChainName) -> &'static str {
    match chain {
        ChainName::Records => tables::RECORDS_INDEXED_KEY,
        ChainName::AccessLog => tables::ACCESS_INDEXED_KEY,
    }
}

/// The index mark of `chain` as `meta` holds it; `None` in a file whose
/// every entry is indexed (written before the marks existed).
pub(crate) fn read_mark(
    meta: &impl ReadableTable<&'static str, u64>,
    chain: ChainName,
) -> Result<Option<u64>, StoreError> {
    Ok(meta
        .get(mark_key(chain))
        .map_err(db("read an index mark"))?
        .map(|g| g.value()))
}

/// Records `mark` as the index mark of `chain`.
pub(crate) fn write_mark(
    txn: &WriteTransaction,
    chain: ChainName,
    mark: u64,
) -> Result<(), StoreError> {
    txn.open_table(tables::META)
        .map_err(db("open table meta"))?
        .insert(mark_key(chain), mark)
        .map_err(db("write an index mark"))?;
    Ok(())
}

/// The entries appended after the index marks, in seq order, waiting for
/// an index step: kept decoded so the step need not read them back.
#[derive(Debug, Default)]
pub(crate) struct Unindexed {
    pub records: Vec<(u64, Millis, Record)>,
    pub access: Vec<(u64, AccessEntry)>,
}

impl Unindexed {
    pub(crate) fn len(&self) -> usize {
        self.records.len() + self.access.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.access.is_empty()
    }

    /// Reads the entries after each chain's mark from the file (at open,
    /// after a reopen): the state of the writer's memory is rebuilt from
    /// what the file holds.
    pub(crate) fn load(txn: &WriteTransaction, marks: [u64; 2]) -> Result<Self, StoreError> {
        let mut out = Unindexed::default();
        for (chain, mark) in [ChainName::Records, ChainName::AccessLog]
            .into_iter()
            .zip(marks)
        {
            let Some(from) = mark.checked_add(1) else {
                continue;
            };
            let rows = txn
                .open_table(chain.table())
                .map_err(db("open chain table"))?;
            for row in rows.range(from..).map_err(db("read chain entries"))? {
                let (k, v) = row.map_err(db("read chain entries"))?;
                let seq = k.value();
                let body = v.value().2;
                // An undecodable row (altered on disk) gets no index rows;
                // verification reports it, and a search that reaches it
                // answers `Corrupt`. The store still opens.
                let decoded = match chain {
                    ChainName::Records => {
                        from_cbor::<RecordBody>("record", || seq.to_string(), body)
                            .map(|RecordBody { at, record }| out.records.push((seq, at, record)))
                    }
                    ChainName::AccessLog => {
                        from_cbor::<AccessEntry>("access-log entry", || seq.to_string(), body)
                            .map(|entry| out.access.push((seq, entry)))
                    }
                };
                if let Err(e) = decoded {
                    tracing::warn!(%chain, seq, error = %crate::error::ErrorChain(&e), "store: an entry after the index mark is undecodable; it gets no index rows");
                }
            }
        }
        Ok(out)
    }

    /// Moves `other`'s entries to the end of these.
    pub(crate) fn append(&mut self, other: &mut Unindexed) {
        self.records.append(&mut other.records);
        self.access.append(&mut other.access);
    }

    /// Forgets the entries at or before the marks (indexed or deleted).
    pub(crate) fn forget_through(&mut self, records: u64, access: u64) {
        let r = self.records.partition_point(|(seq, _, _)| *seq <= records);
        self.records.drain(..r);
        let a = self.access.partition_point(|(seq, _)| *seq <= access);
        self.access.drain(..a);
    }
}

/// The index tables of one chain, opened once in a write transaction (per
/// append, or once for a whole bulk fill or migration).
pub(crate) struct ChainIndexes<'t> {
    keys: Vec<Table<'t, (&'static str, u64), ()>>,
    /// The serial index (records only; kept as the multimap of version 1).
    serial: Option<MultimapTable<'t, &'static str, u64>>,
    by_time: Table<'t, (i64, u64), ()>,
    out_of_order: Table<'t, u64, i64>,
    /// The time of the last time-indexed entry, once read.
    last_time: Option<Option<Millis>>,
}

impl<'t> ChainIndexes<'t> {
    /// Opens the index tables of `chain` in `txn`.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub(crate) fn open(txn: &'t WriteTransaction, chain: ChainName) -> Result<Self, StoreError> {
        let keys = key_tables(chain)
            .iter()
            .map(|def| txn.open_table(*def).map_err(db("open a search index")))
            .collect::<Result<Vec<_>, _>>()?;
        let serial = match chain {
            ChainName::Records => Some(
                txn.open_multimap_table(tables::RECORDS_BY_SERIAL)
                    .map_err(db("open table records_by_serial"))?,
            ),
            ChainName::AccessLog => None,
        };
        let (time, out_of_order) = time_tables(chain);
        Ok(ChainIndexes {
            keys,
            serial,
            by_time: txn.open_table(time).map_err(db("open a time index"))?,
            out_of_order: txn
                .open_table(out_of_order)
                .map_err(db("open a time index"))?,
            last_time: None,
        })
    }

    /// Writes the index rows of record `seq`, appended at `at`.
    pub(crate) fn insert_record(
        &mut self,
        seq: u64,
        at: Millis,
        r: &Record,
    ) -> Result<(), StoreError> {
        if let Some(serial) = self.serial.as_mut() {
            serial
                .insert(r.serial.as_str(), seq)
                .map_err(db("write record index"))?;
        }
        self.insert(seq, at, &record_keys(r))
    }

    /// Writes the index rows of access-log entry `seq`.
    pub(crate) fn insert_access(&mut self, seq: u64, e: &AccessEntry) -> Result<(), StoreError> {
        self.insert(seq, e.at, &access_keys(e))
    }

    /// Removes the index rows of record `seq`.
    pub(crate) fn remove_record(
        &mut self,
        seq: u64,
        at: Millis,
        r: &Record,
    ) -> Result<(), StoreError> {
        if let Some(serial) = self.serial.as_mut() {
            serial
                .remove(r.serial.as_str(), seq)
                .map_err(db("delete record index"))?;
        }
        self.remove(seq, at, &record_keys(r))
    }

    /// Removes the index rows of access-log entry `seq`.
    pub(crate) fn remove_access(&mut self, seq: u64, e: &AccessEntry) -> Result<(), StoreError> {
        self.remove(seq, e.at, &access_keys(e))
    }

    fn insert(&mut self, seq: u64, at: Millis, keys: &[(usize, &str)]) -> Result<(), StoreError> {
        for (i, key) in keys {
            if let Some(table) = self.keys.get_mut(*i) {
                table
                    .insert((*key, seq), ())
                    .map_err(db("write a search index"))?;
            }
        }
        let last = match self.last_time {
            Some(last) => last,
            None => self
                .by_time
                .last()
                .map_err(db("read a time index"))?
                .map(|(k, _)| k.value().0),
        };
        if last.is_none_or(|last| at >= last) {
            self.by_time
                .insert((at, seq), ())
                .map_err(db("write a time index"))?;
            self.last_time = Some(Some(at));
        } else {
            self.out_of_order
                .insert(seq, at)
                .map_err(db("write a time index"))?;
            self.last_time = Some(last);
        }
        Ok(())
    }

    fn remove(&mut self, seq: u64, at: Millis, keys: &[(usize, &str)]) -> Result<(), StoreError> {
        for (i, key) in keys {
            if let Some(table) = self.keys.get_mut(*i) {
                table
                    .remove((*key, seq))
                    .map_err(db("delete a search index"))?;
            }
        }
        let in_time_index = self
            .by_time
            .remove((at, seq))
            .map_err(db("delete a time index"))?
            .is_some();
        if !in_time_index {
            self.out_of_order
                .remove(seq)
                .map_err(db("delete a time index"))?;
        }
        // The last row may have gone (everything deleted): read it again.
        self.last_time = None;
        Ok(())
    }

    /// The first time-indexed entry at or after `cutoff`: every entry
    /// before its seq was appended before `cutoff`.
    pub(crate) fn first_seq_at_or_after(&self, cutoff: Millis) -> Result<Option<u64>, StoreError> {
        Ok(self
            .by_time
            .range((cutoff, 0)..)
            .map_err(db("read a time index"))?
            .next()
            .transpose()
            .map_err(db("read a time index"))?
            .map(|(k, _)| k.value().1))
    }
}

impl ChainIndexes<'_> {
    /// The first entry in `(after, below)` appended out of time order at
    /// or after `cutoff` (few such entries exist: the clock stepped back).
    pub(crate) fn first_out_of_order_at_or_after(
        &self,
        cutoff: Millis,
        after: u64,
        below: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(None);
        };
        if from >= below {
            return Ok(None);
        }
        for row in self
            .out_of_order
            .range(from..below)
            .map_err(db("read a time index"))?
        {
            let (k, v) = row.map_err(db("read a time index"))?;
            if v.value() >= cutoff {
                return Ok(Some(k.value()));
            }
        }
        Ok(None)
    }
}

/// Whether the indexes of `chain` hold one time row per entry up to the
/// index mark, as they do when every write kept them (three row counts and
/// a walk over the entries after the mark). A file of schema
/// version 1, or one whose index tables were dropped, fails the check and
/// gets its indexes built.
pub(crate) fn sound(txn: &WriteTransaction, chain: ChainName) -> Result<bool, StoreError> {
    use redb::ReadableTableMetadata;
    let (time, out_of_order) = time_tables(chain);
    let mark = read_mark(
        &txn.open_table(tables::META)
            .map_err(db("open table meta"))?,
        chain,
    )?;
    let rows = txn
        .open_table(chain.table())
        .map_err(db("open chain table"))?;
    let mut entries = rows.len().map_err(db("count chain entries"))?;
    if let Some(from) = mark.and_then(|m| m.checked_add(1)) {
        // The entries after the mark have no rows (few: one index step).
        let after = rows
            .range(from..)
            .map_err(db("read chain entries"))?
            .count() as u64;
        entries = entries.saturating_sub(after);
    }
    let timed = txn
        .open_table(time)
        .map_err(db("open a time index"))?
        .len()
        .map_err(db("count a time index"))?;
    let untimed = txn
        .open_table(out_of_order)
        .map_err(db("open a time index"))?
        .len()
        .map_err(db("count a time index"))?;
    Ok(entries == timed + untimed)
}

/// Entries whose index rows a rebuild sorts and writes together: bounds
/// its memory (a few hundred bytes an entry: 100 MiB or less) whatever
/// the chain holds, while each table still gets its rows in key order
/// chunk by chunk, which touches each page once per chunk instead of
/// once per row (inserting in seq order was what made the schema 1 → 2
/// migration crawl beyond a few million records).
const REBUILD_CHUNK: usize = 250_000;

/// Empties the indexes of `chain` and builds them again from its rows, in
/// the caller's write transaction (a power cut leaves the old state or
/// the complete indexes). Returns how many entries were indexed.
pub(crate) fn rebuild(txn: &WriteTransaction, chain: ChainName) -> Result<u64, StoreError> {
    rebuild_in_chunks(txn, chain, REBUILD_CHUNK)
}

/// Index rows of up to a chunk of entries, to be sorted and written.
struct SortedChunk {
    /// Per key table of the chain: `(key, seq)`.
    keys: Vec<Vec<(Box<str>, u64)>>,
    serial: Vec<(Box<str>, u64)>,
    entries: usize,
}

impl ChainIndexes<'_> {
    /// Writes `chunk`'s rows, each table in key order, and empties it.
    fn write_sorted(&mut self, chunk: &mut SortedChunk) -> Result<(), StoreError> {
        for (table, rows) in self.keys.iter_mut().zip(&mut chunk.keys) {
            rows.sort_unstable();
            for (key, seq) in rows.drain(..) {
                table
                    .insert((&*key, seq), ())
                    .map_err(db("write a search index"))?;
            }
        }
        if let Some(serial) = self.serial.as_mut() {
            chunk.serial.sort_unstable();
            for (key, seq) in chunk.serial.drain(..) {
                serial
                    .insert(&*key, seq)
                    .map_err(db("write record index"))?;
            }
        }
        chunk.entries = 0;
        Ok(())
    }
}

fn rebuild_in_chunks(
    txn: &WriteTransaction,
    chain: ChainName,
    chunk_entries: usize,
) -> Result<u64, StoreError> {
    for def in key_tables(chain) {
        txn.delete_table(*def).map_err(db("drop a search index"))?;
    }
    let (time, out_of_order) = time_tables(chain);
    txn.delete_table(time).map_err(db("drop a time index"))?;
    txn.delete_table(out_of_order)
        .map_err(db("drop a time index"))?;
    if chain == ChainName::Records {
        txn.delete_multimap_table(tables::RECORDS_BY_SERIAL)
            .map_err(db("drop table records_by_serial"))?;
    }
    let rows = txn
        .open_table(chain.table())
        .map_err(db("open chain table"))?;
    let mut indexes = ChainIndexes::open(txn, chain)?;
    let mut chunk = SortedChunk {
        keys: vec![Vec::new(); key_tables(chain).len()],
        serial: Vec::new(),
        entries: 0,
    };
    let mut entries = 0u64;
    for row in rows.iter().map_err(db("read chain entries"))? {
        let (k, v) = row.map_err(db("read chain entries"))?;
        let seq = k.value();
        let body = v.value().2;
        // Time rows go in at once: in seq order they are appended.
        match chain {
            ChainName::Records => {
                let RecordBody { at, record } = from_cbor("record", || seq.to_string(), body)?;
                chunk.serial.push((record.serial.as_str().into(), seq));
                for (i, key) in record_keys(&record) {
                    chunk.keys[i].push((key.into(), seq));
                }
                indexes.insert(seq, at, &[])?;
            }
            ChainName::AccessLog => {
                let entry: AccessEntry = from_cbor("access-log entry", || seq.to_string(), body)?;
                for (i, key) in access_keys(&entry) {
                    chunk.keys[i].push((key.into(), seq));
                }
                indexes.insert(seq, entry.at, &[])?;
            }
        }
        entries += 1;
        chunk.entries += 1;
        if chunk.entries >= chunk_entries {
            indexes.write_sorted(&mut chunk)?;
        }
    }
    indexes.write_sorted(&mut chunk)?;
    Ok(entries)
}

/// Where the candidates of a search come from.
enum Driver<'f> {
    /// The serial multimap of the records.
    Serial(&'f str),
    /// A key index and the key.
    Key(KeyIndex, &'f str),
    /// The chain itself, in seq order.
    Chain,
}

/// A search of one chain, planned from a filter.
struct Plan<'f> {
    chain: ChainName,
    driver: Driver<'f>,
    since: Option<Millis>,
    until: Option<Millis>,
    /// Candidates start after this seq.
    after: u64,
}

impl<'f> Plan<'f> {
    fn records(filter: &'f RecordFilter, cursor: PageCursor) -> Self {
        let keys: [Option<&str>; 6] = [
            filter.code.as_ref().map(|c| c.as_str()),
            filter.item.as_ref().map(|c| c.as_str()),
            filter.info_name.as_ref().map(|c| c.as_str()),
            filter.business.as_ref().map(|c| c.as_str()),
            filter.provider.as_ref().map(|c| c.as_str()),
            filter.requester.as_ref().map(|c| c.as_str()),
        ];
        let driver = match &filter.serial {
            Some(serial) => Driver::Serial(serial.as_str()),
            None => pick(&RECORD_KEY_INDEXES, &keys),
        };
        Plan {
            chain: ChainName::Records,
            driver,
            since: filter.since,
            until: filter.until,
            after: cursor.last_seq.max(filter.from_seq.saturating_sub(1)),
        }
    }

    fn access(filter: &'f AccessFilter, cursor: PageCursor) -> Self {
        let keys: [Option<&str>; 4] = [
            filter.serial.as_ref().map(|c| c.as_str()),
            filter.staff.as_deref(),
            filter.agency.as_ref().map(|c| c.as_str()),
            filter.party.as_deref(),
        ];
        Plan {
            chain: ChainName::AccessLog,
            driver: pick(&ACCESS_KEY_INDEXES, &keys),
            since: filter.since,
            until: filter.until,
            after: cursor.last_seq,
        }
    }
}

/// The first key index whose key the filter sets, else the chain.
fn pick<'f>(defs: &[KeyIndex], keys: &[Option<&'f str>]) -> Driver<'f> {
    defs.iter()
        .zip(keys)
        .find_map(|(def, key)| key.map(|k| Driver::Key(*def, k)))
        .unwrap_or(Driver::Chain)
}

/// Maps a missing index table to [`StoreError::NeedsMigration`]: only a
/// file of the layout before the indexes lacks one.
fn index_error(e: redb::TableError) -> StoreError {
    match e {
        redb::TableError::TableDoesNotExist(_) => StoreError::NeedsMigration {
            found: tables::SCHEMA_VERSION_WITHOUT_SEARCH_INDEXES,
        },
        other => db("open a search index")(other),
    }
}

/// A candidate stream of seqs in ascending order.
type Seqs<'a> = Box<dyn Iterator<Item = Result<u64, StoreError>> + 'a>;

/// Runs `plan` over `txn`: candidates in seq order, each decoded and kept
/// by `keep` (which checks the whole filter), until `limit` are kept.
/// Returns them with the cursor of the next page when the page is full.
fn run<T>(
    txn: &ReadTransaction,
    plan: &Plan<'_>,
    limit: usize,
    mut keep: impl FnMut(u64, tables::ChainRow<'_>) -> Result<Option<T>, StoreError>,
) -> Result<(Vec<T>, Option<PageCursor>), StoreError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok((out, None));
    }
    let Some(start) = plan.after.checked_add(1) else {
        return Ok((out, None));
    };
    let rows = txn
        .open_table(plan.chain.table())
        .map_err(db("open chain table"))?;
    let meta = txn
        .open_table(tables::META)
        .map_err(db("open table meta"))?;
    let version = meta
        .get(tables::SCHEMA_VERSION_KEY)
        .map_err(db("read schema version"))?
        .map(|g| g.value());
    if version == Some(tables::SCHEMA_VERSION_WITHOUT_SEARCH_INDEXES) {
        return Err(StoreError::NeedsMigration {
            found: tables::SCHEMA_VERSION_WITHOUT_SEARCH_INDEXES,
        });
    }
    // Indexes answer for the entries up to the mark; after it, every row
    // is a candidate (the tail streams below).
    let mark = read_mark(&meta, plan.chain)?.unwrap_or(u64::MAX);
    drop(meta);
    let (time, out_of_order) = time_tables(plan.chain);
    // The seq range [lo, hi) of the time-indexed entries in the time
    // range, and the out-of-time-order entries in it (rare: the clock
    // stepped back), merged in.
    let timed = plan.since.is_some() || plan.until.is_some();
    let (lo, hi) = if timed {
        let by_time = txn.open_table(time).map_err(index_error)?;
        let first_at = |t: Option<Millis>| -> Result<Option<u64>, StoreError> {
            let Some(t) = t else { return Ok(None) };
            Ok(by_time
                .range((t, 0)..)
                .map_err(db("read a time index"))?
                .next()
                .transpose()
                .map_err(db("read a time index"))?
                .map(|(k, _)| k.value().1))
        };
        let lo = match plan.since {
            None => 0,
            Some(_) => first_at(plan.since)?.unwrap_or(u64::MAX),
        };
        let hi = first_at(plan.until)?.unwrap_or(u64::MAX);
        (lo, hi)
    } else {
        (0, u64::MAX)
    };
    let from = start.max(lo);
    let hi = hi.min(mark.saturating_add(1));
    let main: Seqs<'_> = if from >= hi && !matches!(plan.driver, Driver::Serial(_)) {
        Box::new(std::iter::empty())
    } else {
        match plan.driver {
            Driver::Serial(serial) => {
                let index = txn
                    .open_multimap_table(tables::RECORDS_BY_SERIAL)
                    .map_err(db("open table records_by_serial"))?;
                // Few records per serial: the time criterion is checked on
                // each, not through the seq range.
                let seqs = index
                    .get(serial)
                    .map_err(db("read record index"))?
                    .map(|s| s.map(|s| s.value()).map_err(db("read record index")))
                    .filter(move |s| s.as_ref().map_or(true, |s| *s >= start && *s <= mark));
                Box::new(seqs.collect::<Vec<_>>().into_iter())
            }
            Driver::Key(def, key) => {
                let index = txn.open_table(def).map_err(index_error)?;
                let range = index
                    .range((key, from)..(key, hi))
                    .map_err(db("read a search index"))?;
                Box::new(range.map(|r| {
                    r.map(|(k, _)| k.value().1)
                        .map_err(db("read a search index"))
                }))
            }
            Driver::Chain => {
                let range = rows.range(from..hi).map_err(db("read chain entries"))?;
                Box::new(range.map(|r| r.map(|(k, _)| k.value()).map_err(db("read chain entries"))))
            }
        }
    };
    let extra: Seqs<'_> = if timed && !matches!(plan.driver, Driver::Serial(_)) {
        let table = txn.open_table(out_of_order).map_err(index_error)?;
        let (since, until) = (plan.since, plan.until);
        let range = table
            .range(start..)
            .map_err(db("read a time index"))?
            .filter_map(move |r| match r {
                Err(e) => Some(Err(db("read a time index")(e))),
                Ok((k, v)) => {
                    let (seq, at) = (k.value(), v.value());
                    let in_time = since.is_none_or(|t| at >= t) && until.is_none_or(|t| at < t);
                    // Inside [from, hi) the main stream yields it already.
                    let outside = seq < from || seq >= hi;
                    (in_time && outside && seq <= mark).then_some(Ok(seq))
                }
            });
        Box::new(range)
    } else {
        Box::new(std::iter::empty())
    };
    let tail: Seqs<'_> = match mark.checked_add(1) {
        Some(after_mark) => {
            let range = rows
                .range(start.max(after_mark)..)
                .map_err(db("read chain entries"))?;
            Box::new(range.map(|r| r.map(|(k, _)| k.value()).map_err(db("read chain entries"))))
        }
        None => Box::new(std::iter::empty()),
    };
    // Every seq of `tail` is after every seq of the indexed streams.
    for seq in Merge::new(main, extra).chain(tail) {
        let seq = seq?;
        let Some(row) = rows.get(seq).map_err(db("read chain entries"))? else {
            continue;
        };
        if let Some(found) = keep(seq, row.value())? {
            out.push(found);
            if out.len() >= limit {
                return Ok((out, Some(PageCursor { last_seq: seq })));
            }
        }
    }
    Ok((out, None))
}

/// Two ascending seq streams merged into one.
struct Merge<'a> {
    a: std::iter::Peekable<Seqs<'a>>,
    b: std::iter::Peekable<Seqs<'a>>,
}

impl<'a> Merge<'a> {
    fn new(a: Seqs<'a>, b: Seqs<'a>) -> Self {
        Merge {
            a: a.peekable(),
            b: b.peekable(),
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<u64, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let take_a = match (self.a.peek(), self.b.peek()) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            // An error goes out first, whichever stream it is in.
            (Some(Err(_)), _) => true,
            (_, Some(Err(_))) => false,
            (Some(Ok(a)), Some(Ok(b))) => a <= b,
        };
        if take_a {
            self.a.next()
        } else {
            self.b.next()
        }
    }
}

/// Records matching `filter` after `cursor`, at most `limit`, in seq
/// order, with the cursor of the next page when this one is full.
///
/// # Errors
/// [`StoreError::NeedsMigration`] on a file without indexes,
/// [`StoreError::Db`], or [`StoreError::Corrupt`] for an undecodable row.
pub(crate) fn search_records(
    txn: &ReadTransaction,
    filter: &RecordFilter,
    cursor: PageCursor,
    limit: usize,
) -> Result<(Vec<crate::model::ChainedRecord>, Option<PageCursor>), StoreError> {
    let plan = Plan::records(filter, cursor);
    run(txn, &plan, limit, |seq, row| {
        let record = decode_record(seq, row)?;
        Ok(filter
            .matches(seq, record.at, &record.record)
            .then_some(record))
    })
}

/// How many entries of `chain` the time index holds from before
/// `cutoff`, and the times of the oldest and the newest of them: what a
/// deletion by age would remove (an entry appended after a clock step
/// back may wait for a newer one, `docs/config.md` `[retention]`).
///
/// # Errors
/// As [`search_records`].
pub(crate) fn count_before(
    txn: &ReadTransaction,
    chain: ChainName,
    cutoff: Millis,
) -> Result<crate::model::AgeCount, StoreError> {
    let (by_time, _) = time_tables(chain);
    let table = txn.open_table(by_time).map_err(index_error)?;
    let mut count = crate::model::AgeCount::default();
    for row in table
        .range(..(cutoff, 0))
        .map_err(db("read a time index"))?
    {
        let (k, _) = row.map_err(db("read a time index"))?;
        let (at, _) = k.value();
        count.entries += 1;
        count.oldest = Some(count.oldest.map_or(at, |o: Millis| o.min(at)));
        count.newest = Some(count.newest.map_or(at, |n: Millis| n.max(at)));
    }
    Ok(count)
}

/// Access-log entries matching `filter` after `cursor`, as
/// [`search_records`].
///
/// # Errors
/// As [`search_records`].
pub(crate) fn search_access(
    txn: &ReadTransaction,
    filter: &AccessFilter,
    cursor: PageCursor,
    limit: usize,
) -> Result<(Vec<crate::model::ChainedAccess>, Option<PageCursor>), StoreError> {
    let plan = Plan::access(filter, cursor);
    run(txn, &plan, limit, |seq, row| {
        let entry = decode_access(seq, row)?;
        Ok(filter.matches(&entry.entry).then_some(entry))
    })
}

/// Decodes a record row.
pub(crate) fn decode_record(
    seq: u64,
    (prev_hash, hash, body): tables::ChainRow<'_>,
) -> Result<crate::model::ChainedRecord, StoreError> {
    let RecordBody { at, record } = from_cbor("record", || seq.to_string(), body)?;
    Ok(crate::model::ChainedRecord {
        seq,
        at,
        prev_hash,
        hash,
        record,
    })
}

/// Decodes an access-log row.
pub(crate) fn decode_access(
    seq: u64,
    (prev_hash, hash, body): tables::ChainRow<'_>,
) -> Result<crate::model::ChainedAccess, StoreError> {
    let entry = from_cbor("access-log entry", || seq.to_string(), body)?;
    Ok(crate::model::ChainedAccess {
        seq,
        prev_hash,
        hash,
        entry,
    })
}

/// The index rows of records after the mark, collected from the chain
/// and sorted, so each table is written in key order: every leaf once,
/// instead of one random leaf per row (a fill of millions of records).
pub(crate) struct SortedRecordRows {
    /// Per entry of [`RECORD_KEY_INDEXES`]: `(key, seq)`.
    keys: Vec<Vec<(Box<str>, u64)>>,
    serial: Vec<(Box<str>, u64)>,
    by_time: Vec<(Millis, u64)>,
    out_of_order: Vec<(u64, Millis)>,
    /// The last seq collected.
    pub last: u64,
}

impl SortedRecordRows {
    /// Reads the records after `mark` and their index rows, sorted.
    pub(crate) fn collect(txn: &WriteTransaction, mark: u64) -> Result<Self, StoreError> {
        let mut out = SortedRecordRows {
            keys: vec![Vec::new(); RECORD_KEY_INDEXES.len()],
            serial: Vec::new(),
            by_time: Vec::new(),
            out_of_order: Vec::new(),
            last: mark,
        };
        let mut last_time = txn
            .open_table(tables::RECORDS_BY_TIME)
            .map_err(db("open a time index"))?
            .last()
            .map_err(db("read a time index"))?
            .map(|(k, _)| k.value().0);
        let rows = txn
            .open_table(tables::RECORDS)
            .map_err(db("open chain table"))?;
        let Some(from) = mark.checked_add(1) else {
            return Ok(out);
        };
        for row in rows.range(from..).map_err(db("read chain entries"))? {
            let (k, v) = row.map_err(db("read chain entries"))?;
            let seq = k.value();
            let Ok(RecordBody { at, record }) =
                from_cbor::<RecordBody>("record", || seq.to_string(), v.value().2)
            else {
                continue;
            };
            out.serial.push((record.serial.as_str().into(), seq));
            for (i, key) in record_keys(&record) {
                out.keys[i].push((key.into(), seq));
            }
            if last_time.is_none_or(|last| at >= last) {
                out.by_time.push((at, seq));
                last_time = Some(at);
            } else {
                out.out_of_order.push((seq, at));
            }
            out.last = seq;
        }
        for rows in &mut out.keys {
            rows.sort_unstable();
        }
        out.serial.sort_unstable();
        Ok(out)
    }

    /// Writes the rows, table by table in key order, each table in
    /// transactions of at most `per_commit` rows that `begin` starts.
    pub(crate) fn write(
        &self,
        per_commit: usize,
        mut begin: impl FnMut() -> Result<WriteTransaction, StoreError>,
    ) -> Result<(), StoreError> {
        let per_commit = per_commit.max(1);
        for (def, rows) in RECORD_KEY_INDEXES.iter().zip(&self.keys) {
            for chunk in rows.chunks(per_commit) {
                let txn = begin()?;
                {
                    let mut table = txn.open_table(*def).map_err(db("open a search index"))?;
                    for (key, seq) in chunk {
                        table
                            .insert((&**key, *seq), ())
                            .map_err(db("write a search index"))?;
                    }
                }
                txn.commit().map_err(db("commit search index rows"))?;
            }
        }
        for chunk in self.serial.chunks(per_commit) {
            let txn = begin()?;
            {
                let mut table = txn
                    .open_multimap_table(tables::RECORDS_BY_SERIAL)
                    .map_err(db("open table records_by_serial"))?;
                for (key, seq) in chunk {
                    table
                        .insert(&**key, *seq)
                        .map_err(db("write record index"))?;
                }
            }
            txn.commit().map_err(db("commit search index rows"))?;
        }
        for chunk in self.by_time.chunks(per_commit) {
            let txn = begin()?;
            {
                let mut table = txn
                    .open_table(tables::RECORDS_BY_TIME)
                    .map_err(db("open a time index"))?;
                for row in chunk {
                    table.insert(*row, ()).map_err(db("write a time index"))?;
                }
            }
            txn.commit().map_err(db("commit search index rows"))?;
        }
        let txn = begin()?;
        {
            let mut table = txn
                .open_table(tables::RECORDS_OUT_OF_TIME_ORDER)
                .map_err(db("open a time index"))?;
            for (seq, at) in &self.out_of_order {
                table.insert(*seq, *at).map_err(db("write a time index"))?;
            }
        }
        write_mark(&txn, ChainName::Records, self.last)?;
        txn.commit().map_err(db("commit search index rows"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Direction, RecordKind, Side};
    use ifrelay_proto::{
        AgencyCode, BusinessCode, InfoNameCode, ItemCode, PersonCode, Prefix, Serial,
    };
    use redb::{ReadableDatabase, ReadableMultimapTable};

    #[allow(clippy::unwrap_used)]
    fn record(n: u32) -> Record {
        let mut items = heapless::Vec::new();
        items
            .push(ItemCode::new(&format!("IT{:04}", n % 5)).unwrap())
            .unwrap();
        Record {
            kind: RecordKind::Query,
            side: Side::Requester,
            serial: Serial::new(&format!("131016-20261201-1-{}", n % 9)).unwrap(),
            prefix: Prefix {
                requester: AgencyCode::new("131016").unwrap(),
                business: BusinessCode::new(&format!("JM{:04}", n % 3)).unwrap(),
                provider: AgencyCode::new(&format!("27100{}", n % 4)).unwrap(),
                info_name: InfoNameCode::new(&format!("TK{:04}", n % 7)).unwrap(),
                items,
            },
            code: Some(PersonCode::new(&format!("CODE{:04}", n % 11)).unwrap()),
            permit_id: None,
            counterpart: None,
            query_requested_at: 0,
            provision_at: None,
            clock_synced: false,
        }
    }

    type Rows = Vec<(String, Vec<(String, u64)>)>;

    #[allow(clippy::unwrap_used)]
    fn index_rows(txn: &WriteTransaction) -> Rows {
        let mut out = Vec::new();
        for def in RECORD_KEY_INDEXES.iter().chain(&ACCESS_KEY_INDEXES) {
            let table = txn.open_table(*def).unwrap();
            let rows = table
                .iter()
                .unwrap()
                .map(|r| {
                    let (k, _) = r.unwrap();
                    let (key, seq) = k.value();
                    (key.to_owned(), seq)
                })
                .collect();
            out.push((def.to_string(), rows));
        }
        let serial = txn.open_multimap_table(tables::RECORDS_BY_SERIAL).unwrap();
        let mut rows = Vec::new();
        for r in serial.iter().unwrap() {
            let (k, seqs) = r.unwrap();
            for seq in seqs {
                rows.push((k.value().to_owned(), seq.unwrap().value()));
            }
        }
        out.push(("serial".into(), rows));
        for (time, _) in [
            time_tables(ChainName::Records),
            time_tables(ChainName::AccessLog),
        ] {
            let table = txn.open_table(time).unwrap();
            let rows = table
                .iter()
                .unwrap()
                .map(|r| {
                    let (k, _) = r.unwrap();
                    let (at, seq) = k.value();
                    (at.to_string(), seq)
                })
                .collect();
            out.push((time.to_string(), rows));
        }
        out
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_rebuild_in_chunks_writes_the_rows_the_appends_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let mut store = crate::Store::open(&path, 1 << 20).unwrap();
            store.boot(1_000).unwrap();
            let mut b = store.begin().unwrap();
            for n in 0..40u32 {
                b.append_record(2_000 + i64::from(n), record(n)).unwrap();
                b.append_access(AccessEntry {
                    at: 2_000 + i64::from(n),
                    terminal: "t".into(),
                    party: format!("party-{}", n % 3),
                    agency: Some(AgencyCode::new(&format!("27100{}", n % 4)).unwrap()),
                    staff: (n % 2 == 0).then(|| format!("staff{}", n % 4)),
                    direction: Direction::In,
                    operation: "op".into(),
                    message_id: None,
                    serial: Some(Serial::new(&format!("131016-20261201-1-{}", n % 9)).unwrap()),
                    business: None,
                    info_name: None,
                    items: Vec::new(),
                    outcome: "ok".into(),
                })
                .unwrap();
            }
            b.commit().unwrap();
            // Index rows are written a step after their entries.
            store.index_pending(usize::MAX).unwrap();
            assert_eq!(store.unindexed(), 0);
            store.checkpoint().unwrap();
        }
        let database = redb::Database::open(&path).unwrap();
        let txn = database.begin_write().unwrap();
        let appended = index_rows(&txn);
        assert!(appended.iter().all(|(_, rows)| !rows.is_empty()));
        // 7 entries a chunk: six chunks and a remainder.
        assert_eq!(rebuild_in_chunks(&txn, ChainName::Records, 7).unwrap(), 40);
        assert_eq!(
            rebuild_in_chunks(&txn, ChainName::AccessLog, 7).unwrap(),
            40
        );
        assert_eq!(index_rows(&txn), appended);
        txn.abort().unwrap();
        let _ = database.begin_read().unwrap();
    }
}
