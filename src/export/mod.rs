//! Record exports (R-REC-3): the records — all, or a search result — and
//! the access log, streamed from one snapshot of the store into a folder
//! as CBOR (every entry with its chain fields and stored bytes) and as CSV
//! for spreadsheets, with a manifest signed by the box's own key, and
//! optionally encrypted to auditors in the age format; and the verifier
//! that checks such a folder anywhere. The folder layout, the manifest and
//! the signature are specified in `docs/export.md`, for verifiers written
//! from the docs alone.
//!
//! Shape: [`source`] is what an export reads (a read-only store snapshot
//! now; the running box's reader for the console later); [`labels`] turns
//! master codes into labels; [`sink`] hashes (and encrypts) each file as it
//! is written; [`write`] runs an export; [`manifest`] is the signed
//! description; [`verify`] checks a folder.
//!
//! Invariants:
//! - Memory is bounded whatever the store holds: rows are read a page at a
//!   time and written out at once; nothing collects the records.
//! - An export never deletes or overwrites anything: the target folder
//!   must be missing or empty, and every file is created exclusively.
//! - The manifest is written last, then its signature: a folder without a
//!   valid signature is not an export, whatever else it holds.
//! - What is signed is `SIGNING_CONTEXT || the manifest file's bytes`, so
//!   verification never depends on re-encoding the manifest.

pub mod labels;
pub mod manifest;
mod sink;
pub mod source;
pub mod verify;
mod write;

pub use labels::Labels;
pub use manifest::Manifest;
pub use source::ExportSource;
pub use verify::{verify_export, ExpectedBox, Finding, VerifyError, VerifyReport};
pub use write::{
    export, parse_recipient, AccessSelection, ExportError, ExportRequest, ExportSummary,
};

/// The context of the box's signature over the manifest
/// ([`crate::identity::BoxKey::sign`]).
pub const SIGNING_CONTEXT: &[u8] = b"ifrelay-export-v1\0";
/// `format` of every manifest.
pub const FORMAT: &str = "ifrelay-export";
/// `format_version` this firmware writes and verifies.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The detached signature: 64 raw bytes of Ed25519.
pub const SIGNATURE_FILE: &str = "manifest.json.sig";
/// The records as a CBOR sequence of chain entries.
pub const RECORDS_CBOR: &str = "records.cbor";
/// The records as CSV.
pub const RECORDS_CSV: &str = "records.csv";
/// The access log as a CBOR sequence of chain entries.
pub const ACCESS_CBOR: &str = "access-log.cbor";
/// The access log as CSV.
pub const ACCESS_CSV: &str = "access-log.csv";
/// Suffix of an encrypted file.
pub const AGE_SUFFIX: &str = ".age";
