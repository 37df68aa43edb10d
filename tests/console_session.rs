//! The console session as a person drives it (issue 10 items 2–3, 8):
//! keys in, screen out, with one-time codes computed from the secret the
//! screen showed — first boot, login, forced change, the account
//! commands, what each role may not do, lockout, idle logout and garbage
//! on the line. Accounts live in memory here; the serial port and the
//! store come later.
#![allow(clippy::unwrap_used)]

use ifrelay::console::accounts::{HashCost, Role, User};
use ifrelay::console::session::{Accounts, Audit, Session, Settings};

const T0: i64 = 1_796_000_000_000;
const ADMIN_PW: &str = "Chief-Pass-2026";

#[derive(Default)]
struct Memory {
    users: Vec<User>,
    audit: Vec<Audit>,
    fail_saves: bool,
}

impl Accounts for Memory {
    fn users(&self) -> Result<Vec<User>, String> {
        Ok(self.users.clone())
    }
    fn save(&mut self, user: &User) -> Result<(), String> {
        if self.fail_saves {
            return Err("disk full".into());
        }
        self.users.retain(|u| u.id != user.id);
        self.users.push(user.clone());
        Ok(())
    }
    fn remove(&mut self, id: &str) -> Result<(), String> {
        self.users.retain(|u| u.id != id);
        Ok(())
    }
    fn audit(&mut self, entry: Audit) {
        self.audit.push(entry);
    }
}

/// A person at the terminal: the session, the clock, and what the
/// screen showed.
struct Terminal {
    session: Session<Memory>,
    now: i64,
    screen: String,
}

impl Terminal {
    fn new() -> Terminal {
        let mut settings = Settings::new("box-131016");
        settings.cost = HashCost {
            memory_kib: 64,
            passes: 1,
        };
        let mut session = Session::start(Memory::default(), settings, T0);
        let banner = String::from_utf8(session.feed(b"", T0)).unwrap();
        Terminal {
            session,
            now: T0,
            screen: banner,
        }
    }

    /// Types `keys` (Enter included where wanted); returns the new screen
    /// text.
    fn typed(&mut self, keys: &str) -> String {
        self.now += 1_000;
        // As the serial port's loop does: what was typed, then a tick.
        let mut out = self.session.feed(keys.as_bytes(), self.now);
        out.extend(self.session.tick(self.now));
        let text = String::from_utf8(out).unwrap();
        self.screen.push_str(&text);
        text
    }

    /// The last base32 secret the screen showed.
    fn secret(&self) -> String {
        self.screen
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| {
                l.len() == 32
                    && l.chars()
                        .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
            })
            .unwrap()
            .to_owned()
    }

    fn wait(&mut self, ms: i64) {
        self.now += ms;
    }

    fn audit(&self) -> &[Audit] {
        &self.session.backend().audit
    }
}

/// The code an authenticator app shows at `at` for `secret`.
fn code(secret: &str, at: i64) -> String {
    let bytes = totp_rs::Secret::try_from_base32(secret).unwrap();
    let totp = totp_rs::Builder::new()
        .with_secret(bytes.as_bytes().to_vec())
        .build()
        .unwrap();
    totp.generate(u64::try_from(at / 1000).unwrap()).to_string()
}

/// First boot: the first security administrator `admin`; returns the
/// secret shown.
fn first_boot(t: &mut Terminal) -> String {
    assert!(
        t.screen.contains("最初のセキュリティ管理者"),
        "{}",
        t.screen
    );
    t.typed("admin\r");
    t.typed(&format!("{ADMIN_PW}\r{ADMIN_PW}\r"));
    let secret = t.secret();
    let shown = t.typed(&format!("{}\r", code(&secret, t.now + 1_000)));
    assert!(shown.contains("admin"), "{shown}");
    secret
}

/// Logs `id` in; the code is a fresh one (30 s later than any before).
fn login(t: &mut Terminal, id: &str, password: &str, secret: &str) -> String {
    t.wait(30_000);
    t.typed(&format!("{id}\r{password}\r"));
    let c = code(secret, t.now + 1_000);
    t.typed(&format!("{c}\r"))
}

#[test]
fn first_boot_creates_the_first_administrator_who_then_logs_in() {
    let mut t = Terminal::new();
    let secret = first_boot(&mut t);
    assert!(t.screen.contains("otpauth://totp/box-131016:admin?secret="));
    let shown = login(&mut t, "admin", ADMIN_PW, &secret);
    assert!(shown.contains("admin@box-131016> "), "{shown}");
    let who = t.typed("whoami\r");
    assert!(who.contains("セキュリティ管理者"), "{who}");
    let users = &t.session.backend().users;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].role, Role::SecurityAdmin);
    assert!(t
        .audit()
        .iter()
        .any(|a| a.user == "admin" && a.operation == "login" && a.outcome == "accepted"));
}

