//! A person at the box's serial console, for tests and `make demo`: the
//! terminal end of a pty whose other end the box serves as its console
//! (`[console] tty`), read as a screen and typed into, and the codes an
//! authenticator app would show for a secret the screen displayed.
//!
//! Nothing here knows the box's code: it reads what is on the screen and
//! types what a person would, from `docs/console.md`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Why the screen did not show what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TerminalError {
    #[error("the pty cannot be opened: {0}")]
    Open(#[source] nix::Error),
    #[error("no {wanted:?} on the screen within {seconds} s; it shows {shown:?}")]
    Missing {
        wanted: String,
        seconds: u64,
        shown: String,
    },
    #[error("typing failed: {0}")]
    Type(#[source] std::io::Error),
    #[error("no one-time code secret on the screen: {0:?}")]
    NoSecret(String),
}

/// How long a text may take to appear.
pub const WAIT: Duration = Duration::from_secs(20);

/// The terminal end of a pty; the box opens the other end by its path.
pub struct Terminal {
    master: std::fs::File,
    /// Held open so the box's end never sees a hang-up between opens.
    _slave: OwnedFd,
    path: PathBuf,
    /// Bytes read that do not decode yet (a split character).
    raw: Vec<u8>,
    seen: String,
    /// Where the last text waited for ended.
    pos: usize,
}

impl Terminal {
    /// A fresh pty.
    ///
    /// # Errors
    /// [`TerminalError::Open`].
    pub fn open() -> Result<Terminal, TerminalError> {
        let pty = nix::pty::openpty(None, None).map_err(TerminalError::Open)?;
        let path = nix::unistd::ttyname(pty.slave.as_fd()).map_err(TerminalError::Open)?;
        Ok(Terminal {
            master: std::fs::File::from(pty.master),
            _slave: pty.slave,
            path,
            raw: Vec::new(),
            seen: String::new(),
            pos: 0,
        })
    }

    /// The device the box is to serve (`[console] tty`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads until `text` shows after the last text waited for; returns
    /// the screen from there through `text`.
    ///
    /// # Errors
    /// [`TerminalError::Missing`] after [`WAIT`].
    pub fn until(&mut self, text: &str) -> Result<String, TerminalError> {
        let start = self.pos;
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(at) = self.seen[start..].find(text) {
                self.pos = start + at + text.len();
                return Ok(self.seen[start..self.pos].to_owned());
            }
            if Instant::now() >= deadline {
                // The end of the screen says what went wrong.
                let shown: String = self.seen[start..].chars().rev().take(1500).collect();
                return Err(TerminalError::Missing {
                    wanted: text.to_owned(),
                    seconds: WAIT.as_secs(),
                    shown: shown.chars().rev().collect(),
                });
            }
            self.read_some(&mut buf);
        }
    }

    /// Whether anything arrived within 100 ms.
    fn read_some(&mut self, buf: &mut [u8]) -> bool {
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) > 0 {
            if let Ok(n) = self.master.read(buf) {
                self.raw.extend_from_slice(&buf[..n]);
                self.decode();
                return n > 0;
            }
        }
        false
    }

    /// Moves what decodes of `raw` onto the screen; a character split
    /// over two reads waits for its end, a byte that is not UTF-8 shows
    /// as U+FFFD.
    fn decode(&mut self) {
        loop {
            match std::str::from_utf8(&self.raw) {
                Ok(text) => {
                    self.seen.push_str(text);
                    self.raw.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    self.seen
                        .push_str(std::str::from_utf8(&self.raw[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            self.seen.push('\u{fffd}');
                            self.raw.drain(..valid + bad);
                        }
                        None => {
                            self.raw.drain(..valid);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Reads until the screen has been quiet for half a second (at most
    /// [`WAIT`]), then stands at the start of its last line: the prompt
    /// showing now is the next one [`Terminal::until`] finds.
    pub fn settle(&mut self) {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        let mut quiet = 0;
        while quiet < 5 && Instant::now() < deadline {
            if self.read_some(&mut buf) {
                quiet = 0;
            } else {
                quiet += 1;
            }
        }
        self.pos = self
            .seen
            .rfind("\r\n")
            .map_or(self.pos, |i| (i + 2).max(self.pos));
    }

    /// Everything shown so far as plain lines: carriage returns, line
    /// redraws and escape sequences taken out.
    pub fn transcript(&self) -> String {
        let mut out = String::new();
        let mut chars = self.seen.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\u{1b}' => {
                    // CSI: ESC [ parameters final-byte.
                    if chars.peek() == Some(&'[') {
                        chars.next();
                        for f in chars.by_ref() {
                            if ('@'..='~').contains(&f) {
                                break;
                            }
                        }
                    }
                }
                '\r' => {
                    // A redraw starts the line again; a newline follows
                    // a finished one.
                    if chars.peek() != Some(&'\n') {
                        let start = out.rfind('\n').map_or(0, |i| i + 1);
                        out.truncate(start);
                    }
                }
                '\u{7}' => {}
                c => out.push(c),
            }
        }
        out
    }

    /// Types `keys`.
    ///
    /// # Errors
    /// [`TerminalError::Type`].
    pub fn type_in(&mut self, keys: &[u8]) -> Result<(), TerminalError> {
        self.master.write_all(keys).map_err(TerminalError::Type)
    }

    /// Waits for `prompt`, then types `line` and Enter.
    ///
    /// # Errors
    /// As [`Terminal::until`] and [`Terminal::type_in`].
    pub fn answer(&mut self, prompt: &str, line: &str) -> Result<String, TerminalError> {
        let shown = self.until(prompt)?;
        self.type_in(format!("{line}\r").as_bytes())?;
        Ok(shown)
    }
}

/// A person with an account: ID, password and the authenticator app
/// holding their secret.
#[derive(Debug, Clone)]
pub struct Person {
    pub id: String,
    pub password: String,
    pub secret: String,
    /// The last 30-second step whose code was typed: an app's code is
    /// used once, so the next login waits for a new one.
    last_step: u64,
}

impl Person {
    /// Someone whose app holds `secret` (base32, as the screen showed it).
    pub fn new(id: &str, password: &str, secret: &str) -> Person {
        Person {
            id: id.to_owned(),
            password: password.to_owned(),
            secret: secret.to_owned(),
            last_step: 0,
        }
    }

    /// The app's code for a step not used before: this step's, or the
    /// next one's (one step of clock skew is accepted), waiting for the
    /// step after when both were used.
    pub fn fresh_code(&mut self) -> String {
        let now = now_s() / 30;
        let mut step = now.max(self.last_step + 1);
        if step > now + 1 {
            let wait = (step - 1) * 30 - now_s();
            std::thread::sleep(Duration::from_secs(wait + 1));
            step = (now_s() / 30).max(self.last_step + 1);
        }
        self.last_step = step;
        code(&self.secret, step * 30)
    }
}

/// The RFC 6238 code of `secret` at `at_s`, as an authenticator app shows
/// it (SHA-1, 6 digits, 30 s).
///
/// # Panics
/// On a secret that is not base32: the screen showed something else.
pub fn code(secret: &str, at_s: u64) -> String {
    let key = base32_decode(secret).expect("the shown secret is base32");
    let step = (at_s / 30).to_be_bytes();
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key),
        &step,
    );
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let value = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    format!("{:06}", value % 1_000_000)
}

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)?;
        buffer = (buffer << 5) | u32::try_from(v).ok()?;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

/// The base32 secret an enrolment screen shows on a line of its own.
///
/// # Errors
/// [`TerminalError::NoSecret`].
pub fn secret_in(screen: &str) -> Result<String, TerminalError> {
    screen
        .lines()
        .map(str::trim)
        .find(|l| {
            l.len() == 32
                && l.chars()
                    .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        })
        .map(str::to_owned)
        .ok_or_else(|| TerminalError::NoSecret(screen.to_owned()))
}

/// Seconds since the epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The first security administrator, created at first boot: types the ID
/// and password, reads the secret off the screen and confirms it with the
/// app's code.
///
/// # Errors
/// [`TerminalError`] when the screens are not the documented ones.
pub fn first_boot(t: &mut Terminal, id: &str, password: &str) -> Result<Person, TerminalError> {
    t.answer("新しい利用者ID: ", id)?;
    t.answer("新しいパスワード: ", password)?;
    t.answer("もう一度: ", password)?;
    let shown = t.until("6桁のコード: ")?;
    let mut person = Person::new(id, password, &secret_in(&shown)?);
    let c = person.fresh_code();
    t.type_in(format!("{c}\r").as_bytes())?;
    t.until("ログインしてください")?;
    Ok(person)
}

/// Logs `person` in at the login prompt; returns the screen up to the
/// command prompt (or the forced password change).
///
/// # Errors
/// [`TerminalError`].
pub fn log_in(t: &mut Terminal, person: &mut Person) -> Result<String, TerminalError> {
    t.answer("利用者ID: ", &person.id)?;
    t.answer("パスワード: ", &person.password)?;
    t.until("ワンタイムコード: ")?;
    let c = person.fresh_code();
    t.type_in(format!("{c}\r").as_bytes())?;
    t.until("としてログインしました")
}

/// A security administrator (logged in) adds `id` with `role` and a
/// temporary password; the new person logs in later and must change it.
///
/// # Errors
/// [`TerminalError`].
pub fn add_user(
    t: &mut Terminal,
    prompt: &str,
    id: &str,
    role: &str,
    temporary: &str,
) -> Result<Person, TerminalError> {
    t.answer(prompt, &format!("user add {id} {role}"))?;
    t.answer("新しいパスワード: ", temporary)?;
    t.answer("もう一度: ", temporary)?;
    let shown = t.until("を作成しました")?;
    Ok(Person::new(id, temporary, &secret_in(&shown)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transcript_keeps_what_a_person_saw() {
        let mut t = Terminal::open().expect("pty");
        t.seen = "a> sea\r\u{1b}[Ka> search\r\nfound 2\r\n\u{7}a> ".into();
        assert_eq!(t.transcript(), "a> search\nfound 2\na> ");
    }

    #[test]
    fn codes_match_rfc_6238() {
        // RFC 6238 appendix B, SHA-1 seed "12345678901234567890", last 6
        // digits of the 8-digit values.
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        assert_eq!(code(secret, 59), "287082");
        assert_eq!(code(secret, 1_111_111_109), "081804");
        assert_eq!(code(secret, 2_000_000_000), "279037");
    }
}
