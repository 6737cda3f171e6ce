//! Where the sign-in page may send a browser back to: a same-site relative
//! path, or (for forward auth, where the original request is on another
//! host of the site) an absolute URL on the gateway's own host or within
//! `[cookies] domain`, so `rd` can never become an open redirect.

use http::header::HOST;
use http::{HeaderMap, Uri};
use percent_encoding::percent_decode_str;

/// The hosts an absolute `rd` may name.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedirectHosts<'a> {
    /// The host the sign-in page was asked on (`Host`, port ignored).
    pub own: Option<&'a str>,
    /// `[cookies] domain`: this host and its subdomains, where the
    /// session cookies are sent anyway.
    pub domain: Option<&'a str>,
}

impl<'a> RedirectHosts<'a> {
    pub fn new(headers: &'a HeaderMap, domain: Option<&'a str>) -> Self {
        let own = headers.get(HOST).and_then(|h| h.to_str().ok());
        RedirectHosts { own, domain }
    }

    fn allows(&self, host: &str) -> bool {
        let own = self
            .own
            .and_then(|own| own.parse::<http::uri::Authority>().ok())
            .is_some_and(|own| own.host().eq_ignore_ascii_case(host));
        let within = self.domain.is_some_and(|domain| {
            let domain = domain.trim_start_matches('.');
            !domain.is_empty()
                && (host.eq_ignore_ascii_case(domain)
                    || host.len() > domain.len()
                        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                        && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain))
        });
        own || within
    }
}

/// `rd` when it is safe: a relative path ([`safe_redirect`]) or an
/// absolute `http(s)` URL whose host `hosts` allows. The URL must be plain:
/// no credentials, no control characters, whitespace or backslashes, a
/// host of letters, digits, `-` and `.` only (nothing a browser could
/// read as another host), and a path that passes the relative rule.
pub fn safe_redirect_to(rd: &str, hosts: &RedirectHosts<'_>) -> Option<String> {
    if rd.starts_with('/') {
        return safe_redirect(rd);
    }
    if rd.len() > 2048
        || rd
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return None;
    }
    let uri: Uri = rd.parse().ok()?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return None;
    }
    let authority = uri.authority()?;
    let host = authority.host();
    if authority.as_str().contains('@')
        || host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        || !hosts.allows(host)
    {
        return None;
    }
    let rest = &rd[rd.find(authority.as_str())? + authority.as_str().len()..];
    if !rest.is_empty() && safe_redirect(rest).is_none() {
        return None;
    }
    Some(rd.to_string())
}

/// `rd` when it is a same-site relative path (`/x`), else `None`. Refused:
/// `//evil`, `/\evil`, `https://evil`, anything with a control character or
/// whitespace (browsers drop tabs and newlines, turning `/\t/evil` into
/// `//evil`), and anything that percent-decodes to one of those.
pub fn safe_redirect(rd: &str) -> Option<String> {
    let mut current = rd.to_string();
    // Decode a few times: each layer of encoding must be safe on its own.
    for _ in 0..3 {
        if !is_safe_path(&current) {
            return None;
        }
        let decoded = percent_decode_str(&current)
            .decode_utf8()
            .ok()?
            .into_owned();
        if decoded == current {
            return Some(rd.to_string());
        }
        current = decoded;
    }
    None
}

fn is_safe_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.contains('\\')
        && !path.chars().any(|c| c.is_control() || c.is_whitespace())
        && path.len() <= 2048
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_site_paths_pass() {
        assert_eq!(safe_redirect("/").as_deref(), Some("/"));
        assert_eq!(
            safe_redirect("/app/x?y=1#z").as_deref(),
            Some("/app/x?y=1#z")
        );
        assert_eq!(
            safe_redirect("/a?next=https://x").as_deref(),
            Some("/a?next=https://x")
        );
        assert_eq!(safe_redirect("/caf%C3%A9").as_deref(), Some("/caf%C3%A9"));
    }

    #[test]
    fn absolute_urls_on_own_host_or_cookie_domain_pass() {
        let hosts = RedirectHosts {
            own: Some("gw.example.com:8443"),
            domain: Some(".example.com"),
        };
        for rd in [
            "https://gw.example.com/x?y=1",
            "http://GW.example.com:8443/",
            "https://app.example.com/a/b?c=d#e",
            "https://example.com",
            "https://deep.app.example.com/",
            "/relative",
        ] {
            assert_eq!(safe_redirect_to(rd, &hosts).as_deref(), Some(rd), "{rd:?}");
        }
        let own_only = RedirectHosts {
            own: Some("gw.example.com"),
            domain: None,
        };
        assert!(safe_redirect_to("https://gw.example.com/x", &own_only).is_some());
        assert!(safe_redirect_to("https://app.example.com/x", &own_only).is_none());
    }

    #[test]
    fn absolute_urls_elsewhere_are_refused() {
        let hosts = RedirectHosts {
            own: Some("gw.example.com"),
            domain: Some("example.com"),
        };
        for rd in [
            "https://evil.com/",
            "https://example.com.evil.com/",
            "https://evilexample.com/",
            "https://gw.example.com@evil.com/",
            "https://evil.com\\@gw.example.com/",
            "https://gw.example.com%2F@evil.com/",
            "https://evil.com%2Egw.example.com/",
            "https://gw.example.com//evil.com",
            "https://gw.example.com/\\evil.com",
            "https://gw.example.com/%2F%2Fevil.com",
            "https://gw.example.com/\t",
            "javascript://gw.example.com/%0aalert(1)",
            "ftp://gw.example.com/",
            "//gw.example.com/",
            "https:gw.example.com",
        ] {
            assert_eq!(safe_redirect_to(rd, &hosts), None, "{rd:?}");
        }
        // Without a Host and a cookie domain, no absolute URL at all.
        let none = RedirectHosts::default();
        assert_eq!(safe_redirect_to("https://gw.example.com/", &none), None);
    }

    #[test]
    fn open_redirects_are_refused() {
        for rd in [
            "",
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "evil.com",
            "javascript:alert(1)",
            "/%2Fevil.com",
            "%2F%2Fevil.com",
            "/%5Cevil.com",
            "/%252Fevil.com",
            "/\t/evil.com",
            "/%09/evil.com",
            "/%0a/evil.com",
            " /x",
            "/%E0%A4%A",
        ] {
            assert_eq!(safe_redirect(rd), None, "{rd:?}");
        }
    }
}
