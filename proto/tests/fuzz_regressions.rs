//! Inputs found by the fuzz targets (`fuzz/`), reduced to the public API.
//!
//! Each test names the target that found it. They drive the cores by hand, with bundles built
//! by `BundleEncoder` and heads by `http::encode_*_head`, so they keep their meaning when the
//! fuzz harness changes.

use std::time::Duration;

use bytes::Bytes;
use holdwire_proto::http::{self, HttpLimits, RequestParser, ResponseParser};
use holdwire_proto::sim::SimRng;
use holdwire_proto::url::Url;
use holdwire_proto::wire::{self, BundleEncoder, Frame, Header, WireLimits};
use holdwire_proto::{
    AbortCode, Client, ClientConfig, ConnId, Endpoint, Event, Instant, Server, ServerConfig,
    SessionId,
};

fn at(ms: u64) -> Instant {
    Instant::from_micros(1_000_000 + ms * 1000)
}

const SID: SessionId = SessionId([0x5a; 16]);

fn client(config: ClientConfig) -> Client {
    let url = Url::parse("http://sim.invalid:8080/hw").unwrap();
    Client::new(
        config,
        Endpoint::new(&url, SID, None),
        SID,
        [0xa5; 16],
        at(0),
    )
}

/// The client's next request: (slot, the whole HTTP request, its bundle).
fn next_request(c: &mut Client, now: Instant) -> (ConnId, Vec<u8>, wire::Bundle) {
    let mut buf = Vec::new();
    let t = c
        .poll_transmit(now, &mut buf)
        .expect("the client has a request to send");
    let mut p = RequestParser::new(HttpLimits::default());
    p.push(&buf).unwrap();
    let request = p.poll().unwrap().expect("one whole request");
    let bundle =
        wire::decode(request.body, &WireLimits::default()).expect("request bundle decodes");
    (t.conn, buf, bundle)
}

