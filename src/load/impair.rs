//! An impaired network path between one client and the SFT, on loopback: a
//! UDP relay the client talks to instead of the SFT's media address, which
//! makes the SFT-to-client direction a bottleneck (a rate with a tail-drop
//! queue), loses a share of it at random and delays it. `sft-load` puts one
//! in front of each impaired peer; the integration tests use it too, and can
//! also cut the path both ways.
#![allow(clippy::disallowed_methods)] // a network path runs on real time

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The longest a datagram may wait in the bottleneck's queue: what a home
/// router's buffer holds at these rates. Anything later is dropped.
pub const QUEUE_LIMIT: Duration = Duration::from_millis(200);
/// IPv4 + UDP headers, which a real link carries too.
const DATAGRAM_OVERHEAD_BYTES: f64 = 28.0;

/// What the path does to the SFT-to-client direction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// The bottleneck's rate; `None`: no cap.
    pub rate_kbps: Option<u64>,
    /// The share of datagrams lost at random, in percent.
    pub loss_percent: f64,
    /// One-way delay added to every datagram.
    pub delay: Duration,
}

/// One impaired direction: when each datagram leaves, if at all.
#[derive(Debug)]
pub struct ImpairedDirection {
    impairment: Impairment,
    /// When the bottleneck is next free to send.
    free_at: Option<Instant>,
    /// xorshift64 state: the same losses on every run.
    random: u64,
}

impl ImpairedDirection {
    /// `seed` picks the sequence of losses (the same on every run).
    pub fn new(impairment: Impairment, seed: u64) -> Self {
        Self { impairment, free_at: None, random: seed.max(1) }
    }

    /// When a datagram of `len` bytes arriving `now` leaves, or `None` when
    /// it is lost or the queue is full.
    pub fn schedule(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let Impairment { rate_kbps, loss_percent, delay } = self.impairment;
        if loss_percent > 0.0 && self.next_random() < loss_percent / 100.0 {
            return None;
        }
        let Some(kbps) = rate_kbps else {
            return Some(now + delay);
        };
        let start = self.free_at.map_or(now, |free| free.max(now));
        if start - now > QUEUE_LIMIT {
            return None;
        }
        let serialization =
            Duration::from_secs_f64((len as f64 + DATAGRAM_OVERHEAD_BYTES) * 8.0 / (kbps * 1000) as f64);
        self.free_at = Some(start + serialization);
        Some(start + serialization + delay)
    }

    /// Uniform in [0, 1).
    fn next_random(&mut self) -> f64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One direction of a running path: its impairment, what it let through
/// and dropped, and the queue its datagrams leave from, in order, each at
/// its time.
struct Direction {
    impairment: Mutex<ImpairedDirection>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    departures: mpsc::UnboundedSender<(Instant, Vec<u8>, SocketAddr)>,
}

impl Direction {
    fn start(socket: Arc<UdpSocket>, impairment: Impairment, seed: u64) -> Arc<Self> {
        let (departures, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>, SocketAddr)>();
        tokio::spawn(async move {
            while let Some((at, datagram, to)) = due.recv().await {
                tokio::time::sleep_until(at).await;
                let _ = socket.send_to(&datagram, to).await;
            }
        });
        let impairment = Mutex::new(ImpairedDirection::new(impairment, seed));
        Arc::new(Self { impairment, forwarded: AtomicU64::new(0), dropped: AtomicU64::new(0), departures })
    }

