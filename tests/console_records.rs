//! Records at the console through the running engine (issue 10 items 5
//! and 6; R-REC-2..4): an export of a search result to the export media
//! that `verify-export` accepts, with its access-log entry; deletion of
//! records past their period only after the typed phrase and a second
//! person's login (two-person rule), carried out by the engine's tick and
//! durable across a restart; never a record inside the period.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use ifrelay::console::accounts::HashCost;
use ifrelay::console::export::ExportSetup;
use ifrelay::console::media::Media;
use ifrelay::console::session::{Session, Settings};
use ifrelay::console::store_accounts::StoreAccounts;
use ifrelay::export::{verify_export, ExpectedBox};
use ifrelay::identity::BoxKey;
use ifrelay::net::now_millis;
use ifrelay::relay::channel::Input;
use ifrelay::relay::engine::harness::Fixture;
use ifrelay::relay::engine::{Engine, EngineStats, RetentionPolicy};
use ifrelay_store::{Store, StoreReader};
use tokio::sync::mpsc;

const ADMIN_PASSWORD: &str = "Chief-Pass-2026";
const AUDITOR_PASSWORD: &str = "Audit-Pass-2026";
const DAY: i64 = 24 * 3600 * 1000;

fn code(secret: &str, at: i64) -> String {
    let bytes = totp_rs::Secret::try_from_base32(secret).unwrap();
    let totp = totp_rs::Builder::new()
        .with_secret(bytes.as_bytes().to_vec())
        .build()
        .unwrap();
    totp.generate(u64::try_from(at / 1000).unwrap()).to_string()
}

fn secret_in(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| {
            l.len() == 32
                && l.chars()
                    .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        })
        .unwrap_or_else(|| panic!("no secret shown in {text}"))
        .to_owned()
}

/// A record of business `business` for serial number `n`.
fn record(n: u32, business: &str) -> ifrelay_store::Record {
    use ifrelay_proto::{
        AgencyCode, BusinessCode, InfoNameCode, ItemCode, PermitId, PersonCode, Prefix, Serial,
    };
    let mut items = heapless::Vec::new();
    items.push(ItemCode::new("IT0001").unwrap()).unwrap();
    ifrelay_store::Record {
        kind: ifrelay_store::RecordKind::Query,
        side: ifrelay_store::Side::Requester,
        serial: Serial::new(&format!("131016-20261201-1-{n}")).unwrap(),
        prefix: Prefix {
            requester: AgencyCode::new("131016").unwrap(),
            business: BusinessCode::new(business).unwrap(),
            provider: AgencyCode::new("271004").unwrap(),
            info_name: InfoNameCode::new("TK0001").unwrap(),
            items,
        },
        code: Some(PersonCode::new(&format!("CODE{n:04}")).unwrap()),
        permit_id: Some(PermitId::new("permit-1").unwrap()),
        counterpart: Some(AgencyCode::new("271004").unwrap()),
        query_requested_at: 1_796_000_000_000,
        provision_at: None,
        clock_synced: false,
    }
}

/// A box's store and engine with a console session on it, and the
/// people who use it: `admin` (security administrator), `sato` and
/// `suzuki` (auditors), each logged in once and with their own password.
struct Desk {
    dir: tempfile::TempDir,
    tx: mpsc::Sender<Input>,
    reader: StoreReader,
    thread: Option<std::thread::JoinHandle<()>>,
    session: Session<StoreAccounts>,
    secrets: std::collections::HashMap<&'static str, String>,
    /// The session's clock: each login moves it on by a 30-second step,
    /// so no code is ever a replay.
    now: i64,
}

