//! The client session against answers that are not its server's, driven by hand.

use holdwire_proto::url::Url;
use holdwire_proto::{Client, ClientConfig, Endpoint, Event, Instant, SessionError, SessionId};

fn at(ms: u64) -> Instant {
    Instant::from_micros(ms * 1000)
}

fn client() -> Client {
    let url = Url::parse("http://127.0.0.1:8080/tunnel/").unwrap();
    let sid = SessionId([5; 16]);
    Client::new(
        ClientConfig::default(),
        Endpoint::new(&url, sid, None),
        sid,
        [5; 16],
        at(0),
    )
}

/// A plain (non-holdwire) HTTP answer, as a web server or a proxy writes it.
fn plain(status: u16) -> Vec<u8> {
    let body = b"<html><body>not a holdwire endpoint</body></html>";
    let mut out = Vec::new();
    holdwire_proto::http::encode_response_head(&mut out, status, body.len(), true, false);
    out.extend_from_slice(body);
    out
}

fn events(c: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Sends the opening request and answers it with `answer`; returns the events.
fn open_answered_with(c: &mut Client, now: Instant, answer: &[u8]) -> Vec<Event> {
    let mut buf = Vec::new();
    let t = c.poll_transmit(now, &mut buf).expect("an opening request");
    c.handle_sent(now, t.conn);
    c.handle_bytes(now, t.conn, answer);
    events(c)
}

#[test]
fn not_found_while_opening_fails_at_once() {
    for status in [404, 405, 410] {
        let mut c = client();
        let got = open_answered_with(&mut c, at(10), &plain(status));
        assert_eq!(
            got.last(),
            Some(&Event::Failed(SessionError::Rejected { status })),
            "plain {status} while opening: {got:?}"
        );
        assert!(!got.contains(&Event::Opened), "{got:?}");
        assert!(c.is_ended());
    }
    let message = SessionError::Rejected { status: 404 }.to_string();
    assert!(
        message.contains("404") && message.contains("path"),
        "{message}"
    );
}

#[test]
fn proxy_errors_and_rate_limits_while_opening_are_retried() {
    for status in [400, 408, 429, 500, 502, 503, 504] {
        let mut c = client();
        let got = open_answered_with(&mut c, at(10), &plain(status));
        assert!(
            got.is_empty(),
            "plain {status} while opening is a failed exchange, not the end: {got:?}"
        );
        assert!(!c.is_ended(), "{status}");
        // The client tries again (after its backoff).
        let retry = c.poll_timeout().expect("a retry is scheduled");
        c.handle_timeout(retry);
        let mut buf = Vec::new();
        assert!(
            c.poll_transmit(retry, &mut buf).is_some(),
            "the opening request is sent again after a plain {status}"
        );
    }
}
