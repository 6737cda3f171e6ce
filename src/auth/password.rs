//! bcrypt, kept off the proxy's threads.
//!
//! Hashes run on tokio's blocking pool behind a semaphore, so a login storm
//! queues for bcrypt instead of occupying the workers that proxy requests,
//! and at a lower CPU priority (nice +10), so on a core shared with a
//! worker, bcrypt yields it to proxied requests instead of holding it for a
//! whole time slice; logins still progress, only slower under full load.
//! An unknown user is checked against a dummy hash of the same cost, so the
//! answer takes as long as for a real user with a wrong password.

use std::sync::Arc;

use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    cost: u32,
    dummy_hash: Arc<str>,
}

impl Passwords {
    /// `max_concurrent` 0 means one hash per CPU core.
    pub async fn new(cost: u32, max_concurrent: usize) -> anyhow::Result<Passwords> {
        let max_concurrent = if max_concurrent == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            max_concurrent
        };
        let dummy_hash = tokio::task::spawn_blocking(move || {
            let password: [u8; 16] = rand::random();
            bcrypt::hash(password, cost)
        })
        .await??;
        Ok(Passwords {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            cost,
            dummy_hash: dummy_hash.into(),
        })
    }

    /// Whether `password` matches `hash`; with `None` (no such user, or a
    /// store that has no usable hash) the dummy hash is verified and the
    /// answer is `false`.
    pub async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closes");
        let known = hash.is_some();
        let hash: Arc<str> = match hash {
            Some(h) => h.into(),
            None => self.dummy_hash.clone(),
        };
        let matched = tokio::task::spawn_blocking(move || {
            yield_to_requests();
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        known && matched
    }

    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closes");
        let cost = self.cost;
        Ok(tokio::task::spawn_blocking(move || {
            yield_to_requests();
            bcrypt::hash(password.as_bytes(), cost)
        })
        .await??)
    }
}

/// How much lower a thread that hashes passwords runs (added to its nice
/// value).
const HASHING_NICENESS: libc::c_int = 10;

/// Lowers the calling (blocking-pool) thread's CPU priority, once: the
/// scheduler then lets a proxy worker that wakes up preempt bcrypt at once.
/// An unprivileged thread cannot raise its priority back, so the thread
/// stays lowered for whatever blocking work it takes later (DNS lookups,
/// file reads: background work too).
fn yield_to_requests() {
    thread_local!(static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if LOWERED.replace(true) {
        return;
    }
    // On Linux the nice value belongs to the thread: `who` 0 is this one.
    // SAFETY: reads and sets this thread's own nice value; integers only.
    let lowered = unsafe {
        let current = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, current + HASHING_NICENESS)
    };
    if lowered != 0 {
        tracing::debug!(event = "hashing_priority_unchanged", error = %std::io::Error::last_os_error());
    }
}

/// Hashes on the calling thread, for the CLI.
pub fn hash_blocking(password: &str, cost: u32) -> anyhow::Result<String> {
    Ok(bcrypt::hash(password.as_bytes(), cost)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_and_refuses() {
        let p = Passwords::new(4, 0).await.unwrap();
        let hash = p.hash("s3cret".into()).await.unwrap();
        assert!(p.verify("s3cret".into(), Some(hash.clone())).await);
        assert!(!p.verify("wrong".into(), Some(hash)).await);
        assert!(!p.verify("s3cret".into(), None).await);
        // $2y$ (PHP) and $2a$ hashes verify too.
        let y = hash_blocking("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        assert!(p.verify("pw".into(), Some(y)).await);
    }

    #[tokio::test]
    async fn hashing_threads_run_at_a_lower_priority() {
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let (before, after) = tokio::task::spawn_blocking(move || {
            let before = nice();
            yield_to_requests();
            yield_to_requests();
            (before, nice())
        })
        .await
        .unwrap();
        assert_eq!(after, (before + HASHING_NICENESS).min(19), "lowered once");
        assert_eq!(nice(), before, "the worker thread keeps its priority");
    }
}
