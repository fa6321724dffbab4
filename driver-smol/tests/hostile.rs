//! Hostile clients against the real `holdwire server` binary (`CARGO_BIN_EXE_holdwire`):
//! slowloris in the head and in the body, oversized heads, huge and negative `Content-Length`,
//! chunked bodies that never end, garbage, unknown and guessed session ids, one session's
//! requests replayed into another, a flood of opens beyond `--max-sessions`, and hundreds of
//! half-open connections.
//!
//! Each test runs an [`Arena`]: the server (its stderr captured), a TCP echo target, a
//! well-behaved session (holdwire-std's `Stream`) echoing a checksummed pattern all along, and a
//! sampler of the server's RSS (`VmRSS` in /proc/PID/status). Each attack asserts the status the
//! server answers (statuses from `proto/src/server.rs` and docs/PROTOCOL.md section 11.1) or
//! that it closed the connection, and the server's log line for it (it names the attacker's
//! address). [`Arena::finish`] then asserts that the good session kept moving intact data
//! during the attack, that the RSS stayed under [`RSS_BOUND_KB`], and that nothing panicked.
//!
//! Only 127.0.0.1 and ephemeral ports; every wait has a deadline; processes are killed by PID
//! when their guard drops.

use std::io::{BufRead as _, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use holdwire_smol::proto::wire::{self, BundleEncoder, Header, SessionId};
use holdwire_smol::proto::Token;
use holdwire_testkit::{FaultRelay, Plan};

const BIN: &str = env!("CARGO_BIN_EXE_holdwire");
/// The token of the servers started with authentication.
const TOKEN: &str = "hostile-test-token";
/// The server's `--request-timeout` in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound on the server's resident memory, in KiB, throughout every attack.
const RSS_BOUND_KB: u64 = 64 * 1024;
/// How long helper threads may live, whatever happens.
const THREAD_LIFETIME: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// The arena: server, echo target, good session, RSS sampler
// ---------------------------------------------------------------------------------------------

/// The `holdwire server` process, killed by PID and reaped on drop; its stderr is collected.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(target: SocketAddr, extra: &[&str]) -> Server {
        let target = target.to_string();
        let mut cmd = Command::new(BIN);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--target", &target])
            .args([
                "--request-timeout",
                "2",
                "--max-wait",
                "2",
                "--idle-timeout",
                "10",
            ])
            .args(extra)
            .env_remove("HOLDWIRE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start holdwire server");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            // Ends with the process.
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("serving http://") {
                    let _ = tx.send(line.clone());
                }
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the server did not start:\n{}", server.stderr()));
        server.addr = line
            .split("serving http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        server
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Resident memory in KiB.
    fn rss_kb(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Waits (at most 10 s) until the log has `count` lines containing every one of `parts`.
    fn wait_log(&self, parts: &[&str], count: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.stderr();
            let found = log
                .lines()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .count();
            if found >= count {
                return;
            }
            assert!(
                Instant::now() < until,
                "the server logged {found} lines with {parts:?}, not {count}; its log:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the server logged refusing the request on the connection from `from` with
    /// `status`.
    fn assert_logged(&self, from: SocketAddr, status: u16) {
        self.wait_log(
            &[
                &format!("refused a request from {from}: "),
                &format!("HTTP {status} "),
            ],
            1,
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL to this child's PID only, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP echo target on 127.0.0.1 (one thread per connection; EOF half-closes).
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo target");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            let born = Instant::now();
            while !flag.load(Ordering::Relaxed) && born.elapsed() < THREAD_LIFETIME {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let flag = flag.clone();
                        thread::spawn(move || echo_conn(tcp, &flag));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        Echo { addr, stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo_conn(mut tcp: TcpStream, stop: &AtomicBool) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 64 * 1024];
    let born = Instant::now();
    while !stop.load(Ordering::Relaxed) && born.elapsed() < THREAD_LIFETIME {
        match tcp.read(&mut buf) {
            Ok(0) => {
                let _ = tcp.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if tcp.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// The pattern byte at stream offset `i` (a hash of its 8-byte block, so any misplaced,
/// repeated or foreign byte shows).
fn pattern_byte(i: u64) -> u8 {
    let mut z = (i / 8).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()[(i % 8) as usize]
}

/// A well-behaved session through the server to the echo target, echoing the pattern in
/// 32 KiB round trips and checking every byte that comes back, until stopped.
struct GoodSession {
    verified: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    id: SessionId,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl GoodSession {
    fn start(server: SocketAddr, token: Option<&str>) -> GoodSession {
        let mut options = holdwire_std::ClientOptions::new(&format!("http://{server}/")).unwrap();
        options.protocol.token = token.map(|t| Token::new(t.as_bytes()));
        let mut stream = holdwire_std::Stream::connect(options).expect("the good session opens");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let id = stream.session_id().expect("an HTTP session");
        let verified = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (verified.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut sent = 0u64;
            let mut out = vec![0u8; 32 * 1024];
            let mut back = vec![0u8; 32 * 1024];
            let born = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if born.elapsed() > THREAD_LIFETIME {
                    return Err("ran out of time".into());
                }
                for (k, b) in out.iter_mut().enumerate() {
                    *b = pattern_byte(sent + k as u64);
                }
                stream.write_all(&out).map_err(|e| format!("write: {e}"))?;
                stream
                    .read_exact(&mut back)
                    .map_err(|e| format!("read after {sent} bytes: {e}"))?;
                if let Some(k) = (0..back.len()).find(|&k| back[k] != out[k]) {
                    return Err(format!("wrong byte at offset {}", sent + k as u64));
                }
                sent += out.len() as u64;
                count.store(sent, Ordering::Relaxed);
            }
            // A clean end: half-close, then the echo's EOF.
            stream
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            let mut rest = Vec::new();
            stream
                .read_to_end(&mut rest)
                .map_err(|e| format!("reading to EOF: {e}"))?;
            if !rest.is_empty() {
                return Err(format!("{} bytes nobody sent", rest.len()));
            }
            Ok(())
        });
        GoodSession {
            verified,
            stop,
            id,
            thread: Some(thread),
        }
    }

    fn verified(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// Waits until at least `more` further bytes were verified (at most `limit`).
    fn wait_progress(&self, more: u64, limit: Duration) -> bool {
        let target = self.verified() + more;
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self.verified() >= target {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn stop(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("stopped once");
        let until = Instant::now() + Duration::from_secs(30);
        while !thread.is_finished() {
            if Instant::now() >= until {
                return Err("the good session hung".into());
            }
            thread::sleep(Duration::from_millis(10));
        }
        thread
            .join()
            .unwrap_or_else(|_| Err("the good session panicked".into()))
    }
}

impl Drop for GoodSession {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Samples a process's RSS every 10 ms and keeps the peak.
struct RssWatch {
    peak_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let peak_kb = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, flag) = (peak_kb.clone(), stop.clone());
        thread::spawn(move || {
            let born = Instant::now();
            while !flag.load(Ordering::Relaxed) && born.elapsed() < THREAD_LIFETIME {
                if let Some(kb) = Server::rss_kb(pid) {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        RssWatch { peak_kb, stop }
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The server, its target, a good session beside the attack, and the RSS sampler.
struct Arena {
    name: &'static str,
    good: GoodSession,
    rss: RssWatch,
    server: Server,
    _echo: Echo,
}

impl Arena {
    /// A server with a token (`--token`), plus `extra` flags.
    fn with_token(name: &'static str, extra: &[&str]) -> Arena {
        let mut args = vec!["--token", TOKEN];
        args.extend_from_slice(extra);
        Arena::start(name, &args, Some(TOKEN))
    }

    /// A server without authentication, plus `extra` flags.
    fn without_auth(name: &'static str, extra: &[&str]) -> Arena {
        let mut args = vec!["--no-auth"];
        args.extend_from_slice(extra);
        Arena::start(name, &args, None)
    }

    fn start(name: &'static str, args: &[&str], token: Option<&'static str>) -> Arena {
        let echo = Echo::start();
        let server = Server::start(echo.addr, args);
        let rss = RssWatch::start(server.child.id());
        let good = GoodSession::start(server.addr, token);
        assert!(
            good.wait_progress(256 * 1024, Duration::from_secs(20)),
            "{name}: the good session does not move data before the attack"
        );
        Arena {
            name,
            good,
            rss,
            server,
            _echo: echo,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Asserts the good session still moves intact data, ends it cleanly, and checks the
    /// server's memory peak and log.
    fn finish(mut self, verified_before: u64) {
        let name = self.name;
        assert!(
            self.good.wait_progress(256 * 1024, Duration::from_secs(20)),
            "{name}: the good session stalled after the attack; server log:\n{}",
            self.server.stderr()
        );
        let during = self.good.verified() - verified_before;
        let result = self.good.stop();
        let peak = self.rss.peak_kb.load(Ordering::Relaxed);
        let log = self.server.stderr();
        eprintln!(
            "{name}: good session verified {during} bytes during and after the attack ({} in \
             all); server RSS peak {} KiB; {} log lines",
            self.good.verified(),
            peak,
            log.lines().count()
        );
        assert_eq!(
            result,
            Ok(()),
            "{name}: the good session; server log:\n{log}"
        );
        assert!(peak > 0, "{name}: RSS was never sampled");
        assert!(
            peak <= RSS_BOUND_KB,
            "{name}: server RSS peaked at {peak} KiB, bound {RSS_BOUND_KB} KiB"
        );
        assert!(
            !log.to_lowercase().contains("panic"),
            "{name}: the server panicked:\n{log}"
        );
        assert!(
            matches!(self.server.child.try_wait(), Ok(None)),
            "{name}: the server exited:\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

/// What the server did with a request.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// A response with this status (and body).
    Status(u16, Vec<u8>),
    /// The connection closed without a response.
    Closed,
}

impl Reply {
    fn status(&self) -> Option<u16> {
        match self {
            Reply::Status(s, _) => Some(*s),
            Reply::Closed => None,
        }
    }
}

/// A raw client connection to the server.
struct Raw {
    tcp: TcpStream,
    local: SocketAddr,
    got: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let local = tcp.local_addr().unwrap();
        Raw {
            tcp,
            local,
            got: Vec::new(),
        }
    }

    /// Sends `bytes`; false if the server closed the connection (or reset it).
    fn send(&mut self, bytes: &[u8]) -> bool {
        self.tcp.write_all(bytes).is_ok()
    }

    /// Reads what has arrived (waiting at most `wait`): `Some` once there is a whole response
    /// or the connection closed.
    fn poll(&mut self, wait: Duration) -> Option<Reply> {
        let until = Instant::now() + wait;
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(reply) = parse_response(&self.got) {
                return Some(reply);
            }
            match self.tcp.read(&mut buf) {
                Ok(0) => return Some(Reply::Closed),
                Ok(n) => {
                    self.got.extend_from_slice(&buf[..n]);
                    continue;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // A reset after the server refused and closed.
                Err(_) => return Some(parse_response(&self.got).unwrap_or(Reply::Closed)),
            }
            if Instant::now() >= until {
                return None;
            }
        }
    }

    /// Waits for the reply, at most `limit`; panics if there is none by then.
    fn reply(&mut self, limit: Duration) -> Reply {
        self.poll(limit)
            .unwrap_or_else(|| panic!("no answer and no close within {limit:?}"))
    }
}

/// A whole response (head and `Content-Length` body) at the start of `data`.
fn parse_response(data: &[u8]) -> Option<Reply> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&data[..end]);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let body = data.get(end + 4..end + 4 + len)?;
    Some(Reply::Status(status, body.to_vec()))
}

/// Sends `request` on a new connection and returns the reply (at most 10 s) and the
/// connection's local address (for the log line).
fn one_shot(server: SocketAddr, request: &[u8]) -> (Reply, SocketAddr) {
    let mut raw = Raw::connect(server);
    // The server may refuse and close before reading everything: a failed write is fine.
    raw.send(request);
    (raw.reply(Duration::from_secs(10)), raw.local)
}

/// A POST of `body` to `/{path}`.
fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /{path} HTTP/1.1\r\nHost: holdwire\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// A client bundle of session `id`, request `rid`, optionally opening it, untagged.
fn bundle(id: SessionId, rid: u64, open: bool) -> Vec<u8> {
    let mut body = Vec::new();
    let header = Header {
        session: id,
        rid,
        window: 1 << 20,
        hold: 1,
        ..Default::default()
    };
    let mut enc = BundleEncoder::new(&mut body, &header, &[], 0);
    if open {
        enc.open(&[0x42; 16], 0);
    }
    enc.message(0, b"hostile payload");
    enc.finish_untagged();
    body
}

/// A session id from `n` (for guessed and flood ids).
fn id_from(n: u64, salt: u8) -> SessionId {
    let mut id = [salt; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    SessionId(id)
}

/// The bundle of an HTTP request (the bytes after its head).
fn body_of(request: &[u8]) -> &[u8] {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    &request[end..]
}

// ---------------------------------------------------------------------------------------------
// The attacks
// ---------------------------------------------------------------------------------------------

/// Slowloris in the head: connections dripping header bytes; each gets `408` at the request
/// timeout (or is closed), and each refusal is logged.
#[test]
fn slowloris_in_headers() {
    let arena = Arena::with_token("slowloris in headers", &[]);
    let before = arena.good.verified();
    let mut conns: Vec<Raw> = (0..20).map(|_| Raw::connect(arena.addr())).collect();
    for c in &mut conns {
        c.send(b"POST /00112233445566778899aabbccddeeff HTTP/1.1\r\nHost: x\r\n");
    }
    let start = Instant::now();
    let mut replies: Vec<Option<Reply>> = (0..conns.len()).map(|_| None).collect();
    let mut i = 0u64;
    while replies.iter().any(Option::is_none) {
        assert!(
            start.elapsed() < REQUEST_TIMEOUT * 5,
            "slowloris connections still open after {:?}",
            start.elapsed()
        );
        for (c, reply) in conns.iter_mut().zip(replies.iter_mut()) {
            // Read first: a drip after the server closed may be answered with a reset.
            if reply.is_none() {
                *reply = c.poll(Duration::ZERO);
            }
            if reply.is_none() {
                c.send(format!("X-Drip-{i}: a\r\n").as_bytes());
                *reply = c.poll(Duration::from_millis(5));
            }
        }
        i += 1;
        thread::sleep(Duration::from_millis(200));
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= REQUEST_TIMEOUT - Duration::from_millis(300),
        "{elapsed:?}"
    );
    for (c, reply) in conns.iter().zip(&replies) {
        assert_eq!(
            reply.as_ref().and_then(Reply::status),
            Some(408),
            "{reply:?}"
        );
        arena.server.assert_logged(c.local, 408);
    }
    arena.finish(before);
}

/// Slowloris in the body: a whole head, then the body a byte at a time.
#[test]
fn slowloris_in_body() {
    let arena = Arena::with_token("slowloris in body", &[]);
    let before = arena.good.verified();
    let mut conns: Vec<Raw> = (0..20).map(|_| Raw::connect(arena.addr())).collect();
    for c in &mut conns {
        c.send(
            b"POST /00112233445566778899aabbccddeeff HTTP/1.1\r\nHost: x\r\n\
              Content-Length: 100000\r\n\r\nhw",
        );
    }
    let start = Instant::now();
    let mut replies: Vec<Option<Reply>> = (0..conns.len()).map(|_| None).collect();
    while replies.iter().any(Option::is_none) {
        assert!(start.elapsed() < REQUEST_TIMEOUT * 5, "still open");
        for (c, reply) in conns.iter_mut().zip(replies.iter_mut()) {
            if reply.is_none() {
                *reply = c.poll(Duration::ZERO);
            }
            if reply.is_none() {
                c.send(b"\x01");
                *reply = c.poll(Duration::from_millis(5));
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    for (c, reply) in conns.iter().zip(&replies) {
        assert_eq!(
            reply.as_ref().and_then(Reply::status),
            Some(408),
            "{reply:?}"
        );
        arena.server.assert_logged(c.local, 408);
    }
    arena.finish(before);
}

/// An oversized head (one huge header, or too many headers) gets `431` (the status for
/// oversized headers, RFC 6585; PROTOCOL.md 11.1) and a close.
#[test]
fn oversized_headers() {
    let arena = Arena::with_token("oversized headers", &[]);
    let before = arena.good.verified();
    let huge = format!(
        "POST /00112233445566778899aabbccddeeff HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let mut many = String::from("POST /00112233445566778899aabbccddeeff HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "z".repeat(32 * 1024));
    for request in [huge, many, long_line] {
        let (reply, from) = one_shot(arena.addr(), request.as_bytes());
        assert_eq!(reply.status(), Some(431), "{reply:?}");
        arena.server.assert_logged(from, 431);
    }
    arena.finish(before);
}

/// A `Content-Length` beyond the body limit gets `413`; one that is negative, overflows or is
/// not a number gets `400`.
#[test]
fn huge_and_negative_content_length() {
    let arena = Arena::with_token("huge and negative Content-Length", &[]);
    let before = arena.good.verified();
    let head = |cl: &str| {
        format!(
            "POST /00112233445566778899aabbccddeeff HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\nhw"
        )
    };
    for (cl, status) in [
        ("1000000000000", 413),
        ("67108864", 413),
        ("-1", 400),
        ("-9223372036854775808", 400),
        ("340282366920938463463374607431768211456", 400),
        ("12abc", 400),
        ("5, 6", 400),
    ] {
        let (reply, from) = one_shot(arena.addr(), head(cl).as_bytes());
        let got = reply.status();
        // Overflowing lengths are "too large" to some parsers: both answers refuse it.
        let ok = got == Some(status) || (cl.len() > 30 && got == Some(413));
        assert!(ok, "Content-Length {cl}: {reply:?}, expected {status}");
        arena.server.assert_logged(from, got.unwrap());
    }
    arena.finish(before);
}

/// Chunked bodies that never end: sent fast they hit the body limit (`413`), trickled they
/// hit the request timeout (`408`).
#[test]
fn chunked_bodies_that_never_end() {
    let arena = Arena::with_token("chunked bodies that never end", &[]);
    let before = arena.good.verified();
    let head = b"POST /00112233445566778899aabbccddeeff HTTP/1.1\r\nHost: x\r\n\
                 Transfer-Encoding: chunked\r\n\r\n";

    // Fast: 64 KiB chunks until the server answers (at most 64 MiB), a few times over. The
    // client is still sending when the server refuses and closes: the answer must reach it
    // all the same, not be destroyed by a reset (the server lingers before closing).
    let chunk = {
        let mut c = b"10000\r\n".to_vec();
        c.extend(std::iter::repeat_n(b'x', 0x10000));
        c.extend_from_slice(b"\r\n");
        c
    };
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let mut fast = Raw::connect(arena.addr());
        fast.send(head);
        let mut reply = None;
        for _ in 0..1024 {
            if !fast.send(&chunk) {
                break;
            }
            if let Some(r) = fast.poll(Duration::ZERO) {
                reply = Some(r);
                break;
            }
        }
        let reply = reply.unwrap_or_else(|| fast.reply(Duration::from_secs(10)));
        // 413 at the body limit; on a machine too loaded to take 4 MiB within the request
        // timeout, 408 first. Either refuses the request, and is logged.
        let status = reply.status();
        assert!(matches!(status, Some(413 | 408)), "{reply:?}");
        arena.server.assert_logged(fast.local, status.unwrap());
        statuses.push(status.unwrap());
    }
    eprintln!("fast endless chunked bodies answered {statuses:?}");

    // Slow: a one-byte chunk every 200 ms.
    let mut slow = Raw::connect(arena.addr());
    slow.send(head);
    let start = Instant::now();
    let reply = loop {
        assert!(start.elapsed() < REQUEST_TIMEOUT * 5, "still open");
        if let Some(r) = slow.poll(Duration::from_millis(200)) {
            break r;
        }
        slow.send(b"1\r\nx\r\n");
    };
    assert_eq!(reply.status(), Some(408), "{reply:?}");
    arena.server.assert_logged(slow.local, 408);
    arena.finish(before);
}

/// Garbage: bytes that are not HTTP (`400` and a close), bodies that are not bundles (`400`
/// with `UNREADABLE`), a bundle with a bad CRC, and a bundle whose session id differs from
/// its path (`400`).
#[test]
fn garbage_bundles() {
    let arena = Arena::with_token("garbage bundles", &[]);
    let before = arena.good.verified();
    let id = id_from(7, 0xab);
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect()
    };
    // Not HTTP at all (a TLS ClientHello, noise): refused at once, not at the request timeout.
    for garbage in [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        noise(4096),
    ] {
        let start = Instant::now();
        let (reply, from) = one_shot(arena.addr(), &garbage);
        assert_eq!(reply.status(), Some(400), "{reply:?}");
        assert!(
            start.elapsed() < REQUEST_TIMEOUT,
            "refused only at the timeout"
        );
        arena.server.assert_logged(from, 400);
    }
    // Bodies that are not bundles, of several sizes.
    for len in [0, 1, 50, 51, 1000, 100_000] {
        let (reply, from) = one_shot(arena.addr(), &post(&id.to_string(), &noise(len)));
        assert_eq!(reply.status(), Some(400), "{len} bytes of noise: {reply:?}");
        arena.server.assert_logged(from, 400);
    }
    // A bundle with one byte flipped (CRC mismatch).
    let mut b = bundle(id, 1, true);
    b[60] ^= 0x20;
    let (reply, from) = one_shot(arena.addr(), &post(&id.to_string(), &b));
    assert_eq!(reply.status(), Some(400), "{reply:?}");
    arena.server.assert_logged(from, 400);
    // A bundle of another session than its path names.
    let b = bundle(id_from(8, 0xab), 1, true);
    let (reply, from) = one_shot(arena.addr(), &post(&id.to_string(), &b));
    assert_eq!(reply.status(), Some(400), "{reply:?}");
    arena.server.assert_logged(from, 400);
    // A bundle with a valid CRC but a broken frame.
    let mut b = bundle(id, 1, false);
    let frame_len_at = wire::HEADER_LEN + 1;
    b[frame_len_at..frame_len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    let crc_at = b.len() - 4;
    let crc = wire::crc32c(&b[..crc_at]);
    b[crc_at..].copy_from_slice(&crc.to_be_bytes());
    let (reply, from) = one_shot(arena.addr(), &post(&id.to_string(), &b));
    assert_eq!(reply.status(), Some(400), "{reply:?}");
    arena.server.assert_logged(from, 400);
    arena.finish(before);
}

/// Unknown and guessed session ids: well-formed bundles for sessions that do not exist get
/// `404` (`ABORT UNKNOWN_SESSION`), ids near the good session's included; paths without an id
/// get `404` too. None of it touches the good session.
#[test]
fn unknown_and_guessed_session_ids() {
    let arena = Arena::with_token("unknown and guessed session ids", &[]);
    let before = arena.good.verified();
    let good = arena.good.id;
    let mut guesses = vec![SessionId([0; 16]), SessionId([0xff; 16])];
    guesses.extend((1..=100).map(|n| id_from(n, 0)));
    for bit in 0..128 {
        let mut near = good.0;
        near[bit / 8] ^= 1 << (bit % 8);
        guesses.push(SessionId(near));
    }
    // Many guesses on one keep-alive connection, as a scanner would send them.
    let mut raw = Raw::connect(arena.addr());
    for (rid, id) in guesses.iter().enumerate() {
        raw.got.clear();
        assert!(raw.send(&post(&id.to_string(), &bundle(*id, rid as u64 + 1, false))));
        let reply = raw.reply(Duration::from_secs(10));
        assert_eq!(reply.status(), Some(404), "guess {id}: {reply:?}");
    }
    arena.server.wait_log(
        &["refused a request from", "HTTP 404 (unknown session)"],
        guesses.len(),
    );
    for path in ["", "zz", "0123", "0123456789abcdef0123456789abcdeg"] {
        let (reply, from) = one_shot(arena.addr(), &post(path, b"x"));
        assert_eq!(reply.status(), Some(404), "path /{path}: {reply:?}");
        arena.server.assert_logged(from, 404);
    }
    arena.finish(before);
}

/// With a token, a request of one session replayed into another (the good session: its id in
/// the path and the bundle, the CRC fixed up) fails its tag: `403`, logged, and the good
/// session is untouched. Requests of an aborted session replayed later get `410`.
#[test]
fn requests_of_one_session_replayed_into_another() {
    let arena = Arena::with_token("replay into another session", &[]);
    let before = arena.good.verified();
    // A second session through a plain relay that keeps the requests it forwards.
    let relay = FaultRelay::start(arena.addr(), Plan::new(1)).unwrap();
    let mut other = GoodSession::start(relay.addr(), Some(TOKEN));
    assert!(other.wait_progress(128 * 1024, Duration::from_secs(20)));
    assert_eq!(other.stop(), Ok(()));
    let captured = relay.captured();
    assert!(captured.len() >= 4, "{} requests captured", captured.len());
    let good = arena.good.id.to_string();
    for request in &captured {
        let mut body = body_of(request).to_vec();
        let victim = SessionId(body[4..20].try_into().unwrap());
        assert_ne!(victim, arena.good.id);
        // Into the good session: same bytes, the good session's id, a valid CRC.
        body[4..20].copy_from_slice(&arena.good.id.0);
        let crc_at = body.len() - 4;
        let crc = wire::crc32c(&body[..crc_at]);
        body[crc_at..].copy_from_slice(&crc.to_be_bytes());
        let (reply, from) = one_shot(arena.addr(), &post(&good, &body));
        assert_eq!(reply.status(), Some(403), "{reply:?}");
        arena.server.assert_logged(from, 403);
        // Only the path changed: the bundle does not match it.
        let (reply, from) = one_shot(arena.addr(), &post(&good, body_of(request)));
        assert_eq!(reply.status(), Some(400), "{reply:?}");
        arena.server.assert_logged(from, 400);
    }

    // Requests of a session that was aborted, replayed afterwards: `410`, logged.
    let relay = FaultRelay::start(arena.addr(), Plan::new(2)).unwrap();
    let mut options =
        holdwire_std::ClientOptions::new(&format!("http://{}/", relay.addr())).unwrap();
    options.protocol.token = Some(Token::new(TOKEN.as_bytes()));
    let mut aborted = holdwire_std::Stream::connect(options).expect("connect");
    aborted.write_all(b"soon aborted").unwrap();
    let mut back = [0u8; 12];
    aborted.read_exact(&mut back).unwrap();
    aborted.abort().unwrap();
    let captured = relay.captured();
    assert!(!captured.is_empty());
    let until = Instant::now() + Duration::from_secs(10);
    let mut gone = 0;
    for request in &captured {
        // The opening request is tagged with the opening key, which an ended session no longer
        // has: it fails authentication (403) instead.
        let body = body_of(request);
        let opening = u64::from_be_bytes(body[20..28].try_into().unwrap()) == 1;
        let expected = |status| status == Some(410) || (opening && status == Some(403));
        // The server answers 410 once the session's end was delivered and it is forgotten.
        let (reply, from) = loop {
            let (reply, from) = one_shot(arena.addr(), request);
            if expected(reply.status()) || Instant::now() >= until {
                break (reply, from);
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert!(expected(reply.status()), "{reply:?}");
        arena.server.assert_logged(from, reply.status().unwrap());
        gone += usize::from(reply.status() == Some(410));
    }
    assert!(
        gone > 0,
        "no replay of the aborted session was answered 410"
    );
    arena.finish(before);
}

/// A flood of session opens beyond `--max-sessions`: the excess gets `503` (`ABORT
/// SESSION_LIMIT`), each logged; the good session, already open, carries on.
#[test]
fn flood_of_session_opens_beyond_the_cap() {
    const CAP: usize = 8;
    let arena = Arena::without_auth("session flood", &["--max-sessions", "8"]);
    let before = arena.good.verified();
    let mut accepted = 0;
    let mut refused = Vec::new();
    for n in 0..200u64 {
        let id = id_from(n, 0xf1);
        let (reply, from) = one_shot(arena.addr(), &post(&id.to_string(), &bundle(id, 1, true)));
        match reply.status() {
            Some(200) => accepted += 1,
            Some(503) => refused.push(from),
            _ => panic!("open {n}: {reply:?}"),
        }
    }
    // The good session holds one slot.
    assert_eq!(accepted, CAP - 1, "opens accepted below the cap");
    assert_eq!(refused.len(), 200 - (CAP - 1));
    arena.server.wait_log(
        &["refused a request from", "HTTP 503 (session limit reached)"],
        refused.len(),
    );
    for from in refused.iter().take(10) {
        arena.server.assert_logged(*from, 503);
    }
    arena.finish(before);
}

/// Hundreds of half-open connections (half send nothing, half stop in the middle of a head):
/// every one is answered `408` and closed at the request timeout, each logged; the server's
/// memory stays bounded and the good session carries on.
#[test]
fn many_half_open_connections() {
    let arena = Arena::with_token("half-open connections", &[]);
    let before = arena.good.verified();
    let mut conns: Vec<Raw> = (0..300).map(|_| Raw::connect(arena.addr())).collect();
    for c in conns.iter_mut().skip(150) {
        c.send(b"POST /00112233445566778899aabbccddeeff HTTP/1.1\r\nHost: x\r\nContent-Le");
    }
    let start = Instant::now();
    let mut replies: Vec<Option<Reply>> = (0..conns.len()).map(|_| None).collect();
    while replies.iter().any(Option::is_none) {
        assert!(
            start.elapsed() < REQUEST_TIMEOUT * 5,
            "{} connections still open",
            replies.iter().filter(|r| r.is_none()).count()
        );
        for (c, reply) in conns.iter_mut().zip(replies.iter_mut()) {
            if reply.is_none() {
                *reply = c.poll(Duration::ZERO);
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    for (c, reply) in conns.iter().zip(&replies) {
        assert_eq!(
            reply.as_ref().and_then(Reply::status),
            Some(408),
            "{reply:?}"
        );
        arena.server.assert_logged(c.local, 408);
    }
    arena.finish(before);
}

/// A flood of connections beyond `--max-connections`: the excess is closed at once (logged),
/// the rest is answered `408` at the request timeout, and the good session gets through once
/// the slots free up.
#[test]
fn flood_of_connections_beyond_the_cap() {
    let arena = Arena::with_token("connection flood", &["--max-connections", "64"]);
    let before = arena.good.verified();
    let mut conns: Vec<Raw> = (0..150).map(|_| Raw::connect(arena.addr())).collect();
    let start = Instant::now();
    let mut replies: Vec<Option<(Reply, Duration)>> = (0..conns.len()).map(|_| None).collect();
    while replies.iter().any(Option::is_none) {
        assert!(
            start.elapsed() < REQUEST_TIMEOUT * 5,
            "connections still open"
        );
        for (c, reply) in conns.iter_mut().zip(replies.iter_mut()) {
            if reply.is_none() {
                *reply = c.poll(Duration::ZERO).map(|r| (r, start.elapsed()));
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    let mut closed = 0;
    let mut timed_out = 0;
    for (c, reply) in conns.iter().zip(&replies) {
        match reply {
            Some((Reply::Closed, at)) if *at < REQUEST_TIMEOUT => {
                closed += 1;
                arena.server.wait_log(
                    &[&format!(
                        "refused a connection from {}: connection limit",
                        c.local
                    )],
                    1,
                );
            }
            Some((Reply::Status(408, _), _)) => {
                timed_out += 1;
                arena.server.assert_logged(c.local, 408);
            }
            other => panic!("{other:?}"),
        }
    }
    eprintln!("connection flood: {closed} closed at the cap, {timed_out} answered 408");
    // The good session holds a few of the 64 slots.
    assert!(closed >= 150 - 64, "{closed} closed at the cap");
    assert!(timed_out > 0 && timed_out <= 64, "{timed_out}");
    arena.finish(before);
}
