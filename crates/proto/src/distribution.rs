//! Signed distributions (R-DST-1..3, R-PRM-2, R-SEC-6): the prefix list,
//! the masters and the core's permit-signing keys, trusted only through a
//! chain that ends at a root key pinned in each box's configuration.
//!
//! The chain has two links, so the national operator can keep the root
//! offline and rotate the online key:
//!
//! - a [`KeyCertificate`]: the CBOR of [`KeyCertFields`] (a distribution
//!   key and its validity) and a root's Ed25519 signature over
//!   [`DISTRIBUTION_KEY_CONTEXT`] followed by those bytes;
//! - the [`Distribution`]: the CBOR of [`DistributionFields`] and the
//!   distribution key's signature over [`DISTRIBUTION_SIGNING_CONTEXT`]
//!   followed by those bytes.
//!
//! Signatures are over the bytes exactly as carried, never over a
//! re-encoding, as with permits. [`verify`] is the one check every party
//! runs on arrival (boxes and simulators alike); [`verify_stored`] re-checks
//! a distribution read back from disk, where only tampering matters.

use ciborium::Value;
use ring::digest::{digest, SHA256};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::reason::Reason;
use crate::refusal::DecodeError;
use crate::screen;
use crate::types::{Millis, PrefixEntry};
use crate::Masters;

/// Domain separation for a distribution key's signature over a distribution.
pub const DISTRIBUTION_SIGNING_CONTEXT: &[u8] = b"ifrelay-distribution-v1\0";

/// Domain separation for a root's signature over a distribution key.
pub const DISTRIBUTION_KEY_CONTEXT: &[u8] = b"ifrelay-distribution-key-v1\0";

/// Longest accepted encoded [`KeyCertFields`], in bytes.
pub const MAX_KEY_CERT_BYTES: usize = 1024;

/// CBOR nesting deeper than this inside the signed bytes is refused.
const RECURSION_LIMIT: usize = 16;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): what
/// `openssl pkey -pubout` writes before the 32 key bytes.
pub const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A distribution root: the national operator's Ed25519 public key, pinned
/// in the box's configuration (`trust.distribution_roots`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RootKey(pub [u8; 32]);

impl RootKey {
    /// Reads an Ed25519 SubjectPublicKeyInfo (the DER inside a PEM
    /// `PUBLIC KEY` block); `None` for any other key or encoding.
    pub fn from_spki_der(der: &[u8]) -> Option<RootKey> {
        let raw = der.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
        raw.try_into().ok().map(RootKey)
    }

    /// The SubjectPublicKeyInfo DER of this key.
    pub fn to_spki_der(&self) -> Vec<u8> {
        ed25519_spki_der(&self.0).to_vec()
    }

    /// The public key of `pair`.
    pub fn of(pair: &Ed25519KeyPair) -> RootKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(pair.public_key().as_ref());
        RootKey(raw)
    }

    /// `SHA256:` and the lowercase hex of the SHA-256 of the 32 key bytes:
    /// how logs and docs name a key.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }
}

/// An Ed25519 public key as DER SubjectPublicKeyInfo (RFC 8410), 44 bytes.
pub fn ed25519_spki_der(public_key: &[u8; 32]) -> [u8; 44] {
    let mut der = [0; 44];
    der[..12].copy_from_slice(&ED25519_SPKI_PREFIX);
    der[12..].copy_from_slice(public_key);
    der
}

/// `SHA256:` and the lowercase hex of the SHA-256 of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut text = String::from("SHA256:");
    for b in digest(&SHA256, bytes).as_ref() {
        text.push_str(&format!("{b:02x}"));
    }
    text
}

/// What a root certifies: a distribution key and when it may sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCertFields {
    /// The distribution key's raw Ed25519 public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The key may sign distributions from this time on (inclusive)…
    pub not_before: Millis,
    /// …until this time (exclusive).
    pub not_after: Millis,
}

