//! Message types of every flow (REQUIREMENTS §2) and their CBOR form.
//!
//! A frame body is one CBOR map: the common header keys (`v`, `id`, `type`,
//! `sent_at`, `from`) and the keys of its type, side by side. Decoding is
//! two steps: [`Frame::scan`] validates the whole body, screens every key
//! and value ([`crate::screen`]) and measures what will be built, building
//! nothing ([`crate::scan`]); [`Scan::decode`] then builds a CBOR tree of
//! the header and of the keys the `type` defines only, and the typed struct
//! from it. Keys a type does not define are skipped where they lie — still
//! screened, never built, never relayed: the box re-encodes every frame it
//! forwards from the typed value.
//!
//! The `type` values are spelt once, as the variant names of [`Body`]:
//! [`MessageType`] is derived from them and is the only way a name is
//! written (encoding) or looked up (decoding). The permit's own types live
//! in [`crate::permit`], [`MessageId`] with the other domain types in
//! [`crate::types`], and [`DecodeError`] with the refusal-text rules in
//! [`crate::refusal`]; all are re-exported here.

use ciborium::Value;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::distribution::{
    CoreKey, Distribution, DistributionFields, KeyCertFields, KeyCertificate, RootKey,
    TrustedDistribution, DISTRIBUTION_KEY_CONTEXT, DISTRIBUTION_SIGNING_CONTEXT,
};
pub use crate::permit::{
    PermitFields, Route, SignedPermit, MAX_PERMIT_BYTES, PERMIT_SIGNING_CONTEXT,
};
use crate::reason::Reason;
use crate::refusal::truncate;
pub use crate::refusal::{DecodeError, MAX_TEXT};
use crate::screen;
use crate::types::*;
pub use crate::types::{MessageId, MAX_MESSAGE_ID};

/// Protocol version spoken by this implementation.
pub const PROTOCOL_VERSION: u8 = 1;

/// Longest route address (`host:port`), in bytes.
pub const MAX_ADDRESS: usize = 255;

/// The header every frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Unique per sender.
    pub id: MessageId,
    /// When the sender sent it (sender's clock).
    pub sent_at: Millis,
    /// Who claims to send it; must match the TLS certificate.
    pub from: Party,
}

/// One frame: header and typed body.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Header,
    pub body: Body,
}

// ---------------------------------------------------------------- bodies

/// What a processing serial is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialPurpose {
    Query,
    CodeIssue,
}

/// IMS → IS: issue a processing serial (R-SER-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialRequest {
    pub purpose: SerialPurpose,
}

/// IS → IMS, reply: the serial issued (R-SER-2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialIssued {
    pub in_reply_to: MessageId,
    pub serial: Serial,
}

/// IMS → IS: check a prefix and bind it to the serial (R-PFX-1/2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixCheck {
    pub serial: Serial,
    pub prefix: Prefix,
}

/// IS → IMS, reply: OK, or NG with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixResult {
    pub in_reply_to: MessageId,
    pub serial: Serial,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// IMS → IS → core: ask for a permit (R-PRM-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermitRequest {
    pub serial: Serial,
    pub prefix: Prefix,
}

/// Core → IS → IMS: the permit (R-PRM-2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermitIssued {
    pub serial: Serial,
    pub permit: SignedPermit,
}

/// Core → IS → IMS: the core refused the permit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermitRefused {
    pub serial: Serial,
    pub reason: Reason,
    pub text: String,
}

/// IMS_R → IS_R → core → IS_P → IMS_P: the query (R-QRY-1..6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    pub serial: Serial,
    pub prefix: Prefix,
    pub permit: SignedPermit,
    /// The requester's X25519 public key; the provider encrypts to it.
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// The pseudonymous code (符号) of the person on the sender's side;
    /// the core converts it to the provider's code.
    pub code: PersonCode,
}

/// Serial-only messages: query accepted, query complete, provision
/// received, provision complete. Which one it is comes from `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialNotice {
    pub serial: Serial,
}

