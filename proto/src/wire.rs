//! The bundle codec: the byte layout of holdwire wire format v1.
//!
//! # Theory of operation
//!
//! A *bundle* is one whole HTTP request or response body. It is made of a fixed
//! 47-byte header, up to 255 SACK ranges of 16 bytes, a sequence of frames
//! (`type u8, len u32, body`), an optional authentication tag and a CRC-32C
//! trailer over every preceding byte. All integers are big-endian. The byte
//! layout is specified in `docs/PROTOCOL.md`; this module is its reference
//! implementation.
//!
//! **Decoding** ([`decode`]) is a single validating pass that allocates
//! nothing: it checks the length, the CRC, the header, every SACK range and
//! every frame against [`WireLimits`], and returns a [`Bundle`] that keeps the
//! input [`Bytes`] plus a few offsets. [`Bundle::sacks`] and [`Bundle::frames`]
//! re-read the already validated bytes, so they yield plain values rather than
//! `Result`s, and the payloads they hand out are [`Bytes`] slices of the input
//! (no copy). Decoding is total: any input gives either a `Bundle` or a typed
//! [`DecodeError`], never a panic, an out-of-bounds slice or an arithmetic
//! overflow. [`peek_header`] runs only the envelope checks (length, CRC,
//! magic, version, flags), for routing and for error replies.
//!
//! **Encoding** ([`BundleEncoder`]) appends one bundle to a caller-owned
//! `Vec<u8>`: construction writes the header and the SACK ranges, one method
//! per frame kind appends a frame, and [`BundleEncoder::finish`] writes the
//! tag (computed by a caller closure over the bytes so far) and the CRC. Use
//! [`bundle_len`] and [`Frame::encoded_len`] to size bundles before writing
//! them. The encoder trusts its caller: it checks its preconditions with
//! `debug_assert!` only, and documents the few that panic.
//!
//! The CRC is CRC-32C (Castagnoli), see [`crc32c()`]: hardware accelerated when
//! the `std` feature is on, a slice-by-16 table otherwise.

use alloc::vec::Vec;
use bytes::Bytes;
use core::fmt;
use core::iter::FusedIterator;

/// The two bytes every bundle starts with: `"hw"`.
pub const MAGIC: [u8; 2] = *b"hw";
/// The wire format version this module reads and writes.
pub const VERSION: u8 = 1;
/// Length of the fixed bundle header, up to and including `sack_count`.
pub const HEADER_LEN: usize = 47;
/// Length of one encoded SACK range (`start u64, end u64`).
pub const SACK_RANGE_LEN: usize = 16;
/// Length of a frame header (`type u8, len u32`).
pub const FRAME_HEADER_LEN: usize = 5;
/// Bytes a MESSAGE frame adds to its payload (frame header + `seq u64`).
pub const MESSAGE_OVERHEAD: usize = FRAME_HEADER_LEN + 8;
/// Length of the CRC-32C trailer.
pub const CRC_LEN: usize = 4;
/// Largest authentication tag a bundle may carry.
pub const MAX_TAG_LEN: usize = 64;
/// Length of the nonce in an OPEN frame.
pub const NONCE_LEN: usize = 16;

/// Bit 0 of the flags byte: set on server-to-client bundles.
const FLAG_RESPONSE: u8 = 0x01;
/// Offset of the `tag_len` header byte.
const OFF_TAG_LEN: usize = 45;
/// Offset of the `sack_count` header byte.
const OFF_SACK_COUNT: usize = 46;
/// The reason length peers accept by default; [`BundleEncoder::abort`]
/// truncates to it.
const DEFAULT_MAX_REASON_LEN: usize = 256;

const TYPE_MESSAGE: u8 = 0x01;
const TYPE_FIN: u8 = 0x02;
const TYPE_OPEN: u8 = 0x03;
const TYPE_CLOSE: u8 = 0x04;
const TYPE_ABORT: u8 = 0x05;
const TYPE_UNREADABLE: u8 = 0x06;
/// Frame types at or above this value are optional extensions.
const TYPE_EXTENSION_MIN: u8 = 0x80;

const OPEN_BODY_LEN: usize = NONCE_LEN + 4;

// ---------------------------------------------------------------------------
// Session id
// ---------------------------------------------------------------------------

/// A 16-byte session identifier, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// Parses exactly 32 hex digits (either case) into a session id.
    ///
    /// Returns `None` for any other length or any non-hex byte.
    pub fn parse_hex(hex: &[u8]) -> Option<SessionId> {
        if hex.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (out, pair) in id.iter_mut().zip(hex.chunks_exact(2)) {
            let (&hi, rest) = pair.split_first()?;
            let &lo = rest.first()?;
            *out = (hex_value(hi)? << 4) | hex_value(lo)?;
        }
        Some(SessionId(id))
    }

    /// Writes the id as 32 lowercase hex digits into `out`.
    pub fn write_hex(&self, out: &mut [u8; 32]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (pair, &byte) in out.chunks_exact_mut(2).zip(self.0.iter()) {
            if let [hi, lo] = pair {
                *hi = DIGITS[usize::from(byte >> 4)];
                *lo = DIGITS[usize::from(byte & 0x0f)];
            }
        }
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = [0u8; 32];
        self.write_hex(&mut hex);
        // write_hex only writes ASCII hex digits, so this cannot fail.
        let text = core::str::from_utf8(&hex).map_err(|_| fmt::Error)?;
        f.write_str(text)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// ---------------------------------------------------------------------------
// Header, SACK ranges, frames
// ---------------------------------------------------------------------------

/// The fixed fields of a bundle header (offsets 3 to 44).
///
/// `tag_len` and `sack_count` are not here: the encoder derives them from its
/// arguments and [`Bundle`] exposes them through [`Bundle::tag`] and
/// [`Bundle::sack_count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// The RESPONSE flag: set on server-to-client bundles.
    pub response: bool,
    /// The session this bundle belongs to.
    pub session: SessionId,
    /// Request id: the client's request number (from 1, monotonic per
    /// session), or in a response the rid being answered (0 if unknown).
    pub rid: u64,
    /// Cumulative acknowledgement: the next message sequence number the
    /// sender expects; every seq below it was received.
    pub ack: u64,
    /// Receive window in bytes, counted from the cumulative ack point.
    pub window: u32,
    /// Client: requests it asks the server to hold; server: requests granted.
    pub hold: u8,
    /// Server: microseconds the answered request was held (saturating).
    /// Client: 0.
    pub held_us: u32,
}

/// A selectively acknowledged range of sequence numbers, half-open
/// `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SackRange {
    /// First sequence number received in this range.
    pub start: u64,
    /// One past the last sequence number received in this range.
    pub end: u64,
}

/// An abort code carried by an ABORT frame. Unknown codes are kept as
/// numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AbortCode(pub u16);

impl AbortCode {
    /// No reason given.
    pub const UNSPECIFIED: AbortCode = AbortCode(0);
    /// The application asked for the abort.
    pub const APPLICATION: AbortCode = AbortCode(1);
    /// The peer broke the protocol.
    pub const PROTOCOL_VIOLATION: AbortCode = AbortCode(2);
    /// The server does not know the session.
    pub const UNKNOWN_SESSION: AbortCode = AbortCode(3);
    /// The server has too many sessions.
    pub const SESSION_LIMIT: AbortCode = AbortCode(4);
    /// Authentication failed.
    pub const AUTH_FAILED: AbortCode = AbortCode(5);
    /// The session timed out.
    pub const TIMED_OUT: AbortCode = AbortCode(6);
    /// The sender is shutting down.
    pub const SHUTDOWN: AbortCode = AbortCode(7);
    /// A buffer limit was exceeded.
    pub const BUFFER_LIMIT: AbortCode = AbortCode(8);

    /// The code's name, or `None` for a code this version does not define.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "unspecified",
            1 => "application",
            2 => "protocol violation",
            3 => "unknown session",
            4 => "session limit",
            5 => "auth failed",
            6 => "timed out",
            7 => "shutdown",
            8 => "buffer limit",
            _ => return None,
        })
    }
}

impl fmt::Display for AbortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "code {}", self.0),
        }
    }
}

/// One frame of a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// MESSAGE (0x01): one message of the sender's stream.
    Message {
        /// The message's sequence number.
        seq: u64,
        /// The message bytes (never empty in a decoded frame).
        payload: Bytes,
    },
    /// FIN (0x02): the sender's stream ends; FIN occupies sequence number
    /// `seq`.
    Fin {
        /// The sequence number the FIN occupies.
        seq: u64,
    },
    /// OPEN (0x03): the client opens the session; the server confirms it.
    Open {
        /// The sender's nonce.
        nonce: [u8; NONCE_LEN],
        /// Client: 0 or the longest hold it wishes; server: its max wait.
        max_wait_ms: u32,
    },
    /// CLOSE (0x04): clean end of the whole session.
    Close,
    /// ABORT (0x05): abort the session.
    Abort {
        /// Why.
        code: AbortCode,
        /// Human-readable reason, valid UTF-8 (checked on decode).
        reason: Bytes,
    },
    /// UNREADABLE (0x06): the bundle exchanged with request `rid` was
    /// unreadable.
    Unreadable {
        /// The request id of the exchange whose bundle was unreadable.
        rid: u64,
    },
    /// An optional extension frame (types `0x80..=0xFF`) this version does
    /// not interpret; kept so it can be re-encoded, ignored by sessions.
    Unknown {
        /// The frame type, `0x80..=0xFF`.
        frame_type: u8,
        /// The frame body.
        body: Bytes,
    },
}

impl Frame {
    /// The frame's type byte.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Message { .. } => TYPE_MESSAGE,
            Frame::Fin { .. } => TYPE_FIN,
            Frame::Open { .. } => TYPE_OPEN,
            Frame::Close => TYPE_CLOSE,
            Frame::Abort { .. } => TYPE_ABORT,
            Frame::Unreadable { .. } => TYPE_UNREADABLE,
            Frame::Unknown { frame_type, .. } => *frame_type,
        }
    }

    /// The number of bytes this frame occupies in a bundle, frame header
    /// included.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN.saturating_add(self.body_len())
    }

    fn body_len(&self) -> usize {
        match self {
            Frame::Message { payload, .. } => payload.len().saturating_add(8),
            Frame::Fin { .. } | Frame::Unreadable { .. } => 8,
            Frame::Open { .. } => OPEN_BODY_LEN,
            Frame::Close => 0,
            Frame::Abort { reason, .. } => reason.len().saturating_add(2),
            Frame::Unknown { body, .. } => body.len(),
        }
    }
}

// ---------------------------------------------------------------------------
// Limits and errors
// ---------------------------------------------------------------------------

