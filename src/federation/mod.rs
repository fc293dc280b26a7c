//! Federation (`docs/contract.md` sections 4 and 5): trust, discovery, the control
//! plane and the QUIC relay between one domain's SFT and another's.
//!
//! The anchor of a conference accepts relay links from federated SFTs; a
//! federated SFT dials the anchor when its first client joins a conference
//! anchored there, and redials with backoff when the link drops.

pub mod control;
pub mod discovery;
pub mod framing;
pub mod relay;
pub mod trust;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::FederationConfig;
use crate::core::ids::LinkId;
use crate::edge::EdgeHandle;
use crate::metrics::Metrics;
use crate::tls::TlsError;
use control::{ControlClient, ControlServer, RpcError, Tokens};
use discovery::Discovery;
use framing::Control;
pub use trust::Rejection;
use trust::Trust;

const FIRST_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A redial gives up after this and starts afresh: a handshake begun while
/// the path was down would otherwise wait out QUIC's growing Initial
/// retransmission timer (1 s, 2 s, ...) long after the path is back. Each
/// attempt is one Initial, so short attempts cost an unreachable peer little.
const REDIAL_ATTEMPT: Duration = Duration::from_millis(750);
const BACKOFF_START: Duration = Duration::from_millis(100);
/// With `REDIAL_ATTEMPT`, bounds the time from the path's return to a new
/// connection at about a second.
const BACKOFF_MAX: Duration = Duration::from_millis(250);

#[derive(Debug, Error)]
pub enum FederationError {
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Unreachable(String),
}

