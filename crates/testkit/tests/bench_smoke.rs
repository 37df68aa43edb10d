//! `ifrelay-bench --quick` runs every phase end to end on loopback, exits
//! 0, and its last line is the summary in the form scripts compare. The
//! figures themselves are not checked (a debug build on a shared machine).

use std::process::Command;

/// The keys of the summary line, in order.
const KEYS: [&str; 20] = [
    "frames_per_s",
    "bare_frames_per_s",
    "ratio",
    "p99_ms",
    "p999_ms",
    "rss_mib",
    "backlog_resume_s",
    "flood_rss_mib",
    "flood_ims_p99_ms",
    "flood_ims_within_1s",
    "kib_per_frame_open",
    "kib_per_frame_peak",
    "tb_year_10k",
    "tb_year_100k",
    "search_ms",
    "search_ratio",
    "export_rps",
    "export_ratio",
    "retention_p99_ms",
    "retention_p999_ms",
];

/// Checks `line` against
/// `bench: frames_per_s=N bare_frames_per_s=N ratio=R p99_ms=N p999_ms=N rss_mib=N backlog_resume_s=N
/// flood_rss_mib=N flood_ims_p99_ms=N flood_ims_within_1s=R kib_per_frame_open=N
/// kib_per_frame_peak=N tb_year_10k=N tb_year_100k=N search_ms=N search_ratio=N export_rps=N
/// export_ratio=R retention_p99_ms=N retention_p999_ms=N` (one line).
fn check_summary(line: &str) -> Result<(), String> {
    let mut words = line.split(' ');
    if words.next() != Some("bench:") {
        return Err(format!("does not start with 'bench:': {line:?}"));
    }
    for key in KEYS {
        let word = words
            .next()
            .ok_or_else(|| format!("{key} missing: {line:?}"))?;
        let value = word
            .strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .ok_or_else(|| format!("expected {key}=…, got {word:?}"))?;
        let number = !value.is_empty()
            && value.chars().all(|c| c.is_ascii_digit() || c == '.')
            && value.parse::<f64>().is_ok();
        if !(number || value == "nan") {
            return Err(format!("{key} is not a number: {value:?}"));
        }
    }
    match words.next() {
        None => Ok(()),
        Some(extra) => Err(format!("unexpected {extra:?} after the last key")),
    }
}

#[test]
fn summary_format_is_checked_strictly() {
    let good = "bench: frames_per_s=1520 bare_frames_per_s=21000 ratio=0.072 p99_ms=14.20 p999_ms=30.01 rss_mib=41.2 backlog_resume_s=nan flood_rss_mib=24.2 flood_ims_p99_ms=50.63 flood_ims_within_1s=1.0000 kib_per_frame_open=113.7 kib_per_frame_peak=nan tb_year_10k=5.54 tb_year_100k=55.41 search_ms=0.412 search_ratio=52000 export_rps=152000 export_ratio=0.410 retention_p99_ms=3.10 retention_p999_ms=nan";
    assert_eq!(check_summary(good), Ok(()));
    for bad in [
        "frames_per_s=1 bare_frames_per_s=1 ratio=1 p99_ms=1 p999_ms=1 rss_mib=1 backlog_resume_s=1",
        "bench: frames_per_s=1 ratio=1 p99_ms=1 p999_ms=1 rss_mib=1 backlog_resume_s=1",
        "bench: frames_per_s=-1 bare_frames_per_s=1 ratio=1 p99_ms=1 p999_ms=1 rss_mib=1 backlog_resume_s=1",
        "bench: frames_per_s=1 bare_frames_per_s=1 ratio=1 p99_ms=1 p999_ms=1 rss_mib=1 backlog_resume_s=1",
        "bench: frames_per_s=1 bare_frames_per_s=1 ratio=1 p99_ms=1 p999_ms=1 rss_mib=1 backlog_resume_s=1 flood_rss_mib=1 flood_ims_p99_ms=1 flood_ims_within_1s=1 kib_per_frame_open=1 kib_per_frame_peak=1 tb_year_10k=1 tb_year_100k=1 search_ms=1 search_ratio=1 x=2",
        "bench: frames_per_s=1 bare_frames_per_s=1 ratio=1 p99_ms=1 p999_ms=1 rss_mib=1 backlog_resume_s=1 flood_rss_mib=1 flood_ims_p99_ms=1 flood_ims_within_1s=1 kib_per_frame_open=1 kib_per_frame_peak=1",
        "bench: frames_per_s=1 bare_frames_per_s=1 ratio=1 p99_ms=1 p999_ms=1 rss_mib=1 backlog_resume_s=1 flood_rss_mib=1 flood_ims_p99_ms=1 flood_ims_within_1s=1",
    ] {
        assert!(check_summary(bad).is_err(), "{bad}");
    }
}

#[test]
fn quick_bench_ends_with_the_summary_line() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let out = Command::new(env!("CARGO_BIN_EXE_ifrelay-bench"))
        .arg("--quick")
        .arg("--dir")
        .arg(dir.path().join("bench"))
        .output()
        .expect("ifrelay-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    if let Err(e) = check_summary(last) {
        panic!("{e}\n--- stdout\n{stdout}");
    }
    assert!(dir.path().join("bench/report.txt").exists());
    // The end-to-end retention run relayed while its box deleted both
    // records and access-log entries.
    let deleted: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("meanwhile the box deleted "))
        .map(|rest| {
            rest.split(' ')
                .filter_map(|w| w.parse().ok())
                .take(2)
                .collect()
        })
        .unwrap_or_default();
    assert!(
        deleted.len() == 2 && deleted.iter().all(|&n| n > 0),
        "deleted {deleted:?}\n--- stdout\n{stdout}"
    );
}
