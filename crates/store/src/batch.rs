//! [`Batch`]: one write transaction of the single writer, holding the typed
//! operations of the relay engine (group commit).
//!
//! Invariants:
//! - Appends link to the batch's own copy of the chain heads; the writer's
//!   heads take that copy only after redb committed, so a failed commit or
//!   a dropped batch leaves them (and the file) unchanged.
//! - The chain marks, the outbox counter, the outbox index and per
//!   destination counts, and the time index of the seen entries are written
//!   inside the same transaction as the rows they describe.
//! - Every commit uses `Durability::Immediate`: when `commit` returns `Ok`,
//!   the batch survives a power cut (R-AV-2).
//! - A failed commit makes the writer reopen the file when redb latched an
//!   I/O error, so the next batch starts on a working handle.

use ifrelay_proto::{Millis, Serial};
use redb::{ReadableTable, WriteTransaction};

use crate::chain::{chain_hash, ChainName};
use crate::error::{db, from_cbor, to_cbor, ErrorChain, StoreError};
use crate::index::{self, ChainIndexes, Unindexed};
use crate::model::{AccessEntry, Record, RecordBody, RecordBodyRef, SeenEntry};
use crate::tables;
use crate::wal::{self, Entry, Op, OpRef, Plan, Position};
use crate::writer::{Writer, WriterState};

/// One group commit: many operations, one transaction, one fsync.
/// Dropping it without [`Batch::commit`] aborts everything in it.
#[must_use = "a batch is aborted unless committed"]
pub struct Batch<'a> {
    writer: &'a mut Writer,
    txn: WriteTransaction,
    /// The batch's own copy of the chain heads and outbox counter; the
    /// writer takes it only after the commit succeeded.
    state: WriterState,
    /// The batch's operations for the redo log, CBOR one after another
    /// (empty when the store has no log or the batch is a replay).
    ops: Vec<u8>,
    /// Record operations in `ops` (false for a store without a log and
    /// while replaying the log).
    logging: bool,
    /// Commit durably in redb rather than through the log (bulk test
    /// fills).
    force_durable: bool,
    /// The entries this batch appended, for a later index step; the
    /// writer takes them only after the commit succeeded.
    unindexed: Unindexed,
}

