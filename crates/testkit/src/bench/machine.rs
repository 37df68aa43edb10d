//! The machine a benchmark ran on, as `docs/performance.md` reports it:
//! CPUs, model, memory, kernel, the file system under the stores, and the
//! latency of one small `fdatasync` there (the floor of every durable
//! commit).

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::stats::{summarize, Summary};

/// What was found about the machine.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub mem_total_mib: u64,
    pub kernel: String,
    /// `<fstype> on <mount point> (<device>)` of the benchmark folder.
    pub file_system: String,
    /// 4 KiB write + `fdatasync`, repeated.
    pub fsync: Option<Summary>,
    /// One store batch (a 300-byte outbox entry) from `begin` to a durable
    /// `commit`, repeated: the floor of every hop the box acknowledges.
    pub store_commit: Option<Summary>,
    /// 1-minute load average when the run started: other work on the
    /// machine competes with the benchmark.
    pub load_average: Option<f64>,
    /// Cores other processes used just before the run (see
    /// [`wait_quiet`]), when it was asked for.
    pub others_before: Option<f64>,
    /// Whether this is an optimised build (numbers of a debug build mean
    /// little).
    pub release_build: bool,
}

/// Looks at `/proc` and times `fsyncs` small synced writes under `dir`.
pub fn probe(dir: &Path, fsyncs: usize) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let mem_total_mib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(kib_field))
        .unwrap_or(0)
        / 1024;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model,
        mem_total_mib,
        kernel,
        file_system: file_system_of(dir),
        fsync: fsync_probe(dir, fsyncs),
        store_commit: store_commit_probe(dir, fsyncs),
        load_average: load_average(),
        others_before: None,
        release_build: !cfg!(debug_assertions),
    }
}

/// The number of a `/proc` line such as `MemTotal:  24684012 kB`.
pub(crate) fn kib_field(rest: &str) -> u64 {
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The longest mount point of `/proc/mounts` that contains `dir`.
fn file_system_of(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(point), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if dir.starts_with(point) && best.as_ref().is_none_or(|(len, _)| point.len() > *len) {
            best = Some((point.len(), format!("{fstype} on {point} ({dev})")));
        }
    }
    best.map_or_else(|| "unknown".to_owned(), |(_, s)| s)
}

/// Times `n` 4 KiB writes each followed by `fdatasync`, in a scratch file
/// under `dir` that is removed afterwards.
fn fsync_probe(dir: &Path, n: usize) -> Option<Summary> {
    let path = dir.join("fsync-probe.tmp");
    let mut samples = Vec::with_capacity(n);
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&path)?;
        let page = [0x5au8; 4096];
        for i in 0..n {
            file.seek(SeekFrom::Start(((i % 64) * 4096) as u64))?;
            file.write_all(&page)?;
            let t = Instant::now();
            file.sync_data()?;
            samples.push(t.elapsed());
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result.ok()?;
    summarize(&mut samples)
}

