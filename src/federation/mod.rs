//! Federation (`docs/contract.md` sections 4 and 5): trust, discovery, the control
//! plane and the QUIC relay between one domain's SFT and another's.
//!
//! The anchor of a conference accepts relay links from federated SFTs; a
//! federated SFT dials the anchor when its first client joins a conference
//! anchored there, and redials with backoff when the link drops.

mod connections;
pub mod control;
pub mod credentials;
pub mod discovery;
mod keeper;
pub mod relay;
pub mod trust;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;

use crate::config::FederationConfig;
use crate::core::ids::LinkId;
use crate::drain::Drain;
use crate::edge::{AnchorLink, EdgeHandle};
use crate::http::Guard;
use crate::metrics::Metrics;
use crate::tls::TlsError;
use crate::wire::{Control, RelayVersion};
use control::{ControlClient, ControlServer, RpcError};
use credentials::{Credentials, SharedCredentials};
use discovery::Discovery;
pub use trust::Rejection;

#[derive(Debug, Error)]
pub enum FederationError {
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Unreachable(String),
    /// The anchor drains and takes no new participants.
    #[error("{0}")]
    AnchorDraining(String),
}

pub struct Federation {
    domain: String,
    credentials: SharedCredentials,
    control: RwLock<Arc<ControlClient>>,
    endpoint: quinn::Endpoint,
    pub(crate) edge: EdgeHandle,
    pub(crate) metrics: Arc<Metrics>,
    /// Links to anchors this SFT needs, by anchor domain, each with its keeper.
    outbound: Mutex<HashMap<String, keeper::Outbound>>,
    /// The link of each peer domain (see [`Federation::link_id`]).
    link_ids: Mutex<HashMap<(String, bool), LinkId>>,
    /// The `sft-relay/2` connection each peer domain's link runs on now.
    live: Mutex<HashMap<String, connections::LiveConnection>>,
    /// Channels each link carries now (both sides' conferences), as the
    /// reader of its current connection (by `stable_id`) counts them.
    carried: Mutex<HashMap<LinkId, (usize, Arc<AtomicUsize>)>>,
    /// Held while a first dial to an anchor domain is under way.
    dial_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Every live relay connection and its peer's domain, by `stable_id`:
    /// a reload closes those of domains no longer allowed.
    connections: Mutex<HashMap<usize, (String, quinn::Connection)>>,
    next_link: AtomicU32,
    /// Control messages a second read from one relay link.
    pub(crate) max_control_rate: u32,
    /// How long a link to an anchor outlives its last conference.
    link_linger: Duration,
}

/// Where federation listens, once started.
pub struct Listening {
    pub control: SocketAddr,
    pub relay: SocketAddr,
}

