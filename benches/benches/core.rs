//! The protocol core alone: a client and a server joined in memory, no sockets.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use holdwire_benches::Pair;
use holdwire_proto::{ClientConfig, ServerConfig};

const CHUNK: usize = 64 * 1024;

fn core(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    let data = vec![0x5Au8; CHUNK];
    let mut sink = vec![0u8; CHUNK];

    // Upload: the client writes, the server application reads.
    let mut pair = Pair::new(ClientConfig::default(), ServerConfig::default());
    group.throughput(Throughput::Bytes((16 * CHUNK) as u64));
    group.bench_function("bulk_up_1MiB", |b| {
        b.iter(|| {
            let mut left = 16 * CHUNK;
            let mut read = 0;
            while read < 16 * CHUNK {
                while left > 0 {
                    match pair.client.write(&data[..CHUNK.min(left)]) {
                        Ok(n) => left -= n,
                        Err(_) => break,
                    }
                }
                pair.pump();
                while let Ok(n) = pair.server.read(pair.session, &mut sink) {
                    read += n;
                }
                pair.pump();
            }
        })
    });

    // Download: the server application writes, the client reads.
    let mut pair = Pair::new(ClientConfig::default(), ServerConfig::default());
    group.bench_function("bulk_down_1MiB", |b| {
        b.iter(|| {
            let mut left = 16 * CHUNK;
            let mut read = 0;
            while read < 16 * CHUNK {
                while left > 0 {
                    match pair.server.write(pair.session, &data[..CHUNK.min(left)]) {
                        Ok(n) => left -= n,
                        Err(_) => break,
                    }
                }
                pair.pump();
                while let Ok(n) = pair.client.read(&mut sink) {
                    read += n;
                }
                pair.pump();
            }
        })
    });

    // The cost of one timer event on an idle session: the held request reaches max_wait and is
    // renewed.
    let mut pair = Pair::new(ClientConfig::default(), ServerConfig::default());
    group.throughput(Throughput::Elements(1));
    group.bench_function("idle_timer_event", |b| {
        b.iter(|| {
            let at = pair
                .server
                .poll_timeout()
                .expect("a held request has a deadline");
            pair.now = at.max(pair.now) + Duration::from_micros(1);
            pair.server.handle_timeout(pair.now);
            pair.client.handle_timeout(pair.now);
            pair.pump()
        })
    });
    group.finish();
}

criterion_group!(benches, core);
criterion_main!(benches);
