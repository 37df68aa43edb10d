//! The crash harness (R-AV-2, R-SER-1, R-COM-2, R-COM-4, R-REC-1): both
//! boxes run as child processes of the real `ifrelay` binary; flows run
//! through them in both directions while boxes are killed with SIGKILL at
//! seeded random moments (under load most fall inside a commit batch) and
//! restarted. Afterwards the run is checked against a model:
//!
//! - every flow ended completed, or closed with a notice to its IMS
//!   (otherwise it is **lost**);
//! - no serial was issued twice (**serials reissued**);
//! - no event reached an intermediate server twice under different ids,
//!   and no serial has two records of a kind on a side (**duplicated**);
//! - every completed flow left one query and one provision record on each
//!   box (a missing one is **lost**);
//! - both hash chains verify.
//!
//! `crates/testkit/tests/crash.rs` runs a few kills in `make test`;
//! `make soak` (`ifrelay-soak`) runs a thousand. The seed is printed first;
//! the same seed replays the same kill moments.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ifrelay_proto::Serial;
use ifrelay_store::{RecordKind, Side, Store};

use crate::sim::ims::{FlowError, FlowErrorKind, FlowReport, ImsOptions};
use crate::sim::NetOptions;
use crate::testbed::{agencies, prefix, Testbed, TestbedError, TestbedOptions};

/// xorshift64*: small, seedable, good enough to pick moments.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A seed from the clock, for runs that are not replays.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Working folder (emptied by the caller).
    pub dir: PathBuf,
    /// The `ifrelay` binary the boxes run.
    pub binary: PathBuf,
    pub seed: u64,
    /// SIGKILLs to deliver, each followed by a restart.
    pub kills: usize,
    /// Flows running at once per direction.
    pub concurrency: usize,
    /// Print a progress line every this many kills (0: never).
    pub progress_every: usize,
}

/// What the run found; [`SoakReport::clean`] when nothing was lost or
/// duplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoakReport {
    pub seed: u64,
    pub kills: usize,
    pub flows: usize,
    pub completed: usize,
    /// Closed with a notice to the IMS (a kill outlasted a step's patience).
    pub closed: usize,
    /// Flows that ended without completion or notice, plus completed flows
    /// missing a record.
    pub lost: usize,
    /// Events delivered twice to an IMS, plus records held twice.
    pub duplicated: usize,
    /// Of [`SoakReport::duplicated`]: events delivered twice to an IMS.
    pub delivered_twice: usize,
    pub serials_reissued: usize,
    /// Broken hash chains (per box).
    pub chains_broken: usize,
    /// One line per defect, for the log.
    pub defects: Vec<String>,
}

impl SoakReport {
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.serials_reissued == 0
            && self.chains_broken == 0
            && self.completed > 0
    }

    /// `soak: kills=N flows=N lost=0 duplicated=0 serials_reissued=0`.
    pub fn summary(&self) -> String {
        format!(
            "soak: kills={} flows={} completed={} closed={} lost={} duplicated={} serials_reissued={} delivered_twice={} chains_broken={} seed={}",
            self.kills,
            self.flows,
            self.completed,
            self.closed,
            self.lost,
            self.duplicated,
            self.serials_reissued,
            self.delivered_twice,
            self.chains_broken,
            self.seed
        )
    }
}

