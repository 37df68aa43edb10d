//! Fixed facts about this box the engine needs, and the step timeouts.
//!
//! Invariant: [`StepTimeouts::deadline`] gives every open process exactly
//! one deadline, measured from the event that started the step it waits
//! in, so a process that never hears from a party is closed (R-COM-2).

use std::time::Duration;

use ifrelay_proto::{AgencyCode, Millis, RootKey};

use crate::relay::hours::ServiceHours;
use crate::relay::process::{Process, Step};

/// Fixed facts about this box the engine needs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub agency: AgencyCode,
    /// Networks a peer interface system may be dialled at (R-SEC-5).
    pub peer_allow: Vec<ipnet::IpNet>,
    pub clock_synced: bool,
    /// When new processes may start (R-AV-1).
    pub hours: ServiceHours,
    /// How long each step of a process may take (R-COM-2).
    pub steps: StepTimeouts,
    /// The pinned distribution roots (`trust.distribution_roots`).
    pub roots: Vec<RootKey>,
    /// Warn this long before the list in force expires.
    pub expiry_warning: Duration,
    /// What the tick deletes by age (R-REC-4, R-REC-6).
    pub retention: RetentionPolicy,
}

/// How long the chains keep their entries before the tick deletes them,
/// a bounded step per tick (the engine's `timers` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Records are kept at least this long: nothing younger is deleted,
    /// whoever confirms it.
    pub records: Duration,
    /// Whether the tick deletes records past `records` by itself; when
    /// off they go only after a deletion is confirmed at the console
    /// (R-REC-4).
    pub delete_records: bool,
    /// Access-log entries older than this are deleted (R-REC-6).
    pub access_log: Duration,
}

impl RetentionPolicy {
    /// A year as the policy counts it: 366 days, so a period never ends
    /// early, leap years or not.
    pub const YEAR: Duration = Duration::from_secs(366 * 24 * 3600);

    /// The policy of `records_years` (records deleted by the box itself
    /// only when `delete_records`) and `access_log_years`.
    pub fn from_years(records_years: u32, access_log_years: u32, delete_records: bool) -> Self {
        RetentionPolicy {
            records: Self::YEAR * records_years,
            delete_records,
            access_log: Self::YEAR * access_log_years,
        }
    }

    /// The first time that is still inside the records' period at `now`:
    /// records appended before it may be deleted.
    pub fn records_cutoff(&self, now: Millis) -> Millis {
        cutoff(now, self.records)
    }

    /// As [`RetentionPolicy::records_cutoff`], for the access log.
    pub fn access_cutoff(&self, now: Millis) -> Millis {
        cutoff(now, self.access_log)
    }

    /// The policy of the defaults: records kept, access log 7 years.
    pub fn keep_records() -> Self {
        Self::from_years(7, 7, false)
    }
}

fn cutoff(now: Millis, keep: Duration) -> Millis {
    now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
}

/// Longest wait for each step of a process; past it the process is closed
/// with `E_TIMEOUT` and both the intermediate server and the core are told.
#[derive(Debug, Clone, Copy)]
pub struct StepTimeouts {
    /// Permit request relayed → permit or refusal from the core.
    pub permit: Duration,
    /// Query relayed → query accepted.
    pub query_accepted: Duration,
    /// Query relayed → provision, receipt and completions all through.
    pub provision_complete: Duration,
    /// Serial issued, bound or permitted, but no query sent.
    pub idle_process: Duration,
}

impl StepTimeouts {
    /// When `p` times out, and which step it is waiting for.
    pub fn deadline(&self, p: &Process) -> (Millis, &'static str) {
        let after = |from: Millis, d: Duration| {
            from.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        };
        let queried = p.query_requested_at.unwrap_or(p.created_at);
        match p.step {
            Step::Issued | Step::Bound | Step::Permitted => {
                (after(p.updated_at, self.idle_process), "query")
            }
            Step::PermitRequested => (after(p.updated_at, self.permit), "permit"),
            Step::QueryRelayed if !p.query_accepted && !p.provision_relayed => {
                (after(queried, self.query_accepted), "query accepted")
            }
            Step::QueryRelayed => (
                after(queried, self.provision_complete),
                "provision and completion",
            ),
        }
    }
}
