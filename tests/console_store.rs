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
