//! `gateway.toml`: read once, validated once, turned into typed values that
//! request code can use without ever failing on configuration.
//!
//! Two types per section: [`raw`] mirrors the file; the types here are what
//! the rest of authgate sees. Every problem found is reported at once, each
//! with its key and line, so an operator fixes a file in one pass.

pub mod defaults;
pub mod raw;
mod restart;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Uri};
use toml::Spanned;

pub use raw::{
    AuthPolicy, JwtAlgorithm, LogFormat, SameSite, SessionsBackend, TlsVersion, UsersBackend,
};
pub use restart::RestartSettings;

/// A configuration that failed to load: every problem, each with its place.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone)]
pub struct Problem {
    /// 1-based line in the file, when the key was written there.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `routes[2].prefix`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}", self.file.display())?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub file: PathBuf,
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub routes: Vec<RouteConfig>,
    pub jwt: JwtConfig,
    pub users: UsersConfig,
    pub cookies: CookieConfig,
    pub identity: IdentityConfig,
    pub sessions: SessionsConfig,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    pub forward_auth: ForwardAuthConfig,
    pub access_log: AccessLogConfig,
    pub audit: AuditConfig,
}

/// `[access_log]`: where each request's line goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogConfig {
    /// The `authgate::access` tracing event, filtered by `RUST_LOG`; the
    /// process log's writer then holds at most `queue` lines.
    Log {
        queue: usize,
    },
    Off,
    /// JSON lines through a [`crate::observe::sink::LineSink`] holding at
    /// most `queue` lines.
    Lines {
        target: crate::observe::sink::SinkTarget,
        queue: usize,
    },
}

impl AccessLogConfig {
    /// How many lines the process log's writer holds
    /// ([`crate::observe::logs`]): `queue` when the access lines go there
    /// (the `log` target, and `stderr`, which shares that writer).
    pub fn log_queue(&self) -> usize {
        match self {
            AccessLogConfig::Log { queue }
            | AccessLogConfig::Lines {
                target: crate::observe::sink::SinkTarget::Stderr,
                queue,
            } => *queue,
            _ => defaults::ACCESS_LOG_QUEUE,
        }
    }
}

/// `[audit]`: where the security events go; `None` target when disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub enabled: bool,
    /// `None`: the `authgate::audit` tracing event on stderr; else a file.
    pub file: Option<PathBuf>,
}

/// `[forward_auth]`: whether `/verify` exists, and who may call it.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardAuthConfig {
    pub enabled: bool,
    pub allow_from: Vec<ipnet::IpNet>,
}

impl ForwardAuthConfig {
    pub fn allows(&self, peer: std::net::IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.allow_from.iter().any(|net| net.contains(&peer))
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdminConfig {
    /// The metrics listener; never the public one.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub request_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub shutdown_grace: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Idle connections kept per upstream host:port (0: none).
    pub upstream_keepalive: usize,
    pub log_format: LogFormat,
    pub worker_threads: Option<usize>,
    /// Peers whose `X-Forwarded-For` names the client (login throttling).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub pid_file: Option<PathBuf>,
    /// `Some` when the listener speaks HTTPS.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: Located<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Located<PathBuf>,
    pub min_version: TlsVersion,
    /// `false`: no tickets, no session cache; every connection a full
    /// handshake.
    pub session_resumption: bool,
    /// A plain listener that answers 308 to the https:// URL.
    pub redirect_http: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Normalized: leading slash, no trailing slash except for `/` itself.
    pub prefix: String,
    pub host: Option<String>,
    /// None: a route for `/verify` only; a proxied request to it is 404.
    pub upstream: Option<Upstream>,
    pub auth: AuthPolicy,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    pub roles: Vec<String>,
    pub max_body: Option<u64>,
    /// A PEM CA (bundle) trusted for this https:// upstream besides the system roots.
    pub upstream_ca: Option<Located<PathBuf>>,
    /// Speak HTTP/2 to the upstream: h2 over TLS, prior-knowledge h2c over http://.
    pub upstream_http2: bool,
    /// Whether `Upgrade: websocket` requests are carried.
    pub websocket: bool,
    /// The signed assertion's `aud`: as configured, else the upstream's
    /// origin (`http://127.0.0.1:9000`), which names the service that
    /// should accept it without any setting.
    pub audience: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path the forwarded path is appended to; empty or `/base` (no trailing slash).
    pub base_path: String,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    pub secret_env: Located<String>,
    pub private_key: Option<Located<PathBuf>>,
    pub key_id: Option<String>,
    pub previous_keys: Vec<PreviousKey>,
    pub issuer: String,
    pub audience: Option<String>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub leeway: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PreviousKey {
    pub key_id: String,
    pub secret_env: Option<Located<String>>,
    pub public_key: Option<Located<PathBuf>>,
}

/// A value with the line it was written on, for errors found after loading
/// (a missing environment variable, an unreadable key file).
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub value: T,
    pub key: &'static str,
    pub line: Option<usize>,
}

/// Equal values are the same setting wherever they were written: a line
/// added above `[server.tls]` must not make a reload rebuild the listener's
/// certificate or an upstream's pool.
impl<T: PartialEq> PartialEq for Located<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T> Located<T> {
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        Problem {
            line: self.line,
            key: self.key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsersConfig {
    pub backend: UsersBackend,
    pub path: PathBuf,
    pub bcrypt_cost: u32,
    pub max_concurrent_hashes: usize,
    /// The env var holding the key of second-factor secrets (see `crate::totp`).
    pub totp_key_env: Located<String>,
    pub postgres: PostgresConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    pub url_env: Located<String>,
    pub schema: String,
    pub pool_size: usize,
    /// `Some` when mapping an existing table read-only.
    pub table: Option<String>,
    pub columns: Columns,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub username: String,
    pub password_hash: String,
    pub email: String,
    pub roles: String,
    pub disabled: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CookieConfig {
    pub access: String,
    pub refresh: String,
    pub secure: bool,
    pub same_site: SameSite,
    pub domain: Option<String>,
    pub path: String,
    /// Normalized `scheme://host[:port]`, lowercase, default port omitted.
    pub trusted_origins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    pub user: HeaderName,
    pub email: HeaderName,
    pub roles: HeaderName,
    /// Further claims forwarded as headers: (header, claim name).
    pub claims: Vec<(HeaderName, String)>,
    pub forward_token: bool,
    /// The signed assertion's header. Stripped from clients whether or not
    /// the assertion is on, so turning it on later never lets a client's
    /// copy through.
    pub assertion_header: HeaderName,
    /// `Some` when `assertion = true`.
    pub assertion: Option<AssertionConfig>,
}

/// `[identity] assertion = true`: what signs it and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct AssertionConfig {
    /// PKCS#8 PEM private key, ES256 (P-256) or EdDSA (Ed25519).
    pub key: Located<PathBuf>,
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionsConfig {
    pub backend: SessionsBackend,
    pub redis_url: Option<String>,
    pub sentinel_master: Option<String>,
    pub key_prefix: String,
    pub reuse_grace: Duration,
    /// Bound on each Redis operation; past it the request gets 503.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// Empty, or `/auth`-like: where `/token`, `/logout`, ... live.
    pub path_prefix: String,
    /// Browsers on `required` routes are sent to the sign-in page.
    pub login_redirect: bool,
    pub throttle: ThrottleConfig,
}

/// `[auth.throttle]`: failed-login limits. A limit of 0 is off.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleConfig {
    pub max_failures: u64,
    pub window: Duration,
    pub ip_max_failures: u64,
    pub ban: Duration,
}

impl Config {
    /// Reads and validates the file. Environment secrets are not read here
    /// (see `auth::jwt::JwtKeys::from_config`), so commands that need no
    /// secret (`users add`) work where the secret is absent.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                line: None,
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Self::parse(path, &source)
    }

    /// Validates `source` as if read from `path` (relative paths inside it
    /// resolve against the directory of `path`).
    pub fn parse(path: &Path, source: &str) -> Result<Config, ConfigError> {
        let base_dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from("."));
        let raw: raw::RawConfig = toml::from_str(source).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![toml_problem(source, &e)],
        })?;
        let mut v = Validator {
            source,
            problems: Vec::new(),
        };
        let config = v.config(raw, path, base_dir);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: path.to_path_buf(),
                problems: v.problems,
            })
        }
    }

    /// The configuration `authgate serve --dev` runs with: no files at all.
    pub fn dev(listen: SocketAddr) -> Config {
        let mut config =
            Config::parse(Path::new("gateway.toml"), "").expect("the empty configuration is valid");
        config.server.listen = listen;
        config.cookies.secure = false;
        config
    }
}

