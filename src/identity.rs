//! The box's own signing key (Ed25519), which signs what the box hands out
//! of itself: record exports (R-REC-3) and backups (R-SYS-2, R-SEC-6), so
//! that whoever reads them can tell they came from this box unaltered.
//!
//! Invariants:
//! - The key lives in one file, [`KEY_FILE_NAME`] in the store's folder:
//!   PKCS#8 DER (RFC 8410 `PrivateKeyInfo`, version 1 holding the 32-byte
//!   seed: OpenSSL 3.0, which operators use to check a key by hand, reads
//!   no other; the version 2 ring writes, with the public key, is also
//!   accepted and checked), mode 0400, owned by the user the box runs as, in a folder of mode 0700.
//! - It is created once, at first start, and never overwritten: a second
//!   creation racing the first loses and loads the winner's key.
//! - A key file that others could read or replace, or that does not parse,
//!   is refused, never repaired or replaced: replacing the key is the
//!   operator's decision (docs/operations.md, "The box's signing key").
//! - The private key never leaves this module: no `Debug` or `Display`
//!   shows it, nothing logs it; only the public key and its fingerprint
//!   are shown.
//! - Every signature covers a context string ending in a NUL byte, then the
//!   message, so a signature made for one purpose never verifies for
//!   another.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::store_dir;

/// The key file's name in the store's folder.
pub const KEY_FILE_NAME: &str = "box-signing-key.p8";

/// Mode of a new key file: read-only for the box's user, so no slip of the
/// box's own code can overwrite it either.
const KEY_FILE_MODE: u32 = 0o400;

/// Far more than a PKCS#8 Ed25519 key (83 bytes): a larger file is not a
/// key, and is not read whole.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// DER of a PKCS#8 version 1 Ed25519 private key (RFC 8410) up to its
/// 32-byte seed.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

pub use ifrelay_proto::distribution::ED25519_SPKI_PREFIX;

/// The box's signing key pair, loaded from its key file.
pub struct BoxKey {
    pair: Ed25519KeyPair,
    path: PathBuf,
}

/// Whether [`BoxKey::load_or_create`] created the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Just now: its fingerprint must be registered with the national
    /// operator.
    Now,
    /// At an earlier start: loaded from its file.
    Earlier,
}

/// Why the box's signing key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error(
        "cannot create the store's folder {} for the box's signing key; create its parent or fix store.path",
        dir.display()
    )]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the box has no signing key yet: {} does not exist; start the box once, or run `ifrelay identity`, to create it", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read the box's signing key {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot write the box's signing key into {}; check that the folder is writable by the box's user and the disk is not full",
        dir.display()
    )]
    Write {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot generate the box's signing key: the system's random source failed")]
    Random,
    #[error(
        "refused the box's signing key {}: it is not a regular file; move it aside (docs/operations.md, \"The box's signing key\")",
        path.display()
    )]
    NotAFile { path: PathBuf },
    #[error(
        "refused the box's signing key {}: it belongs to uid {owner}, not to the user the box runs as (uid {uid}), so someone else may have replaced it; if the file is the box's own, `chown` it to the box's user, otherwise replace the key (docs/operations.md, \"The box's signing key\")",
        path.display()
    )]
    Owner { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "refused the box's signing key {}: it is readable or writable by group or others (mode {mode:04o}); if anyone else could have read it, replace the key (docs/operations.md, \"The box's signing key\"), otherwise `chmod 400 {}`",
        path.display(), path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "refused the box's signing key {}: it is not an Ed25519 private key in PKCS#8 DER ({why}); move it aside, keep it, and follow docs/operations.md, \"The box's signing key\"",
        path.display()
    )]
    NotAKey { path: PathBuf, why: String },
}

impl IdentityError {
    /// The key file is there but refused (not a file, another owner, open
    /// to others, not a key): a restart finds the same, and only the
    /// operator can resolve it. Otherwise the file or its folder could not
    /// be read or written.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            IdentityError::NotAFile { .. }
                | IdentityError::Owner { .. }
                | IdentityError::Exposed { .. }
                | IdentityError::NotAKey { .. }
        )
    }
}

/// The key file of the box whose store's folder is `dir`.
pub fn key_file(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE_NAME)
}

