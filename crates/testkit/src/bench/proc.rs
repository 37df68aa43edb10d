//! Boxes under test as child processes, so that their memory and CPU are
//! their own and not the simulators'.
//!
//! Two ways to start one ([`BoxCommand`]): the benchmark binary itself
//! (`ifrelay-bench box --config FILE`, [`serve_box`]), which runs exactly
//! what `ifrelay run` runs — the configuration loaded by `Config::load`,
//! `RunningBox::start` on a multi-threaded tokio runtime — and in addition
//! prints `ready` once started and the engine's counters every 200 ms on
//! stdout; or the production `ifrelay run --config FILE`, which prints
//! nothing the benchmark can read but its log, so the engine counters
//! (commits, inputs) are then not available.
//!
//! Invariants: a child's stdout and stderr are always drained (its log goes
//! to a file), so it never blocks on a full pipe; a [`BoxProcess`] that is
//! dropped kills and reaps its child; a self-executed box also stops when
//! its stdin closes, so no box outlives a crashed benchmark.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::machine::{cpu_time, memory_kib};
use super::BenchError;
use ifrelay::config::Config;
use ifrelay::supervisor::RunningBox;

/// How a box under test is started.
#[derive(Debug, Clone)]
pub enum BoxCommand {
    /// `<exe> box --config FILE`: the benchmark binary serving one box.
    SelfExec(PathBuf),
    /// `<exe> run --config FILE`: the production `ifrelay` binary.
    Ifrelay(PathBuf),
}

impl BoxCommand {
    /// The benchmark binary that is running now.
    ///
    /// # Errors
    /// When the path of the running executable is unknown.
    pub fn self_exec() -> Result<Self, BenchError> {
        Ok(BoxCommand::SelfExec(std::env::current_exe()?))
    }

    pub fn describe(&self) -> String {
        match self {
            BoxCommand::SelfExec(p) => format!(
                "{} box --config FILE (RunningBox::start, as `ifrelay run`)",
                p.display()
            ),
            BoxCommand::Ifrelay(p) => format!("{} run --config FILE", p.display()),
        }
    }

    fn command(&self, config: &Path) -> Command {
        let (exe, verb) = match self {
            BoxCommand::SelfExec(p) => (p, "box"),
            BoxCommand::Ifrelay(p) => (p, "run"),
        };
        let mut c = Command::new(exe);
        c.arg(verb).arg("--config").arg(config);
        c
    }
}

/// Engine counters a self-executed box reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Commits (one redb write transaction and fsync each).
    pub batches: u64,
    /// Inputs handled in those commits: frames received and next-hop
    /// replies recorded.
    pub inputs: u64,
    pub commit_failures: u64,
    /// Engine time handling inputs, and in commits (µs).
    pub handling_us: u64,
    pub committing_us: u64,
    /// Commits of 20 ms or more (`EngineStats::slow_commits`).
    pub slow_commits: u64,
}

impl Counters {
    /// `self - before`, field by field.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            batches: self.batches.saturating_sub(before.batches),
            inputs: self.inputs.saturating_sub(before.inputs),
            commit_failures: self.commit_failures.saturating_sub(before.commit_failures),
            handling_us: self.handling_us.saturating_sub(before.handling_us),
            committing_us: self.committing_us.saturating_sub(before.committing_us),
            slow_commits: self.slow_commits.saturating_sub(before.slow_commits),
        }
    }

    fn parse(line: &str) -> Option<Counters> {
        let rest = line.strip_prefix("stats ")?;
        let mut c = Counters::default();
        for pair in rest.split_whitespace() {
            let (k, v) = pair.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "batches" => c.batches = v,
                "inputs" => c.inputs = v,
                "commit_failures" => c.commit_failures = v,
                "handling_us" => c.handling_us = v,
                "committing_us" => c.committing_us = v,
                "slow_commits" => c.slow_commits = v,
                _ => {}
            }
        }
        Some(c)
    }

    fn line(&self) -> String {
        format!(
            "stats batches={} inputs={} commit_failures={} handling_us={} committing_us={} slow_commits={}",
            self.batches,
            self.inputs,
            self.commit_failures,
            self.handling_us,
            self.committing_us,
            self.slow_commits
        )
    }
}

/// What the reader threads learned from a child.
#[derive(Debug, Default)]
struct Seen {
    ready_at: Option<Instant>,
    counters: Option<Counters>,
    log_lines: u64,
    tail: VecDeque<String>,
}

const TAIL: usize = 12;

