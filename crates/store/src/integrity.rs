//! The integrity check of a store file: every page of its committed trees
//! against the checksums redb keeps, without writing the file — what
//! `ifrelay verify-store` runs before it reads a row, and what
//! [`crate::Store::open`] runs before the box trusts a file.
//!
//! redb trusts a file that was closed cleanly: a plain open and plain reads
//! follow page numbers and lengths as stored, and a byte flipped on disk
//! can make them panic (in a release build of the firmware, with
//! `panic = "abort"`, that ends the process). redb's own check
//! ([`redb::Builder::set_check_integrity_on_open`]) verifies the checksum of
//! every page reachable from the last commit (the header's commit slots
//! carry their own checksums) and reports a mismatch as
//! [`redb::StorageError::Corrupted`] instead — but it repairs and commits
//! what it opens. So it runs here on an [`Overlay`]: the file opened
//! `O_RDONLY`, with whatever redb writes kept in memory and dropped
//! afterwards. The file is never written, also when it is damaged: it stays
//! as it was for the auditor.
//!
//! Invariants:
//! - Nothing here writes, truncates or locks the file; the descriptor is
//!   read-only.
//! - Memory grows only by what redb writes during the check (commit slots
//!   and the allocator state it rebuilds: a few pages), plus the page
//!   cache of [`CHECK_CACHE_BYTES`].
//! - A file left unclean by a crash is not corruption: redb's check repairs
//!   it (in the overlay) the way the box's open repairs it for real, and it
//!   passes. With two-phase commit, which the store always uses, a commit
//!   slot is only ever primary after the pages it names were flushed, so a
//!   primary that does not verify is damage, never a crash.
//! - The check reads the commit named by the header when it starts. On a
//!   file a box is writing, pages the box frees meanwhile may be reused
//!   under it — redb's read locks keep a reader's data pages, not the
//!   bookkeeping pages the check also reads — so the check is only run on
//!   a file no box has open ([`writer_live`] tells): the box checked its
//!   file when it opened it, and from then on it is the file's writer. A
//!   check that finds damage while the header changed meanwhile runs again
//!   before it is believed. One race remains: a box that opens the file
//!   and commits twice while a check reads it can make the check read
//!   recycled pages, and fail or panic. `ifrelay verify-store` therefore
//!   runs in a child process and tries once more when it dies (the box is
//!   then live and the check is skipped); a box's own check runs before it
//!   opens the file, when only a second box could race it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use redb::{DatabaseError, StorageBackend, StorageError};

use crate::error::{db, StoreError};

/// Page cache of the check: it reads every page once per pass, so a large
/// cache buys nothing, and a small one keeps the check light beside a
/// running box.
const CHECK_CACHE_BYTES: usize = 8 << 20;

/// How often a check that found damage runs again when the header changed
/// meanwhile (a box committed to the file while it was read).
const RECHECKS: usize = 3;

/// The first bytes of every redb file (redb's file format; it cannot change
/// without making every existing file unreadable).
pub(crate) const REDB_SIGNATURE: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Integrity {
    /// Every page of the committed trees matches its checksum.
    Intact,
    /// The file is damaged: redb's finding, as precise as redb says it.
    Corrupt(String),
}

/// Refuses a damaged file: checks every committed page of the redb file at
/// `path` against its checksum, reading the file only. A check that finds
/// damage while the file's header changed (a box committed meanwhile) runs
/// again, so a box writing the file is never reported damaged by a race.
///
/// # Errors
/// [`StoreError::Damaged`] for a damaged file; [`StoreError::Unreadable`]
/// when it cannot be read; [`StoreError::Db`] when redb fails for another
/// reason than damage.
pub(crate) fn check_path(path: &Path) -> Result<(), StoreError> {
    let unreadable = |source| StoreError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(unreadable)?;
    let mut attempt = 0;
    loop {
        let header = first_page(&file).map_err(unreadable)?;
        let overlay = Overlay::new(file.try_clone().map_err(unreadable)?).map_err(unreadable)?;
        let found = check_backend(overlay).map_err(|e| match e {
            DatabaseError::Storage(StorageError::Io(source)) => unreadable(source),
            other => db("check the store file")(other),
        })?;
        match found {
            Integrity::Intact => return Ok(()),
            Integrity::Corrupt(detail) => {
                attempt += 1;
                if attempt > RECHECKS || first_page(&file).map_err(unreadable)? == header {
                    return Err(StoreError::Damaged {
                        path: path.to_path_buf(),
                        detail,
                    });
                }
            }
        }
    }
}