/// A distribution key certified by a root, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCertificate {
    /// The CBOR of [`KeyCertFields`].
    #[serde(with = "serde_bytes")]
    pub signed: Vec<u8>,
    /// A root's signature over `DISTRIBUTION_KEY_CONTEXT || signed`.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// One permit-signing key of the core and when permits signed with it
/// verify: the current and the next key travel side by side during a
/// rotation (R-PRM-2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreKey {
    /// Raw Ed25519 public key, exactly 32 bytes.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Valid from (inclusive)…
    pub not_before: Millis,
    /// …until (exclusive).
    pub not_after: Millis,
}

impl CoreKey {
    /// Whether permits signed with this key verify at `now`.
    pub fn valid_at(&self, now: Millis) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// What a distribution asserts, signed by a distribution key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistributionFields {
    /// Increases with every distribution.
    pub version: u64,
    /// When the operator issued it (informative).
    pub issued_at: Millis,
    /// Takes effect at this time; absent: on arrival (an emergency
    /// distribution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Millis>,
    /// In force until this time (exclusive); then prefix checks fail
    /// closed until a newer distribution arrives.
    pub not_after: Millis,
    pub prefixes: Vec<PrefixEntry>,
    pub masters: Masters,
    /// The core's permit-signing keys, at least one.
    pub core_keys: Vec<CoreKey>,
}

/// The `distribution` message: signed fields, their signature, and the
/// certificate of the key that signed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distribution {
    /// The CBOR of [`DistributionFields`].
    #[serde(with = "serde_bytes")]
    pub signed: Vec<u8>,
    /// The distribution key's signature over
    /// `DISTRIBUTION_SIGNING_CONTEXT || signed`.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
    /// The distribution key, certified by a root.
    pub signer: KeyCertificate,
}

/// A distribution whose chain, signature and fields were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedDistribution {
    pub fields: DistributionFields,
    /// The certified distribution key that signed it.
    pub signer: KeyCertFields,
    /// The root that certified the signer.
    pub root: RootKey,
    /// SHA-256 of the signed bytes: the same distribution received twice
    /// has the same digest.
    pub digest: [u8; 32],
}

impl TrustedDistribution {
    /// When it takes effect: its `not_before`, or at once.
    pub fn effective_from(&self) -> Millis {
        self.fields.not_before.unwrap_or(Millis::MIN)
    }

    /// Whether `now` is past its validity.
    pub fn expired_at(&self, now: Millis) -> bool {
        now >= self.fields.not_after
    }
}

impl KeyCertFields {
    /// Signs these fields with `root`: the operator's (or a test's) side.
    pub fn certify(&self, root: &Ed25519KeyPair) -> KeyCertificate {
        let signed = to_cbor(self);
        let sig = root
            .sign(&signing_input(DISTRIBUTION_KEY_CONTEXT, &signed))
            .as_ref()
            .to_vec();
        KeyCertificate { signed, sig }
    }
}

impl DistributionFields {
    /// Signs these fields with the distribution key `key`, certified by
    /// `signer`: the operator's (or the core simulator's) side.
    pub fn sign(&self, key: &Ed25519KeyPair, signer: KeyCertificate) -> Distribution {
        let signed = to_cbor(self);
        let sig = key
            .sign(&signing_input(DISTRIBUTION_SIGNING_CONTEXT, &signed))
            .as_ref()
            .to_vec();
        Distribution {
            signed,
            sig,
            signer,
        }
    }
}

