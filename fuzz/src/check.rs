//! Checks on the cores' outputs: what a core writes is always one well-formed HTTP message
//! whose body, when it says it is a bundle, decodes.

use bytes::Bytes;
use holdwire_proto::http::{HttpLimits, Method, RequestParser, ResponseParser};
use holdwire_proto::wire::{self, Bundle, SessionId, WireLimits};

/// Statuses the server endpoint answers with (`docs/PROTOCOL.md` 11.1, `server.rs`).
pub const SERVER_STATUSES: [u16; 13] = [
    100, 200, 400, 403, 404, 405, 408, 410, 413, 431, 501, 503, 505,
];

/// Checks one server transmit: exactly one response (or one `100 Continue`), a known status,
/// and a decodable response bundle when the content type says bundle. Returns the status and
/// the bundle, if any.
pub fn server_transmit(bytes: &[u8]) -> (u16, Option<Bundle>) {
    if bytes == b"HTTP/1.1 100 Continue\r\n\r\n" {
        return (100, None);
    }
    let mut p = ResponseParser::new(HttpLimits::default());
    p.push(bytes).unwrap_or_else(|e| {
        panic!(
            "server wrote an unparsable response ({e}): {:?}",
            show(bytes)
        )
    });
    let polled = p.poll().unwrap_or_else(|e| {
        panic!(
            "server wrote an unparsable response ({e}): {:?}",
            show(bytes)
        )
    });
    let Some(r) = polled else {
        // The answer to a HEAD request: a head announcing a body that is not sent.
        let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n");
        assert!(
            bytes.starts_with(b"HTTP/1.1 200 ") && head_end == Some(bytes.len() - 4),
            "server wrote an incomplete response: {:?}",
            show(bytes)
        );
        return (200, None);
    };
    assert_eq!(
        p.buffered_len(),
        0,
        "server transmit holds more than one response"
    );
    assert!(
        SERVER_STATUSES.contains(&r.status),
        "unexpected status {}",
        r.status
    );
    if !r.content_type_is_bundle {
        return (r.status, None);
    }
    let bundle = wire::decode(r.body, &WireLimits::default())
        .unwrap_or_else(|e| panic!("server wrote an undecodable bundle: {e}"));
    assert!(
        bundle.header().response,
        "server bundle without RESPONSE flag"
    );
    (r.status, Some(bundle))
}

/// Checks one client transmit on a connection slot whose earlier, unfinished transmit (a
/// pre-opened request's head, see `ClientConfig::preopen`) is in `pending`: together they
/// must be exactly one POST request to `session` carrying a decodable request bundle of that
/// session, which is returned. A transmit that is only a deferred head (chunked, no body yet)
/// is kept in `pending` and gives `None`.
pub fn client_transmit_on_slot(
    pending: &mut Vec<u8>,
    bytes: &[u8],
    session: SessionId,
) -> Option<Bundle> {
    if pending.is_empty() && is_deferred_head(bytes) {
        pending.extend_from_slice(bytes);
        return None;
    }
    assert!(
        pending.is_empty() || !is_deferred_head(bytes),
        "client pre-opened a request on a slot whose pre-opened request is unfinished"
    );
    let mut whole = std::mem::take(pending);
    whole.extend_from_slice(bytes);
    Some(client_transmit(&whole, session))
}

/// Whether `bytes` is a request head announcing a chunked body, with nothing after it.
fn is_deferred_head(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    end + 4 == bytes.len()
        && bytes[..end]
            .to_ascii_lowercase()
            .windows(26)
            .any(|w| w == b"transfer-encoding: chunked")
}

/// Checks one client transmit: exactly one POST request to `session`, carrying a decodable
/// request bundle of that session. Returns the bundle.
pub fn client_transmit(bytes: &[u8], session: SessionId) -> Bundle {
    let mut p = RequestParser::new(HttpLimits::default());
    p.push(bytes).unwrap_or_else(|e| {
        panic!(
            "client wrote an unparsable request ({e}): {:?}",
            show(bytes)
        )
    });
    let r = p
        .poll()
        .unwrap_or_else(|e| panic!("client wrote an unparsable request ({e})"))
        .unwrap_or_else(|| panic!("client wrote an incomplete request: {:?}", show(bytes)));
    assert_eq!(
        p.buffered_len(),
        0,
        "client transmit holds more than one request"
    );
    assert_eq!(r.method, Method::Post);
    let mut hex = [0u8; 32];
    session.write_hex(&mut hex);
    assert!(
        r.path.as_bytes().ends_with(&hex),
        "request path {} does not name the session",
        r.path
    );
    let bundle = wire::decode(r.body, &WireLimits::default())
        .unwrap_or_else(|e| panic!("client wrote an undecodable bundle: {e}"));
    assert!(
        !bundle.header().response,
        "client bundle with RESPONSE flag"
    );
    assert_eq!(
        bundle.header().session,
        session,
        "client bundle of another session"
    );
    bundle
}

/// The highest sequence number a bundle's MESSAGE or FIN frames use, plus one.
pub fn next_seq(bundle: &Bundle) -> u64 {
    bundle
        .frames()
        .filter_map(|f| match f {
            wire::Frame::Message { seq, .. } | wire::Frame::Fin { seq } => seq.checked_add(1),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// The first 120 bytes, for messages.
pub fn show(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&bytes[..bytes.len().min(120)])
}

/// Whether the named check runs. `HOLDWIRE_FUZZ_SKIP` (comma-separated names) turns checks
/// off, so that the rest can still be fuzzed while a known bug waits for its fix; CI sets
/// nothing. Names: `events-after-end`, `deadlines` (no deadline at or before `now` once
/// handled).
pub fn enabled(name: &str) -> bool {
    static SKIP: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let skip = SKIP.get_or_init(|| {
        std::env::var("HOLDWIRE_FUZZ_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    !skip.iter().any(|s| s == name)
}

/// Whether `HOLDWIRE_FUZZ_TRACE` is set.
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HOLDWIRE_FUZZ_TRACE").is_some())
}
