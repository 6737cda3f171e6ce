//! Every default of `gateway.toml`, in one place. The constants carry the
//! value and its unit; the functions exist because serde wants functions.

use std::time::Duration;

use toml::Spanned;

use super::raw::{
    AccessLogTarget, AuditTarget, AuthPolicy, HumanDuration, JwtAlgorithm, SameSite,
    SessionsBackend, TlsVersion, UsersBackend,
};

/// `[server] listen`: loopback only, so a default never exposes anything.
pub const LISTEN: &str = "127.0.0.1:8080";
/// `[server] request_timeout`: 30 s for the upstream's response head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `[server] max_header_bytes`: 16 KiB of request line and headers.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// `[server] max_headers`: 100 request header fields.
pub const MAX_HEADERS: usize = 100;
/// `[server] shutdown_grace`: 10 s to drain in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// `[server] header_timeout`: 10 s to send a request head (slow-loris bound).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `[server] idle_timeout`: 60 s for an idle keep-alive client connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `[server] max_connections`: 25,000 concurrent client connections.
pub const MAX_CONNECTIONS: usize = 25_000;
/// `[server] upstream_keepalive`: idle connections kept per upstream
/// host:port, enough for 256 requests in flight to each to find one warm.
pub const UPSTREAM_KEEPALIVE: usize = 256;
/// `[server.tls] min_version`: TLS 1.2 and 1.3 are both accepted.
pub const TLS_MIN_VERSION: TlsVersion = TlsVersion::V1_2;
/// `[server.tls] session_resumption`: TLS 1.3 tickets (kept in memory)
/// let a returning client skip the full handshake.
pub const TLS_SESSION_RESUMPTION: bool = true;
/// `[[routes]] websocket`: `Upgrade: websocket` is carried unless a route says no.
pub const WEBSOCKET: bool = true;
/// `[jwt] secret_env`.
pub const SECRET_ENV: &str = "AUTHGATE_JWT_SECRET";
/// `[jwt] issuer`.
pub const ISSUER: &str = "authgate";
/// `[jwt] access_ttl`: 15 minutes.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// `[jwt] refresh_ttl`: 7 days.
pub const REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// `[users] path`, relative to the config file.
pub const USERS_PATH: &str = "users.toml";
/// `[users] bcrypt_cost`: 12 (about 250 ms a hash on one core).
pub const BCRYPT_COST: u32 = 12;
/// `[users] max_concurrent_hashes`: 0 means one per CPU core.
pub const MAX_CONCURRENT_HASHES: usize = 0;
/// `[users] url_env`.
pub const URL_ENV: &str = "AUTHGATE_DATABASE_URL";
/// `[users] totp_key_env`: the env var holding the key that encrypts
/// second-factor secrets (32 bytes, base64).
pub const TOTP_KEY_ENV: &str = "AUTHGATE_TOTP_KEY";
/// `[users] schema`.
pub const PG_SCHEMA: &str = "authgate";
/// `[users] pool_size`: 8 PostgreSQL connections.
pub const POOL_SIZE: usize = 8;
/// `[cookies] access`.
pub const ACCESS_COOKIE: &str = "access_token";
/// `[cookies] refresh`.
pub const REFRESH_COOKIE: &str = "refresh_token";
/// `[cookies] path`.
pub const COOKIE_PATH: &str = "/";
/// `[identity] user`.
pub const USER_HEADER: &str = "X-Auth-User";
/// `[identity] email`.
pub const EMAIL_HEADER: &str = "X-Auth-Email";
/// `[identity] roles`.
pub const ROLES_HEADER: &str = "X-Auth-Roles";
/// `[identity] assertion_header`.
pub const ASSERTION_HEADER: &str = "X-Auth-Assertion";
/// `[identity] assertion_ttl`: 60 s, long enough for clock skew between
/// gateway and upstream, short enough that a captured assertion is soon
/// worthless.
pub const ASSERTION_TTL: Duration = Duration::from_secs(60);
/// `[sessions] key_prefix`.
pub const KEY_PREFIX: &str = "authgate:";
/// `[sessions] reuse_grace`: 10 s during which a just-rotated refresh token
/// still yields its successor (parallel browser requests).
pub const REUSE_GRACE: Duration = Duration::from_secs(10);
/// `[sessions] timeout`: 2 s, the longest one Redis operation may take
/// before the request it serves gets 503 (a hung Redis must not hang
/// clients).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(2);
/// Tokens larger than this are refused before any parsing: 8 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// `[auth.throttle] max_failures`: failed logins for one username within
/// the window before it is banned (0 turns the username limit off).
pub const THROTTLE_MAX_FAILURES: u64 = 5;
/// `[auth.throttle] window`: 15 minutes, counted from the first failure.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// `[auth.throttle] ip_max_failures`: failed logins from one client
/// address within the window (0 turns the address limit off).
pub const THROTTLE_IP_MAX_FAILURES: u64 = 20;
/// `[auth.throttle] ban`: 15 minutes of 429s once a limit is reached.
pub const THROTTLE_BAN: Duration = Duration::from_secs(15 * 60);

fn spanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

