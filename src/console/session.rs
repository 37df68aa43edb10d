//! One console session: first boot, login, the forced password change,
//! and the account commands, as a state machine over the bytes typed
//! and the time. No I/O: what to write back is returned, and accounts
//! and the access log go through an [`Accounts`] backend (the box's
//! store through its engine; a memory one in tests).
//!
//! Invariants:
//! - Until a user is logged in, the only things that can be done are
//!   creating the first security administrator (when no user exists:
//!   physical presence at this console) and logging in.
//! - Every command checks the user's role first ([`Role::allows`]).
//! - Every login attempt and every command leaves an [`Audit`] entry
//!   with the user (as typed, for a login), the operation and the
//!   outcome.
//! - Idle for [`Settings::idle_ms`] while logged in: logged out.

use ifrelay_proto::{BusinessCode, InfoNameCode, ItemCode, Millis};
use ifrelay_store::{
    AccessFilter, AgeCount, ChainedAccess, ChainedRecord, PageCursor, RecordFilter,
};

use super::accounts::{
    check_nobody, inventory, HashCost, Lang, LoginPolicy, PasswordPolicy, Permission, Refusal,
    Role, User,
};
use super::export::{ExportFailure, ExportOrder, Exported};
use super::line::{Event, LineEditor};
use super::messages::{text, Msg};
use super::status::{status_lines, StatusReport};

/// Where accounts live and where the access log goes.
pub trait Accounts {
    /// Every account.
    ///
    /// # Errors
    /// A short description of the store's failure.
    fn users(&self) -> Result<Vec<User>, String>;
    /// Stores `user` (new or changed) durably.
    ///
    /// # Errors
    /// As [`Accounts::users`]; nothing was stored.
    fn save(&mut self, user: &User) -> Result<(), String>;
    /// Removes account `id`.
    ///
    /// # Errors
    /// As [`Accounts::users`].
    fn remove(&mut self, id: &str) -> Result<(), String>;
    /// Appends an access-log entry (R-REC-5).
    fn audit(&mut self, entry: Audit);
    /// Stores `user` and appends `entry` in one durable write, so a
    /// crash never keeps a login's effect without its access-log entry,
    /// nor the reverse.
    ///
    /// # Errors
    /// As [`Accounts::save`]; then neither was stored.
    fn save_logged(&mut self, user: &User, entry: Audit) -> Result<(), String> {
        self.save(user)?;
        self.audit(entry);
        Ok(())
    }
    /// The box's state for `status`.
    ///
    /// # Errors
    /// When it cannot be read (or is not available, as in tests).
    fn status(&self) -> Result<StatusReport, String> {
        Err("not available here".into())
    }
    /// A page of the records matching `filter` after `cursor`.
    ///
    /// # Errors
    /// When the store cannot be read (or is not available here).
    fn search_records(
        &self,
        _filter: &RecordFilter,
        _cursor: PageCursor,
        _limit: usize,
    ) -> Result<RecordPage, String> {
        Err("not available here".into())
    }
    /// A page of the access-log entries matching `filter` after `cursor`.
    ///
    /// # Errors
    /// As [`Accounts::search_records`].
    fn search_access(
        &self,
        _filter: &AccessFilter,
        _cursor: PageCursor,
        _limit: usize,
    ) -> Result<AccessPage, String> {
        Err("not available here".into())
    }
    /// How many records match `filter`, counted up to `cap`: `(n,
    /// true)` when there are at least `n`.
    ///
    /// # Errors
    /// As [`Accounts::search_records`].
    fn count_records(&self, filter: &RecordFilter, cap: u64) -> Result<(u64, bool), String> {
        count_pages(cap, |cursor, limit| {
            self.search_records(filter, cursor, limit)
                .map(|(page, next)| (page.len(), next))
        })
    }
    /// As [`Accounts::count_records`], for the access log.
    ///
    /// # Errors
    /// As [`Accounts::search_access`].
    fn count_access(&self, filter: &AccessFilter, cap: u64) -> Result<(u64, bool), String> {
        count_pages(cap, |cursor, limit| {
            self.search_access(filter, cursor, limit)
                .map(|(page, next)| (page.len(), next))
        })
    }
    /// Writes `order` to the export media (a USB stick), syncs it and
    /// unmounts it.
    ///
    /// # Errors
    /// [`ExportFailure`], with the stick unmounted.
    fn export(&mut self, _order: &ExportOrder, _now: Millis) -> Result<Exported, ExportFailure> {
        Err(ExportFailure::Box {
            detail: "not available here".into(),
        })
    }
    /// What deleting records by the retention policy would remove at
    /// `now`.
    ///
    /// # Errors
    /// When the store cannot be read (or it is not available here).
    fn deletion_plan(&self, _now: Millis) -> Result<DeletionPlan, String> {
        Err("not available here".into())
    }
    /// Confirms the deletion of the records appended before `before`,
    /// with its access-log entry, in one durable write.
    ///
    /// # Errors
    /// As [`Accounts::save`]; nothing was confirmed.
    fn confirm_deletion(&mut self, _before: Millis, _entry: Audit) -> Result<(), String> {
        Err("not available here".into())
    }
}

/// What a deletion by the retention policy would remove now (R-REC-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletionPlan {
    /// Records appended before this are past their period.
    pub cutoff: Millis,
    /// The period, in years.
    pub years: u32,
    /// Those records.
    pub records: AgeCount,
}

/// Matches are counted a page of this many at a time.
const COUNT_PAGE: usize = 500;
/// Most matches counted for a search; past it the console says "at least".
pub const COUNT_CAP: u64 = 10_000;

fn count_pages(
    cap: u64,
    mut page: impl FnMut(PageCursor, usize) -> Result<(usize, Option<PageCursor>), String>,
) -> Result<(u64, bool), String> {
    let mut count = 0u64;
    let mut cursor = PageCursor::START;
    loop {
        let (n, next) = page(cursor, COUNT_PAGE)?;
        count += n as u64;
        match next {
            Some(c) if count < cap => cursor = c,
            Some(_) => return Ok((count, true)),
            None => return Ok((count, false)),
        }
    }
}

/// A page of records and the cursor of the next (`None`: the last).
pub type RecordPage = (Vec<ChainedRecord>, Option<PageCursor>);
/// A page of access-log entries and the cursor of the next.
pub type AccessPage = (Vec<ChainedAccess>, Option<PageCursor>);

