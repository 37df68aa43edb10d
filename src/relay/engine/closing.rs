//! Steps of either side that end a process: the IMS's
//! `provision_complete`, and a `process_error` from any party to it.
//!
//! Invariants: a provision is completed only after the requester's side
//! confirmed receipt; only a party to the process (the own IMS, the core,
//! or the counterpart agency's box) may end it with a `process_error`,
//! which is passed on to the other side.

use ifrelay_proto::{Body, Millis, ProcessError, Reason, Role, SerialNotice};
use ifrelay_store::Batch;

use super::reply::{accepted, refuse, Fault};
use super::state::Relay;
use crate::relay::channel::Peer;
use crate::relay::destination::Destination;
use crate::relay::process::Role as ProcRole;

impl Relay {
    pub(super) fn provision_complete(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.process(&m.serial)?;
        // Both sides complete only after the requester confirmed receipt.
        let ready = p.provision_received;
        if !ready || p.provision_complete {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} has no provision to complete", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.provision_complete = true;
        p.updated_at = now;
        if p.role == ProcRole::Provider {
            self.close(batch, &m.serial)?;
        } else {
            self.save_or_close(batch, p)?;
        }
        out.push(self.enqueue(
            batch,
            now,
            Destination::Core,
            Body::ProvisionComplete(m.clone()),
        )?);
        Ok(accepted())
    }

    pub(super) fn process_error(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Peer,
        m: &ProcessError,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.process(&m.serial)?;
        // Only a party to the process may end it: the own IMS, the core,
        // or the counterpart agency's box.
        let counterpart = p.prefix.as_ref().map(|x| match p.role {
            ProcRole::Requester => &x.provider,
            ProcRole::Provider => &x.requester,
        });
        if peer.party.role == Role::Is && peer.party.agency.as_ref() != counterpart {
            return Err(refuse(
                Reason::Route,
                format!("{} is not a party to serial {}", peer.party, m.serial),
            )
            .into());
        }
        self.close(batch, &m.serial)?;
        let dest = if peer.party.role == Role::Ims {
            Destination::Core
        } else {
            Destination::Ims
        };
        out.push(self.enqueue(batch, now, dest, Body::ProcessError(m.clone()))?);
        Ok(accepted())
    }
}