    fn send(&self, datagram: &[u8], to: SocketAddr) {
        let departure = self.impairment.lock().expect("impairment lock").schedule(Instant::now(), datagram.len());
        match departure {
            Some(at) if self.departures.send((at, datagram.to_vec(), to)).is_ok() => {
                self.forwarded.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                self.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn set(&self, change: impl FnOnce(&mut Impairment)) {
        change(&mut self.impairment.lock().expect("impairment lock").impairment);
    }
}

/// A running impaired path. The client sends to [`addr`](Self::addr).
pub struct ImpairedPath {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// SFT to client.
    downlink: Arc<Direction>,
    /// Client to SFT.
    uplink: Arc<Direction>,
}

impl ImpairedPath {
    /// Relays between whoever sends to the returned path's address and
    /// `upstream` (the SFT's media address; loopback only), impairing what
    /// `upstream` sends back with `downlink` (the other way is left alone
    /// until [`impair_uplink`](Self::impair_uplink)).
    pub async fn start(upstream: SocketAddr, downlink: Impairment) -> std::io::Result<Self> {
        if !upstream.ip().is_loopback() {
            return Err(std::io::Error::other(format!("{upstream} is not a loopback address")));
        }
        let socket = Arc::new(UdpSocket::bind((upstream.ip(), 0)).await?);
        let addr = socket.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let seed = u64::from(addr.port());
        let downlink = Direction::start(socket.clone(), downlink, seed);
        let uplink = Direction::start(socket.clone(), Impairment::default(), !seed);
        let (is_cut, toward_client, toward_sft) = (cut.clone(), downlink.clone(), uplink.clone());
        tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65536];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                if is_cut.load(Ordering::SeqCst) {
                    continue;
                }
                if from != upstream {
                    client = Some(from);
                    toward_sft.send(&buf[..len], upstream);
                } else if let Some(to) = client {
                    toward_client.send(&buf[..len], to);
                }
            }
        });
        Ok(Self { addr, cut, downlink, uplink })
    }

    /// From now on every datagram is dropped, both ways (those already
    /// queued at the bottleneck still leave).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again after a [`cut`](Self::cut).
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Caps the SFT-to-client direction at `kbps` (a bottleneck with a
    /// [`QUEUE_LIMIT`] queue), or lifts the cap with `None`.
    pub fn limit_downlink(&self, kbps: Option<u64>) {
        self.downlink.set(|i| i.rate_kbps = kbps);
    }

    /// From now on, impairs the client-to-SFT direction too.
    pub fn impair_uplink(&self, impairment: Impairment) {
        self.uplink.set(|i| *i = impairment);
    }

    /// How many datagrams toward the client the impairment dropped.
    pub fn dropped(&self) -> u64 {
        self.downlink.dropped.load(Ordering::SeqCst)
    }

    /// The share of datagrams toward the client dropped so far.
    pub fn loss_ratio(&self) -> f64 {
        ratio(&self.downlink)
    }

    /// The share of datagrams toward the SFT dropped so far.
    pub fn uplink_loss_ratio(&self) -> f64 {
        ratio(&self.uplink)
    }
}

fn ratio(direction: &Direction) -> f64 {
    let (sent, lost) = (direction.forwarded.load(Ordering::SeqCst), direction.dropped.load(Ordering::SeqCst));
    lost as f64 / (sent + lost).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn downlink(impairment: Impairment) -> ImpairedDirection {
        ImpairedDirection::new(impairment, 0x5eed)
    }

    #[test]
    fn a_capped_link_spaces_datagrams_at_its_rate_and_drops_past_the_queue() {
        let now = Instant::now();
        // 1000 kbit/s: a 1222-byte datagram (1250 with headers) takes 10 ms.
        let mut link = downlink(Impairment { rate_kbps: Some(1000), ..Impairment::default() });
        let departures: Vec<Option<Instant>> = (0..25).map(|_| link.schedule(now, 1222)).collect();
        assert_eq!(departures[0], Some(now + Duration::from_millis(10)));
        assert_eq!(departures[19], Some(now + Duration::from_millis(200)));
        assert!(departures[20].is_some(), "the queue holds 200 ms");
        assert_eq!(departures[21], None, "then it overflows");
    }

    #[test]
    fn loss_is_close_to_the_share_asked_for_and_delay_is_added() {
        let now = Instant::now();
        let delay = Duration::from_millis(40);
        let mut link = downlink(Impairment { loss_percent: 5.0, delay, ..Impairment::default() });
        let outcomes: Vec<Option<Instant>> = (0..20_000).map(|_| link.schedule(now, 100)).collect();
        let lost = outcomes.iter().filter(|o| o.is_none()).count();
        assert!((800..1200).contains(&lost), "{lost} of 20000 lost");
        assert!(outcomes.iter().flatten().all(|at| *at == now + delay));
    }
}
