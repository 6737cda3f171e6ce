//! Phase 8 and what follows it, on every response, errors included: the
//! error's rendering, the response filter (request id, `Set-Cookie`,
//! `Connection: close`), the metrics and the access log line.

use http::header::{CONTENT_LENGTH, SET_COOKIE, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Request, Response, Uri, Version};

use crate::gateway::Gateway;
use crate::headers;
use crate::observe::access::AccessLine;
use crate::observe::metrics;
use crate::request::RequestContext;
use crate::response::{Body, GatewayError};

/// Whether the request comes with a body on an HTTP/1 connection, where an
/// unread body stands between this request and the next. HTTP/2 frames
/// each stream apart (and forbids `Connection`).
pub fn sends_http1_body<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    matches!(req.version(), Version::HTTP_10 | Version::HTTP_11)
        && (headers.contains_key(TRANSFER_ENCODING)
            || headers
                .get(CONTENT_LENGTH)
                .is_some_and(|length| length.as_bytes() != b"0"))
}

/// Method and URI, kept for the log line only when there is one: the
/// access log may be off, and the copy would cost every request.
pub fn access_logged<B>(gw: &Gateway, req: &Request<B>) -> Option<(Method, Uri)> {
    gw.access_log
        .enabled()
        .then(|| (req.method().clone(), req.uri().clone()))
}

/// A failed phase's answer, its failure counted (and, for a 5xx, logged).
pub fn error_response(error: GatewayError, ctx: &RequestContext) -> Response<Body> {
    match &error {
        GatewayError::Unavailable(_) => metrics::get().store_error("store"),
        GatewayError::UpstreamUnreachable(_) => metrics::get().upstream_error("connect"),
        GatewayError::UpstreamTimeout => metrics::get().upstream_error("timeout"),
        _ => {}
    }
    if error.status().is_server_error() {
        tracing::warn!(
            event = "request_failed",
            request_id = ?ctx.request_id,
            error = %error,
            source = ?std::error::Error::source(&error),
        );
    }
    error.into_response()
}

pub fn finish(
    gw: &Gateway,
    mut response: Response<Body>,
    ctx: &mut RequestContext,
    logged: Option<(Method, Uri)>,
) -> Response<Body> {
    response_filter(&mut response, ctx);
    record_metrics(gw, ctx, response.status().as_u16());
    let Some((method, uri)) = logged else {
        return response;
    };
    gw.access_log.write(&AccessLine {
        method: &method,
        uri: &uri,
        route: ctx.route.as_ref().map_or("-", |r| r.name.as_str()),
        status: response.status().as_u16(),
        user: ctx.user.as_ref().map_or("-", |user| user.sub.as_str()),
        auth: ctx.auth.label(),
        upstream_ms: ctx.upstream_latency.map(|d| d.as_secs_f64() * 1000.0),
        total_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
        request_id: ctx.request_id.to_str().unwrap_or("-"),
    });
    response
}

fn record_metrics(gw: &Gateway, ctx: &RequestContext, status: u16) {
    let route = ctx.route.as_ref().map_or(&gw.own_metrics, |r| &r.metrics);
    route.observe(
        status,
        ctx.started.elapsed().as_secs_f64(),
        ctx.upstream_latency.map(|d| d.as_secs_f64()),
    );
    if let Some(outcome) = ctx.auth.metric_label() {
        metrics::get().auth_outcome(outcome);
    }
}

fn response_filter(response: &mut Response<Body>, ctx: &mut RequestContext) {
    let headers = response.headers_mut();
    headers.insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
    // An answer sent before the request's body was read (a 401 to an
    // upload, say) leaves that body on the wire: a client that went on
    // with its next request there would have it read as the body's end.
    if ctx.request_body_unread {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    for cookie in ctx.set_cookies.drain(..) {
        headers.append(SET_COOKIE, cookie);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONNECTION;
    use http::{HeaderMap, StatusCode};

    fn context(request_body_unread: bool) -> RequestContext {
        let mut ctx = RequestContext::new(&HeaderMap::new(), "192.0.2.7:1".parse().unwrap());
        ctx.request_body_unread = request_body_unread;
        ctx
    }

    fn filtered(ctx: &mut RequestContext) -> Response<Body> {
        let mut response = Response::new(crate::response::empty());
        response_filter(&mut response, ctx);
        response
    }

    #[test]
    fn every_response_carries_the_request_id() {
        let mut ctx = context(false);
        let response = filtered(&mut ctx);
        assert_eq!(response.headers()[&headers::X_REQUEST_ID], ctx.request_id);
        let mut error = GatewayError::NoRoute.into_response();
        response_filter(&mut error, &mut ctx);
        assert_eq!(error.status(), StatusCode::NOT_FOUND);
        assert_eq!(error.headers()[&headers::X_REQUEST_ID], ctx.request_id);
    }

    #[test]
    fn the_contexts_cookies_are_set_each_once() {
        let mut ctx = context(false);
        ctx.set_cookies
            .push(HeaderValue::from_static("access_token=a"));
        ctx.set_cookies
            .push(HeaderValue::from_static("refresh_token=r"));
        let response = filtered(&mut ctx);
        let set: Vec<_> = response.headers().get_all(SET_COOKIE).iter().collect();
        assert_eq!(set, ["access_token=a", "refresh_token=r"]);
        assert!(ctx.set_cookies.is_empty());
    }

    #[test]
    fn an_unread_request_body_closes_the_connection() {
        assert_eq!(filtered(&mut context(true)).headers()[CONNECTION], "close");
        assert!(!filtered(&mut context(false))
            .headers()
            .contains_key(CONNECTION));
    }

    #[test]
    fn only_http1_bodies_can_be_left_on_the_wire() {
        let request = |version, header: Option<(&str, &str)>| {
            let mut builder = Request::post("/").version(version);
            if let Some((name, value)) = header {
                builder = builder.header(name, value);
            }
            builder.body(()).unwrap()
        };
        let http11 = Version::HTTP_11;
        assert!(sends_http1_body(&request(
            http11,
            Some(("content-length", "5"))
        )));
        assert!(sends_http1_body(&request(
            http11,
            Some(("transfer-encoding", "chunked"))
        )));
        assert!(!sends_http1_body(&request(
            http11,
            Some(("content-length", "0"))
        )));
        assert!(!sends_http1_body(&request(http11, None)));
        assert!(!sends_http1_body(&request(
            Version::HTTP_2,
            Some(("content-length", "5"))
        )));
    }
}
