//! [`Writer`]: the store file as its single writer holds it — opening it
//! (schema check, missing tables, index checks and rebuilds), the chain
//! heads between commits, write transactions, and reopening after an I/O
//! error. [`crate::Store`] and [`crate::Batch`] are its public faces.
//!
//! Invariants:
//! - `state` (chain heads, next outbox seq) always equals what the last
//!   successful commit left in the file; only [`crate::Batch::commit`]
//!   changes it, and only after redb reported success (or a reopen reloads
//!   it from the file).
//! - Opening checks the outbox index (and the seen time index) against
//!   the rows they index and rebuilds them when they disagree, so the
//!   writer and readers can trust them afterwards.
//! - A file opened by path is opened in redb's
//!   [`ConcurrencyMode::SingleWriter`]: this process writes, and read-only
//!   handles ([`crate::ReadOnlyStore`], in this or another process) may
//!   open the file at the same time and read committed snapshots that
//!   redb keeps from being reused while they are read. Where the file
//!   system has no byte-range locks, the open falls back to
//!   [`ConcurrencyMode::ExclusiveWriter`] (read-only handles are then
//!   refused while the store is open). A store on a caller's backend is
//!   always opened exclusively: a backend need not support byte-range
//!   locks, and no read-only handle can reach it anyway.
//! - Every write transaction is `Durability::Immediate`: redb has no
//!   non-durable commits in a mode shared with other processes, and the
//!   box answers nothing before its batch is durable.
//! - The database handle is shared with readers through [`Shared`]; after
//!   redb latched an I/O error the writer drops its handle and opens the
//!   file again before the next batch, reloading `state` from the file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use redb::{
    Builder, ConcurrencyMode, Database, DatabaseError, Durability, MultimapTableHandle,
    ReadableDatabase, ReadableTable, ReadableTableMetadata, RepairSession, StorageBackend,
    StorageError, TableHandle, WriteTransaction,
};

use crate::chain::{ChainMark, ChainName};
use crate::error::{db, StoreError};
use crate::index::{self, Unindexed};
use crate::schema::{self, table_error};
use crate::shared::Shared;
use crate::tables::{self, MULTIMAP_NAMES, TABLE_NAMES};
use crate::wal::{self, Entry, Log, LogOptions, LogSource, Position};

/// Applies logged batches to the writer in `txn` and commits them durably
/// with the position of the last; returns how many operations it applied.
/// Given by the store (the batch module implements it), so this module
/// does not depend on the batch module that depends on it.
pub(crate) type ReplayFn = fn(&mut Writer, WriteTransaction, &[Entry]) -> Result<usize, StoreError>;

/// Opens the database through a configured builder.
type OpenFn = Box<dyn Fn(&Builder) -> Result<Database, DatabaseError> + Send + Sync>;

/// How to open (and reopen) the database.
pub(crate) struct Opener {
    open: OpenFn,
    /// The store file's path, for messages (none for a backend).
    shown: Option<PathBuf>,
    /// The redo log and its options; `None` for a store whose every
    /// commit is durable in redb.
    log: Option<(LogSource, LogOptions, ReplayFn)>,
    /// Whether to try [`ConcurrencyMode::SingleWriter`] first, so read-only
    /// handles can share the file.
    shared_mode: bool,
}

impl Opener {
    /// Opens the file at `path`, creating it when missing, with its redo
    /// log next to it; exclusively, since redb allows commits without
    /// sync only to an exclusive writer.
    pub(crate) fn path_with_log(path: PathBuf, options: LogOptions, replay: ReplayFn) -> Self {
        let log = wal::log_path(&path);
        Opener {
            shown: Some(path.clone()),
            open: Box::new(move |builder: &Builder| builder.create(&path)),
            log: Some((LogSource::Path(log), options, replay)),
            shared_mode: false,
        }
    }

    /// Opens the file at `path`, creating it when missing, shared with
    /// read-only handles; every commit is durable.
    pub(crate) fn path_shared(path: PathBuf) -> Self {
        let shown = path.clone();
        Opener {
            shown: Some(shown),
            open: Box::new(move |builder: &Builder| builder.create(&path)),
            log: None,
            shared_mode: true,
        }
    }

