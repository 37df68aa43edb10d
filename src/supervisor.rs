//! Starting and stopping one box: store, engine thread, the two listeners
//! and delivery, tied together by one shutdown path.
//!
//! [`RunningBox::shutdown`] is the only way down: it cancels one token
//! (listeners stop accepting, connections and workers end), stops the
//! engine after its current batch, and waits for every task within a grace
//! period. Everything accepted is already durable, so stopping loses
//! nothing: undelivered entries stay in the outbox for the next start.
//!
//! Every task the box cannot run without carries a [`critical::Guard`];
//! [`RunningBox::wait`] returns as soon as one ends unexpectedly, and the
//! binary then exits non-zero so the service manager restarts the box
//! instead of it answering `E_BUSY` forever.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ifrelay_proto::{AgencyCode, Party, StatusEvent};
use ifrelay_store::{Store, StoreReader};
use ifrelay_tls::TlsMaterial;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::critical::{self, TaskDied};
use crate::identity::{BoxKey, Created, IdentityError};
use crate::net::Budget;
use crate::relay::admission::{AdmissionLimits, Occupancy};
use crate::relay::channel::{Input, Listener};
use crate::relay::delivery::{self, DeliveryConfig};
use crate::relay::engine::{Engine, EngineConfig, EngineStats, RetentionPolicy, StepTimeouts};
use crate::relay::rates::RateLimiter;
use crate::relay::server::{self, ListenerConfig, ServerContext};
use crate::store_dir;

/// Inputs waiting for the engine; past this the box answers "busy".
pub const ENGINE_QUEUE: usize = 4096;

/// How often the step timers are checked.
pub const TICK: Duration = Duration::from_secs(1);