impl Desk {
    /// `old` records appended 8 years ago, `young` records now.
    fn new(old: u32, young: u32, two_person: bool) -> Desk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ifrelay.redb");
        {
            let mut store = Store::open(&path, 4 << 20).unwrap();
            store.boot(now_millis()).unwrap();
            let mut b = store.begin().unwrap();
            let eight_years_ago = now_millis() - 8 * 366 * DAY;
            for n in 1..=old {
                b.append_record(eight_years_ago + i64::from(n), record(n, "JM0010"))
                    .unwrap();
            }
            for n in old + 1..=old + young {
                let business = if n % 2 == 0 { "JM0020" } else { "JM0010" };
                b.append_record(now_millis(), record(n, business)).unwrap();
            }
            b.commit().unwrap();
        }
        let (key, _) = BoxKey::load_or_create(dir.path()).unwrap();
        let (tx, reader, thread) = engine(&path);
        let retention = RetentionPolicy::keep_records();
        let setup = ExportSetup {
            media: Media::Folder(dir.path().join("stick")),
            recipients: Vec::new(),
            key: Arc::new(key),
            roots: Vec::new(),
            party: "is/131016".into(),
            agency: "131016".into(),
            name: Some("box-131016".into()),
        };
        let accounts = StoreAccounts::new(reader.clone(), tx.clone(), "ttyS0", now_millis)
            .with_records(Arc::new(setup), retention);
        let mut settings = Settings::new("box-131016");
        settings.cost = HashCost {
            memory_kib: 64,
            passes: 1,
        };
        settings.two_person = two_person;
        let session = Session::start(accounts, settings, now_millis());
        // The first code is typed in the next step.
        let mut desk = Desk {
            dir,
            tx,
            reader,
            thread: Some(thread),
            session,
            secrets: std::collections::HashMap::new(),
            now: now_millis(),
        };
        let shown = desk.type_in(&format!("admin\r{ADMIN_PASSWORD}\r{ADMIN_PASSWORD}\r"));
        let admin = secret_in(&shown);
        let c = desk.code_of(&admin);
        desk.type_in(&format!("{c}\r"));
        desk.secrets.insert("admin", admin);
        desk.log_in("admin", ADMIN_PASSWORD);
        for id in ["sato", "suzuki"] {
            desk.type_in(&format!("user add {id} auditor\r"));
            let shown = desk.type_in("Temp-Pass-0001\rTemp-Pass-0001\r");
            desk.secrets.insert(id, secret_in(&shown));
        }
        desk.type_in("logout\r");
        for id in ["sato", "suzuki"] {
            desk.log_in(id, "Temp-Pass-0001");
            desk.type_in(&format!("{AUDITOR_PASSWORD}\r{AUDITOR_PASSWORD}\r"));
            desk.type_in("logout\r");
        }
        desk
    }

    fn type_in(&mut self, keys: &str) -> String {
        let mut out = self.session.feed(keys.as_bytes(), self.now);
        out.extend(self.session.tick(self.now));
        String::from_utf8(out).unwrap()
    }

    /// A fresh code of `secret`: the clock moves to the next step.
    fn code_of(&mut self, secret: &str) -> String {
        self.now += 30_000;
        code(secret, self.now)
    }

    fn code_for(&mut self, id: &str) -> String {
        let secret = self.secrets[id].clone();
        self.code_of(&secret)
    }

    fn log_in(&mut self, id: &str, password: &str) -> String {
        let c = self.code_for(id);
        self.type_in(&format!("{id}\r{password}\r{c}\r"))
    }

    fn console_log(&self, operation: &str) -> Vec<ifrelay_store::AccessEntry> {
        self.reader
            .access_log(0, 10_000)
            .unwrap()
            .into_iter()
            .map(|e| e.entry)
            .filter(|e| e.party == "console" && e.operation == operation)
            .collect()
    }

    /// Lets the engine's tick run `n` times.
    fn ticks(&self, n: usize) {
        for _ in 0..n {
            self.tx.blocking_send(Input::Tick).unwrap();
        }
        // A console write after them answers once they are all done.
        let mut probe = StoreAccounts::new(self.reader.clone(), self.tx.clone(), "t", now_millis);
        ifrelay::console::session::Accounts::audit(
            &mut probe,
            ifrelay::console::session::Audit::default(),
        );
    }

    fn stop(&mut self) {
        self.tx.blocking_send(Input::Stop).unwrap();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn engine(
    path: &std::path::Path,
) -> (
    mpsc::Sender<Input>,
    StoreReader,
    std::thread::JoinHandle<()>,
) {
    let store = Store::open(path, 4 << 20).unwrap();
    let reader = store.reader();
    let (deliver, _notices) = mpsc::unbounded_channel();
    let stats = Arc::new(Mutex::new(EngineStats::default()));
    let (engine, _ids) =
        Engine::boot(store, Fixture::new().config(), deliver, stats, now_millis()).unwrap();
    let (tx, rx) = mpsc::channel(64);
    let thread = std::thread::spawn(move || engine.run(rx));
    (tx, reader, thread)
}

#[test]
fn an_auditor_exports_a_search_result_that_verifies_and_the_export_is_logged() {
    let mut desk = Desk::new(0, 25, true);
    desk.log_in("sato", AUDITOR_PASSWORD);
    let counted = desk.type_in("search records business JM0010\r");
    assert!(counted.contains("13 件が該当します"), "{counted}");
    let done = desk.type_in("export records business JM0010\r");
    assert!(done.contains("USBメモリに書き出しています"), "{done}");
    assert!(done.contains("記録 13 件、アクセスログ 0 件"), "{done}");
    assert!(done.contains("抜いてかまいません"), "{done}");

    let stick = desk.dir.path().join("stick");
    let folders: Vec<_> = std::fs::read_dir(&stick)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    let name = folders[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("ifrelay-export-131016-"), "{name}");
    let key = BoxKey::load(desk.dir.path()).unwrap();
    let expected = ExpectedBox {
        public_key: Some(key.public_key()),
        box_id: Some("131016".into()),
    };
    let report = verify_export(&folders[0], &expected).unwrap();
    assert!(report.is_intact(), "{:?}", report.findings);
    let csv = std::fs::read_to_string(folders[0].join("records.csv")).unwrap();
    assert_eq!(csv.matches("JM0010").count(), 13, "{csv}");
    assert!(!csv.contains("JM0020"));

    // A second export the same second gets a folder of its own.
    let again = desk.type_in("export all\r");
    assert!(again.contains("記録 25 件"), "{again}");
    assert_eq!(std::fs::read_dir(&stick).unwrap().count(), 2);

    // A search spanning two businesses names both (report table 25).
    desk.type_in("search records requester 131016\r");
    desk.type_in("logout\r");
    let searches = desk.console_log("search records");
    assert_eq!(
        searches.last().map(|e| e.outcome.as_str()),
        Some("accepted: 10 shown; businesses JM0010,JM0020"),
        "{searches:?}"
    );
    assert_eq!(
        searches
            .last()
            .and_then(|e| e.info_name.as_ref())
            .map(|i| i.as_str()),
        Some("TK0001")
    );
    let exports = desk.console_log("export records");
    assert_eq!(exports.len(), 1, "{exports:?}");
    assert_eq!(exports[0].staff.as_deref(), Some("sato"));
    assert_eq!(
        exports[0].business.as_ref().map(|b| b.as_str()),
        Some("JM0010")
    );
    assert!(
        exports[0].outcome.starts_with("accepted: 13 records")
            && exports[0].outcome.contains(&name),
        "{}",
        exports[0].outcome
    );
    desk.stop();
}

#[test]
fn an_export_to_media_that_cannot_take_it_says_so_and_is_logged() {
    let mut desk = Desk::new(0, 3, true);
    // The "stick" folder cannot be created: a file is in its way.
    std::fs::write(desk.dir.path().join("stick"), b"not a folder").unwrap();
    desk.log_in("sato", AUDITOR_PASSWORD);
    let failed = desk.type_in("export all\r");
    assert!(failed.contains("書き出せませんでした"), "{failed}");
    desk.type_in("logout\r");
    let log = desk.console_log("export all");
    assert_eq!(log.len(), 1);
    assert!(log[0].outcome.starts_with("refused:"), "{}", log[0].outcome);
    desk.stop();
}

#[test]
fn records_past_their_period_go_only_after_the_phrase_and_a_second_person() {
    let mut desk = Desk::new(30, 5, true);
    desk.log_in("sato", AUDITOR_PASSWORD);
    let plan = desk.type_in("delete\r");
    assert!(plan.contains("記録 30 件を削除します"), "{plan}");
    assert!(plan.contains("「DELETE 30」と入力してください"), "{plan}");
    let wrong = desk.type_in("DELETE 31\r");
    assert!(wrong.contains("削除しません"), "{wrong}");

    desk.type_in("delete\r");
    let asked = desk.type_in("DELETE 30\r");
    assert!(asked.contains("もう一人"), "{asked}");
    // Approving oneself is refused.
    let c = desk.code_for("sato");
    let myself = desk.type_in(&format!("sato\r{AUDITOR_PASSWORD}\r{c}\r"));
    assert!(myself.contains("sato は承認できません"), "{myself}");
    // A wrong code from the approver is refused.
    desk.type_in("delete\r");
    desk.type_in("DELETE 30\r");
    let wrong_code = desk.type_in(&format!("suzuki\r{AUDITOR_PASSWORD}\r000000\r"));
    assert!(wrong_code.contains("いずれかが違います"), "{wrong_code}");
    desk.ticks(3);
    assert_eq!(
        desk.reader.record_count().unwrap(),
        35,
        "nothing deleted yet"
    );

    desk.type_in("delete\r");
    desk.type_in("DELETE 30\r");
    let c = desk.code_for("suzuki");
    let approved = desk.type_in(&format!("suzuki\r{AUDITOR_PASSWORD}\r{c}\r"));
    assert!(approved.contains("削除を確定しました。30 件"), "{approved}");
    desk.type_in("logout\r");
    // 25 records a tick: two ticks delete the 30, never the 5 young ones.
    desk.ticks(3);
    assert_eq!(desk.reader.record_count().unwrap(), 5);
    let left = desk.reader.records(0, 100).unwrap();
    assert!(left.iter().all(|r| r.at > now_millis() - DAY), "{left:?}");
    assert!(desk.reader.verify_chains().unwrap().is_intact());

    let outcomes: Vec<String> = desk
        .console_log("delete records")
        .into_iter()
        .map(|e| e.outcome)
        .collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| o.as_str() == "refused: not confirmed")
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| o.as_str() == "refused: not approved")
            .count(),
        2,
        "{outcomes:?}"
    );
    let accepted: Vec<_> = outcomes
        .iter()
        .filter(|o| o.starts_with("accepted: 30 records"))
        .collect();
    assert_eq!(accepted.len(), 1, "{outcomes:?}");
    assert!(accepted[0].contains("approved by suzuki"), "{outcomes:?}");
    let approvals = desk.console_log("approve deletion");
    assert_eq!(approvals.len(), 3, "{approvals:?}");
    assert_eq!(approvals[2].staff.as_deref(), Some("suzuki"));
    assert_eq!(approvals[2].outcome, "accepted");
    desk.stop();
}

