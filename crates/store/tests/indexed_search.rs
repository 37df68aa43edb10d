//! Indexed search of records and access log (issue 9 item 3, R-REC-2):
//! every index lookup (serial, code, requester, provider, business, info
//! name, item, time range, and the access log's party, agency, staff,
//! serial, time) answers exactly what a full scan with the filter answers,
//! on random data whose clock sometimes steps back; paging by cursor
//! neither skips nor repeats entries while new ones arrive between pages;
//! the read-only store answers the same. The stores hold entries on both
//! sides of the index mark (index steps ran for the first two thirds), so
//! every answer merges index lookups with the scan of the entries after
//! the mark.
#![allow(clippy::unwrap_used)]

mod common;

use common::{access, agency, record, serial, TempStore};
use ifrelay_proto::{BusinessCode, InfoNameCode, ItemCode, Millis, PersonCode};
use ifrelay_store::{
    AccessEntry, AccessFilter, ChainedAccess, ChainedRecord, PageCursor, Record, RecordFilter,
    RecordKind, Side, Store, StoreReader,
};

/// A small deterministic generator (xorshift64*), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const AGENCIES: [&str; 3] = ["131016", "271004", "011002"];

fn random_record(rng: &mut Rng, n: u32) -> Record {
    let mut r = record(
        serial(1 + rng.below(300) as u32),
        if rng.below(2) == 0 {
            RecordKind::Query
        } else {
            RecordKind::Provision
        },
        Side::Requester,
    );
    r.prefix.requester = agency(AGENCIES[rng.below(3) as usize]);
    r.prefix.provider = agency(AGENCIES[rng.below(3) as usize]);
    r.prefix.business = BusinessCode::new(&format!("JM{:04}", rng.below(4))).unwrap();
    r.prefix.info_name = InfoNameCode::new(&format!("TK{:04}", rng.below(5))).unwrap();
    r.prefix.items.clear();
    for _ in 0..1 + rng.below(3) {
        let item = ItemCode::new(&format!("ITEM{:02}", rng.below(6))).unwrap();
        if !r.prefix.items.contains(&item) {
            r.prefix.items.push(item).unwrap();
        }
    }
    r.code =
        (rng.below(5) != 0).then(|| PersonCode::new(&format!("CODE-{}", rng.below(40))).unwrap());
    r.query_requested_at = i64::from(n);
    r
}

/// Times that mostly grow and sometimes step back (a clock correction).
fn next_time(rng: &mut Rng, now: &mut Millis) -> Millis {
    if rng.below(50) == 0 {
        *now -= 500 + rng.below(3000) as i64;
    } else {
        *now += rng.below(40) as i64;
    }
    *now
}

fn fill(store: &mut Store, rng: &mut Rng, n: u32) {
    let mut now = 1_000_000;
    let mut b = store.begin().unwrap();
    for i in 0..n {
        let at = next_time(rng, &mut now);
        b.append_record(at, random_record(rng, i)).unwrap();
        let mut e = access(i);
        e.at = at;
        e.party = ["core", "ims/131016", "is/271004"][rng.below(3) as usize].into();
        e.agency = (rng.below(3) != 0).then(|| agency(AGENCIES[rng.below(3) as usize]));
        e.staff = (rng.below(4) == 0).then(|| format!("staff{}", rng.below(3)));
        e.serial = (rng.below(3) != 0).then(|| serial(1 + rng.below(300) as u32));
        b.append_access(e).unwrap();
        if i % 500 == 499 {
            b.commit().unwrap();
            if i < n / 3 * 2 {
                assert!(store.index_pending(256).unwrap() > 0);
                store.index_pending(usize::MAX).unwrap();
                assert_eq!(store.unindexed(), 0);
            }
            b = store.begin().unwrap();
        }
    }
    b.commit().unwrap();
    assert!(store.unindexed() > 0, "some entries wait after the mark");
}

fn all_records(r: &StoreReader) -> Vec<ChainedRecord> {
    r.records(0, usize::MAX).unwrap()
}

fn all_access(r: &StoreReader) -> Vec<ChainedAccess> {
    r.access_log(0, usize::MAX).unwrap()
}

