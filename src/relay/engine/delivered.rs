//! Answers from delivery: the next hop's reply to an outbox entry, and an
//! entry delivery could not get through.
//!
//! Invariants: an answered entry leaves the outbox in the same commit as
//! its access-log entry; a refusal by a next hop is told to the other
//! side of the process once (`E_PEER_REFUSED`), never about a notice, so
//! two refusing peers cannot ping-pong; an undeliverable entry is given
//! up only when an open process depends on it (R-COM-2), anything else is
//! kept for resending (R-COM-4).

use std::net::SocketAddr;

use ifrelay_proto::{Body, MessageType, Millis, ProcessError, Reason};
use ifrelay_store::{Batch, StoreError};

use super::access;
use super::reply::cut;
use super::state::{Handled, Relay};
use crate::relay::channel::Verdict;
use crate::relay::destination::{Destination, OutboxItem};

impl Relay {
    /// Records the next hop's `reply` to `item` and removes the entry.
    pub(super) fn delivered(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        item: &OutboxItem,
        terminal: SocketAddr,
        reply: &Body,
    ) -> Result<Handled, StoreError> {
        batch.remove_outbox(item.seq)?;
        batch.append_access(access::delivered(
            now,
            &self.cfg.agency,
            item,
            terminal,
            reply,
        ))?;
        let meta = &item.meta;
        let mut outbox = Vec::new();
        // The next hop refused what we relayed: tell the other side of
        // the process, so that nobody waits for an answer that will not
        // come (R-COM-1). A refusal by the own IMS goes to the core; any
        // other goes to the own IMS. A refused notice is not noticed again,
        // so two refusing peers cannot ping-pong.
        let is_notice = meta.message_type == MessageType::ProcessError;
        if let (Body::Refused(r), Some(serial), false) = (reply, &meta.serial, is_notice) {
            let notify = if item.destination == Destination::Ims {
                Destination::Core
            } else {
                Destination::Ims
            };
            let notice = Body::ProcessError(ProcessError {
                serial: serial.clone(),
                reason: Reason::PeerRefused,
                text: cut(&format!(
                    "{} refused {}: {} {}",
                    item.destination.party_label(&self.cfg.agency),
                    meta.message_type,
                    r.reason,
                    r.text
                )),
            });
            outbox.push(self.enqueue(batch, now, notify, notice)?);
        }
        Ok(Handled {
            outbox,
            ..Handled::default()
        })
    }

    /// Delivery could not reach the next hop: an open process that depends
    /// on the entry is closed and the other parties told; anything else is
    /// kept for resending once the peer is back (R-COM-2, R-COM-4).
    pub(super) fn give_up(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        item: &OutboxItem,
    ) -> Result<(Verdict, Vec<Destination>), StoreError> {
        let serial = match &item.meta.serial {
            Some(s)
                if self.processes.contains_key(s)
                    && item.meta.message_type != MessageType::ProcessError =>
            {
                s.clone()
            }
            _ => return Ok((Verdict::Keep, Vec::new())),
        };
        batch.remove_outbox(item.seq)?;
        let unreachable = item.destination.party_label(&self.cfg.agency);
        let tell: Vec<Destination> = [Destination::Ims, Destination::Core]
            .into_iter()
            .filter(|d| *d != item.destination)
            .collect();
        let text = format!(
            "{unreachable} could not be reached to deliver {}; the process is closed",
            item.meta.message_type
        );
        tracing::warn!(%serial, %unreachable, "next hop unreachable; process closed");
        let outbox =
            self.close_and_tell(batch, now, &serial, Reason::PeerUnreachable, &text, &tell)?;
        Ok((Verdict::GiveUp, outbox))
    }
}
