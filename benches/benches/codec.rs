//! Bundle encode and decode, including the CRC and an authentication-sized tag.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use holdwire_proto::wire::{self, BundleEncoder, Frame, Header, SessionId, WireLimits};

fn bundle(payload: usize, tag_len: u8) -> Vec<u8> {
    let data = vec![0xA5u8; payload.min(64 * 1024)];
    let header = Header {
        session: SessionId([3; 16]),
        rid: 42,
        ack: 7,
        window: 1 << 20,
        hold: 2,
        ..Header::default()
    };
    let mut out = Vec::with_capacity(payload + 4096);
    let mut enc = BundleEncoder::new(&mut out, &header, &[], tag_len);
    let mut left = payload;
    let mut seq = 0;
    while left > 0 {
        let n = left.min(data.len());
        enc.message(seq, &data[..n]);
        seq += 1;
        left -= n;
    }
    enc.finish(|_, tag| tag.fill(0x11));
    out
}

fn codec(c: &mut Criterion) {
    let limits = WireLimits::default();
    let mut group = c.benchmark_group("codec");
    for size in [64usize, 1024, 16 * 1024, 256 * 1024, 1 << 20] {
        let encoded = bundle(size, 16);
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &size, |b, &size| {
            b.iter(|| bundle(size, 16))
        });
        let input = Bytes::from(encoded);
        group.bench_with_input(BenchmarkId::new("decode", size), &input, |b, input| {
            b.iter(|| {
                let bundle = wire::decode(input.clone(), &limits).expect("valid bundle");
                bundle
                    .frames()
                    .map(|f| match f {
                        Frame::Message { payload, .. } => payload.len(),
                        _ => 0,
                    })
                    .sum::<usize>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
