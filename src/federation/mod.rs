//! Federation (`docs/contract.md` sections 4 and 5): trust, discovery, the control
//! plane and the QUIC relay between one domain's SFT and another's.
//!
//! The anchor of a conference accepts relay links from federated SFTs; a
//! federated SFT dials the anchor when its first client joins a conference
//! anchored there, and redials with backoff when the link drops.

pub mod control;
pub mod credentials;
pub mod discovery;
pub mod relay;
pub mod trust;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::config::FederationConfig;
use crate::core::ids::LinkId;
use crate::core::link::{GiveUpReason, LinkAction, LinkMachine, FIRST_DIAL_TIMEOUT, SILENCE_LIMIT};
use crate::drain::Drain;
use crate::edge::{AnchorLink, EdgeHandle, LinkLease, LinkUsers, Refusal};
use crate::http::Guard;
use crate::metrics::Metrics;
use crate::tls::TlsError;
use crate::wire::Control;
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
    /// Links to anchors we dial, by anchor domain.
    outbound: Mutex<HashMap<String, Outbound>>,
    /// One link per peer domain, whichever side dialled its connection:
    /// conferences of both directions ride it as channels.
    link_ids: Mutex<HashMap<String, LinkId>>,
    /// The connection each peer domain's link runs on now, and whether
    /// this SFT dialled it.
    live: Mutex<HashMap<String, (quinn::Connection, bool)>>,
    /// Channels each peer domain's link carries now (both directions), as
    /// its reader last counted them.
    carried: Mutex<HashMap<String, Arc<AtomicUsize>>>,
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

/// A link this SFT dials to an anchor, and the conferences using it.
struct Outbound {
    link: LinkId,
    users: LinkUsers,
}

/// What a link's keeper keeps.
struct Keeper {
    link: LinkId,
    domain: String,
    relay: String,
    users: LinkUsers,
}

