//! Record exports (R-REC-3, docs/export.md): an export verifies, and each
//! way of tampering with one — a file removed, added or edited, a record
//! edited so its chain breaks, the signature swapped, another box's key
//! expected, a record the selection does not select — is its own finding
//! with its own exit code; the CSV starts
//! with a byte-order mark and a header; a filtered export holds exactly
//! the matching records; an export encrypted to an auditor decrypts with
//! the auditor's age identity and then verifies; a non-empty target is
//! refused and left as it was. The last tests run the real binary.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use ifrelay::export::manifest::ChainEntry;
use ifrelay::export::{
    export, verify_export, AccessSelection, ExpectedBox, ExportError, ExportRequest, Finding,
    Labels, VerifyReport,
};
use ifrelay::identity::BoxKey;
use ifrelay_proto::{
    AgencyCode, BusinessCode, InfoNameCode, ItemCode, MasterRow, Masters, PermitId, PersonCode,
    Prefix, Serial,
};
use ifrelay_store::{
    AccessEntry, Direction, ReadOnlyStore, Record, RecordFilter, RecordKind, Side, Store,
};

mod common;

const ENTRIES: u32 = 40;

fn agency(s: &str) -> AgencyCode {
    AgencyCode::new(s).expect("agency")
}

/// Record `n`: every third has another requester, every other is a
/// provision.
fn record(n: u32) -> Record {
    let mut items = heapless::Vec::new();
    items
        .push(ItemCode::new("ITEM01").expect("item"))
        .expect("room");
    Record {
        kind: if n % 2 == 0 {
            RecordKind::Provision
        } else {
            RecordKind::Query
        },
        side: Side::Requester,
        serial: Serial::new(&format!("131016-20250101-1-{n}")).expect("serial"),
        prefix: Prefix {
            requester: agency(if n % 3 == 0 { "272000" } else { "131016" }),
            business: BusinessCode::new("JM0001").expect("business"),
            provider: agency("271004"),
            info_name: InfoNameCode::new("TK0001").expect("info name"),
            items,
        },
        code: Some(PersonCode::new(&format!("CODE-{n}")).expect("code")),
        permit_id: Some(PermitId::new("permit-1").expect("permit")),
        counterpart: Some(agency("271004")),
        query_requested_at: 1_700_000_000_000,
        provision_at: None,
        clock_synced: false,
    }
}

fn access(n: u32) -> AccessEntry {
    AccessEntry {
        at: 1_700_000_000_000 + i64::from(n),
        terminal: "10.0.0.2:40000".into(),
        party: "ims/131016".into(),
        agency: Some(agency("131016")),
        staff: None,
        direction: Direction::In,
        // A value a spreadsheet would run as a formula.
        operation: if n == 1 {
            "=1+1".into()
        } else {
            "query".into()
        },
        message_id: Some(format!("m-{n}")),
        serial: None,
        business: Some(BusinessCode::new("JM0001").expect("business")),
        info_name: None,
        items: Vec::new(),
        outcome: "accepted".into(),
    }
}

/// A stopped box: a store with records and access log, and its key.
struct Stopped {
    dir: tempfile::TempDir,
    store: ReadOnlyStore,
    key: BoxKey,
}

impl Stopped {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store").join("ifrelay.redb");
        let (key, _) = BoxKey::load_or_create(&dir.path().join("store")).expect("key");
        fill_store(&path, ENTRIES);
        let store = ReadOnlyStore::open(&path).expect("read-only open");
        Stopped { dir, store, key }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn export(
        &self,
        out: &Path,
        records: Option<RecordFilter>,
        recipients: Vec<age::x25519::Recipient>,
    ) -> Result<ifrelay::export::ExportSummary, ExportError> {
        let snapshot = self.store.snapshot().expect("snapshot");
        let masters = Masters {
            agencies: vec![MasterRow {
                code: agency("131016"),
                label: "千代田区".into(),
            }],
            ..Masters::default()
        };
        let request = ExportRequest {
            out,
            records,
            access: Some(AccessSelection::default()),
            recipients,
            labels: Some((7, Labels::from_masters(&masters))),
            party: "is/131016".into(),
            agency: "131016".into(),
            name: Some("chiyoda-1".into()),
            now: 1_800_000_000_000,
        };
        export(&snapshot, &self.key, &request)
    }

    fn export_all(&self, name: &str) -> PathBuf {
        let out = self.out(name);
        self.export(&out, Some(RecordFilter::default()), Vec::new())
            .expect("export");
        out
    }
}

