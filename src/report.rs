//! Human-readable renderings shared by the CLI and the demo: chain
//! verification reports and latency summaries.

use std::fmt::Write as _;
use std::time::Duration;

use ifrelay_store::{ChainReport, ChainSummary};

/// Renders a chain verification report, one block per chain.
pub fn chain_report(report: &ChainReport) -> String {
    let mut out = String::new();
    for (label, chain) in [
        ("provision records", &report.records),
        ("access log", &report.access_log),
    ] {
        chain_summary(&mut out, label, chain);
    }
    let _ = writeln!(
        out,
        "verdict: {}",
        if report.is_intact() {
            "INTACT"
        } else {
            "TAMPERED"
        }
    );
    out
}

fn chain_summary(out: &mut String, label: &str, chain: &ChainSummary) {
    let range = match (chain.first_seq, chain.last_seq) {
        (Some(a), Some(b)) => format!("seq {a}..={b}"),
        _ => "empty".to_owned(),
    };
    let _ = writeln!(
        out,
        "{label}: {} entries checked ({range}), head {}, {}",
        chain.checked,
        hex_prefix(&chain.head_hash),
        if chain.is_intact() {
            "intact".to_owned()
        } else {
            format!("{} defect(s)", chain.defects.len())
        }
    );
    for d in &chain.defects {
        let _ = writeln!(out, "  defect at seq {}: {:?}", d.seq, d.kind);
    }
    if chain.defects_truncated {
        let _ = writeln!(out, "  (more defects not listed)");
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Percentile (0.0..=1.0) of `samples` by nearest rank; `None` when empty.
pub fn percentile(samples: &mut [Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1])
}

/// `12.3 ms` style rendering.
pub fn millis(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&mut v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&mut v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&mut [], 0.5), None);
    }
}
