//! [`StoreError`]: every way a store operation fails, keeping the cause.
//!
//! redb's own errors are kept whole inside [`StoreError::Db`] with the
//! operation that failed, so the cause chain reaches the log and
//! [`StoreError::is_storage_full`] can tell a full disk (an alert, R-OPS-1)
//! from corruption.
//!
//! Invariant: a message says what failed and what to do; it never repeats
//! its cause. A cause kept as a `#[source]` is printed once, by whoever
//! walks the chain (the binary's top level, [`ErrorChain`] in this
//! crate's own log lines).

use std::error::Error as _;
use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::chain::ChainName;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb refused or failed an operation. On an I/O error the store
    /// reopens the file before the next batch.
    #[error("store: {op} failed")]
    Db {
        /// What the store was doing.
        op: &'static str,
        #[source]
        source: redb::Error,
    },

    /// Writing or syncing the redo log failed. redb is unaffected (the
    /// batch was not committed there), so no reopen is needed; the next
    /// batch is a checkpoint.
    #[error("store: {op} failed")]
    Log {
        /// What the store was doing.
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The file was written by a newer firmware with a layout this one
    /// cannot read.
    #[error(
        "store file has schema version {found}, newer than the {supported} this firmware \
         supports; install the firmware that wrote it, or restore a backup made by this one"
    )]
    SchemaTooNew { found: u64, supported: u64 },

    /// The file was written by the firmware before the search indexes
    /// (schema version 1): it can be verified, not searched, until a box
    /// opened it once and migrated it.
    #[error(
        "store: the file has no search indexes yet (schema version {found}, written by an \
         earlier firmware); start the box once with this firmware, which migrates it, then \
         search again"
    )]
    NeedsMigration { found: u64 },

    /// The file is a redb database but not one this firmware knows.
    #[error(
        "store file has an unknown layout ({detail}); it was not written by ifrelay or is \
         damaged: move it away and restore a backup"
    )]
    SchemaUnknown { detail: String },

    /// A value could not be encoded as CBOR.
    #[error("store: cannot encode {what} as CBOR: {detail}")]
    Encode { what: &'static str, detail: String },

    /// A stored value does not decode: the file was altered or damaged.
    #[error(
        "store: {what} {key} does not decode ({detail}); the file was altered or damaged: \
         run chain verification and restore from backup"
    )]
    Corrupt {
        what: &'static str,
        key: String,
        detail: String,
    },

    /// The file's header or pages do not match their checksums: a byte
    /// changed on disk (a failing medium, an edit that bypassed redb). The
    /// file is neither read further nor repaired; it stays as it is, as
    /// evidence.
    #[error(
        "the store file {} is damaged: {detail}. Nothing in it can be trusted, and nothing \
         was changed: keep the file for the auditor (README, \"When the store is damaged\")",
        path.display()
    )]
    Damaged { path: PathBuf, detail: String },

    /// The prefix list may only move forward; a rollback is a new version.
    #[error("prefix version {version} is older than the current version {current}; refused")]
    PrefixVersionStale { version: u64, current: u64 },

    /// A prefix version is immutable once stored.
    #[error(
        "prefix version {version} is already stored with different contents; a changed list \
         needs a new version"
    )]
    PrefixVersionConflict { version: u64 },

    /// Policy deletion asked to remove entries that do not exist yet.
    #[error("cannot delete {chain} through seq {seq}: the last entry is seq {head}")]
    DeleteBeyondHead {
        chain: ChainName,
        seq: u64,
        head: u64,
    },

    /// Policy deletion met a hole in the chain.
    #[error(
        "{chain} entry {seq} is missing, so the chain was altered; verify the chains and \
         restore from backup before deleting"
    )]
    ChainRowMissing { chain: ChainName, seq: u64 },

    /// A counter reached `u64::MAX`.
    #[error("store: the {what} counter is exhausted")]
    Exhausted { what: &'static str },

    /// The file is closed: after an I/O error until the writer reopens it
    /// (another reader may still hold the old handle), or for good once the
    /// [`crate::Store`] was dropped.
    #[error(
        "store file is closed (after an I/O error, until the writer reopens it, or at \
         shutdown); retry shortly"
    )]
    Unavailable,

    /// A file to inspect read-only does not exist; nothing was created.
    #[error("no store file at {}; check the path (verification never creates one)", path.display())]
    NotFound { path: PathBuf },

    /// A file to inspect read-only is a directory or another kind of
    /// non-regular file.
    #[error(
        "{} is {what}, not a store file; give the path of the store file itself \
         (ifrelay.redb)",
        path.display()
    )]
    NotAFile { path: PathBuf, what: &'static str },

    /// A file to inspect read-only is empty: the store never leaves an
    /// empty file, so the path is wrong or the file was cut.
    #[error(
        "{} is empty, so it holds no store; check the path, or restore the store from a \
         backup",
        path.display()
    )]
    EmptyFile { path: PathBuf },

    /// A file to inspect read-only is not a redb database at all.
    #[error(
        "{} is not a store file (it does not start with the redb signature); check the path",
        path.display()
    )]
    NotAStore { path: PathBuf },

    /// A file to inspect read-only cannot be opened or read.
    #[error("cannot read {}; check that this user may read it", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A file to inspect read-only was left by a crash or power cut and no
    /// box has it open: redb must repair it before it can be read, and a
    /// read-only open never repairs.
    #[error(
        "{} was not closed cleanly and no box has it open, so it needs the repair the box \
         runs when it opens its store; start the box once, then verify again (verification \
         never repairs)",
        path.display()
    )]
    NeedsRepair { path: PathBuf },

    /// The store names a redo log that is not there. Batches accepted
    /// after the last checkpoint live only in that log, so the store is
    /// not opened without it.
    #[error(
        "the store's redo log {} is missing; batches accepted since the last checkpoint are \
         only there. Put it back next to the store file (the two always move together), or \
         restore both from a backup (docs/operations.md, \"The store's two files\"); the \
         box did not start",
        path.display()
    )]
    LogMissing { path: PathBuf },

    /// A store that has a redo log was opened without it (the mode of
    /// tools that share the file with readers): batches in the log would
    /// be ignored, so it is refused.
    #[error(
        "{} has a redo log, so it must be opened by the box (which replays the log), not \
         shared with readers; stop the box and verify it, or use the box's own verification",
        path.display()
    )]
    NeedsLog { path: PathBuf },

    /// The redo log cannot be used: unreadable, damaged header, or the log
    /// of another store.
    #[error(
        "the store's redo log {} cannot be used: {detail}. The log was not changed and the \
         box did not start; put back the log that belongs to this store, or restore both \
         files from a backup",
        path.display()
    )]
    LogUnusable {
        path: PathBuf,
        detail: String,
        #[source]
        source: Option<io::Error>,
    },

    /// A file to inspect read-only is held by a program that does not
    /// share it with readers: a running box (which holds its store
    /// exclusively, since its batches are made durable through the redo
    /// log), a program built with another redb version, or a tool with
    /// the file open for writing.
    #[error(
        "{} is held by a running box or another program, which does not share it with \
         readers (the box holds its store alone: docs/operations.md, \"Verifying the store\"); \
         stop the box and verify again, or verify a copy of both store files taken while it is \
         stopped",
        path.display()
    )]
    InUse {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
}

