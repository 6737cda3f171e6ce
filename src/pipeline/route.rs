//! Phase 3: which route a request takes, by its host and its normalized
//! path (the table and its longest-prefix rule are [`crate::routes`]).

use std::sync::Arc;

use http::header::HOST;
use http::Request;

use crate::response::GatewayError;
use crate::routes::{Route, RouteTable};

/// The route for `path` on the request's host — or 404.
pub fn route<B>(
    routes: &RouteTable,
    req: &Request<B>,
    path: &str,
) -> Result<Arc<Route>, GatewayError> {
    routes
        .find(request_host(req), path)
        .cloned()
        .ok_or(GatewayError::NoRoute)
}

/// The request's host, without port (in the case the client wrote it).
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let host = req
        .uri()
        .host()
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))?;
    Some(match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::upstream::Upstreams;
    use http::StatusCode;
    use std::path::Path;

    fn table() -> RouteTable {
        let toml = r#"
            [[routes]]
            prefix = "/api"
            upstream = "http://api"
            [[routes]]
            prefix = "/api/admin"
            upstream = "http://api-admin"
            [[routes]]
            prefix = "/api"
            host = "admin.example.com"
            upstream = "http://admin"
        "#;
        let routes = Config::parse(Path::new("g.toml"), toml).unwrap().routes;
        RouteTable::new(&routes, &Upstreams::from_routes(&routes, 16).unwrap())
    }

    fn routed(host: Option<&str>, uri: &str) -> Result<String, StatusCode> {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(HOST, host);
        }
        let req = builder.body(()).unwrap();
        let path = req.uri().path().to_string();
        route(&table(), &req, &path)
            .map(|r| r.target().unwrap().authority.to_string())
            .map_err(|e| e.status())
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(routed(None, "/api/users").as_deref(), Ok("api"));
        assert_eq!(routed(None, "/api/admin/x").as_deref(), Ok("api-admin"));
        assert_eq!(routed(None, "/api/admin").as_deref(), Ok("api-admin"));
    }

    #[test]
    fn prefixes_end_at_a_segment_boundary() {
        assert_eq!(routed(None, "/api/administrators").as_deref(), Ok("api"));
        assert_eq!(routed(None, "/apix"), Err(StatusCode::NOT_FOUND));
        assert_eq!(routed(None, "/"), Err(StatusCode::NOT_FOUND));
    }

    #[test]
    fn the_host_header_or_authority_picks_a_host_route() {
        assert_eq!(
            routed(Some("admin.example.com:8443"), "/api/x").as_deref(),
            Ok("admin")
        );
        assert_eq!(
            routed(Some("ADMIN.example.com"), "/api/x").as_deref(),
            Ok("admin")
        );
        assert_eq!(
            routed(Some("other.example.com"), "/api/x").as_deref(),
            Ok("api")
        );
        // HTTP/2's `:authority` arrives in the URI, not as `Host`.
        assert_eq!(
            routed(None, "https://admin.example.com/api/x").as_deref(),
            Ok("admin")
        );
    }

    #[test]
    fn request_host_strips_port() {
        let req = Request::builder()
            .uri("/x")
            .header(HOST, "API.example.com:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), Some("API.example.com"));
    }
}
