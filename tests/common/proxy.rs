//! Loopback UDP proxies between clients and the SFT. [`udp_proxy`] stands
//! in front of one peer, and a test can cut it (to make a client vanish
//! without a goodbye) or make the SFT-to-peer direction a bottleneck link
//! (`sft::load::impair`, which `sft-load` uses too). [`LossyFront`] stands
//! at the SFT's advertised media address for every client (browsers
//! included) and loses a share of what the SFT sends them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sft::load::impair::{ImpairedDirection, ImpairedPath, Impairment};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// A path in front of one peer, unimpaired until the test says otherwise.
pub async fn udp_proxy(upstream: SocketAddr) -> ImpairedPath {
    ImpairedPath::start(upstream, Impairment::default()).await.unwrap()
}

/// A proxy at the SFT's advertised media address (`media.public_ip` and its
/// port) in front of its real socket, for every client: each client gets an
/// upstream socket of its own, so the SFT tells them apart, and of what the
/// SFT sends toward the clients a share is lost at random (the same losses
/// on every run).
pub struct LossyFront {
    forwarded: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl LossyFront {
    pub async fn start(listen: SocketAddr, upstream: SocketAddr, loss_percent: f64) -> Self {
        let front = Arc::new(UdpSocket::bind(listen).await.unwrap());
        let (forwarded, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (sent, lost) = (forwarded.clone(), dropped.clone());
        tokio::spawn(async move {
            let mut clients: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
            let mut buf = vec![0u8; 65536];
            while let Ok((len, client)) = front.recv_from(&mut buf).await {
                let back = match clients.get(&client) {
                    Some(back) => back.clone(),
                    None => {
                        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        back.connect(upstream).await.unwrap();
                        clients.insert(client, back.clone());
                        let (front, sent, lost) = (front.clone(), sent.clone(), lost.clone());
                        let from_sft = back.clone();
                        tokio::spawn(async move {
                            let lossy = Impairment { loss_percent, ..Impairment::default() };
                            let mut path = ImpairedDirection::new(lossy, u64::from(client.port()));
                            let mut buf = vec![0u8; 65536];
                            while let Ok(len) = from_sft.recv(&mut buf).await {
                                if path.schedule(Instant::now(), len).is_none() {
                                    lost.fetch_add(1, Ordering::SeqCst);
                                    continue;
                                }
                                sent.fetch_add(1, Ordering::SeqCst);
                                let _ = front.send_to(&buf[..len], client).await;
                            }
                        });
                        back
                    }
                };
                let _ = back.send(&buf[..len]).await;
            }
        });
        Self { forwarded, dropped }
    }

    /// The share of datagrams toward the clients lost so far.
    pub fn loss_ratio(&self) -> f64 {
        let (sent, lost) = (self.forwarded.load(Ordering::SeqCst), self.dropped.load(Ordering::SeqCst));
        lost as f64 / (sent + lost).max(1) as f64
    }
}
