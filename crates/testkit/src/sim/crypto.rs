//! Encryption of provision bodies to the requester's key, as the
//! intermediate servers do it (§6.6: the interface system never decrypts).
//!
//! Scheme (ephemeral-static ECIES): the provider makes a fresh X25519 key
//! pair per body, agrees a secret with the requester's static public key,
//! derives a ChaCha20-Poly1305 key with HKDF-SHA256 (salt = ephemeral
//! public || requester public, info = [`INFO`]) and seals the payload.
//! Body layout: `eph_pub (32) || nonce (12) || ciphertext+tag`.
//!
//! Invariants: every key and nonce comes from `ring::rand::SystemRandom`;
//! a non-contributory (low-order) agreement is refused on both sides;
//! a body that fails authentication yields no plaintext at all.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

/// HKDF `info` of every provision key: the scheme's version.
pub const INFO: &[u8] = b"ifrelay-provision-v1";

/// Length of an X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Shortest possible body: ephemeral key, nonce and tag of an empty payload.
pub const MIN_BODY_LEN: usize = PUBLIC_KEY_LEN + NONCE_LEN + TAG_LEN;

/// Why a body could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The system random source failed; nothing was encrypted.
    #[error("the system random generator failed; retry, and check the entropy source")]
    Random,
    /// The requester's public key is not 32 bytes.
    #[error("the public key is {len} bytes; an X25519 public key is {PUBLIC_KEY_LEN}")]
    BadPublicKey { len: usize },
    /// The key agreement produced a low-order (all-zero) secret.
    #[error("the key agreement is not contributory (low-order public key); refuse this key")]
    NonContributory,
    /// The body is shorter than its fixed parts.
    #[error("the body is {len} bytes; an encrypted body is at least {MIN_BODY_LEN}")]
    TooShort { len: usize },
    /// Authentication failed: wrong key, or the body was altered.
    #[error("the body does not decrypt with this key (wrong key or altered body)")]
    Decrypt,
    /// The cipher refused to seal (payload too long).
    #[error("the payload could not be encrypted")]
    Encrypt,
    /// A signing key could not be generated or loaded.
    #[error("the signing key could not be made: {0}")]
    SigningKey(String),
}

fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

fn cipher(
    shared: &[u8; 32],
    eph_pub: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<ChaCha20Poly1305, CryptoError> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph_pub);
    salt[32..].copy_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
    hk.expand(INFO, &mut key)
        .map_err(|_| CryptoError::Encrypt)?;
    Ok(ChaCha20Poly1305::new(Key::from_slice(&key)))
}

/// The requester's static X25519 key pair, made per query by IMS_R.
pub struct RequesterKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for RequesterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequesterKey")
            .field("public", self.public.as_bytes())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl RequesterKey {
    /// A fresh key pair from 32 bytes of the system random source.
    ///
    /// # Errors
    /// [`CryptoError::Random`] when the random source fails.
    pub fn generate() -> Result<Self, CryptoError> {
        let secret = StaticSecret::from(random_bytes::<32>()?);
        let public = PublicKey::from(&secret);
        Ok(RequesterKey { secret, public })
    }

    /// The public key to put in the query.
    pub fn public_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.public.to_bytes()
    }

    /// Opens a body sealed by [`encrypt_to`] for this key.
    ///
    /// # Errors
    /// [`CryptoError::TooShort`], [`CryptoError::NonContributory`] or
    /// [`CryptoError::Decrypt`] (wrong key or altered body).
    pub fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if body.len() < MIN_BODY_LEN {
            return Err(CryptoError::TooShort { len: body.len() });
        }
        let (eph, rest) = body.split_at(PUBLIC_KEY_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let mut eph_pub = [0u8; PUBLIC_KEY_LEN];
        eph_pub.copy_from_slice(eph);
        let shared = self.secret.diffie_hellman(&PublicKey::from(eph_pub));
        if !shared.was_contributory() {
            return Err(CryptoError::NonContributory);
        }
        cipher(shared.as_bytes(), &eph_pub, self.public.as_bytes())?
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// Seals `plaintext` to the requester's X25519 `public` key.
///
/// # Errors
/// [`CryptoError::BadPublicKey`] when `public` is not 32 bytes,
/// [`CryptoError::NonContributory`] for a low-order key,
/// [`CryptoError::Random`] or [`CryptoError::Encrypt`].
pub fn encrypt_to(public: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let recipient: [u8; PUBLIC_KEY_LEN] = public
        .try_into()
        .map_err(|_| CryptoError::BadPublicKey { len: public.len() })?;
    let eph = StaticSecret::from(random_bytes::<32>()?);
    let eph_pub = PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&PublicKey::from(recipient));
    if !shared.was_contributory() {
        return Err(CryptoError::NonContributory);
    }
    let nonce = random_bytes::<NONCE_LEN>()?;
    let sealed = cipher(shared.as_bytes(), &eph_pub, &recipient)?
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .map_err(|_| CryptoError::Encrypt)?;
    let mut body = Vec::with_capacity(PUBLIC_KEY_LEN + NONCE_LEN + sealed.len());
    body.extend_from_slice(&eph_pub);
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&sealed);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = RequesterKey::generate().expect("key");
        let body = encrypt_to(&key.public_bytes(), b"items: I001=sim").expect("sealed");
        assert_eq!(body.len(), MIN_BODY_LEN + 15);
        assert_eq!(key.decrypt(&body).expect("opens"), b"items: I001=sim");
        // Empty payloads work too, and two bodies of one payload differ.
        let empty = encrypt_to(&key.public_bytes(), b"").expect("sealed");
        assert_eq!(key.decrypt(&empty).expect("opens"), b"");
        let again = encrypt_to(&key.public_bytes(), b"items: I001=sim").expect("sealed");
        assert_ne!(again, body);
    }

    #[test]
    fn wrong_key_fails() {
        let key = RequesterKey::generate().expect("key");
        let other = RequesterKey::generate().expect("key");
        let body = encrypt_to(&key.public_bytes(), b"payload").expect("sealed");
        assert_eq!(other.decrypt(&body), Err(CryptoError::Decrypt));
    }

    #[test]
    fn tampered_body_fails() {
        let key = RequesterKey::generate().expect("key");
        let body = encrypt_to(&key.public_bytes(), b"payload").expect("sealed");
        for i in [
            0,
            PUBLIC_KEY_LEN,
            PUBLIC_KEY_LEN + NONCE_LEN,
            body.len() - 1,
        ] {
            let mut bad = body.clone();
            bad[i] ^= 0x01;
            assert!(key.decrypt(&bad).is_err(), "flipping byte {i}");
        }
        assert_eq!(
            key.decrypt(&body[..MIN_BODY_LEN - 1]),
            Err(CryptoError::TooShort {
                len: MIN_BODY_LEN - 1
            })
        );
    }

    #[test]
    fn bad_public_keys_are_refused() {
        assert_eq!(
            encrypt_to(&[7u8; 31], b"x"),
            Err(CryptoError::BadPublicKey { len: 31 })
        );
        // The all-zero point is low order.
        assert_eq!(
            encrypt_to(&[0u8; 32], b"x"),
            Err(CryptoError::NonContributory)
        );
    }
}
