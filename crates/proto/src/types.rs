//! Domain values that cross the wire and land in the store: agency and
//! master codes, pseudonymous codes, processing serials, message ids,
//! prefixes, parties.
//!
//! Every code is a bounded, validated string ([`heapless::String`]), so an
//! oversized or oddly-charactered code is refused while the frame is decoded
//! and never reaches the relay or the records.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch, UTC. Every time on the wire and in
/// the store uses it.
pub type Millis = i64;

/// Why a code string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long; at most {max} are allowed")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} holds {found:?}; only ASCII letters, digits, '-' and '_' are allowed")]
    BadCharacter { kind: &'static str, found: char },
}

fn check_code(kind: &'static str, s: &str, max: usize) -> Result<(), CodeError> {
    if s.is_empty() {
        return Err(CodeError::Empty { kind });
    }
    if s.len() > max {
        return Err(CodeError::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(CodeError::BadCharacter { kind, found });
    }
    Ok(())
}

/// What the human-readable forms of a code ([`Party`]'s `Display`, a
/// code's `Debug`) print instead of a value that holds a My Number.
///
/// The screen refuses such values on the wire, and certificate names
/// holding one are refused before a party is made of them
/// (`ifrelay_tls::identity`); a code built some other way (a
/// configuration file, a test) still never reaches a log in clear.
pub const WITHHELD: &str = "<withheld: holds a My Number>";

/// Declares a bounded code newtype: validated on construction and on
/// deserialisation, serialised as a plain CBOR text string.
macro_rules! bounded_code {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(heapless::String<$max>);

        impl $name {
            /// Longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `s`.
            ///
            /// # Errors
            /// [`CodeError`] when `s` is empty, longer than [`Self::MAX_LEN`]
            /// or holds anything but ASCII letters, digits, `-` and `_`.
            pub fn new(s: &str) -> Result<Self, CodeError> {
                check_code($kind, s, $max)?;
                let mut inner = heapless::String::new();
                inner
                    .push_str(s)
                    .map_err(|()| CodeError::TooLong { kind: $kind, len: s.len(), max: $max })?;
                Ok(Self(inner))
            }

            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl FromStr for $name {
            type Err = CodeError;
            fn from_str(s: &str) -> Result<Self, CodeError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            /// Withholds a value that holds a My Number (see [`WITHHELD`]).
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if crate::screen::contains_my_number(self.as_str()) {
                    write!(f, "{}({WITHHELD})", stringify!($name))
                } else {
                    write!(f, "{}({:?})", stringify!($name), self.as_str())
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // Bounded before allocation: a huge string is refused by the
                // frame-size limit first, then by the length check here.
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

bounded_code!(
    /// Code of a public agency (municipality, prefecture, ministry): the
    /// six-digit local-government code for municipalities. The format
    /// would allow twelve digits; one that holds a My Number is refused by
    /// the screen on the wire and in certificate names, and withheld when
    /// printed ([`WITHHELD`]).
    AgencyCode,
    "agency code",
    16
);
bounded_code!(
    /// Code of a business (事務) from the business master.
    BusinessCode,
    "business code",
    16
);
bounded_code!(
    /// Code of an information name (特定個人情報名) from the info-name master.
    InfoNameCode,
    "info name code",
    16
);
bounded_code!(
    /// Code of an item (項目) of an information name, from the item master.
    ItemCode,
    "item code",
    16
);
bounded_code!(
    /// Per-agency pseudonymous code (符号) of a person. Never a My Number.
    PersonCode,
    "person code",
    64
);
bounded_code!(
    /// Processing serial (処理通番) issued by the requester's interface
    /// system: `<agency>-<yyyymmdd>-<epoch>-<counter>`, unique forever.
    /// 64 bytes hold the longest agency code with a 20-digit counter.
    Serial,
    "processing serial",
    64
);
bounded_code!(
    /// Identifier of a permit, chosen by the core.
    PermitId,
    "permit id",
    48
);

/// Longest accepted message id, in bytes.
pub const MAX_MESSAGE_ID: usize = 64;

/// Identifier of a frame, unique per sender: the key for hop
/// acknowledgements and duplicate suppression.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

impl MessageId {
    /// # Errors
    /// When `s` is empty, longer than [`MAX_MESSAGE_ID`], or holds anything
    /// but ASCII letters, digits and `-_.:`.
    pub fn new(s: impl Into<String>) -> Result<Self, CodeError> {
        let s = s.into();
        if s.is_empty() {
            return Err(CodeError::Empty { kind: "message id" });
        }
        if s.len() > MAX_MESSAGE_ID {
            return Err(CodeError::TooLong {
                kind: "message id",
                len: s.len(),
                max: MAX_MESSAGE_ID,
            });
        }
        if let Some(found) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(CodeError::BadCharacter {
                kind: "message id",
                found,
            });
        }
        Ok(MessageId(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MessageId {
    type Error = CodeError;
    fn try_from(s: String) -> Result<Self, CodeError> {
        MessageId::new(s)
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Most items one prefix may name.
pub const MAX_ITEMS: usize = 32;

/// The allow-list key of a query: who asks whom for what, under which
/// business. A prefix-check request is OK when every item is in the list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prefix {
    pub requester: AgencyCode,
    pub business: BusinessCode,
    pub provider: AgencyCode,
    pub info_name: InfoNameCode,
    pub items: heapless::Vec<ItemCode, MAX_ITEMS>,
}

/// One row of the prefix list (プレフィックス情報): every column is key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PrefixEntry {
    pub requester: AgencyCode,
    pub provider: AgencyCode,
    pub business: BusinessCode,
    pub info_name: InfoNameCode,
    pub item: ItemCode,
}

/// The kind of system a party is. Certificates name it, frames claim it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The national core system.
    Core,
    /// An interface system (this product, or a peer agency's box).
    Is,
    /// An agency's intermediate server.
    Ims,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Core => "core",
            Role::Is => "is",
            Role::Ims => "ims",
        })
    }
}

/// A participant of the network: a role and, except for the core, the
/// agency it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Party {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<AgencyCode>,
}

impl Party {
    pub fn core() -> Self {
        Party {
            role: Role::Core,
            agency: None,
        }
    }
    pub fn is(agency: AgencyCode) -> Self {
        Party {
            role: Role::Is,
            agency: Some(agency),
        }
    }
    pub fn ims(agency: AgencyCode) -> Self {
        Party {
            role: Role::Ims,
            agency: Some(agency),
        }
    }
}

impl fmt::Display for Party {
    /// `core`, `is/131016`, `ims/131016`; an agency code that holds a My
    /// Number is written as [`WITHHELD`] (`is/<withheld: holds a My
    /// Number>`), since parties are written into logs and refusal texts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.agency {
            Some(a) if crate::screen::contains_my_number(a.as_str()) => {
                write!(f, "{}/{WITHHELD}", self.role)
            }
            Some(a) => write!(f, "{}/{}", self.role, a),
            None => write!(f, "{}", self.role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_refuse_empty_long_and_odd_characters() {
        assert!(AgencyCode::new("131016").is_ok());
        assert!(matches!(AgencyCode::new(""), Err(CodeError::Empty { .. })));
        assert!(matches!(
            AgencyCode::new("12345678901234567"),
            Err(CodeError::TooLong { len: 17, .. })
        ));
        assert!(matches!(
            ItemCode::new("a b"),
            Err(CodeError::BadCharacter { found: ' ', .. })
        ));
        assert!(matches!(
            ItemCode::new("名前"),
            Err(CodeError::BadCharacter { .. })
        ));
    }

    #[test]
    fn parties_and_codes_holding_a_my_number_are_withheld_when_printed() {
        for code in ["123456789018", "1234-5678-9018", "x-123456789018"] {
            let agency = AgencyCode::new(code).expect("a valid code");
            let party = Party::is(agency.clone());
            assert_eq!(party.to_string(), format!("is/{WITHHELD}"));
            for printed in [format!("{party:?}"), format!("{agency:?}")] {
                assert!(!printed.contains("9018"), "{printed}");
            }
            // The value itself is kept: it is only not printed.
            assert_eq!(agency.as_str(), code);
        }
        let ordinary = Party::ims(AgencyCode::new("131016").expect("valid"));
        assert_eq!(ordinary.to_string(), "ims/131016");
        assert_eq!(
            format!("{ordinary:?}"),
            r#"Party { role: Ims, agency: Some(AgencyCode("131016")) }"#
        );
    }

    #[test]
    fn message_ids_refuse_empty_long_and_odd_characters() {
        let id = MessageId::new("m-1.a_b:2").expect("valid");
        assert_eq!(id.to_string(), "m-1.a_b:2");
        assert!(matches!(MessageId::new(""), Err(CodeError::Empty { .. })));
        assert!(matches!(
            MessageId::new("x".repeat(MAX_MESSAGE_ID + 1)),
            Err(CodeError::TooLong { .. })
        ));
        assert!(matches!(
            MessageId::new("m 1"),
            Err(CodeError::BadCharacter { found: ' ', .. })
        ));
        let mut buf = Vec::new();
        ciborium::into_writer(&id, &mut buf).expect("encode");
        let back: MessageId = ciborium::from_reader(buf.as_slice()).expect("decode");
        assert_eq!(back, id);
    }

    #[test]
    fn codes_round_trip_through_cbor_and_refuse_bad_values() {
        let code = BusinessCode::new("JM0123").expect("valid");
        let mut buf = Vec::new();
        ciborium::into_writer(&code, &mut buf).expect("encode");
        let back: BusinessCode = ciborium::from_reader(buf.as_slice()).expect("decode");
        assert_eq!(back, code);

        let mut bad = Vec::new();
        ciborium::into_writer(&"x".repeat(40), &mut bad).expect("encode");
        assert!(ciborium::from_reader::<BusinessCode, _>(bad.as_slice()).is_err());
    }
}
