//! Verified access tokens, remembered until they expire.
//!
//! A browser or API client presents the same access token on every request
//! for its whole lifetime, so after the first verification the signature
//! check (an ES256 or EdDSA verification costs tens of microseconds) and the
//! claims parsing are repeated work. The cache maps SHA-256 of the whole
//! token string to the identity its verification returned, shared: a hit
//! is a reference count, not a copy of the claims, and carries the
//! identity headers' values made for the token's first request.
//!
//! What keeps this as strict as verifying every time:
//! - only tokens that verified are stored; a forged or altered token is a
//!   different string, so it misses and is verified (and refused) in full;
//! - an entry is served only while `now < exp`; from `exp` on the token is
//!   verified again, so an expired token still reports `Expired`, with the
//!   configured leeway applied by the verifier alone;
//! - the key is a collision-resistant hash of every byte of the token, so no
//!   token can be made to look up another's entry;
//! - the cache belongs to one `JwtService`: new keys or settings mean a new
//!   service and an empty cache.
//!
//! Size is bounded: [`MAX_ENTRIES`] across [`SHARDS`] shards. A full shard
//! first drops expired entries, then the older half of what is left.
//! Expired entries also leave every [`SWEEP_SECS`] (checked at an insert
//! into the shard), so the cache follows the tokens alive now rather than
//! filling up to its bound with dead ones: the soak run (bench/soak.sh)
//! saw RSS grow 45 % in two minutes under a steady flow of short-lived
//! tokens before this.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use super::Identity;

/// The most tokens remembered at once. Each costs about 0.8 KiB with
/// typical claims (the identity, its header values, the key): measured,
/// 38.6 MB of RSS for 65,536 insertions, of which 49,152 stayed (a full
/// shard evicts its older half).
pub const MAX_ENTRIES: usize = 64 * 1024;
/// How often a shard drops its expired entries, at most (seconds).
pub const SWEEP_SECS: u64 = 10;
/// Independent locks, so threads verifying different tokens rarely meet.
const SHARDS: usize = 16;

pub type TokenKey = [u8; 32];

#[derive(Debug)]
struct Entry {
    identity: Arc<Identity>,
    /// Insertion order within the shard, for evicting the oldest half.
    seq: u64,
}

/// The key is already a SHA-256: its first bytes are as good a hash as
/// any, and SipHash over all 32 would be wasted work on every request.
/// Shared with the identity assertion's cache, keyed the same way.
#[derive(Debug, Default)]
pub(super) struct KeyHasher(u64);

/// Which of `shards` a SHA-256 key lives in: its last byte, since the
/// first eight are [`KeyHasher`]'s hash within the shard.
pub(super) fn shard_index(key: &[u8; 32], shards: usize) -> usize {
    usize::from(key[31]) % shards
}

