//! Durable-path candidates (issue 9 item 1): bytes written per input for
//! the engine's commit pattern under today's store layout and under the
//! alternatives the issue names, each measured the same way.
//!
//! Every candidate gets the same inputs ([`Workload`]) in batches of N, each
//! batch durable before the next starts (group commit). Per input: a
//! process-state upsert (and, per new flow, the removal of the process that
//! started [`PROCESS_LIFETIME_FLOWS`] flows earlier, so the table stays at a
//! steady size as the engine's does), an outbox push and the removal of the
//! entry pushed [`OUTBOX_LAG`] inputs earlier, a duplicate-table entry, an
//! access-log entry and, for one input in four, a record.
//!
//! Bytes written come from `/proc/self/io` `write_bytes` (pages this
//! process sent to the block layer: the files' data, not the file system's
//! journal) and from the device's own counter in `/sys/dev/block`, which
//! also counts the journal — and every other process on the disk.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ifrelay_proto::{
    AgencyCode, BusinessCode, InfoNameCode, ItemCode, Millis, PermitId, PersonCode, Prefix, Serial,
};
use ifrelay_store::{
    chain_hash, tables, AccessEntry, ChainName, Direction, Record, RecordKind, Side, Store,
};
use redb::{Database, Durability, ReadableTable, WriteTransaction};
use serde::Serialize;

use super::BenchError;
use crate::stats::{ms, summarize, Summary};

/// Bytes of one process state (the engine's CBOR state is about this).
pub const PROCESS_BYTES: usize = 300;
/// Bytes of one outbox frame.
pub const FRAME_BYTES: usize = 512;
/// Bytes of one remembered reply in the duplicate table.
pub const REPLY_BYTES: usize = 64;
/// Outbox entries waiting at any time: each push removes the entry pushed
/// this many inputs earlier (delivered).
pub const OUTBOX_LAG: usize = 256;
/// A process lives this many flows (four inputs each) before it ends.
pub const PROCESS_LIFETIME_FLOWS: u64 = 1024;
/// Inputs per flow; one of them appends a record.
const INPUTS_PER_FLOW: u64 = 4;
/// redb cache, as the firmware's default `store.cache_mib`.
const CACHE_BYTES: usize = 32 << 20;
const DESTINATION: &str = "is/271004";
const SENDER: &str = "ims/131016";
const T0: Millis = 1_796_000_000_000;
/// Upper bound of the log bytes one input appends, to stop before the
/// preallocated segment is full.
const MAX_LOG_BYTES_PER_INPUT: u64 = 2048;
/// Key in `META` of the B candidates: the log's durable end.
const LOG_END_KEY: &str = "log_end";
/// Inputs between two durable redb commits of E (half a second at the
/// 2,000 frames/s of the open loop); recovery replays at most this many.
/// Counted in inputs, not time, so the figures do not depend on speed.
pub const CHECKPOINT_INPUTS: u64 = 1000;

/// One way of making a batch durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// A: today's store, through `ifrelay_store::Store` and `Batch`.
    Store,
    /// A': the same tables and rows written with redb directly; checks the
    /// imitation the other candidates are built from against A.
    Imitation,
    /// C: A' without the secondary index tables (outbox by destination and
    /// counts, seen by time, records by serial).
    NoIndex,
    /// B: redb holds the live state with its indexes; records and the
    /// access log go to a preallocated append-only segment file.
    Log,
    /// B and C: B without the secondary index tables.
    LogNoIndex,
    /// D: A' with redb's two-phase commit.
    TwoPhase,
    /// D: A' with redb's quick repair (allocator state saved each commit).
    QuickRepair,
    /// E: B with every state operation also appended to the log, which
    /// alone makes a batch durable; redb commits without fsync and is made
    /// durable (a checkpoint) once per [`CHECKPOINT_INPUTS`].
    Wal,
    /// E and C: E without the secondary index tables.
    WalNoIndex,
}

impl Candidate {
    /// Every candidate, in the order they run.
    pub const ALL: [Candidate; 9] = [
        Candidate::Store,
        Candidate::Imitation,
        Candidate::NoIndex,
        Candidate::Log,
        Candidate::LogNoIndex,
        Candidate::TwoPhase,
        Candidate::QuickRepair,
        Candidate::Wal,
        Candidate::WalNoIndex,
    ];

