//! The intermediate server simulator of one agency, in both roles.
//!
//! Requester role: [`ImsSim::run_query`] drives one query through the
//! agency's box step by step (serial, prefix check, permit, query, query
//! accepted and provision in either order, provision received, provision
//! complete, query complete), timing each step, and decrypts the
//! provision with the per-query key. Provider role, automatic: a query
//! from the box is accepted, then "query accepted" and the encrypted
//! provision are queued to the box; "provision received" is answered with
//! "provision complete". Distributions are kept.
//!
//! Owns: the per-serial waiters of running queries (registered before the
//! step whose answer they wait for), the provider-side processes, the last
//! distribution, the evidence of what the box delivered (which message ids
//! carried each one-per-process event, [`ImsSim::double_deliveries`]), and
//! the statistics tests read.
//!
//! Reliability, for crash tests that kill and restart the box mid-flow:
//! like the box, the listener answers a frame resent under an id it has
//! already answered with the same reply and does not handle it again
//! (`serve`); with [`ImsOptions::resend_for`] every frame this IMS sends to
//! its box — each request of [`ImsSim::run_query`] and the provider-side
//! `query_accepted`, `provision` and `provision_complete` — is sent again,
//! same id, after a connection failure, a lost reply or a transient
//! refusal, until answered or the period has passed; and a `process_error`
//! for a running query's serial ends that flow at whatever step it is
//! ([`FlowErrorKind::ProcessError`]).
//!
//! Invariants: only this agency's box may talk to it; a frame for a serial
//! no running query or provider process knows is refused
//! (`E_UNKNOWN_SERIAL`); payloads are made-up text, never personal data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ifrelay_proto::permit::{self, PermitError};
use ifrelay_proto::{
    distribution, AgencyCode, Body, BusinessCode, Frame, InfoNameCode, ItemCode, MessageId,
    MessageType, Millis, Party, PermitRequest, PersonCode, Prefix, PrefixCheck, ProcessError,
    Provision, Query, Reason, RootKey, Serial, SerialNotice, SerialPurpose, SerialRequest,
    SignedPermit, StatusEvent, TrustedDistribution, MAX_ITEMS,
};
use ifrelay_tls::TlsMaterial;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::crypto::{encrypt_to, CryptoError, RequesterKey};
use super::serve::{
    lock, Handler, NetOptions, Node, PeerRefusal, Pool, Reply, RESEND_BACKOFF, RESEND_BACKOFF_CAP,
};
use super::SimError;
use ifrelay::net::{now_millis, Link};

/// How the provider role behaves; anything but `Normal` simulates a
/// misbehaving intermediate server for the box's timeout tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProviderMode {
    /// Accept, send "query accepted", the provision, and "provision
    /// complete" when "provision received" comes.
    #[default]
    Normal,
    /// Accept the query and send nothing.
    AcceptOnly,
    /// Send "query accepted" but never the provision.
    NoProvision,
    /// Everything but "provision complete".
    NoComplete,
    /// Refuse every query with this reason.
    Refuse(Reason),
}

/// Options of an intermediate server simulator.
#[derive(Debug, Clone)]
pub struct ImsOptions {
    /// Longest wait for each asynchronous answer of the requester flow:
    /// the permit, then "query accepted" and the provision together. The
    /// answer comes through the box, so a harness that stops or kills the
    /// box mid-flow sets this well above the box's downtime plus its
    /// redelivery backoff (e.g. 60 s), or flows end in
    /// [`FlowErrorKind::Timeout`] that would have completed.
    pub step_timeout: Duration,
    /// Provider-role behaviour at start.
    pub provider_mode: ProviderMode,
    /// `Some(period)`: every frame sent to the box is sent again, same id
    /// and bytes, after a connection failure, a lost reply (read timeout,
    /// closed connection) or a transient refusal ([`Reason::is_transient`]),
    /// pausing 50 ms at first and at most 1 s, until it is answered
    /// otherwise or `period` has passed — so a box restarted within
    /// `period` costs a flow time, not the flow. This covers the requests
    /// of [`ImsSim::run_query`] and [`ImsSim::resend`], and the
    /// provider-side frames queued to the box (it then overrides
    /// `net.attempts`, `net.backoff`, `net.max_backoff` and
    /// `net.give_up_after`, and raises `net.queue_len` to 65,536).
    /// `None` (the default): one try per request; the provider-side frames
    /// follow `net`. [`ImsSim::send`] always tries once.
    pub resend_for: Option<Duration>,
    pub net: NetOptions,
}

impl Default for ImsOptions {
    fn default() -> Self {
        ImsOptions {
            step_timeout: Duration::from_secs(10),
            provider_mode: ProviderMode::Normal,
            resend_for: None,
            net: NetOptions::default(),
        }
    }
}

/// The one-per-process message types whose delivery under two different
/// message ids means the box created the event twice.
const ONE_PER_PROCESS: [MessageType; 6] = [
    MessageType::Permit,
    MessageType::PermitRefused,
    MessageType::Query,
    MessageType::QueryAccepted,
    MessageType::Provision,
    MessageType::ProvisionReceived,
];

/// How long a request refused `E_UNKNOWN_SERIAL` waits for the
/// `process_error` that may explain it (at most the step timeout).
const NOTICE_GRACE: Duration = Duration::from_secs(2);

