//! Reloading federation credentials during a call (SIGHUP to the `sft`
//! process): a rotated certificate serves new connections while the call
//! goes on, and a domain taken off the allow list loses its link at once.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fed::{fixed_ports_toml, on, peers_at, Certs};
use common::process::SftProcess;
use common::{wait_for, wait_for_within, Peer, PeerOptions, TestSft, Video};
use rustls::pki_types::{CertificateDer, ServerName};
use sft::config::Config;
use sft::federation::relay;
use sft::federation::trust::Trust;

fn listener(domain: &str, conf: &str, user: &str, marker: u8) -> PeerOptions {
    PeerOptions { video: Video::None, video_slots: 0, audio_slots: 1, ..on(domain, conf, user, marker) }
}

/// c.example's trust (its certificate and CAs), as the `sft` binary loads
/// it: a third domain looks at a's certificates, so that its connections
/// never replace b's relay link.
fn c_trust(certs: &Certs) -> Trust {
    let path = certs.dir.join("c-reload.toml");
    std::fs::write(&path, certs.federation_toml("c.example", "127.0.0.3", "")).unwrap();
    let config = Config::load(Some(&path), Vec::new()).unwrap();
    Trust::load("c.example", config.federation.as_ref().unwrap()).unwrap()
}

/// The certificate a.example's control plane presents to a new connection.
async fn control_plane_certificate(trust: &Trust, control: &str) -> CertificateDer<'static> {
    common::install_crypto_provider();
    let tls = trust.client_config(&[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(control).await.unwrap();
    let name = ServerName::try_from("a.example").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// The certificate a.example's relay presents to a new connection.
async fn relay_certificate(trust: &Trust, relay_addr: &str) -> CertificateDer<'static> {
    let endpoint = relay::endpoint(trust, "127.0.0.3:0".parse().unwrap()).unwrap();
    let (connection, _, _) = relay::dial(&endpoint, trust, "a.example", relay_addr).await.unwrap();
    let chain = connection.peer_identity().unwrap().downcast::<Vec<CertificateDer<'static>>>().unwrap();
    connection.close(0u32.into(), b"seen");
    chain[0].clone()
}

fn a_certificate(certs: &Certs) -> CertificateDer<'static> {
    sft::tls::certificates(&certs.dir.join("a.example").join("cert.pem")).unwrap().remove(0)
}

/// The longest silence in `viewer`'s audio from `userid` between `from` and `to`.
fn longest_gap(viewer: &Peer, userid: &str, from: Instant, to: Instant) -> Duration {
    let mid = viewer.slot_mid_of(userid, "audio").unwrap();
    let arrivals: Vec<Instant> =
        viewer.slot_stats(&mid).arrivals.iter().map(|(at, _)| *at).filter(|at| *at >= from && *at <= to).collect();
    assert!(arrivals.len() > 10, "audio from {userid} between the marks");
    arrivals.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap()
}

async fn wait_for_reloads(a: &SftProcess, result: &str, count: f64) {
    let series = format!("sft_config_reloads_total{{result=\"{result}\"}}");
    let deadline = Instant::now() + common::TIMEOUT;
    while a.metric(&series).await < count {
        assert!(Instant::now() < deadline, "no {result} reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_rotated_by_sighup_serves_new_connections_while_the_call_goes_on() {
    let certs = Certs::new(&["a.example", "b.example", "c.example"]);
    let (a_toml, a_control) = fixed_ports_toml(&certs, "a.example", "127.0.0.1", "");
    let a = SftProcess::start(&a_toml, "127.0.0.1").await;
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &peers_at("a.example", &a_control))).await;
    let a1 = Peer::join(&a, listener("a.example", "rotate", "a1", 1)).await;
    let b1 = Peer::join(&b, listener("b.example", "rotate", "b1", 2)).await;
    wait_for("media both ways", || b1.heard(1) > 25 && a1.heard(2) > 25).await;
    let trust = c_trust(&certs);
    let old = a_certificate(&certs);
    assert_eq!(control_plane_certificate(&trust, &a_control).await, old);
    let relay_addr = a_toml.split("relay_listen = \"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    assert_eq!(relay_certificate(&trust, &relay_addr).await, old);

    // A new certificate and key at the same paths, then SIGHUP.
    let before = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sft::certs::dev("a.example", &certs.dir.join("a.example"), Some(&certs.dir.join("ca")), false).unwrap();
    let new = a_certificate(&certs);
    assert_ne!(new, old);
    a.hangup();
    wait_for_reloads(&a, "success", 1.0).await;
    assert_eq!(control_plane_certificate(&trust, &a_control).await, new, "new TLS connections get the new certificate");
    assert_eq!(relay_certificate(&trust, &relay_addr).await, new, "new relay connections too");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The call never stopped; the live relay link stayed up.
    let after = Instant::now();
    for (viewer, of) in [(&b1, "a1"), (&a1, "b1")] {
        let gap = longest_gap(viewer, of, before, after);
        assert!(gap < Duration::from_millis(500), "{} heard nothing from {of} for {gap:?}", viewer.options.userid);
    }
    assert_eq!(b.metric("sft_federation_connections_total{direction=\"out\",peer_domain=\"a.example\"}").await, 1.0);

    // A broken file is refused and changes nothing.
    std::fs::write(certs.dir.join("a.example").join("key.pem"), "not a key").unwrap();
    a.hangup();
    wait_for_reloads(&a, "failure", 1.0).await;
    assert_eq!(control_plane_certificate(&trust, &a_control).await, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_domain_taken_off_the_allow_list_loses_its_link_within_a_second() {
    let certs = Certs::new(&["a.example", "b.example"]);
    let allow = |list: &str| format!("strategy = \"allowList\"\nallow = [{list}]\n");
    let (a_toml, a_control) = fixed_ports_toml(&certs, "a.example", "127.0.0.1", &allow("\"b.example\""));
    let a = SftProcess::start(&a_toml, "127.0.0.1").await;
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &peers_at("a.example", &a_control))).await;
    let a1 = Peer::join(&a, listener("a.example", "revoke", "a1", 1)).await;
    let b1 = Peer::join(&b, listener("b.example", "revoke", "b1", 2)).await;
    wait_for("media both ways", || b1.heard(1) > 10 && a1.heard(2) > 10).await;

    a.rewrite_config(&a_toml.replace(&allow("\"b.example\""), &allow("")));
    a.hangup();
    wait_for_reloads(&a, "success", 1.0).await;
    let reloaded = Instant::now();
    wait_for_within("b1 to stop hearing a1", Duration::from_secs(3), || {
        let heard = b1.heard(1);
        std::thread::sleep(Duration::from_millis(200));
        b1.heard(1) == heard
    })
    .await;
    assert!(reloaded.elapsed() < Duration::from_millis(1500), "the link outlived the reload: {:?}", reloaded.elapsed());
    // b cannot come back: its redials are refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heard = b1.heard(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b1.heard(1), heard, "no media from a after the reload");
    assert!(a.metric("sft_federation_rejected_total{reason=\"domain-not-allowed\"}").await >= 1.0);
}
