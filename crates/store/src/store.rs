//! [`Store`]: opening the file, the boot epoch, handing out batches, and
//! reopening after an I/O error.
//!
//! Invariants:
//! - Exactly one [`Store`] writes a file; `&mut self` on [`Store::begin`]
//!   makes the writer single at compile time.
//! - `state` (chain heads, next outbox seq) always equals what the last
//!   successful commit left in the file; only [`crate::Batch::commit`]
//!   changes it, and only after redb reported success.
//! - Opening checks the outbox index (and the seen time index) against
//!   the rows they index and rebuilds them when they disagree, so the
//!   writer and readers can trust them afterwards.
//! - The database handle is shared with readers through [`Shared`]; after
//!   redb latched an I/O error the writer drops its handle and opens the
//!   file again before the next batch, reloading `state` from the file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use ifrelay_proto::{Millis, Serial};
use redb::{
    Builder, Database, DatabaseError, Durability, MultimapTableHandle, ReadableTable,
    ReadableTableMetadata, RepairSession, StorageBackend, TableHandle, WriteTransaction,
};

use crate::batch::Batch;
use crate::chain::{ChainMark, ChainName};
use crate::error::{db, StoreError};
use crate::model::BootState;
use crate::reader::StoreReader;
use crate::tables::{self, MULTIMAP_NAMES, TABLE_NAMES};

/// Opens the database, from a path or from a test backend.
type Opener = Box<dyn Fn(&Builder) -> Result<Database, DatabaseError> + Send + Sync>;

/// What only the writer knows between commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriterState {
    pub records: ChainMark,
    pub access: ChainMark,
    pub outbox_next: u64,
}

impl WriterState {
    pub(crate) fn mark(&self, chain: ChainName) -> ChainMark {
        match chain {
            ChainName::Records => self.records,
            ChainName::AccessLog => self.access,
        }
    }

    pub(crate) fn mark_mut(&mut self, chain: ChainName) -> &mut ChainMark {
        match chain {
            ChainName::Records => &mut self.records,
            ChainName::AccessLog => &mut self.access,
        }
    }
}

/// The database handle shared by the writer and every reader.
#[derive(Debug)]
pub(crate) struct Shared {
    /// `None` while the writer reopens the file after an I/O error.
    slot: RwLock<Option<Arc<Database>>>,
    /// Set by anyone who saw redb latch an I/O error.
    needs_reopen: AtomicBool,
}

impl Shared {
    /// The current handle.
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Unavailable)
    }

    /// Notes an error that requires the file to be reopened.
    pub(crate) fn track<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            if e.needs_reopen() {
                self.needs_reopen.store(true, Ordering::Release);
            }
        }
        result
    }

    /// Whether an I/O error was seen since the last (re)open.
    pub(crate) fn needs_reopen_now(&self) -> bool {
        self.needs_reopen.load(Ordering::Acquire)
    }

    fn set(&self, db: Option<Arc<Database>>) {
        *self.slot.write().unwrap_or_else(PoisonError::into_inner) = db;
    }
}

/// The store of the box: owns the redb file and the in-memory chain heads.
/// Owned by the relay engine's writer thread; readers use
/// [`Store::reader`].
pub struct Store {
    shared: Arc<Shared>,
    opener: Opener,
    cache_bytes: usize,
    pub(crate) state: WriterState,
}

