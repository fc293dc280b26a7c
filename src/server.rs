//! Starts the whole SFT from a checked [`Config`]: media edge, signalling,
//! metrics. Used by `main` and, in-process, by the tests.
#![allow(clippy::disallowed_methods)] // the shell reads the clock to bound the drain

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpListener;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::drain::Drain;
use crate::edge::{self, EdgeHandle};
use crate::federation::{Federation, Listening};
use crate::http;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::signalling::{self, Signalling};
use crate::tls::{self, TlsError};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: io::Error },
    #[error("signalling TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("federation: {0}")]
    Federation(#[from] crate::federation::StartError),
}

impl StartError {
    /// Whether the configuration is at fault (a certificate or key file
    /// that cannot be read or used), rather than the machine (a port in use).
    pub fn is_configuration(&self) -> bool {
        match self {
            Self::Bind { .. } | Self::Federation(crate::federation::StartError::Bind { .. }) => false,
            Self::Tls(_) | Self::Federation(crate::federation::StartError::Tls(_)) => true,
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every call ended.
    Drained,
    /// `drain_timeout` passed with calls still running.
    TimedOut,
    /// `DELETE /admin/drain`: the SFT takes new sessions again.
    Cancelled,
    /// The media thread stopped meanwhile.
    MediaStopped,
}

/// A running SFT and where it listens (ports resolved when 0 was asked for).
pub struct Server {
    pub signalling_addr: SocketAddr,
    /// Media worker 0's socket.
    pub media_addr: SocketAddr,
    /// Every media worker's socket, worker 0 first.
    pub media_addrs: Vec<SocketAddr>,
    pub metrics_addr: SocketAddr,
    /// Where federation listens, when it is on.
    pub federation: Option<Listening>,
    pub drain: Arc<Drain>,
    /// Applies a changed configuration (SIGHUP, `POST /admin/reload`).
    pub reloader: Arc<Reloader>,
    pub metrics: Arc<Metrics>,
    edge: EdgeHandle,
}

impl Server {
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        // Certificates first: a bad file is a start-up error, before any port opens.
        let signalling_tls = match &config.signalling.tls {
            Some(files) => Some(tls::server_config(&files.cert, &files.key)?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let drain = Arc::new(Drain::default());
        let edge = edge::start(config, metrics.clone()).map_err(|source| StartError::Bind {
            what: "media (UDP)",
            addr: config.media.listen,
            source,
        })?;
        let media_addrs = edge.media_addrs().to_vec();

        let (federation, federation_addrs) = match &config.federation {
            Some(federation_config) => {
                let guard = http::Guard::new("federation", &config.limits, &metrics);
                let (federation, listening) = Federation::start(
                    &config.domain,
                    federation_config,
                    edge.clone(),
                    metrics.clone(),
                    drain.clone(),
                    guard,
                )
                .await?;
                (Some(federation), Some(listening))
            }
            None => (None, None),
        };
        let signalling_listener = bind("signalling", config.signalling.listen).await?;
        let signalling_addr = signalling_listener.local_addr().expect("bound socket has an address");
        let signalling_state = Arc::new(Signalling {
            domain: config.domain.clone(),
            edge: edge.clone(),
            auth_secret: config.signalling.auth_secret.clone(),
            allow_origin: config.signalling.allow_origin.clone(),
            metrics: metrics.clone(),
            drain: drain.clone(),
            federation: federation.clone(),
            rate_limit: std::sync::Mutex::new(signalling::RateLimiter::new(
                config.limits.signalling_rate,
                config.limits.signalling_burst,
            )),
            exempt_loopback: config.limits.exempt_loopback,
            min_sessid_chars: config.limits.min_sessid_chars,
        });
        let federation_handle = federation;
        let signalling_router = signalling::router(signalling_state);
        let transport = match signalling_tls {
            Some(tls) => http::Transport::Tls(Arc::new(move || tls.clone())),
            None => http::Transport::Plain,
        };
        let guard = http::Guard::new("signalling", &config.limits, &metrics);
        let handshake_failed = |e: &std::io::Error| tracing::debug!("signalling TLS handshake failed: {e}");
        tokio::spawn(http::serve(signalling_listener, signalling_router, transport, guard, Arc::new(handshake_failed)));

        let metrics_listener = bind("metrics", config.metrics_listen).await?;
        let metrics_addr = metrics_listener.local_addr().expect("bound socket has an address");
        let reloader = Arc::new(Reloader::new(config.clone(), federation_handle, metrics.clone()));
        let admin_state = Arc::new(Admin {
            metrics: metrics.clone(),
            edge: edge.clone(),
            drain: drain.clone(),
            reloader: reloader.clone(),
            token: config.admin_token.clone(),
        });
        let guard = http::Guard::new("metrics", &config.limits, &metrics);
        let admin_router = admin::router(admin_state);
        tokio::spawn(http::serve(metrics_listener, admin_router, http::Transport::Plain, guard, Arc::new(|_: &_| {})));

        Ok(Self {
            signalling_addr,
            media_addr: media_addrs[0],
            media_addrs,
            metrics_addr,
            federation: federation_addrs,
            drain,
            reloader,
            metrics,
            edge,
        })
    }

    /// Resolves if the media thread stops (it panicked): the process should
    /// exit so that its supervisor starts a fresh one.
    pub async fn media_stopped(&self) {
        self.edge.stopped().await;
    }

    /// Starts draining and waits for its end, as [`Self::wait_drained`].
    pub async fn drain_and_wait(&self, timeout: Duration, grace: Duration) -> DrainOutcome {
        self.drain.start();
        self.wait_drained(timeout, grace).await
    }

    /// Waits until every session of a drain already started has ended (and
    /// at least `grace` passed), `timeout` passed, or the drain was
    /// cancelled (also before this was called).
    pub async fn wait_drained(&self, timeout: Duration, grace: Duration) -> DrainOutcome {
        self.metrics.draining.set(1);
        self.edge.drain().await;
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            if !self.drain.is_draining() {
                self.metrics.draining.set(0);
                self.edge.resume().await;
                return DrainOutcome::Cancelled;
            }
            // Calls here include those this SFT anchors for other SFTs' clients only.
            let Some(stats) = self.edge.stats().await else { return DrainOutcome::MediaStopped };
            let (participants, remote) = (stats.participants, stats.remote_participants);
            if participants == 0 && remote == 0 && started.elapsed() >= grace {
                return DrainOutcome::Drained;
            }
            if Instant::now() >= deadline {
                tracing::warn!(participants, remote, "drain timeout passed; exiting with calls still running");
                return DrainOutcome::TimedOut;
            }
            tokio::time::sleep(Duration::from_millis(200).min(deadline - Instant::now())).await;
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source })
}
