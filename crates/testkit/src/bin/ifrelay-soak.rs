//! `ifrelay-soak` (`make soak`): the crash harness of `make test`
//! ([`ifrelay_testkit::soak`]) run for many seeded SIGKILLs. Prints the
//! seed first and, last, the summary line
//! `soak: kills=N flows=N … lost=0 duplicated=0 serials_reissued=0 …`.
//! Exit codes: 0 nothing lost or duplicated, 1 a defect was found or the
//! harness could not run (printed once with its cause), 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ifrelay_testkit::soak::{self, SoakOptions};

/// Both boxes as real `ifrelay run` processes, flows in both directions,
/// boxes killed with SIGKILL at seeded random moments and restarted; then
/// the stores and the intermediate servers are checked against the model.
#[derive(Debug, Parser)]
#[command(name = "ifrelay-soak", version)]
struct Args {
    /// SIGKILLs to deliver (each followed by a restart).
    #[arg(long, default_value_t = 1000)]
    kills: usize,
    /// Seed of the kill moments (default: from the clock); a seed replays
    /// a run's moments.
    #[arg(long)]
    seed: Option<u64>,
    /// Flows running at once per direction.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Work folder for the PKI, configurations, logs and stores. Made if
    /// missing; emptied only if an earlier run made it.
    #[arg(long, default_value = "var/soak")]
    dir: PathBuf,
    /// The firmware binary the boxes run as (default: `ifrelay` beside
    /// this binary, or $IFRELAY_BIN).
    #[arg(long)]
    firmware: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let binary = match args
        .firmware
        .map_or_else(ifrelay_testkit::firmware::binary, Ok)
    {
        Ok(b) => b,
        Err(e) => return failure(&e),
    };
    if let Err(e) = ifrelay_testkit::workdir::prepare(&args.dir) {
        return failure(&e);
    }
    let seed = args.seed.unwrap_or_else(soak::clock_seed);
    println!(
        "soak: seed {seed} (replay with --seed {seed}), {} kills",
        args.kills
    );
    let options = SoakOptions {
        dir: args.dir,
        binary,
        seed,
        kills: args.kills,
        concurrency: args.concurrency,
        progress_every: 50,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("soak")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failure(&e),
    };
    match rt.block_on(soak::run(&options)) {
        Ok(report) => {
            for defect in &report.defects {
                println!("soak: defect: {defect}");
            }
            println!("{}", report.summary());
            if report.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => failure(e.as_ref()),
    }
}

fn failure(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("ifrelay-soak: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
    ExitCode::FAILURE
}
