//! `make bench`: the performance benchmark of the box on loopback.
//!
//! One run, in this order, every phase bounded in time and count:
//!
//! 1. **Machine**: CPUs, memory, kernel, file system, fdatasync latency
//!    ([`machine`]).
//! 2. **Network**: the testbed of `src/testbed.rs` (development PKI, core
//!    simulator, two intermediate-server simulators) with the two boxes as
//!    child processes ([`network`], [`crate::child`], [`proc`]), so their
//!    memory and CPU are their own.
//! 3. **Throughput**: complete flows, closed loop, from both intermediate
//!    servers at several concurrency levels ([`load::closed_loop`]);
//!    relayed frames/s, commits/s and inputs per commit from the engines'
//!    counters, CPU per process.
//! 4. **Latency**: flows started open-loop at a fixed offered load
//!    ([`load::open_loop`]); per-hop latency p50/p99/p99.9.
//!    Then what one box takes from pipelining senders ([`ingest`]).
//! 5. **Peak RSS** of each box (`VmHWM`), then the boxes stop and their
//!    access logs are counted against the flows.
//! 6. **Bare forwarder**: the same frames through a TLS forwarder without
//!    store or checks, at the same concurrency ([`bare`]).
//! 7. **Backlog**: a box restarted on an outbox of a million entries; time
//!    until the first is resent ([`backlog`]).
//! 8. **Flood**: fresh boxes under every hostile peer at once, with normal
//!    traffic beside; peak RSS of the attacked box and the own IMS's
//!    answer times, quiet and flooded ([`flood`]).
//! 9. **Records**: a store of 10,000,000 records (`IFRELAY_BENCH_RECORDS`
//!    changes it; kept between runs under `var/bench-records`, ~6 GiB,
//!    the first fill ~5 minutes), random lookups by serial and person
//!    code through the search indexes, against a filter scan
//!    ([`records`]).
//! 10. **Retention**: what one tick's deletion step costs on a store of
//!     500,000 records and access-log entries past their period
//!     ([`retention`]); then that store is the first box's of a fresh
//!     network, which relays open loop at the latency phase's load while
//!     it deletes, for the per-hop latency during deletion.
//! 11. **Export rate**: records/s of a record export over a store of many
//!     records, against a sequential read of the same records
//!     ([`export_rate`]).
//!
//! [`BenchReport::render`] is the human report; its last line is
//! [`BenchReport::summary_line`], the one line scripts compare.

pub mod backlog;
pub mod bare;
pub mod export_rate;
pub mod flood;
pub mod ingest;
pub mod load;
pub mod machine;
pub mod network;
pub mod proc;
pub mod records;
pub mod restart;
pub mod retention;
pub mod store_candidates;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ifrelay_proto::Party;
use ifrelay_store::{Direction, Store};

use self::backlog::BacklogResult;
use self::bare::{Bare, Driven, NextHop, Sink};
use self::load::{FlowRun, HOP_STEPS, MULTI_HOP_STEPS, RELAYED_PER_FLOW};
use self::machine::Machine;
use crate::child::{BoxCommand, BoxProcess, Counters};
use crate::stats::{ms, summarize, Summary};
use crate::testbed::Pki;

/// Any failure of the benchmark, printed once by the binary.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// The targets of the issue, on a 2-core machine.
pub mod targets {
    /// Relayed frames per second with every record durable.
    pub const FRAMES_PER_S: f64 = 20_000.0;
    /// Box throughput over bare-forwarder throughput.
    pub const RATIO: f64 = 0.5;
    /// p99 per-hop latency at [`OFFERED_FRAMES_PER_S`], in ms.
    pub const P99_MS: f64 = 5.0;
    /// Offered load of the latency phase.
    pub const OFFERED_FRAMES_PER_S: f64 = 2_000.0;
    /// Peak resident set per box.
    pub const RSS_MIB: f64 = 128.0;
    /// Backlog entries, and the time within which resending must start.
    pub const BACKLOG_ENTRIES: u64 = 1_000_000;
    pub const BACKLOG_RESUME_S: f64 = 5.0;
    /// Share of the own IMS's requests answered within 1 s during a flood
    /// (the peak RSS bound, [`RSS_MIB`], holds under the flood too).
    pub const FLOOD_WITHIN_1S: f64 = 0.99;
    /// p99 of record lookups by serial and person code, in ms, with
    /// [`SEARCH_RECORDS`] records stored.
    pub const SEARCH_MS: f64 = 10.0;
    pub const SEARCH_RECORDS: u64 = 10_000_000;
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Working folder (PKI, configurations, stores, logs); prepared with
    /// [`crate::workdir::prepare`].
    pub dir: PathBuf,
    pub quick: bool,
    pub box_command: BoxCommand,
    /// Flows in flight per intermediate server, one throughput run each.
    pub levels: Vec<usize>,
    pub level_window: Duration,
    pub max_flows_per_level: u64,
    pub latency_frames_per_s: f64,
    pub latency_warmup: Duration,
    pub latency_window: Duration,
    /// Pipelined ingest into one box: connections, frames in flight per
    /// connection, duration.
    pub ingest: (usize, usize, Duration),
    /// A second open-loop run at this offered load, for reference (not
    /// in the summary line).
    pub latency_reference_frames_per_s: Option<f64>,
    pub max_in_flight: usize,
    /// Longest wait for flows in flight after a phase's window.
    pub drain: Duration,
    pub bare_window: Duration,
    pub backlog_entries: u64,
    pub backlog_wait: Duration,
    pub backlog_rate_window: Duration,
    /// fdatasync samples of the machine probe.
    pub fsyncs: usize,
    /// The flood phase; `None` skips it.
    pub flood: Option<flood::FloodOptions>,
    /// The record search phase; `None` skips it. A `--quick` run keeps its
    /// store in the work folder (`records/`), emptied with it.
    pub records: Option<records::RecordsOptions>,
    /// Wait up to this long for the rest of the machine to go quiet
    /// (under a quarter of a core for 5 s) before starting.
    pub wait_quiet: Duration,
    /// Records of the export-rate phase ([`export_rate::records`]).
    pub export_records: u64,
}

impl BenchOptions {
    /// The full run of `make bench` (a few minutes).
    pub fn full(box_command: BoxCommand) -> Self {
        BenchOptions {
            dir: PathBuf::from("var/bench"),
            quick: false,
            box_command,
            levels: vec![1, 4, 16, 48],
            level_window: Duration::from_secs(8),
            max_flows_per_level: 200_000,
            latency_frames_per_s: targets::OFFERED_FRAMES_PER_S,
            latency_warmup: Duration::from_secs(1),
            latency_window: Duration::from_secs(15),
            latency_reference_frames_per_s: Some(targets::OFFERED_FRAMES_PER_S / 2.0),
            ingest: (4, 64, Duration::from_secs(5)),
            max_in_flight: 2_000,
            drain: load::DRAIN,
            bare_window: Duration::from_secs(5),
            backlog_entries: targets::BACKLOG_ENTRIES,
            backlog_wait: Duration::from_secs(180),
            backlog_rate_window: Duration::from_secs(3),
            fsyncs: 500,
            flood: Some(flood::FloodOptions::full()),
            records: Some(records::RecordsOptions::full()),
            wait_quiet: Duration::ZERO,
            export_records: export_rate::records(false),
        }
    }

    /// A smoke run of a few seconds per phase (`--quick`).
    pub fn quick(box_command: BoxCommand) -> Self {
        BenchOptions {
            dir: PathBuf::from("var/bench-quick"),
            quick: true,
            levels: vec![4],
            level_window: Duration::from_secs(2),
            max_flows_per_level: 5_000,
            // A quarter of the real offered load: a debug build (the
            // smoke test) must be able to follow it.
            latency_frames_per_s: targets::OFFERED_FRAMES_PER_S / 4.0,
            latency_warmup: Duration::from_millis(300),
            latency_window: Duration::from_secs(2),
            latency_reference_frames_per_s: None,
            ingest: (2, 64, Duration::from_secs(1)),
            drain: Duration::from_secs(20),
            bare_window: Duration::from_secs(2),
            backlog_entries: 10_000,
            backlog_wait: Duration::from_secs(60),
            backlog_rate_window: Duration::from_secs(1),
            fsyncs: 50,
            flood: Some(flood::FloodOptions::quick()),
            records: Some(records::RecordsOptions::quick(Path::new(
                "var/bench-quick/records",
            ))),
            export_records: export_rate::records(true),
            ..BenchOptions::full(box_command)
        }
    }
}

