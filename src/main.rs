//! `ifrelay`: CLI plus glue. Reads the configuration, sets up logging and
//! the runtime, and starts the box (or one of the maintenance commands).
//! Exit codes are in [`ifrelay::exit`] and `docs/config.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ifrelay::config::Config;
use ifrelay::exit;
use ifrelay::identity::{BoxKey, Created, IdentityError};
use ifrelay::report::IdentityCard;
use ifrelay::supervisor::{Exit, RunningBox, StartError};
use ifrelay_store::{StoreError, SurveyEvent};
use tokio::signal::unix::Signal;

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
    /// Creates the box's signing key in the store's folder at first start.
    ///
    /// Exit codes: 0 stopped on request, 78 invalid configuration, 74 the
    /// store, its directory or the box's key file cannot be opened or
    /// created, 77 the box's key file is refused (open to group or others,
    /// another owner, not a key; docs/operations.md), 65 the store is
    /// damaged (refused and left as it is; README, "When the store is
    /// damaged"), 70 a critical task died (the service manager restarts
    /// the box), 1 any other failure.
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
    /// Show the box's own signing key, for registering it with the
    /// national operator: the box's party, the public key (hex and PEM),
    /// its fingerprint and the key file.
    ///
    /// Creates the key (and the store's folder, mode 0700) when the box has
    /// none yet, as the first `run` does, and then says so on standard
    /// error. Shows public data only: the private key never leaves its
    /// file. Checks every key and value of the configuration but not the
    /// TLS files it names (`check-config` does), so it works before the
    /// box's certificate is installed. Run it as the user the service runs
    /// as: the box refuses a key owned by another user.
    ///
    /// Exit codes: 0 shown, 78 invalid configuration, 74 the store's
    /// folder or the key file cannot be created or read, 77 the key file is
    /// refused (open to group or others, another owner, not a key; see
    /// docs/operations.md, "The box's signing key"), 1 any other failure.
    Identity {
        /// The configuration file (docs/config.md).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print one JSON object (party, name, public_key, fingerprint,
        /// public_key_pem, key_file, created) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Export records (all, or a search result) and the access log into a
    /// new or empty folder: CBOR and CSV files, a manifest signed with the
    /// box's key, optionally encrypted to auditors (docs/export.md).
    ///
    /// Reads the store read-only, so it works on a stopped box only (a
    /// running box holds its store alone; the console exports from a
    /// running box in a later release). After an unclean stop, start the
    /// box once first: the export reads the database file, not the redo
    /// log. Never writes into a folder that holds anything.
    ///
    /// Exit codes: 0 exported, 78 invalid configuration, 73 the target is
    /// not a new or empty folder, 74 the store or the box's key cannot be
    /// read, or a file cannot be written, 65 the store is damaged, 77 the
    /// key file is refused, 2 usage (a bad filter or recipient), 1 other.
    Export(Box<ExportArgs>),
    /// Verify an export folder anywhere, without a store: the manifest's
    /// signature, the box that signed it, every file and its SHA-256, no
    /// extra file, and the hash chain of every CBOR file in clear. Prints
    /// one line per problem (docs/export.md).
    ///
    /// Exit codes: 0 the export verifies; otherwise the code of the first
    /// problem printed: 10 bad manifest, 11 bad signature, 12 wrong box,
    /// 13 missing file, 14 extra file, 15 edited file, 16 broken chain,
    /// 17 an entry outside the selection;
    /// 74 the folder cannot be read, 2 usage.
    VerifyExport {
        /// The export folder.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// The box's registered public key: a PEM file as `ifrelay
        /// identity` prints it, or a file holding 64 hex digits.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// The box expected: its agency code, party (`is/<agency>`) or
        /// name.
        #[arg(long, value_name = "ID")]
        box_id: Option<String>,
    },
    /// Verify the hash chains of a store file, read-only: never creates,
    /// repairs or writes anything, and is safe while the box runs.
    ///
    /// Exit codes: 0 intact, 1 tampered (a chain is broken; the report
    /// names each defect), 65 corrupt (the file's pages do not match their
    /// checksums; the report says where, as far as it can tell), 74 not a
    /// readable store (missing, not a store, newer schema, or left unclean
    /// by a crash: start the box once, then verify again).
    VerifyStore {
        /// The store file (`store.path` of the configuration).
        #[arg(value_name = "FILE")]
        store: PathBuf,
        /// Internal: verify in this process (the verifier's child).
        #[arg(long, hide = true)]
        isolated: bool,
        /// Internal: read every row of a file found damaged and say what
        /// reads wrong (the survey's child).
        #[arg(long, hide = true, conflicts_with = "isolated")]
        survey: bool,
    },
}