impl BoxKey {
    /// Loads the box's key from the store's folder `dir`, creating the
    /// folder (mode 0700) and the key when they are missing.
    ///
    /// # Errors
    /// [`IdentityError`]: the folder or the file cannot be created or read,
    /// or the existing key file is refused ([`IdentityError::is_refused`]).
    pub fn load_or_create(dir: &Path) -> Result<(BoxKey, Created), IdentityError> {
        store_dir::ensure(dir).map_err(|source| IdentityError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        match Self::load(dir) {
            Ok(key) => Ok((key, Created::Earlier)),
            Err(IdentityError::Missing { .. }) => Self::create(dir),
            Err(e) => Err(e),
        }
    }

    /// Loads the box's key from the store's folder `dir`; never creates
    /// anything.
    ///
    /// # Errors
    /// [`IdentityError::Missing`] when there is no key file; otherwise as
    /// [`BoxKey::load_or_create`].
    pub fn load(dir: &Path) -> Result<BoxKey, IdentityError> {
        let path = key_file(dir);
        let read_error = |source| IdentityError::Read {
            path: path.clone(),
            source,
        };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(IdentityError::Missing { path });
            }
            Err(e) => return Err(read_error(e)),
        };
        // Checked on the open file, so what is checked is what is read.
        let meta = file.metadata().map_err(read_error)?;
        if !meta.is_file() {
            return Err(IdentityError::NotAFile { path });
        }
        let uid = nix::unistd::getuid().as_raw();
        if meta.uid() != uid {
            return Err(IdentityError::Owner {
                path,
                owner: meta.uid(),
                uid,
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Exposed { path, mode });
        }
        let mut pkcs8 = Vec::new();
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_end(&mut pkcs8)
            .map_err(read_error)?;
        if pkcs8.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(IdentityError::NotAKey {
                path,
                why: format!("longer than {MAX_KEY_FILE_BYTES} bytes"),
            });
        }
        let pair = parse_pkcs8(&pkcs8).map_err(|e| IdentityError::NotAKey {
            path: path.clone(),
            why: e.to_string(),
        })?;
        Ok(BoxKey { pair, path })
    }

    /// Generates a key and writes it atomically: a temporary file (mode
    /// 0400, created exclusively) in the same folder, synced, then moved
    /// to its name only if nothing is there yet, then the folder synced. A
    /// crash leaves either no key file or a complete one.
    fn create(dir: &Path) -> Result<(BoxKey, Created), IdentityError> {
        let write_error = |source| IdentityError::Write {
            dir: dir.to_owned(),
            source,
        };
        let mut pkcs8 = [0; PKCS8_V1_PREFIX.len() + 32];
        pkcs8[..PKCS8_V1_PREFIX.len()].copy_from_slice(&PKCS8_V1_PREFIX);
        SystemRandom::new()
            .fill(&mut pkcs8[PKCS8_V1_PREFIX.len()..])
            .map_err(|_| IdentityError::Random)?;
        let path = key_file(dir);
        let mut temp = tempfile::Builder::new()
            .prefix(".box-signing-key.")
            .suffix(".new")
            .permissions(std::fs::Permissions::from_mode(KEY_FILE_MODE))
            .tempfile_in(dir)
            .map_err(write_error)?;
        temp.write_all(&pkcs8).map_err(write_error)?;
        temp.as_file().sync_all().map_err(write_error)?;
        // No-clobber: never replace a key, even one created meanwhile by
        // another process (the temporary file is removed on failure).
        match temp.persist_noclobber(&path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                return Self::load(dir).map(|key| (key, Created::Earlier));
            }
            Err(e) => return Err(write_error(e.error)),
        }
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_error)?;
        Self::load(dir).map(|key| (key, Created::Now))
    }

    /// The key file this key was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut key = [0; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        key
    }

    /// `SHA256:` and the lowercase hex of the SHA-256 of the public key;
    /// what the national operator registers.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key())
    }

    /// Signs `context || msg`. `context` names the purpose and version and
    /// ends in a NUL byte (e.g. `b"ifrelay-export-v1\0"`), so no context is
    /// a prefix of another.
    pub fn sign(&self, context: &[u8], msg: &[u8]) -> [u8; 64] {
        debug_assert!(context.ends_with(&[0]), "a signing context ends in NUL");
        let signature = self.pair.sign(&signing_input(context, msg));
        let mut bytes = [0; 64];
        bytes.copy_from_slice(signature.as_ref());
        bytes
    }
}