/// Every page of a search, `page` at a time.
fn paged_records(r: &StoreReader, f: &RecordFilter, page: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut cursor = PageCursor::START;
    loop {
        let (got, next) = r.search_records_page(f, cursor, page).unwrap();
        assert!(got.len() <= page);
        out.extend(got.iter().map(|c| c.seq));
        match next {
            Some(c) => cursor = c,
            None => return out,
        }
    }
}

fn paged_access(r: &StoreReader, f: &AccessFilter, page: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut cursor = PageCursor::START;
    loop {
        let (got, next) = r.search_access_page(f, cursor, page).unwrap();
        out.extend(got.iter().map(|c| c.seq));
        match next {
            Some(c) => cursor = c,
            None => return out,
        }
    }
}

fn random_record_filter(rng: &mut Rng, all: &[ChainedRecord]) -> RecordFilter {
    let pick = &all[rng.below(all.len() as u64) as usize];
    let mut f = RecordFilter::default();
    // Each criterion from a real record half of the time, so most
    // filters match something.
    let chance = |rng: &mut Rng| rng.below(3) == 0;
    if rng.below(8) == 0 {
        f.serial = Some(pick.record.serial.clone());
    }
    if chance(rng) {
        f.code = pick.record.code.clone();
    }
    if chance(rng) {
        f.requester = Some(pick.record.prefix.requester.clone());
    }
    if chance(rng) {
        f.provider = Some(pick.record.prefix.provider.clone());
    }
    if chance(rng) {
        f.business = Some(pick.record.prefix.business.clone());
    }
    if chance(rng) {
        f.info_name = Some(pick.record.prefix.info_name.clone());
    }
    if chance(rng) {
        f.item = pick.record.prefix.items.first().cloned();
    }
    if chance(rng) {
        f.since = Some(pick.at - rng.below(2000) as i64);
    }
    if chance(rng) {
        f.until = Some(pick.at + rng.below(2000) as i64);
    }
    if rng.below(6) == 0 {
        f.kind = Some(pick.record.kind);
    }
    if rng.below(6) == 0 {
        f.from_seq = rng.below(all.len() as u64);
    }
    f
}

#[test]
fn record_index_lookups_agree_with_a_full_scan() {
    let t = TempStore::new();
    let mut store = t.open();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    fill(&mut store, &mut rng, 1200);
    let r = store.reader();
    let all = all_records(&r);
    assert_eq!(all.len(), 1200);
    for _ in 0..150 {
        let f = random_record_filter(&mut rng, &all);
        let scanned: Vec<u64> = all
            .iter()
            .filter(|c| f.matches(c.seq, c.at, &c.record))
            .map(|c| c.seq)
            .collect();
        let page = 1 + rng.below(40) as usize;
        assert_eq!(paged_records(&r, &f, page), scanned, "{f:?}");
        let first: Vec<u64> = r
            .search_records(&f, 7)
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(first, scanned.iter().copied().take(7).collect::<Vec<_>>());
    }
}

#[test]
fn access_index_lookups_agree_with_a_full_scan() {
    let t = TempStore::new();
    let mut store = t.open();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    fill(&mut store, &mut rng, 1200);
    let r = store.reader();
    let all = all_access(&r);
    for _ in 0..150 {
        let pick: &AccessEntry = &all[rng.below(all.len() as u64) as usize].entry;
        let mut f = AccessFilter::default();
        if rng.below(3) == 0 {
            f.party = Some(pick.party.clone());
        }
        if rng.below(3) == 0 {
            f.agency = pick.agency.clone();
        }
        if rng.below(3) == 0 {
            f.staff = pick.staff.clone();
        }
        if rng.below(3) == 0 {
            f.serial = pick.serial.clone();
        }
        if rng.below(3) == 0 {
            f.since = Some(pick.at - rng.below(2000) as i64);
        }
        if rng.below(3) == 0 {
            f.until = Some(pick.at + rng.below(2000) as i64);
        }
        if rng.below(6) == 0 {
            f.operation = Some(pick.operation.clone());
        }
        let scanned: Vec<u64> = all
            .iter()
            .filter(|c| f.matches(&c.entry))
            .map(|c| c.seq)
            .collect();
        let page = 1 + rng.below(40) as usize;
        assert_eq!(paged_access(&r, &f, page), scanned, "{f:?}");
    }
}

