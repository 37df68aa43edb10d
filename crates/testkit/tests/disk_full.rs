//! A full disk (R-AV-2, "bad input … a full disk"): the box's store sits on
//! a small real tmpfs that is then filled up. New work is refused with
//! `E_STORE`, nothing partial is kept, the box keeps running, and it
//! recovers by itself once space returns. Needs root (to mount the tmpfs),
//! as CI has.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ifrelay_proto::{Body, Reason, SerialPurpose, SerialRequest};
use ifrelay_testkit::testbed::{agencies, prefix, Testbed};

/// A mounted tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (CI has it)"
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

async fn serial_request(bed: &Testbed) -> Body {
    bed.nodes[0]
        .ims
        .send(Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        }))
        .await
        .expect("answered")
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_work_keeps_nothing_partial_and_recovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Room for the store and its 16 MiB redo log, which is created in
    // full at the first start; the filler below takes the rest.
    let disk = Tmpfs::mount(&dir.path().join("disk"), "48m");
    let (a, b) = agencies();
    let store = disk.0.join("ifrelay.redb");
    let own = a.to_string();
    let bed = Testbed::start_with(dir.path(), |f| {
        if f.appliance.agency == own {
            f.store.path = store.clone();
        }
    })
    .await
    .expect("testbed");
    bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("a flow before the disk fills");
    let reader = bed.nodes[0].running().reader().clone();
    let (records, processes) = (
        reader.record_count().expect("records"),
        reader.process_count().expect("processes"),
    );

    let filler = disk.0.join("filler");
    fill(&filler);
    // redb keeps free pages inside its file, so work goes on until those
    // are used up; then every commit fails.
    let mut accepted_while_filling = 0u64;
    let mut first_refusal = None;
    for _ in 0..20_000 {
        match serial_request(&bed).await {
            Body::SerialIssued(_) => accepted_while_filling += 1,
            Body::Refused(r) if r.reason == Reason::Store => {
                first_refusal = Some(r.text);
                break;
            }
            other => panic!("unexpected answer on a filling disk: {other:?}"),
        }
    }
    let text = first_refusal.expect("the full disk was never noticed");
    assert!(text.contains("full"), "{text}");
    // Near full, commits fail and succeed by turns (a failed commit frees
    // its pages). Whatever each answer, it must be all or nothing. Each
    // refusal costs a reopen of the store and a replay of its log, so a
    // few suffice.
    let mut refused = 1u64;
    for _ in 0..20 {
        match serial_request(&bed).await {
            Body::SerialIssued(_) => accepted_while_filling += 1,
            Body::Refused(r) if r.reason == Reason::Store => refused += 1,
            other => panic!("unexpected answer on a full disk: {other:?}"),
        }
    }
    assert!(refused > 1, "the full disk refused only once");
    std::fs::remove_file(&filler).expect("space returns");
    // The next frame after space returns is handled again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match serial_request(&bed).await {
            Body::SerialIssued(_) => break,
            Body::Refused(r) if r.reason == Reason::Store => {
                assert!(tokio::time::Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    // Nothing partial: no record, no process came from the refused work.
    assert_eq!(reader.record_count().expect("records"), records);
    assert_eq!(
        reader.process_count().expect("processes"),
        processes + accepted_while_filling + 1
    );
    bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("a flow after recovery");
    assert!(reader.verify_chains().expect("verify").is_intact());
    bed.shutdown().await;
    drop(disk);
}
