//! `ifrelay-demo` (`make demo`): two boxes as real `ifrelay run` child
//! processes, their intermediate servers and the core system on loopback;
//! see [`ifrelay_testkit::demo`]. Exit codes: 0 done, 2 usage error, 1 the
//! demo failed (printed once with its cause chain).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ifrelay_testkit::demo::{self, DemoOptions};

/// Two boxes, their intermediate servers and the core system on loopback
/// over mutual TLS 1.3; complete flows in both directions, one box killed
/// with SIGKILL and restarted halfway, one refused attempt per refusal
/// reason, an orderly stop and a summary read from the stores.
#[derive(Debug, Parser)]
#[command(name = "ifrelay-demo", version)]
struct Args {
    /// Work folder for the PKI, configurations, logs and stores. Made if
    /// missing; emptied only if an earlier demo made it (a non-empty
    /// folder the demo did not make is refused).
    #[arg(long, default_value = "var/demo")]
    dir: PathBuf,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Stop after this many flows per direction.
    #[arg(long)]
    flows: Option<usize>,
    /// Do not kill and restart a box halfway.
    #[arg(long)]
    no_crash: bool,
    /// The firmware binary the boxes run as (default: `ifrelay` beside
    /// this binary, or $IFRELAY_BIN).
    #[arg(long)]
    firmware: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
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
    let options = DemoOptions {
        dir: args.dir,
        seconds: args.seconds,
        max_flows: args.flows,
        crash: !args.no_crash,
        binary,
        ..DemoOptions::default()
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("demo")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failure(&e),
    };
    match rt.block_on(demo::run(options)) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => failure(e.as_ref()),
    }
}

fn failure(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("ifrelay-demo: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    ExitCode::FAILURE
}
