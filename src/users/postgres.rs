//! PostgreSQL user store: authgate's own `users` table in the configured
//! schema (created by `authgate users migrate`, see [`migrate`]), or an
//! existing application's table mapped read-only (`[users] table` and
//! `[users.columns]`).
//!
//! A database that answers with a missing or outdated schema stops the
//! gateway at start, with the command to run. A database that does not
//! answer does not: the gateway starts, `/readyz` reports not ready, logins
//! and refreshes answer 503, and the schema is checked on first contact.
//! Every operation is bounded by short timeouts, so a dead database costs a
//! quick 503 rather than a hung request; the pool drops connections the
//! server closed, and a read that meets a connection the server just ended
//! is sent again (up to twice) on another one, so a server restart costs no
//! failed login.

pub mod migrate;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, Pool, Runtime, Timeouts};
use tokio_postgres::error::{Severity, SqlState};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{validate_user, User, UserStore, UserStoreError};
use crate::config::{Config, ConfigError, Problem};
use migrate::SchemaState;

/// TCP connect to PostgreSQL, and a new pooled connection as a whole
/// (connect, startup, authentication): 2 s, unless the URL sets
/// `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One user-store operation, waiting for a pooled connection included: 5 s.
/// The server is told the same (`statement_timeout`) unless the URL passes
/// its own `options`.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a read is sent again after meeting a connection the server
/// had ended (after a restart, several idle connections may be).
const MAX_RETRIES: usize = 2;

/// The table `authgate users migrate` creates.
const OWN_TABLE: &str = "users";

/// `"name"`; names are plain identifiers (checked at config load), quoted
/// anyway so a reserved word or a capital letter means what it says.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The connection settings: the URL from `users.url_env`, with authgate's
/// timeouts and application name where the URL sets none.
pub fn connect_config(config: &Config) -> Result<tokio_postgres::Config, ConfigError> {
    let url_env = &config.users.postgres.url_env;
    let problem = |message: String| ConfigError {
        file: config.file.clone(),
        problems: vec![url_env.problem(message)],
    };
    let url = std::env::var(&url_env.value).map_err(|_| {
        problem(format!(
            "environment variable {} (or its .env entry) is not set; it must hold a postgres:// URL",
            url_env.value
        ))
    })?;
    // The URL carries a password: never echo it.
    let mut pg = tokio_postgres::Config::from_str(&url).map_err(|e| {
        problem(format!(
            "the value of {} is not a PostgreSQL URL: {e}",
            url_env.value
        ))
    })?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("authgate");
    }
    Ok(pg)
}

/// `authgate users migrate`: brings the configured schema to the latest
/// version. Returns what to tell the operator.
pub async fn migrate(config: &Config) -> anyhow::Result<String> {
    let pg = &config.users.postgres;
    if let Some(table) = &pg.table {
        return Ok(format!(
            "users.table maps the existing table {}.{}, which authgate only reads: nothing to migrate",
            pg.schema, table
        ));
    }
    let pg_config = connect_config(config)?;
    let (mut client, driver) = if wants_tls(&pg_config) {
        let (client, connection) = pg_config
            .connect(tls())
            .await
            .map_err(|e| unreachable(config, e.into()))?;
        (client, tokio::spawn(connection))
    } else {
        let (client, connection) = pg_config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| unreachable(config, e.into()))?;
        (client, tokio::spawn(connection))
    };
    let applied = migrate::migrate(&mut client, &pg.schema).await;
    drop(client);
    let _ = driver.await;
    let applied = applied?;
    let latest = migrate::latest();
    Ok(if applied.is_empty() {
        format!("schema {:?} is up to date (migration {latest})", pg.schema)
    } else {
        let names: Vec<String> = applied
            .iter()
            .map(|m| format!("migration {} ({})", m.version, m.name))
            .collect();
        format!(
            "schema {:?}: applied {} (now at migration {latest})",
            pg.schema,
            names.join(", ")
        )
    })
}

fn unreachable(config: &Config, e: BoxError) -> anyhow::Error {
    anyhow::Error::from_boxed(e).context(format!(
        "cannot reach PostgreSQL (the URL in {})",
        config.users.postgres.url_env.value
    ))
}

