//! The hash chains of the records and the access log (R-SEC-6), and their
//! verification.
//!
//! Each entry stores `prev_hash` (the previous entry's hash, or the chain's
//! anchor for the first stored entry) and
//! `hash = sha256(tag || prev_hash || seq (u64 big-endian) || body)`, where
//! `body` is the CBOR bytes stored in the row and `tag` separates the two
//! chains. The hash covers the exact stored bytes, so verification never
//! depends on re-encoding.
//!
//! Invariants: the stored entries are `anchor_seq + 1 ..= head_seq`,
//! contiguous, each linked to the one before; the anchor moves only by a
//! policy deletion of a prefix of the chain, and then becomes the hash of the
//! last removed entry. The head is kept beside the anchor so a truncated tail
//! or an appended row is caught too.
//!
//! The chain is not keyed: someone able to rewrite the whole file can forge
//! a consistent chain. It detects edits made by anything that is not the
//! store (tools, partial restores, disk damage, a careless operator).

use core::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tables;

/// At most this many defects are listed per chain; the walk goes on
/// counting entries but a badly damaged table cannot exhaust memory.
pub const MAX_REPORTED_DEFECTS: usize = 1000;

/// Which chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainName {
    Records,
    AccessLog,
}

impl ChainName {
    /// Key of this chain in [`crate::tables::CHAIN_MARKS`].
    pub const fn key(self) -> &'static str {
        match self {
            ChainName::Records => "records",
            ChainName::AccessLog => "access_log",
        }
    }

    /// The table holding this chain's entries.
    pub(crate) const fn table(self) -> tables::ChainTable {
        match self {
            ChainName::Records => tables::RECORDS,
            ChainName::AccessLog => tables::ACCESS_LOG,
        }
    }

    /// Domain-separation tag hashed before every entry of this chain.
    const fn tag(self) -> &'static [u8] {
        match self {
            ChainName::Records => b"ifrelay/records/v1\0",
            ChainName::AccessLog => b"ifrelay/access-log/v1\0",
        }
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainName::Records => "records",
            ChainName::AccessLog => "access log",
        })
    }
}

/// The hash of entry `seq` of `chain`, linked to `prev`, over the stored
/// `body` bytes. Public so forensic tools can recompute it.
pub fn chain_hash(chain: ChainName, prev: &[u8; 32], seq: u64, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(chain.tag());
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(body);
    h.finalize().into()
}

/// Where a chain starts and ends, as kept in
/// [`crate::tables::CHAIN_MARKS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainMark {
    /// Seq of the last entry removed by policy (0: none ever).
    pub anchor_seq: u64,
    /// What the first stored entry links to.
    pub anchor_hash: [u8; 32],
    /// Seq of the last entry appended (equals `anchor_seq` when empty).
    pub head_seq: u64,
    /// Hash of the last entry appended (equals `anchor_hash` when empty).
    pub head_hash: [u8; 32],
}

impl ChainMark {
    /// The mark of a chain that never held an entry.
    pub const GENESIS: ChainMark = ChainMark {
        anchor_seq: 0,
        anchor_hash: [0; 32],
        head_seq: 0,
        head_hash: [0; 32],
    };

    pub(crate) fn to_row(self) -> tables::ChainMarkRow {
        (
            self.anchor_seq,
            self.anchor_hash,
            self.head_seq,
            self.head_hash,
        )
    }

    pub(crate) fn from_row(row: tables::ChainMarkRow) -> Self {
        ChainMark {
            anchor_seq: row.0,
            anchor_hash: row.1,
            head_seq: row.2,
            head_hash: row.3,
        }
    }
}

