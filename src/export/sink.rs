//! [`FileSink`]: one data file of an export being written — created
//! exclusively (never over an existing file), hashed as it is written
//! (plaintext, and ciphertext when encrypted), synced when finished.
//!
//! Each file is hashed, encrypted and written on a thread of its own, fed
//! buffers of [`CHUNK_BYTES`] through a channel of [`CHUNKS_IN_FLIGHT`]:
//! SHA-256 in software (a CPU without SHA extensions) cost as much as
//! reading and formatting the records together, and this way the two files
//! of a chain are hashed beside the formatting. Memory stays bounded by
//! the chunks in flight.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use ring::digest::{Context, SHA256};

use super::manifest::{EncryptedFile, FileEntry};
use super::AGE_SUFFIX;
use crate::identity::hex;

/// Buffer of the file on disk.
const BUFFER_BYTES: usize = 256 * 1024;
/// What the formatting thread hands the file's thread at a time.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks queued for a file's thread before the formatting waits.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Counts and hashes what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    /// ring's SHA-256 (assembly, with SHA or AVX2 instructions where the
    /// CPU has them): twice as fast as the portable one on a CPU without
    /// SHA extensions.
    hasher: Context,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Context::new(&SHA256),
            bytes: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, hex(self.hasher.finish().as_ref()), self.bytes)
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

// One writer per exported file, so the size of the larger variant costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Plain(Hashing<Disk>),
    Encrypted(Hashing<age::stream::StreamWriter<Hashing<Disk>>>),
}

/// A data file being written; see the module header.
pub(super) struct FileSink {
    path: PathBuf,
    chunk: Vec<u8>,
    /// `None` once finished.
    chunks: Option<SyncSender<Vec<u8>>>,
    worker: Option<JoinHandle<io::Result<FileEntry>>>,
}

/// The file's own thread: hashes, encrypts and writes what it is sent.
struct FileWriter {
    name: String,
    contents: &'static str,
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
        let mut writer = FileWriter {
            name: name.to_owned(),
            contents,
            inner,
        };
        let (chunks, received) = sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
        let worker = std::thread::Builder::new()
            .name(format!("export {name}"))
            .spawn(move || {
                for chunk in received {
                    writer.write_all(&chunk)?;
                }
                writer.finish()
            })?;
        Ok(FileSink {
            path,
            chunk: Vec::with_capacity(CHUNK_BYTES),
            chunks: Some(chunks),
            worker: Some(worker),
        })
    }

    /// Where the file is being written.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the chunk collected so far to the file's thread.
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BYTES));
        let sent = self.chunks.as_ref().map(|chunks| chunks.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped on an error, which `finish` returns.
            Some(Err(_)) | None => Err(self.stopped()),
        }
    }

    /// Waits for the file's thread and returns its error.
    fn stopped(&mut self) -> io::Error {
        self.chunks = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("the file's writer thread stopped"),
        }
    }

    /// Ends the file (the age stream's last chunk), syncs it to the medium
    /// and describes it for the manifest.
    ///
    /// # Errors
    /// Writing, flushing or syncing failed.
    pub(super) fn finish(mut self) -> io::Result<FileEntry> {
        if !self.chunk.is_empty() {
            self.send()?;
        }
        // Closing the channel ends the thread's loop.
        self.chunks = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(io::Error::other("the file's writer thread panicked")),
        }
    }
}

impl FileWriter {
    fn finish(self) -> io::Result<FileEntry> {
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
        let room = CHUNK_BYTES - self.chunk.len();
        let n = buf.len().min(room);
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    /// Chunks go to the file's thread when full; what is durable is
    /// decided by [`FileSink::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for FileWriter {
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
