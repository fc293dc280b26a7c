//! Media workers: conferences spread over them, each on its own port, the
//! limits hold across them, and federated conferences on different workers
//! of both SFTs relay through one link.

mod common;

use common::fed::{on, peers_table, Certs};
use common::{wait_for, Peer, PeerOptions, TestSft, Video};

const TWO_WORKERS: &str = "[media]\nworkers = 2\n";

/// The port of the host candidate in an answer.
fn candidate_port(answer: &str) -> u16 {
    let line = answer.lines().find(|l| l.starts_with("a=candidate:")).expect("a host candidate");
    // a=candidate:<foundation> <component> udp <priority> <ip> <port> typ host
    line.split_whitespace().nth(5).unwrap().parse().unwrap()
}

/// Both peers of each pair hear each other.
async fn wait_for_audio(pairs: &[(&Peer, &Peer)]) {
    for (peer, other) in pairs {
        let what = format!("{} to hear {}", peer.options.userid, other.options.userid);
        wait_for(&what, || peer.heard(other.options.marker) > 20).await;
    }
}

fn audio_only(conf: &str, userid: &str, marker: u8) -> PeerOptions {
    PeerOptions { video: Video::None, ..PeerOptions::new(conf, userid, marker) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conferences_spread_over_the_workers_each_on_its_own_port() {
    let sft = TestSft::start(TWO_WORKERS).await;
    let ports: Vec<u16> = sft.server.media_addrs.iter().map(|a| a.port()).collect();
    assert_eq!(ports.len(), 2);
    let a1 = Peer::join(&sft, audio_only("one", "a1", 1)).await;
    let b1 = Peer::join(&sft, audio_only("two", "b1", 3)).await;
    let a2 = Peer::join(&sft, audio_only("one", "a2", 2)).await;
    let b2 = Peer::join(&sft, audio_only("two", "b2", 4)).await;
    // The first conference went to worker 0, the second to the idle worker 1,
    // and their later participants followed them.
    assert_eq!([&a1, &a2].map(|p| candidate_port(&p.answer_sdp)), [ports[0]; 2]);
    assert_eq!([&b1, &b2].map(|p| candidate_port(&p.answer_sdp)), [ports[1]; 2]);
    wait_for_audio(&[(&a1, &a2), (&a2, &a1), (&b1, &b2), (&b2, &b1)]).await;
    assert_eq!(a1.heard(3) + a1.heard(4) + b1.heard(1) + b1.heard(2), 0, "no audio across conferences");

    for worker in ["0", "1"] {
        let series = |name: &str| format!("{name}{{worker=\"{worker}\"}}");
        assert_eq!(sft.metric(&series("sft_worker_sessions")).await, 2.0, "worker {worker}");
        assert_eq!(sft.metric(&series("sft_worker_conferences")).await, 1.0, "worker {worker}");
        assert!(sft.metric(&series("sft_worker_packets_forwarded_total")).await > 0.0, "worker {worker}");
        sft.wait_for_metric(&series("sft_worker_cpu_seconds_total"), "its CPU time to grow", |s| s > 0.0).await;
    }
    assert_eq!(sft.metric("sft_participants{role=\"local\"}").await, 4.0, "the workers' sum");
    assert_eq!(sft.metric("sft_conferences").await, 2.0);

    // Conference one ends; worker 0 is the least loaded again.
    a1.close().await;
    a2.close().await;
    sft.wait_for_metric("sft_worker_sessions{worker=\"0\"}", "worker 0 to empty", |s| s == 0.0).await;
    sft.wait_for_metric("sft_conferences", "one conference left", |c| c == 1.0).await;
    let c1 = Peer::join(&sft, audio_only("three", "c1", 5)).await;
    assert_eq!(candidate_port(&c1.answer_sdp), ports[0]);
    assert_eq!(sft.metric("sft_participants{role=\"local\"}").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_participant_limit_holds_across_workers() {
    let sft = TestSft::start(&format!("{TWO_WORKERS}[limits]\nmax_participants = 3\n")).await;
    let _one = Peer::join(&sft, audio_only("one", "a1", 1)).await;
    let _two = Peer::join(&sft, audio_only("two", "b1", 2)).await;
    let _three = Peer::join(&sft, audio_only("three", "c1", 3)).await;
    let fourth = Peer::offer_only(audio_only("four", "d1", 4)).await;
    let (status, answer) = fourth.post_setup(&sft, None).await;
    assert_eq!((status, answer["error"].as_str()), (503, Some("unavailable")), "{answer}");
    assert_eq!(sft.metric("sft_participants{role=\"local\"}").await, 3.0);
}

/// Two conferences anchored at a, each with a participant on a and one on
/// b; on both SFTs they live on different workers, so the link's frames and
/// control messages must reach two workers on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn federated_conferences_on_different_workers_share_one_link() {
    let _one = common::one_big_call_at_a_time().await;
    let certs = Certs::new(&["a.example", "b.example"]);
    let a = TestSft::start(&format!("{}{TWO_WORKERS}", certs.federation_toml("a.example", "127.0.0.1", ""))).await;
    let to_a = peers_table(&[("a.example", &a)]);
    let b = TestSft::start(&format!("{}{TWO_WORKERS}", certs.federation_toml("b.example", "127.0.0.2", &to_a))).await;

    let audio = |options: PeerOptions| PeerOptions { video: Video::None, ..options };
    let a1 = Peer::join(&a, audio(on("a.example", "f1", "a1", 1))).await;
    let a2 = Peer::join(&a, audio(on("a.example", "f2", "a2", 2))).await;
    let b1 = Peer::join(&b, audio(on("b.example", "f1", "b1", 3))).await;
    let b2 = Peer::join(&b, audio(on("b.example", "f2", "b2", 4))).await;
    for (sft, peers) in [(&a, [&a1, &a2]), (&b, [&b1, &b2])] {
        let ports: Vec<u16> = sft.server.media_addrs.iter().map(|a| a.port()).collect();
        assert_eq!(peers.map(|p| candidate_port(&p.answer_sdp)), [ports[0], ports[1]]);
    }
    wait_for_audio(&[(&a1, &b1), (&b1, &a1), (&a2, &b2), (&b2, &a2)]).await;
    assert_eq!(a1.heard(4) + a2.heard(3) + b1.heard(2) + b2.heard(1), 0, "no audio across conferences");
    assert_eq!(a.metric("sft_participants{role=\"remote\"}").await, 2.0);
    assert_eq!(
        a.metric("sft_federation_connections_total{direction=\"in\",peer_domain=\"b.example\"}").await,
        1.0,
        "one link carries both"
    );

    // b's participant of f2 leaves: only f2 detaches, f1 keeps flowing.
    b2.close().await;
    a.wait_for_metric("sft_participants{role=\"remote\"}", "one remote participant left", |r| r == 1.0).await;
    let heard = a1.heard(3);
    wait_for("a1 to keep hearing b1", || a1.heard(3) > heard + 20).await;
}
