//! A client that reuses kept-alive connections (aiohttp, browsers, reqwest)
//! keeps working after the server turns a request away early: the server
//! reads what the client sends before answering, and closes only a
//! connection whose oversized body it threw away, saying so.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::time::Duration;

use common::{Signalling, TestSft};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bigger than the 64 KiB a SETUP may have.
const OVERSIZED: usize = 100 * 1024;

struct Response {
    status: u16,
    head: String,
    body: String,
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_response(stream: &mut TcpStream) -> Response {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(common::TIMEOUT, stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed before a response: {:?}", String::from_utf8_lossy(&buffer));
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
    while buffer.len() < head_end + length {
        let n = tokio::time::timeout(common::TIMEOUT, stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed inside a response body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned();
    Response { status, head, body }
}

fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: sft\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_errors_leave_the_connection_usable() {
    let sft = TestSft::start("").await;
    let mut stream = TcpStream::connect(sft.server.signalling_addr).await.unwrap();
    // A body within the limit but larger than what arrives with the headers,
    // so an answer before reading it would leave bytes on the connection.
    let setup =
        format!(r#"{{"version":"3.0","type":"SETUP","sessid":"s","resp":false,"pad":"{}"}}"#, "x".repeat(32 * 1024));
    // A bad conf_id, an unknown path and a SETUP that is not a SETUP, each
    // with that body, then a DELETE: all answered on the one connection.
    for (method, path, status) in [
        ("POST", "/sft/bad%20id", 400),
        ("POST", "/nowhere", 404),
        ("POST", "/sft/conf", 400),
        ("DELETE", "/sft/conf/nobody", 404),
    ] {
        stream.write_all(&request(method, path, setup.as_bytes())).await.unwrap();
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, status, "{method} {path}: {}", response.head);
        assert!(!response.head.contains("connection: close"), "{method} {path}: {}", response.head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_read_answered_413_and_the_connection_closed_cleanly() {
    let sft = TestSft::start("").await;
    let mut stream = TcpStream::connect(sft.server.signalling_addr).await.unwrap();
    stream.write_all(&request("POST", "/sft/conf", &vec![b' '; OVERSIZED])).await.unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 413, "{}", response.head);
    assert!(response.body.contains("\"too-large\""), "{}", response.body);
    assert!(response.head.contains("connection: close"), "{}", response.head);
    // The server read the whole body before closing, so the client sees an
    // orderly end of stream, not a reset that could swallow the 413.
    let mut rest = [0u8; 64];
    let end = tokio::time::timeout(common::TIMEOUT, stream.read(&mut rest)).await.unwrap();
    assert!(matches!(end, Ok(0)), "expected a clean close, got {end:?}");
    assert_eq!(sft.metric("sft_sessions_rejected_total{reason=\"too-large\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_announced_far_too_large_or_awaiting_100_continue_gets_413_at_once() {
    let sft = TestSft::start("").await;
    for head in [
        "POST /sft/conf HTTP/1.1\r\nhost: sft\r\ncontent-length: 5000000\r\n\r\n",
        "POST /sft/conf HTTP/1.1\r\nhost: sft\r\ncontent-length: 100000\r\nexpect: 100-continue\r\n\r\n",
    ] {
        // Only the head is sent: the answer must not wait for the body.
        let mut stream = TcpStream::connect(sft.server.signalling_addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, 413, "{head:?}: {}", response.head);
        assert!(response.head.contains("connection: close"), "{}", response.head);
    }
    assert_eq!(sft.metric("sft_sessions_rejected_total{reason=\"too-large\"}").await, 2.0);
    // An oversized body to a path that is not a SETUP is no rejected session.
    let client = reqwest::Client::new();
    let response = client.post(sft.url("/sft/conf/extra")).body(vec![b' '; OVERSIZED]).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(sft.metric("sft_sessions_rejected_total{reason=\"too-large\"}").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_client_goes_on_after_413s() {
    let sft = TestSft::start("").await;
    let client = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(60)).build().unwrap();
    for round in 0..20 {
        let oversized = client.post(sft.url("/sft/conf")).body(vec![b' '; OVERSIZED]).send().await;
        let oversized = oversized.unwrap_or_else(|e| panic!("round {round}: the 413 did not arrive: {e}"));
        assert_eq!(oversized.status().as_u16(), 413);
        let next = client.delete(sft.url("/sft/conf/nobody")).send().await;
        let next = next.unwrap_or_else(|e| panic!("round {round}: the request after a 413 failed: {e}"));
        assert_eq!(next.status().as_u16(), 404);
    }
}
