//! Header rules for the trust boundary between client and upstream.
//!
//! 1. Hop-by-hop headers belong to one connection and are dropped both ways.
//! 2. Identity headers are either set by authgate or absent: any client
//!    header whose name collides with one of them — in any case, and with
//!    `_` in place of `-` (which CGI/WSGI stacks fold into the same
//!    variable) — is removed before authgate injects its own.
//! 3. `X-Forwarded-For` gains the peer address; `X-Forwarded-Proto` and
//!    `X-Forwarded-Host` are set from what authgate itself saw.

use std::net::IpAddr;

use http::header::{
    CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::Identity;
use crate::config::IdentityConfig;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    // Usually none is present: one pass over the few names beats hashing
    // all eight for a lookup each, on every request and every response.
    let hop_by_hop = [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &PROXY_AUTHORIZATION,
        &PROXY_AUTHENTICATE,
    ];
    if headers.keys().any(|name| hop_by_hop.contains(&name)) {
        for name in hop_by_hop {
            headers.remove(name);
        }
    }
}

/// Appends the peer to `X-Forwarded-For` and sets the other forwarding headers.
pub fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, proto: &'static str) {
    let peer = ip_text(peer);
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) if headers.get_all(&X_FORWARDED_FOR).iter().count() == 1 => {
            format!("{previous}, {peer}")
        }
        Some(_) => {
            // Several XFF headers: fold them into one list, in order.
            let mut all: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            all.push(&peer);
            all.join(", ")
        }
        None => peer,
    };
    if let Ok(value) = HeaderValue::try_from(xff) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match headers.get(http::header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// An address as text. IPv4 without `fmt`: `Ipv4Addr`'s `Display` (it
/// supports padding) cost more than the rest of the forwarding headers.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// Identity header rules compiled once from `[identity]`.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    user: HeaderName,
    email: HeaderName,
    roles: HeaderName,
    claims: Vec<(HeaderName, String)>,
    /// Every identity header name, lowercase with `-`, for stripping.
    reserved: Vec<Vec<u8>>,
}

impl IdentityHeaders {
    pub fn new(config: &IdentityConfig) -> IdentityHeaders {
        let mut reserved: Vec<Vec<u8>> = [
            &config.user,
            &config.email,
            &config.roles,
            &config.assertion_header,
        ]
        .into_iter()
        .chain(config.claims.iter().map(|(h, _)| h))
        .map(|h| fold(h.as_str().as_bytes()))
        .collect();
        reserved.sort();
        reserved.dedup();
        IdentityHeaders {
            user: config.user.clone(),
            email: config.email.clone(),
            roles: config.roles.clone(),
            claims: config.claims.clone(),
            reserved,
        }
    }

    fn is_reserved(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        self.reserved
            .iter()
            .any(|r| r.len() == name.len() && r.iter().zip(name).all(|(&a, &b)| a == fold_byte(b)))
    }

    /// Removes every client-sent header that could pass for identity.
    pub fn strip(&self, headers: &mut HeaderMap) {
        // Header names are few; scanning them beats hashing every variant.
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.is_reserved(name))
            .cloned()
            .collect();
        for name in spoofed {
            headers.remove(name);
        }
    }

    /// Sets the identity headers of an authenticated user.
    pub fn inject(&self, headers: &mut HeaderMap, identity: &Identity) {
        let values = identity.header_values();
        if let Some(v) = &values.user {
            headers.insert(self.user.clone(), v.clone());
        }
        if let Some(v) = &values.email {
            headers.insert(self.email.clone(), v.clone());
        }
        if let Some(v) = &values.roles {
            headers.insert(self.roles.clone(), v.clone());
        }
        for (header, claim) in &self.claims {
            let value = match identity.extra.get(claim) {
                Some(serde_json::Value::String(s)) => HeaderValue::from_str(s).ok(),
                Some(serde_json::Value::Null) | None => None,
                Some(other) => HeaderValue::from_str(&other.to_string()).ok(),
            };
            if let Some(v) = value {
                headers.insert(header.clone(), v);
            }
        }
    }
}

fn fold_byte(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        other => other.to_ascii_lowercase(),
    }
}

fn fold(name: &[u8]) -> Vec<u8> {
    name.iter().map(|&b| fold_byte(b)).collect()
}

/// A client's `X-Request-Id` is kept when it is short and plain.
pub fn valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn identity_headers() -> IdentityHeaders {
        let config = Config::parse(
            Path::new("g"),
            "[identity]\nclaims = { \"X-Auth-Tenant\" = \"tenant\" }\n",
        )
        .unwrap();
        IdentityHeaders::new(&config.identity)
    }

    #[test]
    fn strips_every_spelling() {
        let rules = identity_headers();
        let mut h = HeaderMap::new();
        for name in [
            "x-auth-user",
            "X_Auth_User",
            "x_auth-roles",
            "X-AUTH-EMAIL",
            "x-auth-tenant",
            "X-Auth-Assertion",
            "x_auth_assertion",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.insert("x-auth-userx", HeaderValue::from_static("fine"));
        rules.strip(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-auth-userx"));
    }

    #[test]
    fn injects_identity() {
        let rules = identity_headers();
        let mut h = HeaderMap::new();
        let mut identity = Identity {
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            roles: vec!["admin".into(), "dev".into()],
            ..Identity::default()
        };
        identity.extra.insert("tenant".into(), "acme".into());
        rules.inject(&mut h, &identity);
        assert_eq!(h["x-auth-user"], "alice");
        assert_eq!(h["x-auth-email"], "alice@example.com");
        assert_eq!(h["x-auth-roles"], "admin,dev");
        assert_eq!(h["x-auth-tenant"], "acme");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        // Without a Connection header too.
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn addresses_as_text() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.1.9",
            "::1",
            "2001:db8::7",
        ] {
            assert_eq!(ip_text(ip.parse().unwrap()), ip);
        }
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(http::header::HOST, HeaderValue::from_static("gw.example"));
        set_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "http");
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_HOST], "gw.example");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }
}
