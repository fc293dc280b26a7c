//! The core's share of the packet path: routing one published packet into
//! every slot that carries it (selection + sequence/timestamp rewriting).
#![allow(clippy::disallowed_methods)] // a benchmark needs some starting instant

#[path = "../tests/common/simulcast_conference.rs"]
mod simulcast_conference;

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sft::core::conference::{IncomingRtp, Routes};
use sft::core::ids::{Layer, ParticipantId, StreamKey};
use simulcast_conference::simulcast_conference;

fn route_video(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_video_packet");
    for size in [4u64, 10, 20, 50] {
        let now = Instant::now();
        let mut conf = simulcast_conference(size, now);
        let stream = StreamKey::video(ParticipantId(1), Layer::High);
        let mut out = Routes::default();
        // A keyframe first, so every slot that targets the stream switches to it.
        conf.handle_rtp(
            now,
            &IncomingRtp { stream, seq: 1, timestamp: 0, keyframe: true, size: 1000, audio_level: None },
            &mut out,
        );
        while conf.poll_output().is_some() {}
        let receivers = out.slots.len().max(1) as u64;
        group.throughput(Throughput::Elements(receivers));
        let mut seq = 2;
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                let packet = IncomingRtp {
                    stream,
                    seq,
                    timestamp: seq as u32 * 3000,
                    keyframe: false,
                    size: 1000,
                    audio_level: None,
                };
                conf.handle_rtp(now, black_box(&packet), &mut out);
                seq += 1;
                black_box(out.slots.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route_video);
criterion_main!(benches);
