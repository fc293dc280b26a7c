//! Federation across restarts and concurrent joins: SFTs as child processes
//! killed with SIGKILL and started again on the same ports, webrtc-rs peers
//! that stay in the call throughout.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::time::Duration;

use common::fed::{fixed_ports_toml, free_udp_port, on, peers_at, Certs};
use common::process::SftProcess;
use common::{wait_for_within, Peer, PeerOptions, TestSft, Video};
use sft::load::impair::{ImpairedPath, Impairment};

/// Issue 12: a restarted peer's participants reach everyone who stayed
/// within this long, without anyone rejoining.
const RECOVERY: Duration = Duration::from_secs(10);

/// `viewer` hears `marker`'s audio and decodes video from `userid`: its
/// slot of `userid` gets a keyframe and frames after it.
async fn sees_and_hears(viewer: &Peer, userid: &str, marker: u8, within: Duration) {
    let who = format!("{} to hear {userid}", viewer.options.userid);
    let heard = viewer.heard(marker);
    wait_for_within(&who, within, || viewer.heard(marker) > heard + 10).await;
    let who = format!("{} to decode {userid}'s video", viewer.options.userid);
    let mut start: Option<(String, usize, u64)> = None;
    wait_for_within(&who, within, || {
        let Some(mid) = viewer.slot_mid_of(userid, "video") else { return false };
        let stats = viewer.slot_stats(&mid);
        let (_, keyframes, packets) =
            start.get_or_insert_with(|| (mid.clone(), stats.keyframe_widths.len(), stats.packets));
        stats.keyframe_widths.len() > *keyframes && stats.packets > *packets + 20
    })
    .await;
}

