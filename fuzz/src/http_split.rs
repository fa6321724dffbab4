//! The two HTTP parser targets: one input fed whole, split at chosen points, and byte by byte,
//! with the same outcome required every time (h11's afl harness, httparse's
//! `partial_permutations`).
//!
//! Input layout (so that seeds are easy to write with a program):
//!
//! ```text
//! byte 0      max_head_len: 0xff = default (16 KiB), else 8 + 8 * b (8..=2040)
//! byte 1      max_headers: 0xff = default (64), else b
//! bytes 2..4  max_body_len, big-endian: 0xffff = default (4 MiB + 64 KiB), else the value
//! byte 4      number of split points k (low 4 bits)
//! 2 * k bytes split points, big-endian u16, taken modulo the message length + 1
//! rest        the bytes on the connection (at most 16 KiB are used)
//! ```

use bytes::Bytes;
use holdwire_proto::http::{
    HttpError, HttpLimits, Request, RequestParser, Response, ResponseParser,
};

/// The parser's receive-buffer slack (`http.rs` `BUFFER_SLACK`). Up to this much input, whole
/// and piecewise feeding must agree exactly; beyond it the parser's backpressure ("more than a
/// message's worth of bytes before the previous message was polled") legitimately depends on
/// how often the caller polls.
pub const MAX_DATA: usize = 16 * 1024;

/// A decoded parser-target input.
#[derive(Debug)]
pub struct SplitInput<'a> {
    /// The limits to parse with.
    pub limits: HttpLimits,
    /// Sorted, deduplicated split points inside `data` (never 0 or `data.len()`).
    pub cuts: Vec<usize>,
    /// The connection's bytes.
    pub data: &'a [u8],
}

/// Decodes the layout above; `None` if the input is too short for the prefix.
pub fn split_input(input: &[u8]) -> Option<SplitInput<'_>> {
    let (&[h, n, b0, b1, k], rest) = input.split_first_chunk::<5>()?;
    let defaults = HttpLimits::default();
    let limits = HttpLimits {
        max_head_len: if h == 0xff {
            defaults.max_head_len
        } else {
            8 + 8 * usize::from(h)
        },
        max_headers: if n == 0xff {
            defaults.max_headers
        } else {
            usize::from(n)
        },
        max_body_len: match u16::from_be_bytes([b0, b1]) {
            0xffff => defaults.max_body_len,
            v => usize::from(v),
        },
    };
    let k = usize::from(k & 0x0f);
    let (cut_bytes, data) = rest.split_at_checked(2 * k)?;
    let data = &data[..data.len().min(MAX_DATA)];
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_be_bytes([c[0], c[1]])) % (data.len() + 1))
        .filter(|&c| c > 0 && c < data.len())
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    Some(SplitInput { limits, cuts, data })
}

/// Encodes a parser-target input with default limits and no split points (for seeds).
pub fn seed(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0xff, 0xff, 0xff, 0xff, 0];
    out.extend_from_slice(data);
    out
}

/// The pieces the bytes are fed in: whole, split at the cuts, byte by byte.
pub fn feedings<'a>(input: &SplitInput<'a>) -> [Vec<&'a [u8]>; 3] {
    let data = input.data;
    let whole = vec![data];
    let mut split = Vec::with_capacity(input.cuts.len() + 1);
    let mut at = 0;
    for &cut in &input.cuts {
        split.push(&data[at..cut]);
        at = cut;
    }
    split.push(&data[at..]);
    let bytes = data.chunks(1).collect();
    [whole, split, bytes]
}

/// What a parser made of one connection's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome<M> {
    /// Complete messages, in order.
    pub messages: Vec<M>,
    /// The error that stopped parsing, if any.
    pub error: Option<HttpError>,
    /// Responses only: what `eof` returned at the end.
    pub eof: Option<Result<Option<M>, HttpError>>,
}

/// The common surface of the two parsers.
pub trait Parser {
    /// `Request` or `Response`.
    type Message: core::fmt::Debug;
    /// `push`.
    fn push(&mut self, data: &[u8]) -> Result<(), HttpError>;
    /// `poll`.
    fn poll(&mut self) -> Result<Option<Self::Message>, HttpError>;
    /// `buffered_len`.
    fn buffered_len(&self) -> usize;
    /// The message's body.
    fn body(m: &Self::Message) -> &Bytes;
    /// Requests: the head length; responses: 0.
    fn head_len(m: &Self::Message) -> usize;
}

impl Parser for RequestParser {
    type Message = Request;
    fn push(&mut self, data: &[u8]) -> Result<(), HttpError> {
        RequestParser::push(self, data)
    }
    fn poll(&mut self) -> Result<Option<Request>, HttpError> {
        RequestParser::poll(self)
    }
    fn buffered_len(&self) -> usize {
        RequestParser::buffered_len(self)
    }
    fn body(m: &Request) -> &Bytes {
        &m.body
    }
    fn head_len(m: &Request) -> usize {
        m.head_len
    }
}

