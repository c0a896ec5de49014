//! User credentials at rest: argon2id password hashes (PHC strings) checked at every
//! login, SCRAM-SHA-256 stored keys derived when a password is set (for SASL SCRAM, which
//! cannot work from an argon2 hash), RabbitMQ's salted SHA-256 hashes accepted from
//! imported definitions, and a short-lived cache of successful verifications so that a
//! protocol that authenticates every request (HTTP Basic) does not pay argon2 each time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{CoreError, Result};

/// argon2id parameters: OWASP's recommendation (19 MiB, 2 passes, 1 lane).
const ARGON2_MEMORY_KIB: u32 = 19_456;
const ARGON2_PASSES: u32 = 2;
const ARGON2_LANES: u32 = 1;
/// SCRAM-SHA-256 iterations (Kafka's minimum and RFC 7677's example).
pub const SCRAM_ITERATIONS: u32 = 4096;
/// How long a verified (user, password) pair is trusted without argon2.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Entries the verification cache holds at most (cleared when full).
const VERIFIED_MAX: usize = 10_000;

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| CoreError::Internal(format!("no randomness for a password salt: {e}")))?;
    Ok(b)
}

fn argon2() -> Argon2<'static> {
    let params =
        Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// An argon2id hash of `password` with a random salt, as a PHC string.
///
/// # Errors
/// `Internal` without randomness or if hashing fails.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random::<16>()?)
        .map_err(|e| CoreError::Internal(format!("password salt: {e}")))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CoreError::Internal(format!("password hashing: {e}")))
}

/// Checks `password` against a stored hash: an argon2 PHC string, or RabbitMQ's
/// `rabbit_password_hashing_sha256` (base64 of a 4-byte salt and SHA-256(salt ‖ password))
/// from imported definitions. Anything else never matches.
pub fn verify_password(stored: &str, password: &str) -> bool {
    if stored.starts_with("$argon2") {
        return match PasswordHash::new(stored) {
            Ok(h) => Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok(),
            Err(_) => false,
        };
    }
    match B64.decode(stored.trim()) {
        Ok(raw) if raw.len() == 4 + 32 => {
            let mut d = Sha256::new();
            d.update(&raw[..4]);
            d.update(password.as_bytes());
            bool::from(d.finalize().as_slice().ct_eq(&raw[4..]))
        }
        _ => false,
    }
}

/// Decoded SCRAM credentials: salt, iterations, StoredKey, ServerKey.
pub type ScramKeys = (Vec<u8>, u32, [u8; 32], [u8; 32]);

/// SCRAM-SHA-256 stored credentials (RFC 5802): what a server keeps to verify a client's
/// proof and prove itself, without the password. Byte strings in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramSha256 {
    pub salt: String,
    pub iterations: u32,
    pub stored_key: String,
    pub server_key: String,
}

impl ScramSha256 {
    /// Derives the credentials of `password` with a random salt.
    ///
    /// # Errors
    /// `Internal` without randomness.
    pub fn derive(password: &str) -> Result<ScramSha256> {
        let salt = random::<16>()?;
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, SCRAM_ITERATIONS, &mut salted);
        let hmac = |key: &[u8], msg: &[u8]| -> Result<[u8; 32]> {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
                .map_err(|e| CoreError::Internal(format!("hmac: {e}")))?;
            m.update(msg);
            Ok(m.finalize().into_bytes().into())
        };
        let client_key = hmac(&salted, b"Client Key")?;
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key")?;
        Ok(ScramSha256 {
            salt: B64.encode(salt),
            iterations: SCRAM_ITERATIONS,
            stored_key: B64.encode(stored_key),
            server_key: B64.encode(server_key),
        })
    }

    /// `(salt, iterations, stored_key, server_key)` as bytes; `None` if damaged.
    pub fn decode(&self) -> Option<ScramKeys> {
        let salt = B64.decode(&self.salt).ok()?;
        let stored: [u8; 32] = B64.decode(&self.stored_key).ok()?.try_into().ok()?;
        let server: [u8; 32] = B64.decode(&self.server_key).ok()?.try_into().ok()?;
        Some((salt, self.iterations, stored, server))
    }
}

/// Recently verified (user, password) pairs, keyed by user, holding an HMAC of the
/// password under a per-process random key (never the password), trusted for five
/// minutes. Setting or deleting a user forgets its entry.
pub(crate) struct VerifiedCache {
    key: [u8; 32],
    map: Mutex<HashMap<String, ([u8; 32], Instant)>>,
}

impl VerifiedCache {
    pub fn new() -> VerifiedCache {
        VerifiedCache {
            // Without randomness the cache never matches (a zero key is never used to insert).
            key: random::<32>().unwrap_or([0; 32]),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn tag(&self, user: &str, password: &str) -> Option<[u8; 32]> {
        if self.key == [0; 32] {
            return None;
        }
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).ok()?;
        m.update(user.as_bytes());
        m.update(&[0]);
        m.update(password.as_bytes());
        Some(m.finalize().into_bytes().into())
    }

    /// Whether this pair was verified recently.
    pub fn hit(&self, user: &str, password: &str) -> bool {
        let Some(tag) = self.tag(user, password) else {
            return false;
        };
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(user) {
            Some((t, at)) => at.elapsed() < VERIFIED_TTL && bool::from(t.ct_eq(&tag)),
            None => false,
        }
    }

    pub fn insert(&self, user: &str, password: &str) {
        let Some(tag) = self.tag(user, password) else {
            return;
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= VERIFIED_MAX {
            map.clear();
        }
        map.insert(user.to_string(), (tag, Instant::now()));
    }

    pub fn forget(&self, user: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_hashes_verify_and_differ() {
        let a = hash_password("s3cret").unwrap();
        let b = hash_password("s3cret").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "random salts");
        assert!(verify_password(&a, "s3cret"));
        assert!(!verify_password(&a, "s3cret "));
        assert!(!verify_password("$argon2id$garbage", "x"));
        assert!(!verify_password("", ""));
    }

    #[test]
    fn rabbitmq_sha256_hashes_from_definitions_verify() {
        // RabbitMQ's documented example: salt 908DC60A, password "test12".
        let salt = [0x90u8, 0x8D, 0xC6, 0x0A];
        let mut d = Sha256::new();
        d.update(salt);
        d.update(b"test12");
        let mut raw = salt.to_vec();
        raw.extend_from_slice(&d.finalize());
        let stored = B64.encode(raw);
        assert!(verify_password(&stored, "test12"));
        assert!(!verify_password(&stored, "test13"));
    }

    #[test]
    fn scram_credentials_match_rfc_5802_derivation() {
        let c = ScramSha256::derive("pencil").unwrap();
        let (salt, iterations, stored, server) = c.decode().unwrap();
        assert_eq!(iterations, 4096);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"pencil", &salt, iterations, &mut salted);
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&salted).unwrap();
        m.update(b"Server Key");
        assert_eq!(server.as_slice(), m.finalize().into_bytes().as_slice());
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&salted).unwrap();
        m.update(b"Client Key");
        let ck = m.finalize().into_bytes();
        assert_eq!(stored.as_slice(), Sha256::digest(ck).as_slice());
    }

    #[test]
    fn the_cache_remembers_only_the_right_password_until_forgotten() {
        let c = VerifiedCache::new();
        assert!(!c.hit("u", "p"));
        c.insert("u", "p");
        assert!(c.hit("u", "p"));
        assert!(!c.hit("u", "q"));
        assert!(!c.hit("v", "p"));
        c.forget("u");
        assert!(!c.hit("u", "p"));
    }
}