    /// Adds a redo log on a backend (fault injection).
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub(crate) fn with_log_backend<L, F>(
        mut self,
        make_log: F,
        options: LogOptions,
        replay: ReplayFn,
    ) -> Self
    where
        L: StorageBackend,
        F: Fn() -> std::io::Result<L> + Send + Sync + 'static,
    {
        let make: Box<dyn Fn() -> std::io::Result<Box<dyn StorageBackend>> + Send + Sync> =
            Box::new(move || Ok(Box::new(make_log()?) as Box<dyn StorageBackend>));
        self.log = Some((LogSource::Backend(make), options, replay));
        self
    }

    /// Opens a backend that `make_backend` produces, exclusively.
    pub(crate) fn backend<B, F>(make_backend: F) -> Self
    where
        B: StorageBackend,
        F: Fn() -> std::io::Result<B> + Send + Sync + 'static,
    {
        Opener {
            shown: None,
            open: Box::new(move |builder: &Builder| builder.create_with_backend(make_backend()?)),
            log: None,
            shared_mode: false,
        }
    }
}

/// What only the writer knows between commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriterState {
    pub records: ChainMark,
    pub access: ChainMark,
    pub outbox_next: u64,
    /// The index marks (`index.rs`): the last entry of each chain whose
    /// index rows are written.
    pub records_indexed: u64,
    pub access_indexed: u64,
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

    pub(crate) fn indexed(&self, chain: ChainName) -> u64 {
        match chain {
            ChainName::Records => self.records_indexed,
            ChainName::AccessLog => self.access_indexed,
        }
    }

    pub(crate) fn indexed_mut(&mut self, chain: ChainName) -> &mut u64 {
        match chain {
            ChainName::Records => &mut self.records_indexed,
            ChainName::AccessLog => &mut self.access_indexed,
        }
    }
}

/// The writer's side of the file: the shared handle, how to reopen it, and
/// the chain heads between commits.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    opener: Opener,
    cache_bytes: usize,
    pub(crate) state: WriterState,
    /// The redo log, when the store has one.
    pub(crate) log: Option<Log>,
    /// Batches replayed from the log by the last open or reopen.
    pub(crate) replayed: u64,
    /// The entries after the index marks, as the last commit left them.
    pub(crate) unindexed: Unindexed,
}