/// One box running as a child process.
pub struct BoxProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    spawned: Instant,
    seen: Arc<Mutex<Seen>>,
    exited: Option<String>,
}

impl std::fmt::Debug for BoxProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

fn seen(m: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BoxProcess {
    /// Starts the box of `config` with `cmd`; its log (stderr) goes to
    /// `log`.
    ///
    /// # Errors
    /// When the log cannot be created or the process not started.
    pub fn spawn(
        name: &str,
        cmd: &BoxCommand,
        config: &Path,
        log: &Path,
    ) -> Result<BoxProcess, BenchError> {
        let mut log_file = std::io::BufWriter::new(std::fs::File::create(log)?);
        let mut child = cmd
            .command(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cmd.describe()))?;
        let spawned = Instant::now();
        let seen_state = Arc::new(Mutex::new(Seen::default()));
        if let Some(stderr) = child.stderr.take() {
            let s = Arc::clone(&seen_state);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log_file, "{line}");
                    let mut st = seen(&s);
                    st.log_lines += 1;
                    if st.ready_at.is_none() && line.contains("box started") {
                        st.ready_at = Some(Instant::now());
                    }
                    if st.tail.len() == TAIL {
                        st.tail.pop_front();
                    }
                    st.tail.push_back(line);
                }
                let _ = log_file.flush();
            });
        }
        if let Some(stdout) = child.stdout.take() {
            let s = Arc::clone(&seen_state);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut st = seen(&s);
                    if line == "ready" {
                        st.ready_at.get_or_insert_with(Instant::now);
                    } else if let Some(c) = Counters::parse(&line) {
                        st.counters = Some(c);
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(BoxProcess {
            name: name.to_owned(),
            child,
            stdin,
            spawned,
            seen: seen_state,
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the process was started.
    pub fn spawned(&self) -> Instant {
        self.spawned
    }

    /// Time from spawning to "box started", once it is known.
    pub fn ready_after(&self) -> Option<Duration> {
        seen(&self.seen)
            .ready_at
            .map(|t| t.saturating_duration_since(self.spawned))
    }

    /// The latest engine counters (self-executed boxes only).
    pub fn counters(&self) -> Option<Counters> {
        seen(&self.seen).counters
    }

    /// Log lines written so far.
    pub fn log_lines(&self) -> u64 {
        seen(&self.seen).log_lines
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        seen(&self.seen)
            .tail
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `Some(status)` once the process has ended.
    pub fn exited(&mut self) -> Option<String> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status.to_string());
            }
        }
        self.exited.clone()
    }

    /// Waits until the box reports it started.
    ///
    /// # Errors
    /// When it exits first or does not start within `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self.ready_after() {
                return Ok(d);
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited before it started ({status}); its log ends:\n{}",
                    self.name,
                    self.log_tail()
                )
                .into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not start within {timeout:?}; its log ends:\n{}",
                    self.name,
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Peak resident set (`VmHWM`) in KiB, while the process lives.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        memory_kib(self.pid()).map(|(hwm, _)| hwm)
    }

    /// CPU time used so far, while the process lives.
    pub fn cpu(&self) -> Option<Duration> {
        cpu_time(self.pid())
    }

    /// Asks the box to stop (SIGTERM, and stdin closed) and waits up to
    /// `grace`; then kills it. Returns how it ended.
    pub async fn stop(mut self, grace: Duration) -> String {
        if let Some(status) = self.exited() {
            return status;
        }
        let pid = self.pid().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.stdin = None;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill_now();
        format!("killed after {grace:?}")
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill_now(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exited = Some(status.to_string());
            }
        }
    }
}

impl Drop for BoxProcess {
    fn drop(&mut self) {
        self.kill_now();
    }
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
        let _ = writeln!(out, "ready").and_then(|()| out.flush());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_through_their_line() {
        let c = Counters {
            batches: 7,
            inputs: 91,
            commit_failures: 1,
            handling_us: 300,
            committing_us: 900,
            slow_commits: 3,
        };
        assert_eq!(Counters::parse(&c.line()), Some(c));
        assert_eq!(Counters::parse("ready"), None);
        let d = c.since(&Counters {
            batches: 2,
            inputs: 1,
            commit_failures: 0,
            handling_us: 100,
            committing_us: 400,
            slow_commits: 1,
        });
        assert_eq!((d.batches, d.inputs), (5, 90));
        assert_eq!((d.handling_us, d.committing_us), (200, 500));
        assert_eq!(d.slow_commits, 2);
    }
}