    /// The name printed and accepted on the command line.
    pub const fn label(self) -> &'static str {
        match self {
            Candidate::Store => "A-store",
            Candidate::Imitation => "A-imitation",
            Candidate::NoIndex => "C-no-index",
            Candidate::Log => "B-log",
            Candidate::LogNoIndex => "BC-log-no-index",
            Candidate::TwoPhase => "D-two-phase",
            Candidate::QuickRepair => "D-quick-repair",
            Candidate::Wal => "E-wal-checkpoint",
            Candidate::WalNoIndex => "EC-wal-no-index",
        }
    }

    /// The candidate named `label`.
    pub fn parse(label: &str) -> Option<Candidate> {
        Candidate::ALL.into_iter().find(|c| c.label() == label)
    }

    /// The redb layout of an imitation; `None` for the real store.
    const fn layout(self) -> Option<Layout> {
        let base = Layout {
            indexes: true,
            log: false,
            wal: false,
            two_phase: false,
            quick_repair: false,
        };
        match self {
            Candidate::Store => None,
            Candidate::Imitation => Some(base),
            Candidate::NoIndex => Some(Layout {
                indexes: false,
                ..base
            }),
            Candidate::Log => Some(Layout { log: true, ..base }),
            Candidate::LogNoIndex => Some(Layout {
                indexes: false,
                log: true,
                ..base
            }),
            Candidate::TwoPhase => Some(Layout {
                two_phase: true,
                ..base
            }),
            Candidate::QuickRepair => Some(Layout {
                quick_repair: true,
                ..base
            }),
            Candidate::Wal => Some(Layout {
                log: true,
                wal: true,
                ..base
            }),
            Candidate::WalNoIndex => Some(Layout {
                indexes: false,
                log: true,
                wal: true,
                ..base
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Write the secondary index tables.
    indexes: bool,
    /// Records and access log in the segment file instead of redb.
    log: bool,
    /// State operations in the log too; redb durable only at checkpoints.
    wal: bool,
    two_phase: bool,
    quick_repair: bool,
}

/// What one run measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Work folder, already prepared ([`crate::workdir::prepare`]).
    pub dir: PathBuf,
    pub sizes: Vec<u64>,
    pub candidates: Vec<Candidate>,
    /// Measured batches per (candidate, N), at most.
    pub batches: u64,
    /// Measured time per (candidate, N), at most.
    pub time: Duration,
    /// Unmeasured batches first, so tables exist and the outbox holds its
    /// steady backlog.
    pub warmup_batches: u64,
    /// Largest preallocated segment of the log candidates.
    pub segment_bytes: u64,
}

/// The figures of one (candidate, N).
#[derive(Debug, Clone)]
pub struct RunResult {
    pub candidate: Candidate,
    pub n: u64,
    pub batches: u64,
    pub inputs: u64,
    pub elapsed: Duration,
    /// `write_bytes` of this process during the measured batches.
    pub write_bytes: u64,
    /// Bytes the device counted meanwhile (all processes), when readable.
    pub device_bytes: Option<u64>,
    /// From the start of the durability step to the batch being durable.
    pub commit: Option<Summary>,
    /// Size of the files at the end (logical, not written).
    pub file_bytes: u64,
    /// Why the run stopped: `batches`, `time` or `segment full`.
    pub stop: &'static str,
}

impl RunResult {
    fn per(bytes: u64, count: u64) -> f64 {
        bytes as f64 / 1024.0 / count.max(1) as f64
    }

    /// KiB this process wrote per input.
    pub fn kib_per_input(&self) -> f64 {
        Self::per(self.write_bytes, self.inputs)
    }

    /// KiB this process wrote per batch.
    pub fn kib_per_batch(&self) -> f64 {
        Self::per(self.write_bytes, self.batches)
    }

    /// KiB the device wrote per input (all processes, journal included).
    pub fn device_kib_per_input(&self) -> Option<f64> {
        self.device_bytes.map(|b| Self::per(b, self.inputs))
    }

    /// Inputs made durable per second.
    pub fn inputs_per_s(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The one line printed per run.
    pub fn line(&self) -> String {
        let (p50, p99) = self
            .commit
            .map_or(("-".to_owned(), "-".to_owned()), |s| (ms(s.p50), ms(s.p99)));
        let device = self
            .device_kib_per_input()
            .map_or_else(|| "-".to_owned(), |d| format!("{d:.1}"));
        format!(
            "storebench: candidate={} n={} batches={} inputs={} secs={:.2} inputs_per_s={:.0} \
             kib_per_input={:.2} kib_per_batch={:.1} device_kib_per_input={} commit_p50_ms={} \
             commit_p99_ms={} file_mib={:.1} stop={}",
            self.candidate.label(),
            self.n,
            self.batches,
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.inputs_per_s(),
            self.kib_per_input(),
            self.kib_per_batch(),
            device,
            p50,
            p99,
            self.file_bytes as f64 / f64::from(1u32 << 20),
            self.stop,
        )
    }
}

/// The summary table (Markdown) of `results`.
pub fn render_table(results: &[RunResult]) -> String {
    let mut out = String::from(
        "| candidate | N | inputs/s | KiB/input | KiB/batch | device KiB/input | commit p50 ms | commit p99 ms | batches |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let (p50, p99) = r
            .commit
            .map_or(("-".to_owned(), "-".to_owned()), |s| (ms(s.p50), ms(s.p99)));
        let device = r
            .device_kib_per_input()
            .map_or_else(|| "-".to_owned(), |d| format!("{d:.2}"));
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.1} | {} | {} | {} | {} |\n",
            r.candidate.label(),
            r.n,
            r.inputs_per_s(),
            r.kib_per_input(),
            r.kib_per_batch(),
            device,
            p50,
            p99,
            r.batches,
        ));
    }
    out
}

