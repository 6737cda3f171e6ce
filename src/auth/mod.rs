//! Authentication: who is calling, proven by a JWT (or renewed by a
//! refresh token), and the endpoints that hand those tokens out.

pub mod assertion;
pub mod authenticate;
pub mod csrf;
pub mod jwt;
pub mod login;
pub mod password;
pub mod redirect;
pub mod refresh;
pub mod second_factor;
pub mod throttle;
pub mod token_cache;

use std::sync::OnceLock;

use http::HeaderValue;
use serde_json::{Map, Value};

use crate::sessions::FamilyId;

/// The authenticated caller, as the pipeline and the upstream see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    pub sub: String,
    pub email: Option<String>,
    pub roles: Vec<String>,
    /// Further claims, for `[identity] claims` and `/userinfo`.
    pub extra: Map<String, Value>,
    /// Expiry of the access token (seconds since the epoch).
    pub exp: u64,
    /// The session (refresh-token family) the token belongs to, if any.
    pub session: Option<FamilyId>,
    /// The identity headers' values, made on first use. A verified token's
    /// identity is shared from the token cache, so each token's values are
    /// made once, not on every request that presents it.
    pub header_values: OnceLock<IdentityValues>,
}

/// The values of the three identity headers; `None` where the claim is
/// absent or cannot be a header value (such a header is not sent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdentityValues {
    pub user: Option<HeaderValue>,
    pub email: Option<HeaderValue>,
    pub roles: Option<HeaderValue>,
}

impl Identity {
    pub fn has_any_role(&self, roles: &[String]) -> bool {
        roles.is_empty() || roles.iter().any(|r| self.roles.contains(r))
    }

    /// Names a user for the log line, where only the name is known (a
    /// login).
    pub fn named(username: &str) -> Identity {
        Identity {
            sub: username.to_owned(),
            ..Identity::default()
        }
    }

    pub fn header_values(&self) -> &IdentityValues {
        self.header_values.get_or_init(|| IdentityValues {
            user: HeaderValue::from_str(&self.sub).ok(),
            email: self
                .email
                .as_deref()
                .and_then(|email| HeaderValue::from_str(email).ok()),
            roles: HeaderValue::from_str(&self.roles.join(",")).ok(),
        })
    }
}
