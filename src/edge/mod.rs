//! The media edge: media workers, each a thread with one UDP socket, one
//! str0m `Rtc` per client and the conference cores between them.
//!
//! A conference lives on one worker ([`placement`]); signalling and the
//! relay reach it through [`EdgeHandle`] and [`LinkRouter`]. Nothing else
//! touches a worker's sessions, so no locks are needed on the packet path.

mod answer;
mod client;
mod driver;
mod estimate;
mod links;
pub mod offer;
mod placement;
mod quotas;
mod relay_routes;
mod sources;
mod stun;
pub mod udp;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;

use str0m::change::SdpOffer;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::core::ids::{ConfId, ConferenceKey, Identity, LinkId};
use crate::metrics::Metrics;
use crate::wire::Control;

pub use driver::EdgeStats;
pub use links::{LinkLease, LinkUsers, Refusal};
use offer::OfferSummary;
use placement::{Placement, Reservation};
use quotas::{Admission, Quotas};
pub use relay_routes::{LinkRouter, Workers};
use relay_routes::{RouteSender, RouteUpdate};

/// A client asking to join a conference with its SDP offer.
#[derive(Debug)]
pub struct JoinRequest {
    pub conference: ConferenceKey,
    pub sessid: String,
    pub identity: Identity,
    /// The client's offer, parsed and checked by [`offer::parse`].
    pub offer: SdpOffer,
    pub summary: OfferSummary,
    /// For a conference anchored elsewhere: the relay link to its anchor.
    pub anchor_link: Option<AnchorLink>,
    pub owner: Owner,
}

/// The relay link a federated conference travels on to its anchor, the
/// token that attaches the conference to it, and the conference's hold on
/// the link (kept if this SETUP creates the conference).
#[derive(Debug)]
pub struct AnchorLink {
    pub link: LinkId,
    pub token: String,
    pub lease: LinkLease,
}

/// Who set a session up, for the quotas on sessions not connected yet
/// and on sessions per token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The client's address, IPv6 reduced to its /64; `None` when it is
    /// exempt from per-source limits.
    pub source: Option<IpAddr>,
    /// The bearer token of the SETUP, with `signalling.auth_secret`.
    pub token: Option<String>,
}

/// How a leave request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveOutcome {
    Left,
    NoSuchSession,
    /// The session is someone else's.
    NotYours,
}