/// An error with its causes, for one log field.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    anyhow::Chain::new(e)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// The statements, built once from the configuration.
#[derive(Debug)]
struct Sql {
    find: String,
    list: String,
    insert: String,
    set_password: String,
    set_totp: String,
    delete: String,
}

impl Sql {
    fn new(config: &crate::config::PostgresConfig) -> Sql {
        let table = format!(
            "{}.{}",
            quote_ident(&config.schema),
            quote_ident(config.table.as_deref().unwrap_or(OWN_TABLE))
        );
        let c = &config.columns;
        let username = quote_ident(&c.username);
        // A mapped table has no second factor (it is only read; its
        // owner's schema has no place for one).
        let totp = if config.table.is_some() {
            "NULL::text"
        } else {
            "totp_secret"
        };
        // Casts let a mapped table use varchar, citext, varchar[] or an
        // integer flag; NULL roles or flags mean none and false.
        let select = format!(
            "SELECT {username}::text, {}::text, {}::text, coalesce({}::text[], '{{}}'), \
             coalesce({}::boolean, false), {totp} FROM {table}",
            quote_ident(&c.password_hash),
            quote_ident(&c.email),
            quote_ident(&c.roles),
            quote_ident(&c.disabled),
        );
        Sql {
            // The column stays bare so its unique index answers the login.
            find: format!("{select} WHERE {username} = $1"),
            list: format!("{select} WHERE {username} IS NOT NULL ORDER BY {username}"),
            insert: format!(
                "INSERT INTO {table} (username, email, hashed_password, roles, disabled) \
                 VALUES ($1, $2, $3, $4, $5)"
            ),
            set_password: format!("UPDATE {table} SET hashed_password = $2 WHERE username = $1"),
            set_totp: format!("UPDATE {table} SET totp_secret = $2 WHERE username = $1"),
            delete: format!("DELETE FROM {table} WHERE username = $1"),
        }
    }
}