impl core::fmt::Debug for Store {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Store")
            .field("cache_bytes", &self.cache_bytes)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store file at `path`, creating it (and every table) when
    /// missing, with a page cache of `cache_bytes`.
    ///
    /// Migration: a file of the same schema version that lacks the tables
    /// added later (written by an earlier firmware) gets them created, and
    /// the outbox index by destination with its counts is built in one pass
    /// over the outbox, in the same durable write transaction (about 1.4 s
    /// per million entries on the development machine, release build). The
    /// same rebuild runs whenever the index does not match the outbox (an
    /// earlier firmware queued or removed entries meanwhile, or index rows
    /// were lost); the check costs one row per destination.
    ///
    /// # Errors
    /// [`StoreError::SchemaTooNew`] or [`StoreError::SchemaUnknown`] for a
    /// file this firmware must not write; [`StoreError::Db`] when redb cannot
    /// open it (already open, damaged, I/O).
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        let path = path.to_path_buf();
        Self::open_with(
            Box::new(move |builder: &Builder| builder.create(&path)),
            cache_bytes,
        )
    }

    /// Opens the store on a storage backend that `make_backend` produces;
    /// it is called again to reopen after an I/O error, and must then
    /// return a backend over the same data. For fault-injection tests and
    /// unusual media.
    ///
    /// # Errors
    /// As [`Store::open`], plus the error of `make_backend`.
    pub fn open_with_backend<B, F>(make_backend: F, cache_bytes: usize) -> Result<Store, StoreError>
    where
        B: StorageBackend,
        F: Fn() -> std::io::Result<B> + Send + Sync + 'static,
    {
        Self::open_with(
            Box::new(move |builder: &Builder| builder.create_with_backend(make_backend()?)),
            cache_bytes,
        )
    }

    fn open_with(opener: Opener, cache_bytes: usize) -> Result<Store, StoreError> {
        let db = open_database(&opener, cache_bytes)?;
        let state = prepare(&db)?;
        Ok(Store {
            shared: Arc::new(Shared {
                slot: RwLock::new(Some(Arc::new(db))),
                needs_reopen: AtomicBool::new(false),
            }),
            opener,
            cache_bytes,
            state,
        })
    }

    /// Starts a boot: bumps the serial epoch to
    /// `max(now / 1000, last_epoch + 1)` and commits it durably before
    /// returning, so no serial of this boot can repeat one of an earlier
    /// boot, even when the clock went backwards (R-SER-1). A restore from an
    /// old backup gets a fresh epoch from the clock. Returns everything the
    /// engine reloads.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the commit fails (the engine must not issue
    /// serials then); [`StoreError::Corrupt`] for an undecodable row.
    pub fn boot(&mut self, now: Millis) -> Result<BootState, StoreError> {
        let txn = self.begin_txn()?;
        let r = boot_in(txn, now);
        self.shared.track(r)
    }

    /// Starts a batch: one write transaction for many operations, committed
    /// once with [`Batch::commit`]. Reopens the file first when an earlier
    /// I/O error requires it.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the file cannot be (re)opened or the
    /// transaction cannot start; retry later.
    pub fn begin(&mut self) -> Result<Batch<'_>, StoreError> {
        let txn = self.begin_txn()?;
        let state = self.state;
        Ok(Batch::new(self, txn, state))
    }

    /// Fills the outbox of `destination` with `frames`, `per_commit` per
    /// write transaction (0 counts as 1); returns how many were queued.
    ///
    /// **For tests and benchmarks only**, to build a large backlog fast:
    /// every commit but the last is non-durable (`Durability::None`, no
    /// fsync), the last is durable and makes all of them durable. The
    /// firmware queues frames with [`Batch::push_outbox`], whose commit is
    /// durable before the sender is answered. Entries get seqs, index rows
    /// and counts exactly as `push_outbox` gives them.
    ///
    /// # Errors
    /// As [`Batch::push_outbox`] and [`Batch::commit`]. Chunks committed
    /// before the error stay queued; they become durable with the next
    /// durable commit.
    pub fn fill_outbox_for_test<I>(
        &mut self,
        destination: &str,
        frames: I,
        per_commit: usize,
    ) -> Result<u64, StoreError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let per_commit = per_commit.max(1);
        let mut frames = frames.into_iter().peekable();
        let mut total = 0u64;
        while frames.peek().is_some() {
            let mut batch = self.begin()?;
            let pushed = batch.push_outbox_bulk(destination, &mut frames, per_commit)?;
            if frames.peek().is_some() {
                batch.set_non_durable()?;
            }
            batch.commit()?;
            total += pushed;
        }
        Ok(total)
    }

    /// A handle for reading from other threads.
    pub fn reader(&self) -> StoreReader {
        StoreReader::new(Arc::clone(&self.shared))
    }

    /// A write transaction with explicit durability, reopening first if
    /// needed, and once more if redb reports a latched I/O error.
    fn begin_txn(&mut self) -> Result<WriteTransaction, StoreError> {
        if self.shared.needs_reopen.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let first = self.try_begin_txn();
        let mut txn = match first {
            Err(e) if e.needs_reopen() => {
                self.reopen()?;
                self.try_begin_txn()?
            }
            other => other?,
        };
        txn.set_durability(Durability::Immediate)
            .map_err(db("set durability"))?;
        Ok(txn)
    }

    fn try_begin_txn(&self) -> Result<WriteTransaction, StoreError> {
        self.shared
            .db()?
            .begin_write()
            .map_err(db("begin write transaction"))
    }

    /// Drops the failed handle and opens the file again.
    ///
    /// A reader still holding the old handle keeps the file locked; the
    /// open then fails with "already open" and the next call retries.
    pub(crate) fn reopen(&mut self) -> Result<(), StoreError> {
        self.shared.needs_reopen.store(true, Ordering::Release);
        self.shared.set(None);
        let db = open_database(&self.opener, self.cache_bytes)?;
        self.state = prepare(&db)?;
        self.shared.set(Some(Arc::new(db)));
        self.shared.needs_reopen.store(false, Ordering::Release);
        tracing::info!("store: reopened the file after an I/O error");
        Ok(())
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// The store owns the file: dropping it closes the file (once no reader is
/// in the middle of a call), and readers then answer
/// [`StoreError::Unavailable`].
impl Drop for Store {
    fn drop(&mut self) {
        self.shared.set(None);
    }
}

fn open_database(opener: &Opener, cache_bytes: usize) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    builder
        .set_cache_size(cache_bytes)
        .set_repair_callback(|session: &mut RepairSession| {
            tracing::warn!(
                progress = session.progress(),
                "store: repairing the file after an unclean shutdown"
            );
        });
    opener(&builder).map_err(db("open the store file"))
}