/// Whether the header says a writer has the file open (redb's
/// "recovery required" flag, set from a writer's open until its clean
/// close). Meaningful once a read-only handle in the shared mode opened the
/// file: without a live writer, that open refuses a file with the flag set
/// ([`StoreError::NeedsRepair`]).
///
/// # Errors
/// The file cannot be read.
pub(crate) fn writer_live(path: &Path) -> io::Result<bool> {
    /// redb's file format: the god byte follows the signature; this bit is
    /// its "recovery required" flag.
    const RECOVERY_REQUIRED: u8 = 2;
    let mut god_byte = [0u8; 1];
    File::open(path)?.read_exact_at(&mut god_byte, REDB_SIGNATURE.len() as u64)?;
    Ok(god_byte[0] & RECOVERY_REQUIRED != 0)
}

/// The header page of the file, as far as the file reaches.
fn first_page(file: &File) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len().min(BLOCK);
    let mut page = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(&mut page, 0)?;
    Ok(page)
}

/// A signature that differs from redb's in exactly one byte: a redb file
/// whose first bytes were damaged, not some other file.
pub(crate) fn damaged_signature(found: &[u8; 9]) -> Option<String> {
    let mut differing = found
        .iter()
        .zip(REDB_SIGNATURE.iter())
        .enumerate()
        .filter(|(_, (a, b))| a != b);
    match (differing.next(), differing.next()) {
        (Some((at, _)), None) => Some(format!(
            "the redb signature at the start of the file is damaged at byte {at}"
        )),
        _ => None,
    }
}

/// Runs redb's integrity check on `backend`, which the check may write
/// (repairs, a commit): give it a copy or an [`Overlay`].
///
/// # Errors
/// redb's error when it fails for another reason than damage.
fn check_backend(backend: impl StorageBackend) -> Result<Integrity, DatabaseError> {
    let mut builder = redb::Builder::new();
    builder
        .set_cache_size(CHECK_CACHE_BYTES)
        .set_check_integrity_on_open(true);
    match builder.create_with_backend(backend) {
        Ok(db) => {
            // Closing writes the allocator state, into the overlay only; a
            // failure there says nothing about the file.
            let _ = db.close();
            Ok(Integrity::Intact)
        }
        Err(e) => match corruption(&e) {
            Some(detail) => Ok(Integrity::Corrupt(detail)),
            None => Err(e),
        },
    }
}

/// redb's finding when `e` says the file is damaged, in words staff can
/// act on where redb's own are about its internals.
pub(crate) fn corruption(e: &DatabaseError) -> Option<String> {
    match e {
        DatabaseError::Storage(StorageError::Corrupted(detail)) => Some(match detail.as_str() {
            "Primary is corrupted despite 2-phase commit" => {
                format!("a page of the last commit does not match its checksum (redb: {detail})")
            }
            "Primary commit slot is corrupted" => format!(
                "the header's record of the last commit does not match its checksum \
                 (redb: {detail})"
            ),
            _ => format!("redb: {detail}"),
        }),
        // The format version is part of the header, which the box's redb
        // wrote: any other value is a damaged header, not an old file.
        DatabaseError::UpgradeRequired(version) => {
            Some(format!("the header names file format version {version}"))
        }
        _ => None,
    }
}

/// Size of the blocks an [`Overlay`] keeps written bytes in.
const BLOCK: u64 = 4096;

/// A file seen through a copy-on-write layer: reads come from the file
/// unless redb wrote that block, writes stay in memory. The file is opened
/// read-only, so nothing can reach it.
#[derive(Debug)]
pub(crate) struct Overlay {
    file: File,
    state: Mutex<OverlayState>,
}

