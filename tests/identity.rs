//! The box's own signing key through the real binary: `ifrelay identity`
//! on a fresh box creates it (mode 0400 in a 0700 folder) and prints its
//! public half; the key survives restarts of `run` and `identity`; a key
//! file open to group or others, or one that is not a key, is refused
//! with exit 77 by both and left as it is; a folder that cannot be made
//! exits 74; the private key never appears in anything printed or logged.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};

mod common;
use common::Site;

const KEY_FILE: &str = "box-signing-key.p8";

fn ifrelay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ifrelay"))
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn identity(config: &Path) -> Output {
    ifrelay(&["identity", "--config", &config.to_string_lossy()])
}

/// The value of the `label: value` line of `identity`'s output.
fn field<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"))
}

/// A site with its store in `store/`, not created yet.
struct Fresh {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Fresh {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Site::new(dir.path()).config("127.0.0.1:0", "store/ifrelay.redb");
        Fresh { dir, config }
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn key_file(&self) -> PathBuf {
        self.store_dir().join(KEY_FILE)
    }
}

/// Runs the box until it logs `box started`, then stops it with SIGTERM;
/// returns its exit code and its log. A box that exits by itself (a
/// refused start) is returned as it ended.
fn run_briefly(config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ifrelay"))
        .args(["run", "--config", &config.to_string_lossy()])
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match lines_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let started = line.contains("box started");
                log.push_str(&line);
                log.push('\n');
                if started {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().expect("wait");
    let _ = reader.join();
    log.extend(lines_rx.try_iter().map(|l| l + "\n"));
    (status.code(), log)
}

/// Fails if `printed` holds the private key of `key_file` in any form a
/// slip could print it: raw, hex, base64, or the whole file as base64.
fn assert_private_key_absent(key_file: &Path, printed: &[u8]) {
    let pkcs8 = std::fs::read(key_file).expect("key file");
    let seed = &pkcs8[16..48];
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = base64::engine::general_purpose::STANDARD;
    let printed_text = text(printed).to_lowercase();
    for form in [hex, b64.encode(seed), b64.encode(&pkcs8)] {
        assert!(
            !printed_text.contains(&form.to_lowercase()),
            "the private key is printed"
        );
    }
    assert!(
        !printed.windows(seed.len()).any(|w| w == seed),
        "the private key's bytes are printed"
    );
}

#[test]
fn identity_on_a_fresh_box_creates_a_0400_key_in_a_0700_folder_and_prints_it() {
    let site = Fresh::new();
    let out = identity(&site.config);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("created the box's signing key"), "{stderr}");

    let folder_mode = std::fs::metadata(site.store_dir()).expect("folder");
    assert_eq!(folder_mode.permissions().mode() & 0o777, 0o700);
    let key_mode = std::fs::metadata(site.key_file()).expect("key file");
    assert_eq!(key_mode.permissions().mode() & 0o777, 0o400);

    assert_eq!(field(&stdout, "party"), "is/131016");
    let public_key = field(&stdout, "public key");
    assert_eq!(public_key.len(), 64, "{stdout}");
    let public_key: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&public_key[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let digest: String = Sha256::digest(&public_key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(field(&stdout, "fingerprint"), format!("SHA256:{digest}"));
    assert_eq!(
        field(&stdout, "key file"),
        site.key_file().display().to_string()
    );
    // The PEM block is the SubjectPublicKeyInfo of the same key.
    let pem: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
        .collect();
    assert_eq!(pem.len(), 3, "{stdout}");
    assert_eq!(pem[2], "-----END PUBLIC KEY-----");
    let der = base64::engine::general_purpose::STANDARD
        .decode(pem[1])
        .expect("base64");
    assert_eq!(der[..12], ifrelay::identity::ED25519_SPKI_PREFIX);
    assert_eq!(der[12..], public_key[..]);
    // The file holds that key.
    let key = ifrelay::identity::BoxKey::load(&site.store_dir()).expect("load");
    assert_eq!(key.public_key()[..], public_key[..]);

    assert_private_key_absent(&site.key_file(), &out.stdout);
    assert_private_key_absent(&site.key_file(), &out.stderr);

    let json = ifrelay(&[
        "identity",
        "--json",
        "--config",
        &site.config.to_string_lossy(),
    ]);
    assert_eq!(json.status.code(), Some(0));
    let json_text = text(&json.stdout);
    assert!(
        json_text.contains(&format!("\"fingerprint\":\"SHA256:{digest}\"")),
        "{json_text}"
    );
    assert!(json_text.contains("\"created\":false"), "{json_text}");
    assert_private_key_absent(&site.key_file(), &json.stdout);
}

#[test]
fn the_key_survives_restarts_of_run_and_identity() {
    let site = Fresh::new();
    // First start: run creates it and logs its fingerprint.
    let (code, log) = run_briefly(&site.config);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("created the box's signing key"), "{log}");
    let bytes = std::fs::read(site.key_file()).expect("key file");
    let key = ifrelay::identity::BoxKey::load(&site.store_dir()).expect("load");
    let fingerprint = key.fingerprint();
    assert!(log.contains(&fingerprint), "{log}");
    assert_private_key_absent(&site.key_file(), log.as_bytes());

    // identity shows the same key and creates nothing.
    let out = identity(&site.config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(field(&text(&out.stdout), "fingerprint"), fingerprint);
    assert!(
        !text(&out.stderr).contains("created"),
        "{}",
        text(&out.stderr)
    );

    // Second start: loaded, same fingerprint, same file.
    let (code, log) = run_briefly(&site.config);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("loaded the box's signing key"), "{log}");
    assert!(!log.contains("created the box's signing key"), "{log}");
    assert!(log.contains(&fingerprint), "{log}");
    assert_eq!(std::fs::read(site.key_file()).expect("key file"), bytes);
    let mode = std::fs::metadata(site.key_file()).expect("key file");
    assert_eq!(mode.permissions().mode() & 0o777, 0o400);
}

#[test]
fn a_key_file_open_to_group_or_others_is_refused_with_77_and_left_alone() {
    let site = Fresh::new();
    assert_eq!(identity(&site.config).status.code(), Some(0));
    let bytes = std::fs::read(site.key_file()).expect("key file");
    for mode in [0o440, 0o444, 0o604] {
        std::fs::set_permissions(site.key_file(), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        let out = identity(&site.config);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(77), "{mode:o}: {stderr}");
        assert!(
            stderr.contains("readable or writable by group or others"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&site.key_file().display().to_string()),
            "{stderr}"
        );
        assert!(stderr.contains("chmod 400"), "{stderr}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

        let (code, log) = run_briefly(&site.config);
        assert_eq!(code, Some(77), "{mode:o}: {log}");
        assert!(
            log.contains("readable or writable by group or others"),
            "{log}"
        );
        assert!(!log.contains("box started"), "{log}");
        assert_eq!(std::fs::read(site.key_file()).expect("kept"), bytes);
        let left = std::fs::metadata(site.key_file()).expect("key file");
        assert_eq!(left.permissions().mode() & 0o777, mode, "mode changed");
    }
    // Refused before the store is opened: nothing else was made.
    assert!(!site.store_dir().join("ifrelay.redb").exists());
    // Fixed as the message says: accepted again, the same key.
    std::fs::set_permissions(site.key_file(), std::fs::Permissions::from_mode(0o400))
        .expect("chmod");
    assert_eq!(identity(&site.config).status.code(), Some(0));
    assert_eq!(std::fs::read(site.key_file()).expect("kept"), bytes);
}

#[test]
fn a_corrupt_key_file_is_refused_with_77_and_kept() {
    let site = Fresh::new();
    std::fs::create_dir(site.store_dir()).expect("folder");
    std::fs::write(site.key_file(), b"not a key at all").expect("write");
    std::fs::set_permissions(site.key_file(), std::fs::Permissions::from_mode(0o400))
        .expect("chmod");
    let out = identity(&site.config);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("is not an Ed25519 private key"), "{stderr}");
    assert!(stderr.contains("docs/operations.md"), "{stderr}");
    let (code, log) = run_briefly(&site.config);
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("is not an Ed25519 private key"), "{log}");
    assert_eq!(
        std::fs::read(site.key_file()).expect("kept"),
        b"not a key at all"
    );
}

#[test]
fn a_store_folder_that_cannot_be_made_exits_74() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The folder's parent is a file: the configuration names a folder that
    // cannot exist. check-config would refuse it; identity does not check
    // files, so it meets the error itself.
    std::fs::write(dir.path().join("blocked"), b"").expect("write");
    let config = Site::new(dir.path()).config("127.0.0.1:0", "blocked/store/ifrelay.redb");
    let out = identity(&config);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{stderr}");
    assert!(
        stderr.contains("cannot create the store's folder"),
        "{stderr}"
    );
}

#[test]
fn identity_refuses_an_invalid_configuration_with_78() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[box]\nagency = \"13 10 16\"\n").expect("write");
    let out = identity(&file);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(
        !dir.path().join(KEY_FILE).exists(),
        "a key was created for a refused configuration"
    );
}
