//! Loading the box's TLS material (CA, certificate chain, private key) and
//! building the rustls configurations of every link (R-SEC-5).
//!
//! Invariants of every configuration built here:
//! - TLS 1.3 only, with the `ring` crypto provider;
//! - the server always requires a client certificate chaining to the CA
//!   ([`WebPkiClientVerifier`], never `allow_unauthenticated`);
//! - the client always presents its certificate and verifies the server
//!   against the CA and the expected party's name
//!   ([`crate::identity::server_name`]).
//!
//! PEM is read with `rustls_pki_types::pem::PemObject` (rustls-pemfile is
//! archived, RUSTSEC-2025-0134). Every error names the file that failed and
//! what to do about it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ifrelay_proto::Party;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::identity::{self, IdentityError};

/// Why TLS material could not be loaded or a configuration not built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file does not exist.
    #[error("{what} file {} does not exist; point the configuration at the {what} PEM file", path.display())]
    Missing { what: &'static str, path: PathBuf },
    /// The file exists but cannot be read.
    #[error("{what} file {} cannot be read; check its permissions", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{what} file {} is not valid PEM: {reason}; replace it with the PEM file issued for the box", path.display())]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The file holds no `CERTIFICATE` section.
    #[error("{what} file {} holds no certificate; it must contain at least one \"BEGIN CERTIFICATE\" block", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    /// The file holds no private key section.
    #[error("key file {} holds no private key; it must contain one \"BEGIN PRIVATE KEY\" (PKCS#8), \"BEGIN EC PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\" block", path.display())]
    NoKey { path: PathBuf },
    /// The private key is not the key of the end-entity certificate.
    #[error("the private key of {key} does not match the certificate of {cert}; install the key issued together with that certificate")]
    KeyMismatch { cert: String, key: String },
    /// The private key cannot be used by the ring provider.
    #[error(
        "the private key of {key} cannot be used; use an ECDSA P-256/P-384, Ed25519 or RSA key"
    )]
    UnusableKey {
        key: String,
        #[source]
        source: rustls::Error,
    },
    /// A CA certificate could not be added as a trust anchor.
    #[error("CA certificate in {origin} is not a usable trust anchor; install the network CA certificate")]
    BadCaCertificate {
        origin: String,
        #[source]
        source: rustls::Error,
    },
    /// The own certificate does not chain to the CA or does not name the
    /// expected party.
    #[error("the certificate of {cert} is not valid for {party} under the configured CA: {reason}; install the certificate issued to this box by the network CA")]
    OwnCertificate {
        cert: String,
        party: Party,
        reason: String,
    },
    /// Building the certificate verifier failed.
    #[error("cannot build the certificate verifier: {reason}")]
    Verifier { reason: String },
    /// rustls refused the configuration.
    #[error("cannot build the TLS {side} configuration")]
    Config {
        side: &'static str,
        #[source]
        source: rustls::Error,
    },
}

/// The crypto provider of every configuration: ring (no aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn open_error(what: &'static str, path: &Path, err: pem::Error) -> TlsError {
    match err {
        pem::Error::Io(source) if source.kind() == io::ErrorKind::NotFound => TlsError::Missing {
            what,
            path: path.to_owned(),
        },
        pem::Error::Io(source) => TlsError::Unreadable {
            what,
            path: path.to_owned(),
            source,
        },
        other => TlsError::BadPem {
            what,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Reads every certificate of a PEM file, in file order.
///
/// # Errors
/// [`TlsError::Missing`], [`TlsError::Unreadable`], [`TlsError::BadPem`],
/// or [`TlsError::NoCertificate`] when the file holds none.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| open_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| open_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) of a PEM file.
///
/// Warns when the file is readable by group or others: the key of a box
/// must be readable by the supervisor only.
///
/// # Errors
/// [`TlsError::Missing`], [`TlsError::Unreadable`], [`TlsError::BadPem`],
/// or [`TlsError::NoKey`] when the file holds none.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        other => open_error("key", path, other),
    })?;
    warn_if_shared(path);
    Ok(key)
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "private key file is readable by group or others; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

/// Reads the box's certificate chain (end-entity first) and its private
/// key, and checks that the key belongs to the end-entity certificate.
///
/// # Errors
/// The errors of [`load_certs`] and [`load_key`], and
/// [`TlsError::KeyMismatch`] / [`TlsError::UnusableKey`].
pub fn load_certified_key(
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = load_certs("certificate", cert_pem)?;
    let key = load_key(key_pem)?;
    check_key(
        &chain,
        &key,
        &cert_pem.display().to_string(),
        &key_pem.display().to_string(),
    )?;
    Ok((chain, key))
}

fn check_key(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_origin: &str,
    key_origin: &str,
) -> Result<(), TlsError> {
    match CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: cert_origin.to_owned(),
            key: key_origin.to_owned(),
        }),
        Err(source) => Err(TlsError::UnusableKey {
            key: key_origin.to_owned(),
            source,
        }),
    }
}

