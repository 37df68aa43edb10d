//! `ifrelay`: CLI plus glue. Reads the configuration, sets up logging and
//! the runtime, and starts the box (or one of the maintenance commands).
//! Exit codes are in [`ifrelay::exit`] and `docs/config.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::Signal;
use ifrelay::config::Config;
use ifrelay::exit;
use ifrelay::supervisor::{Exit, RunningBox, StartError};

/// Firmware of the Interface System appliance: relays every message
/// between the core system, other agencies' interface systems and the
/// municipality's intermediate server, and keeps the provision records and
/// access log.
#[derive(Debug, Parser)]
#[command(name = "ifrelay", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the box until SIGTERM or SIGINT.
    ///
    /// Exit codes: 0 stopped on request, 78 invalid configuration, 74 the
    /// store or its directory cannot be opened, 70 a critical task died
    /// (the service manager restarts the box), 1 any other failure.
    Run {
        /// The configuration file (docs/config.md).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file, its certificates and the store's
    /// directory, and exit (0 valid, 78 invalid).
    CheckConfig {
        /// The configuration file (docs/config.md).
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// Verify the hash chains of a store file, read-only: never creates,
    /// repairs or writes anything, and is safe while the box runs.
    ///
    /// Exit codes: 0 intact, 1 damaged (the report names each defect), 74
    /// not a readable store (missing, not a store, newer schema, or left
    /// unclean by a crash: start the box once, then verify again).
    VerifyStore {
        /// The store file (`store.path` of the configuration).
        #[arg(value_name = "FILE")]
        store: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; clap knows which.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    ifrelay::logging::init();
    match cli.command {
        Command::Run { config } => run(config),
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!(
                    "configuration OK: box {} ({})",
                    cfg.agency,
                    config.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::VerifyStore { store } => verify_store(store),
    }
}

fn config_error(e: &ifrelay::config::ConfigError) -> ExitCode {
    print_chain("invalid configuration: ", e);
    ExitCode::from(exit::CONFIG)
}

fn failure(e: &dyn std::error::Error, code: u8) -> ExitCode {
    print_chain("", e);
    ExitCode::from(code)
}

/// Prints `e` and each of its causes once, one per line.
fn print_chain(what: &str, e: &dyn std::error::Error) {
    eprintln!("ifrelay: {what}{e}");
    let mut source = e.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}

fn run(file: PathBuf) -> ExitCode {
    // Validate before binding anything (STYLE: two-stage configuration).
    let config = match Config::load(&file) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ifrelay")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failure(&e, exit::FAILURE),
    };
    rt.block_on(async move {
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => return failure(&e, exit::FAILURE),
        };
        let mut running = match RunningBox::start(&config).await {
            Ok(b) => b,
            Err(e) => {
                let code = match e {
                    StartError::Store { .. } | StartError::StoreDir { .. } => exit::IO,
                    _ => exit::FAILURE,
                };
                return failure(&e, code);
            }
        };
        let token = running.shutdown_token();
        tokio::spawn(async move {
            signals.stop_requested().await;
            token.cancel();
        });
        let why = running.wait().await;
        running.shutdown().await;
        match why {
            Exit::Requested => ExitCode::SUCCESS,
            Exit::TaskDied(died) => {
                eprintln!("ifrelay: {died}; exiting so the service manager restarts the box");
                ExitCode::from(exit::SOFTWARE)
            }
        }
    })
}

/// The signals a running box listens to, installed before anything is
/// bound so that no signal can arrive while its default action (end the
/// process) still holds.
///
/// SIGTERM (the service manager), SIGINT (Ctrl-C at a console) and SIGQUIT
/// stop the box. SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored, so a
/// stray signal from an operator's session can never end the box without
/// its `stopping` notice; the configuration is read at start only (restart
/// the service to apply a change). SIGPIPE is ignored by the Rust runtime:
/// a broken connection is an error on that connection only.
struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Returns when a stop signal arrives; logs and ignores the others.
    async fn stop_requested(mut self) {
        loop {
            let ignored = tokio::select! {
                _ = self.term.recv() => break tracing::info!(signal = "SIGTERM", "stop requested"),
                _ = self.int.recv() => break tracing::info!(signal = "SIGINT", "stop requested"),
                _ = self.quit.recv() => break tracing::info!(signal = "SIGQUIT", "stop requested"),
                _ = self.hup.recv() => "SIGHUP",
                _ = self.usr1.recv() => "SIGUSR1",
                _ = self.usr2.recv() => "SIGUSR2",
            };
            tracing::warn!(
                signal = ignored,
                "signal ignored: the box stops only on SIGTERM, SIGINT or SIGQUIT, and reads its configuration at start only"
            );
        }
    }
}

/// Verifies through a read-only handle: a mistyped path is an error, not
/// a new empty store, and a running box keeps committing meanwhile.
fn verify_store(file: PathBuf) -> ExitCode {
    let store = match ifrelay_store::ReadOnlyStore::open(&file) {
        Ok(s) => s,
        Err(e) => return failure(&e, exit::IO),
    };
    match store.verify_chains() {
        Ok(report) => {
            print!("{}", ifrelay::report::chain_report(&report));
            if report.is_intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => failure(&e, exit::IO),
    }
}
