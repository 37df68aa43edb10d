//! The store's redo log: the durable path of every batch.
//!
//! A durable redb commit rewrites ~90 KiB of B-tree pages whatever it
//! holds (docs/performance.md, "Durable-path candidates"). So a batch is
//! made durable by appending its operations to this log and syncing the
//! log's tail instead; redb commits the same operations without syncing,
//! and only every so often durably (a *checkpoint*), when the pages many
//! batches dirtied have coalesced.
//!
//! Layout: one preallocated, zero-filled file used as a ring (no file size
//! change, so `fdatasync` writes data blocks only). Block 0 is a header
//! ([`HEADER_LEN`] bytes: magic, format, log id, size); entries follow,
//! each `magic u32 | payload_len u32 | log_id u64 | batch u64 | crc32 u32 |
//! 0u32 | payload`, the CRC over the first 24 header bytes and the payload.
//! The payload is a sequence of CBOR [`Op`]s: the batch's public
//! operations with their arguments, replayed through the same
//! [`crate::Batch`] methods (logical redo: replay recomputes seqs and
//! hashes exactly, because the store is deterministic in its inputs).
//! Since log format 2 a payload may instead be compressed ([`pack`]):
//! `0xFF | raw_len u32 | LZ4 block of the CBOR`. No CBOR operation starts
//! with 0xFF (a "break" outside any indefinite item), so the two forms
//! cannot be mistaken, and firmware that predates compression fails to
//! decode such an entry and refuses to start instead of skipping it
//! (docs/operations.md, "Going back to an older firmware").
//!
//! Coordination with redb lives in redb's `meta` table: every commit that
//! applies a logged batch also writes `log_batch` (its number) and
//! `log_end` (the offset after its entry). Whatever commit redb recovers to
//! after a crash — the last checkpoint, or a later one redb made durable
//! on close — therefore says exactly which batches it holds, and recovery
//! replays the entries that follow `log_end` while each is numbered one
//! more than the last, carries this log's id and passes its CRC. A torn
//! tail (a batch never acknowledged) fails the CRC and ends the replay.
//!
//! Invariants:
//! - Log before redb: a batch's entry is synced before redb commits it,
//!   so a batch redb holds (even non-durably) is always in the log or in a
//!   durable commit.
//! - The live part of the ring, `[durable_end, end)`, holds every batch
//!   not yet in a durable redb commit; a write never overwrites it. The
//!   writer wraps to the start only through a checkpoint (which empties
//!   the live part).
//! - A failed append leaves `next_batch` and `end` unchanged: the next
//!   entry overwrites the failed one under the same number.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ifrelay_proto::{Millis, Serial};
use redb::StorageBackend;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::model::{AccessEntry, Record};

/// Bytes of the header block at the start of the log file.
pub(crate) const HEADER_LEN: u64 = 4096;
/// Bytes of an entry's header.
const ENTRY_HEADER_LEN: usize = 32;
const FILE_MAGIC: &[u8; 16] = b"ifrelay-redo-v1\0";
const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"IRLE");
/// First byte of a compressed payload ([`pack`]).
const PACKED: u8 = 0xFF;
/// Bytes before the LZ4 block of a compressed payload.
const PACKED_HEADER_LEN: usize = 5;
/// Payloads shorter than this are logged as they are: the entry would not
/// cover fewer pages.
const PACK_MIN: usize = 256;
/// The page size of the log's writes: what one `fdatasync` writes per
/// page an entry touches.
const PAGE: u64 = 4096;

/// How the redo log is sized and when the store checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Size of the ring file in bytes (preallocated at creation).
    pub size: u64,
    /// A checkpoint (durable redb commit) after this many logged batches.
    pub checkpoint_batches: u64,
    /// A checkpoint once this many log bytes await one.
    pub checkpoint_bytes: u64,
}

impl Default for LogOptions {
    /// 16 MiB ring; a checkpoint every 1,000 batches or 4 MiB of log,
    /// whichever comes first (measured in docs/performance.md).
    fn default() -> Self {
        LogOptions {
            size: 16 << 20,
            checkpoint_batches: 1000,
            checkpoint_bytes: 4 << 20,
        }
    }
}

