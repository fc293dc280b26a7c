//! Peers the test plays itself, holding b.example's real certificate: a
//! hostile one that attaches to an a.example conference and then lies and
//! floods on the relay (what it sends is dropped, capped, throttled and
//! counted; the anchor's calls go on), and one that speaks only the first
//! relay version.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fed::{rejected, Certs};
use common::{wait_for, Peer, PeerOptions, TestSft, Video};
use sft::config::Config;
use sft::core::conference::RosterEntry;
use sft::core::ids::{Identity, Layer};
use sft::federation::control::ControlClient;
use sft::federation::discovery::Discovery;
use sft::federation::relay;
use sft::federation::trust::Trust;
use sft::wire::{encode_control, Control};

/// The anchor's conference size limit: two clients of its own, so a roster
/// from the hostile peer has room for ten.
const MAX_CONFERENCE_SIZE: usize = 12;
/// The hostile peer's channel: b.example sorts after a.example, so its
/// half of the channel numbers (`sft-relay/2`) has bit 31 set.
const CHANNEL: u32 = 1 << 31 | 1;

fn entry(id: u64, userid: &str, domain: &str) -> RosterEntry {
    RosterEntry {
        id,
        identity: Identity { userid: userid.into(), clientid: format!("{userid}-client"), domain: domain.into() },
        audio: true,
        layers: vec![Layer::Low],
    }
}

/// b.example's federation settings, read the way the `sft` binary reads them.
fn b_config(certs: &Certs) -> Config {
    let path = certs.dir.join("b-hostile.toml");
    std::fs::write(&path, certs.federation_toml("b.example", "127.0.0.2", "")).unwrap();
    Config::load(Some(&path), Vec::new()).unwrap()
}

/// b.example's credentials and control-plane client, aimed at `a`.
fn b_peer(certs: &Certs, a: &TestSft) -> (Trust, ControlClient) {
    let config = b_config(certs);
    let trust = Trust::load("b.example", config.federation.as_ref().unwrap()).unwrap();
    let fed = a.server.federation.as_ref().unwrap();
    let peers = [("a.example".to_string(), fed.control.to_string())].into_iter().collect();
    let control = ControlClient {
        own_domain: "b.example".into(),
        tls: trust.client_config(&[b"http/1.1"]).unwrap(),
        discovery: Arc::new(Discovery::new(peers, None, Duration::from_secs(3))),
        via_federator: None,
    };
    (trust, control)
}