/// What is wrong with one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DefectKind {
    /// The entry's stored hash does not match its contents: it was edited
    /// (or re-numbered, since the seq is hashed).
    HashMismatch,
    /// The entry's `prev_hash` is not the previous entry's hash: an entry
    /// was removed or inserted before it.
    BrokenLink,
    /// Sequence numbers are not contiguous: `expected` was due here.
    Gap { expected: u64 },
    /// The first stored entry does not link to the recorded anchor.
    AnchorMismatch,
    /// The chain does not end where the store last appended: entries were
    /// cut from the tail or added after it. `seq` of the defect is the last
    /// entry found; `recorded_head` is where the store says it ends.
    HeadMismatch { recorded_head: u64 },
    /// The body is not a valid entry.
    Undecodable { detail: String },
}

/// One defect found by verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainDefect {
    pub seq: u64,
    pub kind: DefectKind,
}

/// Verification result of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSummary {
    pub chain: ChainName,
    /// Entries walked.
    pub checked: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub anchor_seq: u64,
    #[serde(with = "serde_bytes")]
    pub anchor_hash: [u8; 32],
    /// Hash of the last entry walked (the anchor when empty).
    #[serde(with = "serde_bytes")]
    pub head_hash: [u8; 32],
    /// In chain order, at most [`MAX_REPORTED_DEFECTS`].
    pub defects: Vec<ChainDefect>,
    /// More defects were found than listed.
    pub defects_truncated: bool,
}

impl ChainSummary {
    pub fn is_intact(&self) -> bool {
        self.defects.is_empty() && !self.defects_truncated
    }
}

/// Verification result of both chains (R-SEC-6 tampered data detection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    pub records: ChainSummary,
    pub access_log: ChainSummary,
}

impl ChainReport {
    /// True when neither chain has a defect.
    pub fn is_intact(&self) -> bool {
        self.records.is_intact() && self.access_log.is_intact()
    }
}

/// Walks one chain in seq order, one stored row at a time.
pub(crate) struct Walker {
    chain: ChainName,
    mark: ChainMark,
    expected_seq: u64,
    expected_prev: [u8; 32],
    summary: ChainSummary,
}

impl Walker {
    pub(crate) fn new(chain: ChainName, mark: ChainMark) -> Self {
        Walker {
            chain,
            mark,
            expected_seq: mark.anchor_seq.saturating_add(1),
            expected_prev: mark.anchor_hash,
            summary: ChainSummary {
                chain,
                checked: 0,
                first_seq: None,
                last_seq: None,
                anchor_seq: mark.anchor_seq,
                anchor_hash: mark.anchor_hash,
                head_hash: mark.anchor_hash,
                defects: Vec::new(),
                defects_truncated: false,
            },
        }
    }

    fn defect(&mut self, seq: u64, kind: DefectKind) {
        if self.summary.defects.len() < MAX_REPORTED_DEFECTS {
            self.summary.defects.push(ChainDefect { seq, kind });
        } else {
            self.summary.defects_truncated = true;
        }
    }

    /// Checks one row. `decoded` says whether the body decodes as an entry.
    pub(crate) fn visit(
        &mut self,
        seq: u64,
        prev: &[u8; 32],
        hash: &[u8; 32],
        body: &[u8],
        decoded: Result<(), String>,
    ) {
        let first = self.summary.first_seq.is_none();
        if seq != self.expected_seq {
            self.defect(
                seq,
                DefectKind::Gap {
                    expected: self.expected_seq,
                },
            );
        }
        if *prev != self.expected_prev {
            let kind = if first {
                DefectKind::AnchorMismatch
            } else {
                DefectKind::BrokenLink
            };
            self.defect(seq, kind);
        }
        if chain_hash(self.chain, prev, seq, body) != *hash {
            self.defect(seq, DefectKind::HashMismatch);
        }
        if let Err(detail) = decoded {
            self.defect(seq, DefectKind::Undecodable { detail });
        }
        // Resynchronise on what is stored so one defect is reported once,
        // not for every entry after it.
        self.expected_seq = seq.saturating_add(1);
        self.expected_prev = *hash;
        self.summary.checked += 1;
        if first {
            self.summary.first_seq = Some(seq);
        }
        self.summary.last_seq = Some(seq);
        self.summary.head_hash = *hash;
    }