/// What `ifrelay export` exports and where.
#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// The configuration file (docs/config.md): the store, the box's key.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The target folder: created if missing, refused unless empty.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Export the records only.
    #[arg(long, conflicts_with_all = ["access", "all"])]
    records: bool,
    /// Export the access log only.
    #[arg(long, conflicts_with = "all")]
    access: bool,
    /// Export records and access log (the default).
    #[arg(long)]
    all: bool,
    /// Entries appended at or after this time (RFC 3339, e.g.
    /// 2026-04-01T00:00:00+09:00); records and access log.
    #[arg(long, value_name = "TIME")]
    since: Option<jiff::Timestamp>,
    /// Entries appended before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    until: Option<jiff::Timestamp>,
    /// Records of this processing serial.
    #[arg(long)]
    serial: Option<ifrelay_proto::Serial>,
    /// Records whose prefix names this requesting agency.
    #[arg(long, value_name = "AGENCY")]
    requester: Option<ifrelay_proto::AgencyCode>,
    /// Records whose prefix names this providing agency.
    #[arg(long, value_name = "AGENCY")]
    provider: Option<ifrelay_proto::AgencyCode>,
    /// Records of this business code.
    #[arg(long, value_name = "CODE")]
    business: Option<ifrelay_proto::BusinessCode>,
    /// Records of this information-name code.
    #[arg(long, value_name = "CODE")]
    info_name: Option<ifrelay_proto::InfoNameCode>,
    /// Records whose prefix names this item code.
    #[arg(long, value_name = "CODE")]
    item: Option<ifrelay_proto::ItemCode>,
    /// Records of this person code (符号); the manifest keeps its SHA-256
    /// only.
    #[arg(long, value_name = "CODE")]
    code: Option<ifrelay_proto::PersonCode>,
    /// Records of this kind.
    #[arg(long, value_parser = ["query", "provision"])]
    kind: Option<String>,
    /// Records of this side.
    #[arg(long, value_parser = ["requester", "provider"])]
    side: Option<String>,
    /// Encrypt every file to this auditor's age recipient (`age1…`);
    /// repeat for several auditors.
    #[arg(long, value_name = "AGE_RECIPIENT")]
    encrypt_to: Vec<String>,
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
                // Not an error: a USB-serial adapter may be plugged in
                // later, and the console opens the port every second.
                if let Some(tty) = cfg.console.tty.as_ref().filter(|t| !t.exists()) {
                    eprintln!(
                        "ifrelay: warning: console.tty {} does not exist now; the console serves it once it appears",
                        tty.display()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Identity { config, json } => identity(&config, json),
        Command::Export(args) => export(&args),
        Command::VerifyExport {
            dir,
            public_key,
            box_id,
        } => verify_export(&dir, public_key.as_deref(), box_id),
        Command::VerifyStore {
            store,
            isolated,
            survey,
        } => match (isolated, survey) {
            (true, _) => verify_here(&store),
            (_, true) => survey_here(&store),
            _ => verify_store(&store),
        },
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
                let code = match &e {
                    StartError::Store { source, .. } if source.is_damaged() => exit::DAMAGED,
                    // Not damage, but restarting cannot help either.
                    StartError::Store { source, .. } if source.is_log_missing_or_foreign() => {
                        return failure(&e, exit::DAMAGED)
                    }
                    StartError::Store { .. } | StartError::StoreDir { .. } => exit::IO,
                    StartError::Trust(_) => exit::CONFIG,
                    StartError::Identity(e) => identity_exit_code(e),
                    _ => exit::FAILURE,
                };
                if code == exit::DAMAGED {
                    print_chain("", &e);
                    eprintln!("{}", damaged_store_steps(&config.store.path));
                    return ExitCode::from(code);
                }
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

/// `identity`: loads or creates the box's key and shows its public half.
fn identity(file: &Path, json: bool) -> ExitCode {
    let config = match Config::read(file) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let (key, created) = match BoxKey::load_or_create(config.store_dir()) {
        Ok(loaded) => loaded,
        Err(e) => return failure(&e, identity_exit_code(&e)),
    };
    let created = created == Created::Now;
    if created {
        eprintln!(
            "ifrelay: created the box's signing key {} just now; register its fingerprint with \
             the national operator (docs/operations.md, \"The box's signing key\")",
            key.path().display()
        );
    }
    let card = IdentityCard::new(&config.party(), config.name.as_deref(), &key, created);
    print!("{}", if json { card.json() } else { card.text() });
    ExitCode::SUCCESS
}

/// `export`: opens the store read-only and the box's key, and writes the
/// export (docs/export.md).
fn export(args: &ExportArgs) -> ExitCode {
    use ifrelay::export::{self, AccessSelection, ExportError, ExportRequest};
    use ifrelay_store::{RecordFilter, RecordKind, Side};

    let config = match Config::read(&args.config) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let recipients = match args
        .encrypt_to
        .iter()
        .map(|r| export::parse_recipient(r))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(r) => r,
        Err(e) => return failure(&e, exit::USAGE),
    };
    let since = args.since.map(|t| t.as_millisecond());
    let until = args.until.map(|t| t.as_millisecond());
    let filter = RecordFilter {
        since,
        until,
        serial: args.serial.clone(),
        requester: args.requester.clone(),
        provider: args.provider.clone(),
        business: args.business.clone(),
        info_name: args.info_name.clone(),
        item: args.item.clone(),
        code: args.code.clone(),
        kind: args.kind.as_deref().map(|k| match k {
            "query" => RecordKind::Query,
            _ => RecordKind::Provision,
        }),
        side: args.side.as_deref().map(|s| match s {
            "requester" => Side::Requester,
            _ => Side::Provider,
        }),
        ..RecordFilter::default()
    };
    let key = match BoxKey::load(config.store_dir()) {
        Ok(key) => key,
        Err(e) => return failure(&e, identity_exit_code(&e)),
    };
    let store = match ifrelay_store::ReadOnlyStore::open(&config.store.path) {
        Ok(s) => s,
        Err(e) => {
            let code = if e.is_damaged() {
                exit::DAMAGED
            } else {
                exit::IO
            };
            return failure(&e, code);
        }
    };
    let snapshot = match store.snapshot() {
        Ok(s) => s,
        Err(e) => return failure(&e, exit::IO),
    };
    let labels = export_labels(&config, &snapshot);
    let (records, access) = match (args.records, args.access) {
        (true, _) => (true, false),
        (_, true) => (false, true),
        _ => (true, true),
    };
    let request = ExportRequest {
        out: &args.out,
        records: records.then_some(filter),
        access: access.then_some(AccessSelection { since, until }),
        recipients,
        labels,
        party: config.party().to_string(),
        agency: config.agency.to_string(),
        name: config.name.clone(),
        now: jiff::Timestamp::now().as_millisecond(),
    };
    match export::export(&snapshot, &key, &request) {
        Ok(summary) => {
            println!(
                "exported {} records and {} access-log entries to {}",
                summary.records,
                summary.access_entries,
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = match &e {
                ExportError::TargetNotEmpty { .. } | ExportError::TargetNotAFolder { .. } => {
                    exit::CANNOT_CREATE
                }
                ExportError::BadRecipient { .. } => exit::USAGE,
                ExportError::Store(s) if s.is_damaged() => exit::DAMAGED,
                ExportError::Target { .. } | ExportError::Write { .. } | ExportError::Store(_) => {
                    exit::IO
                }
                _ => exit::FAILURE,
            };
            failure(&e, code)
        }
    }
}

/// The labels of the masters of the newest distribution the store holds,
/// re-verified against the pinned roots as at every start; none (codes
/// only, said on standard error) when there is no distribution or it does
/// not verify.
fn export_labels(
    config: &Config,
    snapshot: &ifrelay_store::Snapshot,
) -> Option<(u64, ifrelay::export::Labels)> {
    let stored = match snapshot.current_prefix() {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            eprintln!(
                "ifrelay: the box holds no masters: the CSV files carry codes without labels"
            );
            return None;
        }
        Err(e) => {
            print_chain(
                "cannot read the masters; the CSV files carry codes only: ",
                &e,
            );
            return None;
        }
    };
    let verified = config
        .distribution_roots()
        .map_err(|e| e.to_string())
        .and_then(|roots| ifrelay::export::Labels::from_stored(&stored.1, &roots));
    match verified {
        Ok(labels) => Some((stored.0, labels)),
        Err(why) => {
            eprintln!(
                "ifrelay: the stored distribution {} does not verify ({why}): the CSV files carry \
                 codes without labels",
                stored.0
            );
            None
        }
    }
}

/// `verify-export`: checks an export folder and prints one line per
/// problem.
fn verify_export(dir: &Path, public_key: Option<&Path>, box_id: Option<String>) -> ExitCode {
    use ifrelay::export::{verify_export, ExpectedBox};
    let public_key = match public_key.map(read_public_key).transpose() {
        Ok(key) => key,
        Err(why) => {
            eprintln!("ifrelay: {why}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let expected = ExpectedBox { public_key, box_id };
    let report = match verify_export(dir, &expected) {
        Ok(r) => r,
        Err(e) => return failure(&e, exit::IO),
    };
    for line in &report.checked {
        println!("ok: {line}");
    }
    for finding in &report.findings {
        println!("FAILED: {finding}");
    }
    match report.findings.first() {
        None => {
            println!("verdict: the export verifies");
            ExitCode::SUCCESS
        }
        Some(first) => {
            println!("verdict: the export does NOT verify");
            ExitCode::from(first.exit_code())
        }
    }
}

/// A public key from a PEM file (as `ifrelay identity` prints it) or a
/// file of 64 hex digits.
fn read_public_key(path: &Path) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the public key file {}: {e}", path.display()))?;
    let bad = || {
        format!(
            "{} holds no Ed25519 public key (PEM PUBLIC KEY or 64 hex digits)",
            path.display()
        )
    };
    if let Some(key) = ifrelay::export::verify::parse_hex_key(&text) {
        return Ok(key);
    }
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| bad())?;
    let key: [u8; 32] = der
        .get(12..)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(bad)?;
    if der[..] != ifrelay::identity::public_key_spki_der(&key)[..] {
        return Err(bad());
    }
    Ok(key)
}

/// 77 for a key file that is there but refused, 74 for one that cannot be
/// read or written, 1 for a failed random source.
fn identity_exit_code(e: &IdentityError) -> u8 {
    match e {
        e if e.is_refused() => exit::KEY_REFUSED,
        IdentityError::Random => exit::FAILURE,
        _ => exit::IO,
    }
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
            // Biased, ignored ones first: signals that arrived before this
            // loop first ran (a slow start) are all logged before a stop
            // signal among them ends it.
            let ignored = tokio::select! {
                biased;
                _ = self.hup.recv() => "SIGHUP",
                _ = self.usr1.recv() => "SIGUSR1",
                _ = self.usr2.recv() => "SIGUSR2",
                _ = self.term.recv() => break tracing::info!(signal = "SIGTERM", "stop requested"),
                _ = self.int.recv() => break tracing::info!(signal = "SIGINT", "stop requested"),
                _ = self.quit.recv() => break tracing::info!(signal = "SIGQUIT", "stop requested"),
            };
            tracing::warn!(
                signal = ignored,
                "signal ignored: the box stops only on SIGTERM, SIGINT or SIGQUIT, and reads its configuration at start only"
            );
        }
    }
}

