//! Storage that fails on command, for tests and fuzz targets (cargo
//! feature `fault-injection`; the firmware never enables it).
//!
//! - [`FaultSwitch`]: a cloneable handle that decides which writes, syncs
//!   and reads fail, changed at any time from any thread — a full disk
//!   until cleared, I/O errors until cleared, or just the next sync or
//!   write (or the n-th from now).
//! - [`FaultyBackend`]: a [`redb::StorageBackend`] that asks a switch before
//!   every write, `set_len`, sync and read, and passes what it lets through
//!   to any other backend (a [`redb::backends::FileBackend`] for tests on a
//!   real file, a [`MemoryFile`] for fuzzing).
//! - [`MemoryFile`]: a store file in memory whose clones share the bytes,
//!   so [`crate::Store`] can reopen it after an injected I/O error exactly
//!   as it reopens a real file.
//!
//! Open a store on them with [`crate::Store::open_with_faults`] (memory) or
//! [`crate::Store::open_with_backend`] (any backend).
//!
//! Invariants: an injected fault changes nothing (a refused write writes
//! no byte, a refused `set_len` keeps the length); what passes reaches the
//! inner backend unchanged. A [`MemoryFile`] refuses a second whole-file
//! lock while one handle holds it, so two redb handles can never write the
//! same memory (the file-lock behaviour the store's reopen relies on).

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::{fmt, io};

use redb::{BackendError, StorageBackend};

/// A countdown that is off at this value.
const DISARMED: u64 = u64::MAX;

/// Decides which operations of a [`FaultyBackend`] fail. Clones share the
/// same switches, so a test keeps one clone and the backend another.
#[derive(Clone, Default)]
pub struct FaultSwitch {
    faults: Arc<Faults>,
}

