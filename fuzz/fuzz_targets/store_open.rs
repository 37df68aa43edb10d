//! A real store file with bytes changed where the input says, opened as the firmware opens it — read-only with `ReadOnlyStore::open` and its chain walk, then for writing with `Store::open` and a boot: never a panic; a file either open calls damaged is damaged for the other too and is left byte for byte as it was.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use ifrelay_proto::{AgencyCode, ItemCode, PermitId, PersonCode, Prefix, Serial};
use ifrelay_store::{AccessEntry, Direction, ReadOnlyStore, Record, RecordKind, Side, Store};
use libfuzzer_sys::fuzz_target;

/// The seed store's bytes and a folder for the damaged copies (on tmpfs
/// when there is one: every input writes a copy of about 1 MiB).
struct Seed {
    bytes: Vec<u8>,
    work: PathBuf,
    _dir: tempfile::TempDir,
}

fn seed() -> &'static Seed {
    static SEED: OnceLock<Seed> = OnceLock::new();
    SEED.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        let path = dir.path().join("seed.redb");
        build(&path);
        Seed {
            bytes: std::fs::read(&path).expect("read the seed store"),
            work: dir.path().join("work.redb"),
            _dir: dir,
        }
    })
}

/// Both chains, processes, the outbox and remembered frames, in several
/// commits, as the engine writes them.
fn build(path: &std::path::Path) {
    let agency = |s: &str| AgencyCode::new(s).expect("agency");
    let prefix: Prefix = ciborium::Value::Map(vec![
        (text("requester"), text("131016")),
        (text("business"), text("JM0001")),
        (text("provider"), text("271004")),
        (text("info_name"), text("TK0001")),
        (text("items"), ciborium::Value::Array(vec![text("ITEM01")])),
    ])
    .deserialized()
    .expect("prefix");
    let mut store = Store::open(path, 4 << 20).expect("store");
    store.boot(1_700_000_000_000).expect("boot");
    for round in 0..8u32 {
        let mut batch = store.begin().expect("batch");
        for i in 0..12 {
            let n = round * 12 + i;
            let serial = Serial::new(&format!("131016-20250101-1-{n}")).expect("serial");
            batch
                .append_record(
                    1_700_000_000_000 + i64::from(n),
                    Record {
                        kind: RecordKind::Query,
                        side: Side::Requester,
                        serial: serial.clone(),
                        prefix: prefix.clone(),
                        code: Some(PersonCode::new("CODE-A").expect("code")),
                        permit_id: Some(PermitId::new("permit-1").expect("permit")),
                        counterpart: Some(agency("271004")),
                        query_requested_at: 1_700_000_000_000,
                        provision_at: None,
                        clock_synced: false,
                    },
                )
                .expect("record");
            batch
                .append_access(AccessEntry {
                    at: 1_700_000_000_000 + i64::from(n),
                    terminal: "10.0.0.2:40000".into(),
                    party: "ims/131016".into(),
                    agency: Some(agency("131016")),
                    staff: None,
                    direction: Direction::In,
                    operation: "query".into(),
                    message_id: Some(format!("m-{n}")),
                    serial: Some(serial.clone()),
                    business: None,
                    info_name: None,
                    items: vec![ItemCode::new("ITEM01").expect("item")],
                    outcome: "accepted".into(),
                })
                .expect("access");
            batch.put_process(&serial, b"state").expect("process");
            batch
                .push_outbox("ims/131016", &[n as u8; 64])
                .expect("outbox");
            batch
                .put_seen("ims/131016", &format!("m-{n}"), 1_700_000_000_000, b"reply")
                .expect("seen");
        }
        batch.commit().expect("commit");
    }
}

fn text(s: &str) -> ciborium::Value {
    ciborium::Value::Text(s.to_owned())
}

fuzz_target!(|data: &[u8]| {
    let seed = seed();
    let mut bytes = seed.bytes.clone();
    let len = bytes.len();
    // Edits of 5 bytes each: a position (u32, little-endian, its top bit
    // cleared, modulo the file's length) and a byte; the top bit says
    // overwrite rather than XOR.
    for edit in data.chunks_exact(5) {
        let raw = u32::from_le_bytes([edit[0], edit[1], edit[2], edit[3]]);
        let at = (raw & 0x7FFF_FFFF) as usize % len;
        if raw & 0x8000_0000 != 0 {
            bytes[at] = edit[4];
        } else {
            bytes[at] ^= edit[4];
        }
    }
    std::fs::write(&seed.work, &bytes).expect("write the copy");

    // Ok(()), damaged, or refused for another reason (a flag that reads as
    // a crash, a header that is not redb's).
    let reader = match ReadOnlyStore::open(&seed.work) {
        Ok(store) => {
            let _ = store.verify_chains();
            Ok(())
        }
        Err(e) => Err(e.is_damaged()),
    };
    let unchanged = || std::fs::read(&seed.work).expect("read back") == bytes;
    if reader == Err(true) {
        assert!(unchanged(), "the read-only open changed a damaged file");
    }
    match Store::open(&seed.work, 1 << 20) {
        Ok(mut store) => {
            assert!(
                reader != Err(true),
                "the writer opened a file the reader calls damaged"
            );
            let _ = store.boot(1_800_000_000_000);
        }
        Err(e) if e.is_damaged() => {
            assert!(
                reader != Ok(()),
                "the writer calls damaged what the reader read: {e}"
            );
            assert!(unchanged(), "the writer's open changed a damaged file");
        }
        Err(e) => assert!(
            reader != Err(true),
            "the reader calls damaged what the writer refused otherwise: {e}"
        ),
    }
});
