//! Writes the seed corpus: `cargo run --example gen_corpus` (from `fuzz/`).
//!
//! Nothing is hand-written hex: the bundles are the worked examples of `docs/PROTOCOL.md`
//! (parsed from the document) and real bundles, requests and responses recorded from a client
//! and a server talking through the fuzz world; the structured targets' seeds are operation
//! sequences encoded in `arbitrary`'s format and checked by decoding them back.
//!
//! Existing files under `corpus/` are replaced only by files of the same name (named `seed-*`),
//! so corpus entries found by fuzzing are kept.

use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use holdwire_fuzz::http_split;
use holdwire_fuzz::{client_target as ct, server_target as st, world};
use holdwire_proto::http::{self, RequestHead, RequestTarget};
use holdwire_proto::wire;

fn main() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = fuzz_dir.join("corpus");
    let doc = fs::read_to_string(fuzz_dir.join("../docs/PROTOCOL.md")).expect("docs/PROTOCOL.md");

    // Real traffic: a session with data both ways, with and without a token.
    let plain = record(false);
    let tagged = record(true);

    // ---- bundle_decode: mode byte + bundle ----
    let mut bundles: Vec<(String, Vec<u8>)> = doc_examples(&doc);
    for (label, trace) in [("plain", &plain), ("tagged", &tagged)] {
        for (i, (to_server, bytes)) in trace.iter().take(4).enumerate() {
            let body = http_body(bytes);
            if wire::decode(body.clone().into(), &wire::WireLimits::default()).is_ok() {
                let dir = if *to_server { "request" } else { "response" };
                bundles.push((format!("{label}-{i}-{dir}"), body));
            }
        }
    }
    let dir = target_dir(&corpus, "bundle_decode");
    for (name, bundle) in &bundles {
        let body = &bundle[..bundle.len() - wire::CRC_LEN];
        write(
            &dir,
            &format!("{name}-verbatim"),
            &[&[0u8][..], bundle].concat(),
        );
        write(
            &dir,
            &format!("{name}-fixcrc"),
            &[&[1u8][..], body].concat(),
        );
        if name.starts_with("doc-") {
            write(&dir, &format!("{name}-tight"), &[&[3u8][..], body].concat());
        }
    }

    // ---- http_request: limits prefix + requests ----
    let dir = target_dir(&corpus, "http_request");
    let requests: Vec<&Vec<u8>> = plain.iter().filter(|(up, _)| *up).map(|(_, b)| b).collect();
    write(&dir, "client-open", &http_split::seed(requests[0]));
    write(
        &dir,
        "client-data",
        &http_split::seed(requests[requests.len() / 2]),
    );
    let two: Vec<u8> = [requests[0].as_slice(), requests[1].as_slice()].concat();
    write(&dir, "two-pipelined", &http_split::seed(&two));
    let mut proxied = Vec::new();
    http::encode_request_head(
        &mut proxied,
        &RequestHead {
            target: RequestTarget::Absolute {
                host: "::1",
                port: 8080,
                path: "/tunnel/00112233445566778899aabbccddeeff",
            },
            host: "[::1]:8080",
            proxy_authorization: Some(&http::basic_auth_value("user", "secret")),
            content_length: 5,
            close: false,
        },
    );
    proxied.extend_from_slice(b"hello");
    write(&dir, "proxy-absolute-form", &http_split::seed(&proxied));
    let chunked = b"POST /00112233445566778899aabbccddeeff HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n";
    write(&dir, "chunked-expect", &http_split::seed(chunked));
    // The same open request with small limits and three split points.
    let mut split = vec![40, 4, 0x01, 0x00, 3, 0, 10, 0, 60, 0, 200];
    split.extend_from_slice(requests[0]);
    write(&dir, "client-open-small-limits-split", &split);

    // ---- http_response: limits prefix + responses ----
    let dir = target_dir(&corpus, "http_response");
    let responses: Vec<&Vec<u8>> = plain
        .iter()
        .filter(|(up, _)| !*up)
        .map(|(_, b)| b)
        .collect();
    write(&dir, "server-open", &http_split::seed(responses[0]));
    write(
        &dir,
        "server-data",
        &http_split::seed(responses[responses.len() / 2]),
    );
    let mut page = Vec::new();
    page.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    page.extend_from_slice(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nConnection: close\r\nContent-Length: 27\r\n\r\n<html>no server here</html>");
    write(&dir, "interim-then-proxy-503", &http_split::seed(&page));
    let http10 = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nProxy-Connection: close\r\n\r\nbody delimited by the close";
    write(&dir, "http10-close-delimited", &http_split::seed(http10));
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    write(&dir, "chunked-then-204", &http_split::seed(chunked));

    // ---- server_endpoint ----
    let dir = target_dir(&corpus, "server_endpoint");
    for (name, input) in server_seeds(&requests) {
        let bytes = encode_server_input(&input);
        check_roundtrip::<st::Input>(&bytes, &input);
        write(&dir, &name, &bytes);
    }

    // ---- client_session ----
    let dir = target_dir(&corpus, "client_session");
    for (name, input) in client_seeds() {
        let bytes = encode_client_input(&input);
        check_roundtrip::<ct::Input>(&bytes, &input);
        write(&dir, &name, &bytes);
    }
}

