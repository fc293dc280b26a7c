//! The media edge: one UDP socket, one str0m `Rtc` per client, and the
//! conference core between them, driven by a single task on its own thread.
//!
//! Signalling talks to it through [`EdgeHandle`]; nothing else touches the
//! sessions, so no locks are needed on the packet path.

mod answer;
mod client;
mod driver;
mod estimate;
mod links;
pub mod offer;
mod sources;
mod stun;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use str0m::change::SdpOffer;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::core::ids::{ConfId, ConferenceKey, Identity, LinkId};
use crate::metrics::Metrics;
use crate::wire::Control;

pub use driver::EdgeStats;
use offer::OfferSummary;

/// A client asking to join a conference with its SDP offer.
#[derive(Debug)]
pub struct JoinRequest {
    pub conference: ConferenceKey,
    pub sessid: String,
    pub identity: Identity,
    /// The client's offer, parsed and checked by [`offer::parse`].
    pub offer: SdpOffer,
    pub summary: OfferSummary,
    /// For a conference anchored elsewhere: the relay link to its anchor and
    /// the token that attaches the conference to it.
    pub anchor_link: Option<(LinkId, String)>,
    pub owner: Owner,
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
pub type LeaveCheck = Box<dyn FnOnce(&str) -> bool + Send>;

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
}

/// The signalling side's handle on the media edge.
#[derive(Clone)]
pub struct EdgeHandle {
    commands: mpsc::Sender<Command>,
}

impl EdgeHandle {
    /// Joins a client; returns the SDP answer.
    pub async fn join(&self, request: JoinRequest) -> Result<String, JoinError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Join { request: Box::new(request), reply })
            .await
            .map_err(|_| JoinError::Stopped)?;
        answer.await.map_err(|_| JoinError::Stopped)?
    }

    /// Ends a session if `check` allows it for the session's userid.
    pub async fn leave(&self, conf_id: ConfId, sessid: String, check: LeaveCheck) -> LeaveOutcome {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Leave { conf_id, sessid, check, reply }).await.is_err() {
            return LeaveOutcome::NoSuchSession;
        }
        done.await.unwrap_or(LeaveOutcome::NoSuchSession)
    }

    pub(crate) async fn link_up(
        &self,
        link: LinkId,
        peer_domain: String,
        connection: quinn::Connection,
        control: mpsc::Sender<Control>,
    ) {
        let _ = self.commands.send(Command::LinkUp { link, peer_domain, connection, control }).await;
    }

    pub(crate) async fn link_down(&self, link: LinkId, connection: usize) {
        let _ = self.commands.send(Command::LinkDown { link, connection }).await;
    }

    pub(crate) async fn relay_datagram(&self, link: LinkId, datagram: bytes::Bytes) {
        let _ = self.commands.send(Command::RelayDatagram { link, datagram }).await;
    }

    pub(crate) async fn relay_control(&self, link: LinkId, message: Control) {
        let _ = self.commands.send(Command::RelayControl { link, message }).await;
    }

    /// From now on, a relay attach of a conference this SFT does not have is
    /// refused (`draining`).
    pub async fn drain(&self) {
        let _ = self.commands.send(Command::Drain).await;
    }

    /// Whether the media thread still runs. It ends only when the process
    /// ends, or when it panicked: then media is gone for good.
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Resolves once the media thread has stopped.
    pub async fn stopped(&self) {
        self.commands.closed().await;
    }

    /// Relay attaches may start conferences again (a drain was cancelled).
    pub async fn resume(&self) {
        let _ = self.commands.send(Command::Resume).await;
    }

    pub async fn stats(&self) -> Option<EdgeStats> {
        let (reply, stats) = oneshot::channel();
        self.commands.send(Command::Stats { reply }).await.ok()?;
        stats.await.ok()
    }
}

/// The name of the thread the edge runs on.
const MEDIA_THREAD: &str = "sft-media";

/// Binds the media socket and starts the edge on a thread of its own.
/// Returns its handle and the bound address.
///
/// The packet path is one task on a single-threaded runtime: nothing else
/// (TLS handshakes, HTTP, federation control) queues in front of a packet,
/// and its CPU shows as one named thread (`top -H`). It stops once every
/// [`EdgeHandle`] is gone.
pub fn start(config: &Config, metrics: Arc<Metrics>) -> std::io::Result<(EdgeHandle, SocketAddr)> {
    let std_socket = std::net::UdpSocket::bind(config.media.listen)?;
    let bound = std_socket.local_addr()?;
    let mut public_addr = config.media.public_addr;
    if public_addr.port() == 0 {
        public_addr.set_port(bound.port());
    }
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
    let driver = driver::Driver::new(socket, public_addr, host_candidate, config, metrics);
    std::thread::Builder::new().name(MEDIA_THREAD.into()).spawn(move || runtime.block_on(driver.run(receiver)))?;
    Ok((EdgeHandle { commands }, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_media_thread_is_seen_as_stopped() {
        let listen = ["SFT_SIGNALLING__LISTEN", "SFT_MEDIA__LISTEN", "SFT_METRICS__LISTEN"]
            .map(|key| (key.to_string(), "\"127.0.0.1:0\"".to_string()));
        let config = Config::load(None, listen).unwrap();
        let (edge, _) = start(&config, Arc::new(Metrics::new())).unwrap();
        assert!(edge.is_running());
        assert!(edge.stats().await.is_some());
        edge.commands.send(Command::InjectPanic).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), edge.stopped()).await.expect("seen within 10 s");
        assert!(!edge.is_running());
        assert!(edge.stats().await.is_none());
    }
}