/// A snapshot of what the intermediate server simulator has seen and done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImsStats {
    /// Provider role: queries accepted from the box.
    pub queries_received: u64,
    /// Provider role: provisions the box accepted.
    pub provisions_provided: u64,
    /// Provider role: "provision received" notices from the box.
    pub provision_received_acks: u64,
    /// Requester role: provisions received and decrypted.
    pub provisions_received: u64,
    /// Requester role: flows run to the end.
    pub flows_completed: u64,
    pub distributions_received: u64,
    pub box_status: Vec<StatusEvent>,
    pub process_errors: Vec<ProcessError>,
    /// Frames this IMS answered with `refused`.
    pub frames_refused: u64,
    /// Frames it gave up delivering to the box.
    pub deliveries_failed: u64,
    /// Frames the box refused.
    pub peer_refusals: Vec<PeerRefusal>,
    /// Frames the box sent again under an id already answered; answered
    /// with the remembered reply and not handled again.
    pub duplicates_received: u64,
    /// Frames this IMS sent again (same id) after a failure or a
    /// transient refusal.
    pub frames_resent: u64,
}

/// A step of the requester flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlowStep {
    Serial,
    PrefixCheck,
    Permit,
    Query,
    QueryAccepted,
    Provision,
    ProvisionReceived,
    ProvisionComplete,
    QueryComplete,
}

impl std::fmt::Display for FlowStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlowStep::Serial => "serial",
            FlowStep::PrefixCheck => "prefix check",
            FlowStep::Permit => "permit",
            FlowStep::Query => "query",
            FlowStep::QueryAccepted => "query accepted",
            FlowStep::Provision => "provision",
            FlowStep::ProvisionReceived => "provision received",
            FlowStep::ProvisionComplete => "provision complete",
            FlowStep::QueryComplete => "query complete",
        })
    }
}

/// What went wrong in a step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowErrorKind {
    /// The box answered `refused`.
    #[error("the box refused: {reason}: {text}")]
    Refused { reason: Reason, text: String },
    /// The prefix check answered NG.
    #[error("prefix check NG: {}", reason.map_or("no reason given", Reason::as_str))]
    PrefixNg { reason: Option<Reason> },
    /// The core refused the permit.
    #[error("the core refused the permit: {reason}: {text}")]
    PermitRefused { reason: Reason, text: String },
    /// The box reported a process error for the serial.
    #[error("process error: {reason}: {text}")]
    ProcessError { reason: Reason, text: String },
    /// The permit relayed does not fit the query.
    #[error("the permit is not valid: {0}")]
    BadPermit(String),
    /// The provision relayed does not decrypt or does not fit.
    #[error("the provision is not valid: {0}")]
    BadProvision(String),
    /// Nothing arrived in time.
    #[error("nothing arrived within {0:?}")]
    Timeout(Duration),
    /// The box answered with an unexpected reply.
    #[error("unexpected reply {got}")]
    Unexpected { got: &'static str },
    /// The frame could not be sent or its reply not read.
    #[error("sending failed")]
    Send(#[source] Box<SimError>),
    #[error(transparent)]
    Crypto(CryptoError),
    /// The simulator was shut down.
    #[error("the simulator stopped")]
    Stopped,
}

/// A requester flow that did not finish: where, for which serial, why.
#[derive(Debug, thiserror::Error)]
#[error("query flow failed at the {step} step{}: {kind}", serial.as_ref().map(|s| format!(" (serial {s})")).unwrap_or_default())]
pub struct FlowError {
    pub step: FlowStep,
    pub serial: Option<Serial>,
    pub kind: FlowErrorKind,
}

impl FlowError {
    fn new(step: FlowStep, serial: Option<&Serial>, kind: FlowErrorKind) -> Self {
        FlowError {
            step,
            serial: serial.cloned(),
            kind,
        }
    }

    /// The reason code involved, when a party gave one.
    pub fn reason(&self) -> Option<Reason> {
        match &self.kind {
            FlowErrorKind::Refused { reason, .. }
            | FlowErrorKind::PermitRefused { reason, .. }
            | FlowErrorKind::ProcessError { reason, .. } => Some(*reason),
            FlowErrorKind::PrefixNg { reason } => *reason,
            FlowErrorKind::Send(e) => match &**e {
                SimError::Refused { reason, .. } => Some(*reason),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Latency of each step of a finished flow. Synchronous steps run from
/// sending the frame to its reply; `permit` from sending the request to
/// the permit's arrival; `query_accepted` and `provision` from sending the
/// query to their arrival.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowTimings {
    pub serial: Duration,
    pub prefix_check: Duration,
    pub permit: Duration,
    pub query: Duration,
    pub query_accepted: Duration,
    pub provision: Duration,
    pub provision_received: Duration,
    pub provision_complete: Duration,
    pub query_complete: Duration,
    pub total: Duration,
}

/// A finished requester flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReport {
    pub serial: Serial,
    pub prefix: Prefix,
    /// The requester-side person code sent with the query.
    pub code: PersonCode,
    pub permit: SignedPermit,
    /// The decrypted provision body.
    pub payload: Vec<u8>,
    pub timings: FlowTimings,
}

/// The made-up payload the provider role sends for `serial`: JSON text
/// naming the items with invented values. Never personal data.
pub fn sim_payload(serial: &Serial, prefix: &Prefix, code: &PersonCode) -> Vec<u8> {
    let items: Vec<String> = prefix
        .items
        .iter()
        .map(|item| {
            let mut h = Sha256::new();
            h.update(serial.as_str().as_bytes());
            h.update(b"\0");
            h.update(item.as_str().as_bytes());
            let value: String = h
                .finalize()
                .iter()
                .take(4)
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("\"{item}\":\"sim-{value}\"")
        })
        .collect();
    format!(
        "{{\"sim\":\"ifrelay-ims\",\"serial\":\"{serial}\",\"provider\":\"{}\",\"business\":\"{}\",\"info_name\":\"{}\",\"code\":\"{code}\",\"items\":{{{}}}}}",
        prefix.provider,
        prefix.business,
        prefix.info_name,
        items.join(",")
    )
    .into_bytes()
}

enum Event {
    Permit(SignedPermit, Instant),
    PermitRefused(Reason, String),
    BadPermit(String),
    QueryAccepted(Instant),
    Provision(Vec<u8>, Instant),
    BadProvision(String),
    ProcessError(Reason, String),
}

struct Waiter {
    tx: mpsc::UnboundedSender<Event>,
    prefix: Prefix,
    key: Option<Arc<RequesterKey>>,
    permit: Option<SignedPermit>,
    /// The first process error reported for the serial.
    closed: Option<(Reason, String)>,
}

struct Provided {
    received_ack: bool,
}

struct ImsState {
    /// Distributions verified and held: the newest in effect and any
    /// scheduled after it, oldest first.
    distributions: Vec<TrustedDistribution>,
    waiters: HashMap<Serial, Waiter>,
    provided: HashMap<Serial, Provided>,
    mode: ProviderMode,
    stats: ImsStats,
    /// Per one-per-process event delivered by the box, (type, serial), the
    /// distinct message ids it came under. Grows by one small entry per
    /// event for the simulator's lifetime: it is the evidence.
    delivered: HashMap<(&'static str, Serial), BTreeSet<MessageId>>,
}

impl ImsState {
    /// The newest distribution held whose `not_before` has come.
    fn in_effect(&self, now: Millis) -> Option<&TrustedDistribution> {
        self.distributions
            .iter()
            .rev()
            .find(|d| d.effective_from() <= now)
    }
}

struct ImsInner {
    node: Arc<Node>,
    agency: AgencyCode,
    box_party: Party,
    box_addr: SocketAddr,
    pool: Pool,
    step_timeout: Duration,
    /// Distribution roots every distribution is checked against.
    roots: Vec<RootKey>,
    resend_for: Option<Duration>,
    state: Mutex<ImsState>,
}

/// A running intermediate server simulator. Dropping it stops its tasks;
/// [`ImsSim::shutdown`] also waits for them.
pub struct ImsSim {
    inner: Arc<ImsInner>,
    addr: SocketAddr,
}

impl std::fmt::Debug for ImsSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImsSim")
            .field("agency", &self.inner.agency)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn random_letters(n: usize) -> Result<String, CryptoError> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CryptoError::Random)?;
    Ok(bytes.iter().map(|b| char::from(b'A' + b % 26)).collect())
}

/// Removes a running query's waiter when the flow ends, however it ends.
struct WaiterGuard<'a> {
    inner: &'a ImsInner,
    serial: Serial,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.state).waiters.remove(&self.serial);
    }
}

