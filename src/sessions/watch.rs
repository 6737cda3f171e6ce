//! The open WebSockets of this instance, by session, and how the end of a
//! session reaches them.
//!
//! The cost is per instance, not per socket: one task per gateway
//! - listens for revocations ([`SessionStore::revocations`]: Redis pub/sub
//!   on `{key_prefix}revoked`, or the memory store itself) and closes the
//!   sockets of a revoked family at once;
//! - every [`SAFETY_NET_INTERVAL`] checks all open families in one batch
//!   ([`SessionStore::families_alive`]), for a message that was missed and
//!   for sessions that expired, and ends Bearer sockets whose token's `exp`
//!   has passed (by the gateway's clock, asking no one);
//! - when the subscription is lost (a Redis outage), subscribes again with
//!   backoff and runs the batched check at once, to catch up.
//!
//! A store that cannot answer keeps every socket open: new requests are
//! refused meanwhile, existing sockets are not cut by an outage. The
//! failure is logged once per outage, not per socket.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{oneshot, watch};

use super::{FamilyId, Revocations, SessionStore, StoreError};
use crate::clock::Clock;

/// How often every open socket's session is checked in one batch, behind
/// the revocation messages.
pub const SAFETY_NET_INTERVAL: Duration = Duration::from_secs(1);
/// First wait before subscribing again after the subscription is lost;
/// doubled at each failure up to [`RESUBSCRIBE_MAX`].
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);

/// Why a watched socket must close.
pub const SESSION_ENDED: &str = "session_ended";
pub const TOKEN_EXPIRED: &str = "token_expired";

/// The registry of open sockets; cloned into every gateway a reload builds,
/// so sockets opened before a reload stay watched.
#[derive(Debug, Clone)]
pub struct SocketWatch {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SessionStore>,
    clock: Clock,
    sockets: Mutex<Sockets>,
    /// Set while the store or the subscription fails, so an outage is
    /// logged once.
    failing: AtomicBool,
    /// Dropped with the registry: the task ends.
    _stop: watch::Sender<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketWatch").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Sockets {
    next_id: u64,
    open: HashMap<u64, Socket>,
    by_family: HashMap<FamilyId, HashSet<u64>>,
}

struct Socket {
    family: Option<FamilyId>,
    /// A Bearer token's `exp` (seconds since the epoch).
    expires: Option<u64>,
    end: oneshot::Sender<&'static str>,
}

impl Sockets {
    /// Tells socket `id` why it ends and forgets it.
    fn end(&mut self, id: u64, reason: &'static str) {
        let Some(socket) = self.open.remove(&id) else {
            return;
        };
        if let Some(family) = socket.family {
            if let Some(ids) = self.by_family.get_mut(&family) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_family.remove(&family);
                }
            }
        }
        // The socket may have closed meanwhile; nothing to tell then.
        let _ = socket.end.send(reason);
    }

    fn end_family(&mut self, family: &FamilyId, reason: &'static str) -> usize {
        let ids: Vec<u64> = self
            .by_family
            .get(family)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        for id in &ids {
            self.end(*id, reason);
        }
        ids.len()
    }
}

/// One watched socket: resolves [`Watched::ended`] when it must close, and
/// leaves the registry when dropped.
#[derive(Debug)]
pub struct Watched {
    inner: Arc<Inner>,
    id: u64,
    ended: oneshot::Receiver<&'static str>,
}

impl Watched {
    /// Why the socket must close; never resolves while its session and
    /// token are valid.
    pub async fn ended(&mut self) -> &'static str {
        match (&mut self.ended).await {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut sockets = self.inner.lock();
        if let Some(socket) = sockets.open.remove(&self.id) {
            if let Some(family) = socket.family {
                if let Some(ids) = sockets.by_family.get_mut(&family) {
                    ids.remove(&self.id);
                    if ids.is_empty() {
                        sockets.by_family.remove(&family);
                    }
                }
            }
        }
    }
}

impl SocketWatch {
    /// Starts the instance's watch task (it ends when the last clone and
    /// the last watched socket are gone).
    pub fn start(store: Arc<dyn SessionStore>, clock: Clock) -> SocketWatch {
        let (stop, stopped) = watch::channel(());
        let inner = Arc::new(Inner {
            store,
            clock,
            sockets: Mutex::default(),
            failing: AtomicBool::new(false),
            _stop: stop,
        });
        tokio::spawn(run(Arc::downgrade(&inner), stopped));
        SocketWatch { inner }
    }

    /// Watches a socket bounded by session `family` and/or, for a Bearer
    /// token, by `expires` (its `exp`).
    pub fn watch(&self, family: Option<FamilyId>, expires: Option<u64>) -> Watched {
        let (end, ended) = oneshot::channel();
        let mut sockets = self.inner.lock();
        let id = sockets.next_id;
        sockets.next_id += 1;
        if let Some(family) = family {
            sockets.by_family.entry(family).or_default().insert(id);
        }
        sockets.open.insert(
            id,
            Socket {
                family,
                expires,
                end,
            },
        );
        drop(sockets);
        Watched {
            inner: self.inner.clone(),
            id,
            ended,
        }
    }

