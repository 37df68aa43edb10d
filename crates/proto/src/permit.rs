//! Permits (R-PRM-2): what the core signs, how it travels, and the one
//! place where a permit is verified.
//!
//! A permit travels as [`SignedPermit`]: `signed` is the CBOR of
//! [`PermitFields`] and `sig` the core's Ed25519 signature over
//! [`PERMIT_SIGNING_CONTEXT`] followed by those bytes, so verification never
//! depends on re-encoding. [`verify`] checks, in this order, that a core key
//! is known, the signature, that the fields decode (and pass the
//! personal-data screen), the issuer and the expiry; every box and simulator
//! goes through it, so they all refuse the same permits with the same
//! [`Reason`] and text.
//!
//! Only checks that hold for every holder of a permit live here. Whether a
//! permit routes to *this* box, or whether its provider route is usable
//! from here, is the relay's policy and stays with it.

use ciborium::Value;
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::reason::Reason;
use crate::refusal::DecodeError;
use crate::screen;
use crate::types::{AgencyCode, Millis, Party, PermitId, Prefix, Serial};

/// Domain separation for permit signatures.
pub const PERMIT_SIGNING_CONTEXT: &[u8] = b"ifrelay-permit-v1\0";

/// Longest accepted encoded permit, in bytes.
pub const MAX_PERMIT_BYTES: usize = 4096;

/// CBOR nesting deeper than this inside a permit is refused.
const RECURSION_LIMIT: usize = 16;

/// Where a provision must go: the requester's interface system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub agency: AgencyCode,
    /// `host:port` of the requester box's core-side listener. Not called
    /// `address`: that key is refused as a basic-four field.
    pub endpoint: String,
}

/// The fields a permit asserts; signed by the core (R-PRM-2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermitFields {
    pub permit_id: PermitId,
    /// Who issued it: always the core.
    pub issuer: Party,
    pub serial: Serial,
    pub prefix: Prefix,
    /// Where the provider's box sends the provision: the requester's box.
    pub route: Route,
    /// Where the requester's box sends "provision received": the
    /// provider's box. Signed by the core like `route`, so neither box
    /// has to trust an address the other one names.
    pub provider_route: Route,
    pub issued_at: Millis,
    pub expires_at: Millis,
}

/// A permit as it travels: the CBOR encoding of [`PermitFields`] and the
/// core's Ed25519 signature over `PERMIT_SIGNING_CONTEXT || signed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPermit {
    #[serde(with = "serde_bytes")]
    pub signed: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl SignedPermit {
    /// Encodes and wraps `fields`; the caller signs [`Self::signing_input`].
    pub fn unsigned(fields: &PermitFields) -> Self {
        let mut signed = Vec::new();
        // Writing into a Vec cannot fail for these plain types.
        if ciborium::into_writer(fields, &mut signed).is_err() {
            signed.clear();
        }
        SignedPermit {
            signed,
            sig: Vec::new(),
        }
    }

    /// The bytes the core signs and the boxes verify.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut input = Vec::with_capacity(PERMIT_SIGNING_CONTEXT.len() + self.signed.len());
        input.extend_from_slice(PERMIT_SIGNING_CONTEXT);
        input.extend_from_slice(&self.signed);
        input
    }

    /// Decodes the signed fields without checking the signature: for
    /// reading a permit that was verified before (or is only looked at).
    /// [`verify`] is the check.
    ///
    /// # Errors
    /// [`DecodeError`] with [`Reason::PermitInvalid`] when the bytes are too
    /// long or not a permit, or [`Reason::MyNumber`]/[`Reason::BasicFour`]
    /// when they carry personal data.
    pub fn fields(&self) -> Result<PermitFields, DecodeError> {
        let invalid = |text: String| DecodeError::new(Reason::PermitInvalid, text);
        if self.signed.len() > MAX_PERMIT_BYTES {
            return Err(invalid(format!(
                "permit is {} bytes; at most {MAX_PERMIT_BYTES}",
                self.signed.len()
            )));
        }
        let value: Value =
            ciborium::de::from_reader_with_recursion_limit(&self.signed[..], RECURSION_LIMIT)
                .map_err(|e| invalid(format!("permit is not CBOR: {e}")))?;
        if let Some(finding) = screen::screen(&value) {
            return Err(DecodeError::from_finding(finding, None));
        }
        value
            .deserialized()
            .map_err(|e| invalid(format!("permit fields: {e}")))
    }
}

