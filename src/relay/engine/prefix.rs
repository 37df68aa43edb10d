//! The prefix lists the box holds (R-PFX-1, R-DST-1..3): the one in force
//! and, at most, one scheduled to take effect at its `not_before`.
//!
//! Invariants: a list is held only after [`ifrelay_proto::distribution`]
//! verified its chain to a pinned root; versions only grow (a scheduled
//! list is newer than the one in force); a prefix is listed only when
//! every one of its items is an entry of the list for the same requester,
//! provider, business and information name, and an empty item list is
//! never listed; a list past its `not_after` lists nothing (fail closed)
//! but its core keys still verify permits of processes under way, within
//! each key's own window.

use std::collections::HashSet;
use std::time::Duration;

use ifrelay_proto::{CoreKey, Millis, Prefix, PrefixEntry, Reason, TrustedDistribution};

/// One verified list: entries, core keys and validity.
#[derive(Debug)]
pub(super) struct PrefixState {
    pub(super) version: u64,
    entries: HashSet<PrefixEntry>,
    core_keys: Vec<CoreKey>,
    /// Takes effect at this time; `None`: on arrival.
    pub(super) not_before: Option<Millis>,
    pub(super) not_after: Millis,
    /// SHA-256 of the signed bytes, to know a resent copy.
    digest: [u8; 32],
}

impl PrefixState {
    pub(super) fn of(t: &TrustedDistribution) -> Self {
        PrefixState {
            version: t.fields.version,
            entries: t.fields.prefixes.iter().cloned().collect(),
            core_keys: t.fields.core_keys.clone(),
            not_before: t.fields.not_before,
            not_after: t.fields.not_after,
            digest: t.digest,
        }
    }

    /// Whether every item of `prefix` is in the list.
    pub(super) fn lists(&self, prefix: &Prefix) -> bool {
        !prefix.items.is_empty()
            && prefix.items.iter().all(|item| {
                self.entries.contains(&PrefixEntry {
                    requester: prefix.requester.clone(),
                    provider: prefix.provider.clone(),
                    business: prefix.business.clone(),
                    info_name: prefix.info_name.clone(),
                    item: item.clone(),
                })
            })
    }

    fn effective_from(&self) -> Millis {
        self.not_before.unwrap_or(Millis::MIN)
    }

    fn expired_at(&self, now: Millis) -> bool {
        now >= self.not_after
    }
}

/// What an arriving distribution is, against the lists held.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// The same signed bytes as a list held: a resent copy, acknowledged.
    AlreadyHeld,
    /// Not newer than the newest list held (and not the same): refused.
    NotNewer { newest: u64 },
    /// Newer: to be stored, relayed and held.
    New,
}

/// The list in force, the one scheduled, and when the operator was last
/// told about expiry.
#[derive(Debug, Default)]
pub(super) struct Lists {
    in_force: Option<PrefixState>,
    scheduled: Option<PrefixState>,
    /// When the last expiry line was logged, and whether it was the alert.
    last_alert: Option<(Millis, bool)>,
}

/// How often an expiry warning or alert is repeated in the log.
const ALERT_EVERY: Millis = 3_600_000;

impl Lists {
    /// The lists to hold at `now` from the verified stored distributions
    /// (any order): the newest one already in effect, and the newest one
    /// scheduled after it.
    pub(super) fn from_stored(stored: Vec<TrustedDistribution>, now: Millis) -> Lists {
        let mut lists = Lists::default();
        let mut stored = stored;
        stored.sort_by_key(|t| t.fields.version);
        for t in stored {
            let state = PrefixState::of(&t);
            if state.effective_from() <= now {
                lists.in_force = Some(state);
                lists.scheduled = None;
            } else {
                lists.scheduled = Some(state);
            }
        }
        lists
    }

    /// The list prefix checks use at `now`, or why there is none: no list
    /// yet ([`Reason::NoPrefixList`]) or the one in force expired
    /// ([`Reason::PrefixListExpired`]).
    pub(super) fn usable(&self, now: Millis) -> Result<&PrefixState, Reason> {
        match &self.in_force {
            None => Err(Reason::NoPrefixList),
            Some(list) if list.expired_at(now) => Err(Reason::PrefixListExpired),
            Some(list) => Ok(list),
        }
    }

    /// The core's permit-signing keys valid at `now`, from the list in
    /// force — expired or not, so processes under way can finish.
    pub(super) fn core_keys_at(&self, now: Millis) -> Vec<&[u8]> {
        self.in_force
            .iter()
            .flat_map(|l| l.core_keys.iter())
            .filter(|k| k.valid_at(now))
            .map(|k| k.key.as_slice())
            .collect()
    }

    /// Whether a list has ever been distributed (and is in force).
    pub(super) fn has_list(&self) -> bool {
        self.in_force.is_some()
    }

    /// The newest version held, in force or scheduled.
    pub(super) fn newest_version(&self) -> Option<u64> {
        self.scheduled
            .as_ref()
            .or(self.in_force.as_ref())
            .map(|l| l.version)
    }

    /// The version below which no stored list is needed any more.
    pub(super) fn oldest_needed(&self) -> Option<u64> {
        self.in_force
            .as_ref()
            .or(self.scheduled.as_ref())
            .map(|l| l.version)
    }

    /// Classifies an arriving, verified distribution.
    pub(super) fn arrival(&self, t: &TrustedDistribution) -> Arrival {
        let held = [&self.in_force, &self.scheduled];
        if held
            .iter()
            .any(|l| l.as_ref().is_some_and(|l| l.digest == t.digest))
        {
            return Arrival::AlreadyHeld;
        }
        match self.newest_version() {
            Some(newest) if t.fields.version <= newest => Arrival::NotNewer { newest },
            _ => Arrival::New,
        }
    }

