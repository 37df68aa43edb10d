//! [`StoreError`]: every way a store operation fails, keeping the cause.
//!
//! redb's own errors are kept whole inside [`StoreError::Db`] with the
//! operation that failed, so the cause chain reaches the log and
//! [`StoreError::is_storage_full`] can tell a full disk (an alert, R-OPS-1)
//! from corruption.

use std::error::Error as _;
use std::io;

use crate::chain::ChainName;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb refused or failed an operation. On an I/O error the store
    /// reopens the file before the next batch.
    #[error("store: {op} failed: {source}")]
    Db {
        /// What the store was doing.
        op: &'static str,
        #[source]
        source: redb::Error,
    },

    /// The file was written by a newer firmware with a layout this one
    /// cannot read.
    #[error(
        "store file has schema version {found}, newer than the {supported} this firmware \
         supports; install the firmware that wrote it, or restore a backup made by this one"
    )]
    SchemaTooNew { found: u64, supported: u64 },

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
}

impl StoreError {
    /// True when the cause is a full disk or quota (`ENOSPC`,
    /// [`io::ErrorKind::StorageFull`]) anywhere in the chain. The store
    /// stays usable: the next batch commits once space returns.
    pub fn is_storage_full(&self) -> bool {
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
    fn errors_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<StoreError>();
    }
}
