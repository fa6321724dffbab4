//! Structured inputs: bundles, HTTP requests and responses described by `arbitrary` values,
//! and the builders that turn them into bytes.
//!
//! Builders produce *well-formed* messages by default (valid SACK ranges, non-empty messages,
//! the right session and request id, a correct CRC), so that the fuzzer reaches the session
//! logic behind the decoders; a few fields (`Damage`, foreign sessions, wrong direction, tag
//! lengths) break them on purpose.

use arbitrary::Arbitrary;
use holdwire_proto::http;
use holdwire_proto::wire::{
    AbortCode, BundleEncoder, Frame, Header, SackRange, SessionId, NONCE_LEN,
};

/// A number that is usually small (sequence numbers and request ids start at 0 or 1).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Num {
    /// 0..=255.
    Small(u8),
    /// 0..=65535.
    Mid(u16),
    /// Anything, including values near `u64::MAX`.
    Raw(u64),
}

impl Num {
    /// The value.
    pub fn get(self) -> u64 {
        match self {
            Num::Small(v) => u64::from(v),
            Num::Mid(v) => u64::from(v),
            Num::Raw(v) => v,
        }
    }
}

/// A value relative to what the receiver expects (a request id, an acknowledgement).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Rel {
    /// Exactly the expected value.
    Expected,
    /// Expected plus this much.
    Plus(u8),
    /// Expected minus this much (saturating).
    Minus(u8),
    /// Any value.
    Abs(Num),
}

impl Rel {
    /// Resolves against `expected`.
    pub fn get(self, expected: u64) -> u64 {
        match self {
            Rel::Expected => expected,
            Rel::Plus(d) => expected.saturating_add(u64::from(d)),
            Rel::Minus(d) => expected.saturating_sub(u64::from(d)),
            Rel::Abs(n) => n.get(),
        }
    }
}

/// One frame of a built bundle.
#[derive(Arbitrary, Debug, Clone)]
pub enum FrameSpec {
    /// MESSAGE with `len % max + 1` bytes of a pattern.
    Message {
        /// Sequence number.
        seq: Num,
        /// Payload length (reduced to 1..=max_message_len).
        len: u16,
        /// Pattern seed.
        fill: u8,
    },
    /// FIN.
    Fin {
        /// Sequence number.
        seq: Num,
    },
    /// OPEN; the nonce is sixteen copies of one byte.
    Open {
        /// Nonce byte.
        nonce: u8,
        /// Max wait.
        max_wait_ms: u32,
    },
    /// CLOSE.
    Close,
    /// ABORT (the reason is truncated to 256 bytes by the encoder).
    Abort {
        /// Code.
        code: u16,
        /// Reason.
        reason: String,
    },
    /// UNREADABLE.
    Unreadable {
        /// The request id reported.
        rid: Rel,
    },
    /// An extension frame (the type gets its high bit set).
    Unknown {
        /// Type.
        ty: u8,
        /// Body.
        body: Vec<u8>,
    },
}

/// A bundle, with fields relative to what the receiver expects.
#[derive(Arbitrary, Debug, Clone)]
pub struct BundleSpec {
    /// Set the RESPONSE flag the wrong way round.
    pub wrong_direction: bool,
    /// Use another session id (sixteen copies of this byte) in the header.
    pub foreign_session: Option<u8>,
    /// Request id, relative to the expected one.
    pub rid: Rel,
    /// Cumulative acknowledgement, relative to the expected one.
    pub ack: Rel,
    /// Window.
    pub window: u32,
    /// Hold.
    pub hold: u8,
    /// Held microseconds.
    pub held_us: u32,
    /// SACK ranges as (gap, length - 1) above the previous range (always valid).
    pub sacks: Vec<(u8, u8)>,
    /// Frames.
    pub frames: Vec<FrameSpec>,
    /// A tag of `len % 65` bytes, all `fill`.
    pub tag: Option<(u8, u8)>,
}

/// What a built bundle is measured against.
#[derive(Debug, Clone, Copy)]
pub struct BundleCtx {
    /// The bundle should be a response.
    pub response: bool,
    /// The session it should belong to.
    pub session: SessionId,
    /// The request id expected.
    pub rid: u64,
    /// The acknowledgement that would be correct.
    pub ack: u64,
    /// Largest MESSAGE payload to build.
    pub max_message_len: usize,
}

/// Most frames and SACK ranges taken from one spec (keeps bundles small).
const MAX_FRAMES: usize = 64;
const MAX_SACKS: usize = 12;

