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
