//! Session semantics over loopback HTTP: many sessions at once, half-close, abort, dropping a
//! stream, the port-forwarding helper, and what the driver refuses.

mod common;

use std::io::{ErrorKind, Read as _, Write as _};
use std::time::{Duration, Instant};

use common::*;
use holdwire_smol::{copy_bidirectional, ClientOptions, Listener, ServerConfig, Stream};
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn pair() -> (Listener, Stream, Stream) {
    let l = listener(ServerConfig::default()).await;
    let client = Stream::connect(options(l.local_addr().unwrap(), None))
        .await
        .expect("connect");
    let (server, _) = l.accept().await.expect("accept");
    assert_eq!(server.session_id(), client.session_id());
    (l, client, server)
}

#[test]
fn hundred_concurrent_sessions() {
    const SESSIONS: u64 = 100;
    const LEN: u64 = 256 * 1024;
    run(Duration::from_secs(60), async {
        let l = listener(ServerConfig::default()).await;
        let addr = l.local_addr().unwrap();
        let server = smol::spawn(async move {
            let mut echoes = Vec::new();
            for _ in 0..SESSIONS {
                let (s, _) = l.accept().await.expect("accept");
                echoes.push(smol::spawn(echo(s)));
            }
            let mut total = 0;
            for e in echoes {
                total += e.await.expect("echo");
            }
            (l, total)
        });
        let start = Instant::now();
        let clients: Vec<_> = (0..SESSIONS)
            .map(|i| {
                smol::spawn(async move {
                    let s = Stream::connect(options(addr, None)).await.expect("connect");
                    let (sent, back) = exchange(s, 100 + i, LEN).await.expect("exchange");
                    assert_eq!(sent, back, "session {i} echo intact");
                    assert_eq!(back, expected_digest(100 + i, LEN));
                })
            })
            .collect();
        for c in clients {
            c.await;
        }
        let (l, total) = server.await;
        assert_eq!(total, SESSIONS * LEN);
        eprintln!(
            "{SESSIONS} sessions x {LEN} bytes echoed in {:?}; {} sessions left, stats {:?}",
            start.elapsed(),
            l.session_count(),
            l.stats()
        );
    });
}

#[test]
fn half_close_client_first() {
    run(Duration::from_secs(30), async {
        let (_l, mut client, mut server) = pair().await;
        client.write_all(b"question").await.unwrap();
        client.close().await.unwrap();
        let err = client
            .write_all(b"more")
            .await
            .expect_err("write after close");
        assert_eq!(err.kind(), ErrorKind::BrokenPipe);

        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"question");
        // The server can still talk after reading EOF.
        server.write_all(b"answer").await.unwrap();
        server.close().await.unwrap();

        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"answer");
        // EOF is sticky.
        assert_eq!(client.read(&mut [0u8; 8]).await.unwrap(), 0);
        assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 0);
    });
}

#[test]
fn half_close_server_first() {
    run(Duration::from_secs(30), async {
        let (_l, mut client, mut server) = pair().await;
        server.write_all(b"banner").await.unwrap();
        server.close().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"banner");
        client.write_all(b"reply after EOF").await.unwrap();
        client.close().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"reply after EOF");
    });
}

async fn expect_failure(stream: &mut Stream, kind: ErrorKind, what: &str) {
    let limit = Duration::from_secs(10);
    let read = within(limit, async {
        let mut sink = [0u8; 1024];
        loop {
            match stream.read(&mut sink).await {
                Ok(0) => return Err("clean EOF instead of an error".to_string()),
                Ok(_) => continue,
                Err(e) => return Ok(e),
            }
        }
    })
    .await
    .and_then(|r| r);
    let e = read.unwrap_or_else(|e| panic!("{what}: read: {e}"));
    assert_eq!(e.kind(), kind, "{what}: read error {e}");
    let e = within(limit, stream.write_all(b"x"))
        .await
        .unwrap_or_else(|e| panic!("{what}: write: {e}"))
        .expect_err("write after abort");
    assert_eq!(e.kind(), kind, "{what}: write error {e}");
}

#[test]
fn abort_from_client() {
    run(Duration::from_secs(30), async {
        let (_l, mut client, mut server) = pair().await;
        client.write_all(b"partial").await.unwrap();
        let mut got = [0u8; 7];
        server.read_exact(&mut got).await.unwrap();
        client.abort("giving up");
        expect_failure(
            &mut server,
            ErrorKind::ConnectionReset,
            "server after client abort",
        )
        .await;
        expect_failure(
            &mut client,
            ErrorKind::ConnectionAborted,
            "client after its abort",
        )
        .await;
    });
}

#[test]
fn abort_from_server() {
    run(Duration::from_secs(30), async {
        let (_l, mut client, mut server) = pair().await;
        server.write_all(b"partial").await.unwrap();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        server.abort("giving up");
        expect_failure(
            &mut client,
            ErrorKind::ConnectionReset,
            "client after server abort",
        )
        .await;
        expect_failure(
            &mut server,
            ErrorKind::ConnectionAborted,
            "server after its abort",
        )
        .await;
    });
}

