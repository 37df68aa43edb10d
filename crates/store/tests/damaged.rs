//! A store file damaged on disk (issue 7 item 6): a byte changed in a row,
//! in the header or anywhere is refused as [`StoreError::Damaged`] by the
//! read-only open and by the writer's open alike — never a panic inside
//! redb — and the file stays byte for byte (and mtime) as it was, for the
//! auditor; the survey names the damaged entry; a file a crash left, and a
//! file a box is writing, are not damage. The firmware binary on damaged
//! copies: `tests/damaged_store.rs` at the workspace root.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::SystemTime;

use common::{append_both, TempStore, CACHE};
use ifrelay_store::{log_path, survey_damaged, ReadOnlyStore, Store, StoreError, SurveyEvent};

/// A closed store holding `n` entries in both chains.
/// A store of the redb file alone (no redo log), so a copy of the file
/// opens by itself.
fn store_with(n: u32) -> TempStore {
    let t = TempStore::new();
    let mut store = t.open_shared();
    append_both(&mut store, 1, n, 7);
    t
}

fn fingerprint(path: &Path) -> (Vec<u8>, SystemTime) {
    let meta = std::fs::metadata(path).unwrap();
    (std::fs::read(path).unwrap(), meta.modified().unwrap())
}

/// Changes the byte at `at` of the file (`^ xor`).
fn flip(path: &Path, at: usize, xor: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= xor;
    std::fs::write(path, bytes).unwrap();
}

fn position_of(path: &Path, needle: &[u8]) -> usize {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the bytes are in the file")
}

/// Both opens refuse the file as damaged and change nothing in it.
fn assert_refused_as_damaged(path: &Path) -> String {
    let before = fingerprint(path);
    let err = ReadOnlyStore::open(path).unwrap_err();
    assert!(err.is_damaged(), "read-only open: {err}");
    let message = err.to_string();
    assert!(message.contains("is damaged"), "{message}");
    assert!(message.contains("for the auditor"), "{message}");
    let err = Store::open(path, CACHE).unwrap_err();
    assert!(err.is_damaged(), "writer's open: {err}");
    assert!(
        fingerprint(path) == before,
        "an open changed the damaged file"
    );
    let StoreError::Damaged { detail, .. } = err else {
        unreachable!("checked above")
    };
    detail
}

#[test]
fn a_changed_byte_in_an_access_entry_is_refused_by_both_opens_and_the_file_stays() {
    let t = store_with(30);
    flip(&t.path, position_of(&t.path, b"m-17") + 2, 0x01);
    let detail = assert_refused_as_damaged(&t.path);
    assert!(detail.contains("checksum"), "{detail}");
}

#[test]
fn the_survey_names_the_damaged_entry_and_announces_every_table_first() {
    let t = store_with(30);
    flip(&t.path, position_of(&t.path, b"m-17") + 2, 0x01);
    let mut events = Vec::new();
    survey_damaged(&t.path, |e| events.push(e));
    let read: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            SurveyEvent::Reading(table) => Some(*table),
            SurveyEvent::Finding { .. } => None,
        })
        .collect();
    assert_eq!(read.len(), 27, "{events:?}");
    assert_eq!(read[..4], ["meta", "chain_marks", "records", "access_log"]);
    assert!(
        events.iter().any(|e| matches!(
            e,
            SurveyEvent::Finding { table: "access_log", what } if what.contains("seq 17")
        )),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(
            e,
            SurveyEvent::Finding {
                table: "records",
                ..
            }
        )),
        "{events:?}"
    );
}

#[test]
fn a_damaged_header_is_damage_not_another_kind_of_file() {
    for (at, xor) in [
        (3, 0x10),         // the signature
        (192 + 120, 0x80), // a commit slot's checksum
        (64 + 40, 0x04),   // a commit slot's root page
    ] {
        let t = store_with(5);
        flip(&t.path, at, xor);
        // Whichever commit slot is primary, the damaged one is refused or
        // harmless (the previous commit's slot is no longer read).
        let before = fingerprint(&t.path);
        match ReadOnlyStore::open(&t.path) {
            Err(e) => {
                assert!(e.is_damaged(), "byte {at}: {e}");
                assert_refused_as_damaged(&t.path);
            }
            Ok(ro) => {
                assert!(ro.verify_chains().unwrap().is_intact());
                drop(ro);
                assert!(fingerprint(&t.path) == before);
            }
        }
    }
    let t = store_with(5);
    flip(&t.path, 3, 0x10);
    let detail = assert_refused_as_damaged(&t.path);
    assert!(detail.contains("signature"), "{detail}");
}

#[test]
fn sixty_four_seeded_flips_are_refused_or_harmless_never_a_panic() {
    let t = store_with(60);
    let base = std::fs::read(&t.path).unwrap();
    let work = t.dir.path().join("work.redb");
    let mut damaged = 0;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for seed in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Half of them in the first 64 KiB, where the rows of this small
        // store are; the rest anywhere.
        let span = if seed % 2 == 0 { 64 << 10 } else { base.len() };
        let at = usize::try_from(x % span as u64).unwrap();
        let mut bytes = base.clone();
        bytes[at] ^= u8::try_from((x >> 56) % 255 + 1).unwrap();
        std::fs::write(&work, &bytes).unwrap();
        match ReadOnlyStore::open(&work) {
            Err(e) if e.is_damaged() => {
                damaged += 1;
                assert!(Store::open(&work, CACHE).unwrap_err().is_damaged());
                assert!(std::fs::read(&work).unwrap() == bytes, "seed {seed}");
            }
            // A flag that reads as a crash, or a header field that makes
            // the file something else than a store of this firmware.
            Err(e) => assert!(
                matches!(
                    e,
                    StoreError::NeedsRepair { .. } | StoreError::NotAStore { .. }
                ),
                "seed {seed}, byte {at}: {e}"
            ),
            Ok(ro) => {
                ro.verify_chains().unwrap();
                drop(ro);
                let mut store = Store::open(&work, CACHE).unwrap();
                store.boot(1_700_000_000_000).unwrap();
            }
        }
    }
    assert!(damaged >= 8, "only {damaged} of 64 flips hit live pages");
}

#[test]
fn a_file_a_crash_left_passes_the_check_and_the_writer_repairs_it() {
    let t = TempStore::new();
    let crashed = t.dir.path().join("crashed.redb");
    {
        let mut store = t.open();
        append_both(&mut store, 1, 10, 5);
        // A crash leaves both files; the log holds what redb did not sync.
        std::fs::copy(&t.path, &crashed).unwrap();
        std::fs::copy(log_path(&t.path), log_path(&crashed)).unwrap();
    }
    assert!(matches!(
        ReadOnlyStore::open(&crashed).unwrap_err(),
        StoreError::NeedsRepair { .. }
    ));
    drop(Store::open(&crashed, CACHE).unwrap());
    let ro = ReadOnlyStore::open(&crashed).unwrap();
    assert!(ro.pages_checked());
    assert_eq!(ro.verify_chains().unwrap().records.checked, 10);
}

#[test]
fn a_file_a_box_is_writing_is_verified_without_the_page_check() {
    let t = TempStore::new();
    let mut store = t.open_shared();
    append_both(&mut store, 1, 10, 5);
    let ro = ReadOnlyStore::open(&t.path).unwrap();
    assert!(!ro.pages_checked(), "the page check ran beside a writer");
    assert!(ro.verify_chains().unwrap().is_intact());
    drop(ro);
    drop(store);
    assert!(ReadOnlyStore::open(&t.path).unwrap().pages_checked());
}
