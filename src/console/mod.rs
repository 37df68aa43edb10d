//! The maintenance console (issue 10; docs/console.md): per-person
//! accounts with roles, login with a password and a one-time code, and
//! the password policy. So far the account model ([`accounts`]); the
//! line console on the serial port, its commands and the accounts'
//! storage come next.

pub mod accounts;