/// Times `n` durable commits of one 300-byte outbox entry each, in a
/// scratch store under `dir` that is removed afterwards.
fn store_commit_probe(dir: &Path, n: usize) -> Option<Summary> {
    let path = dir.join("commit-probe.redb");
    let mut samples = Vec::with_capacity(n);
    let result = (|| -> Result<(), ifrelay_store::StoreError> {
        let mut store = ifrelay_store::Store::open(&path, 16 << 20)?;
        let frame = [0x42u8; 300];
        for _ in 0..n {
            let t = Instant::now();
            let mut batch = store.begin()?;
            batch.push_outbox("core", &frame)?;
            batch.commit()?;
            samples.push(t.elapsed());
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result.ok()?;
    summarize(&mut samples)
}

/// CPU time (user + system) of process `pid` so far, from
/// `/proc/<pid>/stat`; ticks are taken as 1/100 s (USER_HZ on Linux).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Busy and total CPU ticks of the whole machine so far (`/proc/stat`);
/// busy is everything but idle and iowait.
pub fn system_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Waits up to `limit` for a `window` in which the rest of the machine
/// (everything but this process) keeps less than `max_cores` busy;
/// returns the cores the others used in the last window looked at.
pub async fn wait_quiet(limit: Duration, window: Duration, max_cores: f64) -> Option<f64> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let me = std::process::id();
    let deadline = Instant::now() + limit;
    loop {
        let (b0, t0) = system_ticks()?;
        let own0 = cpu_time(me)?;
        let start = Instant::now();
        tokio::time::sleep(window).await;
        let (b1, t1) = system_ticks()?;
        let own = cpu_time(me)?.saturating_sub(own0).as_secs_f64();
        let total = t1.saturating_sub(t0).max(1) as f64;
        let busy = b1.saturating_sub(b0) as f64 / total * cpus;
        let others = (busy - own / start.elapsed().as_secs_f64().max(1e-9)).max(0.0);
        if others < max_cores || Instant::now() >= deadline {
            return Some(others);
        }
    }
}

/// Writes out every dirty page of the machine (`sync`) and returns how
/// many KiB were dirty before. Other writers' data (a build just before
/// the run) would otherwise be written back in the middle of a phase, and
/// the boxes' `fdatasync` would wait behind it: commits of 40-160 ms were
/// seen that way.
pub fn flush_dirty_pages() -> Option<u64> {
    let before = dirty_kib();
    let status = std::process::Command::new("sync").status().ok()?;
    status.success().then_some(before?)
}

/// `Dirty:` of /proc/meminfo, in KiB.
pub fn dirty_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Dirty:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Write requests completed and bytes written, summed over the
/// machine's block devices (`/sys/block/*/stat`; loop, RAM and stacked
/// devices left out so nothing is counted twice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskWrites {
    pub requests: u64,
    pub bytes: u64,
}

/// The machine's [`DiskWrites`] so far, or `None` without `/sys/block`.
pub fn disk_writes() -> Option<DiskWrites> {
    let mut total = DiskWrites::default();
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "dm-", "md"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(w) = parse_block_stat(&stat) {
            total.requests += w.requests;
            total.bytes += w.bytes;
        }
    }
    Some(total)
}

/// One `/sys/block/<dev>/stat` line: field 5 is writes completed, field
/// 7 sectors (of 512 bytes) written.
fn parse_block_stat(line: &str) -> Option<DiskWrites> {
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(DiskWrites {
        requests: *fields.get(4)?,
        bytes: fields.get(6)?.checked_mul(512)?,
    })
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Peak and current resident set of process `pid`, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut hwm = None;
    let mut rss = None;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmHWM:") {
            hwm = Some(kib_field(rest));
        } else if let Some(rest) = line.strip_prefix("VmRSS:") {
            rss = Some(kib_field(rest));
        }
    }
    Some((hwm?, rss?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_stat_lines_give_writes_and_bytes() {
        let line = "  240514    12021 15876436   101402 35728532  2100391 569373352 12418337        0  5066360 12606823";
        assert_eq!(
            parse_block_stat(line),
            Some(DiskWrites {
                requests: 35_728_532,
                bytes: 569_373_352 * 512,
            })
        );
        assert_eq!(parse_block_stat("1 2 3"), None);
        assert_eq!(parse_block_stat("1 2 3 4 x 6 7"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let (hwm, rss) = memory_kib(me).expect("own status");
        assert!(hwm >= rss && rss > 0);
        assert!(cpu_time(me).is_some());
        let (busy, total) = system_ticks().expect("/proc/stat");
        assert!(busy <= total && total > 0);
        assert!(load_average().is_some());
        assert_eq!(kib_field("  24684012 kB"), 24_684_012);
    }

    #[test]
    fn probes_a_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = probe(dir.path(), 3);
        assert!(m.cpus >= 1);
        assert_eq!(m.fsync.map(|s| s.count), Some(3));
        assert_eq!(m.store_commit.map(|s| s.count), Some(3));
        assert!(!m.file_system.is_empty());
    }
}
