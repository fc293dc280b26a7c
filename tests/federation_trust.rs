//! Who may federate: every refusal of `docs/contract.md` section 5 is refused,
//! counted, and lets no media flow; and SRV discovery against a real DNS
//! server on loopback.

mod common;

use std::net::SocketAddr;
use std::str::FromStr;

use common::fed::{on, peers_table, read, rejected, Certs};
use common::{Peer, TestSft};
use hickory_resolver::proto::op::{Message, OpCode};
use hickory_resolver::proto::rr::rdata::{A, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// SETUPs `peer` and returns the HTTP status and error code.
async fn setup_status(sft: &TestSft, peer: &Peer) -> (u16, String) {
    let (status, body) = peer.post_setup(sft, None).await;
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

/// An HTTPS client for `a.example`'s control plane with an optional client identity.
fn control_client(certs: &Certs, anchor: &TestSft, identity: Option<(String, String)>) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(read(certs.dir.join("ca").join("ca.pem")).as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(root)
        .resolve("a.example", anchor.server.federation.as_ref().unwrap().control);
    if let Some((cert, key)) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn api_version(client: &reqwest::Client, anchor: &TestSft, origin: &str) -> Result<u16, reqwest::Error> {
    let port = anchor.server.federation.as_ref().unwrap().control.port();
    let response = client
        .post(format!("https://a.example:{port}/federation/sft/api-version"))
        .header("Wire-Origin-Domain", origin)
        .json(&serde_json::json!({}))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejection_matrix() {
    let certs = Certs::new(&["a.example", "b.example", "c.example", "d.example", "e.example"]);
    // The anchor federates with b only.
    let a = TestSft::start(&certs.federation_toml(
        "a.example",
        "127.0.0.1",
        "strategy = \"allowList\"\nallow = [\"b.example\"]\n",
    ))
    .await;
    let to_a = peers_table(&[("a.example", &a)]);

    // Federation off on the client's SFT.
    let plain = TestSft::start("domain = \"p.example\"\n").await;
    let peer = Peer::offer_only(on("p.example", "r1", "p1", 1)).await;
    assert_eq!(setup_status(&plain, &peer).await, (403, "federation-denied".into()));
    assert_eq!(rejected(&plain, "federation-disabled").await, 1.0);

    // The anchor's allow list lacks c (inbound refusal, counted at the anchor).
    let c = TestSft::start(&certs.federation_toml("c.example", "127.0.0.3", &to_a)).await;
    let peer = Peer::offer_only(on("c.example", "r2", "c1", 2)).await;
    assert_eq!(setup_status(&c, &peer).await, (403, "federation-denied".into()));
    assert!(rejected(&a, "domain-not-allowed").await >= 1.0);

    // The client's SFT's own allow list lacks a (outbound refusal), and allowNone.
    for (domain, strategy) in [
        ("d.example", "strategy = \"allowList\"\nallow = [\"z.example\"]\n"),
        ("e.example", "strategy = \"allowNone\"\n"),
    ] {
        let sft = TestSft::start(&certs.federation_toml(domain, "127.0.0.4", &format!("{strategy}{to_a}"))).await;
        let peer = Peer::offer_only(on(domain, "r3", "x", 3)).await;
        assert_eq!(setup_status(&sft, &peer).await, (403, "federation-denied".into()), "{domain}");
        assert_eq!(rejected(&sft, "domain-not-allowed").await, 1.0, "{domain}");
        assert_eq!(sft.metric("sft_participants{role=\"local\"}").await, 0.0);
    }

    // No client certificate: the TLS handshake fails.
    let before = rejected(&a, "no-certificate").await;
    assert!(api_version(&control_client(&certs, &a, None), &a, "b.example").await.is_err());
    assert_eq!(rejected(&a, "no-certificate").await, before + 1.0);

    // A certificate from a CA the anchor does not trust.
    let rogue = Certs::new(&["b.example"]);
    let rogue_identity = (read(rogue.dir.join("b.example/cert.pem")), read(rogue.dir.join("b.example/key.pem")));
    assert!(api_version(&control_client(&certs, &a, Some(rogue_identity)), &a, "b.example").await.is_err());
    assert!(rejected(&a, "bad-certificate").await >= 1.0);

    // b's valid certificate, but claiming to be c.
    let b_identity = (read(certs.dir.join("b.example/cert.pem")), read(certs.dir.join("b.example/key.pem")));
    let b_client = control_client(&certs, &a, Some(b_identity));
    assert_eq!(api_version(&b_client, &a, "c.example").await.unwrap(), 403);
    assert_eq!(rejected(&a, "origin-mismatch").await, 1.0);
    assert_eq!(api_version(&b_client, &a, "b.example").await.unwrap(), 200, "the honest request passes");

    // The "anchor" that answers is c, whose certificate is not for a.example.
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &peers_table(&[("a.example", &c)]))).await;
    let peer = Peer::offer_only(on("b.example", "r4", "b1", 4)).await;
    assert_eq!(setup_status(&b, &peer).await, (502, "anchor-unreachable".into()));
    assert_eq!(rejected(&b, "peer-certificate-mismatch").await, 1.0);

    // Nothing joined anywhere.
    for sft in [&a, &b, &c] {
        assert_eq!(sft.metric("sft_participants{role=\"local\"}").await, 0.0);
        assert_eq!(sft.metric("sft_rtp_packets_forwarded_total").await, 0.0);
    }
}

/// A small authoritative DNS server on loopback: the SRV record of
/// `_sft-federation._tcp.a.example` and the address of its target.
async fn dns_server(control: SocketAddr) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let srv_name = Name::from_str("_sft-federation._tcp.a.example.").unwrap();
        let target = Name::from_str("sft.a.example.").unwrap();
        let mut buf = vec![0u8; 4096];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..len]) else { continue };
            let mut response = Message::response(query.metadata.id, OpCode::Query);
            response.metadata.authoritative = true;
            response.metadata.recursion_desired = query.metadata.recursion_desired;
            for q in &query.queries {
                response.add_query(q.clone());
                if q.name() == &srv_name && q.query_type() == RecordType::SRV {
                    response.add_answer(Record::from_rdata(
                        srv_name.clone(),
                        60,
                        RData::SRV(SRV::new(0, 0, control.port(), target.clone())),
                    ));
                } else if q.name() == &target && q.query_type() == RecordType::A {
                    let ip = match control.ip() {
                        std::net::IpAddr::V4(ip) => ip,
                        std::net::IpAddr::V6(_) => unreachable!("the test listens on IPv4"),
                    };
                    response.add_answer(Record::from_rdata(target.clone(), 60, RData::A(A(ip))));
                }
            }
            let _ = socket.send_to(&response.to_vec().unwrap(), from).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anchor_found_through_dns_srv() {
    let certs = Certs::new(&["a.example", "b.example"]);
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", "")).await;
    let dns = dns_server(a.server.federation.as_ref().unwrap().control).await;
    let b = TestSft::start(&certs.federation_toml("b.example", "127.0.0.2", &format!("dns = \"{dns}\"\n"))).await;
    let a1 = Peer::join(&a, on("a.example", "srv", "a1", 1)).await;
    let b1 = Peer::join(&b, on("b.example", "srv", "b1", 2)).await;
    for (peer, other) in [(&a1, &b1), (&b1, &a1)] {
        common::wait_for("media across the SRV-discovered link", || {
            peer.all_slot_stats()
                .values()
                .any(|s| s.markers.iter().filter(|m| **m == other.options.marker).count() > 10)
        })
        .await;
    }
}

