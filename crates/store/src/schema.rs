//! The schema checks shared by the writer's open ([`crate::Store::open`])
//! and the read-only open ([`crate::ReadOnlyStore::open`]), so both refuse
//! the same files with the same errors.
//!
//! Invariant: a file whose schema version is not exactly
//! [`tables::SCHEMA_VERSION`] is never read as if it were (a version-1
//! file is migrated by the writer, read without indexes by a reader); a table of an
//! unexpected type is a foreign layout ([`StoreError::SchemaUnknown`]),
//! not a redb failure.

use crate::error::{db, StoreError};
use crate::tables;

/// Checks the schema version stored in [`tables::META`].
///
/// # Errors
/// [`StoreError::SchemaTooNew`] for a later version,
/// [`StoreError::SchemaUnknown`] for any other version than the current.
pub(crate) fn check_version(found: u64) -> Result<(), StoreError> {
    match found {
        tables::SCHEMA_VERSION => Ok(()),
        found if found > tables::SCHEMA_VERSION => Err(StoreError::SchemaTooNew {
            found,
            supported: tables::SCHEMA_VERSION,
        }),
        found => Err(StoreError::SchemaUnknown {
            detail: format!("schema version {found}"),
        }),
    }
}

/// Checks the schema version for a read-only open: the current version,
/// or the one before the search indexes, whose chains read the same (its
/// searches that need an index answer [`StoreError::NeedsMigration`]).
///
/// # Errors
/// As [`check_version`].
pub(crate) fn check_readable(found: u64) -> Result<(), StoreError> {
    if found == tables::SCHEMA_VERSION_WITHOUT_SEARCH_INDEXES {
        return Ok(());
    }
    check_version(found)
}

/// Maps a failure to open a table: a table of another type or kind means
/// the file has a layout this firmware does not know.
pub(crate) fn table_error(e: redb::TableError) -> StoreError {
    match e {
        redb::TableError::TableTypeMismatch { .. }
        | redb::TableError::TableIsMultimap(_)
        | redb::TableError::TableIsNotMultimap(_) => StoreError::SchemaUnknown {
            detail: e.to_string(),
        },
        other => db("open table")(other),
    }
}
