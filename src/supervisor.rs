//! Starting and stopping one box: store, engine thread, the two listeners
//! and delivery, tied together by one shutdown path.
//!
//! [`RunningBox::shutdown`] is the only way down: it cancels one token
//! (listeners stop accepting, connections and workers end), stops the
//! engine after its current batch, and waits for every task within a grace
//! period. Everything accepted is already durable, so stopping loses
//! nothing: undelivered entries stay in the outbox for the next start.

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
use crate::relay::delivery::{self, DeliveryConfig};
use crate::relay::engine::{Engine, EngineConfig, EngineStats, Input, Listener, StepTimeouts};
use crate::relay::server::{self, ListenerConfig, ServerContext};

/// Inputs waiting for the engine; past this the box answers "busy".
pub const ENGINE_QUEUE: usize = 4096;

/// How often the step timers are checked.
pub const TICK: Duration = Duration::from_secs(1);

/// Why a box could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("store {path}: {source}")]
    Store {
        path: String,
        source: Box<ifrelay_store::StoreError>,
    },
    #[error("TLS: {0}")]
    Tls(#[from] ifrelay_tls::TlsError),
    #[error("cannot listen on {addr} ({side}): {source}")]
    Bind {
        addr: SocketAddr,
        side: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
}

/// A box that is running.
pub struct RunningBox {
    pub agency: AgencyCode,
    pub core_side: SocketAddr,
    pub agency_side: SocketAddr,
    reader: StoreReader,
    stats: Arc<Mutex<EngineStats>>,
    engine_tx: mpsc::Sender<Input>,
    engine_thread: Option<std::thread::JoinHandle<()>>,
    /// Cancelled by a signal or the console to ask for the shutdown.
    stop_requested: CancellationToken,
    grace: Duration,
    stop_accepting: CancellationToken,
    stop_delivery: CancellationToken,
    listeners: TaskTracker,
    workers: TaskTracker,
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
        let store_path = config.store.path.clone();
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
            },
            deliver_tx,
            stats.clone(),
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

        let (engine_tx, engine_rx) = mpsc::channel(ENGINE_QUEUE);
        let engine_thread = std::thread::Builder::new()
            .name("relay-engine".into())
            .spawn(move || engine.run(engine_rx))
            .map_err(StartError::Thread)?;

        // Two stages of stopping: listeners first, delivery after the drain.
        let stop_accepting = CancellationToken::new();
        let stop_delivery = CancellationToken::new();
        let listeners = TaskTracker::new();
        let workers = TaskTracker::new();
        let listener_config = |listener| ListenerConfig {
            listener,
            agency: config.agency.clone(),
            core_allow: config.core.allow.clone(),
            ims_allow: config.ims.allow.clone(),
            peer_allow: config.peers.allow.clone(),
            deny_agencies: config.peers.deny_agencies.clone(),
            max_connections: config.limits.max_connections,
            max_frame: config.limits.max_frame_bytes,
            io_timeout: config.limits.io_timeout,
        };
        for (tcp, listener) in [
            (core_listener, Listener::CoreSide),
            (agency_listener, Listener::AgencySide),
        ] {
            let ctx = Arc::new(ServerContext {
                config: listener_config(listener),
                acceptor: server::acceptor(server_tls.clone()),
                engine: engine_tx.clone(),
                own: own.clone(),
                ids: ids.clone(),
            });
            listeners.spawn(server::serve(
                tcp,
                ctx,
                stop_accepting.clone(),
                listeners.clone(),
            ));
        }
        workers.spawn(delivery::dispatch(
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
            },
            reader.clone(),
            deliver_rx,
            engine_tx.clone(),
            stop_delivery.clone(),
            workers.clone(),
        ));
        // The step timers of every process (R-COM-2) run on this tick.
        let tick_tx = engine_tx.clone();
        let tick_stop = stop_delivery.clone();
        workers.spawn(async move {
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
            stats,
            engine_tx,
            engine_thread: Some(engine_thread),
            stop_requested: CancellationToken::new(),
            grace: config.timeouts.shutdown_grace,
            stop_accepting,
            stop_delivery,
            listeners,
            workers,
        })
    }

    /// Read access to the store (records, access log, verification).
    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    pub fn stats(&self) -> EngineStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A token that, when cancelled, asks for the shutdown (signal
    /// handlers and the console use it).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop_requested.clone()
    }

    /// Waits until something asks for the shutdown.
    pub async fn stopped(&self) {
        self.stop_requested.cancelled().await;
    }

    /// The one shutdown path: stop accepting and end connections; announce
    /// "stopping" to the core and the IMS (R-COM-3); let delivery drain the
    /// outbox within `timeouts.shutdown_grace`; stop delivery; stop the engine
    /// after its current batch. Everything accepted is already durable;
    /// what did not drain stays in the outbox for the next start.
    pub async fn shutdown(mut self) {
        self.stop_requested.cancel();
        self.stop_accepting.cancel();
        self.listeners.close();
        let deadline = tokio::time::Instant::now() + self.grace;
        if tokio::time::timeout_at(deadline, self.listeners.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period");
        }
        // Wait until the notices are in the outbox, then for the drain.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let announce = Input::Announce {
            event: StatusEvent::Stopping,
            done: Some(done_tx),
        };
        if self.engine_tx.send(announce).await.is_ok() {
            let _ = tokio::time::timeout_at(deadline, done_rx).await;
        }
        while tokio::time::Instant::now() < deadline {
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
