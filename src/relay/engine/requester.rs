//! Requester-side steps: the own IMS asks, the core permits, the
//! provider's box provides (REQUIREMENTS §2, this box as IS_R).
//!
//! Order of a process: `serial_request` creates it (`Issued`); an OK
//! `prefix_check` binds the prefix (`Bound`, R-PFX-2); `permit_request`
//! needs the binding (R-PRM-1); the core's `permit` is verified before it
//! is relayed (`Permitted`); `query` needs the same prefix and permit
//! (`QueryRelayed`); `query_accepted` and `provision` may come in either
//! order; the process closes when the IMS has completed both.
//!
//! Invariants: every handler checks the process's step before it changes
//! anything, so a refusal leaves the process as it was; a step that
//! relays something stores the process and queues the frame through
//! [`Relay::advance`], in the same batch.

use ifrelay_proto::{
    Body, Millis, PermitIssued, PermitRefused, PermitRequest, PrefixCheck, PrefixResult, Provision,
    Query, Reason, Serial, SerialIssued, SerialNotice,
};
use ifrelay_store::{Batch, RecordKind};

use super::permits;
use super::reply::{accepted, placeholder_id, refuse, Fault};
use super::state::{Relay, Save};
use crate::relay::channel::Peer;
use crate::relay::destination::Destination;
use crate::relay::jst::jst_date;
use crate::relay::process::{Process, Step};

impl Relay {
    pub(super) fn serial_request(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
    ) -> Result<Body, Fault> {
        self.serial_counter += 1;
        let text = format!(
            "{}-{}-{}-{}",
            self.cfg.agency,
            jst_date(now),
            self.epoch,
            self.serial_counter
        );
        let serial = Serial::new(&text)
            .map_err(|e| refuse(Reason::Internal, format!("serial {text}: {e}")))?;
        let process = Process::new_requester(serial.clone(), now);
        self.save(batch, process)?;
        Ok(Body::SerialIssued(SerialIssued {
            in_reply_to: placeholder_id(),
            serial,
        }))
    }