/// What staff do about a damaged store, printed when `run` refuses one.
fn damaged_store_steps(path: &Path) -> String {
    let path = path.display();
    format!(
        "ifrelay: the box does not start on a damaged store, and wrote nothing to it. What to do:\n\
         \x20 1. leave the box stopped: a restart finds the same damage (exit 65);\n\
         \x20 2. `ifrelay verify-store {path}` reports what is damaged and where;\n\
         \x20 3. move the file aside, e.g. `mv {path} {path}.damaged`, and keep it: the records \
         in the damaged file are kept for the auditor;\n\
         \x20 4. start with an empty store only after the municipality's IT department and the \
         national operator agree (README, \"When the store is damaged\")."
    )
}

/// `verify-store`: runs the verifier in a child process of this binary
/// (`--isolated`), so that nothing redb does on a damaged file — a panic,
/// which aborts the firmware, or a loop — can end the verification
/// without a verdict: a verifier that dies is a CORRUPT verdict. On
/// CORRUPT, a second child (`--survey`) reads the file row by row to say
/// where the damage is.
fn verify_store(file: &Path) -> ExitCode {
    let args = ["verify-store", "--isolated"];
    let mut verifier = child(&args, file);
    if verifier.status.is_none() && !verifier.timed_out {
        eprint!("{}", verifier.stderr);
        return ExitCode::from(exit::FAILURE);
    }
    if verifier.died() {
        // Once more, in case a box started on the file meanwhile.
        verifier = child(&args, file);
    }
    print!("{}", verifier.stdout);
    // How the verifier died, when it did not come to a verdict itself.
    let died = match verifier.status {
        Some(status) => match status.code().and_then(|c| u8::try_from(c).ok()) {
            Some(code @ (exit::OK | exit::FAILURE | exit::IO | exit::USAGE)) => {
                eprint!("{}", verifier.stderr);
                return ExitCode::from(code);
            }
            Some(exit::DAMAGED) => None,
            _ => Some(format!("{}{}", describe(status), verifier.panic_message())),
        },
        None => Some(format!("stopped after {} s", CHILD_TIMEOUT.as_secs())),
    };
    if let Some(how) = &died {
        println!("integrity: DAMAGED: reading the file stopped the verifier ({how})");
    }
    for line in survey(file) {
        println!("where: {line}");
    }
    println!("verdict: CORRUPT");
    match died {
        None => eprint!("{}", verifier.stderr),
        Some(_) => eprintln!(
            "ifrelay: the store file {} is damaged: reading it stopped the verifier; keep the \
             file for the auditor (README, \"When the store is damaged\")",
            file.display()
        ),
    }
    ExitCode::from(exit::DAMAGED)
}

