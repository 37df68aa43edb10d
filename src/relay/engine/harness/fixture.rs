//! The parties around a harnessed box, and the distribution, signed
//! permits and messages a flow needs.
//!
//! Invariant: everything is deterministic — the core's key comes from a
//! fixed seed and permit ids count up — so a fuzz input replays exactly.

use std::net::SocketAddr;
use std::time::Duration;

use ifrelay_proto::{
    AgencyCode, Body, CoreKey, Distribution, DistributionFields, KeyCertFields, KeyCertificate,
    Masters, Millis, Party, PermitFields, PermitIssued, PersonCode, Prefix, PrefixEntry, Provision,
    Query, RootKey, Route, Serial, SignedPermit,
};
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::super::{EngineConfig, RetentionPolicy, StepTimeouts};
use crate::relay::channel::{Listener, Peer};
use crate::relay::hours::ServiceHours;

/// The parties around one box (agency `131016`, requester of a prefix to
/// agency `271004`, and provider of the reverse prefix), and a core whose
/// permit key is derived from a fixed seed, so runs are reproducible.
pub struct Fixture {
    pub own: AgencyCode,
    pub other: AgencyCode,
    /// Where the other agency's box listens (inside the allowed peer
    /// network of [`Fixture::config`]).
    pub other_endpoint: SocketAddr,
    /// Where this box's core-side listener is, as permits name it.
    pub own_endpoint: SocketAddr,
    key: Ed25519KeyPair,
    /// The national operator's distribution root and its online key.
    root: Ed25519KeyPair,
    distribution_key: Ed25519KeyPair,
    permits: u64,
}

/// 2100-01-01: the fixture's distributions and keys outlive any run.
pub const FAR_FUTURE: Millis = 4_102_444_800_000;

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

impl Fixture {
    /// Default step timeouts of [`Fixture::config`].
    pub const STEPS: StepTimeouts = StepTimeouts {
        permit: Duration::from_secs(30),
        query_accepted: Duration::from_secs(30),
        provision_complete: Duration::from_secs(60),
        idle_process: Duration::from_secs(120),
    };

    pub fn new() -> Fixture {
        Fixture {
            own: code("131016"),
            other: code("271004"),
            other_endpoint: SocketAddr::from(([127, 0, 0, 2], 7443)),
            own_endpoint: SocketAddr::from(([127, 0, 0, 1], 7443)),
            key: seeded(7),
            root: seeded(8),
            distribution_key: seeded(9),
            permits: 0,
        }
    }

