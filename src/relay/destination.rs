//! Where the box sends frames, and the outbox entries that carry them.
//!
//! A destination is stored in the outbox as a short key (`core`, `ims`,
//! `is/<agency>@<ip:port>`), so an entry written before a restart is sent
//! to the same place after it.

use std::net::SocketAddr;

use ifrelay_proto::{AgencyCode, Frame, MessageId, MessageType, Party, Prefix, Serial};

/// The next hop of an outbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// The core system, at its configured address.
    Core,
    /// This box's own intermediate server, at its configured address.
    Ims,
    /// Another agency's interface system, at the endpoint a permit named.
    PeerIs {
        agency: AgencyCode,
        endpoint: SocketAddr,
    },
}

impl Destination {
    pub fn key(&self) -> String {
        match self {
            Destination::Core => "core".to_owned(),
            Destination::Ims => "ims".to_owned(),
            Destination::PeerIs { agency, endpoint } => format!("is/{agency}@{endpoint}"),
        }
    }

    /// # Errors
    /// A text naming the unreadable key.
    pub fn parse(key: &str) -> Result<Self, String> {
        match key {
            "core" => Ok(Destination::Core),
            "ims" => Ok(Destination::Ims),
            other => {
                let rest = other
                    .strip_prefix("is/")
                    .ok_or_else(|| format!("unknown destination {other:?}"))?;
                let (agency, endpoint) = rest
                    .split_once('@')
                    .ok_or_else(|| format!("destination {other:?} lacks @endpoint"))?;
                Ok(Destination::PeerIs {
                    agency: agency
                        .parse()
                        .map_err(|e| format!("destination {other:?}: {e}"))?,
                    endpoint: endpoint
                        .parse()
                        .map_err(|e| format!("destination {other:?}: {e}"))?,
                })
            }
        }
    }

    /// The party whose certificate the next hop must present.
    pub fn party(&self, own: &AgencyCode) -> Party {
        match self {
            Destination::Core => Party::core(),
            Destination::Ims => Party::ims(own.clone()),
            Destination::PeerIs { agency, .. } => Party::is(agency.clone()),
        }
    }

    pub fn agency(&self, own: &AgencyCode) -> Option<AgencyCode> {
        self.party(own).agency
    }

    pub fn party_label(&self, own: &AgencyCode) -> String {
        party_label(&self.party(own))
    }
}

/// `"core"`, `"is/131016"`, `"ims/131016"`: how a party is named in the
/// access log and in logs.
pub fn party_label(p: &Party) -> String {
    match &p.agency {
        Some(a) => format!("{}/{a}", p.role),
        None => p.role.to_string(),
    }
}

/// What the access log needs to know about an outgoing frame without
/// decoding it again.
#[derive(Debug, Clone)]
pub struct FrameMeta {
    pub message_id: MessageId,
    pub message_type: MessageType,
    pub serial: Option<Serial>,
    pub prefix: Option<Prefix>,
}

impl FrameMeta {
    pub fn of(frame: &Frame) -> Self {
        FrameMeta {
            message_id: frame.header.id.clone(),
            message_type: frame.body.message_type(),
            serial: frame.body.serial().cloned(),
            prefix: frame.body.prefix().cloned(),
        }
    }
}

/// One durable outbox entry on its way to delivery.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub seq: u64,
    pub destination: Destination,
    /// The encoded frame, length prefix included; resent byte for byte, so
    /// the message id stays the same on every attempt.
    pub bytes: Vec<u8>,
    pub meta: FrameMeta,
}

impl OutboxItem {
    pub fn new(seq: u64, destination: Destination, frame: &Frame, bytes: Vec<u8>) -> Self {
        OutboxItem {
            seq,
            destination,
            bytes,
            meta: FrameMeta::of(frame),
        }
    }

    /// Rebuilds an item from its stored form.
    ///
    /// # Errors
    /// A text saying why the entry cannot be used.
    pub fn from_stored(seq: u64, destination: &str, bytes: Vec<u8>) -> Result<Self, String> {
        let destination = Destination::parse(destination)?;
        let (prefix, body) = bytes
            .split_first_chunk::<{ ifrelay_proto::frame::LENGTH_PREFIX }>()
            .ok_or_else(|| "stored frame shorter than its prefix".to_owned())?;
        // The bytes go on the wire as stored: a prefix that does not match
        // the body would desynchronise the peer's framing.
        if usize::try_from(u32::from_be_bytes(*prefix)).ok() != Some(body.len()) {
            return Err(format!(
                "stored frame's length prefix says {} bytes, the body has {}",
                u32::from_be_bytes(*prefix),
                body.len()
            ));
        }
        let frame = Frame::decode_body(body).map_err(|e| e.to_string())?;
        Ok(OutboxItem::new(seq, destination, &frame, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_keys_round_trip() {
        for d in [
            Destination::Core,
            Destination::Ims,
            Destination::PeerIs {
                agency: "271004".parse().expect("code"),
                endpoint: "127.0.0.1:7443".parse().expect("addr"),
            },
        ] {
            assert_eq!(Destination::parse(&d.key()), Ok(d));
        }
        assert!(Destination::parse("mars").is_err());
        assert!(Destination::parse("is/271004").is_err());
    }

    #[test]
    fn a_stored_frame_whose_prefix_lies_is_refused() {
        let frame = Frame::new(
            ifrelay_proto::MessageId::new("m-1").expect("id"),
            ifrelay_proto::Party::core(),
            1,
            ifrelay_proto::Body::SerialRequest(ifrelay_proto::message::SerialRequest {
                purpose: ifrelay_proto::message::SerialPurpose::Query,
            }),
        );
        let good = frame.encode();
        assert!(OutboxItem::from_stored(1, "core", good.clone()).is_ok());
        let mut lying = good;
        lying[3] = lying[3].wrapping_add(1);
        let e = OutboxItem::from_stored(1, "core", lying).expect_err("prefix mismatch");
        assert!(e.contains("length prefix"), "{e}");
    }
}