/// The inputs every candidate writes.
pub struct Workload {
    process: Vec<u8>,
    frame: Vec<u8>,
    reply: Vec<u8>,
    record: Record,
    access: AccessEntry,
}

/// One input, derived from its number.
struct Input {
    serial: Serial,
    /// The process that ends with this input, if any.
    ended: Option<Serial>,
    message_id: String,
    at: Millis,
    record: bool,
}

/// The record row's body, shaped as the store's (`{at, record}`).
#[derive(Serialize)]
struct RecordBody<'a> {
    at: Millis,
    record: &'a Record,
}

impl Workload {
    /// The fixed parts of every input.
    ///
    /// # Errors
    /// When a sample code is refused by its type (a bug here).
    pub fn new() -> Result<Workload, BenchError> {
        let requester = AgencyCode::new("131016")?;
        let provider = AgencyCode::new("271004")?;
        let mut items = heapless::Vec::new();
        for item in ["ITEM01", "ITEM02", "ITEM03"] {
            items
                .push(ItemCode::new(item)?)
                .map_err(|_| "too many sample items")?;
        }
        let prefix = Prefix {
            requester: requester.clone(),
            business: BusinessCode::new("JM0001")?,
            provider: provider.clone(),
            info_name: InfoNameCode::new("TK0001")?,
            items,
        };
        let serial = serial_of(0)?;
        let record = Record {
            kind: RecordKind::Provision,
            side: Side::Requester,
            serial: serial.clone(),
            prefix: prefix.clone(),
            code: Some(PersonCode::new("A1B2C3D4E5F6G7H8I9J0K1L2M3N4O5P6")?),
            permit_id: Some(PermitId::new("permit-20261201-000000000001")?),
            counterpart: Some(provider),
            query_requested_at: T0,
            provision_at: Some(T0),
            clock_synced: true,
        };
        let access = AccessEntry {
            at: T0,
            terminal: "10.20.30.40:51234".into(),
            party: SENDER.into(),
            agency: Some(requester),
            staff: None,
            direction: Direction::In,
            operation: "provision".into(),
            message_id: Some("m-0".into()),
            serial: Some(serial),
            business: Some(prefix.business.clone()),
            info_name: Some(prefix.info_name.clone()),
            items: prefix.items.iter().cloned().collect(),
            outcome: "accepted".into(),
        };
        Ok(Workload {
            process: pattern(PROCESS_BYTES, 1),
            frame: pattern(FRAME_BYTES, 2),
            reply: pattern(REPLY_BYTES, 3),
            record,
            access,
        })
    }

