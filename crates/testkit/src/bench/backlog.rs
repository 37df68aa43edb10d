//! Recovery with a large backlog: a box restarts on a store whose outbox
//! holds `entries` frames for the core, and the clock runs from starting
//! its process until the first of those frames reaches the stand-in core
//! (a [`Sink`]).
//!
//! The store is filled through the store's own API (`Store::begin`,
//! `Batch::push_outbox`, `Batch::commit`, durable commits of
//! [`FILL_PER_COMMIT`] entries), with `query_complete` frames of the box's
//! own encoding, as if the core had been unreachable while the box kept
//! accepting. The box is killed (SIGKILL) once measured: its store is
//! thrown away.

use std::path::Path;
use std::time::{Duration, Instant};

use ifrelay_proto::{Body, Frame, MessageId, Party, Serial, SerialNotice};
use ifrelay_store::Store;

use super::bare::Sink;
use super::network::reserve_ports;
use super::proc::peak_rss_kib;
use super::BenchError;
use crate::child::{BoxCommand, BoxProcess};
use crate::testbed::{agencies, write_box_config, Pki};
use ifrelay::config::Config;
use ifrelay::net::now_millis;

/// Entries per write transaction while filling.
pub const FILL_PER_COMMIT: u64 = 50_000;

/// Message ids of the backlog frames start with this.
const ID_PREFIX: &str = "is-131016-backlog-";

/// How the restart with a backlog went.
#[derive(Debug, Clone, Default)]
pub struct BacklogResult {
    pub entries: u64,
    /// Filling the store (not part of the measurement).
    pub fill: Duration,
    pub file_mib: f64,
    /// From starting the process to "box started" (store open, boot,
    /// engine state and outbox loaded, listeners bound).
    pub started_after: Option<Duration>,
    /// From starting the process to the first backlog frame at the core.
    pub resumed_after: Option<Duration>,
    /// Backlog frames the core received in [`Self::rate_window`] after the
    /// first one.
    pub resent_in_window: u64,
    pub rate_window: Duration,
    /// Peak resident set of the box process.
    pub peak_rss_kib: Option<u64>,
    /// Log lines the box wrote until it was killed.
    pub log_lines: u64,
    /// Set when the box did not resume within the time allowed.
    pub problem: Option<String>,
}

/// Fills a store with `entries` outbox entries for the core, restarts a
/// box on it and measures; waits at most `wait` for the first resent
/// frame.
///
/// # Errors
/// When the PKI, store, sinks or process cannot be set up.
pub async fn run(
    dir: &Path,
    cmd: &BoxCommand,
    entries: u64,
    wait: Duration,
    rate_window: Duration,
) -> Result<BacklogResult, BenchError> {
    std::fs::create_dir_all(dir)?;
    let dir = &std::path::absolute(dir)?;
    let pki = Pki::new(dir)?;
    let (a, _) = agencies();
    let core = Sink::start(
        Party::core(),
        &pki.material(&Party::core())?,
        Some(ID_PREFIX.to_owned()),
    )
    .await?;
    let ims = Sink::start(
        Party::ims(a.clone()),
        &pki.material(&Party::ims(a.clone()))?,
        None,
    )
    .await?;
    let ports = reserve_ports()?;
    let config_path = write_box_config(dir, &pki, &a, ports, core.local_addr(), ims.local_addr())?;
    let config = Config::load(&config_path)?;

    let t = Instant::now();
    fill(&config.store.path, entries)?;
    let mut result = BacklogResult {
        entries,
        fill: t.elapsed(),
        file_mib: std::fs::metadata(&config.store.path)
            .map(|m| m.len() as f64 / (1024.0 * 1024.0))
            .unwrap_or(0.0),
        rate_window,
        ..BacklogResult::default()
    };

    let log = dir.join("box-backlog.log");
    let mut child = BoxProcess::spawn("box with backlog", cmd, &config_path, &log, None)?;
    let deadline = child.spawned() + wait;
    loop {
        if let Some(at) = core.first_watched() {
            result.resumed_after = Some(at.saturating_duration_since(child.spawned()));
            break;
        }
        if let Some(status) = child.try_wait()? {
            result.problem = Some(format!(
                "the box exited ({status}) before resending; its log ends:\n{}",
                child.log_tail()
            ));
            break;
        }
        if Instant::now() >= deadline {
            result.problem = Some(format!(
                "no backlog frame reached the core within {wait:?} of starting the box"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if result.resumed_after.is_some() {
        let before = core.watched();
        tokio::time::sleep(rate_window).await;
        result.resent_in_window = core.watched().saturating_sub(before);
    }
    result.started_after = child.ready_after();
    result.peak_rss_kib = peak_rss_kib(&child);
    // Reaping lets the log reader see the last lines before they are
    // counted.
    child.kill()?;
    result.log_lines = child.log_lines();
    drop(child);
    core.shutdown().await;
    ims.shutdown().await;
    let _ = std::fs::remove_file(&config.store.path);
    Ok(result)
}

/// Writes `entries` outbox entries for the core into the store at `path`,
/// [`FILL_PER_COMMIT`] per durable commit.
fn fill(path: &Path, entries: u64) -> Result<(), BenchError> {
    let mut store = Store::open(path, 64 << 20)?;
    let (a, _) = agencies();
    let from = Party::is(a.clone());
    let at = now_millis();
    let mut n = 0u64;
    while n < entries {
        let mut batch = store.begin()?;
        let end = (n + FILL_PER_COMMIT).min(entries);
        for i in n..end {
            let serial = Serial::new(&format!("{a}-20260101-1790000000-{i}"))?;
            let frame = Frame::new(
                MessageId::new(format!("{ID_PREFIX}{i}"))?,
                from.clone(),
                at,
                Body::QueryComplete(SerialNotice { serial }),
            );
            batch.push_outbox("core", &frame.encode())?;
        }
        batch.commit()?;
        n = end;
    }
    Ok(())
}
