//! Refresh-token families, in process memory or in Redis.
//!
//! A family is one login. Each refresh retires the presented token and
//! makes its successor live; the store keeps only SHA-256 hashes of tokens.
//! The one operation that matters, [`SessionStore::rotate`], is atomic: in
//! memory under a mutex, in Redis as one Lua script whose keys share the
//! family's hash slot.

pub mod memory;
pub mod redis;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::Serialize;

use crate::clock::Clock;
use crate::config::{SessionsBackend, SessionsConfig};

/// 128-bit family id, random per login; not secret.
pub type FamilyId = [u8; 16];
/// SHA-256 of a refresh token.
pub type TokenHash = [u8; 32];
/// A successor's secret, encrypted with a pad only the holder of the
/// retired token can derive (see `auth::refresh`).
pub type SealedSuccessor = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The presented token was live; the proposed successor is now live.
    Rotated { username: String, at_ms: u64 },
    /// The presented token was retired within the grace period: here is
    /// the successor it was rotated to, sealed.
    Successor {
        username: String,
        at_ms: u64,
        sealed: SealedSuccessor,
    },
    /// A retired token came back after the grace period: the family has
    /// been revoked.
    Reused { username: String },
    /// Unknown, expired or revoked.
    Invalid,
}

#[derive(Debug, Clone, Serialize)]
pub struct FamilyInfo {
    pub family: String,
    pub username: String,
    pub created_ms: u64,
    pub last_used_ms: u64,
    pub revoked: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Unsupported(&'static str),
}

/// What a store needs to rotate a token.
#[derive(Debug, Clone, Copy)]
pub struct RotateRequest<'a> {
    pub family: &'a FamilyId,
    pub presented: &'a TokenHash,
    pub successor: &'a TokenHash,
    pub sealed_successor: &'a SealedSuccessor,
    pub now_ms: u64,
    pub grace: Duration,
    pub ttl: Duration,
}

#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Starts a family with its first live token.
    async fn create(
        &self,
        family: &FamilyId,
        username: &str,
        token: &TokenHash,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    async fn rotate(&self, request: RotateRequest<'_>) -> Result<Rotation, StoreError>;

    /// Revokes the family `token` belongs to: its user, or `None` if the
    /// token is unknown (or its family no longer live).
    async fn revoke(
        &self,
        family: &FamilyId,
        token: &TokenHash,
    ) -> Result<Option<String>, StoreError>;

    /// Revokes every family of `username`; returns how many were live.
    async fn revoke_user(&self, username: &str) -> Result<usize, StoreError>;

    /// Every unexpired family of `username`, revoked ones included, oldest first.
    async fn list_user(&self, username: &str) -> Result<Vec<FamilyInfo>, StoreError>;

    /// Whether the family is still valid (not revoked, not expired).
    async fn family_alive(&self, family: &FamilyId) -> Result<bool, StoreError>;

    /// The user a valid family belongs to; `None` when the family is
    /// unknown, revoked or expired.
    async fn family_user(&self, family: &FamilyId) -> Result<Option<String>, StoreError>;

    /// [`Self::family_alive`] for each of `families`, in order: the safety
    /// net behind [`Self::revocations`] for every open WebSocket of an
    /// instance, so a store should answer in a few round trips however
    /// many there are.
    async fn families_alive(&self, families: &[FamilyId]) -> Result<Vec<bool>, StoreError> {
        let mut alive = Vec::with_capacity(families.len());
        for family in families {
            alive.push(self.family_alive(family).await?);
        }
        Ok(alive)
    }

    /// The families revoked from now on (logout, `sessions revoke`, reuse
    /// detection), by this instance or any other. The stream ends when the
    /// subscription is lost: subscribe again, then check with
    /// [`Self::families_alive`] what was missed meanwhile.
    async fn revocations(&self) -> Result<Revocations, StoreError>;

    /// Fails while the store cannot answer (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Counts a login attempt under `key`, before its password is checked;
    /// the count lapses `window` after its first attempt. A banned key, or
    /// an attempt beyond `limit` (which bans the key for `ban` and clears
    /// its count, atomically), is refused: the answer is how long the ban
    /// still runs. `None`: go ahead.
    async fn count_attempt(
        &self,
        key: &str,
        limits: FailureLimits,
    ) -> Result<Option<Duration>, StoreError>;
    /// How long the ban of `key` still runs, without counting anything.
    async fn ban_remaining(&self, key: &str) -> Result<Option<Duration>, StoreError>;
    /// Clears the count of `key` (not a ban).
    async fn reset_failures(&self, key: &str) -> Result<(), StoreError>;

    /// Records that a one-time code of time step `step` was accepted for
    /// `key` (a user): `false`, and nothing recorded, when that step or a
    /// later one already was, so each code is accepted once and an older
    /// one never after a newer. The record lasts `ttl`, longer than any
    /// step it refuses stays acceptable.
    async fn use_otp_step(&self, key: &str, step: u64, ttl: Duration) -> Result<bool, StoreError>;
}

/// Revoked families as they are revoked (see [`SessionStore::revocations`]).
pub type Revocations = BoxStream<'static, FamilyId>;

/// What [`SessionStore::count_attempt`] counts against.
#[derive(Debug, Clone, Copy)]
pub struct FailureLimits {
    pub window: Duration,
    pub limit: u64,
    pub ban: Duration,
}

/// `clock` judges every expiry the store decides (families, tokens,
/// throttle windows and bans); `now_ms` arguments should come from it too.
pub async fn open(config: &SessionsConfig, clock: Clock) -> anyhow::Result<Arc<dyn SessionStore>> {
    Ok(match config.backend {
        SessionsBackend::Memory => Arc::new(memory::MemorySessionStore::new(clock)),
        SessionsBackend::Redis => Arc::new(
            redis::RedisSessionStore::with_timeout(
                config.redis_url.as_deref().expect("validated at load"),
                &config.key_prefix,
                config.sentinel_master.as_deref(),
                clock,
                config.timeout,
            )
            .await?,
        ),
    })
}

/// Whole milliseconds: the unit both stores keep instants, TTLs and
/// windows in (Redis `PEXPIRE` takes no finer).
pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The order [`SessionStore::list_user`] answers in, whatever the store
/// keeps: oldest login first.
pub(crate) fn oldest_first(mut families: Vec<FamilyInfo>) -> Vec<FamilyInfo> {
    families.sort_by_key(|f| f.created_ms);
    families
}

pub fn hex(bytes: &[u8]) -> String {
    // A table, not `write!("{:02x}")`: every Redis key of a refresh holds
    // one or two of these, and the formatter cost more than the rest of
    // building the key.
    // Bytes first: `String::push` encodes each char as UTF-8 and checks
    // capacity, a dozen instructions per digit.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = vec![0u8; bytes.len() * 2];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte_and_unhex_reverses_it() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        let bytes: [u8; 16] = std::array::from_fn(|i| (i * 17) as u8);
        assert_eq!(unhex::<16>(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex::<2>("0g00"), None);
    }
}