/// Why a distribution is refused. [`Self::reason`] and [`Self::text`] are
/// what the box answers; `Display` is the same text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DistributionError {
    /// No signature, or no certificate of the signing key.
    #[error("the distribution carries no {0}")]
    Unsigned(&'static str),
    /// The signing key's certificate verifies with no pinned root, or is
    /// not a certificate.
    #[error("the distribution key is not certified by a pinned root: {0}")]
    Uncertified(String),
    /// The signing key's certificate is not valid now.
    #[error("the distribution key's certificate is valid from {not_before} until {not_after} (ms since the epoch), not at {now}")]
    SignerOutsideValidity {
        not_before: Millis,
        not_after: Millis,
        now: Millis,
    },
    /// The signature does not verify with the certified key: the fields
    /// were altered, or signed by another key.
    #[error("the distribution's signature does not verify with its certified key")]
    BadSignature,
    /// Correctly signed, but the signed bytes are not a distribution or
    /// carry personal data. The decode error's text is this error's text.
    #[error("{}", .0.text)]
    Undecodable(DecodeError),
    /// Correctly signed, but a field is unusable (no core key, a key not
    /// 32 bytes, an empty validity window).
    #[error("{0}")]
    Invalid(String),
    /// Its `not_after` has passed.
    #[error("distribution version {version} expired {} ms ago", .now.saturating_sub(*.not_after))]
    Expired {
        version: u64,
        not_after: Millis,
        now: Millis,
    },
}

impl DistributionError {
    /// The reason code the box refuses with.
    pub fn reason(&self) -> Reason {
        match self {
            DistributionError::Unsigned(_) => Reason::DistUnsigned,
            DistributionError::Uncertified(_) | DistributionError::SignerOutsideValidity { .. } => {
                Reason::DistUncertified
            }
            DistributionError::BadSignature => Reason::DistSignature,
            DistributionError::Undecodable(e) => e.reason,
            DistributionError::Invalid(_) => Reason::InvalidField,
            DistributionError::Expired { .. } => Reason::DistExpired,
        }
    }

    /// The refusal text; never holds a My Number (decode texts are
    /// screened by [`DecodeError::new`]).
    pub fn text(&self) -> String {
        self.to_string()
    }
}

/// Checks a distribution on arrival at `now` against the pinned `roots`,
/// in this order (the first failure is the refusal): a signature and a
/// signer certificate are present; the certificate verifies with a root,
/// decodes and is valid at `now`; the signature verifies with the
/// certified key; the fields decode and pass the personal-data screen; at
/// least one core key, each 32 bytes with a non-empty window; a
/// `not_before` before `not_after`; not expired at `now`. Whether the
/// version is newer than the one held is the holder's check.
///
/// # Errors
/// The first check that fails, as a [`DistributionError`].
pub fn verify(
    d: &Distribution,
    roots: &[RootKey],
    now: Millis,
) -> Result<TrustedDistribution, DistributionError> {
    let trusted = check_chain(d, roots, Some(now))?;
    if trusted.expired_at(now) {
        return Err(DistributionError::Expired {
            version: trusted.fields.version,
            not_after: trusted.fields.not_after,
            now,
        });
    }
    Ok(trusted)
}

/// Re-checks a distribution read back from the store: the chain to a
/// pinned root, the signature and the fields, but no time (it was checked
/// on arrival; an expired list is still loaded, to fail closed).
///
/// # Errors
/// As [`verify`], without `SignerOutsideValidity` and `Expired`.
pub fn verify_stored(
    d: &Distribution,
    roots: &[RootKey],
) -> Result<TrustedDistribution, DistributionError> {
    check_chain(d, roots, None)
}