/// A file serde refused: a TOML syntax error, or a value of the wrong type,
/// an unknown key, a missing one. Past syntax, the problem is named by the
/// key its span falls in, as the validator names keys (`server.listen`,
/// `routes[1].auth`).
fn toml_problem(source: &str, error: &toml::de::Error) -> Problem {
    let span = error.span();
    let key = span
        .as_ref()
        .and_then(|span| key_at(source, span.start))
        .unwrap_or_else(|| "(syntax)".into());
    Problem {
        line: span.map(|s| line_of(source, &s)),
        key,
        message: error.message().to_string(),
    }
}

/// The dotted key whose name or value holds byte offset `at`; `None` when
/// the file is not TOML at all (a syntax error) or nothing holds `at`.
fn key_at(source: &str, at: usize) -> Option<String> {
    let document = toml_edit::Document::parse(source).ok()?;
    key_in_table(document.as_table(), at, "")
}

fn key_in_table(table: &toml_edit::Table, at: usize, prefix: &str) -> Option<String> {
    table.iter().find_map(|(name, item)| {
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        let key_span = table.get_key_value(name).and_then(|(key, _)| key.span());
        key_in_item(item, at, &path).or_else(|| holds(key_span, at).then_some(path))
    })
}

fn key_in_item(item: &toml_edit::Item, at: usize, path: &str) -> Option<String> {
    match item {
        toml_edit::Item::None => None,
        toml_edit::Item::Value(value) => key_in_value(value, at, path),
        // A table's span is its header: its keys lie elsewhere in the file.
        toml_edit::Item::Table(table) => key_in_table(table, at, path)
            .or_else(|| holds(table.span(), at).then(|| path.to_owned())),
        toml_edit::Item::ArrayOfTables(tables) => {
            tables.iter().enumerate().find_map(|(i, table)| {
                let path = format!("{path}[{i}]");
                key_in_table(table, at, &path).or_else(|| holds(table.span(), at).then_some(path))
            })
        }
    }
}

fn key_in_value(value: &toml_edit::Value, at: usize, path: &str) -> Option<String> {
    let inner = match value {
        toml_edit::Value::InlineTable(table) => table.iter().find_map(|(name, inner)| {
            let path = format!("{path}.{name}");
            let key_span = table.get_key_value(name).and_then(|(key, _)| key.span());
            key_in_value(inner, at, &path).or_else(|| holds(key_span, at).then_some(path))
        }),
        toml_edit::Value::Array(array) => array
            .iter()
            .enumerate()
            .find_map(|(i, inner)| key_in_value(inner, at, &format!("{path}[{i}]"))),
        _ => None,
    };
    inner.or_else(|| holds(value.span(), at).then(|| path.to_owned()))
}

fn holds(span: Option<Range<usize>>, at: usize) -> bool {
    span.is_some_and(|span| span.contains(&at))
}

