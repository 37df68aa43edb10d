//! Provider-side steps: the core brings a query, the own IMS answers and
//! provides, the requester's box confirms receipt (REQUIREMENTS §2, this
//! box as IS_P).
//!
//! Order of a process: the core's `query` creates it after its permit,
//! the prefix list and the route back are checked; `query_accepted` and
//! `provision` come from the IMS; `provision_received` from the
//! requester's box (only the agency the prefix names); the IMS's
//! `provision_complete` (only after receipt) closes it, in
//! [`super::closing`].
//!
//! Invariants: nothing is stored for a query that fails any check; a
//! provision goes only to the route the core signed into the permit.

use ifrelay_proto::{Body, Millis, Provision, Query, Reason, SerialNotice};
use ifrelay_store::{Batch, RecordKind};

use super::permits;
use super::reply::{refuse, Fault};
use super::state::{Relay, Save};
use crate::relay::channel::Peer;
use crate::relay::destination::Destination;
use crate::relay::process::{Process, Role as ProcRole, Step};

impl Relay {
    pub(super) fn query_from_core(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &Query,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        if self.processes.contains_key(&m.serial) {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} is already known to this box", m.serial),
            )
            .into());
        }
        permits::check_query_format(m)?;
        let fields = permits::for_provider(&self.cfg, &self.lists, m, now)?;
        let list = self.lists.usable(now).map_err(|reason| {
            let text = match reason {
                Reason::PrefixListExpired => {
                    "this box's prefix list has expired; no new process starts"
                }
                _ => "no prefix list distributed yet",
            };
            refuse(reason, text)
        })?;
        if !list.lists(&m.prefix) {
            return Err(refuse(
                Reason::PrefixNotListed,
                "the query's prefix is not in this box's prefix list",
            )
            .into());
        }
        let mut p = Process::new_requester(m.serial.clone(), now);
        p.role = ProcRole::Provider;
        p.step = Step::QueryRelayed;
        p.prefix = Some(m.prefix.clone());
        p.permit = Some(m.permit.clone());
        p.permit_fields = Some(fields);
        p.code = Some(m.code.clone());
        p.query_requested_at = Some(now);
        let record = self.record(RecordKind::Query, &p, None)?;
        batch.append_record(now, record)?;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Ims,
            Body::Query(m.clone()),
            out,
        )
    }

    pub(super) fn query_accepted_from_ims(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.provider_process(&m.serial)?;
        if p.query_accepted {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("query {} was already accepted", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.query_accepted = true;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Core,
            Body::QueryAccepted(m.clone()),
            out,
        )
    }

    pub(super) fn provision_from_ims(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &Provision,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.provider_process(&m.serial)?;
        if p.provision_relayed {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("a provision was already sent for serial {}", m.serial),
            )
            .into());
        }
        if p.prefix.as_ref() != Some(&m.prefix) {
            return Err(refuse(
                Reason::WrongPrefix,
                "the provision's prefix differs from the query's",
            )
            .into());
        }
        if p.permit.as_ref() != Some(&m.permit) {
            return Err(refuse(
                Reason::PermitInvalid,
                "the provision carries another permit than the query's",
            )
            .into());
        }
        let route = p
            .permit_fields
            .as_ref()
            .map(|f| f.route.clone())
            .ok_or_else(|| refuse(Reason::Internal, "process without permit fields"))?;
        let dest = permits::peer_destination(&self.cfg, &route)?;
        let mut p = p.clone();
        p.provision_relayed = true;
        p.updated_at = now;
        let record = self.record(RecordKind::Provision, &p, Some(now))?;
        batch.append_record(now, record)?;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            dest,
            Body::Provision(m.clone()),
            out,
        )
    }

    pub(super) fn provision_received_from_peer(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Peer,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.provider_process(&m.serial)?;
        let requester = p.prefix.as_ref().map(|x| &x.requester);
        if peer.party.agency.as_ref() != requester {
            return Err(refuse(
                Reason::Route,
                format!("{} is not the requester of serial {}", peer.party, m.serial),
            )
            .into());
        }
        if !p.provision_relayed || p.provision_received {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} has no provision awaiting receipt", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.provision_received = true;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Ims,
            Body::ProvisionReceived(m.clone()),
            out,
        )
    }
}
