//! TcpStream-like semantics, seen from both ends: half-close, abort, drop, timeouts, errors.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use holdwire_std::{ClientOptions, Listener, Peer, ServerConfig, Stream};

/// A listener and a connected pair (client, server side).
fn pair() -> (Listener, Stream, Stream) {
    let listener = Listener::bind("127.0.0.1:0", ServerConfig::default()).unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let client = Stream::connect(ClientOptions::new(&url).unwrap()).unwrap();
    let (server, _) = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(client.session_id(), server.session_id());
    (listener, client, server)
}

fn read_all(mut s: &Stream) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn client_half_close_then_server_answers() {
    let (_l, client, server) = pair();
    (&client).write_all(b"request").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        (&client).write(b"more").unwrap_err().kind(),
        ErrorKind::BrokenPipe,
        "no writes after shutdown(Write)"
    );
    // The server reads everything, then EOF, and can still answer.
    assert_eq!(read_all(&server).unwrap(), b"request");
    assert_eq!((&server).read(&mut [0; 8]).unwrap(), 0, "EOF stays EOF");
    (&server).write_all(b"response").unwrap();
    server.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&client).unwrap(), b"response");
    // Both sides finished: both see a clean close.
    let s = thread::spawn(move || server.close());
    client.close().unwrap();
    s.join().unwrap().unwrap();
}

#[test]
fn server_half_close_then_client_goes_on() {
    let (_l, client, server) = pair();
    (&server).write_all(b"greeting").unwrap();
    server.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&client).unwrap(), b"greeting");
    // The other direction still works after the server's half-close.
    (&client).write_all(b"late data").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&server).unwrap(), b"late data");
    let s = thread::spawn(move || server.close());
    client.close().unwrap();
    s.join().unwrap().unwrap();
}

fn assert_fails(s: &Stream, kind: ErrorKind, who: &str) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let e = (&*s).read(&mut [0; 16]).unwrap_err();
    assert_eq!(e.kind(), kind, "{who} read: {e}");
    let e = (&*s).write(b"x").unwrap_err();
    assert_eq!(e.kind(), kind, "{who} write: {e}");
}

#[test]
fn client_abort_resets_the_server() {
    let (_l, client, server) = pair();
    (&client).write_all(b"some data").unwrap();
    client.abort().unwrap();
    assert_fails(&client, ErrorKind::ConnectionAborted, "client");
    // The server may read what arrived before the abort, then fails.
    let mut buf = [0u8; 64];
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < until);
        match (&server).read(&mut buf) {
            Ok(n) => assert!(n > 0, "an aborted session must not read as EOF"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
                break;
            }
        }
    }
    assert_fails(&server, ErrorKind::ConnectionReset, "server");
}

#[test]
fn server_abort_resets_the_client() {
    let (_l, client, server) = pair();
    server.abort().unwrap();
    assert_fails(&server, ErrorKind::ConnectionAborted, "server");
    assert_fails(&client, ErrorKind::ConnectionReset, "client");
}

#[test]
fn dropping_with_unread_data_resets_the_peer() {
    // Server side dropped with unread data.
    let (_l, client, server) = pair();
    (&client).write_all(b"never read").unwrap();
    // Wait until it arrived, without reading it.
    thread::sleep(Duration::from_millis(300));
    drop(server);
    assert_fails(&client, ErrorKind::ConnectionReset, "client");

    // Client side dropped with unread data.
    let (_l, client, server) = pair();
    (&server).write_all(b"never read").unwrap();
    thread::sleep(Duration::from_millis(300));
    drop(client);
    assert_fails(&server, ErrorKind::ConnectionReset, "server");
}

#[test]
fn dropping_after_reading_everything_closes_cleanly() {
    let (_l, client, server) = pair();
    let server = thread::spawn(move || {
        let got = read_all(&server).unwrap();
        (&server).write_all(&got).unwrap();
        // Dropped here: finish, then the session closes in the background.
    });
    (&client).write_all(b"bye").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&client).unwrap(), b"bye");
    server.join().unwrap();
    client.close().unwrap();
}

#[test]
fn read_and_write_timeouts_leave_the_session_usable() {
    let (_l, client, server) = pair();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(
        client.read_timeout().unwrap(),
        Some(Duration::from_millis(200))
    );
    let t = Instant::now();
    let e = (&client).read(&mut [0; 8]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(client.set_read_timeout(Some(Duration::ZERO)).is_err());

    // Fill the server's window until a write times out (nobody reads on the client).
    server
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let chunk = vec![1u8; 64 * 1024];
    let mut sent = 0usize;
    let err = loop {
        match (&server).write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 64 << 20, "backpressure never came");
    };
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
    // Everything written arrives.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    while got < sent {
        got += (&client).read(&mut buf).unwrap();
    }
    assert_eq!(got, sent);
}

#[test]
fn one_thread_reads_while_another_writes() {
    let (_l, client, server) = pair();
    thread::spawn(move || common::echo(server));
    let reader = client.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut w = client;
        for i in 0..1000u32 {
            w.write_all(&i.to_le_bytes()).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_all(&reader).unwrap();
    writer.join().unwrap();
    let want: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()).collect();
    assert_eq!(got, want);
}

#[test]
fn peer_information() {
    let (l, client, server) = pair();
    let url = format!("http://{}/", l.local_addr().unwrap());
    assert_eq!(
        client.peer().unwrap(),
        Peer::HttpServer {
            url: url.trim_end_matches('/').to_string() + "/",
            proxy: None
        }
    );
    assert_eq!(client.peer_addr().unwrap(), l.local_addr().unwrap());
    assert!(matches!(server.peer().unwrap(), Peer::HttpClient(a) if a.ip().is_loopback()));
    assert!(!client.is_direct() && !server.is_direct());
    assert!(format!("{client:?}").contains("session"));
}

/// TLS to the proxy itself is not supported (https:// servers are: see holdwire-smol's
/// tests/tls.rs, which runs this driver against a TLS listener).
#[test]
fn https_proxy_is_refused_as_unsupported() {
    let o = ClientOptions::new("http://127.0.0.1:1/")
        .unwrap()
        .proxy("https://127.0.0.1:2")
        .unwrap();
    assert_eq!(
        Stream::connect(o).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(
        Stream::connect_url("ftp://x/").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn dropping_the_listener_keeps_accepted_sessions() {
    let (l, client, server) = pair();
    let url = format!("http://{}/", l.local_addr().unwrap());
    drop(l);
    thread::spawn(move || common::echo(server));
    common::ping_pong(&client, 10).unwrap();
    // New sessions are refused: the core confirms a session in its first answer, before
    // the driver sees it, so the refusal is an abort right after the open.
    let mut o = ClientOptions::new(&url).unwrap();
    o.protocol.max_failures = 2;
    if let Ok(late) = Stream::connect(o) {
        late.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let e = (&late).read(&mut [0; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    }
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&client).unwrap(), b"");
    client.close().unwrap();
}

#[test]
fn connecting_to_nothing_fails_within_the_silence_timeout() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut o = ClientOptions::new(&format!("http://{closed}/")).unwrap();
    o.protocol.silence_timeout = Duration::from_secs(1);
    let start = Instant::now();
    let e = Stream::connect(o).unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}