/// Checks the schema, creates missing tables, builds the outbox index (and
/// the seen time index) when it is missing or was not kept, and loads the
/// writer state. Writes only when the file is new, lacks a table or needs
/// an index built; all of it in one durable write transaction.
fn prepare(database: &Database) -> Result<WriterState, StoreError> {
    let mut txn = database
        .begin_write()
        .map_err(db("begin write transaction"))?;
    txn.set_durability(Durability::Immediate)
        .map_err(db("set durability"))?;

    let mut present: Vec<String> = txn
        .list_tables()
        .map_err(db("list tables"))?
        .map(|t| t.name().to_owned())
        .collect();
    present.extend(
        txn.list_multimap_tables()
            .map_err(db("list tables"))?
            .map(|t| t.name().to_owned()),
    );
    let complete = TABLE_NAMES
        .iter()
        .chain(MULTIMAP_NAMES.iter())
        .all(|name| present.iter().any(|p| p == name));

    let state = {
        let mut meta = txn.open_table(tables::META).map_err(|e| match e {
            redb::TableError::TableTypeMismatch { .. } => StoreError::SchemaUnknown {
                detail: format!("table meta: {e}"),
            },
            other => db("open table meta")(other),
        })?;
        let version = meta
            .get(tables::SCHEMA_VERSION_KEY)
            .map_err(db("read schema version"))?
            .map(|g| g.value());
        match version {
            Some(tables::SCHEMA_VERSION) => {}
            Some(found) if found > tables::SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    found,
                    supported: tables::SCHEMA_VERSION,
                })
            }
            Some(found) => {
                return Err(StoreError::SchemaUnknown {
                    detail: format!("schema version {found}"),
                })
            }
            None if present.iter().any(|p| p != "meta") => {
                return Err(StoreError::SchemaUnknown {
                    detail: format!("tables {present:?} but no schema version"),
                })
            }
            None => {
                meta.insert(tables::SCHEMA_VERSION_KEY, tables::SCHEMA_VERSION)
                    .map_err(db("write schema version"))?;
            }
        }
        let outbox_next = meta
            .get(tables::OUTBOX_NEXT_KEY)
            .map_err(db("read outbox counter"))?
            .map_or(1, |g| g.value());

        let marks = txn.open_table(tables::CHAIN_MARKS).map_err(schema_or_db)?;
        let mark = |chain: ChainName| -> Result<ChainMark, StoreError> {
            Ok(marks
                .get(chain.key())
                .map_err(db("read chain marks"))?
                .map_or(ChainMark::GENESIS, |g| ChainMark::from_row(g.value())))
        };
        WriterState {
            records: mark(ChainName::Records)?,
            access: mark(ChainName::AccessLog)?,
            outbox_next,
        }
    };

    let mut wrote = false;
    if !complete {
        txn.open_table(tables::RECORDS).map_err(schema_or_db)?;
        txn.open_table(tables::ACCESS_LOG).map_err(schema_or_db)?;
        txn.open_multimap_table(tables::RECORDS_BY_SERIAL)
            .map_err(schema_or_db)?;
        txn.open_table(tables::PROCESSES).map_err(schema_or_db)?;
        txn.open_table(tables::PREFIX).map_err(schema_or_db)?;
        txn.open_table(tables::OUTBOX).map_err(schema_or_db)?;
        txn.open_table(tables::OUTBOX_BY_DESTINATION)
            .map_err(schema_or_db)?;
        txn.open_table(tables::OUTBOX_COUNTS)
            .map_err(schema_or_db)?;
        txn.open_table(tables::SEEN).map_err(schema_or_db)?;
        txn.open_table(tables::SEEN_BY_TIME).map_err(schema_or_db)?;
        wrote = true;
    }
    if !outbox_index_sound(&txn, state.outbox_next)? {
        rebuild_outbox_index(&txn, state.outbox_next)?;
        wrote = true;
    }
    if !seen_index_sound(&txn)? {
        rebuild_seen_index(&txn)?;
        wrote = true;
    }
    if wrote {
        txn.commit().map_err(db("create tables and indexes"))?;
    } else {
        txn.abort().map_err(db("abort"))?;
    }
    Ok(state)
}

