//! [`verify_export`]: checks an export folder anywhere, with no store —
//! the manifest's signature, the box that made it, every file's presence
//! and hash, no file beyond those listed, and the hash chain of every
//! CBOR file present in clear (recomputed with the store's own
//! [`ifrelay_store::chain_hash`]), each entry selected by the manifest's
//! selection. Each problem is one [`Finding`]; the
//! verifier never stops at the first one it can go past.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use ifrelay_store::{chain_hash, AccessEntry, ChainName, Record, RecordKind, Side};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::manifest::{ChainAnchors, ChainEntry, FileEntry, Manifest, RecordSelection};
use super::{FORMAT, FORMAT_VERSION, MANIFEST_FILE, SIGNATURE_FILE, SIGNING_CONTEXT};
use crate::identity::hex;

/// Whose export it must be, when the verifier was told.
#[derive(Debug, Clone, Default)]
pub struct ExpectedBox {
    /// The box's registered public key.
    pub public_key: Option<[u8; 32]>,
    /// The box's agency code, party (`is/<agency>`) or name.
    pub box_id: Option<String>,
}

/// One thing wrong with an export. The order of the variants is the order
/// of the checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Finding {
    /// The manifest is missing, unreadable or not an export manifest.
    #[error("bad manifest: {detail}")]
    BadManifest { detail: String },
    /// The signature does not verify with the manifest's public key.
    #[error("bad signature: {detail}")]
    BadSignature { detail: String },
    /// Signed by another box than the one expected.
    #[error("wrong box: {detail}")]
    WrongBox { detail: String },
    /// A file the manifest lists is not in the folder.
    #[error("missing file: {name}")]
    MissingFile { name: String },
    /// A file in the folder the manifest does not list.
    #[error("extra file: {name}")]
    ExtraFile { name: String },
    /// A file whose content is not what the manifest says.
    #[error("edited file: {name}: sha256 {found}, the manifest says {expected}")]
    EditedFile {
        name: String,
        expected: String,
        found: String,
    },
    /// An entry that the manifest's selection does not select.
    #[error("outside the selection: {file} seq {seq}: {what}")]
    OutsideSelection {
        file: String,
        seq: u64,
        what: String,
    },
    /// The entries of a CBOR file do not form the chain they claim to.
    #[error("broken chain: {file}{}: {what}", seq.map(|s| format!(" at seq {s}")).unwrap_or_default())]
    BrokenChain {
        file: String,
        seq: Option<u64>,
        what: String,
    },
}

impl Finding {
    /// The exit code of `ifrelay verify-export` for this finding
    /// ([`crate::exit`], docs/export.md).
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            Finding::BadManifest { .. } => exit::EXPORT_BAD_MANIFEST,
            Finding::BadSignature { .. } => exit::EXPORT_BAD_SIGNATURE,
            Finding::WrongBox { .. } => exit::EXPORT_WRONG_BOX,
            Finding::MissingFile { .. } => exit::EXPORT_MISSING_FILE,
            Finding::ExtraFile { .. } => exit::EXPORT_EXTRA_FILE,
            Finding::EditedFile { .. } => exit::EXPORT_EDITED_FILE,
            Finding::BrokenChain { .. } => exit::EXPORT_BROKEN_CHAIN,
            Finding::OutsideSelection { .. } => exit::EXPORT_OUTSIDE_SELECTION,
        }
    }
}

/// The verdict on a folder.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// The manifest, when it could be read.
    pub manifest: Option<Manifest>,
    /// Everything wrong, in the order found; empty: the export verifies.
    pub findings: Vec<Finding>,
    /// What was checked, one line each, for the operator.
    pub checked: Vec<String>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Why a folder could not be verified at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("verify-export: {path} is not a folder")]
    NotAFolder { path: PathBuf },
    #[error("verify-export: cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Checks the export in `dir`; see the module header.
