//! Arbitrary UTF-8 through `ConfigFile::parse` then `resolve` (against a temporary base directory): never a panic, and a file or configuration written back as TOML reads back unchanged.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ifrelay::config::{Config, ConfigFile};
use libfuzzer_sys::fuzz_target;

/// A temporary directory to resolve relative paths against; `resolve`
/// touches no file, so it only has to be a directory name.
fn base_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("ifrelay-fuzz-config");
        std::fs::create_dir_all(&dir).expect("temporary directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match ConfigFile::parse(text) {
        Ok(file) => file,
        Err(e) => {
            // The message is printed to staff: formatting it must not fail.
            let _ = (e.to_string(), e.field());
            return;
        }
    };
    if let Ok(written) = file.to_toml_string() {
        let again = ConfigFile::parse(&written).expect("a written configuration file parses");
        assert_eq!(again, file, "writing the file changed it:\n{written}");
    }
    let config = match file.resolve(base_dir()) {
        Ok(config) => config,
        Err(e) => {
            let _ = (e.to_string(), e.field());
            return;
        }
    };
    // "The configuration as TOML the box reads back unchanged."
    let written = config
        .to_toml_string()
        .expect("a checked configuration is writable");
    let again = Config::parse(&written, base_dir()).expect("a written configuration reads back");
    assert_eq!(
        again, config,
        "writing the configuration changed it:\n{written}"
    );
});
