//! The running gateway: configuration compiled into ready objects, built
//! once at start, so request code never parses or validates config.

use std::sync::Arc;

use crate::auth::assertion::Assertions;
use crate::auth::authenticate::Authenticator;
use crate::auth::csrf::CsrfGuard;
use crate::auth::jwt::JwtService;
use crate::auth::password::Passwords;
use crate::auth::refresh::SessionService;
use crate::auth::second_factor::SecondFactor;
use crate::auth::throttle::Throttle;
use crate::client_ip::TrustedProxies;
use crate::clock::Clock;
use crate::config::{Config, ConfigError, Problem, RestartSettings, UsersBackend};
use crate::cookies::CookieJar;
use crate::headers::IdentityHeaders;
use crate::observe::access::AccessLog;
use crate::observe::audit::{Audit, AuditEvent, Record};
use crate::routes::RouteTable;
use crate::sessions::watch::SocketWatch;
use crate::sessions::{self, SessionStore};
use crate::tls::Tls;
use crate::totp::TotpKey;
use crate::upstream::Upstreams;
use crate::users::{self, UserStore};

/// The paths authgate answers itself, under `[auth] path_prefix`.
#[derive(Debug, Clone)]
pub struct OwnPaths {
    pub login: String,
    pub token: String,
    pub logout: String,
    pub userinfo: String,
    pub healthz: String,
    pub readyz: String,
    pub jwks: String,
    /// Forward auth (only with `[forward_auth] enabled`).
    pub verify: String,
    pub verify_redirect: String,
}

impl OwnPaths {
    fn new(prefix: &str) -> OwnPaths {
        OwnPaths {
            login: format!("{prefix}/login"),
            token: format!("{prefix}/token"),
            logout: format!("{prefix}/logout"),
            userinfo: format!("{prefix}/userinfo"),
            healthz: format!("{prefix}/healthz"),
            readyz: format!("{prefix}/readyz"),
            jwks: "/.well-known/jwks.json".into(),
            verify: format!("{prefix}/verify"),
            verify_redirect: format!("{prefix}/verify/redirect"),
        }
    }
}

#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub routes: RouteTable,
    pub paths: OwnPaths,
    pub jwt: Arc<JwtService>,
    /// `Some` when `[identity] assertion = true`.
    pub assertions: Option<Arc<Assertions>>,
    /// `/.well-known/jwks.json`, made once: the access-token keys and the
    /// assertion key; `None` when there is no public key to publish.
    pub jwks: Option<bytes::Bytes>,
    pub users: Arc<dyn UserStore>,
    pub sessions: Arc<dyn SessionStore>,
    /// The open WebSockets and their sessions, kept across reloads.
    pub sockets: SocketWatch,
    pub session_service: SessionService,
    pub passwords: Passwords,
    pub cookies: CookieJar,
    pub identity: IdentityHeaders,
    pub throttle: Throttle,
    /// The one-time code of users with a second factor.
    pub second_factor: SecondFactor,
    pub csrf: CsrfGuard,
    /// `"http"` or `"https"`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// `Some` when the listener terminates TLS (`[server.tls]`).
    pub tls: Option<Arc<Tls>>,
    /// The pools `routes` forward through, kept for the next reload.
    pub upstreams: Upstreams,
    /// Metrics of requests that matched no route (own endpoints, 404s).
    pub own_metrics: crate::observe::metrics::RouteMetrics,
    /// Wall-clock time for every expiry decision (see [`crate::clock`]);
    /// the JWT service, session stores and throttle hold clones.
    pub clock: Clock,
    /// `[server] trusted_proxies`: who the client is, for the audit trail
    /// (the throttle holds its own copy).
    pub proxies: TrustedProxies,
    /// The access log and the audit trail, opened at start and kept by
    /// reloads (their settings are restart-only).
    pub access_log: Arc<AccessLog>,
    pub audit: Arc<Audit>,
}

/// The gateway as the server sees it: swapped whole on a reload, so every
/// request runs against one consistent configuration.
pub type SharedGateway = Arc<arc_swap::ArcSwap<Gateway>>;

pub fn shared(gw: Gateway) -> SharedGateway {
    Arc::new(arc_swap::ArcSwap::from_pointee(gw))
}

/// What a configuration names outside itself, read and checked: the JWT
/// secret or keys, the listener's certificate, the upstreams' CA bundles
/// and the users database URL. Every problem is gathered rather than the
/// first, so `check-config` and `serve` refuse a file with the same list.
pub struct FilesAndSecrets {
    jwt: JwtService,
    assertions: Option<Assertions>,
    tls: Option<Arc<Tls>>,
    upstreams: Upstreams,
    /// The key of second-factor secrets; `None` when its variable is unset.
    pub totp: Option<TotpKey>,
}