/// One round trip to the database.
#[derive(Debug, Clone, Copy)]
enum Query<'a> {
    Ping,
    Find(&'a str),
    List,
    Insert(&'a User),
    SetPassword(&'a str, &'a str),
    SetTotp(&'a str, Option<&'a str>),
    Delete(&'a str),
}

impl Query<'_> {
    /// Safe to send twice: a write whose answer was lost may have happened.
    fn is_read(self) -> bool {
        matches!(self, Query::Ping | Query::Find(_) | Query::List)
    }
}

/// The connection is gone: closed, or ended by the server with a FATAL
/// error (`pg_terminate_backend`, a shutdown), which aborts the statement.
fn session_ended(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error().is_some_and(|db| {
            matches!(
                db.parsed_severity(),
                Some(Severity::Fatal | Severity::Panic)
            )
        })
}

#[derive(Debug)]
enum Answer {
    Rows(Vec<Row>),
    Count(u64),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the schema or the mapped table cannot be used (yet).
#[derive(Debug)]
enum VerifyError {
    /// No answer: no connection, or no reply in time.
    Unreachable(BoxError),
    /// The database answered: the schema or the mapped table is wrong.
    Schema(String),
}

fn no_answer(e: impl Into<BoxError>) -> VerifyError {
    VerifyError::Unreachable(e.into())
}

/// An error the database answered with (permission denied, no such
/// column) is a schema problem, described by `describe`; a lost session
/// is no answer.
fn answered(e: tokio_postgres::Error, describe: impl FnOnce(&str) -> String) -> VerifyError {
    match e.as_db_error() {
        Some(db) if !session_ended(&e) => VerifyError::Schema(describe(db.message())),
        _ => no_answer(e),
    }
}

fn unavailable(e: impl Into<BoxError>) -> UserStoreError {
    UserStoreError::Unavailable(e.into())
}

#[derive(Debug)]
pub struct PostgresUserStore {
    pool: Pool,
    schema: String,
    /// `Some("schema.table")` when mapping an existing table read-only.
    mapped: Option<String>,
    sql: Sql,
    /// Set once the schema (or the mapped table) has been found usable.
    verified: AtomicBool,
}

impl PostgresUserStore {
    /// Builds the pool and checks the schema. For the gateway (`serve`),
    /// a database that does not answer is logged and tolerated; for the
    /// CLI it is an error.
    pub async fn open(config: &Config, serve: bool) -> anyhow::Result<PostgresUserStore> {
        let pg = &config.users.postgres;
        let mut pg_config = connect_config(config)?;
        if pg_config.get_options().is_none() {
            pg_config.options(format!(
                "-c statement_timeout={}",
                STATEMENT_TIMEOUT.as_millis()
            ));
        }
        let pool = Pool::builder(manager(pg_config))
            .max_size(pg.pool_size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(STATEMENT_TIMEOUT),
                create: Some(CONNECT_TIMEOUT),
                recycle: Some(CONNECT_TIMEOUT),
            })
            .build()?;
        let store = PostgresUserStore {
            pool,
            schema: pg.schema.clone(),
            mapped: pg.table.as_ref().map(|t| format!("{}.{t}", pg.schema)),
            sql: Sql::new(pg),
            verified: AtomicBool::new(false),
        };
        let contact = tokio::time::timeout(STATEMENT_TIMEOUT, async {
            let client = store.pool.get().await.map_err(no_answer)?;
            store.verify(&client).await
        })
        .await
        .unwrap_or_else(|elapsed| Err(no_answer(elapsed)));
        match contact {
            Ok(()) => Ok(store),
            Err(VerifyError::Schema(message)) => Err(ConfigError {
                file: config.file.clone(),
                problems: vec![Problem {
                    line: None,
                    key: if store.mapped.is_some() {
                        "users.table"
                    } else {
                        "users.schema"
                    }
                    .into(),
                    message,
                }],
            }
            .into()),
            Err(VerifyError::Unreachable(e)) if serve => {
                tracing::warn!(
                    event = "postgres_unreachable",
                    error = %chain(&*e),
                    "PostgreSQL does not answer; starting anyway, not ready until it does (the schema is checked then)"
                );
                Ok(store)
            }
            Err(VerifyError::Unreachable(e)) => Err(unreachable(config, e)),
        }
    }

    /// Checks the schema version, or that the mapped table has the
    /// configured columns; remembers success.
    async fn verify(&self, client: &deadpool_postgres::Client) -> Result<(), VerifyError> {
        if let Some(table) = &self.mapped {
            // Preparing the login query checks the table and every column.
            client.prepare_cached(&self.sql.find).await.map_err(|e| {
                answered(e, |db| {
                    format!(
                        "the mapped table {table} cannot be read with the configured [users.columns]: {db}"
                    )
                })
            })?;
        } else {
            let state = migrate::state(client, &self.schema).await.map_err(|e| {
                answered(e, |db| {
                    format!(
                        "cannot read the migrations of schema {:?}: {db}",
                        self.schema
                    )
                })
            })?;
            if let Some(problem) = state.problem(&self.schema) {
                return Err(VerifyError::Schema(problem));
            }
            if let SchemaState::Ahead { at } = state {
                tracing::warn!(
                    event = "postgres_schema_newer",
                    schema = %self.schema,
                    at,
                    known = migrate::latest(),
                    "the schema was migrated by a newer authgate"
                );
            }
        }
        self.verified.store(true, Ordering::Release);
        Ok(())
    }

    /// A pooled connection to a verified schema.
    async fn client(&self) -> Result<deadpool_postgres::Client, UserStoreError> {
        let client = self.pool.get().await.map_err(unavailable)?;
        if !self.verified.load(Ordering::Acquire) {
            match self.verify(&client).await {
                Ok(()) => tracing::info!(
                    event = "postgres_connected",
                    schema = %self.schema,
                    "PostgreSQL answers and the schema is usable"
                ),
                Err(VerifyError::Schema(message)) => {
                    tracing::error!(event = "postgres_schema_invalid", error = %message);
                    return Err(unavailable(message));
                }
                Err(VerifyError::Unreachable(e)) => return Err(UserStoreError::Unavailable(e)),
            }
        }
        Ok(client)
    }

    /// Sends `query`, bounded by [`STATEMENT_TIMEOUT`].
    async fn run(&self, query: Query<'_>) -> Result<Answer, UserStoreError> {
        let attempts = async {
            let mut retries = 0;
            loop {
                let client = self.client().await?;
                let result = self.send(&client, query).await;
                let Err(e) = result else {
                    return result.map_err(|e| self.error(e, query));
                };
                if !session_ended(&e) {
                    return Err(self.error(e, query));
                }
                // The server ended this session (a restart) before the pool
                // noticed. Keep the connection out of the pool, which may
                // not see it closed yet, and send a read again.
                drop(deadpool_postgres::Object::take(client));
                if !query.is_read() || retries == MAX_RETRIES {
                    return Err(self.error(e, query));
                }
                tracing::info!(event = "postgres_reconnect", error = %chain(&e));
                retries += 1;
            }
        };
        tokio::time::timeout(STATEMENT_TIMEOUT, attempts)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "PostgreSQL did not answer within {STATEMENT_TIMEOUT:?}"
                )))
            })
    }

    async fn send(
        &self,
        client: &deadpool_postgres::Client,
        query: Query<'_>,
    ) -> Result<Answer, tokio_postgres::Error> {
        let sql = &self.sql;
        let (text, params): (&str, Vec<&(dyn ToSql + Sync)>) = match &query {
            Query::Ping => ("SELECT 1", vec![]),
            Query::Find(username) => (&sql.find, vec![username]),
            Query::List => (&sql.list, vec![]),
            Query::Insert(user) => (
                &sql.insert,
                vec![
                    &user.username,
                    &user.email,
                    &user.password_hash,
                    &user.roles,
                    &user.disabled,
                ],
            ),
            Query::SetPassword(username, hash) => (&sql.set_password, vec![username, hash]),
            Query::SetTotp(username, sealed) => (&sql.set_totp, vec![username, sealed]),
            Query::Delete(username) => (&sql.delete, vec![username]),
        };
        let statement = client.prepare_cached(text).await?;
        Ok(match query {
            Query::Find(_) | Query::List => Answer::Rows(client.query(&statement, &params).await?),
            _ => Answer::Count(client.execute(&statement, &params).await?),
        })
    }

    fn error(&self, e: tokio_postgres::Error, query: Query<'_>) -> UserStoreError {
        match (e.code(), query) {
            (Some(&SqlState::UNIQUE_VIOLATION), Query::Insert(user)) => {
                UserStoreError::Exists(user.username.clone())
            }
            _ => unavailable(e),
        }
    }

    async fn count(&self, query: Query<'_>) -> Result<u64, UserStoreError> {
        match self.run(query).await? {
            Answer::Count(n) => Ok(n),
            Answer::Rows(rows) => Ok(rows.len() as u64),
        }
    }

    async fn users(&self, query: Query<'_>) -> Result<Vec<User>, UserStoreError> {
        match self.run(query).await? {
            Answer::Rows(rows) => rows.iter().map(user_of).collect(),
            Answer::Count(_) => Ok(Vec::new()),
        }
    }
}

