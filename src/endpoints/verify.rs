//! Forward auth: `/verify` and `/verify/redirect`, the "auth request"
//! backend of a front proxy that already runs (nginx `auth_request`,
//! ingress-nginx `auth-url`, Envoy `ext_authz`, Traefik `ForwardAuth`,
//! Caddy `forward_auth`). The proxy asks about the request it holds; the
//! answer says whether to let it through and with which identity. Nothing
//! is forwarded and the body is never read: the decision rests on the
//! original request's method, host, path and credentials alone.
//!
//! The decision is the pipeline's: the same path normalization
//! ([`crate::path`]), route table, authentication (silent refresh
//! included), CSRF rule and policy ([`Access`]).

use http::header::{AUTHORIZATION, CACHE_CONTROL, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};

use super::sign_in;
use crate::auth::authenticate::{Anonymous, AuthOutcome, Authn};
use crate::auth::csrf::Credential;
use crate::config::AuthPolicy;
use crate::gateway::Gateway;
use crate::request::RequestContext;
use crate::response::{self, Body, GatewayError};
use crate::routes::Access;

/// Each cookie a silent refresh set, also in a header of its own: nginx's
/// `auth_request_set` copies one header into one variable, and a
/// repeated `Set-Cookie` reaches it only as its first value.
pub const SET_COOKIE_ACCESS: HeaderName = HeaderName::from_static("x-auth-set-cookie-access");
pub const SET_COOKIE_REFRESH: HeaderName = HeaderName::from_static("x-auth-set-cookie-refresh");

const LOOKED_FOR: &str = "No original request: send X-Original-URL (with X-Original-Method), \
     or X-Forwarded-Uri with X-Forwarded-Host, X-Forwarded-Proto and X-Forwarded-Method";

/// Which of the two endpoints was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// 200, 401 or 403 only: the proxy turns a 401 into a sign-in redirect
    /// itself (nginx `error_page 401`).
    Verify,
    /// A proxy that hands the answer to the client as it is: a browser
    /// without a session gets the sign-in redirect from here.
    Redirect,
}

/// The request the front proxy holds, as its headers describe it.
#[derive(Debug)]
pub struct Original {
    pub method: Method,
    /// Absolute when the host is known, else the path and query alone.
    pub uri: Uri,
}

impl Original {
    /// From `X-Original-URL` (+ `X-Original-Method`), else from
    /// `X-Forwarded-Uri` (+ `-Host`, `-Proto`, `-Method`). Without a
    /// method header the asking request's own method stands in: nginx's
    /// auth subrequest keeps the original method.
    /// As [`Self::from_headers`], but a path (and query) appended to
    /// `/verify` comes first: Envoy's ext_authz names the original request
    /// that way, its host in `Host` and its method as the asking method.
    /// The proxy built that path; a header could be a client's own that
    /// the proxy let through.
    pub fn from_request(
        own_method: &Method,
        headers: &HeaderMap,
        suffix: Option<&str>,
    ) -> Result<Original, GatewayError> {
        let Some(path) = suffix else {
            return Self::from_headers(own_method, headers);
        };
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        let proto = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.split(',').next())
            .map_or("http", str::trim);
        let uri = match host {
            Some(host) => format!("{proto}://{host}{path}").parse(),
            None => path.parse(),
        }
        .map_err(|_| GatewayError::InvalidRequest("The path after /verify is not a URL".into()))?;
        Ok(Original {
            method: own_method.clone(),
            uri,
        })
    }

    pub fn from_headers(
        own_method: &Method,
        headers: &HeaderMap,
    ) -> Result<Original, GatewayError> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let invalid = |what: &str| GatewayError::InvalidRequest(what.to_string());
        let (uri, method) = if let Some(url) = text("x-original-url") {
            let uri: Uri = url
                .parse()
                .map_err(|_| invalid("X-Original-URL is not a URL"))?;
            if uri.scheme().is_none() || uri.authority().is_none() {
                return Err(invalid(
                    "X-Original-URL must be an absolute URL (scheme://host/path)",
                ));
            }
            (uri, text("x-original-method"))
        } else if let Some(path) = text("x-forwarded-uri") {
            let uri = match text("x-forwarded-host") {
                Some(host) => {
                    // A proxy chain may list several; the first is the client's.
                    let proto = text("x-forwarded-proto")
                        .and_then(|p| p.split(',').next())
                        .map_or("http", str::trim);
                    let host = host.split(',').next().unwrap_or(host).trim();
                    format!("{proto}://{host}{path}").parse()
                }
                None => path.parse(),
            }
            .map_err(|_| invalid("X-Forwarded-Uri (with X-Forwarded-Host) is not a URL"))?;
            (uri, text("x-forwarded-method"))
        } else {
            return Err(invalid(LOOKED_FOR));
        };
        if !uri.path().starts_with('/') {
            return Err(invalid("The original URL's path must start with /"));
        }
        let method = match method {
            Some(m) => Method::from_bytes(m.as_bytes())
                .map_err(|_| invalid("The original method is not an HTTP method"))?,
            None => own_method.clone(),
        };
        Ok(Original { method, uri })
    }

    /// The host without port, for host routes.
    fn host(&self) -> Option<&str> {
        self.uri.host()
    }
}