#[test]
fn a_mistyped_secret_at_first_boot_creates_nobody() {
    let mut t = Terminal::new();
    t.typed("admin\r");
    t.typed(&format!("{ADMIN_PW}\r{ADMIN_PW}\r"));
    let shown = t.typed("123456\r");
    assert!(shown.contains("コードが一致しません"), "{shown}");
    assert!(t.session.backend().users.is_empty());
}

#[test]
fn a_new_user_changes_the_temporary_password_first_and_codes_work_once() {
    let mut t = Terminal::new();
    let admin_secret = first_boot(&mut t);
    login(&mut t, "admin", ADMIN_PW, &admin_secret);
    t.typed("user add sato auditor\r");
    let shown = t.typed("Temp-Pass-0001\rTemp-Pass-0001\r");
    assert!(shown.contains("sato"), "{shown}");
    let sato_secret = t.secret();
    assert_ne!(sato_secret, admin_secret);
    t.typed("logout\r");

    // Wrong password, then a replayed code after a good login.
    t.wait(30_000);
    t.typed("sato\rWrong-Pass-0001\r");
    let refused = t.typed(&format!("{}\r", code(&sato_secret, t.now + 1_000)));
    assert!(refused.contains("いずれかが違います"), "{refused}");
    let first = login(&mut t, "sato", "Temp-Pass-0001", &sato_secret);
    assert!(first.contains("パスワードを変更してください"), "{first}");
    let changed = t.typed("Kumamoto-Pass-1\rKumamoto-Pass-1\r");
    assert!(changed.contains("パスワードを変更しました"), "{changed}");
    assert!(changed.contains("sato@box-131016> "));
    t.typed("logout\r");
    t.typed("sato\rKumamoto-Pass-1\r");
    let replay = t.typed(&format!("{}\r", code(&sato_secret, t.now - 1_000)));
    assert!(replay.contains("使用済み"), "{replay}");
}

#[test]
fn every_role_is_refused_the_commands_it_may_not_use() {
    // Each command, and the roles that may use it (docs/console.md,
    // "Roles"): everything else is refused, and not offered by `?`.
    const MATRIX: &[(&str, &str, &[&str])] = &[
        (
            "status",
            "status",
            &["operator", "auditor", "security-admin", "maintainer"],
        ),
        ("search records code X1", "search", &["auditor"]),
        ("search access user admin", "search", &["auditor"]),
        ("next", "next", &["auditor"]),
        ("show 1", "show", &["auditor"]),
        ("export all", "export", &["auditor"]),
        ("export records business JM0010", "export", &["auditor"]),
        ("delete", "delete", &["auditor"]),
        ("users", "users", &["security-admin"]),
        ("users export", "users", &["security-admin"]),
        ("user lock admin", "user", &["security-admin"]),
        ("user add x operator", "user", &["security-admin"]),
    ];
    let mut t = Terminal::new();
    let admin_secret = first_boot(&mut t);
    login(&mut t, "admin", ADMIN_PW, &admin_secret);
    let mut secrets = Vec::new();
    for (id, role) in [
        ("op", "operator"),
        ("aud", "auditor"),
        ("sec", "security-admin"),
        ("mnt", "maintainer"),
    ] {
        t.typed(&format!("user add {id} {role}\r"));
        t.typed("Temp-Pass-0001\rTemp-Pass-0001\r");
        secrets.push((id, role, t.secret()));
    }
    t.typed("logout\r");
    let mut expected_refusals = 0;
    for (id, role, secret) in secrets {
        login(&mut t, id, "Temp-Pass-0001", &secret);
        t.typed("Own-Pass-00001\rOwn-Pass-00001\r");
        let help = t.typed("?");
        t.typed("\x15");
        for (command, word, allowed) in MATRIX {
            let shown = t.typed(&format!("{command}\r"));
            // An answer that waits for more (a deletion's phrase, an
            // export's tick) is abandoned.
            t.typed("\x03");
            let refused = shown.contains("権限では使えません");
            assert_eq!(
                refused,
                !allowed.contains(&role),
                "{role} typing {command:?}: {shown}"
            );
            assert_eq!(
                help.contains(&format!("  {word} ")),
                allowed.contains(&role),
                "{role}'s ? and {word}: {help}"
            );
            if refused {
                expected_refusals += 1;
            }
        }
        t.typed("\x15logout\r");
    }
    let refusals = t
        .audit()
        .iter()
        .filter(|a| a.outcome == "refused: not allowed for the role")
        .count();
    assert_eq!(refusals, expected_refusals);
    assert_eq!(expected_refusals, 4 * MATRIX.len() - 15);
}