fn line_of(source: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Validator<'a> {
    source: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn line<T>(&self, value: &Spanned<T>) -> Option<usize> {
        let span = value.span();
        (span != (0..0)).then(|| line_of(self.source, &span))
    }

    fn fail<T>(&mut self, at: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: self.line(at),
            key: key.into(),
            message: message.into(),
        });
    }

    fn locate<T>(&self, value: Spanned<T>, key: &'static str) -> Located<T> {
        let line = self.line(&value);
        Located {
            value: value.into_inner(),
            key,
            line,
        }
    }

    fn config(&mut self, raw: raw::RawConfig, file: &Path, base_dir: PathBuf) -> Config {
        let server = self.server(raw.server, &base_dir);
        let routes = self.routes(raw.routes, &base_dir);
        let jwt = self.jwt(raw.jwt, &base_dir);
        let users = self.users(raw.users, &base_dir);
        let cookies = self.cookies(raw.cookies);
        let identity = self.identity(raw.identity, &base_dir);
        let sessions = self.sessions(raw.sessions);
        let auth = self.auth(raw.auth);
        let admin = self.admin(raw.admin, &server);
        let forward_auth = self.forward_auth(raw.forward_auth);
        let access_log = self.access_log(raw.access_log, &base_dir);
        let audit = self.audit(raw.audit, &base_dir);
        Config {
            file: file.to_path_buf(),
            base_dir,
            server,
            routes,
            jwt,
            users,
            cookies,
            identity,
            sessions,
            auth,
            admin,
            forward_auth,
            access_log,
            audit,
        }
    }

    /// A `path` that must be there with `target = "file"`, and only then.
    fn log_file(
        &mut self,
        table: &str,
        is_file: bool,
        target: &Spanned<impl Sized>,
        path: Option<Spanned<String>>,
        base_dir: &Path,
    ) -> Option<PathBuf> {
        match (is_file, path) {
            (true, Some(path)) if !path.get_ref().is_empty() => {
                Some(base_dir.join(path.into_inner()))
            }
            (true, _) => {
                self.fail(
                    target,
                    format!("{table}.path"),
                    "target = \"file\" needs a path (relative to the config file)",
                );
                None
            }
            (false, Some(path)) => {
                self.fail(
                    &path,
                    format!("{table}.path"),
                    "a path is only read with target = \"file\"",
                );
                None
            }
            (false, None) => None,
        }
    }

    fn access_log(&mut self, raw: raw::RawAccessLog, base_dir: &Path) -> AccessLogConfig {
        use crate::observe::sink::SinkTarget;
        use raw::AccessLogTarget as T;
        let target = *raw.target.get_ref();
        let file = self.log_file(
            "access_log",
            target == T::File,
            &raw.target,
            raw.path,
            base_dir,
        );
        let queue = *raw.queue.get_ref();
        if queue == 0 {
            self.fail(&raw.queue, "access_log.queue", "must be at least 1");
        }
        let lines = |target| AccessLogConfig::Lines { target, queue };
        match target {
            T::Log => AccessLogConfig::Log { queue },
            T::Off => AccessLogConfig::Off,
            T::Stdout => lines(SinkTarget::Stdout),
            T::Stderr => lines(SinkTarget::Stderr),
            // Without a path the problem is recorded; the value is unused.
            T::File => file.map_or(AccessLogConfig::Off, |path| lines(SinkTarget::File(path))),
        }
    }

    fn audit(&mut self, raw: raw::RawAudit, base_dir: &Path) -> AuditConfig {
        let is_file = *raw.target.get_ref() == raw::AuditTarget::File;
        let file = self.log_file("audit", is_file, &raw.target, raw.path, base_dir);
        AuditConfig {
            enabled: raw.enabled,
            file,
        }
    }

    fn forward_auth(&mut self, raw: raw::RawForwardAuth) -> ForwardAuthConfig {
        let mut allow_from = Vec::new();
        for (i, entry) in raw.allow_from.iter().enumerate() {
            match parse_net(entry.get_ref()) {
                Some(net) => allow_from.push(net),
                None => self.fail(
                    entry,
                    format!("forward_auth.allow_from[{i}]"),
                    format!(
                        "{:?} is not an address or CIDR such as \"10.0.0.0/8\"",
                        entry.get_ref()
                    ),
                ),
            }
        }
        ForwardAuthConfig {
            enabled: raw.enabled,
            allow_from,
        }
    }

    fn admin(&mut self, raw: raw::RawAdmin, server: &ServerConfig) -> AdminConfig {
        let Some(listen) = raw.listen else {
            return AdminConfig::default();
        };
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) if addr == server.listen => {
                self.fail(&listen, "admin.listen", "must differ from server.listen");
                AdminConfig::default()
            }
            Ok(addr) => AdminConfig { listen: Some(addr) },
            Err(_) => {
                self.fail(
                    &listen,
                    "admin.listen",
                    format!(
                        "{:?} is not an address:port such as \"127.0.0.1:9901\"",
                        listen.get_ref()
                    ),
                );
                AdminConfig::default()
            }
        }
    }

    fn server(&mut self, raw: raw::RawServer, base_dir: &Path) -> ServerConfig {
        let listen = raw.listen.get_ref().parse().unwrap_or_else(|_| {
            self.fail(
                &raw.listen,
                "server.listen",
                format!(
                    "{:?} is not an address:port such as \"127.0.0.1:8080\"",
                    raw.listen.get_ref()
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        if *raw.max_header_bytes.get_ref() < 1024 {
            self.fail(
                &raw.max_header_bytes,
                "server.max_header_bytes",
                "must be at least 1024",
            );
        }
        if *raw.max_headers.get_ref() == 0 {
            self.fail(&raw.max_headers, "server.max_headers", "must be at least 1");
        }
        let mut trusted_proxies = Vec::new();
        for (i, entry) in raw.trusted_proxies.iter().enumerate() {
            match parse_net(entry.get_ref()) {
                Some(net) => trusted_proxies.push(net),
                None => self.fail(
                    entry,
                    format!("server.trusted_proxies[{i}]"),
                    format!(
                        "{:?} is not an address or CIDR such as \"10.0.0.0/8\"",
                        entry.get_ref()
                    ),
                ),
            }
        }
        ServerConfig {
            listen,
            request_timeout: raw.request_timeout.0,
            max_header_bytes: raw.max_header_bytes.into_inner(),
            max_headers: raw.max_headers.into_inner(),
            shutdown_grace: raw.shutdown_grace.0,
            header_timeout: raw.header_timeout.0,
            idle_timeout: raw.idle_timeout.0,
            max_connections: raw.max_connections.max(1),
            upstream_keepalive: raw.upstream_keepalive,
            log_format: raw.log_format,
            worker_threads: raw.worker_threads,
            trusted_proxies,
            pid_file: (!raw.pid_file.is_empty()).then(|| base_dir.join(&raw.pid_file)),
            tls: raw.tls.map(|tls| self.tls(tls, listen, base_dir)),
        }
    }

    fn tls(&mut self, raw: raw::RawTls, listen: SocketAddr, base_dir: &Path) -> TlsConfig {
        let redirect_http = raw.redirect_http.as_ref().and_then(|spanned| {
            let text = spanned.get_ref();
            match text.parse::<SocketAddr>() {
                Ok(addr) if addr == listen && addr.port() != 0 => {
                    self.fail(
                        spanned,
                        "server.tls.redirect_http",
                        format!("{text:?} is server.listen itself; give the plain listener its own port"),
                    );
                    None
                }
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.fail(
                        spanned,
                        "server.tls.redirect_http",
                        format!("{text:?} is not an address:port such as \"0.0.0.0:80\""),
                    );
                    None
                }
            }
        });
        TlsConfig {
            cert: self.path(raw.cert, "server.tls.cert", base_dir),
            key: self.path(raw.key, "server.tls.key", base_dir),
            min_version: raw.min_version,
            session_resumption: raw.session_resumption,
            redirect_http,
        }
    }

    /// A file name from the config, resolved against the config's folder.
    fn path(&self, raw: Spanned<String>, key: &'static str, base_dir: &Path) -> Located<PathBuf> {
        let located = self.locate(raw, key);
        Located {
            value: base_dir.join(&located.value),
            key,
            line: located.line,
        }
    }

    fn routes(&mut self, raws: Vec<raw::RawRoute>, base_dir: &Path) -> Vec<RouteConfig> {
        let mut routes: Vec<RouteConfig> = Vec::with_capacity(raws.len());
        for (i, raw) in raws.into_iter().enumerate() {
            let key = |field: &str| format!("routes[{i}].{field}");
            let prefix = raw.prefix.get_ref();
            let prefix = if !prefix.starts_with('/') {
                self.fail(
                    &raw.prefix,
                    key("prefix"),
                    format!("{prefix:?} must start with \"/\""),
                );
                continue;
            } else if prefix.split('/').any(|s| s == "." || s == "..")
                || prefix.contains("//")
                || prefix.contains(['?', '#', '%'])
            {
                self.fail(
                    &raw.prefix,
                    key("prefix"),
                    format!("{prefix:?} must be a plain, normalized path"),
                );
                continue;
            } else if prefix.len() > 1 {
                prefix.trim_end_matches('/').to_string()
            } else {
                prefix.clone()
            };
            let host = raw.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase());
            if let Some(h) = &raw.host {
                if h.get_ref().is_empty() || h.get_ref().parse::<Authority>().is_err() {
                    self.fail(
                        h,
                        key("host"),
                        format!("{:?} is not a host name", h.get_ref()),
                    );
                }
            }
            if routes.iter().any(|r| r.prefix == prefix && r.host == host) {
                self.fail(
                    &raw.prefix,
                    key("prefix"),
                    format!(
                        "duplicate route: prefix {prefix:?} is already used{}",
                        host.as_deref()
                            .map(|h| format!(" for host {h:?}"))
                            .unwrap_or_default()
                    ),
                );
                continue;
            }
            let upstream = match &raw.upstream {
                Some(text) => match self.upstream(text, key("upstream")) {
                    Some(upstream) => Some(upstream),
                    None => continue,
                },
                None => None,
            };
            if raw.auth == AuthPolicy::Public && !raw.roles.is_empty() {
                self.fail(
                    &raw.prefix,
                    key("roles"),
                    "roles cannot be required on a public route",
                );
            }
            // A route used only by forward-auth has no upstream origin to
            // default to: its assertion audience is then empty until set.
            let audience = match &raw.audience {
                Some(aud) if aud.get_ref().is_empty() => {
                    self.fail(aud, key("audience"), "must not be empty");
                    String::new()
                }
                Some(aud) => aud.get_ref().clone(),
                None => upstream
                    .as_ref()
                    .map(|u| format!("{}://{}", u.scheme, u.authority))
                    .unwrap_or_default(),
            };
            let https = upstream.as_ref().is_some_and(|u| u.scheme == Scheme::HTTPS);
            if let (Some(ca), false) = (&raw.upstream_ca, https) {
                self.fail(
                    ca,
                    key("upstream_ca"),
                    "applies only to an https:// upstream",
                );
            }
            routes.push(RouteConfig {
                prefix,
                host,
                upstream,
                auth: raw.auth,
                strip_prefix: raw.strip_prefix,
                preserve_host: raw.preserve_host,
                roles: raw.roles,
                max_body: raw.max_body.map(|b| b.0),
                upstream_ca: raw
                    .upstream_ca
                    .map(|ca| self.path(ca, "routes.upstream_ca", base_dir)),
                upstream_http2: raw.upstream_http2,
                websocket: raw.websocket,
                audience,
            });
        }
        routes
    }

    fn upstream(&mut self, raw: &Spanned<String>, key: String) -> Option<Upstream> {
        let text = raw.get_ref();
        let uri: Uri = match text.parse() {
            Ok(uri) => uri,
            Err(e) => {
                self.fail(raw, key, format!("{text:?} is not a URL: {e}"));
                return None;
            }
        };
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                self.fail(
                    raw,
                    key,
                    format!("{text:?} must be an http:// or https:// URL"),
                );
                return None;
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            self.fail(raw, key, format!("{text:?} has no host"));
            return None;
        };
        if uri.query().is_some() || authority.as_str().contains('@') {
            self.fail(
                raw,
                key,
                format!("{text:?} must not carry a query or credentials"),
            );
            return None;
        }
        Some(Upstream {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    fn jwt(&mut self, raw: raw::RawJwt, base_dir: &Path) -> JwtConfig {
        let algorithm = *raw.algorithm.get_ref();
        if algorithm.is_hmac() {
            if let Some(key) = &raw.private_key {
                self.fail(
                    key,
                    "jwt.private_key",
                    format!("{algorithm:?} signs with a secret (jwt.secret_env), not a key file"),
                );
            }
        } else if raw.private_key.is_none() {
            self.fail(
                &raw.algorithm,
                "jwt.private_key",
                format!("{algorithm:?} needs a PEM private key file"),
            );
        }
        if raw.access_ttl.0.is_zero() || raw.refresh_ttl.0.is_zero() {
            self.problems.push(Problem {
                line: None,
                key: "jwt.access_ttl".into(),
                message: "token lifetimes must be longer than zero".into(),
            });
        }
        let mut previous_keys = Vec::new();
        for (i, key) in raw.previous_keys.into_iter().enumerate() {
            let k = format!("jwt.previous_keys[{i}]");
            match (&key.secret_env, &key.public_key, algorithm.is_hmac()) {
                (Some(_), None, true) | (None, Some(_), false) => {}
                _ => self.problems.push(Problem {
                    line: key
                        .secret_env
                        .as_ref()
                        .or(key.public_key.as_ref())
                        .and_then(|s| self.line(s)),
                    key: k,
                    message: if algorithm.is_hmac() {
                        "needs key_id and secret_env (and no public_key)".into()
                    } else {
                        "needs key_id and public_key (and no secret_env)".into()
                    },
                }),
            }
            previous_keys.push(PreviousKey {
                key_id: key.key_id,
                secret_env: key
                    .secret_env
                    .map(|s| self.locate(s, "jwt.previous_keys.secret_env")),
                public_key: key
                    .public_key
                    .map(|p| self.path(p, "jwt.previous_keys.public_key", base_dir)),
            });
        }
        if !previous_keys.is_empty() && raw.key_id.is_none() {
            self.problems.push(Problem {
                line: None,
                key: "jwt.key_id".into(),
                message: "is required when previous_keys are listed, so tokens name their key"
                    .into(),
            });
        }
        JwtConfig {
            algorithm,
            secret_env: self.locate(raw.secret_env, "jwt.secret_env"),
            private_key: raw
                .private_key
                .map(|p| self.path(p, "jwt.private_key", base_dir)),
            key_id: raw.key_id,
            previous_keys,
            issuer: raw.issuer,
            audience: raw.audience,
            access_ttl: raw.access_ttl.0,
            refresh_ttl: raw.refresh_ttl.0,
            leeway: raw.leeway.0,
        }
    }

    fn users(&mut self, raw: raw::RawUsers, base_dir: &Path) -> UsersConfig {
        let cost = *raw.bcrypt_cost.get_ref();
        if !(4..=31).contains(&cost) {
            self.fail(
                &raw.bcrypt_cost,
                "users.bcrypt_cost",
                "must be between 4 and 31",
            );
        }
        let schema = raw.schema.get_ref().clone();
        if !is_sql_identifier(&schema) {
            self.fail(
                &raw.schema,
                "users.schema",
                format!("{schema:?} is not a plain SQL identifier"),
            );
        }
        let table = raw.table.as_ref().map(|t| t.get_ref().clone());
        if let (Some(name), Some(spanned)) = (&table, &raw.table) {
            if !is_sql_identifier(name) {
                self.fail(
                    spanned,
                    "users.table",
                    format!("{name:?} is not a plain SQL identifier"),
                );
            }
        }
        let c = raw.columns;
        let any_column = [
            &c.username,
            &c.password_hash,
            &c.email,
            &c.roles,
            &c.disabled,
        ]
        .iter()
        .any(|column| column.is_some());
        if any_column && table.is_none() {
            self.problems.push(Problem {
                line: None,
                key: "users.columns".into(),
                message:
                    "applies only with users.table (authgate's own table has fixed column names)"
                        .into(),
            });
        }
        let columns = Columns {
            username: c.username.unwrap_or_else(|| "username".into()),
            password_hash: c.password_hash.unwrap_or_else(|| "hashed_password".into()),
            email: c.email.unwrap_or_else(|| "email".into()),
            roles: c.roles.unwrap_or_else(|| "roles".into()),
            disabled: c.disabled.unwrap_or_else(|| "disabled".into()),
        };
        for (name, value) in [
            ("username", &columns.username),
            ("password_hash", &columns.password_hash),
            ("email", &columns.email),
            ("roles", &columns.roles),
            ("disabled", &columns.disabled),
        ] {
            if !is_sql_identifier(value) {
                self.problems.push(Problem {
                    line: None,
                    key: format!("users.columns.{name}"),
                    message: format!("{value:?} is not a plain SQL identifier"),
                });
            }
        }
        UsersConfig {
            backend: raw.backend.into_inner(),
            path: base_dir.join(raw.path),
            bcrypt_cost: cost,
            max_concurrent_hashes: raw.max_concurrent_hashes,
            totp_key_env: self.locate(raw.totp_key_env, "users.totp_key_env"),
            postgres: PostgresConfig {
                url_env: self.locate(raw.url_env, "users.url_env"),
                schema,
                pool_size: raw.pool_size.max(1),
                table,
                columns,
            },
        }
    }

    fn cookies(&mut self, raw: raw::RawCookies) -> CookieConfig {
        for (spanned, key) in [
            (&raw.access, "cookies.access"),
            (&raw.refresh, "cookies.refresh"),
        ] {
            let name = spanned.get_ref();
            if name.is_empty() || !name.bytes().all(is_cookie_name_byte) {
                self.fail(spanned, key, format!("{name:?} is not a valid cookie name"));
            }
        }
        if raw.access.get_ref() == raw.refresh.get_ref() {
            self.fail(
                &raw.refresh,
                "cookies.refresh",
                "must differ from cookies.access",
            );
        }
        if *raw.same_site.get_ref() == SameSite::None && !raw.secure {
            self.fail(
                &raw.same_site,
                "cookies.same_site",
                "\"none\" requires secure = true (browsers drop such cookies otherwise)",
            );
        }
        let mut trusted_origins = Vec::new();
        for (i, entry) in raw.trusted_origins.iter().enumerate() {
            match normalize_origin(entry.get_ref()) {
                Some(origin) => trusted_origins.push(origin),
                None => self.fail(
                    entry,
                    format!("cookies.trusted_origins[{i}]"),
                    format!(
                        "{:?} is not an origin such as \"https://app.example.com\" (scheme and host, no path)",
                        entry.get_ref()
                    ),
                ),
            }
        }
        CookieConfig {
            trusted_origins,
            access: raw.access.into_inner(),
            refresh: raw.refresh.into_inner(),
            secure: raw.secure,
            same_site: raw.same_site.into_inner(),
            domain: raw.domain,
            path: raw.path,
        }
    }

    fn header(&mut self, raw: &Spanned<String>, key: &str) -> HeaderName {
        HeaderName::from_bytes(raw.get_ref().as_bytes()).unwrap_or_else(|_| {
            self.fail(
                raw,
                key.to_string(),
                format!("{:?} is not a valid header name", raw.get_ref()),
            );
            HeaderName::from_static("x-invalid")
        })
    }

    fn identity(&mut self, raw: raw::RawIdentity, base_dir: &Path) -> IdentityConfig {
        let user = self.header(&raw.user, "identity.user");
        let email = self.header(&raw.email, "identity.email");
        let roles = self.header(&raw.roles, "identity.roles");
        let mut claims = Vec::new();
        for (header, claim) in raw.claims {
            match HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) => claims.push((name, claim)),
                Err(_) => self.problems.push(Problem {
                    line: None,
                    key: format!("identity.claims.{header}"),
                    message: format!("{header:?} is not a valid header name"),
                }),
            }
        }
        let assertion_header = self.header(&raw.assertion_header, "identity.assertion_header");
        // Folded as the stripping folds them: `X_Auth_User` is `X-Auth-User`.
        let folded = |name: &HeaderName| name.as_str().replace('_', "-");
        if [&user, &email, &roles]
            .into_iter()
            .chain(claims.iter().map(|(h, _)| h))
            .any(|h| folded(h) == folded(&assertion_header))
        {
            self.fail(
                &raw.assertion_header,
                "identity.assertion_header",
                "must differ from the other identity headers",
            );
        }
        if raw.assertion_ttl.0 < Duration::from_secs(1) {
            self.problems.push(Problem {
                line: None,
                key: "identity.assertion_ttl".into(),
                message: "must be at least 1s".into(),
            });
        }
        let assertion = match (*raw.assertion.get_ref(), raw.assertion_key) {
            (false, _) => None,
            (true, Some(key)) => Some(AssertionConfig {
                key: self.path(key, "identity.assertion_key", base_dir),
                ttl: raw.assertion_ttl.0,
            }),
            (true, None) => {
                self.fail(
                    &raw.assertion,
                    "identity.assertion_key",
                    "is required with assertion = true: a PKCS#8 PEM private key (ES256 or EdDSA)",
                );
                None
            }
        };
        IdentityConfig {
            user,
            email,
            roles,
            claims,
            forward_token: raw.forward_token,
            assertion_header,
            assertion,
        }
    }

    fn sessions(&mut self, raw: raw::RawSessions) -> SessionsConfig {
        let backend = *raw.backend.get_ref();
        let redis_url = raw.redis_url.as_ref().map(|u| u.get_ref().clone());
        match (&raw.redis_url, backend) {
            (None, SessionsBackend::Redis) => self.fail(
                &raw.backend,
                "sessions.redis_url",
                "is required with backend = \"redis\"",
            ),
            (Some(url), _) => {
                let bad = url
                    .get_ref()
                    .split(',')
                    .map(str::trim)
                    .find(|u| redis::parse_redis_url(u).is_none());
                if let Some(bad) = bad {
                    self.fail(
                        url,
                        "sessions.redis_url",
                        format!("{bad:?} is not a redis:// or rediss:// URL"),
                    );
                }
            }
            _ => {}
        }
        if raw.timeout.get_ref().0.is_zero() {
            self.fail(
                &raw.timeout,
                "sessions.timeout",
                "must be longer than zero, e.g. \"2s\"",
            );
        }
        SessionsConfig {
            backend,
            redis_url,
            sentinel_master: raw.sentinel_master,
            key_prefix: raw.key_prefix,
            reuse_grace: raw.reuse_grace.0,
            timeout: raw.timeout.into_inner().0,
        }
    }

    fn auth(&mut self, raw: raw::RawAuth) -> AuthConfig {
        let prefix = raw.path_prefix.get_ref();
        if !prefix.is_empty() && (!prefix.starts_with('/') || prefix.ends_with('/')) {
            self.fail(
                &raw.path_prefix,
                "auth.path_prefix",
                format!("{prefix:?} must start with \"/\" and not end with one, e.g. \"/auth\""),
            );
        }
        let t = raw.throttle;
        if t.window.0.is_zero() || t.ban.0.is_zero() {
            self.problems.push(Problem {
                line: None,
                key: "auth.throttle".into(),
                message: "window and ban must be longer than zero".into(),
            });
        }
        AuthConfig {
            path_prefix: prefix.clone(),
            login_redirect: raw.login_redirect,
            throttle: ThrottleConfig {
                max_failures: t.max_failures,
                window: t.window.0,
                ip_max_failures: t.ip_max_failures,
                ban: t.ban.0,
            },
        }
    }
}

/// `"10.0.0.0/8"`, `"::1"` or `"192.0.2.7"` (a single address).
fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(Into::into))
}