/// A fresh session through the fuzz world, every transmit recorded.
fn record(token: bool) -> Vec<(bool, Vec<u8>)> {
    let mut w = world::World::new(token, "/", 0, 1);
    w.trace = Some(Vec::new());
    w.run_fresh_session(3000, 2000);
    w.trace.take().unwrap_or_default()
}

fn http_body(message: &[u8]) -> Vec<u8> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    message[end..].to_vec()
}

/// The `<!-- example: NAME -->` dumps of PROTOCOL.md section 10, decoded from their hex.
fn doc_examples(doc: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("<!-- example: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        let mut bytes = Vec::new();
        for l in lines.by_ref().skip(1) {
            if l.starts_with("```") {
                break;
            }
            // "0000  68 77   # comment": the offset, then hex pairs up to the comment.
            let data = l.split('#').next().unwrap_or("");
            for pair in data.split_whitespace().skip(1) {
                bytes.push(u8::from_str_radix(pair, 16).expect("hex byte"));
            }
        }
        wire::decode(bytes.clone().into(), &wire::WireLimits::default())
            .unwrap_or_else(|e| panic!("doc example {name} does not decode: {e}"));
        out.push((format!("doc-{name}"), bytes));
    }
    assert!(out.len() >= 3, "found {} doc examples", out.len());
    out
}