#[test]
fn five_wrong_logins_lock_and_another_administrator_unlocks() {
    let mut t = Terminal::new();
    let admin_secret = first_boot(&mut t);
    login(&mut t, "admin", ADMIN_PW, &admin_secret);
    t.typed("user add admin2 security-admin\r");
    t.typed("Temp-Pass-0002\rTemp-Pass-0002\r");
    let second = t.secret();
    t.typed("logout\r");
    for _ in 0..5 {
        t.typed("admin\rnot-it\r000000\r");
    }
    let locked = login(&mut t, "admin", ADMIN_PW, &admin_secret);
    assert!(locked.contains("ロックされています"), "{locked}");
    login(&mut t, "admin2", "Temp-Pass-0002", &second);
    t.typed("Second-Own-Pass9\rSecond-Own-Pass9\r");
    let listed = t.typed("users\r");
    assert!(
        listed.contains("admin ") && listed.contains("yes"),
        "{listed}"
    );
    let unlocked = t.typed("user unlock admin\r");
    assert!(unlocked.contains("ロックを解除しました"), "{unlocked}");
    let myself = t.typed("user lock admin2\r");
    assert!(myself.contains("自分自身には使えません"), "{myself}");
    let changed = t.typed("user role admin auditor\r");
    assert!(changed.contains("監査者"), "{changed}");
    let role = |t: &Terminal| {
        t.session
            .backend()
            .users
            .iter()
            .find(|u| u.id == "admin")
            .map(|u| u.role)
    };
    assert_eq!(role(&t), Some(Role::Auditor));
    let refused = t.typed("user role admin boss\r");
    assert!(refused.contains("役割「boss」はありません"), "{refused}");
    t.typed("user role admin security-admin\r");
    assert_eq!(role(&t), Some(Role::SecurityAdmin));
    t.typed("logout\r");
    let back = login(&mut t, "admin", ADMIN_PW, &admin_secret);
    assert!(back.contains("admin@box-131016> "), "{back}");
}

#[test]
fn an_idle_session_is_logged_out() {
    let mut t = Terminal::new();
    let secret = first_boot(&mut t);
    login(&mut t, "admin", ADMIN_PW, &secret);
    assert!(t.session.logged_in().is_some());
    let early = t.session.tick(t.now + 14 * 60 * 1000);
    assert!(early.is_empty());
    let out = String::from_utf8(t.session.tick(t.now + 15 * 60 * 1000)).unwrap();
    assert!(out.contains("15 分間操作がなかった"), "{out}");
    assert!(t.session.logged_in().is_none());
    assert!(t.audit().iter().any(|a| a.outcome == "idle timeout"));
}

#[test]
fn tab_completes_and_question_mark_helps_in_the_user_language() {
    let mut t = Terminal::new();
    let secret = first_boot(&mut t);
    login(&mut t, "admin", ADMIN_PW, &secret);
    let completed = t.typed("us\t");
    assert!(completed.contains("user"), "{completed}");
    let sub = t.typed("\x15user lo\t");
    assert!(sub.contains("user lock "), "{sub}");
    t.typed("\x15lang en\r");
    let help = t.typed("?");
    assert!(
        help.contains("Commands you may use:") && help.contains("the account inventory"),
        "{help}"
    );
    let unknown = t.typed("frobnicate\r");
    assert!(
        unknown.contains("There is no command \"frobnicate\""),
        "{unknown}"
    );
}

#[test]
fn garbage_on_the_line_gets_one_message_and_the_session_goes_on() {
    let mut t = Terminal::new();
    let secret = first_boot(&mut t);
    login(&mut t, "admin", ADMIN_PW, &secret);
    let noise = t.typed("\x00\x00\x1b[999999999999999999Z\u{1}\u{2}\u{7f}");
    assert_eq!(noise.matches("読めない入力").count(), 1, "{noise}");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    t.now += 1_000;
    let _ = t.session.feed(&garbage, t.now);
    let who = t.typed("\x03whoami\r");
    assert!(who.contains("admin"), "{who}");
}

#[test]
fn a_store_failure_changes_nothing_and_says_so() {
    let mut t = Terminal::new();
    let secret = first_boot(&mut t);
    login(&mut t, "admin", ADMIN_PW, &secret);
    // The session's backend is inside it: fail the next saves through a
    // fresh session over the same accounts.
    let users = t.session.backend().users.clone();
    let mut settings = Settings::new("box-131016");
    settings.cost = HashCost {
        memory_kib: 64,
        passes: 1,
    };
    let memory = Memory {
        users,
        audit: Vec::new(),
        fail_saves: true,
    };
    let mut session = Session::start(memory, settings, t.now);
    let now = t.now + 31_000;
    let _ = session.feed(format!("admin\r{ADMIN_PW}\r").as_bytes(), now);
    let shown = session.feed(format!("{}\r", code(&secret, now)).as_bytes(), now);
    let shown = String::from_utf8(shown).unwrap();
    assert!(shown.contains("保存できませんでした"), "{shown}");
    assert!(session.logged_in().is_none());
}

