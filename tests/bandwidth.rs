//! Each receiver gets the layers its downlink carries: with a configured
//! ceiling (`media.max_receive_kbps`) a receiver's first slot drops to `l`,
//! the lower-priority slots pause, CONFPART says so, and audio goes on.

mod common;

use common::{wait_for, Peer, PeerOptions, TestSft, Video};
use serde_json::{json, Value};

/// With packet overhead, the test peers' layers measure about 31 (`l`), 70
/// (`m`) and 180 (`h`) kbit/s and their audio about 26: 72 kbit/s pays for
/// one audio slot and one `l`, with room for neither a second `l` nor an `m`.
const CEILING: &str = "[media]\nbandwidth_estimation = false\nmax_receive_kbps = 72\n";

fn video_slots(peer: &Peer) -> Vec<Value> {
    let confpart = peer.confpart().unwrap_or_default();
    confpart["slots"].as_array().into_iter().flatten().filter(|s| s["kind"] == "video").cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capped_receiver_gets_its_first_slot_at_low_and_the_others_paused() {
    let sft = TestSft::start(CEILING).await;
    let mut publishers = Vec::new();
    for (name, marker) in [("ann", 1), ("ben", 2), ("cat", 3)] {
        let options = PeerOptions { audio_slots: 0, video_slots: 0, ..PeerOptions::new("capped", name, marker) };
        publishers.push(Peer::join(&sft, options).await);
    }
    let options =
        PeerOptions { video: Video::None, audio: false, audio_slots: 1, ..PeerOptions::new("capped", "rex", 9) };
    let receiver = Peer::join(&sft, options).await;
    // Priority order: cat, ben, ann.
    let streams: Vec<Value> = ["cat", "ben", "ann"]
        .iter()
        .map(|user| json!({"userid": user, "clientid": format!("{user}-client"), "quality": "high"}))
        .collect();
    receiver.send(json!({"type": "REQSTREAMS", "streams": streams})).await;

    let at = |slots: &[Value], user: &str| slots.iter().find(|s| s["userid"] == user).cloned().unwrap_or_default();
    let settled = |slots: &[Value]| {
        at(slots, "cat")["layer"] == "l" && at(slots, "ben")["paused"] == true && at(slots, "ann")["paused"] == true
    };
    wait_for("cat at l, ben and ann paused", || settled(&video_slots(&receiver))).await;
    let slots = video_slots(&receiver);
    for user in ["ben", "ann"] {
        assert_eq!(at(&slots, user)["layer"], Value::Null, "{slots:?}");
    }

    // Media follows CONFPART: `l` keyframes (80 wide) in cat's slot, nothing
    // new in the paused ones, and everyone's audio.
    let live = receiver.slot_mid_of("cat", "video").unwrap();
    let paused: Vec<String> =
        ["ben", "ann"].iter().map(|u| at(&slots, u)["mid"].as_str().unwrap().to_owned()).collect();
    let paused_before: Vec<u64> = paused.iter().map(|mid| receiver.slot_stats(mid).packets).collect();
    let live_before = receiver.slot_stats(&live).packets;
    wait_for("video in cat's slot", || receiver.slot_stats(&live).packets > live_before + 30).await;
    let widths = receiver.slot_stats(&live).keyframe_widths;
    assert_eq!(widths.last(), Some(&80), "cat's slot: keyframes {widths:?}");
    for (mid, before) in paused.iter().zip(paused_before) {
        assert!(receiver.slot_stats(mid).packets <= before + 5, "paused slot {mid} kept receiving");
    }
    let heard = |receiver: &Peer| [1, 2, 3].iter().map(|m| receiver.heard(*m)).sum::<usize>();
    let heard_before = heard(&receiver);
    wait_for("audio in the audio slot", || heard(&receiver) > heard_before + 20).await;
    let estimates = sft.metric("sft_receiver_estimate_bitrate_count{source=\"ceiling\"}").await;
    assert!(estimates >= 4.0, "every client's ceiling is counted: {estimates}");
}
