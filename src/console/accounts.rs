//! Console accounts: users, roles, passwords and one-time codes
//! (R-SEC-1..4; docs/console.md, "Users, roles and login").
//!
//! Pure logic over one [`User`] at a time, with the time passed in: the
//! caller (the console, through the engine that owns the store) loads a
//! user, calls [`User::login`] or a change, and stores the user again.
//!
//! Invariants:
//! - One role per user, and no role both manages users and exports
//!   records ([`Role::allows`]; tested for every pair).
//! - A password is kept only as an argon2id hash (PHC string, its cost in
//!   it), with the hashes of the ones before it, so that the last
//!   [`PasswordPolicy::history`] (the current one included) are refused.
//! - A one-time code is accepted once: a login records the code's time
//!   step, and a code of that step or an earlier one is refused after.
//! - A refused login never says whether the ID, the password or the code
//!   was wrong, except that a correct password with a code already used
//!   says so (the holder of the password learns only to wait).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ifrelay_proto::Millis;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

const DAY_MS: Millis = 24 * 3600 * 1000;
/// Bytes of a one-time-code secret: 160 bits, RFC 4226's recommendation
/// and what authenticator apps expect for SHA-1.
const OTP_SECRET_BYTES: usize = 20;
/// Seconds per one-time code (RFC 6238's default; tokens and apps use it).
const OTP_STEP_S: u64 = 30;
/// Digits of a one-time code.
const OTP_DIGITS: u8 = 6;

/// What a user may do at the console: exactly one per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::EnumIter)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Watches the box: status and alerts.
    Operator,
    /// Searches and exports records and the access log, deletes what the
    /// retention policy allows, approves another's deletion.
    Auditor,
    /// Manages users and roles, approves another's deletion.
    SecurityAdmin,
    /// Looks after the box: service hours, time, backup, updates.
    Maintainer,
}

/// One thing a command needs leave for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::EnumIter)]
pub enum Permission {
    Status,
    Alerts,
    SearchRecords,
    ExportRecords,
    DeleteRecords,
    /// Be the second person of the two-person rule for deletion.
    ApproveDeletion,
    ManageUsers,
    ServiceHours,
    Time,
    Backup,
    Update,
}

impl Role {
    /// Whether this role may do `p`. Everyone sees the status.
    pub fn allows(self, p: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Operator => matches!(p, P::Status | P::Alerts),
            Role::Auditor => matches!(
                p,
                P::Status
                    | P::SearchRecords
                    | P::ExportRecords
                    | P::DeleteRecords
                    | P::ApproveDeletion
            ),
            Role::SecurityAdmin => matches!(p, P::Status | P::ManageUsers | P::ApproveDeletion),
            Role::Maintainer => matches!(
                p,
                P::Status | P::ServiceHours | P::Time | P::Backup | P::Update
            ),
        }
    }

    /// The name typed and shown at the console.
    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::SecurityAdmin => "security-admin",
            Role::Maintainer => "maintainer",
        }
    }
}

/// The language of a user's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lang {
    #[default]
    Ja,
    En,
}

/// The password rules (R-SEC-4; seed 002 §1.3.5, §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Fewest characters.
    pub min_len: usize,
    /// Fewest kinds of character among lower case, upper case, digits and
    /// others.
    pub min_classes: usize,
    /// So many previous passwords may not be used again.
    pub history: usize,
    /// A password expires so many days after it was set.
    pub max_age_days: u32,
    /// Each login warns from so many days before the expiry.
    pub warn_days: u32,
    /// An expired password not changed for so many more days locks the
    /// account until a security administrator resets it.
    pub lock_after_expiry_days: u32,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_len: 12,
            min_classes: 3,
            history: 5,
            max_age_days: 90,
            warn_days: 14,
            lock_after_expiry_days: 90,
        }
    }
}

/// Failed logins and their lockout (R-SEC-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginPolicy {
    /// Failed attempts in a row that lock the account.
    pub max_failures: u32,
    /// How long such a lock lasts (milliseconds).
    pub lockout_ms: Millis,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            max_failures: 5,
            lockout_ms: 15 * 60 * 1000,
        }
    }
}

