//! ifrelay-devpki: the development test PKI — a CA and party certificates
//! generated at run time with rcgen, for tests, simulators, `make demo` and
//! `make bench`. The firmware never links this crate (issue 6: only what
//! the box runs ships in it); the box reads certificates the network's CA
//! issued from files.
//!
//! Invariants:
//! - nothing here is ever committed: every key is generated in memory and
//!   written only where the caller asks (key files with mode 0600);
//! - every leaf carries exactly one DNS SAN, the party's
//!   [`identity::dns_name`], and both serverAuth and clientAuth, since every
//!   party both listens and dials;
//! - keys are ECDSA P-256; validity runs from one day ago (clock skew) to
//!   one year ahead.
//!
//! This is not a production CA: the network's real CA issues the certificates
//! installed on a box.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod operator;

pub use operator::{generate_ed25519, public_key_pem, DevOperator};

use ifrelay_proto::Party;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use ifrelay_tls::identity::{self, IdentityError};
use ifrelay_tls::{TlsError, TlsMaterial};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Why a development certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// rcgen refused to generate a key or certificate.
    #[error("cannot generate the {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// The party has no certificate name.
    #[error("cannot issue a certificate")]
    Identity(#[from] IdentityError),
    /// A PEM file could not be written.
    #[error("cannot write {}; check that the directory exists and is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The issued material is not usable by rustls.
    #[error("issued material is not usable")]
    Tls(#[from] TlsError),
    /// An Ed25519 key of the development operator could not be made.
    #[error("cannot generate an Ed25519 key: {0}")]
    Ed25519(&'static str),
}

/// A development CA: self-signed, ECDSA P-256, may only sign leaves.
pub struct DevPki {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// The national operator of this development network.
    operator: Arc<DevOperator>,
}

impl std::fmt::Debug for DevPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki").finish_non_exhaustive()
    }
}

/// A leaf certificate and its key, issued by a [`DevPki`].
#[derive(Clone)]
pub struct IssuedCert {
    /// The party named by the certificate, if it was issued for one.
    pub party: Option<Party>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("party", &self.party)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn generate(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

impl DevPki {
    /// Generates a fresh CA.
    ///
    /// # Errors
    /// [`PkiError::Generate`] if rcgen fails.
    pub fn new() -> Result<Self, PkiError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate("CA key"))?;
        let mut params = CertificateParams::default();
        // A name of its own per CA, so that a certificate of another
        // development CA is refused as "unknown issuer", not matched by name.
        let key_id = params.key_identifier(&key);
        let tag: String = key_id.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ifrelay development");
        dn.push(
            DnType::CommonName,
            format!("ifrelay development CA {tag} (not for production)"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - DAY).into();
        params.not_after = (now + YEAR + DAY).into();
        let cert = params
            .self_signed(&key)
            .map_err(generate("CA certificate"))?;
        Ok(Self {
            ca_der: cert.der().clone(),
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            operator: Arc::new(DevOperator::generate()?),
        })
    }

    /// The CA certificate (DER), to trust.
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A root store holding only this CA.
    ///
    /// # Errors
    /// [`PkiError::Tls`] if rustls refuses the CA certificate (a bug).
    pub fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(|source| TlsError::BadCaCertificate {
                origin: "the development CA".to_owned(),
                source,
            })?;
        Ok(Arc::new(roots))
    }

    /// Issues the certificate of `party`: one DNS SAN
    /// ([`identity::dns_name`]), serverAuth + clientAuth, valid from one day
    /// ago to one year ahead.
    ///
    /// # Errors
    /// [`PkiError::Identity`] when the party has no certificate name,
    /// [`PkiError::Generate`] if rcgen fails.
    pub fn issue(&self, party: &Party) -> Result<IssuedCert, PkiError> {
        let name = identity::checked_dns_name(party)?;
        let mut issued = self.issue_with_names(&[name.as_str()])?;
        issued.party = Some(party.clone());
        Ok(issued)
    }

    /// Issues a leaf carrying exactly the given DNS SANs, unchecked — for
    /// tests of certificates that name no party, or several.
    ///
    /// # Errors
    /// [`PkiError::Generate`] if rcgen fails (e.g. a non-ASCII name).
    pub fn issue_with_names(&self, dns_names: &[&str]) -> Result<IssuedCert, PkiError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate("leaf key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ifrelay development");
        if let Some(first) = dns_names.first() {
            dn.push(DnType::CommonName, *first);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| {
                (*n).to_owned()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(generate("leaf DNS name"))
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - DAY).into();
        params.not_after = (now + YEAR).into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate("leaf certificate"))?;
        Ok(IssuedCert {
            party: None,
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        })
    }

    /// In-memory [`TlsMaterial`] of `issued`, trusting this CA.
    ///
    /// # Errors
    /// [`PkiError::Tls`] if rustls refuses the material (a bug).
    pub fn material(&self, issued: &IssuedCert) -> Result<TlsMaterial, PkiError> {
        Ok(TlsMaterial::from_der(
            std::slice::from_ref(&self.ca_der),
            issued.chain(),
            issued.key(),
        )?)
    }

    /// The development national operator, whose root signs this
    /// network's distributions.
    pub fn operator(&self) -> Arc<DevOperator> {
        Arc::clone(&self.operator)
    }

    /// The distribution roots boxes and IMSs of this network pin.
    pub fn distribution_roots(&self) -> Vec<ifrelay_proto::RootKey> {
        vec![self.operator.root()]
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns that path.
    ///
    /// # Errors
    /// [`PkiError::Write`].
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf, PkiError> {
        let path = dir.join("ca.pem");
        write_file(&path, self.ca_pem.as_bytes(), false)?;
        Ok(path)
    }
}

impl IssuedCert {
    /// The chain to present: the leaf alone (the CA is the trust anchor).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }

    /// The leaf certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The private key (PKCS#8 DER).
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// The leaf certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key (PKCS#8 PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `dir/<stem>.pem` (certificate) and `dir/<stem>.key` (private
    /// key, mode 0600 on Unix) and returns their paths. The CA certificate
    /// is written by [`DevPki::write_ca`].
    ///
    /// # Errors
    /// [`PkiError::Write`].
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        write_file(&cert_path, self.cert_pem.as_bytes(), false)?;
        write_file(&key_path, self.key_pem.as_bytes(), true)?;
        Ok((cert_path, key_path))
    }
}

pub(crate) fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let fail = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(fail)?;
    // `mode` applies only to a new file: tighten an existing one too.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ifrelay_proto::AgencyCode;

    #[test]
    fn issued_leaf_names_its_party_and_verifies_against_the_ca() {
        let pki = DevPki::new().expect("CA");
        let party = Party::is(AgencyCode::new("131016").expect("code"));
        let issued = pki.issue(&party).expect("leaf");
        assert_eq!(identity::peer_party(&issued.chain()), Ok(party.clone()));
        let material = pki.material(&issued).expect("material");
        material.verify_own_identity(&party).expect("own identity");
    }

    #[test]
    fn malformed_party_is_not_issued() {
        let pki = DevPki::new().expect("CA");
        let party = Party {
            role: ifrelay_proto::Role::Ims,
            agency: None,
        };
        assert!(matches!(pki.issue(&party), Err(PkiError::Identity(_))));
    }
}