#[test]
fn a_confirmed_deletion_survives_a_restart_and_one_person_suffices_without_the_rule() {
    let mut desk = Desk::new(60, 2, false);
    desk.log_in("sato", AUDITOR_PASSWORD);
    desk.type_in("delete\r");
    let done = desk.type_in("DELETE 60\r");
    assert!(done.contains("削除を確定しました。60 件"), "{done}");
    desk.ticks(1);
    assert_eq!(desk.reader.record_count().unwrap(), 37);
    let confirmed = desk.reader.records_deletion_confirmed().unwrap();
    assert!(confirmed.is_some_and(|c| c <= now_millis() - 7 * 366 * DAY));
    desk.stop();

    // The restarted engine goes on with what was confirmed.
    let (tx, reader, thread) = engine(&desk.dir.path().join("ifrelay.redb"));
    for _ in 0..3 {
        tx.blocking_send(Input::Tick).unwrap();
    }
    tx.blocking_send(Input::Stop).unwrap();
    thread.join().unwrap();
    drop(reader);
    let store = Store::open(&desk.dir.path().join("ifrelay.redb"), 4 << 20).unwrap();
    let reader = store.reader();
    assert_eq!(reader.record_count().unwrap(), 2);
    assert!(reader.verify_chains().unwrap().is_intact());
}

