//! The request pipeline. Every request passes these phases, in this order
//! (see [`process`]), each in a module of its own:
//!
//! 1. **[`check`]**: head size, CONNECT/TRACE refusal, path normalization
//!    — or 400/405/431
//! 2. **own endpoints** ([`crate::endpoints`]): `/token`, `/logout`,
//!    `/userinfo`, `/healthz`, ...
//! 3. **[`route`]**: longest prefix (and host) on the normalized path — or
//!    404
//! 4. **authenticate** ([`crate::auth::authenticate`]): Bearer header, else
//!    access cookie; on a missing or expired cookie with a refresh cookie, a
//!    silent refresh; a cookie credential on an unsafe method passes the
//!    [`crate::auth::csrf`] check first
//! 5. **[`authorize`](mod@authorize)**: the route's policy and roles → a
//!    [`Permit`], or 401 (a browser: the sign-in page) or 403
//! 6. **[`mutate`](mod@mutate)**: strip hop-by-hop, spoofed identity
//!    headers and our cookies; inject identity and forwarding headers
//! 7. **[`forward`](mod@forward)**: the route's pooled upstream client —
//!    or 502/504, or 400 when the client's own body breaks off mid-stream
//!    (malformed chunked framing); an answered WebSocket upgrade is then
//!    spliced (see [`websocket`])
//! 8. **response filter** ([`respond`], on every response, errors
//!    included): request id, `Set-Cookie`, `Connection: close` when an
//!    HTTP/1 request body was left unread, metrics, one log line

pub mod authorize;
pub mod check;
pub mod forward;
pub mod mutate;
pub mod respond;
pub mod route;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};

use crate::auth::authenticate::{Anonymous, Authn};
use crate::auth::csrf::Credential;
use crate::config::AuthPolicy;
use crate::endpoints::{self, sign_in, Endpoint};
use crate::gateway::Gateway;
use crate::response::{Body, GatewayError, RequestBody};
use authorize::{authorize, Permit};
use forward::forward;
use mutate::mutate;

use crate::request::RequestContext;

/// Entry point from the server: never fails, always answers.
pub async fn handle<B: RequestBody>(
    gw: Arc<Gateway>,
    req: Request<B>,
    peer: SocketAddr,
) -> Response<Body> {
    let mut ctx = RequestContext::new(req.headers(), peer);
    ctx.request_body_unread = respond::sends_http1_body(&req);
    let logged = respond::access_logged(&gw, &req);
    let response = match process(&gw, req, &mut ctx).await {
        Ok(response) => response,
        Err(error) => respond::error_response(error, &ctx),
    };
    respond::finish(&gw, response, &mut ctx, logged)
}

/// The phases, top to bottom.
async fn process<B: RequestBody>(
    gw: &Gateway,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    check::head(&req, gw.config.server.max_header_bytes)?;
    check::method(req.method())?;
    // A clone of the URI shares its bytes: the path borrows from it, not
    // from the request, which moves on to the upstream.
    let uri = req.uri().clone();
    let path = check::path(&uri)?;
    if let Some(endpoint) = Endpoint::find(gw, &path) {
        return Box::pin(endpoints::serve(gw, endpoint, req, ctx)).await;
    }
    let route = route::route(&gw.routes, &req, &path)?;
    // A route without upstream answers only `/verify`: 404 before any
    // authentication, as for a path no route covers.
    let target = route.target()?;
    ctx.route = Some(route.clone());
    let upgrade = websocket::requested(&req);
    if upgrade && !route.websocket {
        return Err(GatewayError::BadRequest(
            "WebSocket upgrades are not allowed on this route",
        ));
    }
    let authn = if route.auth == AuthPolicy::Public {
        Authn::Anonymous(Anonymous::Missing)
    } else {
        gw.csrf.check(
            req.method(),
            req.uri(),
            req.headers(),
            Credential::Authentication,
        )?;
        ctx.authenticated(
            gw,
            req.headers(),
            gw.authenticator().authenticate(req.headers()).await?,
        )
    };
    let lifetime = upgrade.then(|| websocket::Lifetime::of(&authn));
    let permit = match authorize(&route, authn, ctx) {
        Err(GatewayError::Unauthenticated(_))
            if !upgrade && authorize::sends_to_sign_in(gw, req.headers()) =>
        {
            let original = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            return Ok(sign_in::redirect_to_sign_in(&gw.paths.login, original));
        }
        other => other?,
    };
    if let Some(lifetime) = lifetime {
        return Box::pin(websocket::proxy(
            gw, &route, req, &path, permit, lifetime, ctx,
        ))
        .await;
    }
    let upstream_request = mutate(gw, &route, req, &path, permit, ctx)?;
    forward(gw, &route, &target.clients.request, upstream_request, ctx).await
}