///
/// # Errors
/// [`VerifyError`] when the folder or a file in it cannot be read at all.
pub fn verify_export(dir: &Path, expected: &ExpectedBox) -> Result<VerifyReport, VerifyError> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |source| VerifyError::Read { path, source }
    };
    if !fs::metadata(dir).map_err(read_error(dir))?.is_dir() {
        return Err(VerifyError::NotAFolder {
            path: dir.to_owned(),
        });
    }
    let mut report = VerifyReport::default();
    let manifest_path = dir.join(MANIFEST_FILE);
    let Some(manifest_bytes) = read_optional(&manifest_path)? else {
        report.findings.push(Finding::MissingFile {
            name: MANIFEST_FILE.to_owned(),
        });
        return Ok(report);
    };
    let manifest: Manifest = match serde_json::from_slice(&manifest_bytes) {
        Ok(m) => m,
        Err(e) => {
            report.findings.push(Finding::BadManifest {
                detail: format!("{MANIFEST_FILE} is not a manifest: {e}"),
            });
            return Ok(report);
        }
    };
    if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
        report.findings.push(Finding::BadManifest {
            detail: format!(
                "format {:?} version {}; this verifier reads {FORMAT:?} version {FORMAT_VERSION}",
                manifest.format, manifest.format_version
            ),
        });
        return Ok(report);
    }
    check_signature(dir, &manifest, &manifest_bytes, &mut report)?;
    check_box(&manifest, expected, &mut report);
    check_files(dir, &manifest, &mut report)?;
    for anchors in &manifest.chains {
        check_chain(dir, &manifest, anchors, &mut report)?;
    }
    report.manifest = Some(manifest);
    Ok(report)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, VerifyError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(VerifyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn check_signature(
    dir: &Path,
    manifest: &Manifest,
    bytes: &[u8],
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    let Some(signature) = read_optional(&dir.join(SIGNATURE_FILE))? else {
        report.findings.push(Finding::MissingFile {
            name: SIGNATURE_FILE.to_owned(),
        });
        return Ok(());
    };
    let Some(public_key) = parse_hex_key(&manifest.made_by.public_key) else {
        report.findings.push(Finding::BadManifest {
            detail: "box.public_key is not 64 hex digits".to_owned(),
        });
        return Ok(());
    };
    match crate::identity::verify(&public_key, SIGNING_CONTEXT, bytes, &signature) {
        Ok(()) => report.checked.push(format!(
            "signature: good, by the key {} (fingerprint {})",
            manifest.made_by.public_key, manifest.made_by.fingerprint
        )),
        Err(_) => report.findings.push(Finding::BadSignature {
            detail: format!(
                "{SIGNATURE_FILE} is not the signature of {MANIFEST_FILE} by the key the manifest \
                 names: the manifest or the signature was changed"
            ),
        }),
    }
    Ok(())
}

fn check_box(manifest: &Manifest, expected: &ExpectedBox, report: &mut VerifyReport) {
    let made_by = &manifest.made_by;
    if let Some(key) = &expected.public_key {
        if hex(key) == made_by.public_key {
            report
                .checked
                .push("box: the public key is the one expected".to_owned());
        } else {
            report.findings.push(Finding::WrongBox {
                detail: format!(
                    "signed by the key {} (box {}), not by the key expected {}",
                    made_by.public_key,
                    made_by.party,
                    hex(key)
                ),
            });
        }
    }
    if let Some(id) = &expected.box_id {
        let party = made_by.party.as_str();
        if id == &made_by.agency || id == party || made_by.name.as_deref() == Some(id) {
            report.checked.push(format!("box: {party}, as expected"));
        } else {
            report.findings.push(Finding::WrongBox {
                detail: format!("made by box {party}, not by {id}"),
            });
        }
    }
    if expected.public_key.is_none() {
        report.checked.push(
            "box: the key was not compared with the box's registered key (pass --public-key)"
                .to_owned(),
        );
    }
}

/// 64 hex digits → 32 bytes.
pub fn parse_hex_key(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

fn sha256_file(path: &Path) -> Result<String, VerifyError> {
    let mut file = File::open(path).map_err(|source| VerifyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|source| VerifyError::Read {
            path: path.to_owned(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(hasher.finish().as_ref()))
}

/// Every listed file present (in clear, encrypted, or both) with its
/// hash; nothing else in the folder.
fn check_files(
    dir: &Path,
    manifest: &Manifest,
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    let mut listed = BTreeSet::from([MANIFEST_FILE.to_owned(), SIGNATURE_FILE.to_owned()]);
    for file in &manifest.files {
        listed.insert(file.name.clone());
        if let Some(enc) = &file.encrypted {
            listed.insert(enc.name.clone());
        }
    }
    for file in &manifest.files {
        check_file(dir, file, report)?;
    }
    let entries = fs::read_dir(dir).map_err(|source| VerifyError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut extra = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|source| VerifyError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !listed.contains(&name) {
            extra.insert(name);
        }
    }
    for name in extra {
        report.findings.push(Finding::ExtraFile { name });
    }
    Ok(())
}

fn check_file(dir: &Path, file: &FileEntry, report: &mut VerifyReport) -> Result<(), VerifyError> {
    let mut present = false;
    let plain = dir.join(&file.name);
    if plain.is_file() {
        present = true;
        let found = sha256_file(&plain)?;
        if found == file.sha256 {
            report
                .checked
                .push(format!("file {}: sha256 matches", file.name));
        } else {
            report.findings.push(Finding::EditedFile {
                name: file.name.clone(),
                expected: file.sha256.clone(),
                found,
            });
        }
    }
    if let Some(enc) = &file.encrypted {
        let path = dir.join(&enc.name);
        if path.is_file() {
            present = true;
            let found = sha256_file(&path)?;
            if found == enc.sha256 {
                report
                    .checked
                    .push(format!("file {}: sha256 matches", enc.name));
            } else {
                report.findings.push(Finding::EditedFile {
                    name: enc.name.clone(),
                    expected: enc.sha256.clone(),
                    found,
                });
            }
        }
    }
    if !present {
        let name = file
            .encrypted
            .as_ref()
            .map_or_else(|| file.name.clone(), |e| e.name.clone());
        report.findings.push(Finding::MissingFile { name });
    }
    Ok(())
}

/// A record body as stored: `{at, record}`.
#[derive(Deserialize)]
struct RecordBody {
    at: i64,
    record: Record,
}

/// Why `record` (appended at `at`) is not selected by `sel`, if it is not.
fn outside_records(sel: &RecordSelection, at: i64, r: &Record) -> Option<String> {
    let text = |want: &Option<String>, found: &str, what: &str| match want {
        Some(want) if want != found => Some(format!("{what} {found}, the selection is {want}")),
        _ => None,
    };
    let p = &r.prefix;
    let code_sha256 = r
        .code
        .as_ref()
        .map(|c| hex(&Sha256::digest(c.as_str().as_bytes())));
    let kind = match r.kind {
        RecordKind::Query => "query",
        RecordKind::Provision => "provision",
    };
    let side = match r.side {
        Side::Requester => "requester",
        Side::Provider => "provider",
    };
    outside_time(sel.since_ms, sel.until_ms, at)
        .or_else(|| text(&sel.serial, r.serial.as_str(), "serial"))
        .or_else(|| text(&sel.requester, p.requester.as_str(), "requester"))
        .or_else(|| text(&sel.provider, p.provider.as_str(), "provider"))
        .or_else(|| text(&sel.business, p.business.as_str(), "business"))
        .or_else(|| text(&sel.info_name, p.info_name.as_str(), "information name"))
        .or_else(|| match &sel.item {
            Some(item) if !p.items.iter().any(|i| i.as_str() == item) => {
                Some(format!("no item {item}"))
            }
            _ => None,
        })
        .or_else(|| match &sel.code_sha256 {
            Some(want) if code_sha256.as_ref() != Some(want) => {
                Some("another person code".to_owned())
            }
            _ => None,
        })
        .or_else(|| text(&sel.kind, kind, "kind"))
        .or_else(|| text(&sel.side, side, "side"))
}

/// Why time `at` is outside `since..until`, if it is.
fn outside_time(since: Option<i64>, until: Option<i64>, at: i64) -> Option<String> {
    match (since, until) {
        (Some(since), _) if at < since => Some(format!("at {at} ms, before since_ms {since}")),
        (_, Some(until)) if at >= until => Some(format!("at {at} ms, not before until_ms {until}")),
        _ => None,
    }
}

/// Walks the CBOR file of `anchors`, when present in clear: each entry's
/// hash recomputed over its stored body, consecutive seqs linked, the
/// ends and count as the manifest says, no gap in a whole-chain export.
fn check_chain(
    dir: &Path,
    manifest: &Manifest,
    anchors: &ChainAnchors,
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    let file = anchors.file.clone();
    let chain = match anchors.chain.as_str() {
        "records" => ChainName::Records,
        "access_log" => ChainName::AccessLog,
        other => {
            report.findings.push(Finding::BadManifest {
                detail: format!("unknown chain {other:?}"),
            });
            return Ok(());
        }
    };
    let path = dir.join(&file);
    if !path.is_file() {
        if manifest.encryption.is_some() {
            report.checked.push(format!(
                "chain {}: not checked, {file} is encrypted (decrypt it with age beside the \
                 .age file, then verify again)",
                anchors.chain
            ));
        }
        return Ok(());
    }
    let broken = |seq: Option<u64>, what: String| Finding::BrokenChain {
        file: file.clone(),
        seq,
        what,
    };
    let handle = File::open(&path).map_err(|source| VerifyError::Read {
        path: path.clone(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(256 * 1024, handle);
    let mut count = 0u64;
    let mut previous: Option<(u64, [u8; 32])> = None;
    let mut first: Option<(u64, [u8; 32], [u8; 32])> = None;
    let before = report.findings.len();
    loop {
        let at_end = reader
            .fill_buf()
            .map_err(|source| VerifyError::Read {
                path: path.clone(),
                source,
            })?
            .is_empty();
        if at_end {
            break;
        }
        let entry: ChainEntry = match ciborium::from_reader(&mut reader) {
            Ok(e) => e,
            Err(e) => {
                let after = previous
                    .map(|(s, _)| format!(" after seq {s}"))
                    .unwrap_or_default();
                report.findings.push(broken(
                    None,
                    format!("an entry{after} does not decode: {e}"),
                ));
                return Ok(());
            }
        };
        count += 1;
        let seq = entry.seq;
        if chain_hash(chain, &entry.prev_hash, seq, &entry.body) != entry.hash {
            report.findings.push(broken(
                Some(seq),
                "the entry's hash does not match its contents (edited)".to_owned(),
            ));
        }
        // The body must decode, and be an entry the selection selects.
        let outside = match chain {
            ChainName::Records => ciborium::from_reader::<RecordBody, _>(&entry.body[..])
                .map(|b| {
                    manifest
                        .selection
                        .records
                        .as_ref()
                        .and_then(|sel| outside_records(sel, b.at, &b.record))
                })
                .map_err(|e| e.to_string()),
            _ => ciborium::from_reader::<AccessEntry, _>(&entry.body[..])
                .map(|e| {
                    manifest
                        .selection
                        .access_log
                        .as_ref()
                        .and_then(|sel| outside_time(sel.since_ms, sel.until_ms, e.at))
                })
                .map_err(|e| e.to_string()),
        };
        match outside {
            Err(e) => report
                .findings
                .push(broken(Some(seq), format!("the body does not decode: {e}"))),
            Ok(Some(what)) => report.findings.push(Finding::OutsideSelection {
                file: file.clone(),
                seq,
                what,
            }),
            Ok(None) => {}
        }
        match previous {
            Some((prev_seq, _)) if seq <= prev_seq => report.findings.push(broken(
                Some(seq),
                format!("out of order after seq {prev_seq}"),
            )),
            Some((prev_seq, prev_hash)) if seq == prev_seq + 1 && entry.prev_hash != prev_hash => {
                report.findings.push(broken(
                    Some(seq),
                    format!("prev_hash is not the hash of seq {prev_seq}"),
                ))
            }
            Some((prev_seq, _)) if seq != prev_seq + 1 && anchors.contiguous => {
                report.findings.push(broken(
                    Some(seq),
                    format!("entries {} to {} are missing", prev_seq + 1, seq - 1),
                ))
            }
            _ => {}
        }
        if first.is_none() {
            first = Some((seq, entry.prev_hash, entry.hash));
        }
        previous = Some((seq, entry.hash));
    }
    // The ends and count against the signed manifest.
    let hex_opt = |h: Option<[u8; 32]>| h.map(|h| hex(&h));
    let ends = [
        (
            "entries",
            Some(count.to_string()),
            Some(anchors.entries.to_string()),
        ),
        (
            "first_seq",
            first.map(|f| f.0.to_string()),
            anchors.first_seq.map(|s| s.to_string()),
        ),
        (
            "first_prev_hash",
            hex_opt(first.map(|f| f.1)),
            anchors.first_prev_hash.clone(),
        ),
        (
            "first_hash",
            hex_opt(first.map(|f| f.2)),
            anchors.first_hash.clone(),
        ),
        (
            "last_seq",
            previous.map(|p| p.0.to_string()),
            anchors.last_seq.map(|s| s.to_string()),
        ),
        (
            "last_hash",
            hex_opt(previous.map(|p| p.1)),
            anchors.last_hash.clone(),
        ),
    ];
    for (field, found, expected) in ends {
        if found != expected {
            report.findings.push(broken(
                None,
                format!(
                    "{field} is {}, the manifest says {}",
                    found.as_deref().unwrap_or("none"),
                    expected.as_deref().unwrap_or("none")
                ),
            ));
        }
    }
    if anchors.contiguous {
        // A whole chain runs from the store's anchor to its head.
        let (anchor_seq, head_seq) = (anchors.store_anchor_seq, anchors.store_head_seq);
        let whole = match (first, previous) {
            (Some(f), Some(l)) => {
                f.0 == anchor_seq + 1
                    && hex(&f.1) == anchors.store_anchor_hash
                    && l.0 == head_seq
                    && hex(&l.1) == anchors.store_head_hash
            }
            _ => head_seq == anchor_seq,
        };
        if !whole {
            report.findings.push(broken(
                None,
                format!(
                    "a whole-chain export must run from the store's anchor (seq {anchor_seq}) to \
                     its head (seq {head_seq})"
                ),
            ));
        }
    }
    if report.findings.len() == before {
        report.checked.push(format!(
            "chain {}: {count} entries, every hash and link verified, each in the selection",
            anchors.chain
        ));
    }
    Ok(())
}
