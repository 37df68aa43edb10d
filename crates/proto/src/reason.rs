//! Reason codes: the stable, machine-readable part of every refusal.
//!
//! A code never changes meaning once released; new codes are only added.
//! `docs/protocol.md` lists them with their meaning and the requirement
//! that calls for them.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! reason_codes {
    ($( $(#[$doc:meta])* $variant:ident = $wire:literal ),* $(,)?) => {
        /// Why a frame was refused or a process closed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
        }

        impl Reason {
            /// Every code, in declaration order.
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant, )* ];

            /// The code as it appears on the wire and in the access log.
            pub fn as_str(self) -> &'static str {
                match self { $( Reason::$variant => $wire, )* }
            }
        }

        impl FromStr for Reason {
            type Err = UnknownReason;
            fn from_str(s: &str) -> Result<Self, UnknownReason> {
                match s {
                    $( $wire => Ok(Reason::$variant), )*
                    _ => Err(UnknownReason),
                }
            }
        }
    };
}

reason_codes! {
    /// The frame is not one CBOR map with a readable header.
    Malformed = "E_MALFORMED",
    /// The length prefix exceeds the box's maximum frame size.
    TooLarge = "E_TOO_LARGE",
    /// The header's protocol version is not spoken by this box.
    UnsupportedVersion = "E_UNSUPPORTED_VERSION",
    /// The `type` names no message of the protocol.
    UnknownType = "E_UNKNOWN_TYPE",
    /// A required field of the message type is absent.
    MissingField = "E_MISSING_FIELD",
    /// A field is present but its value is not acceptable.
    InvalidField = "E_INVALID_FIELD",
    /// The `from` of the frame is not the party the TLS certificate names.
    Identity = "E_IDENTITY",
    /// This party may not send this message type over this link.
    Role = "E_ROLE",
    /// A plaintext field (header, body fields, permit) holds a 12-digit
    /// number with a valid My Number check digit (§2.2 ③).
    MyNumber = "E_MY_NUMBER",
    /// A plaintext field is a basic-four field (name, address, sex, birth date).
    BasicFour = "E_BASIC_FOUR",
    /// No process with this serial is known to the box (R-COM-1).
    UnknownSerial = "E_UNKNOWN_SERIAL",
    /// The prefix differs from the one bound to the serial (R-COM-1).
    WrongPrefix = "E_WRONG_PREFIX",
    /// The message does not fit the process's current step (R-COM-1).
    OutOfSequence = "E_OUT_OF_SEQUENCE",
    /// Prefix check NG: the tuple is not in the current prefix list (R-PFX-1).
    PrefixNotListed = "E_PREFIX_NOT_LISTED",
    /// Prefix check NG: the requester is not this box's agency (R-PFX-1).
    NotOwnAgency = "E_NOT_OWN_AGENCY",
    /// No prefix list has been distributed to the box yet.
    NoPrefixList = "E_NO_PREFIX_LIST",
    /// Prefix check NG: the list in force has passed its `not_after`; no
    /// new process starts until a newer distribution arrives (R-DST-3).
    PrefixListExpired = "E_PREFIX_LIST_EXPIRED",
    /// A distribution without a signature or without the certificate of
    /// its signing key (R-DST-1, R-SEC-6).
    DistUnsigned = "E_DIST_UNSIGNED",
    /// A distribution signed by a key no pinned root certifies, or whose
    /// certificate is not valid now.
    DistUncertified = "E_DIST_UNCERTIFIED",
    /// A distribution whose signature does not verify: altered, or
    /// signed by another key than the certified one.
    DistSignature = "E_DIST_SIGNATURE",
    /// A distribution already past its `not_after` on arrival.
    DistExpired = "E_DIST_EXPIRED",
    /// A distribution whose version is not newer than the newest held.
    DistVersion = "E_DIST_VERSION",
    /// A permit request without a live (serial, prefix) binding (R-PRM-1).
    NoBinding = "E_NO_BINDING",
    /// The query carries no permit (R-QRY-6).
    NoPermit = "E_NO_PERMIT",
    /// The query carries no encryption public key (R-QRY-6).
    NoPublicKey = "E_NO_PUBLIC_KEY",
    /// The permit's signature does not verify against the core's key, or
    /// its contents do not match the serial, prefix or route (R-PRM-2).
    PermitInvalid = "E_PERMIT_INVALID",
    /// The core refused to issue a permit.
    PermitRefused = "E_PERMIT_REFUSED",
    /// The provision's route does not lead to this box, or its sender is
    /// not the provider the permit names (R-COM-7).
    Route = "E_ROUTE",
    /// A frame with the same message id was already accepted; answered
    /// again, never relayed twice.
    Duplicate = "E_DUPLICATE",
    /// The box is at a resource bound; try again later.
    Busy = "E_BUSY",
    /// Outside service hours (R-AV-1).
    NotInService = "E_NOT_IN_SERVICE",
    /// The store could not commit (for example, the disk is full). Nothing
    /// of the frame was kept; send it again later.
    Store = "E_STORE",
    /// The next hop could not be reached after every retry (R-COM-2).
    PeerUnreachable = "E_PEER_UNREACHABLE",
    /// The party the process waits on announced that it is stopping
    /// (`box_status stopping`, R-COM-2).
    PeerStopped = "E_PEER_STOPPED",
    /// The next hop refused the relayed message; the text says why.
    PeerRefused = "E_PEER_REFUSED",
    /// A step of the process was not answered in time (R-COM-2).
    Timeout = "E_TIMEOUT",
    /// The box hit an unexpected internal error; nothing was kept.
    Internal = "E_INTERNAL",
    /// A code this version does not know, received from a newer peer.
    /// Never sent; keeps a new code from making a refusal undecodable.
    Unrecognized = "E_UNRECOGNIZED",
}

