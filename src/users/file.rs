//! The embedded user store: a TOML file of `[[users]]` tables.
//!
//! The running gateway re-reads it when it changes on disk (polled once a
//! second, and on SIGHUP); a broken edit keeps the last good version and
//! logs why. The CLI edits it with `toml_edit`, so comments and layout
//! survive, and writes atomically (temp file, then rename).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

use super::{validate_user, User, UserProblem, UserStore, UserStoreError};
use crate::totp::TotpKey;

/// How often the file's modification time is checked.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<User>,
}

type Users = Arc<HashMap<String, User>>;

#[derive(Debug)]
pub struct FileUserStore {
    path: PathBuf,
    users: RwLock<Users>,
    stamp: RwLock<Option<(SystemTime, u64)>>,
    /// For the gateway: every second factor must open with this key (or
    /// its absence), at start and at each reload. The CLI does not check.
    totp: Option<TotpCheck>,
}

#[derive(Debug)]
struct TotpCheck {
    key: Option<TotpKey>,
    env: String,
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Why a users file cannot be used. Each problem with one user names its
/// place in the file (`users[1].roles`) and the user.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    #[error("cannot read it: {0}")]
    Unreadable(std::io::Error),
    #[error("{0}")]
    Syntax(toml::de::Error),
    #[error("users[{index}].{}: {problem}", problem.field())]
    User { index: usize, problem: UserProblem },
    #[error("users[{index}].password_hash: user {user:?}: not a bcrypt hash")]
    NotBcrypt { index: usize, user: String },
    #[error("users[{index}].username: user {user:?} is listed twice")]
    Duplicate { index: usize, user: String },
    /// A second factor the gateway could not check (see `crate::totp`).
    #[error("{0}")]
    SecondFactor(String),
}

/// Parses and checks a users file's text.
fn parse(text: &str) -> Result<HashMap<String, User>, UsersFileError> {
    let file: UsersFile = toml::from_str(text).map_err(UsersFileError::Syntax)?;
    let mut users = HashMap::with_capacity(file.users.len());
    for (index, user) in file.users.into_iter().enumerate() {
        validate_user(&user).map_err(|problem| UsersFileError::User { index, problem })?;
        if !user.password_hash.starts_with("$2") {
            return Err(UsersFileError::NotBcrypt {
                index,
                user: user.username,
            });
        }
        let name = user.username.clone();
        if users.insert(name.clone(), user).is_some() {
            return Err(UsersFileError::Duplicate { index, user: name });
        }
    }
    Ok(users)
}

