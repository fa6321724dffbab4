//! HTTP/1.1 message framing, sans I/O: request and response heads, body lengths, limits.
//!
//! # Theory of operation
//!
//! holdwire only ever sends `POST` requests with a `Content-Length` body and answers them
//! with `Content-Length` responses, so the encoders ([`encode_request_head`],
//! [`encode_response_head`]) are a handful of `extend_from_slice` calls into the caller's
//! buffer. The parsers are where the care goes: what arrives went through forward proxies
//! (squid, tinyproxy, HTTP/1.0 proxies), reverse proxies (nginx, HAProxy) or came from a
//! hostile client, so they accept every legal framing and reject everything ambiguous.
//!
//! [`RequestParser`] (server side) and [`ResponseParser`] (client side) share one machine:
//!
//! ```text
//!          push(bytes)                      head complete           body complete
//!   Head ---------------> search CRLFCRLF ------------------> Body ---------------> ready
//!    ^   (leading blank                  (httparse; framing     (Content-Length,       |
//!    |    lines skipped)                  decided here)          chunked, or EOF)      |
//!    +------------------------------------ poll() hands the message out <-------------+
//! ```
//!
//! - `push` appends bytes and advances the machine as far as it can, so limits fail fast:
//!   a head that grows past [`HttpLimits::max_head_len`] or a declared `Content-Length`
//!   over [`HttpLimits::max_body_len`] is an error from `push` itself. While a head is
//!   incomplete, `push` appends at most `max_head_len` bytes in total, so a slowloris
//!   can never make the parser hold more than that. The search for the end of the head
//!   resumes where it stopped (each byte is examined at most three times), so feeding a
//!   head byte by byte is linear.
//! - One message at a time (no pipelining): once a message is complete the machine stops;
//!   bytes after it stay buffered until `poll` has handed the message out.
//! - Bodies: `Content-Length` bodies are split off the receive buffer without copying;
//!   `Transfer-Encoding: chunked` is decoded incrementally (each byte once) with
//!   extensions and trailers; responses without either run to EOF
//!   ([`ResponseParser::eof`]); requests without either have an empty body.
//! - Errors are typed ([`HttpError`], with the status a server should answer), sticky
//!   (the parser is poisoned and repeats the error) and never panics: every
//!   peer-supplied number is checked.
//!
//! Framing rules follow RFC 9112 section 6 (message body length), with the stricter
//! choices request-smuggling hardening recommends: `Content-Length` together with
//! `Transfer-Encoding` is rejected, as are differing `Content-Length` values and any
//! transfer coding other than a lone `chunked`.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use bytes::{Buf, Bytes, BytesMut};
use core::fmt;

/// Size limits for one HTTP message, enforced while it is received.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Longest accepted head (request or status line plus header lines plus the blank
    /// line), and the longest accepted chunked trailer section. Default 16 KiB (h11's).
    pub max_head_len: usize,
    /// Most header lines accepted in one head. Default 64.
    pub max_headers: usize,
    /// Largest accepted body after de-chunking. Default 4 MiB + 64 KiB.
    pub max_body_len: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_head_len: 16 * 1024,
            max_headers: 64,
            max_body_len: 4 * 1024 * 1024 + 64 * 1024,
        }
    }
}

/// Extra bytes allowed in the receive buffer beyond one head and one body (room for the
/// start of the next message while a complete one waits to be polled).
const BUFFER_SLACK: usize = 16 * 1024;
/// Longest accepted chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Header slots kept on the stack; more than this (a raised `max_headers`) allocates.
const STACK_HEADERS: usize = 64;

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// What the request line's target looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestTarget<'a> {
    /// Origin form, `/path`: for a direct connection or a CONNECT tunnel.
    Origin {
        /// The path, starting with `/`.
        path: &'a str,
    },
    /// Absolute form, `http://host:port/path`: for a request sent to a forward proxy.
    /// The port is left out when it is 80, as curl does.
    Absolute {
        /// Host name, IPv4 literal, or IPv6 literal (`[::1]`; brackets are added if
        /// missing, so [`crate::url::Url::host`] can be passed as it is).
        host: &'a str,
        /// Port of the origin server.
        port: u16,
        /// The path, starting with `/`.
        path: &'a str,
    },
}

/// The variable parts of a holdwire request head; see [`encode_request_head`].
///
/// Every string must be free of CR and LF (the caller builds them from a parsed
/// [`crate::url::Url`], which guarantees it); this is checked by a debug assertion.
#[derive(Clone, Copy)]
pub struct RequestHead<'a> {
    /// The request target.
    pub target: RequestTarget<'a>,
    /// `Host` header value, with `:port` when the port is not the scheme's default
    /// (see [`crate::url::Url::host_header`]).
    pub host: &'a str,
    /// Full `Proxy-Authorization` value, e.g. `Basic dXNlcjpwYXNz` (see
    /// [`basic_auth_value`]); `None` sends no such header.
    pub proxy_authorization: Option<&'a str>,
    /// Length of the body that follows the head.
    pub content_length: usize,
    /// Send `Connection: close` (and no `Proxy-Connection`) instead of keep-alive.
    pub close: bool,
}

impl fmt::Debug for RequestHead<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials stay out of logs.
        f.debug_struct("RequestHead")
            .field("target", &self.target)
            .field("host", &self.host)
            .field(
                "proxy_authorization",
                &self.proxy_authorization.map(|_| "<redacted>"),
            )
            .field("content_length", &self.content_length)
            .field("close", &self.close)
            .finish()
    }
}

/// Appends a POST request head to `buf`.
///
/// The head is `POST <target> HTTP/1.1` followed by `Host`, `Content-Type:
/// application/octet-stream`, `Content-Length`, `Cache-Control: no-store`, `Pragma:
/// no-cache`, `Connection: keep-alive|close`, `Proxy-Connection: keep-alive` (absolute
/// form and not `close`: HTTP/1.0 proxies only honour that one), `Proxy-Authorization`
/// if given, and the blank line. The caller appends the body; writing head and body in
/// one write avoids a Nagle stall through proxies without `TCP_NODELAY` (tinyproxy).
pub fn encode_request_head(buf: &mut Vec<u8>, head: &RequestHead<'_>) {
    encode_request_head_framed(buf, head, false);
}

/// Appends the head of a request whose body is sent later, as one chunk
/// ([`encode_deferred_body`]): like [`encode_request_head`] but with
/// `Transfer-Encoding: chunked` instead of `Content-Length` (`head.content_length` is unused).
/// A proxy that opens its upstream connection only once it has a request head (tinyproxy does,
/// per request) can then do so before the body exists.
pub fn encode_deferred_request_head(buf: &mut Vec<u8>, head: &RequestHead<'_>) {
    encode_request_head_framed(buf, head, true);
}

/// Appends the body of a request whose head went out with [`encode_deferred_request_head`]:
/// one chunk holding `body` (when not empty) and the last chunk.
pub fn encode_deferred_body(buf: &mut Vec<u8>, body: &[u8]) {
    encode_deferred_body_prefix(buf, body.len());
    buf.extend_from_slice(body);
    encode_deferred_body_suffix(buf, body.len());
}

/// The chunk-size line that goes before a deferred body of `len` bytes (nothing when empty).
pub fn encode_deferred_body_prefix(buf: &mut Vec<u8>, len: usize) {
    if len > 0 {
        let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            buf.push(b"0123456789abcdef"[(len >> (shift * 4)) & 0xf]);
        }
        buf.extend_from_slice(b"\r\n");
    }
}

/// What goes after a deferred body of `len` bytes: the chunk's CRLF and the last chunk.
pub fn encode_deferred_body_suffix(buf: &mut Vec<u8>, len: usize) {
    if len > 0 {
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"0\r\n\r\n");
}

fn encode_request_head_framed(buf: &mut Vec<u8>, head: &RequestHead<'_>, chunked: bool) {
    debug_assert!(no_line_breaks(head.host));
    if let Some(auth) = head.proxy_authorization {
        debug_assert!(no_line_breaks(auth));
    }
    buf.extend_from_slice(b"POST ");
    let absolute = match head.target {
        RequestTarget::Origin { path } => {
            push_path(buf, path);
            false
        }
        RequestTarget::Absolute { host, port, path } => {
            debug_assert!(no_line_breaks(host));
            buf.extend_from_slice(b"http://");
            // A bare IPv6 literal (as `Url::host` stores it) gets its brackets here.
            let bracket = host.contains(':') && !host.starts_with('[');
            if bracket {
                buf.push(b'[');
            }
            buf.extend_from_slice(host.as_bytes());
            if bracket {
                buf.push(b']');
            }
            if port != 80 {
                buf.push(b':');
                push_decimal(buf, u64::from(port));
            }
            push_path(buf, path);
            true
        }
    };
    buf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    buf.extend_from_slice(head.host.as_bytes());
    buf.extend_from_slice(b"\r\nContent-Type: application/octet-stream\r\n");
    if chunked {
        buf.extend_from_slice(b"Transfer-Encoding: chunked");
    } else {
        buf.extend_from_slice(b"Content-Length: ");
        push_decimal(buf, head.content_length as u64);
    }
    buf.extend_from_slice(b"\r\nCache-Control: no-store\r\nPragma: no-cache\r\nConnection: ");
    buf.extend_from_slice(if head.close {
        b"close\r\n"
    } else {
        b"keep-alive\r\n"
    });
    if absolute && !head.close {
        buf.extend_from_slice(b"Proxy-Connection: keep-alive\r\n");
    }
    if let Some(auth) = head.proxy_authorization {
        buf.extend_from_slice(b"Proxy-Authorization: ");
        buf.extend_from_slice(auth.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

/// Appends a response head to `buf`, for any status.
///
/// The head is `HTTP/1.1 <status> <reason>` followed by `Content-Type:
/// application/octet-stream` (or `text/plain; charset=utf-8` when `text` is true, for
/// error explanations), `Content-Length`, `Cache-Control: no-store`, `Connection:
/// keep-alive|close`, and the blank line. For 1xx and 204, which must not carry a
/// `Content-Length` (RFC 9110 section 8.6), that header is left out and
/// `content_length` must be 0. `status` must have three digits.
pub fn encode_response_head(
    buf: &mut Vec<u8>,
    status: u16,
    content_length: usize,
    close: bool,
    text: bool,
) {
    debug_assert!((100..=999).contains(&status));
    buf.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(buf, u64::from(status));
    buf.push(b' ');
    buf.extend_from_slice(reason_phrase(status).as_bytes());
    buf.extend_from_slice(b"\r\nContent-Type: ");
    buf.extend_from_slice(if text {
        b"text/plain; charset=utf-8"
    } else {
        b"application/octet-stream"
    });
    if (100..200).contains(&status) || status == 204 {
        debug_assert_eq!(content_length, 0);
    } else {
        buf.extend_from_slice(b"\r\nContent-Length: ");
        push_decimal(buf, content_length as u64);
    }
    buf.extend_from_slice(b"\r\nCache-Control: no-store\r\nConnection: ");
    buf.extend_from_slice(if close {
        b"close\r\n\r\n"
    } else {
        b"keep-alive\r\n\r\n"
    });
}

/// The reason phrase for `status` (RFC 9110 section 15), or a generic one for its class.
pub fn reason_phrase(status: u16) -> &'static str {
    let known = match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    };
    if !known.is_empty() {
        return known;
    }
    match status / 100 {
        1 => "Informational",
        2 => "Success",
        3 => "Redirection",
        4 => "Client Error",
        5 => "Server Error",
        _ => "Unknown",
    }
}

/// The `Proxy-Authorization` value for HTTP Basic authentication (RFC 7617):
/// `Basic base64(user:password)`.
pub fn basic_auth_value(user: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(user.len() + 1 + password.len());
    raw.extend_from_slice(user.as_bytes());
    raw.push(b':');
    raw.extend_from_slice(password.as_bytes());
    let mut out = String::with_capacity(6 + raw.len().div_ceil(3) * 4);
    out.push_str("Basic ");
    base64_encode(&raw, &mut out);
    out
}

/// Standard base64 with padding (RFC 4648 section 4).
fn base64_encode(input: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for group in input.chunks(3) {
        let b0 = group[0];
        let b1 = group.get(1).copied().unwrap_or(0);
        let b2 = group.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if group.len() > 1 { sextet(6) } else { '=' });
        out.push(if group.len() > 2 { sextet(0) } else { '=' });
    }
}

