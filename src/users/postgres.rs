//! PostgreSQL user store (issue 9): placeholder until implemented.

use async_trait::async_trait;

use super::{User, UserStore, UserStoreError};
use crate::config::PostgresConfig;

#[derive(Debug)]
pub struct PostgresUserStore {}

impl PostgresUserStore {
    pub async fn open(_config: &PostgresConfig, _watch: bool) -> anyhow::Result<PostgresUserStore> {
        anyhow::bail!("users.backend = \"postgres\" is not available yet")
    }
}

#[async_trait]
impl UserStore for PostgresUserStore {
    async fn find(&self, _username: &str) -> Result<Option<User>, UserStoreError> {
        unreachable!()
    }
    async fn list(&self) -> Result<Vec<User>, UserStoreError> {
        unreachable!()
    }
    async fn add(&self, _user: User) -> Result<(), UserStoreError> {
        unreachable!()
    }
    async fn set_password(&self, _username: &str, _hash: &str) -> Result<(), UserStoreError> {
        unreachable!()
    }
    async fn delete(&self, _username: &str) -> Result<(), UserStoreError> {
        unreachable!()
    }
    async fn check(&self) -> Result<(), UserStoreError> {
        unreachable!()
    }
}
