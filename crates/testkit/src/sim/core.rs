//! The core system simulator: issues signed permits against its prefix
//! list, routes queries from the requester's box to the provider's box
//! (converting the person code), forwards "query accepted" back, counts
//! completions, and distributes prefix lists and masters to every
//! registered box.
//!
//! Owns: the core's Ed25519 signing key, its prefix list and masters, the
//! registered boxes' core-side addresses, one record per serial it issued a
//! permit for, and the statistics tests read.
//!
//! Delivery and duplicates: like the box, the core's listener answers a
//! frame resent under an id it already answered with the same reply and
//! does not handle it again (no second permit, no second routed query);
//! its outbox resends a frame byte for byte after a failure, as
//! [`NetOptions`] says — give it [`NetOptions::retrying_for`] (e.g. 30 s)
//! so that a box restarting within that time loses nothing.
//!
//! Invariants: only interface systems may talk to it; every frame is
//! answered (accepted or refused with a reason) at once, and whatever the
//! core sends in consequence is queued and leaves after that answer, in
//! order per destination; a permit is issued only when the requester is
//! the asking box's agency, every (requester, provider, business, info
//! name, item) is listed, the business is not in the refuse set and both
//! boxes are registered.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ifrelay_proto::permit::{self, PermitError};
use ifrelay_proto::{
    AgencyCode, Body, BusinessCode, Distribution, Frame, Masters, MessageId, Party, PermitFields,
    PermitId, PermitIssued, PermitRefused, PermitRequest, PersonCode, Prefix, PrefixEntry,
    ProcessError, Query, Reason, Role, Route, Serial, SerialNotice, SignedPermit, StatusEvent,
};
use ifrelay_tls::TlsMaterial;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};

use super::crypto::{CryptoError, PUBLIC_KEY_LEN};
use super::serve::{lock, run_prefix, Handler, NetOptions, Node, PeerRefusal, Reply};
use super::SimError;
use ifrelay::net::{now_millis, Link};

/// How long a permit is valid by default.
pub const DEFAULT_PERMIT_TTL: Duration = Duration::from_secs(10 * 60);

/// What the core remembers of one serial it issued a permit for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreProcess {
    pub requester: AgencyCode,
    pub provider: AgencyCode,
    pub prefix: Prefix,
    pub permit_id: PermitId,
    /// The query was routed to the provider's box.
    pub query_routed: bool,
    /// "Query accepted" was forwarded to the requester's box.
    pub query_accepted: bool,
}

/// A snapshot of what the core simulator has seen and done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub permits_issued: u64,
    pub permits_refused: u64,
    pub queries_routed: u64,
    pub query_accepted_forwarded: u64,
    /// `query_complete` frames received, per serial.
    pub query_complete: BTreeMap<Serial, u32>,
    /// Senders of `provision_complete` frames, per serial (both boxes send
    /// one for a finished query).
    pub provision_complete: BTreeMap<Serial, Vec<Party>>,
    pub box_status: Vec<(Party, StatusEvent)>,
    pub process_errors: Vec<(Party, ProcessError)>,
    /// Distributions acknowledged by a box.
    pub distributions_delivered: u64,
    /// Frames the core answered with `refused`.
    pub frames_refused: u64,
    /// Frames the core gave up delivering.
    pub deliveries_failed: u64,
    /// Frames a box refused.
    pub peer_refusals: Vec<PeerRefusal>,
    /// Frames a box sent again under an id already answered; answered
    /// with the remembered reply and not handled again.
    pub duplicates_received: u64,
    /// Frames the core sent again (same id) after a failure or a
    /// transient refusal.
    pub frames_resent: u64,
}

struct CoreState {
    prefixes: BTreeSet<PrefixEntry>,
    masters: Masters,
    version: u64,
    boxes: HashMap<AgencyCode, SocketAddr>,
    refuse: HashSet<BusinessCode>,
    /// Milliseconds from issue to expiry; negative issues permits that are
    /// already out of date (tests of R-PRM-2).
    permit_lifetime_ms: i64,
    processes: HashMap<Serial, CoreProcess>,
    stats: CoreStats,
}