/// Runs the harness.
///
/// # Errors
/// When the testbed cannot start or a box cannot be killed or restarted;
/// findings of the model are in the report, not errors.
pub async fn run(opts: &SoakOptions) -> Result<SoakReport, TestbedError> {
    let mut rng = Rng::new(opts.seed);
    let options = TestbedOptions {
        ims: ImsOptions {
            step_timeout: Duration::from_secs(40),
            resend_for: Some(Duration::from_secs(40)),
            ..ImsOptions::default()
        },
        core: NetOptions {
            attempts: 400,
            backoff: Duration::from_millis(50),
            ..NetOptions::default()
        },
        child_binary: Some(opts.binary.clone()),
    };
    let mut bed = Testbed::start_opts(
        &opts.dir,
        &|f| {
            // The harness's own outages (a box killed again and again)
            // must not make the peer give up a provision: giving up has
            // its own test (reliability.rs); here about 100 s of retries.
            f.timeouts.retry_count = 10;
            f.timeouts.retry_backoff_ms = 50;
            f.timeouts.connect_ms = 500;
            f.timeouts.shutdown_grace_ms = 2000;
        },
        options,
    )
    .await?;

    // Flows in both directions until the kills are over.
    let stop = Arc::new(AtomicBool::new(false));
    let (a, b) = agencies();
    let mut directions = tokio::task::JoinSet::new();
    for (node, req, prov) in [(0usize, &a, &b), (1usize, &b, &a)] {
        let ims = bed.nodes[node].ims.clone();
        let prefixes = [prefix(req, prov, "JM010"), prefix(req, prov, "JM020")];
        let (stop, concurrency) = (Arc::clone(&stop), opts.concurrency.max(1));
        directions.spawn(async move {
            let mut out: Vec<Result<FlowReport, FlowError>> = Vec::new();
            let mut panicked = 0usize;
            let mut running = tokio::task::JoinSet::new();
            let mut next = 0usize;
            while !stop.load(Ordering::Relaxed) || !running.is_empty() {
                while !stop.load(Ordering::Relaxed) && running.len() < concurrency {
                    let ims = ims.clone();
                    let p = prefixes[next % prefixes.len()].clone();
                    running.spawn(async move { ims.run_query(p).await });
                    next += 1;
                }
                match running.join_next().await {
                    Some(Ok(result)) => out.push(result),
                    Some(Err(_)) => panicked += 1,
                    None => {}
                }
            }
            (out, panicked)
        });
    }

    let started = Instant::now();
    for k in 0..opts.kills {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
        let victim = rng.below(2) as usize;
        bed.kill_box(victim).await?;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        bed.start_box(victim).await?;
        if opts.progress_every > 0 && (k + 1) % opts.progress_every == 0 {
            eprintln!(
                "soak: {} kills in {:.0} s",
                k + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);

    let mut results = Vec::new();
    // A flow task that panicked or a direction that died is a lost flow.
    let mut vanished = 0usize;
    let collect = async {
        while let Some(done) = directions.join_next().await {
            match done {
                Ok((out, panicked)) => {
                    results.extend(out);
                    vanished += panicked;
                }
                Err(_) => vanished += 1,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(180), collect)
        .await
        .map_err(|_| "flows did not end within three minutes of the last kill")?;
    // Let the last notices drain, then stop both boxes properly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..bed.nodes.len() {
        bed.stop_box(i).await;
    }

    let mut report = check(&bed, &results)?;
    if vanished > 0 {
        report.lost += vanished;
        report.flows += vanished;
        report
            .defects
            .push(format!("{vanished} flow tasks ended without a result"));
    }
    report.seed = opts.seed;
    report.kills = opts.kills;
    bed.shutdown().await;
    Ok(report)
}

/// Checks the model against what the flows reported and the stores hold.
fn check(
    bed: &Testbed,
    results: &[Result<FlowReport, FlowError>],
) -> Result<SoakReport, TestbedError> {
    let mut report = SoakReport {
        flows: results.len(),
        ..SoakReport::default()
    };
    let mut completed: Vec<&FlowReport> = Vec::new();
    let mut serials: Vec<Serial> = Vec::new();
    for r in results {
        match r {
            Ok(flow) => {
                serials.push(flow.serial.clone());
                completed.push(flow);
            }
            Err(e) if matches!(e.kind, FlowErrorKind::ProcessError { .. }) => {
                report.closed += 1;
                serials.extend(e.serial.clone());
            }
            Err(e) => {
                report.lost += 1;
                report
                    .defects
                    .push(format!("a flow ended without completion or notice: {e}"));
            }
        }
    }
    report.completed = completed.len();
    let unique: HashSet<&Serial> = serials.iter().collect();
    report.serials_reissued = serials.len() - unique.len();

    for node in &bed.nodes {
        let doubles = node.ims.double_deliveries();
        report.duplicated += doubles.len();
        report.delivered_twice += doubles.len();
        for d in doubles {
            report
                .defects
                .push(format!("delivered twice to ims/{}: {d:?}", node.agency));
        }
    }

    for node in &bed.nodes {
        let store = Store::open(&node.config.store.path, 16 << 20)?;
        let reader = store.reader();
        let chains = reader.verify_chains()?;
        if !chains.is_intact() {
            report.chains_broken += 1;
            report
                .defects
                .push(format!("box {}: chains {chains:?}", node.agency));
        }
        let records = reader.records(0, usize::MAX)?;
        let mut count: HashMap<(Serial, RecordKind, Side), usize> = HashMap::new();
        for r in &records {
            *count
                .entry((r.record.serial.clone(), r.record.kind, r.record.side))
                .or_default() += 1;
        }
        for (key, n) in &count {
            if *n > 1 {
                report.duplicated += n - 1;
                report
                    .defects
                    .push(format!("box {} holds {n} records {key:?}", node.agency));
            }
        }
        for flow in &completed {
            let side = if flow.prefix.requester == node.agency {
                Side::Requester
            } else {
                Side::Provider
            };
            for kind in [RecordKind::Query, RecordKind::Provision] {
                if !count.contains_key(&(flow.serial.clone(), kind, side)) {
                    report.lost += 1;
                    report.defects.push(format!(
                        "box {} lacks the {kind:?} record of {}",
                        node.agency, flow.serial
                    ));
                }
            }
        }
    }
    Ok(report)
}
