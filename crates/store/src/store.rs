//! [`Store`]: the public face of the single writer — opening the file,
//! the boot epoch, handing out batches, and a reader handle. The file
//! handling itself (schema checks, index rebuilds, reopening after an I/O
//! error) is [`crate::writer`]'s.
//!
//! Invariants:
//! - Exactly one [`Store`] writes a file; `&mut self` on [`Store::begin`]
//!   makes the writer single at compile time, and redb's locks refuse a
//!   second writer of the same file in any process.
//! - Dropping the [`Store`] closes the file: readers answer
//!   [`StoreError::Unavailable`] afterwards.

use std::path::Path;

use ifrelay_proto::{Millis, Serial};
use redb::{ReadableTable, ReadableTableMetadata, StorageBackend, WriteTransaction};

use crate::batch::Batch;
use crate::error::{db, StoreError};
use crate::model::BootState;
use crate::reader::StoreReader;
use crate::tables;
use crate::wal::{LogOptions, LogStats};
use crate::writer::{Opener, Writer};

/// The store of the box: owns the redb file and the in-memory chain heads.
/// Owned by the relay engine's writer thread; readers use
/// [`Store::reader`].
#[derive(Debug)]
pub struct Store {
    writer: Writer,
}

impl Store {
    /// Opens the store file at `path`, creating it (and every table) when
    /// missing, with a page cache of `cache_bytes`.
    ///
    /// The file is shared with read-only handles: [`crate::ReadOnlyStore`]
    /// may open it, in this or another process, while this store writes
    /// (redb's single-writer mode). For the firmware that means every
    /// commit is durable — redb has no non-durable commits in that mode.
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
    /// **Writes**: this creates a missing file and may repair, migrate or
    /// re-index an existing one. Never use it to inspect a file; use
    /// [`crate::ReadOnlyStore::open`].
    ///
    /// Damage: before redb opens an existing file for writing, every page
    /// of its last commit is checked against its checksum, reading the file
    /// only ([`crate::ReadOnlyStore`] does the same). A damaged file is
    /// refused and left exactly as it was, for the auditor; a file left
    /// unclean by a crash passes (redb's repair on open is no damage).
    /// Cost: one read of the file (docs/architecture.md, "A damaged
    /// store").
    ///
    /// # Errors
    /// [`StoreError::Damaged`] for a damaged file (refused, untouched);
    /// [`StoreError::SchemaTooNew`] or [`StoreError::SchemaUnknown`] for a
    /// file this firmware must not write; [`StoreError::Db`] when redb cannot
    /// open it (already open, I/O).
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        Self::open_with_log(path, cache_bytes, LogOptions::default())
    }

    /// [`Store::open`] with the redo log sized and checkpointed as
    /// `options` say (benchmarks and tests of the log).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_with_log(
        path: &Path,
        cache_bytes: usize,
        options: LogOptions,
    ) -> Result<Store, StoreError> {
        crate::readonly::vet(path)?;
        Ok(Store {
            writer: Writer::open(
                Opener::path_with_log(path.to_path_buf(), options, crate::batch::replay),
                cache_bytes,
            )?,
        })
    }

    /// Opens the store file at `path` without a redo log, shared with
    /// read-only handles: every commit is durable in redb (one ~90 KiB
    /// rewrite each), and [`crate::ReadOnlyStore`] may open the file, in
    /// this or another process, while this store writes. Not for the
    /// firmware (docs/architecture.md, "The durable path"); for tools and
    /// the tests of read-only access.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_shared(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        crate::readonly::vet(path)?;
        Ok(Store {
            writer: Writer::open(Opener::path_shared(path.to_path_buf()), cache_bytes)?,
        })
    }

    /// Opens the store on a storage backend that `make_backend` produces;
    /// it is called again to reopen after an I/O error, and must then
    /// return a backend over the same data. For fault-injection tests
    /// (see the `fault-injection` feature) and unusual media.
    ///
    /// The database is opened exclusively (redb's default mode), so no
    /// [`crate::ReadOnlyStore`] can share it. Reopening after an I/O error
    /// works as with a file, provided the backend refuses a second open
    /// while the old handle lives (as file locks do): a reader in the
    /// middle of a call keeps the old handle alive for a moment, and a
    /// backend without locks would then let two handles write the same
    /// data. `fault::MemoryFile` (feature `fault-injection`) does refuse it.
    /// Unlike [`Store::open`], no page check runs first: the backend is the
    /// caller's.
    ///
    /// # Errors
    /// As [`Store::open`], plus the error of `make_backend`.
    pub fn open_with_backend<B, F>(make_backend: F, cache_bytes: usize) -> Result<Store, StoreError>
    where
        B: StorageBackend,
        F: Fn() -> std::io::Result<B> + Send + Sync + 'static,
    {
        Ok(Store {
            writer: Writer::open(Opener::backend(make_backend), cache_bytes)?,
        })
    }

    /// Opens the store on `memory` (a fresh store when it is empty), with
    /// every write and sync going through `faults`: the store the engine
    /// fuzz target and fault tests run against. Reopening after an injected
    /// I/O error reopens the same memory, as after a real one.
    ///
    /// # Errors
    /// As [`Store::open_with_backend`]; an injected fault can make the
    /// open itself fail.
    #[cfg(feature = "fault-injection")]
    pub fn open_with_faults(
        memory: &crate::fault::MemoryFile,
        faults: &crate::fault::FaultSwitch,
        cache_bytes: usize,
    ) -> Result<Store, StoreError> {
        let (log, log_faults) = (memory.log(), faults.clone());
        let (memory, faults) = (memory.clone(), faults.clone());
        let opener = Opener::backend(move || {
            Ok(crate::fault::FaultyBackend::new(
                memory.clone(),
                faults.clone(),
            ))
        })
        .with_log_backend(
            move || {
                Ok(crate::fault::FaultyBackend::new(
                    log.clone(),
                    log_faults.clone(),
                ))
            },
            LogOptions {
                size: 4 << 20,
                ..LogOptions::default()
            },
            crate::batch::replay,
        );
        Ok(Store {
            writer: Writer::open(opener, cache_bytes)?,
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
        let txn = self.writer.begin_txn()?;
        // A durable commit: it records where the log stands (also a
        // number burned by a failed append), as a checkpoint does.
        let position = self.writer.log.as_ref().map(|log| log.position());
        if let Some(position) = position {
            crate::batch::write_position(&txn, position)?;
        }
        let r = boot_in(txn, now);
        if let (Ok(_), Some(position), Some(log)) = (&r, position, self.writer.log.as_mut()) {
            log.checkpointed(position.end);
        }
        self.writer.shared().track(r)
    }

    /// Starts a batch: one write transaction for many operations, committed
    /// once with [`Batch::commit`]. Reopens the file first when an earlier
    /// I/O error requires it.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the file cannot be (re)opened or the
    /// transaction cannot start; retry later.
    pub fn begin(&mut self) -> Result<Batch<'_>, StoreError> {
        let txn = self.writer.begin_txn()?;
        Ok(Batch::new(&mut self.writer, txn))
    }

    /// How many appended entries wait for an index step (both chains).
    /// Searches find them anyway, by scanning their rows; the wait only
    /// makes searches slower, so keep it short with
    /// [`Store::index_pending`].
    pub fn unindexed(&self) -> usize {
        self.writer.unindexed.len()
    }

    /// An index step: writes the search index rows of the oldest `max`
    /// waiting entries of each chain in one commit, not logged (a step a
    /// crash loses is repeated); returns how many entries it indexed. The
    /// engine calls it between batches, so index rows are written in bulk
    /// and never delay a reply (`index.rs`).
    ///
    /// # Errors
    /// As [`Batch::commit`]; nothing already committed is affected.
    pub fn index_pending(&mut self, max: usize) -> Result<usize, StoreError> {
        if self.writer.unindexed.is_empty() {
            return Ok(0);
        }
        let txn = self.writer.begin_txn()?;
        Batch::new(&mut self.writer, txn).index_step(max)
    }

    /// Fills the outbox of `destination` with `frames`, `per_commit` per
    /// write transaction (0 counts as 1); returns how many were queued.
    ///
    /// **For tests and benchmarks only**, to build a large backlog fast:
    /// the tables are opened once per commit rather than once per frame.
    /// Every commit is durable (one fsync each), so choose `per_commit` in
    /// the thousands. The firmware queues frames with
    /// [`Batch::push_outbox`]. Entries get seqs, index rows and counts
    /// exactly as `push_outbox` gives them.
    ///
    /// # Errors
    /// As [`Batch::push_outbox`] and [`Batch::commit`]. Chunks committed
    /// before the error stay queued.
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
            batch.commit()?;
            total += pushed;
        }
        Ok(total)
    }

    /// Appends `records` (each with the time it was appended at),
    /// `per_commit` per write transaction (0 counts as 1); returns how many
    /// were appended.
    ///
    /// **For tests and benchmarks only**, to build a store of millions of
    /// records fast: the chain table is opened once per commit rather
    /// than once per record, and every commit is durable in redb (not
    /// logged), so choose `per_commit` in the thousands. Rows and hashes
    /// are exactly those [`Batch::append_record`] writes. The records get
    /// no index rows and are not held in memory: call
    /// [`Store::index_records_sorted_for_test`] after the last fill
    /// (searches find them meanwhile, by scanning).
    ///
    /// # Errors
    /// As [`Batch::append_record`] and [`Batch::commit`]. Chunks committed
    /// before the error stay.
    pub fn fill_records_for_test<I>(
        &mut self,
        records: I,
        per_commit: usize,
    ) -> Result<u64, StoreError>
    where
        I: IntoIterator<Item = (Millis, crate::model::Record)>,
    {
        let per_commit = per_commit.max(1);
        let mut records = records.into_iter().peekable();
        let mut total = 0u64;
        while records.peek().is_some() {
            let mut batch = self.begin()?;
            total += batch.append_records_bulk(&mut records, per_commit)?;
            batch.commit()?;
        }
        Ok(total)
    }

    /// Writes the search index rows of every record after the index mark
    /// sorted by key, table by table, in durable commits of at most
    /// `per_commit` rows; returns how many records it indexed.
    ///
    /// **For tests and benchmarks only**, after
    /// [`Store::fill_records_for_test`]: each index is written in key
    /// order, every leaf once, where appending in seq order writes one
    /// random leaf per person-code or serial row and a fill of millions
    /// slows to a crawl once the indexes outgrow the page cache. Holds
    /// the keys of all those records in memory (about 300 bytes each).
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb; rows committed before the error stay,
    /// and the next open checks the indexes and rebuilds them if needed.
    pub fn index_records_sorted_for_test(&mut self, per_commit: usize) -> Result<u64, StoreError> {
        let mark = self.writer.state.records_indexed;
        let rows = {
            let txn = self.writer.begin_txn()?;
            let rows = crate::index::SortedRecordRows::collect(&txn, mark)?;
            txn.abort().map_err(crate::error::db("abort"))?;
            rows
        };
        if rows.last == mark {
            return Ok(0);
        }
        let writer = &mut self.writer;
        rows.write(per_commit, || writer.begin_txn())?;
        self.writer.state.records_indexed = rows.last;
        self.writer
            .unindexed
            .forget_through(rows.last, self.writer.state.access_indexed);
        Ok(rows.last - mark)
    }

    /// A checkpoint now: one durable commit that holds every batch so
    /// far, so the next open replays nothing. For a clean stop: firmware
    /// that predates log compression can then open the store
    /// (docs/operations.md, "Going back to an older firmware"). Nothing to
    /// do for a store without a redo log.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the commit fails; the batches stay in the
    /// log and the next open replays them.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        let Some(position) = self.writer.log.as_ref().map(|log| log.position()) else {
            return Ok(());
        };
        let mut txn = self.writer.begin_txn()?;
        txn.set_quick_repair(true);
        let r = crate::batch::write_position(&txn, position)
            .and_then(|()| txn.commit().map_err(db("commit a checkpoint")));
        if let (Ok(()), Some(log)) = (&r, self.writer.log.as_mut()) {
            log.checkpointed(position.end);
        }
        self.writer.shared().track(r)
    }

    /// What the redo log wrote since the store opened (zeros without a
    /// log).
    pub fn log_stats(&self) -> LogStats {
        self.writer
            .log
            .as_ref()
            .map_or_else(LogStats::default, |log| log.stats())
    }

    /// How many logged batches the open (or the last reopen after an I/O
    /// error) replayed from the redo log: non-zero after an unclean stop.
    pub fn replayed_at_open(&self) -> u64 {
        self.writer.replayed
    }

    /// A handle for reading from other threads.
    pub fn reader(&self) -> StoreReader {
        StoreReader::new(std::sync::Arc::clone(self.writer.shared()))
    }
}

/// The store owns the file: dropping it closes the file (once no reader is
/// in the middle of a call), and readers then answer
/// [`StoreError::Unavailable`].
impl Drop for Store {
    fn drop(&mut self) {
        self.writer.close();
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

        let current = meta
            .get(tables::PREFIX_CURRENT_KEY)
            .map_err(db("read prefix version"))?
            .map(|v| v.value());
        let mut prefixes = Vec::new();
        {
            let table = txn
                .open_table(tables::PREFIX)
                .map_err(db("open table prefix"))?;
            for entry in table.iter().map_err(db("read prefix"))? {
                let (version, snapshot) = entry.map_err(db("read prefix"))?;
                prefixes.push((version.value(), snapshot.value().to_vec()));
            }
        }
        if let Some(current) = current {
            if prefixes.last().map(|(v, _)| *v) != Some(current) {
                return Err(StoreError::Corrupt {
                    what: "current prefix version",
                    key: current.to_string(),
                    detail: "it is not the newest stored snapshot".into(),
                });
            }
        }

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
            prefixes,
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
