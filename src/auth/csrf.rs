//! Cross-site request forgery protection for cookie sessions.
//!
//! A browser attaches authgate's cookies to requests that a third-party
//! page starts. Such a request is refused (403 `csrf`) when it could change
//! something (any method but GET, HEAD and OPTIONS, and a WebSocket
//! handshake, which opens a channel that can) and the browser says it is
//! cross-origin:
//!
//! 1. `Sec-Fetch-Site: same-origin` or `none` (typed by the user) passes;
//!    `same-site`, `cross-site` (or anything else) is refused unless its
//!    `Origin` is one of `[cookies] trusted_origins`.
//! 2. Without `Sec-Fetch-Site` (older browsers, plain-http hosts): an
//!    `Origin` that is neither the request's own (gateway scheme + `Host`)
//!    nor trusted is refused; `Origin: null` is never trusted.
//! 3. Neither header: not a browser-initiated cross-origin request, which
//!    a third-party page cannot forge. It passes.
//!
//! The approach of Go 1.25's `http.CrossOriginProtection`. The proxy runs
//! the check *before* authentication, so a forged request cannot even make
//! a silent refresh rotate the victim's refresh token. Bearer requests are
//! not checked: a third-party page cannot make a browser send one.

use http::header::{HOST, ORIGIN};
use http::{HeaderMap, HeaderName, Method, Request, Uri};

use crate::auth::authenticate::bearer;
use crate::config::normalize_origin;
use crate::cookies;
use crate::gateway::Gateway;
use crate::response::GatewayError;

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// `[cookies] trusted_origins`, compiled.
#[derive(Debug, Clone, Default)]
pub struct CsrfGuard {
    trusted: Vec<String>,
}

impl CsrfGuard {
    /// `trusted` as [`normalize_origin`] writes them.
    pub fn new(trusted: &[String]) -> CsrfGuard {
        CsrfGuard {
            trusted: trusted.to_vec(),
        }
    }

    fn trusts(&self, origin: Option<&str>) -> bool {
        origin.is_some_and(|o| self.trusted.iter().any(|t| t == o))
    }

    /// The rule above, for a request whose credential is a cookie.
    pub fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        scheme: &str,
    ) -> Result<(), GatewayError> {
        if exempt(method, headers) {
            return Ok(());
        }
        let origin = single(headers, &ORIGIN).and_then(normalize_origin);
        let allowed = match headers.get_all(&SEC_FETCH_SITE).iter().count() {
            0 => match headers.get(ORIGIN) {
                None => true,
                Some(_) => {
                    origin.is_some() && origin == own_origin(uri, headers, scheme)
                        || self.trusts(origin.as_deref())
                }
            },
            _ => {
                matches!(
                    single(headers, &SEC_FETCH_SITE),
                    Some("same-origin" | "none")
                ) || self.trusts(origin.as_deref())
            }
        };
        if allowed {
            Ok(())
        } else {
            tracing::info!(
                event = "csrf_refused",
                method = %method,
                sec_fetch_site = ?headers.get(&SEC_FETCH_SITE),
                origin = ?headers.get(ORIGIN),
            );
            Err(GatewayError::Csrf)
        }
    }
}

/// Requests no cross-site forgery can harm: safe methods, except the
/// WebSocket handshake (a GET that opens a channel both ways).
fn exempt(method: &Method, headers: &HeaderMap) -> bool {
    is_safe(method) && !is_websocket_handshake(headers)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Cross-site WebSocket hijacking: a page elsewhere opens a socket that
/// carries the victim's cookies, and browsers send `Origin` with it.
fn is_websocket_handshake(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::UPGRADE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// The value of a header that must appear once; `None` when absent,
/// repeated or not text.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok().map(str::trim),
        _ => None,
    }
}

/// `scheme://host[:port]` of the request itself, as browsers write origins.
fn own_origin(uri: &Uri, headers: &HeaderMap, scheme: &str) -> Option<String> {
    let host = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => single(headers, &HOST)?,
    };
    normalize_origin(&format!("{scheme}://{host}"))
}

/// Whether authentication will rest on a cookie: no `Authorization:
/// Bearer`, and the access cookie, or the refresh cookie without any
/// `Authorization` (mirrors [`super::authenticate`]).
pub fn presents_cookie_credential(gw: &Gateway, headers: &HeaderMap) -> bool {
    if bearer(headers).is_some() {
        return false;
    }
    cookies::get(headers, &gw.cookies.access).is_some()
        || (!headers.contains_key(http::header::AUTHORIZATION)
            && cookies::get(headers, &gw.cookies.refresh).is_some())
}

/// The pipeline's check, before authentication.
pub fn check_proxied<B>(gw: &Gateway, req: &Request<B>) -> Result<(), GatewayError> {
    // Asked first: it spares reading cookies on most requests.
    if exempt(req.method(), req.headers()) {
        return Ok(());
    }
    if !presents_cookie_credential(gw, req.headers()) {
        return Ok(());
    }
    gw.csrf
        .check(req.method(), req.uri(), req.headers(), gw.scheme)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn check(guard: &CsrfGuard, method: Method, headers: &[(&str, &str)]) -> bool {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("gw.example.com"));
        for (name, value) in headers {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        guard
            .check(&method, &Uri::from_static("/x"), &h, "https")
            .is_ok()
    }

    #[test]
    fn fetch_metadata_decides_when_present() {
        let g = CsrfGuard::new(&["https://app.example.com".into()]);
        assert!(check(
            &g,
            Method::POST,
            &[("sec-fetch-site", "same-origin")]
        ));
        assert!(check(&g, Method::POST, &[("sec-fetch-site", "none")]));
        assert!(!check(
            &g,
            Method::POST,
            &[("sec-fetch-site", "cross-site")]
        ));
        assert!(!check(
            &g,
            Method::DELETE,
            &[("sec-fetch-site", "same-site")]
        ));
        assert!(!check(&g, Method::PUT, &[("sec-fetch-site", "bogus")]));
        assert!(check(
            &g,
            Method::POST,
            &[
                ("sec-fetch-site", "same-site"),
                ("origin", "https://app.example.com")
            ]
        ));
        // Repeated: ambiguous, refused.
        assert!(!check(
            &g,
            Method::POST,
            &[
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-site", "cross-site")
            ]
        ));
        // Safe methods are never checked, but a WebSocket handshake is.
        assert!(check(&g, Method::GET, &[("sec-fetch-site", "cross-site")]));
        assert!(!check(
            &g,
            Method::GET,
            &[("upgrade", "websocket"), ("origin", "https://evil.example")]
        ));
    }

    #[test]
    fn origin_decides_without_fetch_metadata() {
        let g = CsrfGuard::new(&["https://app.example.com".into()]);
        assert!(check(&g, Method::POST, &[]));
        assert!(check(
            &g,
            Method::POST,
            &[("origin", "https://GW.example.com:443")]
        ));
        assert!(check(
            &g,
            Method::PATCH,
            &[("origin", "https://app.example.com")]
        ));
        assert!(!check(
            &g,
            Method::POST,
            &[("origin", "https://evil.example")]
        ));
        assert!(!check(
            &g,
            Method::POST,
            &[("origin", "http://gw.example.com")]
        ));
        assert!(!check(&g, Method::POST, &[("origin", "null")]));
    }
}
