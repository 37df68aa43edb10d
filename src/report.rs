//! Renderings shared by commands: a chain verification report
//! (`ifrelay verify-store` and the demo's summary) and the box's identity
//! (`ifrelay identity`, later the console).

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

/// What `ifrelay identity` shows of the box: public data only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityCard {
    /// The party the box is (`is/<agency>`).
    pub party: String,
    /// `box.name`, when configured.
    pub name: Option<String>,
    pub public_key: [u8; 32],
    pub key_file: std::path::PathBuf,
    /// Whether the key was created by this command.
    pub created: bool,
}

impl IdentityCard {
    /// Reads the card off a loaded key.
    pub fn new(
        party: &ifrelay_proto::Party,
        name: Option<&str>,
        key: &crate::identity::BoxKey,
        created: bool,
    ) -> Self {
        IdentityCard {
            party: party.to_string(),
            name: name.map(str::to_owned),
            public_key: key.public_key(),
            key_file: key.path().to_owned(),
            created,
        }
    }

    /// One `label: value` line each, then the PEM block.
    pub fn text(&self) -> String {
        let fingerprint = crate::identity::fingerprint(&self.public_key);
        let mut out = String::new();
        let _ = writeln!(out, "party: {}", self.party);
        if let Some(name) = &self.name {
            let _ = writeln!(out, "name: {name}");
        }
        let _ = writeln!(
            out,
            "public key: {}",
            crate::identity::hex(&self.public_key)
        );
        let _ = writeln!(out, "fingerprint: {fingerprint}");
        // Groups of four, for reading the fingerprint out over the phone.
        let groups: Vec<&str> = fingerprint
            .trim_start_matches("SHA256:")
            .as_bytes()
            .chunks(4)
            .filter_map(|g| std::str::from_utf8(g).ok())
            .collect();
        let _ = writeln!(out, "read aloud: {}", groups.join(" "));
        let _ = writeln!(out, "key file: {}", self.key_file.display());
        out.push_str(&crate::identity::public_key_pem(&self.public_key));
        out
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        let name = self
            .name
            .as_deref()
            .map_or_else(|| "null".to_owned(), json_string);
        format!(
            "{{\"party\":{},\"name\":{},\"public_key\":{},\"fingerprint\":{},\"public_key_pem\":{},\"key_file\":{},\"created\":{}}}\n",
            json_string(&self.party),
            name,
            json_string(&crate::identity::hex(&self.public_key)),
            json_string(&crate::identity::fingerprint(&self.public_key)),
            json_string(&crate::identity::public_key_pem(&self.public_key)),
            json_string(&self.key_file.to_string_lossy()),
            self.created,
        )
    }
}

/// A JSON string literal of `s`.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
    }
}
