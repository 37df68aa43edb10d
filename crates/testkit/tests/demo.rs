//! `make demo` as staff run it, and `ifrelay verify-store` on the stores it
//! leaves: the demo exits 0 with every flow completed; a real box's store
//! is reported intact, then an edited and a removed record are caught
//! (R-REC-1, R-SEC-6).

use std::path::Path;
use std::process::Command;

use ifrelay_store::tables;
use redb::{ReadableTable, ReadableTableMetadata};

fn firmware(args: &[&str]) -> std::process::Output {
    Command::new(ifrelay_testkit::firmware::binary().expect("firmware binary"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn verify(store: &Path) -> (Option<i32>, String) {
    let out = firmware(&["verify-store", &store.to_string_lossy()]);
    (out.status.code(), text(&out.stdout) + &text(&out.stderr))
}

#[test]
fn the_demo_runs_and_verify_store_catches_tampering_with_its_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo_dir = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_ifrelay-demo"))
        .args(["--dir", &demo_dir.to_string_lossy(), "--flows", "3"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("the demo runs");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("flows completed: 6"), "{stdout}");
    assert!(!stdout.contains("[BAD]"), "{stdout}");

    let store = demo_dir.join("131016").join("ifrelay.redb");
    let (code, report) = verify(&store);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("verdict: INTACT"), "{report}");

    // Edit one byte of the second record's body, as someone with the disk
    // in hand might.
    let copy = dir.path().join("edited.redb");
    std::fs::copy(&store, &copy).expect("copy");
    {
        let db = redb::Database::open(&copy).expect("open");
        let txn = db.begin_write().expect("write");
        {
            let mut table = txn.open_table(tables::RECORDS).expect("records");
            let (prev, hash, mut body) = {
                let row = table.get(2).expect("get").expect("record 2 exists");
                let (prev, hash, body) = row.value();
                (prev, hash, body.to_vec())
            };
            let last = body.len() - 1;
            body[last] ^= 0x01;
            table
                .insert(2, (prev, hash, body.as_slice()))
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let (code, report) = verify(&copy);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("TAMPERED") && report.contains("seq 2"),
        "{report}"
    );

    // Remove a record from the middle.
    let copy = dir.path().join("removed.redb");
    std::fs::copy(&store, &copy).expect("copy");
    {
        let db = redb::Database::open(&copy).expect("open");
        let txn = db.begin_write().expect("write");
        {
            let mut table = txn.open_table(tables::RECORDS).expect("records");
            assert!(table.len().expect("len") > 3);
            table.remove(2).expect("remove");
        }
        txn.commit().expect("commit");
    }
    let (code, report) = verify(&copy);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("TAMPERED"), "{report}");
}
