//! [`Store`]: opening the file, the boot epoch, handing out batches, and
//! reopening after an I/O error.
//!
//! Invariants:
//! - Exactly one [`Store`] writes a file; `&mut self` on [`Store::begin`]
//!   makes the writer single at compile time.
//! - `state` (chain heads, next outbox seq) always equals what the last
//!   successful commit left in the file; only [`crate::Batch::commit`]
//!   changes it, and only after redb reported success.
//! - The database handle is shared with readers through [`Shared`]; after
//!   redb latched an I/O error the writer drops its handle and opens the
//!   file again before the next batch, reloading `state` from the file.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use ifrelay_proto::{Millis, Serial};
use redb::{
    Builder, Database, DatabaseError, Durability, MultimapTableHandle, ReadableTable,
    RepairSession, StorageBackend, TableHandle, WriteTransaction,
};

use crate::batch::Batch;
use crate::chain::{ChainMark, ChainName};
use crate::error::{db, StoreError};
use crate::model::{BootState, OutboxEntry};
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

/// Checks the schema, creates missing tables and loads the writer state.
/// Writes only when the file is new or lacks a table.
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

    if complete {
        txn.abort().map_err(db("abort"))?;
        return Ok(state);
    }
    txn.open_table(tables::RECORDS).map_err(schema_or_db)?;
    txn.open_table(tables::ACCESS_LOG).map_err(schema_or_db)?;
    txn.open_multimap_table(tables::RECORDS_BY_SERIAL)
        .map_err(schema_or_db)?;
    txn.open_table(tables::PROCESSES).map_err(schema_or_db)?;
    txn.open_table(tables::PREFIX).map_err(schema_or_db)?;
    txn.open_table(tables::OUTBOX).map_err(schema_or_db)?;
    txn.commit().map_err(db("create tables"))?;
    Ok(state)
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

        let mut outbox = Vec::new();
        let table = txn
            .open_table(tables::OUTBOX)
            .map_err(db("open table outbox"))?;
        for row in table.iter().map_err(db("read outbox"))? {
            let (k, v) = row.map_err(db("read outbox"))?;
            let (destination, frame) = v.value();
            outbox.push(OutboxEntry {
                seq: k.value(),
                destination: destination.to_owned(),
                frame: frame.to_vec(),
            });
        }
        BootState {
            epoch,
            prefix,
            processes,
            outbox,
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