fn user_of(row: &Row) -> Result<User, UserStoreError> {
    let invalid = |e: tokio_postgres::Error| UserStoreError::Invalid(e.to_string());
    let roles: Vec<Option<String>> = row.try_get(3).map_err(invalid)?;
    Ok(User {
        username: row.try_get(0).map_err(invalid)?,
        // A NULL hash matches no password (and still costs a dummy bcrypt).
        password_hash: row
            .try_get::<_, Option<String>>(1)
            .map_err(invalid)?
            .unwrap_or_default(),
        email: row.try_get(2).map_err(invalid)?,
        roles: roles.into_iter().flatten().collect(),
        disabled: row.try_get(4).map_err(invalid)?,
        totp: row.try_get(5).map_err(invalid)?,
        ..User::default()
    })
}

#[async_trait]
impl UserStore for PostgresUserStore {
    /// A row whose data could not travel safely in identity headers (see
    /// [`super::UserProblem`]) refuses the login or refresh as the server-side data
    /// problem it is: the client gets a 500, the log names the user and
    /// the column, and the row is left for the operator to fix. The file
    /// store refuses such data when it loads; a table is only seen row by
    /// row.
    async fn find(&self, username: &str) -> Result<Option<User>, UserStoreError> {
        let user = self.users(Query::Find(username)).await?.into_iter().next();
        if let Some(problem) = user.as_ref().and_then(|u| validate_user(u).err()) {
            tracing::error!(
                event = "user_row_invalid",
                user = %problem.user(),
                field = problem.field(),
                error = %problem,
                "refusing this user's login: fix the row in PostgreSQL"
            );
            return Err(problem.into());
        }
        Ok(user)
    }