/// Public data only: the private key is never shown.
impl fmt::Debug for BoxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxKey")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A PKCS#8 version 1 document has no public key to check the seed
/// against; version 2 has, and ring checks it.
fn parse_pkcs8(pkcs8: &[u8]) -> Result<Ed25519KeyPair, ring::error::KeyRejected> {
    if pkcs8.starts_with(&PKCS8_V1_PREFIX) {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
    } else {
        Ed25519KeyPair::from_pkcs8(pkcs8)
    }
}

fn signing_input(context: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(context.len() + msg.len());
    input.extend_from_slice(context);
    input.extend_from_slice(msg);
    input
}

/// A signature that does not match the message, context and public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signature does not match: wrong key, wrong purpose, or the data was altered")]
pub struct BadSignature;

/// Checks that `signature` is `public_key`'s signature of `context || msg`
/// (as made by [`BoxKey::sign`]).
///
/// # Errors
/// [`BadSignature`] otherwise.
pub fn verify(
    public_key: &[u8; 32],
    context: &[u8],
    msg: &[u8],
    signature: &[u8],
) -> Result<(), BadSignature> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&signing_input(context, msg), signature)
        .map_err(|_| BadSignature)
}

/// `SHA256:` and the lowercase hex of the SHA-256 of the raw public key.
pub fn fingerprint(public_key: &[u8; 32]) -> String {
    ifrelay_proto::distribution::fingerprint(public_key)
}

/// The public key as DER SubjectPublicKeyInfo (RFC 8410), 44 bytes.
pub fn public_key_spki_der(public_key: &[u8; 32]) -> [u8; 44] {
    ifrelay_proto::distribution::ed25519_spki_der(public_key)
}