/// Decides, from the session's userid, whether a leave request may end it.
pub type LeaveCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Debug, Error)]
pub enum JoinError {
    #[error("{0}")]
    BadOffer(String),
    #[error("session {0:?} already exists in this conference")]
    SessionExists(String),
    #[error("{0}")]
    AtCapacity(&'static str),
    /// A quota of the caller's (its source address, its token) is used up.
    #[error("{0}")]
    OverQuota(&'static str),
    #[error("the media edge has stopped")]
    Stopped,
}

enum Command {
    Join {
        // Boxed: a parsed offer is large, and every other command is small.
        request: Box<JoinRequest>,
        admission: Admission,
        reservation: Reservation,
        reply: oneshot::Sender<Result<String, JoinError>>,
    },
    Leave {
        conf_id: ConfId,
        sessid: String,
        check: LeaveCheck,
        reply: oneshot::Sender<LeaveOutcome>,
    },
    Stats {
        reply: oneshot::Sender<EdgeStats>,
    },
    /// The SFT drains: relay attaches may no longer start conferences.
    Drain,
    /// The drain was cancelled.
    Resume,
    /// Tests of supervision: the media thread panics.
    #[cfg(test)]
    InjectPanic,
    LinkUp {
        link: LinkId,
        peer_domain: String,
        connection: quinn::Connection,
        control: mpsc::Sender<Control>,
        routes: RouteSender,
    },
    /// `connection` is the ended connection's `stable_id`: a link already
    /// replaced by a newer connection stays up.
    LinkDown {
        link: LinkId,
        connection: usize,
    },
    RelayDatagram {
        link: LinkId,
        datagram: bytes::Bytes,
    },
    RelayControl {
        link: LinkId,
        message: Control,
    },
    /// Attach the federated conference on `channel` again with a fresh token.
    Reattach {
        link: LinkId,
        channel: u32,
        token: String,
    },
    /// The anchor keeps refusing the federated conference on `channel`: its
    /// participants there leave this conference.
    Abandon {
        link: LinkId,
        channel: u32,
    },
    /// A peer's `attach` of conference `key` as `channel`, placed on this worker.
    RelayAttach {
        link: LinkId,
        channel: u32,
        key: ConferenceKey,
        reservation: Reservation,
    },
}

/// The handle on the media edge: it finds the worker of each request.
#[derive(Clone)]
pub struct EdgeHandle {
    workers: Arc<[mpsc::Sender<Command>]>,
    placement: Arc<Placement>,
    quotas: Arc<Quotas>,
    /// This SFT's domain: the anchor of the conferences peers attach.
    domain: String,
    /// Conferences one relay link may carry (`federation.max_conferences_per_link`).
    max_conferences_per_link: usize,
    /// Each worker's bound media address.
    addrs: Arc<[SocketAddr]>,
}

impl EdgeHandle {
    /// Joins a client on its conference's worker; returns the SDP answer.
    ///
    /// The quota place and the placement travel with the command: if it
    /// never reaches the worker (the caller gave up, the worker stopped),
    /// dropping them gives both back.
    pub async fn join(&self, request: JoinRequest) -> Result<String, JoinError> {
        let admission = self.quotas.admit(&request.owner)?;
        let reservation = self.placement.reserve(&request.conference);
        let worker = reservation.worker();
        let (reply, answer) = oneshot::channel();
        let join = Command::Join { request: Box::new(request), admission, reservation, reply };
        self.workers[worker].send(join).await.map_err(|_| JoinError::Stopped)?;
        answer.await.unwrap_or(Err(JoinError::Stopped))
    }

    /// Ends a session if `check` allows it for the session's userid. Two
    /// conferences of one name (anchored at different domains) may live on
    /// different workers, each with the `sessid`: every one is asked.
    pub async fn leave(&self, conf_id: ConfId, sessid: String, check: LeaveCheck) -> LeaveOutcome {
        let mut outcome = LeaveOutcome::NoSuchSession;
        for worker in self.placement.workers_of(&conf_id) {
            let (reply, done) = oneshot::channel();
            let leave =
                Command::Leave { conf_id: conf_id.clone(), sessid: sessid.clone(), check: check.clone(), reply };
            if self.workers[worker].send(leave).await.is_err() {
                continue;
            }
            match done.await.unwrap_or(LeaveOutcome::NoSuchSession) {
                LeaveOutcome::Left => return LeaveOutcome::Left,
                LeaveOutcome::NotYours => outcome = LeaveOutcome::NotYours,
                LeaveOutcome::NoSuchSession => {}
            }
        }
        outcome
    }

    /// A relay link is up: every worker may send on it, and the returned
    /// router hands what the peer sends to the right worker. `halves`: the
    /// link speaks `sft-relay/2`, where each side names its own half of the
    /// channels.
    pub(crate) async fn link_up(
        &self,
        link: LinkId,
        peer_domain: String,
        connection: quinn::Connection,
        control: mpsc::Sender<Control>,
        halves: bool,
    ) -> LinkRouter {
        let (routes, updates) = mpsc::unbounded_channel::<RouteUpdate>();
        for worker in self.workers.iter() {
            let up = Command::LinkUp {
                link,
                peer_domain: peer_domain.clone(),
                connection: connection.clone(),
                control: control.clone(),
                routes: routes.clone(),
            };
            let _ = worker.send(up).await;
        }
        let router = relay_routes::RouterConfig {
            domain: self.domain.clone(),
            max_conferences: self.max_conferences_per_link,
            halves_with: halves.then_some(peer_domain),
            workers: self.workers.clone(),
            placement: self.placement.clone(),
        };
        LinkRouter::new(link, router, updates)
    }

    /// Attaches the federated conference on `worker`'s `channel` again,
    /// with the fresh `token` a new `join` brought.
    pub(crate) async fn reattach(&self, worker: usize, link: LinkId, channel: u32, token: String) {
        if let Some(worker) = self.workers.get(worker) {
            let _ = worker.send(Command::Reattach { link, channel, token }).await;
        }
    }

    /// Gives up the federated conference on `worker`'s `channel`.
    pub(crate) async fn abandon(&self, worker: usize, link: LinkId, channel: u32) {
        if let Some(worker) = self.workers.get(worker) {
            let _ = worker.send(Command::Abandon { link, channel }).await;
        }
    }

    pub(crate) async fn link_down(&self, link: LinkId, connection: usize) {
        self.broadcast(|| Command::LinkDown { link, connection }).await;
    }

    /// From now on, a relay attach of a conference this SFT does not have is
    /// refused (`draining`).
    pub async fn drain(&self) {
        self.broadcast(|| Command::Drain).await;
    }

    /// Relay attaches may start conferences again (a drain was cancelled).
    pub async fn resume(&self) {
        self.broadcast(|| Command::Resume).await;
    }

    /// Whether every media worker still runs. One ends only when the
    /// process ends, or when it panicked: then its media is gone for good.
    pub fn is_running(&self) -> bool {
        self.workers.iter().all(|w| !w.is_closed())
    }

    /// Resolves once any media worker has stopped.
    pub async fn stopped(&self) {
        let mut closed: Vec<_> = self.workers.iter().map(|w| Box::pin(w.closed())).collect();
        std::future::poll_fn(|cx| {
            if closed.iter_mut().any(|c| c.as_mut().poll(cx).is_ready()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// What every worker holds, summed; `None` once one has stopped.
    pub async fn stats(&self) -> Option<EdgeStats> {
        let mut total = EdgeStats::default();
        for worker in self.workers.iter() {
            let (reply, stats) = oneshot::channel();
            worker.send(Command::Stats { reply }).await.ok()?;
            let stats = stats.await.ok()?;
            total.participants += stats.participants;
            total.remote_participants += stats.remote_participants;
            total.conferences += stats.conferences;
        }
        Some(total)
    }

    /// The media address of each worker, worker 0 first.
    pub fn media_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    async fn broadcast(&self, command: impl Fn() -> Command) {
        for worker in self.workers.iter() {
            let _ = worker.send(command()).await;
        }
    }
}

/// The name of the media worker threads (with `-N` for worker N).
const MEDIA_THREAD: &str = "sft-media";

/// Binds every worker's media socket and starts each worker on a thread of
/// its own. Returns the edge's handle.
///
/// A worker's packet path is one task on a single-threaded runtime: nothing
/// else (TLS handshakes, HTTP, federation control) queues in front of a
/// packet, and its CPU shows as one named thread (`sft-media-N` in
/// `top -H`). A worker stops once every [`EdgeHandle`] is gone.
pub fn start(config: &Config, metrics: Arc<Metrics>) -> std::io::Result<EdgeHandle> {
    let count = config.media.workers;
    let placement = Arc::new(Placement::new(count));
    let quotas = Arc::new(Quotas::new(config.limits));
    let (mut workers, mut addrs) = (Vec::with_capacity(count), Vec::with_capacity(count));
    // Bind every socket before starting any worker: a port in use fails the start cleanly.
    let mut sockets = Vec::with_capacity(count);
    for index in 0..count {
        let mut listen = config.media.listen;
        if listen.port() != 0 {
            listen.set_port(listen.port() + index as u16);
        }
        let socket = std::net::UdpSocket::bind(listen).map_err(|e| {
            std::io::Error::new(e.kind(), format!("media worker {index} on {listen}: {e} (see media.workers)"))
        })?;
        addrs.push(socket.local_addr()?);
        sockets.push(socket);
    }
    for (index, std_socket) in sockets.into_iter().enumerate() {
        let mut public_addr = config.media.public_addr;
        public_addr.set_port(if public_addr.port() == 0 {
            addrs[index].port()
        } else {
            public_addr.port() + index as u16
        });
        // Every answer names this candidate; a bad address is the operator's to fix, at start.
        let host_candidate = str0m::Candidate::host(public_addr, "udp").map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("media address {public_addr}: {e}"))
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let socket = {
            let _entered = runtime.enter();
            udp::MediaSocket::from_std(std_socket)?
        };
        let (commands, receiver) = mpsc::channel(4096);
        let shared = driver::Shared {
            index,
            workers: count,
            placement: placement.clone(),
            quotas: quotas.clone(),
            metrics: metrics.clone(),
        };
        let driver = driver::Driver::new(socket, public_addr, host_candidate, config, shared);
        std::thread::Builder::new()
            .name(format!("{MEDIA_THREAD}-{index}"))
            .spawn(move || runtime.block_on(driver.run(receiver)))?;
        workers.push(commands);
    }
    Ok(EdgeHandle {
        workers: workers.into(),
        placement,
        quotas,
        domain: config.domain.clone(),
        max_conferences_per_link: config.federation.as_ref().map_or(usize::MAX, |f| f.max_conferences_per_link),
        addrs: addrs.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_media_thread_is_seen_as_stopped() {
        let listen = ["SFT_SIGNALLING__LISTEN", "SFT_MEDIA__LISTEN", "SFT_METRICS__LISTEN"]
            .map(|key| (key.to_string(), "\"127.0.0.1:0\"".to_string()));
        let config = Config::load(None, listen).unwrap();
        let edge = start(&config, Arc::new(Metrics::new())).unwrap();
        assert!(edge.is_running());
        assert!(edge.stats().await.is_some());
        edge.workers[edge.workers.len() - 1].send(Command::InjectPanic).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), edge.stopped()).await.expect("seen within 10 s");
        assert!(!edge.is_running());
        assert!(edge.stats().await.is_none());
    }
}
