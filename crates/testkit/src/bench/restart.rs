//! How the time to open a store after a clean stop grows with the records
//! it holds (`ifrelay-storebench --restart`; docs/performance.md,
//! "Restart time and store size"): the soak's kills got slower as its
//! store grew, and this says where an open's time goes. For each size: a
//! store filled through the store API (as the records benchmark fills
//! its own), closed, its page cache dropped where allowed, then timed:
//! the read-only page check alone (`ReadOnlyStore::open`, the check every
//! open runs first), and the box's whole open (`Store::open`: the check,
//! the redo log, the index soundness checks) and boot.

use std::path::Path;
use std::time::{Duration, Instant};

use ifrelay_store::{ReadOnlyStore, Store};

use super::records::{record, FILL_PER_COMMIT};
use super::BenchError;

/// The box's page cache (`[store] cache_mib` default).
const CACHE_BYTES: usize = 32 << 20;

/// One size measured.
#[derive(Debug, Clone)]
pub struct RestartRun {
    pub records: u64,
    pub file_mib: f64,
    /// The page check alone, cold.
    pub check: Duration,
    /// `Store::open` and `boot`, cold.
    pub open: Duration,
}

impl RestartRun {
    /// One line for the log.
    pub fn line(&self) -> String {
        format!(
            "restart: records={} file_mib={:.0} check_s={:.2} open_s={:.2} check_share={:.0}%",
            self.records,
            self.file_mib,
            self.check.as_secs_f64(),
            self.open.as_secs_f64(),
            100.0 * self.check.as_secs_f64() / self.open.as_secs_f64().max(1e-9)
        )
    }
}

/// Fills a store of `records` in `dir` and times its opens.
///
/// # Errors
/// The store's or the file system's error.
pub fn run(dir: &Path, records: u64) -> Result<RestartRun, BenchError> {
    let path = dir.join(format!("restart-{records}.redb"));
    {
        let mut store = Store::open(&path, CACHE_BYTES)?;
        store.boot(ifrelay::net::now_millis())?;
        let mut next = 0u64;
        while next < records {
            let end = (next + 100_000).min(records);
            let chunk = (next..end)
                .map(|n| record(n, records))
                .collect::<Result<Vec<_>, _>>()?;
            store.fill_records_for_test(chunk, FILL_PER_COMMIT)?;
            next = end;
        }
        store.index_records_sorted_for_test(1_000_000)?;
        store.checkpoint()?;
    }
    let file_mib = std::fs::metadata(&path)?.len() as f64 / (1024.0 * 1024.0);

    super::flush_dirty("before the restart measurement");
    drop_caches();
    let started = Instant::now();
    let checked = ReadOnlyStore::open(&path)?;
    let check = started.elapsed();
    drop(checked);

    drop_caches();
    let started = Instant::now();
    let mut store = Store::open(&path, CACHE_BYTES)?;
    store.boot(ifrelay::net::now_millis())?;
    let open = started.elapsed();
    if store.reader().record_count()? != records {
        return Err("the reopened store lost records".into());
    }
    drop(store);
    std::fs::remove_file(&path)?;
    let _ = std::fs::remove_file(ifrelay_store::log_path(&path));
    Ok(RestartRun {
        records,
        file_mib,
        check,
        open,
    })
}

/// Index tables schema version 1 did not have: dropped to make a store
/// of version 1 from a filled one.
const NEW_IN_V2: [&str; 14] = [
    "records_by_code",
    "records_by_requester",
    "records_by_provider",
    "records_by_business",
    "records_by_info_name",
    "records_by_item",
    "records_by_time",
    "records_out_of_time_order",
    "access_by_party",
    "access_by_agency",
    "access_by_staff",
    "access_by_serial",
    "access_by_time",
    "access_out_of_time_order",
];

/// Fills a store of `records`, turns it into one of schema version 1 (no
/// search indexes), and times the open that migrates it (issue 9 item 8:
/// the indexes built from the chains in one transaction), with the
/// process's peak memory after it.
///
/// # Errors
/// The store's or the file system's error.
pub fn migrate(dir: &Path, records: u64) -> Result<String, BenchError> {
    use redb::ReadableDatabase as _;
    let path = dir.join(format!("migrate-{records}.redb"));
    {
        let mut store = Store::open(&path, CACHE_BYTES)?;
        store.boot(ifrelay::net::now_millis())?;
        let mut next = 0u64;
        while next < records {
            let end = (next + 100_000).min(records);
            let chunk = (next..end)
                .map(|n| record(n, records))
                .collect::<Result<Vec<_>, _>>()?;
            store.fill_records_for_test(chunk, FILL_PER_COMMIT)?;
            next = end;
        }
        store.checkpoint()?;
    }
    {
        let database = redb::Database::open(&path)?;
        let txn = database.begin_write()?;
        for name in NEW_IN_V2 {
            let def: redb::TableDefinition<(), ()> = redb::TableDefinition::new(name);
            txn.delete_table(def)?;
        }
        txn.open_table(ifrelay_store::tables::META)?
            .insert(ifrelay_store::tables::SCHEMA_VERSION_KEY, 1)?;
        txn.commit()?;
        drop(database.begin_read()?);
    }
    super::flush_dirty("before the migration");
    drop_caches();
    let rss_before = super::proc::own_peak_rss_kib();
    let started = Instant::now();
    let store = Store::open(&path, CACHE_BYTES)?;
    let took = started.elapsed();
    let rss_after = super::proc::own_peak_rss_kib();
    let searchable = store
        .reader()
        .search_records(
            &ifrelay_store::RecordFilter {
                business: Some(ifrelay_proto::BusinessCode::new("JM0003")?),
                ..Default::default()
            },
            1,
        )?
        .len();
    drop(store);
    std::fs::remove_file(&path)?;
    let _ = std::fs::remove_file(ifrelay_store::log_path(&path));
    if searchable != 1 {
        return Err("the migrated store does not search".into());
    }
    Ok(format!(
        "migrate: records={records} open_s={:.1} peak_rss_mib={} (before the open {})",
        took.as_secs_f64(),
        rss_after.map_or("?".into(), |k| (k / 1024).to_string()),
        rss_before.map_or("?".into(), |k| (k / 1024).to_string()),
    ))
}

/// Drops the kernel's clean page cache, as a power cycle does, when
/// allowed (root); otherwise the figures are warm and say so in the log.
fn drop_caches() {
    if std::fs::write("/proc/sys/vm/drop_caches", b"1\n").is_err() {
        super::progress("restart: cannot drop the page cache (not root): warm figures");
    }
}
