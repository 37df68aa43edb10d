//! [`export`]: one export of records and access log from an
//! [`ExportSource`] into a new folder (module header of `export`).

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use ifrelay_proto::Millis;
use ifrelay_store::{ChainMark, ChainName, RecordFilter, RecordKind, Side, StoreError};
use sha2::{Digest, Sha256};

use super::labels::Labels;
use super::manifest::{
    BoxIdentity, ChainAnchors, ChainEntry, Encryption, FileEntry, LabelSource, Manifest,
    RecordSelection, Selection, TimeSelection,
};
use super::sink::FileSink;
use super::source::ExportSource;
use super::{
    ACCESS_CBOR, ACCESS_CSV, FORMAT, FORMAT_VERSION, MANIFEST_FILE, RECORDS_CBOR, RECORDS_CSV,
    SIGNATURE_FILE, SIGNING_CONTEXT,
};
use crate::identity::{hex, BoxKey};

/// Rows read from the store per page: bounds the memory of an export.
const PAGE_ROWS: usize = 1024;
/// Buffer in front of each file's hashing and encryption.
const WRITE_BUFFER: usize = 256 * 1024;
/// UTF-8 byte-order mark: tells a spreadsheet on a Japanese-language PC
/// that the CSV is UTF-8 rather than Shift_JIS.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Which access-log entries to export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessSelection {
    pub since: Option<Millis>,
    pub until: Option<Millis>,
}

/// What to export, where, for whom.
#[derive(Debug)]
pub struct ExportRequest<'a> {
    /// The target folder: created if missing, refused unless empty.
    pub out: &'a Path,
    /// Records matching this filter (the default filter: all); `None`:
    /// no records.
    pub records: Option<RecordFilter>,
    /// Access-log entries in this range; `None`: no access log.
    pub access: Option<AccessSelection>,
    /// Auditors to encrypt every data file to; none: files in clear.
    pub recipients: Vec<age::x25519::Recipient>,
    /// Labels of master codes for the CSV files, and the distribution
    /// version they come from.
    pub labels: Option<(u64, Labels)>,
    /// The box: party, agency, name.
    pub party: String,
    pub agency: String,
    pub name: Option<String>,
    /// Box time of the export.
    pub now: Millis,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub manifest: Manifest,
    pub records: u64,
    pub access_entries: u64,
}

