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
use crate::metrics::Metrics;
use crate::signalling::{self, Signalling};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: io::Error },
}

/// A running SFT and where it listens (ports resolved when 0 was asked for).
pub struct Server {
    pub signalling_addr: SocketAddr,
    pub media_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub drain: Arc<Drain>,
    pub metrics: Arc<Metrics>,
    edge: EdgeHandle,
}

impl Server {
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let drain = Arc::new(Drain::default());
        let (edge, media_addr) = edge::start(config, metrics.clone()).map_err(|source| StartError::Bind {
            what: "media (UDP)",
            addr: config.media.listen,
            source,
        })?;

        let signalling_listener = bind("signalling", config.signalling.listen).await?;
        let signalling_addr = signalling_listener.local_addr().expect("bound socket has an address");
        let signalling_state = Arc::new(Signalling {
            domain: config.domain.clone(),
            edge: edge.clone(),
            auth_secret: config.signalling.auth_secret.clone(),
            allow_origin: config.signalling.allow_origin.clone(),
            metrics: metrics.clone(),
            drain: drain.clone(),
        });
        tokio::spawn(serve(signalling_listener, signalling::router(signalling_state)));

        let metrics_listener = bind("metrics", config.metrics_listen).await?;
        let metrics_addr = metrics_listener.local_addr().expect("bound socket has an address");
        let admin_state = Arc::new(Admin { metrics: metrics.clone(), drain: drain.clone() });
        tokio::spawn(serve(metrics_listener, admin::router(admin_state)));

        Ok(Self { signalling_addr, media_addr, metrics_addr, drain, metrics, edge })
    }

    /// Starts draining and waits until every session has ended or `timeout`
    /// passed. Returns whether it drained completely.
    pub async fn drain_and_wait(&self, timeout: Duration) -> bool {
        self.drain.start();
        self.metrics.draining.set(1);
        let deadline = Instant::now() + timeout;
        loop {
            let participants = self.edge.stats().await.map_or(0, |s| s.participants);
            if participants == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(participants, "drain timeout passed; exiting with calls still running");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200).min(deadline - Instant::now())).await;
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source })
}

async fn serve(listener: TcpListener, router: axum::Router) {
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!("HTTP server stopped: {e}");
    }
}
