//! The second step of a login for users with a second factor (TOTP): the
//! code sent along with a right password, checked against the user's
//! secret at the gateway's [`Clock`], and accepted once.
//!
//! Replay: the step a code matched is recorded per user in the session
//! store ([`SessionStore::use_otp_step`]); that step and older ones are then
//! refused for that user, on every instance sharing the store. The caller
//! counts a refused code in the login throttle as a failed password.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::response::GatewayError;
use crate::sessions::SessionStore;
use crate::totp::{self, TotpKey};
use crate::users::User;

/// How long an accepted step is remembered: past the last moment a code of
/// that step is accepted (its own step and `TOLERANCE` after it), with a
/// step of margin.
const REPLAY_TTL: Duration = Duration::from_secs(totp::PERIOD * (2 * totp::TOLERANCE + 2));

#[derive(Debug, Clone)]
pub struct SecondFactor {
    /// `None` when `[users] totp_key_env` names an unset variable.
    key: Option<Arc<TotpKey>>,
    store: Arc<dyn SessionStore>,
    clock: Clock,
}

/// The replay record's key for `username`: case-folded, as the throttle's,
/// so a case-insensitive user store cannot give one user two records.
fn replay_key(username: &str) -> String {
    format!("otp:{}", username.to_lowercase())
}

/// Records `step` as used for `username` in `store`, as a login that
/// accepted one of its codes does: `users totp enroll` calls it with the
/// step of the code that confirmed the enrollment, which anyone who saw
/// that code could otherwise still log in with (beside the password) for
/// up to `TOLERANCE` steps. `false` when that step or a later one was
/// already used.
pub async fn use_step(
    store: &dyn SessionStore,
    username: &str,
    step: u64,
) -> Result<bool, crate::sessions::StoreError> {
    store
        .use_otp_step(&replay_key(username), step, REPLAY_TTL)
        .await
}

impl SecondFactor {
    pub fn new(key: Option<TotpKey>, store: Arc<dyn SessionStore>, clock: Clock) -> SecondFactor {
        SecondFactor {
            key: key.map(Arc::new),
            store,
            clock,
        }
    }

    pub fn key(&self) -> Option<&TotpKey> {
        self.key.as_deref()
    }

    /// Checks the one-time code of `user`, whose password was right. A user
    /// without a second factor passes. Errors: [`GatewayError::OtpRequired`]
    /// (no code sent), [`GatewayError::OtpInvalid`] (wrong, malformed or
    /// replayed code); a store that cannot answer refuses (503).
    pub async fn check(&self, user: &User, otp: Option<&str>) -> Result<(), GatewayError> {
        let Some(sealed) = &user.totp else {
            return Ok(());
        };
        let Some(otp) = otp.filter(|otp| !otp.trim().is_empty()) else {
            return Err(GatewayError::OtpRequired);
        };
        let secret = self
            .key
            .as_ref()
            .ok_or_else(|| {
                "a user has a second factor but the TOTP key is not set (serve checks this at start \
                 only when the user store answers)"
                    .to_string()
            })
            .and_then(|key| {
                key.open(&user.username, sealed)
                    .map_err(|e| format!("the second-factor secret of {:?}: {e}", user.username))
            })
            .map_err(|e| GatewayError::Internal(e.into()))?;
        let Some(step) = secret.verify(otp, self.clock.unix_secs()) else {
            return Err(GatewayError::OtpInvalid);
        };
        let fresh = use_step(self.store.as_ref(), &user.username, step)
            .await
            .map_err(|e| GatewayError::Unavailable(Box::new(e)))?;
        if !fresh {
            tracing::warn!(event = "otp_replayed", user = %user.username, "a one-time code of an already used step was refused");
            return Err(GatewayError::OtpInvalid);
        }
        Ok(())
    }

    /// A sign-in ticket for `user`, whose password was right (the sign-in
    /// page's second step); `None` without a key.
    pub fn ticket(&self, user: &User) -> Option<String> {
        Some(self.key.as_ref()?.ticket(user, self.clock.unix_millis()))
    }

    /// The username of a ticket still valid.
    pub fn redeem(&self, ticket: &str) -> Option<totp::Ticket> {
        self.key.as_ref()?.redeem(ticket, self.clock.unix_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::memory::MemorySessionStore;
    use crate::totp::Secret;

    #[tokio::test]
    async fn a_code_is_accepted_once_and_never_an_older_one_after() {
        let clock = Clock::manual();
        let key = TotpKey::new(&[9; 32], "K");
        let secret = Secret::generate();
        let user = User {
            username: "Alice".into(),
            totp: Some(key.seal("Alice", &secret)),
            ..User::default()
        };
        let store = Arc::new(MemorySessionStore::new(clock.clone()));
        let factor = SecondFactor::new(Some(key), store, clock.clone());
        let now = || clock.unix_secs() / totp::PERIOD;
        let code = |step: u64| format!("{:06}", secret.code_at(step));
        assert!(matches!(
            factor.check(&user, None).await,
            Err(GatewayError::OtpRequired)
        ));
        // The step ahead: accepted now, and still in the window should the
        // real clock cross a step boundary during the test.
        let step = now() + 1;
        factor.check(&user, Some(&code(step))).await.unwrap();
        assert!(matches!(
            factor.check(&user, Some(&code(step))).await,
            Err(GatewayError::OtpInvalid)
        ));
        // Still inside the tolerance, but older than the one used.
        assert!(matches!(
            factor.check(&user, Some(&code(step - 1))).await,
            Err(GatewayError::OtpInvalid)
        ));
        clock.advance(Duration::from_secs(2 * totp::PERIOD));
        factor.check(&user, Some(&code(step + 1))).await.unwrap();
        let plain = User {
            username: "bob".into(),
            ..User::default()
        };
        factor.check(&plain, None).await.unwrap();
    }
}
