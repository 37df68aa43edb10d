//! [`ReadOnlyStore`]: opening a store file to inspect it, without ever
//! writing it — the entry point of `ifrelay verify-store` and of any other
//! inspection of a store on disk (STYLE: verifiers never write).
//!
//! Invariants:
//! - The file is opened `O_RDONLY` and handed to redb's read-only open, so
//!   nothing can create, truncate, repair or write it: the kernel refuses
//!   writes through the descriptor, and redb's read-only handle has no
//!   write path. A missing file is an error, never created.
//! - The only effect on the system is advisory byte-range locks (shared),
//!   with which redb's single-writer protocol announces the reader: a
//!   writer [`crate::Store`] in this or another process keeps every page of
//!   the snapshot being read from reuse until the read ends. So a verifier
//!   may run while the box runs and always sees one committed snapshot,
//!   never pages a later commit overwrote.
//! - A file redb would have to repair first (left by a crash, no writer
//!   live) is refused ([`StoreError::NeedsRepair`]); a file held by a
//!   program that does not share it is refused ([`StoreError::InUse`]).
//! - Problems with the path or the file (missing, a directory, empty, not
//!   redb, another schema) are told apart before anything is read through
//!   redb, each with its own error.
//! - No row of a file that no box has open is read before every page of
//!   its last commit matched its checksum ([`crate::integrity`]): a
//!   damaged file is [`StoreError::Damaged`], never a panic inside redb.
//!   Opening the handle itself reads only the header, which redb checks
//!   field by field. A file a box has open is not page-checked (the check
//!   cannot run beside its writer, see `integrity`; the box checked the
//!   file when it opened it): [`ReadOnlyStore::pages_checked`] says which.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use redb::backends::FileBackend;
use redb::{ConcurrencyMode, DatabaseError, ReadOnlyDatabase, ReadableDatabase, StorageError};

use crate::chain::ChainReport;
use crate::error::{db, StoreError};
use crate::index;
use crate::integrity;
use crate::model::{AccessFilter, ChainedAccess, ChainedRecord, PageCursor, RecordFilter};
use crate::schema;
use crate::tables;
use crate::verify;

/// Page cache of a read-only open: verification reads every row once, so a
/// small cache keeps the verifier light beside the running box.
const CACHE_BYTES: usize = 16 << 20;

/// A store file opened for inspection only.
pub struct ReadOnlyStore {
    db: ReadOnlyDatabase,
    path: PathBuf,
    pages_checked: bool,
}

impl core::fmt::Debug for ReadOnlyStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadOnlyStore")
            .field("path", &self.path)
            .field("pages_checked", &self.pages_checked)
            .finish_non_exhaustive()
    }
}

