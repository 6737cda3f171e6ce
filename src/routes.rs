//! The route table: longest prefix at a segment boundary wins, a route for
//! the request's host beats a host-less one of the same length.

use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

use crate::auth::authenticate::{Anonymous, Authn};
use crate::auth::Identity;
use crate::config::{AuthPolicy, RouteConfig};
use crate::response::GatewayError;
use crate::upstream::{RouteClients, Upstreams};

#[derive(Debug)]
pub struct Route {
    /// Stable name for logs and metrics: `host` + prefix.
    pub name: String,
    pub prefix: String,
    pub host: Option<String>,
    /// None: the route exists for `/verify` only (forward auth).
    pub upstream: Option<Target>,
    pub auth: AuthPolicy,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    pub roles: Vec<String>,
    pub max_body: Option<u64>,
    pub websocket: bool,
    /// The signed identity assertion's `aud` for this route.
    pub audience: String,
    pub metrics: crate::observe::metrics::RouteMetrics,
}

/// Where a proxied request on the route goes.
#[derive(Debug)]
pub struct Target {
    pub scheme: Scheme,
    pub authority: Authority,
    pub base_path: String,
    pub clients: RouteClients,
}

impl Route {
    fn new(config: &RouteConfig, upstreams: &Upstreams) -> Route {
        let name = match &config.host {
            Some(host) => format!("{host}{}", config.prefix),
            None => config.prefix.clone(),
        };
        Route {
            metrics: crate::observe::metrics::get().route(&name),
            name,
            prefix: config.prefix.clone(),
            host: config.host.clone(),
            upstream: config
                .upstream
                .as_ref()
                .zip(upstreams.for_route(config))
                .map(|(upstream, clients)| Target {
                    scheme: upstream.scheme.clone(),
                    authority: upstream.authority.clone(),
                    base_path: upstream.base_path.clone(),
                    clients,
                }),
            auth: config.auth,
            strip_prefix: config.strip_prefix,
            preserve_host: config.preserve_host,
            roles: config.roles.clone(),
            max_body: config.max_body,
            websocket: config.websocket,
            audience: config.audience.clone(),
        }
    }

    /// Whether `path` (normalized) lies under this route's prefix.
    fn covers(&self, path: &str) -> bool {
        if self.prefix == "/" {
            return true;
        }
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// Where a proxied request goes; a route without upstream is only for
    /// forward auth, and a request proxied to it finds no route.
    pub fn target(&self) -> Result<&Target, GatewayError> {
        self.upstream.as_ref().ok_or(GatewayError::NoRoute)
    }

    /// The upstream URI for a normalized path and the original query.
    pub fn upstream_uri(
        &self,
        target: &Target,
        path: &str,
        query: Option<&str>,
    ) -> Result<Uri, http::Error> {
        let path = if self.strip_prefix && self.prefix != "/" {
            match &path[self.prefix.len()..] {
                "" => "/",
                rest => rest,
            }
        } else {
            path
        };
        let mut pq = String::with_capacity(target.base_path.len() + path.len() + 64);
        pq.push_str(&target.base_path);
        pq.push_str(path);
        if let Some(query) = query {
            pq.push('?');
            pq.push_str(query);
        }
        Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(PathAndQuery::try_from(pq)?)
            .build()
    }
}

/// What a route's policy and roles make of a caller: one decision for a
/// proxied request (the pipeline's authorize phase) and for `/verify`.
#[derive(Debug)]
pub enum Access {
    /// Passes with this identity (and, for `forward_token`, its token).
    Identified(Arc<Identity>, Option<String>),
    /// Passes without identity: a public route, or an optional one whose
    /// caller is anonymous or lacks a listed role.
    Anonymous,
    /// 401.
    Unauthenticated(Anonymous),
    /// 403: signed in, without a listed role.
    Forbidden,
}

impl Access {
    pub fn decide(policy: AuthPolicy, roles: &[String], authn: Authn) -> Access {
        match (policy, authn) {
            (AuthPolicy::Public, _) => Access::Anonymous,
            (
                _,
                Authn::Authenticated {
                    identity, token, ..
                },
            ) if identity.has_any_role(roles) => Access::Identified(identity, token),
            (AuthPolicy::Required, Authn::Authenticated { .. }) => Access::Forbidden,
            (AuthPolicy::Required, Authn::Anonymous(why)) => Access::Unauthenticated(why),
            (AuthPolicy::Optional, _) => Access::Anonymous,
        }
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// Ordered so the first match is the right one.
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(configs: &[RouteConfig], upstreams: &Upstreams) -> RouteTable {
        let mut routes: Vec<Arc<Route>> = configs
            .iter()
            .map(|c| Arc::new(Route::new(c, upstreams)))
            .collect();
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| b.host.is_some().cmp(&a.host.is_some()))
        });
        RouteTable { routes }
    }

    /// `host` is the request's host without port, in any case (route hosts
    /// are lowercase).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|route| {
            route
                .host
                .as_deref()
                .is_none_or(|h| host.is_some_and(|host| h.eq_ignore_ascii_case(host)))
                && route.covers(path)
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn table(toml: &str) -> RouteTable {
        let routes = Config::parse(Path::new("g.toml"), toml).unwrap().routes;
        RouteTable::new(&routes, &Upstreams::from_routes(&routes, 16).unwrap())
    }

    const ROUTES: &str = r#"
        [[routes]]
        prefix = "/"
        upstream = "http://root"
        [[routes]]
        prefix = "/api/movies/"
        upstream = "http://movies"
        strip_prefix = true
        [[routes]]
        prefix = "/api"
        upstream = "http://api/v1"
        [[routes]]
        prefix = "/api"
        host = "admin.example.com"
        upstream = "http://admin"
    "#;

    fn upstream_of(t: &RouteTable, host: Option<&str>, path: &str) -> String {
        let route = t.find(host, path).unwrap();
        let target = route.target().unwrap();
        route
            .upstream_uri(target, path, Some("q=1"))
            .unwrap()
            .to_string()
    }

    #[test]
    fn longest_prefix_at_segment_boundary() {
        let t = table(ROUTES);
        assert_eq!(upstream_of(&t, None, "/api/movies"), "http://movies/?q=1");
        assert_eq!(
            upstream_of(&t, None, "/api/movies/7"),
            "http://movies/7?q=1"
        );
        assert_eq!(
            upstream_of(&t, None, "/api/moviesX"),
            "http://api/v1/api/moviesX?q=1"
        );
        assert_eq!(upstream_of(&t, None, "/apix"), "http://root/apix?q=1");
    }

    #[test]
    fn host_specific_route_wins() {
        let t = table(ROUTES);
        assert_eq!(
            upstream_of(&t, Some("admin.example.com"), "/api/x"),
            "http://admin/api/x?q=1"
        );
        assert_eq!(
            upstream_of(&t, Some("other"), "/api/x"),
            "http://api/v1/api/x?q=1"
        );
        // Host names are compared without regard to case.
        assert_eq!(
            upstream_of(&t, Some("Admin.Example.COM"), "/api/x"),
            "http://admin/api/x?q=1"
        );
    }

    #[test]
    fn no_route_without_catch_all() {
        let t = table("[[routes]]\nprefix = \"/api\"\nupstream = \"http://a\"\n");
        assert!(t.find(None, "/other").is_none());
    }
}