/// Verifies `permit` against the core's permit-signing keys at time `now`
/// and returns its fields.
///
/// `keys` are raw 32-byte Ed25519 public keys; a permit signed by any of
/// them is accepted, so that the core's current and next key can both be
/// passed while the core rotates (which key is valid when is a later
/// change: it will give the keys validity windows, not change this call's
/// shape). An empty `keys` means no key has been distributed yet.
///
/// The checks, in the order the refusal reports the first failure:
/// a key is known, the signature, the fields decode and pass the
/// personal-data screen, the issuer is the core, the permit has not
/// expired (it is good up to and including `expires_at`). `issued_at` is
/// not checked: the box's clock is not disciplined yet, and a core whose
/// clock runs ahead must not have its fresh permits refused.
///
/// # Errors
/// The first check that fails, as a [`PermitError`]; its
/// [`PermitError::reason`] and [`PermitError::text`] are the refusal.
pub fn verify(
    permit: &SignedPermit,
    keys: &[impl AsRef<[u8]>],
    now: Millis,
) -> Result<PermitFields, PermitError> {
    if keys.is_empty() {
        return Err(PermitError::NoKey);
    }
    let input = permit.signing_input();
    let signed_by_core = keys.iter().any(|key| {
        UnparsedPublicKey::new(&ED25519, key.as_ref())
            .verify(&input, &permit.sig)
            .is_ok()
    });
    if !signed_by_core {
        return Err(PermitError::BadSignature);
    }
    let fields = permit.fields().map_err(PermitError::Undecodable)?;
    if fields.issuer != Party::core() {
        return Err(PermitError::NotFromCore {
            issuer: fields.issuer,
        });
    }
    fields.check_expiry(now)?;
    Ok(fields)
}

impl PermitFields {
    /// Checks that the permit has not expired at `now`; also for a permit
    /// verified earlier and used again later (the query after the permit).
    ///
    /// # Errors
    /// [`PermitError::Expired`] when `now` is after `expires_at`.
    pub fn check_expiry(&self, now: Millis) -> Result<(), PermitError> {
        if now > self.expires_at {
            return Err(PermitError::Expired {
                permit_id: self.permit_id.clone(),
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }

    /// Checks that the permit was issued for `serial` and `prefix`: the
    /// ones the process was bound to or the message carries. A permit is
    /// only good for the (serial, prefix) it names (R-PRM-2).
    ///
    /// # Errors
    /// [`PermitError::SerialMismatch`] or [`PermitError::PrefixMismatch`],
    /// serial first.
    pub fn check_serial_and_prefix(
        &self,
        serial: &Serial,
        prefix: &Prefix,
    ) -> Result<(), PermitError> {
        if &self.serial != serial {
            return Err(PermitError::SerialMismatch {
                permit: self.serial.clone(),
            });
        }
        if &self.prefix != prefix {
            return Err(PermitError::PrefixMismatch {
                serial: self.serial.clone(),
            });
        }
        Ok(())
    }
}

/// Why a permit is refused. [`Self::reason`] and [`Self::text`] are what
/// the box answers; `Display` is the same text, so a log line and the
/// refusal say the same thing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PermitError {
    /// No core key has been distributed yet, so no permit can be checked;
    /// the core's next distribution brings it.
    #[error("no core key distributed yet")]
    NoKey,
    /// The signature does not verify with any of the core's keys: the
    /// permit was altered, or signed by someone else.
    #[error("the permit's signature does not verify with the core's key")]
    BadSignature,
    /// The signed bytes are not a permit, or carry personal data. The
    /// decode error's text is this error's text; it is not also returned
    /// as `source()`, so it prints once.
    #[error("{}", .0.text)]
    Undecodable(DecodeError),
    /// Correctly signed, but naming another issuer than the core.
    #[error("the permit was not issued by the core")]
    NotFromCore { issuer: Party },
    /// Past its `expires_at`; the requester asks for a new permit.
    #[error(
        "the permit {permit_id} expired {} ms ago; ask for a new one",
        .now.saturating_sub(*.expires_at)
    )]
    Expired {
        permit_id: PermitId,
        expires_at: Millis,
        now: Millis,
    },
    /// Issued for another serial than the one it is used with. Only the
    /// permit's serial is kept: the caller has the other one, and two
    /// serials would make every `Result` of this module twice as large.
    #[error("the permit names serial {permit}, not the serial it is used for")]
    SerialMismatch { permit: Serial },
    /// Issued for the right serial but another prefix.
    #[error("the permit for serial {serial} names another prefix than the one bound to it")]
    PrefixMismatch { serial: Serial },
}

