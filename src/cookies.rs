//! Reading the `Cookie` header and writing authgate's own `Set-Cookie`s.

use std::time::Duration;

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use crate::config::{CookieConfig, SameSite};

/// Iterates the `name=value` pairs of every `Cookie` header (RFC 6265
/// §5.4 allows several after HTTP/2 header splitting). Malformed pairs
/// (no `=`, or not UTF-8) are skipped, never an error: cookies are the
/// browser's business.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| segments(v.as_bytes()))
        .filter_map(|pair| {
            let (name, value) = split_pair(pair);
            Some((std::str::from_utf8(name).ok()?, cookie_value(value?)?))
        })
}

/// The `;`-separated pairs of one `Cookie` header, blanks trimmed.
fn segments(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b';', header)
        .chain([header.len()])
        .map(move |end| {
            let pair = header[start..end].trim_ascii();
            start = end + 1;
            pair
        })
}

/// A pair's name, and its raw value when it has an `=`.
fn split_pair(pair: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b'=', pair) {
        Some(eq) => (pair[..eq].trim_ascii(), Some(&pair[eq + 1..])),
        None => (pair, None),
    }
}

/// A pair's value: trimmed, one pair of double quotes removed.
fn cookie_value(raw: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(raw.trim_ascii()).ok()?;
    Some(
        value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value),
    )
}

/// The first non-empty value of cookie `name`: what [`pairs`] would find,
/// without splitting every pair of every request's `Cookie` header (the
/// fuzz target `cookies` holds the two to the same answers).
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let name = name.as_bytes();
    headers.get_all(COOKIE).iter().find_map(|header| {
        let header = header.as_bytes();
        memchr::memmem::find_iter(header, name).find_map(|at| {
            // The name must open its pair: only blanks since the `;`.
            let opens = header[..at]
                .iter()
                .rev()
                .find(|b| !b.is_ascii_whitespace())
                .is_none_or(|b| *b == b';');
            let rest = header[at + name.len()..].trim_ascii_start();
            let value = rest.strip_prefix(b"=").filter(|_| opens)?;
            let end = memchr::memchr(b';', value).unwrap_or(value.len());
            cookie_value(&value[..end]).filter(|v| !v.is_empty())
        })
    })
}

/// Removes cookies `names` from the `Cookie` header(s), keeping the rest in
/// order; drops the header when nothing is left.
pub fn remove(headers: &mut HeaderMap, names: &[&str]) {
    let values = headers.get_all(COOKIE);
    // Most requests carry none of them: find that out without allocating.
    let mentions = values.iter().any(|v| {
        names
            .iter()
            .any(|n| memchr::memmem::find(v.as_bytes(), n.as_bytes()).is_some())
    });
    if !mentions {
        return;
    }
    let mut kept: Vec<u8> = Vec::with_capacity(values.iter().map(|v| v.len()).sum());
    for pair in values.iter().flat_map(|v| segments(v.as_bytes())) {
        let (name, _) = split_pair(pair);
        if pair.is_empty() || names.iter().any(|n| n.as_bytes() == name) {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    headers.remove(COOKIE);
    if !kept.is_empty() {
        // Bytes of header values joined by "; ": still a valid value.
        if let Ok(value) = HeaderValue::from_bytes(&kept) {
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
    fn get_finds_what_pairs_finds() {
        let cases = [
            "access_token=a",
            " x=1 ;  access_token = \"q\" ; y=2",
            "xaccess_token=no; access_token=yes",
            "x=access_token=no; access_token=yes",
            "access_token=; access_token=second",
            "access_token; access_token=after-a-bare-name",
            "other=1",
            "access_tokens=no",
        ];
        for case in cases {
            let h = headers(&[case]);
            let expected = pairs(&h)
                .find(|(n, v)| *n == "access_token" && !v.is_empty())
                .map(|(_, v)| v);
            assert_eq!(get(&h, "access_token"), expected, "{case:?}");
        }
        assert_eq!(get(&headers(&[cases[1]]), "access_token"), Some("q"));
        assert_eq!(get(&headers(&[cases[2]]), "access_token"), Some("yes"));
        assert_eq!(get(&headers(&[cases[7]]), "access_token"), None);
        // Not UTF-8 elsewhere in the header: only that pair is lost.
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes(b"n=\xff\xfe; access_token=t").unwrap(),
        );
        assert_eq!(get(&h, "access_token"), Some("t"));
        assert_eq!(pairs(&h).count(), 1);
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
        // Blanks and empty pairs go; pairs without `=` are not ours.
        let mut h = headers(&[" a=1 ;  access_token = x;b; ;c=3;"]);
        remove(&mut h, &["access_token", "refresh_token"]);
        assert_eq!(h[COOKIE], "a=1; b; c=3");
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