/// The argon2id cost of new password hashes. The default is OWASP's
/// recommendation (19 MiB, 2 passes, 1 lane: ~50 ms here); tests use less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    pub memory_kib: u32,
    pub passes: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        HashCost {
            memory_kib: 19 * 1024,
            passes: 2,
        }
    }
}

/// Why an account operation failed (not a refused login: [`Refusal`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The system's random source failed.
    #[error("the random source failed")]
    Random,
    /// Hashing or reading a stored hash failed.
    #[error("password hash: {0}")]
    Hash(String),
    /// The stored one-time-code secret is unusable.
    #[error("one-time code secret: {0}")]
    Otp(String),
}

/// Why a new password is refused; each names what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordRefusal {
    #[error("shorter than {min} characters")]
    TooShort { min: usize },
    #[error("uses {found} kinds of character; at least {min} of lower case, upper case, digits and others are needed")]
    TooFewClasses { found: usize, min: usize },
    #[error("contains the user ID")]
    ContainsId,
    #[error("one of the last {history} passwords of this user")]
    Reused { history: usize },
}

/// Why a login is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The ID, the password or the code is wrong (not said which).
    Wrong,
    /// The password is right but the code was used already: wait for the
    /// next one.
    CodeUsed,
    /// Too many failures: locked until then.
    LockedUntil(Millis),
    /// Locked by a security administrator.
    Locked,
    /// The password expired and was not changed in time: a security
    /// administrator must reset it.
    ExpiredLocked,
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    /// The password must be changed before anything else (first login,
    /// after a reset, or expired).
    pub must_change: bool,
    /// Whole days until the password expires, when within the warning
    /// period (0: expires today).
    pub expires_in_days: Option<u32>,
}

/// One console account, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub role: Role,
    pub lang: Lang,
    /// argon2id hash, PHC string.
    password: String,
    /// Hashes of earlier passwords, newest first.
    history: Vec<String>,
    pub password_set_at: Millis,
    /// Set by a reset and at creation: change at the next login.
    pub must_change: bool,
    #[serde(with = "serde_bytes")]
    otp_secret: Vec<u8>,
    /// Time step of the last code accepted.
    otp_last_step: Option<u64>,
    /// Failed logins in a row.
    pub failures: u32,
    pub locked_until: Option<Millis>,
    /// Locked by a security administrator.
    pub locked: bool,
    pub created_at: Millis,
    pub last_login: Option<Millis>,
}

/// A new one-time-code secret, to show once at enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// The secret as base32, to type into an app or a token tool.
    pub base32: String,
    /// `otpauth://totp/…` for apps that read it (as a QR code elsewhere).
    pub uri: String,
}