/// Why an export failed. The target folder then holds no signature (it
/// is written last), so it never passes for an export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The target exists and is not an empty folder: an export never
    /// writes into or over anything.
    #[error(
        "export: {path} is not empty; an export never overwrites anything: name a new or empty folder"
    )]
    TargetNotEmpty { path: PathBuf },
    /// The target exists and is not a folder.
    #[error("export: {path} is not a folder: name a new or empty folder")]
    TargetNotAFolder { path: PathBuf },
    /// The target folder cannot be created or read.
    #[error("export: cannot create or read the folder {path}")]
    Target {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file of the export cannot be written.
    #[error(
        "export: cannot write {path}; the folder holds an unfinished export without a signature"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the store failed.
    #[error("export: reading the store failed")]
    Store(#[source] StoreError),
    /// Not an age X25519 recipient.
    #[error("export: {recipient:?} is not an age recipient (age1…): {why}")]
    BadRecipient {
        recipient: String,
        why: &'static str,
    },
    /// The age encryptor refused the recipients.
    #[error("export: cannot encrypt to the recipients given: {detail}")]
    Encrypt { detail: String },
}

/// Parses an auditor's age recipient (`age1…`).
///
/// # Errors
/// [`ExportError::BadRecipient`].
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, ExportError> {
    s.trim().parse().map_err(|why| ExportError::BadRecipient {
        recipient: s.to_owned(),
        why,
    })
}

/// Exports from `source` into `request.out`, signing the manifest with
/// `key`. Streams: memory stays bounded by a page of rows whatever the
/// store holds.
///
/// # Errors
/// [`ExportError`]: a refused or unwritable target, a store read error,
/// a refused recipient.
pub fn export(
    source: &dyn ExportSource,
    key: &BoxKey,
    request: &ExportRequest<'_>,
) -> Result<ExportSummary, ExportError> {
    prepare_target(request.out)?;
    let mut files = Vec::new();
    let mut chains = Vec::new();
    let empty = Labels::default();
    let labels = request.labels.as_ref().map_or(&empty, |(_, l)| l);
    let mut records = 0;
    let mut access_entries = 0;
    if let Some(filter) = &request.records {
        let out = Exporter::new(request, ChainName::Records, RECORDS_CBOR, RECORDS_CSV)?;
        let (anchors, written) = out.records(source, filter, labels, &mut files)?;
        chains.push(anchors);
        records = written;
    }
    if let Some(range) = &request.access {
        let out = Exporter::new(request, ChainName::AccessLog, ACCESS_CBOR, ACCESS_CSV)?;
        let (anchors, written) = out.access(source, *range, labels, &mut files)?;
        chains.push(anchors);
        access_entries = written;
    }
    let public_key = key.public_key();
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        created_at: utc(request.now),
        created_at_ms: request.now,
        made_by: BoxIdentity {
            party: request.party.clone(),
            agency: request.agency.clone(),
            name: request.name.clone(),
            public_key: hex(&public_key),
            fingerprint: crate::identity::fingerprint(&public_key),
        },
        selection: Selection {
            records: request.records.as_ref().map(record_selection),
            access_log: request.access.map(|a| TimeSelection {
                all: a.since.is_none() && a.until.is_none(),
                since_ms: a.since,
                until_ms: a.until,
            }),
        },
        labels: request.labels.as_ref().map(|(version, _)| LabelSource {
            distribution_version: *version,
        }),
        encryption: (!request.recipients.is_empty()).then(|| Encryption {
            format: "age".to_owned(),
            recipients: request.recipients.iter().map(ToString::to_string).collect(),
        }),
        files,
        chains,
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| ExportError::Write {
        path: request.out.join(MANIFEST_FILE),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    write_new(&request.out.join(MANIFEST_FILE), &bytes)?;
    let signature = key.sign(SIGNING_CONTEXT, &bytes);
    write_new(&request.out.join(SIGNATURE_FILE), &signature)?;
    sync_dir(request.out)?;
    Ok(ExportSummary {
        manifest,
        records,
        access_entries,
    })
}

/// Creates the target folder, or accepts an existing empty one.
fn prepare_target(out: &Path) -> Result<(), ExportError> {
    let target = |source| ExportError::Target {
        path: out.to_owned(),
        source,
    };
    match fs::create_dir(out) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(target(e)),
    }
    let meta = fs::metadata(out).map_err(target)?;
    if !meta.is_dir() {
        return Err(ExportError::TargetNotAFolder {
            path: out.to_owned(),
        });
    }
    if fs::read_dir(out).map_err(target)?.next().is_some() {
        return Err(ExportError::TargetNotEmpty {
            path: out.to_owned(),
        });
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|source| ExportError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Syncs the folder's entries, so the export survives pulling the stick.
fn sync_dir(dir: &Path) -> Result<(), ExportError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ExportError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// The two files of one chain being written.
struct Exporter {
    chain: ChainName,
    cbor: BufWriter<FileSink>,
    csv: csv::Writer<FileSink>,
    cbor_path: PathBuf,
    csv_path: PathBuf,
    cbor_name: &'static str,
}

impl Exporter {
    fn new(
        request: &ExportRequest<'_>,
        chain: ChainName,
        cbor_name: &'static str,
        csv_name: &'static str,
    ) -> Result<Exporter, ExportError> {
        let (cbor_contents, csv_contents) = match chain {
            ChainName::Records => ("records-cbor", "records-csv"),
            ChainName::AccessLog => ("access-log-cbor", "access-log-csv"),
        };
        let cbor = open(request, cbor_name, cbor_contents)?;
        let mut csv_sink = open(request, csv_name, csv_contents)?;
        let csv_path = csv_sink.path().to_owned();
        csv_sink
            .write_all(UTF8_BOM)
            .map_err(|source| ExportError::Write {
                path: csv_path.clone(),
                source,
            })?;
        let csv = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .buffer_capacity(WRITE_BUFFER)
            .from_writer(csv_sink);
        Ok(Exporter {
            chain,
            cbor_path: cbor.path().to_owned(),
            cbor: BufWriter::with_capacity(WRITE_BUFFER, cbor),
            csv,
            csv_path,
            cbor_name,
        })
    }

    fn cbor_error(&self, source: io::Error) -> ExportError {
        ExportError::Write {
            path: self.cbor_path.clone(),
            source,
        }
    }

    fn csv_error(&self, e: csv::Error) -> ExportError {
        ExportError::Write {
            path: self.csv_path.clone(),
            source: io::Error::other(e),
        }
    }

    fn entry(&mut self, entry: &ChainEntry) -> Result<(), ExportError> {
        ciborium::into_writer(entry, &mut self.cbor).map_err(|e| match e {
            ciborium::ser::Error::Io(source) => self.cbor_error(source),
            ciborium::ser::Error::Value(v) => self.cbor_error(io::Error::other(v)),
        })
    }

    fn records(
        mut self,
        source: &dyn ExportSource,
        filter: &RecordFilter,
        labels: &Labels,
        files: &mut Vec<FileEntry>,
    ) -> Result<(ChainAnchors, u64), ExportError> {
        self.csv
            .write_record(RECORD_COLUMNS)
            .map_err(|e| self.csv_error(e))?;
        let mark = source
            .chain_mark(ChainName::Records)
            .map_err(ExportError::Store)?;
        let mut span = Span::default();
        let mut page = filter.clone();
        loop {
            let (rows, next) = source
                .records(&page, PAGE_ROWS)
                .map_err(ExportError::Store)?;
            for raw in rows {
                let r = &raw.record;
                span.see(r.seq, r.prev_hash, r.hash);
                write_record_row(&mut self.csv, r, labels).map_err(|e| self.csv_error(e))?;
                self.entry(&ChainEntry {
                    seq: r.seq,
                    prev_hash: r.prev_hash,
                    hash: r.hash,
                    body: raw.body,
                })?;
            }
            match next {
                Some(from) => page.from_seq = from,
                None => break,
            }
        }
        let all = *filter == RecordFilter::default();
        self.finish(span, mark, all, files)
    }

    fn access(
        mut self,
        source: &dyn ExportSource,
        range: AccessSelection,
        labels: &Labels,
        files: &mut Vec<FileEntry>,
    ) -> Result<(ChainAnchors, u64), ExportError> {
        self.csv
            .write_record(ACCESS_COLUMNS)
            .map_err(|e| self.csv_error(e))?;
        let mark = source
            .chain_mark(ChainName::AccessLog)
            .map_err(ExportError::Store)?;
        let mut span = Span::default();
        let mut from = 0;
        loop {
            let (rows, next) = source
                .access_log(from, range.since, range.until, PAGE_ROWS)
                .map_err(ExportError::Store)?;
            for raw in rows {
                let a = &raw.entry;
                span.see(a.seq, a.prev_hash, a.hash);
                write_access_row(&mut self.csv, a, labels).map_err(|e| self.csv_error(e))?;
                self.entry(&ChainEntry {
                    seq: a.seq,
                    prev_hash: a.prev_hash,
                    hash: a.hash,
                    body: raw.body,
                })?;
            }
            match next {
                Some(seq) => from = seq,
                None => break,
            }
        }
        let all = range == AccessSelection::default();
        self.finish(span, mark, all, files)
    }

    fn finish(
        self,
        span: Span,
        mark: ChainMark,
        all: bool,
        files: &mut Vec<FileEntry>,
    ) -> Result<(ChainAnchors, u64), ExportError> {
        let cbor_path = self.cbor_path.clone();
        let csv_path = self.csv_path.clone();
        let cbor = self
            .cbor
            .into_inner()
            .map_err(|e| ExportError::Write {
                path: cbor_path.clone(),
                source: e.into_error(),
            })?
            .finish()
            .map_err(|source| ExportError::Write {
                path: cbor_path,
                source,
            })?;
        let csv = self
            .csv
            .into_inner()
            .map_err(|e| ExportError::Write {
                path: csv_path.clone(),
                source: io::Error::other(e.to_string()),
            })?
            .finish()
            .map_err(|source| ExportError::Write {
                path: csv_path,
                source,
            })?;
        files.push(cbor);
        files.push(csv);
        let anchors = ChainAnchors {
            chain: self.chain.key().to_owned(),
            file: self.cbor_name.to_owned(),
            entries: span.count,
            contiguous: all,
            first_seq: span.first.map(|(seq, _, _)| seq),
            first_prev_hash: span.first.map(|(_, prev, _)| hex(&prev)),
            first_hash: span.first.map(|(_, _, hash)| hex(&hash)),
            last_seq: span.last.map(|(seq, _)| seq),
            last_hash: span.last.map(|(_, hash)| hex(&hash)),
            store_anchor_seq: mark.anchor_seq,
            store_anchor_hash: hex(&mark.anchor_hash),
            store_head_seq: mark.head_seq,
            store_head_hash: hex(&mark.head_hash),
        };
        Ok((anchors, span.count))
    }
}

fn open(
    request: &ExportRequest<'_>,
    name: &str,
    contents: &'static str,
) -> Result<FileSink, ExportError> {
    let encryptor = if request.recipients.is_empty() {
        None
    } else {
        let recipients = request.recipients.iter().map(|r| r as &dyn age::Recipient);
        Some(
            age::Encryptor::with_recipients(recipients).map_err(|e| ExportError::Encrypt {
                detail: e.to_string(),
            })?,
        )
    };
    FileSink::create(request.out, name, contents, encryptor).map_err(|source| ExportError::Write {
        path: request.out.join(name),
        source,
    })
}

/// The first and last entry exported, and how many.
#[derive(Default)]
struct Span {
    first: Option<(u64, [u8; 32], [u8; 32])>,
    last: Option<(u64, [u8; 32])>,
    count: u64,
}

impl Span {
    fn see(&mut self, seq: u64, prev: [u8; 32], hash: [u8; 32]) {
        if self.first.is_none() {
            self.first = Some((seq, prev, hash));
        }
        self.last = Some((seq, hash));
        self.count += 1;
    }
}

fn record_selection(f: &RecordFilter) -> RecordSelection {
    RecordSelection {
        all: *f == RecordFilter::default(),
        since_ms: f.since,
        until_ms: f.until,
        serial: f.serial.as_ref().map(|s| s.as_str().to_owned()),
        requester: f.requester.as_ref().map(ToString::to_string),
        provider: f.provider.as_ref().map(ToString::to_string),
        business: f.business.as_ref().map(ToString::to_string),
        info_name: f.info_name.as_ref().map(ToString::to_string),
        item: f.item.as_ref().map(ToString::to_string),
        code_sha256: f
            .code
            .as_ref()
            .map(|c| hex(&Sha256::digest(c.as_str().as_bytes()))),
        kind: f.kind.map(|k| kind_name(k).to_owned()),
        side: f.side.map(|s| side_name(s).to_owned()),
    }
}

/// Columns of `records.csv` (docs/export.md).
pub(super) const RECORD_COLUMNS: &[&str] = &[
    "seq",
    "appended_at_jst",
    "kind",
    "side",
    "serial",
    "requester_code",
    "requester_label",
    "business_code",
    "business_label",
    "provider_code",
    "provider_label",
    "info_name_code",
    "info_name_label",
    "item_codes",
    "item_labels",
    "person_code",
    "permit_id",
    "counterpart_code",
    "counterpart_label",
    "query_requested_at_jst",
    "provision_at_jst",
    "clock_synced",
    "prev_hash",
    "hash",
];

/// Columns of `access-log.csv` (docs/export.md).
pub(super) const ACCESS_COLUMNS: &[&str] = &[
    "seq",
    "at_jst",
    "terminal",
    "party",
    "agency_code",
    "agency_label",
    "staff",
    "direction",
    "operation",
    "message_id",
    "serial",
    "business_code",
    "business_label",
    "info_name_code",
    "info_name_label",
    "item_codes",
    "item_labels",
    "outcome",
    "prev_hash",
    "hash",
];

fn kind_name(k: RecordKind) -> &'static str {
    match k {
        RecordKind::Query => "query",
        RecordKind::Provision => "provision",
    }
}

fn side_name(s: Side) -> &'static str {
    match s {
        Side::Requester => "requester",
        Side::Provider => "provider",
    }
}

/// One CSV row being written: each cell goes straight to the writer, so
/// a row costs no allocation beyond the rare neutralised formula.
struct Row<'w> {
    csv: &'w mut csv::Writer<FileSink>,
}