    fn input(&self, i: u64) -> Result<Input, BenchError> {
        let flow = i / INPUTS_PER_FLOW;
        let starts = i % INPUTS_PER_FLOW == 0;
        let ended = match flow.checked_sub(PROCESS_LIFETIME_FLOWS) {
            Some(old) if starts => Some(serial_of(old)?),
            _ => None,
        };
        Ok(Input {
            serial: serial_of(flow)?,
            ended,
            message_id: format!("m-{i}"),
            at: T0 + i64::try_from(i).unwrap_or(i64::MAX / 2),
            record: starts,
        })
    }

    /// CBOR body of the access-log entry of `input`.
    fn access_body(&self, input: &Input) -> Result<Vec<u8>, BenchError> {
        cbor(&self.access_entry(input))
    }

    fn access_entry(&self, input: &Input) -> AccessEntry {
        let mut entry = self.access.clone();
        entry.at = input.at;
        entry.message_id = Some(input.message_id.clone());
        entry.serial = Some(input.serial.clone());
        entry
    }

    fn record_of(&self, input: &Input) -> Record {
        let mut record = self.record.clone();
        record.serial = input.serial.clone();
        record
    }

    /// CBOR body of the record of `input`.
    fn record_body(&self, input: &Input) -> Result<Vec<u8>, BenchError> {
        cbor(&RecordBody {
            at: input.at,
            record: &self.record_of(input),
        })
    }

    /// Sizes of the encoded access-log entry and record, for the report.
    ///
    /// # Errors
    /// When encoding fails.
    pub fn body_sizes(&self) -> Result<(usize, usize), BenchError> {
        let input = self.input(0)?;
        Ok((
            self.access_body(&input)?.len(),
            self.record_body(&input)?.len(),
        ))
    }
}

fn serial_of(flow: u64) -> Result<Serial, BenchError> {
    Ok(Serial::new(&format!("131016-20261201-1-{flow}"))?)
}

/// Bytes that no layer could compress or deduplicate cheaply.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, BenchError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out)?;
    Ok(out)
}

/// A store under test.
trait Target {
    /// Writes inputs `first..first + n` as one batch and makes it durable;
    /// returns how long the durability step took.
    fn batch(&mut self, w: &Workload, first: u64, n: u64) -> Result<Duration, BenchError>;

    /// Whether a batch of `n` more inputs fits.
    fn has_room(&self, _n: u64) -> bool {
        true
    }
}

/// A: the real store.
struct StoreTarget {
    store: Store,
    pushed: VecDeque<u64>,
}

impl Target for StoreTarget {
    fn batch(&mut self, w: &Workload, first: u64, n: u64) -> Result<Duration, BenchError> {
        let mut batch = self.store.begin()?;
        for i in first..first + n {
            let input = w.input(i)?;
            batch.put_process(&input.serial, &w.process)?;
            if let Some(old) = &input.ended {
                batch.remove_process(old)?;
            }
            let seq = batch.push_outbox(DESTINATION, &w.frame)?;
            self.pushed.push_back(seq);
            if self.pushed.len() > OUTBOX_LAG {
                if let Some(old) = self.pushed.pop_front() {
                    batch.remove_outbox(old)?;
                }
            }
            batch.put_seen(SENDER, &input.message_id, input.at, &w.reply)?;
            batch.append_access(w.access_entry(&input))?;
            if input.record {
                batch.append_record(input.at, w.record_of(&input))?;
            }
        }
        let t = Instant::now();
        batch.commit()?;
        Ok(t.elapsed())
    }
}

/// A', B, C, D: redb written directly, with the store's table definitions.
struct RedbTarget {
    db: Database,
    layout: Layout,
    log: Option<SegmentLog>,
    /// `(head_seq, head_hash)` of records, then of the access log.
    heads: [(u64, [u8; 32]); 2],
    outbox_next: u64,
    pushed: VecDeque<u64>,
    /// E: inputs since redb was last made durable.
    since_checkpoint: u64,
}