/// An origin as browsers send it in `Origin`: lowercase scheme and host,
/// the port only when it is not the scheme's default. `None` for anything
/// that is not `http(s)://host[:port]` (an optional trailing `/` allowed).
pub fn normalize_origin(text: &str) -> Option<String> {
    let text = text.trim();
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let authority: Authority = rest.strip_suffix('/').unwrap_or(rest).parse().ok()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    Some(match authority.port_u16() {
        Some(port) if port.to_string() != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

fn is_sql_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 63
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(source: &str) -> Vec<Problem> {
        Config::parse(Path::new("gateway.toml"), source)
            .expect_err("should be refused")
            .problems
    }

    #[test]
    fn empty_file_is_complete() {
        let config = Config::parse(Path::new("x/gateway.toml"), "").unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.users.path, PathBuf::from("x/users.toml"));
        assert!(config.cookies.secure);
    }

    #[test]
    fn access_log_and_audit_default_to_the_process_log() {
        let config = Config::parse(Path::new("x/gateway.toml"), "").unwrap();
        assert_eq!(
            config.access_log,
            AccessLogConfig::Log {
                queue: defaults::ACCESS_LOG_QUEUE
            }
        );
        assert_eq!(
            config.audit,
            AuditConfig {
                enabled: true,
                file: None
            }
        );
        let config = Config::parse(
            Path::new("x/gateway.toml"),
            "[access_log]\ntarget = \"file\"\npath = \"a.log\"\nqueue = 10\n\
             [audit]\ntarget = \"file\"\npath = \"audit.log\"\nenabled = false\n",
        )
        .unwrap();
        assert_eq!(
            config.access_log,
            AccessLogConfig::Lines {
                target: crate::observe::sink::SinkTarget::File("x/a.log".into()),
                queue: 10
            }
        );
        assert_eq!(config.audit.file, Some(PathBuf::from("x/audit.log")));
        assert!(!config.audit.enabled);
    }

    #[test]
    fn a_log_file_target_needs_a_path_and_only_it_takes_one() {
        let p = problems("[access_log]\ntarget = \"file\"\n");
        assert_eq!((p[0].key.as_str(), p[0].line), ("access_log.path", Some(2)));
        let p = problems("[audit]\npath = \"a.log\"\n");
        assert_eq!((p[0].key.as_str(), p[0].line), ("audit.path", Some(2)));
        let p = problems("[access_log]\ntarget = \"stdout\"\nqueue = 0\n");
        assert_eq!(p[0].key, "access_log.queue");
        let p = problems("[access_log]\ntarget = \"syslog\"\n");
        assert_eq!(p[0].key, "access_log.target");
    }

    #[test]
    fn forward_auth_is_off_and_loopback_only_by_default() {
        let config = Config::parse(Path::new("gateway.toml"), "").unwrap();
        let fa = &config.forward_auth;
        assert!(!fa.enabled);
        assert!(fa.allows("127.0.0.1".parse().unwrap()));
        assert!(fa.allows("::1".parse().unwrap()));
        assert!(fa.allows("::ffff:127.0.0.5".parse().unwrap()));
        assert!(!fa.allows("10.0.0.1".parse().unwrap()));
        let p =
            problems("[forward_auth]\nenabled = true\nallow_from = [\"10.0.0.0/8\", \"nope\"]\n");
        assert_eq!(p[0].key, "forward_auth.allow_from[1]");
        assert_eq!(p[0].line, Some(3));
    }

    #[test]
    fn a_route_may_omit_its_upstream() {
        let toml = "[[routes]]\nprefix = \"/admin\"\nroles = [\"admin\"]\n";
        let config = Config::parse(Path::new("gateway.toml"), toml).unwrap();
        assert_eq!(config.routes[0].upstream, None);
        assert_eq!(config.routes[0].roles, ["admin"]);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let p = problems("[server]\nlisten = \"127.0.0.1:1\"\nlistn = \"x\"\n");
        assert_eq!(p[0].line, Some(3));
        assert_eq!(p[0].key, "server.listn");
        assert!(p[0].message.contains("listn"), "{}", p[0].message);
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let p = problems("[server]\nlisten = \"127.0.0.1:1\"\nmax_connections = \"abc\"\n");
        assert_eq!(
            (p[0].key.as_str(), p[0].line),
            ("server.max_connections", Some(3))
        );
        assert!(p[0].message.contains("invalid type"), "{}", p[0].message);
        let p = problems(
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://a\"\n\
             [[routes]]\nprefix = \"/b\"\nupstream = \"http://b\"\nauth = 5\n",
        );
        assert_eq!((p[0].key.as_str(), p[0].line), ("routes[1].auth", Some(7)));
        let p = problems("[identity]\nclaims = { \"X-Tenant\" = 7 }\n");
        assert_eq!(p[0].key, "identity.claims.X-Tenant");
        let p =
            problems("[[routes]]\nprefix = \"/\"\nupstream = \"http://a\"\nroles = [\"a\", 5]\n");
        assert_eq!(
            (p[0].key.as_str(), p[0].line),
            ("routes[0].roles[1]", Some(4))
        );
    }

    #[test]
    fn syntax_errors_stay_syntax_errors() {
        let p = problems("[server]\nlisten = \n");
        assert_eq!((p[0].key.as_str(), p[0].line), ("(syntax)", Some(2)));
    }

    #[test]
    fn bad_duration_names_line() {
        let p = problems("[server]\nrequest_timeout = \"soon\"\n");
        assert_eq!(p[0].line, Some(2));
        assert!(p[0].message.contains("invalid duration"));
    }

    #[test]
    fn route_problems_are_all_reported() {
        let p = problems(
            "[[routes]]\nprefix = \"api\"\nupstream = \"http://a\"\n\
             [[routes]]\nprefix = \"/x\"\nupstream = \"ftp://a\"\n\
             [[routes]]\nprefix = \"/y/\"\nupstream = \"http://a\"\n\
             [[routes]]\nprefix = \"/y\"\nupstream = \"http://b\"\n",
        );
        let keys: Vec<_> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            vec![
                ("routes[0].prefix", Some(2)),
                ("routes[1].upstream", Some(6)),
                ("routes[3].prefix", Some(11)),
            ]
        );
    }

    #[test]
    fn same_prefix_on_other_host_is_fine() {
        let c = Config::parse(
            Path::new("g.toml"),
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://a\"\n\
             [[routes]]\nprefix = \"/\"\nhost = \"api.example.com\"\nupstream = \"http://b/base/\"\n",
        )
        .unwrap();
        assert_eq!(c.routes[1].upstream.as_ref().unwrap().base_path, "/base");
        assert_eq!(c.routes[1].host.as_deref(), Some("api.example.com"));
    }

    #[test]
    fn asymmetric_algorithm_needs_key() {
        let p = problems("[jwt]\nalgorithm = \"RS256\"\n");
        assert_eq!(p[0].key, "jwt.private_key");
        assert_eq!(p[0].line, Some(2));
    }

    #[test]
    fn assertion_needs_a_key_and_routes_default_their_audience() {
        let p = problems("[identity]\nuser = \"X-User\"\nassertion = true\n");
        assert_eq!(
            (p[0].key.as_str(), p[0].line),
            ("identity.assertion_key", Some(3))
        );
        assert!(p[0].message.contains("required"), "{}", p[0].message);
        let p = problems("[identity]\nassertion_ttl = \"0s\"\n");
        assert_eq!(p[0].key, "identity.assertion_ttl");
        let p = problems("[identity]\nassertion_header = \"X_Auth_User\"\n");
        assert_eq!(
            (p[0].key.as_str(), p[0].line),
            ("identity.assertion_header", Some(2))
        );
        let c = Config::parse(
            Path::new("etc/g.toml"),
            "[identity]\nassertion = true\nassertion_key = \"a.pem\"\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9000/base\"\n\
             [[routes]]\nprefix = \"/b\"\nupstream = \"https://b\"\naudience = \"api://b\"\n",
        )
        .unwrap();
        let assertion = c.identity.assertion.unwrap();
        assert_eq!(assertion.key.value, PathBuf::from("etc/a.pem"));
        assert_eq!(assertion.ttl, Duration::from_secs(60));
        assert_eq!(c.identity.assertion_header, "x-auth-assertion");
        assert_eq!(c.routes[0].audience, "http://127.0.0.1:9000");
        assert_eq!(c.routes[1].audience, "api://b");
        // Off by default; a key alone does not turn it on.
        let c = Config::parse(Path::new("g"), "[identity]\nassertion_key = \"a.pem\"\n").unwrap();
        assert!(c.identity.assertion.is_none());
    }

    #[test]
    fn unknown_algorithm_refused() {
        let p = problems("[jwt]\nalgorithm = \"none\"\n");
        assert_eq!(p[0].line, Some(2));
    }

    #[test]
    fn redis_backend_needs_url() {
        let p = problems("[sessions]\nbackend = \"redis\"\n");
        assert_eq!(p[0].key, "sessions.redis_url");
        let p = problems("[sessions]\nbackend = \"redis\"\nredis_url = \"http://x\"\n");
        assert_eq!(p[0].line, Some(3));
    }

    #[test]
    fn security_keys_parse_and_are_checked() {
        let c = Config::parse(
            Path::new("g.toml"),
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n\
             [cookies]\ntrusted_origins = [\"HTTPS://App.Example.com:443/\", \"http://x:8080\"]\n\
             [auth.throttle]\nmax_failures = 3\nban = \"1m\"\n",
        )
        .unwrap();
        assert_eq!(c.server.trusted_proxies.len(), 2);
        assert_eq!(
            c.cookies.trusted_origins,
            vec!["https://app.example.com", "http://x:8080"]
        );
        assert_eq!(c.auth.throttle.max_failures, 3);
        assert_eq!(c.auth.throttle.ip_max_failures, 20);
        assert_eq!(c.auth.throttle.window, Duration::from_secs(900));
        assert_eq!(c.auth.throttle.ban, Duration::from_secs(60));
        let p = problems(
            "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n\
             [cookies]\ntrusted_origins = [\"https://a/path\", \"ftp://b\"]\n",
        );
        let keys: Vec<_> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            vec![
                ("server.trusted_proxies[0]", Some(2)),
                ("cookies.trusted_origins[0]", Some(4)),
                ("cookies.trusted_origins[1]", Some(4)),
            ]
        );
    }

    #[test]
    fn where_a_value_is_written_does_not_make_configs_differ() {
        let tls = "[server.tls]\ncert = \"c\"\nkey = \"k\"\n\
                   [[routes]]\nprefix = \"/\"\nupstream = \"https://a\"\nupstream_ca = \"ca.pem\"\n";
        let first = Config::parse(Path::new("g.toml"), tls).unwrap();
        let moved = Config::parse(Path::new("g.toml"), &format!("# a comment\n\n{tls}")).unwrap();
        assert_ne!(
            first.server.tls.as_ref().unwrap().cert.line,
            moved.server.tls.as_ref().unwrap().cert.line
        );
        assert_eq!(first, moved);
        let other =
            Config::parse(Path::new("g.toml"), &tls.replace("ca.pem", "other.pem")).unwrap();
        assert_ne!(first, other);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(raw::ByteSize::parse("10MiB").unwrap(), 10 << 20);
        assert_eq!(raw::ByteSize::parse("512").unwrap(), 512);
        assert!(raw::ByteSize::parse("10 parsecs").is_err());
    }

    #[test]
    fn tls_paths_resolve_against_the_config_folder() {
        let c = Config::parse(
            Path::new("etc/gateway.toml"),
            "[server.tls]\ncert = \"certs/g.crt\"\nkey = \"/abs/g.key\"\nmin_version = \"1.3\"\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"https://a\"\nupstream_ca = \"ca.pem\"\nupstream_http2 = true\n",
        )
        .unwrap();
        let tls = c.server.tls.unwrap();
        assert_eq!(tls.cert.value, PathBuf::from("etc/certs/g.crt"));
        assert_eq!(tls.cert.line, Some(2));
        assert_eq!(tls.key.value, PathBuf::from("/abs/g.key"));
        assert_eq!(tls.min_version, TlsVersion::V1_3);
        assert_eq!(tls.redirect_http, None);
        let route = &c.routes[0];
        assert_eq!(
            route.upstream_ca.as_ref().unwrap().value,
            PathBuf::from("etc/ca.pem")
        );
        assert!(route.upstream_http2 && route.websocket);
        assert!(Config::parse(Path::new("g"), "")
            .unwrap()
            .server
            .tls
            .is_none());
    }

    #[test]
    fn tls_problems_name_key_and_line() {
        let p = problems("[server.tls]\ncert = \"c\"\nkey = \"k\"\nmin_version = \"1.1\"\n");
        assert_eq!(p[0].line, Some(4));
        let p = problems("[server.tls]\ncert = \"c\"\n");
        assert!(p[0].message.contains("key"), "{}", p[0].message);
        let p = problems(
            "[server]\nlisten = \"127.0.0.1:8443\"\n[server.tls]\ncert = \"c\"\nkey = \"k\"\n\
             redirect_http = \"127.0.0.1:8443\"\n",
        );
        assert_eq!(
            (p[0].key.as_str(), p[0].line),
            ("server.tls.redirect_http", Some(6))
        );
        let p = problems("[server.tls]\ncert = \"c\"\nkey = \"k\"\nredirect_http = \"port 80\"\n");
        assert_eq!(
            (p[0].key.as_str(), p[0].line),
            ("server.tls.redirect_http", Some(4))
        );
        let p = problems(
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://a\"\nupstream_ca = \"ca.pem\"\n",
        );
        assert_eq!(
            (p[0].key.as_str(), p[0].line),
            ("routes[0].upstream_ca", Some(4))
        );
    }
}