impl ReadOnlyStore {
    /// Opens the store file at `path` read-only, also while a box has it
    /// open and commits, and checks that it is a store of this firmware's
    /// schema.
    ///
    /// # Errors
    /// - [`StoreError::NotFound`]: nothing at `path`;
    /// - [`StoreError::NotAFile`]: a directory or other non-regular file;
    /// - [`StoreError::EmptyFile`]: a file of zero bytes;
    /// - [`StoreError::NotAStore`]: a file that is not a redb database;
    /// - [`StoreError::Unreadable`]: the file cannot be opened or read;
    /// - [`StoreError::NeedsRepair`]: left unclean by a crash, no box has it
    ///   open;
    /// - [`StoreError::InUse`]: held by a program that does not share it;
    /// - [`StoreError::Damaged`]: a redb file whose header or pages do not
    ///   match their checksums (a byte changed on disk);
    /// - [`StoreError::SchemaTooNew`], [`StoreError::SchemaUnknown`]: a redb
    ///   file of a newer firmware or of another program;
    /// - [`StoreError::Db`]: redb failed otherwise (I/O).
    ///
    /// Cost: the integrity check reads every page of the last commit once
    /// (docs/architecture.md, "A damaged store").
    pub fn open(path: &Path) -> Result<ReadOnlyStore, StoreError> {
        let owned = || path.to_path_buf();
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            // A component that is a file: nothing exists at the path.
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
                StoreError::NotFound { path: owned() }
            }
            _ => StoreError::Unreadable {
                path: owned(),
                source: e,
            },
        })?;
        if meta.is_dir() {
            return Err(StoreError::NotAFile {
                path: owned(),
                what: "a directory",
            });
        }
        if !meta.is_file() {
            return Err(StoreError::NotAFile {
                path: owned(),
                what: "not a regular file",
            });
        }

        let db = pin(path)?;
        let live = integrity::writer_live(path).map_err(|source| StoreError::Unreadable {
            path: owned(),
            source,
        })?;
        if !live {
            integrity::check_path(path)?;
        }
        check_schema(&db)?;
        Ok(ReadOnlyStore {
            db,
            path: owned(),
            pages_checked: !live,
        })
    }

    /// The path this store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether every page of the last commit was checked against its
    /// checksum at the open: always, unless a box had the file open (it
    /// checked the file when it opened it, and the check cannot run beside
    /// a writer).
    pub fn pages_checked(&self) -> bool {
        self.pages_checked
    }

    /// Walks both chains over one committed snapshot and reports counts,
    /// head hashes and every defect found (R-SEC-6), exactly as
    /// [`crate::StoreReader::verify_chains`] does inside the box. A defect
    /// is not an `Err`. A box committing meanwhile does not disturb the
    /// walk: its commits are simply not in the snapshot.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the file cannot be read.
    pub fn verify_chains(&self) -> Result<ChainReport, StoreError> {
        verify::chains(&self.begin_read()?)
    }

    /// A read transaction over the last commit, for the paged reads of
    /// exports.
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db.begin_read().map_err(db("begin read transaction"))
    }
}

impl ReadOnlyStore {
    /// One page of the records matching `filter`, exactly as
    /// [`crate::StoreReader::search_records_page`] answers inside the box.
    ///
    /// # Errors
    /// As [`crate::StoreReader::search_records_page`], and
    /// [`StoreError::NeedsMigration`] when the search needs an index and
    /// the file was written by the firmware before the indexes (schema
    /// version 1; start the box once to migrate it).
    pub fn search_records_page(
        &self,
        filter: &RecordFilter,
        cursor: PageCursor,
        limit: usize,
    ) -> Result<(Vec<ChainedRecord>, Option<PageCursor>), StoreError> {
        let txn = self.db.begin_read().map_err(db("begin read transaction"))?;
        index::search_records(&txn, filter, cursor, limit)
    }

    /// One page of the access-log entries matching `filter`, as
    /// [`crate::StoreReader::search_access_page`].
    ///
    /// # Errors
    /// As [`ReadOnlyStore::search_records_page`].
    pub fn search_access_page(
        &self,
        filter: &AccessFilter,
        cursor: PageCursor,
        limit: usize,
    ) -> Result<(Vec<ChainedAccess>, Option<PageCursor>), StoreError> {
        let txn = self.db.begin_read().map_err(db("begin read transaction"))?;
        index::search_access(&txn, filter, cursor, limit)
    }
}

/// Refuses a damaged file before a writer ([`crate::Store::open`]) opens
/// it: a writer's open trusts a cleanly closed file, and on a damaged one
/// it may panic or repair what it should keep. Checks every existing redb
/// file that can be checked: a clean one, and one a crash left unclean
/// (the check repairs it in memory as the open will on disk, so a crash is
/// not damage). Anything else — no file, an empty one, not redb, held by
/// another program or a running box — is left to the writer's open to
/// create or refuse.
///
/// # Errors
/// [`StoreError::Damaged`] for a damaged file; [`StoreError::Unreadable`]
/// or [`StoreError::Db`] when the check cannot read it.
pub(crate) fn vet(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() > 0 => {}
        _ => return Ok(()),
    }
    match pin(path) {
        // Held by a box that is running: its open refuses a second writer.
        Ok(_) if integrity::writer_live(path).unwrap_or(true) => Ok(()),
        Ok(_) | Err(StoreError::NeedsRepair { .. }) => integrity::check_path(path),
        Err(e @ StoreError::Damaged { .. }) => Err(e),
        Err(_) => Ok(()),
    }
}