impl ImsSim {
    /// Starts the intermediate server of `agency` on `bind` (port 0 for
    /// any); it sends to its box's agency-side listener at `box_addr`.
    ///
    /// # Errors
    /// [`SimError::Tls`], [`SimError::Bind`].
    pub async fn start(
        agency: AgencyCode,
        bind: SocketAddr,
        tls: TlsMaterial,
        box_addr: SocketAddr,
        roots: Vec<RootKey>,
    ) -> Result<ImsSim, SimError> {
        Self::start_with(agency, bind, tls, box_addr, roots, ImsOptions::default()).await
    }

    /// As [`ImsSim::start`], with options. `roots` are the distribution
    /// roots the IMS checks every distribution against, as its box does.
    ///
    /// # Errors
    /// As [`ImsSim::start`].
    pub async fn start_with(
        agency: AgencyCode,
        bind: SocketAddr,
        tls: TlsMaterial,
        box_addr: SocketAddr,
        roots: Vec<RootKey>,
        opts: ImsOptions,
    ) -> Result<ImsSim, SimError> {
        let mut net = opts.net.clone();
        if let Some(period) = opts.resend_for {
            net.attempts = u32::MAX;
            net.give_up_after = Some(period);
            net.backoff = RESEND_BACKOFF;
            net.max_backoff = RESEND_BACKOFF_CAP;
            net.queue_len = net.queue_len.max(65_536);
        }
        let node = Node::new(Party::ims(agency.clone()), &tls, net)?;
        let box_party = Party::is(agency.clone());
        let inner = Arc::new(ImsInner {
            node: Arc::clone(&node),
            agency,
            box_party: box_party.clone(),
            box_addr,
            pool: Pool::new(box_party, box_addr),
            step_timeout: opts.step_timeout,
            roots,
            resend_for: opts.resend_for,
            state: Mutex::new(ImsState {
                distributions: Vec::new(),
                waiters: HashMap::new(),
                provided: HashMap::new(),
                mode: opts.provider_mode,
                stats: ImsStats::default(),
                delivered: HashMap::new(),
            }),
        });
        let for_handler = Arc::clone(&inner);
        let handler: Handler =
            Arc::new(move |peer: &Party, frame: Frame| for_handler.handle(peer, frame));
        let addr = node.listen(bind, handler).await?;
        tracing::info!(agency = %inner.agency, %addr, "intermediate server simulator listening");
        Ok(ImsSim { inner, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn agency(&self) -> &AgencyCode {
        &self.inner.agency
    }

    pub fn party(&self) -> Party {
        self.inner.node.own.clone()
    }

    /// The box's agency-side address this IMS dials.
    pub fn box_addr(&self) -> SocketAddr {
        self.inner.box_addr
    }

    /// Changes how the provider role behaves from now on.
    pub fn set_provider_mode(&self, mode: ProviderMode) {
        lock(&self.inner.state).mode = mode;
    }

    /// The distribution in effect now, of those received from the box.
    pub fn distribution(&self) -> Option<TrustedDistribution> {
        lock(&self.inner.state).in_effect(now_millis()).cloned()
    }

    /// The prefixes this agency may ask for under the last distribution:
    /// the listed rows with this agency as requester, grouped by
    /// (provider, business, info name) with their items.
    pub fn valid_prefixes(&self) -> Vec<Prefix> {
        let st = lock(&self.inner.state);
        let Some(d) = st.in_effect(now_millis()) else {
            return Vec::new();
        };
        let mut groups: BTreeMap<(AgencyCode, BusinessCode, InfoNameCode), Vec<ItemCode>> =
            BTreeMap::new();
        for e in d
            .fields
            .prefixes
            .iter()
            .filter(|e| e.requester == self.inner.agency)
        {
            groups
                .entry((e.provider.clone(), e.business.clone(), e.info_name.clone()))
                .or_default()
                .push(e.item.clone());
        }
        let mut out = Vec::new();
        for ((provider, business, info_name), items) in groups {
            for chunk in items.chunks(MAX_ITEMS) {
                let mut prefix = Prefix {
                    requester: self.inner.agency.clone(),
                    business: business.clone(),
                    provider: provider.clone(),
                    info_name: info_name.clone(),
                    items: Default::default(),
                };
                for item in chunk {
                    // chunks() yields at most MAX_ITEMS items.
                    let _ = prefix.items.push(item.clone());
                }
                out.push(prefix);
            }
        }
        out
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> ImsStats {
        self.inner.stats()
    }

    /// Waits until `pred` holds for the statistics, for at most `timeout`.
    ///
    /// # Errors
    /// [`SimError::Timeout`], [`SimError::Stopped`].
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&ImsStats) -> bool,
    ) -> Result<ImsStats, SimError> {
        self.inner
            .node
            .wait_until(timeout, "the awaited IMS statistics", || {
                let s = self.inner.stats();
                pred(&s).then_some(s)
            })
            .await
    }

    /// A frame from this IMS with a fresh id.
    pub fn frame(&self, body: Body) -> Frame {
        self.inner.node.frame(body)
    }

    /// Sends `body` to the box and returns its reply (of any kind).
    ///
    /// # Errors
    /// [`SimError::Link`].
    pub async fn send(&self, body: Body) -> Result<Frame, SimError> {
        let frame = self.inner.node.frame(body);
        self.send_frame(&frame).await
    }

    /// Sends a prepared frame to the box and returns its reply.
    ///
    /// # Errors
    /// [`SimError::Link`].
    pub async fn send_frame(&self, frame: &Frame) -> Result<Frame, SimError> {
        self.inner.pool.request(&self.inner.node, frame).await
    }

    /// Sends a prepared frame to the box and returns its reply, sending
    /// the same frame again (same id, same bytes) after a connection
    /// failure, a lost reply or a transient refusal, with backoff from
    /// 50 ms up to 1 s, until it is answered otherwise or `period` has
    /// passed. A reply that is still a transient refusal then is returned
    /// as the reply.
    ///
    /// # Errors
    /// The last [`SimError::Link`] when no reply came within `period`;
    /// [`SimError::Stopped`].
    pub async fn resend(&self, frame: &Frame, period: Duration) -> Result<Frame, SimError> {
        self.inner
            .pool
            .request_until(&self.inner.node, frame, period, || false)
            .await
    }

    /// The events its box delivered to this IMS more than once under
    /// different message ids: `(type, serial, ids)` for each
    /// one-per-process type (`permit`, `permit_refused`, `query`,
    /// `query_accepted`, `provision`, `provision_received`) and serial
    /// that arrived under two or more distinct ids, sorted by type and
    /// serial. A resend under the same id is expected and not listed; two
    /// ids mean the box created the event twice. Every frame from the box
    /// counts, whatever this IMS answered.
    pub fn double_deliveries(&self) -> Vec<(String, Serial, Vec<MessageId>)> {
        let st = lock(&self.inner.state);
        let mut out: Vec<(String, Serial, Vec<MessageId>)> = st
            .delivered
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|((kind, serial), ids)| {
                (
                    (*kind).to_owned(),
                    serial.clone(),
                    ids.iter().cloned().collect(),
                )
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// A fresh link to the box, for raw or malformed frames.
    ///
    /// # Errors
    /// [`SimError::Link`].
    pub async fn link(&self) -> Result<Link, SimError> {
        self.inner
            .node
            .connect(&self.inner.box_party, self.inner.box_addr)
            .await
    }

    /// Runs one whole query for `prefix` through the box, as IMS_R.
    ///
    /// # Errors
    /// [`FlowError`] naming the step that failed and why.
    pub async fn run_query(&self, prefix: Prefix) -> Result<FlowReport, FlowError> {
        let inner = &self.inner;
        let t0 = Instant::now();
        let mut timings = FlowTimings::default();

        // 1. Serial.
        let step = FlowStep::Serial;
        let t = Instant::now();
        let reply = inner
            .request(
                step,
                None,
                Body::SerialRequest(SerialRequest {
                    purpose: SerialPurpose::Query,
                }),
            )
            .await?;
        let serial = match reply.body {
            Body::SerialIssued(s) => s.serial,
            other => return Err(unexpected(step, None, other)),
        };
        timings.serial = t.elapsed();
        let s = Some(&serial);

        let (tx, mut events) = mpsc::unbounded_channel();
        lock(&inner.state).waiters.insert(
            serial.clone(),
            Waiter {
                tx,
                prefix: prefix.clone(),
                key: None,
                permit: None,
                closed: None,
            },
        );
        let _guard = WaiterGuard {
            inner,
            serial: serial.clone(),
        };

        // 2. Prefix check.
        let step = FlowStep::PrefixCheck;
        let t = Instant::now();
        let reply = inner
            .request(
                step,
                s,
                Body::PrefixCheck(PrefixCheck {
                    serial: serial.clone(),
                    prefix: prefix.clone(),
                }),
            )
            .await?;
        match reply.body {
            Body::PrefixResult(r) if r.ok => {}
            Body::PrefixResult(r) => {
                return Err(FlowError::new(
                    step,
                    s,
                    FlowErrorKind::PrefixNg { reason: r.reason },
                ))
            }
            other => return Err(unexpected(step, s, other)),
        }
        timings.prefix_check = t.elapsed();

        // 3. Permit request, then the permit.
        let step = FlowStep::Permit;
        let t = Instant::now();
        let reply = inner
            .request(
                step,
                s,
                Body::PermitRequest(PermitRequest {
                    serial: serial.clone(),
                    prefix: prefix.clone(),
                }),
            )
            .await?;
        expect_accepted(step, s, reply)?;
        let deadline = Instant::now() + inner.step_timeout;
        let permit = match inner.next_event(&mut events, deadline, step, s).await? {
            Event::Permit(p, at) => {
                timings.permit = at.duration_since(t);
                p
            }
            other => return Err(event_error(step, s, other)),
        };

        // 4. Query, with a fresh key and a made-up person code.
        let step = FlowStep::Query;
        let key = RequesterKey::generate()
            .map_err(|e| FlowError::new(step, s, FlowErrorKind::Crypto(e)))?;
        let public_key = key.public_bytes().to_vec();
        let code = random_letters(20)
            .ok()
            .and_then(|c| PersonCode::new(&c).ok())
            .ok_or_else(|| FlowError::new(step, s, FlowErrorKind::Crypto(CryptoError::Random)))?;
        if let Some(w) = lock(&inner.state).waiters.get_mut(&serial) {
            w.key = Some(Arc::new(key));
            w.permit = Some(permit.clone());
        }
        let t_query = Instant::now();
        let reply = inner
            .request(
                step,
                s,
                Body::Query(Query {
                    serial: serial.clone(),
                    prefix: prefix.clone(),
                    permit: permit.clone(),
                    public_key,
                    code: code.clone(),
                }),
            )
            .await?;
        expect_accepted(step, s, reply)?;
        timings.query = t_query.elapsed();

        // 5. Query accepted and provision, in either order.
        let deadline = Instant::now() + inner.step_timeout;
        let mut accepted_at = None;
        let mut payload = None;
        while accepted_at.is_none() || payload.is_none() {
            let step = if accepted_at.is_none() {
                FlowStep::QueryAccepted
            } else {
                FlowStep::Provision
            };
            match inner.next_event(&mut events, deadline, step, s).await? {
                Event::QueryAccepted(at) => {
                    accepted_at.get_or_insert(at);
                }
                Event::Provision(body, at) => {
                    if payload.is_none() {
                        timings.provision = at.duration_since(t_query);
                        payload = Some(body);
                    }
                }
                Event::BadProvision(text) => {
                    return Err(FlowError::new(
                        FlowStep::Provision,
                        s,
                        FlowErrorKind::BadProvision(text),
                    ))
                }
                other => return Err(event_error(step, s, other)),
            }
        }
        if let Some(at) = accepted_at {
            timings.query_accepted = at.duration_since(t_query);
        }
        let payload = payload.unwrap_or_default();

        // 6. Provision received, provision complete, query complete.
        for (step, slot) in [
            (FlowStep::ProvisionReceived, &mut timings.provision_received),
            (FlowStep::ProvisionComplete, &mut timings.provision_complete),
            (FlowStep::QueryComplete, &mut timings.query_complete),
        ] {
            let notice = SerialNotice {
                serial: serial.clone(),
            };
            let body = match step {
                FlowStep::ProvisionReceived => Body::ProvisionReceived(notice),
                FlowStep::ProvisionComplete => Body::ProvisionComplete(notice),
                _ => Body::QueryComplete(notice),
            };
            let t = Instant::now();
            let reply = inner.request(step, s, body).await?;
            expect_accepted(step, s, reply)?;
            *slot = t.elapsed();
        }
        timings.total = t0.elapsed();
        lock(&inner.state).stats.flows_completed += 1;
        inner.node.bump();
        Ok(FlowReport {
            serial,
            prefix,
            code,
            permit,
            payload,
            timings,
        })
    }

    /// Stops the listener and the outbox, and waits (bounded) for them.
    pub async fn shutdown(&self) {
        self.inner.node.shutdown().await;
    }
}

impl Drop for ImsSim {
    fn drop(&mut self) {
        self.inner.node.cancel.cancel();
    }
}

fn unexpected(step: FlowStep, serial: Option<&Serial>, body: Body) -> FlowError {
    let kind = match body {
        Body::Refused(r) => FlowErrorKind::Refused {
            reason: r.reason,
            text: r.text,
        },
        other => FlowErrorKind::Unexpected {
            got: other.type_name(),
        },
    };
    FlowError::new(step, serial, kind)
}

fn expect_accepted(step: FlowStep, serial: Option<&Serial>, reply: Frame) -> Result<(), FlowError> {
    match reply.body {
        Body::Accepted(_) => Ok(()),
        other => Err(unexpected(step, serial, other)),
    }
}

fn event_error(step: FlowStep, serial: Option<&Serial>, event: Event) -> FlowError {
    let kind = match event {
        Event::PermitRefused(reason, text) => FlowErrorKind::PermitRefused { reason, text },
        Event::ProcessError(reason, text) => FlowErrorKind::ProcessError { reason, text },
        Event::BadPermit(text) => FlowErrorKind::BadPermit(text),
        Event::BadProvision(text) => FlowErrorKind::BadProvision(text),
        Event::Permit(..) => FlowErrorKind::Unexpected {
            got: MessageType::Permit.as_str(),
        },
        Event::QueryAccepted(_) => FlowErrorKind::Unexpected {
            got: MessageType::QueryAccepted.as_str(),
        },
        Event::Provision(..) => FlowErrorKind::Unexpected {
            got: MessageType::Provision.as_str(),
        },
    };
    FlowError::new(step, serial, kind)
}

impl ImsInner {
    fn stats(&self) -> ImsStats {
        let mut s = lock(&self.state).stats.clone();
        s.frames_refused = self.node.frames_refused();
        s.deliveries_failed = self.node.deliveries_failed();
        s.peer_refusals = self.node.peer_refusals();
        s.duplicates_received = self.node.duplicates_received();
        s.frames_resent = self.node.frames_resent();
        s
    }

    /// The process error reported for the running query of `serial`.
    fn closed(&self, serial: &Serial) -> Option<(Reason, String)> {
        lock(&self.state)
            .waiters
            .get(serial)
            .and_then(|w| w.closed.clone())
    }

    /// Sends one request of the requester flow: once, or with
    /// `resend_for` until answered. A request that fails or is refused
    /// for a serial the box reported a process error for ends the flow
    /// with that error; a refusal `E_UNKNOWN_SERIAL` waits a moment for
    /// the notice that may explain it.
    async fn request(
        &self,
        step: FlowStep,
        serial: Option<&Serial>,
        body: Body,
    ) -> Result<Frame, FlowError> {
        let frame = self.node.frame(body);
        let outcome = match self.resend_for {
            Some(period) => {
                let stop = || serial.is_some_and(|s| self.closed(s).is_some());
                self.pool
                    .request_until(&self.node, &frame, period, stop)
                    .await
            }
            None => self.pool.request(&self.node, &frame).await,
        };
        // Whether the request did not get through: `Some(Some(reason))`
        // when refused, `Some(None)` when no reply came.
        let failed: Option<Option<Reason>> = match &outcome {
            Ok(reply) => match &reply.body {
                Body::Refused(r) => Some(Some(r.reason)),
                _ => None,
            },
            Err(_) => Some(None),
        };
        if let (Some(reason), Some(s)) = (failed, serial) {
            let closed = match self.closed(s) {
                Some(c) => Some(c),
                None if reason == Some(Reason::UnknownSerial) => self
                    .node
                    .wait_until(
                        NOTICE_GRACE.min(self.step_timeout),
                        "a process error",
                        || self.closed(s),
                    )
                    .await
                    .ok(),
                None => None,
            };
            if let Some((reason, text)) = closed {
                return Err(FlowError::new(
                    step,
                    serial,
                    FlowErrorKind::ProcessError { reason, text },
                ));
            }
        }
        outcome.map_err(|e| FlowError::new(step, serial, FlowErrorKind::Send(Box::new(e))))
    }

    async fn next_event(
        &self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        deadline: Instant,
        step: FlowStep,
        serial: Option<&Serial>,
    ) -> Result<Event, FlowError> {
        tokio::select! {
            () = self.node.cancel.cancelled() => {
                Err(FlowError::new(step, serial, FlowErrorKind::Stopped))
            }
            r = tokio::time::timeout_at(deadline, events.recv()) => match r {
                Ok(Some(Event::ProcessError(reason, text))) => Err(FlowError::new(
                    step,
                    serial,
                    FlowErrorKind::ProcessError { reason, text },
                )),
                Ok(Some(event)) => Ok(event),
                Ok(None) => Err(FlowError::new(step, serial, FlowErrorKind::Stopped)),
                Err(_) => Err(FlowError::new(
                    step,
                    serial,
                    FlowErrorKind::Timeout(self.step_timeout),
                )),
            },
        }
    }

    fn handle(self: &Arc<Self>, peer: &Party, frame: Frame) -> Reply {
        let id = frame.header.id.clone();
        if peer != &self.box_party {
            return Reply::refused(
                &id,
                Reason::Role,
                format!(
                    "{peer} may not talk to ims/{}; only its own box is/{} does",
                    self.agency, self.agency
                ),
            );
        }
        let kind = frame.body.type_name();
        if ONE_PER_PROCESS.contains(&frame.body.message_type()) {
            if let Some(serial) = frame.body.serial() {
                lock(&self.state)
                    .delivered
                    .entry((kind, serial.clone()))
                    .or_default()
                    .insert(id.clone());
            }
        }
        let reply = match frame.body {
            Body::Distribution(d) => {
                // The IMS checks the signature too (R-DST-1): the box
                // relays the distribution as the operator signed it.
                match distribution::verify(&d, &self.roots, now_millis()) {
                    Ok(t) => {
                        let mut st = lock(&self.state);
                        let newest = st.distributions.last().map(|h| h.fields.version);
                        if newest.is_none_or(|v| t.fields.version > v) {
                            st.distributions.push(t);
                            let now = now_millis();
                            // Keep the newest in effect and what follows it.
                            if let Some(i) = st
                                .distributions
                                .iter()
                                .rposition(|h| h.effective_from() <= now)
                            {
                                st.distributions.drain(..i);
                            }
                        }
                        st.stats.distributions_received += 1;
                        Reply::accepted(&id)
                    }
                    Err(e) => Reply::refused(&id, e.reason(), e.text()),
                }
            }
            Body::Permit(p) => {
                let verdict = self.check_permit(&p.serial, &p.permit);
                match verdict {
                    Ok(()) => {
                        self.to_waiter(&id, &p.serial, Event::Permit(p.permit, Instant::now()))
                    }
                    Err((reason, text)) => {
                        let _ = self.to_waiter(&id, &p.serial, Event::BadPermit(text.clone()));
                        Reply::refused(&id, reason, text)
                    }
                }
            }
            Body::PermitRefused(r) => {
                self.to_waiter(&id, &r.serial, Event::PermitRefused(r.reason, r.text))
            }
            Body::QueryAccepted(n) => {
                self.to_waiter(&id, &n.serial, Event::QueryAccepted(Instant::now()))
            }
            Body::Provision(p) => self.on_provision(&id, p),
            Body::ProcessError(e) => {
                if let Some(w) = lock(&self.state).waiters.get_mut(&e.serial) {
                    w.closed.get_or_insert((e.reason, e.text.clone()));
                }
                let _ = self.to_waiter(
                    &id,
                    &e.serial,
                    Event::ProcessError(e.reason, e.text.clone()),
                );
                tracing::info!(agency = %self.agency, serial = %e.serial, reason = %e.reason, text = %e.text, "process error reported to the IMS");
                lock(&self.state).stats.process_errors.push(e);
                Reply::accepted(&id)
            }
            Body::Query(q) => self.on_query(&id, q),
            Body::ProvisionReceived(n) => self.on_provision_received(&id, n),
            Body::BoxStatus(s) => {
                lock(&self.state).stats.box_status.push(s.event);
                Reply::accepted(&id)
            }
            other => Reply::refused(
                &id,
                Reason::Role,
                format!(
                    "an intermediate server does not take {} frames",
                    other.type_name()
                ),
            ),
        };
        self.node.bump();
        reply
    }

    /// Hands `event` to the running query of `serial`.
    fn to_waiter(&self, id: &MessageId, serial: &Serial, event: Event) -> Reply {
        let st = lock(&self.state);
        match st.waiters.get(serial) {
            Some(w) if w.tx.send(event).is_ok() => Reply::accepted(id),
            _ => Reply::refused(
                id,
                Reason::UnknownSerial,
                format!("ims/{} runs no query with serial {serial}", self.agency),
            ),
        }
    }

    /// Checks a permit relayed for a running query: once a distribution
    /// brought the core's key, with the one verifier the boxes use
    /// ([`permit::verify`]: signature, fields, issuer, expiry); before
    /// that only its fields can be read. Then that it names the serial and
    /// prefix asked for, and routes the provision to this agency. The
    /// error is the refusal's reason and text.
    fn check_permit(&self, serial: &Serial, permit: &SignedPermit) -> Result<(), (Reason, String)> {
        let refusal = |e: PermitError| (e.reason(), e.text());
        let st = lock(&self.state);
        let Some(w) = st.waiters.get(serial) else {
            // Unknown serials are refused by to_waiter.
            return Ok(());
        };
        let now = now_millis();
        let fields = match st.in_effect(now) {
            Some(d) => {
                let keys: Vec<&[u8]> = d
                    .fields
                    .core_keys
                    .iter()
                    .filter(|k| k.valid_at(now))
                    .map(|k| k.key.as_slice())
                    .collect();
                permit::verify(permit, &keys, now).map_err(refusal)?
            }
            None => permit
                .fields()
                .map_err(|e| refusal(PermitError::Undecodable(e)))?,
        };
        fields
            .check_serial_and_prefix(serial, &w.prefix)
            .map_err(refusal)?;
        if fields.route.agency != self.agency {
            return Err((
                Reason::PermitInvalid,
                format!(
                    "the permit routes the provision to {}, not to {}",
                    fields.route.agency, self.agency
                ),
            ));
        }
        Ok(())
    }

    fn on_provision(&self, id: &MessageId, p: Provision) -> Reply {
        let st = lock(&self.state);
        let Some(w) = st.waiters.get(&p.serial) else {
            return Reply::refused(
                id,
                Reason::UnknownSerial,
                format!("ims/{} runs no query with serial {}", self.agency, p.serial),
            );
        };
        let tx = w.tx.clone();
        let bad = |reason: Reason, text: String| {
            let _ = tx.send(Event::BadProvision(text.clone()));
            Reply::refused(id, reason, text)
        };
        if p.prefix != w.prefix {
            return bad(
                Reason::WrongPrefix,
                "the provision's prefix is not the query's".to_owned(),
            );
        }
        let Some(key) = w.key.clone() else {
            return bad(
                Reason::OutOfSequence,
                format!("serial {} has not sent its query yet", p.serial),
            );
        };
        if w.permit.as_ref() != Some(&p.permit) {
            return bad(
                Reason::PermitInvalid,
                "the provision carries another permit than the query".to_owned(),
            );
        }
        drop(st);
        match key.decrypt(&p.body) {
            Ok(payload) => {
                let _ = tx.send(Event::Provision(payload, Instant::now()));
                lock(&self.state).stats.provisions_received += 1;
                Reply::accepted(id)
            }
            Err(e) => bad(
                Reason::InvalidField,
                format!("the provision body does not decrypt: {e}"),
            ),
        }
    }

    fn on_query(self: &Arc<Self>, id: &MessageId, q: Query) -> Reply {
        if q.prefix.provider != self.agency {
            return Reply::refused(
                id,
                Reason::InvalidField,
                format!(
                    "the query asks provider {}, but reached ims/{}",
                    q.prefix.provider, self.agency
                ),
            );
        }
        let mode = lock(&self.state).mode.clone();
        if let ProviderMode::Refuse(reason) = mode {
            return Reply::refused(id, reason, "the provider simulator refuses queries");
        }
        let payload = sim_payload(&q.serial, &q.prefix, &q.code);
        let body = match encrypt_to(&q.public_key, &payload) {
            Ok(b) => b,
            Err(e @ CryptoError::BadPublicKey { .. }) => {
                return Reply::refused(id, Reason::NoPublicKey, e.to_string())
            }
            Err(e) => return Reply::refused(id, Reason::InvalidField, e.to_string()),
        };
        {
            let mut st = lock(&self.state);
            st.provided.insert(
                q.serial.clone(),
                Provided {
                    received_ack: false,
                },
            );
            st.stats.queries_received += 1;
        }
        let me = Arc::clone(self);
        Reply::accepted_then(id, move || me.provide(mode, q, body))
    }

    /// Queues the provider's answers to a query, after its `accepted`.
    fn provide(self: &Arc<Self>, mode: ProviderMode, q: Query, body: Vec<u8>) {
        let to = &self.box_party;
        if matches!(mode, ProviderMode::AcceptOnly | ProviderMode::Refuse(_)) {
            return;
        }
        let accepted = Body::QueryAccepted(SerialNotice {
            serial: q.serial.clone(),
        });
        if let Err(e) = self.node.enqueue(to, self.box_addr, accepted, None) {
            tracing::warn!(agency = %self.agency, error = %ifrelay::logging::Causes(&e), "could not queue query_accepted");
            return;
        }
        if mode == ProviderMode::NoProvision {
            return;
        }
        let provision = Body::Provision(Provision {
            serial: q.serial,
            prefix: q.prefix,
            permit: q.permit,
            body,
        });
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.node.enqueue(to, self.box_addr, provision, Some(tx)) {
            tracing::warn!(agency = %self.agency, error = %ifrelay::logging::Causes(&e), "could not queue the provision");
            return;
        }
        let me = Arc::clone(self);
        self.node.tracker.spawn(async move {
            if let Ok(Ok(_)) = rx.await {
                lock(&me.state).stats.provisions_provided += 1;
                me.node.bump();
            }
        });
    }

    fn on_provision_received(self: &Arc<Self>, id: &MessageId, n: SerialNotice) -> Reply {
        let mode = {
            let mut st = lock(&self.state);
            let mode = st.mode.clone();
            let Some(p) = st.provided.get_mut(&n.serial) else {
                return Reply::refused(
                    id,
                    Reason::UnknownSerial,
                    format!(
                        "ims/{} provided nothing for serial {}",
                        self.agency, n.serial
                    ),
                );
            };
            p.received_ack = true;
            st.stats.provision_received_acks += 1;
            mode
        };
        if mode == ProviderMode::NoComplete {
            return Reply::accepted(id);
        }
        let me = Arc::clone(self);
        Reply::accepted_then(id, move || {
            let body = Body::ProvisionComplete(n);
            if let Err(e) = me.node.enqueue(&me.box_party, me.box_addr, body, None) {
                tracing::warn!(agency = %me.agency, error = %ifrelay::logging::Causes(&e), "could not queue provision_complete");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_made_up_text_without_digit_runs() {
        let mut prefix = Prefix {
            requester: AgencyCode::new("131016").expect("agency"),
            business: BusinessCode::new("B010").expect("business"),
            provider: AgencyCode::new("271004").expect("agency"),
            info_name: InfoNameCode::new("N020").expect("info name"),
            items: Default::default(),
        };
        prefix
            .items
            .push(ItemCode::new("I001").expect("item"))
            .expect("capacity");
        let serial = Serial::new("131016-20261122-1-1").expect("serial");
        let code = PersonCode::new("ABCDEFGHIJKLMNOPQRST").expect("code");
        let p = sim_payload(&serial, &prefix, &code);
        let text = String::from_utf8(p.clone()).expect("utf-8");
        assert!(text.contains("\"I001\":\"sim-"));
        let longest_digit_run = text
            .split(|c: char| !c.is_ascii_digit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(longest_digit_run < 12, "{text}");
        assert_eq!(p, sim_payload(&serial, &prefix, &code));
    }

    #[test]
    fn flow_errors_name_their_step_and_reason() {
        let e = FlowError::new(
            FlowStep::Permit,
            None,
            FlowErrorKind::PermitRefused {
                reason: Reason::PermitRefused,
                text: "no".into(),
            },
        );
        assert_eq!(e.reason(), Some(Reason::PermitRefused));
        assert!(e.to_string().contains("permit step"));
        let e = FlowError::new(
            FlowStep::PrefixCheck,
            None,
            FlowErrorKind::PrefixNg { reason: None },
        );
        assert!(e.to_string().contains("no reason given"));
    }
}
