//! The media socket: batched receive (recvmmsg + GRO) and segmented send
//! (UDP GSO) through `quinn-udp`, and batched sends to many destinations
//! (sendmmsg) through `nix`; those two crates hold all the socket `unsafe`.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Large enough for a GRO-coalesced batch of full-size datagrams.
const RECV_BUFFER_BYTES: usize = 64 * 1024;
thread_local! {
    /// The message headers `sendmmsg` fills, made once per thread (each
    /// worker sends from its own): they hold raw pointers, so they are not
    /// `Send`, and a socket, which moves to its worker's thread, cannot own
    /// them. Made per call, they would cost two allocations a wake-up.
    static SEND_HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> = const { RefCell::new(None) };
}

/// Datagrams one `sendmmsg` carries at most (as quinn-udp's receive batch).
const SEND_BATCH: usize = 32;
/// Socket buffers sized for bursts of keyframes to many receivers.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

pub struct MediaSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    recv_buffers: Vec<Vec<u8>>,
    recv_meta: Vec<RecvMeta>,
    /// Reused to lay equal-sized datagrams back to back for one GSO send.
    gso_buffer: Vec<u8>,
}

/// One outgoing datagram.
pub struct Datagram {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

impl MediaSocket {
    /// Binds and registers the socket with the current tokio runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::from_std(std::net::UdpSocket::bind(addr)?)
    }