/// Opens `path` read-only as a redb database without reading any page
/// beyond the header: the handle a verifier holds so that a box writing
/// the file meanwhile keeps the pages of its snapshot from reuse.
///
/// # Errors
/// As [`ReadOnlyStore::open`], less the schema and page checks.
pub(crate) fn pin(path: &Path) -> Result<ReadOnlyDatabase, StoreError> {
    match open_read_only(path, ConcurrencyMode::SingleWriter) {
        // No byte-range locks on this file system: the writer fell back
        // to an exclusive open too, which redb's exclusive read-only
        // open (whole-file lock, shared) respects.
        Err(StoreError::Db {
            source: redb::Error::Unsupported,
            ..
        }) => open_read_only(path, ConcurrencyMode::ExclusiveWriter),
        other => other,
    }
}

/// Opens `path` `O_RDONLY`, checks the redb signature, and opens the
/// database read-only in `mode`.
fn open_read_only(path: &Path, mode: ConcurrencyMode) -> Result<ReadOnlyDatabase, StoreError> {
    let owned = || path.to_path_buf();
    let unreadable = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => StoreError::NotFound { path: owned() },
        _ => StoreError::Unreadable {
            path: owned(),
            source,
        },
    };
    // `File::open` is read-only: the descriptor cannot write.
    let mut file = File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    if len == 0 {
        return Err(StoreError::EmptyFile { path: owned() });
    }
    let mut signature = [0u8; integrity::REDB_SIGNATURE.len()];
    match file.read_exact(&mut signature) {
        Ok(()) if signature == integrity::REDB_SIGNATURE => {}
        Ok(()) => {
            return Err(match integrity::damaged_signature(&signature) {
                Some(detail) => StoreError::Damaged {
                    path: owned(),
                    detail,
                },
                None => StoreError::NotAStore { path: owned() },
            })
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(StoreError::NotAStore { path: owned() })
        }
        Err(e) => return Err(unreadable(e)),
    }
    // redb reads at explicit offsets, so the cursor moved by the signature
    // read does not matter.
    let backend = FileBackend::new(file).map_err(|e| open_error(path, e))?;
    let mut builder = redb::Builder::new();
    builder
        .set_cache_size(CACHE_BYTES)
        .set_concurrency_mode(mode);
    builder
        .open_read_only_with_backend(backend)
        .map_err(|e| open_error(path, e))
}

/// Sorts redb's refusals of a read-only open into what the operator does
/// about them.
fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::RepairAborted => StoreError::NeedsRepair {
            path: path.to_path_buf(),
        },
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::InUse {
                path: path.to_path_buf(),
                source: e,
            }
        }
        DatabaseError::Storage(StorageError::Unsupported) => StoreError::Db {
            op: "open the store file read-only",
            source: redb::Error::Unsupported,
        },
        other => match integrity::corruption(&other) {
            Some(detail) => StoreError::Damaged {
                path: path.to_path_buf(),
                detail,
            },
            None => db("open the store file read-only")(other),
        },
    }
}

/// Refuses a redb file that is not a store of this firmware's schema.
fn check_schema(database: &ReadOnlyDatabase) -> Result<(), StoreError> {
    let txn = database
        .begin_read()
        .map_err(db("begin read transaction"))?;
    let meta = match txn.open_table(tables::META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(StoreError::SchemaUnknown {
                detail: "no meta table".into(),
            })
        }
        Err(e) => return Err(schema::table_error(e)),
    };
    let version = meta
        .get(tables::SCHEMA_VERSION_KEY)
        .map_err(db("read schema version"))?
        .map(|g| g.value());
    match version {
        Some(found) => schema::check_readable(found),
        None => Err(StoreError::SchemaUnknown {
            detail: "no schema version".into(),
        }),
    }
}
