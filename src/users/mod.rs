//! Where users live: the embedded users file, or a PostgreSQL table.
//! Both sit behind [`UserStore`]; the rest of authgate never knows which.

pub mod file;
pub mod memory;
pub mod postgres;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Config, UsersBackend};

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
}

#[derive(Debug, thiserror::Error)]
pub enum UserStoreError {
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no user {0:?}")]
    NotFound(String),
    #[error("invalid users data: {0}")]
    Invalid(String),
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
    /// Fails when the store can only be read.
    fn writable(&self) -> Result<(), UserStoreError> {
        Ok(())
    }
    /// Fails while the store cannot answer (readiness).
    async fn check(&self) -> Result<(), UserStoreError>;
    /// Re-reads the backing data where that means something (SIGHUP).
    fn reload(&self) {}
}

/// Opens the configured store. For the CLI the file store does not watch.
pub async fn open(config: &Config, watch: bool) -> anyhow::Result<Arc<dyn UserStore>> {
    Ok(match config.users.backend {
        UsersBackend::File => {
            let store = Arc::new(file::FileUserStore::open(&config.users.path)?);
            if watch {
                store.clone().watch();
            }
            store
        }
        UsersBackend::Postgres => Arc::new(postgres::PostgresUserStore::open(config, watch).await?),
    })
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