struct Faults {
    disk_full: AtomicBool,
    write_errors: AtomicBool,
    sync_errors: AtomicBool,
    read_errors: AtomicBool,
    /// Writes still to pass before one fails; [`DISARMED`] when off.
    write_countdown: AtomicU64,
    /// Syncs still to pass before one fails; [`DISARMED`] when off.
    sync_countdown: AtomicU64,
    injected: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            disk_full: AtomicBool::new(false),
            write_errors: AtomicBool::new(false),
            sync_errors: AtomicBool::new(false),
            read_errors: AtomicBool::new(false),
            write_countdown: AtomicU64::new(DISARMED),
            sync_countdown: AtomicU64::new(DISARMED),
            injected: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for FaultSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.faults;
        f.debug_struct("FaultSwitch")
            .field("disk_full", &s.disk_full.load(Ordering::SeqCst))
            .field("write_errors", &s.write_errors.load(Ordering::SeqCst))
            .field("sync_errors", &s.sync_errors.load(Ordering::SeqCst))
            .field("read_errors", &s.read_errors.load(Ordering::SeqCst))
            .field("injected", &s.injected.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl FaultSwitch {
    /// A switch with every fault off.
    pub fn new() -> Self {
        Self::default()
    }

    /// While on, every write and every `set_len` that grows the storage
    /// fails with [`io::ErrorKind::StorageFull`] (`ENOSPC`), which
    /// [`crate::StoreError::is_storage_full`] recognises.
    pub fn set_disk_full(&self, on: bool) {
        self.faults.disk_full.store(on, Ordering::SeqCst);
    }

    /// While on, every write and `set_len` fails with an I/O error (`EIO`).
    pub fn set_write_errors(&self, on: bool) {
        self.faults.write_errors.store(on, Ordering::SeqCst);
    }

    /// While on, every sync fails with an I/O error: the outcome of the
    /// commit on disk is then unknown, as after a real failed fsync.
    pub fn set_sync_errors(&self, on: bool) {
        self.faults.sync_errors.store(on, Ordering::SeqCst);
    }

    /// While on, every read fails with an I/O error.
    pub fn set_read_errors(&self, on: bool) {
        self.faults.read_errors.store(on, Ordering::SeqCst);
    }

    /// The next sync fails once; later ones pass.
    pub fn fail_next_sync(&self) {
        self.fail_sync_after(0);
    }

    /// The sync after the next `n` fails once (`0`: the next one).
    pub fn fail_sync_after(&self, n: u64) {
        self.faults
            .sync_countdown
            .store(n.min(DISARMED - 1), Ordering::SeqCst);
    }

    /// The next write fails once with an I/O error; later ones pass.
    pub fn fail_next_write(&self) {
        self.fail_write_after(0);
    }

    /// The write after the next `n` fails once (`0`: the next one).
    pub fn fail_write_after(&self, n: u64) {
        self.faults
            .write_countdown
            .store(n.min(DISARMED - 1), Ordering::SeqCst);
    }

    /// Turns every fault off, pending one-shot faults included.
    pub fn clear(&self) {
        let f = &self.faults;
        f.disk_full.store(false, Ordering::SeqCst);
        f.write_errors.store(false, Ordering::SeqCst);
        f.sync_errors.store(false, Ordering::SeqCst);
        f.read_errors.store(false, Ordering::SeqCst);
        f.write_countdown.store(DISARMED, Ordering::SeqCst);
        f.sync_countdown.store(DISARMED, Ordering::SeqCst);
    }

    /// How many operations failed because of this switch so far.
    pub fn injected(&self) -> u64 {
        self.faults.injected.load(Ordering::SeqCst)
    }

    fn inject(&self, error: io::Error) -> Result<(), io::Error> {
        self.faults.injected.fetch_add(1, Ordering::SeqCst);
        Err(error)
    }

    /// Whether a countdown reached zero now (and disarms it then).
    fn fires(countdown: &AtomicU64) -> bool {
        let mut fired = false;
        // The closure never returns None, so the update cannot fail.
        let _ = countdown.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| match v {
            DISARMED => Some(DISARMED),
            0 => {
                fired = true;
                Some(DISARMED)
            }
            n => Some(n - 1),
        });
        fired
    }

    fn check_write(&self) -> Result<(), io::Error> {
        let f = &self.faults;
        if f.write_errors.load(Ordering::SeqCst) {
            return self.inject(eio("write"));
        }
        if f.disk_full.load(Ordering::SeqCst) {
            return self.inject(enospc());
        }
        if Self::fires(&f.write_countdown) {
            return self.inject(eio("write"));
        }
        Ok(())
    }

    fn check_set_len(&self, grows: bool) -> Result<(), io::Error> {
        let f = &self.faults;
        if f.write_errors.load(Ordering::SeqCst) {
            return self.inject(eio("set_len"));
        }
        if grows && f.disk_full.load(Ordering::SeqCst) {
            return self.inject(enospc());
        }
        Ok(())
    }

    fn check_sync(&self) -> Result<(), io::Error> {
        let f = &self.faults;
        if f.sync_errors.load(Ordering::SeqCst) || Self::fires(&f.sync_countdown) {
            return self.inject(eio("sync"));
        }
        Ok(())
    }

    fn check_read(&self) -> Result<(), io::Error> {
        if self.faults.read_errors.load(Ordering::SeqCst) {
            return self.inject(eio("read"));
        }
        Ok(())
    }
}

fn enospc() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "injected fault: no space left on device",
    )
}

fn eio(op: &str) -> io::Error {
    io::Error::other(format!("injected fault: I/O error in {op}"))
}

/// A storage backend that fails whatever its [`FaultSwitch`] says and
/// passes everything else to `inner`. Locks always go to `inner`.
#[derive(Debug)]
pub struct FaultyBackend<B> {
    inner: B,
    switch: FaultSwitch,
}

impl<B: StorageBackend> FaultyBackend<B> {
    /// Wraps `inner`, failing operations when `switch` says so.
    pub fn new(inner: B, switch: FaultSwitch) -> Self {
        FaultyBackend { inner, switch }
    }
}

impl<B: StorageBackend> StorageBackend for FaultyBackend<B> {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.switch.check_read()?;
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.switch.check_set_len(len > self.inner.len()?)?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.switch.check_sync()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.switch.check_write()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }

    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }

    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }

    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }

    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }

    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

/// Who holds the whole-file lock of a [`MemoryFile`].
#[derive(Debug, Default)]
enum Holders {
    #[default]
    Free,
    Exclusive(u64),
    Shared(BTreeSet<u64>),
}

