//! PostgreSQL for tests: a fresh schema per test on the real server
//! (dropped when the test ends, even by a panic), and a TCP relay in front
//! of the server that a test can take down and bring back up to play an
//! outage or a restart.

use std::sync::Once;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_postgres::{Client, NoTls};

use super::{closed_port, TestUser};

/// The server the tests use, unless `AUTHGATE_TEST_DATABASE_URL` says otherwise.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The env var test gateways read the URL from (`[users] url_env`).
pub const URL_ENV: &str = "AUTHGATE_TEST_DATABASE_URL";
/// Where the relay forwards to.
const SERVER: &str = "127.0.0.1:5432";

/// The URL of the test database; sets [`URL_ENV`] once when it is unset.
pub fn url() -> String {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var(URL_ENV).is_err() {
            std::env::set_var(URL_ENV, DEFAULT_URL);
        }
    });
    std::env::var(URL_ENV).unwrap()
}

/// [`URL_ENV`], set: what a gateway on the test database names as `url_env`.
pub fn shared_env() -> &'static str {
    url();
    URL_ENV
}

/// A new env var holding `url`, for a gateway pointed somewhere else.
pub fn url_env(url: &str) -> String {
    let name = format!("AUTHGATE_TEST_PG_URL_{:016X}", rand::random::<u64>());
    std::env::set_var(&name, url);
    name
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test database {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// A schema of its own for one test.
pub struct PgSchema {
    pub name: String,
    client: Client,
}

impl PgSchema {
    /// A name no other test uses; the schema itself is not created.
    pub async fn new(test: &str) -> PgSchema {
        let mut name = format!("agt_{:012x}_{test}", rand::random::<u64>() >> 16);
        name.truncate(63);
        PgSchema {
            name,
            client: connect(&url()).await,
        }
    }

    /// A new schema migrated to the latest version.
    pub async fn migrated(test: &str) -> PgSchema {
        let mut schema = Self::new(test).await;
        authgate::users::postgres::migrate::migrate(&mut schema.client, &schema.name)
            .await
            .unwrap();
        schema
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs SQL with `{schema}` replaced by the quoted schema name.
    pub async fn execute(&self, sql: &str) {
        let sql = sql.replace("{schema}", &format!("\"{}\"", self.name));
        self.client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Inserts users into authgate's own table (bcrypt cost 4).
    pub async fn insert(&self, users: &[TestUser]) {
        let sql = format!(
            "INSERT INTO \"{}\".users (username, email, hashed_password, roles, disabled) \
             VALUES ($1, $2, $3, $4, $5)",
            self.name
        );
        for u in users {
            let hash = bcrypt::hash(&u.password, 4).unwrap();
            self.client
                .execute(&sql, &[&u.username, &u.email, &hash, &u.roles, &u.disabled])
                .await
                .unwrap();
        }
    }

    /// The `[users]` section of a gateway.toml using this schema.
    pub fn users_toml(&self, url_env: &str) -> String {
        format!(
            "\n[users]\nbackend = \"postgres\"\nurl_env = \"{url_env}\"\nschema = \"{}\"\n\
             pool_size = 4\nbcrypt_cost = 4\n",
            self.name
        )
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        // Drop runs outside async; a thread of its own may block on a runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = connect(&url()).await;
                let _ = client.batch_execute(&sql).await;
            });
        })
        .join();
    }
}

/// A TCP relay to the PostgreSQL server on a port of its own. Down, the
/// port is closed and every relayed connection is cut, as when the server
/// stops; up again, it relays new connections.
pub struct Relay {
    pub port: u16,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    /// A relay that starts down.
    pub fn down() -> Relay {
        Relay {
            port: closed_port(),
            task: None,
        }
    }

    /// A URL that reaches the test database through this relay.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/test", self.port)
    }

    pub async fn start(&mut self) {
        assert!(self.task.is_none(), "the relay is already up");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.task = Some(tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every relayed
            // connection with it.
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(SERVER).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
