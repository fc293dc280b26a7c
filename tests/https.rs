//! Signalling over HTTPS when `signalling.tls_cert`/`tls_key` are set, with
//! a certificate the test makes.

mod common;

use common::{setup_body, Peer, PeerOptions, TestSft};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signalling_serves_https_with_the_configured_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("sft-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let sft = TestSft::start(&format!("[signalling]\ntls_cert = {:?}\ntls_key = {:?}\n", cert, key)).await;

    let root = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(root)
        .resolve("localhost", sft.server.signalling_addr)
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", sft.server.signalling_addr.port());
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("sft demo"));

    let peer = Peer::offer_only(PeerOptions::new("secure", "alice", 1)).await;
    let offer = peer.pc.local_description().await.unwrap().sdp;
    let answer = client
        .post(format!("{base}/sft/secure"))
        .json(&setup_body(&peer.sessid, "alice", &offer))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["props"]["type"], "answer");

    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::get(format!("http://{}/", sft.server.signalling_addr)).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn unreadable_certificate_is_a_start_error() {
    let dir = std::env::temp_dir().join(format!("sft-https-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let toml = format!("[signalling]\ntls_cert = {cert:?}\ntls_key = {cert:?}\n");
    let path = dir.join("sft.toml");
    std::fs::write(&path, toml).unwrap();
    let config = sft::config::Config::load(Some(&path), std::iter::empty()).unwrap();
    let error = sft::server::Server::start(&config).await.err().expect("bad certificate refuses to start");
    assert!(error.to_string().contains("cert.pem"), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
}
