//! HTTP/1.1 head parsing, whole and arriving in small pieces.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use holdwire_proto::http::{
    encode_request_head, encode_response_head, HttpLimits, RequestHead, RequestParser,
    RequestTarget, ResponseParser,
};

fn request() -> Vec<u8> {
    let mut out = Vec::new();
    encode_request_head(
        &mut out,
        &RequestHead {
            target: RequestTarget::Absolute {
                host: "server.example",
                port: 8080,
                path: "/tunnel/00112233445566778899aabbccddeeff",
            },
            host: "server.example:8080",
            proxy_authorization: Some("Basic dXNlcjpwYXNz"),
            content_length: 100,
            close: false,
        },
    );
    out.extend_from_slice(b"Via: 1.1 squid\r\nX-Forwarded-For: 10.0.0.1\r\n");
    out.extend(std::iter::repeat_n(b'x', 0));
    out.extend(vec![0u8; 100]);
    out
}

fn response() -> Vec<u8> {
    let mut out = Vec::new();
    encode_response_head(&mut out, 200, 100, false, false);
    out.extend(vec![0u8; 100]);
    out
}

fn http(c: &mut Criterion) {
    let mut group = c.benchmark_group("http");
    let req = request();
    let resp = response();
    for piece in [usize::MAX, 16, 1] {
        let name = if piece == usize::MAX {
            "whole".to_string()
        } else {
            format!("{piece}B-pieces")
        };
        group.throughput(Throughput::Bytes(req.len() as u64));
        group.bench_with_input(BenchmarkId::new("request", &name), &piece, |b, &piece| {
            b.iter(|| {
                let mut p = RequestParser::new(HttpLimits::default());
                let mut got = None;
                for chunk in req.chunks(piece.min(req.len())) {
                    p.push(chunk).expect("valid request");
                    if let Some(r) = p.poll().expect("valid request") {
                        got = Some(r.body.len());
                    }
                }
                got.expect("one request")
            })
        });
        group.throughput(Throughput::Bytes(resp.len() as u64));
        group.bench_with_input(BenchmarkId::new("response", &name), &piece, |b, &piece| {
            b.iter(|| {
                let mut p = ResponseParser::new(HttpLimits::default());
                let mut got = None;
                for chunk in resp.chunks(piece.min(resp.len())) {
                    p.push(chunk).expect("valid response");
                    if let Some(r) = p.poll().expect("valid response") {
                        got = Some(r.body.len());
                    }
                }
                got.expect("one response")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, http);
criterion_main!(benches);
