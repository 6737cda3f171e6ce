//! Wall-clock time, injectable. Everything that judges an expiry (token
//! `exp`/`nbf`, refresh-token lifetimes, throttle windows, a WebSocket's
//! session check) reads the gateway's [`Clock`] instead of the system
//! time, so a test moves time forward instead of sleeping through it.
//!
//! Deadlines that only bound waiting (timeouts, idle connections) use
//! tokio's monotonic time, which tests pause and advance on their own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The system clock, or the system clock moved forward by a test.
/// Cloning shares the offset: a test that holds a clone of the gateway's
/// clock moves the gateway's time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None` for the plain system clock (no atomic read per call).
    offset_ms: Option<Arc<AtomicU64>>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The system clock, movable with [`Clock::advance`].
    pub fn manual() -> Clock {
        Clock {
            offset_ms: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves this clock (and every clone of it) forward. A system clock
    /// cannot be moved: that is a bug in the caller, so it panics.
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .as_ref()
            .expect("only a manual clock can be moved")
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        match &self.offset_ms {
            None => now,
            Some(offset) => now + Duration::from_millis(offset.load(Ordering::Relaxed)),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn unix_secs(&self) -> u64 {
        self.unix().as_secs()
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> u64 {
        self.unix().as_millis() as u64
    }

    fn unix(&self) -> Duration {
        self.now().duration_since(UNIX_EPOCH).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_with_its_clones() {
        let clock = Clock::manual();
        let seen_by_gateway = clock.clone();
        let before = seen_by_gateway.unix_secs();
        clock.advance(Duration::from_secs(3600));
        let after = seen_by_gateway.unix_secs();
        assert!(
            (3600..3700).contains(&(after - before)),
            "{before} -> {after}"
        );
    }

    #[test]
    #[should_panic(expected = "manual")]
    fn the_system_clock_cannot_be_moved() {
        Clock::system().advance(Duration::from_secs(1));
    }
}