/// One past the highest MESSAGE or FIN sequence number in a bundle.
fn next_seq(bundle: &wire::Bundle) -> u64 {
    bundle
        .frames()
        .filter_map(|f| match f {
            Frame::Message { seq, .. } | Frame::Fin { seq } => Some(seq + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// A `200 OK` carrying a response bundle of `SID` built by `frames`.
fn response(rid: u64, ack: u64, frames: impl FnOnce(&mut BundleEncoder<'_>)) -> Vec<u8> {
    let header = Header {
        response: true,
        session: SID,
        rid,
        ack,
        window: 1 << 20,
        hold: 1,
        held_us: 0,
    };
    let mut body = Vec::new();
    let mut enc = BundleEncoder::new(&mut body, &header, &[], 0);
    frames(&mut enc);
    enc.finish_untagged();
    let mut out = Vec::new();
    http::encode_response_head(&mut out, 200, body.len(), false, false);
    out.extend_from_slice(&body);
    out
}

/// A POST of a request bundle of `SID` built by `frames`.
fn request(rid: u64, frames: impl FnOnce(&mut BundleEncoder<'_>)) -> Vec<u8> {
    request_acking(rid, 0, frames)
}

/// Every response the server writes now: (connection, status, body, close_after).
fn responses(s: &mut Server, now: Instant) -> Vec<(ConnId, u16, Bytes, bool)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(t) = s.poll_transmit(now, &mut buf) {
        let mut p = ResponseParser::new(HttpLimits::default());
        p.push(&buf[..t.len]).unwrap();
        if let Some(r) = p.poll().unwrap() {
            out.push((t.conn, r.status, r.body, t.close_after));
        }
        buf.clear();
    }
    out
}

/// Found by `client_session`: a response that acknowledges data after the application
/// aborted made the client report `Writable` after its final `Failed` event. `Closed` and
/// `Failed` are final (`error.rs`, STYLE.md section 6): nothing may follow them.
#[test]
fn client_reports_nothing_after_its_final_event() {
    let mut config = ClientConfig::default();
    config.session.send_buffer = 1000;
    let mut c = client(config);
    assert_eq!(c.write(&[7; 3000]), Ok(1000), "the write is cut short");
    let (slot, _, req) = next_request(&mut c, at(0));
    assert!(next_seq(&req) > 0, "the opening request carries the data");

    c.abort(at(1), AbortCode::APPLICATION, "bye");
    let mut events = Vec::new();
    while let Some(e) = c.poll_event() {
        events.push(e);
    }
    assert!(
        matches!(events.last(), Some(Event::Failed(_))),
        "{events:?}"
    );

    // The server's answer to the opening request acknowledges the data: room appears in the
    // send buffer of a session that has already ended.
    let answer = response(1, next_seq(&req), |enc| enc.open(&[1; 16], 2000));
    c.handle_bytes(at(2), slot, &answer);
    let mut buf = Vec::new();
    while c.poll_transmit(at(2), &mut buf).is_some() {}
    assert_eq!(c.poll_event(), None, "an event after the final Failed");
}

/// Found by `client_session`: a FIN (or MESSAGE) at sequence number `u64::MAX` is kept out of
/// order, and the next SACK range computed for it overflows in `RecvQueue::sacks`
/// (`seq + 1`): a panic with overflow checks, a range `[u64::MAX, 0)` that the peer rejects as
/// `BadSackRange` without. Peer-supplied numbers need checked arithmetic (STYLE.md 6).
#[test]
fn client_survives_a_sequence_number_at_u64_max() {
    let mut c = client(ClientConfig::default());
    let (slot, _, req) = next_request(&mut c, at(0));
    let answer = response(1, next_seq(&req), |enc| {
        enc.open(&[1; 16], 2000);
        enc.fin(u64::MAX);
    });
    c.handle_bytes(at(1), slot, &answer);
    // Whatever the client makes of it (ignore the frame, or fail the session), its next
    // request, if any, must be well-formed.
    let mut buf = Vec::new();
    while let Some(t) = c.poll_transmit(at(1), &mut buf) {
        let mut p = RequestParser::new(HttpLimits::default());
        p.push(&buf[..t.len]).unwrap();
        let body = p.poll().unwrap().unwrap().body;
        wire::decode(body, &WireLimits::default()).expect("the client's request decodes");
        buf.clear();
    }
}

/// Found by `server_endpoint`: the same overflow on the server, from a MESSAGE at
/// `u64::MAX` in an opening request; the server's answer must still be a valid bundle.
#[test]
fn server_survives_a_sequence_number_at_u64_max() {
    let mut s = Server::new(ServerConfig::default(), Box::new(SimRng::new(1)));
    let conn = s.handle_accept(at(0)).unwrap();
    s.handle_bytes(
        at(0),
        conn,
        &request(1, |enc| {
            enc.open(&[2; 16], 0);
            enc.message(u64::MAX, b"x");
        }),
    );
    for (_, status, body, _) in responses(&mut s, at(0)) {
        assert_eq!(status, 200);
        wire::decode(body, &WireLimits::default()).expect("the server's answer decodes");
    }
}

/// Found by `server_endpoint`: a request is held on a connection, then the same connection
/// sends bytes that are not HTTP. The server answers them with `400` and `close_after`, and
/// forgets the connection, but the session still holds the first request on it: when it is
/// answered (here at `max_wait`), the server writes a `200` on the connection it already told
/// the driver to close (and, had the driver kept it, after the `400`: responses out of order).
/// `refuse` (or `handle_bytes`) must drop the session's held request for that connection, as
/// `handle_closed` does.
#[test]
fn server_never_writes_on_a_connection_it_closed() {
    let config = ServerConfig {
        max_wait: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let max_wait = config.max_wait;
    let mut s = Server::new(config, Box::new(SimRng::new(1)));
    let conn = s.handle_accept(at(0)).unwrap();
    s.handle_bytes(at(0), conn, &request(1, |enc| enc.open(&[2; 16], 0)));
    let opened = responses(&mut s, at(0));
    assert_eq!(opened.len(), 1, "the open is confirmed at once");
    assert!(!opened[0].3);

    // Request 2 carries nothing: the session holds it.
    s.handle_bytes(at(1), conn, &request(2, |_| {}));
    assert!(responses(&mut s, at(1)).is_empty(), "request 2 is held");
    assert_eq!(s.held_requests(SID), 1);

    // Garbage on the same connection: 400, close after.
    s.handle_bytes(at(2), conn, b"\x16\x03\x01 not http at all\r\n\r\n");
    let refused = responses(&mut s, at(2));
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].0, refused[0].1, refused[0].3),
        (conn, 400, true)
    );

    // From now on nothing may be written on `conn`.
    let later = at(2) + max_wait + Duration::from_millis(10);
    s.handle_timeout(later);
    let written: Vec<_> = responses(&mut s, later)
        .into_iter()
        .filter(|r| r.0 == conn)
        .map(|r| r.1)
        .collect();
    assert!(
        written.is_empty(),
        "the server wrote {written:?} on {conn:?} after closing it"
    );
}

/// Found by `client_session`: out-of-order messages are admitted while
/// `ready + out_of_order + new <= recv_buffer`, but an in-order message only while
/// `ready + new <= recv_buffer` (`RecvQueue::on_message`), ignoring what is held out of order.
/// A peer that sends past the advertised window (a few messages beyond a gap, then the gap)
/// makes the receiver buffer up to about twice `recv_buffer`. The fuzz input: message 0,
/// three messages far ahead, then message 1, about 3 KB each with a 16 KiB buffer.
#[test]
fn client_receive_buffering_stays_within_recv_buffer() {
    let mut config = ClientConfig::default();
    config.session.recv_buffer = 16 * 1024;
    let cap = config.session.recv_buffer;
    let mut c = client(config);
    let (slot, _, req) = next_request(&mut c, at(0));
    let answer = response(1, next_seq(&req), |enc| {
        enc.open(&[1; 16], 2000);
        enc.message(0, &[1; 2844]);
        for seq in [27, 31, 221] {
            enc.message(seq, &[2; 3872]);
        }
        enc.message(1, &[3; 2844]);
    });
    c.handle_bytes(at(1), slot, &answer);
    let (_, received) = c.buffered();
    assert!(
        received <= cap,
        "the client buffers {received} bytes, recv_buffer is {cap}"
    );
}

/// The same rule on the server, found while writing the targets' cap check: four messages of
/// 4000 bytes beyond a gap (16 256 bytes counted), then the gap.
#[test]
fn server_receive_buffering_stays_within_recv_buffer() {
    let mut config = ServerConfig::default();
    config.session.recv_buffer = 16 * 1024;
    let cap = config.session.recv_buffer;
    let mut s = Server::new(config, Box::new(SimRng::new(1)));
    let conn = s.handle_accept(at(0)).unwrap();
    s.handle_bytes(
        at(0),
        conn,
        &request(1, |enc| {
            enc.open(&[2; 16], 0);
            for seq in 5..9 {
                enc.message(seq, &[1; 4000]);
            }
        }),
    );
    let _ = responses(&mut s, at(0));
    let conn = s.handle_accept(at(1)).unwrap();
    s.handle_bytes(at(1), conn, &request(2, |enc| enc.message(0, &[2; 4000])));
    let (_, received) = s.buffered(SID).expect("the session is open");
    assert!(
        received <= cap,
        "the server buffers {received} bytes, recv_buffer is {cap}"
    );
}

/// Found by `server_endpoint`: with a token, a session is announced (`Opened`) only once a
/// request tagged with the session key proves the open was not a replay (`server.rs`,
/// `Session::announced`). But a session that never got that far still reports `Readable` and
/// `Failed` when it ends (idle timeout, `abort`): the application hears of a session it was
/// never told of, which is what a replayed opening request produces, as often as it is
/// replayed after the id stops lingering.
#[test]
fn server_reports_nothing_about_a_session_it_never_announced() {
    let token = holdwire_proto::Token::new(b"fuzz");
    let config = ServerConfig {
        token: Some(token.clone()),
        path_prefix: "/hw".into(),
        idle_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    };
    let mut s = Server::new(config, Box::new(SimRng::new(1)));
    let mut c = client(ClientConfig {
        token: Some(token),
        ..ClientConfig::default()
    });
    // Only the opening request arrives (or a replay of it); nothing follows.
    let (_, open, _) = next_request(&mut c, at(0));
    let conn = s.handle_accept(at(0)).unwrap();
    s.handle_bytes(at(0), conn, &open);
    let confirmed = responses(&mut s, at(0));
    assert_eq!(confirmed[0].1, 200);
    assert_eq!(
        s.poll_event(),
        None,
        "not announced before a session-key request"
    );

    let later = at(11_000);
    s.handle_timeout(later);
    let _ = responses(&mut s, later);
    let mut events = Vec::new();
    while let Some(e) = s.poll_event() {
        events.push(e.event);
    }
    assert!(
        events.is_empty(),
        "events for a session never announced: {events:?}"
    );
}

/// Found by `server_endpoint`: a session that closed cleanly while its application had not
/// read everything stays (so the data can still be read), but its timer keeps the idle
/// deadline `last_request + idle_timeout` (`Session::deadline`), which is in the past once it
/// fired: `handle_timeout` re-arms the same instant and `poll_timeout` returns it again, so a
/// driver spins at full speed until the application reads. An ended session with no held
/// request needs no deadline at all.
#[test]
fn closed_session_with_unread_data_does_not_spin() {
    let config = ServerConfig {
        idle_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    };
    let mut s = Server::new(config, Box::new(SimRng::new(1)));
    let post = |s: &mut Server, now, bytes: &[u8]| {
        let conn = s.handle_accept(now).unwrap();
        s.handle_bytes(now, conn, bytes);
        responses(s, now)
    };
    // The client opens, sends "hi" and ends its stream; the server ends its own.
    post(
        &mut s,
        at(0),
        &request(1, |enc| {
            enc.open(&[2; 16], 0);
            enc.message(0, b"hi");
            enc.fin(1);
        }),
    );
    s.finish(SID);
    let answer = post(&mut s, at(1), &request(2, |_| {}));
    assert!(!answer.is_empty(), "the server's FIN goes out");
    // The client acknowledges the FIN (seq 0) and closes: a clean close, "hi" still unread.
    post(&mut s, at(2), &request_acking(3, 1, |enc| enc.close()));
    let mut events = Vec::new();
    while let Some(e) = s.poll_event() {
        events.push(e.event);
    }
    assert_eq!(events.last(), Some(&Event::Closed), "{events:?}");
    assert_eq!(
        s.buffered(SID).map(|b| b.1),
        Some(2),
        "the data waits to be read"
    );

    let mut now = at(2);
    for _ in 0..3 {
        let Some(deadline) = s.poll_timeout() else {
            return;
        };
        now = now.max(deadline) + Duration::from_secs(30);
        s.handle_timeout(now);
        let _ = responses(&mut s, now);
        if let Some(next) = s.poll_timeout() {
            assert!(
                next > now,
                "deadline {next:?} not after {now:?} once handled"
            );
        }
    }
}

/// A POST of a request bundle of `SID` acknowledging `ack`, built by `frames`.
fn request_acking(rid: u64, ack: u64, frames: impl FnOnce(&mut BundleEncoder<'_>)) -> Vec<u8> {
    let header = Header {
        response: false,
        session: SID,
        rid,
        ack,
        window: 1 << 20,
        hold: 1,
        held_us: 0,
    };
    let mut body = Vec::new();
    let mut enc = BundleEncoder::new(&mut body, &header, &[], 0);
    frames(&mut enc);
    enc.finish_untagged();
    let mut hex = [0u8; 32];
    SID.write_hex(&mut hex);
    let mut out = Vec::new();
    http::encode_request_head(
        &mut out,
        &http::RequestHead {
            target: http::RequestTarget::Origin {
                path: &format!("/{}", std::str::from_utf8(&hex).unwrap()),
            },
            host: "sim.invalid",
            proxy_authorization: None,
            content_length: body.len(),
            close: false,
        },
    );
    out.extend_from_slice(&body);
    out
}

/// http_request: a request followed by garbage that holds a blank line more than a head's
/// length later was refused as `HeadTooLarge` when it arrived whole and as `Malformed` when
/// it arrived in pieces. The verdict must not depend on the split: garbage is `Malformed`.
#[test]
fn garbage_after_a_request_gets_the_same_verdict_however_it_arrives() {
    let limits = HttpLimits {
        max_head_len: 256,
        ..HttpLimits::default()
    };
    let mut input = b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    input.extend_from_slice(b"hw\x01\xca");
    input.extend_from_slice(&[0xf8; 400]);
    input.extend_from_slice(b"\r\n\r\n");
    let verdict = |pieces: &[&[u8]]| {
        let mut p = RequestParser::new(limits.clone());
        let mut requests = 0;
        for piece in pieces {
            if let Err(e) = p.push(piece) {
                return (requests, e);
            }
            loop {
                match p.poll() {
                    Ok(Some(_)) => requests += 1,
                    Ok(None) => break,
                    Err(e) => return (requests, e),
                }
            }
        }
        panic!("the garbage was accepted");
    };
    let whole = verdict(&[&input]);
    let split = verdict(&[&input[..10], &input[10..60], &input[60..200], &input[200..]]);
    assert_eq!(whole, (1, http::HttpError::Malformed));
    assert_eq!(split, whole);

    // The converse (found by the same target later): what looks like a method for more than
    // a head's length, then garbage. Only the first head's worth counts: too large, whether
    // it arrives whole (buffered behind the unpolled first request) or byte by byte.
    let mut input = b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    input.extend_from_slice(&[b'A'; 300]);
    input.extend_from_slice(b"\x01 / HTTP/1.1\r\n\r\n");
    let whole = verdict(&[&input]);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(whole, (1, http::HttpError::HeadTooLarge));
    assert_eq!(verdict(&bytes), whole);
}

/// Found by `server_endpoint`: the acknowledgement of a small bundle waits up to `ack_delay`
/// for a reply, and meanwhile one request more than granted stays held. With the grant at
/// `max_hold`, that made `max_hold + 1` held requests. `max_hold` is a hard cap: here the
/// older request must be answered at once.
#[test]
fn a_delayed_acknowledgement_never_holds_more_than_max_hold() {
    let config = ServerConfig {
        max_hold: 1,
        ack_delay: Duration::from_millis(10),
        ..ServerConfig::default()
    };
    let mut s = Server::new(config, Box::new(SimRng::new(1)));
    let first = s.handle_accept(at(0)).unwrap();
    s.handle_bytes(at(0), first, &request(1, |enc| enc.open(&[2; 16], 0)));
    assert_eq!(responses(&mut s, at(0)).len(), 1, "the open is confirmed");

    s.handle_bytes(at(1), first, &request(2, |_| {}));
    assert!(responses(&mut s, at(1)).is_empty(), "request 2 is held");

    let second = s.handle_accept(at(2)).unwrap();
    s.handle_bytes(at(2), second, &request(3, |enc| enc.message(0, b"ping")));
    let answered = responses(&mut s, at(2));
    assert_eq!(s.held_requests(SID), 1, "answered {answered:?}");
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].0, first, "the older request is answered");
}
