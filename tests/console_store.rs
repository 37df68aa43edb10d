//! Console accounts kept in the box's store (issue 10 item 2): the
//! session's writes go through the relay engine as batches, durable
//! before the console goes on; accounts and the console's access-log
//! entries are there after a restart.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use ifrelay::console::accounts::{HashCost, Role};
use ifrelay::console::session::{Session, Settings};
use ifrelay::console::store_accounts::StoreAccounts;
use ifrelay::net::now_millis;
use ifrelay::relay::channel::Input;
use ifrelay::relay::engine::harness::Fixture;
use ifrelay::relay::engine::{Engine, EngineStats};
use ifrelay_store::Store;
use tokio::sync::mpsc;

const PASSWORD: &str = "Chief-Pass-2026";

fn code(secret: &str, at: i64) -> String {
    let bytes = totp_rs::Secret::try_from_base32(secret).unwrap();
    let totp = totp_rs::Builder::new()
        .with_secret(bytes.as_bytes().to_vec())
        .build()
        .unwrap();
    totp.generate(u64::try_from(at / 1000).unwrap()).to_string()
}

/// An engine on its own thread over the store at `path`.
fn engine(
    path: &std::path::Path,
) -> (
    mpsc::Sender<Input>,
    ifrelay_store::StoreReader,
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
fn the_first_administrator_and_the_console_log_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ifrelay.redb");
    let (tx, reader, thread) = engine(&path);
    let mut settings = Settings::new("box-131016");
    settings.cost = HashCost {
        memory_kib: 64,
        passes: 1,
    };
    let accounts = StoreAccounts::new(reader.clone(), tx.clone(), "ttyS0", now_millis);
    let mut session = Session::start(accounts, settings, now_millis());
    let mut screen = String::from_utf8(session.feed(b"", now_millis())).unwrap();
    let mut type_in = |session: &mut Session<StoreAccounts>, keys: &str| {
        let out = String::from_utf8(session.feed(keys.as_bytes(), now_millis())).unwrap();
        screen.push_str(&out);
        screen.clone()
    };
    type_in(&mut session, &format!("admin\r{PASSWORD}\r{PASSWORD}\r"));
    let shown = type_in(&mut session, "");
    let secret = shown
        .lines()
        .map(str::trim)
        .find(|l| {
            l.len() == 32
                && l.chars()
                    .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        })
        .unwrap()
        .to_owned();
    let created = type_in(&mut session, &format!("{}\r", code(&secret, now_millis())));
    assert!(
        created.contains("セキュリティ管理者 admin を作成しました"),
        "{created}"
    );
    let stored = reader.users().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, "admin");

    tx.blocking_send(Input::Stop).unwrap();
    thread.join().unwrap();
    drop(session);
    drop(tx);
    drop(reader);

    let store = Store::open(&path, 4 << 20).unwrap();
    let reader = store.reader();
    let users = reader.users().unwrap();
    let admin: ifrelay::console::accounts::User = ciborium::from_reader(&users[0].1[..]).unwrap();
    assert_eq!(
        (admin.id.as_str(), admin.role),
        ("admin", Role::SecurityAdmin)
    );
    let log = reader.access_log(0, 100).unwrap();
    let console: Vec<_> = log.iter().filter(|e| e.entry.party == "console").collect();
    assert_eq!(console.len(), 1, "{log:?}");
    assert_eq!(console[0].entry.terminal, "console:ttyS0");
    assert_eq!(console[0].entry.staff.as_deref(), Some("admin"));
    assert_eq!(console[0].entry.outcome, "accepted");
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

