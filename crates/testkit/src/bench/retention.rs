//! What retention deletion costs the relay (issue 9 item 5).
//!
//! First, one step in isolation: a store opened as the box opens it (redo
//! log, 16 MiB page cache) holds `entries` records and as many access-log
//! entries, all past their period; then batches each delete one tick's
//! step — the engine's [`RETENTION_DELETE_PER_TICK`] access-log entries
//! and records, through the same `delete_*_before` calls, committed
//! through the log — and the time of each batch is the stall a tick's
//! deletion adds to the inputs that share its batch, once a second.
//!
//! Then end to end (`super::retention_relay_run`): the same store, left
//! where the bench network's first box keeps its store
//! ([`box_store_path`]), is that box's store while flows run open loop at
//! the latency phase's offered load; the box deletes a step every tick
//! meanwhile, and the per-hop latency is compared with the latency phase
//! of the same run, whose boxes have nothing to delete.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ifrelay::relay::engine::RETENTION_DELETE_PER_TICK;
use ifrelay_proto::Millis;
use ifrelay_store::{AccessEntry, Direction, Store};

use super::records::record;
use super::BenchError;
use crate::stats::{summarize, Summary};
use crate::testbed::agencies;

/// The box's page cache in the testbed configuration.
const CACHE_BYTES: usize = 16 << 20;
/// Access-log entries per commit while filling.
const FILL_PER_COMMIT: u64 = 10_000;
/// Ten years before the records' own times: every entry is past its
/// period at the cutoff below.
const AGE: Millis = 10 * 365 * 24 * 3600 * 1000;

/// Entries of each chain (full run, `--quick`).
pub fn entries(quick: bool) -> u64 {
    if quick {
        20_000
    } else {
        500_000
    }
}

/// The measured steps.
#[derive(Debug, Clone)]
pub struct RetentionRun {
    pub entries: u64,
    pub fill: Duration,
    /// One sample per step batch (both chains' step and the commit).
    pub steps: Summary,
    pub deleted: u64,
}

fn access(n: u64, at: Millis) -> AccessEntry {
    AccessEntry {
        at,
        terminal: "192.0.2.10:40000".into(),
        party: "ims/131016".into(),
        agency: None,
        staff: None,
        direction: Direction::In,
        operation: "query".into(),
        message_id: Some(format!("ims-131016-{n}")),
        serial: None,
        business: None,
        info_name: None,
        items: Vec::new(),
        outcome: "accepted".into(),
    }
}

/// Where the bench network in `net_dir` keeps its first box's store
/// (`testbed::write_box_config`).
pub fn box_store_path(net_dir: &Path) -> PathBuf {
    net_dir.join(agencies().0.as_str()).join("ifrelay.redb")
}

/// The seqs of the oldest record and access-log entry left (0: none):
/// after a run, how far deletion went.
pub fn oldest_seqs(path: &Path) -> Result<(u64, u64), BenchError> {
    let store = Store::open(path, CACHE_BYTES)?;
    let r = store.reader();
    let record = r.records(0, 1)?.first().map_or(0, |c| c.seq);
    let access = r.access_log(0, 1)?.first().map_or(0, |c| c.seq);
    Ok((record, access))
}

/// Fills a fresh store at `path` and times `steps` deletion steps; the
/// store stays, for the end-to-end run.
///
/// # Errors
/// When the store cannot be filled or a step fails.
pub fn run(path: &Path, entries: u64, steps: usize) -> Result<RetentionRun, BenchError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(ifrelay_store::log_path(path));
    let started = Instant::now();
    let mut store = Store::open(path, CACHE_BYTES)?;
    let old = (0..entries).map(|n| record(n, entries).map(|(at, r)| (at - AGE, r)));
    store.fill_records_for_test(
        old.collect::<Result<Vec<_>, _>>()?,
        FILL_PER_COMMIT as usize,
    )?;
    store.index_records_sorted_for_test(1_000_000)?;
    let mut n = 0u64;
    while n < entries {
        let end = (n + FILL_PER_COMMIT).min(entries);
        let mut b = store.begin()?;
        for k in n..end {
            let (at, _) = record(k, entries)?;
            b.append_access(access(k, at - AGE))?;
        }
        b.commit()?;
        store.index_pending(usize::MAX)?;
        n = end;
    }
    let fill = started.elapsed();
    super::flush_dirty("after the retention fill");

    // Everything filled is older than this.
    let cutoff = ifrelay::net::now_millis() - AGE / 2;
    let mut samples = Vec::with_capacity(steps);
    let mut deleted = 0u64;
    for _ in 0..steps {
        let t = Instant::now();
        let mut b = store.begin()?;
        deleted += b.delete_access_before(cutoff, RETENTION_DELETE_PER_TICK)?;
        deleted += b.delete_records_before(cutoff, RETENTION_DELETE_PER_TICK)?;
        b.commit()?;
        samples.push(t.elapsed());
    }
    let steps = summarize(&mut samples).ok_or("no retention step ran")?;
    store.checkpoint()?;
    Ok(RetentionRun {
        entries,
        fill,
        steps,
        deleted,
    })
}

/// The report's lines for the phase.
pub fn render(o: &mut String, run: &Result<RetentionRun, String>) {
    use std::fmt::Write as _;
    let _ = writeln!(
        o,
        "\nretention: one tick's deletion step ({RETENTION_DELETE_PER_TICK} access-log entries and {RETENTION_DELETE_PER_TICK} records) in a batch of its own, store opened as the box opens it"
    );
    match run {
        Ok(r) => {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let _ = writeln!(
                o,
                "  {} records and {} access-log entries past their period, filled in {:.0} s",
                r.entries,
                r.entries,
                r.fill.as_secs_f64()
            );
            let _ = writeln!(
                o,
                "  {} steps deleted {} entries: per step p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                r.steps.count,
                r.deleted,
                ms(r.steps.p50),
                ms(r.steps.p99),
                ms(r.steps.max)
            );
            let per_s = r.deleted as f64 / r.steps.count.max(1) as f64;
            let _ = writeln!(
                o,
                "  at one step a second, 1,000,000 entries take {:.0} minutes; each step holds the inputs of its batch for its time",
                1_000_000.0 / per_s.max(1.0) / 60.0
            );
        }
        Err(e) => {
            let _ = writeln!(o, "  did not run: {e}");
        }
    }
}