impl StoreError {
    /// True when the cause is a full disk or quota (`ENOSPC`,
    /// [`io::ErrorKind::StorageFull`]) anywhere in the chain. The store
    /// stays usable: the next batch commits once space returns.
    pub fn is_storage_full(&self) -> bool {
        if let StoreError::Log { source, .. } = self {
            return io_is_full(source);
        }
        let StoreError::Db { source, .. } = self else {
            return false;
        };
        match source {
            redb::Error::Io(e) => io_is_full(e),
            other => {
                let mut next = other.source();
                while let Some(err) = next {
                    if let Some(e) = err.downcast_ref::<io::Error>() {
                        if io_is_full(e) {
                            return true;
                        }
                    }
                    next = err.source();
                }
                false
            }
        }
    }

    /// True when the store's redo log is missing, belongs to another
    /// store, or cannot be read: the store must not be used until the
    /// right log is back (restarting does not help).
    pub fn is_log_missing_or_foreign(&self) -> bool {
        matches!(
            self,
            StoreError::LogMissing { .. } | StoreError::LogUnusable { .. }
        )
    }

    /// True for [`StoreError::Damaged`]: the file must not be used and
    /// must be kept as it is.
    pub fn is_damaged(&self) -> bool {
        matches!(self, StoreError::Damaged { .. })
    }

