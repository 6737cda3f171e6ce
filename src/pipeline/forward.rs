//! Phase 7: the upstream's answer, through the route's pooled client, its
//! failures told apart: the upstream unreachable or slow (502/504) from
//! the client's own body breaking off (400).

use http::{Request, Response};

use crate::gateway::Gateway;
use crate::headers;
use crate::request::RequestContext;
use crate::response::{Body, GatewayError};
use crate::routes::Route;
use crate::upstream::{self, UpstreamClient};

/// The timeout covers the upstream's response head only; bodies (and
/// upgraded connections) stream for as long as they last.
pub async fn forward(
    gw: &Gateway,
    route: &Route,
    client: &UpstreamClient,
    req: Request<Body>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let body_failed = req
        .extensions()
        .get::<upstream::ClientBodyFailed>()
        .cloned();
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(gw.config.server.request_timeout, client.request(req)).await;
    ctx.upstream_latency = Some(started.elapsed());
    let mut response = match result {
        Err(_elapsed) => return Err(GatewayError::UpstreamTimeout),
        Ok(Err(e)) if upstream::body_too_large(&*e) => return Err(GatewayError::BodyTooLarge),
        Ok(Err(e))
            if upstream::client_body_failed(&*e)
                || body_failed
                    .as_ref()
                    .is_some_and(upstream::ClientBodyFailed::is_set) =>
        {
            // The upstream connection was dropped mid-body, so the upstream
            // never saw the request end.
            let reason = anyhow::Chain::new(&*e)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            tracing::info!(
                event = "request_body_failed",
                route = %route.name,
                reason,
                request_id = ctx.request_id.to_str().unwrap_or("-"),
            );
            ctx.request_body_unread = true;
            return Err(GatewayError::BadRequest(
                "The request body is malformed or was cut short",
            ));
        }
        Ok(Err(e)) => {
            if let Some(tls) = upstream::tls_failure(&*e) {
                tracing::warn!(
                    event = "upstream_tls_failed",
                    route = %route.name,
                    upstream = %route.upstream.as_ref().map_or("-", |t| t.authority.as_str()),
                    reason = %tls,
                    request_id = ctx.request_id.to_str().unwrap_or("-"),
                    "the upstream's TLS handshake failed (certificate not trusted or invalid?); answering 502",
                );
            }
            return Err(GatewayError::UpstreamUnreachable(e));
        }
        Ok(Ok(response)) => response,
    };
    if upstream::response_head_bytes(&response) > upstream::MAX_RESPONSE_HEAD_BYTES {
        // Dropped unread: its connection is not reused.
        return Err(GatewayError::UpstreamUnreachable(
            "the upstream's response head is larger than 64 KiB".into(),
        ));
    }
    headers::remove_hop_by_hop(response.headers_mut());
    Ok(response)
}
