//! The engine's state apart from the store, and the primitive changes
//! every step is made of: look a process up, store it, close it, queue a
//! frame, write a record.
//!
//! Invariants: every change here writes the store batch before memory,
//! and memory changes only when that write succeeded; if the batch is
//! then abandoned or its commit fails, the engine reloads memory from the
//! store before the next batch (`Engine::run_batch`), so memory never
//! runs ahead of disk. Closing a process erases its binding (R-PFX-2).

use std::collections::HashMap;
use std::sync::Arc;

use ifrelay_proto::{Body, Frame, Millis, Party, ProcessError, Reason, Serial};
use ifrelay_store::{Batch, Record, RecordKind, Side, StoreError};
use tokio::sync::oneshot;

use super::config::EngineConfig;
use super::prefix::Lists;
use super::reply::{accepted, refuse, Fault, Refusal};
use crate::net::IdGen;
use crate::relay::channel::Verdict;
use crate::relay::destination::Destination;
use crate::relay::process::{Process, Role as ProcRole};

/// The engine's state apart from the store, so that a store batch and the
/// state can be borrowed side by side.
pub(super) struct Relay {
    pub(super) cfg: EngineConfig,
    /// This box, as the sender of the frames it queues.
    pub(super) party: Party,
    pub(super) ids: Arc<IdGen>,
    /// The serial epoch of this boot (R-SER-1).
    pub(super) epoch: u64,
    /// Serials issued in this epoch.
    pub(super) serial_counter: u64,
    /// The prefix lists held: in force and scheduled (R-DST-1..3).
    pub(super) lists: Lists,
    pub(super) processes: HashMap<Serial, Process>,
    /// Records appended before this may be deleted: a deletion confirmed
    /// at the console (R-REC-4), kept in the store across restarts.
    pub(super) records_deletion_confirmed: Option<ifrelay_proto::Millis>,
}

/// What handling one input left to do after the commit.
#[derive(Default)]
pub(super) struct Handled {
    pub(super) reply: Option<(oneshot::Sender<Body>, Body)>,
    /// Destinations that got new outbox entries.
    pub(super) outbox: Vec<Destination>,
    pub(super) refused: Option<Reason>,
    /// An answer to delivery, sent after the commit.
    pub(super) verdict: Option<(oneshot::Sender<Verdict>, Verdict)>,
}

/// How [`Relay::advance`] stores the process.
#[derive(Debug, Clone, Copy)]
pub(super) enum Save {
    Keep,
    /// Close it instead when the requester side is done.
    OrClose,
}

impl Relay {
    pub(super) fn process(&self, serial: &Serial) -> Result<&Process, Refusal> {
        self.processes.get(serial).ok_or_else(|| {
            refuse(
                Reason::UnknownSerial,
                format!("no process with serial {serial}"),
            )
        })
    }

    pub(super) fn requester_process(&self, serial: &Serial) -> Result<&Process, Refusal> {
        let p = self.process(serial)?;
        if p.role != ProcRole::Requester {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {serial} is a provider-side process here"),
            ));
        }
        Ok(p)
    }

    pub(super) fn provider_process(&self, serial: &Serial) -> Result<&Process, Refusal> {
        let p = self.process(serial)?;
        if p.role != ProcRole::Provider {
            return Err(refuse(
                Reason::OutOfSequence,
                format!("serial {serial} is a requester-side process here"),
            ));
        }
        Ok(p)
    }

    /// The common end of a step: store the process (or close it when it
    /// is done), queue `body` for `dest`, answer `accepted`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn advance(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        p: Process,
        save: Save,
        dest: Destination,
        body: Body,
        out: &mut Vec<Destination>,
    ) -> Result<Body, Fault> {
        match save {
            Save::Keep => self.save(batch, p)?,
            Save::OrClose => self.save_or_close(batch, p)?,
        }
        out.push(self.enqueue(batch, now, dest, body)?);
        Ok(accepted())
    }

    pub(super) fn save(&mut self, batch: &mut Batch<'_>, p: Process) -> Result<(), StoreError> {
        batch.put_process(&p.serial, &p.encode())?;
        self.processes.insert(p.serial.clone(), p);
        Ok(())
    }

    pub(super) fn save_or_close(
        &mut self,
        batch: &mut Batch<'_>,
        p: Process,
    ) -> Result<(), StoreError> {
        if p.requester_done() {
            self.close(batch, &p.serial)
        } else {
            self.save(batch, p)
        }
    }

    /// Ends a process and erases its binding (R-PFX-2).
    pub(super) fn close(
        &mut self,
        batch: &mut Batch<'_>,
        serial: &Serial,
    ) -> Result<(), StoreError> {
        batch.remove_process(serial)?;
        self.processes.remove(serial);
        Ok(())
    }

    /// Closes `serial` and sends a `process_error` to each of `tell`.
    pub(super) fn close_and_tell(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
        serial: &Serial,
        reason: Reason,
        text: &str,
        tell: &[Destination],
    ) -> Result<Vec<Destination>, StoreError> {
        self.close(batch, serial)?;
        let mut outbox = Vec::new();
        for dest in tell {
            let notice = Body::ProcessError(ProcessError {
                serial: serial.clone(),
                reason,
                text: text.to_owned(),
            });
            outbox.push(self.enqueue(batch, now, dest.clone(), notice)?);
        }
        Ok(outbox)
    }

    /// Wraps `body` in a frame from this box and puts it in the outbox.
    pub(super) fn enqueue(
        &self,
        batch: &mut Batch<'_>,
        now: Millis,
        destination: Destination,
        body: Body,
    ) -> Result<Destination, StoreError> {
        let frame = Frame::new(self.ids.next(), self.party.clone(), now, body);
        batch.push_outbox(&destination.key(), &frame.encode())?;
        Ok(destination)
    }

    /// The R-REC-1 record of `p`; every recorded process has its prefix.
    pub(super) fn record(
        &self,
        kind: RecordKind,
        p: &Process,
        provision_at: Option<Millis>,
    ) -> Result<Record, Refusal> {
        let prefix = p
            .prefix
            .clone()
            .ok_or_else(|| refuse(Reason::Internal, "recorded process without prefix"))?;
        let (side, counterpart) = match p.role {
            ProcRole::Requester => (Side::Requester, prefix.provider.clone()),
            ProcRole::Provider => (Side::Provider, prefix.requester.clone()),
        };
        Ok(Record {
            kind,
            side,
            serial: p.serial.clone(),
            code: p.code.clone(),
            permit_id: p.permit_fields.as_ref().map(|f| f.permit_id.clone()),
            counterpart: Some(counterpart),
            query_requested_at: p.query_requested_at.unwrap_or(p.created_at),
            provision_at,
            clock_synced: self.cfg.clock_synced,
            prefix,
        })
    }
}
