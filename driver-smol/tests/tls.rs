//! TLS at the library level: `Listener::bind_tls` with `Stream::connect_with_tls`, directly and
//! through tinyproxy's CONNECT tunnel (with and without its basic auth, and with a policy that
//! refuses our port), certificates the client must reject, and handshakes that go nowhere
//! while other clients are served.
//!
//! Certificates come from rcgen at test time (`pki`). Only 127.0.0.1 and ephemeral ports.

mod common;
mod pki;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{echo, exchange, expected_digest, run, tinyproxy_with};
use holdwire_smol::{tls, ClientOptions, Listener, ServerConfig, Stream};
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A TLS listener on an ephemeral loopback port that echoes every session.
async fn echo_listener(pki: &pki::Pki) -> (Listener, SocketAddr) {
    echo_listener_on(pki, "127.0.0.1:0").await
}

async fn echo_listener_on(pki: &pki::Pki, at: &str) -> (Listener, SocketAddr) {
    let config = tls::server_config_from_pem(&pki.cert, &pki.key).expect("server TLS config");
    let listener = Listener::bind_tls(at, ServerConfig::default(), config)
        .await
        .expect("bind a TLS listener");
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn serve_echo(listener: Listener) -> smol::Task<()> {
    smol::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            smol::spawn(async move {
                let _ = echo(stream).await;
            })
            .detach();
        }
    })
}

/// A TCP relay to `upstream` counting the connections it accepted (TLS passes through as is).
fn counting_relay(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            counter.fetch_add(1, Ordering::Relaxed);
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (addr, count)
}

fn https_options(addr: SocketAddr) -> ClientOptions {
    ClientOptions::new(&format!("https://{addr}/")).expect("server URL")
}

/// 4 MiB each way at once over https, checksummed; requests reuse their TLS connections.
#[test]
fn https_session_direct() {
    let pki = pki::generate();
    run(Duration::from_secs(60), async {
        let (listener, addr) = echo_listener(&pki).await;
        let _server = serve_echo(listener);
        let (relay, connections) = counting_relay(addr);
        let client = pki.client_config();
        // By name: the certificate is checked against `localhost`.
        let options = ClientOptions::new(&format!("https://localhost:{}/", relay.port())).unwrap();
        let stream = Stream::connect_with_tls(options, client)
            .await
            .expect("https session");
        const LEN: u64 = 4 << 20;
        let (sent, received) = exchange(stream.clone(), 11, LEN).await.expect("exchange");
        assert_eq!(sent, expected_digest(11, LEN));
        // The echo sends back what we sent.
        assert_eq!(received, expected_digest(11, LEN));
        let bulk_conns = connections.load(Ordering::Relaxed);

        // Ping-pong on a new session: every round trip is an exchange, on reused connections.
        let client = pki.client_config();
        let options = ClientOptions::new(&format!("https://localhost:{}/", relay.port())).unwrap();
        let mut stream = Stream::connect_with_tls(options, client)
            .await
            .expect("session");
        for i in 0..100u32 {
            let msg = format!("ping {i}");
            stream.write_all(msg.as_bytes()).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            stream.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg.as_bytes());
        }
        let exchanges = stream.stats().unwrap().exchanges;
        let conns = connections.load(Ordering::Relaxed) - bulk_conns;
        eprintln!(
            "https: 4 MiB each way on {bulk_conns} TLS connections; 100 round trips: \
             {exchanges} exchanges on {conns} TLS connections"
        );
        assert!(
            exchanges >= 100 && conns * 4 < exchanges,
            "keep-alive inside TLS: {conns} connections for {exchanges} exchanges"
        );
    });
}

