//! What the console's `status` shows (issue 10 item 7), and its lines in
//! either language.

use super::accounts::Lang;
use crate::health::{ChainState, Outbound, PeerSeen};
use crate::relay::jst::jst_minute;

/// What `status` shows (issue 10 item 7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    pub name: String,
    pub version: String,
    pub uptime_s: u64,
    /// The service hours, as configured.
    pub service: String,
    /// Whether new processes are accepted now (inside the hours).
    pub in_service: bool,
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
    /// Each peer seen since the start, by name.
    pub peers: Vec<(String, PeerSeen)>,
    /// The last hash-chain verification.
    pub chains: ChainState,
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
            match (r.in_service, ja) {
                (true, true) => format!("受付中（{}）", r.service),
                (true, false) => format!("open now ({})", r.service),
                (false, true) => format!("時間外で新規受付停止中（{}）", r.service),
                (false, false) => format!("closed now ({})", r.service),
            }
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
    out.push(format!(
        "{:<14} {}",
        label("ハッシュ連鎖", "hash chains"),
        match &r.chains {
            ChainState::Pending => label("検証中", "being verified").to_owned(),
            ChainState::Intact { at, entries } => {
                if ja {
                    format!("正常（{entries} 件、{} 検証）", jst_minute(*at))
                } else {
                    format!("intact ({entries} entries, checked {})", jst_minute(*at))
                }
            }
            ChainState::Broken { at, defects, first } => {
                if ja {
                    format!(
                        "異常 {defects} 箇所（{first}、{}）\r\n{:<14} 記録が改ざんされたか壊れています。保守業者に連絡してください",
                        jst_minute(*at),
                        ""
                    )
                } else {
                    format!(
                        "BROKEN: {defects} ({first}, {})\r\n{:<14} records were altered or damaged: call maintenance",
                        jst_minute(*at),
                        ""
                    )
                }
            }
            ChainState::Failed { at, why } => {
                format!(
                    "{} ({why}, {})",
                    label("検証失敗", "check failed"),
                    jst_minute(*at)
                )
            }
        }
    ));
    if r.peers.is_empty() {
        out.push(format!(
            "{:<14} {}",
            label("接続先", "peers"),
            label("まだ通信なし", "no contact yet")
        ));
    }
    for (name, seen) in &r.peers {
        out.push(format!(
            "{:<14} {}",
            label("接続先", "peer"),
            peer_line(ja, name, seen)
        ));
    }
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

/// One peer: the box's connection to it and the last contact either way.
fn peer_line(ja: bool, name: &str, s: &PeerSeen) -> String {
    let state = match (&s.outbound, ja) {
        (None, true) => "送信なし".to_owned(),
        (None, false) => "not dialled".to_owned(),
        (Some(Outbound::Connected(_)), true) => "接続中".to_owned(),
        (Some(Outbound::Connected(_)), false) => "connected".to_owned(),
        (Some(Outbound::Failing { failures, .. }), true) => format!("接続失敗 {failures} 回"),
        (Some(Outbound::Failing { failures, .. }), false) => format!("failing ({failures}x)"),
    };
    let last = [s.last_answer, s.last_heard]
        .into_iter()
        .flatten()
        .max()
        .map_or_else(|| "-".to_owned(), jst_minute);
    if ja {
        format!("{name} {state} 最終 {last}")
    } else {
        format!("{name} {state}, last {last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_and_the_chain_check_are_reported_within_80_columns() {
        let report = StatusReport {
            name: "box-131016".into(),
            version: "0.1.0".into(),
            peers: vec![
                (
                    "core".into(),
                    PeerSeen {
                        outbound: Some(Outbound::Connected(1_796_000_000_000)),
                        last_answer: Some(1_796_000_060_000),
                        last_heard: None,
                    },
                ),
                (
                    "ims/131016".into(),
                    PeerSeen {
                        outbound: Some(Outbound::Failing {
                            at: 1_796_000_000_000,
                            failures: 3,
                            why: "connection refused".into(),
                        }),
                        last_answer: None,
                        last_heard: None,
                    },
                ),
            ],
            chains: ChainState::Broken {
                at: 1_796_000_000_000,
                defects: 2,
                first: "HashMismatch at 17".into(),
            },
            ..StatusReport::default()
        };
        let lines: Vec<String> = status_lines(Lang::En, &report)
            .iter()
            .flat_map(|l| l.split("\r\n").map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let text = lines.join("\n");
        assert!(text.contains("core connected, last 2026-"), "{text}");
        assert!(text.contains("service hours  closed now ("), "{text}");
        assert!(text.contains("ims/131016 failing (3x), last -"), "{text}");
        assert!(text.contains("BROKEN: 2 (HashMismatch at 17"), "{text}");
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{text}");
        let ja = status_lines(Lang::Ja, &report).join("\n");
        assert!(
            ja.contains("異常 2 箇所") && ja.contains("接続失敗 3 回"),
            "{ja}"
        );
        let pending = status_lines(Lang::Ja, &StatusReport::default()).join("\n");
        assert!(
            pending.contains("検証中") && pending.contains("まだ通信なし"),
            "{pending}"
        );
    }
}
