//! Federation limits an anchor puts on its peers: conferences per relay
//! link, and no new federated conferences while it drains (which waits for
//! the calls it anchors for other SFTs' clients too).
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::time::Duration;

use common::fed::{on, peers_table, rejected, Certs};
use common::{wait_for, Peer, PeerOptions, Signalling, TestSft, Video};
use sft::server::DrainOutcome;

fn listener(domain: &str, conf: &str, user: &str, marker: u8) -> PeerOptions {
    PeerOptions { video: Video::None, video_slots: 0, audio_slots: 4, ..on(domain, conf, user, marker) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_attaches_no_more_conferences_than_the_anchor_allows() {
    let certs = Certs::new(&["a.example", "b.example"]);
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", "max_conferences_per_link = 1\n")).await;
    let to_a = format!("link_linger = 1\n{}", peers_table(&[("a.example", &a)]));
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &to_a)).await;
    let a1 = Peer::join(&a, listener("a.example", "first", "a1", 1)).await;
    let a2 = Peer::join(&a, listener("a.example", "second", "a2", 2)).await;
    let b1 = Peer::join(&b, listener("b.example", "first", "b1", 3)).await;
    wait_for("b1 to hear a1", || b1.heard(1) > 10).await;

    // A second conference on the same link is refused, counted, and its
    // participants never meet.
    let b2 = Peer::join(&b, listener("b.example", "second", "b2", 4)).await;
    let mut polls = 0;
    while rejected(&a, "conference-capacity").await != 1.0 {
        polls += 1;
        assert!(polls < 400, "the second attach was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b2.participants(), vec!["b2".to_string()]);
    assert_eq!(a2.participants(), vec!["a2".to_string()]);
    assert_eq!(b2.heard(2), 0);
    // The first conference goes on.
    let heard = b1.heard(1);
    wait_for("b1 to keep hearing a1", || b1.heard(1) > heard + 10).await;
    assert_eq!(a1.participants(), vec!["a1".to_string(), "b1".to_string()]);
    assert_eq!(rejected(&a, "conference-capacity").await, 1.0, "a refusal for capacity is not asked again");

    // b let the refused conference go: once b1 leaves, nothing holds the
    // link (b2 stays in a conference of its own) and it lingers out.
    let http = reqwest::Client::new();
    assert_eq!(http.delete(b.url(&format!("/sft/first/{}", b1.sessid))).send().await.unwrap().status(), 204);
    b1.stop_publishing();
    b.wait_for_metric("sft_federation_links{peer_domain=\"a.example\",state=\"up\"}", "b to give the link up", |v| {
        v == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_anchor_waits_for_other_sfts_clients_and_takes_no_new_ones() {
    let certs = Certs::new(&["a.example", "b.example"]);
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", "")).await;
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &peers_table(&[("a.example", &a)]))).await;
    // a anchors a call of b's clients only: its own client has left.
    let a1 = Peer::join(&a, listener("a.example", "relayed", "a1", 1)).await;
    let b1 = Peer::join(&b, listener("b.example", "relayed", "b1", 2)).await;
    let b2 = Peer::join(&b, listener("b.example", "relayed", "b2", 3)).await;
    wait_for("b1 and b2 to hear each other", || b1.heard(3) > 10 && b2.heard(2) > 10).await;
    a1.close().await;
    wait_for("a1 to leave", || b1.participants() == vec!["b1".to_string(), "b2".to_string()]).await;

    // Draining does not end while the call it anchors goes on.
    let outcome = a.server.drain_and_wait(Duration::from_millis(500), Duration::ZERO).await;
    assert_eq!(outcome, DrainOutcome::TimedOut, "the drain waits for b's call");
    let heard = b1.heard(3);
    wait_for("b's call to go on", || b1.heard(3) > heard + 10).await;
    // No new federated conference: b's SETUP for one gets 503, and so does a's own.
    let b3 = Peer::offer_only(listener("b.example", "newcall", "b3", 4)).await;
    let (status, body) = b3.post_setup(&b, None).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")), "{body}");
    assert_eq!(rejected(&a, "draining").await, 1.0);

    // Once b's clients leave, the drain completes.
    b1.close().await;
    b2.close().await;
    let outcome = a.server.drain_and_wait(common::TIMEOUT, Duration::ZERO).await;
    assert_eq!(outcome, DrainOutcome::Drained, "the drain ends with the call");
}