/// A stand-in for Wire's federator: takes `POST /rpc/<domain>/sft/<rpc>` on
/// plain HTTP from the local SFT and forwards it over mutual TLS with the
/// local domain's certificate, as the real federator does.
async fn federator(
    certs: &Certs,
    own: &str,
    anchor: &TestSft,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let identity = (read(certs.dir.join(own).join("cert.pem")), read(certs.dir.join(own).join("key.pem")));
    let client = control_client(certs, anchor, Some(identity));
    let port = anchor.server.federation.as_ref().unwrap().control.port();
    let forwarded = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = forwarded.clone();
    let origin = own.to_string();
    let app = axum::Router::new().route(
        "/rpc/{domain}/sft/{rpc}",
        axum::routing::post(
            move |axum::extract::Path((domain, rpc)): axum::extract::Path<(String, String)>,
                  body: axum::body::Bytes| {
                let (client, origin, counter) = (client.clone(), origin.clone(), counter.clone());
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let response = client
                        .post(format!("https://{domain}:{port}/federation/sft/{rpc}"))
                        .header("Wire-Origin-Domain", origin)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let status = axum::http::StatusCode::from_u16(response.status().as_u16()).unwrap();
                    (status, response.bytes().await.unwrap())
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, forwarded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbound_rpcs_go_through_the_federator() {
    let certs = Certs::new(&["a.example", "b.example"]);
    let a = TestSft::start(&certs.federation_toml("a.example", "127.0.0.1", "")).await;
    let (federator_addr, forwarded) = federator(&certs, "b.example", &a).await;
    // No peers table and no DNS: only the federator knows the way.
    let b = TestSft::start(&certs.federation_toml(
        "b.example",
        "127.0.0.2",
        &format!("via_federator = \"http://{federator_addr}\"\n"),
    ))
    .await;
    let a1 = Peer::join(&a, on("a.example", "fedr", "a1", 1)).await;
    let b1 = Peer::join(&b, on("b.example", "fedr", "b1", 2)).await;
    common::wait_for("media through a link set up via the federator", || a1.heard(2) > 10 && b1.heard(1) > 10).await;
    assert_eq!(forwarded.load(std::sync::atomic::Ordering::SeqCst), 1, "the join went through the federator");
}
