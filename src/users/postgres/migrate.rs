//! Versioned migrations of authgate's own tables.
//!
//! The SQL lives in `migrations/` at the repository root and is embedded in
//! the binary, so `authgate users migrate` needs no files beside it. Each
//! schema records what it has applied in its own `schema_migrations` table
//! (version, name, SHA-256 of the SQL, time), so several gateways can keep
//! their users in separate schemas of one database. A migration's text never
//! changes once released: a new change is a new file with the next number.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::quote_ident;
use crate::sessions::hex;

#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    sql: &'static str,
}

impl Migration {
    fn checksum(&self) -> String {
        hex(&Sha256::digest(self.sql.as_bytes()))
    }
}

/// Every migration, in order; versions are 1, 2, 3, ...
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "users",
        sql: include_str!("../../../migrations/0001_users.sql"),
    },
    Migration {
        version: 2,
        name: "totp",
        sql: include_str!("../../../migrations/0002_totp.sql"),
    },
];

/// The version a schema must be at for this authgate.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Where a schema stands against [`MIGRATIONS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// Every migration is applied.
    Current,
    /// No `schema_migrations` table there: never migrated (or no such schema).
    Missing,
    /// Applied up to `at`; this authgate needs [`latest`].
    Behind { at: i32 },
    /// A newer authgate migrated it further than this one knows.
    Ahead { at: i32 },
    /// An applied migration whose SQL differs from the one embedded here.
    Changed { version: i32 },
}

impl SchemaState {
    /// What an operator reads when the gateway refuses to start.
    pub fn problem(&self, schema: &str) -> Option<String> {
        let latest = latest();
        match self {
            SchemaState::Current | SchemaState::Ahead { .. } => None,
            SchemaState::Missing => Some(format!(
                "PostgreSQL schema {schema:?} has no authgate tables: run `authgate users migrate` to create them"
            )),
            SchemaState::Behind { at } => Some(format!(
                "PostgreSQL schema {schema:?} is at migration {at}, this authgate needs {latest}: run `authgate users migrate`"
            )),
            SchemaState::Changed { version } => Some(format!(
                "migration {version} recorded in PostgreSQL schema {schema:?} differs from the one this authgate ships; \
                 the schema was migrated by a modified build"
            )),
        }
    }
}

/// Reads `(version, checksum)` of what `schema` has applied; `None` when it
/// has no `schema_migrations` table.
async fn applied(
    client: &Client,
    schema: &str,
) -> Result<Option<Vec<(i32, String)>>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass(format('%I.schema_migrations', $1::text)) IS NOT NULL",
            &[&schema],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let sql = format!(
        "SELECT version, checksum FROM {}.schema_migrations ORDER BY version",
        quote_ident(schema)
    );
    let rows = client.query(&sql, &[]).await?;
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

fn compare(applied: Option<&[(i32, String)]>) -> SchemaState {
    let Some(applied) = applied else {
        return SchemaState::Missing;
    };
    for (version, checksum) in applied {
        if let Some(m) = MIGRATIONS.iter().find(|m| m.version == *version) {
            if m.checksum() != *checksum {
                return SchemaState::Changed { version: *version };
            }
        }
    }
    let at = applied.iter().map(|(v, _)| *v).max().unwrap_or(0);
    let missing = MIGRATIONS
        .iter()
        .any(|m| !applied.iter().any(|(v, _)| *v == m.version));
    if missing {
        SchemaState::Behind { at }
    } else if at > latest() {
        SchemaState::Ahead { at }
    } else {
        SchemaState::Current
    }
}

pub async fn state(client: &Client, schema: &str) -> Result<SchemaState, tokio_postgres::Error> {
    Ok(compare(applied(client, schema).await?.as_deref()))
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Refused(String),
}

/// Creates `schema` when missing and applies the migrations it lacks, in one
/// transaction. Concurrent runs on the same schema wait for each other (an
/// advisory lock), so two gateways deploying at once cannot both apply.
/// Returns the migrations applied now (none when already current).
pub async fn migrate(
    client: &mut Client,
    schema: &str,
) -> Result<Vec<&'static Migration>, MigrateError> {
    let quoted = quote_ident(schema);
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('authgate migrate ' || $1::text))",
        &[&schema],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted};
         SET LOCAL search_path TO {quoted};
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             checksum   text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let rows = tx
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?;
    let done: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    if let state @ SchemaState::Changed { .. } = compare(Some(&done)) {
        return Err(MigrateError::Refused(
            state.problem(schema).unwrap_or_default(),
        ));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        if done.iter().any(|(v, _)| *v == m.version) {
            continue;
        }
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum()],
        )
        .await?;
        applied.push(m);
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
    }

    #[test]
    fn states() {
        let all: Vec<(i32, String)> = MIGRATIONS
            .iter()
            .map(|m| (m.version, m.checksum()))
            .collect();
        assert_eq!(compare(None), SchemaState::Missing);
        assert_eq!(compare(Some(&all)), SchemaState::Current);
        assert_eq!(compare(Some(&[])), SchemaState::Behind { at: 0 });
        let mut ahead = all.clone();
        ahead.push((latest() + 1, "x".into()));
        assert_eq!(
            compare(Some(&ahead)),
            SchemaState::Ahead { at: latest() + 1 }
        );
        let mut changed = all.clone();
        changed[0].1 = "0".repeat(64);
        assert_eq!(compare(Some(&changed)), SchemaState::Changed { version: 1 });
        assert!(SchemaState::Missing
            .problem("auth")
            .unwrap()
            .contains("authgate users migrate"));
    }
}