struct CoreInner {
    node: Arc<Node>,
    key: Ed25519KeyPair,
    permit_prefix: String,
    permit_counter: AtomicU64,
    state: Mutex<CoreState>,
}

/// A running core system simulator. Dropping it stops its tasks;
/// [`CoreSim::shutdown`] also waits for them.
pub struct CoreSim {
    inner: Arc<CoreInner>,
    addr: SocketAddr,
}

impl std::fmt::Debug for CoreSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The provider-side code of a person, derived from the requester-side
/// `code` for `provider`: deterministic, 20 letters A–Z (never digits, so
/// it can never look like a My Number).
pub fn convert_code(code: &PersonCode, provider: &AgencyCode) -> PersonCode {
    let mut h = Sha256::new();
    h.update(b"ifrelay-sim-code-v1\0");
    h.update(code.as_str().as_bytes());
    h.update(b"\0");
    h.update(provider.as_str().as_bytes());
    let letters: String = h
        .finalize()
        .iter()
        .take(20)
        .map(|b| char::from(b'A' + b % 26))
        .collect();
    PersonCode::new(&letters).expect("invariant: 20 ASCII letters are a valid person code")
}

impl CoreSim {
    /// Starts the core on `bind` (port 0 for any) with the given prefix
    /// list and masters, and a fresh signing key.
    ///
    /// # Errors
    /// [`SimError::Tls`], [`SimError::Bind`], [`SimError::Crypto`].
    pub async fn start(
        bind: SocketAddr,
        tls: TlsMaterial,
        prefixes: Vec<PrefixEntry>,
        masters: Masters,
    ) -> Result<CoreSim, SimError> {
        Self::start_with(bind, tls, prefixes, masters, NetOptions::default()).await
    }

