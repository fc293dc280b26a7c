//! The media edge: one UDP socket, one str0m `Rtc` per client, and the
//! conference core between them, driven by a single task.
//!
//! Signalling talks to it through [`EdgeHandle`]; nothing else touches the
//! sessions, so no locks are needed on the packet path.

mod client;
mod driver;
pub mod offer;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::core::ids::{ConferenceKey, Identity};
use crate::metrics::Metrics;

pub use driver::EdgeStats;

/// A client asking to join a conference with its SDP offer.
#[derive(Debug)]
pub struct JoinRequest {
    pub conference: ConferenceKey,
    pub sessid: String,
    pub identity: Identity,
    pub offer_sdp: String,
}

#[derive(Debug, Error)]
pub enum JoinError {
    #[error("{0}")]
    BadOffer(String),
    #[error("session {0:?} already exists in this conference")]
    SessionExists(String),
    #[error("{0}")]
    AtCapacity(&'static str),
    #[error("the media edge has stopped")]
    Stopped,
}

enum Command {
    Join { request: JoinRequest, reply: oneshot::Sender<Result<String, JoinError>> },
    Leave { conference: ConferenceKey, sessid: String, reply: oneshot::Sender<bool> },
    Stats { reply: oneshot::Sender<EdgeStats> },
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
        self.commands.send(Command::Join { request, reply }).await.map_err(|_| JoinError::Stopped)?;
        answer.await.map_err(|_| JoinError::Stopped)?
    }

    /// Ends a session; false if there was none.
    pub async fn leave(&self, conference: ConferenceKey, sessid: String) -> bool {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Leave { conference, sessid, reply }).await.is_err() {
            return false;
        }
        done.await.unwrap_or(false)
    }

    pub async fn stats(&self) -> Option<EdgeStats> {
        let (reply, stats) = oneshot::channel();
        self.commands.send(Command::Stats { reply }).await.ok()?;
        stats.await.ok()
    }
}

/// Binds the media socket and starts the edge task. Returns its handle and
/// the bound address.
pub fn start(config: &Config, metrics: Arc<Metrics>) -> std::io::Result<(EdgeHandle, SocketAddr)> {
    let socket = udp::MediaSocket::bind(config.media.listen)?;
    let bound = socket.local_addr()?;
    let mut public_addr = config.media.public_addr;
    if public_addr.port() == 0 {
        public_addr.set_port(bound.port());
    }
    let (commands, receiver) = mpsc::channel(256);
    let driver = driver::Driver::new(socket, public_addr, config, metrics);
    tokio::spawn(driver.run(receiver));
    Ok((EdgeHandle { commands }, bound))
}