    /// True when redb latched an I/O failure: the handle refuses every
    /// further operation and the file must be reopened.
    pub(crate) fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::Db {
                source: redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed,
                ..
            }
        )
    }
}

/// True for a full disk or quota, looking through wrapped I/O errors.
fn io_is_full(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::StorageFull {
        return true;
    }
    #[cfg(target_os = "linux")]
    {
        // ENOSPC, EDQUOT: already mapped to StorageFull by std, kept for
        // errors built from a raw code by hand.
        if matches!(e.raw_os_error(), Some(28 | 122)) {
            return true;
        }
    }
    let mut next = e
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(err) = next {
        if let Some(inner) = err.downcast_ref::<io::Error>() {
            if inner.kind() == io::ErrorKind::StorageFull {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// Shows an error and every cause under it, `error: cause: cause`, for the
/// log lines this crate writes itself, where no caller walks the chain.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

/// Builds a mapper from any redb error to [`StoreError::Db`].
pub(crate) fn db<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Db {
        op,
        source: e.into(),
    }
}

/// Encodes `value` as CBOR.
pub(crate) fn to_cbor<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(256);
    ciborium::into_writer(value, &mut out).map_err(|e| StoreError::Encode {
        what,
        detail: e.to_string(),
    })?;
    Ok(out)
}

/// Decodes CBOR read from the file; failure means the file was altered.
pub(crate) fn from_cbor<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    ciborium::from_reader(bytes).map_err(|e| StoreError::Corrupt {
        what,
        key: key(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_full_is_recognised_directly_and_wrapped() {
        let direct = StoreError::Db {
            op: "commit",
            source: redb::Error::Io(io::Error::from(io::ErrorKind::StorageFull)),
        };
        assert!(direct.is_storage_full());
        assert!(direct.needs_reopen());

        let wrapped = StoreError::Db {
            op: "commit",
            source: redb::Error::Io(io::Error::other(io::Error::from(
                io::ErrorKind::StorageFull,
            ))),
        };
        assert!(wrapped.is_storage_full());

        let other = StoreError::Db {
            op: "commit",
            source: redb::Error::Io(io::Error::from(io::ErrorKind::PermissionDenied)),
        };
        assert!(!other.is_storage_full());
        assert!(!StoreError::Unavailable.is_storage_full());
    }

    #[test]
    fn a_message_does_not_repeat_its_cause() {
        let cause = io::Error::other("disk on fire");
        let err = StoreError::Db {
            op: "commit batch",
            source: redb::Error::Io(cause),
        };
        assert_eq!(err.to_string(), "store: commit batch failed");
        assert!(err.source().is_some());
        let chain = ErrorChain(&err).to_string();
        assert_eq!(chain.matches("disk on fire").count(), 1, "{chain}");

        let err = StoreError::Unreadable {
            path: "/x/store.redb".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(err.source().is_some());
        assert!(!err.to_string().contains("permission"), "{err}");
    }

    #[test]
    fn errors_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<StoreError>();
    }
}