#[test]
fn a_time_range_is_answered_when_the_clock_stepped_back() {
    let t = TempStore::new();
    let mut store = t.open();
    let mut b = store.begin().unwrap();
    // seq 1..=4 at 100, 200, 50 (clock stepped back), 300.
    for at in [100, 200, 50, 300] {
        b.append_record(at, common::simple_record(1)).unwrap();
    }
    b.commit().unwrap();
    let r = store.reader();
    let seqs = |since: Option<Millis>, until: Option<Millis>| -> Vec<u64> {
        let f = RecordFilter {
            since,
            until,
            ..RecordFilter::default()
        };
        paged_records(&r, &f, 10)
    };
    assert_eq!(seqs(Some(40), Some(60)), [3]);
    assert_eq!(seqs(None, Some(150)), [1, 3]);
    assert_eq!(seqs(Some(150), None), [2, 4]);
    assert_eq!(seqs(Some(0), Some(1000)), [1, 2, 3, 4]);
    assert!(seqs(Some(400), None).is_empty());
}

#[test]
fn paging_is_stable_while_records_arrive_between_pages() {
    let t = TempStore::new();
    let mut store = t.open();
    let code = PersonCode::new("CODE-P").unwrap();
    let with_code = |n: u32| {
        let mut r = common::simple_record(n);
        r.code = Some(PersonCode::new(if n % 2 == 0 { "CODE-P" } else { "CODE-Q" }).unwrap());
        r
    };
    let mut next = 0u32;
    let mut append = |store: &mut Store, k: u32| {
        let mut b = store.begin().unwrap();
        for _ in 0..k {
            next += 1;
            b.append_record(1000 + i64::from(next), with_code(next))
                .unwrap();
        }
        b.commit().unwrap();
        // Half the time the new records get their index rows at once.
        if next % 8 == 0 {
            store.index_pending(usize::MAX).unwrap();
        }
    };
    append(&mut store, 20);
    let f = RecordFilter {
        code: Some(code),
        ..RecordFilter::default()
    };
    let mut seen = Vec::new();
    let mut cursor = PageCursor::START;
    for _ in 0..20 {
        let (page, after) = store.reader().search_records_page(&f, cursor, 3).unwrap();
        seen.extend(page.iter().map(|c| c.seq));
        // New records arrive between every two pages.
        append(&mut store, 4);
        match after {
            Some(c) => cursor = c,
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, seen, "in seq order, none twice");
    // Every even-numbered record up to the last page's end was returned.
    let last = *seen.last().unwrap();
    let expected: Vec<u64> = (1..=last).filter(|s| s % 2 == 0).collect();
    assert_eq!(seen, expected);
}

#[test]
fn the_read_only_store_answers_as_the_reader() {
    let t = TempStore::new();
    let mut rng = Rng(77);
    {
        let mut store = t.open();
        fill(&mut store, &mut rng, 600);
    }
    let store = t.open();
    let r = store.reader();
    let all = all_records(&r);
    drop(store);
    let ro = t.read_only().unwrap();
    for _ in 0..50 {
        let f = random_record_filter(&mut rng, &all);
        let expected: Vec<u64> = all
            .iter()
            .filter(|c| f.matches(c.seq, c.at, &c.record))
            .map(|c| c.seq)
            .take(25)
            .collect();
        let (got, _) = ro.search_records_page(&f, PageCursor::START, 25).unwrap();
        assert_eq!(got.iter().map(|c| c.seq).collect::<Vec<_>>(), expected);
    }
    let f = AccessFilter {
        party: Some("core".into()),
        ..AccessFilter::default()
    };
    let (got, _) = ro.search_access_page(&f, PageCursor::START, 5).unwrap();
    assert!(got.iter().all(|c| c.entry.party == "core"));
    assert_eq!(got.len(), 5);
}
