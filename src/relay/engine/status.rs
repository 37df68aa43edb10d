//! Messages about boxes and the network rather than one process: this
//! box's own status announcements (R-COM-3), a peer's `box_status
//! stopping`, and the core's distribution of the prefix list and key.
//!
//! Invariants: a peer that stops closes exactly the processes waiting on
//! it, each with `E_PEER_STOPPED` to the parties still able to hear; a
//! distribution is held only after its chain to a pinned root verified
//! and only when its version is newer; it is stored and relayed to the
//! IMS (with its signature) in the same batch, and nothing changes when
//! it is refused.

use ifrelay_proto::distribution;
use ifrelay_proto::{
    Body, BoxStatus, Distribution, Millis, Party, Reason, Role, Serial, StatusEvent,
};
use ifrelay_store::{Batch, StoreError};

use super::prefix::Arrival;
use super::reply::{accepted, refuse, Fault};
use super::state::Relay;
use crate::relay::destination::Destination;
use crate::relay::process::{Process, Role as ProcRole, Step};

impl Relay {
    /// Queues `event` for the core and the IMS.
    pub(super) fn announce(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        event: StatusEvent,
    ) -> Result<Vec<Destination>, StoreError> {
        let mut outbox = Vec::new();
        for dest in [Destination::Core, Destination::Ims] {
            let body = Body::BoxStatus(BoxStatus { event });
            outbox.push(self.enqueue(batch, now, dest, body)?);
        }
        Ok(outbox)
    }

    /// A peer announced it is stopping: close the processes waiting on it
    /// and tell the own IMS (and the core, when a peer box stopped).
    pub(super) fn peer_stopping(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Party,
        out: &mut Vec<Destination>,
    ) -> Result<(), StoreError> {
        let waiting: Vec<Serial> = self
            .processes
            .values()
            .filter(|p| waits_on(p, peer))
            .map(|p| p.serial.clone())
            .collect();
        let tell: &[Destination] = if peer.role == Role::Core {
            &[Destination::Ims]
        } else {
            &[Destination::Ims, Destination::Core]
        };
        for serial in waiting {
            let text = format!("{peer} is stopping; the process is closed");
            out.extend(self.close_and_tell(
                batch,
                now,
                &serial,
                Reason::PeerStopped,
                &text,
                tell,
            )?);
        }
        Ok(())
    }

    pub(super) fn distribution(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &Distribution,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let trusted = distribution::verify(m, &self.cfg.roots, now).map_err(|e| {
            tracing::warn!(reason = %e.reason(), error = %e, "distribution refused; nothing changed");
            refuse(e.reason(), e.text())
        })?;
        let version = trusted.fields.version;
        match self.lists.arrival(&trusted) {
            // A resent copy (its accepted reply was lost): acknowledged,
            // neither stored nor relayed again.
            Arrival::AlreadyHeld => return Ok(accepted()),
            Arrival::NotNewer { newest } => {
                let text = format!(
                    "distribution version {version} is not newer than version {newest} held"
                );
                tracing::warn!(version, newest, "distribution refused; nothing changed");
                return Err(refuse(Reason::DistVersion, text).into());
            }
            Arrival::New => {}
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(m, &mut bytes)
            .map_err(|e| refuse(Reason::Internal, format!("encoding distribution: {e}")))?;
        batch.put_prefix(version, &bytes)?;
        self.lists.hold(&trusted, now);
        if let Some(oldest) = self.lists.oldest_needed() {
            batch.prune_prefixes_below(oldest)?;
        }
        match trusted.fields.not_before.filter(|&nb| nb > now) {
            Some(not_before) => tracing::info!(
                version,
                not_before,
                signer = %distribution::fingerprint(&trusted.signer.key),
                "distribution verified and scheduled"
            ),
            None => tracing::info!(
                version,
                not_after = trusted.fields.not_after,
                signer = %distribution::fingerprint(&trusted.signer.key),
                "distribution verified and in force"
            ),
        }
        out.push(self.enqueue(batch, now, Destination::Ims, Body::Distribution(m.clone()))?);
        Ok(accepted())
    }
}

/// Whether `p` is waiting for something from `peer`.
fn waits_on(p: &Process, peer: &Party) -> bool {
    let prefix = p.prefix.as_ref();
    match (peer.role, p.role) {
        (Role::Core, ProcRole::Requester) => {
            p.step == Step::PermitRequested || (p.step == Step::QueryRelayed && !p.query_accepted)
        }
        (Role::Is, ProcRole::Requester) => {
            p.step == Step::QueryRelayed
                && !p.provision_relayed
                && prefix.map(|x| &x.provider) == peer.agency.as_ref()
        }
        (Role::Is, ProcRole::Provider) => {
            p.provision_relayed
                && !p.provision_received
                && prefix.map(|x| &x.requester) == peer.agency.as_ref()
        }
        _ => false,
    }
}