    /// How many sockets are watched.
    pub fn len(&self) -> usize {
        self.inner.lock().open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sockets> {
        // Each change is one map update; a panic cannot leave half of one.
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, what: &'static str, e: &StoreError) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                event = "websocket_session_check_failed",
                what,
                error = %e,
                "keeping open sockets open until the session store answers"
            );
        }
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(event = "websocket_session_check_recovered");
        }
    }

    fn revoked(&self, family: &FamilyId) {
        let closed = self.lock().end_family(family, SESSION_ENDED);
        crate::observe::metrics::get().websocket_revocations("message", closed);
    }

    /// Ends the Bearer sockets whose token has expired, then checks every
    /// open family in one batch.
    async fn check(&self) {
        let now = self.clock.unix_secs();
        let families: Vec<FamilyId> = {
            let mut sockets = self.lock();
            let expired: Vec<u64> = sockets
                .open
                .iter()
                .filter(|(_, s)| s.expires.is_some_and(|exp| now > exp))
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                sockets.end(id, TOKEN_EXPIRED);
            }
            sockets.by_family.keys().copied().collect()
        };
        if families.is_empty() {
            return;
        }
        match self.store.families_alive(&families).await {
            Ok(alive) => {
                self.recovered();
                let mut sockets = self.lock();
                let closed: usize = families
                    .iter()
                    .zip(alive)
                    .filter(|(_, alive)| !alive)
                    .map(|(family, _)| sockets.end_family(family, SESSION_ENDED))
                    .sum();
                drop(sockets);
                crate::observe::metrics::get().websocket_revocations("check", closed);
            }
            Err(e) => self.failed("check", &e),
        }
    }
}

/// The watch task: revocation messages, the safety net, resubscription.
async fn run(inner: Weak<Inner>, mut stopped: watch::Receiver<()>) {
    let mut tick = tokio::time::interval(SAFETY_NET_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut messages: Option<Revocations> = None;
    let mut backoff = RESUBSCRIBE_MIN;
    let resubscribe = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(resubscribe);
    loop {
        let event = tokio::select! {
            _ = stopped.changed() => return,
            _ = tick.tick() => Event::Check,
            message = next(&mut messages) => Event::Message(message),
            () = &mut resubscribe, if messages.is_none() => Event::Subscribe,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match event {
            Event::Check => inner.check().await,
            Event::Message(Some(family)) => inner.revoked(&family),
            Event::Message(None) => {
                messages = None;
                backoff = RESUBSCRIBE_MIN;
                resubscribe
                    .as_mut()
                    .reset(tokio::time::Instant::now() + backoff);
                tracing::debug!(event = "websocket_revocations_lost");
            }
            Event::Subscribe => match inner.store.revocations().await {
                Ok(stream) => {
                    messages = Some(stream);
                    backoff = RESUBSCRIBE_MIN;
                    // What was revoked while nobody listened.
                    inner.check().await;
                }
                Err(e) => {
                    inner.failed("subscribe", &e);
                    backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
                    resubscribe
                        .as_mut()
                        .reset(tokio::time::Instant::now() + backoff);
                }
            },
        }
    }
}

enum Event {
    Check,
    /// A revoked family, or `None` when the subscription ended.
    Message(Option<FamilyId>),
    Subscribe,
}

/// The next revocation; pending while not subscribed.
async fn next(messages: &mut Option<Revocations>) -> Option<FamilyId> {
    match messages {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::memory::MemorySessionStore;

    const WAIT: Duration = Duration::from_secs(5);

    async fn session(store: &MemorySessionStore, clock: &Clock, id: u8) -> FamilyId {
        let family = [id; 16];
        let ttl = Duration::from_secs(3600);
        store
            .create(&family, "alice", &[id; 32], clock.unix_millis(), ttl)
            .await
            .unwrap();
        family
    }

    #[tokio::test]
    async fn a_revocation_ends_its_familys_sockets_and_no_other() {
        let clock = Clock::manual();
        let store = Arc::new(MemorySessionStore::new(clock.clone()));
        let watch = SocketWatch::start(store.clone(), clock.clone());
        let (one, two) = (
            session(&store, &clock, 1).await,
            session(&store, &clock, 2).await,
        );
        let mut first = watch.watch(Some(one), None);
        let mut second = watch.watch(Some(one), None);
        let mut other = watch.watch(Some(two), None);
        // Let the task subscribe before the revocation.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(store.revoke(&one, &[1; 32]).await.unwrap().is_some());
        for watched in [&mut first, &mut second] {
            let reason = tokio::time::timeout(WAIT, watched.ended()).await;
            assert_eq!(reason.unwrap(), SESSION_ENDED);
        }
        let still = tokio::time::timeout(SAFETY_NET_INTERVAL * 2, other.ended()).await;
        assert!(still.is_err(), "another session's socket ended");
        assert_eq!(watch.len(), 1);
        drop(other);
        assert!(watch.is_empty());
    }

    #[tokio::test]
    async fn a_bearer_socket_ends_at_its_exp_by_the_clock() {
        let clock = Clock::manual();
        let store = Arc::new(MemorySessionStore::new(clock.clone()));
        let watch = SocketWatch::start(store, clock.clone());
        let exp = clock.unix_secs() + 60;
        let mut bearer = watch.watch(None, Some(exp));
        let early = tokio::time::timeout(SAFETY_NET_INTERVAL * 2, bearer.ended()).await;
        assert!(early.is_err(), "ended before its exp");
        clock.advance(Duration::from_secs(61));
        let reason = tokio::time::timeout(WAIT, bearer.ended()).await;
        assert_eq!(reason.unwrap(), TOKEN_EXPIRED);
    }
}
