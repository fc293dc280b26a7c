//! The media relay (`docs/contract.md` section 5.2): QUIC with mutual TLS, ALPN `sft-relay/2` or `/1`,
//! media as datagrams, control on one bidirectional stream per connection.
//! This file moves bytes; the edge driver decides what they mean.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

use super::trust::{Rejection, Trust};
use super::{Admission, Federation};
use crate::core::ids::{canonical_domain, LinkId};
use crate::core::pacing::Pacer;
use crate::metrics::DropReason;
use crate::tls::TlsError;
use crate::wire::{self, encode_control, Control, RelayVersion, ALPNS, MAX_CONTROL_FRAME};

/// A silent peer is declared gone after this; keep-alives every second keep
/// a healthy but idle link open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(1);
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Control messages queued for a link before new ones are dropped.
pub const CONTROL_QUEUE: usize = 1024;
/// Admitted control messages waiting to be routed to a worker; a full
/// queue holds the reader back (and QUIC's flow control the peer).
const ADMITTED_QUEUE: usize = 64;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("a small duration")));
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.datagram_receive_buffer_size(Some(4 * 1024 * 1024));
    transport.datagram_send_buffer_size(4 * 1024 * 1024);
    Arc::new(transport)
}

/// The relay endpoint: it accepts federated SFTs and dials anchors (each
/// dial with the credentials of its moment, see [`dial`]).
pub fn endpoint(trust: &Trust, listen: SocketAddr) -> Result<quinn::Endpoint, TlsError> {
    quinn::Endpoint::server(server_config(trust)?, listen)
        .map_err(|e| TlsError::Config(rustls::Error::General(format!("relay socket {listen}: {e}"))))
}

/// New credentials for the connections accepted from now on; live ones
/// keep theirs.
pub fn reconfigure(endpoint: &quinn::Endpoint, trust: &Trust) -> Result<(), TlsError> {
    endpoint.set_server_config(Some(server_config(trust)?));
    Ok(())
}

fn server_config(trust: &Trust) -> Result<quinn::ServerConfig, TlsError> {
    let server_tls = trust.server_config(&ALPNS)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport());
    Ok(server)
}

fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, TlsError> {
    let tls = trust.client_config(&ALPNS)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// The relay version `connection`'s two sides agreed on.
pub fn version(connection: &Connection) -> RelayVersion {
    let handshake =
        connection.handshake_data().and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok());
    RelayVersion::of_alpn(handshake.and_then(|h| h.protocol).as_deref())
}

/// Dials `domain`'s relay at `addr` with `trust`'s certificate, proves who
/// we are, and returns the connection with its control stream.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    trust: &Trust,
    domain: &str,
    addr: &str,
) -> Result<(Connection, SendStream, RecvStream), String> {
    let client = client_config(trust).map_err(|e| e.to_string())?;
    let target: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or(format!("{addr}: no address"))?;
    let connecting = endpoint.connect_with(client, target, domain).map_err(|e| e.to_string())?;
    let connection = connecting.await.map_err(|e| format!("relay {addr}: {e}"))?;
    let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&encode_control(&Control::Hello { domain: trust.domain.clone() }))
        .await
        .map_err(|e| e.to_string())?;
    Ok((connection, send, recv))
}

/// Accepts one dialling SFT: handshake, hello, certificate and strategy.
/// Returns its domain and streams, or why it was refused.
pub async fn accept(
    incoming: quinn::Incoming,
    trust: &Trust,
) -> Result<(String, Connection, SendStream, RecvStream), Rejection> {
    let connection = incoming.await.map_err(|e| match e {
        quinn::ConnectionError::TransportError(ref t) if t.reason.contains("certificate") => {
            if t.reason.contains("NoCertificatesPresented") || t.reason.contains("no certificate") {
                Rejection::NoCertificate
            } else {
                Rejection::BadCertificate
            }
        }
        _ => Rejection::BadCertificate,
    })?;
    let certificate: Option<CertificateDer<'static>> = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned());
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        let (send, mut recv) = connection.accept_bi().await.ok()?;
        let message = read_control(&mut recv).await.ok()??;
        Some((send, recv, message))
    })
    .await
    .ok()
    .flatten();
    let Some((send, recv, Control::Hello { domain })) = hello else {
        connection.close(1u32.into(), b"expected hello");
        return Err(Rejection::OriginMismatch);
    };
    let domain = canonical_domain(&domain);
    if let Err(rejection) = trust.admit(certificate.as_ref(), &domain) {
        connection.close(2u32.into(), rejection.label().as_bytes());
        return Err(rejection);
    }
    Ok((domain, connection, send, recv))
}