impl RedbTarget {
    fn open(dir: &Path, layout: Layout, segment_bytes: u64) -> Result<RedbTarget, BenchError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("state.redb"))?;
        let log = if layout.log {
            Some(SegmentLog::create(&dir.join("log.seg"), segment_bytes)?)
        } else {
            None
        };
        Ok(RedbTarget {
            db,
            layout,
            log,
            heads: [(0, [0; 32]); 2],
            outbox_next: 1,
            pushed: VecDeque::new(),
            since_checkpoint: 0,
        })
    }

    /// Appends `body` to `chain`: a row in redb, or an entry in `log_buf`.
    fn append(
        &self,
        txn: &WriteTransaction,
        heads: &mut [(u64, [u8; 32]); 2],
        log_buf: &mut Vec<u8>,
        chain: ChainName,
        body: &[u8],
    ) -> Result<u64, BenchError> {
        let slot = usize::from(chain == ChainName::AccessLog);
        let (head_seq, prev) = heads[slot];
        let seq = head_seq + 1;
        let hash = chain_hash(chain, &prev, seq, body);
        if self.layout.log {
            // Entry: length of the rest, chain tag, seq, hash, body. The
            // previous hash is the previous entry's, so it is not repeated.
            let rest = u32::try_from(1 + 8 + 32 + body.len())?;
            log_buf.extend_from_slice(&rest.to_le_bytes());
            log_buf.push(u8::try_from(slot)?);
            log_buf.extend_from_slice(&seq.to_le_bytes());
            log_buf.extend_from_slice(&hash);
            log_buf.extend_from_slice(body);
        } else {
            let table = match chain {
                ChainName::Records => tables::RECORDS,
                _ => tables::ACCESS_LOG,
            };
            txn.open_table(table)?.insert(seq, (prev, hash, body))?;
        }
        heads[slot] = (seq, hash);
        Ok(seq)
    }

    /// E: appends a state operation (tag, then its fields) to `log_buf`.
    fn log_op(&self, log_buf: &mut Vec<u8>, tag: u8, fields: &[&[u8]]) -> Result<(), BenchError> {
        if !self.layout.wal {
            return Ok(());
        }
        let len: usize = fields.iter().map(|f| 2 + f.len()).sum();
        log_buf.extend_from_slice(&u32::try_from(1 + len)?.to_le_bytes());
        log_buf.push(tag);
        for f in fields {
            log_buf.extend_from_slice(&u16::try_from(f.len())?.to_le_bytes());
            log_buf.extend_from_slice(f);
        }
        Ok(())
    }

    fn push_outbox(
        &self,
        txn: &WriteTransaction,
        seq: u64,
        frame: &[u8],
    ) -> Result<(), BenchError> {
        txn.open_table(tables::OUTBOX)?
            .insert(seq, (DESTINATION, frame))?;
        if self.layout.indexes {
            txn.open_table(tables::OUTBOX_BY_DESTINATION)?
                .insert((DESTINATION, seq), ())?;
            let mut counts = txn.open_table(tables::OUTBOX_COUNTS)?;
            let n = counts.get(DESTINATION)?.map_or(0, |g| g.value());
            counts.insert(DESTINATION, n + 1)?;
        }
        Ok(())
    }

    fn remove_outbox(&self, txn: &WriteTransaction, seq: u64) -> Result<(), BenchError> {
        let removed = txn.open_table(tables::OUTBOX)?.remove(seq)?.is_some();
        if removed && self.layout.indexes {
            txn.open_table(tables::OUTBOX_BY_DESTINATION)?
                .remove((DESTINATION, seq))?;
            let mut counts = txn.open_table(tables::OUTBOX_COUNTS)?;
            let n = counts.get(DESTINATION)?.map_or(0, |g| g.value());
            if n <= 1 {
                counts.remove(DESTINATION)?;
            } else {
                counts.insert(DESTINATION, n - 1)?;
            }
        }
        Ok(())
    }
}

