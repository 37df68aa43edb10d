//! The console on its serial port: a thread of its own that opens the
//! TTY in raw mode, feeds what arrives to a [`Session`] and writes back
//! what it answers, and lets time pass for the idle logout.
//!
//! Invariants:
//! - Nothing here blocks the relay: the thread only reads the store and
//!   sends the engine bounded writes ([`StoreAccounts`]).
//! - The port is polled every [`POLL`], so a stop is seen within it.
//! - A port that cannot be opened, or that fails (a USB-serial adapter
//!   pulled out, the other end of a pty closed), is opened again every
//!   [`REOPEN`], with a fresh session: whoever was logged in is out.
//! - Output nobody reads (a full pty, flow control held) is dropped
//!   rather than waited for.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ifrelay_proto::Millis;
use ifrelay_store::StoreReader;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, BaudRate, SetArg};
use std::os::fd::AsFd;
use tokio::sync::mpsc;

use super::export::ExportSetup;
use super::session::{Session, Settings};
use super::store_accounts::{StatusSource, StoreAccounts};
use crate::relay::channel::Input;
use crate::relay::engine::RetentionPolicy;

/// How often the port is polled (and a stop noticed).
pub const POLL: Duration = Duration::from_millis(200);
/// How long before a failed port is opened again.
pub const REOPEN: Duration = Duration::from_secs(1);
/// Most bytes read at once.
const READ: usize = 512;

/// The running console; dropping it does not stop it: [`Console::stop`].
pub struct Console {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Console {
    /// Starts the console on `tty` at `baud`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(
        tty: PathBuf,
        baud: u32,
        settings: Settings,
        backend: Backend,
    ) -> std::io::Result<Console> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || serve(&tty, baud, &settings, &backend, &flag))?;
        Ok(Console {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the console and waits for its thread (at most about
    /// [`POLL`], or a write to the store under way).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("console: its thread panicked");
            }
        }
    }
}

/// What each session's [`StoreAccounts`] is made of.
pub struct Backend {
    pub reader: StoreReader,
    pub inputs: mpsc::Sender<Input>,
    pub clock: fn() -> Millis,
    pub status: StatusSource,
    /// Where and how exports are written.
    pub export: std::sync::Arc<ExportSetup>,
    /// What `delete` may remove.
    pub retention: RetentionPolicy,
}

fn serve(tty: &Path, baud: u32, settings: &Settings, backend: &Backend, stop: &AtomicBool) {
    let clock = backend.clock;
    let name = tty.file_name().map_or_else(
        || tty.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut reported = false;
    while !stop.load(Ordering::Acquire) {
        match open(tty, baud) {
            Ok(port) => {
                tracing::info!(tty = %tty.display(), baud, "console: serving");
                reported = false;
                let accounts = StoreAccounts::new(
                    backend.reader.clone(),
                    backend.inputs.clone(),
                    &name,
                    clock,
                )
                .with_status(backend.status.clone())
                .with_records(backend.export.clone(), backend.retention);
                let session = Session::start(accounts, settings.clone(), clock());
                if let Err(e) = run(port, session, clock, stop) {
                    tracing::warn!(tty = %tty.display(), error = %e, "console: the port failed; opening it again");
                }
            }
            Err(e) if !reported => {
                tracing::error!(tty = %tty.display(), error = %e, "console: cannot open the port; trying again every second");
                reported = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(REOPEN);
    }
}

/// The port in raw mode at `baud`: 8N1, no echo, no flow control.
fn open(tty: &Path, baud: u32) -> std::io::Result<File> {
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc_flags())
        .open(tty)?;
    let mut t = termios::tcgetattr(port.as_fd())?;
    termios::cfmakeraw(&mut t);
    let speed = match baud {
        9_600 => BaudRate::B9600,
        19_200 => BaudRate::B19200,
        38_400 => BaudRate::B38400,
        57_600 => BaudRate::B57600,
        _ => BaudRate::B115200,
    };
    termios::cfsetspeed(&mut t, speed)?;
    termios::tcsetattr(port.as_fd(), SetArg::TCSANOW, &t)?;
    Ok(port)
}

/// Not the controlling terminal; reads and writes never wait.
fn libc_flags() -> i32 {
    (nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_NONBLOCK).bits()
}

fn run(
    mut port: File,
    mut session: Session<StoreAccounts>,
    clock: fn() -> Millis,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let first = session.feed(b"", clock());
    write(&mut port, &first)?;
    let timeout = PollTimeout::try_from(POLL).unwrap_or(PollTimeout::NONE);
    let mut buf = [0u8; READ];
    while !stop.load(Ordering::Acquire) {
        let mut fds = [PollFd::new(port.as_fd(), PollFlags::POLLIN)];
        let ready = match poll(&mut fds, timeout) {
            Ok(n) => n > 0,
            Err(nix::errno::Errno::EINTR) => false,
            Err(e) => return Err(e.into()),
        };
        let hung_up = fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
        if ready {
            match port.read(&mut buf) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the port closed",
                    ))
                }
                Ok(n) => {
                    let out = session.feed(&buf[..n], clock());
                    write(&mut port, &out)?;
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        } else if hung_up {
            return Err(std::io::Error::new(
                ErrorKind::BrokenPipe,
                "the port hung up",
            ));
        }
        let out = session.tick(clock());
        write(&mut port, &out)?;
    }
    Ok(())
}

/// Writes `bytes`, dropping what the port does not take now.
fn write(port: &mut File, mut bytes: &[u8]) -> std::io::Result<()> {
    let mut stalls = 0;
    while !bytes.is_empty() {
        match port.write(bytes) {
            Ok(0) => return Ok(()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock && stalls < 50 => {
                // A slow serial line drains in milliseconds.
                stalls += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