/// Reads and checks the users file at `path`, as the gateway does at start
/// and on every reload (and `check-config` does too); a missing file holds
/// no users.
pub fn read_users_file(path: &Path) -> Result<HashMap<String, User>, UserStoreError> {
    let problem = |problem| UserStoreError::File {
        path: path.to_path_buf(),
        problem,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map_err(problem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(problem(UsersFileError::Unreadable(e))),
    }
}

impl FileUserStore {
    /// Opens the file; a missing file is an empty store (the CLI creates it).
    pub fn open(path: &Path) -> Result<FileUserStore, UserStoreError> {
        let users = read_users_file(path)?;
        if users.is_empty() && !path.exists() {
            tracing::warn!(event = "users_file_missing", path = %path.display(), "users file does not exist yet; no one can log in");
        }
        Ok(FileUserStore {
            path: path.to_path_buf(),
            users: RwLock::new(Arc::new(users)),
            stamp: RwLock::new(stamp_of(path)),
            totp: None,
        })
    }

    /// [`Self::open`] for the gateway: refuses a file with a second factor
    /// that `key` (from `env`) cannot open, now and at every reload.
    pub fn open_checked(
        path: &Path,
        key: Option<TotpKey>,
        env: &str,
    ) -> Result<FileUserStore, UserStoreError> {
        let mut store = Self::open(path)?;
        store.totp = Some(TotpCheck {
            key,
            env: env.into(),
        });
        let users = store.snapshot();
        store
            .check_second_factors(&users)
            .map_err(|problem| store.file_problem(problem))?;
        Ok(store)
    }

    fn check_second_factors(&self, users: &HashMap<String, User>) -> Result<(), UsersFileError> {
        let Some(check) = &self.totp else {
            return Ok(());
        };
        let mut sorted: Vec<&User> = users.values().collect();
        sorted.sort_by(|a, b| a.username.cmp(&b.username));
        crate::totp::check_users(sorted, check.key.as_ref(), &check.env)
            .map_err(UsersFileError::SecondFactor)
    }

    fn snapshot(&self) -> Users {
        self.users.read().expect("users lock").clone()
    }

    /// Re-reads the file if it changed since the last read.
    fn reload_if_changed(&self) {
        let now = stamp_of(&self.path);
        if now == *self.stamp.read().expect("stamp lock") {
            return;
        }
        *self.stamp.write().expect("stamp lock") = now;
        self.reload_now();
    }

    fn reload_now(&self) {
        // Unlike at start, a file gone missing is an error here: the
        // users already loaded stay.
        let result = std::fs::read_to_string(&self.path)
            .map_err(UsersFileError::Unreadable)
            .and_then(|text| parse(&text))
            .and_then(|users| self.check_second_factors(&users).map(|()| users));
        match result {
            Ok(users) => {
                tracing::info!(event = "users_reloaded", path = %self.path.display(), users = users.len());
                *self.users.write().expect("users lock") = Arc::new(users);
            }
            Err(why) => tracing::error!(
                event = "users_reload_failed",
                path = %self.path.display(),
                error = %why,
                "users file not reloaded; keeping the last good version"
            ),
        }
    }

    /// Polls the file for changes while the store is alive.
    pub fn watch(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { break };
                // A stat a second; the read happens only on change.
                store.reload_if_changed();
            }
        });
    }

    /// Applies `edit` to the file's document and writes it back atomically.
    fn edit(
        &self,
        edit: impl FnOnce(&mut ArrayOfTables) -> Result<(), UserStoreError>,
    ) -> Result<(), UserStoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.file_problem(UsersFileError::Unreadable(e))),
        };
        parse(&text).map_err(|problem| self.file_problem(problem))?;
        let mut doc: DocumentMut = text
            .parse()
            .map_err(|e: toml_edit::TomlError| UserStoreError::Invalid(e.to_string()))?;
        if !doc.contains_key("users") {
            doc.insert("users", Item::ArrayOfTables(ArrayOfTables::new()));
        }
        let users = doc["users"]
            .as_array_of_tables_mut()
            .ok_or_else(|| UserStoreError::Invalid("`users` must be an array of tables".into()))?;
        edit(users)?;
        let new_text = doc.to_string();
        parse(&new_text).map_err(|problem| self.file_problem(problem))?;
        write_atomically(&self.path, new_text.as_bytes()).map_err(|e| {
            UserStoreError::Invalid(format!("writing {}: {e}", self.path.display()))
        })?;
        self.reload_if_changed();
        Ok(())
    }

    fn file_problem(&self, problem: UsersFileError) -> UserStoreError {
        UserStoreError::File {
            path: self.path.clone(),
            problem,
        }
    }
}

fn position(users: &ArrayOfTables, username: &str) -> Option<usize> {
    users
        .iter()
        .position(|t| t.get("username").and_then(Item::as_str) == Some(username))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir, path)?;
    tmp.1.write_all(bytes)?;
    tmp.1.sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp.0, meta.permissions())?;
    }
    std::fs::rename(&tmp.0, path)
}

