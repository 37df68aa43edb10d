//! Trust anchors against real boxes (issue 8; R-DST-1..3, R-PRM-2,
//! R-SEC-6): the testbed's boxes pin the development operator's root, the
//! core simulator signs every distribution under it, and each IMS checks
//! what its box relays.
//!
//! - badly signed distributions (uncertified key, altered list, altered
//!   masters, replayed older version, expired, unsigned) are refused with
//!   their codes and nothing changes: the IMS gets nothing, flows go on;
//! - a distribution left to expire while flows run: new flows get
//!   `E_PREFIX_LIST_EXPIRED`, the box's log raises the alert, and the
//!   core's next distribution opens them again;
//! - a core that refreshes before expiry keeps flows running;
//! - a scheduled distribution switches at its `not_before` while flows run;
//! - the core's key rotates with flows in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ifrelay::net::now_millis;
use ifrelay_devpki::{generate_ed25519, DevOperator};
use ifrelay_proto::{AgencyCode, Body, Distribution, MasterRow, PrefixEntry, Reason};
use ifrelay_testkit::sim::ims::{FlowErrorKind, ImsSim};
use ifrelay_testkit::sim::serve::DeliveryError;
use ifrelay_testkit::sim::SimError;
use ifrelay_testkit::testbed::{prefix, prefix_list, Testbed, TestbedOptions};

/// What a real box answers the core for `d`: `Ok` or the refusal's code.
async fn offer(bed: &Testbed, agency: &AgencyCode, d: Distribution) -> Result<(), Reason> {
    match bed.core.send_to_box(agency, Body::Distribution(d)).await {
        Ok(_) => Ok(()),
        Err(SimError::Delivery {
            source: DeliveryError::Refused { reason, .. },
            ..
        }) => Err(reason),
        Err(e) => panic!("not answered: {e}"),
    }
}