impl Federation {
    pub async fn start(
        domain: &str,
        config: &FederationConfig,
        edge: EdgeHandle,
        metrics: Arc<Metrics>,
        drain: Arc<Drain>,
        guard: Guard,
    ) -> Result<(Arc<Self>, Listening), StartError> {
        let credentials = Credentials::load(domain, config, None)?;
        credentials.warn_if_expiring();
        metrics.federation_certificate_expiry(credentials.expires_at);
        let endpoint = relay::endpoint(&credentials.trust, config.relay_listen)?;
        let relay_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            what: "federation relay (UDP)",
            addr: config.relay_listen,
            source,
        })?;
        let listener = TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind {
            what: "federation control plane",
            addr: config.listen,
            source,
        })?;
        let control_addr = listener.local_addr().expect("bound socket has an address");
        let control = control_client(domain, config, &credentials);
        let credentials = SharedCredentials::new(credentials);
        let server = Arc::new(ControlServer {
            credentials: credentials.clone(),
            relay_public: config.relay_public.clone().unwrap_or_else(|| relay_addr.to_string()),
            metrics: metrics.clone(),
            drain,
        });
        tokio::spawn(control::serve(listener, server, guard));
        let federation = Arc::new(Self {
            domain: domain.to_owned(),
            credentials,
            control: RwLock::new(Arc::new(control)),
            endpoint,
            edge,
            metrics,
            outbound: Mutex::new(HashMap::new()),
            link_ids: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            carried: Mutex::new(HashMap::new()),
            dial_locks: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            next_link: AtomicU32::new(1),
            max_control_rate: config.max_control_rate,
            link_linger: config.link_linger,
        });
        tokio::spawn(federation.clone().accept_links());
        Ok((federation, Listening { control: control_addr, relay: relay_addr }))
    }

    /// Reads the certificate, key, CAs, strategy, allow list and peers of
    /// `config` again: new connections use them, live links carry on, and
    /// links to domains no longer allowed close now. On an error nothing
    /// changes.
    pub fn reload(&self, config: &FederationConfig) -> Result<(), TlsError> {
        let fresh = Credentials::load(&self.domain, config, Some(&self.credentials.current()))?;
        relay::reconfigure(&self.endpoint, &fresh.trust)?;
        *self.control.write().expect("control client lock") = Arc::new(control_client(&self.domain, config, &fresh));
        self.metrics.federation_certificate_expiry(fresh.expires_at);
        fresh.warn_if_expiring();
        let strategy = fresh.trust.strategy.clone();
        self.credentials.replace(fresh);
        let connections = self.connections.lock().expect("links lock");
        for (domain, connection) in connections.values().filter(|(domain, _)| !strategy.allows(domain)) {
            tracing::info!(peer = %domain, "relay link closed: the domain is no longer allowed");
            connection.close(3u32.into(), b"domain no longer allowed");
        }
        Ok(())
    }

    /// Registers a live relay connection until `forget_connection`.
    pub(crate) fn remember_connection(&self, domain: &str, connection: &quinn::Connection) {
        let mut connections = self.connections.lock().expect("links lock");
        connections.insert(connection.stable_id(), (domain.to_owned(), connection.clone()));
    }

    pub(crate) fn forget_connection(&self, connection: &quinn::Connection) {
        self.connections.lock().expect("links lock").remove(&connection.stable_id());
    }

    /// Whether the strategy lets this SFT federate with `domain`.
    pub fn allows(&self, domain: &str) -> bool {
        self.credentials.current().trust.strategy.allows(domain)
    }

    /// Makes sure a relay link to `anchor_domain` is up and returns it with
    /// the token that attaches `conf_id` to it and a lease on it.
    pub async fn anchor_link(
        self: &Arc<Self>,
        anchor_domain: &str,
        conf_id: &str,
    ) -> Result<AnchorLink, FederationError> {
        if !self.allows(anchor_domain) {
            self.metrics.federation_rejected(Rejection::DomainNotAllowed.label());
            return Err(FederationError::Denied(format!("this SFT does not federate with {anchor_domain}")));
        }
        let answer = self.join(anchor_domain, conf_id).await?;
        // A task of its own: a SETUP given up half-way must not leave a
        // keeper that no one knows of (it would fight the next one's).
        let leasing = self.clone().lease_link(anchor_domain.to_owned(), answer.relay.clone());
        let (link, lease) = tokio::spawn(leasing)
            .await
            .map_err(|e| FederationError::Unreachable(format!("relay link to {anchor_domain}: {e}")))??;
        Ok(AnchorLink { link, token: answer.relay_token, lease })
    }

    /// Asks `anchor_domain` (the `join` RPC) to let this SFT carry `conf_id`.
    pub(super) async fn join(
        &self,
        anchor_domain: &str,
        conf_id: &str,
    ) -> Result<control::JoinAnswer, FederationError> {
        let control = self.control.read().expect("control client lock").clone();
        control.join(anchor_domain, conf_id, &self.domain).await.map_err(|e| match e {
            RpcError::Denied { .. } => FederationError::Denied(e.to_string()),
            RpcError::Draining { .. } => FederationError::AnchorDraining(e.to_string()),
            RpcError::PeerCertificate { .. } => {
                self.metrics.federation_rejected(Rejection::PeerCertificateMismatch.label());
                FederationError::Unreachable(e.to_string())
            }
            _ => FederationError::Unreachable(e.to_string()),
        })
    }

    async fn accept_links(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let federation = self.clone();
            tokio::spawn(async move {
                let credentials = federation.credentials.current();
                match relay::accept(incoming, &credentials.trust).await {
                    Ok((domain, connection, send, recv)) => {
                        let shared = relay::version(&connection) == RelayVersion::V2;
                        let link = federation.link_id(&domain, shared);
                        relay::run_link(federation.clone(), link, domain, connection, send, recv, true).await;
                    }
                    Err(rejection) => {
                        federation.metrics.federation_rejected(rejection.label());
                        tracing::info!(reason = rejection.label(), "relay link refused");
                    }
                }
            });
        }
    }

    /// Checks a control message from `domain` before the edge sees it: an
    /// `attach` (whichever side dialled) only with a token this SFT issued
    /// to that domain.
    pub(crate) fn admit_control(&self, domain: &str, message: Control) -> Admission {
        match message {
            Control::Attach { ref conf_id, ref relay_token, channel } => {
                if self.credentials.current().check_token(domain, conf_id, relay_token) {
                    Admission::Pass(message)
                } else {
                    self.metrics.federation_rejected(Rejection::BadToken.label());
                    tracing::info!(peer = %domain, conf_id, "relay attach with a bad token");
                    Admission::Reply(Control::Refused { channel, reason: BAD_TOKEN_REASON.into() })
                }
            }
            Control::Hello { .. } => Admission::Drop,
            other => Admission::Pass(other),
        }
    }
}

/// The reason of a `refused` for an attach whose token this SFT did not issue.
const BAD_TOKEN_REASON: &str = "bad relay token";

/// What becomes of a control message from a peer.
pub(crate) enum Admission {
    /// Hand it to the edge.
    Pass(Control),
    /// Answer the peer with this instead.
    Reply(Control),
    /// Ignore it.
    Drop,
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("federation TLS: {0}")]
    Tls(#[from] TlsError),
}

/// The client of the control plane's RPCs, with `credentials`' certificate.
fn control_client(domain: &str, config: &FederationConfig, credentials: &Credentials) -> ControlClient {
    ControlClient {
        own_domain: domain.to_owned(),
        tls: credentials.control_client.clone(),
        discovery: Arc::new(Discovery::new(config.peers.clone(), config.dns, config.dns_timeout)),
        via_federator: config.via_federator.clone(),
    }
}
