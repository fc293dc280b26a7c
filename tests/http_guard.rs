//! Every HTTP listener is guarded: slow or idle connections are closed after
//! `limits.http_header_timeout`, and no more than `limits.max_http_connections`
//! are open at once.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::time::{Duration, Instant};

use common::TestSft;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: &str = "[limits]\nhttp_header_timeout = 2\nmax_http_connections = 20\n";

/// Whether the server closed `stream` within `within` (a read sees the end).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_connections_are_closed_and_open_ones_capped() {
    let sft = TestSft::start(LIMITS).await;
    let addr = sft.server.signalling_addr;
    let opened = Instant::now();
    // Twenty slowloris connections: headers that never end.
    let mut slow = Vec::new();
    for n in 0..20 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET / HTTP/1.1\r\nHost: sft\r\nX-Slow-{n}: 1\r\n").as_bytes()).await.unwrap();
        slow.push(stream);
    }
    // The 21st is closed at once, and counted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_millis(500)).await, "a 21st connection is refused");
    assert_eq!(sft.metric("sft_http_connections_refused_total{listener=\"signalling\"}").await, 1.0);
    // The metrics port has limits of its own and still answers.
    assert_eq!(reqwest::get(format!("http://{}/healthz", sft.server.metrics_addr)).await.unwrap().status(), 200);

    // Each slow client trickles on, and is closed once its headers are 2 s late.
    let trickle = tokio::spawn(async move {
        for (n, stream) in slow.iter_mut().enumerate() {
            let _ = stream.write_all(format!("X-More-{n}: 1\r\n").as_bytes()).await;
        }
        let mut closed = 0;
        for stream in &mut slow {
            if closed_within(stream, Duration::from_secs(4)).await {
                closed += 1;
            }
        }
        closed
    });
    assert_eq!(trickle.await.unwrap(), 20, "every slow connection closed");
    assert!(opened.elapsed() < Duration::from_secs(6), "closed after {:?}", opened.elapsed());

    // A client that finished a request and then idles is closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: sft\r\n\r\n").await.unwrap();
    let mut response = [0u8; 64];
    let read = idle.read(&mut response).await.unwrap();
    assert!(response[..read].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&response[..read]));
    let idle_since = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "an idle keep-alive connection is closed");
    assert!(idle_since.elapsed() >= Duration::from_millis(1500), "not before the timeout: {:?}", idle_since.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_requests_need_the_admin_token_once_one_is_set() {
    let sft = TestSft::start("[metrics]\nadmin_token = \"a-long-admin-token\"\n").await;
    let url = format!("http://{}/admin/drain", sft.server.metrics_addr);
    let http = reqwest::Client::new();
    assert_eq!(http.post(&url).send().await.unwrap().status(), 401);
    assert_eq!(http.post(&url).bearer_auth("wrong").send().await.unwrap().status(), 401);
    assert_eq!(sft.metric("sft_draining").await, 0.0, "refused requests change nothing");
    assert_eq!(http.post(&url).bearer_auth("a-long-admin-token").send().await.unwrap().status(), 202);
    assert_eq!(sft.metric("sft_draining").await, 1.0);
    // Reading stays open: metrics and health need no token.
    let health = format!("http://{}/healthz", sft.server.metrics_addr);
    assert_eq!(http.get(&health).send().await.unwrap().status(), 200);
}
