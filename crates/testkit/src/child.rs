//! A box under test as a child process: the one launcher the testbed
//! (`TestbedOptions::child_binary`), the demo and the benchmark use.
//!
//! A box is started with a [`BoxCommand`] — the production binary
//! (`ifrelay run --config FILE`) or the benchmark binary serving one box
//! (`ifrelay-bench box --config FILE`, see `bench::proc::serve_box`) — and
//! held as a [`BoxProcess`], which gives its pid, whether and how it ended
//! ([`BoxProcess::try_wait`]), an orderly stop ([`BoxProcess::stop`]:
//! SIGTERM, then SIGKILL after a grace), a power cut
//! ([`BoxProcess::kill`]: SIGKILL), and the last lines of its log for
//! error messages.
//!
//! The box counts as started ([`BoxProcess::wait_ready`]) when it logs
//! [`STARTED_LOG`] (after its listeners are bound; needs the `info`
//! level) or prints [`READY_LINE`] on stdout (the benchmark's box). A
//! benchmark box also prints its engine counters on stdout
//! ([`Counters::line`]); they are read here, not logged.
//!
//! Invariants: a child's stdout and stderr are always drained by a reader
//! thread each, so it never blocks on a full pipe; everything it writes,
//! but the protocol lines above, is appended to its log file, flushed
//! whenever the pipe is momentarily empty and complete once the process
//! is reaped. A [`BoxProcess`] that is dropped kills and reaps its child,
//! so a test that panics leaves no box behind; a benchmark box also stops
//! when its stdin closes, so none outlives a crashed benchmark. Signals go
//! only to a child not yet reaped, so its pid cannot have been reused.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The log message of `RunningBox::start` once the box is up (listeners
/// bound, started announced).
pub const STARTED_LOG: &str = "box started";

/// What a benchmark box prints on stdout once started.
pub const READY_LINE: &str = "ready";

/// Log lines kept for error messages.
const TAIL: usize = 12;

/// How often `wait_ready` and `stop` look at the child.
const POLL: Duration = Duration::from_millis(10);

/// How long reaping waits for the reader threads to see the pipes close.
const DRAIN: Duration = Duration::from_secs(2);

/// How a box under test is started.
#[derive(Debug, Clone)]
pub enum BoxCommand {
    /// `<exe> box --config FILE`: the benchmark binary serving one box.
    SelfExec(PathBuf),
    /// `<exe> run --config FILE`: the production `ifrelay` binary.
    Ifrelay(PathBuf),
}

impl BoxCommand {
    /// The executable that is running now, serving boxes with `box`.
    ///
    /// # Errors
    /// When the path of the running executable is unknown.
    pub fn self_exec() -> std::io::Result<Self> {
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
        // A benchmark box stops when its stdin closes (when the benchmark
        // dies); the production box gets none.
        c.stdin(match self {
            BoxCommand::SelfExec(_) => Stdio::piped(),
            BoxCommand::Ifrelay(_) => Stdio::null(),
        });
        c
    }
}