pub fn listen() -> Spanned<String> {
    spanned(LISTEN.into())
}
pub fn request_timeout() -> HumanDuration {
    HumanDuration(REQUEST_TIMEOUT)
}
pub fn max_header_bytes() -> Spanned<usize> {
    spanned(MAX_HEADER_BYTES)
}
pub fn max_headers() -> Spanned<usize> {
    spanned(MAX_HEADERS)
}
pub fn shutdown_grace() -> HumanDuration {
    HumanDuration(SHUTDOWN_GRACE)
}
pub fn header_timeout() -> HumanDuration {
    HumanDuration(HEADER_TIMEOUT)
}
pub fn idle_timeout() -> HumanDuration {
    HumanDuration(IDLE_TIMEOUT)
}
pub fn max_connections() -> usize {
    MAX_CONNECTIONS
}
pub fn upstream_keepalive() -> usize {
    UPSTREAM_KEEPALIVE
}
pub fn auth_policy() -> AuthPolicy {
    AuthPolicy::Required
}
pub fn preserve_host() -> bool {
    true
}
pub fn tls_min_version() -> TlsVersion {
    TLS_MIN_VERSION
}
pub fn tls_session_resumption() -> bool {
    TLS_SESSION_RESUMPTION
}
pub fn websocket() -> bool {
    WEBSOCKET
}
pub fn jwt_algorithm() -> Spanned<JwtAlgorithm> {
    spanned(JwtAlgorithm::HS256)
}
pub fn secret_env() -> Spanned<String> {
    spanned(SECRET_ENV.into())
}
pub fn issuer() -> String {
    ISSUER.into()
}
pub fn access_ttl() -> HumanDuration {
    HumanDuration(ACCESS_TTL)
}
pub fn refresh_ttl() -> HumanDuration {
    HumanDuration(REFRESH_TTL)
}
pub fn leeway() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
pub fn users_backend() -> Spanned<UsersBackend> {
    spanned(UsersBackend::File)
}
pub fn users_path() -> String {
    USERS_PATH.into()
}
pub fn bcrypt_cost() -> Spanned<u32> {
    spanned(BCRYPT_COST)
}
pub fn max_concurrent_hashes() -> usize {
    MAX_CONCURRENT_HASHES
}
pub fn url_env() -> Spanned<String> {
    spanned(URL_ENV.into())
}
pub fn totp_key_env() -> Spanned<String> {
    spanned(TOTP_KEY_ENV.into())
}
pub fn pg_schema() -> Spanned<String> {
    spanned(PG_SCHEMA.into())
}
pub fn pool_size() -> usize {
    POOL_SIZE
}
pub fn access_cookie() -> Spanned<String> {
    spanned(ACCESS_COOKIE.into())
}
pub fn refresh_cookie() -> Spanned<String> {
    spanned(REFRESH_COOKIE.into())
}
pub fn cookie_secure() -> bool {
    true
}
pub fn same_site() -> Spanned<SameSite> {
    spanned(SameSite::Lax)
}
pub fn cookie_path() -> String {
    COOKIE_PATH.into()
}
pub fn user_header() -> Spanned<String> {
    spanned(USER_HEADER.into())
}
pub fn email_header() -> Spanned<String> {
    spanned(EMAIL_HEADER.into())
}
pub fn roles_header() -> Spanned<String> {
    spanned(ROLES_HEADER.into())
}
pub fn assertion() -> Spanned<bool> {
    spanned(false)
}
pub fn assertion_header() -> Spanned<String> {
    spanned(ASSERTION_HEADER.into())
}
pub fn assertion_ttl() -> HumanDuration {
    HumanDuration(ASSERTION_TTL)
}
pub fn sessions_backend() -> Spanned<SessionsBackend> {
    spanned(SessionsBackend::Memory)
}
pub fn key_prefix() -> String {
    KEY_PREFIX.into()
}
pub fn reuse_grace() -> HumanDuration {
    HumanDuration(REUSE_GRACE)
}

pub fn session_timeout() -> Spanned<HumanDuration> {
    spanned(HumanDuration(SESSION_TIMEOUT))
}
pub fn throttle_max_failures() -> u64 {
    THROTTLE_MAX_FAILURES
}
pub fn throttle_window() -> HumanDuration {
    HumanDuration(THROTTLE_WINDOW)
}
pub fn throttle_ip_max_failures() -> u64 {
    THROTTLE_IP_MAX_FAILURES
}
pub fn throttle_ban() -> HumanDuration {
    HumanDuration(THROTTLE_BAN)
}
pub fn path_prefix() -> Spanned<String> {
    spanned(String::new())
}
pub fn login_redirect() -> bool {
    true
}
/// `[access_log] target`: the `authgate::access` tracing event.
pub fn access_log_target() -> Spanned<AccessLogTarget> {
    Spanned::new(0..0, AccessLogTarget::Log)
}
/// `[audit] target`: the `authgate::audit` tracing event.
pub fn audit_target() -> Spanned<AuditTarget> {
    Spanned::new(0..0, AuditTarget::Stderr)
}
/// `[access_log] queue`: 16,384 lines (a few MiB) wait for the writer
/// thread before new ones are dropped.
pub const ACCESS_LOG_QUEUE: usize = 16 * 1024;
pub fn access_log_queue() -> Spanned<usize> {
    Spanned::new(0..0, ACCESS_LOG_QUEUE)
}
/// The audit trail's buffer: 65,536 events wait for the writer thread
/// before one is dropped (and counted, and warned about). Security events
/// are rare next to requests, so this covers minutes of a stalled disk.
pub const AUDIT_QUEUE: usize = 64 * 1024;
/// `[audit] enabled`.
pub const AUDIT_ENABLED: bool = true;
pub fn audit_enabled() -> bool {
    AUDIT_ENABLED
}
/// `[server] pid_file`, relative to the config file.
pub const PID_FILE: &str = "authgate.pid";
pub fn pid_file() -> String {
    PID_FILE.into()
}
/// `[forward_auth] allow_from`: loopback only, where a front proxy on the
/// same host asks from; anything further must be named.
pub const FORWARD_AUTH_ALLOW_FROM: &[&str] = &["127.0.0.0/8", "::1/128"];
pub fn forward_auth_allow_from() -> Vec<Spanned<String>> {
    FORWARD_AUTH_ALLOW_FROM
        .iter()
        .map(|net| spanned((*net).to_string()))
        .collect()
}