/// Runs one flow from `ims` for `business`; the prefix check's NG reason
/// if it fails there.
async fn flow(
    ims: &ImsSim,
    from: &AgencyCode,
    to: &AgencyCode,
    business: &str,
) -> Result<(), Reason> {
    match ims.run_query(prefix(from, to, business)).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind {
            FlowErrorKind::PrefixNg { reason } => Err(reason.expect("NG names its reason")),
            other => panic!("flow failed elsewhere: {other}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badly_signed_distributions_are_refused_with_their_codes_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Testbed::start(dir.path()).await.expect("testbed");
    bed.distribute(2).await.expect("version 2");
    let (a, b) = (bed.nodes[0].agency.clone(), bed.nodes[1].agency.clone());
    let ims = &bed.nodes[0].ims;
    let received = ims.stats().distributions_received;
    let op = bed.core.operator();
    let fields = || {
        let mut f = bed.core.current_distribution_fields();
        f.version = 3;
        f
    };

    let stranger = DevOperator::generate().expect("another operator");
    assert_eq!(
        offer(&bed, &a, stranger.sign(&fields())).await,
        Err(Reason::DistUncertified)
    );
    // A list altered after signing: one entry more.
    let mut altered = fields();
    altered.prefixes.push(PrefixEntry {
        business: "JM777".parse().expect("code"),
        ..altered.prefixes[0].clone()
    });
    let d = Distribution {
        signed: op.sign(&altered).signed,
        ..op.sign(&fields())
    };
    assert_eq!(offer(&bed, &a, d).await, Err(Reason::DistSignature));
    // A masters table altered after signing.
    let mut altered = fields();
    altered.masters.agencies.push(MasterRow {
        code: "999999".parse().expect("code"),
        label: "forged".into(),
    });
    let d = Distribution {
        signed: op.sign(&altered).signed,
        ..op.sign(&fields())
    };
    assert_eq!(offer(&bed, &a, d).await, Err(Reason::DistSignature));
    // An older, genuinely signed version replayed.
    let mut older = fields();
    older.version = 1;
    assert_eq!(
        offer(&bed, &a, op.sign(&older)).await,
        Err(Reason::DistVersion)
    );
    // Expired before it arrives.
    let mut expired = fields();
    expired.not_after = now_millis() - 1;
    assert_eq!(
        offer(&bed, &a, op.sign(&expired)).await,
        Err(Reason::DistExpired)
    );
    // No signature at all.
    let mut unsigned = op.sign(&fields());
    unsigned.sig.clear();
    assert_eq!(offer(&bed, &a, unsigned).await, Err(Reason::DistUnsigned));
    // A distribution key the root certified, but whose certificate ran out.
    let online = generate_ed25519().expect("key");
    let lapsed = op.certify(&online, 0, now_millis() - 1);
    assert_eq!(
        offer(&bed, &a, fields().sign(&online, lapsed)).await,
        Err(Reason::DistUncertified)
    );

    // Nothing changed: the IMS got nothing new, the list in force is
    // version 2 (JM777 is not listed), and flows run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ims.stats().distributions_received, received);
    assert_eq!(
        ims.distribution().expect("held").fields.version,
        2,
        "the IMS holds what the box relayed"
    );
    assert_eq!(
        flow(ims, &a, &b, "JM777").await,
        Err(Reason::PrefixNotListed)
    );
    flow(ims, &a, &b, "JM010").await.expect("flows run");
    // And a well-signed newer one is still taken.
    assert_eq!(offer(&bed, &a, op.sign(&fields())).await, Ok(()));
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distribution_left_to_expire_closes_new_flows_loudly_until_the_next() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = TestbedOptions {
        child_binary: Some(ifrelay_testkit::firmware::binary().expect("firmware binary")),
        ..TestbedOptions::default()
    };
    let bed = Testbed::start_opts(dir.path(), &|_| {}, options)
        .await
        .expect("testbed");
    let (a, b) = (bed.nodes[0].agency.clone(), bed.nodes[1].agency.clone());
    let ims = Arc::clone(&bed.nodes[0].ims);
    // Version 2 lives four seconds, and the core does not refresh it.
    bed.core.set_distribution_validity(Duration::from_secs(4));
    bed.distribute(2).await.expect("version 2");
    let expires = Instant::now() + Duration::from_secs(4);

    // Flows run while the list is in force…
    let mut before = 0;
    while Instant::now() + Duration::from_millis(500) < expires {
        flow(&ims, &a, &b, "JM010").await.expect("in force");
        before += 1;
    }
    assert!(before > 0);
    // …and new ones are refused once it has expired.
    tokio::time::sleep_until((expires + Duration::from_millis(300)).into()).await;
    assert_eq!(
        flow(&ims, &a, &b, "JM010").await,
        Err(Reason::PrefixListExpired)
    );
    // The box says so in its log.
    let log_path = bed.nodes[0].config_path.with_file_name("ifrelay.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("ALERT: the prefix list in force has expired") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no expiry alert in {}",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The core's next distribution opens new flows again.
    bed.core
        .set_distribution_validity(Duration::from_secs(3600));
    bed.distribute(3).await.expect("version 3");
    flow(&ims, &a, &b, "JM010")
        .await
        .expect("a newer list is in force");
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_that_refreshes_before_expiry_keeps_flows_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Testbed::start(dir.path()).await.expect("testbed");
    let (a, b) = (bed.nodes[0].agency.clone(), bed.nodes[1].agency.clone());
    let ims = &bed.nodes[0].ims;
    bed.core.set_distribution_validity(Duration::from_secs(3));
    bed.core.refresh_before_expiry(Duration::from_secs(2));
    bed.distribute(2).await.expect("version 2");
    let received = ims.stats().distributions_received;
    let end = Instant::now() + Duration::from_secs(6);
    let mut flows = 0;
    while Instant::now() < end {
        flow(ims, &a, &b, "JM010").await.expect("never expired");
        flows += 1;
    }
    assert!(flows > 0);
    assert!(
        ims.stats().distributions_received >= received + 3,
        "about one refresh a second"
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_distribution_switches_at_its_not_before_while_flows_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Testbed::start(dir.path()).await.expect("testbed");
    let (a, b) = (bed.nodes[0].agency.clone(), bed.nodes[1].agency.clone());
    let ims = Arc::clone(&bed.nodes[0].ims);
    // Version 2 adds business JM030, from two seconds on.
    let mut list = prefix_list();
    list.push(PrefixEntry {
        requester: a.clone(),
        provider: b.clone(),
        business: "JM030".parse().expect("code"),
        info_name: "TK001".parse().expect("code"),
        item: "I01".parse().expect("code"),
    });
    list.push(PrefixEntry {
        item: "I02".parse().expect("code"),
        ..list[list.len() - 1].clone()
    });
    let switch = now_millis() + 2_000;
    bed.core.schedule_next_distribution(switch);
    bed.core
        .distribute(2, list, ifrelay_testkit::testbed::masters())
        .await
        .expect("scheduled version 2");

    // Flows of the old list run throughout; JM030 is refused until the
    // switch and runs after it.
    let background = {
        let ims = Arc::clone(&ims);
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(4);
            let mut n = 0;
            while Instant::now() < end {
                flow(&ims, &a, &b, "JM010")
                    .await
                    .expect("the old list's flows");
                n += 1;
            }
            n
        })
    };
    assert_eq!(
        flow(&ims, &a, &b, "JM030").await,
        Err(Reason::PrefixNotListed)
    );
    let wait = u64::try_from(switch - now_millis() + 200).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    flow(&ims, &a, &b, "JM030")
        .await
        .expect("in force after the switch");
    assert!(background.await.expect("task") > 0);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cores_key_rotates_with_flows_in_flight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Arc::new(Testbed::start(dir.path()).await.expect("testbed"));
    let (a, b) = (bed.nodes[0].agency.clone(), bed.nodes[1].agency.clone());
    let running = {
        let bed = Arc::clone(&bed);
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(4);
            let mut n = 0;
            while Instant::now() < end {
                let (from, to, ims) = if n % 2 == 0 {
                    (&a, &b, &bed.nodes[0].ims)
                } else {
                    (&b, &a, &bed.nodes[1].ims)
                };
                flow(ims, from, to, "JM010")
                    .await
                    .expect("no flow fails across the rotation");
                n += 1;
            }
            n
        })
    };
    // (1) list the next key beside the current one, (2) sign with it,
    // (3) drop the old one.
    let next = bed.core.add_core_key().expect("key");
    bed.distribute(2).await.expect("both keys");
    tokio::time::sleep(Duration::from_millis(700)).await;
    bed.core.sign_with_newest_key();
    assert_eq!(bed.core.core_public_key(), next);
    tokio::time::sleep(Duration::from_millis(700)).await;
    bed.core.drop_oldest_core_key();
    bed.distribute(3).await.expect("the next key alone");
    let held = bed.nodes[0].ims.distribution().expect("held");
    assert_eq!(held.fields.core_keys.len(), 1);
    assert_eq!(held.fields.core_keys[0].key, next);
    assert!(running.await.expect("task") > 0);
    if let Ok(bed) = Arc::try_unwrap(bed) {
        bed.shutdown().await;
    }
}