/// A new file beside `path`, readable by its owner only (it holds hashes).
fn tempfile_in(dir: &Path, path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("users.toml");
    let tmp = dir.join(format!(".{name}.{}.tmp", rand::random::<u64>()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    Ok((tmp, file))
}

#[async_trait]
impl UserStore for FileUserStore {
    async fn find(&self, username: &str) -> Result<Option<User>, UserStoreError> {
        Ok(self.snapshot().get(username).cloned())
    }

    async fn list(&self) -> Result<Vec<User>, UserStoreError> {
        let mut users: Vec<User> = self.snapshot().values().cloned().collect();
        users.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(users)
    }

    async fn add(&self, user: User) -> Result<(), UserStoreError> {
        validate_user(&user)?;
        self.edit(|users| {
            if position(users, &user.username).is_some() {
                return Err(UserStoreError::Exists(user.username.clone()));
            }
            let mut table = Table::new();
            table.insert("username", value(&user.username));
            table.insert("password_hash", value(&user.password_hash));
            if let Some(email) = &user.email {
                table.insert("email", value(email));
            }
            table.insert("roles", value(user.roles.iter().collect::<Array>()));
            if user.disabled {
                table.insert("disabled", value(true));
            }
            users.push(table);
            Ok(())
        })
    }

    async fn set_password(&self, username: &str, hash: &str) -> Result<(), UserStoreError> {
        self.edit(|users| {
            let i = position(users, username)
                .ok_or_else(|| UserStoreError::NotFound(username.into()))?;
            let table = users.get_mut(i).expect("position is in range");
            table.insert("password_hash", value(hash));
            Ok(())
        })
    }

    async fn delete(&self, username: &str) -> Result<(), UserStoreError> {
        self.edit(|users| {
            let i = position(users, username)
                .ok_or_else(|| UserStoreError::NotFound(username.into()))?;
            users.remove(i);
            Ok(())
        })
    }

    async fn set_totp(&self, username: &str, sealed: Option<&str>) -> Result<(), UserStoreError> {
        self.edit(|users| {
            let i = position(users, username)
                .ok_or_else(|| UserStoreError::NotFound(username.into()))?;
            let table = users.get_mut(i).expect("position is in range");
            match sealed {
                Some(sealed) => {
                    table.insert("totp", value(sealed));
                }
                None => {
                    table.remove("totp");
                }
            }
            Ok(())
        })
    }

    async fn check(&self) -> Result<(), UserStoreError> {
        Ok(())
    }

    fn reload(&self) {
        *self.stamp.write().expect("stamp lock") = stamp_of(&self.path);
        self.reload_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2b$04$abcdefghijklmnopqrstuu5Xh0kmQyO.A3mLSRZtVGhn7nUz3rS9u";

    #[tokio::test]
    async fn edits_keep_comments_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            format!("# our team\n[[users]]\nusername = \"alice\" # the boss\npassword_hash = \"{HASH}\"\nroles = [\"admin\"]\n"),
        )
        .unwrap();
        let store = FileUserStore::open(&path).unwrap();
        store
            .add(User {
                username: "bob".into(),
                password_hash: HASH.into(),
                roles: vec!["dev".into()],
                ..User::default()
            })
            .await
            .unwrap();
        assert!(matches!(
            store
                .add(User {
                    username: "bob".into(),
                    password_hash: HASH.into(),
                    ..User::default()
                })
                .await,
            Err(UserStoreError::Exists(_))
        ));
        store.set_password("alice", "$2b$04$new").await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# our team\n"), "{text}");
        assert!(text.contains("# the boss"), "{text}");
        assert_eq!(
            store.find("alice").await.unwrap().unwrap().password_hash,
            "$2b$04$new"
        );
        store.delete("alice").await.unwrap();
        assert!(store.find("alice").await.unwrap().is_none());
        assert_eq!(store.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn broken_edit_keeps_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            format!("[[users]]\nusername = \"alice\"\npassword_hash = \"{HASH}\"\n"),
        )
        .unwrap();
        let store = FileUserStore::open(&path).unwrap();
        std::fs::write(&path, "[[users]]\nusername = \"alice\"\nbroken = \n").unwrap();
        store.reload();
        assert!(store.find("alice").await.unwrap().is_some());
    }

    #[test]
    fn duplicate_users_are_refused() {
        let text = format!(
            "[[users]]\nusername = \"a\"\npassword_hash = \"{HASH}\"\n[[users]]\nusername = \"a\"\npassword_hash = \"{HASH}\"\n"
        );
        assert!(matches!(
            parse(&text),
            Err(UsersFileError::Duplicate { index: 1, .. })
        ));
    }
}
