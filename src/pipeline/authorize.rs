//! Phase 5: whether the caller may use the route, by its policy and roles:
//! a [`Permit`], a 401 (or, for a browser, the sign-in page), or a 403.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::auth::authenticate::{AuthOutcome, Authn};
use crate::auth::Identity;
use crate::gateway::Gateway;
use crate::request::RequestContext;
use crate::response::GatewayError;
use crate::routes::{Access, Route};

/// The right to forward a request, with the identity it carries. Only
/// [`authorize`] makes one, and the mutate phase requires one.
#[derive(Debug)]
pub struct Permit {
    /// The caller and, for `[identity] forward_token`, their access token;
    /// `None` forwards the request anonymously.
    pub(super) identity: Option<(Arc<Identity>, Option<String>)>,
}

pub fn authorize(
    route: &Route,
    authn: Authn,
    ctx: &mut RequestContext,
) -> Result<Permit, GatewayError> {
    match Access::decide(route.auth, &route.roles, authn) {
        Access::Identified(identity, token) => Ok(Permit {
            identity: Some((identity, token)),
        }),
        Access::Anonymous => Ok(Permit { identity: None }),
        Access::Forbidden => {
            ctx.auth = AuthOutcome::Forbidden;
            Err(GatewayError::Forbidden)
        }
        Access::Unauthenticated(why) => Err(GatewayError::Unauthenticated(why.challenge())),
    }
}

/// A browser (it names `text/html`) without an `Authorization` header is
/// sent to the sign-in page instead of a JSON 401.
pub fn sends_to_sign_in(gw: &Gateway, headers: &HeaderMap) -> bool {
    gw.config.auth.login_redirect
        && !headers.contains_key(AUTHORIZATION)
        && crate::endpoints::sign_in::wants_html(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::authenticate::{Anonymous, Via};
    use crate::auth::jwt::TokenRefusal;
    use crate::config::Config;
    use crate::routes::RouteTable;
    use crate::upstream::Upstreams;
    use http::StatusCode;
    use std::path::Path;

    /// `/public`, `/optional` and `/required`, the last two for role
    /// `admin` under `/…/admin`.
    fn route(path: &str) -> Arc<Route> {
        let toml = r#"
            [[routes]]
            prefix = "/public"
            upstream = "http://a"
            auth = "public"
            [[routes]]
            prefix = "/optional"
            upstream = "http://a"
            auth = "optional"
            [[routes]]
            prefix = "/optional/admin"
            upstream = "http://a"
            auth = "optional"
            roles = ["admin"]
            [[routes]]
            prefix = "/required"
            upstream = "http://a"
            auth = "required"
            [[routes]]
            prefix = "/required/admin"
            upstream = "http://a"
            auth = "required"
            roles = ["admin"]
        "#;
        let routes = Config::parse(Path::new("g.toml"), toml).unwrap().routes;
        let table = RouteTable::new(&routes, &Upstreams::from_routes(&routes, 16).unwrap());
        table.find(None, path).unwrap().clone()
    }

    fn alice() -> Authn {
        Authn::Authenticated {
            identity: Arc::new(Identity {
                sub: "alice".into(),
                roles: vec!["user".into()],
                ..Identity::default()
            }),
            token: Some("t".into()),
            via: Via::Bearer,
        }
    }

    fn anonymous() -> Authn {
        Authn::Anonymous(Anonymous::Missing)
    }

    /// Who the permit forwards (`Ok(None)`: anonymously), or the status.
    fn decide(path: &str, authn: Authn) -> (Result<Option<String>, StatusCode>, AuthOutcome) {
        let mut ctx = RequestContext::new(&HeaderMap::new(), "127.0.0.1:1".parse().unwrap());
        let decision = authorize(&route(path), authn, &mut ctx)
            .map(|permit| permit.identity.map(|(identity, _)| identity.sub.clone()))
            .map_err(|e| e.status());
        (decision, ctx.auth)
    }

    #[test]
    fn public_routes_forward_everyone_anonymously() {
        assert_eq!(decide("/public", alice()).0, Ok(None));
        assert_eq!(decide("/public", anonymous()).0, Ok(None));
    }

    #[test]
    fn optional_routes_forward_identity_only_with_a_listed_role() {
        assert_eq!(decide("/optional", alice()).0, Ok(Some("alice".into())));
        assert_eq!(decide("/optional", anonymous()).0, Ok(None));
        // Wrong role: forwarded, but as nobody.
        assert_eq!(decide("/optional/admin", alice()).0, Ok(None));
    }

    #[test]
    fn required_routes_refuse_the_anonymous_401_and_the_wrong_role_403() {
        assert_eq!(decide("/required", alice()).0, Ok(Some("alice".into())));
        assert_eq!(
            decide("/required", anonymous()).0,
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            decide(
                "/required",
                Authn::Anonymous(Anonymous::Refused(TokenRefusal::Expired))
            )
            .0,
            Err(StatusCode::UNAUTHORIZED)
        );
        let (decision, outcome) = decide("/required/admin", alice());
        assert_eq!(decision, Err(StatusCode::FORBIDDEN));
        assert_eq!(outcome, AuthOutcome::Forbidden, "logged as forbidden");
    }
}