/// A peer from before `sft-relay/2` (it offers only `sft-relay/1`) still
/// dials, attaches and gets the anchor's roster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_speaks_only_the_first_relay_version_still_attaches() {
    let certs = Certs::new(&["a.example", "b.example"]);
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", "")).await;
    let _a1 = Peer::join(&a, PeerOptions { video: Video::None, ..PeerOptions::new("old", "a1", 1) }).await;
    let (trust, control) = b_peer(&certs, &a);
    let answer = control.join("a.example", "old", "b.example").await.unwrap();

    let tls = trust.client_config(&[b"sft-relay/1"]).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint.connect(answer.relay.parse().unwrap(), "a.example").unwrap().await.unwrap();
    let alpn = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    assert_eq!(alpn.as_deref(), Some(&b"sft-relay/1"[..]), "the anchor still speaks version 1");
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&encode_control(&Control::Hello { domain: "b.example".into() })).await.unwrap();
    let attach = Control::Attach { channel: 1, conf_id: "old".into(), relay_token: answer.relay_token };
    send.write_all(&encode_control(&attach)).await.unwrap();
    tokio::time::timeout(common::TIMEOUT, async {
        loop {
            if let Some(Control::Roster { participants, .. }) = relay::read_control(&mut recv).await.unwrap() {
                if participants.iter().any(|p| p.identity.userid == "a1") {
                    return;
                }
            }
        }
    })
    .await
    .expect("the anchor's roster over a version 1 connection");
    assert_eq!(a.metric("sft_federation_links{peer_domain=\"b.example\",state=\"up\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_lies_and_floods_is_dropped_capped_throttled_and_counted() {
    let _one = common::one_big_call_at_a_time().await;
    let certs = Certs::new(&["a.example", "b.example"]);
    let a_toml = format!(
        "{}[limits]\nmax_conference_size = {MAX_CONFERENCE_SIZE}\n",
        certs.federation_toml("a.example", "127.0.0.1", "max_control_rate = 1000\n")
    );
    let a = TestSft::start(&a_toml).await;
    let listener = |conf: &str, user: &str, marker: u8| PeerOptions {
        video: Video::None,
        video_slots: 0,
        audio_slots: 1,
        ..PeerOptions::new(conf, user, marker)
    };
    let a1 =
        Peer::join(&a, PeerOptions { audio_slots: 1, video_slots: 1, ..PeerOptions::new("victim", "a1", 1) }).await;
    let a2 =
        Peer::join(&a, PeerOptions { audio_slots: 1, video_slots: 1, ..PeerOptions::new("victim", "a2", 2) }).await;
    let a3 = Peer::join(&a, listener("bystander", "a3", 3)).await;
    let a4 = Peer::join(&a, listener("bystander", "a4", 4)).await;
    wait_for("both calls to carry audio", || a2.heard(1) > 10 && a3.heard(4) > 10 && a4.heard(3) > 10).await;

    // The hostile peer: b's certificate, a real join for a real token.
    let (trust, control) = b_peer(&certs, &a);
    let answer = control.join("a.example", "victim", "b.example").await.unwrap();
    let endpoint = relay::endpoint(&trust, "127.0.0.2:0".parse().unwrap()).unwrap();
    let (_connection, mut send, mut recv) = relay::dial(&endpoint, &trust, "a.example", &answer.relay).await.unwrap();
    let attach = Control::Attach { channel: CHANNEL, conf_id: "victim".into(), relay_token: answer.relay_token };
    send.write_all(&encode_control(&attach)).await.unwrap();
    // The anchor answers with its roster: a1's id in its numbering.
    let a1_id = tokio::time::timeout(common::TIMEOUT, async {
        loop {
            if let Some(Control::Roster { participants, .. }) = relay::read_control(&mut recv).await.unwrap() {
                if let Some(a1) = participants.iter().find(|p| p.identity.userid == "a1") {
                    return a1.id;
                }
            }
        }
    })
    .await
    .expect("the anchor's roster");

    // Lies: two participants of a.example, then 2,000 of its own.
    let mut roster = vec![entry(1, "mallory", "a.example"), entry(2, "trudy", "a.example")];
    roster.extend((10..2010).map(|id| entry(id, &format!("b{id}"), "b.example")));
    send.write_all(&encode_control(&Control::Roster { channel: CHANNEL, participants: roster })).await.unwrap();
    let mut polls = 0;
    while rejected(&a, "roster-capacity").await == 0.0 {
        polls += 1;
        assert!(polls < 400, "the roster was never capped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rejected(&a, "roster-domain").await, 2.0);
    assert_eq!(rejected(&a, "roster-capacity").await, 1990.0);
    let mut polls = 0;
    while a.metric("sft_participants{role=\"remote\"}").await != 10.0 {
        polls += 1;
        assert!(polls < 100, "ten remote participants admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("a2's CONFPART to list the ten admitted", || a2.participants().len() == MAX_CONFERENCE_SIZE).await;
    for name in ["mallory", "trudy"] {
        assert!(!a2.participants().contains(&name.to_string()), "{name} impersonates a.example");
    }

    // Flood: 3,000 keyframe requests for a1 in one go, while the bystanders talk.
    let plis_before = a1.plis_received();
    let heard_before = (a3.heard(4), a4.heard(3), a2.heard(1));
    let flood: Vec<u8> = (0..3000)
        .flat_map(|_| {
            encode_control(&Control::Keyframe { channel: CHANNEL, publisher: a1_id, layer: Some(Layer::High) })
        })
        .collect();
    let flooding = std::time::Instant::now();
    send.write_all(&flood).await.unwrap();
    // At 1,000 messages a second after a burst of 1,000, up to 2,000 of them
    // wait their turn: some 2 s to read them all. On a loaded machine the
    // edge takes them more slowly than that, and fewer have to wait (1,130
    // in one CI run): at least 500 show that the pacer held the flood.
    let paced_before = rejected(&a, "control-rate").await;
    let mut polls = 0;
    while rejected(&a, "control-rate").await < paced_before + 500.0 {
        polls += 1;
        assert!(polls < 400, "the flood was never paced: {}", rejected(&a, "control-rate").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seconds = flooding.elapsed().as_secs_f64();
    let plis = a1.plis_received() - plis_before;
    // The per-stream throttle lets one request through every 300 ms.
    let bound = (seconds / 0.3).ceil() as u64 + 3;
    assert!(plis <= bound, "{plis} PLIs reached a1 in {seconds:.1} s of flood (bound {bound})");
    let heard = (a3.heard(4) - heard_before.0, a4.heard(3) - heard_before.1, a2.heard(1) - heard_before.2);
    let expected = (seconds * 50.0 * 0.8) as usize;
    assert!(
        heard.0 > expected && heard.1 > expected && heard.2 > expected,
        "audio during the flood (a3, a4, a2): {heard:?} packets in {seconds:.1} s"
    );
}
