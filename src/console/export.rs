//! Exports from the console (R-REC-3): what a user asked for
//! ([`ExportOrder`]), written to the [`Media`] by the store-side export of
//! `crate::export` (the same signed folder `ifrelay export` writes), and
//! what the user is told ([`Exported`], [`ExportFailure`]).
//!
//! Invariants:
//! - Every export goes into a new folder named after the box's agency
//!   code and the time; nothing on the stick is overwritten or deleted.
//! - The stick is unmounted before the user hears it may be removed; a
//!   failed export still unmounts it, and its folder lacks the signature
//!   (written last), so `verify-export` never accepts it.

use std::io;
use std::path::Path;
use std::sync::Arc;

use ifrelay_proto::{Millis, RootKey};
use ifrelay_store::{RecordFilter, StoreReader};

use super::media::{Media, MediaError};
use crate::export::{self, AccessSelection, ExportError, ExportRequest, Labels};
use crate::identity::BoxKey;

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportOrder {
    /// Records matching a filter and/or access-log entries in a range,
    /// as a signed export folder.
    Chains {
        records: Option<Box<RecordFilter>>,
        access: Option<AccessSelection>,
    },
    /// The account inventory as one CSV file (seed 002 §4.7 item 6).
    Inventory { csv: Vec<u8> },
}

/// What an export wrote, for the user and the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The folder (or file) name on the media.
    pub name: String,
    /// The device or folder written to.
    pub device: String,
    pub records: u64,
    pub access_entries: u64,
    /// Auditors it was encrypted to (0: in clear).
    pub recipients: usize,
}

/// Why an export did not complete. Every variant leaves the stick
/// unmounted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportFailure {
    /// The stick could not be used (none, several, write-protected, no
    /// usable file system), or the data did not reach it.
    #[error(transparent)]
    Media(#[from] MediaError),
    /// The stick filled up; `name` is incomplete.
    #[error("the USB stick is full; {name} is incomplete")]
    Full { name: String },
    /// Writing failed (the stick pulled out, or broken); `name` is
    /// incomplete.
    #[error("writing {name} failed: {detail}")]
    Write { name: String, detail: String },
    /// The store could not be read, or the box's key could not sign.
    #[error("the box could not produce the export: {detail}")]
    Box { detail: String },
}

/// What the console exports with: the box's key and identity, the roots
/// its masters' labels are checked against, and the auditors to encrypt
/// to.
pub struct ExportSetup {
    pub media: Media,
    /// Auditors' age recipients (`[console] export_recipients`).
    pub recipients: Vec<age::x25519::Recipient>,
    pub key: Arc<BoxKey>,
    pub roots: Vec<RootKey>,
    pub party: String,
    pub agency: String,
    pub name: Option<String>,
}

impl std::fmt::Debug for ExportSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportSetup")
            .field("media", &self.media)
            .field("recipients", &self.recipients.len())
            .finish_non_exhaustive()
    }
}

impl ExportSetup {
    /// Mounts the media, writes `order`, syncs and unmounts.
    ///
    /// # Errors
    /// [`ExportFailure`]; the media is unmounted in every case.
    pub fn run(
        &self,
        reader: &StoreReader,
        order: &ExportOrder,
        now: Millis,
    ) -> Result<Exported, ExportFailure> {
        let mounted = self.media.open()?;
        // The agency code, not the name: a name may hold spaces or
        // Japanese, which some PCs mangle in file names on a stick.
        let stem = format!("{}-{}", self.agency, file_stamp(now));
        let written = match order {
            ExportOrder::Chains { records, access } => {
                let name = free_name(mounted.folder(), &format!("ifrelay-export-{stem}"), "");
                let out = mounted.folder().join(&name);
                self.write_chains(reader, records, access, &out, now)
                    .map(|(records, access_entries)| (name, records, access_entries))
                    .map_err(|e| failure(&out, e))
            }
            ExportOrder::Inventory { csv } => {
                let name = free_name(
                    mounted.folder(),
                    &format!("ifrelay-accounts-{stem}"),
                    ".csv",
                );
                write_new(&mounted.folder().join(&name), csv)
                    .map(|()| (name.clone(), 0, 0))
                    .map_err(|e| io_failure(&name, &e))
            }
        };
        let device = mounted.device().to_owned();
        // Unmount whatever happened; a write failure is the one to tell.
        let finished = mounted.finish();
        let (name, records, access_entries) = written?;
        finished?;
        Ok(Exported {
            name,
            device,
            records,
            access_entries,
            recipients: match order {
                ExportOrder::Chains { .. } => self.recipients.len(),
                ExportOrder::Inventory { .. } => 0,
            },
        })
    }