#[derive(Default)]
struct Memory {
    bytes: RwLock<Vec<u8>>,
    holders: Mutex<Holders>,
    next_handle: AtomicU64,
    /// The companion file holding the store's redo log.
    log: std::sync::OnceLock<Arc<Memory>>,
}

/// A store file in memory. Every clone is another handle on the same
/// bytes (like opening the same path again), with its own locks: a clone
/// cannot take the whole-file lock while another handle holds it, so redb
/// refuses a second open of the same memory with "already open", as it
/// does for a file.
///
/// Supports only whole-file locks (level 2 of [`redb::StorageBackend`]),
/// hence only redb's exclusive mode: [`crate::Store::open_with_backend`]
/// uses it. The blocking lock calls fail instead of waiting.
pub struct MemoryFile {
    memory: Arc<Memory>,
    handle: u64,
}

impl MemoryFile {
    /// An empty file: opening a store on it creates one.
    pub fn new() -> Self {
        Self::from_bytes(Vec::new())
    }

    /// A file holding `bytes`, e.g. a copy taken with
    /// [`MemoryFile::to_vec`] to model what a crash left.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let memory = Memory {
            bytes: RwLock::new(bytes),
            ..Memory::default()
        };
        MemoryFile {
            memory: Arc::new(memory),
            handle: 0,
        }
    }

    /// A handle on the companion memory file that holds the redo log of a
    /// store opened on this one ([`crate::Store::open_with_faults`]), so
    /// reopening the same memory finds its log again.
    pub fn log(&self) -> MemoryFile {
        let log = self.memory.log.get_or_init(|| Arc::new(Memory::default()));
        let handle = log.next_handle.fetch_add(1, Ordering::SeqCst) + 1;
        MemoryFile {
            memory: Arc::clone(log),
            handle,
        }
    }

    /// A new memory file holding a copy of these bytes and of the
    /// companion log's: what a power cut leaves of a store opened with
    /// [`crate::Store::open_with_faults`] (both media keep every write,
    /// synced or not; redb then recovers to its last durable commit and
    /// the log's replay does the rest).
    pub fn crash_copy(&self) -> MemoryFile {
        let copy = MemoryFile::from_bytes(self.to_vec());
        let log = self.log().to_vec();
        copy.log().bytes_mut().extend_from_slice(&log);
        copy
    }

    /// A copy of the bytes as they are now, synced or not.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes().clone()
    }

    /// The current size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes().len() as u64
    }

    fn bytes(&self) -> std::sync::RwLockReadGuard<'_, Vec<u8>> {
        self.memory
            .bytes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<u8>> {
        self.memory
            .bytes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, Holders> {
        self.memory
            .holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self) {
        let mut holders = self.holders();
        match &mut *holders {
            Holders::Exclusive(h) if *h == self.handle => *holders = Holders::Free,
            Holders::Shared(set) => {
                set.remove(&self.handle);
                if set.is_empty() {
                    *holders = Holders::Free;
                }
            }
            _ => {}
        }
    }

    /// Takes the whole-file lock; `Ok(false)` when another handle holds it
    /// in a conflicting way.
    fn try_lock_whole(&self, shared: bool) -> bool {
        let mut holders = self.holders();
        match (&mut *holders, shared) {
            (Holders::Free, false) => {
                *holders = Holders::Exclusive(self.handle);
                true
            }
            (Holders::Free, true) => {
                *holders = Holders::Shared(BTreeSet::from([self.handle]));
                true
            }
            (Holders::Exclusive(h), _) => *h == self.handle,
            (Holders::Shared(set), true) => {
                set.insert(self.handle);
                true
            }
            (Holders::Shared(set), false) => {
                if set.len() == 1 && set.contains(&self.handle) {
                    *holders = Holders::Exclusive(self.handle);
                    true
                } else {
                    false
                }
            }
        }
    }

    fn out_of_range() -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "read past the end of the memory file",
        )
    }
}

impl Default for MemoryFile {
    fn default() -> Self {
        Self::new()
    }
}

/// Another handle on the same bytes, holding no lock.
impl Clone for MemoryFile {
    fn clone(&self) -> Self {
        let handle = self.memory.next_handle.fetch_add(1, Ordering::SeqCst) + 1;
        MemoryFile {
            memory: Arc::clone(&self.memory),
            handle,
        }
    }
}