/// Why a box could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store's directory is missing and cannot be created.
    #[error(
        "cannot create the store's directory {}; create its parent or fix store.path",
        path.display()
    )]
    StoreDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store {path}")]
    Store {
        path: String,
        #[source]
        source: Box<ifrelay_store::StoreError>,
    },
    /// The box's signing key cannot be created or read, or is refused;
    /// the message says which and what to do.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot load the box's TLS material")]
    Tls(#[from] ifrelay_tls::TlsError),
    #[error("cannot listen on {addr} ({side}); is another process using the port?")]
    Bind {
        addr: SocketAddr,
        side: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the engine thread")]
    Thread(#[source] std::io::Error),
    /// The pinned distribution roots cannot be loaded.
    #[error("cannot load the trust anchors")]
    Trust(#[source] crate::config::ConfigError),
}

/// Why a running box stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// A signal or the console asked it to.
    Requested,
    /// A critical task ended; the process must exit non-zero.
    TaskDied(TaskDied),
}

/// Creates the store's directory (mode 0700: records are personal data)
/// when it is missing and its parent exists; nothing further up.
fn ensure_store_dir(store_path: &std::path::Path) -> Result<(), StartError> {
    let dir = store_dir::of(store_path);
    store_dir::ensure(dir)
        .map(drop)
        .map_err(|source| StartError::StoreDir {
            path: dir.to_owned(),
            source,
        })
}

/// Loads the box's signing key from the store's folder, creating it at
/// first start, and logs its fingerprint (public data only).
fn load_box_key(store_path: &std::path::Path) -> Result<BoxKey, IdentityError> {
    let (key, created) = BoxKey::load_or_create(store_dir::of(store_path))?;
    let key_file = key.path().display();
    let fingerprint = key.fingerprint();
    match created {
        Created::Now => tracing::info!(
            %key_file, %fingerprint,
            "created the box's signing key; register its fingerprint with the national operator"
        ),
        Created::Earlier => tracing::info!(%key_file, %fingerprint, "loaded the box's signing key"),
    }
    Ok(key)
}

/// `IFRELAY_FAULT` names a critical task to kill, for the test that proves
/// a dead task ends the process. Only in builds with the non-default
/// `fault-injection` feature; release images are built without it.
#[cfg(feature = "fault-injection")]
fn fault(name: &str) -> bool {
    std::env::var("IFRELAY_FAULT").is_ok_and(|v| v == name)
}

#[cfg(not(feature = "fault-injection"))]
fn fault(_name: &str) -> bool {
    false
}

/// A box that is running.
pub struct RunningBox {
    pub agency: AgencyCode,
    pub core_side: SocketAddr,
    pub agency_side: SocketAddr,
    reader: StoreReader,
    /// Signs what the box hands out of itself (exports, backups).
    box_key: Arc<BoxKey>,
    stats: Arc<Mutex<EngineStats>>,
    watch: critical::Watch,
    /// Set by [`RunningBox::wait`] when a critical task died: the
    /// shutdown then skips the drain, since a restart resends everything.
    task_died: bool,
    engine_tx: mpsc::Sender<Input>,
    engine_thread: Option<std::thread::JoinHandle<()>>,
    /// Cancelled by a signal or the console to ask for the shutdown.
    stop_requested: CancellationToken,
    grace: Duration,
    stop_accepting: CancellationToken,
    stop_delivery: CancellationToken,
    listeners: TaskTracker,
    workers: TaskTracker,
    /// Each listener's context, for [`RunningBox::connections`].
    servers: Vec<Arc<ServerContext>>,
    /// The maintenance console, when `[console] tty` names a port.
    console: Option<crate::console::tty::Console>,
    /// The hash-chain verification at start and once a day.
    chain_check: Option<crate::health::ChainCheck>,
}

impl RunningBox {
    /// Opens the store, boots the engine, binds both listeners and starts
    /// delivery (resending whatever the outbox held).
    ///
    /// # Errors
    /// [`StartError`] naming the part that failed.
    pub async fn start(config: &Config) -> Result<RunningBox, StartError> {
        let bind = |addr: SocketAddr, side: &'static str| async move {
            server::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, side, source })
        };
        let core_listener = bind(config.listen.core_side, "core side").await?;
        let agency_listener = bind(config.listen.agency_side, "agency side").await?;
        Self::start_on(config, core_listener, agency_listener).await
    }

    /// As [`RunningBox::start`], on listeners bound by the caller (tests
    /// bind port 0 first and write the ports into the configuration).
    ///
    /// # Errors
    /// As [`RunningBox::start`].
    pub async fn start_on(
        config: &Config,
        core_listener: tokio::net::TcpListener,
        agency_listener: tokio::net::TcpListener,
    ) -> Result<RunningBox, StartError> {
        let roots = config.distribution_roots().map_err(StartError::Trust)?;
        let store_path = config.store.path.clone();
        ensure_store_dir(&store_path)?;
        // Before the store: a refused key stops the box without it having
        // opened (or repaired) anything.
        let box_key = Arc::new(load_box_key(&store_path)?);
        let store = Store::open(&store_path, config.store.cache_bytes()).map_err(|source| {
            StartError::Store {
                path: store_path.display().to_string(),
                source: Box::new(source),
            }
        })?;
        let reader = store.reader();
        let tls = TlsMaterial::from_files(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
        let own = Party::is(config.agency.clone());
        tls.verify_own_identity(&own)?;
        let server_tls = tls.server_config()?;
        let client_tls = tls.client_config()?;

        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let peer_book = Arc::new(crate::health::PeerBook::default());
        let retention_policy = RetentionPolicy::from_years(
            config.retention.records_years,
            config.retention.access_log_years,
            config.retention.delete_records,
        );
        let (deliver_tx, deliver_rx) = mpsc::unbounded_channel();
        let (engine, ids) = Engine::boot(
            store,
            EngineConfig {
                agency: config.agency.clone(),
                peer_allow: config.peers.allow.clone(),
                clock_synced: false,
                hours: config.service.clone(),
                steps: StepTimeouts {
                    permit: config.timeouts.permit,
                    query_accepted: config.timeouts.query_accepted,
                    provision_complete: config.timeouts.provision_complete,
                    idle_process: config.timeouts.idle_process,
                },
                roots,
                expiry_warning: config.trust.expiry_warning,
                retention: retention_policy,
            },
            deliver_tx,
            stats.clone(),
            crate::net::now_millis(),
        )
        .map_err(|source| StartError::Store {
            path: store_path.display().to_string(),
            source: Box::new(source),
        })?;

        let local = |l: &tokio::net::TcpListener, addr, side| {
            l.local_addr()
                .map_err(|source| StartError::Bind { addr, side, source })
        };
        let core_side = local(&core_listener, config.listen.core_side, "core side")?;
        let agency_side = local(&agency_listener, config.listen.agency_side, "agency side")?;

        // Asked for by a signal or the console; tasks that end after it
        // are stopping, not dying.
        let stop_requested = CancellationToken::new();
        let watch = critical::Watch::new(stop_requested.clone());
        let (engine_tx, engine_rx) = mpsc::channel(ENGINE_QUEUE);
        let engine_guard = watch.guard("relay engine");
        let engine_thread = std::thread::Builder::new()
            .name("relay-engine".into())
            .spawn(move || {
                let _guard = engine_guard;
                if fault("engine-panic") {
                    std::thread::sleep(Duration::from_millis(500));
                    panic!("fault injected: engine-panic");
                }
                engine.run(engine_rx);
            })
            .map_err(StartError::Thread)?;

        // Two stages of stopping: listeners first, delivery after the drain.
        let stop_accepting = CancellationToken::new();
        let stop_delivery = CancellationToken::new();
        let listeners = TaskTracker::new();
        let workers = TaskTracker::new();
        // Bytes in flight, across both listeners and delivery's replies.
        let budget = Budget::new(config.limits.in_flight_bytes);
        let listener_config = |listener| ListenerConfig {
            listener,
            agency: config.agency.clone(),
            core_allow: config.core.allow.clone(),
            ims_allow: config.ims.allow.clone(),
            peer_allow: config.peers.allow.clone(),
            deny_agencies: config.peers.deny_agencies.clone(),
            admission: AdmissionLimits {
                max_connections: config.limits.max_connections,
                reserved_connections: config.limits.reserved_connections,
                max_handshakes: config.limits.max_handshakes,
                max_handshakes_per_source: config.limits.max_handshakes_per_source,
            },
            max_frame: config.limits.max_frame_bytes,
            budget: budget.clone(),
            io_timeout: config.limits.io_timeout,
            handshake_timeout: config.limits.handshake_timeout,
        };
        // One set of rates per sender, whichever listener it uses.
        let rates = Arc::new(RateLimiter::new(config.rates));
        let mut servers = Vec::new();
        for (tcp, listener, task) in [
            (core_listener, Listener::CoreSide, "core-side listener"),
            (
                agency_listener,
                Listener::AgencySide,
                "agency-side listener",
            ),
        ] {
            let ctx = Arc::new(ServerContext::new(
                listener_config(listener),
                server::acceptor(server_tls.clone()),
                engine_tx.clone(),
                own.clone(),
                ids.clone(),
                rates.clone(),
                peer_book.clone(),
            ));
            servers.push(ctx.clone());
            let guard = watch.guard(task);
            let serve = server::serve(tcp, ctx, stop_accepting.clone(), listeners.clone());
            let exit_early = fault("core-listener-exit") && listener == Listener::CoreSide;
            listeners.spawn(async move {
                let _guard = guard;
                if exit_early {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return;
                }
                serve.await;
            });
        }
        let guard = watch.guard("delivery");
        let dispatch = delivery::dispatch(
            DeliveryConfig {
                agency: config.agency.clone(),
                core: config.core.address,
                ims: config.ims.address,
                tls: client_tls,
                connect_timeout: config.timeouts.connect,
                reply_timeout: config.timeouts.reply,
                retry_backoff: config.timeouts.retry_backoff,
                retry_count: config.timeouts.retry_count,
                max_frame: config.limits.max_frame_bytes,
                budget: budget.clone(),
                peers: peer_book.clone(),
            },
            reader.clone(),
            deliver_rx,
            engine_tx.clone(),
            stop_delivery.clone(),
            workers.clone(),
            watch.guards(),
        );
        workers.spawn(async move {
            let _guard = guard;
            dispatch.await;
        });
        // The step timers of every process (R-COM-2) run on this tick.
        let tick_tx = engine_tx.clone();
        let tick_stop = stop_delivery.clone();
        let guard = watch.guard("step-timer tick");
        workers.spawn(async move {
            let _guard = guard;
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = tick_stop.cancelled() => return,
                    _ = every.tick() => {
                        // A full queue means the engine is busy anyway;
                        // the next tick will do.
                        let _ = tick_tx.try_send(Input::Tick);
                    }
                }
            }
        });
        let chain_check = crate::health::ChainCheck::spawn(
            reader.clone(),
            crate::net::now_millis,
            crate::health::CHAIN_CHECK_EVERY,
        )
        .map_err(StartError::Thread)?;
        let console = match &config.console.tty {
            Some(tty) => {
                let mut settings = crate::console::session::Settings::new(
                    config
                        .name
                        .as_deref()
                        .unwrap_or(&format!("is-{}", config.agency)),
                );
                settings.idle_ms = millis_of(config.console.idle);
                settings.login.max_failures = config.console.max_failures;
                settings.login.lockout_ms = millis_of(config.console.lockout);
                settings.two_person = config.console.two_person_rule;
                let media = match &config.console.export_folder {
                    Some(folder) => crate::console::media::Media::Folder(folder.clone()),
                    None => crate::console::media::Media::Usb {
                        devices: config.console.usb_devices.clone(),
                        mount_point: config.console.usb_mount.clone(),
                    },
                };
                let export = crate::console::export::ExportSetup {
                    media,
                    recipients: config
                        .console
                        .export_recipients
                        .iter()
                        .filter_map(|r| crate::export::parse_recipient(r).ok())
                        .collect(),
                    key: box_key.clone(),
                    roots: config.distribution_roots().unwrap_or_default(),
                    party: config.party().to_string(),
                    agency: config.agency.to_string(),
                    name: config.name.clone(),
                };
                Some(
                    crate::console::tty::Console::spawn(
                        tty.clone(),
                        config.console.baud,
                        settings.clone(),
                        crate::console::tty::Backend {
                            reader: reader.clone(),
                            inputs: engine_tx.clone(),
                            clock: crate::net::now_millis,
                            status: crate::console::store_accounts::StatusSource {
                                name: settings.name.clone(),
                                started: std::time::Instant::now(),
                                service: config.service.clone(),
                                store_path: store_path.clone(),
                                peers: peer_book.clone(),
                                chains: chain_check.state(),
                            },
                            export: Arc::new(export),
                            retention: retention_policy,
                        },
                    )
                    .map_err(StartError::Thread)?,
                )
            }
            None => None,
        };
        // R-COM-3: tell the core and the IMS the box is up.
        let _ = engine_tx
            .send(Input::Announce {
                event: StatusEvent::Started,
                done: None,
            })
            .await;
        tracing::info!(agency = %config.agency, %core_side, %agency_side, hours = %config.service.describe(), "box started");
        Ok(RunningBox {
            agency: config.agency.clone(),
            core_side,
            agency_side,
            reader,
            box_key,
            stats,
            watch,
            task_died: false,
            engine_tx,
            engine_thread: Some(engine_thread),
            stop_requested,
            grace: config.timeouts.shutdown_grace,
            stop_accepting,
            stop_delivery,
            listeners,
            workers,
            servers,
            console,
            chain_check: Some(chain_check),
        })
    }

    /// Read access to the store (records, access log, verification).
    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    /// The box's signing key (`docs/operations.md`, "The box's signing
    /// key").
    pub fn box_key(&self) -> &Arc<BoxKey> {
        &self.box_key
    }

    /// The connections of each listener holding a place now (handshakes
    /// under way, authenticated connections).
    pub fn connections(&self) -> Vec<(Listener, Occupancy)> {
        self.servers
            .iter()
            .map(|s| (s.config.listener, s.occupancy()))
            .collect()
    }

    pub fn stats(&self) -> EngineStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A token that, when cancelled, asks for the shutdown (signal
    /// handlers and the console use it).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop_requested.clone()
    }

    /// Waits until something asks for the shutdown, or a critical task
    /// ends; either way the caller then calls [`RunningBox::shutdown`].
    pub async fn wait(&mut self) -> Exit {
        tokio::select! {
            () = self.stop_requested.cancelled() => Exit::Requested,
            died = self.watch.died() => {
                self.task_died = true;
                Exit::TaskDied(died)
            }
        }
    }

    /// The one shutdown path: stop accepting and end connections; announce
    /// "stopping" to the core and the IMS (R-COM-3); let delivery drain the
    /// outbox within `timeouts.shutdown_grace`; stop delivery; stop the engine
    /// after its current batch. Everything accepted is already durable;
    /// what did not drain stays in the outbox for the next start.
    pub async fn shutdown(mut self) {
        self.stop_requested.cancel();
        // The console first: it writes through the engine.
        if let Some(mut console) = self.console.take() {
            let _ = tokio::task::spawn_blocking(move || console.stop()).await;
        }
        if let Some(mut check) = self.chain_check.take() {
            let _ = tokio::task::spawn_blocking(move || check.stop()).await;
        }
        self.stop_accepting.cancel();
        self.listeners.close();
        let deadline = tokio::time::Instant::now() + self.grace;
        if tokio::time::timeout_at(deadline, self.listeners.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period");
        }
        // The counts of refusals coalesced in periods not over yet, while
        // the engine still takes them.
        for server in &self.servers {
            server.flush_refusals();
        }
        // A dead engine can neither record the notice nor take delivery
        // answers, and after any task's death the restart resends the
        // outbox anyway: waiting for the drain would only delay it.
        let engine_alive = !self.task_died
            && self
                .engine_thread
                .as_ref()
                .is_some_and(|t| !t.is_finished());
        // Wait until the notices are in the outbox, then for the drain.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let announce = Input::Announce {
            event: StatusEvent::Stopping,
            done: Some(done_tx),
        };
        if engine_alive && self.engine_tx.send(announce).await.is_ok() {
            let _ = tokio::time::timeout_at(deadline, done_rx).await;
        }
        while engine_alive && tokio::time::Instant::now() < deadline {
            match self.reader.outbox_len() {
                Ok(0) | Err(_) => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.stop_delivery.cancel();
        self.workers.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.workers.wait()).await;
        let _ = self.engine_tx.send(Input::Stop).await;
        if let Some(thread) = self.engine_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let left = self.reader.outbox_len().unwrap_or(0);
        tracing::info!(agency = %self.agency, undelivered = left, "box stopped; store flushed");
    }
}

/// Whole milliseconds of `d`, saturating.
fn millis_of(d: Duration) -> ifrelay_proto::Millis {
    ifrelay_proto::Millis::try_from(d.as_millis()).unwrap_or(ifrelay_proto::Millis::MAX)
}
