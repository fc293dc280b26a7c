//! Federation: three SFTs (domains a, b, c) on loopback with certificates
//! the test makes, webrtc-rs peers on each, the anchor relaying between them.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use common::fed::{fixed_ports_toml, free_udp_port, on, peers_at, peers_table, Certs};
use common::ivf::width_of;
use common::process::SftProcess;
use common::{wait_for, Peer, PeerOptions, Signalling, TestSft, Video};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_peers_on_three_sfts_see_and_hear_each_other() {
    five_peers_on_three_sfts("all").await;
}

/// The anchor subscribes b and c to what the other one watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_peers_on_three_sfts_relaying_on_demand_see_and_hear_each_other() {
    five_peers_on_three_sfts("demand").await;
}

async fn five_peers_on_three_sfts(relay: &str) {
    let _one = common::one_big_call_at_a_time().await;
    let certs = Certs::new(&["a.example", "b.example", "c.example"]);
    let relay = format!("relay = \"{relay}\"\n");
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", &relay)).await;
    let to_a = format!("{relay}{}", peers_table(&[("a.example", &a)]));
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &to_a)).await;
    let c = TestSft::start(&certs.federation_toml("c.example", "127.0.0.3", &to_a)).await;

    let a1 = Peer::join(&a, on("a.example", "fed", "a1", 1)).await;
    let a2 = Peer::join(&a, on("a.example", "fed", "a2", 2)).await;
    let b1 = Peer::join(&b, on("b.example", "fed", "b1", 3)).await;
    let b2 = Peer::join(&b, on("b.example", "fed", "b2", 4)).await;
    let c1 = Peer::join(&c, on("c.example", "fed", "c1", 5)).await;
    let everyone = [&a1, &a2, &b1, &b2, &c1];
    let all_names: Vec<String> = {
        let mut n: Vec<String> = everyone.iter().map(|p| p.options.userid.clone()).collect();
        n.sort();
        n
    };
    for peer in everyone {
        wait_for(&format!("{} to see all five", peer.options.userid), || {
            peer.participants() == all_names && peer.video_slots().len() == 4
        })
        .await;
    }
    // CONFPART lists the same participants, with their domains, everywhere.
    let reference = a1.confpart().unwrap()["participants"].clone();
    for peer in everyone {
        assert_eq!(peer.confpart().unwrap()["participants"], reference, "{}", peer.options.userid);
    }
    let domains: Vec<&str> = reference.as_array().unwrap().iter().map(|p| p["domain"].as_str().unwrap()).collect();
    assert_eq!(domains, vec!["a.example", "a.example", "b.example", "b.example", "c.example"]);

    // Every peer hears and sees every other peer.
    for peer in everyone {
        for other in everyone.iter().filter(|o| o.options.userid != peer.options.userid) {
            let video = peer.slot_mid_of(&other.options.userid, "video").expect("a video slot per other peer");
            let what = format!("{} to get {}'s media", peer.options.userid, other.options.userid);
            let deadline = std::time::Instant::now() + common::TIMEOUT;
            loop {
                let stats = peer.slot_stats(&video);
                if peer.heard(other.options.marker) > 10 && stats.packets > 20 && !stats.keyframe_widths.is_empty() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "timed out waiting for {what}: heard {}, video slot {video}: {} packets; slots {:?}; CONFPART {:?}",
                    peer.heard(other.options.marker),
                    stats.packets,
                    peer.all_slot_stats()
                        .iter()
                        .map(|(mid, s)| (
                            mid.clone(),
                            s.packets,
                            s.markers.iter().collect::<std::collections::BTreeSet<_>>()
                        ))
                        .collect::<Vec<_>>(),
                    peer.confpart().map(|c| c["slots"].clone())
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(a.metric("sft_participants{role=\"local\"}").await, 2.0);
    assert_eq!(a.metric("sft_participants{role=\"remote\"}").await, 3.0);
    assert_eq!(b.metric("sft_participants{role=\"remote\"}").await, 3.0);
    assert_eq!(a.metric("sft_federation_links{peer_domain=\"b.example\",state=\"up\"}").await, 1.0);
    assert!(b.metric("sft_federation_relay_bytes_total{direction=\"in\",peer_domain=\"a.example\"}").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_outage_heals_without_rejoining_and_a_vanished_sft_leaves() {
    let certs = Certs::new(&["a.example", "b.example"]);
    // b reaches a's relay only through a proxy the test can cut.
    let relay_port = free_udp_port();
    let proxy = common::proxy::udp_proxy(format!("127.0.0.1:{relay_port}").parse().unwrap()).await;
    let a_extra = format!("relay_public = \"{}\"\n", proxy.addr);
    let a_toml = certs
        .federation_toml("a.example", "127.0.0.1", &a_extra)
        .replace("relay_listen = \"127.0.0.1:0\"", &format!("relay_listen = \"127.0.0.1:{relay_port}\""));
    let a = TestSft::start(&a_toml).await;
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &peers_table(&[("a.example", &a)]))).await;
    let a1 = Peer::join(&a, on("a.example", "outage", "a1", 1)).await;
    let b1 = Peer::join(&b, on("b.example", "outage", "b1", 2)).await;
    wait_for("media both ways", || a1.heard(2) > 10 && b1.heard(1) > 10).await;

    // Blackhole the relay path for 3 s; media resumes within 2 s of its return.
    proxy.cut();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let during = (a1.heard(2), b1.heard(1));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(a1.heard(2) <= during.0 + 2 && b1.heard(1) <= during.1 + 2, "the path is really cut");
    proxy.restore();
    let restored = (a1.heard(2), b1.heard(1));
    common::wait_for_within("media to resume within 2 s", std::time::Duration::from_secs(2), || {
        a1.heard(2) > restored.0 + 5 && b1.heard(1) > restored.1 + 5
    })
    .await;
    assert_eq!(b.metric("sft_join_duration_seconds_count").await, 1.0, "no SETUP repeated");
    assert_eq!(a1.participants(), vec!["a1".to_string(), "b1".to_string()]);

    // b vanishes for good: a's clients see its participant leave after the
    // relay idle timeout plus federation.link_timeout.
    proxy.cut();
    wait_for("b1 to leave a1's CONFPART", || a1.participants() == vec!["a1".to_string()]).await;
    wait_for("a1 to leave b1's CONFPART", || b1.participants() == vec!["b1".to_string()]).await;
    assert_eq!(a.metric("sft_participants{role=\"remote\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_relay_connection_after_the_old_one_died_resumes_media_without_rejoining() {
    let certs = Certs::new(&["a.example", "b.example"]);
    let relay_port = free_udp_port();
    let proxy = common::proxy::udp_proxy(format!("127.0.0.1:{relay_port}").parse().unwrap()).await;
    // Participants outlive the dead connection (link_timeout 30 s), so what
    // heals here is the redial, not a rejoin.
    let patient = |toml: String| toml.replace("link_timeout = 3", "link_timeout = 30");
    let a_toml = certs
        .federation_toml("a.example", "127.0.0.1", &format!("relay_public = \"{}\"\n", proxy.addr))
        .replace("relay_listen = \"127.0.0.1:0\"", &format!("relay_listen = \"127.0.0.1:{relay_port}\""));
    let a = TestSft::start(&patient(a_toml)).await;
    let b_toml = certs.federation_toml("b.example", "127.0.0.2", &peers_table(&[("a.example", &a)]));
    let b = TestSft::start(&patient(b_toml)).await;
    let a1 = Peer::join(&a, on("a.example", "restart", "a1", 1)).await;
    let b1 = Peer::join(&b, on("b.example", "restart", "b1", 2)).await;
    wait_for("media both ways", || a1.heard(2) > 10 && b1.heard(1) > 10).await;

    // Blackhole past the relay's 5 s idle timeout: the QUIC connection dies
    // on both sides and b keeps redialling into the void.
    let up = "sft_federation_links{peer_domain=\"a.example\",state=\"up\"}";
    assert_eq!(b.metric(up).await, 1.0);
    proxy.cut();
    let mut polls = 0;
    while b.metric(up).await != 0.0 {
        polls += 1;
        assert!(polls < 200, "b's relay connection never died");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    proxy.restore();
    let restored = (a1.heard(2), b1.heard(1));
    common::wait_for_within("media to resume within 2 s", std::time::Duration::from_secs(2), || {
        a1.heard(2) > restored.0 + 5 && b1.heard(1) > restored.1 + 5
    })
    .await;
    assert_eq!(b.metric(up).await, 1.0, "a new connection is up");
    assert_eq!(a.metric("sft_federation_links{peer_domain=\"b.example\",state=\"up\"}").await, 1.0);
    assert_eq!(b.metric("sft_join_duration_seconds_count").await, 1.0, "no SETUP repeated");
    assert_eq!(a.metric("sft_join_duration_seconds_count").await, 1.0, "no SETUP repeated");
    assert_eq!(a1.participants(), vec!["a1".to_string(), "b1".to_string()]);
    assert_eq!(b1.participants(), vec!["a1".to_string(), "b1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_federated_sft_process_makes_its_participants_leave_at_the_anchor() {
    let certs = Certs::new(&["a.example", "b.example"]);
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", "")).await;
    let b_toml = certs.federation_toml("b.example", "127.0.0.2", &peers_table(&[("a.example", &a)]));
    let mut b = SftProcess::start(&b_toml, "127.0.0.2").await;
    let a1 = Peer::join(&a, on("a.example", "kill", "a1", 1)).await;
    let a2 = Peer::join(&a, on("a.example", "kill", "a2", 2)).await;
    let b1 = Peer::join(&b, on("b.example", "kill", "b1", 3)).await;
    wait_for("media across the relay", || a1.heard(3) > 10 && b1.heard(1) > 10).await;
    assert_eq!(a.metric("sft_participants{role=\"remote\"}").await, 1.0);

    // SIGKILL: the anchor learns it only from silence (relay idle timeout,
    // then federation.link_timeout), well within the harness's 20 s.
    b.kill();
    let everyone_local = vec!["a1".to_string(), "a2".to_string()];
    wait_for("b1 to leave a1's and a2's CONFPART", || {
        a1.participants() == everyone_local && a2.participants() == everyone_local
    })
    .await;
    assert_eq!(a.metric("sft_participants{role=\"remote\"}").await, 0.0);
    let gone = "sft_federation_links{peer_domain=\"b.example\",state=\"down\"}";
    assert_eq!(a.metric(gone).await, 1.0);
    // The anchor's own call goes on.
    let heard = a1.heard(2);
    wait_for("a1 to keep hearing a2", || a1.heard(2) > heard + 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_carries_each_stream_once_however_many_receive_it() {
    let certs = Certs::new(&["a.example", "b.example"]);
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", "")).await;
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &peers_table(&[("a.example", &a)]))).await;
    let _publisher =
        Peer::join(&a, PeerOptions { audio_slots: 0, video_slots: 0, ..on("a.example", "once", "pub", 1) }).await;
    let viewer =
        |name: &str, marker| PeerOptions { audio: false, video: Video::None, ..on("b.example", "once", name, marker) };
    let v1 = Peer::join(&b, viewer("v1", 2)).await;
    wait_for("v1 receives", || v1.heard(1) > 10).await;
    let one_viewer = relayed_in_2s(&b).await;
    let v2 = Peer::join(&b, viewer("v2", 3)).await;
    let v3 = Peer::join(&b, viewer("v3", 4)).await;
    wait_for("v2 and v3 receive", || v2.heard(1) > 10 && v3.heard(1) > 10).await;
    let three_viewers = relayed_in_2s(&b).await;
    let ratio = three_viewers / one_viewer;
    assert!(one_viewer > 0.0 && ratio < 1.5, "relay bytes grew {ratio:.2}x for 3x the receivers");
    // All simulcast layers cross, whatever the receivers ask for.
    assert!(b.metric("sft_rtp_packets_forwarded_total").await > 0.0);
}

/// Bytes b received over its relay link from a in two seconds.
async fn relayed_in_2s(b: &TestSft) -> f64 {
    let series = "sft_federation_relay_bytes_total{direction=\"in\",peer_domain=\"a.example\"}";
    let start = b.metric(series).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    b.metric(series).await - start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_the_relay_brings_only_the_layers_watched_and_everyone_still_decodes() {
    let _one = common::one_big_call_at_a_time().await;
    let all = relayed_while_watching_h_then_l("all").await;
    let demand = relayed_while_watching_h_then_l("demand").await;
    eprintln!("relay bytes/s from a to b, watching h then l: all {all:?}, demand {demand:?}");
    let (all_h, all_l) = all;
    let (demand_h, demand_l) = demand;
    assert!(all_l > 0.7 * all_h, "in `all` mode every layer crosses, whatever is watched: {all:?}");
    assert!(demand_h < 0.9 * all_h, "`h` alone is less than all three layers: {demand:?} vs {all:?}");
    assert!(demand_l < 0.5 * demand_h, "watching `l`, the relay brings less: {demand:?}");
}

/// Relay bytes per second from a to b in one call: `pa` on a publishes
/// `l`/`m`/`h`, `pb` on b watches it at `h`, then asks for `l`; each decodes
/// the other throughout.
async fn relayed_while_watching_h_then_l(mode: &str) -> (f64, f64) {
    let certs = Certs::new(&["a.example", "b.example"]);
    let relay = format!("relay = \"{mode}\"\n");
    // What crosses the relay is the subject here, not the receivers'
    // estimates: on a loaded CI machine pb's webrtc-rs estimate once fell
    // below `l` right after the switch and its paused slot had not resumed
    // 20 s later (a lead for issue 11's follow-up, docs/behaviour.md).
    let no_estimates = "[media]\nbandwidth_estimation = false\n";
    let a_toml = format!("{}{no_estimates}", certs.federation_toml("a.example", "127.0.0.1", &relay));
    let a = TestSft::start(&a_toml).await;
    let b_extra = format!("{relay}{}", peers_table(&[("a.example", &a)]));
    let b =
        TestSft::start(&format!("{}{no_estimates}", certs.federation_toml("b.example", "127.0.0.2", &b_extra))).await;
    let conf = format!("watch-{mode}");
    let one_slot = |options: PeerOptions| PeerOptions { audio_slots: 1, video_slots: 1, ..options };
    let pa = Peer::join(&a, one_slot(on("a.example", &conf, "pa", 1))).await;
    let pb = Peer::join(&b, one_slot(on("b.example", &conf, "pb", 2))).await;
    let widths = |peer: &Peer, of: &str| peer.slot_stats(&peer.slot_mid_of(of, "video").unwrap()).keyframe_widths;
    wait_for(&format!("{mode}: each to decode the other at h"), || {
        pa.slot_mid_of("pb", "video").is_some_and(|_| widths(&pa, "pb").contains(&width_of("h")))
            && pb.slot_mid_of("pa", "video").is_some_and(|_| widths(&pb, "pa").contains(&width_of("h")))
    })
    .await;
    let watching_h = relayed_in_2s(&b).await / 2.0;

    let low = json!([{"userid": "pa", "clientid": "pa-client", "quality": "low"}]);
    let keyframes_before = widths(&pb, "pa").len();
    pb.send(json!({"type": "REQSTREAMS", "streams": low})).await;
    wait_for(&format!("{mode}: pb to get pa's `l`"), || widths(&pb, "pa")[keyframes_before..].contains(&width_of("l")))
        .await;
    let watching_l = relayed_in_2s(&b).await / 2.0;

    // Both still decode: new video and audio from the other side.
    let video = |peer: &Peer, of: &str| peer.slot_stats(&peer.slot_mid_of(of, "video").unwrap()).packets;
    let counts = || (video(&pa, "pb"), video(&pb, "pa"), pa.heard(2), pb.heard(1));
    let before = counts();
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let now = counts();
        if now.0 > before.0 + 20 && now.1 > before.1 + 20 && now.2 > before.2 + 10 && now.3 > before.3 + 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{mode}: media both ways after the switch: (pa's video, pb's video, pa heard, pb heard) \
             went from {before:?} to {now:?}; pa's CONFPART {:?}, pb's {:?}",
            pa.confpart(),
            pb.confpart()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (watching_h, watching_l)
}

/// A link b dialled is closed once no conference has used it for
/// `link_linger`, and dialled again when a client needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_no_conference_uses_is_closed_after_its_linger_and_dialled_again_when_needed() {
    let certs = Certs::new(&["a.example", "b.example"]);
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", "")).await;
    let to_a = format!("link_linger = 1\n{}", peers_table(&[("a.example", &a)]));
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &to_a)).await;
    let listener =
        |user: &str, marker: u8| PeerOptions { video: Video::None, ..on("b.example", "linger", user, marker) };
    let a1 = Peer::join(&a, PeerOptions { video: Video::None, ..on("a.example", "linger", "a1", 1) }).await;
    let b1 = Peer::join(&b, listener("b1", 2)).await;
    wait_for("b1 to hear a1", || b1.heard(1) > 10).await;

    // b1 leaves: the conference ends on b and nothing uses the link.
    let http = reqwest::Client::new();
    let left = http.delete(b.url(&format!("/sft/linger/{}", b1.sessid))).send().await.unwrap();
    assert_eq!(left.status(), 204);
    b1.stop_publishing();
    let (b_up, a_up) = (
        "sft_federation_links{peer_domain=\"a.example\",state=\"up\"}",
        "sft_federation_links{peer_domain=\"b.example\",state=\"up\"}",
    );
    b.wait_for_metric(b_up, "b to close the unused link", |v| v == 0.0).await;
    a.wait_for_metric(a_up, "a to see the link closed", |v| v == 0.0).await;
    let dialled = "sft_federation_connections_total{direction=\"out\",peer_domain=\"a.example\"}";
    assert_eq!(b.metric(dialled).await, 1.0);

    // A new client of the conference: b dials again.
    let b2 = Peer::join(&b, listener("b2", 3)).await;
    wait_for("b2 to hear a1", || b2.heard(1) > 10).await;
    wait_for("a1 to hear b2", || a1.heard(3) > 10).await;
    assert_eq!(b.metric(dialled).await, 2.0, "a second connection");
}

/// Two SFTs that anchor conferences for each other share one connection:
/// the second one needing the link attaches on the connection the first
/// dialled, and that connection stays while either side's conferences use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sfts_anchoring_calls_for_each_other_share_one_connection() {
    let _one = common::one_big_call_at_a_time().await;
    let certs = Certs::new(&["a.example", "b.example"]);
    let (a_toml, a_control) = fixed_ports_toml(&certs, "a.example", "127.0.0.1", "link_linger = 1\n");
    let (b_toml, b_control) = fixed_ports_toml(&certs, "b.example", "127.0.0.2", "link_linger = 1\n");
    let a = TestSft::start(&format!("{a_toml}{}", peers_at("b.example", &b_control))).await;
    let b = TestSft::start(&format!("{b_toml}{}", peers_at("a.example", &a_control))).await;
    let anchored_at = |anchor: &str, domain: &str, conf: &str, user: &str, marker: u8| PeerOptions {
        video: Video::None,
        anchor: (anchor != domain).then(|| anchor.to_owned()),
        ..on(domain, conf, user, marker)
    };
    // x is anchored at a (b dials a); y at b (a needs a link to b too).
    let a1 = Peer::join(&a, anchored_at("a.example", "a.example", "x", "a1", 1)).await;
    let b1 = Peer::join(&b, anchored_at("a.example", "b.example", "x", "b1", 2)).await;
    wait_for("x: media both ways", || a1.heard(2) > 10 && b1.heard(1) > 10).await;
    let b2 = Peer::join(&b, anchored_at("b.example", "b.example", "y", "b2", 3)).await;
    let a2 = Peer::join(&a, anchored_at("b.example", "a.example", "y", "a2", 4)).await;
    wait_for("y: media both ways", || a2.heard(3) > 10 && b2.heard(4) > 10).await;
    assert_eq!(a2.participants(), vec!["a2".to_string(), "b2".to_string()], "no one of x in y");

    let dialled = |to: &str| format!("sft_federation_connections_total{{direction=\"out\",peer_domain=\"{to}\"}}");
    assert_eq!(b.metric(&dialled("a.example")).await, 1.0, "b dialled a once");
    assert!(!a.metrics().await.contains(&dialled("b.example")), "a never dialled b");

    // x ends on b: b's own conferences no longer use the link, a's y still
    // does, so the connection b dialled stays past b's linger.
    let http = reqwest::Client::new();
    assert_eq!(http.delete(b.url(&format!("/sft/x/{}", b1.sessid))).send().await.unwrap().status(), 204);
    b1.stop_publishing();
    let before = (a2.heard(3), b2.heard(4));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(a2.heard(3) > before.0 + 100 && b2.heard(4) > before.1 + 100, "y kept flowing");
    assert_eq!(b.metric(&dialled("a.example")).await, 1.0, "still one connection");
    assert!(!a.metrics().await.contains(&dialled("b.example")), "a still never dialled b");
}
