//! Who the client is, for decisions that key on its address (login
//! throttling).
//!
//! The socket's peer is the client unless the peer is one of
//! `[server] trusted_proxies`. Then `X-Forwarded-For` is read from the right:
//! each trusted proxy appended the address it saw, so the first address
//! from the right that is *not* a trusted proxy is the client. Everything
//! left of it was written by the client and is never believed. A malformed
//! entry stops the walk at the last address a trusted proxy vouched for.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::headers::X_FORWARDED_FOR;

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: &[IpNet]) -> TrustedProxies {
        TrustedProxies {
            nets: nets.to_vec(),
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address (IPv4-mapped IPv6 addresses as IPv4).
    pub fn client_ip(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        let hops = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        for hop in hops.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip.to_canonical();
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

/// `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]:443` or `192.0.2.1:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(&nets.iter().map(|n| n.parse().unwrap()).collect::<Vec<_>>())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let p = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            p.client_ip(&xff(&["198.51.100.1"]), ip("203.0.113.5")),
            ip("203.0.113.5")
        );
        assert_eq!(
            TrustedProxies::default().client_ip(&xff(&["1.2.3.4"]), ip("127.0.0.1")),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The client forged the leftmost entry; 10.0.0.2 is another proxy.
        let h = xff(&["6.6.6.6, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(p.client_ip(&h, ip("127.0.0.1")), ip("203.0.113.9"));
        // Only trusted hops: the leftmost of them.
        assert_eq!(
            p.client_ip(&xff(&["10.1.1.1"]), ip("10.0.0.1")),
            ip("10.1.1.1")
        );
        // No header: the proxy itself.
        assert_eq!(
            p.client_ip(&HeaderMap::new(), ip("10.0.0.1")),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn garbage_stops_at_the_last_vouched_address() {
        let p = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            p.client_ip(&xff(&["203.0.113.9, not-an-ip"]), ip("10.0.0.1")),
            ip("10.0.0.1")
        );
        assert_eq!(
            p.client_ip(&xff(&["[2001:db8::7]:443, 10.0.0.3"]), ip("10.0.0.1")),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let p = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            p.client_ip(&xff(&["::ffff:198.51.100.4"]), ip("::ffff:10.0.0.1")),
            ip("198.51.100.4")
        );
    }
}