/// Records or access-log entries shown per page: two lines each on a
/// 24-line terminal.
pub const PAGE: usize = 10;

/// Lines of a long answer shown before `--More--`: a 24-line terminal
/// less the `--More--` line and one for the prompt.
pub const SCREEN: usize = 22;

const MORE: &[u8] = b"--More--";

/// The search `next` continues.
#[derive(Debug, Clone)]
enum LastSearch {
    Records(RecordFilter, PageCursor),
    Access(AccessFilter, PageCursor),
}

/// One access-log entry of the console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// The user logged in, or the ID typed at a login.
    pub user: String,
    /// `login`, or the command and its subcommand (`user lock`).
    pub operation: String,
    /// `accepted`, or `refused: …`.
    pub outcome: String,
    /// The business, info name and items a search touched (report table
    /// 25): the ones it asked for, and the items of what it showed.
    pub business: Option<BusinessCode>,
    pub info_name: Option<InfoNameCode>,
    pub items: Vec<ItemCode>,
}

/// The console's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The box's name: the banner and the authenticator's label.
    pub name: String,
    pub password: PasswordPolicy,
    pub login: LoginPolicy,
    pub cost: HashCost,
    /// Logged out after this long without input.
    pub idle_ms: Millis,
    /// Whether deleting records needs a second person's login
    /// (`[console] two_person_rule`, default on).
    pub two_person: bool,
}

impl Settings {
    /// The defaults for the box `name`: 15 minutes idle.
    pub fn new(name: &str) -> Settings {
        Settings {
            name: name.to_owned(),
            password: PasswordPolicy::default(),
            login: LoginPolicy::default(),
            cost: HashCost::default(),
            idle_ms: 15 * 60 * 1000,
            two_person: true,
        }
    }
}

/// The commands, who may use them, and their one-line help.
const COMMANDS: &[(&str, Option<Permission>, &str, &str)] = &[
    (
        "help",
        None,
        "使えるコマンドを表示",
        "list the commands you may use",
    ),
    (
        "whoami",
        None,
        "ログイン中の利用者と役割",
        "who is logged in, with which role",
    ),
    (
        "status",
        Some(Permission::Status),
        "箱の状態",
        "the state of the box",
    ),
    (
        "search",
        Some(Permission::SearchRecords),
        "記録・アクセスログの検索 (search records|access 条件…)",
        "search records or the access log (search records|access KEY VALUE…)",
    ),
    (
        "next",
        Some(Permission::SearchRecords),
        "検索結果の次のページ",
        "the next page of the last search",
    ),
    (
        "show",
        Some(Permission::SearchRecords),
        "記録1件の全項目 (show 番号)",
        "one record in full (show SEQ)",
    ),
    (
        "export",
        Some(Permission::ExportRecords),
        "USBメモリへ書き出し (export records 条件… | export access [from …] [to …] | export all)",
        "export to a USB stick (export records KEY VALUE… | export access [from …] [to …] | export all)",
    ),
    (
        "delete",
        Some(Permission::DeleteRecords),
        "保存期間を過ぎた記録の削除（確認と承認つき）",
        "delete records past their retention period (confirmed and approved)",
    ),
    (
        "passwd",
        None,
        "自分のパスワードを変更",
        "change your password",
    ),
    (
        "lang",
        None,
        "表示言語 (lang ja | lang en)",
        "message language (lang ja | lang en)",
    ),
    (
        "users",
        Some(Permission::ManageUsers),
        "利用者一覧（アカウント棚卸し）。users export でUSBメモリへCSV",
        "the account inventory; users export writes it to a USB stick as CSV",
    ),
    (
        "user",
        Some(Permission::ManageUsers),
        "利用者の追加・ロック・解除・初期化・削除",
        "add, lock, unlock, reset or delete a user",
    ),
    ("logout", None, "ログアウト", "log out"),
];

const USER_SUBCOMMANDS: &[&str] = &["add", "delete", "lock", "reset", "role", "unlock"];

#[derive(Debug)]
enum State {
    FirstId,
    FirstPassword {
        id: String,
    },
    FirstAgain {
        id: String,
        password: String,
    },
    FirstCode {
        user: Box<User>,
    },
    LoginId,
    LoginPassword {
        id: String,
    },
    LoginCode {
        id: String,
        password: String,
    },
    /// Changing the password; `forced` until it is done.
    CurrentPassword,
    NewPassword {
        forced: bool,
    },
    NewAgain {
        forced: bool,
        password: String,
    },
    /// A security administrator types a temporary password for `id`.
    TemporaryPassword {
        id: String,
        role: Option<Role>,
    },
    TemporaryAgain {
        id: String,
        role: Option<Role>,
        password: String,
    },
    /// The user is asked to type `phrase` to confirm `plan`.
    DeleteConfirm {
        plan: DeletionPlan,
        phrase: String,
    },
    /// The second person of the two-person rule logs in.
    ApproverId {
        plan: DeletionPlan,
    },
    ApproverPassword {
        plan: DeletionPlan,
        id: String,
    },
    ApproverCode {
        plan: DeletionPlan,
        id: String,
        password: String,
    },
    Ready,
}

/// One session at one terminal.
pub struct Session<B: Accounts> {
    backend: B,
    settings: Settings,
    editor: LineEditor,
    state: State,
    /// The user logged in.
    user: Option<User>,
    last_search: Option<LastSearch>,
    /// Lines of a long answer not shown yet (`--More--`).
    more: std::collections::VecDeque<String>,
    last_input: Millis,
    /// An export asked for: run at the next [`Session::tick`], after
    /// the user has been told not to pull the stick.
    pending_export: Option<(ExportOrder, Audit)>,
    out: Vec<u8>,
}

impl<B: Accounts> Session<B> {
    /// Starts at the banner and the first prompt.
    pub fn start(backend: B, settings: Settings, now: Millis) -> Session<B> {
        let mut s = Session {
            backend,
            settings,
            editor: LineEditor::new(),
            state: State::LoginId,
            user: None,
            last_search: None,
            more: std::collections::VecDeque::new(),
            last_input: now,
            pending_export: None,
            out: Vec::new(),
        };
        let banner = Msg::Banner {
            name: s.settings.name.clone(),
        };
        s.say(&banner);
        s.begin_again();
        s
    }

    /// The backend (tests look into it).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether someone is logged in, and who.
    pub fn logged_in(&self) -> Option<&User> {
        self.user
            .as_ref()
            .filter(|_| matches!(self.state, State::Ready))
    }

