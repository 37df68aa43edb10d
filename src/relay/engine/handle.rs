//! One input, handled against the state and the store batch: the frame
//! path (sender identity, duplicate table, role table, service hours, the
//! step, the access-log entry, remembering the reply) and the other
//! inputs (refusals noted by listeners, delivery answers, the tick,
//! announcements).
//!
//! Invariants: every input except a tick, an announcement, a console
//! write without an entry or a stop writes exactly one access-log entry; a refused frame changes nothing
//! but that entry (and, for a permit the box refuses, the closing of its
//! process with notices, which [`Fault::RefuseAndTell`] carries); a frame
//! is remembered for duplicate suppression only when accepted, in the
//! same batch as its effects.

use ifrelay_proto::{Body, Frame, Millis, Reason, Refused, Role, StatusEvent};
use ifrelay_store::{Batch, StoreError};

use super::access;
use super::dedup::{decode_seen, encode_seen, fingerprint};
use super::reply::{accepted, refuse, with_reply_to, Fault};
use super::roles::{check_role, starts_process};
use super::state::{Handled, Relay};
use crate::relay::channel::{ConsoleWrite, Delivery, FrameInput, Input, Peer, Undeliverable};
use crate::relay::destination::{party_label, Destination};

/// A store error while handling an input, with the input handed back (when
/// it has someone to answer) so it can be answered [`Reason::Store`].
pub(super) type Failed = Box<(StoreError, Option<Input>)>;

/// The console's accounts and access-log entry, into the batch.
/// A confirmed deletion is stored no later than `period_cutoff`.
fn console_write(
    batch: &mut Batch<'_>,
    write: &ConsoleWrite,
    period_cutoff: Millis,
) -> Result<(), StoreError> {
    if let Some(before) = write.delete_records_before {
        batch.confirm_records_deletion(before.min(period_cutoff))?;
    }
    for (id, account) in &write.users {
        match account {
            Some(bytes) => batch.put_user(id, bytes)?,
            None => {
                batch.remove_user(id)?;
            }
        }
    }
    if let Some(entry) = &write.access {
        batch.append_access(entry.clone())?;
    }
    Ok(())
}

/// What a frame got: the reply, the outbox entries queued for it, and the
/// refusal reason if it was refused.
struct Answer {
    body: Body,
    outbox: Vec<Destination>,
    refused: Option<Reason>,
}

impl Relay {
    /// Handles one input. A store error hands the input back so it can be
    /// answered with [`Reason::Store`].
    pub(super) fn handle(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        input: Input,
    ) -> Result<Handled, Failed> {
        match input {
            Input::Frame(input) => {
                let FrameInput { peer, frame, reply } = *input;
                match self.answer(batch, now, &peer, &frame) {
                    Ok(a) => Ok(Handled {
                        reply: Some((reply, a.body)),
                        outbox: a.outbox,
                        refused: a.refused,
                        verdict: None,
                    }),
                    Err(e) => {
                        let back = Input::Frame(Box::new(FrameInput { peer, frame, reply }));
                        Err(Box::new((e, Some(back))))
                    }
                }
            }
            Input::Refused {
                terminal,
                party,
                direction,
                operation,
                message_id,
                reason,
            } => {
                let entry = access::refused_before(
                    now, terminal, party, direction, operation, message_id, reason,
                );
                batch
                    .append_access(entry)
                    .map_err(|e| Box::new((e, None)))?;
                Ok(Handled {
                    refused: Some(reason),
                    ..Handled::default()
                })
            }
            Input::Delivered(d) => {
                let Delivery {
                    item,
                    terminal,
                    reply,
                } = &*d;
                self.delivered(batch, now, item, *terminal, reply)
                    .map_err(|e| Box::new((e, Some(Input::Delivered(d)))))
            }
            Input::Tick => self.expire(batch, now).map_err(|e| Box::new((e, None))),
            Input::Announce { event, done } => {
                let outbox = self
                    .announce(batch, now, event)
                    .map_err(|e| Box::new((e, None)))?;
                Ok(Handled {
                    reply: done.map(|tx| (tx, accepted())),
                    outbox,
                    ..Handled::default()
                })
            }
            Input::Undeliverable(u) => match self.give_up(batch, now, &u.item) {
                Ok((v, outbox)) => {
                    let Undeliverable { verdict, .. } = *u;
                    Ok(Handled {
                        outbox,
                        verdict: Some((verdict, v)),
                        ..Handled::default()
                    })
                }
                Err(e) => Err(Box::new((e, Some(Input::Undeliverable(u))))),
            },
            Input::Console(write) => {
                match console_write(batch, &write, self.cfg.retention.records_cutoff(now)) {
                    Ok(()) => {
                        if let Some(before) = write.delete_records_before {
                            // Never past the period, whatever the console sent.
                            let limit = self.cfg.retention.records_cutoff(now);
                            let confirmed = before.min(limit);
                            self.records_deletion_confirmed = Some(
                                self.records_deletion_confirmed
                                    .map_or(confirmed, |c| c.max(confirmed)),
                            );
                        }
                        Ok(Handled {
                            reply: Some((write.done, accepted())),
                            ..Handled::default()
                        })
                    }
                    Err(e) => Err(Box::new((e, Some(Input::Console(write))))),
                }
            }
            Input::Stop => Ok(Handled::default()),
        }
    }

