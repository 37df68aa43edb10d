//! Measures the outbox backlog paths the benchmark relies on: filling a
//! large backlog with `Store::fill_outbox_for_test`, reopening the filled
//! file, reading the first page of one destination, and the migration that
//! builds the destination index for a file written without it.
//!
//! `cargo run --release -p ifrelay-store --example fill_outbox -- [entries]
//! [frame_bytes] [per_commit] [dir]` (defaults: 1000000 256 50000, a
//! temporary directory). Prints one line per step.

use std::error::Error;
use std::path::Path;
use std::time::Instant;

use ifrelay_store::{tables, Store};

const CACHE: usize = 64 * 1024 * 1024;

fn arg<T: std::str::FromStr>(n: usize, default: T) -> Result<T, Box<dyn Error>>
where
    T::Err: Error + 'static,
{
    match std::env::args().nth(n) {
        Some(s) => Ok(s.parse()?),
        None => Ok(default),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let entries: u64 = arg(1, 1_000_000)?;
    let frame_bytes: usize = arg(2, 256)?;
    let per_commit: usize = arg(3, 50_000)?;
    let tmp = tempfile::tempdir()?;
    let dir = match std::env::args().nth(4) {
        Some(d) => std::path::PathBuf::from(d),
        None => tmp.path().to_path_buf(),
    };
    let path = dir.join("fill.redb");
    if path.exists() {
        std::fs::remove_file(&path)?;
    }

    let started = Instant::now();
    {
        let mut store = Store::open(&path, CACHE)?;
        let frame = vec![0x5au8; frame_bytes];
        let filled =
            store.fill_outbox_for_test("core", (0..entries).map(|_| &frame), per_commit)?;
        println!(
            "fill: {filled} entries of {frame_bytes} bytes, {per_commit} per commit: {:.2?}",
            started.elapsed()
        );
    }
    println!("file: {} MiB", std::fs::metadata(&path)?.len() >> 20);

    let started = Instant::now();
    let store = Store::open(&path, CACHE)?;
    println!("reopen: {:.2?}", started.elapsed());
    first_page(&store)?;
    drop(store);

    // The migration: drop the index as an earlier firmware's file lacks it.
    {
        let db = redb::Database::create(&path)?;
        let txn = db.begin_write()?;
        txn.delete_table(tables::OUTBOX_BY_DESTINATION)?;
        txn.delete_table(tables::OUTBOX_COUNTS)?;
        txn.open_table(tables::META)?
            .remove(tables::OUTBOX_INDEX_NEXT_KEY)?;
        txn.commit()?;
    }
    let started = Instant::now();
    let store = Store::open(&path, CACHE)?;
    println!("open with index migration: {:.2?}", started.elapsed());
    first_page(&store)?;
    drop(store);
    report_size(&path)
}

fn first_page(store: &Store) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let page = store.reader().outbox_for("core", None, 256)?;
    let took = started.elapsed();
    let destinations = store.reader().outbox_destinations()?;
    println!(
        "first page: {} entries in {took:.2?}; destinations {destinations:?}",
        page.len()
    );
    Ok(())
}

fn report_size(path: &Path) -> Result<(), Box<dyn Error>> {
    println!(
        "file after migration: {} MiB",
        std::fs::metadata(path)?.len() >> 20
    );
    Ok(())
}
