//! `ifrelay demo`: two municipalities' boxes, their intermediate servers
//! and the core system on loopback, relaying complete query → provision
//! flows in both directions, then one refused attempt per refusal reason,
//! and a summary a person can read. The stores stay under the demo folder
//! (default `var/demo/`) for inspection with `ifrelay verify-store`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ifrelay_proto::Prefix;

use crate::report::{chain_report, millis, percentile};
use crate::scenarios::{self, NOT_PROVOKED};
use crate::sim::ims::FlowTimings;
use crate::testbed::{agencies, prefix, Testbed};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the PKI, configurations and stores go; emptied first.
    pub dir: PathBuf,
    /// Complete flows per direction.
    pub flows_per_direction: usize,
    /// Flows in flight at once per direction.
    pub concurrency: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            dir: PathBuf::from("var/demo"),
            flows_per_direction: 25,
            concurrency: 5,
        }
    }
}

/// Any failure of the demo, printed once by the CLI.
pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the demo and returns the summary text.
///
/// # Errors
/// When the network cannot be started, a flow fails, or a refusal
/// scenario is not answered as it must be.
pub async fn run(options: DemoOptions) -> Result<String, DemoError> {
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)?;
    }
    let started = Instant::now();
    let bed = Testbed::start(&options.dir).await?;
    let (a, b) = agencies();

    // Complete flows, both directions at once.
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
    let mut handles = Vec::new();
    for (node, prefixes) in directions {
        let bed_ims = bed.nodes[node].ims.clone();
        let n = options.flows_per_direction;
        let concurrency = options.concurrency.max(1);
        handles.push(tokio::spawn(async move {
            run_direction(bed_ims, prefixes, n, concurrency).await
        }));
    }
    let mut timings: Vec<FlowTimings> = Vec::new();
    let mut per_direction = Vec::new();
    for h in handles {
        let (done, mut t) = h.await??;
        per_direction.push(done);
        timings.append(&mut t);
    }
    let flows_elapsed = started.elapsed();

    let outcomes = scenarios::run_all(&bed).await?;
    wait_drained(&bed).await;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "== ifrelay demo: two boxes, two intermediate servers, one core, loopback TLS 1.3 =="
    );
    let _ = writeln!(out, "folder: {}", options.dir.display());
    let _ = writeln!(
        out,
        "flows completed: {} (131016 → 271004: {}, 271004 → 131016: {}) in {:.1} s",
        per_direction.iter().sum::<usize>(),
        per_direction.first().copied().unwrap_or(0),
        per_direction.get(1).copied().unwrap_or(0),
        flows_elapsed.as_secs_f64()
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
        let p50 = percentile(&mut samples, 0.50);
        let p99 = percentile(&mut samples, 0.99);
        let _ = writeln!(out, "  {name:<20} {:>10} {:>10}", millis(p50), millis(p99));
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

    let _ = writeln!(out, "\nper box:");
    let mut intact = true;
    for node in &bed.nodes {
        let reader = node.running().reader();
        let stats = node.running().stats();
        let _ = writeln!(
            out,
            "  box {} — records {}, access-log entries {}, open processes {}, outbox {}, commits {} for {} inputs",
            node.agency,
            reader.record_count()?,
            reader.access_count()?,
            reader.process_count()?,
            reader.outbox_len()?,
            stats.batches,
            stats.inputs,
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

/// Runs `n` flows through one IMS, `concurrency` at a time, cycling
/// through `prefixes`.
async fn run_direction(
    ims: std::sync::Arc<crate::sim::ims::ImsSim>,
    prefixes: Vec<Prefix>,
    n: usize,
    concurrency: usize,
) -> Result<(usize, Vec<FlowTimings>), DemoError> {
    let mut timings = Vec::with_capacity(n);
    let mut next = 0usize;
    let mut running = tokio::task::JoinSet::new();
    while next < n || !running.is_empty() {
        while next < n && running.len() < concurrency {
            let ims = ims.clone();
            let p = prefixes[next % prefixes.len()].clone();
            running.spawn(async move { ims.run_query(p).await });
            next += 1;
        }
        if let Some(done) = running.join_next().await {
            let report = done?.map_err(|e| -> DemoError { Box::new(e) })?;
            timings.push(report.timings);
        }
    }
    Ok((timings.len(), timings))
}

async fn wait_drained(bed: &Testbed) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let pending: u64 = bed
            .nodes
            .iter()
            .filter_map(|n| n.running().reader().outbox_len().ok())
            .sum();
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