/// How often a keeper checks that its link still brings packets and is
/// still used.
const LINK_CHECK: Duration = Duration::from_millis(250);

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
        // One dial per anchor domain at a time: concurrent first joins wait
        // for the first dial and share its link.
        let dial_lock =
            self.dial_locks.lock().expect("links lock").entry(anchor_domain.to_owned()).or_default().clone();
        let _dialling = dial_lock.lock().await;
        // Taken under the map's lock: a keeper giving its link up removes it
        // under the same lock, once it has no lease.
        let existing = self.outbound.lock().expect("links lock").get(anchor_domain).map(|o| (o.link, o.users.lease()));
        let (link, lease) = match existing {
            Some(existing) => existing,
            None => self.dial_anchor(anchor_domain, &answer.relay).await?,
        };
        Ok(AnchorLink { link, token: answer.relay_token, lease })
    }

    /// Asks `anchor_domain` (the `join` RPC) to let this SFT carry `conf_id`.
    async fn join(&self, anchor_domain: &str, conf_id: &str) -> Result<control::JoinAnswer, FederationError> {
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

    /// The link of `domain`, the same for every connection with it.
    pub(crate) fn link_id(&self, domain: &str) -> LinkId {
        let mut ids = self.link_ids.lock().expect("links lock");
        *ids.entry(domain.to_owned()).or_insert_with(|| LinkId(self.next_link.fetch_add(1, Ordering::Relaxed)))
    }

    /// How many channels `domain`'s link carries, as its reader counts them.
    pub(crate) fn carried(&self, domain: &str) -> Arc<AtomicUsize> {
        self.carried.lock().expect("links lock").entry(domain.to_owned()).or_default().clone()
    }

    /// Whether a new connection with `domain` (`dialled_here` or accepted)
    /// may carry its link. One connection per pair of domains: a second
    /// one dialled by the same side replaces the first (that side
    /// restarted, or gave the old one up); when both sides dialled at
    /// once, both keep the one the domain sorting first dialled.
    pub(crate) fn admit_connection(&self, domain: &str, connection: &quinn::Connection, dialled_here: bool) -> bool {
        let mut live = self.live.lock().expect("links lock");
        if let Some((current, current_dialled_here)) = live.get(domain) {
            let contest = current.close_reason().is_none() && *current_dialled_here != dialled_here;
            let ours_first = self.domain.as_str() < domain;
            if contest && dialled_here != ours_first {
                return false;
            }
        }
        live.insert(domain.to_owned(), (connection.clone(), dialled_here));
        true
    }

    /// `connection` no longer carries `domain`'s link.
    pub(crate) fn connection_ended(&self, domain: &str, connection: &quinn::Connection) {
        let mut live = self.live.lock().expect("links lock");
        if live.get(domain).is_some_and(|(current, _)| current.stable_id() == connection.stable_id()) {
            live.remove(domain);
        }
    }

    /// The live connection the peer dialled, if `domain`'s link runs on one.
    fn borrowable(&self, domain: &str) -> Option<quinn::Connection> {
        let live = self.live.lock().expect("links lock");
        live.get(domain).filter(|(c, dialled_here)| !dialled_here && c.close_reason().is_none()).map(|(c, _)| c.clone())
    }

    async fn dial_anchor(self: &Arc<Self>, domain: &str, relay: &str) -> Result<(LinkId, LinkLease), FederationError> {
        let link = self.link_id(domain);
        let (users, refusals) = LinkUsers::new();
        let (first_tx, first_rx) = oneshot::channel();
        let keeper = Keeper { link, domain: domain.to_owned(), relay: relay.to_owned(), users: users.clone() };
        tokio::spawn(self.clone().keep_link(keeper, refusals, first_tx));
        match tokio::time::timeout(FIRST_DIAL_TIMEOUT, first_rx).await {
            Ok(Ok(Ok(()))) => {
                let lease = users.lease();
                self.outbound.lock().expect("links lock").insert(domain.to_owned(), Outbound { link, users });
                Ok((link, lease))
            }
            Ok(Ok(Err(why))) => Err(FederationError::Unreachable(why)),
            _ => Err(FederationError::Unreachable(format!("relay of {domain} at {relay} did not answer"))),
        }
    }

    /// Keeps a relay link to an anchor as [`LinkMachine`] decides: dials
    /// it, redials with backoff when it drops or goes silent, asks the
    /// anchor again for conferences it refuses, and gives the link up once
    /// no conference has used it for `federation.link_linger`. A first dial
    /// that fails gives up (the SETUP that asked gets 502).
    #[allow(clippy::disallowed_methods)] // the shell reads the clock for the machine
    async fn keep_link(
        self: Arc<Self>,
        keeper: Keeper,
        mut refusals: mpsc::UnboundedReceiver<Refusal>,
        first: oneshot::Sender<Result<(), String>>,
    ) {
        let Keeper { link, domain, relay, users } = keeper;
        // Channels the peer attached count too: its conferences ride a link
        // this SFT dialled, so it stays while they do.
        let carried = self.carried(&domain);
        let mut first = Some(first);
        let mut machine = LinkMachine::new(self.link_linger);
        let mut connection: Option<(quinn::Connection, tokio::task::JoinHandle<()>)> = None;
        // The refusal behind each channel's rejoin, and the rejoins' answers.
        let mut refused: HashMap<u32, Refusal> = HashMap::new();
        let (rejoined_tx, mut rejoined) = mpsc::unbounded_channel::<(u32, Result<String, FederationError>)>();
        let mut heard = 0;
        let mut ticks = tokio::time::interval(LINK_CHECK);
        loop {
            while let Some(action) = machine.poll_action() {
                match action {
                    LinkAction::Dial { .. } if self.borrowable(&domain).is_some() => {
                        // The peer dialled us (it anchors conferences here):
                        // its connection carries our channels too.
                        let live = self.borrowable(&domain).expect("checked");
                        tracing::info!(peer = %domain, %link, "relay link rides the connection the peer dialled");
                        machine.handle_dialled(Instant::now(), Ok(()));
                        if let Some(first) = first.take() {
                            let _ = first.send(Ok(()));
                        }
                        heard = live.stats().udp_rx.datagrams;
                        let closed = live.clone();
                        connection = Some((
                            live,
                            tokio::spawn(async move {
                                closed.closed().await;
                            }),
                        ));
                    }
                    LinkAction::Dial { timeout } => {
                        self.metrics.link_state(&domain, "connecting");
                        let credentials = self.credentials.current();
                        let dial = relay::dial(&self.endpoint, &credentials.trust, &domain, &relay);
                        let dialled = tokio::time::timeout(timeout, dial)
                            .await
                            .unwrap_or_else(|_| Err(format!("relay {relay}: no answer within {timeout:?}")));
                        drop(credentials);
                        match dialled {
                            Ok((live, send, recv)) => {
                                machine.handle_dialled(Instant::now(), Ok(()));
                                if let Some(first) = first.take() {
                                    let _ = first.send(Ok(()));
                                }
                                heard = live.stats().udp_rx.datagrams;
                                let run = relay::run_link(
                                    self.clone(),
                                    link,
                                    domain.clone(),
                                    live.clone(),
                                    send,
                                    recv,
                                    false,
                                );
                                connection = Some((live, tokio::spawn(run)));
                            }
                            Err(why) => {
                                if first.is_none() {
                                    let failures = machine.failures() + 1;
                                    tracing::info!(peer = %domain, failures, "relay redial failed: {why}");
                                }
                                machine.handle_dialled(Instant::now(), Err(why));
                            }
                        }
                    }
                    LinkAction::Close => {
                        if let Some((live, _)) = &connection {
                            tracing::info!(peer = %domain, %link, "relay link silent for {SILENCE_LIMIT:?}: dialling anew");
                            live.close(0u32.into(), b"silent");
                        }
                    }
                    LinkAction::Rejoin { channel } => {
                        let Some(refusal) = refused.get(&channel) else { continue };
                        tracing::info!(peer = %domain, channel, conf = refusal.conf_id, "asking the anchor again for the conference");
                        let (federation, answers) = (self.clone(), rejoined_tx.clone());
                        let (anchor, conf_id) = (domain.clone(), refusal.conf_id.clone());
                        tokio::spawn(async move {
                            let answer = federation.join(&anchor, &conf_id).await.map(|answer| answer.relay_token);
                            let _ = answers.send((channel, answer));
                        });
                    }
                    LinkAction::Abandon { channel } => {
                        if let Some(refusal) = refused.remove(&channel) {
                            self.edge.abandon(refusal.worker, link, channel).await;
                        }
                    }
                    LinkAction::GiveUp(reason) => {
                        self.metrics.link_state(&domain, "down");
                        match reason {
                            GiveUpReason::FirstDialFailed(why) => {
                                if let Some(first) = first.take() {
                                    let _ = first.send(Err(why));
                                }
                            }
                            // Its conferences lose the link; a later SETUP dials anew.
                            GiveUpReason::Disallowed => {
                                tracing::info!(peer = %domain, "not redialling: the domain is no longer allowed")
                            }
                            GiveUpReason::Unneeded => {
                                tracing::info!(peer = %domain, %link, "relay link closed: no conference uses it")
                            }
                        }
                        if let Some((live, _)) = connection {
                            live.close(0u32.into(), b"link given up");
                        }
                        return;
                    }
                }
            }
            let wake = machine.poll_timeout();
            tokio::select! {
                _ = async { (&mut connection.as_mut().expect("checked").1).await }, if connection.is_some() => {
                    connection = None;
                    machine.handle_closed(Instant::now());
                }
                Some(refusal) = refusals.recv() => {
                    let channel = refusal.channel;
                    refused.insert(channel, refusal);
                    machine.handle_refused(Instant::now(), channel);
                }
                Some((channel, answer)) = rejoined.recv() => match (answer, refused.get(&channel)) {
                    (Ok(token), Some(refusal)) => self.edge.reattach(refusal.worker, link, channel, token).await,
                    (Err(why), _) => {
                        tracing::info!(peer = %domain, channel, "asking the anchor again failed: {why}");
                        machine.handle_refused(Instant::now(), channel);
                    }
                    (Ok(_), None) => {}
                },
                _ = ticks.tick() => {}
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => {}
            }
            let now = Instant::now();
            if let Some((live, _)) = &connection {
                let received = live.stats().udp_rx.datagrams;
                if received != heard {
                    heard = received;
                    machine.handle_heard(now);
                }
            }
            // Under the map's lock, so that no SETUP takes a lease on a link
            // being given up (`anchor_link` leases under the same lock).
            let mut outbound = self.outbound.lock().expect("links lock");
            machine.handle_in_use(now, users.count() > 0 || carried.load(Ordering::Acquire) > 0);
            machine.handle_timeout(now, self.allows(&domain));
            if machine.gave_up() && outbound.get(&domain).is_some_and(|o| o.link == link) {
                outbound.remove(&domain);
            }
        }
    }

    async fn accept_links(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let federation = self.clone();
            tokio::spawn(async move {
                let credentials = federation.credentials.current();
                match relay::accept(incoming, &credentials.trust).await {
                    Ok((domain, connection, send, recv)) => {
                        let link = federation.link_id(&domain);
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
                    Admission::Reply(Control::Refused { channel, reason: "bad relay token".into() })
                }
            }
            Control::Hello { .. } => Admission::Drop,
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

/// The client of the control plane's RPCs, with `credentials`' certificate.
fn control_client(domain: &str, config: &FederationConfig, credentials: &Credentials) -> ControlClient {
    ControlClient {
        own_domain: domain.to_owned(),
        tls: credentials.control_client.clone(),
        discovery: Arc::new(Discovery::new(config.peers.clone(), config.dns, config.dns_timeout)),
        via_federator: config.via_federator.clone(),
    }
}