/// Bounds a decoder enforces on what the peer sends.
#[derive(Clone, Debug)]
pub struct WireLimits {
    /// Largest bundle accepted, trailer included. Default 4 MiB + 64 KiB.
    pub max_bundle_len: usize,
    /// Largest MESSAGE payload accepted. Default 256 KiB.
    pub max_message_len: usize,
    /// Most SACK ranges accepted in one bundle. Default 32; values above 255
    /// act as 255 (the count is one byte).
    pub max_sack_ranges: usize,
    /// Most frames accepted in one bundle, extension frames included.
    /// Default 8192.
    pub max_frames: usize,
    /// Longest ABORT reason accepted, in bytes. Default 256.
    pub max_reason_len: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_bundle_len: 4 * 1024 * 1024 + 64 * 1024,
            max_message_len: 256 * 1024,
            max_sack_ranges: 32,
            max_frames: 8192,
            max_reason_len: DEFAULT_MAX_REASON_LEN,
        }
    }
}

/// Why a bundle was rejected. Every variant is a fault of the peer (or of the
/// path between the peers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than a header and a CRC (51 bytes).
    TooShort,
    /// Longer than [`WireLimits::max_bundle_len`].
    TooLong,
    /// The CRC-32C trailer does not match the bytes before it.
    ChecksumMismatch,
    /// The bundle does not start with [`MAGIC`].
    BadMagic,
    /// A version other than [`VERSION`]; carries the version byte.
    UnsupportedVersion(u8),
    /// A reserved flag bit (1 to 7) is set; carries the whole flags byte.
    ReservedFlags(u8),
    /// `tag_len` is above [`MAX_TAG_LEN`]; carries it.
    TagTooLong(u8),
    /// `sack_count` is above [`WireLimits::max_sack_ranges`]; carries it.
    TooManySackRanges(u8),
    /// A SACK range is empty, not above the ack, or not strictly after the
    /// previous range (ascending, non-adjacent, non-overlapping).
    BadSackRange,
    /// The tag, the SACK ranges or a frame run past the end of the bundle.
    Truncated,
    /// A frame type that is neither defined nor an optional extension
    /// (`0x00`, `0x07..=0x7F`); carries it.
    UnknownFrameType(u8),
    /// A frame length that its type does not allow.
    BadFrameLength {
        /// The frame type.
        frame_type: u8,
        /// The length field.
        len: u32,
    },
    /// A MESSAGE frame with no payload.
    EmptyMessage,
    /// A MESSAGE payload longer than [`WireLimits::max_message_len`];
    /// carries the payload length.
    MessageTooLong(u32),
    /// More frames than [`WireLimits::max_frames`].
    TooManyFrames,
    /// An ABORT reason longer than [`WireLimits::max_reason_len`] or not
    /// valid UTF-8.
    BadAbortReason,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::TooShort => f.write_str("bundle too short"),
            DecodeError::TooLong => f.write_str("bundle too long"),
            DecodeError::ChecksumMismatch => f.write_str("bundle checksum mismatch"),
            DecodeError::BadMagic => f.write_str("bad bundle magic"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported wire version {v}"),
            DecodeError::ReservedFlags(flags) => write!(f, "reserved flag bits set ({flags:#04x})"),
            DecodeError::TagTooLong(len) => write!(f, "tag length {len} above {MAX_TAG_LEN}"),
            DecodeError::TooManySackRanges(n) => write!(f, "too many sack ranges ({n})"),
            DecodeError::BadSackRange => f.write_str("bad sack range"),
            DecodeError::Truncated => f.write_str("truncated bundle"),
            DecodeError::UnknownFrameType(t) => write!(f, "unknown frame type {t:#04x}"),
            DecodeError::BadFrameLength { frame_type, len } => {
                write!(f, "bad length {len} for frame type {frame_type:#04x}")
            }
            DecodeError::EmptyMessage => f.write_str("empty message frame"),
            DecodeError::MessageTooLong(len) => write!(f, "message too long ({len} bytes)"),
            DecodeError::TooManyFrames => f.write_str("too many frames"),
            DecodeError::BadAbortReason => f.write_str("abort reason too long or not utf-8"),
        }
    }
}

impl core::error::Error for DecodeError {}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// A decoded, fully validated bundle. Zero-copy: it keeps the input `Bytes`
/// and offsets.
#[derive(Clone)]
pub struct Bundle {
    input: Bytes,
    header: Header,
    sack_count: u8,
    tag_len: u8,
    /// Offset of the first frame (end of the SACK ranges).
    frames_start: usize,
    /// Offset one past the last frame (start of the tag).
    frames_end: usize,
    frame_count: usize,
}

impl Bundle {
    /// The fixed header fields.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The SACK ranges, in wire order (ascending, already validated).
    pub fn sacks(&self) -> SackIter<'_> {
        let ranges = self
            .input
            .get(HEADER_LEN..self.frames_start)
            .unwrap_or_default();
        SackIter {
            chunks: ranges.chunks_exact(SACK_RANGE_LEN),
        }
    }

    /// The number of SACK ranges.
    pub fn sack_count(&self) -> usize {
        usize::from(self.sack_count)
    }

    /// The frames, in wire order (already validated). Payloads are `Bytes`
    /// slices of the input.
    ///
    /// The iterator holds a clone of the input `Bytes`. If that `Bytes` was
    /// made from a `Vec<u8>` and never cloned before, `bytes` allocates once
    /// here to make the buffer shared; after that, clones and payload slices
    /// only touch a reference count.
    pub fn frames(&self) -> FrameIter {
        FrameIter {
            input: self.input.clone(),
            pos: self.frames_start,
            end: self.frames_end,
            remaining: self.frame_count,
        }
    }

    /// The number of frames, extension frames included.
    pub fn frame_count(&self) -> usize {
        self.frame_count
    }

    /// The authentication tag; empty when `tag_len` is 0.
    pub fn tag(&self) -> &[u8] {
        let end = self.frames_end.saturating_add(usize::from(self.tag_len));
        self.input.get(self.frames_end..end).unwrap_or_default()
    }

    /// The bytes a tag covers: from offset 0 up to (not including) the tag.
    pub fn signed_bytes(&self) -> &[u8] {
        self.input.get(..self.frames_end).unwrap_or_default()
    }

    /// The whole bundle, CRC included.
    pub fn as_bytes(&self) -> &Bytes {
        &self.input
    }
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("header", &self.header)
            .field("len", &self.input.len())
            .field("sack_count", &self.sack_count)
            .field("frame_count", &self.frame_count)
            .field("tag_len", &self.tag_len)
            .finish()
    }
}

/// Iterator over a bundle's SACK ranges, from [`Bundle::sacks`].
#[derive(Clone, Debug)]
pub struct SackIter<'a> {
    chunks: core::slice::ChunksExact<'a, u8>,
}

