//! [`export`]: one export of records and access log from an
//! [`ExportSource`] into a new folder (module header of `export`).

use std::borrow::Cow;
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
                write_row(&mut self.csv, &record_row(r, labels)).map_err(|e| self.csv_error(e))?;
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
                write_row(&mut self.csv, &access_row(a, labels)).map_err(|e| self.csv_error(e))?;
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

fn record_row<'a>(c: &'a ifrelay_store::ChainedRecord, labels: &'a Labels) -> Vec<Cow<'a, str>> {
    let r = &c.record;
    let p = &r.prefix;
    vec![
        c.seq.to_string().into(),
        jst(c.at).into(),
        kind_name(r.kind).into(),
        side_name(r.side).into(),
        r.serial.as_str().into(),
        p.requester.as_str().into(),
        labels.agency(&p.requester).into(),
        p.business.as_str().into(),
        labels.business(&p.business).into(),
        p.provider.as_str().into(),
        labels.agency(&p.provider).into(),
        p.info_name.as_str().into(),
        labels.info_name(&p.info_name).into(),
        p.items
            .iter()
            .map(|i| i.as_str())
            .collect::<Vec<_>>()
            .join(" ")
            .into(),
        p.items
            .iter()
            .map(|i| labels.item(&p.info_name, i))
            .collect::<Vec<_>>()
            .join(" / ")
            .into(),
        r.code.as_ref().map_or("", |c| c.as_str()).into(),
        r.permit_id.as_ref().map_or("", |p| p.as_str()).into(),
        r.counterpart.as_ref().map_or("", |a| a.as_str()).into(),
        r.counterpart
            .as_ref()
            .map_or("", |a| labels.agency(a))
            .into(),
        jst(r.query_requested_at).into(),
        r.provision_at.map(jst).unwrap_or_default().into(),
        if r.clock_synced { "true" } else { "false" }.into(),
        hex(&c.prev_hash).into(),
        hex(&c.hash).into(),
    ]
}

fn access_row<'a>(c: &'a ifrelay_store::ChainedAccess, labels: &'a Labels) -> Vec<Cow<'a, str>> {
    let e = &c.entry;
    let direction = match e.direction {
        ifrelay_store::Direction::In => "in",
        ifrelay_store::Direction::Out => "out",
        ifrelay_store::Direction::Console => "console",
        ifrelay_store::Direction::Connection => "connection",
    };
    let item_labels = match &e.info_name {
        Some(info) => e
            .items
            .iter()
            .map(|i| labels.item(info, i))
            .collect::<Vec<_>>()
            .join(" / "),
        None => String::new(),
    };
    vec![
        c.seq.to_string().into(),
        jst(e.at).into(),
        e.terminal.as_str().into(),
        e.party.as_str().into(),
        e.agency.as_ref().map_or("", |a| a.as_str()).into(),
        e.agency.as_ref().map_or("", |a| labels.agency(a)).into(),
        e.staff.as_deref().unwrap_or("").into(),
        direction.into(),
        e.operation.as_str().into(),
        e.message_id.as_deref().unwrap_or("").into(),
        e.serial.as_ref().map_or("", |s| s.as_str()).into(),
        e.business.as_ref().map_or("", |b| b.as_str()).into(),
        e.business
            .as_ref()
            .map_or("", |b| labels.business(b))
            .into(),
        e.info_name.as_ref().map_or("", |i| i.as_str()).into(),
        e.info_name
            .as_ref()
            .map_or("", |i| labels.info_name(i))
            .into(),
        e.items
            .iter()
            .map(|i| i.as_str())
            .collect::<Vec<_>>()
            .join(" ")
            .into(),
        item_labels.into(),
        e.outcome.as_str().into(),
        hex(&c.prev_hash).into(),
        hex(&c.hash).into(),
    ]
}

/// Writes one CSV row, each cell through [`cell`].
fn write_row(csv: &mut csv::Writer<FileSink>, row: &[Cow<'_, str>]) -> csv::Result<()> {
    for value in row {
        csv.write_field(cell(value).as_bytes())?;
    }
    csv.write_record(None::<&[u8]>)
}

/// A cell as a spreadsheet should show it: text that a spreadsheet would
/// take for a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a leading
/// apostrophe, so opening an export never runs what a peer put into a
/// field. The CBOR file keeps the exact value.
fn cell<'a>(value: &'a Cow<'a, str>) -> Cow<'a, str> {
    match value.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{value}").into(),
        _ => Cow::Borrowed(value.as_ref()),
    }
}

/// `ms` as a JST civil time a spreadsheet reads as a date and time.
pub(super) fn jst(ms: Millis) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t
            .to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(9)))
            .strftime("%Y-%m-%d %H:%M:%S%.3f")
            .to_string(),
        Err(_) => ms.to_string(),
    }
}

/// `ms` as RFC 3339 in UTC.
fn utc(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}