    /// As [`CoreSim::start`], with explicit network options; e.g.
    /// `NetOptions::retrying_for(Duration::from_secs(30))` for a core that
    /// keeps delivering to a box through its restart.
    ///
    /// # Errors
    /// As [`CoreSim::start`].
    pub async fn start_with(
        bind: SocketAddr,
        tls: TlsMaterial,
        prefixes: Vec<PrefixEntry>,
        masters: Masters,
        opts: NetOptions,
    ) -> Result<CoreSim, SimError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| CryptoError::SigningKey("random source failed".into()))?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|e| CryptoError::SigningKey(e.to_string()))?;
        let own = Party::core();
        let node = Node::new(own.clone(), &tls, opts)?;
        let inner = Arc::new(CoreInner {
            node: Arc::clone(&node),
            key,
            permit_prefix: format!("P-{}", run_prefix(&own)),
            permit_counter: AtomicU64::new(1),
            state: Mutex::new(CoreState {
                prefixes: prefixes.into_iter().collect(),
                masters,
                version: 0,
                boxes: HashMap::new(),
                refuse: HashSet::new(),
                permit_lifetime_ms: lifetime_ms(DEFAULT_PERMIT_TTL),
                processes: HashMap::new(),
                stats: CoreStats::default(),
            }),
        });
        let for_handler = Arc::clone(&inner);
        let handler: Handler =
            Arc::new(move |peer: &Party, frame: Frame| for_handler.handle(peer, frame));
        let addr = node.listen(bind, handler).await?;
        tracing::info!(%addr, "core simulator listening");
        Ok(CoreSim { inner, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn party(&self) -> Party {
        Party::core()
    }

    /// The core's Ed25519 public key (32 bytes): permits verify with it.
    pub fn core_public_key(&self) -> Vec<u8> {
        self.inner.key.public_key().as_ref().to_vec()
    }

    /// Registers (or moves) the core-side address of the box of `agency`.
    pub fn register_box(&self, agency: AgencyCode, core_side: SocketAddr) {
        lock(&self.inner.state).boxes.insert(agency, core_side);
    }

    /// Replaces the core's own prefix list (without distributing it).
    pub fn set_prefixes(&self, prefixes: Vec<PrefixEntry>) {
        lock(&self.inner.state).prefixes = prefixes.into_iter().collect();
    }

    /// Makes the core refuse every permit for `business`.
    pub fn refuse_business(&self, business: BusinessCode) {
        lock(&self.inner.state).refuse.insert(business);
    }

    /// Lets the core issue permits for `business` again.
    pub fn allow_business(&self, business: &BusinessCode) {
        lock(&self.inner.state).refuse.remove(business);
    }

    /// Sets how long permits issued from now on are valid.
    pub fn set_permit_ttl(&self, ttl: Duration) {
        lock(&self.inner.state).permit_lifetime_ms = lifetime_ms(ttl);
    }

    /// Makes permits issued from now on expire `ago` before their issue
    /// time, so every receiver sees them expired whatever its clock tick.
    pub fn issue_expired_permits(&self, ago: Duration) {
        lock(&self.inner.state).permit_lifetime_ms = -lifetime_ms(ago);
    }

    /// Signs `fields` with the core's key, as for a real permit (tests of
    /// expired, re-routed or otherwise odd permits).
    pub fn sign_permit(&self, fields: &PermitFields) -> SignedPermit {
        self.inner.sign(fields)
    }

    /// The distribution the core would send now.
    pub fn current_distribution(&self) -> Distribution {
        let st = lock(&self.inner.state);
        Distribution {
            version: st.version,
            prefixes: st.prefixes.iter().cloned().collect(),
            masters: st.masters.clone(),
            core_key: self.core_public_key(),
        }
    }

    /// Makes `prefixes` and `masters` the core's own and sends them as
    /// distribution `version` to every registered box; returns once every
    /// box has answered, with the number of boxes reached.
    ///
    /// # Errors
    /// [`SimError::Delivery`] naming the first box that refused or could
    /// not be reached (the others still got it); [`SimError::QueueFull`],
    /// [`SimError::Stopped`].
    pub async fn distribute(
        &self,
        version: u64,
        prefixes: Vec<PrefixEntry>,
        masters: Masters,
    ) -> Result<usize, SimError> {
        let boxes: Vec<(AgencyCode, SocketAddr)> = {
            let mut st = lock(&self.inner.state);
            st.prefixes = prefixes.into_iter().collect();
            st.masters = masters;
            st.version = version;
            st.boxes.iter().map(|(a, s)| (a.clone(), *s)).collect()
        };
        let body = Body::Distribution(self.current_distribution());
        let mut waits = Vec::with_capacity(boxes.len());
        for (agency, addr) in boxes {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let to = Party::is(agency);
            self.inner.node.enqueue(&to, addr, body.clone(), Some(tx))?;
            waits.push((to, rx));
        }
        let mut first_error = None;
        let mut reached = 0;
        for (to, rx) in waits {
            match rx.await {
                Ok(Ok(_)) => {
                    reached += 1;
                    lock(&self.inner.state).stats.distributions_delivered += 1;
                    self.inner.node.bump();
                }
                Ok(Err(source)) => {
                    first_error.get_or_insert(SimError::Delivery { to, source });
                }
                Err(_) => {
                    first_error.get_or_insert(SimError::Stopped);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(reached),
        }
    }

    /// Sends `body` to the box of `agency` through the core's outbox and
    /// returns the box's reply (for tests that inject frames).
    ///
    /// # Errors
    /// [`SimError::NotRegistered`], [`SimError::Delivery`] (a refusal
    /// included), [`SimError::QueueFull`], [`SimError::Stopped`].
    pub async fn send_to_box(&self, agency: &AgencyCode, body: Body) -> Result<Frame, SimError> {
        let to = Party::is(agency.clone());
        let addr = self.box_addr(agency)?;
        self.inner.node.deliver(&to, addr, body).await
    }

    /// A fresh link to the box of `agency`, for raw frames.
    ///
    /// # Errors
    /// [`SimError::NotRegistered`], [`SimError::Link`].
    pub async fn connect_box(&self, agency: &AgencyCode) -> Result<Link, SimError> {
        let to = Party::is(agency.clone());
        let addr = self.box_addr(agency)?;
        self.inner.node.connect(&to, addr).await
    }

    /// A frame from the core with a fresh id.
    pub fn frame(&self, body: Body) -> Frame {
        self.inner.node.frame(body)
    }

    fn box_addr(&self, agency: &AgencyCode) -> Result<SocketAddr, SimError> {
        lock(&self.inner.state)
            .boxes
            .get(agency)
            .copied()
            .ok_or_else(|| SimError::NotRegistered {
                party: Party::is(agency.clone()),
            })
    }

    /// What the core remembers of `serial`.
    pub fn process(&self, serial: &Serial) -> Option<CoreProcess> {
        lock(&self.inner.state).processes.get(serial).cloned()
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> CoreStats {
        self.inner.stats()
    }

    /// Waits until `pred` holds for the statistics, for at most `timeout`.
    ///
    /// # Errors
    /// [`SimError::Timeout`], [`SimError::Stopped`].
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&CoreStats) -> bool,
    ) -> Result<CoreStats, SimError> {
        self.inner
            .node
            .wait_until(timeout, "the awaited core statistics", || {
                let s = self.inner.stats();
                pred(&s).then_some(s)
            })
            .await
    }

    /// Stops the listener and every outbox, and waits (bounded) for them.
    pub async fn shutdown(&self) {
        self.inner.node.shutdown().await;
    }
}

impl Drop for CoreSim {
    fn drop(&mut self) {
        self.inner.node.cancel.cancel();
    }
}

impl CoreInner {
    fn stats(&self) -> CoreStats {
        let mut s = lock(&self.state).stats.clone();
        s.frames_refused = self.node.frames_refused();
        s.deliveries_failed = self.node.deliveries_failed();
        s.peer_refusals = self.node.peer_refusals();
        s.duplicates_received = self.node.duplicates_received();
        s.frames_resent = self.node.frames_resent();
        s
    }

    fn sign(&self, fields: &PermitFields) -> SignedPermit {
        let mut permit = SignedPermit::unsigned(fields);
        permit.sig = self.key.sign(&permit.signing_input()).as_ref().to_vec();
        permit
    }

    fn next_permit_id(&self) -> PermitId {
        let n = self.permit_counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.permit_prefix);
        // The run prefix is at most ~30 characters; cut from the left if a
        // long prefix ever made it exceed the limit, keeping the counter.
        let start = id.len().saturating_sub(PermitId::MAX_LEN);
        PermitId::new(&id[start..])
            .expect("invariant: permit ids are ASCII letters, digits and '-' within the limit")
    }

    /// Queues `body` to `to`; a failure here can only be logged, the frame
    /// that caused it has been accepted already.
    fn send(self: &Arc<Self>, to: &Party, addr: SocketAddr, body: Body) {
        let kind = body.type_name();
        if let Err(e) = self.node.enqueue(to, addr, body, None) {
            tracing::warn!(%to, kind, error = %ifrelay::logging::Causes(&e), "core simulator could not queue a frame");
        }
    }

    fn handle(self: &Arc<Self>, peer: &Party, frame: Frame) -> Reply {
        let id = frame.header.id.clone();
        let from = match (peer.role, &peer.agency) {
            (Role::Is, Some(agency)) => agency.clone(),
            _ => {
                return Reply::refused(
                    &id,
                    Reason::Role,
                    format!("{peer} may not talk to the core; only interface systems do"),
                )
            }
        };
        let reply = match frame.body {
            Body::PermitRequest(req) => self.on_permit_request(&id, &from, req),
            Body::Query(q) => self.on_query(&id, &from, q),
            Body::QueryAccepted(n) => self.on_query_accepted(&id, &from, n),
            Body::QueryComplete(n) => {
                *lock(&self.state)
                    .stats
                    .query_complete
                    .entry(n.serial)
                    .or_default() += 1;
                Reply::accepted(&id)
            }
            Body::ProvisionComplete(n) => {
                lock(&self.state)
                    .stats
                    .provision_complete
                    .entry(n.serial)
                    .or_default()
                    .push(peer.clone());
                Reply::accepted(&id)
            }
            Body::BoxStatus(s) => {
                lock(&self.state)
                    .stats
                    .box_status
                    .push((peer.clone(), s.event));
                Reply::accepted(&id)
            }
            Body::ProcessError(e) => {
                tracing::info!(%peer, serial = %e.serial, reason = %e.reason, text = %e.text, "process error reported to the core");
                lock(&self.state)
                    .stats
                    .process_errors
                    .push((peer.clone(), e));
                Reply::accepted(&id)
            }
            other => Reply::refused(
                &id,
                Reason::Role,
                format!("the core does not take {} frames", other.type_name()),
            ),
        };
        self.node.bump();
        reply
    }

    fn on_permit_request(
        self: &Arc<Self>,
        id: &MessageId,
        from: &AgencyCode,
        req: PermitRequest,
    ) -> Reply {
        let mut st = lock(&self.state);
        let Some(&back) = st.boxes.get(from) else {
            return Reply::refused(
                id,
                Reason::PeerUnreachable,
                format!("the core has no address for is/{from}; register the box with the core simulator"),
            );
        };
        let to = Party::is(from.clone());
        let body = match st.permit_verdict(from, &req.prefix) {
            Ok(provider_addr) => {
                let now = now_millis();
                let fields = PermitFields {
                    permit_id: self.next_permit_id(),
                    issuer: Party::core(),
                    serial: req.serial.clone(),
                    prefix: req.prefix.clone(),
                    route: Route {
                        agency: req.prefix.requester.clone(),
                        endpoint: back.to_string(),
                    },
                    provider_route: Route {
                        agency: req.prefix.provider.clone(),
                        endpoint: provider_addr.to_string(),
                    },
                    issued_at: now,
                    expires_at: now.saturating_add(st.permit_lifetime_ms),
                };
                let permit = self.sign(&fields);
                st.processes.insert(
                    req.serial.clone(),
                    CoreProcess {
                        requester: req.prefix.requester.clone(),
                        provider: req.prefix.provider.clone(),
                        prefix: req.prefix,
                        permit_id: fields.permit_id,
                        query_routed: false,
                        query_accepted: false,
                    },
                );
                st.stats.permits_issued += 1;
                Body::Permit(PermitIssued {
                    serial: req.serial,
                    permit,
                })
            }
            Err(text) => {
                tracing::info!(serial = %req.serial, %text, "core simulator refuses a permit");
                st.stats.permits_refused += 1;
                Body::PermitRefused(PermitRefused {
                    serial: req.serial,
                    reason: Reason::PermitRefused,
                    text,
                })
            }
        };
        drop(st);
        let me = Arc::clone(self);
        Reply::accepted_then(id, move || me.send(&to, back, body))
    }

    /// Checks a query's permit with the one verifier the boxes use
    /// ([`permit::verify`], against this core's own key), then that it was
    /// issued for the query's serial and prefix.
    fn check_permit(&self, q: &Query) -> Result<(), PermitError> {
        let key = self.key.public_key().as_ref();
        permit::verify(&q.permit, &[key], now_millis())?
            .check_serial_and_prefix(&q.serial, &q.prefix)
    }

    fn on_query(self: &Arc<Self>, id: &MessageId, from: &AgencyCode, q: Query) -> Reply {
        if &q.prefix.requester != from {
            return Reply::refused(
                id,
                Reason::Role,
                format!(
                    "the query's requester is {}, but it comes from is/{from}",
                    q.prefix.requester
                ),
            );
        }
        if let Err(e) = self.check_permit(&q) {
            return Reply::refused(id, e.reason(), e.text());
        }
        if q.public_key.len() != PUBLIC_KEY_LEN {
            return Reply::refused(
                id,
                Reason::NoPublicKey,
                format!(
                    "the public key is {} bytes; an X25519 key is {PUBLIC_KEY_LEN}",
                    q.public_key.len()
                ),
            );
        }
        let provider = q.prefix.provider.clone();
        let mut st = lock(&self.state);
        let Some(&provider_addr) = st.boxes.get(&provider) else {
            return Reply::refused(
                id,
                Reason::PeerUnreachable,
                format!("the core has no address for is/{provider}"),
            );
        };
        match st.processes.get_mut(&q.serial) {
            Some(p) => p.query_routed = true,
            None => {
                // A permit this core instance did not issue but signed
                // (e.g. from sign_permit): remember it now.
                let permit_id = q
                    .permit
                    .fields()
                    .map(|f| f.permit_id)
                    .unwrap_or_else(|_| self.next_permit_id());
                st.processes.insert(
                    q.serial.clone(),
                    CoreProcess {
                        requester: from.clone(),
                        provider: provider.clone(),
                        prefix: q.prefix.clone(),
                        permit_id,
                        query_routed: true,
                        query_accepted: false,
                    },
                );
            }
        }
        st.stats.queries_routed += 1;
        drop(st);
        let body = Body::Query(Query {
            code: convert_code(&q.code, &provider),
            ..q
        });
        let me = Arc::clone(self);
        let to = Party::is(provider);
        Reply::accepted_then(id, move || me.send(&to, provider_addr, body))
    }

    fn on_query_accepted(
        self: &Arc<Self>,
        id: &MessageId,
        from: &AgencyCode,
        n: SerialNotice,
    ) -> Reply {
        let mut st = lock(&self.state);
        let Some(process) = st.processes.get(&n.serial) else {
            return Reply::refused(
                id,
                Reason::UnknownSerial,
                format!("the core routed no query with serial {}", n.serial),
            );
        };
        if &process.provider != from {
            return Reply::refused(
                id,
                Reason::Role,
                format!(
                    "serial {} was routed to is/{}, not is/{from}",
                    n.serial, process.provider
                ),
            );
        }
        let requester = process.requester.clone();
        let Some(&back) = st.boxes.get(&requester) else {
            return Reply::refused(
                id,
                Reason::PeerUnreachable,
                format!("the core has no address for is/{requester}"),
            );
        };
        if let Some(p) = st.processes.get_mut(&n.serial) {
            p.query_accepted = true;
        }
        st.stats.query_accepted_forwarded += 1;
        drop(st);
        let me = Arc::clone(self);
        let to = Party::is(requester);
        Reply::accepted_then(id, move || {
            me.send(&to, back, Body::QueryAccepted(n));
        })
    }
}

impl CoreState {
    /// The provider box's address when a permit may be issued for
    /// `prefix` asked by `from`, or the refusal text.
    fn permit_verdict(&self, from: &AgencyCode, prefix: &Prefix) -> Result<SocketAddr, String> {
        if &prefix.requester != from {
            return Err(format!(
                "the prefix names requester {}, but is/{from} asks",
                prefix.requester
            ));
        }
        if self.refuse.contains(&prefix.business) {
            return Err(format!(
                "the core refuses permits for business {}",
                prefix.business
            ));
        }
        if prefix.items.is_empty() {
            return Err("the prefix names no item".to_owned());
        }
        for item in &prefix.items {
            let entry = PrefixEntry {
                requester: prefix.requester.clone(),
                provider: prefix.provider.clone(),
                business: prefix.business.clone(),
                info_name: prefix.info_name.clone(),
                item: item.clone(),
            };
            if !self.prefixes.contains(&entry) {
                return Err(format!(
                    "({}, {}, {}, {}, {item}) is not in the core's prefix list",
                    prefix.requester, prefix.provider, prefix.business, prefix.info_name
                ));
            }
        }
        self.boxes.get(&prefix.provider).copied().ok_or_else(|| {
            format!(
                "the provider's box is/{} is not registered with the core",
                prefix.provider
            )
        })
    }
}

fn lifetime_ms(span: Duration) -> i64 {
    i64::try_from(span.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_codes_are_letters_and_deterministic() {
        let code = PersonCode::new("ABCDEFGHIJKLMNOPQRST").expect("code");
        let a = AgencyCode::new("271004").expect("agency");
        let b = AgencyCode::new("011002").expect("agency");
        let ca = convert_code(&code, &a);
        assert_eq!(ca, convert_code(&code, &a));
        assert_ne!(ca, convert_code(&code, &b));
        assert_ne!(ca, code);
        assert_eq!(ca.as_str().len(), 20);
        assert!(ca.as_str().chars().all(|c| c.is_ascii_uppercase()));
    }
}
