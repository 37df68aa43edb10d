//! Record search at scale (issue 9 items 3 and 6): a store of millions of
//! records, filled directly through the store API
//! ([`Store::fill_records_for_test`]: chain rows only, the chain table
//! opened once per commit of [`FILL_PER_COMMIT`] records; then
//! [`Store::index_records_sorted_for_test`]: every index written in key
//! order), then random lookups by serial and by person code through the
//! indexes, and a filter scan over a sample for the baseline the indexes
//! replace.
//!
//! The filled store is kept between runs in its own folder (outside the
//! bench work folder, which every run empties), with a marker file naming
//! the record count and layout; a run reuses it when the marker and the
//! stored count match, and fills it afresh otherwise. Records are a
//! deterministic function of their number, so a reused store holds
//! exactly what a fresh fill would.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ifrelay_proto::{
    AgencyCode, BusinessCode, InfoNameCode, ItemCode, Millis, PermitId, PersonCode, Prefix, Serial,
};
use ifrelay_store::{PageCursor, Record, RecordFilter, RecordKind, Side, Store};

use super::BenchError;
use crate::stats::{ms, summarize, Summary};

/// Records per durable commit while filling.
pub const FILL_PER_COMMIT: usize = 10_000;
/// Index rows per durable commit while writing them in key order.
const INDEX_ROWS_PER_COMMIT: usize = 1_000_000;
/// Records in the full run unless `IFRELAY_BENCH_RECORDS` says
/// otherwise (issue 9: 10,000,000; the first fill takes ~5 minutes and
/// 6 GiB under `var/bench-records`, later runs reuse it).
pub const FULL_RECORDS: u64 = 10_000_000;
/// Records in a `--quick` run.
pub const QUICK_RECORDS: u64 = 20_000;
/// Page cache while filling and searching.
const CACHE_BYTES: usize = 1 << 30;
/// Time between two records' appends: ten records a second.
const STEP_MS: Millis = 100;
/// The first record's time (2026-01-01T00:00:00Z).
const T0: Millis = 1_767_225_600_000;
/// Records per person code, on average.
const RECORDS_PER_CODE: u64 = 4;
/// Bumped when what a record number maps to changes, so an old kept store
/// is filled afresh.
const LAYOUT: u32 = 1;

/// What to run.
#[derive(Debug, Clone)]
pub struct RecordsOptions {
    /// Where the filled store is kept between runs.
    pub dir: PathBuf,
    pub records: u64,
    /// Random lookups per kind.
    pub lookups: usize,
    /// Records the baseline filter scan reads.
    pub scan_sample: u64,
}

impl RecordsOptions {
    /// The full run: [`FULL_RECORDS`] (or `IFRELAY_BENCH_RECORDS`), kept
    /// in `var/bench-records`.
    pub fn full() -> Self {
        RecordsOptions {
            dir: PathBuf::from("var/bench-records"),
            records: records_from_env().unwrap_or(FULL_RECORDS),
            lookups: 1_000,
            scan_sample: 100_000,
        }
    }

    /// A `--quick` run in `dir` (emptied with the work folder).
    pub fn quick(dir: &Path) -> Self {
        RecordsOptions {
            dir: dir.to_owned(),
            records: QUICK_RECORDS,
            lookups: 200,
            scan_sample: QUICK_RECORDS,
        }
    }
}

fn records_from_env() -> Option<u64> {
    std::env::var("IFRELAY_BENCH_RECORDS")
        .ok()?
        .replace('_', "")
        .parse()
        .ok()
}

/// What the phase measured.
#[derive(Debug, Clone)]
pub struct RecordsRun {
    pub records: u64,
    /// The fill, when this run filled the store (`None`: reused).
    pub fill: Option<Duration>,
    pub file_mib: f64,
    pub serial: Option<Summary>,
    pub code: Option<Summary>,
    /// One hour of records, first page of 100.
    pub time_range: Option<Summary>,
    /// A code lookup by filter scan over [`Self::scan_sample`] records.
    pub scan: Duration,
    pub scan_sample: u64,
}

impl RecordsRun {
    /// p99 over the serial and code lookups together, in ms.
    pub fn search_p99_ms(&self) -> Option<f64> {
        let serial = self.serial.as_ref()?.p99;
        let code = self.code.as_ref()?.p99;
        Some(serial.max(code).as_secs_f64() * 1000.0)
    }

    /// The filter scan a lookup cost before the indexes, extrapolated
    /// from the sample to every stored record, in ms.
    pub fn scan_estimate_ms(&self) -> f64 {
        let per_record = self.scan.as_secs_f64() / self.scan_sample.max(1) as f64;
        per_record * self.records as f64 * 1000.0
    }