    pub(super) fn prefix_check(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &PrefixCheck,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        let was_bound = p.step == Step::Bound;
        let ng =
            |relay: &mut Relay, batch: &mut Batch<'_>, reason: Reason| -> Result<Body, Fault> {
                // An NG re-check (say, after a distribution dropped the
                // prefix) erases the earlier binding (R-PFX-2).
                if was_bound {
                    if let Some(p) = relay.processes.get(&m.serial) {
                        let mut p = p.clone();
                        p.step = Step::Issued;
                        p.prefix = None;
                        p.updated_at = now;
                        relay.save(batch, p)?;
                    }
                }
                Ok(Body::PrefixResult(PrefixResult {
                    in_reply_to: placeholder_id(),
                    serial: m.serial.clone(),
                    ok: false,
                    reason: Some(reason),
                }))
            };
        match p.step {
            Step::Issued => {}
            Step::Bound if p.prefix.as_ref() == Some(&m.prefix) => {}
            _ => {
                return Err(refuse(
                    Reason::OutOfSequence,
                    format!("serial {} is past its prefix check", m.serial),
                )
                .into())
            }
        }
        if m.prefix.requester != self.cfg.agency {
            return ng(self, batch, Reason::NotOwnAgency);
        }
        let list = match self.lists.usable(now) {
            Ok(list) => list,
            Err(reason) => return ng(self, batch, reason),
        };
        if !list.lists(&m.prefix) {
            return ng(self, batch, Reason::PrefixNotListed);
        }
        let mut p = p.clone();
        p.step = Step::Bound;
        p.prefix = Some(m.prefix.clone());
        p.updated_at = now;
        self.save(batch, p)?;
        Ok(Body::PrefixResult(PrefixResult {
            in_reply_to: placeholder_id(),
            serial: m.serial.clone(),
            ok: true,
            reason: None,
        }))
    }

    pub(super) fn permit_request(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &PermitRequest,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        match p.step {
            Step::Issued => {
                return Err(refuse(
                    Reason::NoBinding,
                    format!(
                        "serial {} has no prefix bound; check the prefix first",
                        m.serial
                    ),
                )
                .into())
            }
            Step::Bound => {}
            _ => {
                return Err(refuse(
                    Reason::OutOfSequence,
                    format!("a permit was already requested for serial {}", m.serial),
                )
                .into())
            }
        }
        if p.prefix.as_ref() != Some(&m.prefix) {
            return Err(refuse(
                Reason::NoBinding,
                format!("serial {} is bound to another prefix", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.step = Step::PermitRequested;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Core,
            Body::PermitRequest(m.clone()),
            out,
        )
    }

    pub(super) fn permit(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &PermitIssued,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if p.step != Step::PermitRequested {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("no permit was requested for serial {}", m.serial),
            )
            .into());
        }
        let fields = match permits::for_requester(&self.cfg, &self.lists, p, m, now) {
            Ok(fields) => fields,
            Err(r) => {
                // The process cannot go on without a usable permit, and the
                // IMS would otherwise wait for its permit timer: close it
                // now and tell the IMS why (R-PRM-2, R-COM-2). The core
                // learns it from the refusal of its frame.
                let text = format!("the core's permit was refused: {}", r.text);
                let outbox = self.close_and_tell(
                    batch,
                    now,
                    &m.serial,
                    r.reason,
                    &text,
                    &[Destination::Ims],
                )?;
                return Err(Fault::RefuseAndTell(r, outbox));
            }
        };
        let mut p = p.clone();
        p.step = Step::Permitted;
        p.permit = Some(m.permit.clone());
        p.permit_fields = Some(fields);
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Ims,
            Body::Permit(m.clone()),
            out,
        )
    }

    pub(super) fn permit_refused(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &PermitRefused,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if p.step != Step::PermitRequested {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("no permit was requested for serial {}", m.serial),
            )
            .into());
        }
        self.close(batch, &m.serial)?;
        out.push(self.enqueue(batch, now, Destination::Ims, Body::PermitRefused(m.clone()))?);
        Ok(accepted())
    }

    pub(super) fn query_from_ims(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &Query,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if p.step != Step::Permitted {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} has no permit to query with", m.serial),
            )
            .into());
        }
        if p.prefix.as_ref() != Some(&m.prefix) {
            return Err(refuse(
                Reason::WrongPrefix,
                format!(
                    "the query's prefix differs from serial {}'s binding",
                    m.serial
                ),
            )
            .into());
        }
        permits::check_query_format(m)?;
        if p.permit.as_ref() != Some(&m.permit) {
            return Err(refuse(
                Reason::PermitInvalid,
                "the query carries another permit than the one issued for its serial",
            )
            .into());
        }
        if let Some(fields) = &p.permit_fields {
            permits::check_expiry(fields, now)?;
        }
        let mut p = p.clone();
        p.step = Step::QueryRelayed;
        p.code = Some(m.code.clone());
        p.query_requested_at = Some(now);
        p.updated_at = now;
        let record = self.record(RecordKind::Query, &p, None)?;
        batch.append_record(now, record)?;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            Destination::Core,
            Body::Query(m.clone()),
            out,
        )
    }

    pub(super) fn query_accepted_from_core(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if p.step != Step::QueryRelayed || p.query_accepted {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} is not waiting for query accepted", m.serial),
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
            Destination::Ims,
            Body::QueryAccepted(m.clone()),
            out,
        )
    }

    pub(super) fn provision_from_peer(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Peer,
        m: &Provision,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        let bound = p.prefix.as_ref();
        if peer.party.agency.as_ref() != bound.map(|b| &b.provider) {
            return Err(refuse(
                Reason::Route,
                format!(
                    "{} is not the provider named for serial {}",
                    peer.party, m.serial
                ),
            )
            .into());
        }
        if p.step != Step::QueryRelayed || p.provision_relayed {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} is not waiting for a provision", m.serial),
            )
            .into());
        }
        if bound != Some(&m.prefix) {
            return Err(refuse(Reason::WrongPrefix, "the provision's prefix differs").into());
        }
        if p.permit.as_ref() != Some(&m.permit) {
            return Err(refuse(
                Reason::PermitInvalid,
                "the provision carries another permit than the query's",
            )
            .into());
        }
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
            Destination::Ims,
            Body::Provision(m.clone()),
            out,
        )
    }

    pub(super) fn provision_received_from_ims(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if !p.provision_relayed || p.provision_received {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} has no provision awaiting receipt", m.serial),
            )
            .into());
        }
        let route = p
            .permit_fields
            .as_ref()
            .map(|f| f.provider_route.clone())
            .ok_or_else(|| refuse(Reason::Internal, "process without permit fields"))?;
        let dest = permits::peer_destination(&self.cfg, &route)?;
        let mut p = p.clone();
        p.provision_received = true;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::Keep,
            dest,
            Body::ProvisionReceived(m.clone()),
            out,
        )
    }

    pub(super) fn query_complete(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        m: &SerialNotice,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        let p = self.requester_process(&m.serial)?;
        if p.step != Step::QueryRelayed || p.query_complete {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {} has no open query to complete", m.serial),
            )
            .into());
        }
        let mut p = p.clone();
        p.query_complete = true;
        p.updated_at = now;
        self.advance(
            batch,
            now,
            p,
            Save::OrClose,
            Destination::Core,
            Body::QueryComplete(m.clone()),
            out,
        )
    }
}
