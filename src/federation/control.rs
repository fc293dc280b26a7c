//! The federation control plane (`docs/contract.md` section 5.1): HTTPS with mutual TLS,
//! `POST /federation/sft/<rpc>`, `Wire-Origin-Domain` checked against the
//! client certificate; and the client side of the same RPCs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::net::TcpListener;

use super::credentials::SharedCredentials;
use super::discovery::{Discovery, DiscoveryError};
use super::trust::Rejection;
use crate::core::ids::{canonical_domain, ConfId};
use crate::drain::Drain;
use crate::http::{self, Guard, PeerCertificate, Transport};
use crate::metrics::Metrics;

pub const ORIGIN_HEADER: &str = "Wire-Origin-Domain";
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub conf_id: String,
    pub node_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub relay: String,
    pub relay_token: String,
}

/// Relay tokens: HMAC of the peer domain and conference, so the relay can
/// check an attach without shared state.
///
/// The HMAC key is derived from this SFT's federation private key: a
/// restarted process, and every replica of the domain that holds the same
/// key, accept the tokens any of them issued, so a federated SFT can
/// re-attach its conferences after the anchor restarts. Issuing a new key
/// retires the old tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    secret: [u8; 32],
}

impl Tokens {
    /// Tokens keyed by `private_key` (DER), under a label of their own so
    /// the hash reveals nothing usable elsewhere.
    pub fn derived_from(private_key: &[u8]) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"sft relay token key v1\0");
        hash.update(private_key);
        Self { secret: hash.finalize().into() }
    }

    pub fn issue(&self, peer_domain: &str, conf_id: &str) -> String {
        hex::encode(self.mac(peer_domain, conf_id).finalize().into_bytes())
    }

    pub fn check(&self, peer_domain: &str, conf_id: &str, token: &str) -> bool {
        let Ok(token) = hex::decode(token) else { return false };
        self.mac(peer_domain, conf_id).verify_slice(&token).is_ok()
    }

    fn mac(&self, peer_domain: &str, conf_id: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(peer_domain.as_bytes());
        mac.update(b"|");
        mac.update(conf_id.as_bytes());
        mac
    }
}

pub struct ControlServer {
    pub credentials: SharedCredentials,
    pub relay_public: String,
    pub metrics: Arc<Metrics>,
    /// While it drains, this SFT takes no new federated participants.
    pub drain: Arc<Drain>,
}

struct ControlError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({"error": self.code, "message": self.message}))).into_response()
    }
}

/// Serves the RPCs on `listener` (mutual TLS with the credentials of each
/// connection's moment); refused handshakes are counted by reason.
pub async fn serve(listener: TcpListener, state: Arc<ControlServer>, guard: Guard) {
    let router = Router::new().route("/federation/sft/{rpc}", post(rpc)).with_state(state.clone());
    let credentials = state.credentials.clone();
    let transport = Transport::Tls(Arc::new(move || credentials.current().control_server.clone()));
    let metrics = state.metrics.clone();
    let refused = move |e: &std::io::Error| {
        let rejection = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map_or(Rejection::BadCertificate, super::trust::rejection_of_tls_error);
        metrics.federation_rejected(rejection.label());
        tracing::info!("federation TLS handshake refused: {e}");
    };
    http::serve(listener, router, transport, guard, Arc::new(refused)).await;
}

async fn rpc(
    State(state): State<Arc<ControlServer>>,
    Extension(PeerCertificate(certificate)): Extension<PeerCertificate>,
    Path(rpc): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ControlError> {
    let origin = canonical_domain(headers.get(ORIGIN_HEADER).and_then(|v| v.to_str().ok()).unwrap_or(""));
    let credentials = state.credentials.current();
    if let Err(rejection) = credentials.trust.admit(certificate.as_ref(), &origin) {
        state.metrics.federation_rejected(rejection.label());
        tracing::info!(origin, reason = rejection.label(), "federation request refused");
        return Err(ControlError {
            status: StatusCode::FORBIDDEN,
            code: "federation-denied",
            message: format!("{origin:?} is not allowed here ({})", rejection.label()),
        });
    }
    let bad = |message: String| ControlError { status: StatusCode::BAD_REQUEST, code: "bad-request", message };
    match rpc.as_str() {
        "api-version" => Ok(Json(serde_json::json!({"versions": [1]}))),
        "join" | "leave" => {
            let request: JoinRequest =
                serde_json::from_slice(&body).map_err(|e| bad(format!("invalid {rpc} body: {e}")))?;
            let conf_id = ConfId::parse(&request.conf_id).map_err(|e| bad(e.to_string()))?;
            if rpc == "leave" {
                // The link's Detach does the work; leave only acknowledges.
                return Ok(Json(serde_json::json!({})));
            }
            if state.drain.is_draining() {
                state.metrics.federation_rejected(Rejection::Draining.label());
                return Err(ControlError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "unavailable",
                    message: "this SFT is draining".into(),
                });
            }
            let relay_token = credentials.issue_token(&origin, conf_id.as_str());
            Ok(Json(
                serde_json::to_value(JoinAnswer { relay: state.relay_public.clone(), relay_token })
                    .expect("serializes"),
            ))
        }
        _ => Err(ControlError { status: StatusCode::NOT_FOUND, code: "not-found", message: format!("no rpc {rpc:?}") }),
    }
}