impl PermitError {
    /// The reason code the box refuses with: [`Reason::NoPrefixList`] when
    /// no key is known yet (the distribution that brings the key is
    /// missing), the decode error's own reason for undecodable fields
    /// ([`Reason::PermitInvalid`], or [`Reason::MyNumber`] /
    /// [`Reason::BasicFour`] when they carry personal data), and
    /// [`Reason::PermitInvalid`] for everything else.
    pub fn reason(&self) -> Reason {
        match self {
            PermitError::NoKey => Reason::NoPrefixList,
            PermitError::Undecodable(e) => e.reason,
            PermitError::BadSignature
            | PermitError::NotFromCore { .. }
            | PermitError::Expired { .. }
            | PermitError::SerialMismatch { .. }
            | PermitError::PrefixMismatch { .. } => Reason::PermitInvalid,
        }
    }

    /// The refusal text: what is wrong with the permit, for the sender and
    /// the log. Never holds a My Number (decode texts are screened by
    /// [`DecodeError::new`]).
    pub fn text(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    const NOW: Millis = 1_700_000_000_000;

    fn code<T: core::str::FromStr>(s: &str) -> T
    where
        T::Err: core::fmt::Debug,
    {
        s.parse().expect("valid code")
    }

    fn prefix() -> Prefix {
        let mut items = heapless::Vec::new();
        items.push(code("I001")).expect("capacity");
        Prefix {
            requester: code("131016"),
            business: code("B010"),
            provider: code("271004"),
            info_name: code("N020"),
            items,
        }
    }

    fn fields() -> PermitFields {
        PermitFields {
            permit_id: code("P-1"),
            issuer: Party::core(),
            serial: code("131016-20261122-1795300000-1"),
            prefix: prefix(),
            route: Route {
                agency: code("131016"),
                endpoint: "127.0.0.1:7443".into(),
            },
            provider_route: Route {
                agency: code("271004"),
                endpoint: "127.0.0.1:7444".into(),
            },
            issued_at: NOW - 1_000,
            expires_at: NOW + 60_000,
        }
    }

    fn key_pair() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key generation");
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("generated key parses")
    }

    fn sign_bytes(key: &Ed25519KeyPair, signed: Vec<u8>) -> SignedPermit {
        let mut p = SignedPermit {
            signed,
            sig: Vec::new(),
        };
        p.sig = key.sign(&p.signing_input()).as_ref().to_vec();
        p
    }

    fn sign(key: &Ed25519KeyPair, f: &PermitFields) -> SignedPermit {
        sign_bytes(key, SignedPermit::unsigned(f).signed)
    }

    fn public(key: &Ed25519KeyPair) -> Vec<u8> {
        key.public_key().as_ref().to_vec()
    }

    #[test]
    fn a_good_permit_verifies_and_yields_its_fields() {
        let key = key_pair();
        let p = sign(&key, &fields());
        assert_eq!(verify(&p, &[public(&key)], NOW), Ok(fields()));
        // Good up to and including its expiry.
        assert_eq!(
            verify(&p, &[public(&key)], fields().expires_at),
            Ok(fields())
        );
    }

    #[test]
    fn any_of_several_keys_may_have_signed() {
        let (current, next) = (key_pair(), key_pair());
        let p = sign(&next, &fields());
        let keys = [public(&current), public(&next)];
        assert_eq!(verify(&p, &keys, NOW), Ok(fields()));
        assert_eq!(verify(&p, &keys[..1], NOW), Err(PermitError::BadSignature));
    }

    #[test]
    fn no_key_is_refused_as_no_prefix_list() {
        let key = key_pair();
        let p = sign(&key, &fields());
        let e = verify(&p, &[] as &[&[u8]], NOW).expect_err("no key");
        assert_eq!(e, PermitError::NoKey);
        assert_eq!(e.reason(), Reason::NoPrefixList);
        assert_eq!(e.text(), "no core key distributed yet");
    }

    #[test]
    fn a_flipped_bit_in_the_signature_is_a_bad_signature() {
        let key = key_pair();
        let mut p = sign(&key, &fields());
        p.sig[10] ^= 0x01;
        let e = verify(&p, &[public(&key)], NOW).expect_err("altered");
        assert_eq!(e, PermitError::BadSignature);
        assert_eq!(e.reason(), Reason::PermitInvalid);
        assert_eq!(
            e.text(),
            "the permit's signature does not verify with the core's key"
        );
    }

    #[test]
    fn a_flipped_bit_in_the_signed_bytes_is_a_bad_signature() {
        let key = key_pair();
        let mut p = sign(&key, &fields());
        let last = p.signed.len() - 1;
        p.signed[last] ^= 0x01;
        let e = verify(&p, &[public(&key)], NOW).expect_err("altered");
        assert_eq!(e, PermitError::BadSignature);
        assert_eq!(e.reason(), Reason::PermitInvalid);
    }

