//! ifrelay-testkit: everything that drives the box without being the box —
//! simulators of the core system and intermediate servers speaking the
//! real protocol over real mutual TLS ([`sim`]), a loopback network of
//! boxes and simulators ([`testbed`]), one scenario per refusal reason
//! ([`scenarios`]), hostile peers and the flood mix ([`hostile`]),
//! `make demo` ([`demo`]) and `make bench` ([`bench`]), and a person at
//! the box's serial console ([`terminal`]).
//!
//! The firmware (`ifrelay`) never links this crate: `cargo tree -p ifrelay
//! -e normal` shows none of it, nor the development PKI or the simulators'
//! body encryption. Boxes run here either in-process (the firmware's
//! library, `RunningBox`) or as child processes of the real `ifrelay`
//! binary ([`firmware`]).

pub mod bench;
pub mod child;
pub mod demo;
pub mod firmware;
pub mod hostile;
pub mod scenarios;
pub mod sim;
pub mod soak;
pub mod stats;
pub mod stick;
pub mod terminal;
pub mod testbed;
pub mod workdir;
