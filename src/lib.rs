//! authgate: a reverse-proxy authentication gateway.
//!
//! Module map, one concern each:
//! - [`config`]: `gateway.toml`, parsed and validated once
//! - [`proxy`]: the request pipeline, its phases, routes and header rules
//! - [`auth`]: who is calling (a request's authentication), JWTs,
//!   passwords, the `/token` logic, refresh-token rotation
//! - [`users`]: user stores (file, PostgreSQL)
//! - [`sessions`]: refresh-token families (memory, Redis)
//! - [`endpoints`]: the paths authgate answers itself
//! - [`response`]: the request-time error type and its HTTP rendering
//! - [`server`]: listener, connection limits, graceful shutdown
//! - [`tls`]: TLS termination, certificate reload, the https redirect
//! - [`metrics`]: Prometheus metrics for the admin listener
//! - [`cli`]: the `authgate` command

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
pub mod pipeline;
pub mod request;
pub mod response;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod tls;
pub mod upstream;
pub mod users;
