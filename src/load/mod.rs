//! `sft-load`: synthetic WebRTC participants (webrtc-rs, a second stack
//! independent of the server's) that join conferences through `docs/contract.md`,
//! publish tagged media and measure what comes back. Built with the `load`
//! feature; the integration tests use the same peers.

pub mod impair;
pub mod light_peer;
pub mod peer;
pub mod report;
pub mod rtc;
pub mod run;
pub mod stats;
pub mod synthetic;
pub mod usage;

use thiserror::Error;

/// An error with every cause under it, `: `-separated: reqwest's own
/// message ("error sending request for url") names no cause, its sources
/// do ("Connection refused").
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("invalid load plan: {0}")]
    Plan(String),
    #[error("{0} could not join: {1}")]
    Join(String, String),
    #[error("WebRTC: {0}")]
    WebRtc(#[from] webrtc::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_http_error_names_its_cause() {
        // A port nobody listens on: bound, then closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let error = reqwest::get(format!("http://{addr}/")).await.unwrap_err();
        let text = with_causes(&error);
        assert!(text.contains("error sending request"), "{text}");
        assert!(text.to_lowercase().contains("refused"), "the cause is named: {text}");
    }
}