/// The system roots alone do not know the test CA: opening fails at once with a clear error,
/// not after the open timeout.
#[test]
fn unknown_issuer_fails_opening_at_once() {
    let pki = pki::generate();
    run(Duration::from_secs(30), async {
        let (listener, addr) = echo_listener(&pki).await;
        listener.log_refusals(true);
        let _server = serve_echo(listener);
        let mut options = https_options(addr);
        options.protocol.open_timeout = Duration::from_secs(120);
        let e = Stream::connect(options).await.expect_err("unknown issuer");
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("certificate of 127.0.0.1 was rejected")
                && text.contains("UnknownIssuer"),
            "{text}"
        );

        // A certificate for other names: the name check fails the same way.
        let (other, other_addr) = echo_listener_on(&pki, "127.0.0.2:0").await;
        let _other = serve_echo(other);
        let client = pki.client_config();
        let mut options = https_options(other_addr);
        options.protocol.open_timeout = Duration::from_secs(120);
        let e = Stream::connect_with_tls(options, client)
            .await
            .expect_err("wrong name");
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("not valid for name"), "{e}");
    });
}

/// Clients that connect and never finish a handshake (silent, or sending garbage) hold up no
/// one: a real client is served meanwhile, and the garbage connection is closed.
#[test]
fn stalled_handshakes_do_not_block_others() {
    let pki = pki::generate();
    run(Duration::from_secs(60), async {
        let (listener, addr) = echo_listener(&pki).await;
        listener.log_refusals(true);
        let _server = serve_echo(listener);
        let silent: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut garbage = TcpStream::connect(addr).unwrap();
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let client = pki.client_config();
        let stream = Stream::connect_with_tls(https_options(addr), client)
            .await
            .expect("served while others stall");
        let (_, received) = exchange(stream, 5, 100_000).await.unwrap();
        assert_eq!(received, expected_digest(5, 100_000));
        // Plain HTTP on the TLS port gets no HTTP answer: the handshake fails and it is closed.
        garbage
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        let read = garbage.read_to_end(&mut answer);
        assert!(
            read.is_ok()
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
            "garbage connection not closed: {read:?}"
        );
        assert!(!answer.starts_with(b"HTTP/"), "plain HTTP was answered");
        drop(silent);
    });
}

/// Through tinyproxy's CONNECT with basic auth: with the credentials the session works; without
/// them opening fails at once with "proxy authentication required".
#[test]
fn https_through_connect_tunnel_with_proxy_auth() {
    let Some((_proxy, proxy)) = tinyproxy_with("BasicAuth hwuser hwpass") else {
        return;
    };
    let pki = pki::generate();
    run(Duration::from_secs(60), async {
        let (listener, addr) = echo_listener(&pki).await;
        let _server = serve_echo(listener);
        let client = pki.client_config();

        let options = https_options(addr)
            .proxy(&format!("http://hwuser:hwpass@{proxy}"))
            .unwrap();
        assert!(options.uses_connect_tunnel());
        let stream = Stream::connect_with_tls(options, client.clone())
            .await
            .expect("https through the CONNECT tunnel");
        const LEN: u64 = 1 << 20;
        let (_, received) = exchange(stream, 21, LEN).await.expect("exchange");
        assert_eq!(received, expected_digest(21, LEN));

        let mut options = https_options(addr)
            .proxy(&format!("http://{proxy}"))
            .unwrap();
        options.protocol.open_timeout = Duration::from_secs(120);
        let e = Stream::connect_with_tls(options, client)
            .await
            .expect_err("no proxy credentials");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(
            e.to_string().contains("proxy authentication required"),
            "{e}"
        );
    });
}

/// A proxy whose policy refuses CONNECT to our port (tinyproxy allows only `ConnectPort 443`):
/// opening fails at once and says so.
#[test]
fn connect_refused_by_proxy_policy() {
    let Some((_proxy, proxy)) = tinyproxy_with("ConnectPort 443") else {
        return;
    };
    let pki = pki::generate();
    run(Duration::from_secs(60), async {
        let (listener, addr) = echo_listener(&pki).await;
        let _server = serve_echo(listener);
        let client = pki.client_config();
        let mut options = https_options(addr)
            .proxy(&format!("http://{proxy}"))
            .unwrap();
        options.protocol.open_timeout = Duration::from_secs(120);
        let e = Stream::connect_with_tls(options, client)
            .await
            .expect_err("CONNECT refused");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        assert!(
            e.to_string()
                .contains("proxy refused the CONNECT tunnel: HTTP 403"),
            "{e}"
        );
    });
}

