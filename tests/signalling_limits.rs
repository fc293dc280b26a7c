//! Quotas on signalling (issue 13): per-source rate limits on SETUP and
//! DELETE, caps on sessions that never connect, sessions per token, and
//! DELETE only by the session's own user when tokens are on. Sources are
//! told apart by binding clients to different loopback addresses.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{setup_body, wait_for, Peer, PeerOptions, Signalling, TestSft};
use serde_json::Value;

const SECRET: &str = "s3cret";

/// An HTTP client whose requests come from `127.0.0.<n>`.
fn client_from(n: u8) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))).build().unwrap()
}

/// A real offer that nobody will ever connect with.
async fn ghost_offer() -> String {
    let peer = Peer::offer_only(PeerOptions::new("ghosts", "ghost", 9)).await;
    peer.pc.local_description().await.unwrap().sdp
}

/// Status, `error` code (if any) and `Retry-After` (if any) of a response.
async fn outcome(response: reqwest::Response) -> (u16, Option<String>, Option<String>) {
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap_or_default();
    (status, body["error"].as_str().map(str::to_owned), retry_after)
}

async fn setup(
    http: &reqwest::Client,
    sft: &TestSft,
    conf: &str,
    body: &Value,
    auth: Option<&str>,
) -> reqwest::Response {
    let mut request = http.post(sft.url(&format!("/sft/{conf}"))).json(body);
    if let Some(auth) = auth {
        request = request.header("authorization", format!("Bearer {auth}"));
    }
    request.send().await.unwrap()
}