impl Reason {
    /// True for refusals that say "not now" rather than "never": the
    /// sender keeps the message and tries again later.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Reason::Busy | Reason::Store | Reason::Internal | Reason::NotInService
        )
    }

    /// A one-line English explanation, used when no better text exists.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Malformed => "the frame is not a CBOR map with a readable header",
            Reason::TooLarge => "the frame exceeds the maximum frame size",
            Reason::UnsupportedVersion => "protocol version not supported",
            Reason::UnknownType => "unknown message type",
            Reason::MissingField => "a required field is missing",
            Reason::InvalidField => "a field has an invalid value",
            Reason::Identity => "the sender does not match its certificate",
            Reason::Role => "this party may not send this message here",
            Reason::MyNumber => "a field holds a My Number",
            Reason::BasicFour => "a field is a basic-four field",
            Reason::UnknownSerial => "no process with this serial",
            Reason::WrongPrefix => "the prefix differs from the one bound to the serial",
            Reason::OutOfSequence => "the message does not fit the process step",
            Reason::PrefixNotListed => "the prefix is not in the prefix list",
            Reason::NotOwnAgency => "the requester is not this box's agency",
            Reason::NoPrefixList => "no prefix list has been distributed yet",
            Reason::PrefixListExpired => "the prefix list in force has expired",
            Reason::DistUnsigned => "the distribution is not signed",
            Reason::DistUncertified => "the distribution key is not certified by a pinned root",
            Reason::DistSignature => "the distribution's signature does not verify",
            Reason::DistExpired => "the distribution has expired",
            Reason::DistVersion => "the distribution's version is not newer than the one held",
            Reason::NoBinding => "no live binding for this serial and prefix",
            Reason::NoPermit => "the query carries no permit",
            Reason::NoPublicKey => "the query carries no encryption public key",
            Reason::PermitInvalid => "the permit is not valid for this message",
            Reason::PermitRefused => "the core refused the permit",
            Reason::Route => "the provision's route does not match",
            Reason::Duplicate => "duplicate message id",
            Reason::Busy => "the box is busy",
            Reason::NotInService => "outside service hours",
            Reason::Store => "the store could not commit",
            Reason::PeerUnreachable => "the next hop could not be reached",
            Reason::PeerStopped => "the party the process waits on is stopping",
            Reason::PeerRefused => "the next hop refused the message",
            Reason::Timeout => "a step was not answered in time",
            Reason::Internal => "internal error",
            Reason::Unrecognized => "a reason code this version does not know",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason code this version does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason code")]
pub struct UnknownReason;

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Codes are only ever added; one from a newer peer is kept as
        // `Unrecognized` (its text still says what happened).
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Reason::from_str(&s).unwrap_or(Reason::Unrecognized))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate code {}", r.as_str());
            assert_eq!(Reason::from_str(r.as_str()), Ok(*r));
            assert!(r.as_str().starts_with("E_"));
            assert!(!r.describe().is_empty());
        }
    }
}
