//! Certificate identity of each party of the network (R-SEC-5).
//!
//! A party is named by exactly one DNS subject-alternative name:
//!
//! | party                              | DNS name                   |
//! |------------------------------------|----------------------------|
//! | core system                        | `core.link.invalid`        |
//! | interface system of agency `A`     | `is-A.link.invalid`        |
//! | intermediate server of agency `A`  | `ims-A.link.invalid`       |
//!
//! `.invalid` is reserved (RFC 2606), so these names can never collide with
//! a public DNS name; they exist only inside the network's own PKI.
//!
//! Invariants:
//! - the mapping is exact and case-sensitive: `party_from_dns(dns_name(p))
//!   == Some(p)` for every well-formed party, and any other string maps to
//!   `None` (no trimming, no case folding, no trailing dot);
//! - identities are screened like header values (docs/protocol.md §6): no
//!   party is ever made from a name that holds a My Number
//!   ([`ifrelay_proto::screen::contains_my_number`], e.g.
//!   `is-123456789018.link.invalid`), and a certificate with such a DNS
//!   name is refused as a whole ([`IdentityError::MyNumberInName`]). No
//!   error of this module prints such a name or party, so nothing that
//!   logs or answers these errors can repeat the number;
//! - [`peer_party`] only *reads* a certificate; it must be applied to the
//!   chain rustls has already verified against the CA (the peer
//!   certificates of a completed handshake).

use std::fmt;
use std::sync::Arc;

use ifrelay_proto::screen::contains_my_number;
use ifrelay_proto::{AgencyCode, Party, Reason, Role, WITHHELD};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

/// Domain under which every party's name lives.
pub const DOMAIN: &str = "link.invalid";

/// The name of the core system's certificate.
pub const CORE_DNS_NAME: &str = "core.link.invalid";

const SUFFIX: &str = ".link.invalid";
const IS_PREFIX: &str = "is-";
const IMS_PREFIX: &str = "ims-";

/// Why a peer's certificate, or a party, does not give one usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The peer completed no certificate exchange.
    #[error(
        "the peer presented no certificate; every link is mutually authenticated, \
         so configure the peer with its certificate and key"
    )]
    NoCertificate,
    /// The end-entity certificate is not valid DER/X.509.
    #[error(
        "the peer's certificate could not be parsed ({reason}); reissue it from the network CA"
    )]
    Unparseable { reason: String },
    /// A DNS name of the certificate holds a My Number. The name is
    /// withheld: it is neither kept here nor printed.
    #[error(
        "a DNS name of the peer's certificate holds a My Number (the name is withheld); \
         a certificate must never carry one: have the network CA revoke it and issue one \
         that names the party by its agency code"
    )]
    MyNumberInName,
    /// No DNS name of the certificate is a party's name.
    #[error(
        "the peer's certificate names no party of the network (its DNS names: {}); \
         it must carry exactly one of core.link.invalid, is-<agency>.link.invalid \
         or ims-<agency>.link.invalid",
        list(dns_names)
    )]
    NoIdentity { dns_names: Vec<String> },
    /// More than one party is named: the certificate cannot say who it is.
    #[error(
        "the peer's certificate names several parties ({}); reissue it with exactly one \
         party name",
        list(parties)
    )]
    AmbiguousIdentity { parties: Vec<Party> },
    /// The certificate names a party other than the one expected here.
    #[error(
        "the peer's certificate names {found}, but {expected} was expected; refusing the link"
    )]
    WrongParty { expected: Party, found: Party },
    /// The party cannot be written as a certificate name.
    #[error("{party} cannot be named in a certificate: {reason}")]
    Unrepresentable { party: Party, reason: &'static str },
}

