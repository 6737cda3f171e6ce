//! Login throttling (`[auth.throttle]`): a password guesser gets
//! `max_failures` tries per username and `ip_max_failures` per client
//! address within `window`; past that every attempt is answered 429 with
//! `Retry-After`, before any bcrypt runs, until `ban` has passed.
//!
//! A username's attempt is counted *before* its password is checked, so a
//! burst of parallel guesses at one account cannot all slip in ahead of the
//! first recorded failure (nor keep bcrypt busy); a success clears the
//! count. An address is charged only for failures: many people behind one
//! NAT or proxy logging in at once are not guessers, and the rule
//! is "after N failed logins". The counts live in the session store, so
//! every instance sharing a Redis agrees; a store that cannot answer
//! refuses the login (503) rather than letting it through uncounted.
//!
//! Keys: `user:<lowercased username>` (a case-insensitive user store must
//! not give `Alice` and `alice` separate budgets) and `ip:<address>`, IPv6
//! clients by their /64 (one host usually holds a whole /64).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use crate::client_ip::TrustedProxies;
use crate::config::ThrottleConfig;
use crate::response::GatewayError;
use crate::sessions::{FailureLimits, SessionStore, StoreError};

#[derive(Debug)]
pub struct Throttle {
    store: Arc<dyn SessionStore>,
    config: ThrottleConfig,
    proxies: TrustedProxies,
}

/// A login attempt that passed the throttle; report how it went.
#[must_use = "report the outcome with failed() or succeeded()"]
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    user: Option<String>,
    ip: Option<String>,
}

fn unavailable(e: StoreError) -> GatewayError {
    GatewayError::Unavailable(Box::new(e))
}

pub fn user_key(username: &str) -> String {
    format!("user:{}", username.to_lowercase())
}

pub fn ip_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => {
            let net = ipnet::Ipv6Net::new(v6, 64).map_or(v6, |n| n.network());
            format!("ip:{net}/64")
        }
    }
}

impl Throttle {
    pub fn new(
        store: Arc<dyn SessionStore>,
        config: &ThrottleConfig,
        proxies: TrustedProxies,
    ) -> Throttle {
        Throttle {
            store,
            config: config.clone(),
            proxies,
        }
    }

    fn limits(&self, limit: u64) -> FailureLimits {
        FailureLimits {
            window: self.config.window,
            limit,
            ban: self.config.ban,
        }
    }

    /// Counts an attempt to log in as `username`; refuses it (429) when the
    /// username or the client address is banned or has used its budget.
    pub async fn begin(
        &self,
        username: &str,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<Attempt<'_>, GatewayError> {
        let client = self.proxies.client_ip(headers, peer.ip());
        let user = (self.config.max_failures > 0).then(|| user_key(username));
        let ip = (self.config.ip_max_failures > 0).then(|| ip_key(client));
        let attempt = Attempt {
            throttle: self,
            user,
            ip,
        };
        let mut banned = Duration::ZERO;
        if let Some(user) = &attempt.user {
            let refused = self
                .store
                .count_attempt(user, self.limits(self.config.max_failures))
                .await
                .map_err(unavailable)?;
            banned = banned.max(refused.unwrap_or_default());
        }
        if let Some(ip) = &attempt.ip {
            let refused = self.store.ban_remaining(ip).await.map_err(unavailable)?;
            banned = banned.max(refused.unwrap_or_default());
        }
        if banned.is_zero() {
            return Ok(attempt);
        }
        tracing::warn!(
            event = "login_throttled",
            user = %username,
            client = %client,
            retry_after_secs = retry_after_secs(banned),
        );
        Err(GatewayError::TooManyRequests {
            retry_after_secs: retry_after_secs(banned),
        })
    }
}

/// Whole seconds, rounded up, at least 1.
fn retry_after_secs(banned: Duration) -> u64 {
    banned.as_millis().div_ceil(1000).max(1) as u64
}

