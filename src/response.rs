//! The one place where a request-time failure becomes an HTTP response.
//!
//! Phases return `Result<_, GatewayError>`; the pipeline's outer function
//! turns the error into a status, a JSON body `{"error", "detail"}` and,
//! for authentication failures, a `WWW-Authenticate` header. The client
//! never sees internal details: those go to the log once, with the
//! request id.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body authgate sends: streamed from an upstream or made here.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A request body the pipeline accepts: hyper's, as the server hands it
/// over, or one built in memory by a test.
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Why a request was not authenticated; chooses the `WWW-Authenticate`
/// parameters (RFC 6750 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential at all.
    Missing,
    /// A credential that verified but has expired.
    Expired,
    /// A credential that failed verification.
    Invalid,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches")]
    NoRoute,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed {
        /// What the resource answers, for the `Allow` header.
        allow: &'static [http::Method],
    },
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("not authenticated ({0:?})")]
    Unauthenticated(AuthFailure),
    #[error("missing a required role")]
    Forbidden,
    #[error("cross-site request refused")]
    Csrf,
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(#[source] BoxError),
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    /// `/token`: wrong credentials (401) or bad refresh token (400).
    #[error("invalid grant: {detail}")]
    InvalidGrant {
        status: StatusCode,
        detail: &'static str,
    },
    /// `/token`: the password was right, but the user has a second factor
    /// and no `otp` came with it (401). The sign-in page asks for the code.
    #[error("one-time code required")]
    OtpRequired,
    /// `/token`: the password was right, the one-time code was wrong,
    /// malformed or already used (401).
    #[error("invalid one-time code")]
    OtpInvalid,
    #[error("invalid token request: {0}")]
    InvalidRequest(String),
    #[error("unsupported grant type")]
    UnsupportedGrantType,
    #[error("too many failed attempts")]
    TooManyRequests { retry_after_secs: u64 },
    /// A store (sessions, users) is unreachable: refuse, never let through.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    #[error("internal error: {0}")]
    Internal(#[source] BoxError),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) | Self::InvalidRequest(_) | Self::UnsupportedGrantType => {
                StatusCode::BAD_REQUEST
            }
            Self::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthenticated(_) | Self::OtpRequired | Self::OtpInvalid => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden | Self::Csrf => StatusCode::FORBIDDEN,
            Self::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::InvalidGrant { status, .. } => *status,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRoute | Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BadRequest(_) => "bad_request",
            Self::HeadTooLarge => "request_header_fields_too_large",
            Self::BodyTooLarge => "payload_too_large",
            Self::Unauthenticated(_) => "invalid_token",
            Self::Forbidden => "forbidden",
            Self::Csrf => "csrf",
            Self::UpstreamUnreachable(_) => "bad_gateway",
            Self::UpstreamTimeout => "gateway_timeout",
            Self::InvalidGrant { .. } | Self::OtpRequired | Self::OtpInvalid => "invalid_grant",
            Self::InvalidRequest(_) => "invalid_request",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::Unavailable(_) => "temporarily_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    /// What the client may read; never internal details.
    pub fn detail(&self) -> String {
        match self {
            Self::NoRoute => "No route matches this request".into(),
            Self::NotFound => "Not found".into(),
            Self::MethodNotAllowed { .. } => "Method not allowed".into(),
            Self::BadRequest(why) => (*why).into(),
            Self::HeadTooLarge => "Request header fields too large".into(),
            Self::BodyTooLarge => "Request body too large".into(),
            Self::Unauthenticated(AuthFailure::Expired) => "Token expired".into(),
            Self::Unauthenticated(_) => "Not authenticated".into(),
            Self::Forbidden => "Not enough permissions".into(),
            Self::Csrf => "Cross-site request refused".into(),
            Self::UpstreamUnreachable(_) => "Upstream unreachable".into(),
            Self::UpstreamTimeout => "Upstream did not answer in time".into(),
            Self::InvalidGrant { detail, .. } => (*detail).into(),
            Self::OtpRequired => "one-time code required".into(),
            Self::OtpInvalid => "invalid one-time code".into(),
            Self::InvalidRequest(why) => why.clone(),
            Self::UnsupportedGrantType => {
                "grant_type must be \"password\" or \"refresh_token\"".into()
            }
            Self::TooManyRequests { .. } => "Too many failed attempts; try again later".into(),
            Self::Unavailable(_) => "Service temporarily unavailable; try again".into(),
            Self::Internal(_) => "Internal error".into(),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut body = serde_json::json!({ "error": self.code(), "detail": self.detail() });
        if matches!(self, Self::OtpRequired | Self::OtpInvalid) {
            // OAuth2's own field (RFC 6749 §5.2), which clients of a
            // second factor read; `detail` stays for every other answer.
            body["error_description"] = self.detail().into();
        }
        let mut response = json(self.status(), &body);
        let headers = response.headers_mut();
        match &self {
            Self::OtpRequired | Self::OtpInvalid => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unauthenticated(failure) => {
                headers.insert(WWW_AUTHENTICATE, www_authenticate(*failure));
            }
            Self::InvalidGrant { status, .. } if *status == StatusCode::UNAUTHORIZED => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::TooManyRequests { retry_after_secs } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::MethodNotAllowed { allow } => {
                let allow = allow.iter().map(http::Method::as_str).collect::<Vec<_>>();
                if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
                    headers.insert(http::header::ALLOW, value);
                }
            }
            _ => {}
        }
        if matches!(
            self,
            Self::InvalidGrant { .. }
                | Self::OtpRequired
                | Self::OtpInvalid
                | Self::InvalidRequest(_)
                | Self::UnsupportedGrantType
                | Self::TooManyRequests { .. }
        ) {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        response
    }
}

fn www_authenticate(failure: AuthFailure) -> HeaderValue {
    HeaderValue::from_static(match failure {
        AuthFailure::Missing => "Bearer",
        AuthFailure::Expired => {
            "Bearer error=\"invalid_token\", error_description=\"token expired\""
        }
        AuthFailure::Invalid => "Bearer error=\"invalid_token\"",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_render_json_with_challenge() {
        let response = GatewayError::Unauthenticated(AuthFailure::Expired).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\", error_description=\"token expired\""
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"], "invalid_token");
    }

    #[test]
    fn internal_details_stay_out_of_the_body() {
        let e = GatewayError::Unavailable("redis at 10.0.0.7 refused".into());
        assert!(!e.detail().contains("10.0.0.7"));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