fn push_path(buf: &mut Vec<u8>, path: &str) {
    debug_assert!(no_line_breaks(path));
    if path.is_empty() {
        buf.push(b'/');
    } else {
        buf.extend_from_slice(path.as_bytes());
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

fn no_line_breaks(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\r' || b == b'\n')
}

// ---------------------------------------------------------------------------------------
// Parsed messages and errors
// ---------------------------------------------------------------------------------------

/// Request method, as far as holdwire cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `POST`: the only method holdwire's exchanges use.
    Post,
    /// `GET` (a browser or a health check).
    Get,
    /// `HEAD`.
    Head,
    /// Anything else (`OPTIONS`, `CONNECT`, `PUT`, ...).
    Other,
}

/// One complete request, its body de-chunked if needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// Origin-form target (`/path?query` as sent); an absolute-form target
    /// (`http://host/path`) is reduced to its path, an empty one to `/`. `*` for
    /// `OPTIONS *`, the authority for `CONNECT`.
    pub path: String,
    /// The request line said `HTTP/1.0`.
    pub http10: bool,
    /// The connection persists after this exchange (RFC 9112 section 9.3): HTTP/1.1
    /// unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The body (empty without `Content-Length` or chunked framing).
    pub body: Bytes,
    /// Length of the head in bytes, up to and including the blank line.
    pub head_len: usize,
}

/// One complete final response (1xx interim responses are skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The status line said `HTTP/1.0`.
    pub http10: bool,
    /// The connection persists after this exchange: as for [`Request::keep_alive`], with
    /// `Proxy-Connection` counted like `Connection`, and never for a body delimited by
    /// the connection's close.
    pub keep_alive: bool,
    /// The body (empty for 204 and 304).
    pub body: Bytes,
    /// `Content-Type` is `application/octet-stream` (parameters ignored), i.e. the body
    /// can be a holdwire bundle rather than a proxy's error page.
    pub content_type_is_bundle: bool,
}

/// A violation of HTTP/1.1 framing or of the configured limits by the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The head (or a chunked trailer section) exceeds [`HttpLimits::max_head_len`].
    HeadTooLarge,
    /// More header lines than [`HttpLimits::max_headers`].
    TooManyHeaders,
    /// The head is not valid HTTP/1.x (request line, status line, header syntax, a
    /// missing or repeated `Host`, a request target of the wrong form, a 101 response).
    Malformed,
    /// A `Content-Length` value is not a decimal number that fits in `usize`.
    BadContentLength,
    /// Both `Content-Length` and `Transfer-Encoding`, or differing `Content-Length`s.
    ConflictingLength,
    /// A transfer coding other than a lone `chunked`, or `Transfer-Encoding` in an
    /// HTTP/1.0 message (whose framing RFC 9112 section 6.1 calls faulty).
    UnsupportedTransferEncoding,
    /// The body exceeds [`HttpLimits::max_body_len`], or the peer sent more than a
    /// message's worth of bytes before the previous message was polled.
    BodyTooLarge,
    /// Invalid chunked framing (chunk-size line, the CRLF after a chunk's data).
    BadChunk,
    /// The connection closed in the middle of a message.
    UnexpectedEof,
    /// An HTTP version other than 1.0 and 1.1.
    UnsupportedVersion,
}

impl HttpError {
    /// The status a server should answer with (h11's `error_status_hint`): 431, 431,
    /// 400, 400, 400, 501, 413, 400, 400, 505 in declaration order.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::Malformed
            | Self::BadContentLength
            | Self::ConflictingLength
            | Self::BadChunk
            | Self::UnexpectedEof => 400,
            Self::UnsupportedTransferEncoding => 501,
            Self::BodyTooLarge => 413,
            Self::UnsupportedVersion => 505,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HeadTooLarge => "http head too large",
            Self::TooManyHeaders => "too many http headers",
            Self::Malformed => "malformed http message",
            Self::BadContentLength => "bad content-length",
            Self::ConflictingLength => "conflicting message length",
            Self::UnsupportedTransferEncoding => "unsupported transfer-encoding",
            Self::BodyTooLarge => "http body too large",
            Self::BadChunk => "bad chunked encoding",
            Self::UnexpectedEof => "connection closed mid-message",
            Self::UnsupportedVersion => "unsupported http version",
        })
    }
}

// The same trait as `std::error::Error`, available without std since Rust 1.81.
impl core::error::Error for HttpError {}

// ---------------------------------------------------------------------------------------
// Public parsers
// ---------------------------------------------------------------------------------------

/// Incremental request parser for one server-side connection.
///
/// Feed it with [`push`](Self::push) as bytes arrive (any split), then call
/// [`poll`](Self::poll) until it returns `Ok(None)`. One request at a time: bytes after a
/// complete request stay buffered until it has been polled. After an error the parser is
/// poisoned and returns that error from every `push` and `poll`; answer with
/// [`HttpError::status`] and close the connection.
#[derive(Debug)]
pub struct RequestParser {
    core: Core,
}

impl RequestParser {
    /// A parser for a new connection.
    pub fn new(limits: HttpLimits) -> Self {
        Self {
            core: Core::new(limits, Role::Server),
        }
    }

    /// Appends received bytes and advances as far as possible.
    ///
    /// Fails fast, before the head is complete, when the buffered head exceeds
    /// `max_head_len` (without buffering more than that), when a declared
    /// `Content-Length` exceeds `max_body_len`, or when the buffered bytes exceed
    /// `max_head_len + max_body_len + 16 KiB` (a peer that keeps sending while a
    /// complete request waits to be polled).
    pub fn push(&mut self, data: &[u8]) -> Result<(), HttpError> {
        self.core.push(data)
    }

    /// Returns the next complete request, or `Ok(None)` if more bytes are needed.
    pub fn poll(&mut self) -> Result<Option<Request>, HttpError> {
        Ok(self.core.poll()?.map(|(meta, body)| Request {
            method: meta.method,
            path: meta.path,
            http10: meta.http10,
            keep_alive: meta.keep_alive,
            body,
            head_len: meta.head_len,
        }))
    }

    /// True once, per request, when its head carried `Expect: 100-continue` (HTTP/1.1
    /// only, RFC 9110 section 10.1.1) and its body has not fully arrived: the caller
    /// should then send `HTTP/1.1 100 Continue\r\n\r\n`.
    ///
    /// Call this after each [`push`](Self::push).
    pub fn take_expect_continue(&mut self) -> bool {
        core::mem::take(&mut self.core.expect_continue)
    }

    /// Received bytes held for requests not yet polled: a partial head, a
    /// `Content-Length` body in progress, a chunked body decoded so far and undecoded
    /// chunked data, or the start of the next request.
    pub fn buffered_len(&self) -> usize {
        self.core.held_len()
    }

    /// True if part of a request that is not complete yet has been received (a close now
    /// would cut it); false between requests, including when a complete request waits to
    /// be polled and nothing follows it.
    pub fn is_mid_request(&self) -> bool {
        self.core.is_mid_message()
    }
}

/// Incremental response parser for one client-side connection.
///
/// Used like [`RequestParser`]; at end of stream call [`eof`](Self::eof), which completes
/// a body delimited by the close (responses without `Content-Length` or chunked framing,
/// as HTTP/1.0 proxies send). 1xx interim responses (100 Continue, 102, 103) are skipped.
#[derive(Debug)]
pub struct ResponseParser {
    core: Core,
}

impl ResponseParser {
    /// A parser for a new connection.
    pub fn new(limits: HttpLimits) -> Self {
        Self {
            core: Core::new(limits, Role::Client),
        }
    }

    /// Appends received bytes and advances as far as possible; fails fast as
    /// [`RequestParser::push`] does.
    pub fn push(&mut self, data: &[u8]) -> Result<(), HttpError> {
        self.core.push(data)
    }

    /// Returns the next complete final response, or `Ok(None)` if more bytes are needed.
    pub fn poll(&mut self) -> Result<Option<Response>, HttpError> {
        Ok(self.core.poll()?.map(Meta::into_response))
    }

    /// The peer closed the connection (call after [`poll`](Self::poll) returned
    /// `Ok(None)`).
    ///
    /// Completes a close-delimited body; returns [`HttpError::UnexpectedEof`] if a
    /// response was in progress, `Ok(None)` if nothing was buffered. The parser is done
    /// afterwards: drop it with the connection.
    pub fn eof(&mut self) -> Result<Option<Response>, HttpError> {
        if let Some(response) = self.poll()? {
            return Ok(Some(response));
        }
        let core = &mut self.core;
        match &core.state {
            State::Head if core.buf.is_empty() => Ok(None),
            State::Body {
                framing: Framing::Close,
                ..
            } => {
                let body = core.buf.split().freeze();
                Ok(core.complete(body).map(Meta::into_response))
            }
            _ => {
                core.error = Some(HttpError::UnexpectedEof);
                Err(HttpError::UnexpectedEof)
            }
        }
    }

    /// Received bytes not yet consumed.
    pub fn buffered_len(&self) -> usize {
        self.core.buf.len()
    }
}

// ---------------------------------------------------------------------------------------
// The shared machine
// ---------------------------------------------------------------------------------------

/// Which side of the connection the parser is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Parses requests.
    Server,
    /// Parses responses.
    Client,
}

/// What a parsed head says, owned (the head's bytes are dropped once parsed).
#[derive(Debug)]
struct Meta {
    method: Method,
    path: String,
    status: u16,
    http10: bool,
    keep_alive: bool,
    head_len: usize,
    bundle: bool,
}

