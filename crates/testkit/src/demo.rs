//! `ifrelay-demo` (`make demo`): two municipalities' boxes — real `ifrelay run` child
//! processes — their intermediate servers and the core system on
//! loopback, relaying complete query → provision flows in both directions
//! for a while. Halfway through, the demo kills one box with SIGKILL and
//! restarts it; any box that dies otherwise (try `kill -9` on a printed
//! pid) is restarted too, as the box's service manager would. Then one
//! refused attempt per refusal reason, an orderly stop, and a summary read
//! from the stores, which stay under the demo folder (default
//! `var/demo/`) for `ifrelay verify-store`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ifrelay_proto::Prefix;
use ifrelay_store::Store;

use ifrelay::report::chain_report;

use crate::child::BoxProcess;
use crate::scenarios::{self, NOT_PROVOKED};
use crate::sim::ims::{FlowErrorKind, FlowTimings, ImsOptions, ImsSim};
use crate::sim::serve::NetOptions;
use crate::stats::summarize;
use crate::terminal::{add_user, first_boot, log_in, Terminal};
use crate::testbed::{agencies, prefix, Node, Testbed, TestbedOptions};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the PKI, configurations, logs and stores go; prepared with
    /// [`crate::workdir::prepare`] (emptied only if an earlier run made it).
    pub dir: PathBuf,
    /// Traffic runs this long (or until `max_flows` per direction).
    pub seconds: u64,
    /// At most this many flows per direction.
    pub max_flows: Option<usize>,
    /// Flows in flight at once per direction.
    pub concurrency: usize,
    /// Kill one box with SIGKILL halfway and restart it.
    pub crash: bool,
    /// The `ifrelay` binary the boxes run as.
    pub binary: PathBuf,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            dir: PathBuf::from("var/demo"),
            seconds: 8,
            max_flows: None,
            concurrency: 4,
            crash: true,
            binary: crate::firmware::binary().unwrap_or_else(|_| PathBuf::from("ifrelay")),
        }
    }
}

/// Any failure of the demo, printed once by the CLI.
pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// How the flows of one direction ended.
#[derive(Debug, Default)]
struct Tally {
    completed: usize,
    closed_with_notice: usize,
    timings: Vec<FlowTimings>,
}