    fn write_chains(
        &self,
        reader: &StoreReader,
        records: &Option<Box<RecordFilter>>,
        access: &Option<AccessSelection>,
        out: &Path,
        now: Millis,
    ) -> Result<(u64, u64), ExportError> {
        let snapshot = reader.snapshot().map_err(ExportError::Store)?;
        let labels = match snapshot.current_prefix() {
            Ok(Some((version, bytes))) => match Labels::from_stored(&bytes, &self.roots) {
                Ok(labels) => Some((version, labels)),
                Err(why) => {
                    tracing::warn!(version, %why, "console export: the stored distribution does not verify; CSV files carry codes only");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => return Err(ExportError::Store(e)),
        };
        let request = ExportRequest {
            out,
            records: records.as_deref().cloned(),
            access: *access,
            recipients: self.recipients.clone(),
            labels,
            party: self.party.clone(),
            agency: self.agency.clone(),
            name: self.name.clone(),
            now,
        };
        let summary = export::export(&snapshot, &self.key, &request)?;
        Ok((summary.records, summary.access_entries))
    }
}

/// `YYYYMMDD-HHMMSS` in Japan Standard Time, for file names.
fn file_stamp(ms: Millis) -> String {
    let digits: String = crate::relay::jst::jst_second(ms)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    match digits.split_at_checked(8) {
        Some((date, time)) => format!("{date}-{time}"),
        None => digits,
    }
}

/// `stem` + `ext`, or `stem-2` + `ext` … when that exists already.
fn free_name(folder: &Path, stem: &str, ext: &str) -> String {
    let mut name = format!("{stem}{ext}");
    let mut n = 2;
    while folder.join(&name).exists() {
        name = format!("{stem}-{n}{ext}");
        n += 1;
    }
    name
}

fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn failure(out: &Path, e: ExportError) -> ExportFailure {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match e {
        ExportError::Write { source, .. } | ExportError::Target { source, .. } => {
            io_failure(&name, &source)
        }
        other => ExportFailure::Box {
            detail: crate::logging::Causes(&other).to_string(),
        },
    }
}

fn io_failure(name: &str, e: &io::Error) -> ExportFailure {
    if e.kind() == io::ErrorKind::StorageFull {
        ExportFailure::Full {
            name: name.to_owned(),
        }
    } else {
        ExportFailure::Write {
            name: name.to_owned(),
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_time_and_never_reuse_a_name() {
        // 2026-12-02 09:30:05 JST.
        let ms = crate::relay::jst::parse_jst("2026-12-02T09:30:05").expect("time");
        assert_eq!(file_stamp(ms), "20261202-093005");
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(free_name(dir.path(), "a", ".csv"), "a.csv");
        std::fs::write(dir.path().join("a.csv"), b"").expect("write");
        assert_eq!(free_name(dir.path(), "a", ".csv"), "a-2.csv");
    }

    #[test]
    fn a_full_disk_is_told_apart_from_other_write_failures() {
        let full = io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert!(matches!(io_failure("x", &full), ExportFailure::Full { .. }));
        let pulled = io::Error::from_raw_os_error(nix::libc::EIO);
        assert!(matches!(
            io_failure("x", &pulled),
            ExportFailure::Write { .. }
        ));
    }
}