/// Dropping a stream after writing delivers the data and the EOF, as closing a TCP socket does.
#[test]
fn drop_after_write_delivers() {
    const LEN: u64 = 1 << 20;
    run(Duration::from_secs(30), async {
        let (_l, client, server) = pair().await;
        let sent = send_pattern(client.clone(), 7, LEN).await.unwrap();
        drop(client);
        let (r, mut w) = server.clone().split();
        let received = within(Duration::from_secs(20), receive_digest(r))
            .await
            .unwrap_or_else(|e| panic!("{e}: server side {:?}", server.stats()))
            .unwrap();
        assert_eq!(received, sent);
        w.close().await.unwrap();
    });
}

/// Dropping a stream with unread data resets the session, as TCP does.
#[test]
fn drop_with_unread_data_resets() {
    run(Duration::from_secs(30), async {
        let (_l, client, mut server) = pair().await;
        server.write_all(b"nobody reads this").await.unwrap();
        // Let it arrive before the drop.
        let start = Instant::now();
        while client.stats().is_some_and(|s| s.bytes_received == 0)
            && start.elapsed() < Duration::from_secs(5)
        {
            smol::Timer::after(Duration::from_millis(5)).await;
        }
        drop(client);
        expect_failure(
            &mut server,
            ErrorKind::ConnectionReset,
            "server after unread drop",
        )
        .await;
    });
}

/// A local TCP port forwarded over a session with `copy_bidirectional`, half-close included.
#[test]
fn forward_tcp_port() {
    run(Duration::from_secs(30), async {
        let l = listener(ServerConfig::default()).await;
        let addr = l.local_addr().unwrap();
        let _echo = smol::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                smol::spawn(echo(s)).detach();
            }
        });
        let local = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local_addr = local.local_addr().unwrap();
        let forwarder = smol::spawn(async move {
            let (tcp, _) = local.accept().await.unwrap();
            let session = Stream::connect(options(addr, None)).await.unwrap();
            let observer = session.clone();
            copy_bidirectional(tcp, session)
                .await
                .map_err(|e| format!("{e}; session {:?}", observer.stats()))
        });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let back = smol::unblock(move || {
            let mut tcp = std::net::TcpStream::connect(local_addr).unwrap();
            tcp.write_all(&data).unwrap();
            tcp.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            tcp.read_to_end(&mut back).unwrap();
            back
        })
        .await;
        let forwarded = forwarder.await;
        assert!(
            back == expected,
            "echo through the forwarder: {} of {} bytes back, forwarder: {forwarded:?}",
            back.len(),
            expected.len()
        );
        let (up, down) = forwarded.expect("forwarder");
        assert_eq!((up, down), (200_000, 200_000));
    });
}

/// TLS to the proxy itself is not supported (https:// servers are, see tests/tls.rs).
#[test]
fn https_proxy_is_unsupported() {
    run(Duration::from_secs(10), async {
        let o = ClientOptions::new("http://127.0.0.1:9/")
            .unwrap()
            .proxy("https://127.0.0.1:9")
            .unwrap();
        let e = Stream::connect(o).await.expect_err("https proxy");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    });
}

/// `incoming()` hands out the same sessions as `accept()`.
#[test]
fn incoming_stream() {
    use smol::stream::StreamExt as _;
    run(Duration::from_secs(30), async {
        let l = listener(ServerConfig::default()).await;
        let addr = l.local_addr().unwrap();
        let server = smol::spawn(async move {
            let mut incoming = l.incoming();
            for _ in 0..3 {
                let s = incoming.next().await.unwrap().unwrap();
                smol::spawn(echo(s)).detach();
            }
        });
        for i in 0..3u8 {
            let mut s = Stream::connect(options(addr, None)).await.unwrap();
            s.write_all(&[i; 10]).await.unwrap();
            s.close().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, [i; 10]);
        }
        server.await;
    });
}

/// Dropping the listener keeps accepted sessions working (their HTTP port stays open).
#[test]
fn sessions_outlive_the_listener() {
    run(Duration::from_secs(30), async {
        let (l, mut client, mut server) = pair().await;
        drop(l);
        client.write_all(b"still here").await.unwrap();
        client.close().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"still here");
        server.write_all(b"and here").await.unwrap();
        server.close().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"and here");
    });
}

/// A graceful shutdown finishes every session: clients read EOF after the data.
#[test]
fn graceful_shutdown() {
    run(Duration::from_secs(30), async {
        let (l, mut client, mut server) = pair().await;
        server.write_all(b"last words").await.unwrap();
        l.shutdown();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        client.close().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        // New sessions are refused.
        let mut o = options(l.local_addr().unwrap(), None);
        o.protocol.max_failures = 2;
        let e = Stream::connect(o)
            .await
            .expect_err("refused while shutting down");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    });
}