fn target_dir(corpus: &Path, target: &str) -> PathBuf {
    let dir = corpus.join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn check_roundtrip<'a, T: Arbitrary<'a> + Debug>(bytes: &'a [u8], expected: &T) {
    let decoded = T::arbitrary_take_rest(Unstructured::new(bytes)).expect("seed decodes");
    assert_eq!(
        format!("{decoded:?}"),
        format!("{expected:?}"),
        "seed encoding does not decode back"
    );
}

// ---------------------------------------------------------------------------------------
// Seeds of the structured targets
// ---------------------------------------------------------------------------------------

use holdwire_fuzz::spec::{
    BodySpec, BundleSpec, ContentTypeSpec, Damage, FrameSpec, Framing, MethodSpec, Num, Rel,
    RequestSpec, ResponseSpec, StatusSpec, TargetSpec,
};

fn bundle(frames: Vec<FrameSpec>) -> BundleSpec {
    BundleSpec {
        wrong_direction: false,
        foreign_session: None,
        rid: Rel::Expected,
        ack: Rel::Expected,
        window: 16 * 1024,
        hold: 1,
        held_us: 0,
        sacks: Vec::new(),
        frames,
        tag: None,
    }
}

fn server_seeds(requests: &[&Vec<u8>]) -> Vec<(String, st::Input)> {
    use st::Op::*;
    let pump = |peer| PeerPump { peer };
    let genuine = st::Input {
        token: false,
        prefixed: false,
        peers: 1,
        ops: vec![
            pump(0),
            PeerWrite { peer: 0, len: 3000 },
            pump(0),
            Write {
                session: 0,
                len: 2000,
            },
            pump(0),
            PeerRead { peer: 0, len: 4096 },
            Read {
                session: 0,
                len: 4096,
            },
            Advance { ms: 2500 },
            pump(0),
            PeerFinish { peer: 0 },
            Finish { session: 0 },
            pump(0),
        ],
    };
    let request = |target, frames, framing| Request {
        conn: 0,
        spec: RequestSpec {
            method: MethodSpec::Post,
            target,
            http10: false,
            close: false,
            framing,
            expect_continue: false,
            body: BodySpec::Bundle(bundle(frames)),
            damage: Damage::None,
        },
        split: None,
    };
    let open = || FrameSpec::Open {
        nonce: 7,
        max_wait_ms: 0,
    };
    let message = |seq| FrameSpec::Message {
        seq: Num::Small(seq),
        len: 99,
        fill: seq,
    };
    let built = st::Input {
        token: false,
        prefixed: true,
        peers: 0,
        ops: vec![
            request(
                TargetSpec::Session(2),
                vec![open(), message(0)],
                Framing::Length,
            ),
            Read {
                session: 2,
                len: 512,
            },
            Write {
                session: 2,
                len: 700,
            },
            request(
                TargetSpec::Session(2),
                vec![message(1)],
                Framing::Chunked(17),
            ),
            request(TargetSpec::Session(3), vec![message(0)], Framing::Length),
            Advance { ms: 2100 },
            request(
                TargetSpec::Session(2),
                vec![FrameSpec::Fin { seq: Num::Small(2) }],
                Framing::Length,
            ),
            Finish { session: 2 },
            request(
                TargetSpec::Session(2),
                vec![FrameSpec::Close],
                Framing::Length,
            ),
            Close { conn: 0 },
        ],
    };
    let raw = |conn, bytes: &[u8]| Raw {
        conn,
        data: bytes.to_vec(),
        split: Some(40),
    };
    let replay = st::Input {
        token: true,
        prefixed: false,
        peers: 2,
        ops: vec![
            pump(0),
            PeerSend {
                peer: 1,
                split: Some(100),
            },
            PeerRecv {
                peer: 1,
                split: None,
            },
            Replay {
                index: 0,
                conn: 9,
                damage: Damage::None,
            },
            Replay {
                index: 1,
                conn: 9,
                damage: Damage::Flip(120, 4),
            },
            PeerWrite { peer: 1, len: 5000 },
            pump(1),
            PeerCut { peer: 1, which: 0 },
            raw(9, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            raw(9, &requests[0][..requests[0].len() / 2]),
            Advance { ms: 3500 },
            pump(0),
            pump(1),
        ],
    };
    let big = |seq| FrameSpec::Message {
        seq: Num::Small(seq),
        len: 3999,
        fill: seq,
    };
    let out_of_order = st::Input {
        token: false,
        prefixed: false,
        peers: 0,
        ops: vec![
            request(
                TargetSpec::Session(1),
                vec![open(), big(2), big(3), big(5)],
                Framing::Length,
            ),
            request(TargetSpec::Session(1), vec![big(0)], Framing::Length),
            Read {
                session: 1,
                len: 6000,
            },
            request(
                TargetSpec::Session(1),
                vec![big(1), big(4)],
                Framing::Length,
            ),
            ReadChunk {
                session: 1,
                max: 9000,
            },
        ],
    };
    vec![
        ("genuine-session".into(), genuine),
        ("built-requests".into(), built),
        ("token-replays".into(), replay),
        ("out-of-order-data".into(), out_of_order),
    ]
}

fn client_seeds() -> Vec<(String, ct::Input)> {
    use ct::Op::*;
    let respond = |slot, frames, framing| Respond {
        slot,
        spec: ResponseSpec {
            status: StatusSpec::Ok,
            interim: false,
            http10: false,
            keep_alive: true,
            content_type: ContentTypeSpec::Bundle,
            framing,
            body: BodySpec::Bundle(BundleSpec {
                wrong_direction: false,
                foreign_session: None,
                rid: Rel::Expected,
                ack: Rel::Expected,
                window: 16 * 1024,
                hold: 2,
                held_us: 1500,
                sacks: Vec::new(),
                frames,
                tag: None,
            }),
            damage: Damage::None,
        },
        split: None,
    };
    let open = || FrameSpec::Open {
        nonce: 3,
        max_wait_ms: 2000,
    };
    let message = |seq| FrameSpec::Message {
        seq: Num::Small(seq),
        len: 500,
        fill: seq,
    };
    let session = ct::Input {
        token: false,
        max_in_flight: 2,
        hold: 1,
        ops: vec![
            Write { len: 3000 },
            respond(0, vec![open(), message(0)], Framing::Length),
            Read { len: 4096 },
            respond(1, vec![message(2)], Framing::Chunked(33)),
            respond(0, vec![message(1)], Framing::Length),
            Advance { ms: 2500 },
            Finish,
            respond(
                1,
                vec![FrameSpec::Fin { seq: Num::Small(3) }],
                Framing::Length,
            ),
            ReadChunk { max: 1000 },
            respond(0, vec![FrameSpec::Close], Framing::None),
            Close { slot: 0 },
            Advance { ms: 500 },
        ],
    };
    let failures = ct::Input {
        token: false,
        max_in_flight: 1,
        hold: 0,
        ops: vec![
            Close { slot: 0 },
            Advance { ms: 1000 },
            Raw {
                slot: 0,
                data: b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n".to_vec(),
            },
            Respond {
                slot: 0,
                spec: ResponseSpec {
                    status: StatusSpec::Listed(6),
                    interim: true,
                    http10: true,
                    keep_alive: false,
                    content_type: ContentTypeSpec::Bundle,
                    framing: Framing::Length,
                    body: BodySpec::Bundle(bundle(vec![FrameSpec::Unreadable {
                        rid: Rel::Expected,
                    }])),
                    damage: Damage::Flip(60, 2),
                },
                split: Some(30),
            },
            Timeout,
            Abort { code: 1 },
            Advance { ms: 4000 },
        ],
    };
    let big = |seq| FrameSpec::Message {
        seq: Num::Small(seq),
        len: 3999,
        fill: seq,
    };
    let out_of_order = ct::Input {
        token: false,
        max_in_flight: 1,
        hold: 1,
        ops: vec![
            respond(0, vec![open(), big(0), big(3), big(5)], Framing::Length),
            respond(1, vec![big(1)], Framing::Length),
            Read { len: 5000 },
            respond(0, vec![big(2), big(4)], Framing::Length),
            Sent { slot: 1 },
            ReadChunk { max: 9000 },
        ],
    };
    vec![
        ("session-open-data-close".into(), session),
        ("out-of-order-data".into(), out_of_order),
        ("failures".into(), failures),
    ]
}

// ---------------------------------------------------------------------------------------
// A writer for `arbitrary` 1.x's format (ints little-endian, bool = low bit, enum = u32
// scaled to the variant count, Option = bool + value, Vec = "another?" bool before each
// element). Strings are never used in seeds (their lengths come from the end of the data).
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn variant(&mut self, index: u64, count: u64) {
        // The smallest v with (v * count) >> 32 == index.
        let v = (index << 32).div_ceil(count);
        self.u32(u32::try_from(v).expect("variant in range"));
    }
    fn opt<T>(&mut self, v: &Option<T>, f: impl FnOnce(&mut Self, &T)) {
        self.bool(v.is_some());
        if let Some(v) = v {
            f(self, v);
        }
    }
    fn vec<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Self, &T)) {
        for item in items {
            self.bool(true);
            f(self, item);
        }
        self.bool(false);
    }
    fn bytes(&mut self, bytes: &[u8]) {
        self.vec(bytes, |e, b| e.u8(*b));
    }

    fn num(&mut self, n: &Num) {
        match n {
            Num::Small(v) => (self.variant(0, 3), self.u8(*v)),
            Num::Mid(v) => (self.variant(1, 3), self.u16(*v)),
            Num::Raw(v) => (self.variant(2, 3), self.u64(*v)),
        };
    }
    fn rel(&mut self, r: &Rel) {
        match r {
            Rel::Expected => self.variant(0, 4),
            Rel::Plus(d) => (self.variant(1, 4), self.u8(*d)).1,
            Rel::Minus(d) => (self.variant(2, 4), self.u8(*d)).1,
            Rel::Abs(n) => (self.variant(3, 4), self.num(n)).1,
        }
    }
    fn frame(&mut self, f: &FrameSpec) {
        match f {
            FrameSpec::Message { seq, len, fill } => {
                self.variant(0, 7);
                self.num(seq);
                self.u16(*len);
                self.u8(*fill);
            }
            FrameSpec::Fin { seq } => (self.variant(1, 7), self.num(seq)).1,
            FrameSpec::Open { nonce, max_wait_ms } => {
                self.variant(2, 7);
                self.u8(*nonce);
                self.u32(*max_wait_ms);
            }
            FrameSpec::Close => self.variant(3, 7),
            FrameSpec::Unreadable { rid } => (self.variant(5, 7), self.rel(rid)).1,
            FrameSpec::Unknown { ty, body } => {
                self.variant(6, 7);
                self.u8(*ty);
                self.bytes(body);
            }
            FrameSpec::Abort { .. } => panic!(
                "seed specs use no ABORT frames: this encoder has no form for their reason strings"
            ),
        }
    }
    fn bundle(&mut self, b: &BundleSpec) {
        self.bool(b.wrong_direction);
        self.opt(&b.foreign_session, |e, v| e.u8(*v));
        self.rel(&b.rid);
        self.rel(&b.ack);
        self.u32(b.window);
        self.u8(b.hold);
        self.u32(b.held_us);
        self.vec(&b.sacks, |e, (gap, len)| (e.u8(*gap), e.u8(*len)).1);
        self.vec(&b.frames, |e, f| e.frame(f));
        self.opt(&b.tag, |e, (len, fill)| (e.u8(*len), e.u8(*fill)).1);
    }
    fn body(&mut self, b: &BodySpec) {
        match b {
            BodySpec::Bundle(spec) => (self.variant(0, 2), self.bundle(spec)).1,
            BodySpec::Raw(bytes) => (self.variant(1, 2), self.bytes(bytes)).1,
        }
    }
    fn framing(&mut self, f: &Framing) {
        match f {
            Framing::Length => self.variant(0, 3),
            Framing::Chunked(n) => (self.variant(1, 3), self.u8(*n)).1,
            Framing::None => self.variant(2, 3),
        }
    }
    fn damage(&mut self, d: &Damage) {
        match d {
            Damage::None => self.variant(0, 3),
            Damage::Flip(at, mask) => (self.variant(1, 3), self.u16(*at), self.u8(*mask)).2,
            Damage::Cut(at) => (self.variant(2, 3), self.u16(*at)).1,
        }
    }
    fn request(&mut self, r: &RequestSpec) {
        let method = match r.method {
            MethodSpec::Post => 0,
            MethodSpec::Get => 1,
            MethodSpec::Head => 2,
            MethodSpec::Put => 3,
        };
        self.variant(method, 4);
        match &r.target {
            TargetSpec::Session(i) => (self.variant(0, 6), self.u8(*i)).1,
            TargetSpec::Absolute(i) => (self.variant(1, 6), self.u8(*i)).1,
            TargetSpec::UpperHex(i) => (self.variant(2, 6), self.u8(*i)).1,
            TargetSpec::Prefix => self.variant(3, 6),
            TargetSpec::Root => self.variant(4, 6),
            TargetSpec::Other(_) => {
                panic!("seed specs use no free-form targets: this encoder has no form for strings")
            }
        }
        self.bool(r.http10);
        self.bool(r.close);
        self.framing(&r.framing);
        self.bool(r.expect_continue);
        self.body(&r.body);
        self.damage(&r.damage);
    }
    fn response(&mut self, r: &ResponseSpec) {
        match r.status {
            StatusSpec::Ok => self.variant(0, 3),
            StatusSpec::Listed(i) => (self.variant(1, 3), self.u8(i)).1,
            StatusSpec::Raw(v) => (self.variant(2, 3), self.u16(v)).1,
        }
        self.bool(r.interim);
        self.bool(r.http10);
        self.bool(r.keep_alive);
        let ct = match r.content_type {
            ContentTypeSpec::Bundle => 0,
            ContentTypeSpec::Html => 1,
            ContentTypeSpec::None => 2,
        };
        self.variant(ct, 3);
        self.framing(&r.framing);
        self.body(&r.body);
        self.damage(&r.damage);
    }
}

