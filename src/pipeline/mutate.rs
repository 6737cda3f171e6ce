//! Phase 6: the upstream request made from the client's, by the header
//! rules of [`crate::headers`]: hop-by-hop headers, spoofed identity
//! headers and authgate's own cookies go; the permit's identity and the
//! forwarding headers come; the URI points at the route's upstream.

use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::{HeaderValue, Request, Version};
use http_body_util::BodyExt;

use super::authorize::Permit;
use crate::auth::authenticate::bearer_credentials;
use crate::config::AuthPolicy;
use crate::cookies;
use crate::gateway::Gateway;
use crate::headers;
use crate::request::RequestContext;
use crate::response::{Body, GatewayError, RequestBody};
use crate::routes::Route;
use crate::upstream::{self, UpstreamClient};

pub fn mutate<B: RequestBody>(
    gw: &Gateway,
    route: &Route,
    req: Request<B>,
    path: &str,
    permit: Permit,
    ctx: &mut RequestContext,
) -> Result<Request<Body>, GatewayError> {
    let target = route.target()?;
    let (mut parts, body) = req.into_parts();
    if let Some(limit) = route.max_body {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(GatewayError::BodyTooLarge);
        }
    }
    let headers = &mut parts.headers;
    // Room for the identity and forwarding headers: one growth, not several.
    headers.reserve(8);
    headers::remove_hop_by_hop(headers);
    gw.identity.strip(headers);
    cookies::remove(headers, &[&gw.cookies.access, &gw.cookies.refresh]);
    if route.auth != AuthPolicy::Public
        && headers
            .get(AUTHORIZATION)
            .and_then(bearer_credentials)
            .is_some()
    {
        headers.remove(AUTHORIZATION);
    }
    if let Some((identity, token)) = &permit.identity {
        gw.identity.inject(headers, identity);
        if let Some(assertions) = &gw.assertions {
            // Refused rather than forwarded without it: an upstream that
            // relies on the assertion would see an anonymous request.
            assertions
                .insert(headers, identity, &route.audience)
                .map_err(|e| GatewayError::Internal(Box::new(e)))?;
        }
        if let Some(token) = token {
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(AUTHORIZATION, value);
            }
        }
    }
    // HTTP/2 clients name the host in `:authority`; the upstream (HTTP/1.1)
    // and X-Forwarded-Host need it as `Host`.
    if !headers.contains_key(HOST) {
        if let Some(Ok(authority)) = parts
            .uri
            .authority()
            .map(|a| HeaderValue::from_str(a.as_str()))
        {
            headers.insert(HOST, authority);
        }
    }
    headers::set_forwarded(headers, ctx.peer.ip(), gw.scheme);
    headers.insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
    if !route.preserve_host || !headers.contains_key(HOST) {
        if let Ok(host) = HeaderValue::from_str(target.authority.as_str()) {
            headers.insert(HOST, host);
        }
    }
    parts.uri = route
        .upstream_uri(target, path, parts.uri.query())
        .map_err(|_| GatewayError::BadRequest("Malformed request target"))?;
    parts.version = Version::HTTP_11;
    // Marked before the limit wraps it (the limit's own error stays
    // unmarked), so that the forward phase tells the client's body failing
    // from the upstream failing: the upstream client reports both alike.
    // The legacy client's HTTP/2 side drops the body's error, hence the
    // flag.
    let body_failed = matches!(target.clients.request, UpstreamClient::Legacy(_))
        .then(upstream::ClientBodyFailed::default);
    if let Some(flag) = &body_failed {
        parts.extensions.insert(flag.clone());
    }
    let body = body.map_err(move |e| {
        if let Some(flag) = &body_failed {
            flag.set();
        }
        upstream::ClientBodyError::new(e)
    });
    let body = match route.max_body {
        Some(limit) => http_body_util::Limited::new(body, limit as usize)
            .map_err(Into::into)
            .boxed_unsync(),
        None => body.map_err(Into::into).boxed_unsync(),
    };
    ctx.request_body_unread = false;
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{HeaderMap, HeaderName, Uri};
    use http_body_util::Empty;

    use super::*;
    use crate::auth::Identity;
    use crate::headers::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
    use crate::pipeline::tests::{gateway, peer};

    const ROUTES: &str = r#"
        [[routes]]
        prefix = "/api"
        upstream = "http://api.internal:8080/v1"
        strip_prefix = true
        preserve_host = false
        [[routes]]
        prefix = "/public"
        upstream = "http://static.internal"
        auth = "public"
        [[routes]]
        prefix = "/kept"
        upstream = "http://kept.internal"
        preserve_host = true
    "#;

    fn alice() -> Permit {
        let identity = Identity {
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            roles: vec!["admin".into(), "dev".into()],
            ..Identity::default()
        };
        Permit {
            identity: Some((Arc::new(identity), None)),
        }
    }

    fn anonymous() -> Permit {
        Permit { identity: None }
    }

    /// The upstream request for `uri` with `headers`, as `permit` allows.
    async fn mutated(uri: &str, headers: &[(&str, &str)], permit: Permit) -> (Uri, HeaderMap) {
        let gw = gateway(ROUTES).await;
        let mut builder = Request::builder().uri(uri).header("host", "gw.example.com");
        for (name, value) in headers {
            builder = builder.header(HeaderName::from_bytes(name.as_bytes()).unwrap(), *value);
        }
        let req = builder.body(Empty::<Bytes>::new()).unwrap();
        let path = req.uri().path().to_string();
        let route = gw
            .routes
            .find(Some("gw.example.com"), &path)
            .unwrap()
            .clone();
        let mut ctx = RequestContext::new(req.headers(), peer());
        let upstream = mutate(&gw, &route, req, &path, permit, &mut ctx).unwrap();
        let (parts, _) = upstream.into_parts();
        assert_eq!(parts.headers[&headers::X_REQUEST_ID], ctx.request_id);
        (parts.uri, parts.headers)
    }

    #[tokio::test]
    async fn spoofed_identity_headers_go_in_every_spelling() {
        let spoofed = [
            ("x-auth-user", "mallory"),
            ("X_Auth_User", "mallory"),
            ("x-auth_email", "m@evil"),
            ("X-AUTH-ROLES", "admin"),
            // Stripped with the assertion off too, so turning it on later
            // never lets a client's copy through.
            ("x_auth_assertion", "forged"),
        ];
        let (_, anonymous) = mutated("/api/x", &spoofed, anonymous()).await;
        for (name, _) in spoofed {
            assert!(!anonymous.contains_key(name), "{name} kept: {anonymous:?}");
        }
        let (_, signed_in) = mutated("/api/x", &spoofed, alice()).await;
        assert_eq!(signed_in["x-auth-user"], "alice");
        assert_eq!(signed_in["x-auth-email"], "alice@example.com");
        assert_eq!(signed_in["x-auth-roles"], "admin,dev");
        assert!(!signed_in.contains_key("x_auth_user"));
        assert!(!signed_in.contains_key("x_auth_assertion"));
        assert!(
            !signed_in.contains_key("x-auth-assertion"),
            "assertion is off"
        );
    }

    #[tokio::test]
    async fn our_cookies_go_and_the_others_stay() {
        let (_, h) = mutated(
            "/api/x",
            &[("cookie", "access_token=a; theme=dark; refresh_token=r")],
            alice(),
        )
        .await;
        let cookie = h["cookie"].to_str().unwrap();
        assert!(cookie.contains("theme=dark"), "{cookie}");
        assert!(!cookie.contains("access_token") && !cookie.contains("refresh_token"));
    }

    #[tokio::test]
    async fn a_bearer_token_stays_behind_on_protected_routes_only() {
        let bearer = [("authorization", "Bearer eyJ.token")];
        let (_, protected) = mutated("/api/x", &bearer, alice()).await;
        assert!(!protected.contains_key(AUTHORIZATION));
        let (_, public) = mutated("/public/x", &bearer, anonymous()).await;
        assert_eq!(public[AUTHORIZATION], "Bearer eyJ.token");
        // Other schemes are the upstream's business.
        let (_, basic) = mutated("/api/x", &[("authorization", "Basic YTpi")], alice()).await;
        assert_eq!(basic[AUTHORIZATION], "Basic YTpi");
    }

    #[tokio::test]
    async fn forwarding_headers_uri_and_host_are_the_gateways() {
        let (uri, h) = mutated(
            "/api/movies?page=2",
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-proto", "https"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
            ],
            alice(),
        )
        .await;
        assert_eq!(uri, "http://api.internal:8080/v1/movies?page=2");
        assert_eq!(h[HOST], "api.internal:8080");
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "gw.example.com");
        assert!(!h.contains_key("connection") && !h.contains_key("x-hop"));
        let (uri, h) = mutated("/kept/a", &[], alice()).await;
        assert_eq!(uri, "http://kept.internal/kept/a");
        assert_eq!(
            h[HOST], "gw.example.com",
            "preserve_host keeps the client's"
        );
    }

    #[tokio::test]
    async fn a_declared_body_over_the_limit_is_413() {
        let gw =
            gateway("[[routes]]\nprefix = \"/\"\nupstream = \"http://u\"\nmax_body = 4\n").await;
        let route = gw.routes.find(None, "/up").unwrap().clone();
        let req = Request::post("/up")
            .header(CONTENT_LENGTH, "5")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let mut ctx = RequestContext::new(req.headers(), peer());
        let error = mutate(&gw, &route, req, "/up", alice(), &mut ctx).unwrap_err();
        assert_eq!(error.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    }
}