impl BundleSpec {
    /// Appends the bundle to `out`.
    pub fn encode(&self, ctx: &BundleCtx, out: &mut Vec<u8>) {
        let header = Header {
            response: ctx.response != self.wrong_direction,
            session: self
                .foreign_session
                .map_or(ctx.session, |b| SessionId([b; 16])),
            rid: self.rid.get(ctx.rid),
            ack: self.ack.get(ctx.ack),
            window: self.window,
            hold: self.hold,
            held_us: self.held_us,
        };
        let mut sacks = Vec::new();
        let mut floor = header.ack;
        for &(gap, len) in self.sacks.iter().take(MAX_SACKS) {
            let Some(start) = floor.checked_add(1 + u64::from(gap)) else {
                break;
            };
            let Some(end) = start.checked_add(1 + u64::from(len)) else {
                break;
            };
            sacks.push(SackRange { start, end });
            floor = end;
        }
        let (tag_len, tag_fill) = self.tag.map_or((0, 0), |(len, fill)| (len % 65, fill));
        let mut enc = BundleEncoder::new(out, &header, &sacks, tag_len);
        for frame in self.frames.iter().take(MAX_FRAMES) {
            match frame {
                FrameSpec::Message { seq, len, fill } => {
                    let len = usize::from(*len) % ctx.max_message_len.max(1) + 1;
                    enc.message(seq.get(), &crate::pattern(*fill, len));
                }
                FrameSpec::Fin { seq } => enc.fin(seq.get()),
                FrameSpec::Open { nonce, max_wait_ms } => {
                    enc.open(&[*nonce; NONCE_LEN], *max_wait_ms)
                }
                FrameSpec::Close => enc.close(),
                FrameSpec::Abort { code, reason } => enc.abort(AbortCode(*code), reason),
                FrameSpec::Unreadable { rid } => enc.unreadable(rid.get(ctx.rid)),
                FrameSpec::Unknown { ty, body } => enc.frame(&Frame::Unknown {
                    frame_type: ty | 0x80,
                    body: bytes::Bytes::copy_from_slice(body),
                }),
            }
        }
        enc.finish(|_, tag| tag.fill(tag_fill));
    }
}

/// A body: a built bundle or raw bytes.
#[derive(Arbitrary, Debug, Clone)]
pub enum BodySpec {
    /// A bundle.
    Bundle(BundleSpec),
    /// Anything.
    Raw(Vec<u8>),
}

impl BodySpec {
    /// The body's bytes.
    pub fn encode(&self, ctx: &BundleCtx) -> Vec<u8> {
        match self {
            BodySpec::Bundle(spec) => {
                let mut out = Vec::new();
                spec.encode(ctx, &mut out);
                out
            }
            BodySpec::Raw(bytes) => bytes.clone(),
        }
    }
}

/// How the body is delimited.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Framing {
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked` with chunks of `size % 64 + 1` bytes (and a chunk
    /// extension when odd).
    Chunked(u8),
    /// Neither header (requests: no body; responses: delimited by the close).
    None,
}

/// Damage done to the finished message.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Damage {
    /// None.
    None,
    /// XOR the byte at `at % len` with `mask | 1`.
    Flip(u16, u8),
    /// Keep only the first `at % len` bytes.
    Cut(u16),
}

impl Damage {
    /// Applies the damage.
    pub fn apply(self, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        match self {
            Damage::None => {}
            Damage::Flip(at, mask) => {
                let at = usize::from(at) % bytes.len();
                bytes[at] ^= mask | 1;
            }
            Damage::Cut(at) => bytes.truncate(usize::from(at) % bytes.len()),
        }
    }
}

fn push_body(out: &mut Vec<u8>, body: &[u8], framing: Framing) {
    match framing {
        Framing::Length => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        }
        Framing::Chunked(size) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in body.chunks(usize::from(size % 64) + 1) {
                let ext = if size % 2 == 1 { ";x=y" } else { "" };
                out.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Framing::None => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
    }
}

/// A request method.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum MethodSpec {
    /// POST (holdwire's).
    Post,
    /// GET.
    Get,
    /// HEAD.
    Head,
    /// PUT.
    Put,
}

/// A request target.
#[derive(Arbitrary, Debug, Clone)]
pub enum TargetSpec {
    /// `{prefix}/{hex of pool[i % len]}`.
    Session(u8),
    /// The same in absolute form, as through a forward proxy.
    Absolute(u8),
    /// The same with upper-case hex digits.
    UpperHex(u8),
    /// The prefix alone (the health check).
    Prefix,
    /// `/` alone.
    Root,
    /// Anything printable.
    Other(String),
}

/// An HTTP request for the server endpoint.
#[derive(Arbitrary, Debug, Clone)]
pub struct RequestSpec {
    /// Method.
    pub method: MethodSpec,
    /// Target.
    pub target: TargetSpec,
    /// Say HTTP/1.0.
    pub http10: bool,
    /// Send `Connection: close`.
    pub close: bool,
    /// Body framing.
    pub framing: Framing,
    /// Send `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The body.
    pub body: BodySpec,
    /// Damage.
    pub damage: Damage,
}

