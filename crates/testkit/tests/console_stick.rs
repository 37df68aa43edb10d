//! An auditor at the serial console of a relaying box (issue 10 items 5,
//! 6 and 8): the flows that ran are what the search finds, an export of
//! them goes to a USB stick (a file-system image on a loop device, or a
//! plain folder where loop devices are not available) and verifies with
//! `ifrelay verify-export`, and garbage typed at the console while flows
//! run leaves the flows and their latency alone.

use std::time::{Duration, Instant};

use ifrelay_testkit::stick::{mounted_at, Stick};
use ifrelay_testkit::terminal::{add_user, first_boot, log_in, Terminal};
use ifrelay_testkit::testbed::{agencies, prefix, Testbed};

const ADMIN: &str = "Chief-Pass-2026";
const TEMPORARY: &str = "Temp-Pass-0001";
const AUDITOR: &str = "Audit-Pass-2026";

/// Flows of business `JM010` from box A; the latency of each, in ms.
async fn flows(bed: &Testbed, n: usize) -> (Vec<String>, Vec<u128>) {
    let (a, b) = agencies();
    let mut serials = Vec::new();
    let mut millis = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let report = bed.nodes[0]
            .ims
            .run_query(prefix(&a, &b, "JM010"))
            .await
            .expect("the flow completes");
        millis.push(t0.elapsed().as_millis());
        serials.push(report.serial.to_string());
    }
    (serials, millis)
}

fn median(mut v: Vec<u128>) -> u128 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_finds_the_flows_and_exports_them_to_a_stick_while_garbage_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let terminal = Terminal::open().expect("pty");
    let stick = Stick::new(dir.path(), "stick", 32, false);
    let devices = dir.path().join("by-id");
    let point = dir.path().join("usb");
    let folder = dir.path().join("exports");
    match &stick {
        Some(s) => s.plug_into(&devices, "0001").expect("plug in"),
        None => eprintln!("loop devices need root: exporting to a plain folder instead"),
    }
    let own = agencies().0;
    let tty = terminal.path().display().to_string();
    let on_stick = stick.is_some();
    let mut bed = Testbed::start_with(dir.path(), |file| {
        if file.appliance.agency == own.as_str() {
            file.console.tty = tty.clone();
            file.console.usb_devices = devices.display().to_string();
            file.console.usb_mount = point.display().to_string();
            if !on_stick {
                file.console.export_folder = folder.display().to_string();
            }
        }
    })
    .await
    .expect("testbed");

    let (serials, quiet) = flows(&bed, 6).await;

    // An administrator creates an auditor; the auditor logs in.
    let mut t = terminal;
    let (t, mut sato) = tokio::task::spawn_blocking(move || {
        let mut admin = first_boot(&mut t, "admin", ADMIN).expect("first boot");
        log_in(&mut t, &mut admin).expect("admin logs in");
        let mut sato = add_user(&mut t, "admin@", "sato", "auditor", TEMPORARY).expect("add");
        t.answer("admin@", "logout").expect("logout");
        let changed = log_in(&mut t, &mut sato);
        assert!(changed.is_ok(), "{changed:?}");
        t.until("パスワードを変更してください")
            .expect("forced change");
        t.answer("新しいパスワード: ", AUDITOR).expect("new");
        t.answer("もう一度: ", AUDITOR).expect("again");
        t.until("パスワードを変更しました").expect("changed");
        sato.password = AUDITOR.to_owned();
        (t, sato)
    })
    .await
    .expect("console");

    // Garbage at the console while flows run: the flows' latency stays.
    let garbage = tokio::task::spawn_blocking(move || {
        let mut t = t;
        let mut noise = Vec::new();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..64 * 1024 {
            // xorshift: bytes of every value, NULs (a BREAK), escapes.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            noise.push(x.to_le_bytes()[0]);
        }
        for chunk in noise.chunks(512) {
            t.type_in(chunk).expect("type garbage");
            std::thread::sleep(Duration::from_millis(2));
        }
        t
    });
    let (more, noisy) = flows(&bed, 6).await;
    let mut t = garbage.await.expect("garbage typed");
    let (quiet_ms, noisy_ms) = (median(quiet), median(noisy));
    eprintln!("flow latency median: {quiet_ms} ms quiet, {noisy_ms} ms with garbage");
    assert!(
        noisy_ms <= quiet_ms * 3 + 100,
        "garbage at the console slowed the relay: {quiet_ms} ms → {noisy_ms} ms"
    );

    let checked = tokio::task::spawn_blocking(move || {
        t.until("読めない入力").expect("the garbage was told");
        // The noise held Ctrl-D too, which logs out like a shell: a
        // clean line, log out if still in, and log in again.
        t.type_in(b"\x03\x04").expect("ctrl-c, ctrl-d");
        t.settle();
        log_in(&mut t, &mut sato).expect("sato logs in again");
        // The search finds exactly the flows that ran: a query and a
        // provision record each on the requester's box.
        t.type_in(b"search records business JM010\r")
            .expect("search");
        let found = t.until("件が該当します").expect("count");
        let ran = serials.len() + more.len();
        assert!(found.contains(&format!("{} 件", ran * 2)), "{found}");
        let page = t.until("next です").expect("page");
        assert!(page.contains(&serials[0]), "{page}");
        t.type_in(b"export records business JM010\r")
            .expect("export");
        let done = t.until("抜いてかまいません").expect("exported");
        assert!(done.contains(&format!("記録 {} 件", ran * 2)), "{done}");
        t.answer("sato@", "logout").expect("logout");
        (done, serials, more)
    })
    .await
    .expect("auditor");
    let (done, serials, more) = checked;
    bed.stop_box(0).await;

    let name = done
        .split("書き出しました: ")
        .nth(1)
        .and_then(|s| s.split('（').next())
        .expect("the folder name is shown")
        .to_owned();
    let look;
    let root = match &stick {
        Some(s) => {
            assert!(mounted_at(&point).is_none(), "unmounted before 'remove it'");
            look = s.look(&dir.path().join("look")).expect("look at the stick");
            look.0.clone()
        }
        None => folder.clone(),
    };
    let export = root.join(&name);
    let firmware = ifrelay_testkit::firmware::binary().expect("the ifrelay binary");
    let out = std::process::Command::new(firmware)
        .arg("verify-export")
        .arg(&export)
        .args(["--box-id", "131016"])
        .output()
        .expect("run verify-export");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("verdict: the export verifies"), "{text}");
    let csv = std::fs::read_to_string(export.join("records.csv")).expect("csv");
    for serial in serials.iter().chain(&more) {
        let field = format!(",{serial},");
        assert_eq!(csv.matches(&field).count(), 2, "{serial} in {csv}");
    }
}
