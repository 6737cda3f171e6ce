//! bcrypt, kept off the proxy's threads.
//!
//! Hashes run behind a semaphore, each on a thread of its own at the
//! `SCHED_IDLE` policy (see [`on_idle_thread`]): a login storm queues for
//! bcrypt instead of occupying the workers that proxy requests, and bcrypt
//! runs on the CPU time they leave.
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
        let dummy_hash = on_idle_thread(move || {
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
        let matched =
            on_idle_thread(move || bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false))
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
        Ok(on_idle_thread(move || bcrypt::hash(password.as_bytes(), cost)).await??)
    }
}

/// Runs `work` on a new thread at the `SCHED_IDLE` policy: bcrypt then
/// gets the CPU time the proxy leaves, and a worker that wakes on a core
/// shared with it preempts it at once. Under a load that keeps every core
/// busy, hashes slow down (the kernel still gives an idle thread a sliver
/// of a busy core) rather than proxied requests. A thread per hash costs
/// tens of microseconds against bcrypt's tens of milliseconds, and keeps
/// the policy off tokio's blocking pool, whose threads also resolve
/// upstream names.
async fn on_idle_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("authgate-bcrypt".into())
        .spawn(move || {
            let param = libc::sched_param { sched_priority: 0 };
            // On Linux the policy belongs to the thread: pid 0 is this one.
            // SAFETY: `param` is valid for the call; this thread only.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                let error = std::io::Error::last_os_error();
                tracing::debug!(event = "hashing_priority_unchanged", error = %error);
            }
            let _ = done.send(work());
        })?;
    Ok(result.await?)
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
    async fn hashes_run_on_threads_at_idle_priority() {
        // SAFETY: reads the calling thread's own policy.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        assert_eq!(on_idle_thread(policy).await.unwrap(), libc::SCHED_IDLE);
        assert_eq!(policy(), libc::SCHED_OTHER, "the worker keeps its policy");
    }
}
