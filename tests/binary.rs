//! The `sft` binary as an operator runs it: config errors, health, drain.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{setup_body, Peer, PeerOptions};
use serde_json::Value;

const SFT: &str = env!("CARGO_BIN_EXE_sft");

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Running {
    child: Child,
    signalling: SocketAddr,
    metrics: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on free loopback ports and waits for its first line.
fn spawn_sft() -> Running {
    spawn_sft_with(&[])
}

fn spawn_sft_with(args: &[&str]) -> Running {
    spawn_sft_configured(args, &[])
}

fn spawn_sft_with_env(env: &[(&str, &str)]) -> Running {
    spawn_sft_configured(&[], env)
}

fn spawn_sft_configured(args: &[&str], env: &[(&str, &str)]) -> Running {
    let signalling: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut child = Command::new(SFT)
        .env("SFT_SIGNALLING__LISTEN", format!("\"{signalling}\""))
        .env("SFT_METRICS__LISTEN", format!("\"{metrics}\""))
        .env("SFT_MEDIA__LISTEN", format!("\"127.0.0.1:{}\"", free_udp_port()))
        .envs(env.iter().copied())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first_line).unwrap();
    assert_eq!(first_line.trim(), format!("sft: demo page at http://{signalling}/"));
    Running { child, signalling, metrics }
}

fn terminate(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn invalid_config_exits_2_with_one_line_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("sft-bad-config-{}", std::process::id()));
    std::fs::write(&dir, "[media]\nlisten = \"not an address\"\n").unwrap();
    let output = Command::new(SFT).arg("--config").arg(&dir).output().unwrap();
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("media.listen"), "{stderr}");

    let output = Command::new(SFT).env("SFT_MEDIA__IDLE_TIMEOUT", "-3").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr).unwrap().contains("media.idle_timeout"));

    let output = Command::new(SFT).env("SFT_MEDIA__NOSUCHKEY", "1").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("media.nosuchkey") && stderr.contains("SFT_MEDIA__NOSUCHKEY"), "{stderr}");

    let output = Command::new(SFT).env("SFT_LIMITS__MAX_PARTICIPANTS", "lots").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("limits.max_participants"), "{stderr}");

    // A certificate that cannot be read is a configuration problem too.
    let output = Command::new(SFT)
        .env("SFT_SIGNALLING__TLS_CERT", "/nonexistent/cert.pem")
        .env("SFT_SIGNALLING__TLS_KEY", "/nonexistent/key.pem")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr).unwrap().contains("/nonexistent/cert.pem"));
}

#[test]
fn sigterm_without_calls_exits_0() {
    let mut sft = spawn_sft();
    let health = reqwest::blocking::get(format!("http://{}/healthz", sft.metrics)).unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(reqwest::blocking::get(format!("http://{}/readyz", sft.metrics)).unwrap().status(), 200);
    let page = reqwest::blocking::get(format!("http://{}/", sft.signalling)).unwrap();
    assert!(page.text().unwrap().contains("<title>sft"));
    terminate(&sft.child);
    assert_eq!(wait_exit(&mut sft.child, Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_refuses_new_sessions_and_exits_when_the_last_call_ends() {
    let mut sft = spawn_sft();
    let http = reqwest::Client::new();
    let base = format!("http://{}", sft.signalling);
    let peer = Peer::offer_only(PeerOptions::new("drained", "alice", 1)).await;
    let offer = peer.pc.local_description().await.unwrap().sdp;
    let joined =
        http.post(format!("{base}/sft/drained")).json(&setup_body(&peer.sessid, "alice", &offer)).send().await.unwrap();
    assert_eq!(joined.status(), 200);

    let drain = http.post(format!("http://{}/admin/drain", sft.metrics)).send().await.unwrap();
    assert!(drain.status().is_success());
    assert_eq!(http.get(format!("http://{}/readyz", sft.metrics)).send().await.unwrap().status(), 503);
    let late = Peer::offer_only(PeerOptions::new("drained", "bob", 2)).await;
    let late_offer = late.pc.local_description().await.unwrap().sdp;
    let refused = http
        .post(format!("{base}/sft/drained"))
        .json(&setup_body(&late.sessid, "bob", &late_offer))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");

    // The existing call keeps the process alive until it ends.
    terminate(&sft.child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sft.child.try_wait().unwrap().is_none(), "still serving the running call");
    let left = http.delete(format!("{base}/sft/drained/{}", peer.sessid)).send().await.unwrap();
    assert_eq!(left.status(), 204);
    assert_eq!(wait_exit(&mut sft.child, Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_drain_stays_unready_for_its_grace_and_can_be_cancelled() {
    let mut sft = spawn_sft_with_env(&[("SFT_DRAIN_GRACE", "2")]);
    let http = reqwest::Client::new();
    let (drain, ready) = (format!("http://{}/admin/drain", sft.metrics), format!("http://{}/readyz", sft.metrics));
    // Cancelled: ready again, and it stays up.
    assert!(http.post(&drain).send().await.unwrap().status().is_success());
    assert_eq!(http.get(&ready).send().await.unwrap().status(), 503);
    assert_eq!(http.delete(&drain).send().await.unwrap().status(), 200);
    assert_eq!(http.get(&ready).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(sft.child.try_wait().unwrap().is_none(), "a cancelled drain does not exit");
    assert_eq!(http.delete(&drain).send().await.unwrap().status(), 409, "nothing to cancel");
    // Not cancelled: unready at once, but alive through the grace although idle.
    let started = Instant::now();
    assert!(http.post(&drain).send().await.unwrap().status().is_success());
    assert_eq!(http.get(&ready).send().await.unwrap().status(), 503);
    assert_eq!(wait_exit(&mut sft.child, Duration::from_secs(10)), Some(0));
    assert!(started.elapsed() >= Duration::from_millis(1900), "exited after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_ip_flag_sets_the_host_candidate() {
    let sft = spawn_sft_with(&["--public-ip", "127.0.0.9"]);
    let peer = Peer::offer_only(PeerOptions::new("pub", "alice", 1)).await;
    let offer = peer.pc.local_description().await.unwrap().sdp;
    let response = reqwest::Client::new()
        .post(format!("http://{}/sft/pub", sft.signalling))
        .json(&setup_body(&peer.sessid, "alice", &offer))
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    let sdp = answer["props"]["sdp"].as_str().unwrap();
    let candidate = sdp.lines().find(|l| l.starts_with("a=candidate")).expect("a host candidate");
    assert!(candidate.contains(" 127.0.0.9 ") && candidate.contains("typ host"), "{candidate}");
    assert!(sdp.contains("a=ice-lite"), "ICE-lite answer");
}