impl Hasher for KeyHasher {
    // An array hashes its length first, then its bytes: the last write wins.
    fn write(&mut self, bytes: &[u8]) {
        if let Some(head) = bytes.first_chunk::<8>() {
            self.0 = u64::from_le_bytes(*head);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Drops the entries `live` refuses, when the shard is `full` or
/// [`SWEEP_SECS`] have passed since `swept_at` (updated here), and gives
/// back the table a burst left. Shared with the identity assertion's cache.
pub(super) fn drop_expired<K: Eq + std::hash::Hash, V>(
    entries: &mut HashMap<K, V, BuildHasherDefault<KeyHasher>>,
    swept_at: &mut u64,
    full: bool,
    now: u64,
    live: impl Fn(&V) -> bool,
) {
    if !full && now < *swept_at + SWEEP_SECS {
        return;
    }
    entries.retain(|_, e| live(e));
    *swept_at = now;
    // A burst's table would otherwise stay allocated for good.
    let len = entries.len();
    if entries.capacity() > 4 * len.max(64) {
        entries.shrink_to(2 * len);
    }
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<TokenKey, Entry, BuildHasherDefault<KeyHasher>>,
    next_seq: u64,
    /// When the shard last dropped its expired entries (unix seconds).
    swept_at: u64,
}

#[derive(Debug)]
pub struct TokenCache {
    shards: Box<[RwLock<Shard>]>,
    per_shard: usize,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::with_capacity(MAX_ENTRIES)
    }
}

impl TokenCache {
    /// A cache of at most `capacity` entries (rounded up to whole shards).
    pub fn with_capacity(capacity: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    pub fn key(token: &str) -> TokenKey {
        Sha256::digest(token.as_bytes()).into()
    }

    fn shard(&self, key: &TokenKey) -> &RwLock<Shard> {
        &self.shards[shard_index(key, SHARDS)]
    }

    /// The identity of a token verified before, while `now < exp`.
    pub fn get(&self, key: &TokenKey, now: u64) -> Option<Arc<Identity>> {
        let shard = self.shard(key).read().unwrap_or_else(|e| e.into_inner());
        shard
            .entries
            .get(key)
            .filter(|entry| now < entry.identity.exp)
            .map(|entry| entry.identity.clone())
    }

    /// Remembers the identity of a token that just verified.
    pub fn insert(&self, key: TokenKey, identity: &Arc<Identity>, now: u64) {
        if now >= identity.exp {
            return;
        }
        let mut shard = self.shard(&key).write().unwrap_or_else(|e| e.into_inner());
        if shard.entries.contains_key(&key) {
            return;
        }
        let full = shard.entries.len() >= self.per_shard;
        let Shard {
            entries, swept_at, ..
        } = &mut *shard;
        drop_expired(entries, swept_at, full, now, |e| now < e.identity.exp);
        if shard.entries.len() >= self.per_shard {
            // Sequence numbers are dense per shard, so this keeps the newer
            // half: amortized O(1) per insert even under a flood of tokens.
            let keep_from = shard.next_seq.saturating_sub((self.per_shard / 2) as u64);
            shard.entries.retain(|_, e| e.seq >= keep_from);
        }
        let seq = shard.next_seq;
        shard.next_seq += 1;
        shard.entries.insert(
            key,
            Entry {
                identity: identity.clone(),
                seq,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).entries.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, exp: u64) -> Arc<Identity> {
        Arc::new(Identity {
            sub: sub.into(),
            exp,
            email: Some(format!("{sub}@example.com")),
            roles: vec!["admin".into()],
            ..Identity::default()
        })
    }

    #[test]
    fn hit_returns_the_stored_claims() {
        let cache = TokenCache::default();
        let key = TokenCache::key("a.b.c");
        assert!(cache.get(&key, 100).is_none());
        cache.insert(key, &claims("alice", 200), 100);
        let hit = cache.get(&key, 150).unwrap();
        assert_eq!(hit.sub, "alice");
        assert_eq!(hit.email.as_deref(), Some("alice@example.com"));
        // Another token, even one byte apart, misses.
        assert!(cache.get(&TokenCache::key("a.b.d"), 150).is_none());
    }

    #[test]
    fn expired_entries_leave_without_the_cache_filling_up() {
        let cache = TokenCache::default();
        for i in 0..1000 {
            cache.insert(TokenCache::key(&format!("old{i}")), &claims("a", 110), 100);
        }
        assert_eq!(cache.len(), 1000);
        // Far below the bound, but past their exp and a sweep interval:
        // the next inserts into each shard drop them.
        let later = 110 + SWEEP_SECS;
        for i in 0..200 {
            cache.insert(
                TokenCache::key(&format!("new{i}")),
                &claims("b", later + 60),
                later,
            );
        }
        assert_eq!(cache.len(), 200);
    }

    #[test]
    fn entries_stop_at_exp() {
        let cache = TokenCache::default();
        let key = TokenCache::key("t");
        cache.insert(key, &claims("bob", 200), 100);
        assert!(cache.get(&key, 199).is_some());
        assert!(cache.get(&key, 200).is_none());
        assert!(cache.get(&key, 500).is_none());
        // An already expired token is never stored.
        let late = TokenCache::key("late");
        cache.insert(late, &claims("carol", 200), 200);
        assert!(cache.get(&late, 100).is_none());
    }

    #[test]
    fn size_is_bounded_and_expired_entries_go_first() {
        let capacity = SHARDS * 8;
        let cache = TokenCache::with_capacity(capacity);
        for i in 0..capacity {
            cache.insert(TokenCache::key(&format!("old{i}")), &claims("o", 110), 100);
        }
        // At 120 the old entries have expired: they make room for new ones
        // without touching the live ones.
        let live: Vec<TokenKey> = (0..capacity * 4)
            .map(|i| TokenCache::key(&format!("new{i}")))
            .collect();
        for key in &live {
            cache.insert(*key, &claims("n", 1000), 120);
            assert!(cache.len() <= capacity);
        }
        assert!(cache.len() >= capacity / 2);
        assert!(cache.get(live.last().unwrap(), 130).is_some());
        assert!(
            cache.get(&live[0], 130).is_none(),
            "the oldest were evicted"
        );
    }
}