impl IdentityError {
    /// The reason code the box refuses such a peer with: `E_MY_NUMBER`
    /// for [`IdentityError::MyNumberInName`], as for a header value holding
    /// one (§6), else `E_IDENTITY`.
    pub fn reason(&self) -> Reason {
        match self {
            IdentityError::MyNumberInName => Reason::MyNumber,
            _ => Reason::Identity,
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The DNS name that identifies `party` in its certificate.
///
/// Only meaningful for a well-formed party (the core without an agency, an
/// IS or IMS with one); [`server_name`] and `ifrelay_devpki::DevPki::issue` refuse
/// the others, and [`party_from_dns`] never maps back to them.
pub fn dns_name(party: &Party) -> String {
    let agency = party.agency.as_ref().map_or("", AgencyCode::as_str);
    match party.role {
        Role::Core => CORE_DNS_NAME.to_owned(),
        Role::Is => format!("{IS_PREFIX}{agency}{SUFFIX}"),
        Role::Ims => format!("{IMS_PREFIX}{agency}{SUFFIX}"),
    }
}

/// The party a certificate DNS name stands for, or `None` if the name is
/// not exactly a party name (see the module documentation) or its agency
/// code holds a My Number.
pub fn party_from_dns(name: &str) -> Option<Party> {
    if name == CORE_DNS_NAME {
        return Some(Party::core());
    }
    let label = name.strip_suffix(SUFFIX)?;
    let (role, code) = if let Some(code) = label.strip_prefix(IMS_PREFIX) {
        (Role::Ims, code)
    } else if let Some(code) = label.strip_prefix(IS_PREFIX) {
        (Role::Is, code)
    } else {
        return None;
    };
    // A DNS label may not end with '-'; such a name could never be verified.
    if code.ends_with('-') {
        return None;
    }
    // Screened like any header value: a party is never made of it.
    if contains_my_number(code) {
        return None;
    }
    let agency = AgencyCode::new(code).ok()?;
    Some(Party {
        role,
        agency: Some(agency),
    })
}

/// The DNS name of `party`, checked to be well-formed and to map back to
/// the same party.
///
/// # Errors
/// [`IdentityError::Unrepresentable`] for a core party with an agency, an
/// IS/IMS party without one, an agency code that holds a My Number, or one
/// that cannot end a DNS label (a trailing `-`).
pub fn checked_dns_name(party: &Party) -> Result<String, IdentityError> {
    let unrepresentable = |reason| IdentityError::Unrepresentable {
        party: party.clone(),
        reason,
    };
    match (party.role, &party.agency) {
        (Role::Core, Some(_)) => return Err(unrepresentable("the core system has no agency")),
        (Role::Is | Role::Ims, None) => {
            return Err(unrepresentable(
                "an interface system or intermediate server needs its agency code",
            ))
        }
        (_, Some(agency)) if contains_my_number(agency.as_str()) => {
            return Err(unrepresentable("its agency code holds a My Number"))
        }
        _ => {}
    }
    let name = dns_name(party);
    if party_from_dns(&name).as_ref() != Some(party) {
        return Err(unrepresentable(
            "the agency code cannot end a DNS label (it ends with '-')",
        ));
    }
    Ok(name)
}

/// The name a client verifies the server's certificate against when it
/// dials `party`.
///
/// # Errors
/// [`IdentityError::Unrepresentable`] when `party` has no valid DNS name
/// (see [`checked_dns_name`]).
pub fn server_name(party: &Party) -> Result<ServerName<'static>, IdentityError> {
    let name = checked_dns_name(party)?;
    ServerName::try_from(name).map_err(|_| IdentityError::Unrepresentable {
        party: party.clone(),
        reason: "its name is not a valid DNS name",
    })
}

/// The party named by the end-entity certificate of a verified chain.
///
/// Every DNS SAN is read; names that are not party names are ignored, and
/// repeated names of one party count once. Exactly one party must remain.
/// A certificate any of whose DNS SANs holds a My Number is refused
/// whatever else it names.
///
/// # Errors
/// [`IdentityError::NoCertificate`] for an empty chain,
/// [`IdentityError::Unparseable`] for a certificate x509-parser refuses,
/// [`IdentityError::MyNumberInName`] when a DNS SAN holds a My Number,
/// [`IdentityError::NoIdentity`] when no DNS SAN is a party name,
/// [`IdentityError::AmbiguousIdentity`] when several parties are named.
pub fn peer_party(certs: &[CertificateDer<'_>]) -> Result<Party, IdentityError> {
    let end_entity = certs.first().ok_or(IdentityError::NoCertificate)?;
    let (rest, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref()).map_err(|e| {
        IdentityError::Unparseable {
            reason: e.to_string(),
        }
    })?;
    if !rest.is_empty() {
        return Err(IdentityError::Unparseable {
            reason: format!("{} bytes follow the certificate", rest.len()),
        });
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparseable {
            reason: format!("subject alternative names: {e}"),
        })?;
    let dns_names: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(*dns),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    // Before anything is made of the names, and before any error could
    // list them (`NoIdentity` prints the names it saw).
    if dns_names.iter().any(|n| contains_my_number(n)) {
        return Err(IdentityError::MyNumberInName);
    }

    let mut parties: Vec<Party> = Vec::new();
    for party in dns_names.iter().filter_map(|n| party_from_dns(n)) {
        if !parties.contains(&party) {
            parties.push(party);
        }
    }
    match parties.len() {
        0 => Err(IdentityError::NoIdentity {
            dns_names: dns_names.iter().map(|n| (*n).to_owned()).collect(),
        }),
        1 => Ok(parties.remove(0)),
        _ => Err(IdentityError::AmbiguousIdentity { parties }),
    }
}

/// [`peer_party`] of a completed handshake (server or client side): pass
/// `tls_stream.get_ref().1`.
///
/// # Errors
/// As [`peer_party`]; [`IdentityError::NoCertificate`] when the peer sent
/// none.
pub fn connection_party(conn: &rustls::CommonState) -> Result<Party, IdentityError> {
    peer_party(conn.peer_certificates().unwrap_or_default())
}

/// Checks that a verified chain names `expected`, and returns that party.
///
/// # Errors
/// As [`peer_party`], and [`IdentityError::WrongParty`] when the
/// certificate names another party.
pub fn verify_peer(certs: &[CertificateDer<'_>], expected: &Party) -> Result<Party, IdentityError> {
    let found = peer_party(certs)?;
    if &found != expected {
        return Err(IdentityError::WrongParty {
            expected: expected.clone(),
            found,
        });
    }
    Ok(found)
}

/// The dialler's check of a server certificate: rustls' WebPKI verifier,
/// unchanged, except that its error for a certificate not valid for the
/// name dialled, which lists every name the certificate presents, lists a
/// name holding a My Number as [`WITHHELD`]. That error reaches the
/// delivery log (§5.2), and a certificate name is screened like a header
/// value: never logged in clear.
#[derive(Debug)]
pub struct ScreenedServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ScreenedServerVerifier {
    pub fn new(inner: Arc<WebPkiServerVerifier>) -> Self {
        Self { inner }
    }
}

/// `error` with every presented name that holds a My Number withheld.
fn withhold_names(error: rustls::Error) -> rustls::Error {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented: presented
                .into_iter()
                .map(|name| {
                    if contains_my_number(&name) {
                        WITHHELD.to_owned()
                    } else {
                        name
                    }
                })
                .collect(),
        }),
        other => other,
    }
}

impl ServerCertVerifier for ScreenedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(withhold_names)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(code: &str) -> AgencyCode {
        AgencyCode::new(code).expect("valid agency code")
    }