/// IMS_P → IS_P → IS_R → IMS_R: the provision; `body` is encrypted to
/// the requester's key and never parsed or logged (R-PRV-1..5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision {
    pub serial: Serial,
    pub prefix: Prefix,
    pub permit: SignedPermit,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Master tables distributed with the prefix list (§8.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Masters {
    pub agencies: Vec<MasterRow<AgencyCode>>,
    pub businesses: Vec<MasterRow<BusinessCode>>,
    pub info_names: Vec<MasterRow<InfoNameCode>>,
    pub items: Vec<ItemRow>,
}

/// One (code, label) row of a master table. The key is `label`, not
/// `name`, so that the basic-four screen can refuse any `name` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterRow<C> {
    pub code: C,
    pub label: String,
}

/// One row of the item master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRow {
    pub info_name: InfoNameCode,
    pub item: ItemCode,
    pub label: String,
    pub business: BusinessCode,
}

/// Lifecycle events announced to the core and the IMS (R-COM-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusEvent {
    Started,
    Stopping,
}

/// IS → core, IS → IMS: the box started or is stopping (R-COM-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxStatus {
    pub event: StatusEvent,
}

/// Reply: the frame and its effects are durable; the receiver now owns
/// delivering it onward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub in_reply_to: MessageId,
}

/// Reply: the frame was refused; nothing of it was kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Absent only when the refused frame's id could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<MessageId>,
    pub reason: Reason,
    pub text: String,
}

/// Asynchronous notice that a process ended abnormally or a relayed
/// message was refused further on (R-COM-1, R-COM-2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessError {
    pub serial: Serial,
    pub reason: Reason,
    pub text: String,
}

/// Every message type, tagged by the header's `type`.
///
/// The variant names are the one spelling of the wire `type` values: the
/// derive below makes [`MessageType`] from them (`SerialRequest` →
/// `"serial_request"`), and both encoding ([`Body::type_name`]) and
/// decoding ([`MessageType::from_str`](core::str::FromStr)) go through it.
#[derive(Debug, Clone, PartialEq, strum::EnumDiscriminants)]
#[strum_discriminants(
    name(MessageType),
    vis(pub),
    derive(
        Hash,
        PartialOrd,
        Ord,
        strum::IntoStaticStr,
        strum::EnumString,
        strum::VariantNames,
        strum::VariantArray
    ),
    strum(
        serialize_all = "snake_case",
        parse_err_ty = UnknownMessageType,
        parse_err_fn = unknown_message_type
    ),
    non_exhaustive,
    doc = "The `type` of a frame, without its body: a `Copy` name for \
           tables (which party may send what), the access log and \
           counters. Derived from [`Body`], so a new message type gets its \
           wire name, its parser and its place in [`MessageType::ALL`] in \
           one edit."
)]
#[non_exhaustive]
pub enum Body {
    SerialRequest(SerialRequest),
    SerialIssued(SerialIssued),
    PrefixCheck(PrefixCheck),
    PrefixResult(PrefixResult),
    PermitRequest(PermitRequest),
    Permit(PermitIssued),
    PermitRefused(PermitRefused),
    Query(Query),
    QueryAccepted(SerialNotice),
    QueryComplete(SerialNotice),
    Provision(Provision),
    ProvisionReceived(SerialNotice),
    ProvisionComplete(SerialNotice),
    Distribution(Distribution),
    BoxStatus(BoxStatus),
    ProcessError(ProcessError),
    Accepted(Accepted),
    Refused(Refused),
}

impl MessageType {
    /// Every message type, in declaration order.
    pub const ALL: &'static [MessageType] = <MessageType as strum::VariantArray>::VARIANTS;

    /// Every `type` value on the wire, in the order of [`Self::ALL`].
    pub const NAMES: &'static [&'static str] = <MessageType as strum::VariantNames>::VARIANTS;

    /// The `type` value on the wire and the access log's `operation`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl core::fmt::Display for MessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `type` value that names no message of this protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown message type; the known types are listed in MessageType::NAMES")]
