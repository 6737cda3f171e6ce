//! The running gateway: configuration compiled into ready objects, built
//! once at start, so request code never parses or validates config.

use std::sync::Arc;

use crate::auth::authenticate::Authenticator;
use crate::auth::jwt::JwtService;
use crate::auth::password::Passwords;
use crate::auth::refresh::SessionService;
use crate::auth::throttle::Throttle;
use crate::clock::Clock;
use crate::config::{Config, ConfigError, Problem, UsersBackend};
use crate::cookies::CookieJar;
use crate::proxy::client_ip::TrustedProxies;
use crate::proxy::csrf::CsrfGuard;
use crate::proxy::headers::IdentityHeaders;
use crate::proxy::route::RouteTable;
use crate::proxy::upstream::Upstreams;
use crate::sessions::{self, SessionStore};
use crate::tls::Tls;
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
        }
    }
}

#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub routes: RouteTable,
    pub paths: OwnPaths,
    pub jwt: Arc<JwtService>,
    pub users: Arc<dyn UserStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub session_service: SessionService,
    pub passwords: Passwords,
    pub cookies: CookieJar,
    pub identity: IdentityHeaders,
    pub throttle: Throttle,
    pub csrf: CsrfGuard,
    /// `"http"` or `"https"`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// `Some` when the listener terminates TLS (`[server.tls]`).
    pub tls: Option<Arc<Tls>>,
    /// Metrics of requests that matched no route (own endpoints, 404s).
    pub own_metrics: crate::metrics::RouteMetrics,
    /// Wall-clock time for every expiry decision (see [`crate::clock`]);
    /// the JWT service holds a clone.
    pub clock: Clock,
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
    tls: Option<Tls>,
    upstreams: Upstreams,
}