fn fill_store(path: &Path, n: u32) {
    let mut store = Store::open(path, 4 << 20).expect("store");
    let mut batch = store.begin().expect("batch");
    for k in 1..=n {
        batch
            .append_record(1_700_000_000_000 + i64::from(k), record(k))
            .expect("record");
        batch.append_access(access(k)).expect("access");
    }
    batch.commit().expect("commit");
}

fn verify(dir: &Path) -> VerifyReport {
    verify_export(dir, &ExpectedBox::default()).expect("verifiable")
}

fn entries(file: &Path) -> Vec<ChainEntry> {
    let bytes = fs::read(file).expect("cbor");
    let mut rest = &bytes[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        out.push(ciborium::from_reader(&mut rest).expect("entry"));
    }
    out
}

#[test]
fn an_export_verifies_and_anchors_its_chains() {
    let stopped = Stopped::new();
    let out = stopped.export_all("export");
    let report = verify(&out);
    assert!(report.is_intact(), "{:?}", report.findings);
    let manifest = report.manifest.expect("manifest");
    let records = &manifest.chains[0];
    assert_eq!(
        (
            records.entries,
            records.first_seq,
            records.last_seq,
            records.contiguous
        ),
        (u64::from(ENTRIES), Some(1), Some(u64::from(ENTRIES)), true)
    );
    assert_eq!(
        records.last_hash.as_deref(),
        Some(records.store_head_hash.as_str())
    );
    assert_eq!(entries(&out.join("records.cbor")).len(), ENTRIES as usize);
    assert_eq!(
        entries(&out.join("access-log.cbor")).len(),
        ENTRIES as usize
    );
    assert_eq!(
        manifest.made_by.public_key,
        ifrelay::identity::hex(&stopped.key.public_key())
    );
    let mut names: Vec<_> = fs::read_dir(&out)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "access-log.cbor",
            "access-log.csv",
            "manifest.json",
            "manifest.json.sig",
            "records.cbor",
            "records.csv"
        ]
    );
}

#[test]
fn csv_starts_with_a_bom_and_a_header_and_resolves_labels() {
    let stopped = Stopped::new();
    let out = stopped.export_all("export");
    let csv = fs::read(out.join("records.csv")).expect("csv");
    assert!(
        csv.starts_with(b"\xEF\xBB\xBFseq,appended_at_jst,kind,"),
        "{:?}",
        &csv[..40]
    );
    let text = String::from_utf8(csv).expect("utf-8");
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines.len(),
        ENTRIES as usize + 1,
        "a header and one row per record"
    );
    assert!(lines[1].contains(",131016,千代田区,"), "{}", lines[1]);
    assert!(
        lines[1].starts_with("1,2023-11-15 07:13:20.001,query,"),
        "{}",
        lines[1]
    );
    let access = fs::read_to_string(out.join("access-log.csv")).expect("csv");
    assert!(access.starts_with("\u{feff}seq,at_jst,terminal,"));
    assert!(access.contains(",'=1+1,"), "a formula is neutralised");
}

#[test]
fn a_removed_file_is_missing() {
    let stopped = Stopped::new();
    let out = stopped.export_all("export");
    fs::remove_file(out.join("records.csv")).expect("remove");
    let report = verify(&out);
    assert_eq!(
        report.findings,
        [Finding::MissingFile {
            name: "records.csv".into()
        }]
    );
    assert_eq!(report.findings[0].exit_code(), 13);
}

#[test]
fn an_added_file_is_extra() {
    let stopped = Stopped::new();
    let out = stopped.export_all("export");
    fs::write(out.join("notes.txt"), "hello").expect("write");
    let report = verify(&out);
    assert_eq!(
        report.findings,
        [Finding::ExtraFile {
            name: "notes.txt".into()
        }]
    );
    assert_eq!(report.findings[0].exit_code(), 14);
}

#[test]
fn an_edited_byte_of_the_csv_is_an_edited_file() {
    let stopped = Stopped::new();
    let out = stopped.export_all("export");
    let path = out.join("records.csv");
    let mut bytes = fs::read(&path).expect("read");
    let last = bytes.len() - 3;
    bytes[last] ^= 1;
    fs::write(&path, bytes).expect("write");
    let report = verify(&out);
    assert!(
        matches!(&report.findings[..], [Finding::EditedFile { name, .. }] if name == "records.csv"),
        "{:?}",
        report.findings
    );
    assert_eq!(report.findings[0].exit_code(), 15);
}

