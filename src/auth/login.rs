//! `POST /token`: parsing what OAuth2 clients send, and the password check.
//!
//! Accepted: `application/x-www-form-urlencoded` (FastAPI's
//! `OAuth2PasswordRequestForm`, Swagger UI's password flow, requests-oauthlib,
//! authlib) and a JSON object. Client credentials (`client_id`,
//! `client_secret`, `Authorization: Basic`) are ignored: authgate has no
//! registered clients, and a Basic header is never read as the user's
//! credentials.

use std::collections::HashMap;

use crate::response::GatewayError;
use crate::users::{User, UserStore, UserStoreError};

use super::password::Passwords;

/// The largest `/token` body read: 16 KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRequest {
    /// `otp`: the one-time code of a user with a second factor.
    Password {
        username: String,
        password: String,
        otp: Option<String>,
    },
    /// The sign-in page's second step: a ticket saying the password was
    /// right (`crate::totp::TotpKey::ticket`) and the code.
    Ticket { ticket: String, otp: Option<String> },
    /// `refresh_token` is `None` when the client relies on the cookie.
    Refresh { refresh_token: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Form,
    Json,
}

impl BodyKind {
    pub fn from_content_type(value: Option<&str>) -> Option<BodyKind> {
        let media = value?.split(';').next()?.trim().to_ascii_lowercase();
        match media.as_str() {
            "application/x-www-form-urlencoded" => Some(BodyKind::Form),
            "application/json" => Some(BodyKind::Json),
            _ => None,
        }
    }
}

fn invalid(detail: &str) -> GatewayError {
    GatewayError::InvalidRequest(detail.to_string())
}

/// Parses a `/token` body into fields; a repeated field is refused
/// (RFC 6749 §3.2: parameters must not be included more than once).
pub fn fields(kind: BodyKind, body: &[u8]) -> Result<HashMap<String, String>, GatewayError> {
    match kind {
        BodyKind::Form => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|_| invalid("The form body is malformed"))?;
            let mut map = HashMap::with_capacity(pairs.len());
            for (name, value) in pairs {
                if map.insert(name.clone(), value).is_some() {
                    return Err(GatewayError::InvalidRequest(format!(
                        "The field {name:?} is repeated"
                    )));
                }
            }
            Ok(map)
        }
        BodyKind::Json => {
            let value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
                .map_err(|_| invalid("The body must be a JSON object"))?;
            Ok(value
                .into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k, s)),
                    serde_json::Value::Null => None,
                    other => Some((k, other.to_string())),
                })
                .collect())
        }
    }
}

pub fn token_request(mut fields: HashMap<String, String>) -> Result<TokenRequest, GatewayError> {
    let grant = fields
        .remove("grant_type")
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| "password".into());
    match grant.as_str() {
        "password" => {
            let otp = fields.remove("otp").filter(|otp| !otp.is_empty());
            if otp.as_ref().is_some_and(|otp| otp.len() > 64) {
                return Err(invalid("otp too long"));
            }
            if let Some(ticket) = fields.remove("ticket").filter(|t| !t.is_empty()) {
                if ticket.len() > 1024 {
                    return Err(invalid("ticket too long"));
                }
                return Ok(TokenRequest::Ticket { ticket, otp });
            }
            let username = fields.remove("username").unwrap_or_default();
            let password = fields.remove("password").unwrap_or_default();
            if username.is_empty() || password.is_empty() {
                return Err(invalid("username and password are required"));
            }
            if username.len() > 256 || password.len() > 1024 {
                return Err(invalid("username or password too long"));
            }
            Ok(TokenRequest::Password {
                username,
                password,
                otp,
            })
        }
        "refresh_token" => Ok(TokenRequest::Refresh {
            refresh_token: fields.remove("refresh_token").filter(|t| !t.is_empty()),
        }),
        _ => Err(GatewayError::UnsupportedGrantType),
    }
}

/// Why a login was refused, as the audit trail names it. The client never
/// learns which: unknown, disabled and wrong-password users get one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// The password does not match the user's.
    BadCredentials,
    /// No such user: logged as `bad_credentials` too, so the trail does not
    /// tell which usernames exist either.
    UnknownUser,
    /// The user is disabled (and gave the right password).
    Disabled,
    /// Right password, no one-time code for a user with a second factor.
    OtpRequired,
    /// Right password, wrong or replayed one-time code (TOTP).
    OtpInvalid,
    /// The login throttle refused the attempt before any check.
    Throttled,
}

