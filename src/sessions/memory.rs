//! Sessions in this process's memory: for a single instance. Lost on
//! restart (users log in again); not shared between instances.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use super::{
    hex, millis, oldest_first, FailureLimits, FamilyId, FamilyInfo, Revocations, RotateRequest,
    Rotation, SealedSuccessor, SessionStore, StoreError, TokenHash,
};
use crate::clock::Clock;

#[derive(Debug)]
struct Family {
    username: String,
    created_ms: u64,
    last_used_ms: u64,
    expires_ms: u64,
    revoked: bool,
    tokens: HashMap<TokenHash, Token>,
}

#[derive(Debug)]
struct Token {
    expires_ms: u64,
    /// When it was rotated, and to what.
    retired: Option<(u64, SealedSuccessor)>,
}

#[derive(Debug, Default)]
struct State {
    families: HashMap<FamilyId, Family>,
    /// Login attempts: key → (count, lapses at ms).
    failures: HashMap<String, (u64, u64)>,
    /// Banned keys: key → banned until ms.
    bans: HashMap<String, u64>,
    /// Last accepted one-time-code step: key → (step, kept until ms).
    otp_steps: HashMap<String, (u64, u64)>,
    operations: u64,
}

impl State {
    /// Drops what has expired, now and then, so memory stays bounded by
    /// the live sessions.
    fn sweep(&mut self, now_ms: u64) {
        self.operations += 1;
        if !self.operations.is_multiple_of(1024) {
            return;
        }
        self.families.retain(|_, f| f.expires_ms > now_ms);
        for family in self.families.values_mut() {
            family.tokens.retain(|_, t| t.expires_ms > now_ms);
        }
        self.failures.retain(|_, (_, until)| *until > now_ms);
        self.bans.retain(|_, until| *until > now_ms);
        self.otp_steps.retain(|_, (_, until)| *until > now_ms);
    }

    fn family(&mut self, id: &FamilyId, now_ms: u64) -> Option<&mut Family> {
        self.families
            .get_mut(id)
            .filter(|f| f.expires_ms > now_ms && !f.revoked)
    }
}

/// How many revocations a slow subscriber may fall behind before its
/// stream ends (and it catches up by checking its families).
const REVOCATION_BACKLOG: usize = 1024;

#[derive(Debug)]
pub struct MemorySessionStore {
    state: Mutex<State>,
    clock: Clock,
    revoked: broadcast::Sender<FamilyId>,
}

impl MemorySessionStore {
    pub fn new(clock: Clock) -> MemorySessionStore {
        MemorySessionStore {
            state: Mutex::default(),
            clock,
            revoked: broadcast::channel(REVOCATION_BACKLOG).0,
        }
    }

    /// Tells the subscribers; none listening is not an error.
    fn announce(&self, family: &FamilyId) {
        let _ = self.revoked.send(*family);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-done rotation
        // (each is one map update), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(
        &self,
        family: &FamilyId,
        username: &str,
        token: &TokenHash,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.sweep(now_ms);
        let expires_ms = now_ms + millis(ttl);
        let mut tokens = HashMap::new();
        tokens.insert(
            *token,
            Token {
                expires_ms,
                retired: None,
            },
        );
        state.families.insert(
            *family,
            Family {
                username: username.to_string(),
                created_ms: now_ms,
                last_used_ms: now_ms,
                expires_ms,
                revoked: false,
                tokens,
            },
        );
        Ok(())
    }

    async fn rotate(&self, r: RotateRequest<'_>) -> Result<Rotation, StoreError> {
        let mut state = self.lock();
        state.sweep(r.now_ms);
        let Some(family) = state.family(r.family, r.now_ms) else {
            return Ok(Rotation::Invalid);
        };
        let Some(token) = family
            .tokens
            .get_mut(r.presented)
            .filter(|t| t.expires_ms > r.now_ms)
        else {
            return Ok(Rotation::Invalid);
        };
        match token.retired {
            None => {
                token.retired = Some((r.now_ms, *r.sealed_successor));
                let expires_ms = r.now_ms + millis(r.ttl);
                family.tokens.insert(
                    *r.successor,
                    Token {
                        expires_ms,
                        retired: None,
                    },
                );
                family.last_used_ms = r.now_ms;
                family.expires_ms = expires_ms;
                Ok(Rotation::Rotated {
                    username: family.username.clone(),
                    at_ms: r.now_ms,
                })
            }
            Some((at_ms, sealed)) if r.now_ms.saturating_sub(at_ms) <= millis(r.grace) => {
                Ok(Rotation::Successor {
                    username: family.username.clone(),
                    at_ms,
                    sealed,
                })
            }
            Some(_) => {
                family.revoked = true;
                let username = family.username.clone();
                drop(state);
                self.announce(r.family);
                Ok(Rotation::Reused { username })
            }
        }
    }

