//! Failures and fallbacks: the listener killed mid-transfer, a proxy killed mid-transfer,
//! and the direct-TCP-first path (taken, refused, black-holed).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{ping_pong, serve_echo, Child};
use holdwire_std::{ClientOptions, Listener, ServerConfig, Stream};

const CHILD_ENV: &str = "HOLDWIRE_TEST_CHILD";

/// Not a test of its own: the body of the child process that [`spawn_echo_server`] starts
/// (this same test binary, told by an environment variable). Serves echo until killed, or
/// 120 s at most.
#[test]
fn child_echo_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let listener = Listener::bind("127.0.0.1:0", ServerConfig::default()).unwrap();
    println!("LISTENING {}", listener.local_addr().unwrap());
    serve_echo(listener);
    thread::sleep(Duration::from_secs(120));
}

/// Starts the echo server in a child process; returns it and its address.
fn spawn_echo_server() -> (Child, SocketAddr) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Child::spawn(
        Command::new(exe)
            .args([
                "child_echo_server",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped()),
    )
    .unwrap();
    let addr = common::wait_for_line(&mut child, "LISTENING ", Duration::from_secs(20))
        .expect("child server announces its address");
    (child, addr.trim().parse().unwrap())
}

/// Streams data through an echo service until `kill` runs, then measures how long the
/// reader and the writer take to fail. Returns (read error, its delay, write error, delay).
fn fail_mid_transfer(
    stream: Stream,
    kill: impl FnOnce(),
) -> (std::io::Error, Duration, std::io::Error, Duration) {
    let writer_stream = stream.try_clone().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let writer = thread::spawn(move || {
        let mut w = writer_stream;
        let chunk = vec![0x5au8; 64 * 1024];
        loop {
            if let Err(e) = w.write_all(&chunk) {
                return (e, Instant::now());
            }
        }
    });
    let reader = thread::spawn(move || {
        let mut r = stream;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        let mut announced = false;
        loop {
            match r.read(&mut buf) {
                Ok(0) => panic!("EOF after a kill: must be an error"),
                Ok(n) => total += n as u64,
                Err(e) => return (e, Instant::now()),
            }
            if !announced && total > 8 << 20 {
                announced = true;
                let _ = started_tx.send(());
            }
        }
    });
    started_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("transfer under way");
    let killed_at = Instant::now();
    kill();
    let (read_err, read_at) = reader.join().unwrap();
    let (write_err, write_at) = writer.join().unwrap();
    (
        read_err,
        read_at - killed_at,
        write_err,
        write_at - killed_at,
    )
}

fn short_bounds(options: &mut ClientOptions) -> Duration {
    let bound = Duration::from_secs(4);
    options.protocol.silence_timeout = bound;
    bound
}

#[test]
fn listener_killed_mid_transfer_fails_reader_and_writer_within_bound() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let (mut child, addr) = spawn_echo_server();
    let mut options = ClientOptions::new(&format!("http://{addr}/")).unwrap();
    let bound = short_bounds(&mut options);
    let stream = Stream::connect(options).unwrap();
    let pid = child.id();
    let (re, rd, we, wd) = fail_mid_transfer(stream, || child.kill());
    println!(
        "listener (pid {pid}) killed: read failed after {rd:.2?} ({:?}), write after {wd:.2?} ({:?}); bound {bound:?}",
        re.kind(),
        we.kind()
    );
    assert_eq!(re.kind(), ErrorKind::TimedOut, "{re}");
    assert_eq!(we.kind(), ErrorKind::TimedOut, "{we}");
    let slack = Duration::from_secs(2);
    assert!(rd <= bound + slack && wd <= bound + slack, "{rd:?} {wd:?}");
}

#[test]
fn proxy_killed_mid_transfer_fails_reader_and_writer_within_bound() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(mut proxy) = common::squid() else {
        return;
    };
    let listener = Listener::bind("127.0.0.1:0", ServerConfig::default()).unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    serve_echo(listener);
    let mut options = ClientOptions::new(&url)
        .unwrap()
        .proxy(&proxy.url())
        .unwrap();
    let bound = short_bounds(&mut options);
    let stream = Stream::connect(options).unwrap();
    let (re, rd, we, wd) = fail_mid_transfer(stream, || proxy.kill());
    println!(
        "squid killed: read failed after {rd:.2?} ({:?}), write after {wd:.2?} ({:?}); bound {bound:?}",
        re.kind(),
        we.kind()
    );
    assert_eq!(re.kind(), ErrorKind::TimedOut, "{re}");
    assert_eq!(we.kind(), ErrorKind::TimedOut, "{we}");
    let slack = Duration::from_secs(2);
    assert!(rd <= bound + slack && wd <= bound + slack, "{rd:?} {wd:?}");
}

