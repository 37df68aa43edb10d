//! The maintenance console (issue 10; docs/console.md): per-person
//! accounts with roles, login with a password and a one-time code, and
//! the password policy. Built so far, all without I/O: the account model
//! ([`accounts`]), line editing ([`line`]), the message catalogue
//! ([`messages`]) and the session with first boot, login and the account
//! commands ([`session`]). Still to come: the session on the serial port,
//! storing accounts through the engine, records and export commands.

pub mod accounts;
pub mod line;
pub mod messages;
pub mod session;
