//! `/healthz` (the process answers) and `/readyz` (its stores answer too),
//! the latter also on the admin listener.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::json;

use crate::gateway::Gateway;
use crate::response::{self, Body};

/// How long `/readyz` waits for each store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn liveness() -> Response<Body> {
    response::json(StatusCode::OK, &json!({"status": "ok"}))
}

pub async fn readiness(gw: &Gateway) -> Response<Body> {
    let sessions = tokio::time::timeout(READY_TIMEOUT, gw.sessions.ping()).await;
    let users = tokio::time::timeout(READY_TIMEOUT, gw.users.check()).await;
    let sessions_ok = matches!(sessions, Ok(Ok(())));
    let users_ok = matches!(users, Ok(Ok(())));
    let status = if sessions_ok && users_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    response::json(
        status,
        &json!({
            "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
            "checks": { "sessions": word(sessions_ok), "users": word(users_ok) },
        }),
    )
}