#[derive(Debug, Error)]
pub enum RpcError {
    #[error("{0}")]
    Discovery(#[from] DiscoveryError),
    #[error("{domain} refused federation: {message}")]
    Denied { domain: String, message: String },
    #[error("{domain}'s certificate is not for {domain}")]
    PeerCertificate { domain: String },
    #[error("{domain}'s SFT is draining")]
    Draining { domain: String },
    #[error("{domain} did not answer: {why}")]
    Unreachable { domain: String, why: String },
}

/// Outbound RPCs, directly over mutual TLS or through a Wire federator.
pub struct ControlClient {
    pub own_domain: String,
    pub tls: rustls::ClientConfig,
    pub discovery: Arc<Discovery>,
    pub via_federator: Option<String>,
}

impl ControlClient {
    pub async fn join(&self, domain: &str, conf_id: &str, node_id: &str) -> Result<JoinAnswer, RpcError> {
        let body = serde_json::to_value(JoinRequest { conf_id: conf_id.to_owned(), node_id: node_id.to_owned() })
            .expect("serializes");
        let answer = self.call(domain, "join", body).await?;
        serde_json::from_value(answer)
            .map_err(|e| RpcError::Unreachable { domain: domain.to_owned(), why: format!("bad join answer: {e}") })
    }

    pub async fn call(&self, domain: &str, rpc: &str, body: serde_json::Value) -> Result<serde_json::Value, RpcError> {
        let unreachable = |why: String| RpcError::Unreachable { domain: domain.to_owned(), why };
        let (client, url) = match &self.via_federator {
            Some(federator) => {
                let client =
                    reqwest::Client::builder().timeout(RPC_TIMEOUT).use_preconfigured_tls(self.tls.clone()).build();
                (client, format!("{federator}/rpc/{domain}/sft/{rpc}"))
            }
            None => {
                let addrs: Vec<SocketAddr> = self.discovery.control_plane(domain).await?;
                let port = addrs[0].port();
                let client = reqwest::Client::builder()
                    .timeout(RPC_TIMEOUT)
                    .use_preconfigured_tls(self.tls.clone())
                    .resolve_to_addrs(domain, &addrs)
                    .build();
                (client, format!("https://{domain}:{port}/federation/sft/{rpc}"))
            }
        };
        let client = client.map_err(|e| unreachable(e.to_string()))?;
        let response =
            client.post(url).header(ORIGIN_HEADER, &self.own_domain).json(&body).send().await.map_err(|e| {
                if is_name_mismatch(&e) {
                    RpcError::PeerCertificate { domain: domain.to_owned() }
                } else {
                    unreachable(error_chain(&e))
                }
            })?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.map_err(|e| unreachable(e.to_string()))?;
        if status == StatusCode::FORBIDDEN {
            let message = answer["message"].as_str().unwrap_or("").to_owned();
            return Err(RpcError::Denied { domain: domain.to_owned(), message });
        }
        if status == StatusCode::SERVICE_UNAVAILABLE && answer["error"] == "unavailable" {
            return Err(RpcError::Draining { domain: domain.to_owned() });
        }
        if !status.is_success() {
            return Err(unreachable(format!("{rpc} answered {status}: {answer}")));
        }
        Ok(answer)
    }
}

/// Whether a request failed because the peer's certificate is for another
/// name. The HTTP client's error layers hide rustls' typed error behind
/// boxed I/O errors, so this reads rustls' message for `NotValidForName`.
fn is_name_mismatch(error: &(dyn std::error::Error + 'static)) -> bool {
    error_chain(error).contains("not valid for name")
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_peer_and_conference() {
        let tokens = Tokens::derived_from(b"key one");
        let token = tokens.issue("b.example", "room");
        assert!(tokens.check("b.example", "room", &token));
        assert!(!tokens.check("c.example", "room", &token));
        assert!(!tokens.check("b.example", "other", &token));
        assert!(!tokens.check("b.example", "room", "zz"));
        assert!(Tokens::derived_from(b"key one").check("b.example", "room", &token), "a restart, same key");
        assert!(!Tokens::derived_from(b"key two").check("b.example", "room", &token), "another key");
    }
}
