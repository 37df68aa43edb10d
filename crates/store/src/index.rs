//! The search indexes of the two chains (R-REC-2, issue 9 item 3): writing
//! their rows beside the chain rows, removing them with the rows, building
//! them from the chains (migration), and answering a paged search through
//! them.
//!
//! Invariants (layout in [`crate::tables`]):
//! - Every stored chain entry has exactly one row in its chain's time index
//!   or in its out-of-time-order table, and one row per key it carries in
//!   each key index; rows are written and removed in the transaction that
//!   writes or removes the entry.
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

/// Whether the indexes of `chain` hold one time row per entry, as they do
/// when every write kept them (O(1): three row counts). A file of schema
/// version 1, or one whose index tables were dropped, fails the check and
/// gets its indexes built.
pub(crate) fn sound(txn: &WriteTransaction, chain: ChainName) -> Result<bool, StoreError> {
    use redb::ReadableTableMetadata;
    let (time, out_of_order) = time_tables(chain);
    let entries = txn
        .open_table(chain.table())
        .map_err(db("open chain table"))?
        .len()
        .map_err(db("count chain entries"))?;
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

/// Empties the indexes of `chain` and builds them again from its rows, in
/// the caller's write transaction (a power cut leaves the old state or
/// the complete indexes). Returns how many entries were indexed.
pub(crate) fn rebuild(txn: &WriteTransaction, chain: ChainName) -> Result<u64, StoreError> {
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
    let mut entries = 0u64;
    for row in rows.iter().map_err(db("read chain entries"))? {
        let (k, v) = row.map_err(db("read chain entries"))?;
        let seq = k.value();
        let body = v.value().2;
        match chain {
            ChainName::Records => {
                let RecordBody { at, record } = from_cbor("record", || seq.to_string(), body)?;
                indexes.insert_record(seq, at, &record)?;
            }
            ChainName::AccessLog => {
                let entry: AccessEntry = from_cbor("access-log entry", || seq.to_string(), body)?;
                indexes.insert_access(seq, &entry)?;
            }
        }
        entries += 1;
    }
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
                    .filter(move |s| s.as_ref().map_or(true, |s| *s >= start));
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
                    (in_time && outside).then_some(Ok(seq))
                }
            });
        Box::new(range)
    } else {
        Box::new(std::iter::empty())
    };
    for seq in Merge::new(main, extra) {
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
