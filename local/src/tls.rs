//! `local dev --tls`: a TLS front before the emulator, so the functions reach AWS over HTTPS as
//! they do on Lambda, TLS handshake included (with `--lambda-limits`, at their CPU share).
//!
//! At start it makes a CA of its own and a certificate for `127.0.0.1` and `localhost` signed by
//! it ([`LocalCa`]: `rcgen`, ECDSA P-256, in memory: no key is written anywhere), writes the CA
//! certificate as PEM to `ca.pem` in a directory of its own (removed with the front), and listens
//! on a free loopback port (`tokio-rustls`, the same rustls + ring the functions use). It speaks
//! HTTP/1.1 with keep-alive to the functions, as AWS's endpoints do, and forwards each request
//! unchanged to the emulator's plain HTTP address. The emulator (werkzeug's server) answers every
//! request with `Connection: close`; the front drops that and the other hop-by-hop headers from
//! the answers, so a function's connection lives on, as it would on AWS. A connection with no
//! request for the idle timeout is closed (TLS `close_notify`, then FIN), as a server ends an
//! idle keep-alive connection; a client's pool then opens a new one, with a new handshake.
//!
//! The functions get `AWS_ENDPOINT_URL=https://127.0.0.1:<port>` and `AWS_CA_BUNDLE=<ca.pem>`,
//! which their HTTP client trusts instead of the public roots (`shared::http_client`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How long a connection may sit idle before the front closes it, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the front could not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid emulator endpoint {0:?}: expected http://HOST:PORT")]
    Upstream(String),
    #[error("cannot make the local CA or certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running TLS front; dropping it stops accepting (connections in flight end with their
/// task) and removes its CA file.
pub struct TlsFront {
    endpoint: String,
    ca_bundle: PathBuf,
    dir: PathBuf,
    handshakes: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

/// A CA made for this process and the server certificate it signed for `127.0.0.1` and
/// `localhost` (several fronts may share one, so one bundle trusts them all).
pub struct LocalCa {
    pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl LocalCa {
    /// A new CA and server certificate.
    ///
    /// # Errors
    /// A key or certificate cannot be generated.
    pub fn new() -> Result<LocalCa, TlsError> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "local dev CA (local --tls)");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate()?;
        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        leaf.distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf.signed_by(&key, &issuer)?;
        Ok(LocalCa {
            pem: ca_cert.pem(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

impl TlsFront {
    /// Starts a front for the plain HTTP emulator at `upstream` (`http://HOST:PORT`) on a free
    /// port of 127.0.0.1, with the certificate of `ca`, closing connections idle for
    /// `idle_timeout`.
    ///
    /// # Errors
    /// `upstream` is not `http://HOST:PORT`, or the TLS configuration, the CA file or the
    /// listener cannot be made.
    pub async fn start(
        upstream: &str,
        idle_timeout: Duration,
        ca: &LocalCa,
    ) -> Result<TlsFront, TlsError> {
        upstream_addr(upstream)?;
        let upstream = Arc::new(Upstream {
            base: upstream.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let (chain, key) = (ca.chain.clone(), ca.key.clone_key());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!(
            "local-tls-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let ca_bundle = dir.join("ca.pem");
        std::fs::write(&ca_bundle, ca.pem())?;
        let handshakes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&handshakes);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = Arc::clone(&counted);
                let upstream = Arc::clone(&upstream);
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    let Ok(client) = acceptor.accept(client).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::Relaxed);
                    serve(client, upstream, idle_timeout).await;
                });
            }
        });
        Ok(TlsFront {
            endpoint: format!("https://127.0.0.1:{port}"),
            ca_bundle,
            dir,
            handshakes,
            accept,
        })
    }

    /// TLS handshakes completed so far (one per connection a client opened).
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// `https://127.0.0.1:<port>`: the functions' `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The CA certificate's PEM file: the functions' `AWS_CA_BUNDLE`.
    pub fn ca_bundle(&self) -> &Path {
        &self.ca_bundle
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The socket address of `http://HOST:PORT`.
fn upstream_addr(upstream: &str) -> Result<SocketAddr, TlsError> {
    let bad = || TlsError::Upstream(upstream.to_string());
    let authority = upstream.strip_prefix("http://").ok_or_else(bad)?;
    let authority = authority.trim_end_matches('/');
    std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

/// The emulator and the client the front forwards to it with.
struct Upstream {
    /// `http://HOST:PORT`.
    base: String,
    client: Client<HttpConnector, Body>,
}

/// When a connection last finished a request, and how many it is serving now.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    /// How long no request has been in flight; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            self.last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed(),
        )
    }

    fn done(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one decrypted connection: HTTP/1.1 with keep-alive, each request forwarded to the
/// emulator; closed once no request came for `idle`.
async fn serve(
    tls: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    upstream: Arc<Upstream>,
    idle: Duration,
) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
    });
    let tracked = Arc::clone(&activity);
    let service = service_fn(move |request: Request<Incoming>| {
        let (upstream, activity) = (Arc::clone(&upstream), Arc::clone(&tracked));
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        async move {
            let response = forward(&upstream, request).await;
            activity.done();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    loop {
        let wait = activity
            .idle_for()
            .map_or(idle, |idle_for| idle.saturating_sub(idle_for));
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = tokio::time::sleep(wait) => {
                if activity.idle_for().is_some_and(|i| i >= idle) {
                    // An idle connection closes at once (close_notify, FIN).
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                    return;
                }
            }
        }
    }
}

/// Headers that describe one connection, not the message: never passed on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `request` sent to the emulator; its answer without hop-by-hop headers, or `502` when the
/// emulator cannot be reached.
async fn forward(upstream: &Upstream, request: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{}{path}", upstream.base).parse() else {
        return status(StatusCode::BAD_REQUEST, "bad request target");
    };
    parts.uri = uri;
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let request = Request::from_parts(parts, Body::new(body));
    match upstream.client.request(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(*name);
            }
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => status(StatusCode::BAD_GATEWAY, &format!("emulator: {e}")),
    }
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(message.to_string()));
    *response.status_mut() = code;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_must_be_plain_http() {
        assert!(upstream_addr("http://127.0.0.1:4566").is_ok());
        assert!(upstream_addr("http://127.0.0.1:4566/").is_ok());
        for bad in ["https://127.0.0.1:4566", "127.0.0.1:4566", "http://nowhere"] {
            assert!(
                matches!(upstream_addr(bad), Err(TlsError::Upstream(_))),
                "{bad}"
            );
        }
    }
}