/// One operation of a batch as written to the log (borrowed form).
#[derive(Serialize)]
pub(crate) enum OpRef<'a> {
    #[serde(rename = "p")]
    PutProcess(&'a str, #[serde(with = "serde_bytes")] &'a [u8]),
    #[serde(rename = "P")]
    RemoveProcess(&'a str),
    #[serde(rename = "x")]
    PutPrefix(u64, #[serde(with = "serde_bytes")] &'a [u8]),
    #[serde(rename = "X")]
    PrunePrefixesBelow(u64),
    #[serde(rename = "r")]
    AppendRecord(Millis, &'a Record),
    #[serde(rename = "a")]
    AppendAccess(&'a AccessEntry),
    #[serde(rename = "o")]
    PushOutbox(&'a str, #[serde(with = "serde_bytes")] &'a [u8]),
    #[serde(rename = "O")]
    RemoveOutbox(u64),
    #[serde(rename = "s")]
    PutSeen(
        &'a str,
        &'a str,
        Millis,
        #[serde(with = "serde_bytes")] &'a [u8],
    ),
    #[serde(rename = "S")]
    PruneSeen(Millis, u64),
    #[serde(rename = "R")]
    DeleteRecordsThrough(u64),
    #[serde(rename = "A")]
    DeleteAccessThrough(u64),
    #[serde(rename = "u")]
    PutUser(&'a str, #[serde(with = "serde_bytes")] &'a [u8]),
    #[serde(rename = "U")]
    RemoveUser(&'a str),
    #[serde(rename = "d")]
    ConfirmRecordsDeletion(Millis),
}

/// One operation of a batch as read back from the log (owned form of
/// [`OpRef`], same encoding).
#[derive(Debug, Deserialize)]
pub(crate) enum Op {
    #[serde(rename = "p")]
    PutProcess(Serial, #[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "P")]
    RemoveProcess(Serial),
    #[serde(rename = "x")]
    PutPrefix(u64, #[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "X")]
    PrunePrefixesBelow(u64),
    #[serde(rename = "r")]
    AppendRecord(Millis, Box<Record>),
    #[serde(rename = "a")]
    AppendAccess(Box<AccessEntry>),
    #[serde(rename = "o")]
    PushOutbox(String, #[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "O")]
    RemoveOutbox(u64),
    #[serde(rename = "s")]
    PutSeen(
        String,
        String,
        Millis,
        #[serde(with = "serde_bytes")] Vec<u8>,
    ),
    #[serde(rename = "S")]
    PruneSeen(Millis, u64),
    #[serde(rename = "R")]
    DeleteRecordsThrough(u64),
    #[serde(rename = "A")]
    DeleteAccessThrough(u64),
    #[serde(rename = "u")]
    PutUser(String, #[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "U")]
    RemoveUser(String),
    #[serde(rename = "d")]
    ConfirmRecordsDeletion(Millis),
}

/// Appends `op` to a batch's payload.
pub(crate) fn encode_op(out: &mut Vec<u8>, op: &OpRef<'_>) -> Result<(), StoreError> {
    ciborium::into_writer(op, out).map_err(|e| StoreError::Encode {
        what: "log operation",
        detail: e.to_string(),
    })
}

/// The payload to log for `raw` (CBOR operations): compressed when that
/// makes it smaller. The bench's entries shrink 10–30×; an entry of
/// encrypted provision bodies much less (docs/performance.md, "Log
/// compression").
pub(crate) fn pack(raw: &[u8]) -> Result<Vec<u8>, StoreError> {
    if raw.len() < PACK_MIN {
        return Ok(raw.to_vec());
    }
    let raw_len = u32::try_from(raw.len()).map_err(|_| StoreError::Encode {
        what: "log entry",
        detail: "larger than 4 GiB".into(),
    })?;
    let mut out =
        vec![0u8; PACKED_HEADER_LEN + lz4_flex::block::get_maximum_output_size(raw.len())];
    out[0] = PACKED;
    out[1..PACKED_HEADER_LEN].copy_from_slice(&raw_len.to_le_bytes());
    let n = lz4_flex::block::compress_into(raw, &mut out[PACKED_HEADER_LEN..]).map_err(|e| {
        StoreError::Encode {
            what: "log entry",
            detail: e.to_string(),
        }
    })?;
    if PACKED_HEADER_LEN + n >= raw.len() {
        return Ok(raw.to_vec());
    }
    out.truncate(PACKED_HEADER_LEN + n);
    Ok(out)
}

/// The CBOR operations of a logged payload ([`pack`]'s inverse).
pub(crate) fn unpack(batch: u64, payload: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    if payload.first() != Some(&PACKED) {
        return Ok(payload);
    }
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "log entry of batch",
        key: batch.to_string(),
        detail,
    };
    let Some(len) = payload.get(1..PACKED_HEADER_LEN) else {
        return Err(corrupt("compressed payload without its length".into()));
    };
    let raw_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let block = &payload[PACKED_HEADER_LEN..];
    // LZ4 expands at most ~255×: a larger length is damage, not data.
    if raw_len > block.len().saturating_mul(255).saturating_add(16) {
        return Err(corrupt(format!(
            "compressed payload of {} bytes claims {raw_len} bytes",
            block.len()
        )));
    }
    let raw = lz4_flex::block::decompress(block, raw_len)
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
    if raw.len() != raw_len {
        return Err(corrupt(format!(
            "decompressed to {} bytes, {raw_len} expected",
            raw.len()
        )));
    }
    Ok(raw)
}

/// The operations of one payload, in order.
pub(crate) fn decode_ops(batch: u64, mut payload: &[u8]) -> Result<Vec<Op>, StoreError> {
    let mut ops = Vec::new();
    while !payload.is_empty() {
        let op: Op = ciborium::from_reader(&mut payload).map_err(|e| StoreError::Corrupt {
            what: "log entry of batch",
            key: batch.to_string(),
            detail: e.to_string(),
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// An entry read back by [`Log::scan`].
#[derive(Debug)]
pub(crate) struct Entry {
    pub batch: u64,
    /// The CBOR operations (decompressed).
    pub payload: Vec<u8>,
    /// Offset just after the entry.
    pub end: u64,
}

/// Where the next logged batch goes, as recorded in redb's `meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    /// Number of the last batch redb holds (0: none yet).
    pub batch: u64,
    /// Offset after that batch's entry: the next entry goes here.
    pub end: u64,
}

/// How a batch will be made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Append as entry `batch` at `at`, then commit redb without sync.
    Logged { batch: u64, at: u64, end: u64 },
    /// Commit redb durably; the next entry goes at `next_end`.
    Checkpoint { next_end: u64 },
}

/// The open redo log of a writer.
pub(crate) struct Log {
    file: Box<dyn StorageBackend>,
    path: Option<PathBuf>,
    options: LogOptions,
    id: u64,
    /// Number of the last batch appended (and committed to redb).
    last_batch: u64,
    /// Where the next entry goes.
    end: u64,
    /// `end` at the last durable redb commit: the live part starts here.
    durable_end: u64,
    since_checkpoint_batches: u64,
    /// A failed append: checkpoint before logging again.
    force_checkpoint: bool,
    stats: LogStats,
}

/// What the redo log wrote since the store opened (bench and status).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Entries appended and synced.
    pub appends: u64,
    /// Their bytes (headers and payloads as written, compressed).
    pub entry_bytes: u64,
    /// Their payloads before compression.
    pub raw_bytes: u64,
    /// Bytes of the pages the appends touched: what their syncs wrote.
    pub page_bytes: u64,
    /// Durable redb commits (checkpoints, boots, replays).
    pub checkpoints: u64,
}

impl core::fmt::Debug for Log {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Log")
            .field("path", &self.path)
            .field("id", &self.id)
            .field("last_batch", &self.last_batch)
            .field("end", &self.end)
            .field("durable_end", &self.durable_end)
            .finish_non_exhaustive()
    }
}

/// Makes the log's storage: a file next to the store, or a caller's
/// backend (fault injection).
pub(crate) enum LogSource {
    Path(PathBuf),
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    Backend(Box<dyn Fn() -> io::Result<Box<dyn StorageBackend>> + Send + Sync>),
}

impl core::fmt::Debug for LogSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LogSource::Path(p) => f.debug_tuple("Path").field(p).finish(),
            LogSource::Backend(_) => f.write_str("Backend"),
        }
    }
}

/// The log file next to a store file: `<store>-log`.
pub fn log_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push("-log");
    PathBuf::from(name)
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Log { op, source }
}

impl Log {
    /// Opens the log of a store whose `meta` names `id` (None: the store
    /// has no log yet, so a new one is created with a fresh id).
    pub(crate) fn open(
        source: &LogSource,
        options: LogOptions,
        id: Option<u64>,
        position: Position,
    ) -> Result<Log, StoreError> {
        let (file, path): (Box<dyn StorageBackend>, Option<PathBuf>) = match source {
            LogSource::Path(p) => {
                if id.is_some() && !p.exists() {
                    return Err(StoreError::LogMissing { path: p.clone() });
                }
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(id.is_none())
                    .truncate(false)
                    .open(p)
                    .map_err(|e| StoreError::LogUnusable {
                        path: p.clone(),
                        detail: "cannot open it".into(),
                        source: Some(e),
                    })?;
                // No readahead: it fills the page cache with large folios,
                // and each append then dirties (and writes) a whole folio
                // instead of one page — 60 KiB to 1 MiB per batch instead
                // of ~5 KiB, measured on ext4 (docs/performance.md).
                // Advice only: without it the log works, writing more.
                let _ = nix::fcntl::posix_fadvise(
                    &f,
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
                );
                (Box::new(LogFile(f)), Some(p.clone()))
            }
            LogSource::Backend(make) => (make().map_err(io_err("open the log"))?, None),
        };
        let shown = || {
            path.clone()
                .unwrap_or_else(|| PathBuf::from("(log backend)"))
        };
        let unusable = |detail: String| StoreError::LogUnusable {
            path: shown(),
            detail,
            source: None,
        };
        let header = match id {
            Some(id) => {
                let header = read_header(file.as_ref()).map_err(unusable)?;
                if header.id != id {
                    return Err(unusable(format!(
                        "it belongs to another store (log id {:016x}, the store's is {id:016x})",
                        header.id
                    )));
                }
                header
            }
            None => {
                create(file.as_ref(), fresh_id(), options.size)
                    .map_err(io_err("create the log"))?;
                if let Some(p) = &path {
                    sync_parent(p).map_err(io_err("sync the store directory"))?;
                }
                tracing::info!(size = options.size, "store: created the redo log");
                read_header(file.as_ref()).map_err(unusable)?
            }
        };
        // The ring keeps the size it was created with.
        let options = LogOptions {
            size: header.size,
            ..options
        };
        let end = position.end.max(HEADER_LEN);
        Ok(Log {
            file,
            path,
            options,
            id: header.id,
            last_batch: position.batch,
            end,
            durable_end: end,
            since_checkpoint_batches: 0,
            force_checkpoint: false,
            stats: LogStats::default(),
        })
    }

    pub(crate) fn stats(&self) -> LogStats {
        self.stats
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Every entry after `position`, in order, up to the first that is not
    /// the next one (torn, stale, foreign or absent).
    pub(crate) fn scan(&self, position: Position) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let mut at = position.end.max(HEADER_LEN);
        let mut expect = position.batch + 1;
        while let Some(entry) = self.read_entry(at, expect)? {
            at = entry.end;
            expect += 1;
            out.push(entry);
        }
        Ok(out)
    }

    fn read_entry(&self, at: u64, expect: u64) -> Result<Option<Entry>, StoreError> {
        if at + ENTRY_HEADER_LEN as u64 > self.options.size {
            return Ok(None);
        }
        let mut head = [0u8; ENTRY_HEADER_LEN];
        self.file
            .read(at, &mut head)
            .map_err(io_err("read the log"))?;
        let field = |range: std::ops::Range<usize>| -> u64 {
            let mut b = [0u8; 8];
            b[..range.len()].copy_from_slice(&head[range]);
            u64::from_le_bytes(b)
        };
        if field(0..4) != u64::from(ENTRY_MAGIC)
            || field(8..16) != self.id
            || field(16..24) != expect
        {
            return Ok(None);
        }
        let len = field(4..8);
        let end = at + ENTRY_HEADER_LEN as u64 + len;
        if end > self.options.size {
            return Ok(None);
        }
        let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.file
            .read(at + ENTRY_HEADER_LEN as u64, &mut payload)
            .map_err(io_err("read the log"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..24]);
        crc.update(&payload);
        if u64::from(crc.finalize()) != field(24..28) {
            return Ok(None);
        }
        Ok(Some(Entry {
            batch: expect,
            payload: unpack(expect, payload)?,
            end,
        }))
    }

    /// How the next batch, whose payload is `len` bytes, becomes durable.
    pub(crate) fn plan(&self, len: usize, force_durable: bool) -> Plan {
        let need = ENTRY_HEADER_LEN as u64 + len as u64;
        let fits = self.end + need <= self.options.size;
        let live = self.end - self.durable_end;
        let due = self.since_checkpoint_batches >= self.options.checkpoint_batches
            || live + need > self.options.checkpoint_bytes;
        if force_durable || self.force_checkpoint || need > self.options.size / 4 || due || !fits {
            let next_end = if fits { self.end } else { HEADER_LEN };
            return Plan::Checkpoint { next_end };
        }
        Plan::Logged {
            batch: self.last_batch + 1,
            at: self.end,
            end: self.end + need,
        }
    }

    /// Writes and syncs entry `batch` at `at` (from [`Log::plan`]);
    /// `payload` is [`pack`]ed, `raw_len` its length before.
    pub(crate) fn append(
        &mut self,
        batch: u64,
        at: u64,
        payload: &[u8],
        raw_len: usize,
    ) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(ENTRY_HEADER_LEN + payload.len());
        buf.extend_from_slice(&ENTRY_MAGIC.to_le_bytes());
        let len = u32::try_from(payload.len()).map_err(|_| StoreError::Encode {
            what: "log entry",
            detail: "larger than 4 GiB".into(),
        })?;
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&self.id.to_le_bytes());
        buf.extend_from_slice(&batch.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&buf);
        crc.update(payload);
        buf.extend_from_slice(&crc.finalize().to_le_bytes());
        buf.extend_from_slice(&[0u8; 4]);
        buf.extend_from_slice(payload);
        let result = self
            .file
            .write(at, &buf)
            .map_err(io_err("write the log"))
            .and_then(|()| self.file.sync_data().map_err(io_err("sync the log")));
        if result.is_err() {
            self.failed(batch, at);
            return result;
        }
        let end = at + buf.len() as u64;
        self.stats.appends += 1;
        self.stats.entry_bytes += buf.len() as u64;
        self.stats.raw_bytes += raw_len as u64;
        self.stats.page_bytes += (end.div_ceil(PAGE) - at / PAGE) * PAGE;
        result
    }

    /// Entry `batch` at `at` may be in the log but redb does not hold it:
    /// its header is zeroed (best effort), so neither a reopen nor a
    /// crash replays a batch whose every frame was refused; its number is
    /// never used again (recovery after the next checkpoint skips it, even
    /// if the zeroing did not reach the disk); the next batch is a
    /// checkpoint.
    pub(crate) fn failed(&mut self, batch: u64, at: u64) {
        let zeroed = self
            .file
            .write(at, &[0u8; ENTRY_HEADER_LEN])
            .and_then(|()| self.file.sync_data());
        if let Err(error) = zeroed {
            tracing::warn!(
                batch,
                %error,
                "store: could not void the log entry of a failed batch; if the box stops \
                 before its next checkpoint, the next start may apply that batch (its frames \
                 were refused, so resends get the first reply)"
            );
        }
        self.last_batch = self.last_batch.max(batch);
        self.force_checkpoint = true;
    }

    /// The batch `batch` ending at `end` was committed to redb.
    pub(crate) fn committed(&mut self, batch: u64, end: u64) {
        self.last_batch = batch;
        self.end = end;
        self.since_checkpoint_batches += 1;
    }

    /// A durable redb commit holds everything so far; the next entry goes
    /// at `next_end`.
    pub(crate) fn checkpointed(&mut self, next_end: u64) {
        self.stats.checkpoints += 1;
        self.end = next_end;
        self.durable_end = next_end;
        self.since_checkpoint_batches = 0;
        self.force_checkpoint = false;
    }

    /// Where the next entry goes, with the last batch number.
    pub(crate) fn position(&self) -> Position {
        Position {
            batch: self.last_batch,
            end: self.end,
        }
    }
}

/// The header of a log file.
struct Header {
    id: u64,
    size: u64,
}

fn read_header(file: &dyn StorageBackend) -> Result<Header, String> {
    let len = file
        .len()
        .map_err(|e| format!("cannot read its size: {e}"))?;
    if len < HEADER_LEN {
        return Err(format!("it is {len} bytes, shorter than its header"));
    }
    let mut head = [0u8; 40];
    file.read(0, &mut head)
        .map_err(|e| format!("cannot read its header: {e}"))?;
    if &head[..16] != FILE_MAGIC {
        return Err("it does not start with the log signature".into());
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (id, size, check) = (word(16), word(24), word(32));
    if check != id ^ size ^ 0x6966_7265_6c61_7921 {
        return Err("its header is damaged".into());
    }
    if size != len {
        return Err(format!("its header says {size} bytes but it is {len}"));
    }
    Ok(Header { id, size })
}

/// Writes the header and zero-fills the ring, then syncs. One page per
/// write: larger writes make the page cache hold the file in large folios,
/// and every later append would dirty a whole one.
fn create(file: &dyn StorageBackend, id: u64, size: u64) -> io::Result<()> {
    file.set_len(0)?;
    let zeros = vec![0u8; 4096];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(zeros.len() as u64);
        file.write(at, &zeros[..usize::try_from(n).unwrap_or(0)])?;
        at += n;
    }
    let mut head = Vec::with_capacity(40);
    head.extend_from_slice(FILE_MAGIC);
    head.extend_from_slice(&id.to_le_bytes());
    head.extend_from_slice(&size.to_le_bytes());
    head.extend_from_slice(&(id ^ size ^ 0x6966_7265_6c61_7921).to_le_bytes());
    file.write(0, &head)?;
    file.sync_data()
}

/// A log id unlikely to repeat: wall clock and process id.
fn fresh_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos.rotate_left(17) ^ u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// A plain file as log storage.
#[derive(Debug)]
struct LogFile(File);

impl StorageBackend for LogFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ops_payload(n: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        for i in 0..n {
            let frame = format!("frame {i} of a batch, with text that repeats");
            encode_op(&mut raw, &OpRef::PushOutbox("core", frame.as_bytes())).unwrap();
            encode_op(&mut raw, &OpRef::RemoveOutbox(i as u64)).unwrap();
        }
        raw
    }

    #[test]
    fn packed_payloads_unpack_to_the_same_operations() {
        let raw = ops_payload(50);
        let packed = pack(&raw).unwrap();
        assert_eq!(packed[0], PACKED);
        assert!(
            packed.len() * 3 < raw.len(),
            "{} of {}",
            packed.len(),
            raw.len()
        );
        assert_eq!(unpack(7, packed).unwrap(), raw);
        assert_eq!(decode_ops(7, &raw).unwrap().len(), 100);
    }

    #[test]
    fn short_or_incompressible_payloads_are_logged_as_they_are() {
        let short = ops_payload(1);
        assert!(short.len() < PACK_MIN);
        assert_eq!(pack(&short).unwrap(), short);
        // Bytes with no repetition: compressing would only add.
        let mut noise = Vec::new();
        let mut x: u32 = 0x1234_5678;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        encode_op(&mut noise, &OpRef::PushOutbox("core", &bytes)).unwrap();
        let logged = pack(&noise).unwrap();
        assert_eq!(logged, noise);
        assert_eq!(unpack(1, logged).unwrap(), noise);
    }

    #[test]
    fn a_packed_payload_is_not_mistaken_for_operations_by_older_firmware() {
        // Firmware before compression decodes payloads with `decode_ops`
        // directly: it must fail (and refuse to start), not read nothing.
        let packed = pack(&ops_payload(50)).unwrap();
        assert!(matches!(
            decode_ops(3, &packed),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_damaged_packed_payload_is_corrupt_not_a_panic() {
        let raw = ops_payload(50);
        let packed = pack(&raw).unwrap();
        let mut huge = packed.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(unpack(1, huge), Err(StoreError::Corrupt { .. })));
        let mut short = packed.clone();
        let len = u32::try_from(raw.len() + 10).unwrap();
        short[1..5].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(unpack(1, short), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            unpack(1, vec![PACKED, 1]),
            Err(StoreError::Corrupt { .. })
        ));
        let mut cut = packed;
        cut.truncate(cut.len() / 2);
        assert!(matches!(unpack(1, cut), Err(StoreError::Corrupt { .. })));
    }
}
