//! Loopback UDP proxies between clients and the SFT. [`UdpProxy`] stands
//! in front of one peer, and a test can cut it (to make a client vanish
//! without a goodbye) or make the SFT-to-peer direction a bottleneck link (a
//! rate with a tail-drop queue). [`LossyFront`] stands at the SFT's
//! advertised media address for every client (browsers included) and loses
//! a share of what the SFT sends them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The longest a datagram may wait in the bottleneck's queue: what a home
/// router's buffer holds at these rates. Anything later is dropped.
const QUEUE_LIMIT: Duration = Duration::from_millis(200);

pub struct UdpProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    downlink: Arc<Mutex<Downlink>>,
    dropped: Arc<AtomicU64>,
}

/// The SFT-to-peer direction.
#[derive(Debug, Default)]
struct Downlink {
    rate_bps: Option<u64>,
    /// When the bottleneck is next free to send.
    free_at: Option<Instant>,
}

impl Downlink {
    /// When a datagram of `len` bytes arriving `now` leaves, or `None` if
    /// the queue is full.
    fn schedule(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let Some(rate) = self.rate_bps else {
            return Some(now);
        };
        let start = self.free_at.map_or(now, |free| free.max(now));
        if start - now > QUEUE_LIMIT {
            return None;
        }
        let serialization = Duration::from_secs_f64((len as f64 + 28.0) * 8.0 / rate as f64);
        self.free_at = Some(start + serialization);
        Some(start + serialization)
    }
}

impl UdpProxy {
    /// Forwards datagrams between whoever sends to `addr` and `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let downlink = Arc::new(Mutex::new(Downlink::default()));
        let dropped = Arc::new(AtomicU64::new(0));
        // Datagrams toward the peer leave in order, each at its time.
        let (delayed, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>, SocketAddr)>();
        let sender = socket.clone();
        tokio::spawn(async move {
            while let Some((at, datagram, to)) = due.recv().await {
                tokio::time::sleep_until(at).await;
                let _ = sender.send_to(&datagram, to).await;
            }
        });
        let (is_cut, link, lost) = (cut.clone(), downlink.clone(), dropped.clone());
        tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65536];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                if is_cut.load(Ordering::SeqCst) {
                    continue;
                }
                if from != upstream {
                    client = Some(from);
                    let _ = socket.send_to(&buf[..len], upstream).await;
                    continue;
                }
                let Some(to) = client else { continue };
                match link.lock().unwrap().schedule(Instant::now(), len) {
                    Some(at) => {
                        let _ = delayed.send((at, buf[..len].to_vec(), to));
                    }
                    None => {
                        lost.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        Self { addr, cut, downlink, dropped }
    }

    /// From now on every datagram is dropped, both ways (those already
    /// queued at a bottleneck still leave).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again after a [`cut`](Self::cut).
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Caps the SFT-to-peer direction at `kbps` (a bottleneck with a
    /// [`QUEUE_LIMIT`] queue), or lifts the cap with `None`.
    pub fn limit_downlink(&self, kbps: Option<u64>) {
        self.downlink.lock().unwrap().rate_bps = kbps.map(|k| k * 1000);
    }

    /// How many datagrams toward the peer the impairment dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
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
        let loss_ppm = (loss_percent * 10_000.0) as u64;
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
                            let mut random = 0x5eed_0000 ^ u64::from(client.port());
                            let mut buf = vec![0u8; 65536];
                            while let Ok(len) = from_sft.recv(&mut buf).await {
                                random ^= random << 13;
                                random ^= random >> 7;
                                random ^= random << 17;
                                if random % 1_000_000 < loss_ppm {
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