    /// Takes what was typed at `now`; returns what to write back.
    pub fn feed(&mut self, bytes: &[u8], now: Millis) -> Vec<u8> {
        self.last_input = now;
        for &b in bytes {
            if !self.more.is_empty() {
                self.more_key(b);
                continue;
            }
            let mut echo = Vec::new();
            let event = self.editor.feed(b, &mut echo);
            self.out.extend_from_slice(&echo);
            if let Some(event) = event {
                self.event(event, now);
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Lets time pass: runs an export asked for, logs out an idle user.
    pub fn tick(&mut self, now: Millis) -> Vec<u8> {
        if let Some((order, audit)) = self.pending_export.take() {
            self.run_export(&order, audit, now);
            self.last_input = now;
        }
        if self.user.is_some() && now - self.last_input >= self.settings.idle_ms {
            let minutes = u64::try_from(self.settings.idle_ms / 60_000).unwrap_or(0);
            self.out.extend_from_slice(b"\r\n");
            self.say(&Msg::IdleLoggedOut { minutes });
            let id = self.user_id();
            self.audit(&id, "logout", "idle timeout");
            self.user = None;
            self.begin_again();
        }
        std::mem::take(&mut self.out)
    }

    fn lang(&self) -> Lang {
        self.user.as_ref().map_or(Lang::default(), |u| u.lang)
    }

    fn say(&mut self, msg: &Msg) {
        let t = text(self.lang(), msg);
        self.out.extend_from_slice(t.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn prompt(&mut self, msg: &Msg, secret: bool) {
        let p = text(self.lang(), msg);
        self.editor.start(&p, secret, &mut self.out);
    }

    /// Writes `text`, a screen at a time: past [`SCREEN`] lines the rest
    /// waits behind `--More--` (Space: a screen, Enter: a line, q: stop).
    fn paged(&mut self, text: &str) {
        let mut lines = text
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_owned);
        for line in lines.by_ref().take(SCREEN) {
            self.out.extend_from_slice(line.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.more.extend(lines);
        if !self.more.is_empty() {
            self.out.extend_from_slice(MORE);
        }
    }

    fn more_key(&mut self, key: u8) {
        // Erase the `--More--` prompt.
        self.out.extend_from_slice(b"\r\x1b[K");
        let n = match key {
            b' ' => SCREEN,
            b'\r' | b'\n' => 1,
            b'q' | b'Q' | 0x03 => self.more.len(),
            _ => 0,
        };
        let show = !matches!(key, b'q' | b'Q' | 0x03);
        for line in self.more.drain(..n.min(self.more.len())) {
            if show {
                self.out.extend_from_slice(line.as_bytes());
                self.out.extend_from_slice(b"\r\n");
            }
        }
        if self.more.is_empty() {
            self.ready_prompt();
        } else {
            self.out.extend_from_slice(MORE);
        }
    }

    fn ready_prompt(&mut self) {
        if !self.more.is_empty() {
            // The prompt comes when the last line is shown.
            return;
        }
        let p = format!("{}@{}> ", self.user_id(), self.settings.name);
        self.editor.start(&p, false, &mut self.out);
    }

    fn user_id(&self) -> String {
        self.user.as_ref().map(|u| u.id.clone()).unwrap_or_default()
    }

    fn audit(&mut self, user: &str, operation: &str, outcome: &str) {
        self.backend.audit(entry(user, operation, outcome));
    }

    /// First boot when no user exists, else the login.
    fn begin_again(&mut self) {
        self.last_search = None;
        self.more.clear();
        match self.backend.users() {
            Ok(users) if users.is_empty() => {
                self.say(&Msg::FirstBoot);
                self.state = State::FirstId;
                self.prompt(&Msg::FirstIdPrompt, false);
            }
            Ok(_) => {
                self.state = State::LoginId;
                self.prompt(&Msg::IdPrompt, false);
            }
            Err(detail) => {
                self.say(&Msg::StoreFailed { detail });
                self.state = State::LoginId;
                self.prompt(&Msg::IdPrompt, false);
            }
        }
    }

    fn event(&mut self, event: Event, now: Millis) {
        match event {
            Event::Line(line) => self.line(line, now),
            Event::Noise(_) => {
                self.out.extend_from_slice(b"\r\n");
                self.say(&Msg::Noise);
                self.editor.redraw(&mut self.out);
            }
            Event::Interrupt => {
                self.say(&Msg::Interrupted);
                if self.logged_in().is_some() {
                    self.ready_prompt();
                } else if self.user.is_some() && !self.forced() {
                    self.state = State::Ready;
                    self.ready_prompt();
                } else {
                    self.user = None;
                    self.begin_again();
                }
            }
            Event::Eof => {
                if self.logged_in().is_some() {
                    self.command("logout", now);
                }
            }
            Event::Complete(before) => self.complete(&before),
            Event::Help(before) => self.help(&before),
        }
    }

    fn forced(&self) -> bool {
        matches!(
            self.state,
            State::NewPassword { forced: true } | State::NewAgain { forced: true, .. }
        )
    }

    fn line(&mut self, line: String, now: Millis) {
        let state = std::mem::replace(&mut self.state, State::LoginId);
        match state {
            State::FirstId => self.first_id(line.trim()),
            State::FirstPassword { id } => {
                self.state = State::FirstAgain { id, password: line };
                self.prompt(&Msg::AgainPrompt, true);
            }
            State::FirstAgain { id, password } => self.first_again(id, password, &line, now),
            State::FirstCode { user } => self.first_code(*user, line.trim(), now),
            State::LoginId => {
                let id = line.trim().to_owned();
                if id.is_empty() {
                    self.prompt(&Msg::IdPrompt, false);
                    return;
                }
                self.state = State::LoginPassword { id };
                self.prompt(&Msg::PasswordPrompt, true);
            }
            State::LoginPassword { id } => {
                self.state = State::LoginCode { id, password: line };
                self.prompt(&Msg::CodePrompt, true);
            }
            State::LoginCode { id, password } => self.login(&id, &password, line.trim(), now),
            State::CurrentPassword => self.current_password(&line),
            State::NewPassword { forced } => {
                self.state = State::NewAgain {
                    forced,
                    password: line,
                };
                self.prompt(&Msg::AgainPrompt, true);
            }
            State::NewAgain { forced, password } => self.new_again(forced, password, &line, now),
            State::TemporaryPassword { id, role } => {
                self.state = State::TemporaryAgain {
                    id,
                    role,
                    password: line,
                };
                self.prompt(&Msg::AgainPrompt, true);
            }
            State::TemporaryAgain { id, role, password } => {
                self.temporary_again(&id, role, password, &line, now)
            }
            State::DeleteConfirm { plan, phrase } => self.delete_confirmed(plan, &phrase, &line),
            State::ApproverId { plan } => {
                let id = line.trim().to_owned();
                self.state = State::ApproverPassword { plan, id };
                self.prompt(&Msg::PasswordPrompt, true);
            }
            State::ApproverPassword { plan, id } => {
                self.state = State::ApproverCode {
                    plan,
                    id,
                    password: line,
                };
                self.prompt(&Msg::CodePrompt, true);
            }
            State::ApproverCode { plan, id, password } => {
                self.approve(plan, &id, &password, line.trim(), now)
            }
            State::Ready => {
                self.state = State::Ready;
                self.command(&line, now);
            }
        }
    }

    fn first_id(&mut self, id: &str) {
        if id.is_empty() {
            self.state = State::FirstId;
            self.prompt(&Msg::FirstIdPrompt, false);
            return;
        }
        if !valid_id(id) {
            self.say(&Msg::BadId);
            self.state = State::FirstId;
            self.prompt(&Msg::FirstIdPrompt, false);
            return;
        }
        self.state = State::FirstPassword { id: id.to_owned() };
        self.prompt(&Msg::NewPasswordPrompt, true);
    }

    fn first_again(&mut self, id: String, password: String, again: &str, now: Millis) {
        if password != again {
            self.say(&Msg::PasswordsDiffer);
            self.state = State::FirstPassword { id };
            self.prompt(&Msg::NewPasswordPrompt, true);
            return;
        }
        let s = &self.settings;
        match User::create(
            &id,
            Role::SecurityAdmin,
            &password,
            now,
            &s.password,
            s.cost,
        ) {
            Ok(Ok((mut user, _))) => {
                // Chosen by its holder at the console: no forced change.
                user.must_change = false;
                match user.enrolment(&self.settings.name) {
                    Ok(e) => {
                        self.say(&Msg::Enrolment {
                            base32: e.base32,
                            uri: e.uri,
                        });
                        self.state = State::FirstCode {
                            user: Box::new(user),
                        };
                        self.prompt(&Msg::EnrolCodePrompt, false);
                    }
                    Err(e) => self.failed_first(e.to_string()),
                }
            }
            Ok(Err(refusal)) => {
                self.say(&Msg::PasswordRefused(refusal));
                self.state = State::FirstPassword { id };
                self.prompt(&Msg::NewPasswordPrompt, true);
            }
            Err(e) => self.failed_first(e.to_string()),
        }
    }

    fn failed_first(&mut self, detail: String) {
        self.say(&Msg::StoreFailed { detail });
        self.begin_again();
    }

    /// The first administrator proves the app has the secret before the
    /// account exists: a mistyped secret cannot lock the box out.
    fn first_code(&mut self, mut user: User, code: &str, now: Millis) {
        if !matches!(user.confirm_code(code, now), Ok(true)) {
            self.say(&Msg::EnrolCodeWrong);
            self.state = State::FirstCode {
                user: Box::new(user),
            };
            self.prompt(&Msg::EnrolCodePrompt, false);
            return;
        }
        let id = user.id.clone();
        let entry = entry(&id, "user add security-admin (first boot)", "accepted");
        match self.backend.save_logged(&user, entry) {
            Ok(()) => {
                self.say(&Msg::FirstCreated { id });
                self.begin_again();
            }
            Err(detail) => self.failed_first(detail),
        }
    }

    fn login(&mut self, id: &str, password: &str, code: &str, now: Millis) {
        let users = match self.backend.users() {
            Ok(u) => u,
            Err(detail) => {
                self.say(&Msg::StoreFailed { detail });
                self.begin_again();
                return;
            }
        };
        let Some(mut user) = users.into_iter().find(|u| u.id == id) else {
            check_nobody(password, self.settings.cost);
            self.audit(id, "login", "refused: unknown user");
            self.say(&Msg::LoginRefused(Refusal::Wrong));
            self.begin_again();
            return;
        };
        let s = self.settings.clone();
        let result = user.login(password, code, now, &s.password, &s.login);
        match result {
            Ok(Ok(ok)) => {
                if let Err(detail) = self
                    .backend
                    .save_logged(&user, entry(id, "login", "accepted"))
                {
                    self.say(&Msg::StoreFailed { detail });
                    self.begin_again();
                    return;
                }
                let role = user.role;
                self.user = Some(user);
                self.say(&Msg::Welcome {
                    id: id.to_owned(),
                    role,
                });
                if let Some(days) = ok.expires_in_days {
                    self.say(&Msg::ExpiresSoon { days });
                }
                if ok.must_change {
                    self.say(&Msg::MustChange);
                    self.state = State::NewPassword { forced: true };
                    self.prompt(&Msg::NewPasswordPrompt, true);
                } else {
                    self.state = State::Ready;
                    self.ready_prompt();
                }
            }
            Ok(Err(refusal)) => {
                // The failure count must survive; a store failure here
                // only loses one count (and is logged by the backend).
                let refused = entry(id, "login", &format!("refused: {refusal:?}"));
                let _ = self.backend.save_logged(&user, refused);
                self.say(&Msg::LoginRefused(refusal));
                self.begin_again();
            }
            Err(e) => {
                self.audit(id, "login", &format!("refused: {e}"));
                self.say(&Msg::StoreFailed {
                    detail: e.to_string(),
                });
                self.begin_again();
            }
        }
    }

    fn current_password(&mut self, current: &str) {
        let ok = self
            .user
            .as_ref()
            .is_some_and(|u| u.password_matches(current).unwrap_or(false));
        if ok {
            self.state = State::NewPassword { forced: false };
            self.prompt(&Msg::NewPasswordPrompt, true);
        } else {
            let id = self.user_id();
            self.audit(&id, "passwd", "refused: wrong current password");
            self.say(&Msg::LoginRefused(Refusal::Wrong));
            self.state = State::Ready;
            self.ready_prompt();
        }
    }

    fn new_again(&mut self, forced: bool, password: String, again: &str, now: Millis) {
        if password != again {
            self.say(&Msg::PasswordsDiffer);
            self.state = State::NewPassword { forced };
            self.prompt(&Msg::NewPasswordPrompt, true);
            return;
        }
        let s = self.settings.clone();
        let Some(mut user) = self.user.clone() else {
            self.begin_again();
            return;
        };
        let id = user.id.clone();
        match user.change_password(&password, now, &s.password, s.cost) {
            Ok(Ok(())) => match self
                .backend
                .save_logged(&user, entry(&id, "passwd", "accepted"))
            {
                Ok(()) => {
                    self.user = Some(user);
                    self.say(&Msg::PasswordChanged);
                    self.state = State::Ready;
                    self.ready_prompt();
                }
                Err(detail) => {
                    self.say(&Msg::StoreFailed { detail });
                    self.again_or_ready(forced);
                }
            },
            Ok(Err(refusal)) => {
                self.audit(&id, "passwd", &format!("refused: {refusal}"));
                self.say(&Msg::PasswordRefused(refusal));
                self.state = State::NewPassword { forced };
                self.prompt(&Msg::NewPasswordPrompt, true);
            }
            Err(e) => {
                self.say(&Msg::StoreFailed {
                    detail: e.to_string(),
                });
                self.again_or_ready(forced);
            }
        }
    }

    fn again_or_ready(&mut self, forced: bool) {
        if forced {
            self.state = State::NewPassword { forced };
            self.prompt(&Msg::NewPasswordPrompt, true);
        } else {
            self.state = State::Ready;
            self.ready_prompt();
        }
    }

    fn command(&mut self, line: &str, now: Millis) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(&name) = words.first() else {
            self.ready_prompt();
            return;
        };
        let Some(user) = self.user.clone() else {
            self.begin_again();
            return;
        };
        let Some(&(_, permission, _, _)) = COMMANDS.iter().find(|c| c.0 == name) else {
            self.say(&Msg::UnknownCommand {
                word: name.to_owned(),
            });
            self.ready_prompt();
            return;
        };
        let operation = match (name, words.get(1)) {
            ("user", Some(sub)) => format!("user {sub}"),
            _ => name.to_owned(),
        };
        if let Some(p) = permission {
            if !user.role.allows(p) {
                self.audit(&user.id, &operation, "refused: not allowed for the role");
                self.say(&Msg::NotAllowed {
                    command: name.to_owned(),
                    role: user.role,
                });
                self.ready_prompt();
                return;
            }
        }
        match name {
            "help" => {
                self.help("");
                return;
            }
            "whoami" => {
                let role = user.role;
                self.say(&Msg::Welcome {
                    id: user.id.clone(),
                    role,
                });
            }
            "passwd" => {
                self.state = State::CurrentPassword;
                self.prompt(&Msg::PasswordPrompt, true);
                return;
            }
            "lang" => {
                let lang = match words.get(1) {
                    Some(&"ja") => Lang::Ja,
                    Some(&"en") => Lang::En,
                    _ => {
                        self.say(&Msg::Usage {
                            usage: "lang ja | lang en".into(),
                        });
                        self.ready_prompt();
                        return;
                    }
                };
                let mut changed = user.clone();
                changed.lang = lang;
                match self.backend.save(&changed) {
                    Ok(()) => {
                        self.user = Some(changed);
                        self.say(&Msg::LangSet);
                    }
                    Err(detail) => self.say(&Msg::StoreFailed { detail }),
                }
            }
            "users" => match words.get(1) {
                None => self.show_users(now),
                Some(&"export") => {
                    self.export_inventory(&user.id, now);
                    return;
                }
                Some(_) => self.say(&Msg::Usage {
                    usage: "users | users export".into(),
                }),
            },
            "export" => {
                self.export_command(&words[1..], &user.id);
                return;
            }
            "delete" => {
                self.delete_command(&user.id, now);
                return;
            }
            "search" | "next" | "show" => {
                self.records_command(name, &words[1..], &user.id);
                self.ready_prompt();
                return;
            }
            "status" => match self.backend.status() {
                Ok(report) => {
                    let lines = status_lines(self.lang(), &report);
                    self.paged(&lines.join("\r\n"));
                }
                Err(detail) => self.say(&Msg::StoreFailed { detail }),
            },
            "user" if self.user_command(&words[1..], &user) => return,
            "logout" => {
                self.audit(&user.id, "logout", "accepted");
                self.say(&Msg::LoggedOut);
                self.user = None;
                self.begin_again();
                return;
            }
            _ => {}
        }
        self.audit(&user.id, &operation, "accepted");
        self.ready_prompt();
    }

    /// `search records|access KEY VALUE…`, `next`, `show SEQ`; audited
    /// here with what they touched.
    fn records_command(&mut self, name: &str, args: &[&str], me: &str) {
        let mut audit = Audit {
            user: me.to_owned(),
            operation: name.to_owned(),
            ..Audit::default()
        };
        let search = match (name, args.first()) {
            ("search", Some(&"records")) => {
                audit.operation = "search records".into();
                match record_filter(&args[1..]) {
                    Ok(f) => {
                        audit.business = f.business.clone();
                        audit.info_name = f.info_name.clone();
                        audit.items.extend(f.item.clone());
                        Some(LastSearch::Records(f, PageCursor::START))
                    }
                    Err(msg) => {
                        self.say(&msg);
                        None
                    }
                }
            }
            ("search", Some(&"access")) => {
                audit.operation = "search access".into();
                match access_filter(&args[1..]) {
                    Ok(f) => Some(LastSearch::Access(f, PageCursor::START)),
                    Err(msg) => {
                        self.say(&msg);
                        None
                    }
                }
            }
            ("search", _) => {
                self.say(&Msg::Usage {
                    usage: SEARCH_USAGE.into(),
                });
                None
            }
            ("next", _) => match self.last_search.take() {
                Some(last) => Some(last),
                None => {
                    self.say(&Msg::NoMore);
                    None
                }
            },
            _ => {
                audit.operation = "show".into();
                match args.first().and_then(|a| a.parse::<u64>().ok()) {
                    Some(seq) => {
                        let filter = RecordFilter {
                            from_seq: seq,
                            ..RecordFilter::default()
                        };
                        match self.backend.search_records(&filter, PageCursor::START, 1) {
                            Ok((found, _)) => match found.into_iter().find(|r| r.seq == seq) {
                                Some(r) => {
                                    audit.business = Some(r.record.prefix.business.clone());
                                    audit.info_name = Some(r.record.prefix.info_name.clone());
                                    audit.items.extend(r.record.prefix.items.iter().cloned());
                                    let text = record_in_full(&r);
                                    self.out.extend_from_slice(text.as_bytes());
                                }
                                None => self.say(&Msg::NoSuchRecord { seq }),
                            },
                            Err(detail) => self.say(&Msg::StoreFailed { detail }),
                        }
                    }
                    None => self.say(&Msg::Usage {
                        usage: "show SEQ".into(),
                    }),
                }
                audit.outcome = "accepted".into();
                self.backend.audit(audit);
                return;
            }
        };
        let Some(search) = search else {
            audit.outcome = "refused: usage".into();
            self.backend.audit(audit);
            return;
        };
        let fresh = match &search {
            LastSearch::Records(f, c) => {
                (*c == PageCursor::START).then(|| self.backend.count_records(f, COUNT_CAP))
            }
            LastSearch::Access(f, c) => {
                (*c == PageCursor::START).then(|| self.backend.count_access(f, COUNT_CAP))
            }
        };
        match fresh {
            Some(Ok((count, capped))) => self.say(&Msg::Matched { count, capped }),
            Some(Err(detail)) => self.say(&Msg::StoreFailed { detail }),
            None => {}
        }
        // Codes beyond the entry's one business and info name.
        let mut spanned = String::new();
        let (shown, next) = match search {
            LastSearch::Records(filter, cursor) => {
                match self.backend.search_records(&filter, cursor, PAGE) {
                    Ok((page, next)) => {
                        for r in &page {
                            for item in &r.record.prefix.items {
                                if !audit.items.contains(item) && audit.items.len() < 16 {
                                    audit.items.push(item.clone());
                                }
                            }
                            self.out.extend_from_slice(record_lines(r).as_bytes());
                        }
                        spanned = touched_codes(&mut audit, &page);
                        (page.len(), next.map(|c| LastSearch::Records(filter, c)))
                    }
                    Err(detail) => {
                        self.say(&Msg::StoreFailed { detail });
                        (0, None)
                    }
                }
            }
            LastSearch::Access(filter, cursor) => {
                match self.backend.search_access(&filter, cursor, PAGE) {
                    Ok((page, next)) => {
                        for e in &page {
                            self.out.extend_from_slice(access_lines(e).as_bytes());
                        }
                        (page.len(), next.map(|c| LastSearch::Access(filter, c)))
                    }
                    Err(detail) => {
                        self.say(&Msg::StoreFailed { detail });
                        (0, None)
                    }
                }
            }
        };
        let more = next.is_some();
        self.last_search = next;
        self.say(&Msg::Shown { shown, more });
        audit.outcome = format!("accepted: {shown} shown{spanned}");
        self.backend.audit(audit);
    }

    fn show_users(&mut self, now: Millis) {
        match self.backend.users() {
            Ok(users) => {
                let rows = inventory(&users, now, &self.settings.password);
                let mut table = format!(
                    "{:<16} {:<15} {:<16} {:>8} {}\r\n",
                    "user", "role", "last login", "pw days", "locked"
                );
                for r in rows {
                    let last = r
                        .last_login
                        .map(crate::relay::jst::jst_minute)
                        .unwrap_or_else(|| "-".into());
                    table.push_str(&format!(
                        "{:<16} {:<15} {:<16} {:>8} {}\r\n",
                        r.id,
                        r.role.name(),
                        last,
                        r.password_age_days,
                        if r.locked { "yes" } else { "no" }
                    ));
                }
                self.paged(&table);
            }
            Err(detail) => self.say(&Msg::StoreFailed { detail }),
        }
    }

    /// `user add|lock|unlock|reset|delete ID [ROLE]`; true when it moved
    /// to another prompt itself.
    fn user_command(&mut self, args: &[&str], me: &User) -> bool {
        let usage = "user add ID ROLE | user role ID ROLE | user lock ID | user unlock ID \
                     | user reset ID | user delete ID";
        let (Some(&sub), Some(&id)) = (args.first(), args.get(1)) else {
            self.say(&Msg::Usage {
                usage: usage.into(),
            });
            return false;
        };
        let users = match self.backend.users() {
            Ok(u) => u,
            Err(detail) => {
                self.say(&Msg::StoreFailed { detail });
                return false;
            }
        };
        let existing = users.into_iter().find(|u| u.id == id);
        if sub == "add" {
            if existing.is_some() {
                self.say(&Msg::UserExists { id: id.to_owned() });
                return false;
            }
            if !valid_id(id) {
                self.say(&Msg::BadId);
                return false;
            }
            let Some(role) = args.get(2).and_then(|w| parse_role(w)) else {
                let word = args.get(2).copied().unwrap_or("").to_owned();
                self.say(&Msg::UnknownRole { word });
                return false;
            };
            self.state = State::TemporaryPassword {
                id: id.to_owned(),
                role: Some(role),
            };
            self.prompt(&Msg::NewPasswordPrompt, true);
            return true;
        }
        let Some(mut target) = existing else {
            self.say(&Msg::NoSuchUser { id: id.to_owned() });
            return false;
        };
        if target.id == me.id {
            self.say(&Msg::NotYourself);
            return false;
        }
        let msg = match sub {
            "lock" => {
                target.locked = true;
                Msg::Locked { id: id.to_owned() }
            }
            "unlock" => {
                target.unlock();
                Msg::Unlocked { id: id.to_owned() }
            }
            "role" => {
                let Some(role) = args.get(2).and_then(|w| parse_role(w)) else {
                    let word = args.get(2).copied().unwrap_or("").to_owned();
                    self.say(&Msg::UnknownRole { word });
                    return false;
                };
                target.role = role;
                Msg::RoleChanged {
                    id: id.to_owned(),
                    role,
                }
            }
            "reset" => {
                self.state = State::TemporaryPassword {
                    id: id.to_owned(),
                    role: None,
                };
                self.prompt(&Msg::NewPasswordPrompt, true);
                return true;
            }
            "delete" => {
                match self.backend.remove(id) {
                    Ok(()) => self.say(&Msg::Deleted { id: id.to_owned() }),
                    Err(detail) => self.say(&Msg::StoreFailed { detail }),
                }
                return false;
            }
            _ => {
                self.say(&Msg::Usage {
                    usage: usage.into(),
                });
                return false;
            }
        };
        match self.backend.save(&target) {
            Ok(()) => self.say(&msg),
            Err(detail) => self.say(&Msg::StoreFailed { detail }),
        }
        false
    }

    fn temporary_again(
        &mut self,
        id: &str,
        role: Option<Role>,
        password: String,
        again: &str,
        now: Millis,
    ) {
        let admin = self.user_id();
        if password != again {
            self.say(&Msg::PasswordsDiffer);
            self.state = State::TemporaryPassword {
                id: id.to_owned(),
                role,
            };
            self.prompt(&Msg::NewPasswordPrompt, true);
            return;
        }
        let s = self.settings.clone();
        let outcome = match role {
            Some(role) => User::create(id, role, &password, now, &s.password, s.cost).map(|r| {
                r.map(|(user, _)| {
                    let shown = user.enrolment(&s.name).ok();
                    (user, shown)
                })
            }),
            None => match self.backend.users() {
                Ok(users) => match users.into_iter().find(|u| u.id == id) {
                    Some(mut user) => user
                        .reset_password(&password, now, &s.password, s.cost)
                        .map(|r| r.map(|()| (user, None))),
                    None => {
                        self.say(&Msg::NoSuchUser { id: id.to_owned() });
                        self.state = State::Ready;
                        self.ready_prompt();
                        return;
                    }
                },
                Err(detail) => {
                    self.say(&Msg::StoreFailed { detail });
                    self.state = State::Ready;
                    self.ready_prompt();
                    return;
                }
            },
        };
        let operation = if role.is_some() {
            "user add"
        } else {
            "user reset"
        };
        match outcome {
            Ok(Ok((user, enrolment))) => match self
                .backend
                .save_logged(&user, entry(&admin, operation, &format!("accepted: {id}")))
            {
                Ok(()) => {
                    if let Some(e) = enrolment {
                        self.say(&Msg::Enrolment {
                            base32: e.base32,
                            uri: e.uri,
                        });
                        self.say(&Msg::UserCreated {
                            id: id.to_owned(),
                            role: user.role,
                        });
                    } else {
                        self.say(&Msg::Reset { id: id.to_owned() });
                    }
                }
                Err(detail) => self.say(&Msg::StoreFailed { detail }),
            },
            Ok(Err(refusal)) => self.say(&Msg::PasswordRefused(refusal)),
            Err(e) => self.say(&Msg::StoreFailed {
                detail: e.to_string(),
            }),
        }
        self.state = State::Ready;
        self.ready_prompt();
    }

    /// The commands (or subcommands) this user may type after `before`.
    fn choices(&self, before: &str) -> Vec<&'static str> {
        let Some(user) = self.logged_in() else {
            return Vec::new();
        };
        let words: Vec<&str> = before.split_whitespace().collect();
        let fresh_word = before.is_empty() || before.ends_with(' ');
        match (words.as_slice(), fresh_word) {
            ([], _) | ([_], false) => COMMANDS
                .iter()
                .filter(|c| c.1.is_none_or(|p| user.role.allows(p)))
                .map(|c| c.0)
                .collect(),
            (["user"], true) | (["user", _], false)
                if user.role.allows(Permission::ManageUsers) =>
            {
                USER_SUBCOMMANDS.to_vec()
            }
            (["lang"], true) | (["lang", _], false) => vec!["en", "ja"],
            (["export"], true) | (["export", _], false)
                if user.role.allows(Permission::ExportRecords) =>
            {
                vec!["access", "all", "records"]
            }
            (["search"], true) | (["search", _], false)
                if user.role.allows(Permission::SearchRecords) =>
            {
                vec!["access", "records"]
            }
            (["users"], true) | (["users", _], false)
                if user.role.allows(Permission::ManageUsers) =>
            {
                vec!["export"]
            }
            _ => Vec::new(),
        }
    }

    fn complete(&mut self, before: &str) {
        let partial = if before.ends_with(' ') {
            ""
        } else {
            before.split_whitespace().last().unwrap_or("")
        };
        let matching: Vec<&str> = self
            .choices(before)
            .into_iter()
            .filter(|c| c.starts_with(partial))
            .collect();
        match matching.as_slice() {
            [one] => {
                let head = &before[..before.len() - partial.len()];
                let line = format!("{head}{one} ");
                self.editor.set_line(&line, &mut self.out);
            }
            [] => self.out.push(0x07),
            many => {
                self.out.extend_from_slice(b"\r\n");
                self.out.extend_from_slice(many.join("  ").as_bytes());
                self.out.extend_from_slice(b"\r\n");
                self.editor.redraw(&mut self.out);
            }
        }
    }

    fn help(&mut self, before: &str) {
        self.out.extend_from_slice(b"\r\n");
        if self.logged_in().is_none() {
            self.editor.redraw(&mut self.out);
            return;
        }
        let ja = self.lang() == Lang::Ja;
        let choices = self.choices(before);
        if before.trim().is_empty() {
            self.say(&Msg::HelpHeader);
            for c in COMMANDS.iter().filter(|c| choices.contains(&c.0)) {
                let line = format!("  {:<8} {}\r\n", c.0, if ja { c.2 } else { c.3 });
                self.out.extend_from_slice(line.as_bytes());
            }
        } else {
            self.out.extend_from_slice(choices.join("  ").as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if matches!(self.state, State::Ready) && before.is_empty() {
            self.ready_prompt();
        } else {
            self.editor.redraw(&mut self.out);
        }
    }
}

mod deletion;
mod exporting;

/// An access-log entry of `user`'s `operation` and its `outcome`.
fn entry(user: &str, operation: &str, outcome: &str) -> Audit {
    Audit {
        user: user.to_owned(),
        operation: operation.to_owned(),
        outcome: outcome.to_owned(),
        ..Audit::default()
    }
}

/// Fills the entry's business and info name from the records shown when
/// the search did not fix them and they are one each; names them all in
/// the outcome's tail when the records span several (report table 25:
/// every code an access touched).
fn touched_codes(audit: &mut Audit, shown: &[ChainedRecord]) -> String {
    let mut businesses: Vec<&BusinessCode> = Vec::new();
    let mut info_names: Vec<&InfoNameCode> = Vec::new();
    for r in shown {
        let p = &r.record.prefix;
        if !businesses.contains(&&p.business) {
            businesses.push(&p.business);
        }
        if !info_names.contains(&&p.info_name) {
            info_names.push(&p.info_name);
        }
    }
    let mut tail = String::new();
    match businesses.as_slice() {
        [one] => {
            audit.business.get_or_insert_with(|| (*one).clone());
        }
        [] => {}
        many => {
            let codes: Vec<&str> = many.iter().map(|b| b.as_str()).collect();
            tail.push_str(&format!("; businesses {}", codes.join(",")));
        }
    }
    match info_names.as_slice() {
        [one] => {
            audit.info_name.get_or_insert_with(|| (*one).clone());
        }
        [] => {}
        many => {
            let codes: Vec<&str> = many.iter().map(|i| i.as_str()).collect();
            tail.push_str(&format!("; info names {}", codes.join(",")));
        }
    }
    tail
}

/// An ID: 1–32 of `a-z 0-9 - . _`, starting with a letter.
fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && id.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
}

fn parse_role(word: &str) -> Option<Role> {
    [
        Role::Operator,
        Role::Auditor,
        Role::SecurityAdmin,
        Role::Maintainer,
    ]
    .into_iter()
    .find(|r| r.name() == word)
}

const SEARCH_USAGE: &str = "search records [serial S] [code C] [requester A] [provider A] \
     [business B] [info I] [item X] [from YYYY-MM-DD[Thh:mm]] [to …] | search access [serial S] \
     [user U] [party P] [agency A] [operation O] [from …] [to …]";

/// `KEY VALUE` pairs, each key once.
fn pairs<'a>(args: &[&'a str]) -> Result<Vec<(&'a str, &'a str)>, Msg> {
    if args.len() % 2 != 0 {
        return Err(Msg::Usage {
            usage: SEARCH_USAGE.into(),
        });
    }
    Ok(args.chunks(2).map(|c| (c[0], c[1])).collect())
}

fn parsed<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, Msg>
where
    T::Err: std::fmt::Display,
{
    value.parse::<T>().map_err(|e| Msg::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        detail: e.to_string(),
    })
}

fn when(key: &str, value: &str) -> Result<Millis, Msg> {
    crate::relay::jst::parse_jst(value).ok_or_else(|| Msg::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        detail: "YYYY-MM-DD or YYYY-MM-DDThh:mm (JST)".into(),
    })
}

fn record_filter(args: &[&str]) -> Result<RecordFilter, Msg> {
    let mut f = RecordFilter::default();
    for (key, value) in pairs(args)? {
        match key {
            "serial" => f.serial = Some(parsed(key, value)?),
            "code" => f.code = Some(parsed(key, value)?),
            "requester" => f.requester = Some(parsed(key, value)?),
            "provider" => f.provider = Some(parsed(key, value)?),
            "business" => f.business = Some(parsed(key, value)?),
            "info" => f.info_name = Some(parsed(key, value)?),
            "item" => f.item = Some(parsed(key, value)?),
            "from" => f.since = Some(when(key, value)?),
            "to" => f.until = Some(when(key, value)?),
            _ => {
                return Err(Msg::UnknownKey {
                    key: key.to_owned(),
                    keys: "serial code requester provider business info item from to".into(),
                })
            }
        }
    }
    Ok(f)
}

fn access_filter(args: &[&str]) -> Result<AccessFilter, Msg> {
    let mut f = AccessFilter::default();
    for (key, value) in pairs(args)? {
        match key {
            "serial" => f.serial = Some(parsed(key, value)?),
            "user" => f.staff = Some(value.to_owned()),
            "party" => f.party = Some(value.to_owned()),
            "agency" => f.agency = Some(parsed(key, value)?),
            "operation" => f.operation = Some(value.to_owned()),
            "from" => f.since = Some(when(key, value)?),
            "to" => f.until = Some(when(key, value)?),
            _ => {
                return Err(Msg::UnknownKey {
                    key: key.to_owned(),
                    keys: "serial user party agency operation from to".into(),
                })
            }
        }
    }
    Ok(f)
}

/// Two lines of at most 80 columns per record.
fn record_lines(r: &ChainedRecord) -> String {
    let p = &r.record.prefix;
    let items: Vec<&str> = p.items.iter().map(|i| i.as_str()).collect();
    format!(
        "{:>8} {} {:?}/{:?} {}\r\n         {}->{} {} {} {}\r\n",
        r.seq,
        crate::relay::jst::jst_minute(r.at),
        r.record.kind,
        r.record.side,
        r.record.serial,
        p.requester,
        p.provider,
        p.business,
        p.info_name,
        items.join(",")
    )
}

fn access_lines(e: &ChainedAccess) -> String {
    let a = &e.entry;
    format!(
        "{:>8} {} {} {} {:?}\r\n         {} {}\r\n",
        e.seq,
        crate::relay::jst::jst_minute(a.at),
        a.party,
        a.staff.as_deref().unwrap_or("-"),
        a.direction,
        a.operation,
        a.outcome
    )
}

/// Every field of one record, a line each.
fn record_in_full(r: &ChainedRecord) -> String {
    let rec = &r.record;
    let p = &rec.prefix;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let items: Vec<&str> = p.items.iter().map(|i| i.as_str()).collect();
    let lines = [
        ("seq", r.seq.to_string()),
        ("at", crate::relay::jst::jst_minute(r.at)),
        ("kind", format!("{:?}", rec.kind)),
        ("side", format!("{:?}", rec.side)),
        ("serial", rec.serial.to_string()),
        ("requester", p.requester.to_string()),
        ("provider", p.provider.to_string()),
        ("business", p.business.to_string()),
        ("info_name", p.info_name.to_string()),
        ("items", items.join(",")),
        ("code", opt(rec.code.as_ref().map(ToString::to_string))),
        (
            "permit_id",
            opt(rec.permit_id.as_ref().map(ToString::to_string)),
        ),
        (
            "counterpart",
            opt(rec.counterpart.as_ref().map(ToString::to_string)),
        ),
        (
            "query_requested_at",
            crate::relay::jst::jst_minute(rec.query_requested_at),
        ),
        (
            "provision_at",
            opt(rec.provision_at.map(crate::relay::jst::jst_minute)),
        ),
        ("clock_synced", rec.clock_synced.to_string()),
        ("hash", r.hash.iter().map(|b| format!("{b:02x}")).collect()),
    ];
    lines
        .iter()
        .map(|(k, v)| format!("  {k:<19} {v}\r\n"))
        .collect()
}