fn check_chain(
    d: &Distribution,
    roots: &[RootKey],
    now: Option<Millis>,
) -> Result<TrustedDistribution, DistributionError> {
    if d.sig.is_empty() {
        return Err(DistributionError::Unsigned("signature"));
    }
    if d.signer.signed.is_empty() || d.signer.sig.is_empty() {
        return Err(DistributionError::Unsigned("signer certificate"));
    }
    let cert_input = signing_input(DISTRIBUTION_KEY_CONTEXT, &d.signer.signed);
    let root = roots
        .iter()
        .find(|root| {
            UnparsedPublicKey::new(&ED25519, &root.0[..])
                .verify(&cert_input, &d.signer.sig)
                .is_ok()
        })
        .copied()
        .ok_or_else(|| {
            DistributionError::Uncertified(
                "its certificate's signature verifies with no root".into(),
            )
        })?;
    let signer = decode_cert(&d.signer.signed)?;
    if let Some(now) = now {
        if now < signer.not_before || now >= signer.not_after {
            return Err(DistributionError::SignerOutsideValidity {
                not_before: signer.not_before,
                not_after: signer.not_after,
                now,
            });
        }
    }
    UnparsedPublicKey::new(&ED25519, &signer.key[..])
        .verify(
            &signing_input(DISTRIBUTION_SIGNING_CONTEXT, &d.signed),
            &d.sig,
        )
        .map_err(|_| DistributionError::BadSignature)?;
    let fields = decode_fields(&d.signed)?;
    check_fields(&fields)?;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, &d.signed).as_ref());
    Ok(TrustedDistribution {
        fields,
        signer,
        root,
        digest: hash,
    })
}

fn decode_cert(bytes: &[u8]) -> Result<KeyCertFields, DistributionError> {
    let bad = |why: String| DistributionError::Uncertified(why);
    if bytes.len() > MAX_KEY_CERT_BYTES {
        return Err(bad(format!(
            "the certificate is {} bytes; at most {MAX_KEY_CERT_BYTES}",
            bytes.len()
        )));
    }
    let fields: KeyCertFields =
        ciborium::de::from_reader_with_recursion_limit(bytes, RECURSION_LIMIT)
            .map_err(|e| bad(format!("the certificate does not decode: {e}")))?;
    if fields.key.len() != 32 {
        return Err(bad(format!(
            "the certified key is {} bytes; an Ed25519 key is 32",
            fields.key.len()
        )));
    }
    Ok(fields)
}

fn decode_fields(bytes: &[u8]) -> Result<DistributionFields, DistributionError> {
    let invalid =
        |text: String| DistributionError::Undecodable(DecodeError::new(Reason::InvalidField, text));
    let value: Value = ciborium::de::from_reader_with_recursion_limit(bytes, RECURSION_LIMIT)
        .map_err(|e| invalid(format!("the distribution's signed bytes are not CBOR: {e}")))?;
    if let Some(finding) = screen::screen(&value) {
        return Err(DistributionError::Undecodable(DecodeError::from_finding(
            finding, None,
        )));
    }
    value
        .deserialized()
        .map_err(|e| invalid(format!("the distribution's fields: {e}")))
}

fn check_fields(f: &DistributionFields) -> Result<(), DistributionError> {
    let invalid = |text: String| Err(DistributionError::Invalid(text));
    if f.core_keys.is_empty() {
        return invalid("the distribution lists no core key".into());
    }
    for (i, k) in f.core_keys.iter().enumerate() {
        if k.key.len() != 32 {
            return invalid(format!(
                "core_keys[{i}] is {} bytes; an Ed25519 key is 32",
                k.key.len()
            ));
        }
        if k.not_before >= k.not_after {
            return invalid(format!("core_keys[{i}] has an empty validity window"));
        }
    }
    if f.not_before.is_some_and(|nb| nb >= f.not_after) {
        return invalid("the distribution's not_before is not before its not_after".into());
    }
    Ok(())
}

fn signing_input(context: &[u8], signed: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(context.len() + signed.len());
    input.extend_from_slice(context);
    input.extend_from_slice(signed);
    input
}

fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Writing plain structs into a Vec cannot fail; an empty result would
    // only make the signature fail to verify.
    if ciborium::into_writer(value, &mut bytes).is_err() {
        bytes.clear();
    }
    bytes
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;

    const NOW: Millis = 1_800_000_000_000;
    const DAY: Millis = 86_400_000;

    fn pair() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key generation");
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("generated key parses")
    }

    struct Operator {
        root: Ed25519KeyPair,
        online: Ed25519KeyPair,
        cert: KeyCertificate,
        core: Ed25519KeyPair,
    }

    impl Operator {
        fn new() -> Self {
            let root = pair();
            let online = pair();
            let cert = KeyCertFields {
                key: online.public_key().as_ref().to_vec(),
                not_before: NOW - DAY,
                not_after: NOW + 365 * DAY,
            }
            .certify(&root);
            Operator {
                root,
                online,
                cert,
                core: pair(),
            }
        }

        fn roots(&self) -> Vec<RootKey> {
            vec![RootKey::of(&self.root)]
        }

        fn fields(&self, version: u64) -> DistributionFields {
            DistributionFields {
                version,
                issued_at: NOW,
                not_before: None,
                not_after: NOW + 7 * DAY,
                prefixes: Vec::new(),
                masters: Masters::default(),
                core_keys: vec![CoreKey {
                    key: self.core.public_key().as_ref().to_vec(),
                    not_before: NOW - DAY,
                    not_after: NOW + 30 * DAY,
                }],
            }
        }

        fn signed(&self, f: &DistributionFields) -> Distribution {
            f.sign(&self.online, self.cert.clone())
        }
    }

    #[test]
    fn a_well_signed_distribution_verifies() {
        let op = Operator::new();
        let d = op.signed(&op.fields(3));
        let t = verify(&d, &op.roots(), NOW).expect("verifies");
        assert_eq!(t.fields, op.fields(3));
        assert_eq!(t.root, RootKey::of(&op.root));
        assert_eq!(verify_stored(&d, &op.roots()).expect("verifies"), t);
    }

    #[test]
    fn missing_signature_or_certificate_is_unsigned() {
        let op = Operator::new();
        let mut d = op.signed(&op.fields(1));
        d.sig.clear();
        let e = verify(&d, &op.roots(), NOW).expect_err("unsigned");
        assert_eq!(e.reason(), Reason::DistUnsigned);
        let mut d = op.signed(&op.fields(1));
        d.signer.sig.clear();
        assert_eq!(
            verify(&d, &op.roots(), NOW).expect_err("no cert").reason(),
            Reason::DistUnsigned
        );
    }

    #[test]
    fn a_key_not_certified_by_a_pinned_root_is_refused() {
        let op = Operator::new();
        let stranger = Operator::new();
        // Signed by a key certified by another root.
        let d = stranger.signed(&stranger.fields(1));
        let e = verify(&d, &op.roots(), NOW).expect_err("uncertified");
        assert_eq!(e.reason(), Reason::DistUncertified);
        // Self-certified: the online key signs its own certificate.
        let mut d = op.signed(&op.fields(1));
        d.signer = KeyCertFields {
            key: op.online.public_key().as_ref().to_vec(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
        }
        .certify(&op.online);
        let e = verify(&d, &op.roots(), NOW).expect_err("self-certified");
        assert_eq!(e.reason(), Reason::DistUncertified);
        // No root pinned at all.
        let d = op.signed(&op.fields(1));
        assert_eq!(
            verify(&d, &[], NOW).expect_err("no roots").reason(),
            Reason::DistUncertified
        );
    }

    #[test]
    fn a_certificate_outside_its_validity_is_refused_on_arrival_only() {
        let op = Operator::new();
        let d = op.signed(&op.fields(1));
        let later = NOW + 366 * DAY;
        let e = verify(&d, &op.roots(), later).expect_err("signer expired");
        assert!(matches!(e, DistributionError::SignerOutsideValidity { .. }));
        assert_eq!(e.reason(), Reason::DistUncertified);
        assert!(verify_stored(&d, &op.roots()).is_ok());
    }

    #[test]
    fn an_altered_list_or_masters_table_is_a_bad_signature() {
        let op = Operator::new();
        let good = op.signed(&op.fields(1));
        let mut f = op.fields(1);
        f.masters.agencies.push(crate::MasterRow {
            code: "131016".parse().expect("code"),
            label: "altered".into(),
        });
        let mut altered = good.clone();
        altered.signed = op.signed(&f).signed;
        let e = verify(&altered, &op.roots(), NOW).expect_err("altered");
        assert_eq!(e, DistributionError::BadSignature);
        assert_eq!(e.reason(), Reason::DistSignature);
        // One flipped bit anywhere in the signed bytes.
        let mut flipped = good.clone();
        let last = flipped.signed.len() - 1;
        flipped.signed[last] ^= 1;
        assert_eq!(
            verify(&flipped, &op.roots(), NOW).expect_err("flipped"),
            DistributionError::BadSignature
        );
        assert_eq!(
            verify_stored(&flipped, &op.roots()).expect_err("flipped on disk"),
            DistributionError::BadSignature
        );
    }

    #[test]
    fn an_expired_distribution_is_refused_on_arrival() {
        let op = Operator::new();
        let d = op.signed(&op.fields(1));
        let e = verify(&d, &op.roots(), NOW + 7 * DAY).expect_err("expired");
        assert_eq!(e.reason(), Reason::DistExpired);
        assert_eq!(e.text(), "distribution version 1 expired 0 ms ago");
        assert!(verify_stored(&d, &op.roots()).is_ok());
    }

    #[test]
    fn unusable_fields_are_invalid() {
        let op = Operator::new();
        let mut f = op.fields(1);
        f.core_keys.clear();
        let e = verify(&op.signed(&f), &op.roots(), NOW).expect_err("no key");
        assert_eq!(e.reason(), Reason::InvalidField);
        let mut f = op.fields(1);
        f.core_keys[0].key.pop();
        let e = verify(&op.signed(&f), &op.roots(), NOW).expect_err("short key");
        assert_eq!(e.text(), "core_keys[0] is 31 bytes; an Ed25519 key is 32");
        let mut f = op.fields(1);
        f.not_before = Some(f.not_after);
        let e = verify(&op.signed(&f), &op.roots(), NOW).expect_err("empty window");
        assert_eq!(e.reason(), Reason::InvalidField);
        let signed_garbage = Distribution {
            signed: vec![0xff; 4],
            ..op.signed(&op.fields(1))
        };
        let mut d = signed_garbage;
        d.sig = op
            .online
            .sign(&signing_input(DISTRIBUTION_SIGNING_CONTEXT, &d.signed))
            .as_ref()
            .to_vec();
        let e = verify(&d, &op.roots(), NOW).expect_err("not CBOR");
        assert_eq!(e.reason(), Reason::InvalidField);
    }

    #[test]
    fn signed_personal_data_is_refused_as_such() {
        let op = Operator::new();
        let mut f = op.fields(1);
        f.masters.agencies.push(crate::MasterRow {
            code: "131016".parse().expect("code"),
            label: "1234 5678 9018".into(),
        });
        let e = verify(&op.signed(&f), &op.roots(), NOW).expect_err("my number");
        assert_eq!(e.reason(), Reason::MyNumber);
        assert!(!e.text().contains("5678"), "{}", e.text());
    }

    #[test]
    fn root_keys_round_trip_through_spki() {
        let op = Operator::new();
        let root = RootKey::of(&op.root);
        assert_eq!(RootKey::from_spki_der(&root.to_spki_der()), Some(root));
        assert_eq!(RootKey::from_spki_der(&root.to_spki_der()[1..]), None);
        assert_eq!(root.fingerprint().len(), 7 + 64);
    }

    #[test]
    fn core_key_windows_are_half_open() {
        let k = CoreKey {
            key: vec![0; 32],
            not_before: 10,
            not_after: 20,
        };
        assert!(!k.valid_at(9));
        assert!(k.valid_at(10));
        assert!(k.valid_at(19));
        assert!(!k.valid_at(20));
    }
}
