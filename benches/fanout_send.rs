//! Sending one forwarded packet's fan-out: 16 datagrams of 1,000 bytes to
//! 16 receivers on loopback, as one `MediaSocket::send_all` of the 16
//! (`sendmmsg`) against 16 calls of one each (a `sendmsg` per receiver),
//! in the same run. The receivers never read: the kernel drops what fills
//! their buffers, after the sender has paid for the send.

use std::net::UdpSocket;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sft::edge::udp::{Datagram, MediaSocket};

const RECEIVERS: usize = 16;
const BYTES: usize = 1000;

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _entered = runtime.enter();
    let mut socket = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    runtime.block_on(socket.writable()).unwrap();
    let receivers: Vec<UdpSocket> = (0..RECEIVERS).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let fan_out: Vec<Datagram> = receivers
        .iter()
        .map(|r| Datagram { destination: r.local_addr().unwrap(), contents: vec![0xa5; BYTES] })
        .collect();
    let mut queue = Vec::with_capacity(RECEIVERS);
    let mut group = c.benchmark_group("fanout_send");
    group.throughput(Throughput::Elements(RECEIVERS as u64));
    group.bench_function("one send_all (sendmmsg)", |b| {
        b.iter(|| {
            queue.extend(fan_out.iter().map(|d| Datagram { destination: d.destination, contents: d.contents.clone() }));
            socket.send_all(&mut queue)
        })
    });
    group.bench_function("a send_all per receiver (sendmsg)", |b| {
        b.iter(|| {
            let mut dropped = 0;
            for d in &fan_out {
                queue.push(Datagram { destination: d.destination, contents: d.contents.clone() });
                dropped += socket.send_all(&mut queue);
            }
            dropped
        })
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