/// One throughput run.
#[derive(Debug)]
pub struct Level {
    pub per_ims: usize,
    pub run: FlowRun,
    /// Engine counters over the run, summed over both boxes (`None` when
    /// the boxes do not report them).
    pub engine: Option<Counters>,
    /// Cores used during the run: box A, box B, this process (simulators
    /// and load), and every other process of the machine.
    pub cpu: Vec<(String, f64)>,
    /// Disk writes of the whole machine during the run.
    pub disk: Option<DiskRate>,
}

impl Level {
    pub fn commits_per_s(&self) -> Option<f64> {
        self.engine
            .map(|c| load::per_s(c.batches, self.run.elapsed))
    }

    pub fn inputs_per_commit(&self) -> Option<f64> {
        self.engine
            .filter(|c| c.batches > 0)
            .map(|c| c.inputs as f64 / c.batches as f64)
    }

    /// Relayed frames per commit: relayed frames over commits.
    pub fn frames_per_commit(&self) -> Option<f64> {
        self.engine
            .filter(|c| c.batches > 0)
            .map(|c| (self.run.completed * RELAYED_PER_FLOW) as f64 / c.batches as f64)
    }
}

/// The open-loop latency run.
#[derive(Debug)]
pub struct Latency {
    pub offered_frames_per_s: f64,
    pub run: FlowRun,
    pub hops: Option<Summary>,
    pub steps: Vec<(&'static str, Option<Summary>)>,
    pub engine: Option<Counters>,
    /// Cores used during the run, as in [`Level::cpu`].
    pub cpu: Vec<(String, f64)>,
    /// As in [`Level::disk`].
    pub disk: Option<DiskRate>,
}

impl Latency {
    /// Relayed frames/s of the flows started after the warm-up.
    pub fn achieved_frames_per_s(&self) -> f64 {
        load::per_s(
            self.run.timings.len() as u64 * RELAYED_PER_FLOW,
            self.run.elapsed,
        )
    }
}

/// One bare-forwarder run.
#[derive(Debug, Clone, Default)]
pub struct BareRun {
    /// Links per forwarder (same as flows per intermediate server).
    pub conns: usize,
    pub forwarded: u64,
    pub lost: u64,
    pub elapsed: Duration,
    pub driven: Driven,
    /// Cores used: this process (forwarders, sinks, load) and others.
    pub cpu: Vec<(String, f64)>,
}

impl BareRun {
    pub fn frames_per_s(&self) -> f64 {
        load::per_s(self.forwarded, self.elapsed)
    }
}

/// The boxes' access logs, counted after the run.
#[derive(Debug, Clone, Default)]
pub struct AccessCount {
    /// Frames received and accepted (outcome `accepted` or `ok`).
    pub accepted_in: u64,
    /// Frames delivered to the next hop (outcome `delivered`).
    pub delivered_out: u64,
    pub other: u64,
    pub flows_completed: u64,
}

/// Everything a run found.
#[derive(Debug)]
pub struct BenchReport {
    pub quick: bool,
    pub machine: Machine,
    pub box_command: String,
    pub levels: Vec<Level>,
    /// The open-loop runs: the target's offered load first, then the
    /// reference load.
    pub latency: Vec<Latency>,
    pub ingest: Option<Result<IngestRun, String>>,
    /// (box, VmHWM KiB) over the throughput, latency and ingest phases.
    pub rss: Vec<(String, Option<u64>)>,
    pub stopped: Vec<String>,
    pub access: Option<Result<AccessCount, String>>,
    pub bare: Vec<BareRun>,
    pub backlog: Option<Result<BacklogResult, String>>,
    pub flood: Option<Result<flood::FloodRun, String>>,
    pub records: Option<Result<records::RecordsRun, String>>,
    pub retention: Option<Result<retention::RetentionRun, String>>,
    /// Per-hop latency while a box deletes by retention.
    pub retention_relay: Option<Result<RetentionRelay, String>>,
    pub export: Option<Result<export_rate::ExportRate, String>>,
    pub elapsed: Duration,
}

/// Prints a progress line at once (stdout).
fn progress(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "-- {text}").and_then(|()| out.flush());
}

fn flush_dirty(when: &str) {
    match machine::flush_dirty_pages() {
        Some(kib) => progress(&format!(
            "sync {when}: {:.1} MiB of dirty pages written out",
            kib as f64 / 1024.0
        )),
        None => progress(&format!(
            "sync {when} failed; other writers may disturb the run"
        )),
    }
}

