//! The relay's per-packet framing: a media datagram encoded on the sending
//! SFT and decoded on the receiving one, for audio- and video-sized payloads.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sft::core::ids::{Layer, MediaKind};
use sft::wire::{MediaFrame, RelayCodec};

fn frame(payload: &[u8]) -> MediaFrame<'_> {
    MediaFrame {
        channel: 7,
        publisher: 42,
        kind: MediaKind::Video,
        layer: Some(Layer::High),
        codec: RelayCodec::Vp8,
        marker: true,
        keyframe: false,
        audio_level: None,
        voice_activity: false,
        seq: 123_456,
        timestamp: 90_000,
        payload,
    }
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_frame");
    for size in [100usize, 1200] {
        let payload = vec![0xa5; size];
        group.throughput(Throughput::Elements(1));
        let mut out = Vec::with_capacity(1500);
        group.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, payload| {
            b.iter(|| {
                out.clear();
                frame(black_box(payload)).encode(&mut out);
                black_box(out.len())
            })
        });
        let mut encoded = Vec::new();
        frame(&payload).encode(&mut encoded);
        group.bench_with_input(BenchmarkId::new("decode", size), &encoded, |b, encoded| {
            b.iter(|| black_box(MediaFrame::decode(black_box(encoded)).expect("a valid frame")).seq)
        });
    }
    group.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
