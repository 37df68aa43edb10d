//! The store's folder: the directory of `store.path`, which holds the redb
//! file and the box's signing key (`src/identity.rs`).
//!
//! Invariant: when the box creates the folder it does so with mode 0700
//! (records are personal data, the key is secret), and only the last
//! component: a missing parent is a mistake to report, not a tree to make.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// The folder holding the store file `store_path` (`.` for a bare file
/// name).
pub fn of(store_path: &Path) -> &Path {
    match store_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Creates `dir` with mode 0700 when it is missing and its parent exists;
/// returns whether it created it.
///
/// # Errors
/// The I/O error of creating it (its parent missing, not writable, or a
/// file in the way).
pub fn ensure(dir: &Path) -> io::Result<bool> {
    if dir.is_dir() {
        return Ok(false);
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "created the store's directory");
            Ok(true)
        }
        // Another process (`ifrelay identity`, a second start) was quicker.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(e),
    }
}