pub async fn verify<B>(
    gw: &Gateway,
    flavor: Flavor,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    // The peer, never X-Forwarded-For: only a listed proxy may ask, or any
    // client could probe sessions and read identity headers here.
    if !gw.config.forward_auth.allows(ctx.peer.ip()) {
        tracing::info!(event = "forward_auth_refused", peer = %ctx.peer.ip());
        return Err(GatewayError::Forbidden);
    }
    let own = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let original =
        Original::from_request(req.method(), req.headers(), suffix(&gw.paths.verify, own))?;
    let path = crate::path::normalized(original.uri.path())?;
    let route = gw.routes.find(original.host(), &path).cloned();
    let (policy, roles): (AuthPolicy, &[String]) = match &route {
        Some(route) => (route.auth, &route.roles),
        // Nothing the gateway knows: the strictest default.
        None => (AuthPolicy::Required, &[]),
    };
    let authn = if policy == AuthPolicy::Public {
        Authn::Anonymous(Anonymous::Missing)
    } else {
        // The original request's method and host (its URI's authority)
        // decide CSRF, as they would for the request proxied; the
        // browser's Origin and Sec-Fetch-Site come along in the headers
        // the proxy passes.
        gw.csrf.check(
            &original.method,
            &original.uri,
            req.headers(),
            Credential::Authentication,
        )?;
        ctx.authenticated(
            gw,
            req.headers(),
            gw.authenticator().authenticate(req.headers()).await?,
        )
    };
    let roles = roles.to_vec();
    ctx.route = route;
    match Access::decide(policy, &roles, authn) {
        Access::Identified(..)
            if flavor == Flavor::Redirect
                && !ctx.set_cookies.is_empty()
                && sends_to_sign_in(req.headers())
                && matches!(original.method, Method::GET | Method::HEAD) =>
        {
            // A silent refresh, for a proxy that drops the auth answer's
            // Set-Cookie on a 200 but hands any other answer to the client
            // (Caddy): the new cookies ride on a redirect back to the same
            // URL, which then passes on the fresh access cookie. Only a
            // browser's GET or HEAD: a redirect would lose a body.
            Ok(sign_in::redirect(
                StatusCode::FOUND,
                &original.uri.to_string(),
            ))
        }
        Access::Identified(identity, _token) => {
            let mut response = allowed(gw, ctx);
            gw.identity.inject(response.headers_mut(), &identity);
            if let Some(assertions) = &gw.assertions {
                let audience = assertion_audience(ctx.route.as_deref(), &original);
                assertions
                    .insert(response.headers_mut(), &identity, &audience)
                    .map_err(|e| GatewayError::Internal(Box::new(e)))?;
            }
            Ok(response)
        }
        Access::Anonymous => Ok(allowed(gw, ctx)),
        Access::Forbidden => {
            ctx.auth = AuthOutcome::Forbidden;
            Err(GatewayError::Forbidden)
        }
        Access::Unauthenticated(why) => {
            if flavor == Flavor::Redirect && sends_to_sign_in(req.headers()) {
                return Ok(sign_in::redirect_to_sign_in(
                    &gw.paths.login,
                    &original.uri.to_string(),
                ));
            }
            Err(GatewayError::Unauthenticated(why.challenge()))
        }
    }
}

