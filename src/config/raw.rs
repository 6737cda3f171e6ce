//! The file as written: serde types that mirror `gateway.toml` key for key.
//!
//! Unknown keys are refused everywhere (`deny_unknown_fields`), so a typo is
//! an error with a line number rather than a silently ignored setting. Every
//! default lives in [`super::defaults`]; values that can be checked on their
//! own (durations, sizes, enums) are checked while parsing, so toml reports
//! the line; checks that need several keys happen in [`super::validate`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::defaults as d;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub jwt: RawJwt,
    #[serde(default)]
    pub users: RawUsers,
    #[serde(default)]
    pub cookies: RawCookies,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub sessions: RawSessions,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub forward_auth: RawForwardAuth,
    #[serde(default)]
    pub access_log: RawAccessLog,
    #[serde(default)]
    pub audit: RawAudit,
}

/// `[access_log]`: where the line of each request goes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    #[serde(default = "d::access_log_target")]
    pub target: Spanned<AccessLogTarget>,
    /// With `target = "file"`, relative to the config file.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// Lines buffered before new ones are dropped.
    #[serde(default = "d::access_log_queue")]
    pub queue: Spanned<usize>,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        toml::from_str("").expect("access_log defaults")
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogTarget {
    /// The `authgate::access` tracing event, as before `[access_log]`.
    #[default]
    Log,
    Stdout,
    Stderr,
    File,
    Off,
}

/// `[audit]`: the security events' own trail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[serde(default = "d::audit_enabled")]
    pub enabled: bool,
    #[serde(default = "d::audit_target")]
    pub target: Spanned<AuditTarget>,
    /// With `target = "file"`, relative to the config file.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
}

impl Default for RawAudit {
    fn default() -> Self {
        toml::from_str("").expect("audit defaults")
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditTarget {
    /// The `authgate::audit` tracing event, on the process's log (stderr).
    #[default]
    Stderr,
    File,
}

/// `[forward_auth]`: `/verify` and `/verify/redirect` for a front proxy's
/// auth request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardAuth {
    #[serde(default)]
    pub enabled: bool,
    /// CIDRs (or bare addresses) of the proxies allowed to ask.
    #[serde(default = "d::forward_auth_allow_from")]
    pub allow_from: Vec<Spanned<String>>,
}

impl Default for RawForwardAuth {
    fn default() -> Self {
        toml::from_str("").expect("forward_auth defaults")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Separate listener for `/metrics`; none by default.
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "d::listen")]
    pub listen: Spanned<String>,
    #[serde(default = "d::request_timeout")]
    pub request_timeout: HumanDuration,
    #[serde(default = "d::max_header_bytes")]
    pub max_header_bytes: Spanned<usize>,
    #[serde(default = "d::max_headers")]
    pub max_headers: Spanned<usize>,
    #[serde(default = "d::shutdown_grace")]
    pub shutdown_grace: HumanDuration,
    #[serde(default = "d::header_timeout")]
    pub header_timeout: HumanDuration,
    #[serde(default = "d::idle_timeout")]
    pub idle_timeout: HumanDuration,
    #[serde(default = "d::max_connections")]
    pub max_connections: usize,
    #[serde(default = "d::upstream_keepalive")]
    pub upstream_keepalive: usize,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// CIDRs (or bare addresses) of proxies whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Where `serve` writes its pid for `authgate reload`; "" for none.
    #[serde(default = "d::pid_file")]
    pub pid_file: String,
    #[serde(default)]
    pub tls: Option<RawTls>,
}

impl Default for RawServer {
    fn default() -> Self {
        toml::from_str("").expect("server defaults")
    }
}

/// `[server.tls]`: present means the listener speaks HTTPS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default = "d::tls_min_version")]
    pub min_version: TlsVersion,
    #[serde(default)]
    pub redirect_http: Option<Spanned<String>>,
    #[serde(default = "d::tls_session_resumption")]
    pub session_resumption: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_2 => "1.2",
            Self::V1_3 => "1.3",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthPolicy {
    Required,
    Optional,
    Public,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: Spanned<String>,
    /// None: the route only answers `/verify` (forward auth).
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    #[serde(default = "d::auth_policy")]
    pub auth: AuthPolicy,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    #[serde(default = "d::preserve_host")]
    pub preserve_host: bool,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub max_body: Option<ByteSize>,
    #[serde(default)]
    pub upstream_ca: Option<Spanned<String>>,
    #[serde(default)]
    pub upstream_http2: bool,
    #[serde(default = "d::websocket")]
    pub websocket: bool,
    /// The signed assertion's `aud`; the upstream's origin when absent.
    #[serde(default)]
    pub audience: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    ES256,
    EdDSA,
}

impl JwtAlgorithm {
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    #[serde(default = "d::jwt_algorithm")]
    pub algorithm: Spanned<JwtAlgorithm>,
    #[serde(default = "d::secret_env")]
    pub secret_env: Spanned<String>,
    #[serde(default)]
    pub private_key: Option<Spanned<String>>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub previous_keys: Vec<RawPreviousKey>,
    #[serde(default = "d::issuer")]
    pub issuer: String,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default = "d::access_ttl")]
    pub access_ttl: HumanDuration,
    #[serde(default = "d::refresh_ttl")]
    pub refresh_ttl: HumanDuration,
    #[serde(default = "d::leeway")]
    pub leeway: HumanDuration,
}

