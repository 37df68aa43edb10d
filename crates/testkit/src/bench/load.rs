//! Complete query → provision flows as load, through the intermediate
//! servers' [`ImsSim::run_query`], from both agencies at once.
//!
//! - [`closed_loop`]: `per_ims` flows in flight per intermediate server,
//!   each starting the next as soon as it ends, for a fixed time and at
//!   most a fixed count: the throughput the network sustains.
//! - [`open_loop`]: flow starts scheduled on a clock at a fixed offered
//!   rate whether or not earlier flows have ended (no coordinated
//!   omission), for the latency of each hop at that load.
//!
//! What is counted: a complete flow makes the two boxes accept 15 request
//! frames and relay 13 of them ([`RELAYED_PER_FLOW`]): the requester's box
//! relays permit_request, permit, query, query_accepted, provision,
//! provision_received, provision_complete and query_complete (8), the
//! provider's box query, query_accepted, provision, provision_received and
//! provision_complete (5); serial_request and prefix_check are answered
//! locally. Relayed frames = completed flows × 13, checked afterwards
//! against the boxes' access logs.
//!
//! Every loop is bounded in time and in count; a flow's own steps are
//! bounded by the simulator's step timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ifrelay_proto::Prefix;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::network::Node;
use crate::sim::ims::{FlowTimings, ImsSim};
use crate::testbed::prefix;

/// Frames the two boxes relay (accept and forward) per complete flow.
pub const RELAYED_PER_FLOW: u64 = 13;

/// Request frames the two boxes accept per complete flow (the relayed
/// ones, serial_request and prefix_check).
pub const ACCEPTED_PER_FLOW: u64 = 15;

/// Default time allowed for flows in flight to end after a phase's window.
pub const DRAIN: Duration = Duration::from_secs(60);

/// Reads one step's latency out of a flow's timings.
pub type StepTime = fn(&FlowTimings) -> Duration;

/// The synchronous steps of a flow: each is one hop, the intermediate
/// server's frame to its box and the box's reply after its commit.
pub const HOP_STEPS: [(&str, StepTime); 6] = [
    ("serial", |t| t.serial),
    ("prefix check", |t| t.prefix_check),
    ("query", |t| t.query),
    ("provision received", |t| t.provision_received),
    ("provision complete", |t| t.provision_complete),
    ("query complete", |t| t.query_complete),
];

/// Multi-hop steps, reported for information.
pub const MULTI_HOP_STEPS: [(&str, StepTime); 4] = [
    ("permit (5 hops)", |t| t.permit),
    ("query accepted (6 hops)", |t| t.query_accepted),
    ("provision (5 hops)", |t| t.provision),
    ("whole flow", |t| t.total),
];

/// The flows of one run, however they ended.
#[derive(Debug, Default)]
pub struct FlowRun {
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    /// Open loop: scheduled starts skipped because too many flows were in
    /// flight.
    pub skipped: u64,
    pub first_error: Option<String>,
    /// Flows still running when the drain time ran out (aborted).
    pub abandoned: u64,
    /// From the first start to the end of the last flow.
    pub elapsed: Duration,
    /// Timings of the completed flows that count (open loop: after the
    /// warm-up).
    pub timings: Vec<FlowTimings>,
}

impl FlowRun {
    /// Relayed frames per second over the run.
    pub fn frames_per_s(&self) -> f64 {
        per_s(self.completed * RELAYED_PER_FLOW, self.elapsed)
    }