impl core::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Batch")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<'a> Batch<'a> {
    pub(crate) fn new(writer: &'a mut Writer, txn: WriteTransaction) -> Self {
        let state = writer.state;
        let logging = writer.log.is_some();
        Batch {
            writer,
            txn,
            state,
            ops: Vec::new(),
            logging,
            force_durable: false,
            unindexed: Unindexed::default(),
        }
    }

    /// A batch that replays logged operations: they are not logged again.
    pub(crate) fn replaying(writer: &'a mut Writer, txn: WriteTransaction) -> Self {
        let mut batch = Batch::new(writer, txn);
        batch.logging = false;
        batch
    }

    /// Applies one operation read back from the log.
    pub(crate) fn apply(&mut self, op: Op) -> Result<(), StoreError> {
        match op {
            Op::PutProcess(serial, state) => self.put_process(&serial, &state),
            Op::RemoveProcess(serial) => self.remove_process(&serial).map(drop),
            Op::PutUser(id, account) => self.put_user(&id, &account),
            Op::RemoveUser(id) => self.remove_user(&id).map(drop),
            Op::ConfirmRecordsDeletion(before) => self.confirm_records_deletion(before),
            Op::PutPrefix(version, snapshot) => self.put_prefix(version, &snapshot),
            Op::PrunePrefixesBelow(version) => self.prune_prefixes_below(version).map(drop),
            Op::AppendRecord(at, record) => self.append_record(at, *record).map(drop),
            Op::AppendAccess(entry) => self.append_access(*entry).map(drop),
            Op::PushOutbox(destination, frame) => self.push_outbox(&destination, &frame).map(drop),
            Op::RemoveOutbox(seq) => self.remove_outbox(seq).map(drop),
            Op::PutSeen(sender, id, at, reply) => self.put_seen(&sender, &id, at, &reply),
            Op::PruneSeen(before, max) => self
                .prune_seen(before, usize::try_from(max).unwrap_or(usize::MAX))
                .map(drop),
            Op::DeleteRecordsThrough(seq) => self.delete_records_through(seq).map(drop),
            Op::DeleteAccessThrough(seq) => self.delete_access_through(seq).map(drop),
        }
    }

    /// Stores the engine's state of the process `serial`, replacing any.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub fn put_process(&mut self, serial: &Serial, state: &[u8]) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(tables::PROCESSES)
            .map_err(db("open table processes"))?;
        table
            .insert(serial.as_str(), state)
            .map_err(db("write process"))?;
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::PutProcess(serial.as_str(), state),
        )?;
        Ok(())
    }

    /// Removes the process `serial`; returns whether it existed.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub fn remove_process(&mut self, serial: &Serial) -> Result<bool, StoreError> {
        let mut table = self
            .txn
            .open_table(tables::PROCESSES)
            .map_err(db("open table processes"))?;
        let existed = table
            .remove(serial.as_str())
            .map_err(db("remove process"))?
            .is_some();
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::RemoveProcess(serial.as_str()),
        )?;
        Ok(existed)
    }

    /// Records that a deletion of the records appended before `before` was
    /// confirmed at the console (R-REC-4); it only ever moves forward. The
    /// caller deletes them in bounded steps ([`Batch::delete_records_before`])
    /// and checks the retention period; this only remembers the
    /// confirmation across restarts.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub fn confirm_records_deletion(&mut self, before: Millis) -> Result<(), StoreError> {
        let mut meta = self
            .txn
            .open_table(tables::META)
            .map_err(db("open table meta"))?;
        let stored = u64::try_from(before).unwrap_or(0);
        let kept = meta
            .get(tables::RECORDS_DELETION_CONFIRMED_KEY)
            .map_err(db("read meta"))?
            .map_or(0, |g| g.value());
        if stored > kept {
            meta.insert(tables::RECORDS_DELETION_CONFIRMED_KEY, stored)
                .map_err(db("write meta"))?;
        }
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::ConfirmRecordsDeletion(before),
        )?;
        Ok(())
    }

    /// Stores console account `id` (opaque bytes), replacing any before.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub fn put_user(&mut self, id: &str, account: &[u8]) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(tables::USERS)
            .map_err(db("open table users"))?;
        table.insert(id, account).map_err(db("write user"))?;
        log_op(&mut self.ops, self.logging, &OpRef::PutUser(id, account))?;
        Ok(())
    }

    /// Removes console account `id`; returns whether it existed.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub fn remove_user(&mut self, id: &str) -> Result<bool, StoreError> {
        let mut table = self
            .txn
            .open_table(tables::USERS)
            .map_err(db("open table users"))?;
        let existed = table.remove(id).map_err(db("remove user"))?.is_some();
        log_op(&mut self.ops, self.logging, &OpRef::RemoveUser(id))?;
        Ok(existed)
    }

    /// Stores prefix list `version` (list and masters as opaque CBOR) and
    /// makes it current, atomically with the rest of the batch. Every
    /// version is kept. Storing the current version again with the same
    /// bytes is a no-op.
    ///
    /// # Errors
    /// [`StoreError::PrefixVersionStale`] for a version older than the
    /// current one; [`StoreError::PrefixVersionConflict`] for a stored
    /// version with different bytes; [`StoreError::Db`] from redb.
    pub fn put_prefix(&mut self, version: u64, snapshot: &[u8]) -> Result<(), StoreError> {
        let mut meta = self
            .txn
            .open_table(tables::META)
            .map_err(db("open table meta"))?;
        let current = meta
            .get(tables::PREFIX_CURRENT_KEY)
            .map_err(db("read prefix version"))?
            .map(|g| g.value());
        if let Some(current) = current {
            if version < current {
                return Err(StoreError::PrefixVersionStale { version, current });
            }
        }
        let mut prefix = self
            .txn
            .open_table(tables::PREFIX)
            .map_err(db("open table prefix"))?;
        let same = match prefix.get(version).map_err(db("read prefix"))? {
            Some(existing) if existing.value() == snapshot => true,
            Some(_) => return Err(StoreError::PrefixVersionConflict { version }),
            None => false,
        };
        if !same {
            prefix
                .insert(version, snapshot)
                .map_err(db("write prefix"))?;
        }
        meta.insert(tables::PREFIX_CURRENT_KEY, version)
            .map_err(db("write prefix version"))?;
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::PutPrefix(version, snapshot),
        )?;
        Ok(())
    }

    /// Removes every stored prefix version below `version`: the engine
    /// keeps only the list in force and the one scheduled, so ten years
    /// of distributions do not pile up. Returns how many were removed.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub fn prune_prefixes_below(&mut self, version: u64) -> Result<usize, StoreError> {
        let mut prefix = self
            .txn
            .open_table(tables::PREFIX)
            .map_err(db("open table prefix"))?;
        let old: Vec<u64> = prefix
            .range(..version)
            .map_err(db("read prefix"))?
            .map(|entry| entry.map(|(v, _)| v.value()))
            .collect::<Result<_, _>>()
            .map_err(db("read prefix"))?;
        for v in &old {
            prefix.remove(*v).map_err(db("remove prefix"))?;
        }
        drop(prefix);
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::PrunePrefixesBelow(version),
        )?;
        Ok(old.len())
    }

    /// Appends a query or provision record (R-REC-1) to the records
    /// chain; returns its seq.
    ///
    /// # Errors
    /// [`StoreError::Encode`], [`StoreError::Exhausted`], or
    /// [`StoreError::Db`] from redb.
    pub fn append_record(&mut self, at: Millis, record: Record) -> Result<u64, StoreError> {
        let body = to_cbor(
            "record",
            &RecordBodyRef {
                at,
                record: &record,
            },
        )?;
        let seq = self.append(ChainName::Records, &body)?;
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::AppendRecord(at, &record),
        )?;
        self.unindexed.records.push((seq, at, record));
        Ok(seq)
    }

    /// Appends an access-log entry (R-REC-5); returns its seq.
    ///
    /// # Errors
    /// [`StoreError::Encode`], [`StoreError::Exhausted`], or
    /// [`StoreError::Db`] from redb.
    pub fn append_access(&mut self, entry: AccessEntry) -> Result<u64, StoreError> {
        let body = to_cbor("access-log entry", &entry)?;
        let seq = self.append(ChainName::AccessLog, &body)?;
        log_op(&mut self.ops, self.logging, &OpRef::AppendAccess(&entry))?;
        self.unindexed.access.push((seq, entry));
        Ok(seq)
    }

    /// Links `body` to the batch's head of `chain` and stores the row.
    fn append(&mut self, chain: ChainName, body: &[u8]) -> Result<u64, StoreError> {
        let mark = self.state.mark(chain);
        let seq = mark.head_seq.checked_add(1).ok_or(StoreError::Exhausted {
            what: "chain sequence",
        })?;
        let prev = mark.head_hash;
        let hash = chain_hash(chain, &prev, seq, body);
        let mut table = self
            .txn
            .open_table(chain.table())
            .map_err(db("open chain table"))?;
        table
            .insert(seq, (prev, hash, body))
            .map_err(db("append chain entry"))?;
        let mark = self.state.mark_mut(chain);
        mark.head_seq = seq;
        mark.head_hash = hash;
        Ok(seq)
    }

    /// Appends up to `max` records of `records` with the chain table
    /// opened once; returns how many were appended. The fast path of
    /// [`crate::Store::fill_records_for_test`]: rows and hashes exactly as
    /// [`Batch::append_record`] writes them, but not logged (the batch
    /// commits durably in redb instead), and the records are left after
    /// the index mark without being held in memory
    /// ([`crate::Store::index_records_sorted_for_test`] indexes them).
    pub(crate) fn append_records_bulk<I>(
        &mut self,
        records: &mut I,
        max: usize,
    ) -> Result<u64, StoreError>
    where
        I: Iterator<Item = (Millis, Record)>,
    {
        let mut table = self
            .txn
            .open_table(tables::RECORDS)
            .map_err(db("open table records"))?;
        let mut appended = 0u64;
        for (at, record) in records.take(max) {
            let body = to_cbor(
                "record",
                &RecordBodyRef {
                    at,
                    record: &record,
                },
            )?;
            let mark = self.state.mark(ChainName::Records);
            let seq = mark.head_seq.checked_add(1).ok_or(StoreError::Exhausted {
                what: "chain sequence",
            })?;
            let hash = chain_hash(ChainName::Records, &mark.head_hash, seq, &body);
            table
                .insert(seq, (mark.head_hash, hash, body.as_slice()))
                .map_err(db("append chain entry"))?;
            let mark = self.state.mark_mut(ChainName::Records);
            mark.head_seq = seq;
            mark.head_hash = hash;
            appended += 1;
        }
        drop(table);
        self.force_durable = true;
        self.logging = false;
        Ok(appended)
    }

    /// Writes the index rows of the first `max` entries of each chain that
    /// wait for them (the writer's, then this batch's own) and moves the
    /// index marks past them; returns how many entries it indexed.
    pub(crate) fn write_index_rows(&mut self, max: usize) -> Result<usize, StoreError> {
        let mut indexed = 0usize;
        let after = self.state.records_indexed;
        let mut records = self
            .writer
            .unindexed
            .records
            .iter()
            .chain(&self.unindexed.records)
            .filter(|(seq, _, _)| *seq > after)
            .take(max)
            .peekable();
        if records.peek().is_some() {
            let mut indexes = ChainIndexes::open(&self.txn, ChainName::Records)?;
            for (seq, at, record) in records {
                indexes.insert_record(*seq, *at, record)?;
                self.state.records_indexed = *seq;
                indexed += 1;
            }
            drop(indexes);
            index::write_mark(&self.txn, ChainName::Records, self.state.records_indexed)?;
        }
        let after = self.state.access_indexed;
        let mut access = self
            .writer
            .unindexed
            .access
            .iter()
            .chain(&self.unindexed.access)
            .filter(|(seq, _)| *seq > after)
            .take(max)
            .peekable();
        if access.peek().is_some() {
            let mut indexes = ChainIndexes::open(&self.txn, ChainName::AccessLog)?;
            for (seq, entry) in access {
                indexes.insert_access(*seq, entry)?;
                self.state.access_indexed = *seq;
                indexed += 1;
            }
            drop(indexes);
            index::write_mark(&self.txn, ChainName::AccessLog, self.state.access_indexed)?;
        }
        Ok(indexed)
    }

    /// Queues `frame` for `destination`; returns its seq, which is never
    /// reused, also across restarts and removals. The destination index
    /// and counter are updated in the same transaction.
    ///
    /// # Errors
    /// [`StoreError::Exhausted`] or [`StoreError::Db`] from redb.
    pub fn push_outbox(&mut self, destination: &str, frame: &[u8]) -> Result<u64, StoreError> {
        let seq = self.state.outbox_next;
        let next = seq.checked_add(1).ok_or(StoreError::Exhausted {
            what: "outbox sequence",
        })?;
        let mut table = self
            .txn
            .open_table(tables::OUTBOX)
            .map_err(db("open table outbox"))?;
        table
            .insert(seq, (destination, frame))
            .map_err(db("write outbox"))?;
        let mut index = self
            .txn
            .open_table(tables::OUTBOX_BY_DESTINATION)
            .map_err(db("open table outbox_by_destination"))?;
        index
            .insert((destination, seq), ())
            .map_err(db("write outbox index"))?;
        count_add(&self.txn, destination, 1)?;
        self.state.outbox_next = next;
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::PushOutbox(destination, frame),
        )?;
        Ok(seq)
    }

    /// Queues up to `max` frames of `frames` for `destination` with the
    /// tables opened once; returns how many were queued. The fast path of
    /// [`crate::Store::fill_outbox_for_test`].
    pub(crate) fn push_outbox_bulk<I>(
        &mut self,
        destination: &str,
        frames: &mut I,
        max: usize,
    ) -> Result<u64, StoreError>
    where
        I: Iterator,
        I::Item: AsRef<[u8]>,
    {
        let mut table = self
            .txn
            .open_table(tables::OUTBOX)
            .map_err(db("open table outbox"))?;
        let mut index = self
            .txn
            .open_table(tables::OUTBOX_BY_DESTINATION)
            .map_err(db("open table outbox_by_destination"))?;
        let mut pushed = 0u64;
        for frame in frames.take(max) {
            let seq = self.state.outbox_next;
            let next = seq.checked_add(1).ok_or(StoreError::Exhausted {
                what: "outbox sequence",
            })?;
            table
                .insert(seq, (destination, frame.as_ref()))
                .map_err(db("write outbox"))?;
            index
                .insert((destination, seq), ())
                .map_err(db("write outbox index"))?;
            self.state.outbox_next = next;
            pushed += 1;
        }
        drop((table, index));
        self.force_durable = true;
        if pushed > 0 {
            count_add(&self.txn, destination, pushed)?;
        }
        Ok(pushed)
    }

    /// Removes outbox entry `seq` (delivered or given up) with its index
    /// row; returns whether it existed.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub fn remove_outbox(&mut self, seq: u64) -> Result<bool, StoreError> {
        let destination = {
            let mut table = self
                .txn
                .open_table(tables::OUTBOX)
                .map_err(db("open table outbox"))?;
            let removed = table.remove(seq).map_err(db("remove outbox entry"))?;
            match removed {
                Some(row) => row.value().0.to_owned(),
                None => return Ok(false),
            }
        };
        let mut index = self
            .txn
            .open_table(tables::OUTBOX_BY_DESTINATION)
            .map_err(db("open table outbox_by_destination"))?;
        index
            .remove((destination.as_str(), seq))
            .map_err(db("remove outbox index"))?;
        count_sub(&self.txn, &destination, 1)?;
        log_op(&mut self.ops, self.logging, &OpRef::RemoveOutbox(seq))?;
        Ok(true)
    }

    /// The reply remembered for the frame `message_id` of `sender`, if it
    /// was accepted before — also earlier in this same, uncommitted batch.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub fn seen(&self, sender: &str, message_id: &str) -> Result<Option<SeenEntry>, StoreError> {
        let table = self
            .txn
            .open_table(tables::SEEN)
            .map_err(db("open table seen"))?;
        let entry = table
            .get((sender, message_id))
            .map_err(db("read seen"))?
            .map(|g| {
                let (at, reply) = g.value();
                SeenEntry {
                    at,
                    reply: reply.to_vec(),
                }
            });
        Ok(entry)
    }

    /// Remembers that the frame `message_id` of `sender` was accepted at
    /// `at` and answered with `reply` (the encoded reply body, opaque),
    /// replacing an earlier entry of the same key.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub fn put_seen(
        &mut self,
        sender: &str,
        message_id: &str,
        at: Millis,
        reply: &[u8],
    ) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(tables::SEEN)
            .map_err(db("open table seen"))?;
        let before = table
            .insert((sender, message_id), (at, reply))
            .map_err(db("write seen"))?
            .map(|g| g.value().0);
        let mut by_time = self
            .txn
            .open_table(tables::SEEN_BY_TIME)
            .map_err(db("open table seen_by_time"))?;
        if let Some(old) = before.filter(|old| *old != at) {
            by_time
                .remove((old, sender, message_id))
                .map_err(db("remove seen index"))?;
        }
        by_time
            .insert((at, sender, message_id), ())
            .map_err(db("write seen index"))?;
        drop((table, by_time));
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::PutSeen(sender, message_id, at, reply),
        )?;
        Ok(())
    }

    /// Forgets entries accepted before `before` (strictly), oldest first,
    /// at most `max` of them, so one call never makes a commit large;
    /// returns how many were removed. Call it again (in later batches)
    /// while it returns `max`.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb.
    pub fn prune_seen(&mut self, before: Millis, max: usize) -> Result<u64, StoreError> {
        if max == 0 {
            return Ok(0);
        }
        let mut by_time = self
            .txn
            .open_table(tables::SEEN_BY_TIME)
            .map_err(db("open table seen_by_time"))?;
        let mut doomed: Vec<(Millis, String, String)> = Vec::new();
        for row in by_time
            .range(..(before, "", ""))
            .map_err(db("read seen index"))?
        {
            let (k, _) = row.map_err(db("read seen index"))?;
            let (at, sender, id) = k.value();
            doomed.push((at, sender.to_owned(), id.to_owned()));
            if doomed.len() >= max {
                break;
            }
        }
        let mut seen = self
            .txn
            .open_table(tables::SEEN)
            .map_err(db("open table seen"))?;
        for (at, sender, id) in &doomed {
            by_time
                .remove((*at, sender.as_str(), id.as_str()))
                .map_err(db("remove seen index"))?;
            // Only the entry this index row describes: a stray index row
            // must not remove a newer entry of the same key.
            let current = seen
                .get((sender.as_str(), id.as_str()))
                .map_err(db("read seen"))?
                .map(|g| g.value().0);
            if current == Some(*at) {
                seen.remove((sender.as_str(), id.as_str()))
                    .map_err(db("remove seen"))?;
            }
        }
        drop((by_time, seen));
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::PruneSeen(before, max as u64),
        )?;
        Ok(doomed.len() as u64)
    }

    /// Policy deletion of records (R-REC-4): removes every record up to and
    /// including `seq` and makes the hash of entry `seq` the new anchor, so
    /// verification still passes. Returns how many entries were removed.
    /// Retention rules (minimum period, operator confirmation) are the
    /// caller's; this only keeps the chain sound.
    ///
    /// # Errors
    /// [`StoreError::DeleteBeyondHead`] for a `seq` after the last record;
    /// [`StoreError::ChainRowMissing`] when entry `seq` is absent (tampered
    /// chain); [`StoreError::Db`] from redb.
    pub fn delete_records_through(&mut self, seq: u64) -> Result<u64, StoreError> {
        let removed = self.delete_through(ChainName::Records, seq)?;
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::DeleteRecordsThrough(seq),
        )?;
        Ok(removed)
    }

    /// Policy deletion of access-log entries (R-REC-6), as
    /// [`Batch::delete_records_through`].
    ///
    /// # Errors
    /// As [`Batch::delete_records_through`].
    pub fn delete_access_through(&mut self, seq: u64) -> Result<u64, StoreError> {
        let removed = self.delete_through(ChainName::AccessLog, seq)?;
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::DeleteAccessThrough(seq),
        )?;
        Ok(removed)
    }

    /// Retention deletion of records by age (R-REC-4, issue 9 item 5):
    /// removes the oldest records appended before `cutoff` (strictly), at
    /// most `max` of them, so one call never makes a commit large; returns
    /// how many were removed. Call it again (in later batches) while it
    /// returns `max`. Never removes a record appended at or after `cutoff`,
    /// nor one that follows it in the chain (the chain is only ever cut at
    /// its start, so a record appended out of time order stops the
    /// deletion). The hash of the last removed record becomes the chain's
    /// anchor, as with [`Batch::delete_records_through`]; retention rules
    /// (the minimum period, the operator's confirmation) are the caller's.
    ///
    /// Logged as the [`Batch::delete_records_through`] it resolves to, so a
    /// replay removes exactly the same records.
    ///
    /// # Errors
    /// [`StoreError::ChainRowMissing`] for a hole in the chain (tampered);
    /// [`StoreError::Db`] from redb.
    pub fn delete_records_before(&mut self, cutoff: Millis, max: usize) -> Result<u64, StoreError> {
        let Some(through) = self.deletable_before(ChainName::Records, cutoff, max)? else {
            return Ok(0);
        };
        let removed = self.delete_through(ChainName::Records, through)?;
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::DeleteRecordsThrough(through),
        )?;
        Ok(removed)
    }

    /// Retention deletion of access-log entries by age (R-REC-6), as
    /// [`Batch::delete_records_before`].
    ///
    /// # Errors
    /// As [`Batch::delete_records_before`].
    pub fn delete_access_before(&mut self, cutoff: Millis, max: usize) -> Result<u64, StoreError> {
        let Some(through) = self.deletable_before(ChainName::AccessLog, cutoff, max)? else {
            return Ok(0);
        };
        let removed = self.delete_through(ChainName::AccessLog, through)?;
        log_op(
            &mut self.ops,
            self.logging,
            &OpRef::DeleteAccessThrough(through),
        )?;
        Ok(removed)
    }

    /// The last seq a deletion of entries appended before `cutoff` may
    /// remove, at most `max` entries past the anchor; `None` when nothing
    /// may go.
    fn deletable_before(
        &mut self,
        chain: ChainName,
        cutoff: Millis,
        max: usize,
    ) -> Result<Option<u64>, StoreError> {
        let mark = self.state.mark(chain);
        if max == 0 || mark.head_seq <= mark.anchor_seq {
            return Ok(None);
        }
        let indexes = ChainIndexes::open(&self.txn, chain)?;
        // Every time-indexed entry before the first one at or after the
        // cutoff was appended before it; an out-of-time-order entry at or
        // after the cutoff below that bound stops the deletion earlier.
        let mut bound = indexes.first_seq_at_or_after(cutoff)?.unwrap_or(u64::MAX);
        if let Some(seq) = indexes.first_out_of_order_at_or_after(cutoff, mark.anchor_seq, bound)? {
            bound = bound.min(seq);
        }
        drop(indexes);
        let by_count = mark
            .anchor_seq
            .saturating_add(u64::try_from(max).unwrap_or(u64::MAX));
        // The time index knows only the entries up to the index mark.
        let through = bound
            .saturating_sub(1)
            .min(by_count)
            .min(mark.head_seq)
            .min(self.state.indexed(chain));
        Ok((through > mark.anchor_seq).then_some(through))
    }

    fn delete_through(&mut self, chain: ChainName, seq: u64) -> Result<u64, StoreError> {
        let mark = self.state.mark(chain);
        if seq <= mark.anchor_seq {
            return Ok(0);
        }
        if seq > mark.head_seq {
            return Err(StoreError::DeleteBeyondHead {
                chain,
                seq,
                head: mark.head_seq,
            });
        }
        let mut table = self
            .txn
            .open_table(chain.table())
            .map_err(db("open chain table"))?;
        let new_anchor = table
            .get(seq)
            .map_err(db("read chain entry"))?
            .ok_or(StoreError::ChainRowMissing { chain, seq })?
            .value()
            .1;

        // The removed rows, decoded, so their index rows go too. An
        // undecodable row has no index rows to find (it could not have
        // been appended); verification reports the alteration.
        let mut removed = 0u64;
        let mut bodies: Vec<(u64, Removed)> = Vec::new();
        {
            let extracted = table
                .extract_from_if(..=seq, |_, _| true)
                .map_err(db("delete chain entries"))?;
            for row in extracted {
                let (k, v) = row.map_err(db("delete chain entries"))?;
                removed += 1;
                let key = k.value();
                let body = v.value().2;
                let decoded = match chain {
                    ChainName::Records => {
                        from_cbor::<RecordBody>("record", || key.to_string(), body)
                            .ok()
                            .map(|b| Removed::Record(b.at, Box::new(b.record)))
                    }
                    ChainName::AccessLog => {
                        from_cbor::<AccessEntry>("access-log entry", || key.to_string(), body)
                            .ok()
                            .map(|e| Removed::Access(Box::new(e)))
                    }
                };
                if let Some(decoded) = decoded {
                    bodies.push((key, decoded));
                }
            }
        }
        drop(table);
        // Entries after the index mark have no index rows to remove; the
        // mark moves past them, as their rows are gone.
        let indexed = self.state.indexed(chain);
        bodies.retain(|(key, _)| *key <= indexed);
        if seq > indexed {
            *self.state.indexed_mut(chain) = seq;
            index::write_mark(&self.txn, chain, seq)?;
        }
        let mut indexes = ChainIndexes::open(&self.txn, chain)?;
        for (key, body) in &bodies {
            match body {
                Removed::Record(at, record) => indexes.remove_record(*key, *at, record)?,
                Removed::Access(entry) => indexes.remove_access(*key, entry)?,
            }
        }
        drop(indexes);
        let mark = self.state.mark_mut(chain);
        mark.anchor_seq = seq;
        mark.anchor_hash = new_anchor;
        tracing::info!(%chain, through = seq, removed, "store: policy deletion");
        Ok(removed)
    }

    /// Makes the batch durable with one sync, then visible. With a redo
    /// log (every store opened by path): the batch's operations are
    /// appended to the log and synced, then redb commits without syncing;
    /// every so often (and when the ring wraps) the batch is instead a
    /// checkpoint, a durable redb commit. Without a log: a durable redb
    /// commit. On success the store's chain heads advance; on failure
    /// nothing of the batch is visible, the heads are unchanged and the
    /// store reopens the file for the next batch when redb requires it.
    ///
    /// If the failure happened in a sync, the outcome on disk is unknown
    /// (the kernel may still write the data): a logged batch may be
    /// replayed at the next start, as a batch whose final redb sync failed
    /// may survive. Every frame of the batch was refused, so its sender
    /// resends, and duplicate suppression answers with the first reply.
    ///
    /// # Errors
    /// [`StoreError::Db`] from redb or the log; see
    /// [`StoreError::is_storage_full`].
    pub fn commit(self) -> Result<(), StoreError> {
        let Batch {
            writer,
            txn,
            state,
            ops,
            force_durable,
            unindexed,
            ..
        } = self;
        // Compressed before planning: the ring's room is counted in the
        // bytes written.
        let packed = if writer.log.is_some() {
            match wal::pack(&ops) {
                Ok(p) => Some(p),
                Err(e) => return settle(writer, state, unindexed, Err(e)),
            }
        } else {
            None
        };
        let plan = writer.log.as_ref().map(|log| {
            let len = packed.as_ref().map_or(ops.len(), Vec::len);
            (log.plan(len, force_durable), log.position())
        });
        let result = write_marks(&txn, &writer.state, &state).and_then(|()| match plan {
            None => txn.commit().map_err(db("commit batch")),
            Some((Plan::Checkpoint { next_end }, position)) => {
                let mut txn = txn;
                write_position(
                    &txn,
                    Position {
                        batch: position.batch,
                        end: next_end,
                    },
                )?;
                txn.set_quick_repair(true);
                txn.commit().map_err(db("commit a checkpoint"))?;
                if let Some(log) = writer.log.as_mut() {
                    log.checkpointed(next_end);
                }
                Ok(())
            }
            Some((Plan::Logged { batch, at, end }, _)) => {
                let mut txn = txn;
                write_position(&txn, Position { batch, end })?;
                txn.set_durability(redb::Durability::None)
                    .map_err(db("set durability"))?;
                let Some(log) = writer.log.as_mut() else {
                    return Err(StoreError::Unavailable);
                };
                log.append(batch, at, packed.as_deref().unwrap_or(&ops), ops.len())?;
                match txn.commit() {
                    Ok(()) => {
                        log.committed(batch, end);
                        Ok(())
                    }
                    Err(e) => {
                        // The entry is in the log but not in redb: its
                        // number is burned, and a checkpoint comes next.
                        log.failed(batch, at);
                        Err(db("commit batch")(e))
                    }
                }
            }
        });
        settle(writer, state, unindexed, result)
    }

    /// Commits an index step: the index rows of the first `max` entries of
    /// each chain that wait for them, and the moved index marks; returns
    /// how many entries it indexed (0: nothing waited, nothing written).
    /// Not logged: the rows derive from the chains, so a step lost in a
    /// crash is only repeated (its entries are after the mark the next
    /// open reads). Without a redo log the commit is durable in redb.
    ///
    /// # Errors
    /// As [`Batch::commit`].
    pub(crate) fn index_step(mut self, max: usize) -> Result<usize, StoreError> {
        let indexed = self.write_index_rows(max)?;
        if indexed == 0 {
            return Ok(0);
        }
        let Batch {
            writer,
            txn,
            state,
            unindexed,
            ..
        } = self;
        let mut txn = txn;
        let result = (|| {
            if writer.log.is_some() {
                txn.set_durability(redb::Durability::None)
                    .map_err(db("set durability"))?;
            }
            txn.commit().map_err(db("commit an index step"))
        })();
        settle(writer, state, unindexed, result).map(|()| indexed)
    }

    /// Commits a replay of logged batches durably, recording that the
    /// state now holds every batch through `position`.
    pub(crate) fn commit_replayed(self, position: Position) -> Result<(), StoreError> {
        let Batch {
            writer,
            txn,
            state,
            mut unindexed,
            ..
        } = self;
        let mut txn = txn;
        write_marks(&txn, &writer.state, &state)?;
        write_position(&txn, position)?;
        txn.set_quick_repair(true);
        txn.commit().map_err(db("commit the replayed log"))?;
        writer.state = state;
        writer.unindexed.append(&mut unindexed);
        writer
            .unindexed
            .forget_through(state.records_indexed, state.access_indexed);
        Ok(())
    }
}

