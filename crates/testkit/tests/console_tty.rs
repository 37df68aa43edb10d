//! The maintenance console on a serial port (issue 10 items 1 and 8): a
//! box of the testbed serves its console on a pty, and a person at the
//! other end does the first boot, logs in with a code from the secret the
//! screen showed, types garbage, and finds the account in the store after
//! the box stopped.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use ifrelay_testkit::testbed::{agencies, Testbed};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

const PASSWORD: &str = "Chief-Pass-2026";

/// The terminal end of the pty.
struct Screen {
    master: std::fs::File,
    raw: Vec<u8>,
    seen: String,
    /// Where the last text waited for ended.
    pos: usize,
}

impl Screen {
    /// Reads until `text` shows after the last text waited for (bounded);
    /// returns the screen from there through `text`.
    fn until(&mut self, text: &str) -> String {
        let start = self.pos;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 1024];
        loop {
            if let Some(at) = self.seen[start..].find(text) {
                self.pos = start + at + text.len();
                return self.seen[start..self.pos].to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} in {:?}",
                &self.seen[start..]
            );
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) > 0 {
                if let Ok(n) = self.master.read(&mut buf) {
                    // Decoded whole each time: a character may arrive
                    // split over two reads.
                    self.raw.extend_from_slice(&buf[..n]);
                    self.seen = String::from_utf8_lossy(&self.raw).into_owned();
                }
            }
        }
    }

    fn type_in(&mut self, keys: &[u8]) {
        self.master.write_all(keys).expect("type");
    }
}

fn code(secret: &str, at_s: u64) -> String {
    let bytes = totp_rs::Secret::try_from_base32(secret).expect("base32");
    let totp = totp_rs::Builder::new()
        .with_secret(bytes.as_bytes().to_vec())
        .build()
        .expect("totp");
    totp.generate(at_s).to_string()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_boot_login_and_garbage_at_a_serial_console() {
    let pty = nix::pty::openpty(None, None).expect("pty");
    let slave_path = nix::unistd::ttyname(pty.slave.as_fd()).expect("pty name");
    let _slave: OwnedFd = pty.slave;
    let dir = tempfile::tempdir().expect("dir");
    let own = agencies().0;
    let tty = slave_path.display().to_string();
    let mut bed = Testbed::start_with(dir.path(), |file| {
        if file.appliance.agency == own.as_str() {
            file.console.tty = tty.clone();
        }
    })
    .await
    .expect("testbed");

    let mut screen = Screen {
        master: std::fs::File::from(pty.master),
        raw: Vec::new(),
        seen: String::new(),
        pos: 0,
    };
    let result = tokio::task::spawn_blocking(move || {
        screen.until("最初のセキュリティ管理者");
        screen.until("新しい利用者ID: ");
        screen.type_in(b"admin\r");
        screen.until("新しいパスワード: ");
        screen.type_in(format!("{PASSWORD}\r").as_bytes());
        screen.until("もう一度: ");
        screen.type_in(format!("{PASSWORD}\r").as_bytes());
        let shown = screen.until("6桁のコード: ");
        let secret = shown
            .lines()
            .map(str::trim)
            .find(|l| {
                l.len() == 32
                    && l.chars()
                        .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
            })
            .expect("the secret is shown")
            .to_owned();
        screen.type_in(format!("{}\r", code(&secret, now_s())).as_bytes());
        screen.until("ログインしてください");
        screen.until("利用者ID: ");
        screen.type_in(b"admin\r");
        screen.until("パスワード: ");
        screen.type_in(format!("{PASSWORD}\r").as_bytes());
        screen.until("ワンタイムコード: ");
        // The enrolment used this step's code: the next step's is
        // accepted (one step of skew) and is new.
        screen.type_in(format!("{}\r", code(&secret, now_s() + 30)).as_bytes());
        screen.until("admin@");
        // Garbage: NULs (a BREAK), escape junk, bytes that are not UTF-8.
        screen.type_in(b"\x00\x00\x1b[99;99;99Z\xff\xfe\xfd");
        screen.until("読めない入力");
        screen.type_in(b"\x03whoami\r");
        screen.until("セキュリティ管理者）としてログインしました");
        screen.type_in(b"status\r");
        let status = screen.until("送信待ち");
        assert!(
            status.contains("稼働時間") && status.contains("未同期"),
            "{status}"
        );
        assert!(status.contains("MiB"), "{status}");
        assert!(status.contains("ハッシュ連鎖"), "{status}");
        assert!(status.contains("接続先"), "{status}");
        screen.type_in(b"logout\r");
        screen.until("ログアウトしました");
    })
    .await;
    bed.stop_box(0).await;
    result.expect("the console session");

    let store = ifrelay_store::Store::open(&bed.nodes[0].config.store.path, 4 << 20)
        .expect("the stopped box's store");
    let users = store.reader().users().expect("users");
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].0, "admin");
    let log = store.reader().access_log(0, 10_000).expect("access log");
    let console: Vec<String> = log
        .iter()
        .filter(|e| e.entry.party == "console")
        .map(|e| {
            format!(
                "{} {} {}",
                e.entry.staff.clone().unwrap_or_default(),
                e.entry.operation,
                e.entry.outcome
            )
        })
        .collect();
    assert!(
        console.contains(&"admin login accepted".to_owned()),
        "{console:?}"
    );
    assert!(
        console.contains(&"admin whoami accepted".to_owned()),
        "{console:?}"
    );
    assert!(
        console.contains(&"admin logout accepted".to_owned()),
        "{console:?}"
    );
}
