//! Federation: three SFTs (domains a, b, c) on loopback with certificates
//! the test makes, webrtc-rs peers on each, the anchor relaying between them.

mod common;

use common::fed::{on, peers_table, Certs};
use common::{wait_for, Peer, TestSft};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_peers_on_three_sfts_see_and_hear_each_other() {
    let certs = Certs::new(&["a.example", "b.example", "c.example"]);
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", "")).await;
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &peers_table(&[("a.example", &a)]))).await;
    let c = TestSft::start(&certs.federation_toml("c.example", "127.0.0.3", &peers_table(&[("a.example", &a)]))).await;

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
            wait_for(&format!("{} to get {}'s media", peer.options.userid, other.options.userid), || {
                let heard = peer
                    .all_slot_stats()
                    .values()
                    .any(|s| s.markers.iter().filter(|m| **m == other.options.marker).count() > 10);
                let stats = peer.slot_stats(&video);
                heard && stats.packets > 20 && !stats.keyframe_widths.is_empty()
            })
            .await;
        }
    }
    assert_eq!(a.metric("sft_participants{role=\"local\"}").await, 2.0);
    assert_eq!(a.metric("sft_participants{role=\"remote\"}").await, 3.0);
    assert_eq!(b.metric("sft_participants{role=\"remote\"}").await, 3.0);
    assert_eq!(a.metric("sft_federation_links{peer_domain=\"b.example\",state=\"up\"}").await, 1.0);
    assert!(b.metric("sft_federation_relay_bytes_total{direction=\"in\",peer_domain=\"a.example\"}").await > 0.0);
}