/// A handle that goes away releases its locks, as closing a file does.
impl Drop for MemoryFile {
    fn drop(&mut self) {
        self.release();
    }
}

impl fmt::Debug for MemoryFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryFile")
            .field("handle", &self.handle)
            .field("size", &self.size())
            .finish()
    }
}

/// Whether a lock range covers the whole storage, the only kind a
/// [`MemoryFile`] supports.
fn is_whole(start: Bound<u64>, end: Bound<u64>) -> bool {
    matches!(start, Bound::Unbounded | Bound::Included(0)) && end == Bound::Unbounded
}

impl StorageBackend for MemoryFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.size())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let bytes = self.bytes();
        let start = usize::try_from(offset).map_err(|_| Self::out_of_range())?;
        let end = start
            .checked_add(out.len())
            .filter(|end| *end <= bytes.len())
            .ok_or_else(Self::out_of_range)?;
        out.copy_from_slice(&bytes[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        self.bytes_mut().resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    /// Writes past the end extend the file, as they do on a real file.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut bytes = self.bytes_mut();
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let end = start
            .checked_add(data.len())
            .ok_or_else(|| io::Error::other("offset too large"))?;
        if end > bytes.len() {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.release();
        Ok(())
    }

    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        if !is_whole(s, e) {
            return Err(BackendError::Unsupported);
        }
        Ok(self.try_lock_whole(false))
    }

    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        if !is_whole(s, e) {
            return Err(BackendError::Unsupported);
        }
        Ok(self.try_lock_whole(true))
    }

    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        match self.try_lock_range(s, e)? {
            true => Ok(()),
            false => Err(BackendError::Io(would_block())),
        }
    }

    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        match self.try_lock_shared_range(s, e)? {
            true => Ok(()),
            false => Err(BackendError::Io(would_block())),
        }
    }

    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        if !is_whole(s, e) {
            return Err(BackendError::Unsupported);
        }
        self.release();
        Ok(())
    }
}

fn would_block() -> io::Error {
    io::Error::new(
        io::ErrorKind::WouldBlock,
        "the memory file is locked by another handle",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHOLE: (Bound<u64>, Bound<u64>) = (Bound::Unbounded, Bound::Unbounded);

    #[test]
    fn clones_share_bytes_but_not_locks() {
        let a = MemoryFile::new();
        let b = a.clone();
        a.write(0, b"redb").expect("write");
        let mut out = [0u8; 4];
        b.read(0, &mut out).expect("read");
        assert_eq!(&out, b"redb");

        assert!(a.try_lock_range(WHOLE.0, WHOLE.1).expect("lock"));
        assert!(!b.try_lock_range(WHOLE.0, WHOLE.1).expect("lock"));
        assert!(!b.try_lock_shared_range(WHOLE.0, WHOLE.1).expect("lock"));
        drop(a);
        assert!(b.try_lock_range(WHOLE.0, WHOLE.1).expect("lock"));
        assert!(matches!(
            b.try_lock_range(Bound::Included(5), Bound::Included(5)),
            Err(BackendError::Unsupported)
        ));
    }

    #[test]
    fn one_shot_faults_fire_once_and_clear_stops_everything() {
        let switch = FaultSwitch::new();
        let backend = FaultyBackend::new(MemoryFile::new(), switch.clone());
        switch.fail_sync_after(1);
        backend.sync_data().expect("first sync passes");
        assert!(backend.sync_data().is_err());
        backend.sync_data().expect("later syncs pass");

        switch.fail_next_write();
        assert!(backend.write(0, b"x").is_err());
        backend.write(0, b"x").expect("next write passes");

        switch.set_disk_full(true);
        let err = backend.write(0, b"y").expect_err("full");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(backend.set_len(1 << 20).is_err());
        backend.set_len(0).expect("shrinking passes on a full disk");
        switch.set_read_errors(true);
        assert!(backend.read(0, &mut []).is_err());
        assert_eq!(switch.injected(), 5);

        switch.clear();
        backend.write(0, b"z").expect("cleared");
        backend.sync_data().expect("cleared");
        let mut out = [0u8; 1];
        backend.read(0, &mut out).expect("cleared");
        assert_eq!(&out, b"z");
    }
}