impl core::fmt::Debug for Writer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Writer")
            .field("cache_bytes", &self.cache_bytes)
            .field("shared_mode", &self.opener.shared_mode)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Opens the database and prepares it (see [`prepare`]).
    pub(crate) fn open(opener: Opener, cache_bytes: usize) -> Result<Writer, StoreError> {
        let db = open_database(&opener, cache_bytes)?;
        let (state, unindexed) = prepare(&db)?;
        let mut writer = Writer {
            shared: Arc::new(Shared::new(db)),
            opener,
            cache_bytes,
            state,
            log: None,
            replayed: 0,
            unindexed,
        };
        writer.recover()?;
        Ok(writer)
    }

    /// Opens the redo log (creating it for a store that has none) and
    /// replays every batch it holds beyond the state redb recovered,
    /// in one durable commit.
    fn recover(&mut self) -> Result<(), StoreError> {
        self.log = None;
        self.replayed = 0;
        let Some((source, options, replay)) = &self.opener.log else {
            let (id, _) = read_log_meta(&*self.shared.db()?)?;
            if id.is_some() {
                return Err(StoreError::NeedsLog {
                    path: self.opener.shown.clone().unwrap_or_default(),
                });
            }
            return Ok(());
        };
        let replay = *replay;
        let database = self.shared.db()?;
        let (id, position) = read_log_meta(&database)?;
        let log = Log::open(source, *options, id, position)?;
        if id.is_none() {
            let txn = database
                .begin_write()
                .map_err(db("begin write transaction"))?;
            {
                let mut meta = txn.open_table(tables::META).map_err(table_error)?;
                meta.insert(tables::LOG_ID_KEY, log.id())
                    .map_err(db("write log id"))?;
                meta.insert(tables::LOG_BATCH_KEY, position.batch)
                    .map_err(db("write log position"))?;
                meta.insert(tables::LOG_END_KEY, position.end.max(wal::HEADER_LEN))
                    .map_err(db("write log position"))?;
            }
            txn.commit().map_err(db("record the new log"))?;
        }
        let entries = log.scan(position)?;
        let last = entries.last().map(|e| Position {
            batch: e.batch,
            end: e.end,
        });
        self.log = Some(log);
        let Some(last) = last else {
            return Ok(());
        };
        let txn = database
            .begin_write()
            .map_err(db("begin write transaction"))?;
        let ops = replay(self, txn, &entries)?;
        self.replayed = entries.len() as u64;
        if let Some(log) = self.log.as_mut() {
            log.committed(last.batch, last.end);
            log.checkpointed(last.end);
        }
        tracing::info!(
            batches = entries.len(),
            operations = ops,
            "store: replayed the redo log after an unclean stop"
        );
        Ok(())
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A durable write transaction, reopening first if needed, and once
    /// more if redb reports a latched I/O error.
    pub(crate) fn begin_txn(&mut self) -> Result<WriteTransaction, StoreError> {
        if self.shared.needs_reopen_now() {
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
        self.shared.set_needs_reopen(true);
        self.shared.set(None);
        let db = open_database(&self.opener, self.cache_bytes)?;
        (self.state, self.unindexed) = prepare(&db)?;
        self.shared.set(Some(Arc::new(db)));
        self.recover()?;
        self.shared.set_needs_reopen(false);
        tracing::info!("store: reopened the file after an I/O error");
        Ok(())
    }

    /// Closes the file for good: readers answer
    /// [`StoreError::Unavailable`] from now on.
    pub(crate) fn close(&self) {
        self.shared.set(None);
    }
}

/// Opens the database, shared with read-only handles when the opener asks
/// for it and the file system has byte-range locks.
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
    if opener.shared_mode {
        builder.set_concurrency_mode(ConcurrencyMode::SingleWriter);
        match (opener.open)(&builder) {
            Err(DatabaseError::Storage(StorageError::Unsupported)) => {
                tracing::warn!(
                    "store: the file system has no byte-range locks; the store is opened \
                     exclusively and cannot be verified while the box runs"
                );
                builder.set_concurrency_mode(ConcurrencyMode::ExclusiveWriter);
            }
            other => return other.map_err(db("open the store file")),
        }
    }
    (opener.open)(&builder).map_err(db("open the store file"))
}