fn encode_server_input(input: &st::Input) -> Vec<u8> {
    use st::Op::*;
    let mut e = Enc::default();
    e.bool(input.token);
    e.bool(input.prefixed);
    e.u8(input.peers);
    let split = |e: &mut Enc, s: &Option<u16>| e.opt(s, |e, v| e.u16(*v));
    e.vec(&input.ops, |e, op| {
        let n = 20;
        match op {
            Accept => e.variant(0, n),
            Raw {
                conn,
                data,
                split: s,
            } => {
                e.variant(1, n);
                e.u8(*conn);
                e.bytes(data);
                split(e, s);
            }
            Request {
                conn,
                spec,
                split: s,
            } => {
                e.variant(2, n);
                e.u8(*conn);
                e.request(spec);
                split(e, s);
            }
            Replay {
                index,
                conn,
                damage,
            } => {
                e.variant(3, n);
                e.u8(*index);
                e.u8(*conn);
                e.damage(damage);
            }
            Close { conn } => (e.variant(4, n), e.u8(*conn)).1,
            Advance { ms } => (e.variant(5, n), e.u16(*ms)).1,
            StaleTimeout { back_ms } => (e.variant(6, n), e.u16(*back_ms)).1,
            Write { session, len } => (e.variant(7, n), e.u8(*session), e.u16(*len)).2,
            Read { session, len } => (e.variant(8, n), e.u8(*session), e.u16(*len)).2,
            ReadChunk { session, max } => (e.variant(9, n), e.u8(*session), e.u16(*max)).2,
            Finish { session } => (e.variant(10, n), e.u8(*session)).1,
            Abort { session, code } => (e.variant(11, n), e.u8(*session), e.u16(*code)).2,
            PeerSend { peer, split: s } => (e.variant(12, n), e.u8(*peer), split(e, s)).2,
            PeerRecv { peer, split: s } => (e.variant(13, n), e.u8(*peer), split(e, s)).2,
            PeerCut { peer, which } => (e.variant(14, n), e.u8(*peer), e.u8(*which)).2,
            PeerPump { peer } => (e.variant(15, n), e.u8(*peer)).1,
            PeerWrite { peer, len } => (e.variant(16, n), e.u8(*peer), e.u16(*len)).2,
            PeerRead { peer, len } => (e.variant(17, n), e.u8(*peer), e.u16(*len)).2,
            PeerFinish { peer } => (e.variant(18, n), e.u8(*peer)).1,
            PeerTimeout { peer } => (e.variant(19, n), e.u8(*peer)).1,
        }
    });
    e.0
}