/// Makes a committed batch's state the writer's, or handles its failure:
/// the writer keeps its state and reopens the file when redb requires it.
fn settle(
    writer: &mut Writer,
    state: WriterState,
    mut unindexed: Unindexed,
    result: Result<(), StoreError>,
) -> Result<(), StoreError> {
    match result {
        Ok(()) => {
            writer.state = state;
            writer.unindexed.append(&mut unindexed);
            writer
                .unindexed
                .forget_through(state.records_indexed, state.access_indexed);
            Ok(())
        }
        Err(e) => {
            let e = writer.shared().track(Err(e));
            if writer.shared().needs_reopen_now() {
                if let Err(reopen) = writer.reopen() {
                    tracing::warn!(
                        error = %ErrorChain(&reopen),
                        "store: reopen after failed commit failed; the next batch retries"
                    );
                }
            }
            e
        }
    }
}

/// A chain entry removed by a policy deletion, decoded for its index rows.
enum Removed {
    Record(Millis, Box<Record>),
    Access(Box<AccessEntry>),
}

/// Adds `op` to a batch's log payload when the batch logs.
fn log_op(ops: &mut Vec<u8>, logging: bool, op: &OpRef<'_>) -> Result<(), StoreError> {
    if logging {
        wal::encode_op(ops, op)?;
    }
    Ok(())
}