impl LoginFailure {
    /// The `reason` of the `login_failed` audit event.
    pub fn audit_reason(self) -> &'static str {
        match self {
            LoginFailure::BadCredentials | LoginFailure::UnknownUser => "bad_credentials",
            LoginFailure::Disabled => "disabled",
            LoginFailure::OtpRequired => "otp_required",
            LoginFailure::OtpInvalid => "otp_invalid",
            LoginFailure::Throttled => "throttled",
        }
    }
}

/// Checks a username and password. Unknown, disabled and wrong-password
/// users are indistinguishable to the caller, in answer and in time (one
/// bcrypt verification each); only the failure's audit reason differs.
pub async fn check_password(
    users: &dyn UserStore,
    passwords: &Passwords,
    username: &str,
    password: String,
) -> Result<Result<User, LoginFailure>, UserStoreError> {
    let user = users.find(username).await?;
    // bcrypt only reads the first 72 bytes; a hash that is not bcrypt at
    // all is treated as unknown (and still costs a dummy verification). A
    // disabled user's own hash is verified, so that `disabled` is logged
    // only for the right password; the cost is the same either way.
    let hash = user
        .as_ref()
        .filter(|u| u.password_hash.starts_with("$2"))
        .map(|u| u.password_hash.clone());
    let ok = passwords.verify(password, hash).await;
    Ok(match user {
        None => Err(LoginFailure::UnknownUser),
        Some(user) if !ok => Err(if user.password_hash.starts_with("$2") {
            LoginFailure::BadCredentials
        } else {
            LoginFailure::UnknownUser
        }),
        Some(user) if user.disabled => Err(LoginFailure::Disabled),
        Some(user) => Ok(user),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Result<TokenRequest, GatewayError> {
        token_request(fields(BodyKind::Form, body.as_bytes())?)
    }

    #[test]
    fn fastapi_form_with_client_fields() {
        assert_eq!(
            form("grant_type=password&username=alice&password=p%26w&scope=&client_id=x&client_secret=")
                .unwrap(),
            TokenRequest::Password {
                username: "alice".into(),
                password: "p&w".into(),
                otp: None,
            }
        );
    }

    #[test]
    fn otp_as_form_field_or_json_key() {
        let expected = TokenRequest::Password {
            username: "alice".into(),
            password: "pw".into(),
            otp: Some("012345".into()),
        };
        assert_eq!(
            form("username=alice&password=pw&otp=012345").unwrap(),
            expected
        );
        let f = fields(
            BodyKind::Json,
            br#"{"username":"alice","password":"pw","otp":"012345"}"#,
        )
        .unwrap();
        assert_eq!(token_request(f).unwrap(), expected);
        // An empty field is no code.
        assert!(matches!(
            form("username=a&password=b&otp="),
            Ok(TokenRequest::Password { otp: None, .. })
        ));
        assert!(matches!(
            form("ticket=abc&otp=123456&rd=%2F"),
            Ok(TokenRequest::Ticket { .. })
        ));
    }

    #[test]
    fn grant_type_is_optional_and_checked() {
        assert!(form("username=a&password=b").is_ok());
        assert!(matches!(
            form("grant_type=client_credentials&username=a&password=b"),
            Err(GatewayError::UnsupportedGrantType)
        ));
        assert!(matches!(
            form("username=a"),
            Err(GatewayError::InvalidRequest(_))
        ));
        assert!(matches!(
            form("username=a&username=b&password=c"),
            Err(GatewayError::InvalidRequest(_))
        ));
    }

    #[test]
    fn each_login_failure_has_its_audit_reason() {
        let reasons = [
            (LoginFailure::BadCredentials, "bad_credentials"),
            (LoginFailure::UnknownUser, "bad_credentials"),
            (LoginFailure::Disabled, "disabled"),
            (LoginFailure::OtpRequired, "otp_required"),
            (LoginFailure::OtpInvalid, "otp_invalid"),
            (LoginFailure::Throttled, "throttled"),
        ];
        for (failure, reason) in reasons {
            assert_eq!(failure.audit_reason(), reason, "{failure:?}");
        }
    }

    #[test]
    fn json_body() {
        let f = fields(BodyKind::Json, br#"{"username":"a","password":"b"}"#).unwrap();
        assert!(matches!(
            token_request(f),
            Ok(TokenRequest::Password { .. })
        ));
        assert!(fields(BodyKind::Json, b"[1]").is_err());
        assert!(fields(BodyKind::Json, b"{").is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(
            BodyKind::from_content_type(Some("application/x-www-form-urlencoded; charset=utf-8")),
            Some(BodyKind::Form)
        );
        assert_eq!(
            BodyKind::from_content_type(Some("Application/JSON")),
            Some(BodyKind::Json)
        );
        assert_eq!(BodyKind::from_content_type(Some("text/plain")), None);
        assert_eq!(BodyKind::from_content_type(None), None);
    }
}