impl User {
    /// A new user with `password` (checked against `policy`) and a fresh
    /// one-time-code secret; the password must be changed at the first
    /// login. Returns the enrolment to show once.
    ///
    /// # Errors
    /// [`PasswordRefusal`] inside `Ok(Err)`; [`AccountError`] when the
    /// random source or hashing fails.
    pub fn create(
        id: &str,
        role: Role,
        password: &str,
        now: Millis,
        policy: &PasswordPolicy,
        cost: HashCost,
    ) -> Result<Result<(User, Enrolment), PasswordRefusal>, AccountError> {
        if let Err(refusal) = check_rules(id, password, policy) {
            return Ok(Err(refusal));
        }
        let mut secret = vec![0u8; OTP_SECRET_BYTES];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| AccountError::Random)?;
        let user = User {
            id: id.to_owned(),
            role,
            lang: Lang::default(),
            password: hash(password, cost)?,
            history: Vec::new(),
            password_set_at: now,
            must_change: true,
            otp_secret: secret,
            otp_last_step: None,
            failures: 0,
            locked_until: None,
            locked: false,
            created_at: now,
            last_login: None,
        };
        let enrolment = user.enrolment("ifrelay")?;
        Ok(Ok((user, enrolment)))
    }

    /// The enrolment of this user's secret, under `issuer` (the box's
    /// name as the app will list it).
    ///
    /// # Errors
    /// [`AccountError::Otp`] for an unusable stored secret.
    pub fn enrolment(&self, issuer: &str) -> Result<Enrolment, AccountError> {
        let base32 = self.totp()?.secret().to_base32();
        let label = format!("{}:{}", percent(issuer), percent(&self.id));
        let uri = format!(
            "otpauth://totp/{label}?secret={base32}&issuer={}&algorithm=SHA1&digits={OTP_DIGITS}&period={OTP_STEP_S}",
            percent(issuer)
        );
        Ok(Enrolment { base32, uri })
    }

    fn totp(&self) -> Result<totp_rs::Totp, AccountError> {
        totp_rs::Builder::new()
            .with_algorithm(totp_rs::Algorithm::SHA1)
            .with_digits(OTP_DIGITS)
            .with_skew(1)
            .with_step_duration(OTP_STEP_S)
            .with_secret(self.otp_secret.clone())
            .build()
            .map_err(|e| AccountError::Otp(e.to_string()))
    }

    /// A login attempt at `now` with `password` and `code`. Counts a
    /// failure (and locks after [`LoginPolicy::max_failures`]), or
    /// records the login and the code's step.
    ///
    /// # Errors
    /// [`AccountError`] when the stored hash or secret is unusable (the
    /// attempt is then not counted).
    pub fn login(
        &mut self,
        password: &str,
        code: &str,
        now: Millis,
        policy: &PasswordPolicy,
        login: &LoginPolicy,
    ) -> Result<Result<LoggedIn, Refusal>, AccountError> {
        if self.locked {
            return Ok(Err(Refusal::Locked));
        }
        if self.expired_locked(now, policy) {
            return Ok(Err(Refusal::ExpiredLocked));
        }
        if let Some(until) = self.locked_until.filter(|&u| now < u) {
            return Ok(Err(Refusal::LockedUntil(until)));
        }
        let password_ok = verify(password, &self.password)?;
        let seconds = u64::try_from(now.div_euclid(1000)).unwrap_or(0);
        let step = self.totp()?.check(code.trim(), seconds);
        let outcome = match (password_ok, step) {
            (true, Some(step)) if self.otp_last_step.is_some_and(|last| step <= last) => {
                Err(Refusal::CodeUsed)
            }
            (true, Some(step)) => Ok(step),
            _ => Err(Refusal::Wrong),
        };
        match outcome {
            Ok(step) => {
                self.otp_last_step = Some(step);
                self.failures = 0;
                self.locked_until = None;
                self.last_login = Some(now);
                let expires_at = self.expires_at(policy);
                let left = expires_at - now;
                let expires_in_days = (left >= 0 && left < i64::from(policy.warn_days) * DAY_MS)
                    .then(|| u32::try_from(left / DAY_MS).unwrap_or(0));
                Ok(Ok(LoggedIn {
                    must_change: self.must_change || now >= expires_at,
                    expires_in_days,
                }))
            }
            Err(refusal) => {
                self.failures += 1;
                if self.failures >= login.max_failures {
                    self.failures = 0;
                    let until = now + login.lockout_ms;
                    self.locked_until = Some(until);
                    return Ok(Err(Refusal::LockedUntil(until)));
                }
                Ok(Err(refusal))
            }
        }
    }

    /// Whether `password` is the current one (a change asks for it).
    ///
    /// # Errors
    /// [`AccountError::Hash`] for an unusable stored hash.
    pub fn password_matches(&self, password: &str) -> Result<bool, AccountError> {
        verify(password, &self.password)
    }

    /// Checks a code at enrolment, before the account is stored: the
    /// holder's app has the secret. A code accepted here is used.
    ///
    /// # Errors
    /// [`AccountError::Otp`] for an unusable secret.
    pub fn confirm_code(&mut self, code: &str, now: Millis) -> Result<bool, AccountError> {
        let seconds = u64::try_from(now.div_euclid(1000)).unwrap_or(0);
        match self.totp()?.check(code.trim(), seconds) {
            Some(step) if self.otp_last_step.is_none_or(|last| step > last) => {
                self.otp_last_step = Some(step);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// When the current password expires.
    pub fn expires_at(&self, policy: &PasswordPolicy) -> Millis {
        self.password_set_at + i64::from(policy.max_age_days) * DAY_MS
    }

    /// Whether the password expired and stayed unchanged long enough to
    /// lock the account (until a reset).
    pub fn expired_locked(&self, now: Millis, policy: &PasswordPolicy) -> bool {
        now >= self.expires_at(policy) + i64::from(policy.lock_after_expiry_days) * DAY_MS
    }

    /// The user changes their own password (after logging in).
    ///
    /// # Errors
    /// As [`User::create`].
    pub fn change_password(
        &mut self,
        new: &str,
        now: Millis,
        policy: &PasswordPolicy,
        cost: HashCost,
    ) -> Result<Result<(), PasswordRefusal>, AccountError> {
        if let Err(refusal) = check_rules(&self.id, new, policy) {
            return Ok(Err(refusal));
        }
        let recent = std::iter::once(&self.password).chain(self.history.iter());
        for old in recent.take(policy.history.max(1)) {
            if verify(new, old)? {
                return Ok(Err(PasswordRefusal::Reused {
                    history: policy.history.max(1),
                }));
            }
        }
        self.set_password(new, now, policy, cost)?;
        self.must_change = false;
        Ok(Ok(()))
    }

    /// A security administrator resets the password: a temporary one,
    /// to be changed at the next login; clears every lock.
    ///
    /// # Errors
    /// As [`User::create`].
    pub fn reset_password(
        &mut self,
        temporary: &str,
        now: Millis,
        policy: &PasswordPolicy,
        cost: HashCost,
    ) -> Result<Result<(), PasswordRefusal>, AccountError> {
        if let Err(refusal) = check_rules(&self.id, temporary, policy) {
            return Ok(Err(refusal));
        }
        self.set_password(temporary, now, policy, cost)?;
        self.must_change = true;
        self.unlock();
        Ok(Ok(()))
    }

    /// Clears a security administrator's lock and a lockout.
    pub fn unlock(&mut self) {
        self.locked = false;
        self.locked_until = None;
        self.failures = 0;
    }

    fn set_password(
        &mut self,
        new: &str,
        now: Millis,
        policy: &PasswordPolicy,
        cost: HashCost,
    ) -> Result<(), AccountError> {
        let previous = std::mem::replace(&mut self.password, hash(new, cost)?);
        self.history.insert(0, previous);
        // With the current one, the last `history` passwords.
        self.history.truncate(policy.history.saturating_sub(1));
        self.password_set_at = now;
        Ok(())
    }
}

/// The rules a password must meet before it is hashed.
fn check_rules(id: &str, password: &str, policy: &PasswordPolicy) -> Result<(), PasswordRefusal> {
    if password.chars().count() < policy.min_len {
        return Err(PasswordRefusal::TooShort {
            min: policy.min_len,
        });
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password
            .chars()
            .any(|c| !c.is_lowercase() && !c.is_uppercase() && !c.is_ascii_digit()),
    ]
    .iter()
    .filter(|&&present| present)
    .count();
    if classes < policy.min_classes {
        return Err(PasswordRefusal::TooFewClasses {
            found: classes,
            min: policy.min_classes,
        });
    }
    if !id.is_empty() && password.to_lowercase().contains(&id.to_lowercase()) {
        return Err(PasswordRefusal::ContainsId);
    }
    Ok(())
}

fn hash(password: &str, cost: HashCost) -> Result<String, AccountError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| AccountError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountError::Hash(e.to_string()))?;
    let params = Params::new(cost.memory_kib, cost.passes, 1, None)
        .map_err(|e| AccountError::Hash(e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// Spends the time a password check takes, for an ID that has no
/// account: a refusal then takes as long whether or not the ID exists.
pub fn check_nobody(password: &str, cost: HashCost) {
    static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("no account has this password", cost).ok());
    if let Some(phc) = dummy {
        let _ = verify(password, phc);
    }
}

/// Whether `password` matches `phc` (its algorithm and cost read from it).
fn verify(password: &str, phc: &str) -> Result<bool, AccountError> {
    let parsed = PasswordHash::new(phc).map_err(|e| AccountError::Hash(e.to_string()))?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// Percent-encodes what an `otpauth://` label or parameter must not hold
/// raw (RFC 3986 unreserved characters pass).
fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One line of the account inventory (seed 002 §4.7 item 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryRow {
    pub id: String,
    pub role: Role,
    pub last_login: Option<Millis>,
    /// Whole days since the password was set.
    pub password_age_days: i64,
    /// Locked by an administrator, by failures, or by expiry.
    pub locked: bool,
}

/// The inventory of `users` at `now`, sorted by ID.
pub fn inventory(users: &[User], now: Millis, policy: &PasswordPolicy) -> Vec<InventoryRow> {
    let mut rows: Vec<InventoryRow> = users
        .iter()
        .map(|u| InventoryRow {
            id: u.id.clone(),
            role: u.role,
            last_login: u.last_login,
            password_age_days: (now - u.password_set_at).div_euclid(DAY_MS),
            locked: u.locked
                || u.locked_until.is_some_and(|until| now < until)
                || u.expired_locked(now, policy),
        })
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows
}

/// The inventory as CSV for a spreadsheet: UTF-8 with a byte-order mark,
/// CRLF, a header row; times in JST (`fmt_time`).
///
/// # Errors
/// When the CSV writer fails (it writes to memory).
pub fn inventory_csv(
    rows: &[InventoryRow],
    fmt_time: impl Fn(Millis) -> String,
) -> Result<Vec<u8>, csv::Error> {
    let mut out = Vec::from(&b"\xEF\xBB\xBF"[..]);
    {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(&mut out);
        w.write_record(["user", "role", "last_login", "password_age_days", "locked"])?;
        for r in rows {
            let last = r.last_login.map(&fmt_time).unwrap_or_default();
            let age = r.password_age_days.to_string();
            let locked = if r.locked { "yes" } else { "no" };
            w.write_record([r.id.as_str(), r.role.name(), &last, &age, locked])?;
        }
        w.flush()?;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use strum::IntoEnumIterator;

    use super::*;

    const T0: Millis = 1_796_000_000_000;
    /// Cheap hashes: the cost is read back from each hash.
    const CHEAP: HashCost = HashCost {
        memory_kib: 64,
        passes: 1,
    };
    const PASSWORD: &str = "Correct-Horse-9";

    fn user(role: Role) -> User {
        let (u, _) = User::create(
            "sato",
            role,
            PASSWORD,
            T0,
            &PasswordPolicy::default(),
            CHEAP,
        )
        .unwrap()
        .unwrap();
        u
    }

    /// The code an authenticator app shows at `at`, computed from the
    /// enrolment's base32 alone (not through `User`).
    fn code(enrolment: &Enrolment, at: Millis) -> String {
        let secret = totp_rs::Secret::try_from_base32(&enrolment.base32).unwrap();
        let totp = totp_rs::Builder::new()
            .with_secret(secret.as_bytes().to_vec())
            .build()
            .unwrap();
        totp.generate(u64::try_from(at / 1000).unwrap()).to_string()
    }

    fn login(u: &mut User, password: &str, code: &str, at: Millis) -> Result<LoggedIn, Refusal> {
        u.login(
            password,
            code,
            at,
            &PasswordPolicy::default(),
            &LoginPolicy::default(),
        )
        .unwrap()
    }

    #[test]
    fn no_role_both_manages_users_and_exports_records() {
        for role in Role::iter() {
            assert!(
                !(role.allows(Permission::ManageUsers) && role.allows(Permission::ExportRecords)),
                "{role:?}"
            );
            assert!(role.allows(Permission::Status));
        }
        let holders = |p| Role::iter().filter(|r| r.allows(p)).count();
        for p in Permission::iter() {
            assert!(holders(p) >= 1, "{p:?} is nobody's");
        }
        assert!(!Role::Operator.allows(Permission::SearchRecords));
        assert!(!Role::Maintainer.allows(Permission::ExportRecords));
        assert!(!Role::Auditor.allows(Permission::ManageUsers));
    }

    #[test]
    fn the_rfc_6238_sha1_vectors_hold() {
        // RFC 6238 appendix B, SHA-1, secret "12345678901234567890";
        // six digits are the last six of the eight listed.
        let totp = totp_rs::Builder::new()
            .with_secret(b"12345678901234567890".to_vec())
            .build()
            .unwrap();
        for (t, eight) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            assert_eq!(totp.generate(t).to_string(), eight[2..]);
        }
    }

    #[test]
    fn a_login_needs_the_password_and_the_current_code_and_a_code_works_once() {
        let (mut u, enrolment) = User::create(
            "sato",
            Role::Auditor,
            PASSWORD,
            T0,
            &PasswordPolicy::default(),
            CHEAP,
        )
        .unwrap()
        .unwrap();
        assert!(enrolment
            .uri
            .starts_with("otpauth://totp/ifrelay:sato?secret="));
        assert!(enrolment.uri.contains(&enrolment.base32));
        let now = T0 + 1_000;
        let ok = login(&mut u, PASSWORD, &code(&enrolment, now), now).unwrap();
        assert!(ok.must_change, "first login changes the password");
        assert_eq!(u.last_login, Some(now));
        // The same code again, even with the right password: refused.
        assert_eq!(
            login(&mut u, PASSWORD, &code(&enrolment, now), now + 2_000),
            Err(Refusal::CodeUsed)
        );
        // Wrong password with a fresh code; right password with a wrong code.
        let later = now + 60_000;
        assert_eq!(
            login(&mut u, "Wrong-Horse-99", &code(&enrolment, later), later),
            Err(Refusal::Wrong)
        );
        let wrong_code = format!(
            "{:06}",
            (code(&enrolment, later).parse::<u32>().unwrap() + 1) % 1_000_000
        );
        assert_eq!(
            login(&mut u, PASSWORD, &wrong_code, later),
            Err(Refusal::Wrong)
        );
        // One step of clock difference either way is accepted.
        let next = later + 30_000;
        assert!(login(&mut u, PASSWORD, &code(&enrolment, next + 30_000), next).is_ok());
    }

    #[test]
    fn five_failures_lock_for_the_lockout_then_a_login_works() {
        let (mut u, enrolment) = User::create(
            "sato",
            Role::Operator,
            PASSWORD,
            T0,
            &PasswordPolicy::default(),
            CHEAP,
        )
        .unwrap()
        .unwrap();
        let at = T0 + 10_000;
        for _ in 0..4 {
            assert_eq!(login(&mut u, "nope", "000000", at), Err(Refusal::Wrong));
        }
        let until = at + LoginPolicy::default().lockout_ms;
        assert_eq!(
            login(&mut u, "nope", "000000", at),
            Err(Refusal::LockedUntil(until))
        );
        // Locked: even the right password and code are refused.
        let during = until - 1_000;
        assert_eq!(
            login(&mut u, PASSWORD, &code(&enrolment, during), during),
            Err(Refusal::LockedUntil(until))
        );
        assert!(login(&mut u, PASSWORD, &code(&enrolment, until), until).is_ok());
        assert_eq!(u.failures, 0);
    }

    #[test]
    fn an_administrator_lock_holds_until_unlocked() {
        let (mut u, enrolment) = User::create(
            "sato",
            Role::Operator,
            PASSWORD,
            T0,
            &PasswordPolicy::default(),
            CHEAP,
        )
        .unwrap()
        .unwrap();
        u.locked = true;
        let at = T0 + 5_000;
        assert_eq!(
            login(&mut u, PASSWORD, &code(&enrolment, at), at),
            Err(Refusal::Locked)
        );
        u.unlock();
        assert!(login(&mut u, PASSWORD, &code(&enrolment, at), at).is_ok());
    }

    #[test]
    fn expiry_warns_for_14_days_forces_a_change_then_locks_90_days_later() {
        let policy = PasswordPolicy::default();
        let (mut u, enrolment) =
            User::create("sato", Role::Maintainer, PASSWORD, T0, &policy, CHEAP)
                .unwrap()
                .unwrap();
        u.must_change = false;
        let expiry = u.expires_at(&policy);
        assert_eq!(expiry, T0 + 90 * DAY_MS);
        let at = |t: Millis, u: &mut User| login(u, PASSWORD, &code(&enrolment, t), t);
        let quiet = at(expiry - 15 * DAY_MS, &mut u).unwrap();
        assert_eq!((quiet.must_change, quiet.expires_in_days), (false, None));
        let warned = at(expiry - 14 * DAY_MS + 60_000, &mut u).unwrap();
        assert_eq!(warned.expires_in_days, Some(13));
        let last_day = at(expiry - 3_600_000, &mut u).unwrap();
        assert_eq!(last_day.expires_in_days, Some(0));
        let expired = at(expiry + DAY_MS, &mut u).unwrap();
        assert!(expired.must_change && expired.expires_in_days.is_none());
        let lock = expiry + 90 * DAY_MS;
        assert!(at(lock - 60_000, &mut u).is_ok());
        assert_eq!(at(lock, &mut u), Err(Refusal::ExpiredLocked));
        // A reset by an administrator opens it again, with a forced change.
        u.reset_password("Temporary-Pass-1", lock, &policy, CHEAP)
            .unwrap()
            .unwrap();
        let t = lock + 60_000;
        let ok = login(&mut u, "Temporary-Pass-1", &code(&enrolment, t), t).unwrap();
        assert!(ok.must_change);
    }

    #[test]
    fn passwords_follow_the_rules_and_the_last_five_are_not_reused() {
        let policy = PasswordPolicy::default();
        let mut u = user(Role::Auditor);
        let refused = |u: &mut User, p: &str| u.change_password(p, T0, &policy, CHEAP).unwrap();
        assert_eq!(
            refused(&mut u, "Short-1"),
            Err(PasswordRefusal::TooShort { min: 12 })
        );
        assert_eq!(
            refused(&mut u, "alllowercase1"),
            Err(PasswordRefusal::TooFewClasses { found: 2, min: 3 })
        );
        assert_eq!(
            refused(&mut u, "My-Sato-Pass-1"),
            Err(PasswordRefusal::ContainsId)
        );
        assert_eq!(
            refused(&mut u, PASSWORD),
            Err(PasswordRefusal::Reused { history: 5 })
        );
        for n in 1..=5 {
            assert_eq!(refused(&mut u, &format!("Another-Pass-{n}")), Ok(()));
        }
        assert!(!u.must_change);
        // The first of the five is still among the last five: refused;
        // the original one has aged out: allowed again.
        assert_eq!(
            refused(&mut u, "Another-Pass-1"),
            Err(PasswordRefusal::Reused { history: 5 })
        );
        assert_eq!(refused(&mut u, PASSWORD), Ok(()));
        // Japanese characters count as "others" and by characters, not bytes.
        assert_eq!(refused(&mut u, "パスワードは長くて安全2A"), Ok(()));
    }

    #[test]
    fn hashes_are_argon2id_and_carry_their_cost() {
        let u = user(Role::Operator);
        assert!(
            u.password.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{}",
            u.password
        );
        assert!(verify(PASSWORD, &u.password).unwrap());
        assert!(!verify("Correct-Horse-8", &u.password).unwrap());
        let stored = hash(PASSWORD, HashCost::default()).unwrap();
        assert!(stored.contains("m=19456,t=2,p=1"));
    }

    #[test]
    fn the_inventory_lists_every_user_with_a_byte_order_mark() {
        let policy = PasswordPolicy::default();
        let mut a = user(Role::Auditor);
        a.id = "yamada".into();
        a.last_login = Some(T0 + DAY_MS);
        let mut b = user(Role::SecurityAdmin);
        b.locked = true;
        let rows = inventory(&[a, b], T0 + 10 * DAY_MS, &policy);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].id.as_str(), rows[0].locked), ("sato", true));
        assert_eq!(rows[1].password_age_days, 10);
        let csv = inventory_csv(&rows, |t| format!("t{t}")).unwrap();
        let text = String::from_utf8(csv).unwrap();
        assert!(text.starts_with("\u{feff}user,role,last_login,password_age_days,locked\r\n"));
        assert!(text.contains("sato,security-admin,,10,yes\r\n"));
        assert!(text.contains(&format!("yamada,auditor,t{},10,no\r\n", T0 + DAY_MS)));
    }

    #[test]
    fn an_otpauth_uri_escapes_its_label() {
        let mut u = user(Role::Operator);
        u.id = "sato taro".into();
        let e = u.enrolment("box 131016").unwrap();
        assert!(e
            .uri
            .starts_with("otpauth://totp/box%20131016:sato%20taro?secret="));
        assert!(e
            .uri
            .ends_with("&issuer=box%20131016&algorithm=SHA1&digits=6&period=30"));
        assert_eq!(e.base32.len(), 32, "160 bits in base32");
    }
}