/// Reads one length-prefixed control message; `Ok(None)` at a clean end.
pub async fn read_control(recv: &mut RecvStream) -> Result<Option<Control>, String> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(format!("control frame of {len} bytes"));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    wire::decode_control(&body).map(Some).map_err(|e| format!("bad control frame: {e}"))
}

/// Runs one established link until it ends: hands datagrams and control
/// messages to the edge, writes the edge's control messages to the stream.
pub async fn run_link(
    federation: Arc<Federation>,
    link: LinkId,
    domain: String,
    connection: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    inbound: bool,
) {
    if !federation.admit_connection(&domain, &connection, !inbound, version(&connection)) {
        tracing::info!(peer = %domain, %link, inbound, "second relay connection closed: the link keeps the other one");
        connection.close(4u32.into(), b"duplicate connection");
        return;
    }
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(CONTROL_QUEUE);
    tracing::info!(peer = %domain, %link, inbound, "relay link up");
    federation.metrics.federation_connection(&domain, inbound);
    federation.metrics.link_state(&domain, "up");
    federation.remember_connection(&domain, &connection);
    let replies = control_tx.clone();
    let halves = version(&connection) == RelayVersion::V2;
    let mut router = federation.edge.link_up(link, domain.clone(), connection.clone(), control_tx, halves).await;
    let workers = router.workers();
    // Admitted control messages, from the stream reader to the task that
    // routes (which owns the router, so datagrams need no lock to route).
    let (admitted_tx, mut admitted) = mpsc::channel::<Control>(ADMITTED_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(message) = control_rx.recv().await {
            if send.write_all(&encode_control(&message)).await.is_err() {
                break;
            }
        }
    });
    let bytes_in = federation.metrics.relay_bytes(&domain, "in");
    // Ends when the peer's control stream does; dropping `admitted_tx`
    // then lets the router finish what was admitted before the link ends.
    let control = async {
        let mut pacer = Pacer::new(federation.max_control_rate, federation.max_control_rate);
        loop {
            match read_control(&mut recv).await {
                Ok(Some(message)) => {
                    // A peer faster than the limit waits (QUIC's flow control
                    // then holds it back): it slows only itself. A roster
                    // costs as many messages as it has entries.
                    let wait = pacer.wait_for_next(tokio::time::Instant::now().into_std(), message.cost());
                    if !wait.is_zero() {
                        federation.metrics.federation_rejected(Rejection::ControlRate.label());
                        tokio::time::sleep(wait).await;
                    }
                    match federation.admit_control(&domain, message) {
                        Admission::Pass(message) => {
                            if admitted_tx.send(message).await.is_err() {
                                break;
                            }
                        }
                        Admission::Reply(answer) => {
                            let _ = replies.try_send(answer);
                        }
                        Admission::Drop => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(peer = %domain, "relay control stream ended: {e}");
                    break;
                }
            }
        }
        drop(admitted_tx);
    };
    // Both reads are cancel-safe: a datagram arriving drops nothing of a
    // control message waiting, and the other way round.
    let carried = federation.count_channels(link, &connection);
    let route = async {
        loop {
            carried.store(router.carried(), Ordering::Release);
            tokio::select! {
                // Workers' route changes, so the count above stays true on an idle link.
                () = router.next_update() => {}
                datagram = connection.read_datagram() => {
                    let Ok(datagram) = datagram else { break };
                    bytes_in.inc_by(datagram.len() as u64);
                    // Media is lossy: a worker with a full queue loses this
                    // frame rather than hold up the link's other workers.
                    if router.datagram(datagram).is_some_and(|delivery| !delivery.try_send(&workers)) {
                        federation.metrics.dropped(DropReason::WorkerBusy);
                    }
                }
                message = admitted.recv() => {
                    let Some(message) = message else { break };
                    let routing = router.control(message);
                    if let Some((answer, rejection)) = routing.refused {
                        federation.metrics.federation_rejected(rejection.label());
                        tracing::info!(peer = %domain, %link, reason = rejection.label(), "relay attach refused");
                        let _ = replies.try_send(answer);
                    }
                    for delivery in routing.deliveries {
                        delivery.send(&workers).await;
                    }
                }
            }
        }
    };
    tokio::join!(control, route);
    writer.abort();
    connection.close(0u32.into(), b"link closed");
    tracing::info!(peer = %domain, %link, "relay link down");
    federation.forget_connection(&connection);
    federation.connection_ended(&domain, &connection);
    federation.stop_counting(link, &connection);
    if !federation.has_live_connection(&domain) {
        federation.metrics.link_state(&domain, "down");
    }
    federation.edge.link_down(link, connection.stable_id()).await;
}

/// Sends one datagram, counting its bytes; a full or closed link drops it.
pub fn send_datagram(connection: &Connection, datagram: Bytes) -> bool {
    connection.send_datagram(datagram).is_ok()
}
