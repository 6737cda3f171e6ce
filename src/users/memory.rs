//! Users held in memory: the `dev` user of `authgate serve --dev`.

use std::collections::BTreeMap;
use std::sync::RwLock;

use async_trait::async_trait;

use super::{validate_user, User, UserStore, UserStoreError};

#[derive(Debug, Default)]
pub struct MemoryUserStore {
    users: RwLock<BTreeMap<String, User>>,
}

impl MemoryUserStore {
    pub fn new(users: impl IntoIterator<Item = User>) -> MemoryUserStore {
        MemoryUserStore {
            users: RwLock::new(users.into_iter().map(|u| (u.username.clone(), u)).collect()),
        }
    }
}

#[async_trait]
impl UserStore for MemoryUserStore {
    async fn find(&self, username: &str) -> Result<Option<User>, UserStoreError> {
        Ok(self
            .users
            .read()
            .expect("users lock")
            .get(username)
            .cloned())
    }

    async fn list(&self) -> Result<Vec<User>, UserStoreError> {
        Ok(self
            .users
            .read()
            .expect("users lock")
            .values()
            .cloned()
            .collect())
    }

    async fn add(&self, user: User) -> Result<(), UserStoreError> {
        validate_user(&user)?;
        let mut users = self.users.write().expect("users lock");
        if users.contains_key(&user.username) {
            return Err(UserStoreError::Exists(user.username));
        }
        users.insert(user.username.clone(), user);
        Ok(())
    }

    async fn set_password(&self, username: &str, hash: &str) -> Result<(), UserStoreError> {
        let mut users = self.users.write().expect("users lock");
        let user = users
            .get_mut(username)
            .ok_or_else(|| UserStoreError::NotFound(username.into()))?;
        user.password_hash = hash.into();
        Ok(())
    }

    async fn delete(&self, username: &str) -> Result<(), UserStoreError> {
        self.users
            .write()
            .expect("users lock")
            .remove(username)
            .map(drop)
            .ok_or_else(|| UserStoreError::NotFound(username.into()))
    }

    async fn set_totp(&self, username: &str, sealed: Option<&str>) -> Result<(), UserStoreError> {
        let mut users = self.users.write().expect("users lock");
        let user = users
            .get_mut(username)
            .ok_or_else(|| UserStoreError::NotFound(username.into()))?;
        user.totp = sealed.map(str::to_string);
        Ok(())
    }

    async fn check(&self) -> Result<(), UserStoreError> {
        Ok(())
    }
}