    async fn list(&self) -> Result<Vec<User>, UserStoreError> {
        self.users(Query::List).await
    }

    async fn add(&self, user: User) -> Result<(), UserStoreError> {
        self.writable()?;
        validate_user(&user)?;
        self.count(Query::Insert(&user)).await.map(drop)
    }

    async fn set_password(&self, username: &str, hash: &str) -> Result<(), UserStoreError> {
        self.writable()?;
        match self.count(Query::SetPassword(username, hash)).await? {
            0 => Err(UserStoreError::NotFound(username.into())),
            _ => Ok(()),
        }
    }

    async fn delete(&self, username: &str) -> Result<(), UserStoreError> {
        self.writable()?;
        match self.count(Query::Delete(username)).await? {
            0 => Err(UserStoreError::NotFound(username.into())),
            _ => Ok(()),
        }
    }

    async fn set_totp(&self, username: &str, sealed: Option<&str>) -> Result<(), UserStoreError> {
        if let Some(table) = &self.mapped {
            return Err(UserStoreError::ReadOnly(format!(
                "users.table maps the existing table {table}, which has no place for a second factor: \
                 TOTP needs authgate's own table (users.table unset, `authgate users migrate`)"
            )));
        }
        match self.count(Query::SetTotp(username, sealed)).await? {
            0 => Err(UserStoreError::NotFound(username.into())),
            _ => Ok(()),
        }
    }

    async fn check(&self) -> Result<(), UserStoreError> {
        self.count(Query::Ping).await.map(drop)
    }

    fn writable(&self) -> Result<(), UserStoreError> {
        match &self.mapped {
            Some(table) => Err(UserStoreError::ReadOnly(format!(
                "users.table maps the existing table {table}, which authgate only reads; \
                 add, change and delete its users in the application that owns it"
            ))),
            None => Ok(()),
        }
    }
}

/// `sslmode=require`: TLS, with the server certificate verified (unlike
/// libpq's `require`). Otherwise plain TCP: `prefer` is treated as `disable`,
/// since an unverified "maybe TLS" protects nothing.
fn wants_tls(config: &tokio_postgres::Config) -> bool {
    config.get_ssl_mode() == tokio_postgres::config::SslMode::Require
}

fn manager(mut config: tokio_postgres::Config) -> Manager {
    if wants_tls(&config) {
        Manager::new(config, tls())
    } else {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Manager::new(config, tokio_postgres::NoTls)
    }
}

/// rustls, verified against the system roots (the Mozilla set where the
/// system has none).
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let config = crate::tls::client_config(crate::upstream::system_roots());
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(toml: &str) -> Config {
        Config::parse(Path::new("gateway.toml"), toml).unwrap()
    }

    #[test]
    fn statements_quote_every_name() {
        let c = config(
            "[users]\nbackend = \"postgres\"\nschema = \"App\"\ntable = \"accounts\"\n\
             [users.columns]\nusername = \"login\"\npassword_hash = \"pw\"\nemail = \"mail\"\n\
             roles = \"groups\"\ndisabled = \"locked\"\n",
        );
        let sql = Sql::new(&c.users.postgres);
        assert_eq!(
            sql.find,
            "SELECT \"login\"::text, \"pw\"::text, \"mail\"::text, coalesce(\"groups\"::text[], '{}'), \
             coalesce(\"locked\"::boolean, false), NULL::text FROM \"App\".\"accounts\" WHERE \"login\" = $1"
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn url_problems_name_the_variable() {
        let mut c =
            config("[users]\nbackend = \"postgres\"\nurl_env = \"AUTHGATE_UNIT_NO_SUCH_URL\"\n");
        let e = connect_config(&c).unwrap_err();
        assert_eq!(e.problems[0].key, "users.url_env");
        assert_eq!(e.problems[0].line, Some(3));
        assert!(e.problems[0].message.contains("AUTHGATE_UNIT_NO_SUCH_URL"));
        c.users.postgres.url_env.value = "PATH".into();
        let e = connect_config(&c).unwrap_err();
        assert!(
            e.problems[0].message.contains("not a PostgreSQL URL"),
            "{e}"
        );
    }
}
