//! [`Manifest`]: the signed description of an export (`manifest.json`),
//! field by field in `docs/export.md`. JSON rather than CBOR because an
//! auditor reads and checks it with any tool at hand (a text editor,
//! `python3 -m json.tool`, `jq`); the signature covers the file's exact
//! bytes, so no canonical form is needed.

use serde::{Deserialize, Serialize};

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`super::FORMAT`].
    pub format: String,
    /// [`super::FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// When the export was made, box time, RFC 3339 in UTC.
    pub created_at: String,
    /// The same, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Which box made it; its key signed the manifest.
    #[serde(rename = "box")]
    pub made_by: BoxIdentity,
    /// What was asked for.
    pub selection: Selection,
    /// Where the CSV labels came from; `None`: no masters, codes only.
    pub labels: Option<LabelSource>,
    /// `None`: the files are in clear.
    pub encryption: Option<Encryption>,
    /// Every data file, in the order written.
    pub files: Vec<FileEntry>,
    /// One per exported chain.
    pub chains: Vec<ChainAnchors>,
}

/// The box that made the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxIdentity {
    /// The box's party, `is/<agency>`.
    pub party: String,
    /// The box's agency code (`[box] agency`).
    pub agency: String,
    /// `[box] name`, when configured.
    pub name: Option<String>,
    /// The box's Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// `SHA256:` and the hex SHA-256 of the raw public key, as `ifrelay
    /// identity` shows it.
    pub fingerprint: String,
}

/// What the export holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// `None`: no records exported.
    pub records: Option<RecordSelection>,
    /// `None`: no access log exported.
    pub access_log: Option<TimeSelection>,
}

/// Which records: every criterion that was set; none set is all records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSelection {
    /// Every record of the store (no criterion set).
    pub all: bool,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub serial: Option<String>,
    pub requester: Option<String>,
    pub provider: Option<String>,
    pub business: Option<String>,
    pub info_name: Option<String>,
    pub item: Option<String>,
    /// SHA-256 (hex) of the person code searched for, never the code: the
    /// manifest stays in clear when the files are encrypted.
    pub code_sha256: Option<String>,
    /// `query` or `provision`.
    pub kind: Option<String>,
    /// `requester` or `provider`.
    pub side: Option<String>,
}

/// Which access-log entries: those in `since..until`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSelection {
    /// Every entry of the store (no bound set).
    pub all: bool,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// The masters the CSV labels were taken from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSource {
    /// Version of the distribution (prefix list and masters).
    pub distribution_version: u64,
}

/// How the files are encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// Always `age` (age-encryption.org/v1).
    pub format: String,
    /// The auditors' age recipients (`age1…`), each able to decrypt.
    pub recipients: Vec<String>,
}

/// One data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The plaintext file's name.
    pub name: String,
    /// `records-cbor`, `records-csv`, `access-log-cbor`, `access-log-csv`.
    pub contents: String,
    /// Size of the plaintext.
    pub bytes: u64,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
    /// When encrypted: the file in the folder is this one (and the
    /// plaintext appears only once an auditor decrypts it).
    pub encrypted: Option<EncryptedFile>,
}

/// The age-encrypted form of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedFile {
    /// `<name>.age`.
    pub name: String,
    pub bytes: u64,
    /// SHA-256 of the ciphertext, hex: checkable without any key.
    pub sha256: String,
}

/// Where an exported chain's entries start and end, and where the store's
/// chain started and ended when the export was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainAnchors {
    /// `records` or `access_log`.
    pub chain: String,
    /// The CBOR file holding the entries.
    pub file: String,
    /// Entries exported.
    pub entries: u64,
    /// Every entry of the store's chain, without gaps (a selection of all):
    /// the entries must then link one to the next from `store_anchor_hash`
    /// to `store_head_hash`.
    pub contiguous: bool,
    pub first_seq: Option<u64>,
    /// `prev_hash` of the first entry, hex.
    pub first_prev_hash: Option<String>,
    pub first_hash: Option<String>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    /// Seq of the last entry the store had removed by policy (0: none).
    pub store_anchor_seq: u64,
    /// What the store's first entry links to, hex.
    pub store_anchor_hash: String,
    /// Seq of the store's last entry.
    pub store_head_seq: u64,
    pub store_head_hash: String,
}

/// One entry of a CBOR file: a chained row exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEntry {
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub prev_hash: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
    /// The stored CBOR the hash covers: `{at, record}` for a record, the
    /// entry itself for the access log.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}
