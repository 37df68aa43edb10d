//! Crash consistency against a model (R-AV-2, R-SER-1, R-COM-2, R-COM-4,
//! R-REC-1): the real `ifrelay` binary runs both boxes as child processes;
//! many flows run through them while boxes are killed with SIGKILL at
//! seeded random moments (under load most moments fall inside a commit
//! batch) and restarted. Afterwards:
//!
//! - every flow ended completed, or closed with a notice to its IMS;
//! - no serial was issued twice;
//! - no event reached an intermediate server twice under different ids;
//! - every completed flow left exactly one query record and one provision
//!   record on each box, and no serial has two records of a kind on a side;
//! - both hash chains verify.
//!
//! The seed is printed; `IFRELAY_CRASH_SEED=<seed>` replays a run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ifrelay_proto::Serial;
use ifrelay_store::{RecordKind, Side, Store};
use ifrelay_testkit::sim::ims::{FlowError, FlowErrorKind, FlowReport, ImsOptions};
use ifrelay_testkit::sim::NetOptions;
use ifrelay_testkit::testbed::{agencies, prefix, Testbed, TestbedOptions};

/// xorshift64*: small, seedable, good enough to pick moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const FLOWS_PER_DIRECTION: usize = 16;
const CONCURRENCY: usize = 4;
const KILLS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_boxes_mid_flow_loses_and_duplicates_nothing() {
    let seed = std::env::var("IFRELAY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("crash test seed: {seed} (replay with IFRELAY_CRASH_SEED={seed})");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().expect("temp dir");
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
        child_binary: Some(ifrelay_testkit::firmware::binary().expect("firmware binary")),
    };
    let mut bed = Testbed::start_opts(
        dir.path(),
        &|f| {
            f.timeouts.retry_backoff_ms = 50;
            f.timeouts.connect_ms = 500;
            f.timeouts.shutdown_grace_ms = 2000;
        },
        options,
    )
    .await
    .expect("testbed starts");

    let (a, b) = agencies();
    let mut flows = tokio::task::JoinSet::new();
    for (node, req, prov) in [(0usize, &a, &b), (1usize, &b, &a)] {
        let ims = bed.nodes[node].ims.clone();
        let prefixes = [prefix(req, prov, "JM010"), prefix(req, prov, "JM020")];
        flows.spawn(async move {
            let mut out: Vec<Result<FlowReport, FlowError>> = Vec::new();
            let mut running = tokio::task::JoinSet::new();
            let mut next = 0;
            while next < FLOWS_PER_DIRECTION || !running.is_empty() {
                while next < FLOWS_PER_DIRECTION && running.len() < CONCURRENCY {
                    let ims = ims.clone();
                    let p = prefixes[next % prefixes.len()].clone();
                    running.spawn(async move { ims.run_query(p).await });
                    next += 1;
                }
                if let Some(done) = running.join_next().await {
                    out.push(done.expect("flow task"));
                }
            }
            out
        });
    }

    // Kill and restart boxes at random moments while the flows run.
    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
        let victim = rng.below(2) as usize;
        eprintln!("kill {k}: SIGKILL box {}", bed.nodes[victim].agency);
        bed.kill_box(victim).await.expect("kill");
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        bed.start_box(victim).await.expect("restart");
    }

    let mut results = Vec::new();
    let collect = async {
        while let Some(done) = flows.join_next().await {
            results.extend(done.expect("direction task"));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), collect)
        .await
        .expect("every flow ends within two minutes");
    // Let the last notices drain, then stop both boxes properly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..bed.nodes.len() {
        bed.stop_box(i).await;
    }

    // 1. Every flow completed or was closed with a notice.
    let mut completed: Vec<&FlowReport> = Vec::new();
    let mut closed = 0;
    let mut serials: Vec<Serial> = Vec::new();
    for r in &results {
        match r {
            Ok(report) => {
                serials.push(report.serial.clone());
                completed.push(report);
            }
            Err(e) if matches!(e.kind, FlowErrorKind::ProcessError { .. }) => {
                closed += 1;
                serials.extend(e.serial.clone());
            }
            Err(e) => panic!("seed {seed}: a flow ended without completion or notice: {e}"),
        }
    }
    eprintln!(
        "{} flows: {} completed, {closed} closed with notice",
        results.len(),
        completed.len()
    );
    assert_eq!(results.len(), 2 * FLOWS_PER_DIRECTION);
    assert!(
        !completed.is_empty(),
        "seed {seed}: nothing completed at all"
    );

    // 2. No serial issued twice.
    let unique: HashSet<&Serial> = serials.iter().collect();
    assert_eq!(
        unique.len(),
        serials.len(),
        "seed {seed}: a serial was issued twice"
    );

    // 3. No event reached an IMS twice under different ids.
    for node in &bed.nodes {
        let doubles = node.ims.double_deliveries();
        assert!(doubles.is_empty(), "seed {seed}: {doubles:?}");
    }

    // 4. Records: exactly one of each kind per completed flow and side; no
    // serial with two of a kind anywhere. 5. Chains verify.
    for (i, node) in bed.nodes.iter().enumerate() {
        let store = Store::open(&node.config.store.path, 16 << 20).expect("store opens");
        let reader = store.reader();
        let report = reader.verify_chains().expect("verify");
        assert!(report.is_intact(), "seed {seed}: box {i}: {report:?}");
        let records = reader.records(0, 1_000_000).expect("records");
        let mut count: HashMap<(Serial, RecordKind, Side), usize> = HashMap::new();
        for r in &records {
            *count
                .entry((r.record.serial.clone(), r.record.kind, r.record.side))
                .or_default() += 1;
        }
        for (key, n) in &count {
            assert_eq!(*n, 1, "seed {seed}: box {i} holds {n} records {key:?}");
        }
        for flow in &completed {
            let side = if flow.prefix.requester == node.agency {
                Side::Requester
            } else {
                Side::Provider
            };
            for kind in [RecordKind::Query, RecordKind::Provision] {
                assert_eq!(
                    count.get(&(flow.serial.clone(), kind, side)),
                    Some(&1),
                    "seed {seed}: box {i} lacks the {kind:?} record of {}",
                    flow.serial
                );
            }
        }
    }
    bed.shutdown().await;
}
