//! The maintenance console (issue 10; docs/console.md): per-person
//! accounts with roles, login with a password and a one-time code, and
//! the password policy. So far the account model ([`accounts`]) and the
//! line editing ([`line`]); the session on the serial port, its commands
//! and messages come next.

pub mod accounts;
pub mod line;
