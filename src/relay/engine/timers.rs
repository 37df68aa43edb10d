//! The one-second tick: step timers (R-COM-2) and forgetting old message
//! ids.
//!
//! Invariants: a process past its step deadline ([`StepTimeouts::deadline`])
//! is closed on the next tick, its binding erased, and the IMS told
//! `E_TIMEOUT` naming the step — the core too once the process has reached
//! it; pruning forgets at most [`SEEN_PRUNE_PER_TICK`] ids per tick, so a
//! tick never makes one commit large; retention deletion (R-REC-4,
//! R-REC-6) removes at most [`RETENTION_DELETE_PER_TICK`] records and as
//! many access-log entries per tick, never one inside its period.
//!
//! [`StepTimeouts::deadline`]: super::config::StepTimeouts::deadline

use ifrelay_proto::{Millis, Reason, Serial};
use ifrelay_store::{Batch, StoreError};

use super::dedup::{SEEN_PRUNE_PER_TICK, SEEN_RETENTION};
use super::state::{Handled, Relay};
use crate::relay::destination::Destination;
use crate::relay::process::{Role as ProcRole, Step};

/// Most records, and most access-log entries, deleted by age per tick:
/// a bounded step, so deleting years of entries never stalls the relay.
/// Each deleted entry costs ~40 µs here (its index rows go with it), and
/// the step holds every input of the tick's batch: 500 + 500 took ~20
/// ms, 25 + 25 take ~2 ms (docs/performance.md, "Retention steps"). That
/// deletes 4.3 million entries a day, three times what a box of 100,000
/// flows a day appends; a backlog of a million goes in under 6 hours.
pub const RETENTION_DELETE_PER_TICK: usize = 25;

impl Relay {
    /// Deletes a bounded step of the entries past their retention period
    /// (R-REC-4, R-REC-6): the access log always; records when the policy
    /// says the box deletes them itself, or up to where a deletion was
    /// confirmed at the console. Nothing inside a period ever goes.
    fn delete_by_retention(&self, batch: &mut Batch<'_>, now: Millis) -> Result<(), StoreError> {
        let policy = self.cfg.retention;
        let access =
            batch.delete_access_before(policy.access_cutoff(now), RETENTION_DELETE_PER_TICK)?;
        let period = policy.records_cutoff(now);
        let allowed = if policy.delete_records {
            Some(period)
        } else {
            self.records_deletion_confirmed.map(|c| c.min(period))
        };
        let records = match allowed {
            Some(cutoff) => batch.delete_records_before(cutoff, RETENTION_DELETE_PER_TICK)?,
            None => 0,
        };
        if access > 0 || records > 0 {
            tracing::debug!(
                access,
                records,
                "retention: deleted entries past their period"
            );
        }
        Ok(())
    }

    /// Closes every process whose step timed out (R-COM-2), and forgets
    /// message ids older than [`SEEN_RETENTION`].
    pub(super) fn expire(
        &mut self,
        batch: &mut Batch<'_>,
        now: Millis,
    ) -> Result<Handled, StoreError> {
        self.lists.watch_expiry(now, self.cfg.expiry_warning);
        let horizon = now.saturating_sub(i64::try_from(SEEN_RETENTION.as_millis()).unwrap_or(0));
        batch.prune_seen(horizon, SEEN_PRUNE_PER_TICK)?;
        self.delete_by_retention(batch, now)?;
        let expired: Vec<(Serial, &'static str)> = self
            .processes
            .values()
            .filter_map(|p| {
                let (deadline, waiting) = self.cfg.steps.deadline(p);
                (deadline <= now).then(|| (p.serial.clone(), waiting))
            })
            .collect();
        let mut outbox = Vec::new();
        for (serial, waiting) in expired {
            let text = format!("no {waiting} in time; the process is closed");
            tracing::warn!(%serial, waiting, "process timed out");
            // A serial that never reached the core (issued or bound, no
            // permit requested) concerns only the IMS.
            let reached_core = self
                .processes
                .get(&serial)
                .is_some_and(|p| p.role == ProcRole::Provider || p.step >= Step::PermitRequested);
            let tell: &[Destination] = if reached_core {
                &[Destination::Ims, Destination::Core]
            } else {
                &[Destination::Ims]
            };
            outbox.extend(self.close_and_tell(
                batch,
                now,
                &serial,
                Reason::Timeout,
                &text,
                tell,
            )?);
        }
        Ok(Handled {
            outbox,
            ..Handled::default()
        })
    }
}