#[test]
fn nothing_is_offered_for_deletion_inside_the_period() {
    let mut desk = Desk::new(0, 4, true);
    desk.log_in("sato", AUDITOR_PASSWORD);
    let none = desk.type_in("delete\r");
    assert!(
        none.contains("保存期間（7 年）を過ぎた記録はありません"),
        "{none}"
    );
    desk.type_in("logout\r");
    // The security administrator may approve but not delete or export.
    desk.log_in("admin", ADMIN_PASSWORD);
    for refused in ["delete\r", "export all\r"] {
        let out = desk.type_in(refused);
        assert!(out.contains("使えません"), "{refused}: {out}");
    }
    // The account inventory goes onto the stick as CSV.
    let done = desk.type_in("users export\r");
    assert!(done.contains("アカウント一覧を"), "{done}");
    let stick = desk.dir.path().join("stick");
    let files: Vec<_> = std::fs::read_dir(&stick)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("ifrelay-accounts-131016-") && name.ends_with(".csv"));
    let csv = std::fs::read(&files[0]).unwrap();
    assert!(csv.starts_with(b"\xEF\xBB\xBFuser,role,last_login,password_age_days,locked\r\n"));
    let text = String::from_utf8(csv).unwrap();
    for id in ["admin", "sato", "suzuki"] {
        assert!(text.contains(&format!("\r\n{id},")), "{text}");
    }
    desk.ticks(2);
    assert_eq!(desk.reader.record_count().unwrap(), 4);
    desk.stop();
}

