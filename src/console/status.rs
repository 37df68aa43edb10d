//! What the console's `status` shows (issue 10 item 7), and its lines in
//! either language.

use super::accounts::Lang;

/// What `status` shows (issue 10 item 7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    pub name: String,
    pub version: String,
    pub uptime_s: u64,
    /// The service hours, as configured.
    pub service: String,
    /// Frames waiting per destination.
    pub outbox: Vec<(String, u64)>,
    pub records: u64,
    pub access_log: u64,
    /// Bytes of the store's files, and free on their file system.
    pub store_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// Whether the clock is disciplined (not yet: clock discipline is a
    /// later issue).
    pub clock_synced: bool,
}

/// The lines of `status`, labels in `lang`, at most 80 columns.
pub fn status_lines(lang: Lang, r: &StatusReport) -> Vec<String> {
    let ja = lang == Lang::Ja;
    let label = |j: &'static str, e: &'static str| if ja { j } else { e };
    let mib = |b: Option<u64>| {
        b.map_or_else(
            || "?".to_owned(),
            |b| format!("{:.1} MiB", b as f64 / 1_048_576.0),
        )
    };
    let (d, h, m) = (
        r.uptime_s / 86_400,
        r.uptime_s / 3600 % 24,
        r.uptime_s / 60 % 60,
    );
    let mut out = vec![
        format!("{:<14} {} ({})", label("箱", "box"), r.name, r.version),
        format!("{:<14} {d}d {h:02}:{m:02}", label("稼働時間", "uptime")),
        format!(
            "{:<14} {}",
            label("サービス時間", "service hours"),
            r.service
        ),
        format!(
            "{:<14} {} / {}",
            label("記録/アクセスログ", "records/access"),
            r.records,
            r.access_log
        ),
        format!(
            "{:<14} {} ({} {})",
            label("ストア", "store"),
            mib(r.store_bytes),
            label("空き", "free"),
            mib(r.free_bytes)
        ),
        format!(
            "{:<14} {}",
            label("時刻", "clock"),
            if r.clock_synced {
                label("同期済み", "synchronised")
            } else {
                label("未同期", "not synchronised")
            }
        ),
    ];
    if r.outbox.is_empty() {
        out.push(format!("{:<14} 0", label("送信待ち", "outbox")));
    }
    for (destination, n) in &r.outbox {
        out.push(format!(
            "{:<14} {destination}: {n}",
            label("送信待ち", "outbox")
        ));
    }
    out
}