/// The pipeline end to end, without sockets: a gateway built in memory and
/// requests with in-memory bodies. (Forwarding itself needs an upstream;
/// the integration tests give it one.)
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use bytes::Bytes;
    use http::header::{CONNECTION, CONTENT_LENGTH};
    use http::{Method, StatusCode};
    use http_body_util::{Empty, Full};

    use crate::config::Config;
    use crate::headers::X_REQUEST_ID;
    use crate::users::memory::MemoryUserStore;
    use crate::users::User;

    const SECRET_ENV: &str = "PIPELINE_TEST_SECRET";

    /// A gateway on `routes` (TOML) with user `alice` (role `admin`) in
    /// memory and the memory session backend: no listener, no store
    /// outside the process.
    pub(super) async fn gateway(routes: &str) -> Gateway {
        std::env::set_var(SECRET_ENV, "pipeline-test-secret-long-enough-0123456789");
        let toml = format!("[jwt]\nsecret_env = \"{SECRET_ENV}\"\n{routes}");
        let config = Config::parse(Path::new("g.toml"), &toml).unwrap();
        let users = Arc::new(MemoryUserStore::new([alice()]));
        Gateway::with_users(config, users).await.unwrap()
    }

    pub(super) fn alice() -> User {
        User {
            username: "alice".into(),
            email: Some("alice@example.com".into()),
            roles: vec!["admin".into()],
            ..User::default()
        }
    }

    pub(super) fn peer() -> SocketAddr {
        "192.0.2.7:40000".parse().unwrap()
    }

    const REQUIRED: &str = "[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n";

    #[tokio::test]
    async fn an_unread_upload_refused_401_closes_the_connection() {
        let gw = Arc::new(gateway(REQUIRED).await);
        let req = Request::builder()
            .method(Method::POST)
            .uri("/upload")
            .header(CONTENT_LENGTH, "5")
            .header(X_REQUEST_ID.clone(), "client-id-1")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let response = handle(gw, req, peer()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[CONNECTION], "close");
        assert_eq!(response.headers()[&X_REQUEST_ID], "client-id-1");
    }

    #[tokio::test]
    async fn own_endpoints_answer_before_routes() {
        let gw = Arc::new(gateway(REQUIRED).await);
        let healthz = gw.paths.healthz.clone();
        let req = Request::get(healthz).body(Empty::<Bytes>::new()).unwrap();
        let response = handle(gw.clone(), req, peer()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key(&X_REQUEST_ID));
        assert!(!response.headers().contains_key(CONNECTION));
        // The check phase runs first: a TRACE of an endpoint is still 405.
        let req = Request::builder()
            .method(Method::TRACE)
            .uri(&gw.paths.healthz)
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            handle(gw, req, peer()).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn a_browser_is_sent_to_sign_in_an_api_client_gets_401() {
        let gw = Arc::new(gateway(REQUIRED).await);
        let browser = Request::get("/app?x=1")
            .header(http::header::ACCEPT, "text/html")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = handle(gw.clone(), browser, peer()).await;
        assert!(response.status().is_redirection(), "{response:?}");
        let location = response.headers()[http::header::LOCATION].to_str().unwrap();
        assert!(location.starts_with(&gw.paths.login), "{location}");
        let api = Request::get("/app")
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            handle(gw, api, peer()).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn a_route_without_upstream_is_404_to_a_proxied_request() {
        let routes = "[[routes]]\nprefix = \"/admin\"\nauth = \"public\"\n";
        let gw = Arc::new(gateway(routes).await);
        let req = Request::get("/admin/x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            handle(gw, req, peer()).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn a_cross_site_post_with_a_cookie_is_refused_before_authentication() {
        let gw = Arc::new(gateway(REQUIRED).await);
        let req = Request::post("/transfer")
            .header(http::header::HOST, "gw.example.com")
            .header(http::header::COOKIE, "access_token=whatever")
            .header("sec-fetch-site", "cross-site")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = handle(gw, req, peer()).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
}
