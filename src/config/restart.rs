//! The settings a running gateway cannot change: what is bound, opened or
//! made once at start (listeners, the hyper connection builder, the
//! connection limit, the runtime, the logger, the session and user stores,
//! the pid file, the access log and audit trail sinks).
//!
//! A reload keeps their running values, all of them, and names the keys
//! whose new values wait for a restart. Keeping them whole matters: a new
//! `max_header_bytes` read by the pipeline while hyper's connections keep
//! the old one would answer the same head differently depending on where
//! it is checked.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Columns, Config, LogFormat, SessionsBackend, UsersBackend};

/// The restart-only settings of one configuration. Settings a backend does
/// not read are `None`, so editing them (the Redis URL of a memory store)
/// asks for no restart.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartSettings {
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    tls: bool,
    redirect_http: Option<SocketAddr>,
    max_header_bytes: usize,
    max_headers: usize,
    max_connections: usize,
    worker_threads: Option<usize>,
    log_format: LogFormat,
    pid_file: Option<PathBuf>,
    sessions_backend: SessionsBackend,
    redis_url: Option<String>,
    sentinel_master: Option<String>,
    key_prefix: Option<String>,
    session_timeout: Option<std::time::Duration>,
    users_backend: UsersBackend,
    users_path: Option<PathBuf>,
    /// The user store checks second factors with this key from its start.
    totp_key_env: String,
    postgres: Option<PostgresStore>,
    access_log: super::AccessLogConfig,
    audit: super::AuditConfig,
}

/// What the PostgreSQL user store reads when it opens.
#[derive(Debug, Clone, PartialEq)]
struct PostgresStore {
    url_env: String,
    schema: String,
    pool_size: usize,
    table: Option<String>,
    columns: Columns,
}

impl RestartSettings {
    pub fn of(config: &Config) -> RestartSettings {
        let server = &config.server;
        let redis = config.sessions.backend == SessionsBackend::Redis;
        let sessions = &config.sessions;
        let users = &config.users;
        let pg = &users.postgres;
        RestartSettings {
            listen: server.listen,
            admin_listen: config.admin.listen,
            tls: server.tls.is_some(),
            redirect_http: server.tls.as_ref().and_then(|tls| tls.redirect_http),
            max_header_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
            max_connections: server.max_connections,
            worker_threads: server.worker_threads,
            log_format: server.log_format,
            pid_file: server.pid_file.clone(),
            sessions_backend: sessions.backend,
            redis_url: sessions.redis_url.clone().filter(|_| redis),
            sentinel_master: sessions.sentinel_master.clone().filter(|_| redis),
            key_prefix: redis.then(|| sessions.key_prefix.clone()),
            session_timeout: redis.then_some(sessions.timeout),
            users_backend: users.backend,
            users_path: (users.backend == UsersBackend::File).then(|| users.path.clone()),
            totp_key_env: users.totp_key_env.value.clone(),
            postgres: (users.backend == UsersBackend::Postgres).then(|| PostgresStore {
                url_env: pg.url_env.value.clone(),
                schema: pg.schema.clone(),
                pool_size: pg.pool_size,
                table: pg.table.clone(),
                columns: pg.columns.clone(),
            }),
            access_log: config.access_log.clone(),
            audit: config.audit.clone(),
        }
    }

