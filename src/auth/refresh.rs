//! Refresh tokens and the session lifecycle: start at login, rotate at
//! refresh, end at logout.
//!
//! A refresh token is 48 bytes from the OS random source, base64url (64
//! characters): a 16-byte family id (one per login, not secret) and a
//! 32-byte (256-bit) secret. The store sees only SHA-256 of the token.
//!
//! Parallel requests that present the same token must all receive the same
//! successor, yet the store must not hold raw tokens. So the successor's
//! secret is stored sealed: XORed with a pad derived from the *presented*
//! token (a different SHA-256 domain than the stored hash). Only a holder of
//! the presented token can unseal it, and each pad seals exactly one value.
//! The access token minted at a rotation is deterministic too (its `iat` is
//! the rotation time, its `jti` derived from the successor), so every
//! parallel request gets the identical pair.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use super::jwt::JwtService;
use crate::clock::Clock;
use crate::observe::audit::{Audit, AuditEvent, Origin, Record};
use crate::sessions::{
    hex, FamilyId, RotateRequest, Rotation, SealedSuccessor, SessionStore, StoreError, TokenHash,
};
use crate::users::{User, UserStore, UserStoreError};

const PAD_DOMAIN: &[u8] = b"authgate/successor-pad/v1";
const JTI_DOMAIN: &[u8] = b"authgate/jti/v1";

#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    family: FamilyId,
    secret: [u8; 32],
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RefreshToken(family {})", hex(&self.family))
    }
}

/// Bytes straight from the operating system (getrandom), not from a
/// user-space generator: these are the session secrets.
fn os_random<const N: usize>() -> Result<[u8; N], RefreshError> {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
    Ok(bytes)
}

impl RefreshToken {
    fn generate(family: FamilyId) -> Result<RefreshToken, RefreshError> {
        Ok(RefreshToken {
            family,
            secret: os_random()?,
        })
    }

    fn bytes(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..16].copy_from_slice(&self.family);
        out[16..].copy_from_slice(&self.secret);
        out
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes())
    }

    pub fn parse(text: &str) -> Option<RefreshToken> {
        if text.len() != 64 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let bytes: [u8; 48] = bytes.try_into().ok()?;
        Some(RefreshToken {
            family: bytes[..16].try_into().ok()?,
            secret: bytes[16..].try_into().ok()?,
        })
    }

    pub fn family(&self) -> &FamilyId {
        &self.family
    }

    pub fn hash(&self) -> TokenHash {
        Sha256::digest(self.bytes()).into()
    }

    fn pad(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(PAD_DOMAIN);
        h.update(self.bytes());
        h.finalize().into()
    }

    /// The `jti` of the access token minted with this refresh token.
    fn jti(&self) -> String {
        let mut h = Sha256::new();
        h.update(JTI_DOMAIN);
        h.update(self.bytes());
        hex(&h.finalize()[..16])
    }

    fn seal(&self, successor: &RefreshToken) -> SealedSuccessor {
        xor(&successor.secret, &self.pad())
    }

    fn unseal(&self, sealed: &SealedSuccessor) -> RefreshToken {
        RefreshToken {
            family: self.family,
            secret: xor(sealed, &self.pad()),
        }
    }
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// What a login or a refresh hands out.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub user: User,
    /// `iat` of the access token.
    pub issued_at: u64,
    /// The session both tokens belong to.
    pub family: FamilyId,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("refresh token unknown, expired or revoked")]
    Invalid,
    #[error("retired refresh token replayed; family of {username} revoked")]
    Reused { username: String, family: FamilyId },
    #[error("user {0:?} no longer exists or is disabled")]
    UserGone(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Users(#[from] UserStoreError),
    #[error("signing failed: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
    #[error("the OS random source failed: {0}")]
    Random(#[from] rand::rand_core::OsError),
}

impl RefreshError {
    /// Store outages are the gateway's problem (503), not the client's.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RefreshError::Store(_) | RefreshError::Users(UserStoreError::Unavailable(_))
        )
    }

    /// The audit event a refused refresh makes: a replayed retired token
    /// (its family now revoked) is one; an unknown or expired token is
    /// not a security event of its own.
    pub fn audit(&self, audit: &Audit, origin: Origin<'_>) {
        if let RefreshError::Reused { username, family } = self {
            audit.record(
                Record::new(AuditEvent::RefreshReuseDetected)
                    .user(username)
                    .session(family)
                    .reason("family_revoked")
                    .origin(origin),
            );
        }
    }

    /// The gateway's own failure (500): the presented token may be fine, so
    /// the client's session is left alone. A user row the store refuses is
    /// one too: the operator fixes the data, the session survives.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            RefreshError::Signing(_)
                | RefreshError::Random(_)
                | RefreshError::Users(UserStoreError::InvalidUser(_))
        )
    }
}

