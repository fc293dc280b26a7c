//! Each receiver gets the layers its downlink carries: with a configured
//! ceiling (`media.max_receive_kbps`) a receiver's first slot drops to `l`,
//! the lower-priority slots pause, CONFPART says so, and audio goes on; behind
//! a bottleneck (a rate-capped UDP proxy in front of one webrtc-rs receiver),
//! the send-side estimate lowers that receiver's layers without stalls or
//! loss, leaves the others alone, and finds the link again once it is freed.

#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, wait_for_within, Peer, PeerOptions, SlotStats, TestSft, Video};
use serde_json::{json, Value};
use sft::load::impair::Impairment;

/// In payload, the test peers' layers measure about 26 (`l`), 65 (`m`) and
/// 175 (`h`) kbit/s and their audio about 3: 45 kbit/s pays for one audio
/// slot and one `l`, with room for neither a second `l` nor an `m`.
const CEILING: &str = "[media]\nbandwidth_estimation = false\nmax_receive_kbps = 45\n";

fn video_slots(peer: &Peer) -> Vec<Value> {
    let confpart = peer.confpart().unwrap_or_default();
    confpart["slots"].as_array().into_iter().flatten().filter(|s| s["kind"] == "video").cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capped_receiver_gets_its_first_slot_at_low_and_the_others_paused() {
    let _one = common::one_big_call_at_a_time().await;
    let sft = TestSft::start(CEILING).await;
    let _publishers = common::join_publishers(&sft, "capped", &["ann", "ben", "cat"]).await;
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

/// Seen in `stats` since `since`: the longest silence between two packets
/// and the share of sequence numbers that never arrived.
fn gap_and_loss(stats: &SlotStats, since: Instant) -> (Duration, f64) {
    let arrivals: Vec<&(Instant, u16)> = stats.arrivals.iter().filter(|(at, _)| *at >= since).collect();
    let mut gap = Duration::ZERO;
    let mut lost = 0u64;
    for pair in arrivals.windows(2) {
        let ((before, seq_before), (after, seq_after)) = (*pair[0], *pair[1]);
        gap = gap.max(after - before);
        let step = seq_after.wrapping_sub(seq_before);
        // A step back (a reordered packet) loses nothing.
        if (2..0x8000).contains(&step) {
            lost += u64::from(step - 1);
        }
    }
    (gap, lost as f64 / (arrivals.len() as f64 + lost as f64).max(1.0))
}

fn layers(peer: &Peer) -> Vec<Value> {
    video_slots(peer)
        .iter()
        .map(|slot| if slot["paused"] == true { json!("paused") } else { slot["layer"].clone() })
        .collect()
}

fn all_high(peer: &Peer) -> bool {
    let layers = layers(peer);
    layers.len() == 4 && layers.iter().all(|layer| layer == "h")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_behind_a_bottleneck_gets_lower_layers_until_it_lifts() {
    let _one = common::one_big_call_at_a_time().await;
    let sft = TestSft::start("").await;
    let users = ["ann", "ben", "cat", "dan"];
    let _publishers = common::join_publishers(&sft, "shaped", &users).await;
    let receiver = |name: &str, marker| PeerOptions {
        video: Video::None,
        audio: false,
        audio_slots: 1,
        video_slots: 4,
        ..PeerOptions::new("shaped", name, marker)
    };
    let (capped, proxy) = Peer::join_via_proxy(&sft, receiver("rex", 8)).await;
    let free = Peer::join(&sft, receiver("sue", 9)).await;
    let streams: Vec<Value> = users
        .iter()
        .map(|user| json!({"userid": user, "clientid": format!("{user}-client"), "quality": "high"}))
        .collect();
    for peer in [&capped, &free] {
        peer.send(json!({"type": "REQSTREAMS", "streams": streams})).await;
    }
    for peer in [&capped, &free] {
        wait_for("every slot at h", || all_high(peer)).await;
    }

    // Four `h` layers and the audio need about 850 kbit/s.
    proxy.limit_downlink(Some(600));
    wait_for_within("the capped receiver to lower some layers", Duration::from_secs(3), || {
        let layers = layers(&capped);
        layers.len() == 4 && layers.iter().any(|layer| layer != "h")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = Instant::now();
    let (mut watched, mut free_watched) = (Vec::new(), Vec::new());
    while settled.elapsed() < Duration::from_secs(6) {
        watched.push(layers(&capped));
        free_watched.push(layers(&free));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The uncapped receiver keeps h. Its estimate (webrtc-rs's, on a loaded
    // two-core loopback, where late reader tasks look like queueing) may dip
    // for a moment below four `h` plus the keyframes the capped receiver's
    // switches ask for: one slot, briefly, is tolerated; being dragged down
    // is not.
    let dips = free_watched.iter().filter(|layers| layers.iter().any(|l| l != "h")).count();
    assert!(
        dips * 10 <= free_watched.len() && free_watched.iter().all(|l| l.iter().filter(|l| *l != "h").count() <= 1),
        "the uncapped receiver keeps h: {free_watched:?}"
    );
    assert!(
        watched.iter().flatten().all(|layer| layer != "paused"),
        "no slot of the capped receiver paused: {watched:?}"
    );
    for (user, _) in capped.video_slots() {
        let mid = capped.slot_mid_of(&user, "video").unwrap();
        let (gap, loss) = gap_and_loss(&capped.slot_stats(&mid), settled);
        println!("{user}: longest gap {gap:?}, loss {:.2} %", loss * 100.0);
        assert!(gap < Duration::from_millis(500), "{user}'s video stalled for {gap:?} behind the bottleneck");
        assert!(loss < 0.02, "{user}'s video lost {:.1} % after settling", loss * 100.0);
    }
    println!("settled on {:?}; the bottleneck dropped {} packets", watched.last(), proxy.dropped());

    proxy.limit_downlink(None);
    let lifted = Instant::now();
    let mut seen = vec![layers(&capped)];
    while !all_high(&capped) {
        assert!(lifted.elapsed() < Duration::from_secs(15), "not back at h 15 s after the cap was lifted: {seen:?}");
        if seen.last() != Some(&layers(&capped)) {
            seen.push(layers(&capped));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("back at h {:?} after the cap was lifted, by way of {seen:?}", lifted.elapsed());
}

/// 5 % of what a publisher sends is lost before the SFT: the SFT NACKs the
/// publisher and forwards the resent packets, so the receiver misses far
/// fewer than 5 % (without repair it would miss as many as the uplink lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lossy_uplink_is_repaired_before_receivers_see_the_loss() {
    let _one = common::one_big_call_at_a_time().await;
    let sft = TestSft::start("").await;
    let options =
        PeerOptions { video: Video::Single, audio_slots: 0, video_slots: 0, ..PeerOptions::new("uplink", "pub", 1) };
    let (_publisher, path) = Peer::join_via_proxy(&sft, options).await;
    let options = PeerOptions {
        video: Video::None,
        audio: false,
        audio_slots: 1,
        video_slots: 1,
        ..PeerOptions::new("uplink", "rex", 2)
    };
    let receiver = Peer::join(&sft, options).await;
    wait_for("video at the receiver", || {
        receiver.slot_mid_of("pub", "video").is_some_and(|mid| receiver.slot_stats(&mid).packets > 50)
    })
    .await;
    let mid = receiver.slot_mid_of("pub", "video").unwrap();
    path.impair_uplink(Impairment { loss_percent: 5.0, ..Impairment::default() });
    let before = receiver.slot_stats(&mid).arrivals.len();
    tokio::time::sleep(Duration::from_secs(15)).await;
    // Let the last repairs arrive, then count the window's sequence numbers.
    path.impair_uplink(Impairment::default());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let arrivals = receiver.slot_stats(&mid).arrivals;
    let window = &arrivals[before..];
    let first = window.first().expect("packets in the window").1;
    // Extended relative to the window's first number: repairs arrive late.
    let mut seqs: Vec<i64> = window.iter().map(|(_, seq)| i64::from(seq.wrapping_sub(first) as i16)).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let span = seqs.last().unwrap() - seqs.first().unwrap() + 1;
    let missing = span - seqs.len() as i64;
    let uplink_loss = path.uplink_loss_ratio();
    eprintln!("uplink lost {:.1} %; the receiver misses {missing} of {span}", uplink_loss * 100.0);
    assert!(uplink_loss > 0.02, "the uplink is lossy: {uplink_loss}");
    assert!(span > 200, "enough video to count: {span}");
    assert!((missing as f64) < span as f64 * uplink_loss / 4.0, "{missing} of {span} missing at the receiver");
}