/// The public key as a PEM `PUBLIC KEY` block, with a final newline
/// (`openssl pkey -pubin` reads it).
pub fn public_key_pem(public_key: &[u8; 32]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(public_key_spki_der(public_key));
    format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: &[u8] = b"ifrelay-test-v1\0";

    fn new_key() -> (tempfile::TempDir, BoxKey) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (key, created) = BoxKey::load_or_create(dir.path()).expect("key");
        assert_eq!(created, Created::Now);
        (dir, key)
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let (_dir, key) = new_key();
        let sig = key.sign(CONTEXT, b"export of 2026-11-30");
        assert_eq!(
            verify(&key.public_key(), CONTEXT, b"export of 2026-11-30", &sig),
            Ok(())
        );
    }

    #[test]
    fn a_wrong_context_message_or_key_fails_verification() {
        let (_dir, key) = new_key();
        let sig = key.sign(CONTEXT, b"message");
        let other_context = b"ifrelay-other-v1\0";
        assert_eq!(
            verify(&key.public_key(), other_context, b"message", &sig),
            Err(BadSignature)
        );
        // What is signed is context || msg, not where they split: hence the
        // NUL that ends every context.
        assert_eq!(
            verify(&key.public_key(), b"ifrelay-test-v1", b"\0message", &sig),
            Ok(()),
            "context || msg is what is signed"
        );
        assert_eq!(
            verify(&key.public_key(), CONTEXT, b"messagE", &sig),
            Err(BadSignature)
        );
        let (_other_dir, other) = new_key();
        assert_eq!(
            verify(&other.public_key(), CONTEXT, b"message", &sig),
            Err(BadSignature)
        );
        assert_eq!(
            verify(&key.public_key(), CONTEXT, b"message", &sig[..63]),
            Err(BadSignature)
        );
    }

    #[test]
    fn the_key_survives_a_reload_and_is_never_replaced() {
        let (dir, key) = new_key();
        let bytes = std::fs::read(key.path()).expect("key file");
        let (again, created) = BoxKey::load_or_create(dir.path()).expect("reload");
        assert_eq!(created, Created::Earlier);
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(
            BoxKey::load(dir.path()).expect("load").public_key(),
            key.public_key()
        );
        assert_eq!(std::fs::read(key.path()).expect("key file"), bytes);
        // Nothing but the key is left in the folder (no temporary file).
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [KEY_FILE_NAME]);
    }

    #[test]
    fn the_key_file_is_0400_and_parses_as_pkcs8_v1() {
        let (_dir, key) = new_key();
        let meta = std::fs::metadata(key.path()).expect("key file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        let bytes = std::fs::read(key.path()).expect("key file");
        assert_eq!(bytes.len(), 48);
        assert!(bytes.starts_with(&PKCS8_V1_PREFIX));
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&bytes).expect("PKCS#8 v1");
        assert_eq!(pair.public_key().as_ref(), key.public_key());
    }

    #[test]
    fn a_pkcs8_v2_key_is_accepted_and_its_public_key_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = key_file(dir.path());
        let v2 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("v2");
        std::fs::write(&path, v2.as_ref()).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let key = BoxKey::load(dir.path()).expect("v2 loads");
        let pair = Ed25519KeyPair::from_pkcs8(v2.as_ref()).expect("v2");
        assert_eq!(key.public_key(), pair.public_key().as_ref());
        // The same seed with another public key: refused.
        let mut wrong = v2.as_ref().to_vec();
        let last = wrong.len() - 1;
        wrong[last] ^= 1;
        std::fs::write(&path, &wrong).expect("write");
        let err = BoxKey::load(dir.path()).expect_err("mismatch");
        assert!(matches!(err, IdentityError::NotAKey { .. }), "{err}");
    }

    #[test]
    fn load_never_creates() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = BoxKey::load(dir.path()).expect_err("no key");
        assert!(matches!(err, IdentityError::Missing { .. }), "{err}");
        assert!(!err.is_refused());
        assert!(!key_file(dir.path()).exists());
    }

    #[test]
    fn a_key_open_to_group_or_others_is_refused() {
        for mode in [0o440, 0o404, 0o600 | 0o020, 0o640] {
            let (dir, key) = new_key();
            std::fs::set_permissions(key.path(), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            let err = BoxKey::load_or_create(dir.path()).expect_err("exposed");
            assert!(
                matches!(err, IdentityError::Exposed { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            assert!(err.is_refused());
        }
        let (dir, key) = new_key();
        std::fs::set_permissions(key.path(), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        BoxKey::load(dir.path()).expect("0600 is accepted");
    }

    /// Needs root to give the file away; CI runs as root.
    #[test]
    fn a_key_owned_by_another_user_is_refused() {
        if !nix::unistd::getuid().is_root() {
            eprintln!("skipped: only root can give a file to another user");
            return;
        }
        let (dir, key) = new_key();
        let nobody = 65534;
        std::os::unix::fs::chown(key.path(), Some(nobody), None).expect("chown");
        let err = BoxKey::load_or_create(dir.path()).expect_err("another owner");
        assert!(
            matches!(err, IdentityError::Owner { owner, uid: 0, .. } if owner == nobody),
            "{err}"
        );
        assert!(err.is_refused());
    }

    #[test]
    fn a_key_that_does_not_parse_is_refused_and_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = key_file(dir.path());
        for junk in [&b""[..], b"not a key", &[0x30; 5000]] {
            std::fs::write(&path, junk).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            let err = BoxKey::load_or_create(dir.path()).expect_err("junk");
            assert!(matches!(err, IdentityError::NotAKey { .. }), "{err}");
            assert_eq!(std::fs::read(&path).expect("kept"), junk);
        }
    }

    #[test]
    fn debug_shows_public_data_only() {
        let (_dir, key) = new_key();
        let debug = format!("{key:?}");
        assert!(debug.contains(&key.fingerprint()), "{debug}");
        let pkcs8 = std::fs::read(key.path()).expect("key file");
        let seed = hex(&pkcs8[16..48]);
        assert!(!debug.contains(&seed), "{debug}");
    }

    #[test]
    fn fingerprint_and_pem_have_their_documented_form() {
        let public_key = [7u8; 32];
        let fp = fingerprint(&public_key);
        assert_eq!(fp.len(), "SHA256:".len() + 64);
        assert!(fp.starts_with("SHA256:"));
        assert_eq!(
            fp[7..],
            hex(&<sha2::Sha256 as sha2::Digest>::digest(public_key))
        );
        let pem = public_key_pem(&public_key);
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"),
            "{pem}"
        );
        assert!(pem.ends_with("\n-----END PUBLIC KEY-----\n"), "{pem}");
    }
}