    /// How many times faster an indexed lookup (p99) is than that scan.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.scan_estimate_ms() / self.search_p99_ms()?)
    }
}

fn serial(n: u64) -> Result<Serial, BenchError> {
    Ok(Serial::new(&format!("131016-20260101-1-{n}"))?)
}

/// A well-mixed number from `n` (splitmix64), so codes and prefixes do not
/// follow the record order.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn code_of(n: u64, records: u64) -> Result<PersonCode, BenchError> {
    let codes = (records / RECORDS_PER_CODE).max(1);
    Ok(PersonCode::new(&format!("P{:012}", mix(n) % codes))?)
}

/// Record number `n` (from 0) of a store of `records`, with its time.
pub(super) fn record(n: u64, records: u64) -> Result<(Millis, Record), BenchError> {
    let m = mix(n ^ 0x5555);
    let agency = |k: u64| AgencyCode::new(&format!("{:06}", 100_000 + k % 50));
    let mut prefix = Prefix {
        requester: agency(m)?,
        business: BusinessCode::new(&format!("JM{:04}", (m >> 8) % 20))?,
        provider: agency(m >> 16)?,
        info_name: InfoNameCode::new(&format!("TK{:04}", (m >> 24) % 100))?,
        items: Default::default(),
    };
    for i in 0..1 + (m >> 32) % 3 {
        let item = ItemCode::new(&format!("IT{:04}", ((m >> 40) + i * 7) % 200))?;
        prefix
            .items
            .push(item)
            .map_err(|_| "more items than a prefix holds")?;
    }
    let at = T0 + i64::try_from(n)? * STEP_MS;
    Ok((
        at,
        Record {
            kind: if n % 2 == 0 {
                RecordKind::Query
            } else {
                RecordKind::Provision
            },
            side: Side::Requester,
            serial: serial(n / 2)?,
            prefix,
            code: Some(code_of(n, records)?),
            permit_id: Some(PermitId::new(&format!("permit-{}", n / 2))?),
            counterpart: None,
            query_requested_at: at,
            provision_at: (n % 2 == 1).then_some(at),
            clock_synced: true,
        },
    ))
}

fn marker(records: u64) -> String {
    format!(
        "records={records} layout={LAYOUT} schema={}\n",
        ifrelay_store::tables::SCHEMA_VERSION
    )
}

fn progress(text: &str) {
    super::progress(text);
}

