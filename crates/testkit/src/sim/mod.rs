//! In-process simulators of the parties around an interface system: the
//! core system ([`CoreSim`]) and an agency's intermediate server
//! ([`ImsSim`], requester and provider roles at once), speaking the real
//! protocol over real mutual TLS. Integration tests and `make demo` drive
//! the box with them.
//!
//! Owns: the simulators' behaviour ([`core`], [`ims`]), the provision-body
//! encryption the intermediate servers use ([`crypto`]), and the plumbing
//! they share ([`serve`]: listener, outbox, request pool, a recording
//! stand-in peer). Invariants: a simulator never panics on peer input —
//! every unexpected frame gets a `refused` with a reason and is counted;
//! nothing is sent from inside a request handler (sends are queued and
//! leave after the reply); no payload ever holds real personal data.
//!
//! Like the box, the simulators deliver at least once and deduplicate what
//! they receive: every listener answers a frame resent under an id it has
//! already answered (not refused) with the same reply, without handling it
//! again, remembering the last 100,000 ids ([`NetOptions::dedup_capacity`]);
//! outboxes resend byte for byte (same id) after failures, as long as
//! [`NetOptions`] allows ([`NetOptions::retrying_for`] keeps at it for a
//! period); [`ImsOptions::resend_for`] does the same for every request an
//! intermediate server sends; and [`ImsSim::double_deliveries`] keeps the
//! evidence of an event the box delivered under two different ids.

pub mod core;
pub mod crypto;
pub mod ims;
pub mod serve;

use std::net::SocketAddr;
use std::time::Duration;

use ifrelay_proto::{CodeError, Party, Reason};
use ifrelay_tls::TlsError;

pub use self::core::{convert_code, CoreProcess, CoreSim, CoreStats};
pub use self::crypto::{encrypt_to, CryptoError, RequesterKey};
pub use self::ims::{
    sim_payload, FlowError, FlowErrorKind, FlowReport, FlowStep, FlowTimings, ImsOptions, ImsSim,
    ImsStats, ProviderMode,
};
pub use self::serve::{
    Delivery, DeliveryError, NetOptions, PeerRefusal, RecordingPeer, DEFAULT_DEDUP_CAPACITY,
    RESEND_BACKOFF, RESEND_BACKOFF_CAP,
};
use ifrelay::net::LinkError;

/// Why a simulator could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The listener address could not be bound.
    #[error("cannot bind the simulator listener on {addr}; choose a free address or port 0")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TLS material does not give a usable configuration.
    #[error("the simulator's TLS material is not usable")]
    Tls(#[from] TlsError),
    /// No valid message-id prefix can be made for the party.
    #[error("no message ids can be made for {party}")]
    Identity {
        party: Party,
        #[source]
        source: CodeError,
    },
    /// Dialling, writing or reading a link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The peer answered `refused`.
    #[error("{to} refused {message_type}: {reason}: {text}")]
    Refused {
        to: Party,
        message_type: &'static str,
        reason: Reason,
        text: String,
    },
    /// The peer answered with another reply than the one expected.
    #[error("{to} answered {message_type} with {got}; expected {want}")]
    UnexpectedReply {
        to: Party,
        message_type: &'static str,
        got: &'static str,
        want: &'static str,
    },
    /// Too many frames wait for this destination.
    #[error("the send queue towards {to} is full; the peer is not taking frames")]
    QueueFull { to: Party },
    /// A queued frame was refused or could not be delivered.
    #[error("delivery to {to} failed")]
    Delivery {
        to: Party,
        #[source]
        source: DeliveryError,
    },
    /// The simulator has been shut down.
    #[error("the simulator is shut down")]
    Stopped,
    /// Something awaited did not happen in time.
    #[error("{what} did not happen within {after:?}")]
    Timeout { what: String, after: Duration },
    /// A destination is not known to the simulator.
    #[error("{party} is not registered with the simulator; register it first")]
    NotRegistered { party: Party },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}
