//! Phase 1: what every request must pass before anything looks at what it
//! asks for: the head's size, the method, the path.

use std::borrow::Cow;

use http::{Method, Request, Uri};

use crate::response::GatewayError;

/// What a route answers to, as a 405 for CONNECT or TRACE says (any other
/// method is forwarded).
const PROXIED_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// The head's size limit (`[server] max_header_bytes`), which hyper's
/// buffer only bounds loosely. Framing is hyper's alone: a request with
/// both Content-Length and Transfer-Encoding reaches here framed by
/// Transfer-Encoding, its Content-Length removed, and hyper closes the
/// connection after it (RFC 9112 §6.3).
pub fn head<B>(req: &Request<B>, max_header_bytes: usize) -> Result<(), GatewayError> {
    let headers = req.headers();
    let head_bytes = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |pq| pq.as_str().len())
        + 12
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head_bytes > max_header_bytes {
        return Err(GatewayError::HeadTooLarge);
    }
    Ok(())
}

/// A reverse proxy forwards requests to its routes; it opens no tunnels.
/// Forwarded, a CONNECT that an upstream answered 2xx would turn the
/// client's connection into a raw pipe past every later check. A TRACE
/// would have the upstream echo the request as it arrived there: the
/// identity headers injected here, sent back to a page that asked
/// (cross-site tracing); nginx refuses it too.
pub fn method(method: &Method) -> Result<(), GatewayError> {
    if matches!(*method, Method::CONNECT | Method::TRACE) {
        return Err(GatewayError::MethodNotAllowed {
            allow: &PROXIED_METHODS,
        });
    }
    Ok(())
}

/// The normalized path that endpoints and routes are matched on.
pub fn path(uri: &Uri) -> Result<Cow<'_, str>, GatewayError> {
    crate::path::normalized(uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    fn status(result: Result<impl Sized, GatewayError>) -> Option<StatusCode> {
        result.err().map(|e| e.status())
    }

    #[test]
    fn a_head_over_the_limit_is_431() {
        let small = Request::builder()
            .uri("/x")
            .header("x-pad", "a".repeat(100))
            .body(())
            .unwrap();
        assert_eq!(status(head(&small, 4096)), None);
        let big = Request::builder()
            .uri("/x")
            .header("x-pad", "a".repeat(5000))
            .body(())
            .unwrap();
        assert_eq!(
            status(head(&big, 4096)),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        // The request target counts too.
        let long_uri = format!("/{}", "a".repeat(5000));
        assert_eq!(
            status(head(&request(Method::GET, &long_uri), 4096)),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    #[test]
    fn connect_and_trace_are_405_with_allow() {
        for refused in [Method::CONNECT, Method::TRACE] {
            let error = method(&refused).unwrap_err();
            assert_eq!(error.status(), StatusCode::METHOD_NOT_ALLOWED);
            let response = error.into_response();
            let allow = response.headers()[http::header::ALLOW].to_str().unwrap();
            assert!(allow.contains("GET") && !allow.contains("TRACE"), "{allow}");
        }
        for forwarded in [Method::GET, Method::POST, Method::DELETE] {
            assert!(method(&forwarded).is_ok());
        }
        assert!(method(&Method::from_bytes(b"PROPFIND").unwrap()).is_ok());
    }

    #[test]
    fn a_path_escaping_the_root_is_400() {
        let escaping = Uri::from_static("/a/../../etc/passwd");
        assert_eq!(status(path(&escaping)), Some(StatusCode::BAD_REQUEST));
        let encoded = Uri::from_static("/a/%2e%2e/%2E%2E/etc");
        assert_eq!(status(path(&encoded)), Some(StatusCode::BAD_REQUEST));
        assert_eq!(path(&Uri::from_static("/a/./b/../c")).unwrap(), "/a/c");
    }
}