pub struct UnknownMessageType;

/// The error [`MessageType::from_str`](core::str::FromStr) returns; the
/// refused text is not kept (it may be long or hold personal data).
fn unknown_message_type(_: &str) -> UnknownMessageType {
    UnknownMessageType
}

/// Every `type` value, for documentation and tests; the same list as
/// [`MessageType::NAMES`].
pub const MESSAGE_TYPES: &[&str] = MessageType::NAMES;

impl Body {
    /// The message type, without the body.
    pub fn message_type(&self) -> MessageType {
        MessageType::from(self)
    }

    /// The `type` value on the wire (`self.message_type().as_str()`).
    pub fn type_name(&self) -> &'static str {
        self.message_type().as_str()
    }

    /// The serial the message belongs to, if any.
    pub fn serial(&self) -> Option<&Serial> {
        match self {
            Body::SerialIssued(m) => Some(&m.serial),
            Body::PrefixCheck(m) => Some(&m.serial),
            Body::PrefixResult(m) => Some(&m.serial),
            Body::PermitRequest(m) => Some(&m.serial),
            Body::Permit(m) => Some(&m.serial),
            Body::PermitRefused(m) => Some(&m.serial),
            Body::Query(m) => Some(&m.serial),
            Body::QueryAccepted(m)
            | Body::QueryComplete(m)
            | Body::ProvisionReceived(m)
            | Body::ProvisionComplete(m) => Some(&m.serial),
            Body::Provision(m) => Some(&m.serial),
            Body::ProcessError(m) => Some(&m.serial),
            Body::SerialRequest(_)
            | Body::Distribution(_)
            | Body::BoxStatus(_)
            | Body::Accepted(_)
            | Body::Refused(_) => None,
        }
    }

    /// The prefix the message carries, if any.
    pub fn prefix(&self) -> Option<&Prefix> {
        match self {
            Body::PrefixCheck(m) => Some(&m.prefix),
            Body::PermitRequest(m) => Some(&m.prefix),
            Body::Query(m) => Some(&m.prefix),
            Body::Provision(m) => Some(&m.prefix),
            _ => None,
        }
    }

    /// True for hop-level replies (answers on the same connection).
    pub fn is_reply(&self) -> bool {
        matches!(
            self,
            Body::Accepted(_) | Body::Refused(_) | Body::SerialIssued(_) | Body::PrefixResult(_)
        )
    }

    /// The id of the frame this reply answers, for replies.
    pub fn in_reply_to(&self) -> Option<&MessageId> {
        match self {
            Body::Accepted(m) => Some(&m.in_reply_to),
            Body::Refused(m) => m.in_reply_to.as_ref(),
            Body::SerialIssued(m) => Some(&m.in_reply_to),
            Body::PrefixResult(m) => Some(&m.in_reply_to),
            _ => None,
        }
    }

    fn to_value(&self) -> Result<Value, ciborium::value::Error> {
        match self {
            Body::SerialRequest(m) => Value::serialized(m),
            Body::SerialIssued(m) => Value::serialized(m),
            Body::PrefixCheck(m) => Value::serialized(m),
            Body::PrefixResult(m) => Value::serialized(m),
            Body::PermitRequest(m) => Value::serialized(m),
            Body::Permit(m) => Value::serialized(m),
            Body::PermitRefused(m) => Value::serialized(m),
            Body::Query(m) => Value::serialized(m),
            Body::QueryAccepted(m)
            | Body::QueryComplete(m)
            | Body::ProvisionReceived(m)
            | Body::ProvisionComplete(m) => Value::serialized(m),
            Body::Provision(m) => Value::serialized(m),
            Body::Distribution(m) => Value::serialized(m),
            Body::BoxStatus(m) => Value::serialized(m),
            Body::ProcessError(m) => Value::serialized(m),
            Body::Accepted(m) => Value::serialized(m),
            Body::Refused(m) => Value::serialized(m),
        }
    }

    pub(crate) fn from_value(type_name: &str, value: Value) -> Result<Body, DecodeError> {
        fn typed<T: DeserializeOwned>(ty: MessageType, value: Value) -> Result<T, DecodeError> {
            value.deserialized::<T>().map_err(|e| {
                let ciborium::value::Error::Custom(message) = e;
                decode_error_from_serde(ty, &message)
            })
        }
        let Ok(ty) = type_name.parse::<MessageType>() else {
            return Err(DecodeError::new(
                Reason::UnknownType,
                format!("unknown message type {:?}", truncate(type_name, 64)),
            ));
        };
        Ok(match ty {
            MessageType::SerialRequest => Body::SerialRequest(typed(ty, value)?),
            MessageType::SerialIssued => Body::SerialIssued(typed(ty, value)?),
            MessageType::PrefixCheck => Body::PrefixCheck(typed(ty, value)?),
            MessageType::PrefixResult => Body::PrefixResult(typed(ty, value)?),
            MessageType::PermitRequest => Body::PermitRequest(typed(ty, value)?),
            MessageType::Permit => Body::Permit(typed(ty, value)?),
            MessageType::PermitRefused => Body::PermitRefused(typed(ty, value)?),
            MessageType::Query => Body::Query(typed(ty, value)?),
            MessageType::QueryAccepted => Body::QueryAccepted(typed(ty, value)?),
            MessageType::QueryComplete => Body::QueryComplete(typed(ty, value)?),
            MessageType::Provision => Body::Provision(typed(ty, value)?),
            MessageType::ProvisionReceived => Body::ProvisionReceived(typed(ty, value)?),
            MessageType::ProvisionComplete => Body::ProvisionComplete(typed(ty, value)?),
            MessageType::Distribution => Body::Distribution(typed(ty, value)?),
            MessageType::BoxStatus => Body::BoxStatus(typed(ty, value)?),
            MessageType::ProcessError => Body::ProcessError(typed(ty, value)?),
            MessageType::Accepted => Body::Accepted(typed(ty, value)?),
            MessageType::Refused => Body::Refused(typed(ty, value)?),
        })
    }
}

