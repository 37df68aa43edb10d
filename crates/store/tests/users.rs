//! Console accounts in the store (issue 10): stored, replaced and removed
//! in batches like everything else, durable through the redo log, and a
//! store that never held one answers with none.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TempStore, CACHE};
use ifrelay_store::{log_path, LogOptions, Store, SurveyEvent};

const NOW: i64 = 1_700_000_000_000;

#[test]
fn a_store_without_accounts_has_none_and_surveys_clean() {
    let t = TempStore::new();
    let mut store = Store::open(&t.path, CACHE).unwrap();
    store.boot(NOW).unwrap();
    assert!(store.reader().users().unwrap().is_empty());
    assert_eq!(store.reader().user("sato").unwrap(), None);
    drop(store);
    let mut read_users = false;
    let mut findings = Vec::new();
    ifrelay_store::survey_damaged(&t.path, |e| match e {
        SurveyEvent::Reading("users") => read_users = true,
        SurveyEvent::Finding { table, what } => findings.push(format!("{table}: {what}")),
        SurveyEvent::Reading(_) => {}
    });
    assert!(read_users);
    assert!(findings.is_empty(), "{findings:?}");
}

#[test]
fn accounts_are_stored_replaced_removed_and_replayed_after_a_kill() {
    let t = TempStore::new();
    let options = LogOptions {
        checkpoint_batches: u64::MAX,
        checkpoint_bytes: u64::MAX,
        ..LogOptions::default()
    };
    let mut store = Store::open_with_log(&t.path, CACHE, options).unwrap();
    store.boot(NOW).unwrap();
    let mut b = store.begin().unwrap();
    b.put_user("sato", b"v1").unwrap();
    b.put_user("abe", b"a1").unwrap();
    b.commit().unwrap();
    let mut b = store.begin().unwrap();
    b.put_user("sato", b"v2").unwrap();
    assert!(b.remove_user("abe").unwrap());
    assert!(!b.remove_user("nobody").unwrap());
    b.put_user("yamada", b"y1").unwrap();
    b.commit().unwrap();
    let expected = vec![
        ("sato".to_owned(), b"v2".to_vec()),
        ("yamada".to_owned(), b"y1".to_vec()),
    ];
    assert_eq!(store.reader().users().unwrap(), expected);
    assert_eq!(store.reader().user("sato").unwrap(), Some(b"v2".to_vec()));

    // Killed before any checkpoint: the accounts come back from the log.
    let copy = t.dir.path().join("killed.redb");
    std::fs::copy(&t.path, &copy).unwrap();
    std::fs::copy(log_path(&t.path), log_path(&copy)).unwrap();
    std::mem::forget(store);
    let store = Store::open(&copy, CACHE).unwrap();
    assert_eq!(store.replayed_at_open(), 2);
    assert_eq!(store.reader().users().unwrap(), expected);
}
