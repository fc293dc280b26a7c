//! The media socket: batched receive (recvmmsg + GRO) and segmented send
//! (UDP GSO) through `quinn-udp`, which holds all the socket `unsafe`.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Large enough for a GRO-coalesced batch of full-size datagrams.
const RECV_BUFFER_BYTES: usize = 64 * 1024;
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
    /// as one GSO send where their sizes allow. A full socket buffer drops
    /// the rest of a run (UDP semantics: congestion control is the
    /// endpoints' job); returns how many datagrams were dropped.
    pub fn send_all(&mut self, queue: &mut Vec<Datagram>) -> usize {
        let max_segments = self.state.max_gso_segments();
        let mut dropped = 0;
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
            let run = &queue[start..end];
            let contents: &[u8] = if run.len() == 1 {
                &run[0].contents
            } else {
                self.gso_buffer.clear();
                for datagram in run {
                    self.gso_buffer.extend_from_slice(&datagram.contents);
                }
                &self.gso_buffer
            };
            let transmit = Transmit {
                destination: first.destination,
                ecn: None,
                contents,
                segment_size: (run.len() > 1).then_some(segment),
                src_ip: None,
            };
            let sent = self.socket.try_io(Interest::WRITABLE, || self.state.send((&self.socket).into(), &transmit));
            if sent.is_err() {
                dropped += run.len();
            }
            start = end;
        }
        queue.clear();
        dropped
    }
}