/// Whether the outbox index and counts can be trusted: they were last
/// written together with the current outbox counter (so nothing that
/// ignores them pushed entries since), and their row counts match the
/// outbox (so nothing removed entries behind their back). O(destinations).
fn outbox_index_sound(txn: &WriteTransaction, outbox_next: u64) -> Result<bool, StoreError> {
    let marker = txn
        .open_table(tables::META)
        .map_err(db("open table meta"))?
        .get(tables::OUTBOX_INDEX_NEXT_KEY)
        .map_err(db("read outbox index marker"))?
        .map(|g| g.value());
    if marker != Some(outbox_next) {
        return Ok(false);
    }
    let entries = txn
        .open_table(tables::OUTBOX)
        .map_err(schema_or_db)?
        .len()
        .map_err(db("count outbox"))?;
    let indexed = txn
        .open_table(tables::OUTBOX_BY_DESTINATION)
        .map_err(schema_or_db)?
        .len()
        .map_err(db("count outbox index"))?;
    if entries != indexed {
        return Ok(false);
    }
    let counts = txn
        .open_table(tables::OUTBOX_COUNTS)
        .map_err(schema_or_db)?;
    let mut counted = 0u64;
    for row in counts.iter().map_err(db("read outbox counts"))? {
        let (_, n) = row.map_err(db("read outbox counts"))?;
        counted = counted.saturating_add(n.value());
    }
    Ok(counted == entries)
}

/// The migration of the outbox index: empties [`tables::OUTBOX_BY_DESTINATION`]
/// and [`tables::OUTBOX_COUNTS`] and fills them again in one pass over
/// [`tables::OUTBOX`], inside the caller's write transaction (so a power
/// cut leaves either the old state or the complete index).
fn rebuild_outbox_index(txn: &WriteTransaction, outbox_next: u64) -> Result<(), StoreError> {
    txn.delete_table(tables::OUTBOX_BY_DESTINATION)
        .map_err(schema_or_db)?;
    txn.delete_table(tables::OUTBOX_COUNTS)
        .map_err(schema_or_db)?;
    let mut per_destination: BTreeMap<String, u64> = BTreeMap::new();
    let mut entries = 0u64;
    {
        let outbox = txn.open_table(tables::OUTBOX).map_err(schema_or_db)?;
        let mut index = txn
            .open_table(tables::OUTBOX_BY_DESTINATION)
            .map_err(schema_or_db)?;
        for row in outbox.iter().map_err(db("read outbox"))? {
            let (k, v) = row.map_err(db("read outbox"))?;
            let (destination, _) = v.value();
            index
                .insert((destination, k.value()), ())
                .map_err(db("write outbox index"))?;
            match per_destination.get_mut(destination) {
                Some(n) => *n += 1,
                None => {
                    per_destination.insert(destination.to_owned(), 1);
                }
            }
            entries += 1;
        }
    }
    let mut counts = txn
        .open_table(tables::OUTBOX_COUNTS)
        .map_err(schema_or_db)?;
    for (destination, n) in &per_destination {
        counts
            .insert(destination.as_str(), *n)
            .map_err(db("write outbox counts"))?;
    }
    txn.open_table(tables::META)
        .map_err(db("open table meta"))?
        .insert(tables::OUTBOX_INDEX_NEXT_KEY, outbox_next)
        .map_err(db("write outbox index marker"))?;
    tracing::info!(
        entries,
        destinations = per_destination.len(),
        "store: built the outbox index by destination"
    );
    Ok(())
}

