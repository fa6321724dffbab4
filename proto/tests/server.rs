//! The server endpoint against hostile and broken input, driven by hand.

use std::time::Duration;

use holdwire_proto::http::{HttpLimits, ResponseParser};
use holdwire_proto::sim::SimRng;
use holdwire_proto::url::Url;
use holdwire_proto::wire::{self, Frame};
use holdwire_proto::{
    AbortCode, Client, ClientConfig, ConnId, Endpoint, Event, Instant, Server, ServerConfig,
    SessionId,
};

fn at(ms: u64) -> Instant {
    Instant::from_micros(ms * 1000)
}

fn server(config: ServerConfig) -> Server {
    Server::new(config, Box::new(SimRng::new(7)))
}

fn client(id: u8) -> Client {
    let url = Url::parse("http://127.0.0.1:8080/").unwrap();
    let sid = SessionId([id; 16]);
    Client::new(
        ClientConfig::default(),
        Endpoint::new(&url, sid, None),
        sid,
        [id; 16],
        at(0),
    )
}

/// Every response the server writes now: (connection, status, body, close_after).
fn responses(s: &mut Server, now: Instant) -> Vec<(ConnId, u16, Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(t) = s.poll_transmit(now, &mut buf) {
        let mut p = ResponseParser::new(HttpLimits::default());
        p.push(&buf[..t.len]).unwrap();
        if let Some(r) = p.poll().unwrap() {
            out.push((t.conn, r.status, r.body.to_vec(), t.close_after));
        }
        buf.clear();
    }
    out
}

fn next_request(c: &mut Client, now: Instant) -> Vec<u8> {
    let mut buf = Vec::new();
    let t = c
        .poll_transmit(now, &mut buf)
        .expect("the client has a request to send");
    buf.truncate(t.len);
    buf
}

fn send(s: &mut Server, now: Instant, bytes: &[u8]) -> ConnId {
    let conn = s.handle_accept(now).unwrap();
    s.handle_bytes(now, conn, bytes);
    conn
}

fn abort_code(body: &[u8]) -> Option<AbortCode> {
    let b = wire::decode(bytes::Bytes::copy_from_slice(body), &Default::default()).ok()?;
    b.frames().find_map(|f| match f {
        Frame::Abort { code, .. } => Some(code),
        _ => None,
    })
}

#[test]
fn garbage_gets_400_and_closes_without_harming_a_session() {
    let mut s = server(ServerConfig::default());
    let mut c = client(1);
    let open = next_request(&mut c, at(0));
    send(&mut s, at(0), &open);
    assert_eq!(
        responses(&mut s, at(0)).len(),
        1,
        "the open is confirmed at once"
    );
    let bad = send(&mut s, at(1), b"\x16\x03\x01 not http at all\r\n\r\n");
    let r = responses(&mut s, at(1));
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0, r[0].1, r[0].3), (bad, 400, true));
    assert_eq!(s.session_count(), 1);
    assert!(s.poll_refusal().is_some());
}

