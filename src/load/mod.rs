//! `sft-load`: synthetic WebRTC participants (webrtc-rs, a second stack
//! independent of the server's) that join conferences through `docs/contract.md`,
//! publish tagged media and measure what comes back. Built with the `load`
//! feature; the integration tests use the same peers.

pub mod impair;
pub mod peer;
pub mod report;
pub mod rtc;
pub mod run;
pub mod stats;
pub mod synthetic;
pub mod usage;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("invalid load plan: {0}")]
    Plan(String),
    #[error("{0} could not join: {1}")]
    Join(String, String),
    #[error("WebRTC: {0}")]
    WebRtc(#[from] webrtc::Error),
}
