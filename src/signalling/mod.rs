//! Client signalling (`docs/contract.md` section 3): SETUP and leave over HTTP, CORS,
//! the optional bearer token, and the demo page.
#![allow(clippy::disallowed_methods)] // the shell reads the clock: join latency, token expiry

mod auth;
mod body;
mod cors;
mod demo;
mod error;
mod rate_limit;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::core::ids::{canonical_domain, ConfId, ConferenceKey, Identity};
use crate::drain::Drain;
use crate::edge::{offer, EdgeHandle, JoinRequest, LeaveOutcome, Owner};
use crate::federation::{Federation, Rejection};
use crate::metrics::Metrics;

pub use auth::sign as sign_token;
pub use error::ApiError;
pub use rate_limit::RateLimiter;

/// The longest `sessid` the contract allows.
pub const MAX_SESSID_CHARS: usize = 64;
const MAX_ID_CHARS: usize = 256;

pub struct Signalling {
    pub domain: String,
    pub edge: EdgeHandle,
    pub auth_secret: Option<String>,
    pub allow_origin: Option<Vec<String>>,
    pub metrics: Arc<Metrics>,
    pub drain: Arc<Drain>,
    /// `None` while federation is off.
    pub federation: Option<Arc<Federation>>,
    /// SETUP and DELETE requests per source address.
    pub rate_limit: Mutex<RateLimiter>,
    /// Whether loopback sources are spared the per-source limits.
    pub exempt_loopback: bool,
    /// The shortest `sessid` a SETUP may name (`limits.min_sessid_chars`).
    pub min_sessid_chars: usize,
}

impl Signalling {
    /// Who `peer` counts as for the per-source limits: `None` (no limits)
    /// for a loopback caller with `limits.exempt_loopback` (a reverse proxy
    /// on this host that speaks for everyone).
    fn source_of(&self, peer: SocketAddr) -> Option<IpAddr> {
        // Loopback is judged on the whole address: `::1`'s /64 is not loopback.
        let ip = peer.ip().to_canonical();
        (!self.exempt_loopback || !ip.is_loopback()).then(|| rate_limit::source_key(ip))
    }

    /// Takes one of `peer`'s requests from its source's bucket.
    fn admit(&self, peer: SocketAddr) -> Result<(), ApiError> {
        let Some(source) = self.source_of(peer) else { return Ok(()) };
        let mut limiter = self.rate_limit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        limiter.check(Instant::now(), source).map_err(ApiError::RateLimited)
    }

