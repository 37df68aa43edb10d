//! Under the flood mix (issue 7, item 9): a fresh pair of boxes (child
//! processes, default limits), normal traffic — the own IMS's serial
//! requests, each on a fresh connection and timed alone, and complete
//! flows at one in flight per intermediate server — first quiet, then
//! while every attacker of [`crate::hostile::FloodMix`] runs against
//! box A. It reports box A's peak resident set (`VmHWM`, the process's
//! whole life, so only this phase counts) and the IMS's answer times in
//! both periods.
//!
//! Fresh boxes, because `VmHWM` never goes down: on the boxes of the
//! earlier phases it would show their peak, not the flood's.

use std::path::Path;
use std::time::Duration;

use ifrelay_proto::Party;

use super::load::{self, FlowRun};
use super::network::{self, Network};
use super::proc::peak_rss_kib;
use super::{cpu_difference, cpu_snapshot, progress, BenchError};
use crate::child::BoxCommand;
use crate::hostile::{timed_serial_requests, FloodCounts, FloodMix, FloodTarget};
use crate::stats::{summarize, Summary};

/// How long the IMS waits for an answer before it counts the request as
/// not answered (see [`ims_serial_requests`]).
pub const GIVE_UP: Duration = Duration::from_secs(5);

/// The bound on an answer to the own IMS during a flood.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// The IMS is timed only after this much flooding, so that it meets the
/// flood at its pace.
const RAMP_UP: Duration = Duration::from_millis(500);

/// What to run.
#[derive(Debug, Clone)]
pub struct FloodOptions {
    /// Normal traffic alone, for the baseline.
    pub quiet: Duration,
    pub mix: FloodMix,
}

impl FloodOptions {
    /// About 20 s: 5 s quiet, 14 s flooded.
    pub fn full() -> FloodOptions {
        FloodOptions {
            quiet: Duration::from_secs(5),
            mix: FloodMix::full(Duration::from_secs(14)),
        }
    }

    /// About 4 s, with the small mix (`--quick`).
    pub fn quick() -> FloodOptions {
        FloodOptions {
            quiet: Duration::from_secs(1),
            mix: FloodMix::small(Duration::from_secs(3)),
        }
    }
}

/// The own IMS's serial requests of one period.
#[derive(Debug, Clone, Default)]
pub struct ImsAnswers {
    pub requests: usize,
    pub answered: usize,
    /// Answered within [`ANSWER_WITHIN`].
    pub within: usize,
    /// Answer times of every request, one not answered counted as
    /// [`GIVE_UP`] (so a p99 of 5 s means "not answered").
    pub times: Option<Summary>,
}

impl ImsAnswers {
    fn from_times(times: &[Option<Duration>]) -> ImsAnswers {
        // Nearest-rank percentiles over every request.
        let mut all: Vec<Duration> = times.iter().map(|t| t.unwrap_or(GIVE_UP)).collect();
        ImsAnswers {
            requests: times.len(),
            answered: times.iter().flatten().count(),
            within: times
                .iter()
                .flatten()
                .filter(|t| **t <= ANSWER_WITHIN)
                .count(),
            times: summarize(&mut all),
        }
    }

    /// Share of the requests answered within [`ANSWER_WITHIN`].
    pub fn within_share(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.within as f64 / self.requests as f64)
    }

    pub fn p99_ms(&self) -> Option<f64> {
        self.times.map(|s| s.p99.as_secs_f64() * 1000.0)
    }
}

/// What the phase found.
#[derive(Debug)]
pub struct FloodRun {
    pub mix: FloodMix,
    pub quiet: ImsAnswers,
    pub flooded: ImsAnswers,
    /// The flooded requests due before the stalled and slow attackers
    /// started ([`FloodMix::holders_after`]), and those due after.
    pub flooded_before_holders: ImsAnswers,
    pub flooded_with_holders: ImsAnswers,
    /// Cores used in each period, as in the other phases.
    pub quiet_cpu: Vec<(String, f64)>,
    pub flooded_cpu: Vec<(String, f64)>,
    pub quiet_flows: FlowRun,
    pub flooded_flows: FlowRun,
    pub counts: FloodCounts,
    /// Box A's `VmHWM` after the quiet period, in KiB.
    pub rss_quiet_kib: Option<u64>,
    /// (box, `VmHWM` KiB) after the flood; box A is the one attacked.
    pub peak_rss_kib: Vec<(String, Option<u64>)>,
    pub stopped: Vec<String>,
}

impl FloodRun {
    /// Box A's peak resident set over the phase, in MiB.
    pub fn attacked_peak_mib(&self) -> Option<f64> {
        self.peak_rss_kib
            .first()
            .and_then(|(_, k)| *k)
            .map(|k| k as f64 / 1024.0)
    }
}