impl Row<'_> {
    /// Text as a spreadsheet should show it: text that a spreadsheet
    /// would take for a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a
    /// leading apostrophe, so opening an export never runs what a peer put
    /// into a field. The CBOR file keeps the exact value.
    fn text(&mut self, value: &str) -> csv::Result<()> {
        match value.as_bytes().first() {
            Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => {
                self.csv.write_field(format!("'{value}"))
            }
            _ => self.csv.write_field(value),
        }
    }

    fn opt(&mut self, value: Option<&str>) -> csv::Result<()> {
        self.text(value.unwrap_or(""))
    }

    fn number(&mut self, n: u64) -> csv::Result<()> {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = n;
        loop {
            at -= 1;
            // n % 10 < 10: the cast is exact.
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.csv.write_field(&digits[at..])
    }

    fn time(&mut self, ms: Option<Millis>) -> csv::Result<()> {
        match ms {
            Some(ms) => match jst_bytes(ms) {
                Some(bytes) => self.csv.write_field(bytes),
                None => self.csv.write_field(ms.to_string()),
            },
            None => self.csv.write_field(""),
        }
    }

    fn hash(&mut self, hash: &[u8; 32]) -> csv::Result<()> {
        self.csv.write_field(hex_bytes(hash))
    }

    /// Several values in one cell, separated by `sep`.
    fn joined<'a>(&mut self, values: impl Iterator<Item = &'a str>, sep: &str) -> csv::Result<()> {
        let mut cell = String::new();
        for (i, value) in values.enumerate() {
            if i > 0 {
                cell.push_str(sep);
            }
            cell.push_str(value);
        }
        self.text(&cell)
    }

    fn end(self) -> csv::Result<()> {
        self.csv.write_record(None::<&[u8]>)
    }
}