impl Parser for ResponseParser {
    type Message = Response;
    fn push(&mut self, data: &[u8]) -> Result<(), HttpError> {
        ResponseParser::push(self, data)
    }
    fn poll(&mut self) -> Result<Option<Response>, HttpError> {
        ResponseParser::poll(self)
    }
    fn buffered_len(&self) -> usize {
        ResponseParser::buffered_len(self)
    }
    fn body(m: &Response) -> &Bytes {
        &m.body
    }
    fn head_len(_: &Response) -> usize {
        0
    }
}

/// Feeds `pieces` to `parser` as a driver would (push, then poll until `None`), checking the
/// buffering bounds after every step.
pub fn drive<P: Parser>(
    parser: &mut P,
    limits: &HttpLimits,
    pieces: &[&[u8]],
    mut on_push: impl FnMut(&mut P),
) -> Outcome<P::Message> {
    // Documented in `RequestParser::push`: never more than a head, a body and 16 KiB.
    let hard_cap = limits
        .max_head_len
        .saturating_add(limits.max_body_len)
        .saturating_add(MAX_DATA);
    // Between messages, with nothing complete waiting: an incomplete head stays below
    // `max_head_len`, a body in progress below `max_body_len` (chunked bodies are decoded as
    // they arrive, and their decoded size is capped by `max_body_len` too).
    let idle_cap = limits.max_head_len.max(limits.max_body_len);
    let mut outcome = Outcome {
        messages: Vec::new(),
        error: None,
        eof: None,
    };
    let check_message = |m: &P::Message| {
        assert!(
            P::body(m).len() <= limits.max_body_len,
            "body of {} bytes over max_body_len {}",
            P::body(m).len(),
            limits.max_body_len
        );
        assert!(
            P::head_len(m) <= limits.max_head_len,
            "head of {} bytes over max_head_len {}",
            P::head_len(m),
            limits.max_head_len
        );
    };
    for piece in pieces {
        let pushed = parser.push(piece);
        on_push(parser);
        assert!(
            parser.buffered_len() <= hard_cap,
            "buffered {} > {hard_cap}",
            parser.buffered_len()
        );
        if let Err(e) = pushed {
            outcome.error = Some(e);
            return outcome;
        }
        loop {
            match parser.poll() {
                Ok(Some(m)) => {
                    check_message(&m);
                    outcome.messages.push(m);
                }
                Ok(None) => break,
                Err(e) => {
                    outcome.error = Some(e);
                    return outcome;
                }
            }
        }
        assert!(
            parser.buffered_len() <= idle_cap,
            "{} bytes buffered with no message waiting, above max(max_head_len, max_body_len) = {idle_cap}",
            parser.buffered_len()
        );
    }
    outcome
}

/// Runs the request parser over every feeding and asserts identical outcomes.
pub fn check_requests(input: &SplitInput<'_>) {
    let mut outcomes = feedings(input).map(|pieces| {
        let mut p = RequestParser::new(input.limits.clone());
        let mut outcome = drive(&mut p, &input.limits, &pieces, |p| {
            let _ = p.take_expect_continue();
        });
        // Sticky errors: a poisoned parser repeats its error.
        if let Some(e) = outcome.error {
            assert_eq!(p.push(b"x"), Err(e), "error not sticky in push");
            assert_eq!(p.poll(), Err(e), "error not sticky in poll");
        }
        outcome.eof = None;
        outcome
    });
    let [whole, split, bytes] = &mut outcomes;
    assert_eq!(whole, split, "whole vs split at {:?}", input.cuts);
    assert_eq!(whole, bytes, "whole vs byte by byte");
}

/// Runs the response parser over every feeding, then `eof`, and asserts identical outcomes.
pub fn check_responses(input: &SplitInput<'_>) {
    let mut outcomes = feedings(input).map(|pieces| {
        let mut p = ResponseParser::new(input.limits.clone());
        let mut outcome = drive(&mut p, &input.limits, &pieces, |_| {});
        if let Some(e) = outcome.error {
            assert_eq!(p.push(b"x"), Err(e), "error not sticky in push");
            assert_eq!(p.poll(), Err(e), "error not sticky in poll");
        }
        let eof = p.eof();
        if let Ok(Some(r)) = &eof {
            assert!(r.body.len() <= input.limits.max_body_len);
        }
        outcome.eof = Some(eof);
        outcome
    });
    let [whole, split, bytes] = &mut outcomes;
    assert_eq!(whole, split, "whole vs split at {:?}", input.cuts);
    assert_eq!(whole, bytes, "whole vs byte by byte");
}
