//! `ifrelay-storebench`: bytes written per input, commit latency and
//! inputs/s of the durable-path candidates of issue 9 item 1 (see
//! `ifrelay_testkit::bench::store_candidates` and docs/performance.md,
//! "Durable-path candidates").
//!
//! Prints one `storebench:` line per (candidate, N), then a Markdown table.
//! Exit codes: 0 done, 2 usage error, 1 a run failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ifrelay_testkit::bench::store_candidates::{
    render_table, run_one, Candidate, Options, Workload, FRAME_BYTES, OUTBOX_LAG, PROCESS_BYTES,
    REPLY_BYTES,
};
use ifrelay_testkit::bench::BenchError;
use ifrelay_testkit::workdir;

/// Measures the durable-path candidates of issue 9 item 1 on the real disk.
#[derive(Debug, Parser)]
#[command(name = "ifrelay-storebench")]
struct Args {
    /// Work folder on the disk to measure; emptied first only if this tool
    /// (or the demo or benchmark) made it.
    #[arg(long, default_value = "var/storebench")]
    dir: PathBuf,
    /// Inputs per batch, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    sizes: Vec<u64>,
    /// Candidates, comma-separated (default: all): A-store, A-imitation,
    /// C-no-index, B-log, BC-log-no-index, D-two-phase, D-quick-repair,
    /// E-wal-checkpoint, EC-wal-no-index.
    #[arg(long, value_delimiter = ',')]
    candidates: Vec<String>,
    /// Measured batches per (candidate, N), at most.
    #[arg(long, default_value_t = 3000)]
    batches: u64,
    /// Measured seconds per (candidate, N), at most.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Unmeasured batches before each measurement.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Largest preallocated log segment of the B and E candidates, MiB (a
    /// run stops when it is full).
    #[arg(long, default_value_t = 512)]
    segment_mib: u64,
    /// Keep the stores after the run (default: removed at the end).
    #[arg(long)]
    keep: bool,
    /// Instead of the candidates: fill stores of these many records
    /// (comma-separated) and time their opens after a clean stop
    /// (docs/performance.md, "Restart time and store size").
    #[arg(long, value_delimiter = ',')]
    restart: Vec<u64>,
    /// Instead of the candidates: fill stores of these many records, make
    /// them schema version 1 (no search indexes), and time the open that
    /// migrates each.
    #[arg(long, value_delimiter = ',')]
    migrate: Vec<u64>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ifrelay-storebench: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<(), BenchError> {
    if !args.migrate.is_empty() {
        workdir::prepare(&args.dir)?;
        for &records in &args.migrate {
            println!(
                "{}",
                ifrelay_testkit::bench::restart::migrate(&args.dir, records)?
            );
        }
        return Ok(());
    }
    if !args.restart.is_empty() {
        workdir::prepare(&args.dir)?;
        for &records in &args.restart {
            let r = ifrelay_testkit::bench::restart::run(&args.dir, records)?;
            println!("{}", r.line());
        }
        return Ok(());
    }
    let mut candidates = Vec::new();
    for label in &args.candidates {
        candidates.push(Candidate::parse(label).ok_or(format!("unknown candidate {label}"))?);
    }
    if candidates.is_empty() {
        candidates = Candidate::ALL.to_vec();
    }
    if args.sizes.contains(&0) || !args.seconds.is_finite() || args.seconds <= 0.0 {
        return Err("batch sizes must be at least 1 and seconds positive".into());
    }
    workdir::prepare(&args.dir)?;
    let opts = Options {
        dir: args.dir.clone(),
        sizes: args.sizes.clone(),
        candidates,
        batches: args.batches,
        time: Duration::from_secs_f64(args.seconds),
        warmup_batches: args.warmup,
        segment_bytes: args.segment_mib.saturating_mul(1 << 20),
    };
    let w = Workload::new()?;
    let (access, record) = w.body_sizes()?;
    println!(
        "storebench: per input: process {PROCESS_BYTES} B, outbox frame {FRAME_BYTES} B \
         (one removed {OUTBOX_LAG} inputs later), seen reply {REPLY_BYTES} B, access-log body \
         {access} B, record body {record} B (one input in four)"
    );
    let mut results = Vec::new();
    for &candidate in &opts.candidates {
        for &n in &opts.sizes {
            let r = run_one(&opts, &w, candidate, n)?;
            println!("{}", r.line());
            results.push(r);
        }
    }
    println!();
    print!("{}", render_table(&results));
    if !args.keep {
        for entry in std::fs::read_dir(&opts.dir)? {
            let path = entry?.path();
            if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)?;
            }
        }
    }
    Ok(())
}