/// Writes the row of one record ([`RECORD_COLUMNS`]).
fn write_record_row(
    csv: &mut csv::Writer<FileSink>,
    c: &ifrelay_store::ChainedRecord,
    labels: &Labels,
) -> csv::Result<()> {
    let r = &c.record;
    let p = &r.prefix;
    let mut row = Row { csv };
    row.number(c.seq)?;
    row.time(Some(c.at))?;
    row.text(kind_name(r.kind))?;
    row.text(side_name(r.side))?;
    row.text(r.serial.as_str())?;
    row.text(p.requester.as_str())?;
    row.text(labels.agency(&p.requester))?;
    row.text(p.business.as_str())?;
    row.text(labels.business(&p.business))?;
    row.text(p.provider.as_str())?;
    row.text(labels.agency(&p.provider))?;
    row.text(p.info_name.as_str())?;
    row.text(labels.info_name(&p.info_name))?;
    row.joined(p.items.iter().map(|i| i.as_str()), " ")?;
    row.joined(p.items.iter().map(|i| labels.item(&p.info_name, i)), " / ")?;
    row.opt(r.code.as_ref().map(|c| c.as_str()))?;
    row.opt(r.permit_id.as_ref().map(|p| p.as_str()))?;
    row.opt(r.counterpart.as_ref().map(|a| a.as_str()))?;
    row.opt(r.counterpart.as_ref().map(|a| labels.agency(a)))?;
    row.time(Some(r.query_requested_at))?;
    row.time(r.provision_at)?;
    row.text(if r.clock_synced { "true" } else { "false" })?;
    row.hash(&c.prev_hash)?;
    row.hash(&c.hash)?;
    row.end()
}