/// Runs the benchmark.
///
/// # Errors
/// When the network cannot be set up; a phase that fails later is
/// reported in its place instead.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let started = Instant::now();
    crate::workdir::prepare(&opts.dir)?;
    let dir = std::path::absolute(&opts.dir)?;
    let others_before = if opts.wait_quiet > Duration::ZERO {
        progress(&format!(
            "waiting up to {:?} for other processes to use under 0.25 cores",
            opts.wait_quiet
        ));
        machine::wait_quiet(opts.wait_quiet, Duration::from_secs(5), 0.25).await
    } else {
        None
    };
    flush_dirty("before the run");
    progress("probing the machine");
    let mut machine = machine::probe(&dir, opts.fsyncs);
    machine.others_before = others_before;

    progress("starting the core, two intermediate servers and two boxes (child processes)");
    let mut net = network::start(&dir.join("net"), &opts.box_command).await?;
    let me = std::process::id();

    progress("warm-up: complete flows for 1 s");
    let warm = load::closed_loop(&net.nodes, 2, Duration::from_secs(1), 1_000, opts.drain).await;
    let mut flows_completed = warm.completed;

    let mut levels = Vec::new();
    for &per_ims in &opts.levels {
        progress(&format!(
            "throughput: {per_ims} flow(s) in flight per intermediate server for {:?}",
            opts.level_window
        ));
        let before = engine_counters(&net.boxes);
        let cpu_before = cpu_snapshot(&net.boxes, me);
        let run = load::closed_loop(
            &net.nodes,
            per_ims,
            opts.level_window,
            opts.max_flows_per_level,
            opts.drain,
        )
        .await;
        // Let the 200 ms counter lines catch up with the last commits.
        tokio::time::sleep(Duration::from_millis(450)).await;
        let engine = difference(&before, &engine_counters(&net.boxes));
        let cpu_after = cpu_snapshot(&net.boxes, me);
        let cpu = cpu_difference(&cpu_before, &cpu_after, machine.cpus);
        let disk = disk_difference(&cpu_before, &cpu_after);
        flows_completed += run.completed;
        levels.push(Level {
            per_ims,
            run,
            engine,
            cpu,
            disk,
        });
    }

    let mut latency = Vec::new();
    let mut rates = vec![opts.latency_frames_per_s];
    rates.extend(opts.latency_reference_frames_per_s);
    for rate in rates {
        flush_dirty("before the latency phase");
        progress(&format!(
            "latency: open loop at {rate} relayed frames/s offered for {:?}",
            opts.latency_window
        ));
        let l = latency_run(&net, rate, opts, machine.cpus).await;
        flows_completed += l.run.completed;
        latency.push(l);
    }

    let ingest = Some(
        ingest_run(&net, opts, machine.cpus)
            .await
            .map_err(|e| e.to_string()),
    );

    let rss = net
        .boxes
        .iter()
        .map(|b| (b.name().to_owned(), proc::peak_rss_kib(b)))
        .collect();
    progress("stopping the boxes");
    let stopped = net.stop_boxes().await;
    let store_paths: Vec<PathBuf> = net
        .nodes
        .iter()
        .map(|n| n.config.store.path.clone())
        .collect();

    let level_for_bare = best_level(&levels).map_or(4, |l| l.per_ims);
    let mut bare_levels: Vec<usize> = opts.levels.clone();
    if !bare_levels.contains(&level_for_bare) {
        bare_levels.push(level_for_bare);
    }
    let mut bare = Vec::new();
    for conns in bare_levels {
        progress(&format!(
            "bare TLS forwarder: {conns} link(s) per forwarder for {:?}",
            opts.bare_window
        ));
        let cpu_before = cpu_snapshot(&[], me);
        let result = run_bare(&net.pki, conns, opts.bare_window).await;
        let cpu = cpu_difference(&cpu_before, &cpu_snapshot(&[], me), machine.cpus);
        bare.push(
            result
                .map(|b| BareRun { cpu, ..b })
                .unwrap_or_else(|e| BareRun {
                    conns,
                    driven: Driven {
                        first_error: Some(e.to_string()),
                        ..Driven::default()
                    },
                    ..BareRun::default()
                }),
        );
    }
    net.shutdown_simulators().await;

    progress("counting the boxes' access logs");
    let access = Some(count_access(&store_paths, flows_completed).map_err(|e| e.to_string()));

    progress(&format!(
        "backlog: filling an outbox with {} entries, then restarting a box on it",
        opts.backlog_entries
    ));
    let backlog = Some(
        backlog::run(
            &dir.join("backlog"),
            &opts.box_command,
            opts.backlog_entries,
            opts.backlog_wait,
            opts.backlog_rate_window,
        )
        .await
        .map_err(|e| e.to_string()),
    );

    let mut flood = None;
    if let Some(flood_opts) = &opts.flood {
        flush_dirty("before the flood phase");
        flood = Some(
            flood::run(
                &dir.join("flood"),
                &opts.box_command,
                flood_opts,
                machine.cpus,
            )
            .await
            .map_err(|e| e.to_string()),
        );
    }

    let mut records = None;
    if let Some(record_opts) = &opts.records {
        let mut record_opts = record_opts.clone();
        if opts.quick {
            record_opts.dir = dir.join("records");
        }
        flush_dirty("before the records phase");
        records = Some(records::run(&record_opts).map_err(|e| e.to_string()));
    }
    flush_dirty("before the retention phase");
    let retention_entries = retention::entries(opts.quick);
    progress(&format!(
        "retention: filling a store with {retention_entries} records and access-log entries past their period, then timing deletion steps"
    ));
    let retention_net = dir.join("retention").join("net");
    let retention_store = retention::box_store_path(&retention_net);
    let retention_steps = if opts.quick { 10 } else { 200 };
    let retention = {
        let path = retention_store.clone();
        tokio::task::spawn_blocking(move || {
            retention::run(&path, retention_entries, retention_steps).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the retention phase panicked: {e}")))
    };
    let retention_relay = match &retention {
        Ok(_) => {
            flush_dirty("before the retention relay phase");
            progress(&format!(
                "retention while relaying: open loop at {} relayed frames/s offered while a box deletes from that store",
                opts.latency_frames_per_s
            ));
            Some(
                retention_relay_run(&retention_net, &retention_store, opts, machine.cpus)
                    .await
                    .map_err(|e| e.to_string()),
            )
        }
        Err(_) => None,
    };
    let retention = Some(retention);
    flush_dirty("before the export phase");
    progress(&format!(
        "export rate: filling a store with {} records, then reading and exporting them",
        opts.export_records
    ));
    let export_dir = dir.join("export");
    let export_records = opts.export_records;
    let export = Some(
        tokio::task::spawn_blocking(move || {
            export_rate::run(&export_dir, export_records).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the export phase panicked: {e}"))),
    );

    Ok(BenchReport {
        quick: opts.quick,
        machine,
        box_command: opts.box_command.describe(),
        levels,
        latency,
        ingest,
        rss,
        stopped,
        access,
        bare,
        backlog,
        flood,
        records,
        retention,
        retention_relay,
        export,
        elapsed: started.elapsed(),
    })
}

/// The latency run on a network whose first box starts on `store`, full
/// of entries past their period (left by [`retention::run`]).
#[derive(Debug)]
pub struct RetentionRelay {
    pub latency: Latency,
    /// Records and access-log entries the box deleted while it ran.
    pub deleted_records: u64,
    pub deleted_access: u64,
    /// How long the box ran (start to stop).
    pub box_time: Duration,
}

async fn retention_relay_run(
    net_dir: &Path,
    store: &Path,
    opts: &BenchOptions,
    cpus: usize,
) -> Result<RetentionRelay, BenchError> {
    let before = retention::oldest_seqs(store)?;
    let started = Instant::now();
    // Records are kept unless the configuration lets the box delete them.
    let mut net = network::start_with(net_dir, &opts.box_command, |file| {
        file.retention.delete_records = true;
    })
    .await?;
    let _ = load::closed_loop(&net.nodes, 2, Duration::from_secs(1), 1_000, opts.drain).await;
    let latency = latency_run(&net, opts.latency_frames_per_s, opts, cpus).await;
    net.stop_boxes().await;
    let box_time = started.elapsed();
    net.shutdown_simulators().await;
    let after = retention::oldest_seqs(store)?;
    // The store is large and of no use after the run.
    let _ = std::fs::remove_file(store);
    let _ = std::fs::remove_file(ifrelay_store::log_path(store));
    Ok(RetentionRelay {
        latency,
        deleted_records: after.0.saturating_sub(before.0),
        deleted_access: after.1.saturating_sub(before.1),
        box_time,
    })
}

/// What one box took from pipelining senders.
#[derive(Debug)]
pub struct IngestRun {
    pub result: ingest::Ingest,
    pub engine: Option<Counters>,
    pub cpu: Vec<(String, f64)>,
}

/// Pipelined prefix checks into the first box.
async fn ingest_run(
    net: &network::Network,
    opts: &BenchOptions,
    cpus: usize,
) -> Result<IngestRun, BenchError> {
    let (Some(node), Some(peer)) = (net.nodes.first(), net.nodes.get(1)) else {
        return Err("no box to send to".into());
    };
    let (conns, window, time) = opts.ingest;
    progress(&format!(
        "ingest: pipelined prefix checks into box {}, {conns} connections x {window} in flight, {time:?}",
        node.agency
    ));
    let me = std::process::id();
    let tls = net.pki.material(&Party::ims(node.agency.clone()))?;
    let before = engine_counters(&net.boxes);
    let cpu_before = cpu_snapshot(&net.boxes, me);
    let result = ingest::run(
        &node.agency,
        &peer.agency,
        node.config.listen.agency_side,
        &tls,
        conns,
        window,
        time,
    )
    .await?;
    let cpu = cpu_difference(&cpu_before, &cpu_snapshot(&net.boxes, me), cpus);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let engine = difference(&before, &engine_counters(&net.boxes));
    Ok(IngestRun {
        result,
        engine,
        cpu,
    })
}

/// One open-loop run at `rate` relayed frames/s offered.
async fn latency_run(
    net: &network::Network,
    rate: f64,
    opts: &BenchOptions,
    cpus: usize,
) -> Latency {
    let me = std::process::id();
    let before = engine_counters(&net.boxes);
    let cpu_before = cpu_snapshot(&net.boxes, me);
    let run = load::open_loop(
        &net.nodes,
        rate,
        (opts.latency_warmup, opts.latency_window),
        opts.max_in_flight,
        opts.drain,
    )
    .await;
    let cpu_after = cpu_snapshot(&net.boxes, me);
    let cpu = cpu_difference(&cpu_before, &cpu_after, cpus);
    let disk = disk_difference(&cpu_before, &cpu_after);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let engine = difference(&before, &engine_counters(&net.boxes));
    let mut hops = load::hop_samples(&run.timings);
    let steps = HOP_STEPS
        .iter()
        .chain(MULTI_HOP_STEPS.iter())
        .map(|(name, get)| {
            let mut v: Vec<Duration> = run.timings.iter().map(get).collect();
            (*name, summarize(&mut v))
        })
        .collect();
    Latency {
        offered_frames_per_s: rate,
        hops: summarize(&mut hops),
        run,
        steps,
        engine,
        cpu,
        disk,
    }
}

fn engine_counters(boxes: &[BoxProcess]) -> Option<Vec<Counters>> {
    boxes.iter().map(BoxProcess::counters).collect()
}

fn difference(before: &Option<Vec<Counters>>, after: &Option<Vec<Counters>>) -> Option<Counters> {
    let (Some(before), Some(after)) = (before, after) else {
        return None;
    };
    let mut sum = Counters::default();
    for (b, a) in before.iter().zip(after) {
        let d = a.since(b);
        sum.batches += d.batches;
        sum.inputs += d.inputs;
        sum.commit_failures += d.commit_failures;
        sum.handling_us += d.handling_us;
        sum.committing_us += d.committing_us;
        sum.slow_commits += d.slow_commits;
        sum.index_steps += d.index_steps;
        sum.indexing_us += d.indexing_us;
        sum.log_appends += d.log_appends;
        sum.log_entry_bytes += d.log_entry_bytes;
        sum.log_raw_bytes += d.log_raw_bytes;
        sum.log_page_bytes += d.log_page_bytes;
        sum.checkpoints += d.checkpoints;
    }
    Some(sum)
}

/// CPU counters at one moment: per process, and the whole machine.
struct CpuSnapshot {
    at: Instant,
    processes: Vec<(String, Option<Duration>)>,
    system: Option<(u64, u64)>,
    disk: Option<machine::DiskWrites>,
    /// `write_bytes` of the boxes, summed (none without boxes).
    box_writes: Option<u64>,
}

fn cpu_snapshot(boxes: &[BoxProcess], me: u32) -> CpuSnapshot {
    let mut processes: Vec<(String, Option<Duration>)> = boxes
        .iter()
        .map(|b| (b.name().to_owned(), proc::cpu(b)))
        .collect();
    processes.push(("bench process".to_owned(), machine::cpu_time(me)));
    CpuSnapshot {
        at: Instant::now(),
        processes,
        system: machine::system_ticks(),
        disk: machine::disk_writes(),
        box_writes: if boxes.is_empty() {
            None
        } else {
            boxes.iter().map(proc::write_bytes).sum()
        },
    }
}

/// Disk writes of the whole machine between two snapshots, per second.
#[derive(Debug, Clone, Copy)]
pub struct DiskRate {
    pub requests_per_s: f64,
    pub bytes_per_s: f64,
    /// What the boxes' own processes wrote (their files' pages), per second.
    pub box_bytes_per_s: Option<f64>,
}

impl DiskRate {
    /// KiB written per relayed frame at `relayed_frames_per_s`.
    fn kib_per_frame(&self, relayed_frames_per_s: f64) -> f64 {
        self.bytes_per_s / 1024.0 / relayed_frames_per_s.max(1e-9)
    }

    /// "N MiB/s in N writes/s = N KiB in N writes per relayed frame".
    fn describe(&self, relayed_frames_per_s: f64) -> String {
        let per = relayed_frames_per_s.max(1e-9);
        format!(
            "{:.1} MiB/s in {:.0} writes/s = {:.1} KiB in {:.1} writes per relayed frame",
            self.bytes_per_s / 1_048_576.0,
            self.requests_per_s,
            self.kib_per_frame(relayed_frames_per_s),
            self.requests_per_s / per
        )
    }
}

fn disk_difference(before: &CpuSnapshot, after: &CpuSnapshot) -> Option<DiskRate> {
    let (b, a) = (before.disk?, after.disk?);
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    Some(DiskRate {
        requests_per_s: a.requests.saturating_sub(b.requests) as f64 / wall,
        bytes_per_s: a.bytes.saturating_sub(b.bytes) as f64 / wall,
        box_bytes_per_s: before
            .box_writes
            .zip(after.box_writes)
            .map(|(b, a)| a.saturating_sub(b) as f64 / wall),
    })
}

/// Cores used between two snapshots by each process, and by every other
/// process of the machine (its busy time minus ours).
fn cpu_difference(before: &CpuSnapshot, after: &CpuSnapshot, cpus: usize) -> Vec<(String, f64)> {
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let mut out: Vec<(String, f64)> = before
        .processes
        .iter()
        .zip(&after.processes)
        .filter_map(|((name, b), (_, a))| {
            let used = a.as_ref()?.saturating_sub(*b.as_ref()?);
            Some((name.clone(), used.as_secs_f64() / wall))
        })
        .collect();
    if let (Some((b_busy, b_total)), Some((a_busy, a_total))) = (before.system, after.system) {
        let total = a_total.saturating_sub(b_total);
        if total > 0 {
            let busy = a_busy.saturating_sub(b_busy) as f64 / total as f64 * cpus as f64;
            let ours: f64 = out.iter().map(|(_, c)| c).sum();
            out.push(("other processes".to_owned(), (busy - ours).max(0.0)));
        }
    }
    out
}

fn best_level(levels: &[Level]) -> Option<&Level> {
    levels
        .iter()
        .max_by(|x, y| x.run.frames_per_s().total_cmp(&y.run.frames_per_s()))
}

/// Two bare forwarders standing in for the two boxes, each with three
/// sinks standing in for its core, IMS and peer box, driven with the
/// frames each box relays in a flow through `conns` links each.
async fn run_bare(pki: &Pki, conns: usize, window: Duration) -> Result<BareRun, BenchError> {
    let (a, b) = crate::testbed::agencies();
    let f = bare::flow_frames(&a, &b)?;
    let mut sinks = Vec::new();
    let mut forwarders = Vec::new();
    let mut drives = Vec::new();
    for (own, other, frames, routes) in [
        (&a, &b, f.requester, f.requester_routes),
        (&b, &a, f.provider, f.provider_routes),
    ] {
        let mut hops = Vec::new();
        for party in [
            Party::core(),
            Party::ims(own.clone()),
            Party::is(other.clone()),
        ] {
            let sink = Sink::start(party.clone(), &pki.material(&party)?, None).await?;
            hops.push(NextHop {
                party,
                addr: sink.local_addr(),
            });
            sinks.push(sink);
        }
        let me = Party::is(own.clone());
        let fwd = Bare::start(me.clone(), &pki.material(&me)?, hops, routes).await?;
        let client = pki.material(&Party::ims(own.clone()))?.client_config()?;
        drives.push((fwd.local_addr(), me, client, frames, own.to_string()));
        forwarders.push(fwd);
    }
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (addr, party, client, frames, tag) in drives {
        set.spawn(
            async move { bare::drive(addr, &party, client, conns, &frames, window, &tag).await },
        );
    }
    let mut driven = Driven::default();
    while let Some(r) = set.join_next().await {
        let d = r??;
        driven.sent += d.sent;
        driven.errors += d.errors;
        if driven.first_error.is_none() {
            driven.first_error = d.first_error;
        }
    }
    // Everything read must reach its next hop before the clock stops.
    let drain_until = Instant::now() + Duration::from_secs(10);
    let total = |f: &[Bare]| -> (u64, u64, u64) {
        f.iter().fold((0, 0, 0), |(r, w, l), x| {
            (r + x.received(), w + x.forwarded(), l + x.lost())
        })
    };
    loop {
        let (received, forwarded, lost) = total(&forwarders);
        if forwarded + lost >= received || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = t0.elapsed();
    let (_, forwarded, lost) = total(&forwarders);
    for f in &forwarders {
        f.shutdown().await;
    }
    for s in &sinks {
        s.shutdown().await;
    }
    Ok(BareRun {
        conns,
        forwarded,
        lost,
        elapsed,
        driven,
        cpu: Vec::new(),
    })
}

/// Counts the access-log entries of the stores at `paths` (boxes
/// stopped).
fn count_access(paths: &[PathBuf], flows_completed: u64) -> Result<AccessCount, BenchError> {
    const PAGE: usize = 10_000;
    const MOST: u64 = 20_000_000;
    let mut count = AccessCount {
        flows_completed,
        ..AccessCount::default()
    };
    for path in paths {
        let store = Store::open(path, 16 << 20)?;
        let reader = store.reader();
        let mut from = 0u64;
        let mut seen = 0u64;
        loop {
            let page = reader.access_log(from, PAGE)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for e in &page {
                seen += 1;
                match (e.entry.direction, e.entry.outcome.as_str()) {
                    (Direction::In, "accepted" | "ok") => count.accepted_in += 1,
                    (Direction::Out, "delivered") => count.delivered_out += 1,
                    _ => count.other += 1,
                }
            }
            if page.len() < PAGE || seen >= MOST {
                break;
            }
        }
    }
    Ok(count)
}

/// `name 0.42, name 0.40, …`.
fn cores(cpu: &[(String, f64)]) -> String {
    cpu.iter()
        .map(|(n, c)| format!("{n} {c:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

impl BenchReport {
    /// The box's headline throughput run.
    pub fn best(&self) -> Option<&Level> {
        best_level(&self.levels)
    }

    /// The bare run at the concurrency of the headline run.
    pub fn bare_at_best(&self) -> Option<&BareRun> {
        let level = self.best()?.per_ims;
        self.bare.iter().find(|b| b.conns == level)
    }

    pub fn frames_per_s(&self) -> f64 {
        self.best().map_or(0.0, |l| l.run.frames_per_s())
    }

    pub fn bare_frames_per_s(&self) -> f64 {
        self.bare_at_best().map_or(0.0, BareRun::frames_per_s)
    }

    pub fn ratio(&self) -> f64 {
        let bare = self.bare_frames_per_s();
        if bare > 0.0 {
            self.frames_per_s() / bare
        } else {
            f64::NAN
        }
    }

    fn hop_summary(&self) -> Option<Summary> {
        self.latency.first().and_then(|l| l.hops)
    }

    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.rss.iter().filter_map(|(_, k)| *k).max().map(mib)
    }

    pub fn backlog_resume_s(&self) -> Option<f64> {
        match &self.backlog {
            Some(Ok(b)) => b.resumed_after.map(|d| d.as_secs_f64()),
            _ => None,
        }
    }

    fn flood_run(&self) -> Option<&flood::FloodRun> {
        self.flood.as_ref().and_then(|f| f.as_ref().ok())
    }

    /// Peak RSS of the attacked box over the flood phase, in MiB.
    pub fn flood_rss_mib(&self) -> Option<f64> {
        self.flood_run()
            .and_then(flood::FloodRun::attacked_peak_mib)
    }

    /// p99 answer time of the own IMS during the flood, in ms.
    pub fn flood_ims_p99_ms(&self) -> Option<f64> {
        self.flood_run().and_then(|f| f.flooded.p99_ms())
    }

    /// Share of the own IMS's requests answered within 1 s during the
    /// flood.
    pub fn flood_ims_within_1s(&self) -> Option<f64> {
        self.flood_run().and_then(|f| f.flooded.within_share())
    }

    /// KiB the machine wrote to disk per relayed frame in the open-loop
    /// run at the target's offered load (issue 9: ≤ 16 KiB).
    pub fn kib_per_frame_open(&self) -> Option<f64> {
        let run = self.latency.first()?;
        run.disk
            .map(|d| d.kib_per_frame(run.achieved_frames_per_s()))
    }

    /// KiB written per relayed frame in the throughput headline run
    /// (issue 9: ≤ 2 KiB).
    pub fn kib_per_frame_peak(&self) -> Option<f64> {
        let level = self.best()?;
        level
            .disk
            .map(|d| d.kib_per_frame(level.run.frames_per_s()))
    }

    /// Terabytes a year written to each disk of a box's mirror at
    /// `flows_per_day` complete flows, from the open-loop figure: KiB per
    /// relayed frame × [`RELAYED_PER_FLOW`] × flows × 365. Conservative: the
    /// bench's two boxes share one disk, so a flow's figure holds both
    /// sides' writes, where a real box writes one side's.
    pub fn tb_per_year(&self, flows_per_day: f64) -> Option<f64> {
        self.kib_per_frame_open()
            .map(|kib| kib * 1024.0 * RELAYED_PER_FLOW as f64 * flows_per_day * 365.0 / 1e12)
    }

    fn records_run(&self) -> Option<&records::RecordsRun> {
        self.records.as_ref()?.as_ref().ok()
    }

    /// p99 of the serial and person-code lookups over the records store,
    /// in ms (issue 9: ≤ 10 ms at 10,000,000 records).
    pub fn search_ms(&self) -> Option<f64> {
        self.records_run()?.search_p99_ms()
    }

    /// How many times faster that p99 is than the filter scan that search
    /// did before the indexes, extrapolated to the whole store.
    pub fn search_ratio(&self) -> Option<f64> {
        self.records_run()?.ratio()
    }

    /// The export-rate phase, when it ran and succeeded.
    pub fn export_rate(&self) -> Option<&export_rate::ExportRate> {
        self.export.as_ref().and_then(|e| e.as_ref().ok())
    }

    /// The one line scripts compare; `nan` where a figure is missing.
    pub fn summary_line(&self) -> String {
        let num = |v: Option<f64>, decimals: usize| match v {
            Some(v) if v.is_finite() => format!("{v:.decimals$}"),
            _ => "nan".to_owned(),
        };
        let hop = self.hop_summary();
        let deleting = self.retention_hops();
        format!(
            "bench: frames_per_s={} bare_frames_per_s={} ratio={} p99_ms={} p999_ms={} rss_mib={} backlog_resume_s={} \
             flood_rss_mib={} flood_ims_p99_ms={} flood_ims_within_1s={} kib_per_frame_open={} kib_per_frame_peak={} \
             tb_year_10k={} tb_year_100k={} search_ms={} search_ratio={} export_rps={} export_ratio={} \
             retention_p99_ms={} retention_p999_ms={}",
            num(Some(self.frames_per_s()), 0),
            num(Some(self.bare_frames_per_s()), 0),
            num(Some(self.ratio()), 3),
            num(hop.map(|h| h.p99.as_secs_f64() * 1000.0), 2),
            num(hop.map(|h| h.p999.as_secs_f64() * 1000.0), 2),
            num(self.peak_rss_mib(), 1),
            num(self.backlog_resume_s(), 3),
            num(self.flood_rss_mib(), 1),
            num(self.flood_ims_p99_ms(), 2),
            num(self.flood_ims_within_1s(), 4),
            num(self.kib_per_frame_open(), 1),
            num(self.kib_per_frame_peak(), 1),
            num(self.tb_per_year(10_000.0), 2),
            num(self.tb_per_year(100_000.0), 2),
            num(self.search_ms(), 3),
            num(self.search_ratio(), 0),
            num(self.export_rate().map(|e| e.export_records_per_s()), 0),
            num(self.export_rate().map(|e| e.ratio()), 3),
            num(deleting.map(|h| h.p99.as_secs_f64() * 1000.0), 2),
            num(deleting.map(|h| h.p999.as_secs_f64() * 1000.0), 2),
        )
    }

    /// Per-hop latency while a box deletes by retention.
    fn retention_hops(&self) -> Option<Summary> {
        match &self.retention_relay {
            Some(Ok(r)) => r.latency.hops,
            _ => None,
        }
    }

    /// The whole report; the summary line is its last line.
    pub fn render(&self) -> String {
        let mut o = String::new();
        self.render_header(&mut o);
        self.render_throughput(&mut o);
        self.render_latency(&mut o);
        self.render_ingest(&mut o);
        self.render_bare(&mut o);
        self.render_memory(&mut o);
        self.render_backlog(&mut o);
        self.render_flood(&mut o);
        self.render_records(&mut o);
        match &self.export {
            Some(Ok(rate)) => rate.render(&mut o),
            Some(Err(e)) => {
                let _ = writeln!(o, "\n-- export rate: failed: {e}");
            }
            None => {}
        }
        self.render_targets(&mut o);
        self.render_projection(&mut o);
        let _ = writeln!(o, "{}", self.summary_line());
        o
    }

    fn render_header(&self, o: &mut String) {
        let m = &self.machine;
        let _ = writeln!(
            o,
            "\n== ifrelay bench{} ==",
            if self.quick {
                " --quick (smoke run; numbers not comparable)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "machine: {} CPU(s), {}, {} MiB memory, Linux {}, {}",
            m.cpus, m.cpu_model, m.mem_total_mib, m.kernel, m.file_system
        );
        for (what, probe) in [
            ("fdatasync of a 4 KiB write", m.fsync),
            ("durable store commit of one outbox entry", m.store_commit),
        ] {
            if let Some(f) = probe {
                let _ = writeln!(
                    o,
                    "{what} there: p50 {} ms, p99 {} ms, max {} ms ({} samples)",
                    ms(f.p50),
                    ms(f.p99),
                    ms(f.max),
                    f.count
                );
            }
        }
        let _ = writeln!(
            o,
            "build: {}; boxes: {}",
            if m.release_build {
                "release"
            } else {
                "DEBUG (not representative)"
            },
            self.box_command
        );
        let _ = writeln!(
            o,
            "run took {:.1} s; 1-minute load average at the start: {}",
            self.elapsed.as_secs_f64(),
            m.load_average
                .map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"))
        );
        if let Some(c) = m.others_before {
            let _ = writeln!(
                o,
                "other processes used {c:.2} cores in the 5 s before the run (--wait-quiet)"
            );
        }
        let _ = writeln!(
            o,
            "(the CPU lines below name every process's share: 'other processes' is work on the machine that is not the benchmark's)"
        );
    }

    fn render_throughput(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\nthroughput: complete flows, closed loop, both intermediate servers at once"
        );
        let _ = writeln!(
            o,
            "  (relayed frames = completed flows x {RELAYED_PER_FLOW}: the frames both boxes accepted durably and forwarded)"
        );
        let _ = writeln!(
            o,
            "  {:>9} {:>7} {:>6} {:>6} {:>9} {:>9} {:>10} {:>12} {:>14}",
            "flows/IMS",
            "flows",
            "failed",
            "secs",
            "flows/s",
            "frames/s",
            "commits/s",
            "inputs/commit",
            "frames/commit"
        );
        let opt =
            |v: Option<f64>, d: usize| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.d$}"));
        for l in &self.levels {
            let _ = writeln!(
                o,
                "  {:>9} {:>7} {:>6} {:>6.1} {:>9.1} {:>9.0} {:>10} {:>12} {:>14}",
                l.per_ims,
                l.run.completed,
                l.run.failed + l.run.abandoned,
                l.run.elapsed.as_secs_f64(),
                load::per_s(l.run.completed, l.run.elapsed),
                l.run.frames_per_s(),
                opt(l.commits_per_s(), 0),
                opt(l.inputs_per_commit(), 2),
                opt(l.frames_per_commit(), 2),
            );
        }
        for l in &self.levels {
            if let Some(e) = &l.run.first_error {
                let _ = writeln!(o, "  first failure at {} flows/IMS: {e}", l.per_ims);
            }
        }
        if self.levels.iter().any(|l| l.engine.is_some()) {
            let _ = writeln!(
                o,
                "  where each box's engine thread spends the run (share of wall time, mean of both boxes; the rest it waits for input):"
            );
        }
        for l in &self.levels {
            if let Some(c) = l.engine.filter(|c| c.batches > 0) {
                let wall_us = l.run.elapsed.as_secs_f64() * 1e6 * 2.0;
                let _ = writeln!(
                    o,
                    "  {:>9}: handling inputs {:.0} %, committing {:.0} %, indexing {:.0} % in {} steps (mean commit {:.2} ms, {} of {} ms or more; mean handling {:.1} us per input)",
                    l.per_ims,
                    100.0 * c.handling_us as f64 / wall_us,
                    100.0 * c.committing_us as f64 / wall_us,
                    100.0 * c.indexing_us as f64 / wall_us,
                    c.index_steps,
                    c.committing_us as f64 / 1e3 / c.batches as f64,
                    c.slow_commits,
                    ifrelay::relay::engine::SLOW_COMMIT.as_millis(),
                    c.handling_us as f64 / c.inputs.max(1) as f64,
                );
            }
        }
        for l in &self.levels {
            let Some(c) = l.engine.filter(|c| c.log_appends > 0) else {
                continue;
            };
            let frames = (l.run.completed * RELAYED_PER_FLOW).max(1) as f64;
            let fps = l.run.frames_per_s();
            let kib = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
            let boxes = l
                .disk
                .and_then(|d| d.box_bytes_per_s)
                .map(|b| b / 1024.0 / fps.max(1e-9));
            let _ = writeln!(
                o,
                "  {:>9}: redo log {:.2} KiB per relayed frame in the pages its syncs wrote ({:.2} KiB of entries; {:.2} KiB before compression), {} checkpoints; the boxes' processes wrote {} KiB per frame (log, checkpoints, their journal lines), the disk took {} in all",
                l.per_ims,
                c.log_page_bytes as f64 / 1024.0 / frames,
                c.log_entry_bytes as f64 / 1024.0 / frames,
                c.log_raw_bytes as f64 / 1024.0 / frames,
                c.checkpoints,
                kib(boxes),
                kib(l.disk.map(|d| d.kib_per_frame(fps))),
            );
        }
        let _ = writeln!(
            o,
            "  per-hop latency in each run (IMS -> box -> reply), and what one sequential link can carry at that latency:"
        );
        for l in &self.levels {
            let mut hops = load::hop_samples(&l.run.timings);
            if let Some(h) = summarize(&mut hops) {
                let _ = writeln!(
                    o,
                    "  {:>9}: p50 {} ms, p99 {} ms, mean {} ms -> 1 / mean = {:.0} frames/s per link",
                    l.per_ims,
                    ms(h.p50),
                    ms(h.p99),
                    ms(h.mean),
                    1.0 / h.mean.as_secs_f64().max(1e-9)
                );
            }
        }
        let _ = writeln!(
            o,
            "  CPU used during each run, in cores (CPU seconds / wall seconds; {} CPUs):",
            self.machine.cpus
        );
        for l in &self.levels {
            let _ = writeln!(o, "  {:>9}: {}", l.per_ims, cores(&l.cpu));
        }
        if self.levels.iter().any(|l| l.disk.is_some()) {
            let _ = writeln!(
                o,
                "  disk writes during each run (whole machine: the boxes' stores and anything else):"
            );
        }
        for l in &self.levels {
            if let Some(d) = l.disk {
                let _ = writeln!(
                    o,
                    "  {:>9}: {}",
                    l.per_ims,
                    d.describe(l.run.frames_per_s())
                );
            }
        }
        if let Some(b) = self.best() {
            let _ = writeln!(
                o,
                "  headline: {:.0} relayed frames/s at {} flows/IMS",
                b.run.frames_per_s(),
                b.per_ims
            );
        }
    }

    fn render_latency(&self, o: &mut String) {
        for l in &self.latency {
            Self::render_one_latency(o, l);
        }
    }

    fn render_one_latency(o: &mut String, l: &Latency) {
        let _ = writeln!(
            o,
            "\nlatency: flows started open-loop at {:.0} relayed frames/s offered ({:.1} flows/s), {:.1} s measured",
            l.offered_frames_per_s,
            l.offered_frames_per_s / RELAYED_PER_FLOW as f64,
            l.run.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            o,
            "  achieved {:.0} relayed frames/s; flows started {}, completed {}, failed {}, skipped {}, abandoned {}",
            l.achieved_frames_per_s(),
            l.run.started,
            l.run.completed,
            l.run.failed,
            l.run.skipped,
            l.run.abandoned
        );
        if let Some(c) = l.engine.filter(|c| c.batches > 0) {
            let _ = writeln!(
                o,
                "  commits/s {:.0}, inputs per commit {:.2}, commits of {} ms or more: {}",
                load::per_s(c.batches, l.run.elapsed),
                c.inputs as f64 / c.batches as f64,
                ifrelay::relay::engine::SLOW_COMMIT.as_millis(),
                c.slow_commits
            );
        }
        if let Some(e) = &l.run.first_error {
            let _ = writeln!(o, "  first failure: {e}");
        }
        let _ = writeln!(o, "  CPU used, in cores: {}", cores(&l.cpu));
        if let Some(d) = l.disk {
            let _ = writeln!(
                o,
                "  disk writes (whole machine): {}",
                d.describe(l.achieved_frames_per_s())
            );
        }
        let _ = writeln!(
            o,
            "  per hop = one synchronous step: IMS sends a frame to its box, the box commits and replies"
        );
        let _ = writeln!(
            o,
            "  {:<26} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "", "samples", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        let mut row = |name: &str, s: &Option<Summary>| {
            if let Some(s) = s {
                let _ = writeln!(
                    o,
                    "  {:<26} {:>8} {:>9} {:>9} {:>9} {:>9}",
                    name,
                    s.count,
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.p999),
                    ms(s.max)
                );
            }
        };
        row("PER HOP (all sync steps)", &l.hops);
        for (name, s) in &l.steps {
            row(name, s);
        }
    }

    fn render_ingest(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\ningest: what one box takes from pipelining senders (prefix_check re-checks: durable, logged, nothing relayed)"
        );
        match &self.ingest {
            Some(Ok(i)) => {
                let r = &i.result;
                let _ = writeln!(
                    o,
                    "  {} connections x {} in flight for {:.1} s: {} answered OK ({:.0} frames/s), {} otherwise",
                    r.conns,
                    r.window,
                    r.elapsed.as_secs_f64(),
                    r.ok,
                    r.frames_per_s(),
                    r.other
                );
                if let Some(c) = i.engine.filter(|c| c.batches > 0) {
                    let _ = writeln!(
                        o,
                        "  commits/s {:.0}, inputs per commit {:.1}",
                        load::per_s(c.batches, r.elapsed),
                        c.inputs as f64 / c.batches as f64
                    );
                }
                if let Some(e) = &r.first_other {
                    let _ = writeln!(o, "  first other reply: {e}");
                }
                let _ = writeln!(o, "  CPU used, in cores: {}", cores(&i.cpu));
            }
            Some(Err(e)) => {
                let _ = writeln!(o, "  failed: {e}");
            }
            None => {}
        }
    }

    fn render_bare(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\nbare TLS forwarder: same frames, same TLS, same framing; no store, no checks, no records"
        );
        let _ = writeln!(
            o,
            "  (two forwarders for the two boxes, one link per next hop, one frame at a time; links per forwarder = flows per IMS)"
        );
        let _ = writeln!(
            o,
            "  {:>9} {:>9} {:>6} {:>9} {:>5} {:>8}",
            "links", "frames", "secs", "frames/s", "lost", "errors"
        );
        for b in &self.bare {
            let _ = writeln!(
                o,
                "  {:>9} {:>9} {:>6.1} {:>9.0} {:>5} {:>8}",
                b.conns,
                b.forwarded,
                b.elapsed.as_secs_f64(),
                b.frames_per_s(),
                b.lost,
                b.driven.errors
            );
            if let Some(e) = &b.driven.first_error {
                let _ = writeln!(o, "  first error at {} links: {e}", b.conns);
            }
        }
        for b in &self.bare {
            let _ = writeln!(
                o,
                "  CPU at {:>3} links, in cores: {}",
                b.conns,
                cores(&b.cpu)
            );
        }
        if let (Some(best), Some(bare)) = (self.best(), self.bare_at_best()) {
            let _ = writeln!(
                o,
                "  ratio box / bare at {} flows/IMS = {} links: {:.0} / {:.0} = {:.3}",
                best.per_ims,
                bare.conns,
                self.frames_per_s(),
                bare.frames_per_s(),
                self.ratio()
            );
        }
    }

    fn render_memory(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\npeak RSS (VmHWM) of each box over the throughput, latency and ingest phases:"
        );
        for (name, k) in &self.rss {
            let _ = writeln!(
                o,
                "  {name}: {}",
                k.map_or_else(|| "unknown".to_owned(), |k| format!("{:.1} MiB", mib(k)))
            );
        }
        for s in &self.stopped {
            let _ = writeln!(o, "  stopped: {s}");
        }
        match &self.access {
            Some(Ok(a)) => {
                let expected = a.flows_completed * RELAYED_PER_FLOW;
                let _ = writeln!(
                    o,
                    "  access logs: {} frames in accepted, {} frames out delivered, {} other entries; \
                     {} flows completed x {RELAYED_PER_FLOW} = {expected} relayed (delivered - expected = {})",
                    a.accepted_in,
                    a.delivered_out,
                    a.other,
                    a.flows_completed,
                    a.delivered_out as i64 - expected as i64
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(o, "  access logs could not be counted: {e}");
            }
            None => {}
        }
    }

    fn render_backlog(&self, o: &mut String) {
        let _ = writeln!(o, "\nbacklog: restart on a full outbox");
        match &self.backlog {
            Some(Ok(b)) => {
                let _ = writeln!(
                    o,
                    "  {} entries for the core; filled in {:.1} s, store file {:.0} MiB",
                    b.entries,
                    b.fill.as_secs_f64(),
                    b.file_mib
                );
                let secs = |d: Option<Duration>| {
                    d.map_or_else(
                        || "never".to_owned(),
                        |d| format!("{:.3} s", d.as_secs_f64()),
                    )
                };
                let _ = writeln!(
                    o,
                    "  process start -> 'box started': {}; -> first backlog frame at the core: {}",
                    secs(b.started_after),
                    secs(b.resumed_after)
                );
                if b.resumed_after.is_some() {
                    let _ = writeln!(
                        o,
                        "  then {} frames resent in {:.1} s ({:.0} frames/s)",
                        b.resent_in_window,
                        b.rate_window.as_secs_f64(),
                        load::per_s(b.resent_in_window, b.rate_window)
                    );
                }
                let _ = writeln!(
                    o,
                    "  peak RSS of that box: {}; log lines written: {}",
                    b.peak_rss_kib
                        .map_or_else(|| "unknown".to_owned(), |k| format!("{:.1} MiB", mib(k))),
                    b.log_lines
                );
                if let Some(p) = &b.problem {
                    let _ = writeln!(o, "  problem: {p}");
                }
            }
            Some(Err(e)) => {
                let _ = writeln!(o, "  failed: {e}");
            }
            None => {}
        }
    }

    fn render_records(&self, o: &mut String) {
        if let Some(run) = &self.records {
            records::render(o, run);
        }
        if let Some(run) = &self.retention {
            retention::render(o, run);
        }
        match &self.retention_relay {
            Some(Ok(r)) => {
                let _ = writeln!(
                    o,
                    "  end to end: the first box of a fresh network started on that store and relayed open loop at {:.0} frames/s offered",
                    r.latency.offered_frames_per_s
                );
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                if let Some(h) = r.latency.hops {
                    let without = self.hop_summary().map_or_else(
                        || "n/a".to_owned(),
                        |w| format!("{:.2} / {:.2} ms", ms(w.p99), ms(w.p999)),
                    );
                    let _ = writeln!(
                        o,
                        "  per hop p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms over {} flows ({:.0} frames/s achieved); the latency phase, nothing to delete: p99 / p99.9 {without}",
                        ms(h.p50),
                        ms(h.p99),
                        ms(h.p999),
                        r.latency.run.timings.len(),
                        r.latency.achieved_frames_per_s()
                    );
                }
                let _ = writeln!(
                    o,
                    "  meanwhile the box deleted {} records and {} access-log entries in {:.0} s ({:.1} entries/s)",
                    r.deleted_records,
                    r.deleted_access,
                    r.box_time.as_secs_f64(),
                    (r.deleted_records + r.deleted_access) as f64 / r.box_time.as_secs_f64().max(1e-9)
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(o, "  end to end: failed: {e}");
            }
            None => {}
        }
    }

    fn render_flood(&self, o: &mut String) {
        let f = match &self.flood {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                let _ = writeln!(o, "\nflood mix: failed: {e}");
                return;
            }
            None => return,
        };
        let m = &f.mix;
        let _ = writeln!(
            o,
            "\nflood mix: fresh boxes, every hostile peer at once against box A for {:.1} s, normal traffic beside",
            m.duration.as_secs_f64()
        );
        let _ = writeln!(
            o,
            "  attackers: {} peers pipelining without reading, {} connections without TLS from {}, \
             {} IMS connections sending 4 MiB frames of empty maps, a peer box flooding box_status ({} frames a round); \
             from {:.1} s on {} peers stalling in a 4 MiB frame and {} IMS connections sending one slowly",
            m.never_readers,
            m.tls_less_conns,
            m.tls_less_from,
            m.empty_map_senders,
            m.box_status_frames,
            m.holders_after.as_secs_f64(),
            m.stalled,
            m.slow
        );
        let _ = writeln!(o, "  what they did: {}", f.counts.describe());
        for fail in &f.counts.failures {
            let _ = writeln!(
                o,
                "  attacker steps failed: {} x {}; the first: {}",
                fail.count, fail.what, fail.first
            );
        }
        let _ = writeln!(
            o,
            "  own IMS: serial requests every 50-100 ms, each on a fresh connection (TCP, TLS, request), \
             timed alone; not answered within {} s counts as {} s",
            flood::GIVE_UP.as_secs(),
            flood::GIVE_UP.as_secs()
        );
        let _ = writeln!(
            o,
            "  {:<8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>12}",
            "", "requests", "answered", "<= 1 s", "p50 ms", "p99 ms", "max ms", "flows done"
        );
        let before = format!("< {:.1} s", f.mix.holders_after.as_secs_f64());
        let after = format!(">= {:.1} s", f.mix.holders_after.as_secs_f64());
        for (name, a, flows) in [
            ("quiet", &f.quiet, Some(&f.quiet_flows)),
            ("flooded", &f.flooded, Some(&f.flooded_flows)),
            (before.as_str(), &f.flooded_before_holders, None),
            (after.as_str(), &f.flooded_with_holders, None),
        ] {
            let (p50, p99, max) = a.times.map_or_else(
                || ("n/a".into(), "n/a".into(), "n/a".into()),
                |s| (ms(s.p50), ms(s.p99), ms(s.max)),
            );
            let _ = writeln!(
                o,
                "  {:<8} {:>8} {:>8} {:>8.1}% {:>9} {:>9} {:>9} {:>12}",
                name,
                a.requests,
                a.answered,
                100.0 * a.within_share().unwrap_or(0.0),
                p50,
                p99,
                max,
                flows.map_or_else(String::new, |f| f.completed.to_string())
            );
        }
        let _ = writeln!(
            o,
            "  (the last two rows: flooded requests due before / after the stalled and slow attackers started, in flood time)"
        );
        let _ = writeln!(o, "  CPU used, in cores: quiet {}", cores(&f.quiet_cpu));
        let _ = writeln!(o, "                      flooded {}", cores(&f.flooded_cpu));
        if let (Some(q), Some(fl)) = (f.quiet.p99_ms(), f.flooded.p99_ms()) {
            let _ = writeln!(
                o,
                "  IMS p99 flooded / quiet: {fl:.2} / {q:.2} ms = {:.1} x",
                fl / q.max(1e-9)
            );
        }
        if let Some(e) = &f.flooded_flows.first_error {
            let _ = writeln!(o, "  first failed flow during the flood: {e}");
        }
        let _ = writeln!(
            o,
            "  peak RSS (VmHWM over the phase): box A after the quiet part {}; after the flood {}",
            f.rss_quiet_kib
                .map_or_else(|| "unknown".to_owned(), |k| format!("{:.1} MiB", mib(k))),
            f.peak_rss_kib
                .iter()
                .map(|(n, k)| format!(
                    "{n} {}",
                    k.map_or_else(|| "unknown".to_owned(), |k| format!("{:.1} MiB", mib(k)))
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for s in &f.stopped {
            let _ = writeln!(o, "  stopped: {s}");
        }
    }

    fn render_projection(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\nbytes written per year to each disk of the mirror (open-loop KiB per frame x {RELAYED_PER_FLOW} frames per flow x 365 days):"
        );
        for flows in [10_000.0, 100_000.0] {
            match self.tb_per_year(flows) {
                Some(tb) => {
                    let _ = writeln!(o, "  {flows:>7.0} flows a day: {tb:.2} TB a year");
                }
                None => {
                    let _ = writeln!(o, "  {flows:>7.0} flows a day: unknown (no disk counters)");
                }
            }
        }
    }

    fn render_targets(&self, o: &mut String) {
        let _ = writeln!(o, "\ntargets (2-core machine):");
        let fps = self.frames_per_s();
        let _ = writeln!(
            o,
            "  [{}] relayed frames/s >= {:.0}: {:.0} ({:.2} x target)",
            verdict(fps >= targets::FRAMES_PER_S),
            targets::FRAMES_PER_S,
            fps,
            fps / targets::FRAMES_PER_S
        );
        let r = self.ratio();
        let _ = writeln!(
            o,
            "  [{}] box / bare >= {:.2}: {:.3}",
            verdict(r >= targets::RATIO),
            targets::RATIO,
            r
        );
        match (self.hop_summary(), self.latency.first()) {
            (Some(h), Some(l)) => {
                let p99 = h.p99.as_secs_f64() * 1000.0;
                let sustained = l.achieved_frames_per_s() >= 0.95 * l.offered_frames_per_s
                    && l.run.failed == 0
                    && l.run.skipped == 0;
                let _ = writeln!(
                    o,
                    "  [{}] p99 per hop <= {:.0} ms at {:.0} frames/s offered: {p99:.2} ms ({:.2} x target){}",
                    verdict(p99 <= targets::P99_MS && sustained),
                    targets::P99_MS,
                    l.offered_frames_per_s,
                    p99 / targets::P99_MS,
                    if sustained {
                        String::new()
                    } else {
                        format!(
                            "; offered load NOT sustained ({:.0} frames/s achieved)",
                            l.achieved_frames_per_s()
                        )
                    }
                );
            }
            _ => {
                let _ = writeln!(o, "  [MISSED] p99 per hop: no samples");
            }
        }
        match (&self.retention_relay, self.retention_hops()) {
            (Some(Ok(r)), Some(h)) => {
                let p99 = h.p99.as_secs_f64() * 1000.0;
                let sustained = r.latency.achieved_frames_per_s()
                    >= 0.95 * r.latency.offered_frames_per_s
                    && r.latency.run.failed == 0
                    && r.latency.run.skipped == 0;
                let deleting = r.deleted_records + r.deleted_access > 0;
                let _ = writeln!(
                    o,
                    "  [{}] p99 per hop <= {:.0} ms at {:.0} frames/s offered while a box deletes by retention: {p99:.2} ms ({:.2} x target){}{}",
                    verdict(p99 <= targets::P99_MS && sustained && deleting),
                    targets::P99_MS,
                    r.latency.offered_frames_per_s,
                    p99 / targets::P99_MS,
                    if sustained { "" } else { "; offered load NOT sustained" },
                    if deleting { "" } else { "; NOTHING was deleted" },
                );
            }
            (Some(Err(e)), _) => {
                let _ = writeln!(o, "  [MISSED] p99 per hop while deleting: {e}");
            }
            _ => {}
        }
        match self.peak_rss_mib() {
            Some(m) => {
                let _ = writeln!(
                    o,
                    "  [{}] peak RSS <= {:.0} MiB per box: {m:.1} MiB",
                    verdict(m <= targets::RSS_MIB),
                    targets::RSS_MIB
                );
            }
            None => {
                let _ = writeln!(o, "  [MISSED] peak RSS: unknown");
            }
        }
        let entries = match &self.backlog {
            Some(Ok(b)) => b.entries,
            _ => 0,
        };
        match self.backlog_resume_s() {
            Some(s) => {
                let _ = writeln!(
                    o,
                    "  [{}] resend of a backlog of {} starts within {:.0} s: {s:.3} s{}",
                    verdict(s <= targets::BACKLOG_RESUME_S),
                    targets::BACKLOG_ENTRIES,
                    targets::BACKLOG_RESUME_S,
                    if entries == targets::BACKLOG_ENTRIES {
                        String::new()
                    } else {
                        format!(" (measured with {entries} entries only)")
                    }
                );
            }
            None => {
                let _ = writeln!(o, "  [MISSED] backlog resend: did not start");
            }
        }
        if let (Some(p99), Some(r)) = (self.search_ms(), self.records_run()) {
            let _ = writeln!(
                o,
                "  [{}] record search by serial and person code p99 <= {:.0} ms at {} records: {p99:.3} ms{}",
                verdict(p99 <= targets::SEARCH_MS),
                targets::SEARCH_MS,
                targets::SEARCH_RECORDS,
                if r.records == targets::SEARCH_RECORDS {
                    String::new()
                } else {
                    format!(" (measured with {} records only)", r.records)
                }
            );
        }
        if self.flood.is_none() {
            return;
        }
        match self.flood_rss_mib() {
            Some(m) => {
                let _ = writeln!(
                    o,
                    "  [{}] peak RSS <= {:.0} MiB per box under the flood mix: {m:.1} MiB",
                    verdict(m <= targets::RSS_MIB),
                    targets::RSS_MIB
                );
            }
            None => {
                let _ = writeln!(o, "  [MISSED] peak RSS under the flood mix: unknown");
            }
        }
        match self.flood_ims_within_1s() {
            Some(w) => {
                let _ = writeln!(
                    o,
                    "  [{}] own IMS answered within 1 s during the flood >= {:.0} %: {:.1} % (p99 {} ms)",
                    verdict(w >= targets::FLOOD_WITHIN_1S),
                    targets::FLOOD_WITHIN_1S * 100.0,
                    w * 100.0,
                    self.flood_ims_p99_ms()
                        .map_or_else(|| "n/a".to_owned(), |p| format!("{p:.2}"))
                );
            }
            None => {
                let _ = writeln!(o, "  [MISSED] own IMS during the flood: no requests");
            }
        }
    }
}