impl Meta {
    fn into_response(parts: (Meta, Bytes)) -> Response {
        let (meta, body) = parts;
        Response {
            status: meta.status,
            http10: meta.http10,
            keep_alive: meta.keep_alive,
            body,
            content_type_is_bundle: meta.bundle,
        }
    }
}

/// How the body of the message in progress ends.
#[derive(Debug)]
enum Framing {
    /// After this many bytes.
    Length(usize),
    /// At the last chunk and the trailer section.
    Chunked(ChunkDecoder),
    /// At the end of the stream (responses only).
    Close,
}

#[derive(Debug)]
enum State {
    /// Waiting for a complete head.
    Head,
    /// Head parsed, receiving the body.
    Body { meta: Meta, framing: Framing },
}

#[derive(Debug)]
struct Core {
    limits: HttpLimits,
    role: Role,
    /// Received bytes not consumed yet.
    buf: BytesMut,
    /// In `State::Head`: where the search for the end of the head resumes.
    scan: usize,
    /// Blank-line bytes skipped before the current head.
    skipped: usize,
    state: State,
    /// A complete message waiting for `poll`.
    ready: Option<(Meta, Bytes)>,
    /// Sticky error.
    error: Option<HttpError>,
    /// Armed by a head with `Expect: 100-continue`, disarmed when taken or when the
    /// body completes.
    expect_continue: bool,
}

impl Core {
    fn new(limits: HttpLimits, role: Role) -> Self {
        Self {
            limits,
            role,
            buf: BytesMut::new(),
            scan: 0,
            skipped: 0,
            state: State::Head,
            ready: None,
            error: None,
            expect_continue: false,
        }
    }

    /// Bytes held: the buffer plus a chunked body decoded so far.
    fn held_len(&self) -> usize {
        let decoded = match &self.state {
            State::Body {
                framing: Framing::Chunked(decoder),
                ..
            } => decoder.body.len(),
            _ => 0,
        };
        self.buf.len() + decoded
    }

    fn is_mid_message(&self) -> bool {
        !self.buf.is_empty() || matches!(self.state, State::Body { .. })
    }

    fn push(&mut self, data: &[u8]) -> Result<(), HttpError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let result = self.push_inner(data);
        if let Err(error) = result {
            self.error = Some(error);
        }
        result
    }

    fn push_inner(&mut self, mut data: &[u8]) -> Result<(), HttpError> {
        while !data.is_empty() {
            let take = if self.ready.is_none() && matches!(self.state, State::Head) {
                // Never hold more than one head's worth of an incomplete head.
                let room = self.limits.max_head_len.saturating_sub(self.buf.len());
                if room == 0 {
                    return Err(HttpError::HeadTooLarge);
                }
                room.min(data.len())
            } else {
                let limit = self
                    .limits
                    .max_head_len
                    .saturating_add(self.limits.max_body_len)
                    .saturating_add(BUFFER_SLACK);
                if self.buf.len().saturating_add(data.len()) > limit {
                    return Err(HttpError::BodyTooLarge);
                }
                data.len()
            };
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.advance()?;
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<(Meta, Bytes)>, HttpError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.ready.is_none() {
            if let Err(error) = self.advance() {
                self.error = Some(error);
                return Err(error);
            }
        }
        Ok(self.ready.take())
    }

    /// Moves the machine forward until it needs more bytes or a message is complete.
    fn advance(&mut self) -> Result<(), HttpError> {
        while self.ready.is_none() {
            let body = match &mut self.state {
                State::Head => {
                    if self.head_step()? {
                        continue;
                    }
                    return Ok(());
                }
                State::Body { framing, .. } => match framing {
                    Framing::Length(len) => {
                        if self.buf.len() < *len {
                            return Ok(());
                        }
                        self.buf.split_to(*len).freeze()
                    }
                    Framing::Chunked(decoder) => {
                        if !decoder.decode(&mut self.buf, &self.limits)? {
                            return Ok(());
                        }
                        core::mem::take(&mut decoder.body).freeze()
                    }
                    Framing::Close => {
                        if self.buf.len() > self.limits.max_body_len {
                            return Err(HttpError::BodyTooLarge);
                        }
                        return Ok(());
                    }
                },
            };
            self.ready = self.complete(body);
        }
        Ok(())
    }

    /// Ends the message in progress with `body`, going back to `State::Head`.
    fn complete(&mut self, body: Bytes) -> Option<(Meta, Bytes)> {
        self.expect_continue = false;
        match core::mem::replace(&mut self.state, State::Head) {
            State::Body { meta, .. } => Some((meta, body)),
            // Only called in `State::Body`.
            State::Head => None,
        }
    }

    /// Looks for a complete head and parses it. `Ok(true)`: state changed, go on;
    /// `Ok(false)`: need more bytes.
    fn head_step(&mut self) -> Result<bool, HttpError> {
        // Blank lines before a message are ignored (RFC 9112 section 2.2), within reason.
        loop {
            let skip = match self.buf.first() {
                Some(b'\n') => 1,
                Some(b'\r') if self.buf.get(1) == Some(&b'\n') => 2,
                _ => break,
            };
            self.buf.advance(skip);
            self.scan = self.scan.saturating_sub(skip);
            self.skipped = self.skipped.saturating_add(skip);
            if self.skipped > self.limits.max_head_len {
                return Err(HttpError::HeadTooLarge);
            }
        }
        // Only the first head's worth counts, whatever more is buffered (more is, behind a
        // message not yet polled): the verdict must not depend on how the bytes arrived.
        let window = &self.buf[..self.buf.len().min(self.limits.max_head_len)];
        // Garbage is refused when it starts, not after a head's worth or a timeout.
        if self.role == Role::Server && !plausible_method_start(window) {
            return Err(HttpError::Malformed);
        }
        let Some(end) = find_head_end(window, self.scan.min(window.len())) else {
            if !self.buf.is_empty() && self.buf.len() >= self.limits.max_head_len {
                return Err(HttpError::HeadTooLarge);
            }
            // A terminator may start in the last two bytes.
            self.scan = self.buf.len().saturating_sub(2);
            return Ok(false);
        };
        if end > self.limits.max_head_len {
            return Err(HttpError::HeadTooLarge);
        }
        let parsed = match self.role {
            Role::Server => parse_request_head(&self.buf[..end], &self.limits)?,
            Role::Client => parse_response_head(&self.buf[..end], &self.limits)?,
        };
        self.buf.advance(end);
        self.scan = 0;
        self.skipped = 0;
        match parsed {
            Parsed::Interim => {}
            Parsed::Message {
                meta,
                framing: Framing::Length(0),
                ..
            } => self.ready = Some((meta, Bytes::new())),
            Parsed::Message {
                meta,
                framing,
                expect_continue,
            } => {
                self.expect_continue = expect_continue;
                self.state = State::Body { meta, framing };
            }
        }
        Ok(true)
    }
}