/// Checks the schema, creates missing tables, builds the outbox index (and
/// the seen time index) when it is missing or was not kept, migrates a
/// file of schema version 1 (builds the search indexes of both chains from
/// their rows and sets the current version), rebuilds search indexes that
/// do not hold one time row per entry, and loads the writer state. Writes only when the file is new, lacks a table or needs
/// an index built; all of it in one durable write transaction.
fn prepare(database: &Database) -> Result<(WriterState, Unindexed), StoreError> {
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

    let mut migrate = false;
    let state = {
        let mut meta = txn.open_table(tables::META).map_err(table_error)?;
        let version = meta
            .get(tables::SCHEMA_VERSION_KEY)
            .map_err(db("read schema version"))?
            .map(|g| g.value());
        match version {
            Some(tables::SCHEMA_VERSION_WITHOUT_SEARCH_INDEXES) => migrate = true,
            Some(found) => schema::check_version(found)?,
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

        let marks = txn.open_table(tables::CHAIN_MARKS).map_err(table_error)?;
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
            records_indexed: 0,
            access_indexed: 0,
        }
    };
    let mut state = state;

    let mut wrote = false;
    if !complete {
        txn.open_table(tables::RECORDS).map_err(table_error)?;
        txn.open_table(tables::ACCESS_LOG).map_err(table_error)?;
        txn.open_multimap_table(tables::RECORDS_BY_SERIAL)
            .map_err(table_error)?;
        txn.open_table(tables::PROCESSES).map_err(table_error)?;
        txn.open_table(tables::PREFIX).map_err(table_error)?;
        txn.open_table(tables::OUTBOX).map_err(table_error)?;
        txn.open_table(tables::OUTBOX_BY_DESTINATION)
            .map_err(table_error)?;
        txn.open_table(tables::OUTBOX_COUNTS).map_err(table_error)?;
        txn.open_table(tables::SEEN).map_err(table_error)?;
        txn.open_table(tables::SEEN_BY_TIME).map_err(table_error)?;
        for chain in [ChainName::Records, ChainName::AccessLog] {
            drop(index::ChainIndexes::open(&txn, chain)?);
        }
        wrote = true;
    }
    for chain in [ChainName::Records, ChainName::AccessLog] {
        let head = state.mark(chain).head_seq;
        let rebuilt = migrate || !index::sound(&txn, chain)?;
        if rebuilt {
            let started = std::time::Instant::now();
            let entries = index::rebuild(&txn, chain)?;
            tracing::info!(
                %chain,
                entries,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "store: built the search indexes"
            );
            wrote = true;
        }
        let stored = index::read_mark(&txn.open_table(tables::META).map_err(table_error)?, chain)?;
        // No mark: a file whose every entry is indexed.
        let mark = match stored {
            Some(mark) if !rebuilt && mark <= head => mark,
            _ => {
                index::write_mark(&txn, chain, head)?;
                wrote = true;
                head
            }
        };
        *state.indexed_mut(chain) = mark;
    }
    let unindexed = Unindexed::load(&txn, [state.records_indexed, state.access_indexed])?;
    if migrate {
        txn.open_table(tables::META)
            .map_err(table_error)?
            .insert(tables::SCHEMA_VERSION_KEY, tables::SCHEMA_VERSION)
            .map_err(db("write schema version"))?;
        tracing::info!(
            from = tables::SCHEMA_VERSION_WITHOUT_SEARCH_INDEXES,
            to = tables::SCHEMA_VERSION,
            "store: migrated the file to the current schema (search indexes added)"
        );
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
    Ok((state, unindexed))
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
        .map_err(table_error)?
        .len()
        .map_err(db("count outbox"))?;
    let indexed = txn
        .open_table(tables::OUTBOX_BY_DESTINATION)
        .map_err(table_error)?
        .len()
        .map_err(db("count outbox index"))?;
    if entries != indexed {
        return Ok(false);
    }
    let counts = txn.open_table(tables::OUTBOX_COUNTS).map_err(table_error)?;
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
        .map_err(table_error)?;
    txn.delete_table(tables::OUTBOX_COUNTS)
        .map_err(table_error)?;
    let mut per_destination: BTreeMap<String, u64> = BTreeMap::new();
    let mut entries = 0u64;
    {
        let outbox = txn.open_table(tables::OUTBOX).map_err(table_error)?;
        let mut index = txn
            .open_table(tables::OUTBOX_BY_DESTINATION)
            .map_err(table_error)?;
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
    let mut counts = txn.open_table(tables::OUTBOX_COUNTS).map_err(table_error)?;
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
        .map_err(table_error)?
        .len()
        .map_err(db("count seen"))?;
    let indexed = txn
        .open_table(tables::SEEN_BY_TIME)
        .map_err(table_error)?
        .len()
        .map_err(db("count seen index"))?;
    Ok(seen == indexed)
}

/// Rebuilds [`tables::SEEN_BY_TIME`] from [`tables::SEEN`], so pruning
/// reaches every entry again.
fn rebuild_seen_index(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(tables::SEEN_BY_TIME)
        .map_err(table_error)?;
    let seen = txn.open_table(tables::SEEN).map_err(table_error)?;
    let mut index = txn.open_table(tables::SEEN_BY_TIME).map_err(table_error)?;
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

/// The log id and position `meta` records (none for a store without a
/// log yet).
fn read_log_meta(database: &Database) -> Result<(Option<u64>, Position), StoreError> {
    let txn = database
        .begin_read()
        .map_err(db("begin read transaction"))?;
    let meta = txn.open_table(tables::META).map_err(table_error)?;
    let get = |key: &str| -> Result<Option<u64>, StoreError> {
        Ok(meta
            .get(key)
            .map_err(db("read log position"))?
            .map(|g| g.value()))
    };
    let id = get(tables::LOG_ID_KEY)?;
    let position = Position {
        batch: get(tables::LOG_BATCH_KEY)?.unwrap_or(0),
        end: get(tables::LOG_END_KEY)?.unwrap_or(wal::HEADER_LEN),
    };
    Ok((id, position))
}