impl RequestSpec {
    /// The session the target names, as an index into the pool, if any.
    pub fn pool_index(&self, pool_len: usize) -> Option<usize> {
        match self.target {
            TargetSpec::Session(i) | TargetSpec::Absolute(i) | TargetSpec::UpperHex(i) => {
                Some(usize::from(i) % pool_len)
            }
            _ => None,
        }
    }

    /// The request's bytes. `prefix` is the server's path prefix; `ctx` is the bundle
    /// context of the session the target names (or of `pool[0]`).
    pub fn encode(&self, prefix: &str, pool: &[SessionId], ctx: &BundleCtx) -> Vec<u8> {
        let base = prefix.trim_end_matches('/');
        let hex = |i: u8| {
            let mut h = [0u8; 32];
            pool[usize::from(i) % pool.len()].write_hex(&mut h);
            String::from_utf8_lossy(&h).into_owned()
        };
        let target = match &self.target {
            TargetSpec::Session(i) => format!("{base}/{}", hex(*i)),
            TargetSpec::Absolute(i) => format!("http://sim.invalid{base}/{}", hex(*i)),
            TargetSpec::UpperHex(i) => format!("{base}/{}", hex(*i).to_uppercase()),
            TargetSpec::Prefix => format!("{base}/"),
            TargetSpec::Root => "/".into(),
            TargetSpec::Other(s) => s
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(200)
                .collect(),
        };
        let method = match self.method {
            MethodSpec::Post => "POST",
            MethodSpec::Get => "GET",
            MethodSpec::Head => "HEAD",
            MethodSpec::Put => "PUT",
        };
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut out = format!("{method} {target} {version}\r\nHost: sim.invalid\r\n").into_bytes();
        out.extend_from_slice(b"Content-Type: application/octet-stream\r\n");
        out.extend_from_slice(if self.close {
            b"Connection: close\r\n"
        } else {
            b"Connection: keep-alive\r\n"
        });
        if self.expect_continue {
            out.extend_from_slice(b"Expect: 100-continue\r\n");
        }
        push_body(&mut out, &self.body.encode(ctx), self.framing);
        self.damage.apply(&mut out);
        out
    }
}

/// A response status.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum StatusSpec {
    /// 200.
    Ok,
    /// One of the statuses holdwire, proxies and the HTTP rules care about.
    Listed(u8),
    /// 100..=999.
    Raw(u16),
}

const LISTED: [u16; 18] = [
    200, 204, 304, 400, 401, 403, 404, 407, 408, 410, 413, 429, 500, 502, 503, 504, 101, 102,
];

impl StatusSpec {
    /// The status code.
    pub fn code(self) -> u16 {
        match self {
            StatusSpec::Ok => 200,
            StatusSpec::Listed(i) => LISTED[usize::from(i) % LISTED.len()],
            StatusSpec::Raw(v) => 100 + v % 900,
        }
    }
}

/// A `Content-Type`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ContentTypeSpec {
    /// `application/octet-stream`.
    Bundle,
    /// `text/html` (a proxy's error page).
    Html,
    /// No header.
    None,
}

/// An HTTP response for a client.
#[derive(Arbitrary, Debug, Clone)]
pub struct ResponseSpec {
    /// Status.
    pub status: StatusSpec,
    /// Precede it with `100 Continue`.
    pub interim: bool,
    /// Say HTTP/1.0.
    pub http10: bool,
    /// `Connection: keep-alive` (else `close`).
    pub keep_alive: bool,
    /// Content type.
    pub content_type: ContentTypeSpec,
    /// Body framing.
    pub framing: Framing,
    /// Body.
    pub body: BodySpec,
    /// Damage.
    pub damage: Damage,
}

impl ResponseSpec {
    /// The response's bytes; `ctx` describes the bundle the client expects.
    pub fn encode(&self, ctx: &BundleCtx) -> Vec<u8> {
        let mut out = Vec::new();
        if self.interim {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let status = self.status.code();
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        out.extend_from_slice(
            format!("{version} {status} {}\r\n", http::reason_phrase(status)).as_bytes(),
        );
        match self.content_type {
            ContentTypeSpec::Bundle => {
                out.extend_from_slice(b"Content-Type: application/octet-stream\r\n")
            }
            ContentTypeSpec::Html => out.extend_from_slice(b"Content-Type: text/html\r\n"),
            ContentTypeSpec::None => {}
        }
        out.extend_from_slice(if self.keep_alive {
            b"Connection: keep-alive\r\n"
        } else {
            b"Connection: close\r\n"
        });
        push_body(&mut out, &self.body.encode(ctx), self.framing);
        self.damage.apply(&mut out);
        out
    }
}