#[derive(Debug)]
pub struct SessionService {
    pub store: Arc<dyn SessionStore>,
    pub users: Arc<dyn UserStore>,
    pub jwt: Arc<JwtService>,
    pub refresh_ttl: Duration,
    pub reuse_grace: Duration,
    /// Stamps rotations and the `iat` of the tokens minted with them.
    pub clock: Clock,
}

impl SessionService {
    /// Starts a new family for a user who just proved their password.
    pub async fn start(&self, user: User) -> Result<TokenPair, RefreshError> {
        let token = RefreshToken::generate(os_random()?)?;
        let now_ms = self.clock.unix_millis();
        self.store
            .create(
                token.family(),
                &user.username,
                &token.hash(),
                now_ms,
                self.refresh_ttl,
            )
            .await?;
        self.pair(user, &token, now_ms / 1000)
    }

    fn pair(&self, user: User, token: &RefreshToken, iat: u64) -> Result<TokenPair, RefreshError> {
        Ok(TokenPair {
            access_token: self
                .jwt
                .issue_in_session(&user, iat, token.jti(), token.family())?,
            refresh_token: token.encode(),
            user,
            issued_at: iat,
            family: *token.family(),
        })
    }

    /// Rotates `presented` and mints a new pair for its (re-read) user.
    pub async fn refresh(&self, presented: &str) -> Result<TokenPair, RefreshError> {
        let presented = RefreshToken::parse(presented).ok_or(RefreshError::Invalid)?;
        // While the user store is down every refresh is 503, a session's or
        // not, before the session store is asked.
        self.users.check().await?;
        // The user is read before the rotation, never after it: a rotation
        // whose answer never reaches the client (the user store failing in
        // between) would make the client's retry after the grace look like
        // theft and end the session.
        let Some(username) = self.store.family_user(presented.family()).await? else {
            return Err(RefreshError::Invalid);
        };
        let user = self.users.find(&username).await?;
        let proposed = RefreshToken::generate(presented.family)?;
        let rotation = self
            .store
            .rotate(RotateRequest {
                family: presented.family(),
                presented: &presented.hash(),
                successor: &proposed.hash(),
                sealed_successor: &presented.seal(&proposed),
                now_ms: self.clock.unix_millis(),
                grace: self.reuse_grace,
                ttl: self.refresh_ttl,
            })
            .await?;
        let (username, successor, at_ms) = match rotation {
            Rotation::Rotated { username, at_ms } => (username, proposed, at_ms),
            Rotation::Successor {
                username,
                at_ms,
                sealed,
            } => (username, presented.unseal(&sealed), at_ms),
            Rotation::Reused { username } => {
                crate::observe::metrics::get().reuse_detected();
                tracing::warn!(
                    event = "refresh_token_reuse",
                    user = %username,
                    family = %hex(presented.family()),
                    "retired refresh token replayed after the grace period; family revoked"
                );
                return Err(RefreshError::Reused {
                    username,
                    family: presented.family,
                });
            }
            Rotation::Invalid => return Err(RefreshError::Invalid),
        };
        let user = match user {
            Some(user) if !user.disabled => user,
            _ => {
                self.store
                    .revoke(successor.family(), &successor.hash())
                    .await?;
                return Err(RefreshError::UserGone(username));
            }
        };
        self.pair(user, &successor, at_ms / 1000)
    }

    /// Ends the session of `presented`: its family and user, or `None`
    /// when it was not a live one.
    pub async fn logout(
        &self,
        presented: &str,
    ) -> Result<Option<(FamilyId, String)>, RefreshError> {
        let Some(token) = RefreshToken::parse(presented) else {
            return Ok(None);
        };
        let ended = self.store.revoke(token.family(), &token.hash()).await?;
        Ok(ended.map(|username| (token.family, username)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_round_trip() {
        let t = RefreshToken::generate(rand::random()).unwrap();
        let text = t.encode();
        assert_eq!(text.len(), 64);
        assert_eq!(RefreshToken::parse(&text), Some(t));
        assert_eq!(RefreshToken::parse("short"), None);
        assert_eq!(RefreshToken::parse(&"!".repeat(64)), None);
    }

    #[test]
    fn only_the_presented_token_unseals_its_successor() {
        let old = RefreshToken::generate(rand::random()).unwrap();
        let new = RefreshToken::generate(old.family).unwrap();
        let sealed = old.seal(&new);
        assert_eq!(old.unseal(&sealed), new);
        let other = RefreshToken::generate(old.family).unwrap();
        assert_ne!(other.unseal(&sealed), new);
        assert_ne!(sealed, new.secret);
        assert_ne!(old.hash(), old.pad());
    }
}