    /// Registers a bound socket with the current tokio runtime, so a socket
    /// bound on one thread can be driven by a runtime on another.
    pub fn from_std(std_socket: std::net::UdpSocket) -> io::Result<Self> {
        std_socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std_socket).into())?;
        // Larger buffers are an optimisation; the kernel may cap them.
        let _ = state.set_send_buffer_size((&std_socket).into(), SOCKET_BUFFER_BYTES);
        let _ = state.set_recv_buffer_size((&std_socket).into(), SOCKET_BUFFER_BYTES);
        let socket = UdpSocket::from_std(std_socket)?;
        Ok(Self {
            socket,
            state,
            recv_buffers: (0..BATCH_SIZE).map(|_| vec![0; RECV_BUFFER_BYTES]).collect(),
            recv_meta: vec![RecvMeta::default(); BATCH_SIZE],
            gso_buffer: Vec::with_capacity(RECV_BUFFER_BYTES),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Waits until the socket can send: sends never wait, and until the
    /// reactor has seen a new socket writable they drop.
    pub async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// Receives one batch without waiting and hands every datagram to
    /// `on_datagram`. Returns how many datagrams there were (0: nothing ready).
    pub fn recv_batch(&mut self, mut on_datagram: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        let Self { socket, state, recv_buffers, recv_meta, .. } = self;
        // On the stack: the packet path allocates nothing, not even per batch.
        let mut buffers = recv_buffers.iter_mut();
        let mut slices: [IoSliceMut; BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(buffers.next().map_or(&mut [][..], |b| &mut b[..])));
        let received = match socket.try_io(Interest::READABLE, || state.recv((&*socket).into(), &mut slices, recv_meta))
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut count = 0;
        for (meta, buffer) in recv_meta.iter().zip(slices.iter()).take(received) {
            // With GRO, one buffer holds several datagrams of `stride` bytes.
            for datagram in buffer[..meta.len].chunks(meta.stride.max(1)) {
                on_datagram(meta.addr, datagram);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Sends and empties `queue`. Runs of datagrams to one destination go out
    /// as one GSO send where their sizes allow; the datagrams between such
    /// runs (one each to many receivers: a forwarded packet's fan-out) go out
    /// together, [`SEND_BATCH`] per `sendmmsg`. A full socket buffer drops
    /// what did not fit (UDP semantics: congestion control is the endpoints'
    /// job); returns how many datagrams were dropped.
    pub fn send_all(&mut self, queue: &mut Vec<Datagram>) -> usize {
        let max_segments = self.state.max_gso_segments();
        let mut dropped = 0;
        // Datagrams waiting to go out in one sendmmsg: queue[singles..start].
        let mut singles = 0;
        let mut start = 0;
        while start < queue.len() {
            let first = &queue[start];
            let segment = first.contents.len();
            let mut end = start + 1;
            // A GSO run: same destination, same size; the last may be shorter.
            while end < queue.len()
                && end - start < max_segments
                && queue[end].destination == first.destination
                && queue[end].contents.len() <= segment
                && queue[end - 1].contents.len() == segment
            {
                end += 1;
            }
            if end - start > 1 {
                dropped += self.send_each(&queue[singles..start]);
                dropped += self.send_run(&queue[start..end], segment);
                singles = end;
            }
            start = end;
        }
        dropped += self.send_each(&queue[singles..]);
        queue.clear();
        dropped
    }

    /// Sends datagrams of one destination as one GSO send; returns how many
    /// were dropped.
    fn send_run(&mut self, run: &[Datagram], segment: usize) -> usize {
        self.gso_buffer.clear();
        for datagram in run {
            self.gso_buffer.extend_from_slice(&datagram.contents);
        }
        let transmit = Transmit {
            destination: run[0].destination,
            ecn: None,
            contents: &self.gso_buffer,
            segment_size: Some(segment),
            src_ip: None,
        };
        let sent = self.socket.try_io(Interest::WRITABLE, || self.state.send((&self.socket).into(), &transmit));
        if sent.is_err() {
            run.len()
        } else {
            0
        }
    }

    /// Sends datagrams to any destinations, [`SEND_BATCH`] per system call;
    /// returns how many were dropped.
    fn send_each(&self, datagrams: &[Datagram]) -> usize {
        if let [datagram] = datagrams {
            // One alone: quinn-udp's send, without sendmmsg's set-up.
            let transmit = Transmit {
                destination: datagram.destination,
                ecn: None,
                contents: &datagram.contents,
                segment_size: None,
                src_ip: None,
            };
            let sent = self.socket.try_io(Interest::WRITABLE, || self.state.send((&self.socket).into(), &transmit));
            return usize::from(sent.is_err());
        }
        SEND_HEADERS.with_borrow_mut(|headers| {
            let headers = headers.get_or_insert_with(|| MultiHeaders::preallocate(SEND_BATCH, None));
            self.send_batches(datagrams, headers)
        })
    }

    /// [`Self::send_each`]'s batches, with the kernel's message headers.
    fn send_batches(&self, datagrams: &[Datagram], headers: &mut MultiHeaders<SockaddrStorage>) -> usize {
        let mut dropped = 0;
        for batch in datagrams.chunks(SEND_BATCH) {
            // On the stack: one buffer and one address per datagram.
            let slices: [[IoSlice; 1]; SEND_BATCH] =
                std::array::from_fn(|i| [IoSlice::new(batch.get(i).map_or(&[][..], |d| &d.contents[..]))]);
            let addresses: [Option<SockaddrStorage>; SEND_BATCH] =
                std::array::from_fn(|i| batch.get(i).map(|d| SockaddrStorage::from(d.destination)));
            // The kernel stops at the first datagram it cannot send: the
            // rest get another call, unless the socket buffer is full.
            let mut next = 0;
            while next < batch.len() {
                let sent = self.socket.try_io(Interest::WRITABLE, || {
                    let sent = sendmmsg(
                        self.socket.as_raw_fd(),
                        &mut *headers,
                        &slices[next..batch.len()],
                        &addresses[next..batch.len()],
                        [] as [ControlMessage; 0],
                        MsgFlags::empty(),
                    );
                    sent.map(Iterator::count).map_err(io::Error::from)
                });
                match sent {
                    Ok(sent) if sent > 0 => next += sent,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // This destination refused it (no route, too big for
                    // the path, a firewall): only it loses the packet.
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                        tracing::debug!(destination = %batch[next].destination, "send failed: {e}");
                        dropped += 1;
                        next += 1;
                    }
                    // The socket buffer is full: UDP drops the rest.
                    _ => {
                        dropped += batch.len() - next;
                        break;
                    }
                }
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receivers(count: usize) -> Vec<std::net::UdpSocket> {
        (0..count)
            .map(|_| {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
                socket
            })
            .collect()
    }

    fn received(socket: &std::net::UdpSocket, count: usize) -> Vec<Vec<u8>> {
        let mut buffer = [0u8; 2048];
        (0..count)
            .map(|_| {
                let len = socket.recv(&mut buffer).unwrap();
                buffer[..len].to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_destination_that_refuses_loses_only_its_own_datagram() {
        let mut socket = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.writable().await.unwrap();
        let to = receivers(2);
        let datagram = |destination, byte| Datagram { destination, contents: vec![byte; 100] };
        // An IPv6 destination from an IPv4 socket: the kernel refuses it
        // in the middle of the batch.
        let mut queue = vec![
            datagram(to[0].local_addr().unwrap(), 1),
            datagram("[::1]:9".parse().unwrap(), 2),
            datagram(to[1].local_addr().unwrap(), 3),
        ];
        assert_eq!(socket.send_all(&mut queue), 1, "only the refused one is dropped");
        assert_eq!(received(&to[0], 1), vec![vec![1; 100]]);
        assert_eq!(received(&to[1], 1), vec![vec![3; 100]]);
    }

    #[tokio::test]
    async fn a_fan_out_and_runs_between_it_reach_every_destination_in_order() {
        let mut socket = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.writable().await.unwrap();
        let to = receivers(40);
        let datagram =
            |n: usize, byte: u8| Datagram { destination: to[n].local_addr().unwrap(), contents: vec![byte; 100 + n] };
        // One packet to each of 40 receivers (two sendmmsg batches), a run
        // of three to receiver 0 (one GSO send), then 40 more singles.
        let mut queue: Vec<Datagram> = (0..40).map(|n| datagram(n, 1)).collect();
        queue.extend((0..3).map(|_| datagram(0, 2)));
        queue.extend((0..40).map(|n| datagram(n, 3)));
        assert_eq!(socket.send_all(&mut queue), 0, "nothing dropped");
        assert!(queue.is_empty());
        for (n, receiver) in to.iter().enumerate() {
            let expected: Vec<Vec<u8>> = if n == 0 {
                vec![vec![1; 100], vec![2; 100], vec![2; 100], vec![2; 100], vec![3; 100]]
            } else {
                vec![vec![1; 100 + n], vec![3; 100 + n]]
            };
            assert_eq!(received(receiver, expected.len()), expected, "receiver {n}");
        }
    }
}
