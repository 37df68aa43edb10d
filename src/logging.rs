//! Where the box's log goes: the systemd journal with structured fields
//! when the service manager connected stderr to it (`JOURNAL_STREAM`, as
//! systemd documents), otherwise stderr — with ANSI colours only when
//! stderr is a terminal, so log files and pipes carry plain text.
//! `RUST_LOG` sets the filter (default `info`).

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(journal.with_syslog_identifier("ifrelay".to_owned()))
                    .try_init();
                return;
            }
            Err(e) => eprintln!("ifrelay: cannot reach the journal ({e}); logging to stderr"),
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Whether stderr is the journal stream systemd names in `JOURNAL_STREAM`
/// (`<device>:<inode>`): only then is the journal the right place, not
/// when the variable was merely inherited by a child whose stderr was
/// redirected.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// An error and its causes on one line, `what: why: why`, for log fields:
/// error messages never embed their cause (it is returned by `source()`
/// instead, so the binary prints each cause once), and a log line must
/// still show all of them.
pub struct Causes<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the store")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_are_joined_once_each() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(
            Causes(&e).to_string(),
            "cannot open the store: disk on fire"
        );
    }
}