/// Writes the row of one access-log entry ([`ACCESS_COLUMNS`]).
fn write_access_row(
    csv: &mut csv::Writer<FileSink>,
    c: &ifrelay_store::ChainedAccess,
    labels: &Labels,
) -> csv::Result<()> {
    let e = &c.entry;
    let direction = match e.direction {
        ifrelay_store::Direction::In => "in",
        ifrelay_store::Direction::Out => "out",
        ifrelay_store::Direction::Console => "console",
        ifrelay_store::Direction::Connection => "connection",
    };
    let mut row = Row { csv };
    row.number(c.seq)?;
    row.time(Some(e.at))?;
    row.text(&e.terminal)?;
    row.text(&e.party)?;
    row.opt(e.agency.as_ref().map(|a| a.as_str()))?;
    row.opt(e.agency.as_ref().map(|a| labels.agency(a)))?;
    row.opt(e.staff.as_deref())?;
    row.text(direction)?;
    row.text(&e.operation)?;
    row.opt(e.message_id.as_deref())?;
    row.opt(e.serial.as_ref().map(|s| s.as_str()))?;
    row.opt(e.business.as_ref().map(|b| b.as_str()))?;
    row.opt(e.business.as_ref().map(|b| labels.business(b)))?;
    row.opt(e.info_name.as_ref().map(|i| i.as_str()))?;
    row.opt(e.info_name.as_ref().map(|i| labels.info_name(i)))?;
    row.joined(e.items.iter().map(|i| i.as_str()), " ")?;
    match &e.info_name {
        Some(info) => row.joined(e.items.iter().map(|i| labels.item(info, i)), " / ")?,
        None => row.text("")?,
    }
    row.text(&e.outcome)?;
    row.hash(&c.prev_hash)?;
    row.hash(&c.hash)?;
    row.end()
}