    /// The keys, spelled as in gateway.toml, whose values differ.
    pub fn changed_keys(&self, other: &RestartSettings) -> Vec<&'static str> {
        // Destructured without `..`: a setting added to the type and not
        // named here does not compile.
        let RestartSettings {
            listen,
            admin_listen,
            tls,
            redirect_http,
            max_header_bytes,
            max_headers,
            max_connections,
            worker_threads,
            log_format,
            pid_file,
            sessions_backend,
            redis_url,
            sentinel_master,
            key_prefix,
            session_timeout,
            users_backend,
            users_path,
            totp_key_env,
            postgres,
            access_log,
            audit,
        } = self;
        let same_sessions_backend = *sessions_backend == other.sessions_backend;
        let same_users_backend = *users_backend == other.users_backend;
        // Settings of a backend are named only when the backend stays: a
        // new backend is one change, whatever its settings.
        let postgres_differs = |field: fn(&PostgresStore, &PostgresStore) -> bool| {
            same_users_backend
                && match (postgres, &other.postgres) {
                    (Some(a), Some(b)) => field(a, b),
                    _ => false,
                }
        };
        let differs = [
            ("server.listen", *listen != other.listen),
            ("admin.listen", *admin_listen != other.admin_listen),
            ("server.tls", *tls != other.tls),
            (
                "server.tls.redirect_http",
                *tls == other.tls && *redirect_http != other.redirect_http,
            ),
            (
                "server.max_header_bytes",
                *max_header_bytes != other.max_header_bytes,
            ),
            ("server.max_headers", *max_headers != other.max_headers),
            (
                "server.max_connections",
                *max_connections != other.max_connections,
            ),
            (
                "server.worker_threads",
                *worker_threads != other.worker_threads,
            ),
            ("server.log_format", *log_format != other.log_format),
            ("server.pid_file", *pid_file != other.pid_file),
            ("sessions.backend", !same_sessions_backend),
            (
                "sessions.redis_url",
                same_sessions_backend && *redis_url != other.redis_url,
            ),
            (
                "sessions.sentinel_master",
                same_sessions_backend && *sentinel_master != other.sentinel_master,
            ),
            (
                "sessions.key_prefix",
                same_sessions_backend && *key_prefix != other.key_prefix,
            ),
            (
                "sessions.timeout",
                same_sessions_backend && *session_timeout != other.session_timeout,
            ),
            ("users.backend", !same_users_backend),
            (
                "users.path",
                same_users_backend && *users_path != other.users_path,
            ),
            ("users.totp_key_env", *totp_key_env != other.totp_key_env),
            (
                "users.url_env",
                postgres_differs(|a, b| a.url_env != b.url_env),
            ),
            (
                "users.schema",
                postgres_differs(|a, b| a.schema != b.schema),
            ),
            (
                "users.pool_size",
                postgres_differs(|a, b| a.pool_size != b.pool_size),
            ),
            ("users.table", postgres_differs(|a, b| a.table != b.table)),
            (
                "users.columns",
                postgres_differs(|a, b| a.columns != b.columns),
            ),
            ("access_log", *access_log != other.access_log),
            ("audit", *audit != other.audit),
        ];
        differs
            .into_iter()
            .filter(|(_, differs)| *differs)
            .map(|(key, _)| key)
            .collect()
    }
}

impl Config {
    /// Gives this configuration, about to replace `running`, the running
    /// values of every restart-only setting, and returns the keys whose
    /// new values were set aside until a restart.
    pub fn keep_restart_settings(&mut self, running: &Config) -> Vec<&'static str> {
        let changed = RestartSettings::of(running).changed_keys(&RestartSettings::of(self));
        let server = &mut self.server;
        server.listen = running.server.listen;
        self.admin.listen = running.admin.listen;
        match (&mut server.tls, &running.server.tls) {
            (Some(new), Some(current)) => new.redirect_http = current.redirect_http,
            // Turned on or off: the running listener's TLS settings stay
            // whole; certificates still reload from their files.
            (new, current) => *new = current.clone(),
        }
        server.max_header_bytes = running.server.max_header_bytes;
        server.max_headers = running.server.max_headers;
        server.max_connections = running.server.max_connections;
        server.worker_threads = running.server.worker_threads;
        server.log_format = running.server.log_format;
        server.pid_file = running.server.pid_file.clone();
        let sessions = &mut self.sessions;
        sessions.backend = running.sessions.backend;
        sessions.redis_url = running.sessions.redis_url.clone();
        sessions.sentinel_master = running.sessions.sentinel_master.clone();
        sessions.key_prefix = running.sessions.key_prefix.clone();
        let users = &mut self.users;
        users.backend = running.users.backend;
        users.path = running.users.path.clone();
        users.totp_key_env = running.users.totp_key_env.clone();
        users.postgres = running.users.postgres.clone();
        // The log sinks are opened once: their files and threads stay.
        self.access_log = running.access_log.clone();
        self.audit = running.audit.clone();
        debug_assert_eq!(RestartSettings::of(self), RestartSettings::of(running));
        changed
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(source: &str) -> Config {
        Config::parse(Path::new("etc/gateway.toml"), source).unwrap_or_else(|e| panic!("{e}"))
    }

