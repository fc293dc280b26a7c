//! No growth over 1,000 join/leave cycles: a global allocator that tracks
//! the live heap bytes of the whole process (the in-process SFT and its
//! str0m clients) shows that sessions which joined, exchanged media and left
//! leave nothing behind. Live bytes, not RSS: RSS also moves with what the
//! C allocator keeps cached, which says nothing about state left behind.
#![allow(clippy::disallowed_methods)] // the clients are driven with real time

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::counting::{live_bytes, Counting};
use common::str0m_client::{connect_all, vp8_keyframe, Str0mClient};
use common::{TestSft, TIMEOUT};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sessions per round, one of them publishing; 100 rounds make 1,000 cycles.
const PER_ROUND: usize = 10;
const ROUNDS: usize = 100;
/// Rounds before the baseline is taken: maps and pools reach their working size.
const WARM_UP: usize = 10;
const FRAMES_PER_ROUND: u64 = 30;
/// What 900 cycles may add in all: 64 bytes a cycle would already exceed it.
const ALLOWED_GROWTH: i64 = 48 * 1024;

fn local_participants(http: &reqwest::blocking::Client, metrics: SocketAddr) -> f64 {
    let text = http.get(format!("http://{metrics}/metrics")).send().and_then(|r| r.text()).expect("/metrics answers");
    text.lines()
        .find_map(|line| line.strip_prefix("sft_participants{role=\"local\"} "))
        .and_then(|value| value.trim().parse().ok())
        .expect("sft_participants in /metrics")
}

/// One round: everyone joins one conference, the publisher sends a few
/// frames, everyone leaves with DELETE; returns the packets received.
fn round(http: &reqwest::blocking::Client, sft: &TestSft, number: usize) -> u64 {
    let conf = format!("memory-{number}");
    let mut clients: Vec<Str0mClient> = (0..PER_ROUND)
        .map(|i| Str0mClient::join(http, sft.server.signalling_addr, &conf, &format!("s{i}"), i == 0))
        .collect();
    let mut buffer = vec![0u8; 2048];
    connect_all(&mut clients, &mut buffer, TIMEOUT);
    let payload = vp8_keyframe(1000);
    for frame in 1..=FRAMES_PER_ROUND {
        let now = Instant::now();
        clients[0].publish(now, frame, &payload);
        clients.iter_mut().for_each(|c| c.drive(now, &mut buffer));
        std::thread::sleep(Duration::from_millis(2));
    }
    let received = clients[1..].iter().map(|c| c.packets).sum();
    for i in 0..PER_ROUND {
        let status = http
            .delete(format!("http://{}/sft/{conf}/s{i}", sft.server.signalling_addr))
            .send()
            .expect("DELETE answered")
            .status();
        assert_eq!(status, 204, "round {number}: DELETE of s{i}");
    }
    drop(clients);
    let deadline = Instant::now() + TIMEOUT;
    while local_participants(http, sft.server.metrics_addr) > 0.0 {
        assert!(Instant::now() < deadline, "round {number}: sessions never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    received
}

#[test]
fn a_thousand_joins_and_leaves_leave_no_state_behind() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // 2,000 SETUPs and DELETEs from one address, faster than its default rate.
    let sft = runtime.block_on(TestSft::start("[limits]\nexempt_loopback = true\n"));
    let http = reqwest::blocking::Client::new();
    let mut baseline = None;
    let mut received = 0;
    for number in 0..ROUNDS {
        received += round(&http, &sft, number);
        if number + 1 == WARM_UP {
            baseline = Some(live_bytes());
        }
    }
    let baseline = baseline.expect("warm-up rounds ran");
    let growth = live_bytes() - baseline;
    println!(
        "live heap after warm-up {baseline} bytes; growth over {} cycles: {growth} bytes",
        (ROUNDS - WARM_UP) * PER_ROUND
    );
    assert!(received > 0, "no media was forwarded, so the cycles did not exercise the packet path");
    assert!(growth < ALLOWED_GROWTH, "{growth} bytes stayed behind after {} cycles", (ROUNDS - WARM_UP) * PER_ROUND);
}
