//! The benchmark's side of its boxes under test, which run as child
//! processes ([`crate::child::BoxProcess`]) so that their memory and CPU
//! are their own and not the simulators'.
//!
//! Two ways to start one ([`BoxCommand`]): the benchmark binary itself
//! (`ifrelay-bench box --config FILE`, [`serve_box`]), which runs exactly
//! what `ifrelay run` runs — the configuration loaded by `Config::load`,
//! `RunningBox::start` on a multi-threaded tokio runtime — and in addition
//! prints `ready` once started and the engine's counters ([`Counters`])
//! every 200 ms on stdout; or the production `ifrelay run --config FILE`,
//! which prints nothing the benchmark can read but its log, so the engine
//! counters (commits, inputs) are then not available. [`peak_rss_kib`]
//! and [`cpu`] read a box's usage from `/proc` while it runs.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use super::machine::{cpu_time, memory_kib};
use super::BenchError;
// Where the benchmark binary and reports have always found them.
pub use crate::child::{BoxCommand, Counters};
use crate::child::{BoxProcess, READY_LINE};
use ifrelay::config::Config;
use ifrelay::supervisor::RunningBox;

/// Peak resident set (`VmHWM`) of box `b` in KiB, while it runs.
pub fn peak_rss_kib(b: &BoxProcess) -> Option<u64> {
    // Once reaped, its pid may name another process.
    if b.status().is_some() {
        return None;
    }
    memory_kib(b.pid()).map(|(hwm, _)| hwm)
}

/// Peak resident set (`VmHWM`) of this process in KiB.
pub fn own_peak_rss_kib() -> Option<u64> {
    memory_kib(std::process::id()).map(|(hwm, _)| hwm)
}

/// CPU time box `b` used so far, while it runs.
pub fn cpu(b: &BoxProcess) -> Option<Duration> {
    if b.status().is_some() {
        return None;
    }
    cpu_time(b.pid())
}

/// Bytes box `b` sent to the block layer so far (`/proc/<pid>/io`
/// `write_bytes`: its files' pages, not the file system's journal),
/// while it runs.
pub fn write_bytes(b: &BoxProcess) -> Option<u64> {
    if b.status().is_some() {
        return None;
    }
    let io = std::fs::read_to_string(format!("/proc/{}/io", b.pid())).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `ifrelay-bench box --config FILE`: runs one box as `ifrelay run` does
/// until SIGTERM, SIGINT or the end of stdin, printing `ready` once it is
/// started and its engine counters every 200 ms on stdout.
///
/// # Errors
/// When the configuration is invalid or the box cannot start.
pub fn serve_box(config_path: &Path) -> Result<(), BenchError> {
    let config = Config::load(config_path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ifrelay")
        .build()?;
    rt.block_on(async move {
        let running = RunningBox::start(&config).await?;
        let token = running.shutdown_token();
        let mut out = std::io::stdout();
        // Write errors (the benchmark went away) are ignored: stdin's end
        // stops the box then.
        let _ = writeln!(out, "{READY_LINE}").and_then(|()| out.flush());
        let on_eof = token.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            on_eof.cancel();
        });
        let on_signal = token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            on_signal.cancel();
        });
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = tick.tick() => {
                    let s = running.stats();
                    let c = Counters {
                        batches: s.batches,
                        inputs: s.inputs,
                        commit_failures: s.commit_failures,
                        handling_us: s.handling_us,
                        committing_us: s.committing_us,
                        slow_commits: s.slow_commits,
                        index_steps: s.index_steps,
                        indexing_us: s.indexing_us,
                        log_appends: s.log.appends,
                        log_entry_bytes: s.log.entry_bytes,
                        log_raw_bytes: s.log.raw_bytes,
                        log_page_bytes: s.log.page_bytes,
                        checkpoints: s.log.checkpoints,
                    };
                    let _ = writeln!(out, "{}", c.line()).and_then(|()| out.flush());
                }
            }
        }
        running.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
