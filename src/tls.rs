//! Terminating TLS: a rustls server configuration (aws-lc-rs, ALPN `h2`
//! and `http/1.1`) whose certificate can be swapped while connections stay
//! open, and the plain listener that sends clients to https.
//!
//! The certificate lives behind a resolver rather than in the
//! `ServerConfig`, so a reload replaces one `Arc` that new handshakes pick
//! up; established connections keep the key they negotiated with.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{Located, Problem, TlsConfig, TlsVersion};
use crate::response::{self, Body};

/// ALPN protocols offered to clients, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The gateway's TLS side, built once at start.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    resolver: Arc<CertResolver>,
    config: TlsConfig,
}

impl Tls {
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// Reads the certificate and key; errors name the key and line.
    pub fn from_config(config: &TlsConfig) -> Result<Tls, Vec<Problem>> {
        let provider = Arc::new(provider());
        let certified = load(config, &provider).map_err(|p| vec![p])?;
        let resolver = Arc::new(CertResolver {
            current: RwLock::new(Arc::new(certified)),
        });
        let versions: &[&'static rustls::SupportedProtocolVersion] = match config.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| {
                vec![Problem {
                    line: None,
                    key: "server.tls.min_version".into(),
                    message: e.to_string(),
                }]
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // The provider's order, not the client's: see `provider`.
        server.ignore_client_order = true;
        if !config.session_resumption {
            server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            server.send_tls13_tickets = 0;
        }
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            resolver,
            config: config.clone(),
        })
    }

    /// Re-reads the certificate and key. New handshakes use them; on any
    /// problem the current pair stays and the problem is returned.
    pub fn reload(&self) -> Result<(), Problem> {
        let certified = load(&self.config, &provider())?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        Ok(())
    }

    /// [`Self::reload`], logged: what SIGHUP does.
    pub fn reload_logged(&self) {
        match self.reload() {
            Ok(()) => tracing::info!(
                event = "tls_reloaded",
                cert = %self.config.cert.value.display(),
            ),
            Err(problem) => tracing::error!(
                event = "tls_reload_failed",
                problem = %problem,
                "keeping the current certificate",
            ),
        }
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.config.cert.value)
            .field("min_version", &self.config.min_version)
            .finish_non_exhaustive()
    }
}

/// The one crypto provider of every TLS side of authgate, the clients'
/// included: aws-lc-rs, whose handshakes cost less than ring's and which
/// has the post-quantum hybrid X25519MLKEM768 (offered by current browsers,
/// preferred when a client sends its key share). See docs/tls.md.
fn crypto() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// A client configuration (upstreams over https, PostgreSQL) on
/// [`crypto`], verifying servers against `roots`.
pub fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(crypto()))
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Makes [`crypto`] the process's default, for the clients that build
/// their rustls configuration themselves (redis). Idempotent.
pub fn install_process_provider() {
    let _ = crypto().install_default();
}

/// The server's provider: [`crypto`], with TLS 1.3's AES-128-GCM first.
/// OpenSSL clients (curl, most tools) list AES-256-GCM first, whose
/// SHA-384 key schedule gets no help from the CPU's SHA extensions and
/// whose records take 14 AES rounds instead of 10 (bench/run.sh cases
/// 8-10, docs/performance.md).
fn provider() -> CryptoProvider {
    let mut provider = crypto();
    // Stable: the other suites keep the provider's order.
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn read(path: &Located<std::path::PathBuf>) -> Result<Vec<u8>, Problem> {
    std::fs::read(&path.value)
        .map_err(|e| path.problem(format!("cannot read {}: {e}", path.value.display())))
}

/// Reads every certificate of a PEM file (a chain or a CA bundle).
pub fn read_certificates(
    path: &Located<std::path::PathBuf>,
) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            path.problem(format!(
                "{}: not a PEM certificate file: {e}",
                path.value.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(path.problem(format!(
            "{}: no CERTIFICATE block found",
            path.value.display()
        )));
    }
    Ok(certs)
}

/// The certificate chain and private key, checked to belong together.
fn load(config: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, Problem> {
    let chain = read_certificates(&config.cert)?;
    let key_pem = read(&config.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        config.key.problem(format!(
            "{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            config.key.value.display()
        ))
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => config.key.problem(format!(
            "{} does not belong to the certificate in {}",
            config.key.value.display(),
            config.cert.value.display()
        )),
        rustls::Error::General(_) => config.key.problem(format!(
            "{}: unsupported private key: {e}",
            config.key.value.display()
        )),
        other => config.cert.problem(format!(
            "{}: unusable certificate: {other}",
            config.cert.value.display()
        )),
    })
}

/// Answers every request on a plain listener with 308 to the same URL
/// on https, at `https_port`. Runs until the process ends.
pub async fn redirect_to_https(listener: TcpListener, https_port: u16) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let service =
                service_fn(
                    move |req| async move { Ok::<_, Infallible>(redirect(&req, https_port)) },
                );
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(crate::config::defaults::HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<Body> {
    let location = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
        .and_then(|authority| https_url(&authority, https_port, req.uri().path_and_query()));
    let Some(location) = location else {
        return response::json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "bad_request", "detail": "A Host header is required"}),
        );
    };
    let mut response = Response::new(response::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response
        .headers_mut()
        .insert(http::header::LOCATION, location);
    response
}

fn https_url(authority: &Authority, port: u16, pq: Option<&PathAndQuery>) -> Option<HeaderValue> {
    let host = authority.host();
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let uri = Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(pq.map_or("/", PathAndQuery::as_str))
        .build()
        .ok()?;
    HeaderValue::from_str(&uri.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_url_keeps_path_and_swaps_port() {
        let pq = PathAndQuery::from_static("/a/b?x=1");
        let url = |host: &str, port| {
            https_url(&host.parse().unwrap(), port, Some(&pq))
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(url("example.com:80", 443), "https://example.com/a/b?x=1");
        assert_eq!(url("example.com", 8443), "https://example.com:8443/a/b?x=1");
        assert_eq!(url("[::1]:8080", 8443), "https://[::1]:8443/a/b?x=1");
    }
}