impl FilesAndSecrets {
    pub fn read(config: &Config, clock: &Clock) -> Result<FilesAndSecrets, ConfigError> {
        Self::read_for(config, None, clock)
    }

    /// [`Self::read`] for a gateway that replaces `running`: its
    /// certificate (re-read in place) and upstream pools are kept where
    /// their settings did not change.
    fn read_for(
        config: &Config,
        running: Option<&Gateway>,
        clock: &Clock,
    ) -> Result<FilesAndSecrets, ConfigError> {
        let mut problems = Vec::new();
        let jwt = keep(
            JwtService::from_config(&config.jwt, clock.clone()),
            &mut problems,
        );
        let assertions = match &config.identity.assertion {
            Some(assertion) => keep(
                Assertions::from_config(
                    assertion,
                    config.identity.assertion_header.clone(),
                    &config.jwt.issuer,
                    clock.clone(),
                )
                .map(Some)
                .map_err(|p| vec![p]),
                &mut problems,
            ),
            None => Some(None),
        };
        let totp = keep(
            TotpKey::from_env(&config.users.totp_key_env).map_err(|p| vec![p]),
            &mut problems,
        );
        if config.users.backend == UsersBackend::Postgres {
            if let Err(e) = users::postgres::connect_config(config) {
                problems.extend(e.problems);
            }
        }
        // Same settings: the running certificate is kept and its files are
        // re-read in place once the reload is sure to happen; a bad file
        // keeps the current certificate (and is logged) without refusing
        // the whole reload.
        let kept_tls = running
            .and_then(|gw| gw.tls.clone())
            .filter(|current| config.server.tls.as_ref() == Some(current.config()));
        let tls = match (&config.server.tls, &kept_tls) {
            (_, Some(kept)) => Some(Some(kept.clone())),
            (Some(new), None) => {
                keep(Tls::from_config(new), &mut problems).map(|tls| Some(Arc::new(tls)))
            }
            (None, None) => Some(None),
        };
        let upstreams = keep(
            Upstreams::reusing(
                running.map(|gw| &gw.upstreams),
                &config.routes,
                config.server.upstream_keepalive,
            ),
            &mut problems,
        );
        match (jwt, assertions, tls, upstreams, totp) {
            (Some(jwt), Some(assertions), Some(tls), Some(upstreams), Some(totp))
                if problems.is_empty() =>
            {
                if let Some(kept) = kept_tls {
                    kept.reload_logged();
                }
                Ok(FilesAndSecrets {
                    jwt,
                    assertions,
                    tls,
                    upstreams,
                    totp,
                })
            }
            _ => Err(ConfigError {
                file: config.file.clone(),
                problems,
            }),
        }
    }
}

/// The value, or its problems added to `problems`.
fn keep<T>(result: Result<T, Vec<Problem>>, problems: &mut Vec<Problem>) -> Option<T> {
    result.map_err(|p| problems.extend(p)).ok()
}

/// What a gateway is built on besides its configuration.
pub enum Basis<'a> {
    /// A start: stores opened and pools made anew, time read from `clock`.
    /// `users` is the store to use instead of opening the configured one
    /// (dev mode).
    Fresh {
        clock: Clock,
        users: Option<Arc<dyn UserStore>>,
    },
    /// A reload: the running gateway's user and session stores, clock and
    /// metrics are kept, and so are its bcrypt pool, certificate and
    /// upstream pools where their settings did not change. The
    /// configuration must already hold the running restart-only settings
    /// ([`Config::keep_restart_settings`]).
    Running(&'a Gateway),
}

impl Gateway {
    /// Reads secrets and files, opens the stores and compiles the routes.
    pub async fn build(config: Config) -> anyhow::Result<Gateway> {
        Self::build_with_clock(config, Clock::system()).await
    }

    /// [`Self::build`] on a given clock (a test's [`Clock::manual`]).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Gateway> {
        build(config, Basis::Fresh { clock, users: None }).await
    }

    /// What authentication needs of this gateway, borrowed per request.
    pub fn authenticator(&self) -> Authenticator<'_> {
        Authenticator {
            jwt: &self.jwt,
            cookies: &self.cookies,
            sessions: &self.session_service,
            forward_token: self.config.identity.forward_token,
        }
    }

    /// Builds around a given user store (dev mode).
    pub async fn with_users(config: Config, users: Arc<dyn UserStore>) -> anyhow::Result<Gateway> {
        let clock = Clock::system();
        build(
            config,
            Basis::Fresh {
                clock,
                users: Some(users),
            },
        )
        .await
    }
}

