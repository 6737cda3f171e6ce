//! Reading the `Cookie` header and writing authgate's own `Set-Cookie`s.

use std::time::Duration;

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use crate::config::{CookieConfig, SameSite};

/// Iterates the `name=value` pairs of every `Cookie` header (RFC 6265
/// §5.4 allows several after HTTP/2 header splitting). Malformed pairs
/// are skipped, never an error: cookies are the browser's business.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim(), value))
        })
}

/// The first non-empty value of cookie `name`.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    pairs(headers).find_map(|(n, v)| (n == name && !v.is_empty()).then_some(v))
}

/// Removes cookies `names` from the `Cookie` header(s), keeping the rest in
/// order; drops the header when nothing is left.
pub fn remove(headers: &mut HeaderMap, names: &[&str]) {
    // Most requests carry none of them: find that out without allocating.
    let mentions = headers.get_all(COOKIE).iter().any(|v| {
        names
            .iter()
            .any(|n| memchr::memmem::find(v.as_bytes(), n.as_bytes()).is_some())
    });
    if !mentions {
        return;
    }
    let mut kept = String::new();
    let values = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    for pair in values.flat_map(|v| v.split(';')).map(str::trim) {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
        if pair.is_empty() || names.contains(&name) {
            continue;
        }
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(pair);
    }
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&kept) {
            headers.insert(COOKIE, value);
        }
    }
}

/// Builds `Set-Cookie` values with the configured attributes.
#[derive(Debug, Clone)]
pub struct CookieJar {
    pub access: String,
    pub refresh: String,
    /// `; Path=/; HttpOnly; Secure; SameSite=Lax` and so on, precomputed.
    attributes: String,
}

impl CookieJar {
    pub fn new(config: &CookieConfig) -> CookieJar {
        let mut attributes = format!("; Path={}", config.path);
        if let Some(domain) = &config.domain {
            attributes.push_str("; Domain=");
            attributes.push_str(domain);
        }
        attributes.push_str("; HttpOnly");
        if config.secure {
            attributes.push_str("; Secure");
        }
        attributes.push_str(match config.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        CookieJar {
            access: config.access.clone(),
            refresh: config.refresh.clone(),
            attributes,
        }
    }

    fn set(&self, name: &str, value: &str, max_age: Duration) -> HeaderValue {
        let text = format!(
            "{name}={value}; Max-Age={}{}",
            max_age.as_secs(),
            self.attributes
        );
        HeaderValue::from_str(&text).expect("token values are header-safe")
    }

    pub fn set_access(&self, token: &str, ttl: Duration) -> HeaderValue {
        self.set(&self.access, token, ttl)
    }

    pub fn set_refresh(&self, token: &str, ttl: Duration) -> HeaderValue {
        self.set(&self.refresh, token, ttl)
    }

    /// Expires both cookies at once.
    pub fn clear(&self) -> [HeaderValue; 2] {
        [
            self.set(&self.access, "", Duration::ZERO),
            self.set(&self.refresh, "", Duration::ZERO),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn finds_values_across_headers() {
        let h = headers(&["a=1; access_token=xyz", "refresh_token=\"r\""]);
        assert_eq!(get(&h, "access_token"), Some("xyz"));
        assert_eq!(get(&h, "refresh_token"), Some("r"));
        assert_eq!(get(&h, "missing"), None);
    }

    #[test]
    fn removes_only_named_cookies() {
        let mut h = headers(&["a=1; access_token=xyz; b=2", "refresh_token=r"]);
        remove(&mut h, &["access_token", "refresh_token"]);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; b=2");
        let mut h = headers(&["access_token=xyz"]);
        remove(&mut h, &["access_token", "refresh_token"]);
        assert!(h.get(COOKIE).is_none());
    }

    #[test]
    fn set_cookie_has_strict_attributes() {
        let config = crate::config::Config::parse(std::path::Path::new("g"), "")
            .unwrap()
            .cookies;
        let jar = CookieJar::new(&config);
        let v = jar.set_access("tok", Duration::from_secs(900));
        assert_eq!(
            v,
            "access_token=tok; Max-Age=900; Path=/; HttpOnly; Secure; SameSite=Lax"
        );
        assert!(jar.clear()[1]
            .to_str()
            .unwrap()
            .starts_with("refresh_token=; Max-Age=0"));
    }
}