    #[test]
    fn another_key_is_a_bad_signature() {
        let (core, other) = (key_pair(), key_pair());
        let p = sign(&other, &fields());
        let e = verify(&p, &[public(&core)], NOW).expect_err("wrong key");
        assert_eq!(e, PermitError::BadSignature);
        assert_eq!(e.reason(), Reason::PermitInvalid);
        // A key of the wrong length verifies nothing either.
        let e = verify(&p, &[&public(&core)[..31]], NOW).expect_err("short key");
        assert_eq!(e, PermitError::BadSignature);
    }

    #[test]
    fn an_expired_permit_is_refused_with_how_long_ago() {
        let key = key_pair();
        let p = sign(&key, &fields());
        let later = fields().expires_at + 1_500;
        let e = verify(&p, &[public(&key)], later).expect_err("expired");
        assert!(matches!(e, PermitError::Expired { now, .. } if now == later));
        assert_eq!(e.reason(), Reason::PermitInvalid);
        assert_eq!(
            e.text(),
            "the permit P-1 expired 1500 ms ago; ask for a new one"
        );
        // Extreme times saturate instead of overflowing.
        let mut f = fields();
        f.expires_at = Millis::MIN;
        let e = f.check_expiry(Millis::MAX).expect_err("expired");
        assert!(e
            .text()
            .contains(&format!("expired {} ms ago", Millis::MAX)));
    }

    #[test]
    fn undecodable_signed_bytes_keep_their_decode_reason() {
        let key = key_pair();
        let p = sign_bytes(&key, vec![0xff; 10]);
        let e = verify(&p, &[public(&key)], NOW).expect_err("not a permit");
        assert!(matches!(e, PermitError::Undecodable(_)), "{e:?}");
        assert_eq!(e.reason(), Reason::PermitInvalid);
        assert!(e.text().starts_with("permit is not CBOR"), "{}", e.text());
        // The decode error's text is the text, and it is not repeated as a
        // source.
        assert!(std::error::Error::source(&e).is_none());

        // Signed by the core, but carrying a My Number: refused as such.
        let mut f = fields();
        f.route.endpoint = "123456789018".into();
        let e = verify(&sign(&key, &f), &[public(&key)], NOW).expect_err("personal data");
        assert_eq!(e.reason(), Reason::MyNumber);
        assert!(!e.text().contains("123456789018"), "{}", e.text());
    }

    #[test]
    fn a_permit_not_issued_by_the_core_is_refused() {
        let key = key_pair();
        let mut f = fields();
        f.issuer = Party::ims(code("131016"));
        let e = verify(&sign(&key, &f), &[public(&key)], NOW).expect_err("issuer");
        assert!(matches!(e, PermitError::NotFromCore { .. }));
        assert_eq!(e.reason(), Reason::PermitInvalid);
        assert_eq!(e.text(), "the permit was not issued by the core");
    }

    #[test]
    fn serial_and_prefix_must_be_the_permits() {
        let f = fields();
        assert_eq!(f.check_serial_and_prefix(&f.serial, &f.prefix), Ok(()));
        let other: Serial = code("131016-20261122-1795300000-2");
        let e = f
            .check_serial_and_prefix(&other, &f.prefix)
            .expect_err("serial");
        assert!(matches!(e, PermitError::SerialMismatch { .. }));
        assert_eq!(e.reason(), Reason::PermitInvalid);
        assert_eq!(
            e.text(),
            "the permit names serial 131016-20261122-1795300000-1, not the serial it is used for"
        );
        let mut p = prefix();
        p.business = code("B011");
        let e = f
            .check_serial_and_prefix(&f.serial, &p)
            .expect_err("prefix");
        assert!(matches!(e, PermitError::PrefixMismatch { .. }));
        assert_eq!(e.reason(), Reason::PermitInvalid);
    }

    #[test]
    fn fields_round_trip_and_are_screened() {
        let p = SignedPermit::unsigned(&fields());
        assert_eq!(p.fields().expect("decodes"), fields());
        let bad = SignedPermit {
            signed: vec![0xff; 10],
            sig: vec![],
        };
        assert_eq!(
            bad.fields().expect_err("refused").reason,
            Reason::PermitInvalid
        );
        let long = SignedPermit {
            signed: vec![0; MAX_PERMIT_BYTES + 1],
            sig: vec![],
        };
        assert_eq!(
            long.fields().expect_err("refused").reason,
            Reason::PermitInvalid
        );
    }
}
