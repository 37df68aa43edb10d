//! `ifrelay`: CLI plus glue. Reads the configuration, sets up logging and
//! the runtime, and starts the box (or one of the maintenance commands).
//!
//! Exit codes: 0 done, 2 usage error, 78 invalid configuration (EX_CONFIG),
//! 1 any other failure (printed once with its cause chain).

use std::path::PathBuf;
use std::process::ExitCode;

use ifrelay::config::{Config, EXIT_CONFIG};
use ifrelay::supervisor::RunningBox;

const USAGE: &str = "\
usage:
  ifrelay run --config FILE        run the box until SIGINT/SIGTERM
  ifrelay check-config FILE        validate a configuration file and exit
  ifrelay verify-store FILE        verify the hash chains of a store file
  ifrelay demo [--dir DIR] [--seconds S] [--flows N] [--no-crash]
                                   two boxes (child processes), their intermediate
                                   servers and the core system on loopback; traffic
                                   for S seconds (default 8) or N flows per
                                   direction, one box killed and restarted halfway;
                                   prints a summary
";

fn main() -> ExitCode {
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["run", "--config", file] => run(PathBuf::from(file)),
        ["check-config", file] => match Config::load(&PathBuf::from(file)) {
            Ok(cfg) => {
                println!("configuration OK: box {} ({})", cfg.agency, file);
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        ["verify-store", file] => verify_store(PathBuf::from(file)),
        ["demo", rest @ ..] => demo(rest),
        ["help" | "--help" | "-h"] => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn config_error(e: &ifrelay::config::ConfigError) -> ExitCode {
    eprintln!("ifrelay: invalid configuration: {e}");
    ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1))
}

fn failure(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("ifrelay: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    ExitCode::FAILURE
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ifrelay")
        .build()
}

fn run(file: PathBuf) -> ExitCode {
    // Validate before binding anything (STYLE: two-stage configuration).
    let config = match Config::load(&file) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return failure(&e),
    };
    rt.block_on(async move {
        let running = match RunningBox::start(&config).await {
            Ok(b) => b,
            Err(e) => return failure(&e),
        };
        let token = running.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            token.cancel();
        });
        running.stopped().await;
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("stop requested");
}

fn verify_store(file: PathBuf) -> ExitCode {
    let store = match ifrelay_store::Store::open(&file, 16 << 20) {
        Ok(s) => s,
        Err(e) => return failure(&e),
    };
    match store.reader().verify_chains() {
        Ok(report) => {
            print!("{}", ifrelay::report::chain_report(&report));
            if report.is_intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => failure(&e),
    }
}

fn demo(rest: &[&str]) -> ExitCode {
    let mut options = ifrelay::demo::DemoOptions::default();
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let ok = match *arg {
            "--dir" => args
                .next()
                .map(|d| options.dir = PathBuf::from(d))
                .is_some(),
            "--seconds" => args
                .next()
                .and_then(|n| n.parse().ok())
                .map(|n| options.seconds = n)
                .is_some(),
            "--flows" => args
                .next()
                .and_then(|n| n.parse().ok())
                .map(|n| options.max_flows = Some(n))
                .is_some(),
            "--no-crash" => {
                options.crash = false;
                true
            }
            _ => false,
        };
        if !ok {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return failure(&e),
    };
    match rt.block_on(ifrelay::demo::run(options)) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => failure(e.as_ref()),
    }
}
