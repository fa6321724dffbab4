//! Failures and the direct path: the server killed mid-transfer, and direct TCP first with
//! fallback to HTTP.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use holdwire_smol::{Listener, ServerConfig, Stream};
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The server process is killed mid-transfer: the client's read and write both fail within
/// the configured bound (`silence_timeout`), and neither hangs.
#[test]
fn server_killed_mid_transfer() {
    let Some(bin) = example("smol_echo_server") else {
        return;
    };
    let mut child = Command::new(&bin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start smol_echo_server");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut guard = ChildGuard {
        child,
        name: "smol_echo_server".into(),
        dir: None,
        shm_prefix: None,
    };
    let line = read_line(&mut stdout).expect("smol_echo_server output");
    let addr: SocketAddr = line
        .strip_prefix("http ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected smol_echo_server output {line:?}"));
    drain_in_background(stdout);

    let silence = Duration::from_secs(3);
    let mut o = options(addr, None);
    o.protocol.silence_timeout = silence;
    o.connect_timeout = Duration::from_secs(1);
    // The bound: the silence timeout, plus the time to notice it (one retransmission timeout
    // at most, max_rto) and scheduling slack.
    o.protocol.max_rto = Duration::from_secs(1);
    let bound = silence + o.protocol.max_rto + Duration::from_secs(2);

    run(Duration::from_secs(60), async {
        let stream = Stream::connect(o).await.expect("connect");
        let (mut r, mut w) = stream.split();
        let moved = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = moved.clone();
        let writer = smol::spawn(async move {
            let chunk = vec![0x5Au8; 16 * 1024];
            loop {
                if let Err(e) = w.write_all(&chunk).await {
                    return (e, Instant::now());
                }
            }
        });
        let reader = smol::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => {
                        return (
                            std::io::Error::new(ErrorKind::UnexpectedEof, "clean EOF"),
                            Instant::now(),
                        )
                    }
                    Ok(n) => {
                        counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => return (e, Instant::now()),
                }
            }
        });
        // Let data flow both ways, then kill the server by its PID.
        let start = Instant::now();
        while moved.load(std::sync::atomic::Ordering::Relaxed) < 4 << 20 {
            assert!(start.elapsed() < Duration::from_secs(20), "no echo flowing");
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        let pid = guard.pid();
        guard.kill();
        let killed = Instant::now();
        eprintln!(
            "killed smol_echo_server (pid {pid}) after {} bytes echoed",
            moved.load(std::sync::atomic::Ordering::Relaxed)
        );

        let (read_err, read_at) = within(bound + Duration::from_secs(5), reader)
            .await
            .expect("reader must not hang");
        let (write_err, write_at) = within(bound + Duration::from_secs(5), writer)
            .await
            .expect("writer must not hang");
        let (rt, wt) = (read_at - killed, write_at - killed);
        eprintln!("read failed after {rt:?} ({read_err}), write after {wt:?} ({write_err})");
        assert_eq!(read_err.kind(), ErrorKind::TimedOut, "{read_err}");
        assert_eq!(write_err.kind(), ErrorKind::TimedOut, "{write_err}");
        assert!(rt <= bound, "read failed after {rt:?}, bound {bound:?}");
        assert!(wt <= bound, "write failed after {wt:?}, bound {bound:?}");
    });
}

/// The direct port is open: `connect` takes raw TCP, and the listener hands out the raw
/// connection as a `Stream` too.
#[test]
fn direct_tcp_when_open() {
    run(Duration::from_secs(30), async {
        let l = Listener::bind_with_direct("127.0.0.1:0", "127.0.0.1:0", ServerConfig::default())
            .await
            .unwrap();
        let http = l.local_addr().unwrap();
        let direct = l.direct_addr().unwrap();
        let server = smol::spawn(async move {
            let (s, peer) = l.accept().await.unwrap();
            assert!(s.is_direct());
            assert_eq!(s.peer_addr().unwrap(), peer);
            echo(s).await.unwrap()
        });
        let o = options(http, None).direct(&direct.to_string());
        let mut s = Stream::connect(o).await.unwrap();
        assert!(s.is_direct(), "direct path taken");
        assert!(s.session_id().is_none());
        s.write_all(b"raw tcp").await.unwrap();
        s.close().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"raw tcp");
        assert_eq!(server.await, 7);
    });
}

fn fallback(direct: SocketAddr, direct_timeout: Duration) {
    run(Duration::from_secs(30), async {
        let l = listener(ServerConfig::default()).await;
        let http = l.local_addr().unwrap();
        let server = smol::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            assert!(!s.is_direct());
            echo(s).await.unwrap()
        });
        let mut o = options(http, None).direct(&direct.to_string());
        o.direct_timeout = direct_timeout;
        let start = Instant::now();
        let mut s = Stream::connect(o).await.unwrap();
        let took = start.elapsed();
        eprintln!("fell back to HTTP after {took:?} (direct timeout {direct_timeout:?})");
        assert!(!s.is_direct(), "HTTP session");
        assert!(
            took < direct_timeout + Duration::from_secs(2),
            "fallback took {took:?}"
        );
        s.write_all(b"over http").await.unwrap();
        s.close().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"over http");
        assert_eq!(server.await, 9);
    });
}

/// The direct port is closed (connection refused at once): the session goes over HTTP.
#[test]
fn fallback_when_direct_refused() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    fallback(closed, Duration::from_secs(2));
}

/// The direct port drops connection attempts (like a `drop` firewall: here a listener whose
/// accept queue is full, so SYNs go unanswered): the session goes over HTTP once
/// `direct_timeout` expires.
#[test]
fn fallback_when_direct_hangs() {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    // Fill the accept queue (never accepted) until a connect no longer completes.
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..4096 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fillers.push(s),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "could not fill the accept queue of {addr}");
    fallback(addr, Duration::from_millis(700));
    drop(fillers);
}
