//! Crash consistency against a model (R-AV-2, R-SER-1, R-COM-2, R-COM-4,
//! R-REC-1): a short run of the crash harness (`ifrelay_testkit::soak`,
//! which says what is checked) — the real `ifrelay` binary runs both
//! boxes, and six SIGKILLs at seeded random moments must lose, duplicate
//! and reissue nothing. `make soak` runs the same harness with a thousand.
//!
//! The seed is printed; `IFRELAY_CRASH_SEED=<seed>` replays a run.

use ifrelay_testkit::soak::{self, SoakOptions};

const KILLS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_boxes_mid_flow_loses_and_duplicates_nothing() {
    let seed = std::env::var("IFRELAY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(soak::clock_seed);
    eprintln!("crash test seed: {seed} (replay with IFRELAY_CRASH_SEED={seed})");
    let dir = tempfile::tempdir().expect("temp dir");
    let report = soak::run(&SoakOptions {
        dir: dir.path().to_owned(),
        binary: ifrelay_testkit::firmware::binary().expect("firmware binary"),
        seed,
        kills: KILLS,
        concurrency: 4,
        progress_every: 0,
    })
    .await
    .expect("the harness runs");
    eprintln!("{}", report.summary());
    assert!(report.clean(), "seed {seed}: {:#?}", report);
    assert_eq!(report.kills, KILLS);
    assert!(report.flows >= 2, "seed {seed}: flows ran during the kills");
}
