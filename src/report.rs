//! Human-readable rendering of a chain verification report, shared by
//! `ifrelay verify-store` and the demo's summary.

use std::fmt::Write as _;

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