/// Fills (or reuses) the store and measures.
///
/// # Errors
/// When the store cannot be created, filled or read.
pub fn run(opts: &RecordsOptions) -> Result<RecordsRun, BenchError> {
    std::fs::create_dir_all(&opts.dir)?;
    let path = opts.dir.join("records.redb");
    let marker_path = opts.dir.join("records.meta");
    let wanted = marker(opts.records);
    let kept = std::fs::read_to_string(&marker_path).ok() == Some(wanted.clone()) && path.exists();
    let mut fill = None;
    let mut store = if kept {
        let store = Store::open_shared(&path, CACHE_BYTES)?;
        if store.reader().record_count()? == opts.records {
            progress(&format!(
                "records: reusing the store of {} records in {}",
                opts.records,
                opts.dir.display()
            ));
            Some(store)
        } else {
            None
        }
    } else {
        None
    };
    if store.is_none() {
        let _ = std::fs::remove_file(&marker_path);
        let _ = std::fs::remove_file(&path);
        progress(&format!(
            "records: filling a store with {} records ({} per commit) in {}",
            opts.records,
            FILL_PER_COMMIT,
            opts.dir.display()
        ));
        let mut fresh = Store::open_shared(&path, CACHE_BYTES)?;
        let started = Instant::now();
        let mut next = 0u64;
        while next < opts.records {
            let end = (next + 100_000).min(opts.records);
            let chunk = (next..end)
                .map(|n| record(n, opts.records))
                .collect::<Result<Vec<_>, _>>()?;
            fresh.fill_records_for_test(chunk, FILL_PER_COMMIT)?;
            next = end;
            if next % 1_000_000 == 0 || next == opts.records {
                progress(&format!(
                    "records: {next} filled after {:.0} s",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        progress(&format!(
            "records: {next} filled after {:.0} s; writing their index rows in key order",
            started.elapsed().as_secs_f64()
        ));
        fresh.index_records_sorted_for_test(INDEX_ROWS_PER_COMMIT)?;
        fill = Some(started.elapsed());
        // Gigabytes of dirty pages would otherwise be written back under
        // the lookups (p99 ×100 in the first 10,000,000 run).
        super::flush_dirty("after the records fill");
        std::fs::write(&marker_path, &wanted)?;
        store = Some(fresh);
    }
    let store = store.ok_or("invariant: the store was opened or filled")?;
    let reader = store.reader();
    let file_mib = std::fs::metadata(&path)?.len() as f64 / (1024.0 * 1024.0);

    progress(&format!(
        "records: {} random lookups by serial and by person code",
        opts.lookups
    ));
    let mut serial_times = Vec::with_capacity(opts.lookups);
    let mut code_times = Vec::with_capacity(opts.lookups);
    let mut range_times = Vec::with_capacity(opts.lookups);
    let pairs = (opts.records / 2).max(1);
    for i in 0..opts.lookups as u64 {
        let wanted_serial = serial(mix(i) % pairs)?;
        let filter = RecordFilter {
            serial: Some(wanted_serial.clone()),
            ..RecordFilter::default()
        };
        let started = Instant::now();
        let found = reader.search_records(&filter, 10)?;
        serial_times.push(started.elapsed());
        if found.is_empty() || found.iter().any(|r| r.record.serial != wanted_serial) {
            return Err(format!("serial lookup of {wanted_serial} found {}", found.len()).into());
        }

        let n = mix(i ^ 0xc0de) % opts.records;
        let code = code_of(n, opts.records)?;
        let filter = RecordFilter {
            code: Some(code.clone()),
            ..RecordFilter::default()
        };
        let started = Instant::now();
        let (found, _) = reader.search_records_page(&filter, PageCursor::START, 100)?;
        code_times.push(started.elapsed());
        if !found.iter().any(|r| r.seq == n + 1) {
            return Err(format!("code lookup of {} missed record {}", code.as_str(), n + 1).into());
        }

        let since = T0 + i64::try_from(mix(i ^ 0x7133) % opts.records)? * STEP_MS;
        let filter = RecordFilter {
            since: Some(since),
            until: Some(since + 3_600_000),
            ..RecordFilter::default()
        };
        let started = Instant::now();
        let _ = reader.search_records_page(&filter, PageCursor::START, 100)?;
        range_times.push(started.elapsed());
    }

    // The baseline: a code lookup as search did it before the indexes, a
    // filter over every record, timed over the first `scan_sample`.
    let sample = opts.scan_sample.min(opts.records);
    let code = code_of(0, opts.records)?;
    let filter = RecordFilter {
        code: Some(code),
        ..RecordFilter::default()
    };
    progress(&format!(
        "records: baseline filter scan over {sample} records"
    ));
    let started = Instant::now();
    let mut matched = 0usize;
    let mut from = 1u64;
    while from <= sample {
        let page = reader.records(from, 10_000.min((sample - from + 1) as usize))?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        matched += page
            .iter()
            .filter(|r| filter.matches(r.seq, r.at, &r.record))
            .count();
    }
    let scan = started.elapsed();
    std::hint::black_box(matched);

    Ok(RecordsRun {
        records: opts.records,
        fill,
        file_mib,
        serial: summarize(&mut serial_times),
        code: summarize(&mut code_times),
        time_range: summarize(&mut range_times),
        scan,
        scan_sample: sample,
    })
}

/// The phase's part of the report.
pub fn render(o: &mut String, run: &Result<RecordsRun, String>) {
    use std::fmt::Write as _;
    let _ = writeln!(o, "\nrecords: search through the indexes");
    match run {
        Ok(r) => {
            let fill = r.fill.map_or_else(
                || "reused from an earlier run".to_owned(),
                |d| {
                    format!(
                        "filled in {:.0} s ({:.0} records/s)",
                        d.as_secs_f64(),
                        r.records as f64 / d.as_secs_f64().max(1e-9)
                    )
                },
            );
            let _ = writeln!(
                o,
                "  {} records, store file {:.0} MiB, {fill}",
                r.records, r.file_mib
            );
            for (name, s) in [
                ("by serial", &r.serial),
                ("by person code (first page of 100)", &r.code),
                ("by time, one hour (first page of 100)", &r.time_range),
            ] {
                if let Some(s) = s {
                    let _ = writeln!(
                        o,
                        "  {name}: {} lookups, p50 {} ms, p99 {} ms, max {} ms",
                        s.count,
                        ms(s.p50),
                        ms(s.p99),
                        ms(s.max)
                    );
                }
            }
            let _ = writeln!(
                o,
                "  before the indexes, a person-code lookup scanned every record: {:.1} ms over {} \
                 records, so about {:.0} ms over {}",
                r.scan.as_secs_f64() * 1000.0,
                r.scan_sample,
                r.scan_estimate_ms(),
                r.records
            );
        }
        Err(e) => {
            let _ = writeln!(o, "  failed: {e}");
        }
    }
}