/// Whether every seen entry has exactly one time-index row. O(1).
fn seen_index_sound(txn: &WriteTransaction) -> Result<bool, StoreError> {
    let seen = txn
        .open_table(tables::SEEN)
        .map_err(schema_or_db)?
        .len()
        .map_err(db("count seen"))?;
    let indexed = txn
        .open_table(tables::SEEN_BY_TIME)
        .map_err(schema_or_db)?
        .len()
        .map_err(db("count seen index"))?;
    Ok(seen == indexed)
}

/// Rebuilds [`tables::SEEN_BY_TIME`] from [`tables::SEEN`], so pruning
/// reaches every entry again.
fn rebuild_seen_index(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(tables::SEEN_BY_TIME)
        .map_err(schema_or_db)?;
    let seen = txn.open_table(tables::SEEN).map_err(schema_or_db)?;
    let mut index = txn.open_table(tables::SEEN_BY_TIME).map_err(schema_or_db)?;
    let mut entries = 0u64;
    for row in seen.iter().map_err(db("read seen"))? {
        let (k, v) = row.map_err(db("read seen"))?;
        let (sender, id) = k.value();
        index
            .insert((v.value().0, sender, id), ())
            .map_err(db("write seen index"))?;
        entries += 1;
    }
    tracing::info!(entries, "store: rebuilt the time index of seen entries");
    Ok(())
}

fn schema_or_db(e: redb::TableError) -> StoreError {
    match e {
        redb::TableError::TableTypeMismatch { .. }
        | redb::TableError::TableIsMultimap(_)
        | redb::TableError::TableIsNotMultimap(_) => StoreError::SchemaUnknown {
            detail: e.to_string(),
        },
        other => db("open table")(other),
    }
}

/// The body of [`Store::boot`] within its write transaction.
fn boot_in(txn: WriteTransaction, now: Millis) -> Result<BootState, StoreError> {
    let boot = {
        let mut meta = txn
            .open_table(tables::META)
            .map_err(db("open table meta"))?;
        let last = meta
            .get(tables::EPOCH_KEY)
            .map_err(db("read epoch"))?
            .map_or(0, |g| g.value());
        let from_clock = u64::try_from(now.div_euclid(1000)).unwrap_or(0);
        let next = last
            .checked_add(1)
            .ok_or(StoreError::Exhausted { what: "epoch" })?;
        let epoch = from_clock.max(next);
        meta.insert(tables::EPOCH_KEY, epoch)
            .map_err(db("write epoch"))?;

        let prefix = match meta
            .get(tables::PREFIX_CURRENT_KEY)
            .map_err(db("read prefix version"))?
        {
            None => None,
            Some(v) => {
                let version = v.value();
                let table = txn
                    .open_table(tables::PREFIX)
                    .map_err(db("open table prefix"))?;
                let snapshot = table
                    .get(version)
                    .map_err(db("read prefix"))?
                    .ok_or_else(|| StoreError::Corrupt {
                        what: "current prefix version",
                        key: version.to_string(),
                        detail: "no snapshot is stored for it".into(),
                    })?
                    .value()
                    .to_vec();
                Some((version, snapshot))
            }
        };

        let mut processes = Vec::new();
        let table = txn
            .open_table(tables::PROCESSES)
            .map_err(db("open table processes"))?;
        for row in table.iter().map_err(db("read processes"))? {
            let (k, v) = row.map_err(db("read processes"))?;
            let serial = Serial::new(k.value()).map_err(|e| StoreError::Corrupt {
                what: "process serial",
                key: k.value().to_owned(),
                detail: e.to_string(),
            })?;
            processes.push((serial, v.value().to_vec()));
        }

        let outbox_len = txn
            .open_table(tables::OUTBOX)
            .map_err(db("open table outbox"))?
            .len()
            .map_err(db("count outbox"))?;
        BootState {
            epoch,
            prefix,
            processes,
            outbox_len,
        }
    };
    txn.commit().map_err(db("commit the boot epoch"))?;
    tracing::info!(epoch = boot.epoch, "store: boot epoch committed");
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_can_move_to_the_writer_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Store>();
    }
}
