//! The one-second tick: step timers (R-COM-2) and forgetting old message
//! ids.
//!
//! Invariants: a process past its step deadline ([`StepTimeouts::deadline`])
//! is closed on the next tick, its binding erased, and the IMS told
//! `E_TIMEOUT` naming the step — the core too once the process has reached
//! it; pruning forgets at most [`SEEN_PRUNE_PER_TICK`] ids per tick, so a
//! tick never makes one commit large.
//!
//! [`StepTimeouts::deadline`]: super::config::StepTimeouts::deadline

use ifrelay_proto::{Millis, Reason, Serial};
use ifrelay_store::{Batch, StoreError};

use super::dedup::{SEEN_PRUNE_PER_TICK, SEEN_RETENTION};
use super::state::{Handled, Relay};
use crate::relay::destination::Destination;
use crate::relay::process::{Role as ProcRole, Step};

impl Relay {
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
