//! The maintenance console (issue 10; docs/console.md): per-person
//! accounts with roles, login with a password and a one-time code, and
//! the password policy. Built so far, all without I/O: the account model
//! ([`accounts`]), line editing ([`line`]), the message catalogue
//! ([`messages`]), the session with first boot, login and the account
//! commands ([`session`]), and accounts kept in the store through the
//! engine ([`store_accounts`]), the thread that serves a session on
//! the serial port ([`tty`]), the status report ([`status`]), exports to
//! a USB stick ([`export`] through the [`media`] seam).

pub mod accounts;
pub mod export;
pub mod line;
pub mod media;
pub mod messages;
pub mod session;
pub mod status;
pub mod store_accounts;
pub mod tty;
