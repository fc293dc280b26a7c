//! Hostile and broken input gets `docs/contract.md`'s error, or is dropped and
//! counted, and never disturbs a call that is running.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{setup_body, wait_for, Peer, PeerOptions, Signalling, TestSft};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::UdpSocket;

const SECRET: &str = "s3cret";

fn token(conf: &str, user: &str, expiry: u64) -> String {
    format!("Bearer {}", sft::signalling::sign_token(SECRET, conf, user, expiry))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Sends `body` as a SETUP and checks status and error code.
async fn expect_error(sft: &TestSft, conf: &str, body: reqwest::Body, auth: Option<&str>, status: u16, code: &str) {
    let mut request = reqwest::Client::new()
        .post(sft.url(&format!("/sft/{conf}")))
        .header("content-type", "application/json")
        .body(body);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), status, "{code}");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], code, "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
}

/// Joins a peer with a valid token.
async fn join_with_token(sft: &TestSft, options: PeerOptions) -> Peer {
    let authorization = token(&options.conf, &options.userid, unix_now() + 600);
    Peer::join_authorized(sft, options, Some(authorization)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_signalling_and_garbage_datagrams_leave_the_call_untouched() {
    let sft = TestSft::start(&format!("[signalling]\nauth_secret = \"{SECRET}\"\n")).await;
    let alice = join_with_token(&sft, PeerOptions::new("calm", "alice", 1)).await;
    let bob = join_with_token(&sft, PeerOptions::new("calm", "bob", 2)).await;
    wait_for("a running call", || alice.participants().len() == 2 && bob.participants().len() == 2).await;
    let alice_audio = alice.slot_mid_of("bob", "audio").unwrap();
    wait_for("media flowing", || alice.slot_stats(&alice_audio).packets > 10).await;

    let valid_offer =
        Peer::offer_only(PeerOptions::new("calm", "mallory", 9)).await.pc.local_description().await.unwrap().sdp;
    let good_auth = token("calm", "mallory", unix_now() + 600);
    let body = |sdp: &str| setup_body("mallory-1", "mallory", sdp).to_string();

    expect_error(&sft, "calm", "{not json".into(), Some(&good_auth), 400, "bad-request").await;
    expect_error(&sft, "calm", json!({"type": "SETUP"}).to_string().into(), Some(&good_auth), 400, "bad-request").await;
    let mut no_sessid = setup_body("x", "mallory", &valid_offer);
    no_sessid.as_object_mut().unwrap().remove("sessid");
    expect_error(&sft, "calm", no_sessid.to_string().into(), Some(&good_auth), 400, "bad-request").await;
    expect_error(&sft, "bad%20id", body(&valid_offer).into(), Some(&good_auth), 400, "bad-request").await;
    expect_error(&sft, &"x".repeat(129), body(&valid_offer).into(), Some(&good_auth), 400, "bad-request").await;
    expect_error(&sft, "calm", vec![b' '; 64 * 1024 + 1].into(), Some(&good_auth), 413, "too-large").await;
    expect_error(&sft, "calm", body("v=0\r\nthis is not sdp").into(), Some(&good_auth), 400, "bad-request").await;
    expect_error(&sft, "calm", body("\u{0}\u{1}garbage").into(), Some(&good_auth), 400, "bad-request").await;
    let unbundled: String =
        valid_offer.lines().filter(|l| !l.starts_with("a=group:BUNDLE")).map(|l| format!("{l}\r\n")).collect();
    expect_error(&sft, "calm", body(&unbundled).into(), Some(&good_auth), 400, "bad-request").await;
    let duplicate = setup_body(&alice.sessid, "alice", &valid_offer).to_string();
    expect_error(
        &sft,
        "calm",
        duplicate.into(),
        Some(&token("calm", "alice", unix_now() + 600)),
        409,
        "session-exists",
    )
    .await;
    expect_error(&sft, "calm", body(&valid_offer).into(), None, 401, "unauthorized").await;
    expect_error(
        &sft,
        "calm",
        body(&valid_offer).into(),
        Some(&token("calm", "mallory", unix_now() - 1)),
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        &sft,
        "calm",
        body(&valid_offer).into(),
        Some(&token("other-conf", "mallory", unix_now() + 600)),
        401,
        "unauthorized",
    )
    .await;
    expect_error(&sft, "calm", body(&valid_offer).into(), Some("Bearer 99999999999.deadbeef"), 401, "unauthorized")
        .await;
    let foreign = json!({"version": "3.0", "type": "SETUP", "sessid": "m2", "src_userid": "mallory", "src_clientid": "c",
        "props": {"type": "offer", "sdp": valid_offer}, "anchor": {"domain": "elsewhere.example", "url": "https://x"}});
    expect_error(&sft, "calm", foreign.to_string().into(), Some(&good_auth), 403, "federation-denied").await;

    // Garbage at the media port: random bytes and truncated STUN, DTLS, RTP and RTCP.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let media = sft.server.media_addr;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut junk: Vec<Vec<u8>> = vec![
        vec![0x00, 0x01, 0x00, 0x50, 0x21, 0x12, 0xa4, 0x42], // STUN header, cut short
        vec![0x16, 0xfe, 0xfd, 0x00],                         // DTLS record, cut short
        vec![0x80, 0x6f, 0x00],                               // RTP, cut short
        vec![0x80, 0xc8, 0x00, 0x06],                         // RTCP SR, cut short
        vec![],
    ];
    for _ in 0..500 {
        let len = rng.gen_range(1..1400);
        junk.push((0..len).map(|_| rng.gen()).collect());
    }
    for datagram in &junk {
        socket.send_to(datagram, media).await.unwrap();
    }
    // A STUN binding request for a session that does not exist.
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7u8; 12]);
    socket.send_to(&stun, media).await.unwrap();

    let before =
        (alice.slot_stats(&alice_audio).packets, bob.slot_stats(&bob.slot_mid_of("alice", "audio").unwrap()).packets);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after =
        (alice.slot_stats(&alice_audio).packets, bob.slot_stats(&bob.slot_mid_of("alice", "audio").unwrap()).packets);
    assert!(after.0 > before.0 + 10 && after.1 > before.1 + 10, "the call goes on: {before:?} -> {after:?}");
    assert_eq!(alice.participants(), vec!["alice".to_string(), "bob".to_string()]);
    assert_eq!(sft.metric("sft_participants{role=\"local\"}").await, 2.0);
    assert!(sft.metric("sft_sessions_rejected_total{reason=\"bad-request\"}").await >= 7.0);
    assert!(sft.metric("sft_sessions_rejected_total{reason=\"unauthorized\"}").await >= 4.0);
    assert_eq!(sft.metric("sft_sessions_rejected_total{reason=\"too-large\"}").await, 1.0);
    assert_eq!(sft.metric("sft_sessions_rejected_total{reason=\"session-exists\"}").await, 1.0);
    let dropped = sft.metric("sft_media_dropped_total{reason=\"malformed\"}").await
        + sft.metric("sft_media_dropped_total{reason=\"unknown-source\"}").await;
    assert!(dropped >= 400.0, "garbage is counted: {dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_unknown_paths() {
    let sft = TestSft::start("[signalling]\nallow_origin = [\"https://app.example\"]\n").await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, sft.url("/sft/room"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, authorization")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example");
    assert!(allowed.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(allowed.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    let denied = preflight("https://evil.example").await.unwrap();
    assert!(!denied.headers().contains_key("access-control-allow-origin"));

    let response =
        http.post(sft.url("/sft/room")).header("origin", "https://app.example").body("{").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["access-control-allow-origin"], "https://app.example");

    let missing = http.get(sft.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "not-found");
    let unknown_session = http.delete(sft.url("/sft/room/nobody")).send().await.unwrap();
    assert_eq!(unknown_session.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_limits_answer_503() {
    let sft = TestSft::start("[limits]\nmax_participants = 10\nmax_conference_size = 1\n").await;
    let http = reqwest::Client::new();
    let first = Peer::offer_only(PeerOptions::new("small", "one", 1)).await;
    let offer = first.pc.local_description().await.unwrap().sdp;
    let joined = http.post(sft.url("/sft/small")).json(&setup_body(&first.sessid, "one", &offer)).send().await.unwrap();
    assert_eq!(joined.status(), 200);
    let second = http.post(sft.url("/sft/small")).json(&setup_body("two", "two", &offer)).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert!(second.headers().contains_key("retry-after"));
    assert_eq!(second.json::<Value>().await.unwrap()["error"], "unavailable");
    // Another conference still has room.
    let other = http.post(sft.url("/sft/other")).json(&setup_body("three", "three", &offer)).send().await.unwrap();
    assert_eq!(other.status(), 200);
}