pub struct Federation {
    trust: Arc<Trust>,
    tokens: Arc<Tokens>,
    control: ControlClient,
    endpoint: quinn::Endpoint,
    pub(crate) edge: EdgeHandle,
    pub(crate) metrics: Arc<Metrics>,
    /// Links to anchors we dial, by anchor domain.
    outbound: Mutex<HashMap<String, LinkId>>,
    /// Links from federated SFTs that dial us, by their domain.
    inbound: Mutex<HashMap<String, LinkId>>,
    /// Held while a first dial to an anchor domain is under way.
    dial_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_link: AtomicU32,
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
    ) -> Result<(Arc<Self>, Listening), StartError> {
        let trust = Arc::new(Trust::load(domain, config)?);
        let endpoint = relay::endpoint(&trust, config.relay_listen)?;
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
        let tokens = Arc::new(trust.relay_tokens());
        let server = Arc::new(ControlServer {
            trust: trust.clone(),
            tokens: tokens.clone(),
            relay_public: config.relay_public.clone().unwrap_or_else(|| relay_addr.to_string()),
            metrics: metrics.clone(),
        });
        let control_tls = Arc::new(trust.server_config(&[b"h2", b"http/1.1"])?);
        tokio::spawn(control::serve(listener, control_tls, server));
        let control = ControlClient {
            own_domain: domain.to_owned(),
            tls: trust.client_config(&[b"http/1.1"])?,
            discovery: Arc::new(Discovery::new(config.peers.clone(), config.dns)),
            via_federator: config.via_federator.clone(),
        };
        let federation = Arc::new(Self {
            trust,
            tokens,
            control,
            endpoint,
            edge,
            metrics,
            outbound: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
            dial_locks: Mutex::new(HashMap::new()),
            next_link: AtomicU32::new(1),
        });
        tokio::spawn(federation.clone().accept_links());
        Ok((federation, Listening { control: control_addr, relay: relay_addr }))
    }

    /// Whether the strategy lets this SFT federate with `domain`.
    pub fn allows(&self, domain: &str) -> bool {
        self.trust.strategy.allows(domain)
    }

    /// Makes sure a relay link to `anchor_domain` is up and returns it with
    /// the token that attaches `conf_id` to it.
    pub async fn anchor_link(
        self: &Arc<Self>,
        anchor_domain: &str,
        conf_id: &str,
    ) -> Result<(LinkId, String), FederationError> {
        if !self.allows(anchor_domain) {
            self.metrics.federation_rejected(Rejection::DomainNotAllowed.label());
            return Err(FederationError::Denied(format!("this SFT does not federate with {anchor_domain}")));
        }
        let answer = self.control.join(anchor_domain, conf_id, &self.trust.domain).await.map_err(|e| match e {
            RpcError::Denied { .. } => FederationError::Denied(e.to_string()),
            RpcError::PeerCertificate { .. } => {
                self.metrics.federation_rejected(Rejection::PeerCertificateMismatch.label());
                FederationError::Unreachable(e.to_string())
            }
            _ => FederationError::Unreachable(e.to_string()),
        })?;
        // One dial per anchor domain at a time: concurrent first joins wait
        // for the first dial and share its link.
        let dial_lock =
            self.dial_locks.lock().expect("links lock").entry(anchor_domain.to_owned()).or_default().clone();
        let _dialling = dial_lock.lock().await;
        let existing = self.outbound.lock().expect("links lock").get(anchor_domain).copied();
        let link = match existing {
            Some(link) => link,
            None => self.dial_anchor(anchor_domain, &answer.relay).await?,
        };
        Ok((link, answer.relay_token))
    }

    async fn dial_anchor(self: &Arc<Self>, domain: &str, relay: &str) -> Result<LinkId, FederationError> {
        let link = LinkId(self.next_link.fetch_add(1, Ordering::Relaxed));
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(self.clone().keep_link(link, domain.to_owned(), relay.to_owned(), first_tx));
        match tokio::time::timeout(FIRST_DIAL_TIMEOUT, first_rx).await {
            Ok(Ok(Ok(()))) => {
                self.outbound.lock().expect("links lock").insert(domain.to_owned(), link);
                Ok(link)
            }
            Ok(Ok(Err(why))) => Err(FederationError::Unreachable(why)),
            _ => Err(FederationError::Unreachable(format!("relay of {domain} at {relay} did not answer"))),
        }
    }

    /// Dials the anchor's relay and redials with backoff whenever it drops.
    /// A first dial that fails gives up (the SETUP that asked gets 502).
    async fn keep_link(
        self: Arc<Self>,
        link: LinkId,
        domain: String,
        relay: String,
        first: oneshot::Sender<Result<(), String>>,
    ) {
        let mut first = Some(first);
        let mut backoff = BACKOFF_START;
        loop {
            self.metrics.link_state(&domain, "connecting");
            let attempt = if first.is_some() { FIRST_DIAL_TIMEOUT } else { REDIAL_ATTEMPT };
            let dialled =
                tokio::time::timeout(attempt, relay::dial(&self.endpoint, &self.trust.domain, &domain, &relay))
                    .await
                    .unwrap_or_else(|_| Err(format!("relay {relay}: no answer within {attempt:?}")));
            match dialled {
                Ok((connection, send, recv)) => {
                    if let Some(first) = first.take() {
                        let _ = first.send(Ok(()));
                    }
                    backoff = BACKOFF_START;
                    relay::run_link(self.clone(), link, domain.clone(), connection, send, recv, false).await;
                }
                Err(why) => {
                    if let Some(first) = first.take() {
                        self.metrics.link_state(&domain, "down");
                        let _ = first.send(Err(why));
                        return;
                    }
                    tracing::info!(peer = %domain, "relay redial failed: {why}");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn accept_links(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let federation = self.clone();
            tokio::spawn(async move {
                match relay::accept(incoming, &federation.trust).await {
                    Ok((domain, connection, send, recv)) => {
                        let link = {
                            let mut inbound = federation.inbound.lock().expect("links lock");
                            *inbound
                                .entry(domain.clone())
                                .or_insert_with(|| LinkId(federation.next_link.fetch_add(1, Ordering::Relaxed)))
                        };
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

    /// Checks a control message from `domain` before the edge sees it: only
    /// a dialling SFT attaches, and only with a token this SFT issued to it.
    pub(crate) fn admit_control(&self, domain: &str, message: Control, inbound: bool) -> Admission {
        match message {
            Control::Attach { ref conf_id, ref relay_token, channel } if inbound => {
                if self.tokens.check(domain, conf_id, relay_token) {
                    Admission::Pass(message)
                } else {
                    self.metrics.federation_rejected(Rejection::BadToken.label());
                    tracing::info!(peer = %domain, conf_id, "relay attach with a bad token");
                    Admission::Reply(Control::Refused { channel, reason: "bad relay token".into() })
                }
            }
            Control::Attach { .. } | Control::Hello { .. } => Admission::Drop,
            other => Admission::Pass(other),
        }
    }
}

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