/// Whether `buf`, the start of an incomplete request head, can still become a valid one:
/// its method (up to the first space, or all of `buf` without one) is made of token
/// characters (RFC 9110 section 5.6.2, as httparse checks them), so that refusing it early
/// gives the same answer as refusing the whole head would.
fn plausible_method_start(buf: &[u8]) -> bool {
    if buf == b"\r" {
        // Maybe the start of a blank line before the request, which is skipped.
        return true;
    }
    let method = buf.split(|&b| b == b' ').next().unwrap_or(buf);
    buf.first() != Some(&b' ')
        && method
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Index just past the blank line ending a head (`\n\n` or `\n\r\n`), searching from
/// `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        let newline = buf[i..].iter().position(|&b| b == b'\n')?;
        i += newline;
        match buf.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => i += 1,
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Heads
// ---------------------------------------------------------------------------------------

enum Parsed {
    /// A 1xx interim response: skip it.
    Interim,
    Message {
        meta: Meta,
        framing: Framing,
        expect_continue: bool,
    },
}

/// Maps httparse's error; a version error only means "unsupported version" when the
/// start line does name some `HTTP/` version (else it is garbage).
fn map_httparse(error: httparse::Error, head: &[u8], role: Role) -> HttpError {
    match error {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version => {
            let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let names_http = match role {
                Role::Client => line.starts_with(b"HTTP/"),
                Role::Server => line.windows(6).any(|w| w == b" HTTP/"),
            };
            if names_http {
                HttpError::UnsupportedVersion
            } else {
                HttpError::Malformed
            }
        }
        _ => HttpError::Malformed,
    }
}

/// Runs `f` with header slots for a head of `head_len` bytes.
fn with_header_slots<'b, T>(
    head_len: usize,
    limits: &HttpLimits,
    f: impl FnOnce(&mut [httparse::Header<'b>]) -> T,
) -> T {
    // A header line takes at least 3 bytes ("a:\n"), so no head needs more slots than
    // this: a huge `max_headers` does not turn into a huge allocation.
    let slots = limits.max_headers.min(head_len / 3 + 1);
    if slots <= STACK_HEADERS {
        let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
        f(&mut stack[..slots])
    } else {
        let mut heap = vec![httparse::EMPTY_HEADER; slots];
        f(&mut heap)
    }
}

fn parse_request_head(head: &[u8], limits: &HttpLimits) -> Result<Parsed, HttpError> {
    with_header_slots(head.len(), limits, |slots| {
        let mut request = httparse::Request::new(slots);
        match request.parse(head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            Ok(_) => return Err(HttpError::Malformed),
            Err(error) => return Err(map_httparse(error, head, Role::Server)),
        }
        let (Some(method), Some(target), Some(version)) =
            (request.method, request.path, request.version)
        else {
            return Err(HttpError::Malformed);
        };
        let http10 = version == 0;
        let fields = Fields::scan(request.headers, Role::Server)?;
        // RFC 9112 section 3.2: exactly one Host in HTTP/1.1, at most one in 1.0.
        if fields.hosts > 1 || (!http10 && fields.hosts == 0) {
            return Err(HttpError::Malformed);
        }
        let framing = fields
            .framing(http10, limits)?
            .unwrap_or(Framing::Length(0));
        let has_body = !matches!(framing, Framing::Length(0));
        Ok(Parsed::Message {
            meta: Meta {
                method: match method {
                    "POST" => Method::Post,
                    "GET" => Method::Get,
                    "HEAD" => Method::Head,
                    _ => Method::Other,
                },
                path: request_path(method, target)?,
                status: 0,
                http10,
                keep_alive: fields.keep_alive(http10),
                head_len: head.len(),
                bundle: fields.bundle_type(),
            },
            framing,
            expect_continue: fields.expect_continue && !http10 && has_body,
        })
    })
}

fn parse_response_head(head: &[u8], limits: &HttpLimits) -> Result<Parsed, HttpError> {
    with_header_slots(head.len(), limits, |slots| {
        let mut response = httparse::Response::new(slots);
        // Tolerate what old proxies emit in their own heads; none of it affects framing.
        let result = httparse::ParserConfig::default()
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .allow_multiple_spaces_in_response_status_delimiters(true)
            .parse_response(&mut response, head);
        match result {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            Ok(_) => return Err(HttpError::Malformed),
            Err(error) => return Err(map_httparse(error, head, Role::Client)),
        }
        let (Some(status), Some(version)) = (response.code, response.version) else {
            return Err(HttpError::Malformed);
        };
        if status == 101 {
            // We never ask to switch protocols: after a 101 the stream is not HTTP.
            return Err(HttpError::Malformed);
        }
        if (100..200).contains(&status) {
            return Ok(Parsed::Interim);
        }
        let http10 = version == 0;
        let fields = Fields::scan(response.headers, Role::Client)?;
        // RFC 9112 section 6.3: 204 and 304 have no body whatever the headers say (our
        // requests are never HEAD or CONNECT).
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            fields.framing(http10, limits)?.unwrap_or(Framing::Close)
        };
        let keep_alive = fields.keep_alive(http10) && !matches!(framing, Framing::Close);
        Ok(Parsed::Message {
            meta: Meta {
                method: Method::Other,
                path: String::new(),
                status,
                http10,
                keep_alive,
                head_len: head.len(),
                bundle: fields.bundle_type(),
            },
            framing,
            expect_continue: false,
        })
    })
}

/// The request target reduced to an origin-form path.
fn request_path(method: &str, target: &str) -> Result<String, HttpError> {
    if target.starts_with('/') {
        return Ok(target.into());
    }
    let rest = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"));
    if let Some(rest) = rest {
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        if cut == 0 {
            return Err(HttpError::Malformed);
        }
        let path = &rest[cut..];
        return Ok(if path.is_empty() {
            "/".into()
        } else if path.starts_with('?') {
            let mut p = String::with_capacity(path.len() + 1);
            p.push('/');
            p.push_str(path);
            p
        } else {
            path.into()
        });
    }
    if (target == "*" && method == "OPTIONS") || method == "CONNECT" {
        return Ok(target.into());
    }
    Err(HttpError::Malformed)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// What the header lines say about framing and persistence.
#[derive(Default)]
struct Fields {
    content_length: Option<usize>,
    /// A `Transfer-Encoding` header is present.
    transfer_encoding: bool,
    /// Transfer codings listed, and whether the first one was `chunked`.
    codings: usize,
    chunked_first: bool,
    close: bool,
    keep_alive_token: bool,
    expect_continue: bool,
    content_types: usize,
    bundle_types: usize,
    hosts: usize,
}

impl Fields {
    fn scan(headers: &[httparse::Header<'_>], role: Role) -> Result<Self, HttpError> {
        let mut f = Self::default();
        for header in headers {
            let name = header.name;
            let value = header.value;
            if name.eq_ignore_ascii_case("content-length") {
                for item in value.split(|&b| b == b',') {
                    let n = parse_content_length(trim(item))?;
                    match f.content_length {
                        Some(previous) if previous != n => {
                            return Err(HttpError::ConflictingLength)
                        }
                        _ => f.content_length = Some(n),
                    }
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                f.transfer_encoding = true;
                for coding in list(value) {
                    f.codings += 1;
                    if f.codings == 1 {
                        f.chunked_first = coding.eq_ignore_ascii_case(b"chunked");
                    }
                }
            } else if name.eq_ignore_ascii_case("connection")
                || (role == Role::Client && name.eq_ignore_ascii_case("proxy-connection"))
            {
                for token in list(value) {
                    f.close |= token.eq_ignore_ascii_case(b"close");
                    f.keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name.eq_ignore_ascii_case("expect") {
                f.expect_continue |= trim(value).eq_ignore_ascii_case(b"100-continue");
            } else if name.eq_ignore_ascii_case("content-type") {
                f.content_types += 1;
                let media_type = trim(value.split(|&b| b == b';').next().unwrap_or(&[]));
                if media_type.eq_ignore_ascii_case(b"application/octet-stream") {
                    f.bundle_types += 1;
                }
            } else if name.eq_ignore_ascii_case("host") {
                f.hosts += 1;
            }
        }
        Ok(f)
    }

    /// The body framing the headers declare; `None` when they declare none.
    fn framing(&self, http10: bool, limits: &HttpLimits) -> Result<Option<Framing>, HttpError> {
        if self.transfer_encoding {
            if self.content_length.is_some() {
                return Err(HttpError::ConflictingLength);
            }
            if http10 || self.codings != 1 || !self.chunked_first {
                return Err(HttpError::UnsupportedTransferEncoding);
            }
            return Ok(Some(Framing::Chunked(ChunkDecoder::new())));
        }
        match self.content_length {
            Some(n) if n > limits.max_body_len => Err(HttpError::BodyTooLarge),
            Some(n) => Ok(Some(Framing::Length(n))),
            None => Ok(None),
        }
    }

    /// RFC 9112 section 9.3.
    fn keep_alive(&self, http10: bool) -> bool {
        !self.close && (!http10 || self.keep_alive_token)
    }

    fn bundle_type(&self) -> bool {
        self.content_types > 0 && self.bundle_types == self.content_types
    }
}

/// A `Content-Length` value (one element of a list): 1*DIGIT that fits in `usize`.
fn parse_content_length(digits: &[u8]) -> Result<usize, HttpError> {
    if digits.is_empty() {
        return Err(HttpError::BadContentLength);
    }
    let mut n: usize = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return Err(HttpError::BadContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(b - b'0')))
            .ok_or(HttpError::BadContentLength)?;
    }
    Ok(n)
}

/// The non-empty elements of a comma-separated header list, trimmed.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|item| !item.is_empty())
}

/// Strips optional whitespace (and the line breaks of an obsolete line fold).
fn trim(mut s: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    while let Some((first, rest)) = s.split_first() {
        if !ws(first) {
            break;
        }
        s = rest;
    }
    while let Some((last, rest)) = s.split_last() {
        if !ws(last) {
            break;
        }
        s = rest;
    }
    s
}

// ---------------------------------------------------------------------------------------
// Chunked bodies
// ---------------------------------------------------------------------------------------

/// Incremental `Transfer-Encoding: chunked` decoder (RFC 9112 section 7.1). Every input
/// byte is looked at once; lines end in CRLF or a bare LF.
#[derive(Debug)]
struct ChunkDecoder {
    state: ChunkState,
    body: BytesMut,
    /// Bytes of the current chunk-size line.
    line_len: usize,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
}

#[derive(Clone, Copy, Debug)]
enum ChunkState {
    /// Reading the chunk size's hex digits.
    Size {
        size: usize,
        digits: bool,
    },
    /// Whitespace after the size (before `;` or the line end).
    SizeSpace(usize),
    /// Inside chunk extensions, which are ignored.
    Extension(usize),
    /// Saw CR at the end of the size line.
    SizeLf(usize),
    /// Inside a chunk's data, this many bytes left.
    Data(usize),
    /// After a chunk's data, expecting CRLF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    TrailerLine,
    /// Saw CR at the start of a trailer line: the end, once LF follows.
    TrailerLf,
    Done,
}

impl ChunkDecoder {
    fn new() -> Self {
        Self {
            state: ChunkState::Size {
                size: 0,
                digits: false,
            },
            body: BytesMut::new(),
            line_len: 0,
            trailer_len: 0,
        }
    }

    /// Consumes bytes from `buf`; `Ok(true)` once the body is complete (bytes after it
    /// stay in `buf`).
    fn decode(&mut self, buf: &mut BytesMut, limits: &HttpLimits) -> Result<bool, HttpError> {
        let mut i = 0;
        let result = loop {
            match self.state {
                ChunkState::Done => break Ok(true),
                ChunkState::Data(left) => {
                    let n = left.min(buf.len() - i);
                    if n == 0 {
                        break Ok(false);
                    }
                    self.body.extend_from_slice(&buf[i..i + n]);
                    i += n;
                    self.state = match left - n {
                        0 => ChunkState::DataCr,
                        left => ChunkState::Data(left),
                    };
                }
                _ => {
                    let Some(&b) = buf.get(i) else {
                        break Ok(false);
                    };
                    i += 1;
                    if let Err(error) = self.step(b, limits) {
                        break Err(error);
                    }
                }
            }
        };
        buf.advance(i);
        result
    }

    fn step(&mut self, b: u8, limits: &HttpLimits) -> Result<(), HttpError> {
        use ChunkState::*;
        if matches!(
            self.state,
            Size { .. } | SizeSpace(_) | Extension(_) | SizeLf(_)
        ) {
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE {
                return Err(HttpError::BadChunk);
            }
        } else if matches!(self.state, TrailerStart | TrailerLine | TrailerLf) {
            self.trailer_len += 1;
            if self.trailer_len > limits.max_head_len {
                return Err(HttpError::HeadTooLarge);
            }
        }
        self.state = match (self.state, b) {
            (Size { size, .. }, b) if b.is_ascii_hexdigit() => {
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    _ => (b | 0x20) - b'a' + 10,
                };
                let size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(usize::from(digit)))
                    .ok_or(HttpError::BodyTooLarge)?;
                // Fail as soon as the declared size cannot fit.
                if size > limits.max_body_len.saturating_sub(self.body.len()) {
                    return Err(HttpError::BodyTooLarge);
                }
                Size { size, digits: true }
            }
            (Size { digits: false, .. }, _) => return Err(HttpError::BadChunk),
            (Size { size, .. } | SizeSpace(size), b' ' | b'\t') => SizeSpace(size),
            (Size { size, .. } | SizeSpace(size), b';') => Extension(size),
            (Size { size, .. } | SizeSpace(size) | Extension(size), b'\r') => SizeLf(size),
            (Size { size, .. } | SizeSpace(size) | Extension(size) | SizeLf(size), b'\n') => {
                self.line_len = 0;
                if size == 0 {
                    TrailerStart
                } else {
                    Data(size)
                }
            }
            (Extension(_), 0..=0x08 | 0x0a..=0x1f | 0x7f) => return Err(HttpError::BadChunk),
            (Extension(size), _) => Extension(size),
            (DataCr, b'\r') => DataLf,
            (DataCr | DataLf, b'\n') => Size {
                size: 0,
                digits: false,
            },
            (TrailerStart, b'\r') => TrailerLf,
            (TrailerStart | TrailerLf, b'\n') => Done,
            (TrailerLine, b'\n') => TrailerStart,
            (TrailerStart | TrailerLine, _) => TrailerLine,
            (Size { .. } | SizeSpace(_) | SizeLf(_) | DataCr | DataLf | TrailerLf, _) => {
                return Err(HttpError::BadChunk)
            }
            // `decode` handles these without calling `step`.
            (Data(_) | Done, _) => self.state,
        };
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// CONNECT tunnels (https:// through a forward proxy)
// ---------------------------------------------------------------------------------------

/// Appends a `CONNECT` request head asking a forward proxy for a tunnel to `authority`.
///
/// The head is `CONNECT <authority> HTTP/1.1`, `Host: <authority>`, `Proxy-Authorization`
/// if given (see [`basic_auth_value`]), and the blank line. `authority` is `host:port`
/// with brackets around an IPv6 literal ([`crate::url::Url::authority`]); no string may
/// contain CR or LF. Once the proxy answers 2xx ([`ConnectResponseParser`]), the
/// connection is a byte pipe to the origin: TLS, then origin-form requests, go inside.
pub fn encode_connect_head(buf: &mut Vec<u8>, authority: &str, proxy_authorization: Option<&str>) {
    debug_assert!(no_line_breaks(authority));
    buf.extend_from_slice(b"CONNECT ");
    buf.extend_from_slice(authority.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    buf.extend_from_slice(authority.as_bytes());
    buf.extend_from_slice(b"\r\n");
    if let Some(auth) = proxy_authorization {
        debug_assert!(no_line_breaks(auth));
        buf.extend_from_slice(b"Proxy-Authorization: ");
        buf.extend_from_slice(auth.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

/// Why a forward proxy did not open a `CONNECT` tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The proxy answered 407: it wants credentials (`http://user:pass@proxy:port`), or
    /// refused the ones given.
    ProxyAuthenticationRequired,
    /// The proxy answered with another non-2xx status (403: the proxy's policy forbids
    /// the destination or port; 502/503/504: it could not reach the server).
    Refused {
        /// The proxy's status code.
        status: u16,
    },
    /// The proxy's response is not valid HTTP/1.x or exceeds the head limits.
    Http(HttpError),
    /// The proxy closed the connection before a complete response head.
    Closed,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ProxyAuthenticationRequired => f.write_str(
                "proxy authentication required (HTTP 407): give credentials in the proxy URL, \
                 http://user:pass@host:port",
            ),
            Self::Refused { status } => write!(
                f,
                "proxy refused the CONNECT tunnel: HTTP {status} {}",
                reason_phrase(*status)
            ),
            Self::Http(e) => write!(f, "bad response to CONNECT from the proxy: {e}"),
            Self::Closed => f.write_str("proxy closed the connection before answering CONNECT"),
        }
    }
}

impl core::error::Error for ConnectError {}

#[cfg(feature = "std")]
impl From<ConnectError> for std::io::Error {
    fn from(e: ConnectError) -> Self {
        use std::io::ErrorKind;
        let kind = match e {
            ConnectError::ProxyAuthenticationRequired => ErrorKind::PermissionDenied,
            ConnectError::Refused { .. } => ErrorKind::ConnectionRefused,
            ConnectError::Http(_) => ErrorKind::InvalidData,
            ConnectError::Closed => ErrorKind::UnexpectedEof,
        };
        std::io::Error::new(kind, e)
    }
}

/// Reads a forward proxy's answer to a `CONNECT` request (see [`encode_connect_head`]).
///
/// Feed what the proxy sends with [`push`](Self::push) until it returns the tunnel's
/// first bytes. 1xx interim responses are skipped. A 2xx answer opens the tunnel: it has
/// no body (RFC 9110 section 9.3.6), so every byte after its head already belongs to the
/// tunnel and is handed back, not dropped. Any other status is a [`ConnectError`]; its
/// body is not read (the connection is closed). While no complete head has arrived, the
/// buffer holds at most [`HttpLimits::max_head_len`] bytes plus one `push`.
#[derive(Debug)]
pub struct ConnectResponseParser {
    limits: HttpLimits,
    buf: Vec<u8>,
    /// Where the search for the end of the head resumes.
    scan: usize,
    /// Sticky outcome once decided.
    error: Option<ConnectError>,
}

impl ConnectResponseParser {
    /// A parser for the response on a connection that just sent `CONNECT`.
    pub fn new(limits: HttpLimits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            scan: 0,
            error: None,
        }
    }

    /// Appends bytes from the proxy. `Ok(None)`: more are needed. `Ok(Some(rest))`: the
    /// tunnel is open and `rest` (possibly empty) is its first bytes from the far end.
    /// Errors are sticky.
    pub fn push(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, ConnectError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.buf.extend_from_slice(data);
        let result = self.advance();
        if let Err(e) = result {
            self.error = Some(e);
            self.buf = Vec::new();
        }
        result
    }

    /// The proxy closed the connection: always an error, as a tunnel that opened was
    /// returned by [`push`](Self::push) already.
    pub fn eof(&mut self) -> ConnectError {
        *self.error.get_or_insert(ConnectError::Closed)
    }

    fn advance(&mut self) -> Result<Option<Vec<u8>>, ConnectError> {
        loop {
            let Some(end) = find_head_end(&self.buf, self.scan) else {
                if self.buf.len() >= self.limits.max_head_len {
                    return Err(ConnectError::Http(HttpError::HeadTooLarge));
                }
                self.scan = self.buf.len().saturating_sub(2);
                return Ok(None);
            };
            if end > self.limits.max_head_len {
                return Err(ConnectError::Http(HttpError::HeadTooLarge));
            }
            let status =
                parse_connect_status(&self.buf[..end], &self.limits).map_err(ConnectError::Http)?;
            match status {
                // We never ask to switch protocols.
                101 => return Err(ConnectError::Http(HttpError::Malformed)),
                100..=199 => {
                    self.buf.drain(..end);
                    self.scan = 0;
                }
                200..=299 => {
                    let rest = self.buf.split_off(end);
                    self.buf = Vec::new();
                    return Ok(Some(rest));
                }
                407 => return Err(ConnectError::ProxyAuthenticationRequired),
                status => return Err(ConnectError::Refused { status }),
            }
        }
    }
}

/// The status code of a complete response head (framing headers are ignored: a 2xx
/// answer to CONNECT has no body whatever they say, and other answers end the connection).
fn parse_connect_status(head: &[u8], limits: &HttpLimits) -> Result<u16, HttpError> {
    with_header_slots(head.len(), limits, |slots| {
        let mut response = httparse::Response::new(slots);
        let result = httparse::ParserConfig::default()
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .allow_multiple_spaces_in_response_status_delimiters(true)
            .parse_response(&mut response, head);
        match result {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            Ok(_) => return Err(HttpError::Malformed),
            Err(error) => return Err(map_httparse(error, head, Role::Client)),
        }
        response.code.ok_or(HttpError::Malformed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;
    use proptest::prelude::*;

    // ----- encoding -----

    #[test]
    fn encodes_direct_request() {
        let mut buf = Vec::new();
        encode_request_head(
            &mut buf,
            &RequestHead {
                target: RequestTarget::Origin {
                    path: "/hw/0123456789abcdef0123456789abcdef",
                },
                host: "example.com:8080",
                proxy_authorization: None,
                content_length: 47,
                close: false,
            },
        );
        assert_eq!(
            core::str::from_utf8(&buf).unwrap(),
            "POST /hw/0123456789abcdef0123456789abcdef HTTP/1.1\r\n\
             Host: example.com:8080\r\n\
             Content-Type: application/octet-stream\r\n\
             Content-Length: 47\r\n\
             Cache-Control: no-store\r\n\
             Pragma: no-cache\r\n\
             Connection: keep-alive\r\n\
             \r\n"
        );
    }

    #[test]
    fn encodes_proxied_request() {
        let auth = basic_auth_value("user", "pass");
        let mut buf = b"previous".to_vec();
        encode_request_head(
            &mut buf,
            &RequestHead {
                target: RequestTarget::Absolute {
                    host: "[2001:db8::1]",
                    port: 8080,
                    path: "/x",
                },
                host: "[2001:db8::1]:8080",
                proxy_authorization: Some(&auth),
                content_length: 0,
                close: false,
            },
        );
        assert_eq!(
            core::str::from_utf8(&buf).unwrap(),
            "previousPOST http://[2001:db8::1]:8080/x HTTP/1.1\r\n\
             Host: [2001:db8::1]:8080\r\n\
             Content-Type: application/octet-stream\r\n\
             Content-Length: 0\r\n\
             Cache-Control: no-store\r\n\
             Pragma: no-cache\r\n\
             Connection: keep-alive\r\n\
             Proxy-Connection: keep-alive\r\n\
             Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
             \r\n"
        );
        // A bare IPv6 literal is bracketed.
        let mut buf = Vec::new();
        encode_request_head(
            &mut buf,
            &RequestHead {
                target: RequestTarget::Absolute {
                    host: "::1",
                    port: 80,
                    path: "/",
                },
                host: "[::1]",
                proxy_authorization: None,
                content_length: 0,
                close: false,
            },
        );
        assert!(buf.starts_with(b"POST http://[::1]/ HTTP/1.1\r\nHost: [::1]\r\n"));
        // Default port omitted; close suppresses Proxy-Connection.
        let mut buf = Vec::new();
        encode_request_head(
            &mut buf,
            &RequestHead {
                target: RequestTarget::Absolute {
                    host: "example.com",
                    port: 80,
                    path: "/",
                },
                host: "example.com",
                proxy_authorization: None,
                content_length: 12345,
                close: true,
            },
        );
        assert_eq!(
            core::str::from_utf8(&buf).unwrap(),
            "POST http://example.com/ HTTP/1.1\r\n\
             Host: example.com\r\n\
             Content-Type: application/octet-stream\r\n\
             Content-Length: 12345\r\n\
             Cache-Control: no-store\r\n\
             Pragma: no-cache\r\n\
             Connection: close\r\n\
             \r\n"
        );
        let debug = format!(
            "{:?}",
            RequestHead {
                target: RequestTarget::Origin { path: "/" },
                host: "h",
                proxy_authorization: Some(&auth),
                content_length: 0,
                close: false,
            }
        );
        assert!(!debug.contains("dXNl"), "{debug}");
    }

    #[test]
    fn encodes_responses() {
        let mut buf = Vec::new();
        encode_response_head(&mut buf, 200, 1024, false, false);
        assert_eq!(
            core::str::from_utf8(&buf).unwrap(),
            "HTTP/1.1 200 OK\r\n\
             Content-Type: application/octet-stream\r\n\
             Content-Length: 1024\r\n\
             Cache-Control: no-store\r\n\
             Connection: keep-alive\r\n\
             \r\n"
        );
        buf.clear();
        encode_response_head(&mut buf, 413, 0, true, true);
        assert_eq!(
            core::str::from_utf8(&buf).unwrap(),
            "HTTP/1.1 413 Content Too Large\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 0\r\n\
             Cache-Control: no-store\r\n\
             Connection: close\r\n\
             \r\n"
        );
        buf.clear();
        encode_response_head(&mut buf, 204, 0, false, false);
        assert_eq!(
            core::str::from_utf8(&buf).unwrap(),
            "HTTP/1.1 204 No Content\r\n\
             Content-Type: application/octet-stream\r\n\
             Cache-Control: no-store\r\n\
             Connection: keep-alive\r\n\
             \r\n"
        );
        buf.clear();
        encode_response_head(&mut buf, 599, 3, false, false);
        assert!(buf.starts_with(b"HTTP/1.1 599 Server Error\r\n"));
        // Our own responses parse back.
        let mut p = ResponseParser::new(HttpLimits::default());
        let mut buf = Vec::new();
        encode_response_head(&mut buf, 200, 3, false, false);
        buf.extend_from_slice(b"abc");
        p.push(&buf).unwrap();
        let r = p.poll().unwrap().unwrap();
        assert_eq!(
            (
                r.status,
                r.keep_alive,
                r.content_type_is_bundle,
                &r.body[..]
            ),
            (200, true, true, &b"abc"[..])
        );
    }

    #[test]
    fn basic_auth_matches_rfc7617() {
        assert_eq!(
            basic_auth_value("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_auth_value("", ""), "Basic Og==");
        assert_eq!(basic_auth_value("a", ""), "Basic YTo=");
        assert_eq!(basic_auth_value("ab", ""), "Basic YWI6");
        assert_eq!(
            basic_auth_value("test", "123\u{a3}"),
            "Basic dGVzdDoxMjPCow=="
        );
    }

    #[test]
    fn errors_have_statuses_and_text() {
        use HttpError::*;
        let all = [
            HeadTooLarge,
            TooManyHeaders,
            Malformed,
            BadContentLength,
            ConflictingLength,
            UnsupportedTransferEncoding,
            BodyTooLarge,
            BadChunk,
            UnexpectedEof,
            UnsupportedVersion,
        ];
        let statuses: Vec<u16> = all.iter().map(HttpError::status).collect();
        assert_eq!(statuses, [431, 431, 400, 400, 400, 501, 413, 400, 400, 505]);
        for e in all {
            let text = e.to_string();
            assert!(!text.is_empty() && text == text.to_lowercase(), "{text}");
        }
    }

    // ----- harness: whole, split at every boundary, byte by byte -----

    type Outcome<T> = Vec<Result<T, HttpError>>;

    fn run_requests(limits: &HttpLimits, chunks: &[&[u8]]) -> Outcome<Request> {
        let mut p = RequestParser::new(limits.clone());
        let mut out = Vec::new();
        for chunk in chunks {
            if let Err(e) = p.push(chunk) {
                out.push(Err(e));
                assert_eq!(p.poll().unwrap_err(), e, "poisoned");
                return out;
            }
            loop {
                match p.poll() {
                    Ok(Some(r)) => out.push(Ok(r)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        assert_eq!(p.push(b"x").unwrap_err(), e, "poisoned");
                        return out;
                    }
                }
            }
        }
        out
    }

    fn run_responses(limits: &HttpLimits, chunks: &[&[u8]], eof: bool) -> Outcome<Response> {
        let mut p = ResponseParser::new(limits.clone());
        let mut out = Vec::new();
        for chunk in chunks {
            if let Err(e) = p.push(chunk) {
                out.push(Err(e));
                return out;
            }
            loop {
                match p.poll() {
                    Ok(Some(r)) => out.push(Ok(r)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        if eof {
            match p.eof() {
                Ok(Some(r)) => out.push(Ok(r)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        out
    }

    /// Every split gives the same outcome as the whole input (httparse's
    /// `partial_permutations`, h11's afl harness); returns that outcome.
    fn all_splits<T: PartialEq + fmt::Debug>(
        input: &[u8],
        run: impl Fn(&[&[u8]]) -> Outcome<T>,
    ) -> Outcome<T> {
        let whole = run(&[input]);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(run(&[a, b]), whole, "split at {at}");
        }
        for at in 0..input.len() {
            for len in [1, 2, 3, 7] {
                let end = (at + len).min(input.len());
                let parts = [&input[..at], &input[at..end], &input[end..]];
                assert_eq!(run(&parts), whole, "split at {at} and {end}");
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
        whole
    }

    fn requests(input: &[u8]) -> Outcome<Request> {
        requests_with(&HttpLimits::default(), input)
    }

    fn requests_with(limits: &HttpLimits, input: &[u8]) -> Outcome<Request> {
        all_splits(input, |chunks| run_requests(limits, chunks))
    }

    fn responses(input: &[u8]) -> Outcome<Response> {
        responses_with(&HttpLimits::default(), input)
    }

    fn responses_with(limits: &HttpLimits, input: &[u8]) -> Outcome<Response> {
        all_splits(input, |chunks| run_responses(limits, chunks, true))
    }

    fn ok_request(out: &Outcome<Request>) -> &Request {
        assert_eq!(out.len(), 1, "{out:?}");
        out[0].as_ref().unwrap()
    }

    fn ok_response(out: &Outcome<Response>) -> &Response {
        assert_eq!(out.len(), 1, "{out:?}");
        out[0].as_ref().unwrap()
    }

    fn only_error<T: fmt::Debug>(out: &Outcome<T>) -> HttpError {
        assert_eq!(out.len(), 1, "{out:?}");
        *out[0].as_ref().unwrap_err()
    }

    // ----- requests -----

    #[test]
    fn keep_alive_request() {
        let out = requests(b"POST /hw/abc HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello");
        let r = ok_request(&out);
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.path, "/hw/abc");
        assert!(!r.http10 && r.keep_alive);
        assert_eq!(&r.body[..], b"hello");
        assert_eq!(r.head_len, 53);
    }

    #[test]
    fn connection_tokens_and_http10() {
        let cases: &[(&[u8], bool, bool)] = &[
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                false,
                false,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nconnection: Upgrade, CLOSE\r\n\r\n",
                false,
                false,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n\r\n",
                false,
                true,
            ),
            (b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n", true, false),
            (
                b"POST / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                true,
                true,
            ),
            (
                b"POST / HTTP/1.0\r\nConnection: foo\r\nConnection: keep-alive\r\n\r\n",
                true,
                true,
            ),
            // Proxy-Connection does not count in requests.
            (
                b"POST / HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n",
                true,
                false,
            ),
        ];
        for (input, http10, keep_alive) in cases {
            let out = requests(input);
            let r = ok_request(&out);
            assert_eq!(
                (r.http10, r.keep_alive),
                (*http10, *keep_alive),
                "{input:?}"
            );
        }
    }

    #[test]
    fn request_with_proxy_headers_in_any_order() {
        let out = requests(
            b"\r\nPOST http://Example.com:8080/hw/s?x=1 HTTP/1.1\r\n\
              Via: 1.1 squid\r\nX-Forwarded-For: 10.0.0.1\r\ncontent-LENGTH: 3\r\n\
              HOST: example.com:8080\r\nCache-Control: max-age=0\r\nx-cache: MISS\r\n\r\nabc",
        );
        let r = ok_request(&out);
        assert_eq!(r.path, "/hw/s?x=1");
        assert_eq!(&r.body[..], b"abc");
        let out = requests(b"POST http://h HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(ok_request(&out).path, "/");
        let out = requests(b"POST https://h?q HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(ok_request(&out).path, "/?q");
        let out = requests(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(ok_request(&out).method, Method::Get);
        let out = requests(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(ok_request(&out).method, Method::Head);
        let out = requests(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            (ok_request(&out).method, &*ok_request(&out).path),
            (Method::Other, "*")
        );
        // Bare LF line endings are tolerated.
        let out = requests(b"POST /a HTTP/1.1\nHost: h\nContent-Length: 1\n\nz");
        assert_eq!(&ok_request(&out).body[..], b"z");
    }

    #[test]
    fn two_requests_back_to_back() {
        let out = requests(
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxy\
              POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              POST /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(out.len(), 3, "{out:?}");
        let paths: Vec<&str> = out
            .iter()
            .map(|r| r.as_ref().unwrap().path.as_str())
            .collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
        assert_eq!(&out[1].as_ref().unwrap().body[..], b"abc");
        assert!(!out[2].as_ref().unwrap().keep_alive);
    }

    #[test]
    fn deferred_requests_parse_as_their_bodies() {
        let head = RequestHead {
            target: RequestTarget::Origin { path: "/s/1" },
            host: "h:8080",
            proxy_authorization: None,
            content_length: 0,
            close: true,
        };
        for body_len in [0usize, 1, 15, 16, 255, 256, 70_000] {
            let body: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            encode_deferred_request_head(&mut wire, &head);
            let head_len = wire.len();
            assert!(!wire.windows(15).any(|w| w == b"Content-Length:"));
            encode_deferred_body(&mut wire, &body);
            // The head alone is a request in progress; the body completes it.
            let mut p = RequestParser::new(HttpLimits::default());
            p.push(&wire[..head_len]).unwrap();
            assert_eq!(p.poll().unwrap(), None);
            p.push(&wire[head_len..]).unwrap();
            let request = p.poll().unwrap().unwrap();
            assert_eq!(request.path, "/s/1");
            assert_eq!(&request.body[..], &body[..], "body of {body_len} bytes");
            assert_eq!(p.buffered_len(), 0);
        }
    }

    #[test]
    fn one_request_per_poll_rest_stays_buffered() {
        let mut p = RequestParser::new(HttpLimits::default());
        let first = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx";
        let second = b"POST /b HTTP/1.1\r\nHo";
        let mut all = first.to_vec();
        all.extend_from_slice(second);
        assert!(!p.is_mid_request());
        p.push(&all).unwrap();
        assert_eq!(p.buffered_len(), second.len());
        assert_eq!(p.poll().unwrap().unwrap().path, "/a");
        assert!(p.is_mid_request());
        assert_eq!(p.poll().unwrap(), None);
        assert!(p.is_mid_request());
        p.push(b"st: h\r\n\r\n").unwrap();
        assert_eq!(p.poll().unwrap().unwrap().path, "/b");
        assert!(!p.is_mid_request());
        assert_eq!(p.buffered_len(), 0);
    }

    #[test]
    fn chunked_request_with_extensions_and_trailers() {
        let out = requests(
            b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n\
              5;name=value;flag\r\nhello\r\n\
              1A \t; ext=\"quoted\"\r\n abcdefghijklmnopqrstuvwxy\r\n\
              0000\r\nX-Trailer: 1\r\nChecksum: abc\r\n\r\n",
        );
        let r = ok_request(&out);
        assert_eq!(&r.body[..], b"hello abcdefghijklmnopqrstuvwxy");
        assert!(r.keep_alive);
        // Bare LF in chunk lines, no trailers.
        let out = requests(
            b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\n0\n\n",
        );
        assert_eq!(&ok_request(&out).body[..], b"ab");
    }

    #[test]
    fn expect_continue() {
        let head =
            b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n";
        let mut p = RequestParser::new(HttpLimits::default());
        p.push(&head[..10]).unwrap();
        assert!(!p.take_expect_continue());
        p.push(&head[10..]).unwrap();
        assert!(p.take_expect_continue());
        assert!(!p.take_expect_continue(), "only once");
        assert_eq!(p.poll().unwrap(), None);
        p.push(b"da").unwrap();
        assert!(!p.take_expect_continue());
        p.push(b"ta").unwrap();
        assert_eq!(&p.poll().unwrap().unwrap().body[..], b"data");
        assert!(!p.take_expect_continue());

        // Body already complete: nothing to ask for.
        let mut p = RequestParser::new(HttpLimits::default());
        let mut all = head.to_vec();
        all.extend_from_slice(b"data");
        p.push(&all).unwrap();
        assert!(!p.take_expect_continue());
        // Empty body, or HTTP/1.0: no 100 Continue.
        for input in [
            &b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n"[..],
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        ] {
            let mut p = RequestParser::new(HttpLimits::default());
            p.push(input).unwrap();
            assert!(!p.take_expect_continue(), "{input:?}");
        }
    }

    // ----- request errors -----

    #[test]
    fn framing_errors() {
        use HttpError::*;
        let cases: &[(&[u8], HttpError)] = &[
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n", BadContentLength),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                BadContentLength,
            ),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4294967296000\r\n\r\n", BodyTooLarge),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", ConflictingLength),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n", ConflictingLength),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                ConflictingLength,
            ),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", UnsupportedTransferEncoding),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                UnsupportedTransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                UnsupportedTransferEncoding,
            ),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", BadChunk),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n", BadChunk),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab", BadChunk),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;\x00\r\n", BadChunk),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\rx", BadChunk),
            (b"GARBAGE\r\n\r\n", Malformed),
            (b"POST / HTTP/1.1\r\nBad Header: x\r\n\r\n", Malformed),
            (b"POST / HTTP/1.1\r\n\r\n", Malformed),
            (b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Malformed),
            (b"POST hw HTTP/1.1\r\nHost: h\r\n\r\n", Malformed),
            (b"POST http:///x HTTP/1.1\r\nHost: h\r\n\r\n", Malformed),
            (b"POST / HTTP/2.0\r\nHost: h\r\n\r\n", UnsupportedVersion),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", UnsupportedVersion),
            (b"POST / HTTP/1.2\r\nHost: h\r\n\r\n", UnsupportedVersion),
        ];
        for (input, expected) in cases {
            let out = requests(input);
            assert_eq!(
                only_error(&out),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Same values repeated are one length (RFC 9110 section 8.6).
        let out = requests(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2, 2\r\nContent-Length: 02\r\n\r\nab",
        );
        assert_eq!(&ok_request(&out).body[..], b"ab");
    }

    #[test]
    fn too_many_headers() {
        let mut input = b"POST / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..63 {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        assert!(run_requests(&HttpLimits::default(), &[&input])[0].is_ok());
        let mut more = input[..input.len() - 2].to_vec();
        more.extend_from_slice(b"X-last: v\r\n\r\n");
        let out = requests(&more);
        assert_eq!(only_error(&out), HttpError::TooManyHeaders);
        // A raised limit is honoured (heap slots).
        let limits = HttpLimits {
            max_headers: 100,
            ..HttpLimits::default()
        };
        assert!(run_requests(&limits, &[&more])[0].is_ok());
        let limits = HttpLimits {
            max_headers: usize::MAX,
            ..HttpLimits::default()
        };
        assert!(run_requests(&limits, &[&more])[0].is_ok());
    }

    #[test]
    fn head_limit_fails_at_push_time() {
        let limits = HttpLimits {
            max_head_len: 64,
            ..HttpLimits::default()
        };
        // A slowloris never finishing its head: the parser holds at most max_head_len.
        let mut p = RequestParser::new(limits.clone());
        p.push(b"POST / HTTP/1.1\r\n").unwrap();
        let mut failed = false;
        for _ in 0..100 {
            match p.push(b"X") {
                Ok(()) => assert!(p.buffered_len() < 64),
                Err(e) => {
                    assert_eq!(e, HttpError::HeadTooLarge);
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed);
        assert!(p.buffered_len() <= 64);
        assert_eq!(p.poll().unwrap_err(), HttpError::HeadTooLarge);
        // One big push: rejected without buffering it all.
        let mut p = RequestParser::new(limits.clone());
        assert_eq!(
            p.push(&[b'a'; 10_000]).unwrap_err(),
            HttpError::HeadTooLarge
        );
        assert!(p.buffered_len() <= 64);
        // A head of exactly max_head_len is fine, one more byte is not.
        let exact = b"POST / HTTP/1.1\r\nHost: h\r\nX-Pad: 012345678901234567890123456\r\n\r\n";
        assert_eq!(exact.len(), 64);
        assert!(ok_request(&requests_with(&limits, exact)).keep_alive);
        let over = b"POST / HTTP/1.1\r\nHost: h\r\nX-Pad: 0123456789012345678901234567\r\n\r\n";
        assert_eq!(
            only_error(&requests_with(&limits, over)),
            HttpError::HeadTooLarge
        );
        // A maximal head fed byte by byte parses (and in linear time: the search for
        // the blank line resumes where it stopped).
        let mut max = b"POST / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        max.resize(16 * 1024 - 4, b'a');
        max.extend_from_slice(b"\r\n\r\n");
        let mut p = RequestParser::new(HttpLimits::default());
        for &b in &max {
            p.push(&[b]).unwrap();
        }
        assert_eq!(p.poll().unwrap().unwrap().head_len, 16 * 1024);
        // Endless blank lines are bounded too.
        let mut p = RequestParser::new(limits);
        assert_eq!(
            p.push(&b"\r\n".repeat(100)).unwrap_err(),
            HttpError::HeadTooLarge
        );
        // Default limit: a 16 KiB + 1 head.
        let mut big = b"POST / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        big.resize(16 * 1024, b'a');
        let mut p = RequestParser::new(HttpLimits::default());
        assert_eq!(p.push(&big).unwrap_err(), HttpError::HeadTooLarge);
    }

    #[test]
    fn declared_body_limit_fails_before_body() {
        let mut p = RequestParser::new(HttpLimits::default());
        let too_big = 4 * 1024 * 1024 + 64 * 1024 + 1;
        let head = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {too_big}\r\n\r\n");
        assert_eq!(
            p.push(head.as_bytes()).unwrap_err(),
            HttpError::BodyTooLarge
        );
        // Exactly the limit is accepted.
        let mut p = RequestParser::new(HttpLimits::default());
        let head = format!(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            too_big - 1
        );
        p.push(head.as_bytes()).unwrap();
        p.push(&vec![7u8; too_big - 1]).unwrap();
        let r = p.poll().unwrap().unwrap();
        assert_eq!(r.body.len(), too_big - 1);
    }

    #[test]
    fn endless_chunked_body_fails_at_max_body_len() {
        let limits = HttpLimits {
            max_body_len: 1000,
            ..HttpLimits::default()
        };
        let mut p = RequestParser::new(limits.clone());
        p.push(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let mut sent = 0;
        let error = loop {
            match p.push(b"10\r\n0123456789abcdef\r\n") {
                Ok(()) => sent += 16,
                Err(e) => break e,
            }
            assert!(sent <= 1000);
            assert_eq!(p.poll().unwrap(), None);
        };
        assert_eq!(error, HttpError::BodyTooLarge);
        assert!(sent > 1000 - 16);
        // One huge chunk size fails on its digits, before any data.
        let mut p = RequestParser::new(limits.clone());
        let r = p.push(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3e9");
        assert_eq!(r.unwrap_err(), HttpError::BodyTooLarge);
        let mut p = RequestParser::new(limits.clone());
        let r = p.push(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffffff");
        assert_eq!(r.unwrap_err(), HttpError::BodyTooLarge);
        // Exactly the limit is fine.
        let mut input =
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        input.extend_from_slice(b"3e8\r\n");
        input.extend_from_slice(&[b'x'; 1000]);
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(
            run_requests(&limits, &[&input])[0]
                .as_ref()
                .unwrap()
                .body
                .len(),
            1000
        );
        // Long chunk lines and trailers are bounded.
        let mut p = RequestParser::new(limits.clone());
        let mut input =
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        input.extend_from_slice(&[b'e'; 5000]);
        assert_eq!(p.push(&input).unwrap_err(), HttpError::BadChunk);
        let mut p = RequestParser::new(limits);
        let mut input =
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: ".to_vec();
        input.extend_from_slice(&[b't'; 20_000]);
        assert_eq!(p.push(&input).unwrap_err(), HttpError::HeadTooLarge);
    }

    #[test]
    fn unpolled_request_and_flood_is_bounded() {
        let limits = HttpLimits {
            max_head_len: 100,
            max_body_len: 100,
            ..HttpLimits::default()
        };
        let mut p = RequestParser::new(limits);
        p.push(b"POST / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let mut error = None;
        for _ in 0..10_000 {
            if let Err(e) = p.push(&[b'a'; 100]) {
                error = Some(e);
                break;
            }
        }
        assert_eq!(error, Some(HttpError::BodyTooLarge));
        assert!(p.buffered_len() <= 100 + 100 + BUFFER_SLACK);
    }

    #[test]
    fn content_length_body_is_zero_copy() {
        let mut p = RequestParser::new(HttpLimits::default());
        let mut input = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n".to_vec();
        input.extend_from_slice(&[9u8; 1000]);
        p.push(&input).unwrap();
        let r = p.poll().unwrap().unwrap();
        // The body is a view of the receive buffer: it shares the allocation, so
        // converting it back to a `BytesMut` without copying fails while both live.
        assert_eq!(r.body.len(), 1000);
        let body = r.body.try_into_mut().unwrap_err();
        drop(p);
        assert!(body.try_into_mut().is_ok());
    }

    // ----- responses -----

    #[test]
    fn keep_alive_response_with_proxy_headers() {
        let out = responses(
            b"HTTP/1.1 200 OK\r\nVia: 1.1 squid (squid/5.7)\r\nX-Cache: MISS from proxy\r\n\
              Content-Type: Application/Octet-Stream; x=1\r\ncontent-length: 4\r\n\
              Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\nbody",
        );
        let r = ok_response(&out);
        assert_eq!((r.status, r.http10, r.keep_alive), (200, false, true));
        assert!(r.content_type_is_bundle);
        assert_eq!(&r.body[..], b"body");
    }

    #[test]
    fn proxy_error_page_is_not_a_bundle() {
        let out = responses(
            b"HTTP/1.1 503 Service Unavailable\r\nServer: squid\r\nContent-Type: text/html;charset=utf-8\r\n\
              Content-Length: 13\r\nConnection: close\r\n\r\n<html></html>",
        );
        let r = ok_response(&out);
        assert_eq!(
            (r.status, r.keep_alive, r.content_type_is_bundle),
            (503, false, false)
        );
        let out = responses(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!ok_response(&out).content_type_is_bundle);
    }

    #[test]
    fn http10_and_proxy_connection() {
        let cases: &[(&[u8], bool)] = &[
            (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nx",
                true,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nProxy-Connection: Keep-Alive\r\n\r\nx",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nProxy-Connection: close\r\n\r\nx",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive, close\r\n\r\nx",
                false,
            ),
        ];
        for (input, keep_alive) in cases {
            let out = responses(input);
            let r = ok_response(&out);
            assert_eq!(r.keep_alive, *keep_alive, "{input:?}");
            assert_eq!(&r.body[..], b"x");
        }
    }

    #[test]
    fn close_delimited_response() {
        let out = responses(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\nuntil the end",
        );
        let r = ok_response(&out);
        assert_eq!((r.http10, r.keep_alive), (true, false));
        assert_eq!(&r.body[..], b"until the end");
        // Even with keep-alive claimed, a close-delimited body ends the connection.
        let out = responses(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nrest");
        let r = ok_response(&out);
        assert!(!r.keep_alive);
        assert_eq!(&r.body[..], b"rest");
        // Empty close-delimited body.
        let out = responses(b"HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(ok_response(&out).body.len(), 0);
        // Too long.
        let limits = HttpLimits {
            max_body_len: 10,
            ..HttpLimits::default()
        };
        let out = responses_with(&limits, b"HTTP/1.0 200 OK\r\n\r\n0123456789a");
        assert_eq!(only_error(&out), HttpError::BodyTooLarge);
    }

    #[test]
    fn chunked_response_with_interim_responses() {
        let out = responses(
            b"HTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 102 Processing\r\nX: y\r\n\r\n\
              HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n\
              4;a=b\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n",
        );
        let r = ok_response(&out);
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"Wikipedia in\r\n\r\nchunks.");
        assert!(r.keep_alive && r.content_type_is_bundle);
    }

    #[test]
    fn bodiless_statuses_and_sequences() {
        let out = responses(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n\
              HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        );
        assert_eq!(out.len(), 3, "{out:?}");
        let statuses: Vec<u16> = out.iter().map(|r| r.as_ref().unwrap().status).collect();
        assert_eq!(statuses, [204, 304, 200]);
        assert!(out[0].as_ref().unwrap().body.is_empty());
        assert_eq!(&out[2].as_ref().unwrap().body[..], b"ok");
        // Lenient status line spacing and an obsolete line fold from an old proxy.
        let out = responses(b"HTTP/1.1  200  OK\r\nX-Old: a\r\n b\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(ok_response(&out).status, 200);
    }

    #[test]
    fn response_errors() {
        use HttpError::*;
        let cases: &[(&[u8], HttpError)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                UnexpectedEof,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                UnexpectedEof,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Le", UnexpectedEof),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                Malformed,
            ),
            (b"HTTP/1.1 abc OK\r\n\r\n", Malformed),
            (b"<html>not http</html>\r\n\r\n", Malformed),
            (b"HTTP/2 200\r\n\r\n", UnsupportedVersion),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                ConflictingLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: br\r\n\r\n",
                UnsupportedTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
                BadChunk,
            ),
        ];
        for (input, expected) in cases {
            let out = responses(input);
            assert_eq!(
                only_error(&out),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Nothing at all, or only blank lines, is a clean close.
        assert!(responses(b"").is_empty());
        assert!(responses(b"\r\n").is_empty());
        // A second response cut short after a complete first one.
        let out = responses(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 2");
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], Err(UnexpectedEof));
    }

    // ----- properties -----

    fn proptest_cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    proptest! {
        // 256 cases locally; CI raises PROPTEST_CASES.
        #![proptest_config(ProptestConfig { cases: proptest_cases(), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            split in any::<proptest::sample::Index>(),
            small in any::<bool>(),
        ) {
            let limits = if small {
                HttpLimits { max_head_len: 64, max_headers: 4, max_body_len: 64 }
            } else {
                HttpLimits::default()
            };
            let at = split.index(data.len() + 1);
            let (a, b) = data.split_at(at);
            prop_assert_eq!(run_requests(&limits, &[a, b]), run_requests(&limits, &[&data]));
            prop_assert_eq!(
                run_responses(&limits, &[a, b], true),
                run_responses(&limits, &[&data], true)
            );
        }

        #[test]
        fn prefixed_arbitrary_bytes_never_panic(
            prefix in prop_oneof![
                Just(&b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"[..]),
                Just(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..]),
                Just(&b"HTTP/1.0 200 OK\r\n"[..]),
                Just(&b"POST / HTTP/1.1\r\n"[..]),
            ],
            data in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b';')],
                0..256,
            ),
        ) {
            let mut input = prefix.to_vec();
            input.extend_from_slice(&data);
            let limits = HttpLimits { max_head_len: 256, max_headers: 8, max_body_len: 128 };
            let req = run_requests(&limits, &[&input]);
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(run_requests(&limits, &bytes), req);
            let resp = run_responses(&limits, &[&input], true);
            prop_assert_eq!(run_responses(&limits, &bytes, true), resp);
        }

        #[test]
        fn request_round_trip(
            path in "/[a-zA-Z0-9._~-]{0,12}(/[a-z0-9%]{1,8}){0,3}",
            body in proptest::collection::vec(any::<u8>(), 0..1500),
            close in any::<bool>(),
            absolute in any::<bool>(),
            port in 1u16..,
            auth in proptest::option::of("[a-z]{1,8}"),
            split in any::<proptest::sample::Index>(),
        ) {
            let auth = auth.map(|user| basic_auth_value(&user, "pw"));
            let target = if absolute {
                RequestTarget::Absolute { host: "proxy.example", port, path: &path }
            } else {
                RequestTarget::Origin { path: &path }
            };
            let mut buf = Vec::new();
            encode_request_head(&mut buf, &RequestHead {
                target,
                host: "proxy.example",
                proxy_authorization: auth.as_deref(),
                content_length: body.len(),
                close,
            });
            let head_len = buf.len();
            buf.extend_from_slice(&body);
            let at = split.index(buf.len() + 1);
            let out = run_requests(&HttpLimits::default(), &[&buf[..at], &buf[at..]]);
            prop_assert_eq!(out.len(), 1);
            let r = out[0].as_ref().unwrap();
            prop_assert_eq!(r.method, Method::Post);
            prop_assert_eq!(&r.path, &path);
            prop_assert_eq!(r.keep_alive, !close);
            prop_assert_eq!(&r.body[..], &body[..]);
            prop_assert_eq!(r.head_len, head_len);
        }

        #[test]
        fn response_round_trip(
            status in prop_oneof![Just(200u16), Just(404), Just(503), 200u16..600],
            body in proptest::collection::vec(any::<u8>(), 0..1500),
            close in any::<bool>(),
            text in any::<bool>(),
        ) {
            let body = if status == 204 || status == 304 { Vec::new() } else { body };
            let mut buf = Vec::new();
            encode_response_head(&mut buf, status, body.len(), close, text);
            buf.extend_from_slice(&body);
            let out = run_responses(&HttpLimits::default(), &[&buf], false);
            prop_assert_eq!(out.len(), 1);
            let r = out[0].as_ref().unwrap();
            prop_assert_eq!(r.status, status);
            prop_assert_eq!(r.keep_alive, !close);
            prop_assert_eq!(r.content_type_is_bundle, !text);
            prop_assert_eq!(&r.body[..], &body[..]);
        }
    }

    // ----- CONNECT tunnels -----

    #[test]
    fn encodes_connect_head() {
        let mut buf = Vec::new();
        encode_connect_head(&mut buf, "[2001:db8::1]:443", None);
        assert_eq!(
            buf,
            b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n"
        );
        let mut buf = Vec::new();
        let auth = basic_auth_value("user", "pass");
        encode_connect_head(&mut buf, "example.com:8443", Some(&auth));
        assert_eq!(
            core::str::from_utf8(&buf).unwrap(),
            "CONNECT example.com:8443 HTTP/1.1\r\n\
             Host: example.com:8443\r\n\
             Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
             \r\n"
        );
    }

    #[test]
    fn connect_2xx_opens_the_tunnel_and_keeps_the_bytes_after_the_head() {
        // squid's answer, split anywhere, with TLS bytes right behind it.
        let answer = b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03\x00\x02hi";
        for split in 0..=answer.len() {
            let mut p = ConnectResponseParser::new(HttpLimits::default());
            let first = p.push(&answer[..split]).unwrap();
            let rest = match first {
                Some(rest) => {
                    let mut rest = rest;
                    rest.extend_from_slice(&answer[split..]);
                    rest
                }
                None => p.push(&answer[split..]).unwrap().expect("head complete"),
            };
            assert_eq!(rest, b"\x16\x03\x03\x00\x02hi", "split at {split}");
        }
        // tinyproxy's HTTP/1.0 answer with headers; a Content-Length on a 2xx is ignored;
        // an interim 100 is skipped.
        let mut p = ConnectResponseParser::new(HttpLimits::default());
        let rest = p
            .push(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 Connection established\r\n\
                  Proxy-agent: tinyproxy/1.11.1\r\nContent-Length: 99\r\n\r\n",
            )
            .unwrap();
        assert_eq!(rest, Some(Vec::new()));
    }

    #[test]
    fn connect_refusals_are_typed() {
        let cases: [(&[u8], ConnectError); 4] = [
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 5\r\n\r\ndenied",
                ConnectError::ProxyAuthenticationRequired,
            ),
            (
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
                ConnectError::Refused { status: 403 },
            ),
            (
                b"HTTP/1.0 502 Bad Gateway\r\n\r\n<html>",
                ConnectError::Refused { status: 502 },
            ),
            (
                b"SSH-2.0-OpenSSH\r\n\r\n",
                ConnectError::Http(HttpError::Malformed),
            ),
        ];
        for (answer, expected) in cases {
            let mut p = ConnectResponseParser::new(HttpLimits::default());
            assert_eq!(p.push(answer), Err(expected));
            // Sticky.
            assert_eq!(p.push(b"HTTP/1.1 200 OK\r\n\r\n"), Err(expected));
            assert_eq!(p.eof(), expected);
        }
        assert!(ConnectError::ProxyAuthenticationRequired
            .to_string()
            .contains("proxy authentication required"));
        assert_eq!(
            ConnectError::Refused { status: 403 }.to_string(),
            "proxy refused the CONNECT tunnel: HTTP 403 Forbidden"
        );
        let io: std::io::Error = ConnectError::ProxyAuthenticationRequired.into();
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn connect_answer_is_bounded_and_eof_is_an_error() {
        let mut p = ConnectResponseParser::new(HttpLimits::default());
        assert_eq!(p.push(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        assert_eq!(p.eof(), ConnectError::Closed);
        let mut p = ConnectResponseParser::new(HttpLimits::default());
        assert_eq!(p.push(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        let filler = [b'x'; 1024];
        let mut result = Ok(None);
        for _ in 0..32 {
            result = p.push(&filler);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ConnectError::Http(HttpError::HeadTooLarge)));
        assert!(p.buf.is_empty());
    }
}