// ---------------------------------------------------------------- errors

/// Maps serde's messages to reason codes; `missing field` becomes
/// [`Reason::MissingField`], with the R-QRY-6 specialisations.
fn decode_error_from_serde(ty: MessageType, message: &str) -> DecodeError {
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let reason = match (ty, field) {
            (MessageType::Query, "permit") => Reason::NoPermit,
            (MessageType::Query, "public_key") => Reason::NoPublicKey,
            _ => Reason::MissingField,
        };
        return DecodeError::new(reason, format!("{ty}: missing field {field}"));
    }
    DecodeError::new(Reason::InvalidField, format!("{ty}: {message}"))
}

// ---------------------------------------------------------------- codec

pub use crate::scan::Scan;
use crate::scan::{FROM, ID, SENT_AT, V};

impl Frame {
    pub fn new(id: MessageId, from: Party, sent_at: Millis, body: Body) -> Self {
        Frame {
            header: Header { id, sent_at, from },
            body,
        }
    }

    /// Encodes the body map (without the length prefix).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut entries: Vec<(Value, Value)> = vec![
            (
                Value::Text("v".into()),
                Value::Integer(PROTOCOL_VERSION.into()),
            ),
            (
                Value::Text("id".into()),
                Value::Text(self.header.id.as_str().to_owned()),
            ),
            (
                Value::Text("type".into()),
                Value::Text(self.body.type_name().into()),
            ),
            (
                Value::Text("sent_at".into()),
                Value::Integer(self.header.sent_at.into()),
            ),
        ];
        if let Ok(from) = Value::serialized(&self.header.from) {
            entries.push((Value::Text("from".into()), from));
        }
        // Bodies are plain structs, so they always serialise to a map.
        if let Ok(Value::Map(fields)) = self.body.to_value() {
            entries.extend(fields);
        }
        let mut out = Vec::with_capacity(128);
        // Writing a Value into a Vec cannot fail.
        let _ = ciborium::into_writer(&Value::Map(entries), &mut out);
        out
    }

    /// Encodes the whole frame: 4-byte big-endian length, then the body.
    pub fn encode(&self) -> Vec<u8> {
        let body = self.encode_body();
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a frame body (the bytes after the length prefix):
    /// [`Frame::scan`], then [`Scan::decode`].
    ///
    /// # Errors
    /// A [`DecodeError`] with the reason code to answer and, where it could
    /// be read, the frame's message id.
    pub fn decode_body(bytes: &[u8]) -> Result<Frame, DecodeError> {
        Frame::scan(bytes)?.decode()
    }

    /// The first step of decoding: validates the CBOR, screens it for
    /// personal data and measures what decoding will build, building
    /// nothing ([`crate::scan`]). Keys the frame's type does not define are
    /// never built.
    ///
    /// # Errors
    /// `E_MALFORMED` when the body is not one CBOR map within the limits
    /// of [`crate::scan`], `E_TOO_LARGE` when its header and defined
    /// fields hold more than [`crate::scan::MAX_BUILT_ITEMS`] items.
    pub fn scan<B: AsRef<[u8]>>(bytes: B) -> Result<Scan<B>, DecodeError> {
        Scan::new(
            bytes,
            crate::scan::Defined {
                of: defined_keys,
                any: any_defined_key(),
            },
        )
    }
}