#[test]
fn an_edited_record_in_the_cbor_breaks_the_chain() {
    let stopped = Stopped::new();
    let out = stopped.export_all("export");
    let path = out.join("records.cbor");
    let mut all = entries(&path);
    // Change the person code of record 5 in its stored body.
    let body = &mut all[4].body;
    let at = body
        .windows(6)
        .position(|w| w == b"CODE-5")
        .expect("the code is in the body");
    body[at + 5] = b'9';
    let mut bytes = Vec::new();
    for entry in &all {
        ciborium::into_writer(entry, &mut bytes).expect("encode");
    }
    fs::write(&path, bytes).expect("write");
    let report = verify(&out);
    assert!(
        report.findings.contains(&Finding::BrokenChain {
            file: "records.cbor".into(),
            seq: Some(5),
            what: "the entry's hash does not match its contents (edited)".into(),
        }),
        "{:?}",
        report.findings
    );
    assert!(matches!(report.findings[0], Finding::EditedFile { .. }));
    let chain = report
        .findings
        .iter()
        .find(|f| matches!(f, Finding::BrokenChain { .. }));
    assert_eq!(chain.map(Finding::exit_code), Some(16));
}

#[test]
fn a_removed_cbor_entry_is_a_gap_in_a_whole_chain_export() {
    // Even a verifier that trusted an edited manifest would see the gap:
    // a whole-chain export must link every entry to the one before.
    let stopped = Stopped::new();
    let out = stopped.export_all("export");
    let path = out.join("records.cbor");
    let mut all = entries(&path);
    all.remove(10);
    let mut bytes = Vec::new();
    for entry in &all {
        ciborium::into_writer(entry, &mut bytes).expect("encode");
    }
    fs::write(&path, bytes).expect("write");
    let report = verify(&out);
    assert!(
        report.findings.iter().any(|f| matches!(
            f,
            Finding::BrokenChain { seq: Some(12), what, .. } if what == "entries 11 to 11 are missing"
        )),
        "{:?}",
        report.findings
    );
}

#[test]
fn a_swapped_signature_is_bad() {
    let stopped = Stopped::new();
    let out = stopped.export_all("export");
    let other = Stopped::new();
    let theirs = other.export_all("theirs");
    fs::copy(
        theirs.join("manifest.json.sig"),
        out.join("manifest.json.sig"),
    )
    .expect("copy");
    let report = verify(&out);
    assert!(
        matches!(&report.findings[..], [Finding::BadSignature { .. }]),
        "{:?}",
        report.findings
    );
    assert_eq!(report.findings[0].exit_code(), 11);
}

#[test]
fn another_box_key_is_the_wrong_box() {
    let stopped = Stopped::new();
    let out = stopped.export_all("export");
    let other = Stopped::new();
    let expected = ExpectedBox {
        public_key: Some(other.key.public_key()),
        box_id: None,
    };
    let report = verify_export(&out, &expected).expect("verifiable");
    assert!(
        matches!(&report.findings[..], [Finding::WrongBox { .. }]),
        "{:?}",
        report.findings
    );
    assert_eq!(report.findings[0].exit_code(), 12);
    let right = ExpectedBox {
        public_key: Some(stopped.key.public_key()),
        box_id: Some("131016".into()),
    };
    assert!(verify_export(&out, &right).expect("verifiable").is_intact());
    let wrong_id = ExpectedBox {
        public_key: None,
        box_id: Some("272000".into()),
    };
    let report = verify_export(&out, &wrong_id).expect("verifiable");
    assert!(matches!(&report.findings[..], [Finding::WrongBox { .. }]));
}

#[test]
fn a_filtered_export_holds_exactly_the_matching_records() {
    let stopped = Stopped::new();
    let out = stopped.out("filtered");
    let filter = RecordFilter {
        requester: Some(agency("272000")),
        kind: Some(RecordKind::Provision),
        ..RecordFilter::default()
    };
    stopped
        .export(&out, Some(filter), Vec::new())
        .expect("export");
    let report = verify(&out);
    assert!(report.is_intact(), "{:?}", report.findings);
    let seqs: Vec<u64> = entries(&out.join("records.cbor"))
        .iter()
        .map(|e| e.seq)
        .collect();
    // Requester 272000: every third record; provisions: even seqs.
    let expected: Vec<u64> = (1..=u64::from(ENTRIES)).filter(|n| n % 6 == 0).collect();
    assert_eq!(seqs, expected);
    let manifest = report.manifest.expect("manifest");
    let selection = manifest.selection.records.expect("records selected");
    assert!(!selection.all);
    assert_eq!(selection.requester.as_deref(), Some("272000"));
    assert!(!manifest.chains[0].contiguous);
    let csv = fs::read_to_string(out.join("records.csv")).expect("csv");
    assert_eq!(
        csv.split("\r\n").filter(|l| !l.is_empty()).count(),
        expected.len() + 1
    );
}