impl Target for RedbTarget {
    fn batch(&mut self, w: &Workload, first: u64, n: u64) -> Result<Duration, BenchError> {
        let mut txn = self.db.begin_write()?;
        let pending = self.since_checkpoint + n;
        let checkpoint = !self.layout.wal || pending >= CHECKPOINT_INPUTS;
        txn.set_durability(if checkpoint {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        txn.set_two_phase_commit(self.layout.two_phase);
        txn.set_quick_repair(self.layout.quick_repair);
        let mut heads = self.heads;
        let mut outbox_next = self.outbox_next;
        let mut log_buf = Vec::new();
        for i in first..first + n {
            let input = w.input(i)?;
            {
                let mut processes = txn.open_table(tables::PROCESSES)?;
                processes.insert(input.serial.as_str(), w.process.as_slice())?;
                if let Some(old) = &input.ended {
                    processes.remove(old.as_str())?;
                }
            }
            self.log_op(
                &mut log_buf,
                1,
                &[input.serial.as_str().as_bytes(), &w.process],
            )?;
            if let Some(old) = &input.ended {
                self.log_op(&mut log_buf, 2, &[old.as_str().as_bytes()])?;
            }
            let seq = outbox_next;
            outbox_next += 1;
            self.push_outbox(&txn, seq, &w.frame)?;
            self.log_op(
                &mut log_buf,
                3,
                &[&seq.to_le_bytes(), DESTINATION.as_bytes(), &w.frame],
            )?;
            self.pushed.push_back(seq);
            if self.pushed.len() > OUTBOX_LAG {
                if let Some(old) = self.pushed.pop_front() {
                    self.remove_outbox(&txn, old)?;
                    self.log_op(&mut log_buf, 4, &[&old.to_le_bytes()])?;
                }
            }
            txn.open_table(tables::SEEN)?.insert(
                (SENDER, input.message_id.as_str()),
                (input.at, w.reply.as_slice()),
            )?;
            self.log_op(
                &mut log_buf,
                5,
                &[
                    SENDER.as_bytes(),
                    input.message_id.as_bytes(),
                    &input.at.to_le_bytes(),
                    &w.reply,
                ],
            )?;
            if self.layout.indexes {
                txn.open_table(tables::SEEN_BY_TIME)?
                    .insert((input.at, SENDER, input.message_id.as_str()), ())?;
            }
            let body = w.access_body(&input)?;
            self.append(&txn, &mut heads, &mut log_buf, ChainName::AccessLog, &body)?;
            if input.record {
                let body = w.record_body(&input)?;
                let seq = self.append(&txn, &mut heads, &mut log_buf, ChainName::Records, &body)?;
                if self.layout.indexes {
                    txn.open_multimap_table(tables::RECORDS_BY_SERIAL)?
                        .insert(input.serial.as_str(), seq)?;
                }
            }
        }
        // The marks and counters the store writes with every batch.
        {
            let mut meta = txn.open_table(tables::META)?;
            meta.insert(tables::OUTBOX_NEXT_KEY, outbox_next)?;
            if self.layout.indexes {
                meta.insert(tables::OUTBOX_INDEX_NEXT_KEY, outbox_next)?;
            }
            if let Some(log) = &self.log {
                let end = log.end + u64::try_from(log_buf.len())?;
                meta.insert(LOG_END_KEY, end)?;
            }
        }
        if !self.layout.log {
            let mut marks = txn.open_table(tables::CHAIN_MARKS)?;
            for (slot, chain) in [ChainName::Records, ChainName::AccessLog]
                .into_iter()
                .enumerate()
            {
                if heads[slot] != self.heads[slot] {
                    let (seq, hash) = heads[slot];
                    marks.insert(chain.key(), (0, [0u8; 32], seq, hash))?;
                }
            }
        }
        let t = Instant::now();
        // Log first, then redb: once redb commits, the batch's state says
        // "accepted" and its records must already be durable; a crash in
        // between leaves log entries past redb's `log_end`, which recovery
        // cuts off. The reverse order could accept a frame without record.
        // E: the log alone is durable here; recovery replays the state
        // operations after the `log_end` of redb's last durable commit.
        if let Some(log) = &mut self.log {
            log.append_durable(&log_buf)?;
        }
        txn.commit()?;
        let took = t.elapsed();
        self.since_checkpoint = if checkpoint { 0 } else { pending };
        self.heads = heads;
        self.outbox_next = outbox_next;
        Ok(took)
    }

    fn has_room(&self, n: u64) -> bool {
        self.log
            .as_ref()
            .is_none_or(|log| log.room() >= n.saturating_mul(MAX_LOG_BYTES_PER_INPUT))
    }
}

/// A preallocated append-only file: zero-filled before use, so appends
/// overwrite allocated blocks and `fdatasync` writes data without
/// allocation metadata. Filled 4 KiB per write: the page cache keeps
/// the folio size of the write that made it, and a later one-byte append
/// into a 1 MiB folio counts (in `write_bytes`) as 1 MiB dirtied.
struct SegmentLog {
    file: File,
    end: u64,
    capacity: u64,
}

impl SegmentLog {
    fn create(path: &Path, capacity: u64) -> Result<SegmentLog, BenchError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let chunk = vec![0u8; 4096];
        let mut at = 0u64;
        while at < capacity {
            file.write_all_at(&chunk, at)?;
            at += chunk.len() as u64;
        }
        file.sync_all()?;
        if let Some(parent) = path.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(SegmentLog {
            file,
            end: 0,
            capacity: at,
        })
    }

    fn room(&self) -> u64 {
        self.capacity.saturating_sub(self.end)
    }

    fn append_durable(&mut self, bytes: &[u8]) -> Result<(), BenchError> {
        let len = u64::try_from(bytes.len())?;
        if len > self.room() {
            return Err("log segment full".into());
        }
        self.file.write_all_at(bytes, self.end)?;
        self.file.sync_data()?;
        self.end += len;
        Ok(())
    }
}

/// `write_bytes` of this process.
fn proc_write_bytes() -> Result<u64, BenchError> {
    let io = std::fs::read_to_string("/proc/self/io")?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no write_bytes in /proc/self/io".into())
}

/// Bytes written to the block device holding `dir`, from its `stat`
/// (sectors of 512 bytes); `None` when not readable.
fn device_written(dir: &Path) -> Option<u64> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Measures `candidate` with batches of `n` inputs in a fresh sub-folder
/// of `opts.dir`.
///
/// # Errors
/// Any store or file error; the run stops at the first.
pub fn run_one(
    opts: &Options,
    w: &Workload,
    candidate: Candidate,
    n: u64,
) -> Result<RunResult, BenchError> {
    let dir = opts.dir.join(format!("{}-n{n}", candidate.label()));
    std::fs::create_dir(&dir)?;
    let mut target: Box<dyn Target> = match candidate.layout() {
        None => {
            let mut store = Store::open(&dir.join("ifrelay.redb"), CACHE_BYTES)?;
            store.boot(T0)?;
            Box::new(StoreTarget {
                store,
                pushed: VecDeque::new(),
            })
        }
        Some(layout) => {
            // No bigger than the run can fill: zero-filling it costs time.
            let most = (opts.warmup_batches + opts.batches)
                .saturating_mul(n)
                .saturating_mul(MAX_LOG_BYTES_PER_INPUT);
            let segment = opts.segment_bytes.min(most);
            Box::new(RedbTarget::open(&dir, layout, segment)?)
        }
    };
    let mut next = 0u64;
    for _ in 0..opts.warmup_batches {
        target.batch(w, next, n)?;
        next += n;
    }
    // Whatever others left dirty is written now, not during the run.
    // Best effort: without `sync` only the device column gets noisier.
    let _ = std::process::Command::new("sync").status();
    let mut samples = Vec::new();
    let mut batches = 0u64;
    let mut stop = "batches";
    let io0 = proc_write_bytes()?;
    let dev0 = device_written(&dir);
    let start = Instant::now();
    while batches < opts.batches {
        if start.elapsed() >= opts.time {
            stop = "time";
            break;
        }
        if !target.has_room(n) {
            stop = "segment full";
            break;
        }
        samples.push(target.batch(w, next, n)?);
        next += n;
        batches += 1;
    }
    let elapsed = start.elapsed();
    let write_bytes = proc_write_bytes()?.saturating_sub(io0);
    let device_bytes = dev0
        .zip(device_written(&dir))
        .map(|(a, b)| b.saturating_sub(a));
    drop(target);
    Ok(RunResult {
        candidate,
        n,
        batches,
        inputs: batches * n,
        elapsed,
        write_bytes,
        device_bytes,
        commit: summarize(&mut samples),
        file_bytes: dir_bytes(&dir),
        stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_candidate_runs_a_few_batches_and_counts_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = Options {
            dir: dir.path().to_owned(),
            sizes: vec![5],
            candidates: Candidate::ALL.to_vec(),
            batches: 3,
            time: Duration::from_secs(30),
            warmup_batches: 1,
            segment_bytes: 1 << 20,
        };
        let w = Workload::new().expect("workload");
        for c in Candidate::ALL {
            let r = run_one(&opts, &w, c, 5).expect("run");
            assert_eq!((r.batches, r.inputs, r.stop), (3, 15, "batches"), "{c:?}");
            assert!(r.file_bytes > 0, "{c:?}");
            assert_eq!(Candidate::parse(c.label()), Some(c));
        }
    }
}