async fn delete(http: &reqwest::Client, sft: &TestSft, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut request = http.delete(sft.url(path));
    if let Some(auth) = auth {
        request = request.header("authorization", format!("Bearer {auth}"));
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_and_delete_are_rate_limited_per_source_address() {
    let sft = TestSft::start("[limits]\nsignalling_rate = 1\nsignalling_burst = 3\n").await;
    let (two, three) = (client_from(2), client_from(3));
    let junk = serde_json::json!({"type": "SETUP"});
    for _ in 0..3 {
        assert_eq!(outcome(setup(&two, &sft, "room", &junk, None).await).await.0, 400, "within the burst");
    }
    let (status, code, retry_after) = outcome(setup(&two, &sft, "room", &junk, None).await).await;
    assert_eq!((status, code.as_deref(), retry_after.as_deref()), (429, Some("rate-limited"), Some("1")));
    let (status, code, _) = outcome(delete(&two, &sft, "/sft/room/someone", None).await).await;
    assert_eq!((status, code.as_deref()), (429, Some("rate-limited")), "DELETE shares the bucket");
    // Another address has a bucket of its own.
    assert_eq!(outcome(setup(&three, &sft, "room", &junk, None).await).await.0, 400);
    assert_eq!(outcome(delete(&three, &sft, "/sft/room/someone", None).await).await.0, 404);
    assert!(sft.metric("sft_sessions_rejected_total{reason=\"rate-limited\"}").await >= 1.0);
    // One token comes back a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(outcome(setup(&two, &sft, "room", &junk, None).await).await.0, 400);
    assert_eq!(outcome(setup(&two, &sft, "room", &junk, None).await).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_that_never_connect_are_capped_per_source_and_in_all_and_expire() {
    let config = "[media]\nidle_timeout = 2\n\
                  [limits]\nmax_pending_sessions_per_source = 2\nmax_pending_sessions = 4\n";
    let sft = TestSft::start(config).await;
    let offer = ghost_offer().await;
    let ghost = |n: usize| setup_body(&format!("ghost-session-{n}"), &format!("ghost{n}"), &offer);
    let (two, three, four, five) = (client_from(2), client_from(3), client_from(4), client_from(5));
    assert_eq!(outcome(setup(&two, &sft, "room", &ghost(1), None).await).await.0, 200);
    assert_eq!(outcome(setup(&two, &sft, "room", &ghost(2), None).await).await.0, 200);
    let (status, code, retry_after) = outcome(setup(&two, &sft, "room", &ghost(3), None).await).await;
    assert_eq!((status, code.as_deref()), (429, Some("rate-limited")), "a third ghost from one address");
    assert!(retry_after.is_some());
    assert_eq!(outcome(setup(&three, &sft, "room", &ghost(4), None).await).await.0, 200);

    // A real client still gets in, and once connected counts no more.
    let alice = Peer::join(&sft, PeerOptions::new("room", "alice", 1)).await;
    wait_for("alice connected", || alice.participants().len() == 4).await;
    assert_eq!(outcome(setup(&four, &sft, "room", &ghost(5), None).await).await.0, 200);
    let (status, code, _) = outcome(setup(&five, &sft, "room", &ghost(6), None).await).await;
    assert_eq!((status, code.as_deref()), (503, Some("unavailable")), "four ghosts in all");

    // Ghosts send nothing: they end after the idle timeout, and make room.
    wait_for("the ghosts gone", || alice.participants().len() == 1).await;
    assert_eq!(outcome(setup(&two, &sft, "room", &ghost(7), None).await).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_holds_few_sessions_and_only_its_user_ends_them() {
    let sft =
        TestSft::start(&format!("[signalling]\nauth_secret = \"{SECRET}\"\n[limits]\nmax_sessions_per_token = 1\n"))
            .await;
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let alice = sft::signalling::sign_token(SECRET, "room", "alice", expiry);
    let bob = sft::signalling::sign_token(SECRET, "room", "bob", expiry);
    let offer = ghost_offer().await;
    let http = reqwest::Client::new();
    let first = setup(&http, &sft, "room", &setup_body("alice-session-1", "alice", &offer), Some(&alice)).await;
    assert_eq!(outcome(first).await.0, 200);
    let second = setup(&http, &sft, "room", &setup_body("alice-session-2", "alice", &offer), Some(&alice)).await;
    let (status, code, _) = outcome(second).await;
    assert_eq!((status, code.as_deref()), (429, Some("rate-limited")), "one session per token");

    let path = "/sft/room/alice-session-1";
    let (status, code, _) = outcome(delete(&http, &sft, path, None).await).await;
    assert_eq!((status, code.as_deref()), (401, Some("unauthorized")), "the sessid alone ends nothing");
    let (status, code, _) = outcome(delete(&http, &sft, path, Some(&bob)).await).await;
    assert_eq!((status, code.as_deref()), (401, Some("unauthorized")), "bob's token is not alice's");
    assert_eq!(delete(&http, &sft, path, Some(&alice)).await.status(), 204);
    assert_eq!(delete(&http, &sft, path, Some(&alice)).await.status(), 404);
    // Her token is free again.
    let again = setup(&http, &sft, "room", &setup_body("alice-session-3", "alice", &offer), Some(&alice)).await;
    assert_eq!(outcome(again).await.0, 200);

    // A session outlives its token: the expired token still ends it.
    let soon = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 2;
    let short = sft::signalling::sign_token(SECRET, "room", "alice", soon);
    let brief = setup(&http, &sft, "room", &setup_body("alice-session-4", "alice", &offer), Some(&short)).await;
    assert_eq!(outcome(brief).await.0, 200, "another token, another quota");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(delete(&http, &sft, "/sft/room/alice-session-4", Some(&short)).await.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_can_require_long_sessids() {
    let sft = TestSft::start("[limits]\nmin_sessid_chars = 16\n").await;
    let http = client_from(2);
    let body = |sessid: &str, sdp: &str| {
        serde_json::json!({"version": "3.0", "type": "SETUP", "sessid": sessid, "src_userid": "alice",
            "src_clientid": "c1", "props": {"type": "offer", "sdp": sdp}})
    };
    let offer = ghost_offer().await;
    let (status, code, _) = outcome(setup(&http, &sft, "room", &body("short", &offer), None).await).await;
    assert_eq!((status, code.as_deref()), (400, Some("bad-request")));
    let long = "0123456789abcdef";
    assert_eq!(outcome(setup(&http, &sft, "room", &body(long, &offer), None).await).await.0, 200);
}