#[test]
fn a_record_outside_the_selection_is_found() {
    let stopped = Stopped::new();
    let all = stopped.export_all("all");
    let out = stopped.out("filtered");
    let filter = RecordFilter {
        requester: Some(agency("272000")),
        ..RecordFilter::default()
    };
    stopped
        .export(&out, Some(filter), Vec::new())
        .expect("export");
    // Record 4 (requester 131016), genuine and chained, put in between.
    let mut selected = entries(&out.join("records.cbor"));
    let foreign = entries(&all.join("records.cbor")).remove(3);
    selected.insert(1, foreign);
    let mut bytes = Vec::new();
    for entry in &selected {
        ciborium::into_writer(entry, &mut bytes).expect("encode");
    }
    fs::write(out.join("records.cbor"), bytes).expect("write");
    let report = verify(&out);
    let finding = Finding::OutsideSelection {
        file: "records.cbor".into(),
        seq: 4,
        what: "requester 131016, the selection is 272000".into(),
    };
    assert!(report.findings.contains(&finding), "{:?}", report.findings);
    assert_eq!(finding.exit_code(), 17);
}

#[test]
fn a_filter_by_person_code_keeps_only_its_hash_in_the_manifest() {
    let stopped = Stopped::new();
    let out = stopped.out("by-code");
    let filter = RecordFilter {
        code: Some(PersonCode::new("CODE-7").expect("code")),
        ..RecordFilter::default()
    };
    stopped
        .export(&out, Some(filter), Vec::new())
        .expect("export");
    let manifest = fs::read_to_string(out.join("manifest.json")).expect("manifest");
    assert!(!manifest.contains("CODE-7"), "{manifest}");
    assert_eq!(entries(&out.join("records.cbor")).len(), 1);
}

#[test]
fn an_encrypted_export_decrypts_with_the_auditor_identity_and_verifies() {
    let stopped = Stopped::new();
    let auditor = age::x25519::Identity::generate();
    let out = stopped.out("encrypted");
    stopped
        .export(
            &out,
            Some(RecordFilter::default()),
            vec![auditor.to_public()],
        )
        .expect("export");
    // No plaintext in the folder.
    assert!(!out.join("records.csv").exists());
    let report = verify(&out);
    assert!(report.is_intact(), "{:?}", report.findings);
    assert!(report.checked.iter().any(|l| l.contains("not checked")));
    // The auditor decrypts every file beside its .age file.
    for name in [
        "records.cbor",
        "records.csv",
        "access-log.cbor",
        "access-log.csv",
    ] {
        let cipher = fs::read(out.join(format!("{name}.age"))).expect("age file");
        assert!(cipher.starts_with(b"age-encryption.org/v1\n"));
        let decryptor = age::Decryptor::new(&cipher[..]).expect("age header");
        let mut plain = Vec::new();
        decryptor
            .decrypt(std::iter::once(&auditor as &dyn age::Identity))
            .expect("decrypts with the auditor's identity")
            .read_to_end(&mut plain)
            .expect("read");
        fs::write(out.join(name), plain).expect("write");
    }
    let report = verify(&out);
    assert!(report.is_intact(), "{:?}", report.findings);
    assert!(report
        .checked
        .iter()
        .any(|l| l.starts_with("chain records: 40 entries")));
    assert!(fs::read(out.join("records.csv"))
        .expect("csv")
        .starts_with(b"\xEF\xBB\xBF"));
    // The standard age tool decrypts it too, where it is installed
    // (Debian's `age`); said on stderr where it is not.
    let tool = Command::new("age").arg("--version").output();
    if tool.is_ok_and(|o| o.status.success()) {
        use age::secrecy::ExposeSecret as _;
        let key_file = stopped.out("auditor-key.txt");
        fs::write(&key_file, auditor.to_string().expose_secret()).expect("key file");
        let decrypted = Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&key_file)
            .arg(out.join("records.csv.age"))
            .output()
            .expect("age runs");
        assert!(
            decrypted.status.success(),
            "{}",
            String::from_utf8_lossy(&decrypted.stderr)
        );
        assert_eq!(
            decrypted.stdout,
            fs::read(out.join("records.csv")).expect("csv")
        );
    } else {
        eprintln!("note: no `age` tool on this machine; decrypted with the age crate only");
    }
    // Someone else's identity does not decrypt it.
    let stranger = age::x25519::Identity::generate();
    let cipher = fs::read(out.join("records.csv.age")).expect("age file");
    let decryptor = age::Decryptor::new(&cipher[..]).expect("age header");
    assert!(decryptor
        .decrypt(std::iter::once(&stranger as &dyn age::Identity))
        .is_err());
    // A plaintext that does not match what was encrypted is an edit.
    fs::write(out.join("records.csv"), "forged").expect("write");
    let report = verify(&out);
    assert!(
        matches!(&report.findings[..], [Finding::EditedFile { name, .. }] if name == "records.csv")
    );
}

