//! [`Shared`]: the database handle the writer and every
//! [`crate::StoreReader`] share, and the flag that asks the writer to reopen
//! the file.
//!
//! Invariants: the slot holds the handle of the last successful (re)open,
//! or `None` while the writer reopens the file and once the
//! [`crate::Store`] was dropped; only the writer fills or empties it.
//! Anyone who sees redb latch an I/O error raises the flag; only a
//! successful reopen lowers it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use redb::Database;

use crate::error::StoreError;

/// The database handle shared by the writer and every reader.
#[derive(Debug)]
pub(crate) struct Shared {
    /// `None` while the writer reopens the file after an I/O error, and
    /// after the store was dropped.
    slot: RwLock<Option<Arc<Database>>>,
    /// Set by anyone who saw redb latch an I/O error.
    needs_reopen: AtomicBool,
}

impl Shared {
    pub(crate) fn new(db: Database) -> Self {
        Shared {
            slot: RwLock::new(Some(Arc::new(db))),
            needs_reopen: AtomicBool::new(false),
        }
    }

    /// The current handle.
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Unavailable)
    }

    /// Notes an error that requires the file to be reopened.
    pub(crate) fn track<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            if e.needs_reopen() {
                self.needs_reopen.store(true, Ordering::Release);
            }
        }
        result
    }

    /// Whether an I/O error was seen since the last (re)open.
    pub(crate) fn needs_reopen_now(&self) -> bool {
        self.needs_reopen.load(Ordering::Acquire)
    }

    /// Raises or lowers the reopen flag; lowered only by a successful
    /// reopen.
    pub(crate) fn set_needs_reopen(&self, on: bool) {
        self.needs_reopen.store(on, Ordering::Release);
    }

    /// Replaces the handle; `None` closes the file once no reader is in
    /// the middle of a call.
    pub(crate) fn set(&self, db: Option<Arc<Database>>) {
        *self.slot.write().unwrap_or_else(PoisonError::into_inner) = db;
    }
}