#[test]
fn exports_from_the_console_are_encrypted_to_the_configured_auditors() {
    use ifrelay::console::export::ExportOrder;
    use ifrelay::console::session::Accounts;
    use std::io::Read;

    let desk = Desk::new(0, 4, true);
    let auditor = age::x25519::Identity::generate();
    let setup = ExportSetup {
        media: Media::Folder(desk.dir.path().join("sealed")),
        recipients: vec![auditor.to_public()],
        key: Arc::new(BoxKey::load(desk.dir.path()).unwrap()),
        roots: Vec::new(),
        party: "is/131016".into(),
        agency: "131016".into(),
        name: None,
    };
    let mut accounts =
        StoreAccounts::new(desk.reader.clone(), desk.tx.clone(), "ttyS0", now_millis)
            .with_records(Arc::new(setup), RetentionPolicy::keep_records());
    let order = ExportOrder::Chains {
        records: Some(Box::default()),
        access: None,
    };
    let done = accounts.export(&order, now_millis()).unwrap();
    assert_eq!((done.records, done.recipients), (4, 1));
    let folder = desk.dir.path().join("sealed").join(&done.name);
    assert!(!folder.join("records.csv").exists(), "no clear copy");
    let sealed = std::fs::read(folder.join("records.csv.age")).unwrap();
    let decryptor = age::Decryptor::new(&sealed[..]).unwrap();
    let mut csv = String::new();
    decryptor
        .decrypt(std::iter::once(&auditor as &dyn age::Identity))
        .unwrap()
        .read_to_string(&mut csv)
        .unwrap();
    assert_eq!(csv.matches("131016-20261201-1-").count(), 4, "{csv}");
    let key = BoxKey::load(desk.dir.path()).unwrap();
    let expected = ExpectedBox {
        public_key: Some(key.public_key()),
        box_id: Some("131016".into()),
    };
    assert!(verify_export(&folder, &expected).unwrap().is_intact());
}
