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
//! The approach of Go 1.25's `http.CrossOriginProtection`. The pipeline runs
//! the check *before* authentication, so a forged request cannot even make
//! a silent refresh rotate the victim's refresh token. Bearer requests are
//! not checked: a third-party page cannot make a browser send one.

use http::header::{AUTHORIZATION, HOST, ORIGIN};
use http::{HeaderMap, HeaderName, Method, Uri};

use crate::auth::authenticate::bearer;
use crate::config::normalize_origin;
use crate::cookies::{self, CookieJar};
use crate::response::GatewayError;

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// The credential a request's handler will rest on, which decides whether
/// the request is checked at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Whatever authentication picks (the pipeline, before it
    /// authenticates): a cookie unless a Bearer token comes first.
    Authentication,
    /// The refresh cookie, which `/token` and `/logout` take when the body
    /// names no refresh token.
    RefreshCookie,
}

/// `[cookies] trusted_origins` and what the rule needs besides: the
/// gateway's scheme (for the request's own origin) and its cookie names.
#[derive(Debug, Clone)]
pub struct CsrfGuard {
    trusted: Vec<String>,
    scheme: &'static str,
    access_cookie: String,
    refresh_cookie: String,
}

impl CsrfGuard {
    /// `trusted` as [`normalize_origin`] writes them; `scheme` is `"http"`
    /// or `"https"`, as the listener serves.
    pub fn new(trusted: &[String], cookies: &CookieJar, scheme: &'static str) -> CsrfGuard {
        CsrfGuard {
            trusted: trusted.to_vec(),
            scheme,
            access_cookie: cookies.access.clone(),
            refresh_cookie: cookies.refresh.clone(),
        }
    }

    fn trusts(&self, origin: Option<&str>) -> bool {
        origin.is_some_and(|o| self.trusted.iter().any(|t| t == o))
    }

    /// The decision, for the pipeline and the endpoints alike: the rule
    /// above when `credential` is a cookie, a pass otherwise.
    pub fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        credential: Credential,
    ) -> Result<(), GatewayError> {
        // Asked first: it spares reading cookies on most requests.
        if exempt(method, headers) {
            return Ok(());
        }
        let rests_on_cookie = match credential {
            Credential::RefreshCookie => true,
            Credential::Authentication => self.presents_cookie_credential(headers),
        };
        if !rests_on_cookie || self.allows(uri, headers) {
            return Ok(());
        }
        tracing::info!(
            event = "csrf_refused",
            method = %method,
            sec_fetch_site = ?headers.get(&SEC_FETCH_SITE),
            origin = ?headers.get(ORIGIN),
        );
        Err(GatewayError::Csrf)
    }

    /// Whether the browser's headers place the request's page on this
    /// gateway's origin or a trusted one (rules 1 to 3 above).
    fn allows(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        let origin = single(headers, &ORIGIN).and_then(normalize_origin);
        match headers.get_all(&SEC_FETCH_SITE).iter().count() {
            0 => match headers.get(ORIGIN) {
                None => true,
                Some(_) => {
                    origin.is_some() && origin == own_origin(uri, headers, self.scheme)
                        || self.trusts(origin.as_deref())
                }
            },
            _ => {
                matches!(
                    single(headers, &SEC_FETCH_SITE),
                    Some("same-origin" | "none")
                ) || self.trusts(origin.as_deref())
            }
        }
    }

    /// Whether authentication will rest on a cookie: no `Authorization:
    /// Bearer`, and the access cookie, or the refresh cookie without any
    /// `Authorization` (mirrors [`super::authenticate`]).
    fn presents_cookie_credential(&self, headers: &HeaderMap) -> bool {
        if bearer(headers).is_some() {
            return false;
        }
        cookies::get(headers, &self.access_cookie).is_some()
            || (!headers.contains_key(AUTHORIZATION)
                && cookies::get(headers, &self.refresh_cookie).is_some())
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn guard(trusted: &[&str]) -> CsrfGuard {
        let trusted: Vec<String> = trusted.iter().map(|t| t.to_string()).collect();
        let config = crate::config::Config::parse(std::path::Path::new("g.toml"), "").unwrap();
        let cookies = CookieJar::new(&config.cookies);
        CsrfGuard::new(&trusted, &cookies, "https")
    }

    /// The decision for an endpoint that takes the refresh cookie.
    fn check(guard: &CsrfGuard, method: Method, headers: &[(&str, &str)]) -> bool {
        check_as(guard, method, headers, Credential::RefreshCookie)
    }

    fn check_as(
        guard: &CsrfGuard,
        method: Method,
        headers: &[(&str, &str)],
        credential: Credential,
    ) -> bool {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("gw.example.com"));
        for (name, value) in headers {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        guard
            .check(&method, &Uri::from_static("/x"), &h, credential)
            .is_ok()
    }

    #[test]
    fn fetch_metadata_decides_when_present() {
        let g = guard(&["https://app.example.com"]);
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
        let g = guard(&["https://app.example.com"]);
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

    /// The pipeline asks before it knows the credential: only a request
    /// that authentication would take by a cookie is checked.
    #[test]
    fn checked_only_when_authentication_rests_on_a_cookie() {
        let g = guard(&[]);
        let forged = |extra: &[(&str, &str)]| {
            let mut headers = vec![("sec-fetch-site", "cross-site")];
            headers.extend_from_slice(extra);
            check_as(&g, Method::POST, &headers, Credential::Authentication)
        };
        assert!(forged(&[]), "no credential: nothing to forge");
        assert!(!forged(&[("cookie", "access_token=t")]));
        assert!(!forged(&[("cookie", "refresh_token=r")]));
        assert!(forged(&[
            ("cookie", "access_token=t"),
            ("authorization", "Bearer x")
        ]));
        // Any Authorization header stops a silent refresh, so the refresh
        // cookie alone is then no credential.
        assert!(forged(&[
            ("cookie", "refresh_token=r"),
            ("authorization", "Basic x")
        ]));
    }
}