impl<B: AsRef<[u8]>> Scan<B> {
    /// The second step of decoding: the header, the screen's verdict, and
    /// the typed body from the keys its type defines.
    ///
    /// Order of checks: header readable (`id`, `v`, `type`, `sent_at`,
    /// `from`); the personal-data screen over the whole body; the typed
    /// body.
    ///
    /// # Errors
    /// A [`DecodeError`] with the reason code to answer and, where it could
    /// be read, the frame's message id.
    pub fn decode(self) -> Result<Frame, DecodeError> {
        let message_id = self.message_id.clone();
        let with_id = |mut e: DecodeError| {
            e.message_id.clone_from(&message_id);
            e
        };
        let Some(id) = message_id.clone() else {
            if let Some(Value::Text(t)) = self.header_value(ID)? {
                if screen::contains_my_number(&t) {
                    return Err(DecodeError::new(
                        Reason::MyNumber,
                        "header field id holds a My Number; it must never pass an interface system",
                    ));
                }
            }
            return Err(DecodeError::new(
                Reason::Malformed,
                "header field id is missing or not a valid message id",
            ));
        };
        match self.header_value(V).map_err(with_id)? {
            Some(Value::Integer(v)) if i128::from(v) == i128::from(PROTOCOL_VERSION) => {}
            Some(Value::Integer(v)) => {
                return Err(with_id(DecodeError::new(
                    Reason::UnsupportedVersion,
                    format!(
                        "protocol version {} is not supported; this box speaks {PROTOCOL_VERSION}",
                        i128::from(v)
                    ),
                )))
            }
            _ => {
                return Err(with_id(DecodeError::new(
                    Reason::Malformed,
                    "header field v is missing or not an integer",
                )))
            }
        }
        let Some(type_name) = self.type_name.clone() else {
            return Err(with_id(DecodeError::new(
                Reason::Malformed,
                "header field type is missing or not text",
            )));
        };
        let sent_at = match self.header_value(SENT_AT).map_err(with_id)? {
            Some(Value::Integer(i)) => i64::try_from(i128::from(i)).map_err(|_| {
                with_id(DecodeError::new(Reason::Malformed, "sent_at out of range"))
            })?,
            _ => {
                return Err(with_id(DecodeError::new(
                    Reason::Malformed,
                    "header field sent_at is missing or not an integer",
                )))
            }
        };
        let from: Party = match self.header_value(FROM).map_err(with_id)? {
            Some(v) => v.deserialized().map_err(|e| {
                with_id(DecodeError::new(
                    Reason::Malformed,
                    format!("header field from: {e}"),
                ))
            })?,
            None => {
                return Err(with_id(DecodeError::new(
                    Reason::Malformed,
                    "header field from is missing",
                )))
            }
        };
        if let Some(finding) = self.finding.clone() {
            return Err(DecodeError::from_finding(finding, message_id));
        }
        let fields = self.field_entries().map_err(with_id)?;
        let body = Body::from_value(&type_name, Value::Map(fields)).map_err(with_id)?;
        Ok(Frame {
            header: Header { id, sent_at, from },
            body,
        })
    }
}