fn direct_listener() -> (Listener, String) {
    let l =
        Listener::bind_with_direct("127.0.0.1:0", "127.0.0.1:0", ServerConfig::default()).unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    (l, url)
}

#[test]
fn direct_tcp_is_taken_when_it_answers() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let (l, url) = direct_listener();
    let direct = l.direct_addr().unwrap();
    let options = ClientOptions::new(&url)
        .unwrap()
        .direct(&direct.to_string());
    let client = Stream::connect(options).unwrap();
    let (server, from) = l.accept_timeout(Duration::from_secs(10)).unwrap();
    assert!(client.is_direct() && server.is_direct());
    assert_eq!(client.session_id(), None);
    assert_eq!(client.peer_addr().unwrap(), direct);
    assert_eq!(server.peer_addr().unwrap(), from);
    thread::spawn(move || common::echo(server));
    ping_pong(&client, 10).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    (&client).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

/// Connects with a direct address that does not work, and checks that the session lands
/// on HTTP within `direct_timeout` (plus the HTTP open).
fn assert_falls_back(direct: SocketAddr, direct_timeout: Duration) -> Duration {
    let (l, url) = direct_listener();
    serve_echo(l);
    let mut options = ClientOptions::new(&url)
        .unwrap()
        .direct(&direct.to_string());
    options.direct_timeout = direct_timeout;
    let start = Instant::now();
    let client = Stream::connect(options).unwrap();
    let took = start.elapsed();
    assert!(!client.is_direct(), "landed on HTTP");
    assert!(client.session_id().is_some());
    assert!(took < direct_timeout + Duration::from_secs(1), "{took:?}");
    ping_pong(&client, 5).unwrap();
    took
}

#[test]
fn fallback_to_http_when_the_direct_port_is_closed() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let took = assert_falls_back(closed, Duration::from_secs(2));
    println!("direct port closed (refused): on HTTP after {took:.2?}");
    assert!(
        took < Duration::from_secs(1),
        "a refused port falls back at once"
    );
}

#[test]
fn fallback_to_http_when_the_direct_port_drops_syns() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    // A listener that never accepts, its queue filled: further SYNs are dropped, as by a
    // `drop` firewall rule, so the direct attempt can only end by its timeout.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hole.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..4096 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => queued.push(s),
            Err(_) => break,
        }
    }
    assert!(queued.len() < 4096, "accept queue never filled");
    let timeout = Duration::from_millis(1500);
    let took = assert_falls_back(addr, timeout);
    println!("direct port black-holed: on HTTP after {took:.2?} (direct_timeout {timeout:?})");
    assert!(took >= timeout, "{took:?}");
}

#[test]
fn fallback_to_http_when_a_middlebox_answers_the_direct_port() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    // Some networks intercept every outgoing connection and answer it themselves (these
    // machines do, with a 404 page): the direct handshake must see through it.
    let interceptor = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = interceptor.local_addr().unwrap();
    thread::spawn(move || {
        for sock in interceptor.incoming().take(4) {
            let Ok(mut sock) = sock else { continue };
            let mut buf = [0u8; 256];
            let _ = sock.read(&mut buf);
            let _ = sock.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
            );
        }
    });
    let took = assert_falls_back(addr, Duration::from_secs(2));
    println!("direct port intercepted: on HTTP after {took:.2?}");
}

#[test]
fn direct_port_refuses_a_wrong_token() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let config = ServerConfig {
        token: Some(holdwire_std::proto::Token::new(b"right")),
        ..ServerConfig::default()
    };
    let l = Listener::bind_with_direct("127.0.0.1:0", "127.0.0.1:0", config).unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    let direct = l.direct_addr().unwrap().to_string();
    let mut options = ClientOptions::new(&url).unwrap().direct(&direct);
    options.protocol.token = Some(holdwire_std::proto::Token::new(b"wrong"));
    let err = Stream::connect(options).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        l.accept_timeout(Duration::from_millis(500)).is_err(),
        "nothing was handed to the application"
    );
    // The right token takes the direct path.
    let mut options = ClientOptions::new(&url).unwrap().direct(&direct);
    options.protocol.token = Some(holdwire_std::proto::Token::new(b"right"));
    let client = Stream::connect(options).unwrap();
    assert!(client.is_direct());
    let (server, _) = l.accept_timeout(Duration::from_secs(10)).unwrap();
    thread::spawn(move || common::echo(server));
    ping_pong(&client, 3).unwrap();
}