#[test]
fn an_auditor_searches_records_page_by_page_and_the_search_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ifrelay.redb");
    {
        let mut store = Store::open(&path, 4 << 20).unwrap();
        store.boot(now_millis()).unwrap();
        let mut b = store.begin().unwrap();
        for n in 1..=25 {
            let business = if n % 2 == 0 { "JM0020" } else { "JM0010" };
            b.append_record(now_millis(), record(n, business)).unwrap();
        }
        b.commit().unwrap();
    }
    let (tx, reader, thread) = engine(&path);
    let mut settings = Settings::new("box-131016");
    settings.cost = HashCost {
        memory_kib: 64,
        passes: 1,
    };
    let accounts = StoreAccounts::new(reader.clone(), tx.clone(), "ttyS0", now_millis);
    let mut session = Session::start(accounts, settings, now_millis());
    let mut screen = String::from_utf8(session.feed(b"", now_millis())).unwrap();
    let mut type_in = |session: &mut Session<StoreAccounts>, keys: &str| {
        let out = String::from_utf8(session.feed(keys.as_bytes(), now_millis())).unwrap();
        screen.push_str(&out);
        out
    };
    let secret_in = |text: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| {
                l.len() == 32
                    && l.chars()
                        .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
            })
            .unwrap()
            .to_owned()
    };
    let shown = type_in(&mut session, &format!("admin\r{PASSWORD}\r{PASSWORD}\r"));
    let admin = secret_in(&shown);
    let now_s = || now_millis() / 1000 * 1000;
    type_in(&mut session, &format!("{}\r", code(&admin, now_s())));
    type_in(
        &mut session,
        &format!("admin\r{PASSWORD}\r{}\r", code(&admin, now_s() + 30_000)),
    );
    type_in(&mut session, "user add sato auditor\r");
    let shown = type_in(&mut session, "Temp-Pass-0001\rTemp-Pass-0001\r");
    let sato = secret_in(&shown);
    type_in(&mut session, "logout\r");
    let first = type_in(
        &mut session,
        &format!("sato\rTemp-Pass-0001\r{}\r", code(&sato, now_s())),
    );
    assert!(first.contains("パスワードを変更してください"), "{first}");
    type_in(&mut session, "Own-Pass-00001\rOwn-Pass-00001\r");

    // 13 records of business JM0010: a page of 10, then the last 3.
    let page = type_in(&mut session, "search records business JM0010\r");
    assert_eq!(page.matches("->271004 JM0010").count(), 10, "{page}");
    assert!(
        page.contains("10 件を表示しました。続きは next です。"),
        "{page}"
    );
    let rest = type_in(&mut session, "next\r");
    assert_eq!(rest.matches("->271004 JM0010").count(), 3, "{rest}");
    assert!(rest.contains("3 件を表示しました（以上）"), "{rest}");
    assert!(!rest.contains("JM0020"));
    let one = type_in(&mut session, "search records code CODE0007\r");
    assert!(
        one.contains("131016-20261201-1-7") && one.contains("1 件"),
        "{one}"
    );
    let full = type_in(&mut session, "show 7\r");
    assert!(
        full.contains("CODE0007") && full.contains("permit-1"),
        "{full}"
    );
    let bad = type_in(&mut session, "search records requester 13/01\r");
    assert!(bad.contains("requester の値「13/01」は使えません"), "{bad}");
    let unknown = type_in(&mut session, "search records colour red\r");
    assert!(unknown.contains("条件「colour」はありません"), "{unknown}");
    type_in(&mut session, "logout\r");

    // Every console write waited for its commit.
    let log = reader.access_log(0, 1000).unwrap();
    tx.blocking_send(Input::Stop).unwrap();
    thread.join().unwrap();
    let searches: Vec<_> = log
        .iter()
        .filter(|e| e.entry.party == "console" && e.entry.operation == "search records")
        .collect();
    assert!(!searches.is_empty());
    let by_business = searches
        .iter()
        .find(|e| e.entry.outcome == "accepted: 10 shown")
        .expect("the first page's entry");
    assert_eq!(by_business.entry.staff.as_deref(), Some("sato"));
    assert_eq!(
        by_business.entry.business.as_ref().map(|b| b.as_str()),
        Some("JM0010")
    );
    assert_eq!(
        by_business
            .entry
            .items
            .iter()
            .map(|i| i.as_str())
            .collect::<Vec<_>>(),
        ["IT0001"]
    );
}