impl Iterator for SackIter<'_> {
    type Item = SackRange;

    fn next(&mut self) -> Option<SackRange> {
        let chunk = self.chunks.next()?;
        Some(SackRange {
            start: be_u64(chunk, 0)?,
            end: be_u64(chunk, 8)?,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for SackIter<'_> {}
impl FusedIterator for SackIter<'_> {}

/// Iterator over a bundle's frames, from [`Bundle::frames`].
///
/// It holds its own reference to the bundle's bytes, so it does not borrow
/// the [`Bundle`].
#[derive(Clone, Debug)]
pub struct FrameIter {
    input: Bytes,
    pos: usize,
    end: usize,
    remaining: usize,
}

impl FrameIter {
    /// Reads the frame at `self.pos`. The bytes were validated by [`decode`],
    /// so this only returns `None` if that invariant were broken.
    fn read(&mut self) -> Option<Frame> {
        let rest = self.input.get(self.pos..self.end)?;
        let (frame_type, len) = frame_header(rest)?;
        let body_start = self.pos.checked_add(FRAME_HEADER_LEN)?;
        let body_end = body_start.checked_add(len)?;
        let body = self.input.get(body_start..body_end)?;
        if body_end > self.end {
            return None;
        }
        let frame = match frame_type {
            TYPE_MESSAGE => Frame::Message {
                seq: be_u64(body, 0)?,
                payload: self.input.slice(body_start.checked_add(8)?..body_end),
            },
            TYPE_FIN => Frame::Fin {
                seq: be_u64(body, 0)?,
            },
            TYPE_OPEN => Frame::Open {
                nonce: *body.first_chunk::<NONCE_LEN>()?,
                max_wait_ms: be_u32(body, NONCE_LEN)?,
            },
            TYPE_CLOSE => Frame::Close,
            TYPE_ABORT => Frame::Abort {
                code: AbortCode(be_u16(body, 0)?),
                reason: self.input.slice(body_start.checked_add(2)?..body_end),
            },
            TYPE_UNREADABLE => Frame::Unreadable {
                rid: be_u64(body, 0)?,
            },
            _ => Frame::Unknown {
                frame_type,
                body: self.input.slice(body_start..body_end),
            },
        };
        self.pos = body_end;
        Some(frame)
    }
}

impl Iterator for FrameIter {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.remaining == 0 {
            return None;
        }
        let frame = self.read();
        if frame.is_some() {
            self.remaining -= 1;
        } else {
            // Unreachable for a validated bundle; stay fused regardless.
            self.remaining = 0;
        }
        frame
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for FrameIter {}
impl FusedIterator for FrameIter {}

/// Decodes and fully validates one bundle.
///
/// Checks, in this order: length at least [`HEADER_LEN`] + [`CRC_LEN`],
/// length at most `limits.max_bundle_len`, the CRC, magic, version, flags,
/// `tag_len`, SACK ranges, then each frame in turn. Allocates nothing; the
/// returned [`Bundle`] keeps `input`.
///
/// # Errors
///
/// The first rule the bundle breaks, as a [`DecodeError`]; see
/// `docs/PROTOCOL.md` section 9 for the full order.
pub fn decode(input: Bytes, limits: &WireLimits) -> Result<Bundle, DecodeError> {
    let layout = validate(&input, limits)?;
    Ok(Bundle {
        input,
        header: layout.header,
        sack_count: layout.sack_count,
        tag_len: layout.tag_len,
        frames_start: layout.frames_start,
        frames_end: layout.frames_end,
        frame_count: layout.frame_count,
    })
}

/// Reads only the fixed header fields, after checking length, CRC, magic,
/// version and flags (for routing and error replies).
///
/// A header returned here does not mean the rest of the bundle is valid:
/// `tag_len`, SACK ranges and frames are not checked.
///
/// # Errors
///
/// [`DecodeError::TooShort`], [`DecodeError::TooLong`],
/// [`DecodeError::ChecksumMismatch`], [`DecodeError::BadMagic`],
/// [`DecodeError::UnsupportedVersion`] or [`DecodeError::ReservedFlags`].
pub fn peek_header(input: &[u8], limits: &WireLimits) -> Result<Header, DecodeError> {
    check_envelope(input, limits).map(|(header, _)| header)
}

struct Layout {
    header: Header,
    sack_count: u8,
    tag_len: u8,
    frames_start: usize,
    frames_end: usize,
    frame_count: usize,
}

/// Length, CRC, magic, version and flags. Returns the header and the bundle
/// without its CRC trailer.
fn check_envelope<'a>(
    input: &'a [u8],
    limits: &WireLimits,
) -> Result<(Header, &'a [u8]), DecodeError> {
    if input.len() < HEADER_LEN + CRC_LEN {
        return Err(DecodeError::TooShort);
    }
    if input.len() > limits.max_bundle_len {
        return Err(DecodeError::TooLong);
    }
    let (covered, trailer) = input
        .split_last_chunk::<CRC_LEN>()
        .ok_or(DecodeError::TooShort)?;
    if crc32c(covered) != u32::from_be_bytes(*trailer) {
        return Err(DecodeError::ChecksumMismatch);
    }
    let head = covered
        .first_chunk::<HEADER_LEN>()
        .ok_or(DecodeError::TooShort)?;
    let [m0, m1, version, flags, ..] = *head;
    if [m0, m1] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    if flags & !FLAG_RESPONSE != 0 {
        return Err(DecodeError::ReservedFlags(flags));
    }
    let field =
        |at: usize| -> Result<u64, DecodeError> { be_u64(head, at).ok_or(DecodeError::TooShort) };
    let header = Header {
        response: flags & FLAG_RESPONSE != 0,
        session: SessionId(
            *head
                .get(4..)
                .and_then(<[u8]>::first_chunk::<16>)
                .ok_or(DecodeError::TooShort)?,
        ),
        rid: field(20)?,
        ack: field(28)?,
        window: be_u32(head, 36).ok_or(DecodeError::TooShort)?,
        hold: *head.get(40).ok_or(DecodeError::TooShort)?,
        held_us: be_u32(head, 41).ok_or(DecodeError::TooShort)?,
    };
    Ok((header, covered))
}

fn validate(input: &[u8], limits: &WireLimits) -> Result<Layout, DecodeError> {
    let (header, covered) = check_envelope(input, limits)?;

    let tag_len = *covered.get(OFF_TAG_LEN).ok_or(DecodeError::TooShort)?;
    if usize::from(tag_len) > MAX_TAG_LEN {
        return Err(DecodeError::TagTooLong(tag_len));
    }
    let sack_count = *covered.get(OFF_SACK_COUNT).ok_or(DecodeError::TooShort)?;
    if usize::from(sack_count) > limits.max_sack_ranges {
        return Err(DecodeError::TooManySackRanges(sack_count));
    }

    // The tag is the last thing before the CRC; everything between the
    // header and the tag is SACK ranges, then frames.
    let frames_end = covered
        .len()
        .checked_sub(usize::from(tag_len))
        .filter(|&end| end >= HEADER_LEN)
        .ok_or(DecodeError::Truncated)?;
    let frames_start = HEADER_LEN
        .checked_add(usize::from(sack_count) * SACK_RANGE_LEN)
        .filter(|&start| start <= frames_end)
        .ok_or(DecodeError::Truncated)?;

    let sacks = covered
        .get(HEADER_LEN..frames_start)
        .ok_or(DecodeError::Truncated)?;
    validate_sacks(header.ack, sacks)?;

    let frames = covered
        .get(frames_start..frames_end)
        .ok_or(DecodeError::Truncated)?;
    let frame_count = validate_frames(frames, limits)?;

    Ok(Layout {
        header,
        sack_count,
        tag_len,
        frames_start,
        frames_end,
        frame_count,
    })
}

/// SACK rules: `start < end`; the first start is above `ack`; each start is
/// above the previous end.
fn validate_sacks(ack: u64, ranges: &[u8]) -> Result<(), DecodeError> {
    // Every start must be strictly greater than `floor`.
    let mut floor = ack;
    for chunk in ranges.chunks_exact(SACK_RANGE_LEN) {
        let start = be_u64(chunk, 0).ok_or(DecodeError::Truncated)?;
        let end = be_u64(chunk, 8).ok_or(DecodeError::Truncated)?;
        if start <= floor || end <= start {
            return Err(DecodeError::BadSackRange);
        }
        floor = end;
    }
    Ok(())
}

/// Walks the frame area and checks every frame; returns the frame count.
fn validate_frames(mut rest: &[u8], limits: &WireLimits) -> Result<usize, DecodeError> {
    let mut count = 0usize;
    while !rest.is_empty() {
        let (frame_type, len) = frame_header(rest).ok_or(DecodeError::Truncated)?;
        if count >= limits.max_frames {
            return Err(DecodeError::TooManyFrames);
        }
        if !is_known_or_extension(frame_type) {
            return Err(DecodeError::UnknownFrameType(frame_type));
        }
        let after_header = rest.get(FRAME_HEADER_LEN..).ok_or(DecodeError::Truncated)?;
        let (body, after) = after_header
            .split_at_checked(len)
            .ok_or(DecodeError::Truncated)?;
        validate_frame_body(frame_type, body, limits)?;
        count += 1;
        rest = after;
    }
    Ok(count)
}

fn is_known_or_extension(frame_type: u8) -> bool {
    matches!(frame_type, TYPE_MESSAGE..=TYPE_UNREADABLE) || frame_type >= TYPE_EXTENSION_MIN
}

fn validate_frame_body(
    frame_type: u8,
    body: &[u8],
    limits: &WireLimits,
) -> Result<(), DecodeError> {
    // `body` came from a u32 length, so this conversion cannot saturate.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let bad_length = DecodeError::BadFrameLength { frame_type, len };
    match frame_type {
        TYPE_MESSAGE => {
            let payload_len = body.len().checked_sub(8).ok_or(bad_length)?;
            if payload_len == 0 {
                return Err(DecodeError::EmptyMessage);
            }
            if payload_len > limits.max_message_len {
                return Err(DecodeError::MessageTooLong(len.saturating_sub(8)));
            }
        }
        TYPE_FIN | TYPE_UNREADABLE if body.len() != 8 => return Err(bad_length),
        TYPE_OPEN if body.len() != OPEN_BODY_LEN => return Err(bad_length),
        TYPE_CLOSE if !body.is_empty() => return Err(bad_length),
        TYPE_ABORT => {
            let reason = body.get(2..).ok_or(bad_length)?;
            if reason.len() > limits.max_reason_len || core::str::from_utf8(reason).is_err() {
                return Err(DecodeError::BadAbortReason);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads a frame header: type and body length.
fn frame_header(bytes: &[u8]) -> Option<(u8, usize)> {
    let &[frame_type, l0, l1, l2, l3] = bytes.first_chunk::<FRAME_HEADER_LEN>()?;
    let len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3])).ok()?;
    Some((frame_type, len))
}

fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    bytes
        .get(at..)?
        .first_chunk::<2>()
        .map(|b| u16::from_be_bytes(*b))
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..)?
        .first_chunk::<4>()
        .map(|b| u32::from_be_bytes(*b))
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..)?
        .first_chunk::<8>()
        .map(|b| u64::from_be_bytes(*b))
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Exact encoded size of a bundle: header + sacks + frames (sum of frame
/// encoded lengths) + tag + CRC. Saturates instead of overflowing.
pub fn bundle_len(sack_count: usize, frames_len: usize, tag_len: usize) -> usize {
    HEADER_LEN
        .saturating_add(sack_count.saturating_mul(SACK_RANGE_LEN))
        .saturating_add(frames_len)
        .saturating_add(tag_len)
        .saturating_add(CRC_LEN)
}

/// Appends one bundle to `buf`. Construction writes the header and sacks;
/// frame methods append; finish writes tag and CRC.
///
/// The encoder writes what it is given. Keeping frames within the peer's
/// [`WireLimits`] (bundle length, message length, frame count) is the
/// caller's job; [`bundle_len`] and [`Frame::encoded_len`] give exact sizes.
/// A bundle is only complete after [`finish`](Self::finish) or
/// [`finish_untagged`](Self::finish_untagged); dropping the encoder leaves a
/// partial bundle in `buf`, which the caller should truncate away.
#[derive(Debug)]
pub struct BundleEncoder<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
    tag_len: u8,
}

impl<'a> BundleEncoder<'a> {
    /// Starts a bundle at the end of `buf` and writes its header and SACK
    /// ranges.
    ///
    /// Preconditions (checked with `debug_assert!`): `sacks.len() <= 255`,
    /// `tag_len <= 64`, and `sacks` follow the SACK rules relative to
    /// `header.ack` (non-empty, ascending, non-adjacent, first start above
    /// the ack). In release builds, extra ranges beyond 255 are dropped and
    /// `tag_len` is capped at 64, so the output stays well-formed.
    pub fn new(buf: &'a mut Vec<u8>, header: &Header, sacks: &[SackRange], tag_len: u8) -> Self {
        debug_assert!(sacks.len() <= 255, "at most 255 sack ranges");
        debug_assert!(usize::from(tag_len) <= MAX_TAG_LEN, "tag_len above 64");
        debug_assert!(
            sacks_are_valid(header.ack, sacks),
            "sack ranges break the wire rules"
        );
        let sacks = sacks.get(..255).unwrap_or(sacks);
        let tag_len = tag_len.min(MAX_TAG_LEN as u8);
        let start = buf.len();
        buf.reserve(HEADER_LEN + sacks.len() * SACK_RANGE_LEN);
        buf.extend_from_slice(&MAGIC);
        buf.push(VERSION);
        buf.push(if header.response { FLAG_RESPONSE } else { 0 });
        buf.extend_from_slice(&header.session.0);
        buf.extend_from_slice(&header.rid.to_be_bytes());
        buf.extend_from_slice(&header.ack.to_be_bytes());
        buf.extend_from_slice(&header.window.to_be_bytes());
        buf.push(header.hold);
        buf.extend_from_slice(&header.held_us.to_be_bytes());
        buf.push(tag_len);
        // `sacks` was cut to at most 255 entries above.
        buf.push(sacks.len() as u8);
        for range in sacks {
            buf.extend_from_slice(&range.start.to_be_bytes());
            buf.extend_from_slice(&range.end.to_be_bytes());
        }
        BundleEncoder {
            buf,
            start,
            tag_len,
        }
    }

    /// Appends a MESSAGE frame.
    ///
    /// The payload should be non-empty (`debug_assert!`) and no longer than
    /// the peer's `max_message_len` (default 256 KiB); the peer rejects the
    /// bundle otherwise.
    ///
    /// # Panics
    ///
    /// If `payload.len() + 8` does not fit in a `u32`.
    pub fn message(&mut self, seq: u64, payload: &[u8]) {
        debug_assert!(!payload.is_empty(), "empty MESSAGE payload");
        self.frame_header(TYPE_MESSAGE, payload.len().saturating_add(8));
        self.buf.extend_from_slice(&seq.to_be_bytes());
        self.buf.extend_from_slice(payload);
    }

    /// Appends a FIN frame: the sender's stream ends at `seq`.
    pub fn fin(&mut self, seq: u64) {
        self.frame_header(TYPE_FIN, 8);
        self.buf.extend_from_slice(&seq.to_be_bytes());
    }

    /// Appends an OPEN frame.
    pub fn open(&mut self, nonce: &[u8; NONCE_LEN], max_wait_ms: u32) {
        self.frame_header(TYPE_OPEN, OPEN_BODY_LEN);
        self.buf.extend_from_slice(nonce);
        self.buf.extend_from_slice(&max_wait_ms.to_be_bytes());
    }

    /// Appends a CLOSE frame.
    pub fn close(&mut self) {
        self.frame_header(TYPE_CLOSE, 0);
    }

    /// Appends an ABORT frame.
    ///
    /// Peers reject reasons longer than their `max_reason_len` (default 256
    /// bytes), so `reason` is truncated here to at most 256 bytes, at a char
    /// boundary.
    pub fn abort(&mut self, code: AbortCode, reason: &str) {
        let reason = truncate_at_char_boundary(reason, DEFAULT_MAX_REASON_LEN);
        self.frame_header(TYPE_ABORT, reason.len() + 2);
        self.buf.extend_from_slice(&code.0.to_be_bytes());
        self.buf.extend_from_slice(reason.as_bytes());
    }

    /// Appends an UNREADABLE frame naming request `rid`.
    pub fn unreadable(&mut self, rid: u64) {
        self.frame_header(TYPE_UNREADABLE, 8);
        self.buf.extend_from_slice(&rid.to_be_bytes());
    }

    /// Appends any frame, including [`Frame::Unknown`], exactly as given.
    ///
    /// Unlike [`abort`](Self::abort), an ABORT reason is written unchanged
    /// (so decoded frames re-encode byte for byte). An `Unknown` frame type
    /// should be `0x80..=0xFF` (`debug_assert!`).
    ///
    /// # Panics
    ///
    /// If the frame body is longer than `u32::MAX` bytes.
    pub fn frame(&mut self, frame: &Frame) {
        match frame {
            Frame::Message { seq, payload } => self.message(*seq, payload),
            Frame::Fin { seq } => self.fin(*seq),
            Frame::Open { nonce, max_wait_ms } => self.open(nonce, *max_wait_ms),
            Frame::Close => self.close(),
            Frame::Abort { code, reason } => {
                self.frame_header(TYPE_ABORT, reason.len().saturating_add(2));
                self.buf.extend_from_slice(&code.0.to_be_bytes());
                self.buf.extend_from_slice(reason);
            }
            Frame::Unreadable { rid } => self.unreadable(*rid),
            Frame::Unknown { frame_type, body } => {
                debug_assert!(
                    *frame_type >= TYPE_EXTENSION_MIN,
                    "Frame::Unknown must use an extension type (0x80..=0xFF)"
                );
                self.frame_header(*frame_type, body.len());
                self.buf.extend_from_slice(body);
            }
        }
    }

    /// Bundle bytes written so far by this encoder.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Always `false`: the header is written on construction.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the tag (computed by `sign` over the bytes so far, into a
    /// zeroed slice of `tag_len` bytes) and the CRC. Returns the bundle's total
    /// length.
    ///
    /// `sign` is called even when `tag_len` is 0 (with an empty tag slice).
    pub fn finish(self, sign: impl FnOnce(&[u8], &mut [u8])) -> usize {
        let signed_end = self.buf.len();
        self.buf.resize(signed_end + usize::from(self.tag_len), 0);
        let (signed, tag) = self.buf.split_at_mut(signed_end);
        sign(&signed[self.start..], tag);
        let crc = crc32c(&self.buf[self.start..]);
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.buf.len() - self.start
    }

    /// Writes the CRC of a bundle without a tag. Returns the bundle's total
    /// length.
    ///
    /// For `tag_len == 0` (`debug_assert!`); with a non-zero `tag_len` it
    /// writes an all-zero tag.
    pub fn finish_untagged(self) -> usize {
        debug_assert_eq!(self.tag_len, 0, "finish_untagged with a non-zero tag_len");
        self.finish(|_, _| {})
    }

    fn frame_header(&mut self, frame_type: u8, body_len: usize) {
        let len = u32::try_from(body_len).expect("frame body longer than u32::MAX bytes");
        self.buf.push(frame_type);
        self.buf.extend_from_slice(&len.to_be_bytes());
    }
}

fn sacks_are_valid(ack: u64, sacks: &[SackRange]) -> bool {
    let mut floor = ack;
    sacks.iter().all(|r| {
        let ok = r.start > floor && r.end > r.start;
        floor = r.end;
        ok
    })
}

fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// CRC-32C
// ---------------------------------------------------------------------------

/// CRC-32C of `data`.
///
/// CRC-32C (Castagnoli): reflected polynomial `0x1EDC6F41` (`0x82F63B78`
/// reversed), initial value `0xFFFFFFFF`, final xor `0xFFFFFFFF`; the check
/// value of `"123456789"` is `0xE3069283`. With the `std` feature this uses
/// the `crc32c` crate (SSE 4.2 / `ARMv8` CRC instructions, detected at run
/// time); without it, a portable slice-by-16 table.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    #[cfg(feature = "std")]
    {
        ::crc32c::crc32c(data)
    }
    #[cfg(not(feature = "std"))]
    {
        crc32c_sw(data)
    }
}

/// The portable CRC-32C: slice-by-16 over 16 KiB of tables built at compile
/// time.
#[cfg_attr(all(feature = "std", not(test)), allow(dead_code))]
fn crc32c_sw(data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        let x = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = t[15][usize::from(x as u8)]
            ^ t[14][usize::from((x >> 8) as u8)]
            ^ t[13][usize::from((x >> 16) as u8)]
            ^ t[12][usize::from((x >> 24) as u8)]
            ^ t[11][usize::from(c[4])]
            ^ t[10][usize::from(c[5])]
            ^ t[9][usize::from(c[6])]
            ^ t[8][usize::from(c[7])]
            ^ t[7][usize::from(c[8])]
            ^ t[6][usize::from(c[9])]
            ^ t[5][usize::from(c[10])]
            ^ t[4][usize::from(c[11])]
            ^ t[3][usize::from(c[12])]
            ^ t[2][usize::from(c[13])]
            ^ t[1][usize::from(c[14])]
            ^ t[0][usize::from(c[15])];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][usize::from(crc as u8 ^ b)];
    }
    !crc
}