/// Reads the CA certificates (trust anchors) of a PEM file.
///
/// # Errors
/// The errors of [`load_certs`], and [`TlsError::BadCaCertificate`] when a
/// certificate cannot be a trust anchor.
pub fn load_roots(ca_pem: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let certs = load_certs("CA certificate", ca_pem)?;
    roots_from_der(&certs, &ca_pem.display().to_string())
}

fn roots_from_der(
    certs: &[CertificateDer<'static>],
    origin: &str,
) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone())
            .map_err(|source| TlsError::BadCaCertificate {
                origin: origin.to_owned(),
                source,
            })?;
    }
    Ok(Arc::new(roots))
}

/// Builds the server configuration from PEM files: see [`TlsMaterial`].
///
/// # Errors
/// The errors of [`TlsMaterial::from_files`] and
/// [`TlsMaterial::server_config`].
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    TlsMaterial::from_files(ca, cert, key)?.server_config()
}

/// Builds the client configuration from PEM files: see [`TlsMaterial`].
///
/// # Errors
/// The errors of [`TlsMaterial::from_files`] and
/// [`TlsMaterial::client_config`].
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    TlsMaterial::from_files(ca, cert, key)?.client_config()
}

/// Everything one party needs for mutual TLS: the CA it trusts, its own
/// certificate chain and the matching private key. Loaded once at start,
/// it builds both the listener's and the dialler's configuration.
pub struct TlsMaterial {
    /// Trust anchors: the network CA.
    pub roots: Arc<RootCertStore>,
    /// Own certificate chain, end-entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key of the end-entity certificate.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            roots: Arc::clone(&self.roots),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsMaterial {
    /// Loads the CA, certificate chain and key PEM files.
    ///
    /// # Errors
    /// The errors of [`load_roots`] and [`load_certified_key`]; each names
    /// the file that failed.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let roots = load_roots(ca)?;
        let (chain, key) = load_certified_key(cert, key)?;
        Ok(Self { roots, chain, key })
    }

    /// Builds material from in-memory DER (simulators and tests).
    ///
    /// # Errors
    /// [`TlsError::BadCaCertificate`], [`TlsError::KeyMismatch`] or
    /// [`TlsError::UnusableKey`].
    pub fn from_der(
        ca: &[CertificateDer<'static>],
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let roots = roots_from_der(ca, "the in-memory CA list")?;
        check_key(&chain, &key, "the in-memory chain", "the in-memory key")?;
        Ok(Self { roots, chain, key })
    }

    /// Checks, before anything is bound, that the own end-entity
    /// certificate chains to the CA, is valid now, and names exactly
    /// `party` — so a box installed with another box's certificate, or one
    /// from another CA, refuses to start instead of failing every
    /// handshake.
    ///
    /// # Errors
    /// [`TlsError::OwnCertificate`] saying what is wrong.
    pub fn verify_own_identity(&self, party: &Party) -> Result<(), TlsError> {
        let cert = "the configured certificate".to_owned();
        let own_error = |reason: String| TlsError::OwnCertificate {
            cert: cert.clone(),
            party: party.clone(),
            reason,
        };
        let name = identity::server_name(party).map_err(|e| own_error(e.to_string()))?;
        identity::verify_peer(&self.chain, party).map_err(|e| match e {
            IdentityError::WrongParty { found, .. } => own_error(format!("it names {found}")),
            other => own_error(other.to_string()),
        })?;
        let (end_entity, intermediates) = self
            .chain
            .split_first()
            .ok_or_else(|| own_error("the chain is empty".to_owned()))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&self.roots), provider())
                .build()
                .map_err(|e| TlsError::Verifier {
                    reason: e.to_string(),
                })?;
        verifier
            .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
            .map_err(|e| own_error(e.to_string()))?;
        Ok(())
    }

    /// The listener's configuration: TLS 1.3, ring, this chain and key,
    /// and a client certificate chaining to the CA always required.
    ///
    /// The client's identity is then read with
    /// [`crate::identity::connection_party`] and checked against the role
    /// and address allowed on that listener.
    ///
    /// # Errors
    /// [`TlsError::Verifier`] or [`TlsError::Config`].
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier {
                    reason: e.to_string(),
                })?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Config {
                side: "server",
                source,
            })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Config {
                side: "server",
                source,
            })?;
        Ok(Arc::new(config))
    }

    /// The dialler's configuration: TLS 1.3, ring, the server verified
    /// against the CA (and, per connection, against the
    /// [`crate::identity::server_name`] of the party dialled), and this
    /// chain presented as client certificate.
    ///
    /// # Errors
    /// [`TlsError::Verifier`] or [`TlsError::Config`].
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        // rustls' own WebPKI verifier; wrapped only so that its error never
        // prints a server's name holding a My Number.
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&self.roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier {
                    reason: e.to_string(),
                })?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Config {
                side: "client",
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(identity::ScreenedServerVerifier::new(
                verifier,
            )))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Config {
                side: "client",
                source,
            })?;
        Ok(Arc::new(config))
    }
}