/// The one place a gateway and its parts are made, at start and at reload.
pub async fn build(config: Config, basis: Basis<'_>) -> anyhow::Result<Gateway> {
    // Clients that build a rustls config without naming a provider
    // (Redis over rediss://) need the process default.
    crate::tls::install_process_provider();
    let (running, clock) = match &basis {
        Basis::Running(gw) => (Some(*gw), gw.clock.clone()),
        Basis::Fresh { clock, .. } => (None, clock.clone()),
    };
    if let Some(running) = running {
        debug_assert_eq!(
            RestartSettings::of(&config),
            RestartSettings::of(&running.config),
            "a reload keeps the running restart-only settings"
        );
    }
    let FilesAndSecrets {
        jwt,
        assertions,
        tls,
        upstreams,
        totp,
    } = FilesAndSecrets::read_for(&config, running, &clock)?;
    let jwks = crate::endpoints::jwks::document(&jwt, assertions.as_ref());
    let jwt = Arc::new(jwt);
    let assertions = assertions.map(Arc::new);
    let (users, sessions, sockets, own_metrics, access_log, audit) = match basis {
        Basis::Running(gw) => (
            gw.users.clone(),
            gw.sessions.clone(),
            gw.sockets.clone(),
            gw.own_metrics.clone(),
            gw.access_log.clone(),
            gw.audit.clone(),
        ),
        Basis::Fresh { users, .. } => {
            let users = match users {
                Some(users) => users,
                None => users::open_for_serve(&config, totp.clone()).await?,
            };
            let sessions = sessions::open(&config.sessions, clock.clone()).await?;
            let access_log = AccessLog::open(&config.access_log)
                .map_err(|e| anyhow::anyhow!("access_log.path: {e}"))?;
            let audit = Audit::open(&config.audit, clock.clone())?;
            (
                users,
                sessions.clone(),
                SocketWatch::start(sessions, clock.clone()),
                crate::observe::metrics::get().route("(gateway)"),
                Arc::new(access_log),
                Arc::new(audit),
            )
        }
    };
    let hashing = |c: &Config| (c.users.bcrypt_cost, c.users.max_concurrent_hashes);
    let passwords = match running {
        Some(gw) if hashing(&gw.config) == hashing(&config) => gw.passwords.clone(),
        _ => Passwords::new(config.users.bcrypt_cost, config.users.max_concurrent_hashes).await?,
    };
    let session_service = SessionService {
        store: sessions.clone(),
        users: users.clone(),
        jwt: jwt.clone(),
        refresh_ttl: config.jwt.refresh_ttl,
        reuse_grace: config.sessions.reuse_grace,
        clock: clock.clone(),
    };
    // Behind TLS every cookie is Secure, whatever `[cookies] secure` says.
    let mut cookie_config = config.cookies.clone();
    cookie_config.secure |= tls.is_some();
    let cookies = CookieJar::new(&cookie_config);
    let scheme = if tls.is_some() { "https" } else { "http" };
    Ok(Gateway {
        routes: RouteTable::new(&config.routes, &upstreams),
        upstreams,
        paths: OwnPaths::new(&config.auth.path_prefix),
        csrf: CsrfGuard::new(&config.cookies.trusted_origins, &cookies, scheme),
        cookies,
        identity: IdentityHeaders::new(&config.identity),
        throttle: Throttle::new(
            sessions.clone(),
            &config.auth.throttle,
            TrustedProxies::new(&config.server.trusted_proxies),
        ),
        second_factor: SecondFactor::new(totp, sessions.clone(), clock.clone()),
        proxies: TrustedProxies::new(&config.server.trusted_proxies),
        access_log,
        audit,
        scheme,
        tls,
        own_metrics,
        clock,
        jwt,
        assertions,
        jwks,
        users,
        sessions,
        sockets,
        session_service,
        passwords,
        config,
    })
}

/// Re-reads the configuration file and swaps the gateway; a file that
/// fails validation is refused and the running configuration stays.
/// Restart-only settings keep their running values; their changed keys are
/// logged in one line and returned.
///
/// Either way the audit trail gets a `config_reloaded` event whose reason
/// is `ok` or the error.
pub async fn reload(shared: &SharedGateway) -> anyhow::Result<Vec<&'static str>> {
    let running = shared.load_full();
    let result = swap(shared, &running).await;
    let reason = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    running
        .audit
        .record(Record::new(AuditEvent::ConfigReloaded).reason(&reason));
    result
}

async fn swap(shared: &SharedGateway, running: &Gateway) -> anyhow::Result<Vec<&'static str>> {
    let mut config = Config::load(&running.config.file)?;
    let needs_restart = config.keep_restart_settings(&running.config);
    let gateway = build(config, Basis::Running(running)).await?;
    shared.store(Arc::new(gateway));
    tracing::info!(event = "config_reloaded", "configuration reloaded");
    if !needs_restart.is_empty() {
        tracing::warn!(
            event = "config_restart_needed",
            settings = %needs_restart.join(", "),
            "these settings keep their running values until a restart"
        );
    }
    Ok(needs_restart)
}