    pub(crate) fn finish(mut self) -> ChainSummary {
        let last_seq = self.summary.last_seq.unwrap_or(self.mark.anchor_seq);
        if last_seq != self.mark.head_seq || self.summary.head_hash != self.mark.head_hash {
            self.defect(
                last_seq,
                DefectKind::HeadMismatch {
                    recorded_head: self.mark.head_seq,
                },
            );
        }
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row = (u64, [u8; 32], [u8; 32], Vec<u8>);

    /// Builds `n` correctly chained rows from the genesis anchor.
    fn rows(n: u64) -> Vec<Row> {
        let mut prev = [0u8; 32];
        (1..=n)
            .map(|seq| {
                let body = format!("entry {seq}").into_bytes();
                let hash = chain_hash(ChainName::Records, &prev, seq, &body);
                let row = (seq, prev, hash, body);
                prev = hash;
                row
            })
            .collect()
    }

    fn walk(rows: &[Row], mark: ChainMark) -> ChainSummary {
        let mut w = Walker::new(ChainName::Records, mark);
        for (seq, prev, hash, body) in rows {
            w.visit(*seq, prev, hash, body, Ok(()));
        }
        w.finish()
    }

    fn head_of(rows: &[Row]) -> ChainMark {
        let last = rows.last().expect("rows");
        ChainMark {
            head_seq: last.0,
            head_hash: last.2,
            ..ChainMark::GENESIS
        }
    }

    #[test]
    fn hash_separates_chains_and_covers_seq_prev_and_body() {
        let p = [7u8; 32];
        let base = chain_hash(ChainName::Records, &p, 1, b"x");
        assert_ne!(base, chain_hash(ChainName::AccessLog, &p, 1, b"x"));
        assert_ne!(base, chain_hash(ChainName::Records, &[8u8; 32], 1, b"x"));
        assert_ne!(base, chain_hash(ChainName::Records, &p, 2, b"x"));
        assert_ne!(base, chain_hash(ChainName::Records, &p, 1, b"y"));
    }

    #[test]
    fn intact_chain_has_no_defects() {
        let r = rows(5);
        let s = walk(&r, head_of(&r));
        assert!(s.is_intact(), "{:?}", s.defects);
        assert_eq!((s.checked, s.first_seq, s.last_seq), (5, Some(1), Some(5)));
    }

    #[test]
    fn removed_middle_entry_is_a_gap_and_a_broken_link() {
        let mut r = rows(5);
        let mark = head_of(&r);
        r.remove(2);
        let s = walk(&r, mark);
        assert_eq!(
            s.defects,
            vec![
                ChainDefect {
                    seq: 4,
                    kind: DefectKind::Gap { expected: 3 }
                },
                ChainDefect {
                    seq: 4,
                    kind: DefectKind::BrokenLink
                },
            ]
        );
    }

    #[test]
    fn truncated_tail_and_empty_chain_with_a_head_are_head_mismatches() {
        let r = rows(5);
        let mark = head_of(&r);
        let s = walk(&r[..3], mark);
        assert_eq!(
            s.defects,
            vec![ChainDefect {
                seq: 3,
                kind: DefectKind::HeadMismatch { recorded_head: 5 }
            }]
        );
        let s = walk(&[], mark);
        assert!(!s.is_intact());
        assert!(walk(&[], ChainMark::GENESIS).is_intact());
    }

    #[test]
    fn defect_list_is_bounded() {
        let mut w = Walker::new(ChainName::Records, ChainMark::GENESIS);
        for seq in 1..=(MAX_REPORTED_DEFECTS as u64 + 10) {
            w.visit(seq, &[1; 32], &[2; 32], b"", Ok(()));
        }
        let s = w.finish();
        assert_eq!(s.defects.len(), MAX_REPORTED_DEFECTS);
        assert!(s.defects_truncated);
        assert!(!s.is_intact());
    }
}
