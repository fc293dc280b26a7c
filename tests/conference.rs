//! Single-SFT conferences with real WebRTC peers (webrtc-rs) on loopback.

mod common;

use std::time::Duration;

use common::{wait_for, wait_for_within, Peer, PeerOptions, Signalling, TestSft, Video};
use serde_json::json;

/// How long a slot may take to climb to `h`: each step waits for the
/// receiver's estimate to hold above the next layer for 2 s, and the
/// estimate ramps slower while the test peers share two cores with the
/// other tests.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(40);

fn names(peers: &[&Peer]) -> Vec<String> {
    let mut names: Vec<String> = peers.iter().map(|p| p.options.userid.clone()).collect();
    names.sort();
    names
}

/// Waits until every peer's CONFPART lists exactly `expected` and its video
/// slots carry all the others.
async fn wait_for_full_mesh(peers: &[&Peer]) {
    let expected = names(peers);
    for peer in peers {
        let others = peers.len() - 1;
        wait_for(&format!("{} to see everyone in CONFPART and its slots", peer.options.userid), || {
            peer.participants() == expected && peer.video_slots().len() == others
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_peers_receive_each_other_and_leave_three_ways() {
    let sft = TestSft::start("[media]\nidle_timeout = 2\n").await;
    let a = Peer::join(&sft, PeerOptions::new("room", "alice", 1)).await;
    let b = Peer::join(&sft, PeerOptions::new("room", "bob", 2)).await;
    let c = Peer::join(&sft, PeerOptions::new("room", "carol", 3)).await;
    let d = Peer::join_via_proxy(&sft, PeerOptions::new("room", "dave", 4)).await;
    let everyone = [&a, &b, &c, &d.0];
    wait_for_full_mesh(&everyone).await;

    // Every slot fills with real media from the peer CONFPART names.
    for peer in everyone {
        for other in everyone.iter().filter(|o| o.options.userid != peer.options.userid) {
            let video_mid = peer.slot_mid_of(&other.options.userid, "video").expect("video slot for each other peer");
            let audio_mid = peer.slot_mid_of(&other.options.userid, "audio").expect("audio slot for each other peer");
            wait_for(&format!("{} to get video and audio of {}", peer.options.userid, other.options.userid), || {
                let video = peer.slot_stats(&video_mid);
                let audio = peer.slot_stats(&audio_mid);
                video.packets > 20
                    && !video.keyframe_widths.is_empty()
                    && audio.markers.iter().filter(|m| **m == other.options.marker).count() > 10
            })
            .await;
        }
    }
    for peer in everyone {
        for (mid, stats) in peer.all_slot_stats() {
            assert_eq!(stats.ssrcs.len(), 1, "{} slot {mid}: one SSRC per slot", peer.options.userid);
            assert_eq!(
                stats.seq_jumps, 0,
                "{} slot {mid}: continuous sequence numbers {:?}",
                peer.options.userid, stats.jumps
            );
            assert!(!stats.markers.contains(&peer.options.marker), "{} got its own audio", peer.options.userid);
        }
    }
    // Without REQSTREAMS every video slot settles on the best layer (lower
    // ones may come first: while only they have arrived or been measured,
    // or while the downlink estimate ramps up).
    for peer in everyone {
        for other in everyone.iter().filter(|o| o.options.userid != peer.options.userid) {
            let mid = peer.slot_mid_of(&other.options.userid, "video").unwrap();
            let what = format!("{}'s slot of {} to settle on h", peer.options.userid, other.options.userid);
            wait_for_within(&what, SETTLE_TIMEOUT, || {
                peer.slot_stats(&mid).keyframe_widths.last() == Some(&common::ivf::width_of("h"))
            })
            .await;
        }
    }
    assert_eq!(sft.metric("sft_participants{role=\"local\"}").await, 4.0);
    assert_eq!(sft.metric("sft_conferences").await, 1.0);
    let forwarded = sft.metric("sft_rtp_packets_forwarded_total").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sft.metric("sft_rtp_packets_forwarded_total").await > forwarded, "forwarding counter grows");

    // HANGUP on the data channel.
    a.send(json!({"type": "HANGUP"})).await;
    a.stop_publishing();
    for peer in [&b, &c, &d.0] {
        wait_for("alice to leave everyone's CONFPART", || !peer.participants().contains(&"alice".to_string())).await;
    }
    // DELETE over signalling; a second DELETE is 404.
    let http = reqwest::Client::new();
    let url = sft.url(&format!("/sft/room/{}", b.sessid));
    assert_eq!(http.delete(&url).send().await.unwrap().status(), 204);
    assert_eq!(http.delete(&url).send().await.unwrap().status(), 404);
    b.stop_publishing();
    for peer in [&c, &d.0] {
        wait_for("bob to leave everyone's CONFPART", || !peer.participants().contains(&"bob".to_string())).await;
    }
    // Dave vanishes: his packets stop without a goodbye; the idle timeout ends him.
    d.1.cut();
    wait_for("dave to time out of carol's CONFPART", || c.participants() == vec!["carol".to_string()]).await;
    assert_eq!(sft.metric("sft_participants{role=\"local\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reqstreams_picks_layers_and_switches_continuously() {
    let sft = TestSft::start("").await;
    let viewer = Peer::join(
        &sft,
        PeerOptions { video: Video::None, audio: false, video_slots: 2, ..PeerOptions::new("layers", "viewer", 1) },
    )
    .await;
    let b =
        Peer::join(&sft, PeerOptions { video_slots: 0, audio_slots: 0, ..PeerOptions::new("layers", "bob", 2) }).await;
    let c = Peer::join(&sft, PeerOptions { video_slots: 0, audio_slots: 0, ..PeerOptions::new("layers", "carol", 3) })
        .await;
    let request = |streams: serde_json::Value| json!({"type": "REQSTREAMS", "streams": streams});
    viewer
        .send(request(json!([
            {"userid": "bob", "clientid": "bob-client", "domain": "localhost", "quality": "low"},
            {"userid": "carol", "clientid": "carol-client", "domain": "localhost", "quality": "high"},
        ])))
        .await;
    wait_for("bob/l and carol/h in the viewer's slots", || {
        viewer.video_slots() == vec![("bob".into(), "l".into()), ("carol".into(), "h".into())]
    })
    .await;
    let bob_mid = viewer.slot_mid_of("bob", "video").unwrap();
    let carol_mid = viewer.slot_mid_of("carol", "video").unwrap();
    wait_for("media in both slots", || {
        viewer.slot_stats(&bob_mid).packets > 20 && viewer.slot_stats(&carol_mid).packets > 20
    })
    .await;
    // Media flows from the moment the viewer joins, so its slots may carry
    // the default choice's keyframes first; the requested layers follow.
    wait_for("bob/l and carol/h keyframes", || {
        viewer.slot_stats(&bob_mid).keyframe_widths.last() == Some(&common::ivf::width_of("l"))
            && viewer.slot_stats(&carol_mid).keyframe_widths.last() == Some(&common::ivf::width_of("h"))
    })
    .await;

    // Swap: slot one now carol/m, slot two bob/h. Sequence numbers stay continuous.
    viewer
        .send(request(json!([
            {"userid": "carol", "clientid": "carol-client", "quality": "medium"},
            {"userid": "bob", "clientid": "bob-client", "quality": "high"},
        ])))
        .await;
    wait_for("carol/m and bob/h", || {
        viewer.video_slots() == vec![("bob".into(), "h".into()), ("carol".into(), "m".into())]
    })
    .await;
    // The first slot (was bob/l) shows carol/m keyframes, the second (was
    // carol/h) bob/h, once each new layer's keyframe arrives (and the
    // viewer's estimate pays for both: a slot may pass through `l` first).
    wait_for("carol/m and bob/h keyframes", || {
        viewer.slot_stats(&bob_mid).keyframe_widths.last() == Some(&common::ivf::width_of("m"))
            && viewer.slot_stats(&carol_mid).keyframe_widths.last() == Some(&common::ivf::width_of("h"))
    })
    .await;
    for mid in [&bob_mid, &carol_mid] {
        let stats = viewer.slot_stats(mid);
        assert_eq!(stats.seq_jumps, 0, "slot {mid} continuous across the switch: {:?}", stats.jumps);
        assert_eq!(stats.ssrcs.len(), 1, "slot {mid} keeps its SSRC");
    }

    // `off` empties the slot.
    viewer.send(request(json!([{"userid": "carol", "clientid": "carol-client", "quality": "off"}]))).await;
    wait_for("empty slots", || viewer.video_slots().is_empty()).await;
    // Packets already on their way may still arrive (late under load); a
    // slot that still carries media gets about 15 more a second.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let frozen: Vec<u64> = [&bob_mid, &carol_mid].iter().map(|m| viewer.slot_stats(m).packets).collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after: Vec<u64> = [&bob_mid, &carol_mid].iter().map(|m| viewer.slot_stats(m).packets).collect();
    assert_eq!(frozen, after, "no media flows into emptied slots");
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_conferences_never_leak() {
    let sft = TestSft::start("").await;
    let a1 = Peer::join(&sft, PeerOptions::new("one", "a1", 11)).await;
    let a2 = Peer::join(&sft, PeerOptions::new("one", "a2", 12)).await;
    let b1 = Peer::join(&sft, PeerOptions { video: Video::Single, ..PeerOptions::new("two", "b1", 21) }).await;
    let b2 = Peer::join(&sft, PeerOptions { video: Video::Single, ..PeerOptions::new("two", "b2", 22) }).await;
    wait_for_full_mesh(&[&a1, &a2]).await;
    wait_for_full_mesh(&[&b1, &b2]).await;
    for (peer, other) in [(&a1, &a2), (&a2, &a1), (&b1, &b2), (&b2, &b1)] {
        let mid = peer.slot_mid_of(&other.options.userid, "audio").unwrap();
        wait_for("audio", || peer.slot_stats(&mid).markers.len() > 20).await;
        let vmid = peer.slot_mid_of(&other.options.userid, "video").unwrap();
        wait_for("video", || !peer.slot_stats(&vmid).keyframe_widths.is_empty()).await;
    }
    let conf_one = [11u8, 12];
    let conf_two = [21u8, 22];
    for (peer, allowed, widths) in [
        (&a1, conf_one, ["l", "m", "h"].map(common::ivf::width_of).to_vec()),
        (&a2, conf_one, ["l", "m", "h"].map(common::ivf::width_of).to_vec()),
        (&b1, conf_two, vec![common::ivf::width_of("single")]),
        (&b2, conf_two, vec![common::ivf::width_of("single")]),
    ] {
        assert_eq!(peer.participants().len(), 2);
        for (mid, stats) in peer.all_slot_stats() {
            assert!(
                stats.markers.iter().all(|m| allowed.contains(m)),
                "{} slot {mid} audio from another conference",
                peer.options.userid
            );
            assert!(
                stats.keyframe_widths.iter().all(|w| widths.contains(w)),
                "{} slot {mid} video from another conference",
                peer.options.userid
            );
        }
    }
    assert_eq!(sft.metric("sft_conferences").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receiver_pli_reaches_the_publisher_rate_limited() {
    let sft = TestSft::start("").await;
    let viewer =
        Peer::join(&sft, PeerOptions { video: Video::None, audio: false, ..PeerOptions::new("pli", "viewer", 1) })
            .await;
    let publisher = Peer::join(
        &sft,
        PeerOptions { video: Video::Single, video_slots: 0, audio_slots: 0, ..PeerOptions::new("pli", "pub", 2) },
    )
    .await;
    wait_for("the publisher in the viewer's slot", || viewer.video_slots().len() == 1).await;
    let mid = viewer.slot_mid_of("pub", "video").unwrap();
    wait_for("video", || viewer.slot_stats(&mid).packets > 10).await;
    // Let the switch-time keyframe requests settle, then burst PLIs.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = publisher.plis_received();
    for _ in 0..10 {
        viewer.send_pli(&mid).await;
    }
    wait_for("the PLI to reach the publisher", || publisher.plis_received() > before).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let forwarded = publisher.plis_received() - before;
    assert!(forwarded <= 2, "10 PLIs in a burst reach the publisher at most twice, got {forwarded}");
}