/// Lowercase hex of a hash, without going through the formatter.
fn hex_bytes(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// `ms` as JST civil time, `YYYY-MM-DD hh:mm:ss.mmm`, which a spreadsheet
/// reads as a date and time; `None` outside years 0..=9999. Plain
/// arithmetic (Japan has one fixed offset, +09:00, and no daylight saving
/// time): three times per record, so no formatter.
fn jst_bytes(ms: Millis) -> Option<[u8; 23]> {
    const JST_OFFSET_MS: i64 = 9 * 3_600_000;
    const DAY_MS: i64 = 86_400_000;
    let local = ms.checked_add(JST_OFFSET_MS)?;
    let days = local.div_euclid(DAY_MS);
    let of_day = local.rem_euclid(DAY_MS);
    // Days since 1970-01-01 to a civil date (H. Hinnant, "chrono-compatible
    // low-level date algorithms").
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era
        .checked_mul(400)?
        .checked_add(yoe + i64::from(month <= 2))?;
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00 00:00:00.000";
    let mut put = |at: usize, width: usize, mut value: i64| {
        for i in (0..width).rev() {
            // 0 <= value % 10 < 10: the cast is exact.
            out[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3_600_000);
    put(14, 2, of_day / 60_000 % 60);
    put(17, 2, of_day / 1000 % 60);
    put(20, 3, of_day % 1000);
    Some(out)
}

/// `ms` as RFC 3339 in UTC.
fn utc(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jst_bytes_agree_with_jiff() {
        let jst = jiff::tz::TimeZone::fixed(jiff::tz::offset(9));
        for ms in [
            0,
            -1,
            1_700_000_000_001,
            951_782_400_000,
            1_709_164_799_999,
            253_402_207_200_000,
            -62_167_251_600_000,
        ] {
            let want = jiff::Timestamp::from_millisecond(ms)
                .expect("in range")
                .to_zoned(jst.clone())
                .strftime("%Y-%m-%d %H:%M:%S%.3f")
                .to_string();
            let got = jst_bytes(ms).expect("in range");
            assert_eq!(std::str::from_utf8(&got).expect("ascii"), want, "{ms}");
        }
        assert_eq!(
            jst_bytes(253_402_268_399_999).as_ref().map(|b| &b[..]),
            Some(&b"9999-12-31 23:59:59.999"[..])
        );
        assert_eq!(jst_bytes(253_402_268_400_000), None);
        assert_eq!(jst_bytes(-62_167_251_600_001), None);
        assert_eq!(jst_bytes(i64::MAX), None);
        assert_eq!(jst_bytes(i64::MIN), None);
    }

    #[test]
    fn hex_bytes_is_lowercase_hex() {
        let mut hash = [0u8; 32];
        hash[0] = 0xab;
        hash[31] = 0x0f;
        assert_eq!(&hex_bytes(&hash)[..], hex(&hash).as_bytes());
    }
}