#[test]
fn a_long_answer_waits_behind_more() {
    let mut t = Terminal::new();
    let secret = first_boot(&mut t);
    login(&mut t, "admin", ADMIN_PW, &secret);
    for n in 0..30 {
        t.typed(&format!("user add u{n:02} operator\r"));
        t.typed("Temp-Pass-0001\rTemp-Pass-0001\r");
    }
    // A header and 31 users: 22 lines (the header, admin, 20 operators),
    // then the rest behind --More--.
    let first = t.typed("users\r");
    assert!(first.ends_with("--More--"), "{first}");
    assert_eq!(first.matches(" operator ").count(), 20, "{first}");
    let line = t.typed("\r");
    assert_eq!(line.matches(" operator ").count(), 1, "{line}");
    assert!(line.ends_with("--More--"), "{line}");
    let rest = t.typed(" ");
    assert_eq!(rest.matches(" operator ").count(), 9, "{rest}");
    assert!(rest.ends_with("admin@box-131016> "), "{rest}");
    // q drops what is left.
    t.typed("users\r");
    let quit = t.typed("q");
    assert!(!quit.contains(" operator "), "{quit}");
    assert!(quit.ends_with("admin@box-131016> "), "{quit}");
}

#[test]
fn an_ageing_password_warns_then_must_change_then_locks_until_a_reset() {
    const DAY: i64 = 24 * 3600 * 1000;
    let mut t = Terminal::new();
    let admin_secret = first_boot(&mut t);
    login(&mut t, "admin", ADMIN_PW, &admin_secret);
    for id in ["ito", "kato"] {
        t.typed(&format!("user add {id} operator\r"));
        t.typed("Temp-Pass-0001\rTemp-Pass-0001\r");
    }
    let kato = t.secret();
    t.typed("logout\r");
    // ito's secret was shown before kato's.
    let ito = {
        let screen = t.screen.clone();
        let before_kato = &screen[..screen.find(&kato).unwrap()];
        before_kato
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| {
                l.len() == 32
                    && l.chars()
                        .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
            })
            .unwrap()
            .to_owned()
    };
    for (id, secret) in [("ito", &ito), ("kato", &kato)] {
        login(&mut t, id, "Temp-Pass-0001", secret);
        t.typed("Own-Pass-00001\rOwn-Pass-00001\r");
        t.typed("logout\r");
    }

    // 80 days on (and a minute): 9 whole days left, said at the login.
    t.wait(80 * DAY);
    let warned = login(&mut t, "ito", "Own-Pass-00001", &ito);
    assert!(warned.contains("有効期限まで残り 9 日"), "{warned}");
    t.typed("logout\r");
    // Past 90 days: the login must change it before anything else.
    t.wait(11 * DAY);
    let forced = login(&mut t, "ito", "Own-Pass-00001", &ito);
    assert!(forced.contains("パスワードを変更してください"), "{forced}");
    let refused = t.typed("status\r");
    assert!(
        !refused.contains("ストア"),
        "nothing before the change: {refused}"
    );
    t.typed("\x03");
    // The administrator changes theirs when asked, as staff should.
    let asked = login(&mut t, "admin", ADMIN_PW, &admin_secret);
    assert!(asked.contains("パスワードを変更してください"), "{asked}");
    t.typed("Chief-Pass-2027\rChief-Pass-2027\r");
    t.typed("logout\r");

    // kato let it lapse 90 days past expiry: locked until a reset.
    t.wait(90 * DAY);
    let locked = login(&mut t, "kato", "Own-Pass-00001", &kato);
    assert!(
        locked.contains("90日が過ぎたためロックされています"),
        "{locked}"
    );
    let admin = login(&mut t, "admin", "Chief-Pass-2027", &admin_secret);
    // 90 days since the administrator's change too: a change first.
    assert!(admin.contains("パスワードを変更してください"), "{admin}");
    t.typed("Chief-Pass-2028\rChief-Pass-2028\r");
    t.typed("user reset kato\r");
    t.typed("Temp-Pass-0002\rTemp-Pass-0002\r");
    t.typed("logout\r");
    let back = login(&mut t, "kato", "Temp-Pass-0002", &kato);
    assert!(back.contains("パスワードを変更してください"), "{back}");
}
