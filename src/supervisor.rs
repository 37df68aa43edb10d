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

use ifrelay_proto::{AgencyCode, Party};
use ifrelay_store::{Store, StoreReader};
use ifrelay_tls::TlsMaterial;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::relay::delivery::{self, DeliveryConfig};
use crate::relay::engine::{Engine, EngineConfig, EngineStats, Input, Listener};
use crate::relay::server::{self, ListenerConfig, ServerContext};

/// Inputs waiting for the engine; past this the box answers "busy".
pub const ENGINE_QUEUE: usize = 4096;

/// How long shutdown waits for tasks to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why a box could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("store {path}: {source}")]
    Store {
        path: String,
        source: ifrelay_store::StoreError,
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
    shutdown: CancellationToken,
    tracker: TaskTracker,
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
                source,
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
        let (engine, pending, ids) = Engine::boot(
            store,
            EngineConfig {
                agency: config.agency.clone(),
                peer_allow: config.peers.allow.clone(),
                clock_synced: false,
            },
            deliver_tx.clone(),
            stats.clone(),
        )
        .map_err(|source| StartError::Store {
            path: store_path.display().to_string(),
            source,
        })?;

        let core_side = core_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.listen.core_side,
                side: "core side",
                source,
            })?;
        let agency_side = agency_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.listen.agency_side,
                side: "agency side",
                source,
            })?;

        let (engine_tx, engine_rx) = mpsc::channel(ENGINE_QUEUE);
        let engine_thread = std::thread::Builder::new()
            .name("relay-engine".into())
            .spawn(move || engine.run(engine_rx))
            .map_err(StartError::Thread)?;

        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
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
            tracker.spawn(server::serve(tcp, ctx, shutdown.clone(), tracker.clone()));
        }
        tracker.spawn(delivery::dispatch(
            DeliveryConfig {
                agency: config.agency.clone(),
                core: config.core.address,
                ims: config.ims.address,
                tls: client_tls,
                connect_timeout: config.timeouts.connect,
                reply_timeout: config.timeouts.reply,
                retry_backoff: config.timeouts.retry_backoff,
                max_frame: config.limits.max_frame_bytes,
            },
            deliver_rx,
            engine_tx.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
        let resend = pending.len();
        for item in pending {
            let _ = deliver_tx.send(item);
        }
        tracing::info!(agency = %config.agency, %core_side, %agency_side, resend, "box started");
        Ok(RunningBox {
            agency: config.agency.clone(),
            core_side,
            agency_side,
            reader,
            stats,
            engine_tx,
            engine_thread: Some(engine_thread),
            shutdown,
            tracker,
        })
    }

    /// Read access to the store (records, access log, verification).
    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    pub fn stats(&self) -> EngineStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A token that, when cancelled, starts the shutdown (signal handlers
    /// and the console use it).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until something cancels the shutdown token.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
    }

    /// The one shutdown path: stop accepting, end tasks, stop the engine
    /// after its current batch, wait within [`SHUTDOWN_GRACE`].
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("tasks still running after the grace period");
        }
        let _ = self.engine_tx.send(Input::Stop).await;
        if let Some(thread) = self.engine_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        tracing::info!(agency = %self.agency, "box stopped; store flushed");
    }
}