/// Whom the assertion of a forward-auth answer is for: the route's
/// `audience` when it has one (set, or its upstream's origin), else the
/// origin the original request was sent to, which is what the upstream
/// behind the front proxy serves.
fn assertion_audience(route: Option<&crate::routes::Route>, original: &Original) -> String {
    match route {
        Some(route) if !route.audience.is_empty() => route.audience.clone(),
        _ => match (original.uri.scheme_str(), original.uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
            _ => String::new(),
        },
    }
}

/// The original path and query Envoy appended to `verify` (`/verify/app/x`
/// gives `/app/x`); `None` for `/verify` itself and `/verify/redirect`.
pub fn suffix<'a>(verify: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(verify)?;
    let is_redirect = rest == "/redirect" || rest.starts_with("/redirect?");
    (rest.starts_with('/') && !is_redirect).then_some(rest)
}

/// A browser (it names `text/html`) that sent no `Authorization` header.
fn sends_to_sign_in(headers: &HeaderMap) -> bool {
    !headers.contains_key(AUTHORIZATION) && sign_in::wants_html(headers)
}

/// 200 with an empty body; the cookies of a silent refresh each also in a
/// header of its own (the response filter adds them as `Set-Cookie`).
fn allowed(gw: &Gateway, ctx: &RequestContext) -> Response<Body> {
    let mut response = Response::new(response::empty());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in &ctx.set_cookies {
        let name = cookie
            .as_bytes()
            .split(|&b| b == b'=')
            .next()
            .unwrap_or_default();
        if name == gw.cookies.access.as_bytes() {
            headers.insert(SET_COOKIE_ACCESS, cookie.clone());
        } else if name == gw.cookies.refresh.as_bytes() {
            headers.insert(SET_COOKIE_REFRESH, cookie.clone());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn the_original_url_comes_first() {
        let o = Original::from_headers(
            &Method::GET,
            &headers(&[
                ("x-original-url", "https://app.example.com/a/b?x=1"),
                ("x-original-method", "POST"),
                ("x-forwarded-uri", "/other"),
            ]),
        )
        .unwrap();
        assert_eq!(o.method, Method::POST);
        assert_eq!(o.uri, "https://app.example.com/a/b?x=1");
        assert_eq!(o.host(), Some("app.example.com"));
    }

    #[test]
    fn forwarded_headers_describe_it_otherwise() {
        let o = Original::from_headers(
            &Method::HEAD,
            &headers(&[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example.com:8443"),
                ("x-forwarded-uri", "/api/../admin?q"),
            ]),
        )
        .unwrap();
        // No method header: the asking request's own method.
        assert_eq!(o.method, Method::HEAD);
        assert_eq!(o.uri, "https://app.example.com:8443/api/../admin?q");
        assert_eq!(o.host(), Some("app.example.com"));
    }

    #[test]
    fn without_either_it_is_400_naming_the_headers() {
        let e = Original::from_headers(&Method::GET, &HeaderMap::new()).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let detail = e.detail();
        assert!(detail.contains("X-Original-URL") && detail.contains("X-Forwarded-Uri"));
        let relative = headers(&[("x-original-url", "/a")]);
        assert!(Original::from_headers(&Method::GET, &relative).is_err());
    }
}
