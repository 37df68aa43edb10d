//! Per-serial process state, for both roles of a box (REQUIREMENTS §2).
//!
//! A requester-side process is created by a serial request from the own
//! intermediate server; a provider-side process by a query from the core.
//! The state is stored as CBOR under its serial and reloaded at start, so
//! a restart continues every process where it was. The binding of R-PFX-2
//! is `prefix` while the process lives; closing removes the process.

use ifrelay_proto::{Millis, PermitFields, PersonCode, Prefix, Serial, SignedPermit};
use serde::{Deserialize, Serialize};

/// Which end of a query this box plays for the serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// This box's agency asks (IS_R).
    Requester,
    /// This box's agency provides (IS_P).
    Provider,
}

/// The linear part of a process. Later events whose order the network
/// does not fix (query accepted vs provision) are flags on [`Process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Requester: serial issued, no binding yet.
    Issued,
    /// Requester: prefix check OK; (serial, prefix) bound.
    Bound,
    /// Requester: permit request relayed to the core.
    PermitRequested,
    /// Requester: permit relayed to the intermediate server.
    Permitted,
    /// Both: the query has been relayed (requester: to the core;
    /// provider: to the intermediate server).
    QueryRelayed,
}

/// Everything the box keeps about one serial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub serial: Serial,
    pub role: Role,
    pub step: Step,
    /// The bound prefix (requester, after prefix check) or the query's
    /// prefix (provider).
    pub prefix: Option<Prefix>,
    pub permit: Option<SignedPermit>,
    pub permit_fields: Option<PermitFields>,
    /// This side's pseudonymous code, from the query.
    pub code: Option<PersonCode>,
    pub query_requested_at: Option<Millis>,
    pub query_accepted: bool,
    /// The provision passed this box (either direction).
    pub provision_relayed: bool,
    pub provision_received: bool,
    pub query_complete: bool,
    pub provision_complete: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Process {
    pub fn new_requester(serial: Serial, now: Millis) -> Self {
        Process {
            serial,
            role: Role::Requester,
            step: Step::Issued,
            prefix: None,
            permit: None,
            permit_fields: None,
            code: None,
            query_requested_at: None,
            query_accepted: false,
            provision_relayed: false,
            provision_received: false,
            query_complete: false,
            provision_complete: false,
            created_at: now,
            updated_at: now,
        }
    }

    /// A requester process ends when the intermediate server has sent
    /// query complete and, if a provision came, provision complete too.
    pub fn requester_done(&self) -> bool {
        self.role == Role::Requester
            && self.query_complete
            && (self.provision_complete || !self.provision_relayed)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        // Plain data; writing CBOR into a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// # Errors
    /// When the stored bytes are not a process (store damage).
    pub fn decode(bytes: &[u8]) -> Result<Self, ciborium::de::Error<std::io::Error>> {
        ciborium::from_reader(bytes)
    }
}