fn names(mut names: Vec<&str>) -> Vec<String> {
    names.sort();
    names.into_iter().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_anchor_restarts_the_federated_sfts_clients_see_its_new_participant_without_rejoining() {
    let _one = common::one_big_call_at_a_time().await;
    let certs = Certs::new(&["a.example", "b.example"]);
    let (a_toml, a_control) = fixed_ports_toml(&certs, "a.example", "127.0.0.1", "");
    let mut a = SftProcess::start(&a_toml, "127.0.0.1").await;
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &peers_at("a.example", &a_control))).await;
    let a1 = Peer::join(&a, on("a.example", "phoenix", "a1", 1)).await;
    let b1 = Peer::join(&b, on("b.example", "phoenix", "b1", 2)).await;
    let b2 = Peer::join(&b, on("b.example", "phoenix", "b2", 3)).await;
    for viewer in [&b1, &b2] {
        sees_and_hears(viewer, "a1", 1, common::TIMEOUT).await;
    }

    // The anchor crashes and comes back; its client joins it again, b's stay.
    a.restart().await;
    drop(a1);
    let a3 = Peer::join(&a, on("a.example", "phoenix", "a3", 4)).await;
    for viewer in [&b1, &b2] {
        sees_and_hears(viewer, "a3", 4, RECOVERY).await;
    }
    sees_and_hears(&a3, "b1", 2, RECOVERY).await;
    sees_and_hears(&a3, "b2", 3, RECOVERY).await;
    let everyone = names(vec!["a3", "b1", "b2"]);
    wait_for_within("a1 to leave and a3 to appear everywhere", RECOVERY, || {
        [&a3, &b1, &b2].iter().all(|p| p.participants() == everyone)
    })
    .await;
    assert_eq!(b.metric("sft_join_duration_seconds_count").await, 2.0, "b's clients never rejoined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_anchor_restarts_with_another_token_key_the_federated_sft_asks_again_and_recovers() {
    let _one = common::one_big_call_at_a_time().await;
    let certs = Certs::new(&["a.example", "b.example"]);
    let secret = |s: char| format!("relay_secret = \"{}\"\n", s.to_string().repeat(32));
    let (a_toml, a_control) = fixed_ports_toml(&certs, "a.example", "127.0.0.1", &secret('x'));
    let mut a = SftProcess::start(&a_toml, "127.0.0.1").await;
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &peers_at("a.example", &a_control))).await;
    let a1 = Peer::join(&a, on("a.example", "phoenix", "a1", 1)).await;
    let b1 = Peer::join(&b, on("b.example", "phoenix", "b1", 2)).await;
    sees_and_hears(&b1, "a1", 1, common::TIMEOUT).await;

    // The anchor comes back keying its tokens with another secret (a
    // replica with its own, a rotated one): b's re-attach is refused, and b
    // asks it again (`join`) for a fresh token instead of giving the call up.
    a.rewrite_config(&a_toml.replace(&secret('x'), &secret('y')));
    a.restart().await;
    drop(a1);
    let a3 = Peer::join(&a, on("a.example", "phoenix", "a3", 4)).await;
    sees_and_hears(&b1, "a3", 4, RECOVERY).await;
    sees_and_hears(&a3, "b1", 2, RECOVERY).await;
    assert!(a.metric("sft_federation_rejected_total{reason=\"bad-token\"}").await >= 1.0, "the old token was refused");
    assert_eq!(b.metric("sft_join_duration_seconds_count").await, 1.0, "b's client never rejoined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_federated_sft_restarts_the_anchors_clients_see_its_new_participant() {
    let _one = common::one_big_call_at_a_time().await;
    let certs = Certs::new(&["a.example", "b.example"]);
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", "")).await;
    let a_control = a.server.federation.as_ref().unwrap().control.to_string();
    let b_toml = certs.federation_toml("b.example", "127.0.0.2", &peers_at("a.example", &a_control));
    let mut b = SftProcess::start(&b_toml, "127.0.0.2").await;
    let a1 = Peer::join(&a, on("a.example", "phoenix", "a1", 1)).await;
    let a2 = Peer::join(&a, on("a.example", "phoenix", "a2", 2)).await;
    let b1 = Peer::join(&b, on("b.example", "phoenix", "b1", 3)).await;
    for viewer in [&a1, &a2] {
        sees_and_hears(viewer, "b1", 3, common::TIMEOUT).await;
    }

    // b crashes and comes back at once (before the anchor notices the old
    // connection is dead); its client joins it again, a's stay.
    b.restart().await;
    drop(b1);
    let b3 = Peer::join(&b, on("b.example", "phoenix", "b3", 4)).await;
    for viewer in [&a1, &a2] {
        sees_and_hears(viewer, "b3", 4, RECOVERY).await;
    }
    sees_and_hears(&b3, "a1", 1, RECOVERY).await;
    let everyone = names(vec!["a1", "a2", "b3"]);
    wait_for_within("b1 to leave and b3 to appear everywhere", RECOVERY, || {
        [&a1, &a2, &b3].iter().all(|p| p.participants() == everyone)
    })
    .await;
    assert_eq!(a.metric("sft_participants{role=\"remote\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_first_joins_share_one_relay_connection() {
    let _one = common::one_big_call_at_a_time().await;
    let certs = Certs::new(&["a.example", "b.example"]);
    // a's relay answers 150 ms late (a proxy in front of it), so a dial
    // takes long enough for every SETUP to find no link yet.
    let relay_port = free_udp_port();
    let slow = Impairment { delay: Duration::from_millis(150), ..Impairment::default() };
    let proxy = ImpairedPath::start(format!("127.0.0.1:{relay_port}").parse().unwrap(), slow).await.unwrap();
    let a_toml = certs
        .federation_toml("a.example", "127.0.0.1", &format!("relay_public = \"{}\"\n", proxy.addr))
        .replace("relay_listen = \"127.0.0.1:0\"", &format!("relay_listen = \"127.0.0.1:{relay_port}\""));
    let a = TestSft::start(&a_toml).await;
    let a_control = a.server.federation.as_ref().unwrap().control.to_string();
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &peers_at("a.example", &a_control))).await;
    let _a1 = Peer::join(&a, PeerOptions { video: Video::None, ..on("a.example", "rush", "a1", 1) }).await;

    // Ten listeners (audio only, to spare the CPU) SETUP on b at once.
    let listener = |n: u8| PeerOptions {
        video: Video::None,
        audio: false,
        audio_slots: 1,
        video_slots: 0,
        ..on("b.example", "rush", &format!("b{n}"), 10 + n)
    };
    // Offers first, so that the ten SETUPs really go out together.
    let offers = futures_util::future::join_all((0..10).map(|n| Peer::offer_only(listener(n)))).await;
    let answers = futures_util::future::join_all(offers.iter().map(|peer| peer.post_setup(&b, None))).await;
    let mut listeners = Vec::new();
    for (peer, (status, answer)) in offers.into_iter().zip(answers) {
        assert_eq!(status, 200, "{answer}");
        listeners.push(peer.accept_answer(answer["props"]["sdp"].as_str().unwrap().to_owned()).await);
    }
    for peer in &listeners {
        wait_for_within(&format!("{} to hear a1", peer.options.userid), common::TIMEOUT, || peer.heard(1) > 10).await;
    }
    // Media stays steady for 10 s: audio is 50 packets a second.
    let before: Vec<usize> = listeners.iter().map(|p| p.heard(1)).collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (peer, before) in listeners.iter().zip(before) {
        let heard = peer.heard(1) - before;
        assert!(heard > 400, "{} heard {heard} of a1's ~500 packets in 10 s", peer.options.userid);
    }
    let outbound = "sft_federation_connections_total{direction=\"out\",peer_domain=\"a.example\"}";
    let inbound = "sft_federation_connections_total{direction=\"in\",peer_domain=\"b.example\"}";
    assert_eq!(b.metric(outbound).await, 1.0, "b dialled once");
    assert_eq!(a.metric(inbound).await, 1.0, "a accepted one connection");
    assert_eq!(a.metric("sft_participants{role=\"remote\"}").await, 10.0);
}