impl Default for RawJwt {
    fn default() -> Self {
        toml::from_str("").expect("jwt defaults")
    }
}

/// A key that still verifies tokens during a rotation but no longer signs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreviousKey {
    pub key_id: String,
    /// HS*: the env var holding the old secret.
    #[serde(default)]
    pub secret_env: Option<Spanned<String>>,
    /// Asymmetric: the old public key (PEM).
    #[serde(default)]
    pub public_key: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsersBackend {
    File,
    Postgres,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsers {
    #[serde(default = "d::users_backend")]
    pub backend: Spanned<UsersBackend>,
    #[serde(default = "d::users_path")]
    pub path: String,
    #[serde(default = "d::bcrypt_cost")]
    pub bcrypt_cost: Spanned<u32>,
    #[serde(default = "d::url_env")]
    pub url_env: Spanned<String>,
    #[serde(default = "d::pg_schema")]
    pub schema: Spanned<String>,
    #[serde(default = "d::pool_size")]
    pub pool_size: usize,
    #[serde(default)]
    pub table: Option<Spanned<String>>,
    #[serde(default)]
    pub columns: RawColumns,
    #[serde(default = "d::max_concurrent_hashes")]
    pub max_concurrent_hashes: usize,
    #[serde(default = "d::totp_key_env")]
    pub totp_key_env: Spanned<String>,
}

impl Default for RawUsers {
    fn default() -> Self {
        toml::from_str("").expect("users defaults")
    }
}

/// Column names of an existing user table mapped read-only.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawColumns {
    pub username: Option<String>,
    pub password_hash: Option<String>,
    pub email: Option<String>,
    pub roles: Option<String>,
    pub disabled: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCookies {
    #[serde(default = "d::access_cookie")]
    pub access: Spanned<String>,
    #[serde(default = "d::refresh_cookie")]
    pub refresh: Spanned<String>,
    #[serde(default = "d::cookie_secure")]
    pub secure: bool,
    #[serde(default = "d::same_site")]
    pub same_site: Spanned<SameSite>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default = "d::cookie_path")]
    pub path: String,
    /// Origins besides the gateway's own whose cookie-authenticated unsafe
    /// requests are accepted (CSRF).
    #[serde(default)]
    pub trusted_origins: Vec<Spanned<String>>,
}

impl Default for RawCookies {
    fn default() -> Self {
        toml::from_str("").expect("cookie defaults")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    #[serde(default = "d::user_header")]
    pub user: Spanned<String>,
    #[serde(default = "d::email_header")]
    pub email: Spanned<String>,
    #[serde(default = "d::roles_header")]
    pub roles: Spanned<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    #[serde(default)]
    pub forward_token: bool,
    /// Sign the identity into `assertion_header` for upstreams to verify.
    #[serde(default = "d::assertion")]
    pub assertion: Spanned<bool>,
    #[serde(default = "d::assertion_header")]
    pub assertion_header: Spanned<String>,
    /// PKCS#8 PEM private key (ES256 or EdDSA); required with `assertion`.
    #[serde(default)]
    pub assertion_key: Option<Spanned<String>>,
    #[serde(default = "d::assertion_ttl")]
    pub assertion_ttl: HumanDuration,
}

impl Default for RawIdentity {
    fn default() -> Self {
        toml::from_str("").expect("identity defaults")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionsBackend {
    Memory,
    Redis,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessions {
    #[serde(default = "d::sessions_backend")]
    pub backend: Spanned<SessionsBackend>,
    #[serde(default)]
    pub redis_url: Option<Spanned<String>>,
    /// With Sentinel: the monitored master's name; `redis_url` lists Sentinels.
    #[serde(default)]
    pub sentinel_master: Option<String>,
    #[serde(default = "d::key_prefix")]
    pub key_prefix: String,
    #[serde(default = "d::reuse_grace")]
    pub reuse_grace: HumanDuration,
    #[serde(default = "d::session_timeout")]
    pub timeout: Spanned<HumanDuration>,
}

impl Default for RawSessions {
    fn default() -> Self {
        toml::from_str("").expect("sessions defaults")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default = "d::path_prefix")]
    pub path_prefix: Spanned<String>,
    #[serde(default = "d::login_redirect")]
    pub login_redirect: bool,
    #[serde(default)]
    pub throttle: RawThrottle,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrottle {
    #[serde(default = "d::throttle_max_failures")]
    pub max_failures: u64,
    #[serde(default = "d::throttle_window")]
    pub window: HumanDuration,
    #[serde(default = "d::throttle_ip_max_failures")]
    pub ip_max_failures: u64,
    #[serde(default = "d::throttle_ban")]
    pub ban: HumanDuration,
}

impl Default for RawThrottle {
    fn default() -> Self {
        toml::from_str("").expect("throttle defaults")
    }
}

impl Default for RawAuth {
    fn default() -> Self {
        toml::from_str("").expect("auth defaults")
    }
}

/// A duration written for people: `"30s"`, `"15m"`, `"7d"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write e.g. \"30s\", \"15m\", \"7d\""
                ))
            })
    }
}

/// A size in bytes, written as a number or as `"10MiB"`, `"512KiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<u64, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("invalid size {text:?}; write e.g. \"10MiB\""))?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            other => return Err(format!("unknown size unit {other:?} in {text:?}")),
        };
        number
            .checked_mul(factor)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        match Either::deserialize(deserializer)? {
            Either::Number(n) => Ok(ByteSize(n)),
            Either::Text(t) => ByteSize::parse(&t)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}
