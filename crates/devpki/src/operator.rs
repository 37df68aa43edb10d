//! The development national operator: a distribution root and an online
//! distribution key it certifies, generated at run time, so that the core
//! simulator, the demo, the bench and every test send signed distributions
//! (issue 8) without a key ever being committed.
//!
//! The real operator keeps its root offline; a box pins the root's public
//! key in `trust.distribution_roots` (docs/config.md).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ifrelay_proto::{
    Distribution, DistributionFields, KeyCertFields, KeyCertificate, Millis, RootKey,
};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::{write_file, PkiError};

const DAY_MS: Millis = 86_400_000;

/// A development operator: root key, online key and the root's certificate
/// of the online key (valid from a day ago for a year).
pub struct DevOperator {
    root: Ed25519KeyPair,
    online: Ed25519KeyPair,
    signer: KeyCertificate,
}

impl std::fmt::Debug for DevOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevOperator")
            .field("root", &self.root().fingerprint())
            .finish_non_exhaustive()
    }
}

/// A fresh Ed25519 key pair.
///
/// # Errors
/// [`PkiError::Ed25519`] when the random source fails.
pub fn generate_ed25519() -> Result<Ed25519KeyPair, PkiError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| PkiError::Ed25519("the random source failed"))?;
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| PkiError::Ed25519("a generated key does not parse"))
}

fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| Millis::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

impl DevOperator {
    /// Generates a root and an online key certified by it.
    ///
    /// # Errors
    /// [`PkiError::Ed25519`].
    pub fn generate() -> Result<DevOperator, PkiError> {
        let root = generate_ed25519()?;
        let online = generate_ed25519()?;
        let now = now_millis();
        let signer = KeyCertFields {
            key: online.public_key().as_ref().to_vec(),
            not_before: now - DAY_MS,
            not_after: now + 366 * DAY_MS,
        }
        .certify(&root);
        Ok(DevOperator {
            root,
            online,
            signer,
        })
    }

    /// The root's public key, as a box pins it.
    pub fn root(&self) -> RootKey {
        RootKey::of(&self.root)
    }

    /// The root as a PEM `PUBLIC KEY` block (what `openssl pkey -pubout`
    /// writes for an Ed25519 key).
    pub fn roots_pem(&self) -> String {
        public_key_pem(&self.root())
    }

    /// Writes [`Self::roots_pem`] to `dir/distribution-roots.pem`.
    ///
    /// # Errors
    /// [`PkiError::Write`].
    pub fn write_roots(&self, dir: &Path) -> Result<PathBuf, PkiError> {
        let path = dir.join("distribution-roots.pem");
        write_file(&path, self.roots_pem().as_bytes(), false)?;
        Ok(path)
    }

    /// The root's certificate of the online key.
    pub fn signer(&self) -> KeyCertificate {
        self.signer.clone()
    }

    /// Signs `fields` with the online key.
    pub fn sign(&self, fields: &DistributionFields) -> Distribution {
        fields.sign(&self.online, self.signer())
    }

    /// The root certifies `key` for the window given (tests of rotated or
    /// expired distribution keys).
    pub fn certify(
        &self,
        key: &Ed25519KeyPair,
        not_before: Millis,
        not_after: Millis,
    ) -> KeyCertificate {
        KeyCertFields {
            key: key.public_key().as_ref().to_vec(),
            not_before,
            not_after,
        }
        .certify(&self.root)
    }
}

/// `key` as a PEM `PUBLIC KEY` block.
pub fn public_key_pem(key: &RootKey) -> String {
    pem::encode(&pem::Pem::new("PUBLIC KEY", key.to_spki_der()))
}