    /// The box's configuration: always in service, loopback peers.
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            agency: self.own.clone(),
            peer_allow: vec!["127.0.0.0/8".parse().expect("invariant: literal network")],
            clock_synced: false,
            hours: ServiceHours::always(),
            steps: Fixture::STEPS,
            roots: vec![self.root()],
            expiry_warning: Duration::from_secs(72 * 3600),
            retention: RetentionPolicy::keep_records(),
        }
    }

    /// The pinned distribution root.
    pub fn root(&self) -> RootKey {
        RootKey::of(&self.root)
    }

    /// The online distribution key, certified by the root for all time.
    pub fn signer(&self) -> KeyCertificate {
        KeyCertFields {
            key: self.distribution_key.public_key().as_ref().to_vec(),
            not_before: 0,
            not_after: FAR_FUTURE,
        }
        .certify(&self.root)
    }

    /// Signs `fields` with the certified distribution key.
    pub fn sign_distribution(&self, fields: &DistributionFields) -> Distribution {
        fields.sign(&self.distribution_key, self.signer())
    }

    /// The core's permit-signing public key.
    pub fn core_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// This box asks the other agency (requester side).
    pub fn prefix(&self) -> Prefix {
        prefix(&self.own, &self.other)
    }

    /// The other agency asks this box (provider side).
    pub fn reverse_prefix(&self) -> Prefix {
        prefix(&self.other, &self.own)
    }

    /// A signed prefix list holding both prefixes, with the core key,
    /// in force on arrival until [`FAR_FUTURE`].
    pub fn distribution(&self, version: u64) -> Distribution {
        self.sign_distribution(&self.distribution_fields(version))
    }

    /// The fields of [`Fixture::distribution`], to alter before signing.
    pub fn distribution_fields(&self, version: u64) -> DistributionFields {
        let entries = [self.prefix(), self.reverse_prefix()]
            .into_iter()
            .flat_map(|p| {
                p.items
                    .iter()
                    .map(|item| PrefixEntry {
                        requester: p.requester.clone(),
                        provider: p.provider.clone(),
                        business: p.business.clone(),
                        info_name: p.info_name.clone(),
                        item: item.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        DistributionFields {
            version,
            issued_at: 0,
            not_before: None,
            not_after: FAR_FUTURE,
            prefixes: entries,
            masters: Masters::default(),
            core_keys: vec![CoreKey {
                key: self.core_key(),
                not_before: 0,
                not_after: FAR_FUTURE,
            }],
        }
    }

    /// Signs `fields` with the core's key.
    pub fn sign(&self, fields: &PermitFields) -> SignedPermit {
        let mut permit = SignedPermit::unsigned(fields);
        permit.sig = self.key.sign(&permit.signing_input()).as_ref().to_vec();
        permit
    }

    /// The fields of a permit for `serial` and `prefix`, routing the
    /// provision to the requester's box and the receipt to the
    /// provider's, valid for `ttl` from `now`.
    pub fn permit_fields(
        &mut self,
        serial: &Serial,
        prefix: &Prefix,
        now: Millis,
        ttl: Duration,
    ) -> PermitFields {
        self.permits += 1;
        let endpoint = |agency: &AgencyCode| {
            if *agency == self.own {
                self.own_endpoint
            } else {
                self.other_endpoint
            }
        };
        PermitFields {
            permit_id: code(&format!("P-{}", self.permits)),
            issuer: Party::core(),
            serial: serial.clone(),
            prefix: prefix.clone(),
            route: Route {
                agency: prefix.requester.clone(),
                endpoint: endpoint(&prefix.requester).to_string(),
            },
            provider_route: Route {
                agency: prefix.provider.clone(),
                endpoint: endpoint(&prefix.provider).to_string(),
            },
            issued_at: now,
            expires_at: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// A signed permit for `serial` and `prefix`, valid for ten minutes.
    pub fn permit(&mut self, serial: &Serial, prefix: &Prefix, now: Millis) -> SignedPermit {
        let fields = self.permit_fields(serial, prefix, now, Duration::from_secs(600));
        self.sign(&fields)
    }

    /// The core's `permit` message.
    pub fn permit_issued(serial: &Serial, permit: &SignedPermit) -> Body {
        Body::Permit(PermitIssued {
            serial: serial.clone(),
            permit: permit.clone(),
        })
    }

    /// A query under `permit`, with a well-formed key and a code.
    pub fn query(serial: &Serial, prefix: &Prefix, permit: &SignedPermit) -> Query {
        Query {
            serial: serial.clone(),
            prefix: prefix.clone(),
            permit: permit.clone(),
            public_key: vec![9; 32],
            code: code::<PersonCode>("C-abc"),
        }
    }

    /// A provision under `permit`, with an opaque body.
    pub fn provision(serial: &Serial, prefix: &Prefix, permit: &SignedPermit) -> Provision {
        Provision {
            serial: serial.clone(),
            prefix: prefix.clone(),
            permit: permit.clone(),
            body: vec![1, 2, 3, 4],
        }
    }

    /// This box's IMS, on the agency-side listener.
    pub fn ims(&self) -> Peer {
        peer(Party::ims(self.own.clone()), Listener::AgencySide, 40_001)
    }

    /// The core, on the core-side listener.
    pub fn core(&self) -> Peer {
        peer(Party::core(), Listener::CoreSide, 40_002)
    }

    /// The other agency's box, on the core-side listener.
    pub fn other_box(&self) -> Peer {
        peer(Party::is(self.other.clone()), Listener::CoreSide, 40_003)
    }
}

fn peer(party: Party, listener: Listener, port: u16) -> Peer {
    Peer {
        party,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        listener,
    }
}

fn prefix(requester: &AgencyCode, provider: &AgencyCode) -> Prefix {
    let mut items = heapless::Vec::new();
    for item in ["I001", "I002"] {
        items
            .push(code(item))
            .expect("invariant: two items fit a prefix");
    }
    Prefix {
        requester: requester.clone(),
        business: code("B010"),
        provider: provider.clone(),
        info_name: code("N020"),
        items,
    }
}

/// A literal code of the fixture.
fn code<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("invariant: fixture codes are valid")
}

/// A key pair from a fixed seed, so fuzz inputs replay exactly.
fn seeded(byte: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[byte; 32])
        .expect("invariant: any 32 bytes are an Ed25519 seed")
}