/// Bad PEM input is a clear error naming the file.
#[test]
fn pem_loading_errors_name_the_file() {
    let pki = pki::generate();
    let junk = pki.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = tls::load_certs(&junk).expect_err("no certificate");
    assert!(e.to_string().contains("junk.pem") && e.to_string().contains("no PEM certificate"));
    let e = tls::load_private_key(&junk).expect_err("no key");
    assert!(e.to_string().contains("no PEM private key"), "{e}");
    let missing = pki.dir.path().join("missing.pem");
    let e = tls::load_certs(&missing).expect_err("missing");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // The CA's certificate with the server's key: they do not fit together.
    let e = tls::server_config_from_pem(&pki.ca, &pki.key).expect_err("mismatch");
    assert!(e.to_string().contains("do not fit"), "{e}");
    assert_eq!(tls::load_certs(&pki.ca).unwrap(), vec![pki.ca_der.clone()]);
}

// ---------------------------------------------------------------------------------------------
// holdwire-std's https client against this listener
// ---------------------------------------------------------------------------------------------

/// Starts a TLS echo listener on the global executor; it lives as long as the test process.
fn std_echo_server(pki: &pki::Pki) -> SocketAddr {
    smol::block_on(async {
        let (listener, addr) = echo_listener(pki).await;
        serve_echo(listener).detach();
        addr
    })
}

/// Sends `len` pattern bytes from a writer thread while reading the echo back on this one.
fn std_echo_round(stream: &holdwire_std::Stream, seed: u64, len: usize) {
    let mut payload = vec![0u8; len];
    common::Pattern::new(seed).fill(&mut payload);
    let mut writer = stream.try_clone().unwrap();
    let sent = payload.clone();
    let writing = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; len];
    (&*stream).read_exact(&mut back).expect("read the echo");
    writing.join().unwrap().expect("write");
    assert!(back == payload, "the echo differs from what was sent");
}

/// holdwire-std over https: directly (2 MiB echoed, then round trips that reuse the TLS
/// connections) and through tinyproxy's CONNECT with basic auth; an unknown issuer fails
/// opening at once.
#[test]
fn std_client_over_https() {
    let pki = pki::generate();
    let addr = std_echo_server(&pki);
    let (relay, connections) = counting_relay(addr);
    let config = holdwire_std::tls::client_config(std::slice::from_ref(&pki.ca_der)).unwrap();
    let mut options = ClientOptions::new(&format!("https://localhost:{}/", relay.port())).unwrap();
    options.protocol.open_timeout = Duration::from_secs(20);
    let mut stream = holdwire_std::Stream::connect_with_tls(options, config.clone())
        .expect("https session from holdwire-std");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    std_echo_round(&stream, 3, 2 << 20);
    let before = connections.load(Ordering::Relaxed);
    for i in 0..50u32 {
        let msg = format!("ping {i}");
        stream.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    let new_conns = connections.load(Ordering::Relaxed) - before;
    eprintln!("holdwire-std https: 50 round trips on {new_conns} new TLS connections");
    assert!(
        new_conns < 10,
        "{new_conns} new connections for 50 round trips"
    );
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // An unknown issuer: the system roots alone.
    let mut options = https_options(addr);
    options.protocol.open_timeout = Duration::from_secs(120);
    let started = std::time::Instant::now();
    let e = holdwire_std::Stream::connect(options).expect_err("unknown issuer");
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the certificate error must end opening, not the open timeout"
    );

    // Through tinyproxy's CONNECT, with its basic auth from the proxy URL.
    let Some((_proxy, proxy)) = tinyproxy_with("BasicAuth hwuser hwpass") else {
        return;
    };
    let options = https_options(addr)
        .proxy(&format!("http://hwuser:hwpass@{proxy}"))
        .unwrap();
    let stream = holdwire_std::Stream::connect_with_tls(options, config.clone())
        .expect("https through the CONNECT tunnel");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    std_echo_round(&stream, 4, 1 << 20);
    let mut options = https_options(addr)
        .proxy(&format!("http://{proxy}"))
        .unwrap();
    options.protocol.open_timeout = Duration::from_secs(120);
    let e = holdwire_std::Stream::connect_with_tls(options, config).expect_err("no credentials");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string().contains("proxy authentication required"),
        "{e}"
    );
}