    /// Holds a newer distribution: in force at once if it has no
    /// `not_before` or it has passed (an emergency distribution also
    /// drops a scheduled older one), else scheduled in place of any
    /// earlier scheduled one.
    pub(super) fn hold(&mut self, t: &TrustedDistribution, now: Millis) {
        let state = PrefixState::of(t);
        if state.effective_from() <= now {
            self.in_force = Some(state);
            self.scheduled = None;
            self.last_alert = None;
        } else {
            self.scheduled = Some(state);
        }
    }

    /// Puts the scheduled list in force once its `not_before` has come;
    /// returns its version when it did.
    pub(super) fn promote(&mut self, now: Millis) -> Option<u64> {
        if self
            .scheduled
            .as_ref()
            .is_some_and(|s| s.effective_from() <= now)
        {
            self.in_force = self.scheduled.take();
            self.last_alert = None;
            return self.in_force.as_ref().map(|l| l.version);
        }
        None
    }

    /// Logs a warning when the list in force expires within `warning` and
    /// an error once it has expired, repeated every hour.
    pub(super) fn watch_expiry(&mut self, now: Millis, warning: Duration) {
        let Some(list) = &self.in_force else {
            return;
        };
        let warning = i64::try_from(warning.as_millis()).unwrap_or(i64::MAX);
        let left = list.not_after.saturating_sub(now);
        if left > warning {
            return;
        }
        let expired = left <= 0;
        // Repeated hourly, and at once when a warning turns into the alert.
        if self.last_alert.is_some_and(|(at, was_expired)| {
            was_expired == expired && now.saturating_sub(at) < ALERT_EVERY
        }) {
            return;
        }
        self.last_alert = Some((now, expired));
        if expired {
            tracing::error!(
                version = list.version,
                expired_ms_ago = -left,
                "ALERT: the prefix list in force has expired; prefix checks answer NG E_PREFIX_LIST_EXPIRED and no new process starts until the core sends a newer distribution"
            );
        } else {
            tracing::warn!(
                version = list.version,
                expires_in_ms = left,
                "the prefix list in force expires soon and no newer distribution has arrived"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use ifrelay_proto::{DistributionFields, KeyCertFields, Masters, RootKey};

    use super::*;

    fn trusted(version: u64, not_before: Option<Millis>, not_after: Millis) -> TrustedDistribution {
        TrustedDistribution {
            fields: DistributionFields {
                version,
                issued_at: 0,
                not_before,
                not_after,
                prefixes: Vec::new(),
                masters: Masters::default(),
                core_keys: vec![CoreKey {
                    key: vec![u8::try_from(version).unwrap_or(0); 32],
                    not_before: 0,
                    not_after: 1_000,
                }],
            },
            signer: KeyCertFields {
                key: vec![0; 32],
                not_before: 0,
                not_after: 1_000,
            },
            root: RootKey([0; 32]),
            digest: [u8::try_from(version).unwrap_or(0); 32],
        }
    }

    #[test]
    fn a_scheduled_list_takes_effect_at_its_not_before() {
        let mut lists = Lists::default();
        lists.hold(&trusted(1, None, 900), 10);
        lists.hold(&trusted(2, Some(100), 900), 10);
        assert_eq!(lists.usable(50).map(|l| l.version), Ok(1));
        assert_eq!(lists.newest_version(), Some(2));
        assert_eq!(lists.promote(99), None);
        assert_eq!(lists.promote(100), Some(2));
        assert_eq!(lists.usable(100).map(|l| l.version), Ok(2));
        assert_eq!(lists.oldest_needed(), Some(2));
    }

    #[test]
    fn an_emergency_list_drops_an_older_scheduled_one() {
        let mut lists = Lists::default();
        lists.hold(&trusted(1, None, 900), 10);
        lists.hold(&trusted(2, Some(500), 900), 10);
        lists.hold(&trusted(3, None, 900), 20);
        assert_eq!(lists.promote(600), None);
        assert_eq!(lists.usable(600).map(|l| l.version), Ok(3));
    }

    #[test]
    fn resent_copies_and_older_versions_are_told_apart() {
        let mut lists = Lists::default();
        lists.hold(&trusted(4, None, 900), 10);
        assert_eq!(lists.arrival(&trusted(4, None, 900)), Arrival::AlreadyHeld);
        let mut other = trusted(4, None, 900);
        other.digest = [9; 32];
        assert_eq!(lists.arrival(&other), Arrival::NotNewer { newest: 4 });
        assert_eq!(
            lists.arrival(&trusted(3, None, 900)),
            Arrival::NotNewer { newest: 4 }
        );
        assert_eq!(lists.arrival(&trusted(5, None, 900)), Arrival::New);
    }

    #[test]
    fn an_expired_list_fails_closed_but_keeps_its_keys() {
        let mut lists = Lists::default();
        assert_eq!(
            lists.usable(0).map(|l| l.version),
            Err(Reason::NoPrefixList)
        );
        lists.hold(&trusted(1, None, 900), 10);
        assert!(lists.usable(899).is_ok());
        assert_eq!(
            lists.usable(900).map(|l| l.version),
            Err(Reason::PrefixListExpired)
        );
        assert_eq!(lists.core_keys_at(950).len(), 1);
        assert!(lists.core_keys_at(1_000).is_empty());
    }

    #[test]
    fn stored_lists_are_sorted_into_in_force_and_scheduled() {
        let stored = vec![
            trusted(3, Some(500), 900),
            trusted(1, None, 900),
            trusted(2, Some(100), 900),
        ];
        let lists = Lists::from_stored(stored, 200);
        assert_eq!(lists.usable(200).map(|l| l.version), Ok(2));
        assert_eq!(lists.newest_version(), Some(3));
    }
}