impl Attempt<'_> {
    /// The password was wrong: the username's attempt stays counted, and
    /// the address is charged; its `ip_max_failures`-th failure bans it.
    pub async fn failed(self) -> Result<(), GatewayError> {
        let Some(ip) = &self.ip else { return Ok(()) };
        let throttle = self.throttle;
        let limits = throttle.limits(throttle.config.ip_max_failures - 1);
        throttle
            .store
            .count_attempt(ip, limits)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The password was right and a second factor is still to come: the
    /// username's attempt stays counted (a code guesser who knows the
    /// password gets no fresh budget), the address is not charged.
    pub fn second_step(self) {}

    /// The password was right: clear the username's count.
    pub async fn succeeded(self) -> Result<(), GatewayError> {
        if let Some(user) = &self.user {
            let store = &self.throttle.store;
            store.reset_failures(user).await.map_err(unavailable)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::sessions::memory::MemorySessionStore;

    fn throttle(max: u64, ip_max: u64) -> Throttle {
        throttle_on(Clock::manual(), max, ip_max)
    }

    fn throttle_on(clock: Clock, max: u64, ip_max: u64) -> Throttle {
        Throttle::new(
            Arc::new(MemorySessionStore::new(clock)),
            &ThrottleConfig {
                max_failures: max,
                window: Duration::from_secs(60),
                ip_max_failures: ip_max,
                ban: Duration::from_secs(120),
            },
            TrustedProxies::default(),
        )
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    /// A login attempt that passes the throttle and then fails.
    async fn fail(t: &Throttle, username: &str, ip: &str) {
        let attempt = t.begin(username, &HeaderMap::new(), peer(ip)).await;
        attempt.unwrap().failed().await.unwrap();
    }

    #[tokio::test]
    async fn username_budget_then_ban() {
        let t = throttle(2, 0);
        let h = HeaderMap::new();
        for _ in 0..2 {
            fail(&t, "Alice", "192.0.2.1").await;
        }
        // Another case, another address: the same username.
        let e = t.begin("alice", &h, peer("192.0.2.2")).await.unwrap_err();
        assert!(matches!(
            e,
            GatewayError::TooManyRequests {
                retry_after_secs: 120
            }
        ));
        assert!(t.begin("bob", &h, peer("192.0.2.1")).await.is_ok());
    }

    /// Retry-After counts down with the clock, and the ban ends with it.
    #[tokio::test]
    async fn a_ban_ends_by_the_clock() {
        let clock = Clock::manual();
        let t = throttle_on(clock.clone(), 0, 1);
        let h = HeaderMap::new();
        fail(&t, "alice", "192.0.2.1").await;
        clock.advance(Duration::from_secs(90));
        let e = t.begin("bob", &h, peer("192.0.2.1")).await.unwrap_err();
        assert!(matches!(
            e,
            GatewayError::TooManyRequests {
                retry_after_secs: 30
            }
        ));
        clock.advance(Duration::from_secs(30));
        assert!(t.begin("bob", &h, peer("192.0.2.1")).await.is_ok());
    }

    #[tokio::test]
    async fn success_clears_the_username_and_the_address_counts_failures_only() {
        let t = throttle(2, 3);
        let h = HeaderMap::new();
        fail(&t, "alice", "192.0.2.1").await;
        let ok = t.begin("alice", &h, peer("192.0.2.1")).await.unwrap();
        ok.succeeded().await.unwrap();
        // alice starts afresh; the address has one failure on record, and
        // its third failure bans it.
        fail(&t, "alice", "192.0.2.1").await;
        fail(&t, "bob", "192.0.2.1").await;
        t.begin("carol", &h, peer("192.0.2.1")).await.unwrap_err();
    }

    #[tokio::test]
    async fn logins_in_flight_from_one_address_are_not_failures() {
        let t = throttle(5, 3);
        let h = HeaderMap::new();
        let mut attempts = Vec::new();
        for i in 0..10 {
            let user = format!("user{i}");
            attempts.push(t.begin(&user, &h, peer("192.0.2.1")).await.unwrap());
        }
        for attempt in attempts {
            attempt.succeeded().await.unwrap();
        }
        assert!(t.begin("user0", &h, peer("192.0.2.1")).await.is_ok());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(
            ip_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            ip_key("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_eq!(
            ip_key("2001:db8:1:2::9".parse().unwrap()),
            "ip:2001:db8:1:2::/64"
        );
        assert_eq!(ip_key("::ffff:192.0.2.1".parse().unwrap()), "ip:192.0.2.1");
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    }
}
