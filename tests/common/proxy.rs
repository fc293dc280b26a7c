//! A loopback UDP proxy between one peer and the SFT that a test can cut,
//! to make a client vanish without a goodbye.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;

pub struct UdpProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl UdpProxy {
    /// Forwards datagrams between whoever sends to `addr` and `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let is_cut = cut.clone();
        tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65536];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                if is_cut.load(Ordering::SeqCst) {
                    continue;
                }
                let to = if from == upstream {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    upstream
                };
                let _ = socket.send_to(&buf[..len], to).await;
            }
        });
        Self { addr, cut }
    }

    /// From now on every datagram is dropped, both ways.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again after a [`cut`](Self::cut).
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