/// Records in `meta` which logged batch the state holds and where the
/// next entry goes.
pub(crate) fn write_position(txn: &WriteTransaction, position: Position) -> Result<(), StoreError> {
    let mut meta = txn
        .open_table(tables::META)
        .map_err(db("open table meta"))?;
    meta.insert(tables::LOG_BATCH_KEY, position.batch)
        .map_err(db("write log position"))?;
    meta.insert(tables::LOG_END_KEY, position.end)
        .map_err(db("write log position"))?;
    Ok(())
}

/// Writes the chain marks and counters that changed in the batch.
fn write_marks(
    txn: &WriteTransaction,
    before: &WriterState,
    after: &WriterState,
) -> Result<(), StoreError> {
    if before.records != after.records || before.access != after.access {
        let mut marks = txn
            .open_table(tables::CHAIN_MARKS)
            .map_err(db("open table chain_marks"))?;
        for chain in [ChainName::Records, ChainName::AccessLog] {
            if before.mark(chain) != after.mark(chain) {
                marks
                    .insert(chain.key(), after.mark(chain).to_row())
                    .map_err(db("write chain marks"))?;
            }
        }
    }
    if before.outbox_next != after.outbox_next {
        let mut meta = txn
            .open_table(tables::META)
            .map_err(db("open table meta"))?;
        meta.insert(tables::OUTBOX_NEXT_KEY, after.outbox_next)
            .map_err(db("write outbox counter"))?;
        // Every push of this batch went through the index too.
        meta.insert(tables::OUTBOX_INDEX_NEXT_KEY, after.outbox_next)
            .map_err(db("write outbox index marker"))?;
    }
    Ok(())
}