/// Engine counters a benchmark box prints on stdout, one line
/// ([`Counters::line`]) every 200 ms.
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
    /// Index steps between batches, and engine time in them (µs).
    pub index_steps: u64,
    pub indexing_us: u64,
    /// The redo log: entries, their bytes as written and before
    /// compression, the pages their syncs wrote, and durable commits.
    pub log_appends: u64,
    pub log_entry_bytes: u64,
    pub log_raw_bytes: u64,
    pub log_page_bytes: u64,
    pub checkpoints: u64,
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
            index_steps: self.index_steps.saturating_sub(before.index_steps),
            indexing_us: self.indexing_us.saturating_sub(before.indexing_us),
            log_appends: self.log_appends.saturating_sub(before.log_appends),
            log_entry_bytes: self.log_entry_bytes.saturating_sub(before.log_entry_bytes),
            log_raw_bytes: self.log_raw_bytes.saturating_sub(before.log_raw_bytes),
            log_page_bytes: self.log_page_bytes.saturating_sub(before.log_page_bytes),
            checkpoints: self.checkpoints.saturating_sub(before.checkpoints),
        }
    }

    /// Reads a line written by [`Counters::line`]; `None` for any other.
    pub fn parse(line: &str) -> Option<Counters> {
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
                "index_steps" => c.index_steps = v,
                "indexing_us" => c.indexing_us = v,
                "log_appends" => c.log_appends = v,
                "log_entry_bytes" => c.log_entry_bytes = v,
                "log_raw_bytes" => c.log_raw_bytes = v,
                "log_page_bytes" => c.log_page_bytes = v,
                "checkpoints" => c.checkpoints = v,
                _ => {}
            }
        }
        Some(c)
    }

    /// The stdout line a benchmark box prints.
    pub fn line(&self) -> String {
        format!(
            "stats batches={} inputs={} commit_failures={} handling_us={} committing_us={} slow_commits={} index_steps={} indexing_us={} \
             log_appends={} log_entry_bytes={} log_raw_bytes={} log_page_bytes={} checkpoints={}",
            self.batches,
            self.inputs,
            self.commit_failures,
            self.handling_us,
            self.committing_us,
            self.slow_commits,
            self.index_steps,
            self.indexing_us,
            self.log_appends,
            self.log_entry_bytes,
            self.log_raw_bytes,
            self.log_page_bytes,
            self.checkpoints
        )
    }
}

/// Why a box process could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    #[error("cannot open the box log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot tell whether {name} still runs")]
    Wait {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited before it started ({status}); its log {log} ends:\n{tail}")]
    Exited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} did not start within {timeout:?}; its log {log} ends:\n{tail}")]
    NotReady {
        name: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
}

/// How [`BoxProcess::stop`] ended a box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited by itself (after SIGTERM, or before).
    Exited(ExitStatus),
    /// It was still running after the grace and got SIGKILL.
    Killed { after: Duration },
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Exited(status) => write!(f, "{status}"),
            Stopped::Killed { after } => write!(f, "killed after {after:?}"),
        }
    }
}

/// What the reader threads learned from a child, and its log file.
struct Seen {
    log: BufWriter<File>,
    ready_at: Option<Instant>,
    counters: Option<Counters>,
    log_lines: u64,
    tail: VecDeque<String>,
}