    /// With `auth_secret`, the `Authorization` header's token, checked
    /// against the conference and the userid (and its expiry when
    /// `unexpired`); returns it in its canonical spelling.
    fn authorize(
        &self,
        headers: &HeaderMap,
        conf_id: &str,
        userid: &str,
        unexpired: bool,
    ) -> Result<Option<String>, ApiError> {
        let Some(secret) = &self.auth_secret else { return Ok(None) };
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let now = unexpired.then(unix_now);
        let token = auth::verify(secret, authorization, conf_id, userid, now)
            .map_err(|e| ApiError::Unauthorized(e.message()))?;
        Ok(Some(token))
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn router(state: Arc<Signalling>) -> Router {
    let cors_state = state.clone();
    let body_state = state.clone();
    Router::new()
        .route("/", get(demo::page))
        .route("/sft/{conf_id}", post(setup))
        .route("/sft/{conf_id}/{sessid}", delete(leave))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(move |request, next| body::read_whole(body_state.clone(), request, next)))
        .layer(axum::middleware::from_fn(move |request, next| cors::handle(cors_state.clone(), request, next)))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct SetupRequest {
    #[serde(rename = "type")]
    kind: String,
    sessid: String,
    src_userid: String,
    src_clientid: String,
    props: SetupProps,
    anchor: Option<Anchor>,
}

#[derive(Debug, Deserialize)]
struct SetupProps {
    #[serde(rename = "type")]
    kind: String,
    sdp: String,
}

#[derive(Debug, Deserialize)]
struct Anchor {
    domain: String,
}

async fn setup(
    State(state): State<Arc<Signalling>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(conf_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let joined = match state.admit(peer) {
        Ok(()) => join(&state, peer, &conf_id, &headers, &body).await,
        Err(error) => Err(error),
    };
    match joined {
        Ok(answer) => {
            state.metrics.join_duration.observe(started.elapsed().as_secs_f64());
            Json(answer).into_response()
        }
        Err(error) => {
            if let Some(reason) = error.reject_reason() {
                state.metrics.rejected(reason);
            }
            // A flood must not become a flood of log lines: refusals for
            // quotas are counted, and logged at debug only.
            if matches!(error, ApiError::RateLimited(_) | ApiError::OverQuota(_)) {
                tracing::debug!(conf = %conf_id, "SETUP rejected: {error}");
            } else {
                tracing::info!(conf = %conf_id, "SETUP rejected: {error}");
            }
            error.into_response()
        }
    }
}

async fn join(
    state: &Signalling,
    peer: SocketAddr,
    conf_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    let conf_id = ConfId::parse(conf_id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let setup = parse_setup(body, state.min_sessid_chars)?;
    if state.drain.is_draining() {
        return Err(ApiError::Unavailable("this SFT is draining"));
    }
    let token = state.authorize(headers, conf_id.as_str(), &setup.src_userid, true)?;
    // Parsed here, not on the media thread, so garbage costs no session a packet.
    let (offer, summary) =
        offer::parse(&setup.props.sdp).map_err(|e| ApiError::BadRequest(format!("SDP offer: {e}")))?;
    let anchor_domain = setup.anchor.as_ref().map(|anchor| canonical_domain(&anchor.domain));
    let (anchor_domain, anchor_link) = match anchor_domain {
        Some(anchor) if anchor != state.domain => {
            let Some(federation) = &state.federation else {
                state.metrics.federation_rejected(Rejection::FederationDisabled.label());
                return Err(ApiError::FederationDenied(format!(
                    "federation is off on this SFT; cannot join a conference anchored at {anchor:?}"
                )));
            };
            let link = federation.anchor_link(&anchor, conf_id.as_str()).await?;
            (anchor, Some(link))
        }
        _ => (state.domain.clone(), None),
    };
    let conference = ConferenceKey { anchor_domain: anchor_domain.clone(), conf_id: conf_id.clone() };
    let identity = Identity { userid: setup.src_userid, clientid: setup.src_clientid, domain: state.domain.clone() };
    // The token is kept for the sessions-per-token quota.
    let owner = Owner { source: state.source_of(peer), token };
    let sessid = setup.sessid.clone();
    let request = JoinRequest { conference, sessid, identity, offer, summary, anchor_link, owner };
    let answer_sdp = state.edge.join(request).await?;
    Ok(serde_json::json!({
        "version": "3.0",
        "type": "SETUP",
        "sessid": setup.sessid,
        "resp": true,
        "conf_id": conf_id.as_str(),
        "anchor_domain": anchor_domain,
        "props": { "type": "answer", "sdp": answer_sdp },
    }))
}

/// A SETUP body, read and checked.
fn parse_setup(body: &[u8], min_sessid_chars: usize) -> Result<SetupRequest, ApiError> {
    let setup: SetupRequest =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid SETUP JSON: {e}")))?;
    check_setup(&setup, min_sessid_chars)?;
    Ok(setup)
}

fn check_setup(setup: &SetupRequest, min_sessid_chars: usize) -> Result<(), ApiError> {
    let bad = |why: String| Err(ApiError::BadRequest(why));
    if setup.kind != "SETUP" {
        return bad(format!("type must be \"SETUP\", not {:?}", setup.kind));
    }
    if setup.props.kind != "offer" {
        return bad(format!("props.type must be \"offer\", not {:?}", setup.props.kind));
    }
    let sessid_chars = setup.sessid.chars().count();
    let shortest = min_sessid_chars.max(1);
    if sessid_chars < shortest || sessid_chars > MAX_SESSID_CHARS {
        return bad(format!("sessid must be {shortest} to {MAX_SESSID_CHARS} characters"));
    }
    for (field, value) in [("src_userid", &setup.src_userid), ("src_clientid", &setup.src_clientid)] {
        if value.is_empty() || value.chars().count() > MAX_ID_CHARS {
            return bad(format!("{field} must be 1 to {MAX_ID_CHARS} characters"));
        }
    }
    Ok(())
}

/// Whether `path` is a SETUP's, `/sft/{conf_id}` (for counting rejections).
fn is_setup_path(path: &str) -> bool {
    path.strip_prefix("/sft/").is_some_and(|conf_id| !conf_id.is_empty() && !conf_id.contains('/'))
}

/// Ends a session. With `auth_secret`, only with a token for the
/// conference and the session's own user.
async fn leave(
    State(state): State<Arc<Signalling>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((conf_id, sessid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    state.admit(peer)?;
    let conf_id = ConfId::parse(&conf_id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if state.auth_secret.is_some() && !headers.contains_key(header::AUTHORIZATION) {
        return Err(ApiError::Unauthorized("missing Authorization: Bearer token"));
    }
    let checker = state.clone();
    let conf = conf_id.as_str().to_owned();
    // A session outlives the token it was set up with: ending it needs the
    // user's token, expired or not.
    let check = Arc::new(move |userid: &str| checker.authorize(&headers, &conf, userid, false).is_ok());
    match state.edge.leave(conf_id, sessid, check).await {
        LeaveOutcome::Left => Ok(StatusCode::NO_CONTENT),
        LeaveOutcome::NoSuchSession => Err(ApiError::NotFound("no such session in this conference".into())),
        LeaveOutcome::NotYours => Err(ApiError::Unauthorized("the token is not for this session's user")),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mutated SETUP bodies: a checked request or a 400, never a panic.
    #[test]
    fn fuzzed_setup_bodies_are_read_or_refused() {
        let sample = serde_json::json!({
            "version": "3.0", "type": "SETUP", "sessid": "s1", "src_userid": "alice", "src_clientid": "c1",
            "props": {"type": "offer", "sdp": "v=0\r\n"}, "anchor": {"domain": "a.example", "url": "https://a"}
        })
        .to_string();
        let mut read = 0;
        crate::fuzz::run(3, &[sample.as_bytes()], |body| match parse_setup(body, 1) {
            Ok(setup) => {
                read += 1;
                assert!((1..=MAX_SESSID_CHARS).contains(&setup.sessid.chars().count()));
            }
            Err(error) => assert!(matches!(error, ApiError::BadRequest(_)), "{error}"),
        });
        assert!(read > 0, "some mutations stay valid");
    }

    #[test]
    fn a_sessid_below_the_configured_minimum_is_refused() {
        let setup = |sessid: &str| {
            serde_json::json!({
                "version": "3.0", "type": "SETUP", "sessid": sessid, "src_userid": "alice", "src_clientid": "c1",
                "props": {"type": "offer", "sdp": "v=0\r\n"}
            })
            .to_string()
        };
        assert!(parse_setup(setup("s1").as_bytes(), 1).is_ok(), "the contract's default allows short ids");
        let refused = parse_setup(setup("s1").as_bytes(), 16).map(|_| ()).unwrap_err();
        assert!(refused.to_string().contains("16 to 64"), "{refused}");
        assert!(parse_setup(setup("0123456789abcdef").as_bytes(), 16).is_ok());
    }
}