#[test]
fn a_non_empty_target_is_refused_and_left_as_it_was() {
    let stopped = Stopped::new();
    let out = stopped.out("busy");
    fs::create_dir(&out).expect("dir");
    fs::write(out.join("keep.txt"), "mine").expect("write");
    let err = stopped
        .export(&out, Some(RecordFilter::default()), Vec::new())
        .expect_err("refused");
    assert!(matches!(err, ExportError::TargetNotEmpty { .. }), "{err}");
    let names: Vec<_> = fs::read_dir(&out).expect("dir").collect();
    assert_eq!(names.len(), 1);
    assert_eq!(
        fs::read_to_string(out.join("keep.txt")).expect("read"),
        "mine"
    );
    // An empty existing folder is fine.
    let empty = stopped.out("empty");
    fs::create_dir(&empty).expect("dir");
    stopped
        .export(&empty, Some(RecordFilter::default()), Vec::new())
        .expect("export into an empty folder");
}

fn ifrelay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ifrelay"))
        .args(args)
        .env("RUST_LOG", "off")
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("the binary runs")
}

#[test]
fn the_cli_exports_a_stopped_box_and_verify_export_exits_with_the_finding() {
    let dir = tempfile::tempdir().expect("temp dir");
    let site = common::Site::new(dir.path());
    let config = site.config("127.0.0.1:0", "store/ifrelay.redb");
    let store_dir = dir.path().join("store");
    let (key, _) = BoxKey::load_or_create(&store_dir).expect("key");
    fill_store(&store_dir.join("ifrelay.redb"), 25);
    let out = dir.path().join("usb").join("export-1");
    fs::create_dir(dir.path().join("usb")).expect("usb");
    let config = config.to_string_lossy().into_owned();
    let out_s = out.to_string_lossy().into_owned();
    let done = ifrelay(&["export", "--config", &config, "--out", &out_s, "--records"]);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout)
        .contains("exported 25 records and 0 access-log entries"));
    let pem = dir.path().join("box.pub.pem");
    fs::write(&pem, ifrelay::identity::public_key_pem(&key.public_key())).expect("pem");
    let pem_s = pem.to_string_lossy().into_owned();
    let ok = ifrelay(&[
        "verify-export",
        &out_s,
        "--public-key",
        &pem_s,
        "--box-id",
        "131016",
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("verdict: the export verifies"), "{stdout}");
    // The same folder again: refused, untouched.
    let again = ifrelay(&["export", "--config", &config, "--out", &out_s]);
    assert_eq!(
        again.status.code(),
        Some(73),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));
    fs::write(out.join("extra.txt"), "x").expect("write");
    let extra = ifrelay(&["verify-export", &out_s]);
    assert_eq!(extra.status.code(), Some(14));
    assert!(String::from_utf8_lossy(&extra.stdout).contains("FAILED: extra file: extra.txt"));
    // Another box's key.
    let other = tempfile::tempdir().expect("temp dir");
    let (other_key, _) = BoxKey::load_or_create(other.path()).expect("key");
    fs::write(
        &pem,
        ifrelay::identity::public_key_pem(&other_key.public_key()),
    )
    .expect("pem");
    fs::remove_file(out.join("extra.txt")).expect("remove");
    let wrong = ifrelay(&["verify-export", &out_s, "--public-key", &pem_s]);
    assert_eq!(wrong.status.code(), Some(12));
    // A bad recipient is a usage error before anything is written.
    let bad = ifrelay(&[
        "export",
        "--config",
        &config,
        "--out",
        &dir.path().join("x").to_string_lossy(),
        "--encrypt-to",
        "age1nope",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(!dir.path().join("x").exists());
}