/// Adds `n` to the entry count of `destination`.
fn count_add(txn: &WriteTransaction, destination: &str, n: u64) -> Result<(), StoreError> {
    let mut counts = txn
        .open_table(tables::OUTBOX_COUNTS)
        .map_err(db("open table outbox_counts"))?;
    let current = counts
        .get(destination)
        .map_err(db("read outbox count"))?
        .map_or(0, |g| g.value());
    let updated = current.checked_add(n).ok_or(StoreError::Exhausted {
        what: "outbox destination count",
    })?;
    counts
        .insert(destination, updated)
        .map_err(db("write outbox count"))?;
    Ok(())
}

/// Subtracts `n` from the entry count of `destination`, dropping its row at
/// zero. A count already too low (a file altered outside the store) stops
/// at zero rather than failing delivery; the next open rebuilds the counts
/// because their sum no longer matches the outbox.
fn count_sub(txn: &WriteTransaction, destination: &str, n: u64) -> Result<(), StoreError> {
    let mut counts = txn
        .open_table(tables::OUTBOX_COUNTS)
        .map_err(db("open table outbox_counts"))?;
    let current = counts
        .get(destination)
        .map_err(db("read outbox count"))?
        .map_or(0, |g| g.value());
    let updated = current.saturating_sub(n);
    if updated == 0 {
        counts
            .remove(destination)
            .map_err(db("write outbox count"))?;
    } else {
        counts
            .insert(destination, updated)
            .map_err(db("write outbox count"))?;
    }
    Ok(())
}

/// Replays logged batches in one transaction and commits it durably (the
/// writer's [`crate::writer::ReplayFn`]).
pub(crate) fn replay(
    writer: &mut Writer,
    txn: WriteTransaction,
    entries: &[Entry],
) -> Result<usize, StoreError> {
    let Some(last) = entries.last() else {
        return Ok(0);
    };
    let position = Position {
        batch: last.batch,
        end: last.end,
    };
    let mut batch = Batch::replaying(writer, txn);
    let mut ops = 0usize;
    for entry in entries {
        for op in wal::decode_ops(entry.batch, &entry.payload)? {
            batch.apply(op)?;
            ops += 1;
        }
    }
    batch.commit_replayed(position)?;
    Ok(ops)
}