/// Runs the phase in `dir` with boxes started by `cmd` on a machine of
/// `cpus` CPUs.
///
/// # Errors
/// When the boxes cannot be started or the attackers cannot connect.
pub async fn run(
    dir: &Path,
    cmd: &BoxCommand,
    opts: &FloodOptions,
    cpus: usize,
) -> Result<FloodRun, BenchError> {
    let mut net = network::start(dir, cmd).await?;
    let result = measure(&net, opts, cpus).await;
    let peak_rss_kib = net
        .boxes
        .iter()
        .map(|b| (b.name().to_owned(), peak_rss_kib(b)))
        .collect();
    let stopped = net.stop_boxes().await;
    net.shutdown_simulators().await;
    let mut run = result?;
    run.peak_rss_kib = peak_rss_kib;
    run.stopped = stopped;
    Ok(run)
}

async fn measure(net: &Network, opts: &FloodOptions, cpus: usize) -> Result<FloodRun, BenchError> {
    let (Some(node), Some(peer_node), Some(attacked)) =
        (net.nodes.first(), net.nodes.get(1), net.boxes.first())
    else {
        return Err("the flood phase needs two boxes".into());
    };
    let ims = Party::ims(node.agency.clone());
    let the_box = Party::is(node.agency.clone());
    let peer = Party::is(peer_node.agency.clone());
    let target = FloodTarget {
        agency_side: node.config.listen.agency_side,
        core_side: node.config.listen.core_side,
        the_box: the_box.clone(),
        ims_tls: net.pki.material(&ims)?.client_config()?,
        peer_tls: net.pki.material(&peer)?.client_config()?,
        peer,
        claimed_sender: Party::ims(peer_node.agency.clone()),
    };
    let normal = |tag: &'static str, period: Duration| {
        let client = target.ims_tls.clone();
        let (ims, the_box) = (ims.clone(), the_box.clone());
        async move {
            let requests = timed_serial_requests(
                target.agency_side,
                &ims,
                &the_box,
                client,
                (tag, period),
                None,
            );
            let flows = load::closed_loop(&net.nodes, 1, period, 100_000, load::DRAIN);
            tokio::join!(requests, flows)
        }
    };

    progress(&format!(
        "flood: normal traffic alone for {:?} (fresh boxes)",
        opts.quiet
    ));
    let me = std::process::id();
    let cpu_before = cpu_snapshot(&net.boxes, me);
    let (quiet_times, quiet_flows) = normal("quiet-ims", opts.quiet).await;
    let quiet_cpu = cpu_difference(&cpu_before, &cpu_snapshot(&net.boxes, me), cpus);
    let rss_quiet_kib = peak_rss_kib(attacked);

    progress(&format!(
        "flood: every hostile peer at once against box {} for {:?}, normal traffic beside",
        node.agency, opts.mix.duration
    ));
    let flood = opts.mix.start(&target).await?;
    let cpu_before = cpu_snapshot(&net.boxes, me);
    tokio::time::sleep(RAMP_UP).await;
    // The IMS stops a little before the attackers, so all of it is
    // timed under the flood.
    let timed = opts
        .mix
        .duration
        .saturating_sub(RAMP_UP + Duration::from_millis(500));
    let (flooded_times, flooded_flows) = normal("flood-ims", timed).await;
    let flooded_cpu = cpu_difference(&cpu_before, &cpu_snapshot(&net.boxes, me), cpus);
    let counts = flood.finish().await;
    let answers = |times: &[(Duration, Option<Duration>)], keep: &dyn Fn(Duration) -> bool| {
        let kept: Vec<Option<Duration>> = times
            .iter()
            .filter(|(due, _)| keep(*due))
            .map(|(_, answer)| *answer)
            .collect();
        ImsAnswers::from_times(&kept)
    };
    // Due times count from the first flooded request, RAMP_UP into the
    // flood.
    let holders = opts.mix.holders_after.saturating_sub(RAMP_UP);
    Ok(FloodRun {
        mix: opts.mix.clone(),
        quiet: answers(&quiet_times, &|_| true),
        flooded: answers(&flooded_times, &|_| true),
        flooded_before_holders: answers(&flooded_times, &|due| due < holders),
        flooded_with_holders: answers(&flooded_times, &|due| due >= holders),
        quiet_cpu,
        flooded_cpu,
        quiet_flows,
        flooded_flows,
        counts,
        rss_quiet_kib,
        peak_rss_kib: Vec::new(),
        stopped: Vec::new(),
    })
}