    #[test]
    fn names_follow_the_table() {
        assert_eq!(dns_name(&Party::core()), "core.link.invalid");
        assert_eq!(
            dns_name(&Party::is(agency("131016"))),
            "is-131016.link.invalid"
        );
        assert_eq!(
            dns_name(&Party::ims(agency("131016"))),
            "ims-131016.link.invalid"
        );
    }

    #[test]
    fn round_trip() {
        for party in [
            Party::core(),
            Party::is(agency("131016")),
            Party::ims(agency("272124")),
            Party::is(agency("ims-x")),
            Party::ims(agency("A_1")),
        ] {
            let name = checked_dns_name(&party).expect("representable");
            assert_eq!(party_from_dns(&name), Some(party.clone()), "{name}");
            server_name(&party).expect("valid server name");
        }
    }

    #[test]
    fn garbage_names_map_to_nothing() {
        for name in [
            "",
            "core",
            "core.link.invalid.",
            "CORE.link.invalid",
            "Core.link.invalid",
            "is-.link.invalid",
            "ims-.link.invalid",
            "is-131016.link.invalid.",
            "IS-131016.link.invalid",
            "is-131016.LINK.invalid",
            "is-131016.link.example",
            "xs-131016.link.invalid",
            "is_131016.link.invalid",
            "is-13 1016.link.invalid",
            "is-13.1016.link.invalid",
            "is-131016-.link.invalid",
            "is-12345678901234567.link.invalid",
            "is-123456789018.link.invalid",
            "ims-123456789018.link.invalid",
            "is-1234-5678-9018.link.invalid",
            "is-x123456789018.link.invalid",
            "is-131016.link.invalid\0",
            " is-131016.link.invalid",
            "sub.is-131016.link.invalid",
        ] {
            assert_eq!(party_from_dns(name), None, "{name:?}");
        }
    }

    #[test]
    fn malformed_parties_have_no_server_name() {
        let core_with_agency = Party {
            role: Role::Core,
            agency: Some(agency("131016")),
        };
        let is_without_agency = Party {
            role: Role::Is,
            agency: None,
        };
        for party in [
            core_with_agency,
            is_without_agency,
            Party::is(agency("131016-")),
            Party::is(agency("123456789018")),
        ] {
            assert!(matches!(
                server_name(&party),
                Err(IdentityError::Unrepresentable { .. })
            ));
        }
    }

    #[test]
    fn empty_chain_has_no_identity() {
        assert_eq!(peer_party(&[]), Err(IdentityError::NoCertificate));
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            peer_party(&[junk]),
            Err(IdentityError::Unparseable { .. })
        ));
    }
}
