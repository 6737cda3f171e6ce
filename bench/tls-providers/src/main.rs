//! Usage: `tls-providers CERT.pem KEY.pem [HANDSHAKES]`. Prints the server's
//! CPU time per full handshake for each provider and group (the client's
//! work is not counted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::{aws_lc_rs, ring, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

/// Accepts any certificate: the client's verification is not measured.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Moves what one side has to send into the other; the time the receiving
/// side spends is added to `spent` when it is the server.
fn pump(
    from: &mut dyn FnMut(&mut Vec<u8>) -> usize,
    to: &mut dyn FnMut(&[u8]),
    buf: &mut Vec<u8>,
) -> bool {
    buf.clear();
    if from(buf) == 0 {
        return false;
    }
    to(buf);
    true
}

fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> Duration {
    let mut c = ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let started = Instant::now();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut spent = started.elapsed();
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let mut moved = false;
        moved |= pump(
            &mut |b| c.write_tls(b).unwrap(),
            &mut |b| {
                let t = Instant::now();
                let mut r = b;
                while !r.is_empty() {
                    s.read_tls(&mut r).unwrap();
                }
                s.process_new_packets().unwrap();
                spent += t.elapsed();
            },
            &mut buf,
        );
        moved |= pump(
            &mut |b| {
                let t = Instant::now();
                let n = s.write_tls(b).unwrap();
                spent += t.elapsed();
                n
            },
            &mut |b| {
                let mut r = b;
                while !r.is_empty() {
                    c.read_tls(&mut r).unwrap();
                }
                c.process_new_packets().unwrap();
            },
            &mut buf,
        );
        if !moved && !c.is_handshaking() && !s.is_handshaking() {
            return spent;
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let cert = args.next().expect("CERT.pem");
    let key = args.next().expect("KEY.pem");
    let n: u32 = args.next().map_or(2000, |a| a.parse().unwrap());
    let chain: Vec<_> = CertificateDer::pem_file_iter(&cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    #[allow(deprecated)] // ring has no post-quantum group; measured all the same
    let ring = ring::default_provider();
    let providers: [(&str, CryptoProvider); 2] = [("ring", ring), ("aws-lc-rs", aws_lc_rs::default_provider())];
    for (name, provider) in providers {
        let groups: Vec<&'static dyn SupportedKxGroup> = provider.kx_groups.clone();
        let order: Vec<_> = groups.iter().map(|g| format!("{:?}", g.name())).collect();
        println!("{name}: key-exchange groups, server preference first: {}", order.join(", "));
        let provider = Arc::new(provider);
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .unwrap();
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let server = Arc::new(server);
        for group in groups {
            let mut only = CryptoProvider { kx_groups: vec![group], ..(*provider).clone() };
            // The suite the client asks for first decides the handshake's
            // hash: SHA-384 for AES-256-GCM (what OpenSSL clients put
            // first), SHA-256 for AES-128-GCM. SUITE=128 measures the latter.
            if std::env::var("SUITE").is_ok_and(|s| s == "128") {
                only.cipher_suites.retain(|s| {
                    s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                });
            }
            let client = ClientConfig::builder_with_provider(Arc::new(only))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider.clone())))
                .with_no_client_auth();
            let client = Arc::new(client);
            for _ in 0..n / 10 {
                handshake(&client, &server);
            }
            let mut times: Vec<Duration> = (0..n).map(|_| handshake(&client, &server)).collect();
            times.sort();
            let total: Duration = times.iter().sum();
            println!(
                "  {name} {:?}: server median {:.1} µs a handshake (p10 {:.1}, mean {:.1})",
                group.name(),
                times[times.len() / 2].as_secs_f64() * 1e6,
                times[times.len() / 10].as_secs_f64() * 1e6,
                total.as_secs_f64() * 1e6 / f64::from(n),
            );
        }
    }
}