/// The keys the message type named `type_name` defines, as serde reads
/// them; none for an unknown type.
pub(crate) fn defined_keys(type_name: &str) -> &'static [&'static str] {
    let Ok(ty) = type_name.parse::<MessageType>() else {
        return &[];
    };
    match ty {
        MessageType::SerialRequest => struct_fields::<SerialRequest>(),
        MessageType::SerialIssued => struct_fields::<SerialIssued>(),
        MessageType::PrefixCheck => struct_fields::<PrefixCheck>(),
        MessageType::PrefixResult => struct_fields::<PrefixResult>(),
        MessageType::PermitRequest => struct_fields::<PermitRequest>(),
        MessageType::Permit => struct_fields::<PermitIssued>(),
        MessageType::PermitRefused => struct_fields::<PermitRefused>(),
        MessageType::Query => struct_fields::<Query>(),
        MessageType::QueryAccepted
        | MessageType::QueryComplete
        | MessageType::ProvisionReceived
        | MessageType::ProvisionComplete => struct_fields::<SerialNotice>(),
        MessageType::Provision => struct_fields::<Provision>(),
        MessageType::Distribution => struct_fields::<Distribution>(),
        MessageType::BoxStatus => struct_fields::<BoxStatus>(),
        MessageType::ProcessError => struct_fields::<ProcessError>(),
        MessageType::Accepted => struct_fields::<Accepted>(),
        MessageType::Refused => struct_fields::<Refused>(),
    }
}