fn encode_client_input(input: &ct::Input) -> Vec<u8> {
    use ct::Op::*;
    let mut e = Enc::default();
    e.bool(input.token);
    e.u8(input.max_in_flight);
    e.u8(input.hold);
    e.vec(&input.ops, |e, op| {
        let n = 12;
        match op {
            Respond { slot, spec, split } => {
                e.variant(0, n);
                e.u8(*slot);
                e.response(spec);
                e.opt(split, |e, v| e.u16(*v));
            }
            Raw { slot, data } => (e.variant(1, n), e.u8(*slot), e.bytes(data)).2,
            Close { slot } => (e.variant(2, n), e.u8(*slot)).1,
            Advance { ms } => (e.variant(3, n), e.u16(*ms)).1,
            StaleTimeout { back_ms } => (e.variant(4, n), e.u16(*back_ms)).1,
            Timeout => e.variant(5, n),
            Write { len } => (e.variant(6, n), e.u16(*len)).1,
            Read { len } => (e.variant(7, n), e.u16(*len)).1,
            ReadChunk { max } => (e.variant(8, n), e.u16(*max)).1,
            Finish => e.variant(9, n),
            Abort { code } => (e.variant(10, n), e.u16(*code)).1,
            Sent { slot } => (e.variant(11, n), e.u8(*slot)).1,
        }
    });
    e.0
}