#[cfg_attr(all(feature = "std", not(test)), allow(dead_code))]
static CRC_TABLES: [[u32; 256]; 16] = crc_tables();

#[cfg_attr(all(feature = "std", not(test)), allow(dead_code))]
const fn crc_tables() -> [[u32; 256]; 16] {
    const POLY_REVERSED: u32 = 0x82F6_3B78;
    let mut tables = [[0u32; 256]; 16];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY_REVERSED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][i] = crc;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut k = 1;
        while k < 16 {
            let prev = tables[k - 1][i];
            tables[k][i] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            k += 1;
        }
        i += 1;
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;
    use core::fmt::Write as _;
    use proptest::prelude::*;

    // ----- helpers --------------------------------------------------------

    fn limits() -> WireLimits {
        WireLimits::default()
    }

    fn dec(bytes: &[u8]) -> Result<Bundle, DecodeError> {
        decode(Bytes::copy_from_slice(bytes), &limits())
    }

    fn dec_with(bytes: &[u8], limits: &WireLimits) -> Result<Bundle, DecodeError> {
        decode(Bytes::copy_from_slice(bytes), limits)
    }

    /// Everything needed to encode one bundle.
    #[derive(Clone, Debug)]
    struct Spec {
        header: Header,
        sacks: Vec<SackRange>,
        frames: Vec<Frame>,
        tag: Vec<u8>,
    }

    fn encode(spec: &Spec) -> Vec<u8> {
        let mut buf = Vec::new();
        let tag_len = u8::try_from(spec.tag.len()).expect("test tag fits in u8");
        let mut enc = BundleEncoder::new(&mut buf, &spec.header, &spec.sacks, tag_len);
        for frame in &spec.frames {
            enc.frame(frame);
        }
        enc.finish(|_, tag| tag.copy_from_slice(&spec.tag));
        buf
    }

    /// Re-encodes a decoded bundle from its parts (header, sacks, frames and
    /// the tag bytes copied through `finish`).
    fn reencode(bundle: &Bundle) -> Vec<u8> {
        let sacks: Vec<SackRange> = bundle.sacks().collect();
        let mut buf = Vec::new();
        let tag_len = u8::try_from(bundle.tag().len()).expect("tag_len is a u8");
        let mut enc = BundleEncoder::new(&mut buf, bundle.header(), &sacks, tag_len);
        for frame in bundle.frames() {
            enc.frame(&frame);
        }
        let n = enc.finish(|_, tag| tag.copy_from_slice(bundle.tag()));
        assert_eq!(n, buf.len());
        buf
    }

    /// Rewrites the CRC trailer after a test patched the bytes before it.
    fn reseal(bytes: &mut [u8]) {
        let n = bytes.len() - CRC_LEN;
        let crc = crc32c(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_be_bytes());
    }

    /// A bundle with `raw` as its frame area (no tag), for frames the
    /// encoder would not write.
    fn raw_bundle(header: &Header, sacks: &[SackRange], raw: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        BundleEncoder::new(&mut buf, header, sacks, 0).finish_untagged();
        buf.truncate(buf.len() - CRC_LEN);
        buf.extend_from_slice(raw);
        buf.extend_from_slice(&[0; CRC_LEN]);
        reseal(&mut buf);
        buf
    }

    fn raw_frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![frame_type];
        v.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn sample_header() -> Header {
        Header {
            response: true,
            session: SessionId([0x42; 16]),
            rid: 9,
            ack: 100,
            window: 65536,
            hold: 2,
            held_us: 1234,
        }
    }

    fn sample_spec() -> Spec {
        Spec {
            header: sample_header(),
            sacks: vec![
                SackRange {
                    start: 102,
                    end: 104,
                },
                SackRange {
                    start: 110,
                    end: 111,
                },
            ],
            frames: vec![
                Frame::Open {
                    nonce: [7; 16],
                    max_wait_ms: 25_000,
                },
                Frame::Message {
                    seq: 5,
                    payload: Bytes::from_static(b"hello"),
                },
                Frame::Message {
                    seq: 6,
                    payload: Bytes::from(vec![0xAB; 1000]),
                },
                Frame::Fin { seq: 7 },
                Frame::Close,
                Frame::Abort {
                    code: AbortCode::SHUTDOWN,
                    reason: Bytes::from_static("bye, ünïcode".as_bytes()),
                },
                Frame::Unreadable { rid: 8 },
                Frame::Unknown {
                    frame_type: 0x80,
                    body: Bytes::new(),
                },
                Frame::Unknown {
                    frame_type: 0xFF,
                    body: Bytes::from_static(b"ext"),
                },
            ],
            tag: (0..32).collect(),
        }
    }

    /// Proptest case count: `n` locally, `PROPTEST_CASES` when it is set (an
    /// explicit `with_cases` would otherwise override the variable).
    fn cases(n: u32) -> ProptestConfig {
        if std::env::var_os("PROPTEST_CASES").is_some() {
            ProptestConfig::default()
        } else {
            ProptestConfig::with_cases(n)
        }
    }

    // ----- CRC ------------------------------------------------------------

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_sw(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c_sw(b""), 0);
        // RFC 3720 (iSCSI) B.4 test vectors.
        assert_eq!(crc32c_sw(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c_sw(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c_sw(&ascending), 0x46DD_794E);
    }

    // ----- SessionId and AbortCode ------------------------------------------

    #[test]
    fn session_id_hex() {
        let id = SessionId([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        let text = "00112233445566778899aabbccddeeff";
        assert_eq!(alloc::format!("{id}"), text);
        assert_eq!(alloc::format!("{id:?}"), text);
        let mut out = [0u8; 32];
        id.write_hex(&mut out);
        assert_eq!(&out[..], text.as_bytes());
        assert_eq!(SessionId::parse_hex(text.as_bytes()), Some(id));
        assert_eq!(
            SessionId::parse_hex(b"00112233445566778899AABBCCDDEEFF"),
            Some(id)
        );
        assert_eq!(
            SessionId::parse_hex(b"00112233445566778899aAbBcCdDeEfF"),
            Some(id)
        );
        assert_eq!(SessionId::parse_hex(&text.as_bytes()[..31]), None);
        assert_eq!(
            SessionId::parse_hex(b"00112233445566778899aabbccddeeff0"),
            None
        );
        assert_eq!(
            SessionId::parse_hex(b"0011223344556677889gaabbccddeeff"),
            None
        );
        assert_eq!(
            SessionId::parse_hex(b"+0112233445566778899aabbccddeeff"),
            None
        );
        assert_eq!(SessionId::parse_hex(b""), None);
    }

    #[test]
    fn abort_code_display() {
        let names = [
            (AbortCode::UNSPECIFIED, "unspecified"),
            (AbortCode::APPLICATION, "application"),
            (AbortCode::PROTOCOL_VIOLATION, "protocol violation"),
            (AbortCode::UNKNOWN_SESSION, "unknown session"),
            (AbortCode::SESSION_LIMIT, "session limit"),
            (AbortCode::AUTH_FAILED, "auth failed"),
            (AbortCode::TIMED_OUT, "timed out"),
            (AbortCode::SHUTDOWN, "shutdown"),
            (AbortCode::BUFFER_LIMIT, "buffer limit"),
        ];
        for (i, (code, name)) in names.iter().enumerate() {
            assert_eq!(code.0 as usize, i);
            assert_eq!(alloc::format!("{code}"), *name);
        }
        assert_eq!(alloc::format!("{}", AbortCode(77)), "code 77");
        assert_eq!(AbortCode(9).name(), None);
    }

    // ----- round trips ------------------------------------------------------

    #[test]
    fn round_trip_every_frame_kind() {
        let spec = sample_spec();
        let bytes = encode(&spec);
        let frames_len: usize = spec.frames.iter().map(Frame::encoded_len).sum();
        assert_eq!(
            bytes.len(),
            bundle_len(spec.sacks.len(), frames_len, spec.tag.len())
        );

        let bundle = dec(&bytes).expect("valid bundle");
        assert_eq!(bundle.header(), &spec.header);
        assert_eq!(bundle.sack_count(), spec.sacks.len());
        assert_eq!(bundle.sacks().len(), spec.sacks.len());
        assert_eq!(bundle.sacks().collect::<Vec<_>>(), spec.sacks);
        assert_eq!(bundle.frame_count(), spec.frames.len());
        assert_eq!(bundle.frames().len(), spec.frames.len());
        assert_eq!(bundle.frames().collect::<Vec<_>>(), spec.frames);
        assert_eq!(bundle.tag(), &spec.tag[..]);
        let tag_at = bytes.len() - CRC_LEN - spec.tag.len();
        assert_eq!(bundle.signed_bytes(), &bytes[..tag_at]);
        assert_eq!(&bundle.as_bytes()[..], &bytes[..]);
        assert_eq!(reencode(&bundle), bytes);
        assert_eq!(peek_header(&bytes, &limits()), Ok(spec.header));
    }

    #[test]
    fn round_trip_minimal_bundle() {
        let mut buf = Vec::new();
        let header = Header::default();
        let enc = BundleEncoder::new(&mut buf, &header, &[], 0);
        assert_eq!(enc.len(), HEADER_LEN);
        assert!(!enc.is_empty());
        assert_eq!(enc.finish_untagged(), HEADER_LEN + CRC_LEN);
        let bundle = dec(&buf).unwrap();
        assert_eq!(bundle.header(), &header);
        assert_eq!(bundle.sacks().count(), 0);
        assert_eq!(bundle.frames().count(), 0);
        assert!(bundle.tag().is_empty());
        assert_eq!(bundle.signed_bytes(), &buf[..HEADER_LEN]);
        assert_eq!(reencode(&bundle), buf);
    }

    #[test]
    fn encoder_appends_after_existing_bytes() {
        let spec = sample_spec();
        let alone = encode(&spec);
        let mut buf = b"HTTP head".to_vec();
        let mut enc = BundleEncoder::new(&mut buf, &spec.header, &spec.sacks, 32);
        assert_eq!(enc.len(), HEADER_LEN + 2 * SACK_RANGE_LEN);
        for frame in &spec.frames {
            let before = enc.len();
            enc.frame(frame);
            assert_eq!(enc.len() - before, frame.encoded_len());
        }
        let mut seen = Vec::new();
        let n = enc.finish(|signed, tag| {
            seen.extend_from_slice(signed);
            assert!(tag.iter().all(|&b| b == 0), "tag slice starts zeroed");
            tag.copy_from_slice(&spec.tag);
        });
        assert_eq!(n, alone.len());
        assert_eq!(&buf[..9], b"HTTP head");
        assert_eq!(&buf[9..], &alone[..]);
        assert_eq!(seen, dec(&alone).unwrap().signed_bytes());
    }

    #[test]
    fn frame_methods_match_frame() {
        let header = sample_header();
        let mut a = Vec::new();
        let mut enc = BundleEncoder::new(&mut a, &header, &[], 0);
        enc.message(1, b"x");
        enc.fin(2);
        enc.open(&[3; 16], 4);
        enc.close();
        enc.abort(AbortCode::APPLICATION, "why");
        enc.unreadable(5);
        enc.finish_untagged();
        let frames = [
            Frame::Message {
                seq: 1,
                payload: Bytes::from_static(b"x"),
            },
            Frame::Fin { seq: 2 },
            Frame::Open {
                nonce: [3; 16],
                max_wait_ms: 4,
            },
            Frame::Close,
            Frame::Abort {
                code: AbortCode::APPLICATION,
                reason: Bytes::from_static(b"why"),
            },
            Frame::Unreadable { rid: 5 },
        ];
        let mut b = Vec::new();
        let mut enc = BundleEncoder::new(&mut b, &header, &[], 0);
        for f in &frames {
            enc.frame(f);
        }
        enc.finish_untagged();
        assert_eq!(a, b);
        assert_eq!(dec(&a).unwrap().frames().collect::<Vec<_>>(), frames);
    }

    #[test]
    fn abort_reason_truncated_at_char_boundary() {
        for (reason, want_len) in [
            ("é".repeat(200), 256), // 2-byte chars: 256 is a boundary
            ("€".repeat(100), 255), // 3-byte chars: 255 is the last boundary
            ("a".repeat(256), 256),
            ("a".repeat(10), 10),
        ] {
            let mut buf = Vec::new();
            let mut enc = BundleEncoder::new(&mut buf, &Header::default(), &[], 0);
            enc.abort(AbortCode::TIMED_OUT, &reason);
            enc.finish_untagged();
            let frame = dec(&buf).unwrap().frames().next().unwrap();
            let Frame::Abort { code, reason: got } = frame else {
                panic!("expected abort, got {frame:?}");
            };
            assert_eq!(code, AbortCode::TIMED_OUT);
            assert_eq!(got.len(), want_len);
            assert!(reason.as_bytes().starts_with(&got));
        }
    }

    #[test]
    fn payloads_are_slices_of_the_input() {
        let bytes = Bytes::from(encode(&sample_spec()));
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        let bundle = decode(bytes.clone(), &limits()).unwrap();
        let mut checked = 0;
        for frame in bundle.frames() {
            if let Frame::Message { payload, .. } | Frame::Unknown { body: payload, .. } = frame {
                if !payload.is_empty() {
                    assert!(range.contains(&(payload.as_ptr() as usize)));
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3);
        // The iterator owns its bytes: it outlives the bundle.
        let mut frames = bundle.frames();
        drop(bundle);
        assert!(frames.next().is_some());
        assert_eq!(frames.len(), 8);
    }

    #[test]
    fn unknown_extension_frames_are_kept_and_counted() {
        let raw: Vec<u8> = [
            raw_frame(0x80, b""),
            raw_frame(0x9A, &[1, 2, 3]),
            raw_frame(TYPE_CLOSE, b""),
        ]
        .concat();
        let bytes = raw_bundle(&Header::default(), &[], &raw);
        let bundle = dec(&bytes).unwrap();
        assert_eq!(bundle.frame_count(), 3);
        assert_eq!(reencode(&bundle), bytes);
        let tight = WireLimits {
            max_frames: 2,
            ..limits()
        };
        assert_eq!(
            dec_with(&bytes, &tight).unwrap_err(),
            DecodeError::TooManyFrames
        );
    }

    #[test]
    fn limits_are_inclusive() {
        let header = sample_header();
        // max_message_len
        let mut buf = Vec::new();
        let mut enc = BundleEncoder::new(&mut buf, &header, &[], 0);
        enc.message(1, &[9; 100]);
        enc.finish_untagged();
        let at = WireLimits {
            max_message_len: 100,
            ..limits()
        };
        assert!(dec_with(&buf, &at).is_ok());
        let below = WireLimits {
            max_message_len: 99,
            ..limits()
        };
        assert_eq!(
            dec_with(&buf, &below).unwrap_err(),
            DecodeError::MessageTooLong(100)
        );

        // max_bundle_len
        let at = WireLimits {
            max_bundle_len: buf.len(),
            ..limits()
        };
        assert!(dec_with(&buf, &at).is_ok());
        assert!(peek_header(&buf, &at).is_ok());
        let below = WireLimits {
            max_bundle_len: buf.len() - 1,
            ..limits()
        };
        assert_eq!(dec_with(&buf, &below).unwrap_err(), DecodeError::TooLong);
        assert_eq!(peek_header(&buf, &below).unwrap_err(), DecodeError::TooLong);

        // max_reason_len
        let mut buf = Vec::new();
        let mut enc = BundleEncoder::new(&mut buf, &header, &[], 0);
        enc.abort(AbortCode::APPLICATION, "0123456789");
        enc.finish_untagged();
        let at = WireLimits {
            max_reason_len: 10,
            ..limits()
        };
        assert!(dec_with(&buf, &at).is_ok());
        let below = WireLimits {
            max_reason_len: 9,
            ..limits()
        };
        assert_eq!(
            dec_with(&buf, &below).unwrap_err(),
            DecodeError::BadAbortReason
        );

        // max_sack_ranges and max_frames
        let sacks: Vec<SackRange> = (0..4)
            .map(|i| SackRange {
                start: header.ack + 1 + 10 * i,
                end: header.ack + 5 + 10 * i,
            })
            .collect();
        let mut buf = Vec::new();
        let mut enc = BundleEncoder::new(&mut buf, &header, &sacks, 0);
        for i in 0..3 {
            enc.fin(i);
        }
        enc.finish_untagged();
        let at = WireLimits {
            max_sack_ranges: 4,
            max_frames: 3,
            ..limits()
        };
        assert!(dec_with(&buf, &at).is_ok());
        let fewer_sacks = WireLimits {
            max_sack_ranges: 3,
            ..at.clone()
        };
        assert_eq!(
            dec_with(&buf, &fewer_sacks).unwrap_err(),
            DecodeError::TooManySackRanges(4)
        );
        let fewer_frames = WireLimits {
            max_frames: 2,
            ..at
        };
        assert_eq!(
            dec_with(&buf, &fewer_frames).unwrap_err(),
            DecodeError::TooManyFrames
        );
    }

    #[test]
    fn max_sack_and_tag_sizes_decode() {
        let mut header = sample_header();
        header.ack = 0;
        let sacks: Vec<SackRange> = (0..255u64)
            .map(|i| SackRange {
                start: 2 * i + 1,
                end: 2 * i + 2,
            })
            .collect();
        let spec = Spec {
            header,
            sacks,
            frames: vec![Frame::Close],
            tag: vec![0xEE; MAX_TAG_LEN],
        };
        let bytes = encode(&spec);
        let wide = WireLimits {
            max_sack_ranges: 1000,
            ..limits()
        };
        let bundle = dec_with(&bytes, &wide).unwrap();
        assert_eq!(bundle.sack_count(), 255);
        assert_eq!(bundle.tag().len(), MAX_TAG_LEN);
        assert_eq!(reencode(&bundle), bytes);
    }

    #[test]
    fn peek_header_skips_the_body_checks() {
        let header = sample_header();
        let bytes = raw_bundle(&header, &[], &raw_frame(0x42, b""));
        assert_eq!(
            dec(&bytes).unwrap_err(),
            DecodeError::UnknownFrameType(0x42)
        );
        assert_eq!(peek_header(&bytes, &limits()), Ok(header));
        let mut bad = bytes.clone();
        bad[3] = 0x02;
        reseal(&mut bad);
        assert_eq!(
            peek_header(&bad, &limits()).unwrap_err(),
            DecodeError::ReservedFlags(0x02)
        );
        let mut bad = bytes;
        bad[10] ^= 1;
        assert_eq!(
            peek_header(&bad, &limits()).unwrap_err(),
            DecodeError::ChecksumMismatch
        );
        assert_eq!(
            peek_header(&[], &limits()).unwrap_err(),
            DecodeError::TooShort
        );
    }

    // ----- every DecodeError variant ----------------------------------------

    /// Index of a variant, exhaustively: adding a variant breaks this match
    /// until `every_decode_error_variant` produces it too.
    fn variant(e: DecodeError) -> usize {
        match e {
            DecodeError::TooShort => 0,
            DecodeError::TooLong => 1,
            DecodeError::ChecksumMismatch => 2,
            DecodeError::BadMagic => 3,
            DecodeError::UnsupportedVersion(_) => 4,
            DecodeError::ReservedFlags(_) => 5,
            DecodeError::TagTooLong(_) => 6,
            DecodeError::TooManySackRanges(_) => 7,
            DecodeError::BadSackRange => 8,
            DecodeError::Truncated => 9,
            DecodeError::UnknownFrameType(_) => 10,
            DecodeError::BadFrameLength { .. } => 11,
            DecodeError::EmptyMessage => 12,
            DecodeError::MessageTooLong(_) => 13,
            DecodeError::TooManyFrames => 14,
            DecodeError::BadAbortReason => 15,
        }
    }
    const VARIANTS: usize = 16;

    /// Bundles that must fail, with the error each must produce.
    fn bad_bundles() -> Vec<(&'static str, Vec<u8>, WireLimits, DecodeError)> {
        let h = sample_header();
        let l = limits();
        let good = raw_bundle(&h, &[], &raw_frame(TYPE_CLOSE, b""));
        let patched = |at: usize, value: u8| {
            let mut b = good.clone();
            b[at] = value;
            reseal(&mut b);
            b
        };
        let sack = |start: u64, end: u64| SackRange { start, end };
        // Writes sack ranges the encoder would refuse (it debug_asserts them).
        let with_sacks = |ranges: &[(u64, u64)]| {
            let placeholders: Vec<SackRange> = (0..ranges.len() as u64)
                .map(|i| sack(h.ack + 1 + 2 * i, h.ack + 2 + 2 * i))
                .collect();
            let mut b = raw_bundle(&h, &placeholders, b"");
            for (i, (start, end)) in ranges.iter().enumerate() {
                let at = HEADER_LEN + i * SACK_RANGE_LEN;
                b[at..at + 8].copy_from_slice(&start.to_be_bytes());
                b[at + 8..at + 16].copy_from_slice(&end.to_be_bytes());
            }
            reseal(&mut b);
            b
        };
        let frames = |raw: &[Vec<u8>]| raw_bundle(&h, &[], &raw.concat());
        let bad_len = |frame_type: u8, len: u32| DecodeError::BadFrameLength { frame_type, len };
        let mut flipped = good.clone();
        flipped[HEADER_LEN] ^= 0x10;
        let mut short_crc = good.clone();
        short_crc.truncate(HEADER_LEN + CRC_LEN - 1);
        let ack = h.ack;
        vec![
            ("empty", vec![], l.clone(), DecodeError::TooShort),
            ("50 bytes", short_crc, l.clone(), DecodeError::TooShort),
            (
                "over max_bundle_len",
                good.clone(),
                WireLimits {
                    max_bundle_len: good.len() - 1,
                    ..l.clone()
                },
                DecodeError::TooLong,
            ),
            (
                "flipped bit",
                flipped,
                l.clone(),
                DecodeError::ChecksumMismatch,
            ),
            ("magic", patched(1, b'W'), l.clone(), DecodeError::BadMagic),
            (
                "version 0",
                patched(2, 0),
                l.clone(),
                DecodeError::UnsupportedVersion(0),
            ),
            (
                "version 2",
                patched(2, 2),
                l.clone(),
                DecodeError::UnsupportedVersion(2),
            ),
            (
                "flag bit 7",
                patched(3, 0x81),
                l.clone(),
                DecodeError::ReservedFlags(0x81),
            ),
            (
                "flag bit 1",
                patched(3, 0x02),
                l.clone(),
                DecodeError::ReservedFlags(0x02),
            ),
            (
                "tag_len 65",
                patched(OFF_TAG_LEN, 65),
                l.clone(),
                DecodeError::TagTooLong(65),
            ),
            (
                "tag_len 255",
                patched(OFF_TAG_LEN, 255),
                l.clone(),
                DecodeError::TagTooLong(255),
            ),
            (
                "sack_count 33",
                patched(OFF_SACK_COUNT, 33),
                l.clone(),
                DecodeError::TooManySackRanges(33),
            ),
            (
                "tag past header",
                patched(OFF_TAG_LEN, 6),
                l.clone(),
                DecodeError::Truncated,
            ),
            (
                "sacks past end",
                patched(OFF_SACK_COUNT, 1),
                l.clone(),
                DecodeError::Truncated,
            ),
            (
                "sack start == ack",
                with_sacks(&[(ack, ack + 1)]),
                l.clone(),
                DecodeError::BadSackRange,
            ),
            (
                "sack below ack",
                with_sacks(&[(1, 2)]),
                l.clone(),
                DecodeError::BadSackRange,
            ),
            (
                "empty sack",
                with_sacks(&[(ack + 2, ack + 2)]),
                l.clone(),
                DecodeError::BadSackRange,
            ),
            (
                "reversed sack",
                with_sacks(&[(ack + 3, ack + 2)]),
                l.clone(),
                DecodeError::BadSackRange,
            ),
            (
                "adjacent sacks",
                with_sacks(&[(ack + 2, ack + 4), (ack + 4, ack + 6)]),
                l.clone(),
                DecodeError::BadSackRange,
            ),
            (
                "overlapping sacks",
                with_sacks(&[(ack + 2, ack + 5), (ack + 4, ack + 6)]),
                l.clone(),
                DecodeError::BadSackRange,
            ),
            (
                "descending sacks",
                with_sacks(&[(ack + 8, ack + 9), (ack + 2, ack + 3)]),
                l.clone(),
                DecodeError::BadSackRange,
            ),
            (
                "frame header cut",
                frames(&[vec![TYPE_CLOSE, 0, 0]]),
                l.clone(),
                DecodeError::Truncated,
            ),
            (
                "frame body cut",
                frames(&[vec![TYPE_FIN, 0, 0, 0, 8, 1, 2, 3]]),
                l.clone(),
                DecodeError::Truncated,
            ),
            (
                "frame len u32::MAX",
                frames(&[vec![0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0]]),
                l.clone(),
                DecodeError::Truncated,
            ),
            (
                "type 0x00",
                frames(&[raw_frame(0x00, b"")]),
                l.clone(),
                DecodeError::UnknownFrameType(0),
            ),
            (
                "type 0x07",
                frames(&[raw_frame(0x07, b"")]),
                l.clone(),
                DecodeError::UnknownFrameType(7),
            ),
            (
                "type 0x7f",
                frames(&[raw_frame(0x7F, &[1; 9])]),
                l.clone(),
                DecodeError::UnknownFrameType(0x7F),
            ),
            (
                "message len 7",
                frames(&[raw_frame(TYPE_MESSAGE, &[0; 7])]),
                l.clone(),
                bad_len(1, 7),
            ),
            (
                "fin len 7",
                frames(&[raw_frame(TYPE_FIN, &[0; 7])]),
                l.clone(),
                bad_len(2, 7),
            ),
            (
                "fin len 9",
                frames(&[raw_frame(TYPE_FIN, &[0; 9])]),
                l.clone(),
                bad_len(2, 9),
            ),
            (
                "open len 19",
                frames(&[raw_frame(TYPE_OPEN, &[0; 19])]),
                l.clone(),
                bad_len(3, 19),
            ),
            (
                "open len 21",
                frames(&[raw_frame(TYPE_OPEN, &[0; 21])]),
                l.clone(),
                bad_len(3, 21),
            ),
            (
                "close len 1",
                frames(&[raw_frame(TYPE_CLOSE, &[0])]),
                l.clone(),
                bad_len(4, 1),
            ),
            (
                "abort len 1",
                frames(&[raw_frame(TYPE_ABORT, &[0])]),
                l.clone(),
                bad_len(5, 1),
            ),
            (
                "unreadable len 0",
                frames(&[raw_frame(TYPE_UNREADABLE, b"")]),
                l.clone(),
                bad_len(6, 0),
            ),
            (
                "empty message",
                frames(&[raw_frame(TYPE_MESSAGE, &[0; 8])]),
                l.clone(),
                DecodeError::EmptyMessage,
            ),
            (
                "message over limit",
                frames(&[raw_frame(TYPE_MESSAGE, &[0; 8 + 17])]),
                WireLimits {
                    max_message_len: 16,
                    ..l.clone()
                },
                DecodeError::MessageTooLong(17),
            ),
            (
                "too many frames",
                frames(&[
                    raw_frame(0x80, b""),
                    raw_frame(0x81, b""),
                    raw_frame(0x82, b""),
                ]),
                WireLimits {
                    max_frames: 2,
                    ..l.clone()
                },
                DecodeError::TooManyFrames,
            ),
            (
                "zero frames allowed",
                frames(&[raw_frame(0x80, b"")]),
                WireLimits {
                    max_frames: 0,
                    ..l.clone()
                },
                DecodeError::TooManyFrames,
            ),
            (
                "abort reason not utf-8",
                frames(&[raw_frame(TYPE_ABORT, &[0, 1, b'a', 0xC3])]),
                l.clone(),
                DecodeError::BadAbortReason,
            ),
            (
                "abort reason over limit",
                frames(&[raw_frame(TYPE_ABORT, &[0, 1, b'a', b'b', b'c'])]),
                WireLimits {
                    max_reason_len: 2,
                    ..l
                },
                DecodeError::BadAbortReason,
            ),
        ]
    }

    #[test]
    fn every_decode_error_variant() {
        let mut seen = [false; VARIANTS];
        for (name, bytes, limits, want) in bad_bundles() {
            let got = dec_with(&bytes, &limits).map(|b| b.header().rid);
            assert_eq!(got, Err(want), "{name}");
            seen[variant(want)] = true;
            // Display is short and lowercase.
            let text = alloc::format!("{want}");
            assert!(!text.is_empty() && text.len() < 60, "{name}: {text}");
            assert_eq!(text, text.to_lowercase(), "{name}");
        }
        assert!(seen.iter().all(|&s| s), "variants never produced: {seen:?}");
    }

    #[test]
    fn decode_order_checks_crc_before_the_header() {
        // A bad magic with a bad CRC reports the CRC.
        let mut b = raw_bundle(&sample_header(), &[], b"");
        b[0] = 0;
        assert_eq!(dec(&b).unwrap_err(), DecodeError::ChecksumMismatch);
        // Too long is reported before the CRC is even computed.
        let tiny = WireLimits {
            max_bundle_len: 10,
            ..limits()
        };
        assert_eq!(dec_with(&b, &tiny).unwrap_err(), DecodeError::TooLong);
    }

    // ----- documented examples ----------------------------------------------

    const DOC: &str = include_str!("../../docs/PROTOCOL.md");

    fn example_session() -> SessionId {
        SessionId::parse_hex(b"00112233445566778899aabbccddeeff").unwrap()
    }

    /// Example 1: a client's first request, OPEN and one MESSAGE "hello".
    fn example_client_open() -> Vec<u8> {
        let header = Header {
            response: false,
            session: example_session(),
            rid: 1,
            ack: 0,
            window: 262_144,
            hold: 1,
            held_us: 0,
        };
        let nonce: [u8; 16] = core::array::from_fn(|i| 0xA0 + i as u8);
        let mut buf = Vec::new();
        let mut enc = BundleEncoder::new(&mut buf, &header, &[], 0);
        enc.open(&nonce, 30_000);
        enc.message(0, b"hello");
        enc.finish_untagged();
        buf
    }

    /// Example 2: a server response with an ack, one SACK range and a FIN.
    fn example_server_fin() -> Vec<u8> {
        let header = Header {
            response: true,
            session: example_session(),
            rid: 7,
            ack: 3,
            window: 262_144,
            hold: 1,
            held_us: 1500,
        };
        let mut buf = Vec::new();
        let mut enc = BundleEncoder::new(&mut buf, &header, &[SackRange { start: 5, end: 7 }], 0);
        enc.fin(12);
        enc.finish_untagged();
        buf
    }

    /// Example 3: a tagged client bundle carrying CLOSE (placeholder tag).
    fn example_tagged_close() -> Vec<u8> {
        let header = Header {
            response: false,
            session: example_session(),
            rid: 8,
            ack: 13,
            window: 262_144,
            hold: 0,
            held_us: 0,
        };
        let mut buf = Vec::new();
        let mut enc = BundleEncoder::new(&mut buf, &header, &[], 16);
        enc.close();
        enc.finish(|_, tag| tag.fill(0x5A));
        buf
    }

    const EXAMPLE_CLIENT_OPEN: &str = "
        6877 01 00 00112233445566778899aabbccddeeff 0000000000000001 0000000000000000
        00040000 01 00000000 00 00
        03 00000014 a0a1a2a3a4a5a6a7a8a9aaabacadaeaf 00007530
        01 0000000d 0000000000000000 68656c6c6f
        29b775c7";
    const EXAMPLE_SERVER_FIN: &str = "
        6877 01 01 00112233445566778899aabbccddeeff 0000000000000007 0000000000000003
        00040000 01 000005dc 00 01
        0000000000000005 0000000000000007
        02 00000008 000000000000000c
        3eecb270";
    const EXAMPLE_TAGGED_CLOSE: &str = "
        6877 01 00 00112233445566778899aabbccddeeff 0000000000000008 000000000000000d
        00040000 00 00000000 10 00
        04 00000000
        5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a
        262e1f64";

    fn unhex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| (hex_value(pair[0]).unwrap() << 4) | hex_value(pair[1]).unwrap())
            .collect()
    }

    /// Reads the annotated hex dump that follows `<!-- example: NAME -->` in
    /// PROTOCOL.md: `OFFSET  HEX BYTES  # comment` lines inside a fence.
    fn doc_example(name: &str) -> Vec<u8> {
        let marker = alloc::format!("<!-- example: {name} -->");
        let after = DOC
            .split_once(marker.as_str())
            .unwrap_or_else(|| panic!("PROTOCOL.md lacks {marker}"))
            .1;
        let block = after
            .split("```")
            .nth(1)
            .expect("a fenced dump after the marker");
        let mut bytes = Vec::new();
        for line in block.lines().skip(1) {
            let data = line.split('#').next().unwrap().trim();
            if data.is_empty() {
                continue;
            }
            let mut tokens = data.split_whitespace();
            let offset = usize::from_str_radix(tokens.next().unwrap(), 16).unwrap();
            assert_eq!(offset, bytes.len(), "{name}: offset column at {line:?}");
            for token in tokens {
                assert_eq!(token.len(), 2, "{name}: {line:?}");
                bytes.push(u8::from_str_radix(token, 16).unwrap());
            }
        }
        bytes
    }

    #[test]
    fn documented_examples_match_the_encoder() {
        for (name, encoded, expected) in [
            ("client-open", example_client_open(), EXAMPLE_CLIENT_OPEN),
            ("server-fin", example_server_fin(), EXAMPLE_SERVER_FIN),
            ("tagged-close", example_tagged_close(), EXAMPLE_TAGGED_CLOSE),
        ] {
            assert_eq!(hex(&encoded), hex(&unhex(expected)), "{name}");
            assert_eq!(
                hex(&doc_example(name)),
                hex(&encoded),
                "{name} in PROTOCOL.md; the block should read:\n\n<!-- example: {name} -->\n```text\n{}```\n",
                annotate(&encoded)
            );
            let bundle = dec(&encoded).unwrap();
            assert_eq!(reencode(&bundle), encoded);
        }
        let crc_line = "CRC-32C(\"123456789\") = 0xE3069283";
        assert!(DOC.contains(crc_line), "PROTOCOL.md states the check value");
    }

    fn hex(bytes: &[u8]) -> String {
        let mut s = String::new();
        for b in bytes {
            write!(s, "{b:02x}").unwrap();
        }
        s
    }

    /// An annotated dump of a valid bundle: one line per field.
    fn annotate(bytes: &[u8]) -> String {
        let bundle = dec(bytes).unwrap();
        let h = *bundle.header();
        let mut fields: Vec<(usize, String)> = vec![
            (2, "magic \"hw\"".into()),
            (1, alloc::format!("version {VERSION}")),
            (
                1,
                alloc::format!(
                    "flags: {}",
                    if h.response {
                        "RESPONSE"
                    } else {
                        "none (request)"
                    }
                ),
            ),
            (16, alloc::format!("session id {}", h.session)),
            (8, alloc::format!("rid {}", h.rid)),
            (8, alloc::format!("ack {}", h.ack)),
            (4, alloc::format!("window {} bytes", h.window)),
            (1, alloc::format!("hold {}", h.hold)),
            (4, alloc::format!("held_us {}", h.held_us)),
            (1, alloc::format!("tag_len {}", bundle.tag().len())),
            (1, alloc::format!("sack_count {}", bundle.sack_count())),
        ];
        for (i, r) in bundle.sacks().enumerate() {
            fields.push((8, alloc::format!("sack[{i}].start {}", r.start)));
            fields.push((
                8,
                alloc::format!("sack[{i}].end {} -> [{}, {})", r.end, r.start, r.end),
            ));
        }
        for frame in bundle.frames() {
            let body = frame.encoded_len() - FRAME_HEADER_LEN;
            let (name, parts): (&str, Vec<(usize, String)>) = match &frame {
                Frame::Message { seq, payload } => (
                    "MESSAGE",
                    vec![
                        (8, alloc::format!("  seq {seq}")),
                        (
                            payload.len(),
                            alloc::format!(
                                "  payload {:?}",
                                core::str::from_utf8(payload).unwrap_or("..")
                            ),
                        ),
                    ],
                ),
                Frame::Fin { seq } => ("FIN", vec![(8, alloc::format!("  seq {seq}"))]),
                Frame::Open { max_wait_ms, .. } => (
                    "OPEN",
                    vec![
                        (16, "  nonce".into()),
                        (4, alloc::format!("  max_wait_ms {max_wait_ms}")),
                    ],
                ),
                Frame::Close => ("CLOSE", vec![]),
                Frame::Abort { code, reason } => (
                    "ABORT",
                    vec![
                        (2, alloc::format!("  code {} ({code})", code.0)),
                        (reason.len(), "  reason".into()),
                    ],
                ),
                Frame::Unreadable { rid } => {
                    ("UNREADABLE", vec![(8, alloc::format!("  rid {rid}"))])
                }
                Frame::Unknown { frame_type, .. } => (
                    "extension",
                    vec![(body, alloc::format!("  body of {frame_type:#04x}"))],
                ),
            };
            fields.push((
                FRAME_HEADER_LEN,
                alloc::format!("frame type {:#04x} {name}, len {body}", frame.frame_type()),
            ));
            fields.extend(parts);
        }
        if !bundle.tag().is_empty() {
            fields.push((bundle.tag().len(), "authentication tag".into()));
        }
        let crc = u32::from_be_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
        fields.push((
            CRC_LEN,
            alloc::format!("CRC-32C of bytes 0..{:#06x} = {crc:#010x}", bytes.len() - 4),
        ));

        let mut out = String::new();
        let mut pos = 0;
        for (len, label) in fields {
            let mut first = true;
            for row in bytes[pos..pos + len].chunks(16) {
                let hex_row: Vec<String> = row.iter().map(|b| alloc::format!("{b:02x}")).collect();
                let comment = if first {
                    alloc::format!("# {label}")
                } else {
                    String::new()
                };
                writeln!(out, "{:04x}  {:<49}{}", pos, hex_row.join(" "), comment).unwrap();
                pos += row.len();
                first = false;
            }
            if len == 0 {
                writeln!(out, "{:04x}  {:<49}# {label}", pos, "").unwrap();
            }
        }
        assert_eq!(pos, bytes.len());
        out
    }

    // ----- property tests ---------------------------------------------------

    fn arb_header() -> impl Strategy<Value = Header> {
        (
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            prop_oneof![any::<u64>(), Just(0u64), Just(u64::MAX - 3)],
            any::<u32>(),
            any::<u8>(),
            any::<u32>(),
        )
            .prop_map(|(response, id, rid, ack, window, hold, held_us)| Header {
                response,
                session: SessionId(id),
                rid,
                ack,
                window,
                hold,
                held_us,
            })
    }

    /// Valid SACK ranges above `ack`, built from (gap, width) pairs; stops at
    /// u64 overflow.
    fn sacks_from(ack: u64, shape: &[(u64, u64)]) -> Vec<SackRange> {
        let mut floor = ack;
        let mut out = Vec::new();
        for &(gap, width) in shape {
            let Some(start) = floor.checked_add(gap) else {
                break;
            };
            let Some(end) = start.checked_add(width) else {
                break;
            };
            out.push(SackRange { start, end });
            floor = end;
        }
        out
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let bytes = |min: usize, max: usize| proptest::collection::vec(any::<u8>(), min..=max);
        prop_oneof![
            (any::<u64>(), bytes(1, 80)).prop_map(|(seq, p)| Frame::Message {
                seq,
                payload: Bytes::from(p)
            }),
            any::<u64>().prop_map(|seq| Frame::Fin { seq }),
            (any::<[u8; 16]>(), any::<u32>())
                .prop_map(|(nonce, max_wait_ms)| Frame::Open { nonce, max_wait_ms }),
            Just(Frame::Close),
            (any::<u16>(), "\\PC{0,40}").prop_map(|(code, reason): (u16, String)| Frame::Abort {
                code: AbortCode(code),
                reason: Bytes::from(reason.into_bytes())
            }),
            any::<u64>().prop_map(|rid| Frame::Unreadable { rid }),
            (0x80u8..=0xFF, bytes(0, 40)).prop_map(|(frame_type, b)| Frame::Unknown {
                frame_type,
                body: Bytes::from(b)
            }),
        ]
    }

    fn arb_spec() -> impl Strategy<Value = Spec> {
        (
            arb_header(),
            proptest::collection::vec((1u64..1000, 1u64..1000), 0..6),
            proptest::collection::vec(arb_frame(), 0..10),
            proptest::collection::vec(any::<u8>(), 0..=MAX_TAG_LEN),
        )
            .prop_map(|(header, shape, frames, tag)| Spec {
                sacks: sacks_from(header.ack, &shape),
                header,
                frames,
                tag,
            })
    }

    /// A generous limit so generated bundles stay valid.
    fn wide() -> WireLimits {
        WireLimits {
            max_sack_ranges: 255,
            ..limits()
        }
    }

    proptest! {
        #![proptest_config(cases(256))]

        #[test]
        fn crc_sw_matches_crc(data in proptest::collection::vec(any::<u8>(), 0..600), skip in 0usize..16) {
            let data = data.get(skip..).unwrap_or_default();
            prop_assert_eq!(crc32c_sw(data), crc32c(data));
            #[cfg(feature = "std")]
            prop_assert_eq!(crc32c_sw(data), ::crc32c::crc32c(data));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = peek_header(&data, &limits());
            let _ = decode(Bytes::from(data), &limits());
        }

        /// Arbitrary bytes behind a plausible header and a valid CRC reach
        /// the sack and frame checks; any bundle accepted there is canonical
        /// (re-encodes to the same bytes).
        #[test]
        fn sealed_arbitrary_bytes_never_panic(
            header in arb_header(),
            tag_len in prop_oneof![Just(0u8), 0u8..=80],
            sack_count in prop_oneof![Just(0u8), 0u8..=4, any::<u8>()],
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut bytes = raw_bundle(&header, &[], &body);
            bytes[OFF_TAG_LEN] = tag_len;
            bytes[OFF_SACK_COUNT] = sack_count;
            reseal(&mut bytes);
            let _ = peek_header(&bytes, &limits());
            if let Ok(bundle) = dec_with(&bytes, &wide()) {
                let _ = bundle.sacks().count();
                prop_assert_eq!(bundle.frames().count(), bundle.frame_count());
                prop_assert_eq!(reencode(&bundle), bytes);
            }
        }

        /// Valid bundles with a few bytes overwritten and the CRC rewritten:
        /// reaches every later check; never panics, and whatever is accepted
        /// is canonical.
        #[test]
        fn mutated_resealed_bundles_never_panic(
            spec in arb_spec(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode(&spec);
            let covered = bytes.len() - CRC_LEN;
            for (at, value) in edits {
                bytes[at.index(covered)] = value;
            }
            reseal(&mut bytes);
            let _ = peek_header(&bytes, &wide());
            if let Ok(bundle) = dec_with(&bytes, &wide()) {
                prop_assert_eq!(bundle.sacks().count(), bundle.sack_count());
                prop_assert_eq!(bundle.frames().count(), bundle.frame_count());
                prop_assert_eq!(reencode(&bundle), bytes);
            }
        }

        #[test]
        fn valid_bundles_round_trip(spec in arb_spec()) {
            let bytes = encode(&spec);
            let frames_len: usize = spec.frames.iter().map(Frame::encoded_len).sum();
            prop_assert_eq!(bytes.len(), bundle_len(spec.sacks.len(), frames_len, spec.tag.len()));
            let bundle = dec_with(&bytes, &wide()).unwrap();
            prop_assert_eq!(bundle.header(), &spec.header);
            prop_assert_eq!(bundle.sacks().collect::<Vec<_>>(), spec.sacks.clone());
            prop_assert_eq!(bundle.frames().collect::<Vec<_>>(), spec.frames.clone());
            prop_assert_eq!(bundle.tag(), &spec.tag[..]);
            prop_assert_eq!(reencode(&bundle), bytes.clone());
            prop_assert_eq!(peek_header(&bytes, &wide()), Ok(spec.header));
        }

        #[test]
        fn flipped_bit_is_detected(spec in arb_spec(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let bytes = encode(&spec);
            let mut bad = bytes.clone();
            let i = at.index(bad.len());
            bad[i] ^= 1 << bit;
            // CRC-32C detects every single-bit error.
            prop_assert_eq!(dec_with(&bad, &wide()).unwrap_err(), DecodeError::ChecksumMismatch);
            prop_assert_eq!(peek_header(&bad, &wide()).unwrap_err(), DecodeError::ChecksumMismatch);
        }

        #[test]
        fn flipped_bits_never_decode_differently(
            spec in arb_spec(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let bytes = encode(&spec);
            let mut bad = bytes.clone();
            for (at, mask) in flips {
                let i = at.index(bad.len());
                bad[i] ^= mask;
            }
            if let Ok(bundle) = dec_with(&bad, &wide()) {
                // Only possible if the flips cancelled out.
                prop_assert_eq!(&bad, &bytes);
                prop_assert_eq!(reencode(&bundle), bytes);
            }
        }

        #[test]
        fn truncation_always_fails(spec in arb_spec()) {
            let bytes = encode(&spec);
            for len in 0..bytes.len() {
                prop_assert!(dec_with(&bytes[..len], &wide()).is_err(), "prefix of {} bytes", len);
            }
        }

        #[test]
        fn frame_methods_match_frame_for_any_frame(spec in arb_spec()) {
            // Re-encoding frame by frame through `frame` and through the
            // dedicated methods gives the same bytes.
            let mut a = Vec::new();
            let mut enc = BundleEncoder::new(&mut a, &spec.header, &spec.sacks, 0);
            for f in &spec.frames {
                match f {
                    Frame::Message { seq, payload } => enc.message(*seq, payload),
                    Frame::Fin { seq } => enc.fin(*seq),
                    Frame::Open { nonce, max_wait_ms } => enc.open(nonce, *max_wait_ms),
                    Frame::Close => enc.close(),
                    Frame::Abort { code, reason } => {
                        enc.abort(*code, core::str::from_utf8(reason).unwrap())
                    }
                    Frame::Unreadable { rid } => enc.unreadable(*rid),
                    f @ Frame::Unknown { .. } => enc.frame(f),
                }
            }
            enc.finish_untagged();
            let b = encode(&Spec { tag: Vec::new(), ..spec });
            prop_assert_eq!(a, b);
        }
    }
}