#[derive(Debug)]
struct OverlayState {
    /// The length redb sees.
    len: u64,
    /// Bytes of the file at or past this offset read as zero: redb
    /// shortened the storage below it once.
    file_visible: u64,
    /// Blocks redb wrote, by block number.
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl Overlay {
    /// An overlay over `file`, which it only reads.
    pub(crate) fn new(file: File) -> io::Result<Overlay> {
        let len = file.metadata()?.len();
        Ok(Overlay {
            file,
            state: Mutex::new(OverlayState {
                len,
                file_visible: len,
                blocks: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OverlayState> {
        // A panic while holding the lock cannot leave the state half
        // changed in a way that matters: every change is one assignment or
        // one block copy, and the overlay is thrown away after the check.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fills `out` with the bytes at `offset` of the file as far as it is
    /// visible, zeros past it.
    fn read_base(&self, visible: u64, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let from_file =
            usize::try_from(visible.saturating_sub(offset)).map_or(out.len(), |n| n.min(out.len()));
        let (head, tail) = out.split_at_mut(from_file);
        self.file.read_exact_at(head, offset)?;
        tail.fill(0);
        Ok(())
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read or write past the end of the store file",
    )
}

/// `offset + len` without overflow.
fn end_of(offset: u64, len: usize) -> io::Result<u64> {
    u64::try_from(len)
        .ok()
        .and_then(|len| offset.checked_add(len))
        .ok_or_else(out_of_range)
}

impl StorageBackend for Overlay {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.lock();
        let end = end_of(offset, out.len())?;
        if end > state.len {
            return Err(out_of_range());
        }
        self.read_base(state.file_visible, offset, out)?;
        if state.blocks.is_empty() || out.is_empty() {
            return Ok(());
        }
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        for (&n, block) in state.blocks.range(first..=last) {
            let block_start = n * BLOCK;
            let from = offset.max(block_start);
            let to = end.min(block_start + BLOCK);
            let (Ok(src), Ok(dst), Ok(count)) = (
                usize::try_from(from - block_start),
                usize::try_from(from - offset),
                usize::try_from(to - from),
            ) else {
                return Err(out_of_range());
            };
            out[dst..dst + count].copy_from_slice(&block[src..src + count]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.lock();
        if len < state.len {
            state.file_visible = state.file_visible.min(len);
            // Blocks past the new end go; the one it cuts keeps its head.
            let first_gone = len.div_ceil(BLOCK);
            state.blocks.split_off(&first_gone);
            if len % BLOCK != 0 {
                if let Some(block) = state.blocks.get_mut(&(len / BLOCK)) {
                    let keep = usize::try_from(len % BLOCK).map_err(|_| out_of_range())?;
                    block[keep..].fill(0);
                }
            }
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.lock();
        let end = end_of(offset, data.len())?;
        if end > state.len {
            return Err(out_of_range());
        }
        if data.is_empty() {
            return Ok(());
        }
        let visible = state.file_visible;
        for n in (offset / BLOCK)..=((end - 1) / BLOCK) {
            let block_start = n * BLOCK;
            if !state.blocks.contains_key(&n) {
                let mut fresh = vec![0u8; BLOCK as usize].into_boxed_slice();
                let readable = state.len.saturating_sub(block_start).min(BLOCK);
                let readable = usize::try_from(readable).map_err(|_| out_of_range())?;
                self.read_base(visible, block_start, &mut fresh[..readable])?;
                state.blocks.insert(n, fresh);
            }
            let from = offset.max(block_start);
            let to = end.min(block_start + BLOCK);
            let (Ok(dst), Ok(src), Ok(count)) = (
                usize::try_from(from - block_start),
                usize::try_from(from - offset),
                usize::try_from(to - from),
            ) else {
                return Err(out_of_range());
            };
            if let Some(block) = state.blocks.get_mut(&n) {
                block[dst..dst + count].copy_from_slice(&data[src..src + count]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn overlay(bytes: &[u8]) -> (tempfile::NamedTempFile, Overlay) {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(bytes).expect("write");
        let o = Overlay::new(File::open(f.path()).expect("open")).expect("overlay");
        (f, o)
    }

    fn read(o: &Overlay, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        o.read(offset, &mut out).expect("read");
        out
    }

    #[test]
    fn writes_stay_in_memory_and_reads_see_them() {
        let base: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 251) as u8).collect();
        let (file, o) = overlay(&base);
        o.write(BLOCK - 2, &[0xAA; 4]).expect("write");
        let got = read(&o, BLOCK - 4, 8);
        let mut want = base[(BLOCK - 4) as usize..(BLOCK + 4) as usize].to_vec();
        want[2..6].fill(0xAA);
        assert_eq!(got, want);
        assert_eq!(std::fs::read(file.path()).expect("read back"), base);
    }

    #[test]
    fn shrinking_then_growing_reads_zeros_and_the_file_is_untouched() {
        let base = vec![7u8; (2 * BLOCK) as usize];
        let (file, o) = overlay(&base);
        o.write(10, &[1, 2, 3]).expect("write");
        o.set_len(11).expect("shrink");
        o.set_len(2 * BLOCK).expect("grow");
        let got = read(&o, 0, 20);
        assert_eq!(&got[..10], &[7u8; 10]);
        assert_eq!(got[10], 1);
        assert!(got[11..].iter().all(|&b| b == 0), "{got:?}");
        assert_eq!(read(&o, BLOCK, 4), vec![0; 4]);
        assert!(o.read(2 * BLOCK - 1, &mut [0u8; 2]).is_err());
        assert_eq!(std::fs::read(file.path()).expect("read back"), base);
    }
}
