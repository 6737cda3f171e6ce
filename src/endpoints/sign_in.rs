//! `GET /login` and the browser pages: sign-in and signed-out. Plain HTML and CSS, no
//! JavaScript and no external assets, so they work under a strict CSP.

use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::auth::redirect::{safe_redirect_to, RedirectHosts};
use crate::gateway::Gateway;
use crate::response::{self, Body};

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0;\
display:flex;min-height:100vh;align-items:center;justify-content:center}\
main{background:#fff;padding:2rem 2.25rem;border-radius:10px;box-shadow:0 2px 14px rgba(0,0,0,.08);width:min(22rem,90vw)}\
h1{font-size:1.4rem;margin:0 0 1.25rem}label{display:block;font-weight:600;margin:.9rem 0 .3rem}\
input{box-sizing:border-box;width:100%;padding:.6rem .7rem;font:inherit;border:1px solid #9aa3b2;border-radius:6px}\
input:focus{outline:3px solid #8db4ff;border-color:#2f62d8}\
button{margin-top:1.4rem;width:100%;padding:.7rem;font:inherit;font-weight:600;color:#fff;background:#2f62d8;border:0;border-radius:6px;cursor:pointer}\
button:hover{background:#244fb3}.error{background:#fdecec;color:#8a1c1c;border:1px solid #f1b5b5;padding:.6rem .75rem;border-radius:6px}\
p.note{color:#4b5566;font-size:.9rem}a{color:#2f62d8}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>"
    );
    let mut response = Response::new(response::full(html));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

/// A page's error paragraph, announced to screen readers; empty without one.
fn alert(error: Option<&str>) -> String {
    error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default()
}

/// The sign-in form; `rd` has been checked by `auth::redirect::safe_redirect_to`.
pub fn sign_in(
    status: StatusCode,
    token_path: &str,
    rd: &str,
    username: &str,
    error: Option<&str>,
) -> Response<Body> {
    let error = alert(error);
    let body = format!(
        "<h1>Sign in</h1>{error}\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"rd\" value=\"{rd}\">\
         <label for=\"username\">Username</label>\
         <input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus value=\"{username}\">\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>",
        action = escape(token_path),
        rd = escape(rd),
        username = escape(username),
    );
    page(status, "Sign in", &body)
}

/// The second step for a user with a second factor: the one-time code.
/// `ticket` proves the password was right (sealed, short-lived, bound to
/// the user and their password: see `crate::totp`), so the password is
/// not kept in the page.
pub fn code_page(
    status: StatusCode,
    token_path: &str,
    rd: &str,
    ticket: &str,
    error: Option<&str>,
) -> Response<Body> {
    let error = alert(error);
    let body = format!(
        "<h1>Sign in</h1>{error}\
         <p class=\"note\">Enter the 6-digit code from your authenticator app.</p>\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"rd\" value=\"{rd}\">\
         <input type=\"hidden\" name=\"ticket\" value=\"{ticket}\">\
         <label for=\"otp\">One-time code</label>\
         <input id=\"otp\" name=\"otp\" inputmode=\"numeric\" autocomplete=\"one-time-code\" \
         pattern=\"[0-9 ]{{6,7}}\" maxlength=\"7\" required autofocus>\
         <button type=\"submit\">Verify</button></form>",
        action = escape(token_path),
        rd = escape(rd),
        ticket = escape(ticket),
    );
    page(status, "Sign in", &body)
}

pub fn signed_out(login_path: &str) -> Response<Body> {
    let body = format!(
        "<h1>Signed out</h1><p>You have been signed out.</p>\
         <p class=\"note\"><a href=\"{}\">Sign in again</a></p>",
        escape(login_path)
    );
    page(StatusCode::OK, "Signed out", &body)
}

/// Whether the client asked for HTML by name (`*/*` alone does not count:
/// curl, requests, httpx and Swagger UI send it).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            // Parameter names are case-insensitive (RFC 9110 §5.6.6):
            // `Q=0` refuses as `q=0` does.
            let refused = parts.any(|p| {
                p.trim()
                    .split_once('=')
                    .filter(|(name, _)| name.eq_ignore_ascii_case("q"))
                    .and_then(|(_, q)| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused
                && (media.eq_ignore_ascii_case("text/html")
                    || media.eq_ignore_ascii_case("application/xhtml+xml"))
        })
}

/// Everything but unreserved characters and `/` is encoded in `rd`.
const RD_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

pub fn redirect_to_sign_in(login_path: &str, original: &str) -> Response<Body> {
    let location = format!(
        "{login_path}?rd={}",
        utf8_percent_encode(original, RD_ENCODE)
    );
    redirect(StatusCode::FOUND, &location)
}

pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut response = Response::new(response::empty());
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /login`: the sign-in form, to return to `rd` (when it is safe).
pub fn login_page<B>(gw: &Gateway, req: &Request<B>) -> Response<Body> {
    let rd = req
        .uri()
        .query()
        .and_then(|q| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                .ok()?
                .into_iter()
                .find_map(|(k, v)| (k == "rd").then_some(v))
        })
        .and_then(|rd| {
            let hosts = RedirectHosts::new(req.headers(), gw.config.cookies.domain.as_deref());
            safe_redirect_to(&rd, &hosts)
        })
        .unwrap_or_else(|| "/".into());
    sign_in(StatusCode::OK, &gw.paths.token, &rd, "", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn html_must_be_named() {
        assert!(wants_html(&accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!wants_html(&accept("*/*")));
        assert!(!wants_html(&accept("application/json")));
        assert!(!wants_html(&accept("text/html;q=0")));
        assert!(!wants_html(&accept("TEXT/HTML; Q=0")));
        assert!(wants_html(&accept("text/html;Q=0.5")));
        assert!(!wants_html(&HeaderMap::new()));
    }

    #[test]
    fn values_are_escaped() {
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }

    #[test]
    fn rd_is_encoded_in_the_redirect() {
        let r = redirect_to_sign_in("/login", "/app/x?a=1&b=2");
        assert_eq!(r.headers()[LOCATION], "/login?rd=/app/x%3Fa%3D1%26b%3D2");
    }
}