/// Runs the demo and returns the summary text. Progress (box pids, the
/// crash, restarts) goes to stderr as it happens.
///
/// # Errors
/// When the network cannot be started, a flow ends without completion or
/// notice, a refusal scenario is answered wrongly, or a chain does not
/// verify.
pub async fn run(options: DemoOptions) -> Result<String, DemoError> {
    crate::workdir::prepare(&options.dir)?;
    let started = Instant::now();
    let resilience = Duration::from_secs(30);
    // Box A's maintenance console, on a pty this process holds; exports
    // go to a folder standing in for the USB stick.
    let terminal = Terminal::open()?;
    let tty = terminal.path().display().to_string();
    let stick = std::path::absolute(options.dir.join("stick"))?;
    let own = agencies().0;
    let mut bed = Testbed::start_opts(
        &options.dir,
        &|f| {
            f.timeouts.retry_backoff_ms = 100;
            f.timeouts.connect_ms = 1000;
            if f.appliance.agency == own.as_str() {
                f.console.tty = tty.clone();
                f.console.export_folder = stick.display().to_string();
            }
        },
        TestbedOptions {
            ims: ImsOptions {
                step_timeout: resilience,
                resend_for: Some(resilience),
                ..ImsOptions::default()
            },
            core: NetOptions::retrying_for(resilience),
            child_binary: Some(options.binary.clone()),
        },
    )
    .await?;
    for node in &bed.nodes {
        if let Some(child) = &node.child {
            eprintln!(
                "demo: box {} runs as pid {} (log: {})",
                node.agency,
                child.pid(),
                child.log_path().display()
            );
        }
    }
    eprintln!(
        "demo: traffic for {} s in both directions; `kill -9` a pid above to watch it recover",
        options.seconds
    );
    let (a, b) = agencies();

    // Traffic, both directions at once, until the time is up.
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let done_flows = Arc::new(AtomicUsize::new(0));
    let directions = [
        (
            0usize,
            vec![prefix(&a, &b, "JM010"), prefix(&a, &b, "JM020")],
        ),
        (
            1usize,
            vec![prefix(&b, &a, "JM010"), prefix(&b, &a, "JM020")],
        ),
    ];
    let mut traffic = tokio::task::JoinSet::new();
    for (node, prefixes) in directions {
        let ims = bed.nodes[node].ims.clone();
        let (cap, concurrency, done) = (
            options.max_flows,
            options.concurrency.max(1),
            done_flows.clone(),
        );
        traffic.spawn(async move {
            run_direction(ims, prefixes, deadline, cap, concurrency, done).await
        });
    }
    // Supervise: restart any box that dies; crash one halfway.
    let crash_at = Instant::now() + Duration::from_secs(options.seconds) / 2;
    // With a flow cap, "halfway" is half the flows of one direction.
    let half = options.max_flows;
    let mut tallies: Vec<Tally> = Vec::new();
    let mut crashed = false;
    let mut restarts = 0usize;
    while !traffic.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            Some(done) = traffic.join_next() => {
                let tally = done??;
                tallies.push(tally);
                continue;
            }
        }
        let halfway = Instant::now() >= crash_at
            || half.is_some_and(|n| done_flows.load(Ordering::Relaxed) >= n);
        if options.crash && !crashed && halfway {
            crashed = true;
            eprintln!(
                "demo: SIGKILL box {} in the middle of traffic",
                bed.nodes[1].agency
            );
            bed.kill_box(1).await?;
            bed.start_box(1).await?;
            restarts += 1;
            print_restarted(&bed.nodes[1]);
        }
        for i in 0..bed.nodes.len() {
            let exited = match bed.nodes[i].child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                eprintln!(
                    "demo: box {} exited ({status}); restarting",
                    bed.nodes[i].agency
                );
                bed.nodes[i].child = None;
                bed.start_box(i).await?;
                restarts += 1;
                print_restarted(&bed.nodes[i]);
            }
        }
    }
    let flows_elapsed = started.elapsed();
    let timings: Vec<FlowTimings> = tallies
        .iter()
        .flat_map(|t| t.timings.iter().copied())
        .collect();

    let outcomes = scenarios::run_all(&bed).await?;
    eprintln!(
        "demo: a scripted session at box {}'s console",
        bed.nodes[0].agency
    );
    let console = tokio::task::spawn_blocking(move || console_session(terminal)).await??;
    // Let the last notices and completions drain, then stop both boxes
    // through their shutdown path (SIGTERM), which drains the rest.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..bed.nodes.len() {
        bed.stop_box(i).await;
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "== ifrelay demo: two boxes, two intermediate servers, one core, loopback TLS 1.3 =="
    );
    let _ = writeln!(out, "folder: {}", options.dir.display());
    let _ = writeln!(
        out,
        "flows completed: {} (131016 → 271004: {}, 271004 → 131016: {}) in {:.1} s; closed with notice: {}",
        tallies.iter().map(|t| t.completed).sum::<usize>(),
        tallies.first().map_or(0, |t| t.completed),
        tallies.get(1).map_or(0, |t| t.completed),
        flows_elapsed.as_secs_f64(),
        tallies.iter().map(|t| t.closed_with_notice).sum::<usize>(),
    );
    let _ = writeln!(
        out,
        "boxes killed with SIGKILL and restarted during traffic: {restarts}"
    );

    let _ = writeln!(
        out,
        "\nlatency per step (requester IMS's view, {} flows):",
        timings.len()
    );
    let _ = writeln!(out, "  {:<20} {:>10} {:>10}", "step", "p50", "p99");
    type StepTime = fn(&FlowTimings) -> Duration;
    let steps: [(&str, StepTime); 10] = [
        ("serial", |t| t.serial),
        ("prefix check", |t| t.prefix_check),
        ("permit", |t| t.permit),
        ("query", |t| t.query),
        ("query accepted", |t| t.query_accepted),
        ("provision", |t| t.provision),
        ("provision received", |t| t.provision_received),
        ("provision complete", |t| t.provision_complete),
        ("query complete", |t| t.query_complete),
        ("whole flow", |t| t.total),
    ];
    for (name, get) in steps {
        let mut samples: Vec<Duration> = timings.iter().map(get).collect();
        let summary = summarize(&mut samples);
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "-".to_owned(),
                |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0),
            )
        };
        let _ = writeln!(
            out,
            "  {name:<20} {:>10} {:>10}",
            ms(summary.map(|s| s.p50)),
            ms(summary.map(|s| s.p99))
        );
    }

    let verified = verify_exported(&options.binary, &stick, &console.export)?;
    let _ = writeln!(
        out,
        "\nat box {}'s serial console (first boot, an auditor added, a search, an export):",
        bed.nodes[0].agency
    );
    for line in console.shown.lines() {
        let _ = writeln!(out, "  | {line}");
    }
    let _ = writeln!(
        out,
        "  `ifrelay verify-export {}`:",
        stick.join(&console.export).display()
    );
    for line in verified.lines() {
        let _ = writeln!(out, "    {line}");
    }

    let _ = writeln!(out, "\nrefusals, one attempt per reason:");
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for o in &outcomes {
        let mark = if o.ok() { "ok " } else { "BAD" };
        let got = o.got.map_or_else(|| "-".to_owned(), |r| r.to_string());
        let _ = writeln!(out, "  [{mark}] {:<22} {:<46} {}", got, o.name, o.detail);
        if let Some(r) = o.got {
            *by_reason.entry(r.to_string()).or_default() += 1;
        }
        if !o.ok() {
            wrong.push(o.name);
        }
    }
    let _ = writeln!(
        out,
        "  {} attempts, {} distinct reasons: {}",
        outcomes.len(),
        by_reason.len(),
        by_reason
            .iter()
            .map(|(r, n)| format!("{r}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(out, "  not provoked here:");
    for (r, why) in NOT_PROVOKED {
        let _ = writeln!(out, "    {:<22} {why}", r.to_string());
    }

    let _ = writeln!(
        out,
        "\nper box (read from the stores after an orderly stop):"
    );
    let mut intact = true;
    for node in &bed.nodes {
        let store = Store::open(&node.config.store.path, 16 << 20)?;
        let reader = store.reader();
        let _ = writeln!(
            out,
            "  box {} — records {}, access-log entries {}, open processes {}, outbox {}",
            node.agency,
            reader.record_count()?,
            reader.access_count()?,
            reader.process_count()?,
            reader.outbox_len()?,
        );
        let report = reader.verify_chains()?;
        intact &= report.is_intact();
        for line in chain_report(&report).lines() {
            let _ = writeln!(out, "    {line}");
        }
        let _ = writeln!(out, "    store: {}", node.config.store.path.display());
    }
    bed.shutdown().await;

    if !wrong.is_empty() {
        return Err(format!("{out}\nrefusal scenarios answered wrongly: {wrong:?}").into());
    }
    if !intact {
        return Err(format!("{out}\na hash chain does not verify").into());
    }
    let _ = writeln!(
        out,
        "\ndemo finished in {:.1} s; stores kept for `ifrelay verify-store`",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// What the console session showed, and the export folder it wrote.
struct ConsoleSession {
    /// The auditor's part of the screen, as plain lines.
    shown: String,
    export: String,
}

const ADMIN_PASSWORD: &str = "Demo-Chief-2026";
const AUDITOR_TEMPORARY: &str = "Demo-Temp-0001";
const AUDITOR_PASSWORD: &str = "Demo-Audit-2026";

/// As staff would, from docs/console.md: the first security administrator
/// at first boot, an auditor added with a temporary password, and the
/// auditor logging in with a code from their app, changing the password,
/// searching and exporting.
fn console_session(mut t: Terminal) -> Result<ConsoleSession, DemoError> {
    let mut admin = first_boot(&mut t, "admin", ADMIN_PASSWORD)?;
    log_in(&mut t, &mut admin)?;
    let mut sato = add_user(&mut t, "admin@", "sato", "auditor", AUDITOR_TEMPORARY)?;
    t.answer("admin@", "logout")?;
    let before = t.transcript().len();
    log_in(&mut t, &mut sato)?;
    t.answer("新しいパスワード: ", AUDITOR_PASSWORD)?;
    t.answer("もう一度: ", AUDITOR_PASSWORD)?;
    t.answer("sato@", "search records business JM010 provider 271004")?;
    t.until("件を表示しました")?;
    t.answer("sato@", "export records business JM010")?;
    let done = t.until("抜いてかまいません。")?;
    t.answer("sato@", "logout")?;
    t.until("ログアウトしました")?;
    let export = done
        .split("書き出しました: ")
        .nth(1)
        .and_then(|s| s.split('（').next())
        .ok_or("the export's folder was not named on the screen")?
        .to_owned();
    let transcript = t.transcript();
    let shown = transcript
        .get(before..)
        .unwrap_or_default()
        .lines()
        .skip_while(|l| !l.starts_with("利用者ID"))
        // The password prompts show nothing typed; keep the screen short.
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    Ok(ConsoleSession { shown, export })
}

/// `ifrelay verify-export` on what the console wrote, as the receiver
/// would run it; its output, or an error when it does not verify.
fn verify_exported(
    binary: &std::path::Path,
    stick: &std::path::Path,
    name: &str,
) -> Result<String, DemoError> {
    let out = std::process::Command::new(binary)
        .arg("verify-export")
        .arg(stick.join(name))
        .args(["--box-id", "131016"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("the console's export does not verify:\n{text}").into());
    }
    Ok(text)
}

/// Tells the new pid of a restarted box, so it can be killed again.
fn print_restarted(node: &Node) {
    let pid = node.child.as_ref().map(BoxProcess::pid);
    match pid {
        Some(pid) => eprintln!("demo: box {} restarted as pid {pid}", node.agency),
        None => eprintln!("demo: box {} restarted", node.agency),
    }
}

/// Runs flows through one IMS, `concurrency` at a time, cycling through
/// `prefixes`, until `deadline` or `cap` flows. A flow the box closed with
/// a notice counts as such; any other failure ends the demo.
async fn run_direction(
    ims: Arc<ImsSim>,
    prefixes: Vec<Prefix>,
    deadline: Instant,
    cap: Option<usize>,
    concurrency: usize,
    done: Arc<AtomicUsize>,
) -> Result<Tally, DemoError> {
    let mut tally = Tally::default();
    let mut started = 0usize;
    let mut running = tokio::task::JoinSet::new();
    loop {
        while Instant::now() < deadline
            && cap.is_none_or(|n| started < n)
            && running.len() < concurrency
        {
            let ims = ims.clone();
            let p = prefixes[started % prefixes.len()].clone();
            running.spawn(async move { ims.run_query(p).await });
            started += 1;
        }
        let Some(finished) = running.join_next().await else {
            return Ok(tally);
        };
        done.fetch_add(1, Ordering::Relaxed);
        match finished? {
            Ok(report) => {
                tally.completed += 1;
                tally.timings.push(report.timings);
            }
            Err(e) if matches!(e.kind, FlowErrorKind::ProcessError { .. }) => {
                tally.closed_with_notice += 1;
            }
            Err(e) => return Err(Box::new(e)),
        }
    }
}