    const RUNNING: &str = "\
        [server]\nlisten = \"127.0.0.1:8080\"\nmax_header_bytes = 4096\nrequest_timeout = \"5s\"\n\
        [server.tls]\ncert = \"a.crt\"\nkey = \"a.key\"\nredirect_http = \"127.0.0.1:8081\"\n\
        [sessions]\nbackend = \"redis\"\nredis_url = \"redis://a\"\nreuse_grace = \"1s\"\n\
        [users]\nbackend = \"postgres\"\nschema = \"a\"\nbcrypt_cost = 10\n";

    #[test]
    fn every_changed_restart_setting_is_named_as_in_the_file() {
        let running = config(RUNNING);
        let new = config(
            "[server]\nlisten = \"127.0.0.1:9090\"\nmax_header_bytes = 8192\nmax_headers = 50\n\
             max_connections = 10\nworker_threads = 2\nlog_format = \"json\"\npid_file = \"\"\n\
             [server.tls]\ncert = \"a.crt\"\nkey = \"a.key\"\nredirect_http = \"127.0.0.1:8082\"\n\
             [admin]\nlisten = \"127.0.0.1:9901\"\n\
             [sessions]\nbackend = \"redis\"\nredis_url = \"redis://b\"\nsentinel_master = \"m\"\nkey_prefix = \"b:\"\n\
             [users]\nbackend = \"postgres\"\nurl_env = \"B\"\nschema = \"b\"\npool_size = 2\ntable = \"t\"\n\
             columns = { username = \"login\" }\n\
             [access_log]\ntarget = \"stdout\"\n[audit]\nenabled = false\n",
        );
        assert_eq!(
            RestartSettings::of(&running).changed_keys(&RestartSettings::of(&new)),
            [
                "server.listen",
                "admin.listen",
                "server.tls.redirect_http",
                "server.max_header_bytes",
                "server.max_headers",
                "server.max_connections",
                "server.worker_threads",
                "server.log_format",
                "server.pid_file",
                "sessions.redis_url",
                "sessions.sentinel_master",
                "sessions.key_prefix",
                "users.url_env",
                "users.schema",
                "users.pool_size",
                "users.table",
                "users.columns",
                "access_log",
                "audit",
            ]
        );
        let other_backends = config("[users]\npath = \"other.toml\"\n");
        assert_eq!(
            RestartSettings::of(&running).changed_keys(&RestartSettings::of(&other_backends)),
            [
                "server.tls",
                "server.max_header_bytes",
                "sessions.backend",
                "users.backend",
            ]
        );
    }

    #[test]
    fn settings_the_backend_does_not_read_ask_for_no_restart() {
        let running = config("[users]\npath = \"a.toml\"\n");
        let new = config(
            "[users]\npath = \"a.toml\"\nschema = \"other\"\n\
             [sessions]\nkey_prefix = \"other:\"\nredis_url = \"redis://x\"\n",
        );
        assert_eq!(
            RestartSettings::of(&running).changed_keys(&RestartSettings::of(&new)),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn a_kept_configuration_holds_every_running_value_and_the_new_rest() {
        let running = config(RUNNING);
        let mut new = config(
            "[server]\nlisten = \"127.0.0.1:9090\"\nmax_header_bytes = 8192\nrequest_timeout = \"7s\"\n\
             [sessions]\nreuse_grace = \"2s\"\n[users]\nbcrypt_cost = 11\n",
        );
        let changed = new.keep_restart_settings(&running);
        assert_eq!(
            changed,
            [
                "server.listen",
                "server.tls",
                "server.max_header_bytes",
                "sessions.backend",
                "users.backend",
            ]
        );
        assert_eq!(RestartSettings::of(&new), RestartSettings::of(&running));
        assert_eq!(new.server.tls, running.server.tls);
        assert_eq!(new.server.max_header_bytes, 4096);
        assert_eq!(
            new.server.request_timeout,
            std::time::Duration::from_secs(7)
        );
        assert_eq!(new.sessions.reuse_grace, std::time::Duration::from_secs(2));
        assert_eq!(new.users.bcrypt_cost, 11);
        assert!(new.keep_restart_settings(&running).is_empty());
    }
}
