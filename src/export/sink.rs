//! [`FileSink`]: one data file of an export being written — created
//! exclusively (never over an existing file), hashed as it is written
//! (plaintext, and ciphertext when encrypted), synced when finished.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::{EncryptedFile, FileEntry};
use super::AGE_SUFFIX;
use crate::identity::hex;

/// Buffer between the formatters and hashing/encryption: large writes
/// keep the per-call cost of both low.
const BUFFER_BYTES: usize = 256 * 1024;

/// Counts and hashes what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Disk = BufWriter<File>;

enum Inner {
    Plain(Hashing<Disk>),
    Encrypted(Hashing<age::stream::StreamWriter<Hashing<Disk>>>),
}

/// A data file being written; see the module header.
pub(super) struct FileSink {
    name: String,
    contents: &'static str,
    path: PathBuf,
    inner: Inner,
}

/// Creates `path`, failing if anything is there already.
fn create_new(path: &Path) -> io::Result<Disk> {
    let file = OpenOptions::new().write(true).create_new(true).open(path)?;
    Ok(BufWriter::with_capacity(BUFFER_BYTES, file))
}

impl FileSink {
    /// Creates `name` in `dir` (or `name.age`, encrypted to `encryptor`).
    ///
    /// # Errors
    /// The file exists or cannot be created; the age header cannot be
    /// written.
    pub(super) fn create(
        dir: &Path,
        name: &str,
        contents: &'static str,
        encryptor: Option<age::Encryptor>,
    ) -> io::Result<FileSink> {
        let (path, inner) = match encryptor {
            None => {
                let path = dir.join(name);
                let disk = create_new(&path)?;
                (path, Inner::Plain(Hashing::new(disk)))
            }
            Some(encryptor) => {
                let path = dir.join(format!("{name}{AGE_SUFFIX}"));
                let disk = Hashing::new(create_new(&path)?);
                let stream = encryptor.wrap_output(disk)?;
                (path, Inner::Encrypted(Hashing::new(stream)))
            }
        };
        Ok(FileSink {
            name: name.to_owned(),
            contents,
            path,
            inner,
        })
    }

    /// Where the file is being written.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Ends the file (the age stream's last chunk), syncs it to the medium
    /// and describes it for the manifest.
    ///
    /// # Errors
    /// Writing, flushing or syncing failed.
    pub(super) fn finish(self) -> io::Result<FileEntry> {
        let (sha256, bytes, encrypted, disk) = match self.inner {
            Inner::Plain(hashing) => {
                let (disk, sha256, bytes) = hashing.finish();
                (sha256, bytes, None, disk)
            }
            Inner::Encrypted(hashing) => {
                let (stream, sha256, bytes) = hashing.finish();
                let (disk, cipher_sha256, cipher_bytes) = stream.finish()?.finish();
                let encrypted = EncryptedFile {
                    name: format!("{}{AGE_SUFFIX}", self.name),
                    bytes: cipher_bytes,
                    sha256: cipher_sha256,
                };
                (sha256, bytes, Some(encrypted), disk)
            }
        };
        let file = disk.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        Ok(FileEntry {
            name: self.name,
            contents: self.contents.to_owned(),
            bytes,
            sha256,
            encrypted,
        })
    }
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(w) => w.write(buf),
            Inner::Encrypted(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Plain(w) => w.flush(),
            Inner::Encrypted(w) => w.flush(),
        }
    }
}
