//! Where users live: the embedded users file, or a PostgreSQL table.
//! Both sit behind [`UserStore`]; the rest of authgate never knows which.

pub mod file;
pub mod memory;
pub mod postgres;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Config, ConfigError, UsersBackend};
use crate::totp::TotpKey;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub username: String,
    pub password_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Further claims put into this user's access tokens.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
    /// The second factor's secret, sealed (`crate::totp`): `v1:...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserStoreError {
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no user {0:?}")]
    NotFound(String),
    #[error("invalid users data: {0}")]
    Invalid(String),
    /// A users file that cannot be used as it is (at start, on reload, or
    /// before the CLI edits it). Shown whole in one line, the same for
    /// `serve` and `check-config`.
    #[error("{}: {problem}", path.display())]
    File {
        path: std::path::PathBuf,
        problem: file::UsersFileError,
    },
    /// A user whose data could not travel safely in identity headers.
    #[error(transparent)]
    InvalidUser(#[from] UserProblem),
    /// The store cannot be written (a mapped PostgreSQL table).
    #[error("{0}")]
    ReadOnly(String),
    #[error("user store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[async_trait]
pub trait UserStore: Send + Sync + std::fmt::Debug {
    /// The user, enabled or not; `None` when there is no such user.
    async fn find(&self, username: &str) -> Result<Option<User>, UserStoreError>;
    async fn list(&self) -> Result<Vec<User>, UserStoreError>;
    async fn add(&self, user: User) -> Result<(), UserStoreError>;
    async fn set_password(&self, username: &str, hash: &str) -> Result<(), UserStoreError>;
    async fn delete(&self, username: &str) -> Result<(), UserStoreError>;
    /// Sets (`Some`, sealed) or removes (`None`) a user's second factor.
    async fn set_totp(&self, username: &str, sealed: Option<&str>) -> Result<(), UserStoreError>;
    /// Fails when the store can only be read.
    fn writable(&self) -> Result<(), UserStoreError> {
        Ok(())
    }
    /// Fails while the store cannot answer (readiness).
    async fn check(&self) -> Result<(), UserStoreError>;
    /// Re-reads the backing data where that means something (SIGHUP).
    fn reload(&self) {}
}

/// Opens the configured store for the CLI: the file store does not watch,
/// and second factors are not checked.
pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn UserStore>> {
    Ok(match config.users.backend {
        UsersBackend::File => Arc::new(file::FileUserStore::open(&config.users.path)?),
        UsersBackend::Postgres => Arc::new(postgres::PostgresUserStore::open(config, false).await?),
    })
}

/// Opens the configured store for the gateway: the file store watches its
/// file, and every second factor must open with `totp` (the key of
/// `[users] totp_key_env`, `None` when unset). A database that does not
/// answer yet is not checked (its rows are, one by one, at login).
pub async fn open_for_serve(
    config: &Config,
    totp: Option<TotpKey>,
) -> anyhow::Result<Arc<dyn UserStore>> {
    let env = &config.users.totp_key_env;
    let problem = |message: String| ConfigError {
        file: config.file.clone(),
        problems: vec![env.problem(message)],
    };
    Ok(match config.users.backend {
        UsersBackend::File => {
            let store = Arc::new(file::FileUserStore::open_checked(
                &config.users.path,
                totp,
                &env.value,
            )?);
            store.clone().watch();
            store
        }
        UsersBackend::Postgres => {
            let store = Arc::new(postgres::PostgresUserStore::open(config, true).await?);
            match store.list().await {
                Ok(users) => {
                    crate::totp::check_users(&users, totp.as_ref(), &env.value).map_err(problem)?
                }
                Err(e) => tracing::warn!(
                    event = "totp_check_skipped",
                    error = %e,
                    "second factors not checked at start: the user store does not answer"
                ),
            }
            store
        }
    })
}

/// Why a user's data is refused wherever users come in (users file, a
/// PostgreSQL row, the CLI). Names, roles, emails and claims end up in the
/// identity headers sent to upstreams: a comma inside one role reads there
/// as two roles (`dev,admin` would grant `admin` to an upstream while
/// authgate checked `dev,admin`), and a control character makes the value
/// unsendable, so the header would silently go missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserProblem {
    #[error(
        "invalid username {0:?}: it must be 1 to 128 characters without spaces, commas or control characters"
    )]
    Username(String),
    #[error("user {user:?}: role {role:?} contains a comma, whitespace or a control character")]
    Role { user: String, role: String },
    #[error("user {user:?}: the email contains a control character")]
    Email { user: String },
    #[error("user {user:?}: the value of claim {claim:?} contains a control character")]
    Claim { user: String, claim: String },
}

impl UserProblem {
    /// The user concerned, as found in the data.
    pub fn user(&self) -> &str {
        match self {
            UserProblem::Username(user)
            | UserProblem::Role { user, .. }
            | UserProblem::Email { user }
            | UserProblem::Claim { user, .. } => user,
        }
    }

    /// The field at fault, as the users file names it.
    pub fn field(&self) -> &'static str {
        match self {
            UserProblem::Username(_) => "username",
            UserProblem::Role { .. } => "roles",
            UserProblem::Email { .. } => "email",
            UserProblem::Claim { .. } => "claims",
        }
    }
}

/// The one check of a user's data, for every store and the CLI.
pub fn validate_user(user: &User) -> Result<(), UserProblem> {
    let named = || user.username.clone();
    if !valid_username(&user.username) {
        return Err(UserProblem::Username(named()));
    }
    if let Some(role) = user.roles.iter().find(|role| !valid_role(role)) {
        return Err(UserProblem::Role {
            user: named(),
            role: role.clone(),
        });
    }
    if user
        .email
        .as_deref()
        .is_some_and(|email| email.chars().any(char::is_control))
    {
        return Err(UserProblem::Email { user: named() });
    }
    // Only string values are copied into headers as they are; any other
    // value is sent as JSON, where a control character is escaped.
    if let Some((claim, _)) = user.claims.iter().find(|(_, value)| {
        value
            .as_str()
            .is_some_and(|s| s.chars().any(char::is_control))
    }) {
        return Err(UserProblem::Claim {
            user: named(),
            claim: claim.clone(),
        });
    }
    Ok(())
}

/// Roles are joined with commas in `X-Auth-Roles`.
fn valid_role(role: &str) -> bool {
    role.chars()
        .all(|c| !c.is_control() && !c.is_whitespace() && c != ',')
}

/// Usernames are printable, without spaces or control characters, so they
/// are safe in headers and logs.
pub fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != ',')
}