impl Seen {
    fn log_line(&mut self, line: String) {
        // A full disk loses log lines, not the box under test.
        let _ = writeln!(self.log, "{line}");
        self.log_lines += 1;
        if self.ready_at.is_none() && line.contains(STARTED_LOG) {
            self.ready_at = Some(Instant::now());
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

fn lock(m: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which pipe a reader thread drains.
#[derive(Clone, Copy)]
enum Pipe {
    Stdout,
    Stderr,
}

/// Reads `pipe` line by line until the child closes it: protocol lines
/// on stdout are taken in, everything else goes to the log, which is
/// flushed whenever nothing more is waiting in the pipe's buffer.
fn drain(pipe: impl Read + Send + 'static, which: Pipe, seen: Arc<Mutex<Seen>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw).trim_end().to_owned();
            let mut st = lock(&seen);
            match which {
                Pipe::Stdout if line == READY_LINE => {
                    st.ready_at.get_or_insert_with(Instant::now);
                }
                Pipe::Stdout if line.starts_with("stats ") => {
                    if let Some(c) = Counters::parse(&line) {
                        st.counters = Some(c);
                    }
                }
                Pipe::Stdout | Pipe::Stderr => st.log_line(line),
            }
            if reader.buffer().is_empty() {
                let _ = st.log.flush();
            }
        }
        let _ = lock(&seen).log.flush();
    })
}

/// One box running as a child process. Dropping it kills and reaps the
/// process.
pub struct BoxProcess {
    name: String,
    child: Child,
    /// Held open: a benchmark box stops when it closes.
    stdin: Option<ChildStdin>,
    spawned: Instant,
    log: PathBuf,
    seen: Arc<Mutex<Seen>>,
    readers: Vec<JoinHandle<()>>,
    /// Set once the process has been reaped.
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for BoxProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl BoxProcess {
    /// Starts the box of `config` with `cmd`, its output appended to
    /// `log`. `rust_log` sets the child's `RUST_LOG` (inherited when
    /// `None`); readiness needs `info` or the benchmark box's
    /// [`READY_LINE`]. Does not wait for the box to start: see
    /// [`BoxProcess::wait_ready`].
    ///
    /// # Errors
    /// When the log cannot be opened or the process not started.
    pub fn spawn(
        name: &str,
        cmd: &BoxCommand,
        config: &Path,
        log: &Path,
        rust_log: Option<&str>,
    ) -> Result<BoxProcess, ChildError> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| ChildError::Log {
                path: log.to_owned(),
                source,
            })?;
        let mut command = cmd.command(config);
        command
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let mut child = command.spawn().map_err(|source| ChildError::Spawn {
            command: cmd.describe(),
            source,
        })?;
        let spawned = Instant::now();
        let seen = Arc::new(Mutex::new(Seen {
            log: BufWriter::new(log_file),
            ready_at: None,
            counters: None,
            log_lines: 0,
            tail: VecDeque::new(),
        }));
        let mut readers = Vec::new();
        if let Some(stderr) = child.stderr.take() {
            readers.push(drain(stderr, Pipe::Stderr, Arc::clone(&seen)));
        }
        if let Some(stdout) = child.stdout.take() {
            readers.push(drain(stdout, Pipe::Stdout, Arc::clone(&seen)));
        }
        let stdin = child.stdin.take();
        Ok(BoxProcess {
            name: name.to_owned(),
            child,
            stdin,
            spawned,
            log: log.to_owned(),
            seen,
            readers,
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id. It names this box only until the process has been
    /// reaped ([`BoxProcess::try_wait`] returned a status, or after
    /// [`BoxProcess::stop`] or [`BoxProcess::kill`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file the box's output is appended to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// When the process was started.
    pub fn spawned(&self) -> Instant {
        self.spawned
    }

    /// Time from spawning to the box reporting it started, once it has.
    pub fn ready_after(&self) -> Option<Duration> {
        lock(&self.seen)
            .ready_at
            .map(|t| t.saturating_duration_since(self.spawned))
    }

    /// The latest engine counters (benchmark boxes only).
    pub fn counters(&self) -> Option<Counters> {
        lock(&self.seen).counters
    }

    /// Log lines written so far (all of them once the box is reaped).
    pub fn log_lines(&self) -> u64 {
        lock(&self.seen).log_lines
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        lock(&self.seen)
            .tail
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How the process ended, once it has been reaped (without looking
    /// again: see [`BoxProcess::try_wait`]).
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Without blocking: `Some(status)` once the process has ended (it is
    /// then reaped), `None` while it runs.
    ///
    /// # Errors
    /// When the process cannot be waited for.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            if let Some(status) = self.child.try_wait()? {
                self.record_exit(status);
            }
        }
        Ok(self.status)
    }

    /// Waits until the box reports it started; returns the time since
    /// spawning.
    ///
    /// # Errors
    /// When it exits first or does not start within `timeout`; the error
    /// carries the end of its log.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, ChildError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self.ready_after() {
                return Ok(d);
            }
            let exited = self.try_wait().map_err(|source| ChildError::Wait {
                name: self.name.clone(),
                source,
            })?;
            if let Some(status) = exited {
                return Err(ChildError::Exited {
                    name: self.name.clone(),
                    status,
                    log: self.log.clone(),
                    tail: self.log_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(ChildError::NotReady {
                    name: self.name.clone(),
                    timeout,
                    log: self.log.clone(),
                    tail: self.log_tail(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The orderly stop: SIGTERM (the box's one shutdown path) and, for a
    /// benchmark box, stdin closed; waits up to `grace`, then kills it.
    /// Returns how it ended; the process is reaped either way.
    pub async fn stop(&mut self, grace: Duration) -> Stopped {
        if let Ok(Some(status)) = self.try_wait() {
            return Stopped::Exited(status);
        }
        if let Ok(pid) = i32::try_from(self.pid()) {
            // Not reaped yet, so the pid is still this child's.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        self.stdin = None;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.try_wait() {
                return Stopped::Exited(status);
            }
            tokio::time::sleep(POLL).await;
        }
        match self.kill() {
            // It ended by itself in the last moment.
            Ok(status) if status.signal() != Some(nix::sys::signal::Signal::SIGKILL as i32) => {
                Stopped::Exited(status)
            }
            _ => Stopped::Killed { after: grace },
        }
    }

    /// Kills the process at once (SIGKILL: no shutdown path, no flush — a
    /// power cut as far as its store can tell) and reaps it. Returns how
    /// it ended; a process already reaped is left alone.
    ///
    /// # Errors
    /// When the process cannot be signalled or waited for.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        // SIGKILL, unless it has already ended (then this only reaps).
        self.child.kill()?;
        let status = self.child.wait()?;
        self.record_exit(status);
        Ok(status)
    }

    /// Records the exit status and lets the reader threads finish: the
    /// child's end of the pipes is closed now, so they reach their end
    /// at once and the log is complete.
    fn record_exit(&mut self, status: ExitStatus) {
        self.status = Some(status);
        self.stdin = None;
        let deadline = Instant::now() + DRAIN;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        for reader in std::mem::take(&mut self.readers) {
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }
}

impl Drop for BoxProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in box: `<script> run|box --config FILE`, doing what FILE
    /// says.
    const FAKE_BOX: &str = r#"#!/bin/sh
mode=$(cat "$3")
case "$mode" in
early) echo "invalid configuration: no [box] section" >&2; exit 3 ;;
stubborn) trap '' TERM ;;
*) trap 'echo "stopping" >&2; exit 0' TERM ;;
esac
if [ "$mode" = bench ]; then
  echo ready
  echo "stats batches=2 inputs=5 commit_failures=0 handling_us=1 committing_us=2 slow_commits=0"
else
  echo "a line on stdout"
  echo "INFO box started agency=131016" >&2
fi
while :; do sleep 0.05; done
"#;

    struct Fake {
        dir: tempfile::TempDir,
        script: PathBuf,
    }

    impl Fake {
        fn new() -> Fake {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().expect("temp dir");
            let script = dir.path().join("fake-box");
            std::fs::write(&script, FAKE_BOX).expect("script");
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            Fake { dir, script }
        }

        fn spawn(&self, mode: &str, cmd: fn(PathBuf) -> BoxCommand) -> BoxProcess {
            let config = self.dir.path().join(format!("{mode}.toml"));
            std::fs::write(&config, mode).expect("config");
            let log = self.dir.path().join(format!("{mode}.log"));
            // Another test thread forking while the script was open for
            // writing makes exec fail with ETXTBSY for a moment.
            for _ in 0..50 {
                match BoxProcess::spawn(mode, &cmd(self.script.clone()), &config, &log, None) {
                    Err(ChildError::Spawn { source, .. })
                        if source.kind() == std::io::ErrorKind::ExecutableFileBusy =>
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    other => return other.expect("fake box starts"),
                }
            }
            panic!("the fake box stays busy");
        }
    }

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn a_box_is_ready_when_it_logs_it_and_stops_on_sigterm() {
        let fake = Fake::new();
        let mut b = fake.spawn("normal", BoxCommand::Ifrelay);
        b.wait_ready(Duration::from_secs(10)).await.expect("ready");
        assert_eq!(b.try_wait().expect("try_wait"), None);
        assert_eq!(b.counters(), None);
        let how = b.stop(Duration::from_secs(10)).await;
        assert!(matches!(how, Stopped::Exited(s) if s.success()), "{how}");
        assert!(!alive(b.pid()));
        assert_eq!(b.log_lines(), 3);
        let log = std::fs::read_to_string(b.log_path()).expect("log");
        for line in ["a line on stdout", "INFO box started", "stopping"] {
            assert!(log.contains(line), "{log}");
        }
        assert!(b.log_tail().ends_with("stopping"));
    }

    #[tokio::test]
    async fn kill_is_sigkill_and_stop_kills_after_the_grace() {
        let fake = Fake::new();
        let mut b = fake.spawn("normal", BoxCommand::Ifrelay);
        b.wait_ready(Duration::from_secs(10)).await.expect("ready");
        let status = b.kill().expect("kill");
        assert_eq!(
            status.signal(),
            Some(nix::sys::signal::Signal::SIGKILL as i32)
        );
        assert_eq!(b.try_wait().expect("try_wait"), Some(status));
        assert!(!alive(b.pid()));

        let mut b = fake.spawn("stubborn", BoxCommand::Ifrelay);
        b.wait_ready(Duration::from_secs(10)).await.expect("ready");
        let grace = Duration::from_millis(200);
        assert_eq!(b.stop(grace).await, Stopped::Killed { after: grace });
        assert!(!alive(b.pid()));
    }

    #[tokio::test]
    async fn a_dropped_box_is_killed_and_reaped() {
        let fake = Fake::new();
        let mut b = fake.spawn("normal", BoxCommand::Ifrelay);
        b.wait_ready(Duration::from_secs(10)).await.expect("ready");
        let pid = b.pid();
        assert!(alive(pid));
        drop(b);
        assert!(
            !alive(pid),
            "a dropped box leaves no process, not even a zombie"
        );
    }

    #[tokio::test]
    async fn a_box_that_exits_while_starting_says_why() {
        let fake = Fake::new();
        let mut b = fake.spawn("early", BoxCommand::Ifrelay);
        let err = b
            .wait_ready(Duration::from_secs(10))
            .await
            .expect_err("not ready");
        assert!(
            matches!(&err, ChildError::Exited { status, .. } if status.code() == Some(3)),
            "{err}"
        );
        assert!(err.to_string().contains("no [box] section"), "{err}");
    }

    #[tokio::test]
    async fn a_benchmark_box_reports_ready_and_counters_on_stdout() {
        let fake = Fake::new();
        let mut b = fake.spawn("bench", BoxCommand::SelfExec);
        b.wait_ready(Duration::from_secs(10)).await.expect("ready");
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.counters().is_none() && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        let c = b.counters().expect("counters");
        assert_eq!((c.batches, c.inputs, c.committing_us), (2, 5, 2));
        b.kill().expect("kill");
        // Protocol lines are read, not logged.
        assert_eq!(b.log_lines(), 0);
    }

    #[test]
    fn counters_round_trip_through_their_line() {
        let c = Counters {
            batches: 7,
            inputs: 91,
            commit_failures: 1,
            handling_us: 300,
            committing_us: 900,
            slow_commits: 3,
            index_steps: 4,
            indexing_us: 50,
            log_appends: 6,
            log_entry_bytes: 6000,
            log_raw_bytes: 60000,
            log_page_bytes: 32768,
            checkpoints: 2,
        };
        assert_eq!(Counters::parse(&c.line()), Some(c));
        assert_eq!(Counters::parse(READY_LINE), None);
        let d = c.since(&Counters {
            batches: 2,
            inputs: 1,
            commit_failures: 0,
            handling_us: 100,
            committing_us: 400,
            slow_commits: 1,
            index_steps: 1,
            indexing_us: 20,
            log_appends: 1,
            log_entry_bytes: 1000,
            log_raw_bytes: 10000,
            log_page_bytes: 8192,
            checkpoints: 1,
        });
        assert_eq!((d.batches, d.inputs), (5, 90));
        assert_eq!((d.handling_us, d.committing_us), (200, 500));
        assert_eq!(d.slow_commits, 2);
        assert_eq!((d.index_steps, d.indexing_us), (3, 30));
        assert_eq!(
            (d.log_appends, d.log_entry_bytes, d.log_raw_bytes),
            (5, 5000, 50000)
        );
        assert_eq!((d.log_page_bytes, d.checkpoints), (24576, 1));
    }
}