impl FilesAndSecrets {
    pub fn read(config: &Config, clock: &Clock) -> Result<FilesAndSecrets, ConfigError> {
        let mut problems = Vec::new();
        let jwt = keep(
            JwtService::from_config(&config.jwt, clock.clone()),
            &mut problems,
        );
        if config.users.backend == UsersBackend::Postgres {
            if let Err(e) = users::postgres::connect_config(config) {
                problems.extend(e.problems);
            }
        }
        let tls = match &config.server.tls {
            Some(tls) => keep(Tls::from_config(tls), &mut problems).map(Some),
            None => Some(None),
        };
        let upstreams = keep(
            Upstreams::from_routes(&config.routes, config.server.upstream_keepalive),
            &mut problems,
        );
        match (jwt, tls, upstreams) {
            (Some(jwt), Some(tls), Some(upstreams)) if problems.is_empty() => Ok(FilesAndSecrets {
                jwt,
                tls,
                upstreams,
            }),
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

impl Gateway {
    /// Reads secrets and files, opens the stores and compiles the routes.
    pub async fn build(config: Config) -> anyhow::Result<Gateway> {
        Self::build_with_clock(config, Clock::system()).await
    }

    /// [`Self::build`] on a given clock (a test's manual one).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Gateway> {
        let files = FilesAndSecrets::read(&config, &clock)?;
        let users = users::open(&config, true).await?;
        Self::assemble(config, files, users, clock).await
    }

    /// Builds around a given user store (dev mode).
    pub async fn with_users(config: Config, users: Arc<dyn UserStore>) -> anyhow::Result<Gateway> {
        let clock = Clock::system();
        let files = FilesAndSecrets::read(&config, &clock)?;
        Self::assemble(config, files, users, clock).await
    }

    async fn assemble(
        config: Config,
        files: FilesAndSecrets,
        users: Arc<dyn UserStore>,
        clock: Clock,
    ) -> anyhow::Result<Gateway> {
        // Clients that build a rustls config without naming a provider
        // (Redis over rediss://) need the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let FilesAndSecrets {
            jwt,
            tls,
            upstreams,
        } = files;
        let jwt = Arc::new(jwt);
        let tls = tls.map(Arc::new);
        let sessions = sessions::open(&config.sessions).await?;
        let passwords =
            Passwords::new(config.users.bcrypt_cost, config.users.max_concurrent_hashes).await?;
        let session_service = SessionService {
            store: sessions.clone(),
            users: users.clone(),
            jwt: jwt.clone(),
            refresh_ttl: config.jwt.refresh_ttl,
            reuse_grace: config.sessions.reuse_grace,
        };
        // Behind TLS every cookie is Secure, whatever `[cookies] secure` says.
        let mut cookie_config = config.cookies.clone();
        cookie_config.secure |= tls.is_some();
        Ok(Gateway {
            routes: RouteTable::new(&config.routes, &upstreams),
            paths: OwnPaths::new(&config.auth.path_prefix),
            cookies: CookieJar::new(&cookie_config),
            identity: IdentityHeaders::new(&config.identity),
            throttle: Throttle::new(
                sessions.clone(),
                &config.auth.throttle,
                TrustedProxies::new(&config.server.trusted_proxies),
            ),
            csrf: CsrfGuard::new(&config.cookies.trusted_origins),
            scheme: if tls.is_some() { "https" } else { "http" },
            tls,
            own_metrics: crate::metrics::get().route("(gateway)"),
            clock,
            jwt,
            users,
            sessions,
            session_service,
            passwords,
            config,
        })
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

    /// A gateway for `config` that keeps this one's stores (sessions, users,
    /// bcrypt pool). Returns it with the changed settings that only a
    /// restart applies (they keep their current values meanwhile).
    pub async fn reconfigure(
        &self,
        mut config: Config,
    ) -> anyhow::Result<(Gateway, Vec<&'static str>)> {
        let old = &self.config;
        let mut restart = Vec::new();
        if config.server.listen != old.server.listen {
            restart.push("server.listen");
            config.server.listen = old.server.listen;
        }
        if config.admin.listen != old.admin.listen {
            restart.push("admin.listen");
            config.admin.listen = old.admin.listen;
        }
        if config.server.tls.is_some() != old.server.tls.is_some()
            || config.server.tls.as_ref().map(|t| t.redirect_http)
                != old.server.tls.as_ref().map(|t| t.redirect_http)
        {
            restart.push("server.tls (on/off, redirect_http)");
        }
        if format!("{:?}", config.sessions) != format!("{:?}", old.sessions) {
            restart.push("sessions");
            config.sessions = old.sessions.clone();
        }
        if config.users.backend != old.users.backend
            || config.users.path != old.users.path
            || format!("{:?}", config.users.postgres) != format!("{:?}", old.users.postgres)
        {
            restart.push("users (backend, path, database)");
            config.users = old.users.clone();
        }
        let server_settings = |c: &Config| {
            (
                c.server.max_header_bytes,
                c.server.max_headers,
                c.server.max_connections,
                c.server.worker_threads,
                c.server.log_format,
            )
        };
        if server_settings(&config) != server_settings(old) {
            restart.push("server (head limits, max_connections, workers, log format)");
        }
        let invalid = |problems| ConfigError {
            file: config.file.clone(),
            problems,
        };
        let jwt =
            Arc::new(JwtService::from_config(&config.jwt, self.clock.clone()).map_err(invalid)?);
        let tls = match (&config.server.tls, &self.tls) {
            // Same files: re-read them in place; a bad certificate keeps the
            // current one (and is logged) without refusing the whole reload.
            (Some(new), Some(current))
                if format!("{new:?}") == format!("{:?}", current.config()) =>
            {
                current.reload_logged();
                Some(current.clone())
            }
            (Some(new), _) => Some(Arc::new(Tls::from_config(new).map_err(invalid)?)),
            (None, _) => None,
        };
        let upstreams = Upstreams::from_routes(&config.routes, config.server.upstream_keepalive)
            .map_err(invalid)?;
        let passwords = if config.users.bcrypt_cost == old.users.bcrypt_cost
            && config.users.max_concurrent_hashes == old.users.max_concurrent_hashes
        {
            self.passwords.clone()
        } else {
            Passwords::new(config.users.bcrypt_cost, config.users.max_concurrent_hashes).await?
        };
        let session_service = SessionService {
            store: self.sessions.clone(),
            users: self.users.clone(),
            jwt: jwt.clone(),
            refresh_ttl: config.jwt.refresh_ttl,
            reuse_grace: config.sessions.reuse_grace,
        };
        let mut cookie_config = config.cookies.clone();
        cookie_config.secure |= tls.is_some() || self.tls.is_some();
        let gateway = Gateway {
            routes: RouteTable::new(&config.routes, &upstreams),
            paths: OwnPaths::new(&config.auth.path_prefix),
            cookies: CookieJar::new(&cookie_config),
            identity: IdentityHeaders::new(&config.identity),
            throttle: Throttle::new(
                self.sessions.clone(),
                &config.auth.throttle,
                TrustedProxies::new(&config.server.trusted_proxies),
            ),
            csrf: CsrfGuard::new(&config.cookies.trusted_origins),
            scheme: self.scheme,
            tls: if self.tls.is_some() { tls } else { None },
            own_metrics: self.own_metrics.clone(),
            clock: self.clock.clone(),
            jwt,
            users: self.users.clone(),
            sessions: self.sessions.clone(),
            session_service,
            passwords,
            config,
        };
        Ok((gateway, restart))
    }
}

/// Re-reads the configuration file and swaps the gateway; a file that
/// fails validation is refused and the running configuration stays.
pub async fn reload(shared: &SharedGateway) -> anyhow::Result<Vec<&'static str>> {
    let current = shared.load_full();
    let config = Config::load(&current.config.file)?;
    let (gateway, restart) = current.reconfigure(config).await?;
    shared.store(Arc::new(gateway));
    Ok(restart)
}
