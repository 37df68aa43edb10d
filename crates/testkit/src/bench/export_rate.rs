//! Export rate (issue 9 item 4): records per second of `ifrelay`'s record
//! export (`ifrelay::export::export`, CBOR + CSV + signed manifest, files
//! synced) over a store of many records, against a baseline measured in
//! the same run on the same store: a plain sequential read of the same
//! records through the store's reader (`StoreReader::records`, a page at a
//! time, decoded), which is what any export must at least do.
//!
//! The store is filled directly through the store API (`Store::open`,
//! `begin`, `append_record`, commits of [`FILL_PER_COMMIT`] records), not
//! through flows. Records: [`DEFAULT_RECORDS`], or
//! `IFRELAY_BENCH_EXPORT_RECORDS`; `--quick` uses [`QUICK_RECORDS`]. The
//! store and the export live under the bench folder (`var/bench/export`)
//! and the export folder is removed after the measurement (it is as large
//! as the records).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use ifrelay::export::{export, ExportRequest};
use ifrelay::identity::BoxKey;
use ifrelay_proto::{
    AgencyCode, BusinessCode, InfoNameCode, ItemCode, PermitId, PersonCode, Prefix, Serial,
};
use ifrelay_store::{ReadOnlyStore, Record, RecordFilter, RecordKind, Side, Store};

use super::BenchError;

/// Records of a full run.
pub const DEFAULT_RECORDS: u64 = 1_000_000;
/// Records of `--quick`.
pub const QUICK_RECORDS: u64 = 50_000;
/// Overrides [`DEFAULT_RECORDS`] (not `--quick`).
pub const RECORDS_ENV: &str = "IFRELAY_BENCH_EXPORT_RECORDS";
/// Records per commit while filling.
pub const FILL_PER_COMMIT: u64 = 10_000;
/// Page size of the baseline read, as the export's.
const PAGE: usize = 1024;
/// The target of the issue.
pub const TARGET_RECORDS_PER_S: f64 = 100_000.0;

/// How many records the phase uses.
pub fn records(quick: bool) -> u64 {
    if quick {
        return QUICK_RECORDS;
    }
    std::env::var(RECORDS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_RECORDS)
}

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub struct ExportRate {
    pub records: u64,
    /// Filling the store (not measured).
    pub fill: Duration,
    /// The baseline: reading every record through the reader.
    pub read: Duration,
    /// The export of every record (no access log), files synced.
    pub export: Duration,
    /// Bytes the export wrote (every file).
    pub export_bytes: u64,
}

impl ExportRate {
    pub fn export_records_per_s(&self) -> f64 {
        per_s(self.records, self.export)
    }

    pub fn read_records_per_s(&self) -> f64 {
        per_s(self.records, self.read)
    }

    /// Export rate over read rate (1.0: the export costs no more than
    /// reading).
    pub fn ratio(&self) -> f64 {
        let read = self.read_records_per_s();
        if read > 0.0 {
            self.export_records_per_s() / read
        } else {
            f64::NAN
        }
    }

    /// The report's section.
    pub fn render(&self, o: &mut String) {
        let _ = writeln!(o, "\n-- export rate (issue 9 item 4)");
        let _ = writeln!(
            o,
            "{} records filled through the store API in {:.1} s ({} per commit)",
            self.records,
            self.fill.as_secs_f64(),
            FILL_PER_COMMIT
        );
        let _ = writeln!(
            o,
            "baseline, sequential read through StoreReader: {:.0} records/s ({:.2} s)",
            self.read_records_per_s(),
            self.read.as_secs_f64()
        );
        let _ = writeln!(
            o,
            "export (CBOR + CSV + signed manifest, synced): {:.0} records/s ({:.2} s, {:.1} MiB \
             written); ratio to the read {:.3}; target >= {:.0} records/s",
            self.export_records_per_s(),
            self.export.as_secs_f64(),
            self.export_bytes as f64 / (1024.0 * 1024.0),
            self.ratio(),
            TARGET_RECORDS_PER_S
        );
    }
}

fn per_s(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        f64::NAN
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// A record like the box writes, varied by `n`.
fn record(n: u64) -> Result<Record, BenchError> {
    let mut items = heapless::Vec::new();
    items
        .push(ItemCode::new("ITEM01")?)
        .map_err(|_| "item list full")?;
    Ok(Record {
        kind: if n % 2 == 0 {
            RecordKind::Provision
        } else {
            RecordKind::Query
        },
        side: Side::Requester,
        serial: Serial::new(&format!("131016-20260401-1700000000-{n}"))?,
        prefix: Prefix {
            requester: AgencyCode::new("131016")?,
            business: BusinessCode::new("JM0001")?,
            provider: AgencyCode::new("271004")?,
            info_name: InfoNameCode::new("TK0001")?,
            items,
        },
        code: Some(PersonCode::new(&format!("P{n:011}X"))?),
        permit_id: Some(PermitId::new(&format!("permit-{n}"))?),
        counterpart: Some(AgencyCode::new("271004")?),
        query_requested_at: 1_775_000_000_000 + n as i64,
        provision_at: (n % 2 == 0).then_some(1_775_000_000_500 + n as i64),
        clock_synced: true,
    })
}

/// Fills a store with `records` records, reads them back through the
/// reader, then exports them; see the module header.
///
/// # Errors
/// When the store, the key or the export fails.
pub fn run(dir: &Path, records: u64) -> Result<ExportRate, BenchError> {
    std::fs::create_dir_all(dir)?;
    let store_dir = dir.join("store");
    let path = store_dir.join("ifrelay.redb");
    let (key, _) = BoxKey::load_or_create(&store_dir)?;

    let started = Instant::now();
    let mut store = Store::open(&path, 64 << 20)?;
    let mut n = 0;
    while n < records {
        let mut batch = store.begin()?;
        for _ in 0..FILL_PER_COMMIT.min(records - n) {
            n += 1;
            batch.append_record(1_775_000_000_000 + n as i64, record(n)?)?;
        }
        batch.commit()?;
    }
    let fill = started.elapsed();

    let reader = store.reader();
    let started = Instant::now();
    let mut from = 0;
    let mut read = 0u64;
    loop {
        let page = reader.records(from, PAGE)?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        read += page.len() as u64;
    }
    let read_time = started.elapsed();
    if read != records {
        return Err(format!("read {read} records of {records}").into());
    }
    drop(reader);
    drop(store);

    let out = dir.join("out");
    let read_only = ReadOnlyStore::open(&path)?;
    let started = Instant::now();
    let snapshot = read_only.snapshot()?;
    let summary = export(
        &snapshot,
        &key,
        &ExportRequest {
            out: &out,
            records: Some(RecordFilter::default()),
            access: None,
            recipients: Vec::new(),
            labels: None,
            party: "is/131016".into(),
            agency: "131016".into(),
            name: None,
            now: 1_775_000_000_000,
        },
    )?;
    let export_time = started.elapsed();
    if summary.records != records {
        return Err(format!("exported {} records of {records}", summary.records).into());
    }
    let export_bytes = summary.manifest.files.iter().map(|f| f.bytes).sum::<u64>();
    std::fs::remove_dir_all(&out)?;
    Ok(ExportRate {
        records,
        fill,
        read: read_time,
        export: export_time,
        export_bytes,
    })
}
