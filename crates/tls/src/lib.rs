//! ifrelay-tls: certificates and mutual TLS for every link of the box
//! (R-SEC-5).
//!
//! - [`identity`] owns the mapping between a [`Party`] and the one DNS name
//!   its certificate carries (`core.link.invalid`, `is-<agency>.link.invalid`,
//!   `ims-<agency>.link.invalid`), and reads that identity back from a
//!   peer's certificate.
//! - [`config`] owns loading PEM files and building the rustls server and
//!   client configurations: TLS 1.3 only, the ring provider, client
//!   certificates always required.
//!
//! The development test PKI lives in the `ifrelay-devpki` crate, which the
//! firmware never links.
//!
//! Invariant: every TLS configuration this crate builds authenticates both
//! ends against the configured CA; there is no code path that accepts an
//! unauthenticated client.
//!
//! [`Party`]: ifrelay_proto::Party

pub mod config;
pub mod identity;

pub use config::{
    client_config, load_certified_key, load_roots, provider, server_config, TlsError, TlsMaterial,
};
pub use identity::{
    connection_party, dns_name, party_from_dns, peer_party, server_name, verify_peer, IdentityError,
};

/// The rustls version this crate is built against, re-exported so callers
/// name the same types (`ServerConfig`, `ClientConfig`, `CommonState`).
pub use rustls;
/// The tokio adapter for the configurations built here.
pub use tokio_rustls;