    fn note(&mut self, outcome: Result<FlowTimings, String>, keep: bool) {
        match outcome {
            Ok(t) => {
                self.completed += 1;
                if keep {
                    self.timings.push(t);
                }
            }
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// `n / d` per second, 0 for an empty interval.
pub fn per_s(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// The prefixes each node's intermediate server asks for, alternately.
fn prefixes(nodes: &[Node]) -> Vec<(Arc<ImsSim>, [Prefix; 2])> {
    let n = nodes.len();
    nodes
        .iter()
        .enumerate()
        .filter_map(|(i, node)| {
            let other = nodes.get((i + 1) % n)?;
            Some((
                Arc::clone(&node.ims),
                [
                    prefix(&node.agency, &other.agency, "JM010"),
                    prefix(&node.agency, &other.agency, "JM020"),
                ],
            ))
        })
        .collect()
}

/// Runs flows from every intermediate server, `per_ims` at a time each,
/// starting new ones until `window` has passed or `max_flows` were
/// started; then waits (at most `drain`) for those in flight.
pub async fn closed_loop(
    nodes: &[Node],
    per_ims: usize,
    window: Duration,
    max_flows: u64,
    drain: Duration,
) -> FlowRun {
    let started = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + window;
    let mut set = JoinSet::new();
    for (ims, prefixes) in prefixes(nodes) {
        for k in 0..per_ims.max(1) {
            let ims = Arc::clone(&ims);
            let started = Arc::clone(&started);
            let prefix = prefixes[k % 2].clone();
            set.spawn(async move {
                let mut outcomes = Vec::new();
                while Instant::now() < deadline
                    && started.fetch_add(1, Ordering::Relaxed) < max_flows
                {
                    let r = ims
                        .run_query(prefix.clone())
                        .await
                        .map(|r| r.timings)
                        .map_err(|e| e.to_string());
                    outcomes.push(r);
                }
                outcomes
            });
        }
    }
    let mut run = FlowRun::default();
    let until = deadline + drain;
    loop {
        match tokio::time::timeout_at(until, set.join_next()).await {
            Ok(Some(Ok(outcomes))) => {
                for o in outcomes {
                    run.note(o, true);
                }
            }
            Ok(Some(Err(e))) => run.note(Err(format!("flow task failed: {e}")), false),
            Ok(None) => break,
            Err(_) => {
                run.abandoned = set.len() as u64;
                set.abort_all();
                break;
            }
        }
    }
    run.elapsed = t0.elapsed();
    run.started = run.completed + run.failed + run.abandoned;
    run
}

/// Starts flows on a fixed schedule of `frames_per_s / 13` flows per
/// second, alternating between the intermediate servers, for `warmup`
/// then `window`; flows started during the warm-up are not counted. At
/// most `max_in_flight` flows run at once (a start beyond is skipped and
/// counted); flows still running `drain` after the last start are
/// abandoned.
pub async fn open_loop(
    nodes: &[Node],
    frames_per_s: f64,
    (warmup, window): (Duration, Duration),
    max_in_flight: usize,
    drain: Duration,
) -> FlowRun {
    let sources = prefixes(nodes);
    let mut run = FlowRun::default();
    if sources.is_empty() || frames_per_s <= 0.0 {
        return run;
    }
    let flows_per_s = frames_per_s / RELAYED_PER_FLOW as f64;
    let period = Duration::from_secs_f64(1.0 / flows_per_s);
    let warm_n = (warmup.as_secs_f64() * flows_per_s).round() as u64;
    let total_n = warm_n + (window.as_secs_f64() * flows_per_s).round() as u64;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set: JoinSet<(bool, Result<FlowTimings, String>)> = JoinSet::new();
    let mut t0 = None;
    for i in 0..total_n {
        tick.tick().await;
        if i == warm_n {
            t0 = Some(Instant::now());
        }
        while let Some(done) = set.try_join_next() {
            note_joined(&mut run, done);
        }
        if set.len() >= max_in_flight {
            run.skipped += 1;
            continue;
        }
        let idx = usize::try_from(i).unwrap_or(0);
        let Some((ims, prefixes)) = sources.get(idx % sources.len()) else {
            continue;
        };
        let ims = Arc::clone(ims);
        let prefix = prefixes[(idx / sources.len()) % 2].clone();
        let counted = i >= warm_n;
        set.spawn(async move {
            let r = ims
                .run_query(prefix)
                .await
                .map(|r| r.timings)
                .map_err(|e| e.to_string());
            (counted, r)
        });
    }
    let until = Instant::now() + drain;
    loop {
        match tokio::time::timeout_at(until, set.join_next()).await {
            Ok(Some(done)) => note_joined(&mut run, done),
            Ok(None) => break,
            Err(_) => {
                run.abandoned = set.len() as u64;
                set.abort_all();
                break;
            }
        }
    }
    run.elapsed = t0.map_or(Duration::ZERO, |t| t.elapsed());
    run.started = run.completed + run.failed + run.abandoned;
    run
}

fn note_joined(
    run: &mut FlowRun,
    done: Result<(bool, Result<FlowTimings, String>), tokio::task::JoinError>,
) {
    match done {
        // Warm-up flows still count as started and completed, but their
        // timings are not kept.
        Ok((counted, r)) => run.note(r, counted),
        Err(e) => run.note(Err(format!("flow task failed: {e}")), false),
    }
}

/// Every per-hop sample of `timings` (six per flow).
pub fn hop_samples(timings: &[FlowTimings]) -> Vec<Duration> {
    timings
        .iter()
        .flat_map(|t| HOP_STEPS.iter().map(move |(_, get)| get(t)))
        .collect()
}
