//! `ifrelay verify-store` on the store of a box that is running and
//! relaying (R-SEC-6). Since issue 9 the box holds its store exclusively
//! (batches are made durable through its redo log, and redb allows
//! commits without sync only to an exclusive writer: docs/architecture.md,
//! "The durable path"), so the verifier refuses the live file with a
//! clear message and changes nothing, the box keeps relaying, and once
//! the box is stopped the same command reports the chains intact.

use std::process::Command;

use ifrelay_testkit::testbed::{agencies, prefix, Testbed};

fn verify(store: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(ifrelay_testkit::firmware::binary().expect("firmware binary"))
        .arg("verify-store")
        .arg(store)
        .env("RUST_LOG", "warn")
        .output()
        .expect("verify-store runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_store_refuses_a_live_store_and_verifies_it_once_stopped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Testbed::start(dir.path()).await.expect("testbed starts");
    let (a, b) = agencies();
    bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("a first flow completes");
    let store = bed.nodes[0].config.store.path.clone();

    // Flows keep the box committing while the verifier runs beside it.
    let ims = bed.nodes[0].ims.clone();
    let (a2, b2) = (a.clone(), b.clone());
    let traffic = tokio::spawn(async move {
        for _ in 0..5 {
            ims.run_query(prefix(&a2, &b2, "JM010"))
                .await
                .expect("flows complete while the store is verified");
        }
    });
    for _ in 0..3 {
        let store = store.clone();
        let (code, report) = tokio::task::spawn_blocking(move || verify(&store))
            .await
            .expect("verifier task");
        assert_eq!(code, Some(74), "{report}");
        assert!(report.contains("held by a running box"), "{report}");
        assert!(!report.contains("verdict:"), "{report}");
    }
    traffic.await.expect("traffic task");
    // The box still relays after the attempts.
    bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("a flow after the verification completes");
    bed.shutdown().await;
    let (code, report) = tokio::task::spawn_blocking(move || verify(&store))
        .await
        .expect("verifier task");
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("verdict: INTACT"), "{report}");
    assert!(!report.contains("0 entries checked (empty)"), "{report}");
}
