//! authgate: a reverse-proxy authentication gateway.
//!
//! Module map, one concern each. Requests flow one way: [`server`] →
//! [`pipeline`] → [`auth`], [`endpoints`], [`upstream`] → [`sessions`],
//! [`users`]; nothing below the pipeline imports it.
//!
//! - [`server`]: listener, connection limits, idle shedding, graceful
//!   shutdown (`mod`, `conn`, `idle`)
//! - [`tls`]: TLS termination, certificate reload, the https redirect
//! - [`pipeline`]: the request pipeline, its phases in order: `check`,
//!   `route`, `authorize`, `mutate`,
//!   `forward`, `respond`, and the `websocket` upgrade branch
//! - [`request`]: one request's state ([`request::RequestContext`]), shared
//!   by the pipeline and the endpoints
//! - [`routes`]: the route table and its longest-prefix matching, and
//!   the policy decision ([`routes::Access`])
//! - [`path`]: path normalization, shared by the pipeline and `/verify`
//! - [`headers`]: header rules at the trust boundary: hop-by-hop,
//!   identity, `X-Forwarded-*`, `X-Request-Id`
//! - [`client_ip`]: the client's address behind trusted proxies
//! - [`auth`]: who is calling (`authenticate`, with its outcome enum),
//!   `jwt`, `token_cache`, `password`, `login`, `refresh`, `throttle`,
//!   `csrf`, the sign-in `redirect` rule, the signed identity `assertion`
//! - [`endpoints`]: the paths authgate answers itself, one file each:
//!   `token`, `logout`, `userinfo`, `sign_in` (the pages), `health`, `jwks`,
//!   `verify` (forward auth)
//! - [`upstream`]: the pooled upstream clients (`http1`: the lean pool)
//! - [`sessions`]: refresh-token families (memory, Redis)
//! - [`users`]: user stores (file, PostgreSQL, memory)
//! - [`totp`]: the second factor: RFC 6238 codes, the key sealing their
//!   secrets, the sign-in ticket
//! - [`cookies`]: reading `Cookie`, writing authgate's `Set-Cookie`s
//! - [`response`]: the request-time error type and its HTTP rendering
//! - [`gateway`]: configuration compiled into the running gateway, one
//!   builder for start and reload
//! - [`config`]: `gateway.toml`, parsed and validated once; restart-only
//!   settings
//! - [`clock`]: the injectable wall clock every expiry reads
//! - [`observe`]: Prometheus `metrics` and the `logs` subscriber
//! - [`admin`]: the admin listener (`/metrics`, `/healthz`, `/readyz`)
//! - [`cli`]: the `authgate` command; [`dev`]: `serve --dev`

pub mod admin;
pub mod auth;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod cookies;
pub mod dev;
pub mod endpoints;
pub mod gateway;
pub mod headers;
pub mod observe;
pub mod path;
pub mod pipeline;
pub mod request;
pub mod response;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod tls;
pub mod totp;
pub mod upstream;
pub mod users;
