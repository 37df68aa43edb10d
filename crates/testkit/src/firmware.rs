//! Where the firmware binary is, for tests, the demo and the benchmark
//! that run boxes as real `ifrelay run` processes.
//!
//! Cargo puts every binary of the workspace in one folder
//! (`target/<profile>/`); test executables sit one level down in `deps/`.
//! So the firmware is found beside the running executable or its parent,
//! unless `IFRELAY_BIN` names it. The Makefile builds it before the tests,
//! the demo and the benchmark.

use std::path::{Path, PathBuf};

/// The environment variable that overrides where the firmware binary is.
pub const BINARY_ENV: &str = "IFRELAY_BIN";

/// Why the firmware binary was not found.
#[derive(Debug, thiserror::Error)]
#[error(
    "the firmware binary `ifrelay` was not found (looked in {looked}); build it first with \
     `cargo build -p ifrelay` (add --release for release builds) or name it in {BINARY_ENV}"
)]
pub struct NotFound {
    looked: String,
}

/// The `ifrelay` binary built beside the running executable, or the one
/// `IFRELAY_BIN` names.
///
/// # Errors
/// [`NotFound`] when neither exists.
pub fn binary() -> Result<PathBuf, NotFound> {
    if let Some(path) = std::env::var_os(BINARY_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(NotFound {
                looked: path.display().to_string(),
            })
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name()))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| NotFound {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn name() -> &'static Path {
    Path::new(if cfg!(windows) {
        "ifrelay.exe"
    } else {
        "ifrelay"
    })
}