    /// The frame path: identity, duplicates, the step, the access log and
    /// the duplicate table.
    fn answer(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Peer,
        frame: &Frame,
    ) -> Result<Answer, StoreError> {
        // Who sends comes first: a frame that lies about its sender is
        // refused as such, even under a known id.
        if frame.header.from != peer.party {
            let text = format!(
                "frame claims to be from {} but the certificate names {}",
                frame.header.from, peer.party
            );
            tracing::info!(peer = %peer.party, addr = %peer.addr, %text, "frame refused");
            batch.append_access(access::frame_in(
                now,
                peer,
                frame,
                Reason::Identity.to_string(),
            ))?;
            return Ok(Answer {
                body: Body::Refused(Refused {
                    in_reply_to: Some(frame.header.id.clone()),
                    reason: Reason::Identity,
                    text,
                }),
                outbox: Vec::new(),
                refused: Some(Reason::Identity),
            });
        }
        let sender = party_label(&peer.party);
        let print = fingerprint(frame);
        // A frame already accepted is answered again, never handled twice
        // (DESIGN "Wire format"); an id reused for another frame is
        // refused.
        if let Some(seen) = batch.seen(&sender, frame.header.id.as_str())? {
            let (outcome, body, refused) = match decode_seen(&seen.reply, &print) {
                Some(body) => ("duplicate".to_owned(), body, None),
                None => (
                    Reason::Duplicate.to_string(),
                    Body::Refused(Refused {
                        in_reply_to: None,
                        reason: Reason::Duplicate,
                        text: format!(
                            "message id {} was already used for another frame",
                            frame.header.id
                        ),
                    }),
                    Some(Reason::Duplicate),
                ),
            };
            batch.append_access(access::frame_in(now, peer, frame, outcome))?;
            return Ok(Answer {
                body: with_reply_to(body, &frame.header.id),
                outbox: Vec::new(),
                refused,
            });
        }
        match self.step(batch, now, peer, frame) {
            Ok((body, outbox)) => {
                let outcome = access::outcome_of(&body);
                batch.append_access(access::frame_in(now, peer, frame, outcome))?;
                let body = with_reply_to(body, &frame.header.id);
                let remembered = encode_seen(&print, &body, &self.party);
                batch.put_seen(&sender, frame.header.id.as_str(), now, &remembered)?;
                Ok(Answer {
                    body,
                    outbox,
                    refused: None,
                })
            }
            Err(fault) => {
                let (r, outbox) = fault.into_refusal()?;
                tracing::info!(peer = %peer.party, addr = %peer.addr, r#type = frame.body.type_name(), reason = %r.reason, text = %r.text, "frame refused");
                batch.append_access(access::frame_in(now, peer, frame, r.reason.to_string()))?;
                Ok(Answer {
                    body: Body::Refused(Refused {
                        in_reply_to: Some(frame.header.id.clone()),
                        reason: r.reason,
                        text: r.text,
                    }),
                    outbox,
                    refused: Some(r.reason),
                })
            }
        }
    }

    /// Routes a frame to the step its sender and type name, after the role
    /// table and the service hours.
    fn step(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        peer: &Peer,
        frame: &Frame,
    ) -> Result<(Body, Vec<Destination>), Fault> {
        check_role(peer, &frame.body)?;
        if starts_process(peer.party.role, &frame.body) && !self.cfg.hours.is_open(now) {
            return Err(refuse(
                Reason::NotInService,
                format!(
                    "outside service hours ({}); processes under way continue",
                    self.cfg.hours.describe()
                ),
            )
            .into());
        }
        let mut out = Vec::new();
        let body = match (&peer.party.role, &frame.body) {
            // ---- from the own intermediate server
            (Role::Ims, Body::SerialRequest(_)) => self.serial_request(batch, now)?,
            (Role::Ims, Body::PrefixCheck(m)) => self.prefix_check(batch, now, m)?,
            (Role::Ims, Body::PermitRequest(m)) => self.permit_request(batch, now, m, &mut out)?,
            (Role::Ims, Body::Query(m)) => self.query_from_ims(batch, now, m, &mut out)?,
            (Role::Ims, Body::QueryAccepted(m)) => {
                self.query_accepted_from_ims(batch, now, m, &mut out)?
            }
            (Role::Ims, Body::Provision(m)) => self.provision_from_ims(batch, now, m, &mut out)?,
            (Role::Ims, Body::ProvisionReceived(m)) => {
                self.provision_received_from_ims(batch, now, m, &mut out)?
            }
            (Role::Ims, Body::ProvisionComplete(m)) => {
                self.provision_complete(batch, now, m, &mut out)?
            }
            (Role::Ims, Body::QueryComplete(m)) => self.query_complete(batch, now, m, &mut out)?,
            // ---- from the core
            (Role::Core, Body::Permit(m)) => self.permit(batch, now, m, &mut out)?,
            (Role::Core, Body::PermitRefused(m)) => self.permit_refused(batch, now, m, &mut out)?,
            (Role::Core, Body::Query(m)) => self.query_from_core(batch, now, m, &mut out)?,
            (Role::Core, Body::QueryAccepted(m)) => {
                self.query_accepted_from_core(batch, now, m, &mut out)?
            }
            (Role::Core, Body::Distribution(m)) => self.distribution(batch, now, m, &mut out)?,
            // ---- from a peer interface system
            (Role::Is, Body::Provision(m)) => {
                self.provision_from_peer(batch, now, peer, m, &mut out)?
            }
            (Role::Is, Body::ProvisionReceived(m)) => {
                self.provision_received_from_peer(batch, now, peer, m, &mut out)?
            }
            // ---- from anyone
            (_, Body::ProcessError(m)) => self.process_error(batch, now, peer, m, &mut out)?,
            (Role::Core | Role::Is, Body::BoxStatus(m)) if m.event == StatusEvent::Stopping => {
                self.peer_stopping(batch, now, &peer.party, &mut out)?;
                accepted()
            }
            (_, Body::BoxStatus(_)) => accepted(),
            (_, other) => {
                return Err(refuse(
                    Reason::Role,
                    format!("{} may not send {}", peer.party, other.type_name()),
                )
                .into())
            }
        };
        Ok((body, out))
    }
}
