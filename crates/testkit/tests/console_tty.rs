//! The maintenance console on a serial port (issue 10 items 1 and 8): a
//! box of the testbed serves its console on a pty, and a person at the
//! other end does the first boot, is refused a wrong password and a
//! replayed code, logs in with a code computed from the secret the screen
//! showed, completes with Tab and asks with `?`, types garbage, and finds
//! the account in the store after the box stopped.

use ifrelay_testkit::terminal::{code, now_s, secret_in, Terminal};
use ifrelay_testkit::testbed::{agencies, Testbed};

const PASSWORD: &str = "Chief-Pass-2026";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_boot_login_and_garbage_at_a_serial_console() {
    let mut screen = Terminal::open().expect("pty");
    let dir = tempfile::tempdir().expect("dir");
    let own = agencies().0;
    let tty = screen.path().display().to_string();
    let mut bed = Testbed::start_with(dir.path(), |file| {
        if file.appliance.agency == own.as_str() {
            file.console.tty = tty.clone();
        }
    })
    .await
    .expect("testbed");

    let result = tokio::task::spawn_blocking(move || {
        screen.until("最初のセキュリティ管理者").expect("on screen");
        screen.until("新しい利用者ID: ").expect("on screen");
        screen.type_in(b"admin\r").expect("type");
        screen.until("新しいパスワード: ").expect("on screen");
        screen
            .type_in(format!("{PASSWORD}\r").as_bytes())
            .expect("type");
        screen.until("もう一度: ").expect("on screen");
        screen
            .type_in(format!("{PASSWORD}\r").as_bytes())
            .expect("type");
        let shown = screen.until("6桁のコード: ").expect("on screen");
        let secret = secret_in(&shown).expect("the secret is shown");
        let enrolled_at = now_s();
        screen
            .type_in(format!("{}\r", code(&secret, enrolled_at)).as_bytes())
            .expect("type");
        screen.until("ログインしてください").expect("on screen");
        // A wrong password, then the enrolment's code again: refused.
        screen
            .answer("利用者ID: ", "admin")
            .and_then(|_| screen.answer("パスワード: ", "Wrong-Pass-0000"))
            .and_then(|_| screen.answer("ワンタイムコード: ", &code(&secret, enrolled_at + 30)))
            .expect("typed");
        screen
            .until("いずれかが違います")
            .expect("wrong password refused");
        screen
            .answer("利用者ID: ", "admin")
            .and_then(|_| screen.answer("パスワード: ", PASSWORD))
            .and_then(|_| screen.answer("ワンタイムコード: ", &code(&secret, enrolled_at)))
            .expect("typed");
        screen
            .until("使用済み")
            .expect("a replayed code is refused");
        screen.until("利用者ID: ").expect("on screen");
        screen.type_in(b"admin\r").expect("type");
        screen.until("パスワード: ").expect("on screen");
        screen
            .type_in(format!("{PASSWORD}\r").as_bytes())
            .expect("type");
        screen.until("ワンタイムコード: ").expect("on screen");
        // The enrolment used its step's code: the next step's is
        // accepted (one step of skew) and is new.
        screen
            .type_in(format!("{}\r", code(&secret, enrolled_at + 30)).as_bytes())
            .expect("type");
        screen.until("admin@").expect("on screen");
        // Tab completes, ? lists what this role may type.
        screen.type_in(b"wh\t").expect("type");
        screen.until("whoami ").expect("completed");
        screen.type_in(b"\x15?").expect("type");
        let help = screen.until("ログアウト").expect("the help list");
        assert!(
            help.contains("  users ") && !help.contains("  export "),
            "{help}"
        );
        screen.type_in(b"\x15").expect("type");
        // Garbage: NULs (a BREAK), escape junk, bytes that are not UTF-8.
        screen
            .type_in(b"\x00\x00\x1b[99;99;99Z\xff\xfe\xfd")
            .expect("type");
        screen.until("読めない入力").expect("on screen");
        screen.type_in(b"\x03whoami\r").expect("type");
        screen
            .until("セキュリティ管理者）としてログインしました")
            .expect("on screen");
        screen.type_in(b"status\r").expect("type");
        let status = screen.until("送信待ち").expect("on screen");
        assert!(
            status.contains("稼働時間") && status.contains("未同期"),
            "{status}"
        );
        assert!(status.contains("MiB"), "{status}");
        assert!(status.contains("ハッシュ連鎖"), "{status}");
        assert!(status.contains("接続先"), "{status}");
        screen.type_in(b"logout\r").expect("type");
        screen.until("ログアウトしました").expect("on screen");
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

#[test]
fn check_config_warns_of_a_console_port_that_is_not_there() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = ifrelay_testkit::testbed::Pki::new(dir.path()).expect("pki");
    let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let path = ifrelay_testkit::testbed::write_box_config(
        dir.path(),
        &pki,
        &agencies().0,
        (addr(7443), addr(7444)),
        addr(7000),
        addr(7100),
    )
    .expect("config");
    let firmware = ifrelay_testkit::firmware::binary().expect("the ifrelay binary");
    let check = || {
        std::process::Command::new(&firmware)
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("run check-config")
    };
    let quiet = check();
    assert_eq!(
        quiet.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("console.tty"));

    let text = std::fs::read_to_string(&path).expect("read");
    let absent = dir.path().join("ttyUSB9");
    assert!(text.contains("tty = \"\""), "{text}");
    let with_tty = text.replacen("tty = \"\"", &format!("tty = \"{}\"", absent.display()), 1);
    std::fs::write(&path, with_tty).expect("write");
    let warned = check();
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert_eq!(warned.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("console.tty") && stderr.contains("does not exist"),
        "{stderr}"
    );
}