    async fn revoke(
        &self,
        family: &FamilyId,
        token: &TokenHash,
    ) -> Result<Option<String>, StoreError> {
        let mut state = self.lock();
        let now = self.clock.unix_millis();
        match state.family(family, now) {
            Some(f) if f.tokens.get(token).is_some_and(|t| t.expires_ms > now) => {
                f.revoked = true;
                let user = f.username.clone();
                drop(state);
                self.announce(family);
                Ok(Some(user))
            }
            _ => Ok(None),
        }
    }

    async fn revoke_user(&self, username: &str) -> Result<usize, StoreError> {
        let mut state = self.lock();
        let now = self.clock.unix_millis();
        let mut revoked = Vec::new();
        for (id, family) in state.families.iter_mut() {
            if family.username == username && !family.revoked && family.expires_ms > now {
                family.revoked = true;
                revoked.push(*id);
            }
        }
        drop(state);
        for family in &revoked {
            self.announce(family);
        }
        Ok(revoked.len())
    }

    async fn list_user(&self, username: &str) -> Result<Vec<FamilyInfo>, StoreError> {
        let state = self.lock();
        let now = self.clock.unix_millis();
        let list = state
            .families
            .iter()
            .filter(|(_, f)| f.username == username && f.expires_ms > now)
            .map(|(id, f)| FamilyInfo {
                family: hex(id),
                username: f.username.clone(),
                created_ms: f.created_ms,
                last_used_ms: f.last_used_ms,
                revoked: f.revoked,
            })
            .collect();
        Ok(oldest_first(list))
    }

    async fn family_alive(&self, family: &FamilyId) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .family(family, self.clock.unix_millis())
            .is_some())
    }

    async fn family_user(&self, family: &FamilyId) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .family(family, self.clock.unix_millis())
            .map(|f| f.username.clone()))
    }

    async fn revocations(&self) -> Result<Revocations, StoreError> {
        // A subscriber that fell behind gets an ended stream, as after a
        // lost Redis subscription: it subscribes again and catches up.
        let stream = futures_util::stream::unfold(self.revoked.subscribe(), |mut rx| async {
            let family = rx.recv().await.ok()?;
            Some((family, rx))
        });
        Ok(stream.boxed())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn count_attempt(
        &self,
        key: &str,
        limits: FailureLimits,
    ) -> Result<Option<Duration>, StoreError> {
        let mut state = self.lock();
        let now = self.clock.unix_millis();
        state.sweep(now);
        if let Some(until) = state.bans.get(key).filter(|until| **until > now) {
            return Ok(Some(Duration::from_millis(until - now)));
        }
        let entry = state.failures.entry(key.to_string()).or_insert((0, 0));
        if entry.1 <= now {
            *entry = (0, now + millis(limits.window));
        }
        entry.0 += 1;
        if entry.0 <= limits.limit {
            return Ok(None);
        }
        state.failures.remove(key);
        state.bans.insert(key.to_string(), now + millis(limits.ban));
        Ok(Some(limits.ban))
    }

    async fn ban_remaining(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let now = self.clock.unix_millis();
        Ok(self
            .lock()
            .bans
            .get(key)
            .filter(|until| **until > now)
            .map(|until| Duration::from_millis(until - now)))
    }

    async fn reset_failures(&self, key: &str) -> Result<(), StoreError> {
        self.lock().failures.remove(key);
        Ok(())
    }

    async fn use_otp_step(&self, key: &str, step: u64, ttl: Duration) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let now = self.clock.unix_millis();
        state.sweep(now);
        let used = state
            .otp_steps
            .get(key)
            .is_some_and(|(last, until)| *until > now && *last >= step);
        if !used {
            state
                .otp_steps
                .insert(key.to_string(), (step, now + millis(ttl)));
        }
        Ok(!used)
    }
}
