//! The work folders of the demo and the benchmark: made fresh for each
//! run, but never at the cost of a folder someone else filled.
//!
//! A folder this crate prepared carries a marker file. A folder is emptied
//! only when it carries the marker; a folder that exists, is not empty and
//! has no marker is refused, so `--dir /var/lib/ifrelay` can never erase a
//! box's records (issue 6, R-REC-1).

use std::io;
use std::path::{Path, PathBuf};

/// The marker file a prepared work folder carries.
pub const MARKER: &str = ".ifrelay-testkit";

/// Why a work folder could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkDirError {
    /// The folder holds files this crate did not make.
    #[error(
        "{} is not empty and was not made by the demo or benchmark (no {MARKER} file); \
         choose another folder or empty it yourself",
        path.display()
    )]
    Foreign { path: PathBuf },
    /// Creating, listing or emptying the folder failed.
    #[error("cannot prepare the work folder {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Makes `dir` an empty work folder carrying the marker: created when
/// missing, emptied when it carries the marker, used as it is when empty.
///
/// # Errors
/// [`WorkDirError::Foreign`] for a non-empty folder without the marker;
/// [`WorkDirError::Io`] when the file system refuses.
pub fn prepare(dir: &Path) -> Result<(), WorkDirError> {
    let io = |source| WorkDirError::Io {
        path: dir.to_owned(),
        source,
    };
    if dir.exists() {
        let marked = dir.join(MARKER).is_file();
        let mut entries = std::fs::read_dir(dir).map_err(io)?;
        if !marked && entries.next().is_some() {
            return Err(WorkDirError::Foreign {
                path: dir.to_owned(),
            });
        }
        if marked {
            for entry in std::fs::read_dir(dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path).map_err(io)?;
                } else {
                    std::fs::remove_file(&path).map_err(io)?;
                }
            }
        }
    } else {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(
        dir.join(MARKER),
        "made by ifrelay-demo or ifrelay-bench; emptied by their next run\n",
    )
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_with_foreign_files_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let records = dir.path().join("ifrelay.redb");
        std::fs::write(&records, b"records").expect("write");
        let err = prepare(dir.path()).expect_err("foreign folder");
        assert!(matches!(err, WorkDirError::Foreign { .. }), "{err}");
        assert_eq!(std::fs::read(&records).expect("still there"), b"records");
    }

    #[test]
    fn a_marked_folder_is_emptied_and_a_missing_one_made() {
        let dir = tempfile::tempdir().expect("temp dir");
        let work = dir.path().join("demo");
        prepare(&work).expect("made");
        assert!(work.join(MARKER).is_file());
        std::fs::create_dir(work.join("131016")).expect("sub");
        std::fs::write(work.join("131016/ifrelay.redb"), b"x").expect("write");
        prepare(&work).expect("emptied");
        assert!(!work.join("131016").exists());
        assert!(work.join(MARKER).is_file());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        prepare(&empty).expect("empty folder is used");
    }
}
