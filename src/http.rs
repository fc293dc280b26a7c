//! Serving HTTP: every listener of the SFT (signalling, its TLS variant, the
//! federation control plane, metrics) takes connections the same guarded
//! way. At most `limits.max_http_connections` are open at once per listener
//! (one more is closed at once and counted); a request's headers must
//! arrive within `limits.http_header_timeout`, which also ends keep-alive
//! connections idle that long; a TLS handshake gets 10 s; and an accept
//! error (out of file descriptors) backs off instead of spinning a core.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::IntCounter;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::metrics::Metrics;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The verified client certificate of a TLS connection, for handlers that
/// check who called (`None` over plain TCP or without one).
#[derive(Clone)]
pub struct PeerCertificate(pub Option<CertificateDer<'static>>);

/// How a listener's connections speak.
#[derive(Clone)]
pub enum Transport {
    Plain,
    /// TLS with the server config of the moment: a reload swaps it for the
    /// connections that follow.
    Tls(Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>),
}

/// What a listener is called in logs and metrics, and its limits.
#[derive(Clone)]
pub struct Guard {
    pub listener: &'static str,
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// Connections closed because `max_connections` were open.
    refused: IntCounter,
}

impl Guard {
    pub fn new(listener: &'static str, limits: &Limits, metrics: &Metrics) -> Self {
        Self {
            listener,
            max_connections: limits.max_http_connections,
            header_timeout: Duration::from_secs(limits.http_header_timeout),
            refused: metrics.http_connections_refused(listener),
        }
    }
}

/// Serves `router` on `listener` until the process ends. Handlers find the
/// caller's address as `ConnectInfo<SocketAddr>` and, over TLS, its
/// verified certificate as an `Extension<PeerCertificate>`;
/// `on_handshake_error` hears of every failed TLS handshake.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    transport: Transport,
    guard: Guard,
    on_handshake_error: Arc<dyn Fn(&std::io::Error) + Send + Sync>,
) {
    let open = Arc::new(Semaphore::new(guard.max_connections));
    let mut backoff = ACCEPT_BACKOFF_START;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_START;
                accepted
            }
            Err(e) => {
                tracing::warn!(listener = guard.listener, "accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            guard.refused.inc();
            tracing::debug!(listener = guard.listener, %peer, "connection refused: too many open");
            continue;
        };
        let (router, transport, header_timeout) = (router.clone(), transport.clone(), guard.header_timeout);
        let on_handshake_error = on_handshake_error.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match transport {
                Transport::Plain => {
                    let router = router.layer(Extension(ConnectInfo(peer)));
                    serve_connection(stream, router, false, header_timeout).await;
                }
                Transport::Tls(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config());
                    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return on_handshake_error(&e),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    };
                    let session = stream.get_ref().1;
                    let h2 = session.alpn_protocol() == Some(&b"h2"[..]);
                    let certificate =
                        session.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
                    let router =
                        router.layer(Extension(PeerCertificate(certificate))).layer(Extension(ConnectInfo(peer)));
                    serve_connection(stream, router, h2, header_timeout).await;
                }
            }
        });
    }
}

async fn serve_connection<I>(io: I, router: Router, h2: bool, header_timeout: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, service) = (TokioIo::new(io), TowerToHyperService::new(router));
    let result = if h2 {
        // HTTP/2 has no header timer; pings find dead peers instead.
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(header_timeout)
            .keep_alive_timeout(header_timeout)
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(io, service)
            .await
    };
    if let Err(e) = result {
        tracing::debug!("HTTP connection ended: {e}");
    }
}