#[test]
fn oversized_head_and_body_are_refused_early() {
    let mut s = server(ServerConfig::default());
    let mut head = b"POST /0000 HTTP/1.1\r\nHost: x\r\n".to_vec();
    head.extend(std::iter::repeat_n(b'a', 20_000));
    let conn = send(&mut s, at(0), &head);
    let r = responses(&mut s, at(0));
    assert_eq!((r[0].0, r[0].1), (conn, 431));

    let conn = send(
        &mut s,
        at(0),
        b"POST /00000000000000000000000000000000 HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    );
    let r = responses(&mut s, at(0));
    assert_eq!((r[0].0, r[0].1), (conn, 413));
    let conn = send(
        &mut s,
        at(0),
        b"POST /00000000000000000000000000000000 HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    );
    assert_eq!(responses(&mut s, at(0))[0].0, conn);
}

#[test]
fn unknown_session_gets_404_with_abort() {
    let mut s = server(ServerConfig::default());
    let mut c = client(3);
    let conn = send(&mut s, at(0), &next_request(&mut c, at(0)));
    assert_eq!(responses(&mut s, at(0))[0].1, 200);
    // On the same keep-alive connection, a request without OPEN for a session never seen.
    let sid = SessionId([9; 16]);
    let mut body = Vec::new();
    let header = wire::Header {
        session: sid,
        rid: 5,
        ..Default::default()
    };
    wire::BundleEncoder::new(&mut body, &header, &[], 0).finish_untagged();
    let mut req = format!(
        "POST /{sid} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    s.handle_bytes(at(1), conn, &req);
    let r = responses(&mut s, at(1));
    assert_eq!(r[0].1, 404);
    assert_eq!(abort_code(&r[0].2), Some(AbortCode::UNKNOWN_SESSION));
}

#[test]
fn session_cap_refuses_with_503() {
    let mut s = server(ServerConfig {
        max_sessions: 2,
        ..ServerConfig::default()
    });
    for id in 1..=2 {
        let mut c = client(id);
        send(&mut s, at(0), &next_request(&mut c, at(0)));
        assert_eq!(responses(&mut s, at(0))[0].1, 200);
    }
    let mut c = client(3);
    send(&mut s, at(0), &next_request(&mut c, at(0)));
    let r = responses(&mut s, at(0));
    assert_eq!(r[0].1, 503);
    assert_eq!(abort_code(&r[0].2), Some(AbortCode::SESSION_LIMIT));
    // The client reports the refusal as such.
    c.handle_bytes(at(1), ConnId(0), &http_bytes(503, &r[0].2));
    let mut failed = None;
    while let Some(e) = c.poll_event() {
        if let Event::Failed(e) = e {
            failed = Some(e);
        }
    }
    assert_eq!(
        failed,
        Some(holdwire_proto::SessionError::Rejected { status: 503 })
    );
}

fn http_bytes(status: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    holdwire_proto::http::encode_response_head(&mut out, status, body.len(), false, false);
    out.extend_from_slice(body);
    out
}

#[test]
fn replayed_request_delivers_nothing_twice_and_gets_no_data() {
    let mut s = server(ServerConfig::default());
    let mut c = client(4);
    c.write(b"hello").unwrap();
    let open = next_request(&mut c, at(0));
    let conn = send(&mut s, at(0), &open);
    let first = responses(&mut s, at(0));
    assert_eq!(first.len(), 1);
    let sid = c.session_id();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(sid, &mut buf).unwrap(), 5);
    // The server now has data for the client; a replay of the first request arrives.
    s.write(sid, b"secret").unwrap();
    let replay = send(&mut s, at(2), &open);
    let r = responses(&mut s, at(2));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, replay);
    let bundle = wire::decode(bytes::Bytes::from(r[0].2.clone()), &Default::default()).unwrap();
    assert!(
        !bundle.frames().any(|f| matches!(f, Frame::Message { .. })),
        "a replayed request must not carry data away"
    );
    assert!(s.read(sid, &mut buf).is_err(), "nothing delivered twice");
    assert_eq!(s.stats().duplicate_requests, 1);
    let _ = conn;
}

#[test]
fn bundle_of_one_session_sent_to_another_is_refused() {
    let mut s = server(ServerConfig::default());
    let mut a = client(5);
    let req = next_request(&mut a, at(0));
    let a_hex = a.session_id().to_string();
    let b_hex = SessionId([6; 16]).to_string();
    let moved = String::from_utf8_lossy(&req).replace(&a_hex, &b_hex);
    send(&mut s, at(0), moved.as_bytes());
    let r = responses(&mut s, at(0));
    assert_eq!(r[0].1, 400);
    assert_eq!(s.session_count(), 0);
}

#[test]
fn slowloris_head_times_out_with_408() {
    let cfg = ServerConfig {
        request_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let mut s = server(cfg);
    let conn = send(&mut s, at(0), b"POST /abc HTTP/1.1\r\nHost:");
    for ms in (100..4900).step_by(500) {
        s.handle_bytes(at(ms), conn, b" ");
    }
    assert!(responses(&mut s, at(4900)).is_empty());
    let deadline = s.poll_timeout().unwrap();
    assert!(deadline <= at(5000));
    s.handle_timeout(deadline);
    let r = responses(&mut s, deadline);
    assert_eq!((r[0].0, r[0].1, r[0].3), (conn, 408, true));
    assert_eq!(s.connection_count(), 0);
}

/// A chunked body trickled a chunk at a time (so nothing stays undecoded between chunks)
/// still times out at the request timeout (regression: the clock restarted on every chunk).
#[test]
fn slowloris_chunked_body_times_out_with_408() {
    let cfg = ServerConfig {
        request_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let mut s = server(cfg);
    let conn = send(
        &mut s,
        at(0),
        b"POST /abc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for ms in (100..4900).step_by(200) {
        s.handle_bytes(at(ms), conn, b"1\r\nx\r\n");
    }
    assert!(responses(&mut s, at(4900)).is_empty());
    let deadline = s.poll_timeout().unwrap();
    assert!(deadline <= at(5000), "{deadline:?}");
    s.handle_timeout(deadline);
    let r = responses(&mut s, deadline);
    assert_eq!((r[0].0, r[0].1, r[0].3), (conn, 408, true));
}

/// A head whose body never starts times out at the request timeout, also on a connection that
/// was served before (regression: it got the keep-alive timeout).
#[test]
fn body_that_never_starts_times_out_with_408() {
    let cfg = ServerConfig {
        request_timeout: Duration::from_secs(5),
        keep_alive_timeout: Duration::from_secs(120),
        ..ServerConfig::default()
    };
    let mut s = server(cfg);
    let conn = send(&mut s, at(0), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(responses(&mut s, at(0))[0].1, 200);
    s.handle_bytes(
        at(1000),
        conn,
        b"POST /abc HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
    );
    assert_eq!(s.poll_timeout(), Some(at(6000)));
    s.handle_timeout(at(6000));
    let r = responses(&mut s, at(6000));
    assert_eq!((r[0].0, r[0].1, r[0].3), (conn, 408, true));
}

/// A chunked body counts toward `max_request_memory` as it is decoded (regression: decoded
/// chunks were not counted, so chunked bodies evaded the limit).
#[test]
fn chunked_bodies_count_toward_request_memory() {
    let cfg = ServerConfig {
        max_request_memory: 1024 * 1024,
        ..ServerConfig::default()
    };
    let mut s = server(cfg);
    let conn = send(
        &mut s,
        at(0),
        b"POST /abc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let mut chunk = b"4000\r\n".to_vec();
    chunk.extend_from_slice(&[b'x'; 0x4000]);
    chunk.extend_from_slice(b"\r\n");
    for _ in 0..32 {
        s.handle_bytes(at(1), conn, &chunk);
    }
    assert!(s.request_memory() >= 32 * 0x4000, "{}", s.request_memory());
    for _ in 0..64 {
        s.handle_bytes(at(1), conn, &chunk);
    }
    let r = responses(&mut s, at(1));
    assert_eq!((r[0].0, r[0].1, r[0].3), (conn, 503, true));
    assert_eq!(
        s.request_memory(),
        0,
        "the refused connection's memory is released"
    );
}

/// Bytes that cannot start a request are refused with 400 at once, without waiting for a
/// whole head or the request timeout.
#[test]
fn garbage_start_is_refused_at_once() {
    for garbage in [
        &b"\x16\x03\x01\x02\x00"[..],
        b"\x00\x00",
        b"GET\x01",
        b" GET / HTTP/1.1",
    ] {
        let mut s = server(ServerConfig::default());
        let conn = send(&mut s, at(0), garbage);
        let r = responses(&mut s, at(0));
        assert_eq!((r[0].0, r[0].1, r[0].3), (conn, 400, true), "{garbage:?}");
    }
    // A method arriving a byte at a time is not garbage.
    let mut s = server(ServerConfig::default());
    let conn = send(&mut s, at(0), b"PO");
    s.handle_bytes(at(1), conn, b"ST /x HTTP/1.1\r\n");
    assert!(responses(&mut s, at(1)).is_empty());
    assert_eq!(s.connection_count(), 1);
}

/// A request for a session that ended abnormally gets 410 and is reported for the log like
/// every other refusal (regression: 410 was neither logged nor counted).
#[test]
fn request_for_an_aborted_session_gets_410_and_is_logged() {
    let mut s = server(ServerConfig::default());
    let mut c = client(9);
    let sid = c.session_id();
    let open = next_request(&mut c, at(0));
    send(&mut s, at(0), &open);
    assert_eq!(responses(&mut s, at(0))[0].1, 200);
    s.abort(at(1), sid, AbortCode::APPLICATION, "bye");
    let _ = responses(&mut s, at(1));
    assert_eq!(s.session_count(), 0, "the aborted session lingers");
    while s.poll_refusal().is_some() {}
    let refused_before = s.stats().requests_refused;
    let conn = send(&mut s, at(2), &open);
    let r = responses(&mut s, at(2));
    assert_eq!((r[0].0, r[0].1), (conn, 410));
    assert_eq!(abort_code(&r[0].2), Some(AbortCode::UNKNOWN_SESSION));
    let refusal = s.poll_refusal().expect("the 410 is reported for the log");
    assert_eq!((refusal.conn, refusal.status), (conn, 410));
    assert_eq!(s.stats().requests_refused, refused_before + 1);
}

/// Silent new connections (half-open, or never used) are answered 408, logged, and closed at
/// the request timeout, not kept for the much longer keep-alive timeout.
#[test]
fn silent_new_connection_times_out_with_408() {
    let cfg = ServerConfig {
        request_timeout: Duration::from_secs(5),
        keep_alive_timeout: Duration::from_secs(120),
        ..ServerConfig::default()
    };
    let mut s = server(cfg);
    let silent = s.handle_accept(at(0)).unwrap();
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, at(5000));
    s.handle_timeout(deadline);
    let r = responses(&mut s, deadline);
    assert_eq!((r[0].0, r[0].1, r[0].3), (silent, 408, true));
    let refusal = s
        .poll_refusal()
        .expect("the refusal is reported for the log");
    assert_eq!((refusal.conn, refusal.status), (silent, 408));
    assert_eq!(s.connection_count(), 0);
}

/// A connection that was served stays open while idle for the keep-alive timeout.
#[test]
fn served_connection_idles_for_the_keep_alive_timeout() {
    let cfg = ServerConfig {
        request_timeout: Duration::from_secs(5),
        keep_alive_timeout: Duration::from_secs(120),
        ..ServerConfig::default()
    };
    let mut s = server(cfg);
    let conn = send(&mut s, at(0), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = responses(&mut s, at(0));
    assert_eq!((r[0].0, r[0].1), (conn, 200));
    s.handle_timeout(at(60_000));
    assert!(responses(&mut s, at(60_000)).is_empty());
    assert_eq!(s.connection_count(), 1);
    assert_eq!(s.poll_timeout(), Some(at(120_000)));
    s.handle_timeout(at(120_000));
    assert!(
        responses(&mut s, at(120_000)).is_empty(),
        "closed without an answer"
    );
    assert_eq!(s.poll_close(), Some(conn));
    assert_eq!(s.connection_count(), 0);
}

#[test]
fn held_request_is_answered_at_max_wait() {
    let cfg = ServerConfig {
        max_wait: Duration::from_secs(10),
        ..ServerConfig::default()
    };
    let mut s = server(cfg);
    let mut c = client(7);
    send(&mut s, at(0), &next_request(&mut c, at(0)));
    let r = responses(&mut s, at(0));
    assert_eq!(r[0].1, 200);
    // A park request of the session (rid 2), asking for one held request.
    let sid = c.session_id();
    let mut body = Vec::new();
    let header = wire::Header {
        session: sid,
        rid: 2,
        hold: 1,
        ..Default::default()
    };
    wire::BundleEncoder::new(&mut body, &header, &[], 0).finish_untagged();
    let mut req = format!(
        "POST /{sid} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    send(&mut s, at(2), &req);
    assert!(responses(&mut s, at(2)).is_empty(), "held, not answered");
    assert_eq!(s.held_requests(sid), 1);
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, at(10_002));
    s.handle_timeout(deadline);
    let r = responses(&mut s, deadline);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1, 200);
    let b = wire::decode(bytes::Bytes::from(r[0].2.clone()), &Default::default()).unwrap();
    assert_eq!(b.header().held_us, 10_000_000);
}

#[test]
fn knowing_the_session_id_is_not_enough_to_inject() {
    let token = holdwire_proto::Token::new(b"s3cret");
    let mut s = server(ServerConfig {
        token: Some(token.clone()),
        ..ServerConfig::default()
    });
    let url = Url::parse("http://127.0.0.1:8080/").unwrap();
    let sid = SessionId([8; 16]);
    let mut c = Client::new(
        ClientConfig {
            token: Some(token),
            ..ClientConfig::default()
        },
        Endpoint::new(&url, sid, None),
        sid,
        [8; 16],
        at(0),
    );
    // Open: the confirmation is tagged; the session is announced only once proven.
    send(&mut s, at(0), &next_request(&mut c, at(0)));
    assert!(
        s.poll_event().is_none(),
        "not announced before a request proves freshness"
    );
    let r = responses(&mut s, at(0));
    c.handle_bytes(at(1), ConnId(0), &http_bytes(200, &r[0].2));
    assert_eq!(c.poll_event(), Some(Event::Opened));
    send(&mut s, at(1), &next_request(&mut c, at(1)));
    assert_eq!(s.poll_event().map(|e| e.event), Some(Event::Opened));

    // An attacker who saw the session id in a proxy log forges a request with data.
    let mut body = Vec::new();
    let header = wire::Header {
        session: sid,
        rid: 1000,
        ..Default::default()
    };
    let mut enc = wire::BundleEncoder::new(&mut body, &header, &[], 16);
    enc.message(0, b"rm -rf /");
    enc.finish(|_, tag| tag.fill(0xAA));
    let mut req = format!(
        "POST /{sid} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    send(&mut s, at(2), &req);
    let r = responses(&mut s, at(2));
    assert_eq!(r[0].1, 403);
    assert_eq!(abort_code(&r[0].2), Some(AbortCode::AUTH_FAILED));
    let mut buf = [0u8; 16];
    assert!(s.read(sid, &mut buf).is_err(), "nothing was delivered");
    assert_eq!(s.session_count(), 1, "the session carries on");
    assert!(s.write(sid, b"still here").is_ok());
}

#[test]
fn health_check_get_is_answered() {
    let mut s = server(ServerConfig::default());
    send(&mut s, at(0), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = responses(&mut s, at(0));
    assert_eq!((r[0].1, r[0].2.as_slice()), (200, &b"holdwire\n"[..]));
}

#[test]
fn request_memory_is_capped_across_connections() {
    let mut s = server(ServerConfig {
        max_request_memory: 10_000,
        ..ServerConfig::default()
    });
    let mut c = client(9);
    c.write(&[1u8; 5000]).unwrap();
    let request = next_request(&mut c, at(0));
    assert!(request.len() > 5000);
    // A hostile connection trickles a large body and stops.
    let hog = s.handle_accept(at(0)).unwrap();
    let head = b"POST /00000000000000000000000000000000 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n";
    s.handle_bytes(at(0), hog, head);
    s.handle_bytes(at(0), hog, &[0u8; 6000]);
    assert!(responses(&mut s, at(0)).is_empty());
    assert!(s.request_memory() >= 6000);
    // The client's request no longer fits: 503 on its connection, nothing else harmed.
    let conn = s.handle_accept(at(1)).unwrap();
    s.handle_bytes(at(1), conn, &request);
    let r = responses(&mut s, at(1));
    assert_eq!((r[0].0, r[0].1, r[0].3), (conn, 503, true));
    // Once the hog is gone, the same request is served.
    s.handle_closed(at(2), hog);
    assert_eq!(s.request_memory(), 0);
    let conn = s.handle_accept(at(2)).unwrap();
    s.handle_bytes(at(2), conn, &request);
    let r = responses(&mut s, at(2));
    assert_eq!(r[0].1, 200);
    assert_eq!(s.request_memory(), 0);
}