/// The verifier itself (`verify-store --isolated`): opens the file through
/// a read-only handle — a mistyped path is an error, not a new empty
/// store, and a running box keeps committing meanwhile — whose open checks
/// every page against its checksum, then walks both chains.
fn verify_here(file: &Path) -> ExitCode {
    let store = match ifrelay_store::ReadOnlyStore::open(file) {
        Ok(s) => s,
        Err(e) => {
            if let StoreError::Damaged { detail, .. } = &e {
                println!("integrity: DAMAGED: {detail}");
                return failure(&e, exit::DAMAGED);
            }
            return failure(&e, exit::IO);
        }
    };
    if store.pages_checked() {
        println!("integrity: every page of the last commit matches its checksum");
    } else {
        println!(
            "integrity: pages not checked: a box has the file open (it checked them when it \
             started); verify a copy taken while the box is stopped to check them"
        );
    }
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

/// The survey itself (`verify-store --survey`): one line per table read and
/// per finding, each written before the next read, so a crash loses
/// nothing said.
fn survey_here(file: &Path) -> ExitCode {
    ifrelay_store::survey_damaged(file, |event| match event {
        SurveyEvent::Reading(table) => println!("reading {table}"),
        SurveyEvent::Finding { table, what } => println!("finding {table}: {what}"),
    });
    println!("done");
    ExitCode::SUCCESS
}

/// Reads a damaged file row by row in a child process and returns one
/// line per finding; when the child died, where it stopped and why.
fn survey(file: &Path) -> Vec<String> {
    let survey = child(&["verify-store", "--survey"], file);
    let mut lines = Vec::new();
    let mut reading = None;
    let mut done = false;
    for line in survey.stdout.lines() {
        if let Some(table) = line.strip_prefix("reading ") {
            reading = Some(table);
        } else if let Some(finding) = line.strip_prefix("finding ") {
            lines.push(finding.to_owned());
        } else if line == "done" {
            done = true;
        }
    }
    let at = reading.map_or_else(|| "the file".to_owned(), |t| format!("table {t}"));
    match survey.status {
        Some(status) if status.success() && done => {
            if lines.is_empty() {
                lines.push(
                    "no chain or table reads wrong: the damage is in a row that is not \
                     hash-chained (duplicate suppression, outbox, process state, an index) or \
                     in what holds the rows together (page links, free-space bookkeeping)"
                        .to_owned(),
                );
            }
        }
        Some(status) => lines.push(format!(
            "reading {at} stopped the reader ({}{})",
            describe(status),
            survey.panic_message()
        )),
        None => lines.push(format!(
            "reading {at} did not finish within {} s",
            CHILD_TIMEOUT.as_secs()
        )),
    }
    lines
}

/// Longest a verifier or survey child may take before it is stopped as
/// stuck: far beyond what reading any store takes.
const CHILD_TIMEOUT: Duration = Duration::from_secs(600);

/// How a child process of this binary ended and what it wrote.
struct ChildRun {
    /// `None`: it did not start (`stderr` says why), or was stopped after
    /// [`CHILD_TIMEOUT`] (`timed_out`).
    status: Option<std::process::ExitStatus>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

impl ChildRun {
    /// Killed by a signal (a panic aborts the firmware), or a code the
    /// verifier never exits with (101: a panic in a build that unwinds).
    fn died(&self) -> bool {
        !matches!(
            self.status
                .and_then(|s| s.code())
                .and_then(|c| u8::try_from(c).ok()),
            Some(exit::OK | exit::FAILURE | exit::USAGE | exit::DAMAGED | exit::IO)
        )
    }

    /// `": <message>"` when the child's standard error holds the message of
    /// a Rust panic (inside redb, on a damaged file), else nothing.
    fn panic_message(&self) -> String {
        let mut lines = self
            .stderr
            .lines()
            .skip_while(|l| !l.contains("panicked at"));
        match (lines.next(), lines.next()) {
            (Some(_), Some(message)) => format!(": {}", message.trim()),
            _ => String::new(),
        }
    }
}

/// Runs this binary with `args` and `file`, without logging, collecting
/// what it writes; stops it after [`CHILD_TIMEOUT`].
fn child(args: &[&str], file: &Path) -> ChildRun {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let failed = |why: String| ChildRun {
        status: None,
        timed_out: false,
        stdout: String::new(),
        stderr: why,
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return failed(format!("ifrelay: cannot find its own executable: {e}\n")),
    };
    let mut child = match Command::new(exe)
        .args(args)
        .arg(file)
        .env("RUST_LOG", "off")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return failed(format!("ifrelay: cannot start a verifier process: {e}\n")),
    };
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    ChildRun {
        timed_out: status.is_none(),
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// How a child process ended, in words.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}
