//! The prefix list (allow-list) and core key currently in force.
//!
//! Invariant: a prefix is listed only when every one of its items is an
//! entry of the list for the same requester, provider, business and
//! information name (R-PFX-1); an empty item list is never listed.

use std::collections::HashSet;

use ifrelay_proto::{Distribution, Prefix, PrefixEntry};

/// The prefix list and masters currently in force.
#[derive(Debug, Default)]
pub(super) struct PrefixState {
    pub(super) version: u64,
    pub(super) entries: HashSet<PrefixEntry>,
    /// The core's permit-signing key, distributed with the list.
    pub(super) core_key: Vec<u8>,
}

impl PrefixState {
    pub(super) fn of(d: &Distribution) -> Self {
        PrefixState {
            version: d.version,
            entries: d.prefixes.iter().cloned().collect(),
            core_key: d.core_key.clone(),
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
}
