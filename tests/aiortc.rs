//! aiortc (Python), a WebRTC stack nobody on this project wrote, joins a
//! conference with a webrtc-rs peer: both decode each other, CONFPART,
//! REQSTREAMS and HANGUP work, and aiohttp's connection pool goes on after a
//! 413. The client is `tests/aiortc/client.py`, run from a virtualenv that
//! `tests/aiortc/setup-venv.sh` makes with the pinned aiortc; the call runs
//! inside a fresh network namespace that has only loopback.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{netns, wait_for, wait_for_within, Peer, PeerOptions, Signalling, TestSft};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// The client's own bound on the whole call, and ours on the process.
const CLIENT_TIMEOUT_SECS: u64 = 60;

fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("aiortc-venv")
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("aiortc").join(name)
}

#[test]
fn aiortc_and_webrtc_rs_see_hear_and_leave() {
    netns::isolated("aiortc_and_webrtc_rs_see_hear_and_leave", make_venv, aiortc_call);
}

/// pip needs the network, so the virtualenv is made outside the namespace.
fn make_venv() {
    let status = std::process::Command::new(script("setup-venv.sh")).arg(venv()).status().expect("bash runs");
    assert!(status.success(), "tests/aiortc/setup-venv.sh failed (needs python3-venv and PyPI)");
}

async fn aiortc_call() {
    let sft = TestSft::start("").await;
    let peer = Peer::join(&sft, PeerOptions::new("aiortc", "rs", 9)).await;
    let mut client = tokio::process::Command::new(venv().join("bin").join("python"))
        .arg(script("client.py"))
        .args(["--url", &sft.url(""), "--conf", "aiortc", "--user", "py", "--peer", "rs"])
        .args(["--timeout", &CLIENT_TIMEOUT_SECS.to_string(), "--expect-layer", "l", "--hangup-on-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the aiortc venv's python runs");

    // The webrtc-rs side: aiortc's video (VP8 keyframes) and audio arrive.
    wait_for_within("the webrtc-rs peer to get py's video and audio", Duration::from_secs(CLIENT_TIMEOUT_SECS), || {
        let video = peer.slot_mid_of("py", "video").map(|mid| peer.slot_stats(&mid));
        let audio = peer.slot_mid_of("py", "audio").map(|mid| peer.slot_stats(&mid));
        video.is_some_and(|v| v.packets > 20 && !v.keyframe_widths.is_empty()) && audio.is_some_and(|a| a.packets > 10)
    })
    .await;
    assert_eq!(peer.participants(), ["py", "rs"]);
    // Seen: the client may hang up now.
    let mut go_ahead = client.stdin.take().unwrap();
    go_ahead.write_all(b"hang up\n").await.unwrap();
    drop(go_ahead);

    // The aiortc side, as the client reports it.
    let output = tokio::time::timeout(Duration::from_secs(CLIENT_TIMEOUT_SECS + 30), client.wait_with_output())
        .await
        .expect("the aiortc client ends within its timeout")
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("client printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)));
    assert!(output.status.success() && report["ok"] == true, "aiortc client failed: {report}");
    assert_eq!(report["keepalive"]["oversized_status"], 413, "{report}");
    assert_eq!(report["keepalive"]["oversized_error"], "too-large", "{report}");
    assert_eq!(report["keepalive"]["setup_status"], 200, "{report}");
    assert_eq!(report["participants"], serde_json::json!(["py", "rs"]), "{report}");
    assert!(report["video_frames_from_peer"].as_u64() >= Some(10), "{report}");
    assert!(report["audio_frames_from_peer"].as_u64() >= Some(10), "{report}");
    // REQSTREAMS "low" moved the slot from the peer's `h` to its `l`, which is narrower.
    assert_eq!(report["layer_before_reqstreams"], "h", "{report}");
    assert_eq!(report["layer_after_reqstreams"], "l", "{report}");
    assert!(report["frames_after_reqstreams"].as_u64() >= Some(10), "{report}");
    assert!(report["width_after"].as_u64() < report["width_before"].as_u64(), "{report}");

    // HANGUP ended aiortc's session, and the peer saw it leave.
    assert_eq!(report["hangup_sent"], true, "{report}");
    wait_for("py to leave the webrtc-rs peer's CONFPART", || peer.participants() == ["rs"]).await;
    assert_eq!(sft.metric("sft_sessions_ended_total{cause=\"hangup\"}").await, 1.0);
    assert_eq!(sft.metric("sft_participants{role=\"local\"}").await, 1.0);
    peer.close().await;
}