/// Every key some message type defines.
fn any_defined_key() -> &'static [&'static str] {
    static ANY: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    ANY.get_or_init(|| {
        let mut all: Vec<&'static str> = MessageType::NAMES
            .iter()
            .flat_map(|ty| defined_keys(ty).iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    })
}

/// The field names serde's derive gives a struct: asked of the derive
/// itself, so they can never drift from the structs above.
fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Deserializer, Error as _, Visitor};

    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = ciborium::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // The probe always refuses; it only notes the names.
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: core::str::FromStr>(s: &str) -> T
    where
        T::Err: core::fmt::Debug,
    {
        s.parse().expect("valid code")
    }

    pub(crate) fn sample_prefix() -> Prefix {
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

    fn ims_party() -> Party {
        Party::ims(code("131016"))
    }

    fn frame(body: Body) -> Frame {
        Frame::new(
            MessageId::new("m-1").expect("id"),
            ims_party(),
            1_700_000_000_000,
            body,
        )
    }

    #[test]
    fn every_body_round_trips() {
        let serial: Serial = code("131016-20261122-1795300000-1");
        let permit = SignedPermit {
            signed: vec![1, 2, 3],
            sig: vec![4; 64],
        };
        let bodies = vec![
            Body::SerialRequest(SerialRequest {
                purpose: SerialPurpose::Query,
            }),
            Body::SerialIssued(SerialIssued {
                in_reply_to: MessageId::new("x").expect("id"),
                serial: serial.clone(),
            }),
            Body::PrefixCheck(PrefixCheck {
                serial: serial.clone(),
                prefix: sample_prefix(),
            }),
            Body::PrefixResult(PrefixResult {
                in_reply_to: MessageId::new("x").expect("id"),
                serial: serial.clone(),
                ok: false,
                reason: Some(Reason::PrefixNotListed),
            }),
            Body::Query(Query {
                serial: serial.clone(),
                prefix: sample_prefix(),
                permit: permit.clone(),
                public_key: vec![9; 32],
                code: code("ABCDEFGH"),
            }),
            Body::Provision(Provision {
                serial: serial.clone(),
                prefix: sample_prefix(),
                permit,
                body: b"123456789018 opaque".to_vec(),
            }),
            Body::QueryComplete(SerialNotice {
                serial: serial.clone(),
            }),
            Body::Refused(Refused {
                in_reply_to: None,
                reason: Reason::Busy,
                text: "busy".into(),
            }),
        ];
        assert_eq!(
            MESSAGE_TYPES.len(),
            18,
            "MESSAGE_TYPES lists every Body variant"
        );
        for body in bodies {
            let f = frame(body);
            let bytes = f.encode();
            let len = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
            assert_eq!(len, bytes.len() - 4);
            let back = Frame::decode_body(&bytes[4..]).expect("decodes");
            assert_eq!(back, f);
        }
    }

    fn map(entries: Vec<(&str, Value)>) -> Vec<u8> {
        let v = Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::Text(k.into()), v))
                .collect(),
        );
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).expect("encode");
        out
    }

    fn header(type_name: &str) -> Vec<(&'static str, Value)> {
        vec![
            ("v", Value::Integer(1.into())),
            ("id", Value::Text("m-9".into())),
            ("type", Value::Text(type_name.into())),
            ("sent_at", Value::Integer(5.into())),
            (
                "from",
                Value::serialized(&ims_party()).expect("party serialises"),
            ),
        ]
    }

    fn reason_of(bytes: &[u8]) -> Reason {
        Frame::decode_body(bytes).expect_err("refused").reason
    }

    #[test]
    fn bad_frames_get_their_reason_codes() {
        assert_eq!(reason_of(b"\xff\x00garbage"), Reason::Malformed);
        assert_eq!(
            reason_of(&map(vec![("v", Value::Integer(1.into()))])),
            Reason::Malformed
        );
        let mut h = header("query");
        h[0].1 = Value::Integer(7.into());
        assert_eq!(reason_of(&map(h)), Reason::UnsupportedVersion);
        assert_eq!(reason_of(&map(header("teleport"))), Reason::UnknownType);
        let mut h = header("prefix_check");
        h.push(("serial", Value::Text("S-1".into())));
        assert_eq!(reason_of(&map(h)), Reason::MissingField);
        let mut h = header("serial_request");
        h.push(("purpose", Value::Text("lunch".into())));
        assert_eq!(reason_of(&map(h)), Reason::InvalidField);
    }

    #[test]
    fn bytes_after_the_map_are_refused() {
        let whole = frame(Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        }))
        .encode_body();
        assert!(Frame::decode_body(&whole).is_ok());
        let mut longer = whole.clone();
        longer.push(0x00);
        let e = Frame::decode_body(&longer).expect_err("trailing byte");
        assert_eq!(e.reason, Reason::Malformed);
        assert!(e.text.contains("1 bytes follow"), "{}", e.text);
    }

    #[test]
    fn query_without_permit_or_key_gets_the_r_qry_6_reasons() {
        let full = Query {
            serial: code("S-1"),
            prefix: sample_prefix(),
            permit: SignedPermit {
                signed: vec![1],
                sig: vec![2],
            },
            public_key: vec![3; 32],
            code: code("ABCD"),
        };
        let Value::Map(fields) = Value::serialized(&full).expect("serialises") else {
            panic!("map expected");
        };
        for (drop, want) in [
            ("permit", Reason::NoPermit),
            ("public_key", Reason::NoPublicKey),
            ("code", Reason::MissingField),
        ] {
            let mut h = header("query");
            for (k, v) in &fields {
                let Value::Text(k) = k else { continue };
                if k != drop {
                    let key: &'static str = Box::leak(k.clone().into_boxed_str());
                    h.push((key, v.clone()));
                }
            }
            assert_eq!(reason_of(&map(h)), want, "dropping {drop}");
        }
    }

    #[test]
    fn personal_data_in_headers_is_refused_but_bodies_are_opaque() {
        let mut h = header("serial_request");
        h.push(("purpose", Value::Text("query".into())));
        h.push(("note", Value::Text("123456789018".into())));
        let err = Frame::decode_body(&map(h)).expect_err("refused");
        assert_eq!(err.reason, Reason::MyNumber);
        assert_eq!(err.message_id, MessageId::new("m-9").ok());

        let mut h = header("serial_request");
        h.push(("purpose", Value::Text("query".into())));
        h.push(("birth_date", Value::Text("1970-01-01".into())));
        assert_eq!(reason_of(&map(h)), Reason::BasicFour);

        // A My Number in the id itself: refused, and the id is not kept
        // (it would be echoed in the refusal and written to the log).
        let mut h = header("serial_request");
        h[1].1 = Value::Text("m-123456789018".into());
        h.push(("purpose", Value::Text("query".into())));
        let err = Frame::decode_body(&map(h)).expect_err("refused");
        assert_eq!(err.reason, Reason::MyNumber);
        assert_eq!(err.message_id, None);
    }

    #[test]
    fn unknown_keys_are_dropped_not_relayed() {
        let mut h = header("serial_request");
        h.push(("purpose", Value::Text("query".into())));
        h.push(("x_extra", Value::Text("kept?".into())));
        let f = Frame::decode_body(&map(h)).expect("decodes");
        let re = f.encode_body();
        let v: Value = ciborium::from_reader(re.as_slice()).expect("cbor");
        let Value::Map(entries) = v else {
            panic!("map")
        };
        assert!(!entries
            .iter()
            .any(|(k, _)| matches!(k, Value::Text(t) if t == "x_extra")));
    }

    #[test]
    fn message_type_names_are_the_frozen_wire_names() {
        // Spelt out here on purpose: renaming a `Body` variant must not
        // silently change what goes on the wire.
        let wire = [
            "serial_request",
            "serial_issued",
            "prefix_check",
            "prefix_result",
            "permit_request",
            "permit",
            "permit_refused",
            "query",
            "query_accepted",
            "query_complete",
            "provision",
            "provision_received",
            "provision_complete",
            "distribution",
            "box_status",
            "process_error",
            "accepted",
            "refused",
        ];
        assert_eq!(MessageType::NAMES, wire);
        assert_eq!(MESSAGE_TYPES, wire);
        assert_eq!(MessageType::ALL.len(), wire.len());
        for (ty, name) in MessageType::ALL.iter().zip(wire) {
            assert_eq!(ty.as_str(), name);
            assert_eq!(ty.to_string(), name);
            assert_eq!(name.parse::<MessageType>(), Ok(*ty));
        }
        for not_a_name in ["SerialRequest", "Serial_Request", "serial-request", "", "x"] {
            assert_eq!(
                not_a_name.parse::<MessageType>(),
                Err(UnknownMessageType),
                "{not_a_name:?}"
            );
        }
    }

    #[test]
    fn every_type_name_reaches_its_own_parser() {
        // A frame with only the header: every known type gets past the
        // `type` lookup to its own body parser (which then misses fields,
        // or has none to miss); only an unknown one is refused as such.
        for ty in MessageType::ALL {
            match Frame::decode_body(&map(header(ty.as_str()))) {
                Ok(f) => assert_eq!(f.body.message_type(), *ty),
                Err(e) => assert!(
                    matches!(e.reason, Reason::MissingField | Reason::NoPermit),
                    "{ty}: {e}"
                ),
            }
        }
        let f = frame(Body::BoxStatus(BoxStatus {
            event: StatusEvent::Started,
        }));
        assert_eq!(f.body.message_type(), MessageType::BoxStatus);
        assert_eq!(f.body.type_name(), "box_status");
        let back = Frame::decode_body(&f.encode_body()).expect("decodes");
        assert_eq!(back.body.message_type(), MessageType::BoxStatus);
    }
}
