//! The process's one HTTP(S) client: hyper 1 + rustls (`ring`), with the Mozilla root
//! certificates compiled in. Every AWS SDK client of a function uses it (see [`crate::aws`]),
//! and so does any other outgoing HTTPS call ([`tls_config`]).
//!
//! Why not the SDK's `default-https-client`: it reads the system certificate store (every file
//! of `/etc/ssl/certs`, then parses each PEM) when each SDK client is constructed, and builds a
//! second TLS configuration on each client's first request. That was ≈ 7–15 ms of every cold
//! start here (docs/ARCHITECTURE.md §Budgets: init at most 1.5× a hello-world binary), and its
//! `aws-lc-rs` crypto library alone is ≈ 2 MB of each binary (budget 8 MB). Here the roots are
//! `webpki-roots`' already-parsed trust anchors (no file, no parsing: tens of µs), the TLS
//! configuration and connection pool are built once, in init, and `ring` is the crypto.
//!
//! `AWS_CA_BUNDLE`, when set, names a PEM file whose certificates are the roots instead, as the
//! AWS SDKs read that setting (a custom certificate bundle for their TLS connections): a private
//! CA, such as the one `local dev --tls` puts before the emulator, costs one small file read.
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`, when set (and `AWS_CA_BUNDLE` is not), replace the
//! compiled-in roots by the system's (as OpenSSL reads them), at the cold-start cost above.

use std::error::Error as StdError;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::retries::ErrorKind;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector as TcpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// TLS client configuration shared by every HTTPS connection of the process (built on first
/// use, which `main` makes happen during init). HTTP/1.1 only (no ALPN offered): the AWS JSON
/// APIs we call need nothing else, and leaving h2 out keeps it out of the binary.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots())
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// The certificates of `AWS_CA_BUNDLE` when it is set; else the compiled-in Mozilla roots, or
/// the system's when `SSL_CERT_FILE`/`SSL_CERT_DIR` say where.
fn roots() -> rustls::RootCertStore {
    if let Some(bundle) = std::env::var_os(CA_BUNDLE_ENV).filter(|p| !p.is_empty()) {
        return ca_bundle(std::path::Path::new(&bundle));
    }
    let system = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|p| !p.is_empty()));
    if !system {
        return rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
    }
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::warn!(errors = ?found.errors, "reading the system's root certificates");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            ignored,
            "no usable root certificate in SSL_CERT_FILE/SSL_CERT_DIR"
        );
    }
    roots
}

/// The AWS SDKs' custom CA bundle setting: a PEM file of the certificates to trust.
pub const CA_BUNDLE_ENV: &str = "AWS_CA_BUNDLE";

/// The certificates of the PEM file at `path` as roots; none (every HTTPS connection then fails
/// its handshake, said in a warning) when it cannot be read or holds no usable certificate.
fn ca_bundle(path: &std::path::Path) -> rustls::RootCertStore {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read AWS_CA_BUNDLE");
            return roots;
        }
    };
    let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        tracing::warn!(path = %path.display(), ignored, "no usable certificate in AWS_CA_BUNDLE");
    }
    roots
}

/// An HTTPS-or-HTTP connector (plain HTTP for the local emulator) on [`tls_config`], with a
/// connect timeout (TCP and TLS handshake are each bounded by it).
pub fn connector(connect_timeout: Duration) -> HttpsConnector<TcpConnector> {
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_nodelay(true);
    // Not `https_only`: plain HTTP is allowed for the local emulator and `local dev`.
    HttpsConnector::from((tcp, tls_config()))
}

/// The AWS SDK's HTTP client: one connection pool for every SDK client of the process.
///
/// The SDK passes each call's connector settings (connect and read timeouts, from the
/// `TimeoutConfig`); this client ignores them and uses the connect timeout it was built with,
/// because [`crate::aws`] sets one `TimeoutConfig` for the whole process and builds this
/// client from the same value. The read timeout is not applied here: the SDK's operation
/// attempt timeout (the same duration) bounds every attempt, reads included.
#[derive(Clone, Debug)]
pub struct SdkHttpClient {
    client: Client<HttpsConnector<TcpConnector>, SdkBody>,
}

impl SdkHttpClient {
    pub fn new(connect_timeout: Duration) -> Self {
        let client = Client::builder(TokioExecutor::new())
            // Idle connections expire by a timer (hyper-util needs one set for that).
            .pool_timer(TokioTimer::new())
            .build(connector(connect_timeout));
        SdkHttpClient { client }
    }

    pub fn shared(connect_timeout: Duration) -> SharedHttpClient {
        SharedHttpClient::new(Self::new(connect_timeout))
    }
}

impl HttpClient for SdkHttpClient {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for SdkHttpClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let response = self.client.request(request);
        HttpConnectorFuture::new(async move {
            let response = response.await.map_err(connector_error)?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// Classifies a hyper error as the SDK's retry policy expects (as the SDK's own hyper client
/// does): timeouts and I/O failures (refused, reset, closed connections, TLS handshake
/// failures) are transient and retried; misuse is a user error; the rest is unknown.
fn connector_error(err: hyper_util::client::legacy::Error) -> ConnectorError {
    let timed_out = chain(&err).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    });
    if timed_out {
        return ConnectorError::timeout(err.into());
    }
    if err.is_connect() {
        return ConnectorError::io(err.into());
    }
    let hyper = chain(&err).find_map(|e| e.downcast_ref::<hyper::Error>());
    match hyper {
        Some(h) if h.is_timeout() => ConnectorError::timeout(err.into()),
        Some(h) if h.is_user() => ConnectorError::user(err.into()),
        Some(h) if h.is_incomplete_message() => {
            ConnectorError::other(err.into(), Some(ErrorKind::TransientError))
        }
        Some(h) if h.is_closed() || h.is_canceled() => ConnectorError::io(err.into()),
        _ if chain(&err).any(|e| e.is::<std::io::Error>()) => ConnectorError::io(err.into()),
        _ => ConnectorError::other(err.into(), None),
    }
}

/// `err` and its sources.
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}
