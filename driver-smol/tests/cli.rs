//! The `holdwire` command line, run as the real binary (`CARGO_BIN_EXE_holdwire`): port
//! forwarding through tinyproxy (bulk and interactive), `--stdio` through pipes, a wrong token,
//! a replayed request, SIGTERM to the server, the demo, configuration errors and `--help`.
//!
//! Every process is started with `std::process::Command` and killed by PID (then reaped) when
//! its guard drops. Only 127.0.0.1 and ephemeral ports are used; every loop is bounded.

mod common;

use std::io::{BufRead as _, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{tinyproxy, Pattern};
use holdwire_smol::proto::wire::crc32c;

const BIN: &str = env!("CARGO_BIN_EXE_holdwire");

/// How long any helper thread (echo target, relay) may live, whatever happens.
const THREAD_LIFETIME: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A `holdwire` command with a clean environment: no token and no proxy unless a test sets one.
fn holdwire(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in [
        "HOLDWIRE_TOKEN",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A running `holdwire` process, killed by PID and reaped on drop. Its stderr is collected by
/// a thread (all of it, and line by line for [`Proc::wait_line`]).
struct Proc {
    child: Child,
    name: String,
    stderr: Arc<Mutex<String>>,
    /// The stderr reader reached EOF.
    stderr_done: Arc<AtomicBool>,
    lines: Receiver<String>,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
}

impl Proc {
    /// Starts `cmd`; stdin/stdout are piped if `pipes`, else null.
    fn start(name: &str, mut cmd: Command, pipes: bool) -> Proc {
        if pipes {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        } else {
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
        }
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        let stderr_done = Arc::new(AtomicBool::new(false));
        let done = stderr_done.clone();
        std::thread::spawn(move || {
            // Ends when the process (and so the pipe) ends.
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
                drop(all);
                let _ = tx.send(line);
            }
            done.store(true, Ordering::Release);
        });
        Proc {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            name: name.into(),
            stderr,
            stderr_done,
            lines,
        }
    }

    fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) for a stderr line containing `needle`, and returns it.
    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{}: no stderr line with {needle:?} within {limit:?} (exit status {status:?}); \
                         stderr:\n{}",
                        self.name,
                        self.stderr()
                    );
                }
            }
        }
    }

    /// The exit status, if the process ends within `limit`; once it has ended, its whole
    /// stderr is in [`Proc::stderr`] (the reader is given up to 2 s more to reach EOF).
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let read_until = Instant::now() + Duration::from_secs(2);
                while !self.stderr_done.load(Ordering::Acquire) && Instant::now() < read_until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM by PID (`kill -TERM PID`; no libc in the dev-dependencies).
    fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's PID only; then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `holdwire server --listen 127.0.0.1:0 --target TARGET ARGS...`; returns it with the address
/// it prints ("serving http://ADDR/... -> TARGET").
fn server(target: SocketAddr, args: &[&str]) -> (Proc, SocketAddr) {
    server_env(target, args, &[])
}

/// [`server`] with these environment variables set.
fn server_env(target: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let target = target.to_string();
    let mut all = vec!["server", "--listen", "127.0.0.1:0", "--target", &target];
    all.extend_from_slice(args);
    let mut cmd = holdwire(&all);
    cmd.envs(env.iter().copied());
    let mut p = Proc::start("holdwire server", cmd, false);
    let line = p.wait_line("serving http://", Duration::from_secs(20));
    let addr = line
        .split("serving http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the server's address from {line:?}"));
    (p, addr)
}

/// `holdwire client --listen 127.0.0.1:0 --server URL ARGS...`; returns it with the address it
/// prints ("forwarding ADDR -> URL").
fn client_listen(url: &str, args: &[&str]) -> (Proc, SocketAddr) {
    client_listen_env(url, args, &[])
}

/// [`client_listen`] with these environment variables set.
fn client_listen_env(url: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut all = vec!["client", "--listen", "127.0.0.1:0", "--server", url];
    all.extend_from_slice(args);
    let mut cmd = holdwire(&all);
    cmd.envs(env.iter().copied());
    let mut p = Proc::start("holdwire client", cmd, false);
    let line = p.wait_line("forwarding ", Duration::from_secs(20));
    let addr = line
        .split("forwarding ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the client's address from {line:?}"));
    (p, addr)
}

/// Runs `holdwire ARGS...` to completion (at most `limit`): (exit code, stdout, stderr).
fn run_to_end(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut cmd = holdwire(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start holdwire");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let until = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let Some(status) = status else {
        panic!("holdwire {args:?} did not exit within {limit:?}\nstdout:\n{out}\nstderr:\n{err}");
    };
    (status.code(), out, err)
}

fn assert_no_panic(p: &Proc) {
    let err = p.stderr();
    assert!(
        !err.contains("panicked") && !err.to_lowercase().contains("panic"),
        "{} panicked:\n{err}",
        p.name
    );
}

// ---------------------------------------------------------------------------------------------
// The TCP target and a recording relay, in this process
// ---------------------------------------------------------------------------------------------

/// A TCP echo server on 127.0.0.1: echoes everything, and half-closes after the peer's EOF.
/// Counts connections and bytes received.
struct Echo {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    conns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo target");
        listener.set_nonblocking(true).unwrap();
        let echo = Echo {
            addr: listener.local_addr().unwrap(),
            bytes: Arc::default(),
            conns: Arc::default(),
            stop: Arc::default(),
        };
        let (bytes, conns, stop) = (echo.bytes.clone(), echo.conns.clone(), echo.stop.clone());
        std::thread::spawn(move || {
            let born = Instant::now();
            while !stop.load(Ordering::Relaxed) && born.elapsed() < THREAD_LIFETIME {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        conns.fetch_add(1, Ordering::Relaxed);
                        let (bytes, stop) = (bytes.clone(), stop.clone());
                        std::thread::spawn(move || echo_conn(tcp, &bytes, &stop));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        echo
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn conns(&self) -> u64 {
        self.conns.load(Ordering::Relaxed)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo_conn(mut tcp: TcpStream, bytes: &AtomicU64, stop: &AtomicBool) {
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(30)));
    let mut buf = vec![0u8; 64 * 1024];
    let born = Instant::now();
    while !stop.load(Ordering::Relaxed) && born.elapsed() < THREAD_LIFETIME {
        match tcp.read(&mut buf) {
            Ok(0) => {
                let _ = tcp.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if tcp.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// The bytes one relayed connection sent upstream.
type ConnLog = Arc<Mutex<Vec<u8>>>;

/// A TCP relay on 127.0.0.1 to `upstream` that records every byte each connection sends
/// upstream (one buffer per connection, in order), and what comes back.
struct Recorder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<ConnLog>>>,
    answers: Arc<Mutex<Vec<ConnLog>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start(upstream: SocketAddr) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).unwrap();
        let rec = Recorder {
            addr: listener.local_addr().unwrap(),
            conns: Arc::default(),
            answers: Arc::default(),
            stop: Arc::default(),
        };
        let (conns, answers, stop) = (rec.conns.clone(), rec.answers.clone(), rec.stop.clone());
        std::thread::spawn(move || {
            let born = Instant::now();
            while !stop.load(Ordering::Relaxed) && born.elapsed() < THREAD_LIFETIME {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        let Ok(up) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        let log = Arc::new(Mutex::new(Vec::new()));
                        conns.lock().unwrap().push(log.clone());
                        let answer = Arc::new(Mutex::new(Vec::new()));
                        answers.lock().unwrap().push(answer.clone());
                        let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                        let (s1, s2) = (stop.clone(), stop.clone());
                        std::thread::spawn(move || pump(down, up, Some(log), &s1));
                        std::thread::spawn(move || pump(u2, d2, Some(answer), &s2));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        rec
    }

    /// Every complete HTTP request recorded so far (head and body), in order per connection.
    fn requests(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for conn in self.conns.lock().unwrap().iter() {
            let bytes = conn.lock().unwrap().clone();
            let mut rest = &bytes[..];
            while let Some((len, _)) = http_message_len(rest) {
                out.push(rest[..len].to_vec());
                rest = &rest[len..];
            }
        }
        out
    }

    /// Every byte recorded so far, both ways.
    fn all_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for log in [&self.conns, &self.answers] {
            for conn in log.lock().unwrap().iter() {
                out.extend_from_slice(&conn.lock().unwrap());
            }
        }
        out
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, log: Option<ConnLog>, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = to.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    let born = Instant::now();
    while !stop.load(Ordering::Relaxed) && born.elapsed() < THREAD_LIFETIME {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(log) = &log {
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// HTTP and bundle parsing (just enough for the replay test)
// ---------------------------------------------------------------------------------------------

/// The length of the first complete HTTP message in `data` (head + Content-Length body), with
/// the length of its head.
fn http_message_len(data: &[u8]) -> Option<(usize, usize)> {
    let head_len = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&data[..head_len]);
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // A pre-opened request: its body is chunks, up to the last (empty) one.
        let mut at = head_len;
        loop {
            let line_end = data[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = String::from_utf8_lossy(&data[at..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2 + size + 2;
            if data.len() < at {
                return None;
            }
            if size == 0 {
                return Some((at, head_len));
            }
        }
    }
    let body_len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (data.len() >= head_len + body_len).then_some((head_len + body_len, head_len))
}

/// The frames of a bundle: (type, body).
fn frames(bundle: &[u8]) -> Vec<(u8, Vec<u8>)> {
    assert!(bundle.len() >= 51, "not a bundle: {} bytes", bundle.len());
    assert_eq!(&bundle[..2], b"hw", "not a bundle");
    let tag_len = bundle[45] as usize;
    let sacks = bundle[46] as usize;
    let mut at = 47 + 16 * sacks;
    let end = bundle.len() - 4 - tag_len;
    let mut out = Vec::new();
    while at + 5 <= end {
        let ty = bundle[at];
        let len = u32::from_be_bytes(bundle[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((ty, bundle[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    out
}

const FRAME_MESSAGE: u8 = 0x01;
const FRAME_OPEN: u8 = 0x03;

/// Sends `request` on a new connection to `server` and reads one response: (status, body), or
/// `None` if the server closed or held it past `limit`.
fn send_raw(server: SocketAddr, request: &[u8], limit: Duration) -> Option<(u16, Vec<u8>)> {
    let mut tcp = TcpStream::connect(server).expect("connect to the server");
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    tcp.write_all(request).expect("send the replayed request");
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some((len, head_len)) = http_message_len(&got) {
            let status = String::from_utf8_lossy(&got[..head_len])
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("a status code");
            return Some((status, got[head_len..len].to_vec()));
        }
        match tcp.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Small TCP helpers
// ---------------------------------------------------------------------------------------------

fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    tcp
}

/// Writes `msg` and reads back exactly as many bytes.
fn round_trip(tcp: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    tcp.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    tcp.read_exact(&mut back).expect("read the echo");
    back
}

/// Reads until EOF (at most `limit`): Ok(bytes) on a clean EOF, Err on an error or timeout.
fn read_to_eof(tcp: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let until = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= until {
                    return Err(format!(
                        "no EOF within {limit:?} ({} bytes read)",
                        got.len()
                    ));
                }
            }
            Err(e) => return Err(format!("{:?}: {e} ({} bytes read)", e.kind(), got.len())),
        }
    }
}

/// Block `i` (64 KiB) of a bulk stream.
fn block(seed: u64, i: u64, buf: &mut [u8]) {
    Pattern::new(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).fill(buf);
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// 64 MiB (checksummed) and a ping-pong through `client --listen`, tinyproxy and the server.
#[test]
fn listen_bulk_and_interactive_through_tinyproxy() {
    let Some((_proxy, proxy)) = tinyproxy() else {
        return;
    };
    let start = Instant::now();
    let echo = Echo::start();
    let (server_proc, server) = server(echo.addr, &["--token", "T"]);
    let (client_proc, local) = client_listen(
        &format!("http://{server}/"),
        &["--proxy", &format!("http://{proxy}"), "--token", "T"],
    );

    // Bulk: a writer thread pushes 64 MiB while this thread reads and checks the echo.
    const BLOCK: usize = 64 * 1024;
    const BLOCKS: u64 = 1024; // 64 MiB
    let seed = 0x0b0b_cafe;
    let mut tcp = connect(local);
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = tcp.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; BLOCK];
        let mut crc = 0u32;
        for i in 0..BLOCKS {
            block(seed, i, &mut buf);
            crc = crc.rotate_left(5) ^ crc32c(&buf);
            w.write_all(&buf)?;
        }
        w.shutdown(Shutdown::Write)?;
        Ok::<u32, std::io::Error>(crc)
    });
    let mut got = vec![0u8; BLOCK];
    let mut want = vec![0u8; BLOCK];
    let mut crc = 0u32;
    for i in 0..BLOCKS {
        if let Err(e) = tcp.read_exact(&mut got) {
            panic!(
                "echo stopped at block {i} of {BLOCKS}: {e}\nserver:\n{}\nclient:\n{}",
                server_proc.stderr(),
                client_proc.stderr()
            );
        }
        block(seed, i, &mut want);
        assert!(
            got == want,
            "block {i} of the echo differs from what was sent"
        );
        crc = crc.rotate_left(5) ^ crc32c(&got);
    }
    let sent_crc = writer.join().unwrap().expect("write 64 MiB");
    assert_eq!(crc, sent_crc, "checksum of the echo");
    let rest = read_to_eof(&mut tcp, Duration::from_secs(15)).expect("clean EOF after the echo");
    assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
    assert_eq!(
        echo.bytes(),
        BLOCKS * BLOCK as u64,
        "bytes the target received"
    );
    let bulk = start.elapsed();

    // Interactive: small messages, one at a time, on a new connection (a new session).
    let mut tcp = connect(local);
    let pings = Instant::now();
    for i in 0..20u32 {
        let msg = format!("ping {i} {}\n", "x".repeat(i as usize * 7));
        assert_eq!(round_trip(&mut tcp, msg.as_bytes()), msg.as_bytes());
    }
    let pings = pings.elapsed();
    tcp.shutdown(Shutdown::Write).unwrap();
    let rest = read_to_eof(&mut tcp, Duration::from_secs(10)).expect("clean EOF after pings");
    assert!(rest.is_empty());
    assert_eq!(
        echo.conns(),
        2,
        "one target connection per forwarded connection"
    );
    eprintln!("64 MiB up and back through tinyproxy in {bulk:?}; 20 round trips in {pings:?}");
    assert_no_panic(&server_proc);
    assert_no_panic(&client_proc);
}

/// `client --stdio` through pipes (token from HOLDWIRE_TOKEN): stdin arrives at the target, the
/// echo comes out of stdout, and after stdin closes the process exits 0 once the echo ends.
#[test]
fn stdio_through_pipes() {
    let echo = Echo::start();
    let (server_proc, server) = server(echo.addr, &["--token", "T"]);
    let url = format!("http://{server}/");
    let mut cmd = holdwire(&["client", "--stdio", "--server", &url]);
    cmd.env("HOLDWIRE_TOKEN", "T");
    let mut client = Proc::start("holdwire client --stdio", cmd, true);

    let mut payload = vec![0u8; 300 * 1024 + 17];
    Pattern::new(42).fill(&mut payload);
    payload.extend_from_slice(b"\nthe end\n");
    let len = payload.len();

    let mut stdout = client.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = stdout.read_to_end(&mut out);
        (r.map(|_| ()), out)
    });
    let mut stdin = client.stdin.take().unwrap();
    // A first message alone, then the rest: interactive use then bulk.
    stdin.write_all(b"hello\n").unwrap();
    stdin.flush().unwrap();
    stdin.write_all(&payload).unwrap();
    drop(stdin); // EOF on the client's stdin

    let status = client.wait_exit(Duration::from_secs(30));
    let Some(status) = status else {
        panic!(
            "client --stdio still running 30 s after its stdin closed; stderr:\n{}",
            client.stderr()
        );
    };
    let (read, out) = reader.join().unwrap();
    read.expect("read the client's stdout");
    assert_eq!(out.len(), 6 + len, "bytes out of stdout");
    assert!(
        out[..6] == *b"hello\n" && out[6..] == payload[..],
        "stdout differs from stdin"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; stderr:\n{}",
        client.stderr()
    );
    assert_eq!(echo.bytes(), 6 + len as u64);
    assert_no_panic(&client);
    assert_no_panic(&server_proc);
}

/// A wrong token: `--stdio` exits 3 with a clear message; `--listen` exits 3 on the first
/// forwarded connection. Nothing reaches the target, and the server does not panic.
#[test]
fn wrong_token_is_refused() {
    let echo = Echo::start();
    let (mut server_proc, server) = server(echo.addr, &["--token", "A"]);
    let url = format!("http://{server}/");

    // --stdio, stdin kept open (the refusal alone must end the process).
    let mut stdio = Proc::start(
        "holdwire client --stdio",
        holdwire(&["client", "--stdio", "--server", &url, "--token", "B"]),
        true,
    );
    let status = stdio.wait_exit(Duration::from_secs(20));
    let err = stdio.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "client --stdio with a wrong token: exit status; stderr:\n{err}"
    );
    assert!(
        err.contains("403") && err.to_lowercase().contains("token"),
        "a clear message on stderr, got:\n{err}"
    );
    let mut out = Vec::new();
    stdio.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(out.is_empty(), "nothing on stdout");

    // --listen: the first forwarded connection ends the client.
    let (mut listen, local) = client_listen(&url, &["--token", "B"]);
    let mut tcp = connect(local);
    let _ = tcp.write_all(b"must not arrive");
    let status = listen.wait_exit(Duration::from_secs(20));
    let err = listen.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "client --listen with a wrong token: exit status; stderr:\n{err}"
    );
    assert!(
        err.to_lowercase().contains("token") && err.contains("refused"),
        "a clear message on stderr, got:\n{err}"
    );
    // The forwarded connection is gone with the process (EOF or reset, not a hang).
    assert!(
        !matches!(read_to_eof(&mut tcp, Duration::from_secs(5)), Err(e) if e.contains("no EOF")),
        "the forwarded connection stays open after the client exited"
    );

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        echo.conns(),
        0,
        "a refused session must not reach the target"
    );
    assert!(server_proc.child_alive(), "the server keeps serving");
    assert_no_panic(&server_proc);
}

/// The contract: "A wrong token gets 403 ... and the server logs it."
#[test]
fn wrong_token_is_logged_by_the_server() {
    let echo = Echo::start();
    let (server_proc, server) = server(echo.addr, &["--token", "A"]);
    let url = format!("http://{server}/");
    let mut stdio = Proc::start(
        "holdwire client --stdio",
        holdwire(&["client", "--stdio", "--server", &url, "--token", "B"]),
        true,
    );
    assert_eq!(
        stdio
            .wait_exit(Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(3)
    );
    // Give the server's log a moment.
    std::thread::sleep(Duration::from_millis(300));
    let log = server_proc.stderr();
    let after_banner: String = log
        .lines()
        .filter(|l| !l.contains("serving http://"))
        .collect::<Vec<_>>()
        .join("\n")
        .to_lowercase();
    assert!(
        ["token", "403", "auth", "forbidden", "refused"]
            .iter()
            .any(|w| after_banner.contains(w)),
        "the server says nothing about the refused token; its stderr:\n{log}"
    );
}

/// A request captured from a real session and sent again is harmless: the answer carries no
/// data the client already got, the target sees the payload once, and the session still works.
#[test]
fn replayed_request_is_harmless() {
    // A token distinctive enough to search the captured traffic for.
    const TOKEN: &str = "holdwire-test-token-9f2c4e71a8";
    let echo = Echo::start();
    let (server_proc, server) = server(echo.addr, &["--token", TOKEN, "--max-wait", "5"]);
    let relay = Recorder::start(server);
    let (client_proc, local) =
        client_listen(&format!("http://{}/", relay.addr), &["--token", TOKEN]);

    let payload: Vec<u8> = (0..4000u32)
        .map(|i| b"replay-me:"[i as usize % 10])
        .collect();
    let mut tcp = connect(local);
    assert_eq!(round_trip(&mut tcp, &payload), payload, "first echo");

    // The requests of the session so far: the open, and the one(s) carrying the payload.
    let requests = relay.requests();
    let posts: Vec<&Vec<u8>> = requests
        .iter()
        .filter(|r| r.starts_with(b"POST "))
        .collect();
    assert!(!posts.is_empty(), "the relay recorded no POST");
    let body = |r: &[u8]| {
        let (len, head) = http_message_len(r).unwrap();
        r[head..len].to_vec()
    };
    let first = posts[0].clone();
    assert!(
        frames(&body(&first)).iter().any(|(t, _)| *t == FRAME_OPEN),
        "the first POST opens the session"
    );
    let with_data = posts
        .iter()
        .find(|r| frames(&body(r)).iter().any(|(t, _)| *t == FRAME_MESSAGE))
        .map(|r| (*r).clone())
        .expect("a recorded POST carrying the payload");
    eprintln!(
        "captured {} POSTs; replaying the open ({} bytes) and a data request ({} bytes)",
        posts.len(),
        first.len(),
        with_data.len()
    );

    let check = |what: &str, request: &[u8]| {
        let answer = send_raw(server, request, Duration::from_secs(8));
        eprintln!(
            "replayed {what}: {:?}",
            answer.as_ref().map(|(s, b)| (s, b.len()))
        );
        if let Some((200, body)) = &answer {
            let data: Vec<_> = frames(body)
                .into_iter()
                .filter(|(t, _)| *t == FRAME_MESSAGE)
                .collect();
            assert!(
                data.is_empty(),
                "a replayed {what} was answered 200 with {} MESSAGE frame(s) of session data",
                data.len()
            );
            assert!(
                !body.windows(10).any(|w| w == b"replay-me:"),
                "a replayed {what} got the echoed payload back"
            );
        }
    };

    // While the session is open.
    check("data request", &with_data);
    check("open request", &first);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        echo.bytes(),
        payload.len() as u64,
        "the target saw the payload once"
    );
    assert_eq!(
        echo.conns(),
        1,
        "a replayed open must not open a second target connection"
    );

    // The session still works, and ends cleanly.
    assert_eq!(round_trip(&mut tcp, b"still here"), b"still here");
    tcp.shutdown(Shutdown::Write).unwrap();
    let rest = read_to_eof(&mut tcp, Duration::from_secs(10)).expect("clean EOF");
    assert!(rest.is_empty());
    let total = payload.len() as u64 + 10;
    assert_eq!(echo.bytes(), total);

    // The token never crossed the wire, in either direction (nor its hex form).
    let wire = relay.all_bytes();
    assert!(wire.len() > payload.len(), "the relay recorded the session");
    let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    for needle in [TOKEN.as_bytes(), hex.as_bytes(), &TOKEN.as_bytes()[..12]] {
        assert!(
            !wire.windows(needle.len()).any(|w| w == needle),
            "the token ({:?}) appears in the captured traffic",
            String::from_utf8_lossy(needle)
        );
    }

    // After the session ended.
    std::thread::sleep(Duration::from_millis(300));
    check("data request (session ended)", &with_data);
    check("open request (session ended)", &first);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(echo.bytes(), total, "the target saw nothing more");
    assert_eq!(echo.conns(), 1);
    assert_no_panic(&server_proc);
    assert_no_panic(&client_proc);
}

/// `HOLDWIRE_TOKEN` is used when no token option is given, and `--token`, `--token-file` and
/// `--no-auth` each override it (rather than clash with it).
#[test]
fn token_options_override_the_environment() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token\n").unwrap();
    let token_file = token_file.to_str().unwrap();
    let env_wrong = [("HOLDWIRE_TOKEN", "not-the-token")];

    let (server_proc, server) = server_env(echo.addr, &["--token-file", token_file], &env_wrong);
    let url = format!("http://{server}/");
    let (env_client, env_local) = client_listen_env(&url, &[], &[("HOLDWIRE_TOKEN", "file-token")]);
    let (flag_client, flag_local) = client_listen_env(&url, &["--token", "file-token"], &env_wrong);
    for (what, local) in [
        ("token from HOLDWIRE_TOKEN", env_local),
        ("--token", flag_local),
    ] {
        let mut tcp = connect(local);
        let msg = format!("echo with {what}");
        assert_eq!(
            round_trip(&mut tcp, msg.as_bytes()),
            msg.as_bytes(),
            "{what}"
        );
    }

    let (open_server, open) = server_env(echo.addr, &["--no-auth"], &env_wrong);
    let (open_client, open_local) =
        client_listen_env(&format!("http://{open}/"), &["--no-auth"], &env_wrong);
    let mut tcp = connect(open_local);
    assert_eq!(round_trip(&mut tcp, b"no auth"), b"no auth");
    assert!(
        open_server.stderr().contains("authentication is off"),
        "--no-auth is announced loudly:\n{}",
        open_server.stderr()
    );
    for p in [
        &server_proc,
        &env_client,
        &flag_client,
        &open_server,
        &open_client,
    ] {
        assert_no_panic(p);
    }
}

/// `--path` mounts the endpoint under a prefix: a client using it works, and a request
/// outside the prefix is refused with 404.
#[test]
fn path_prefix_end_to_end() {
    let echo = Echo::start();
    let (server_proc, server) = server(echo.addr, &["--no-auth", "--path", "/tunnel/x"]);
    let (client_proc, local) = client_listen(&format!("http://{server}/tunnel/x/"), &["--no-auth"]);
    let mut tcp = connect(local);
    let msg = vec![b'p'; 100_000];
    assert_eq!(round_trip(&mut tcp, &msg), msg, "echo under the prefix");

    let (wrong_client, wrong_local) = client_listen(&format!("http://{server}/"), &["--no-auth"]);
    let mut tcp = connect(wrong_local);
    let _ = tcp.write_all(b"must not arrive");
    let err = read_to_eof(&mut tcp, Duration::from_secs(20));
    assert!(
        matches!(&err, Ok(rest) if rest.is_empty()) || err.is_err(),
        "a client outside the prefix gets no data back: {err:?}"
    );
    // The log line is written before the connection closes, but the reader thread that
    // collects stderr may not have seen it yet.
    let mut wrong_client = wrong_client;
    wrong_client.wait_line("404", Duration::from_secs(10));
    assert_eq!(
        echo.bytes(),
        msg.len() as u64,
        "only the first session reached the target"
    );
    assert_no_panic(&server_proc);
    assert_no_panic(&client_proc);
}

/// SIGTERM to the server while a forwarded connection is open and idle: the client side's TCP
/// peer reads a clean EOF, and the server exits 0 within its grace period.
#[test]
fn sigterm_to_server_ends_sessions_cleanly() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token\n").unwrap();
    let token_file = token_file.to_str().unwrap();
    let grace = Duration::from_secs(5); // the default --grace
    let (mut server_proc, server) = server(echo.addr, &["--token-file", token_file]);
    let (mut client_proc, local) =
        client_listen(&format!("http://{server}/"), &["--token-file", token_file]);
    let mut tcp = connect(local);
    assert_eq!(
        round_trip(&mut tcp, b"before the signal"),
        b"before the signal"
    );
    // Idle, and still open: nothing (no EOF) arrives before the signal.
    tcp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut one = [0u8; 1];
    match tcp.read(&mut one) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the idle connection should stay open before the signal: {other:?}"),
    }

    server_proc.sigterm();
    let signalled = Instant::now();
    let eof = read_to_eof(&mut tcp, Duration::from_secs(5));
    let eof_after = signalled.elapsed();
    match &eof {
        Ok(rest) => assert!(rest.is_empty(), "{} unexpected bytes", rest.len()),
        Err(e) => panic!(
            "the client side did not read a clean EOF after SIGTERM: {e}\nserver:\n{}\nclient:\n{}",
            server_proc.stderr(),
            client_proc.stderr()
        ),
    }
    // The application closes its side, as one does after EOF.
    drop(tcp);
    let status = server_proc.wait_exit(grace + Duration::from_secs(1));
    let exit_after = signalled.elapsed();
    eprintln!("EOF {eof_after:?} after SIGTERM; server exit after {exit_after:?}: {status:?}");
    let Some(status) = status else {
        panic!(
            "the server still runs {exit_after:?} after SIGTERM (grace {grace:?}); stderr:\n{}",
            server_proc.stderr()
        );
    };
    assert_eq!(
        status.code(),
        Some(0),
        "server exit; stderr:\n{}",
        server_proc.stderr()
    );
    // Both ends log the session's end with its counters and how it ended. The client logs it
    // once its local side closed; wait until its stderr reader has seen that line.
    client_proc.wait_line("closed cleanly", Duration::from_secs(10));
    for (name, p) in [("server", &server_proc), ("client", &client_proc)] {
        let err = p.stderr();
        let line = err
            .lines()
            .find(|l| l.contains("HTTP session") && l.contains("closed cleanly"))
            .unwrap_or_else(|| panic!("no clean close line from the {name}:\n{err}"));
        let mut words = vec!["bytes received", "requests", "messages resent"];
        if name == "client" {
            // The round trip is measured by the client.
            words.push("rtt");
        }
        for word in words {
            assert!(
                line.contains(word),
                "{name}'s close line lacks {word:?}: {line}"
            );
        }
    }
    assert_no_panic(&server_proc);
    assert_no_panic(&client_proc);
}

/// SIGTERM with the forwarded connection left open by the application: the server still exits
/// 0, bounded by its grace period (it aborts what is left).
#[test]
fn sigterm_to_server_is_bounded_by_grace() {
    let echo = Echo::start();
    let (mut server_proc, server) = server(echo.addr, &["--token", "T", "--grace", "2"]);
    let (_client_proc, local) = client_listen(&format!("http://{server}/"), &["--token", "T"]);
    let mut tcp = connect(local);
    assert_eq!(round_trip(&mut tcp, b"hi"), b"hi");
    server_proc.sigterm();
    let signalled = Instant::now();
    assert!(
        read_to_eof(&mut tcp, Duration::from_secs(5)).is_ok(),
        "a clean EOF after SIGTERM"
    );
    // `tcp` stays open: the session cannot finish; the grace period bounds the exit.
    let status = server_proc.wait_exit(Duration::from_secs(2) + Duration::from_secs(2));
    eprintln!("server exit after {:?}: {status:?}", signalled.elapsed());
    let status = status.expect("the server exits within its grace period (+2 s)");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server_proc.stderr());
    drop(tcp);
}

#[test]
fn demo_exits_ok() {
    let (code, out, err) = run_to_end(&["demo", "--mib", "8"], Duration::from_secs(40));
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("result: OK"), "stdout:\n{out}");
    assert!(out.contains("every byte intact"), "stdout:\n{out}");
}

#[test]
fn demo_with_loss_exits_ok() {
    let (code, out, err) = run_to_end(
        &["demo", "--loss", "10", "--mib", "8"],
        Duration::from_secs(50),
    );
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("result: OK"), "stdout:\n{out}");
    assert!(
        out.contains("dropped"),
        "the relay dropped messages; stdout:\n{out}"
    );
}

/// Configuration and usage errors exit 2 at once, with a message, before anything listens.
#[test]
fn configuration_errors_exit_2_before_starting() {
    let free = common::free_port();
    let listen = format!("127.0.0.1:{free}");
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "server without a token",
            vec!["server", "--listen", &listen, "--target", "127.0.0.1:9"],
            "token",
        ),
        (
            "server with an empty token",
            vec![
                "server",
                "--listen",
                &listen,
                "--target",
                "127.0.0.1:9",
                "--token",
                " ",
            ],
            "token",
        ),
        (
            "server with a missing token file",
            vec![
                "server",
                "--listen",
                &listen,
                "--target",
                "127.0.0.1:9",
                "--token-file",
                "/nonexistent/holdwire-token",
            ],
            "token",
        ),
        (
            "server --target nonsense",
            vec![
                "server", "--listen", &listen, "--target", "nonsense", "--token", "T",
            ],
            "--target",
        ),
        (
            "server --target without a port",
            vec![
                "server",
                "--listen",
                &listen,
                "--target",
                "127.0.0.1:",
                "--token",
                "T",
            ],
            "--target",
        ),
        (
            "server --path without a slash",
            vec![
                "server",
                "--listen",
                &listen,
                "--target",
                "127.0.0.1:9",
                "--token",
                "T",
                "--path",
                "tunnel",
            ],
            "--path",
        ),
        (
            "server --token with --no-auth",
            vec![
                "server",
                "--listen",
                &listen,
                "--target",
                "127.0.0.1:9",
                "--token",
                "T",
                "--no-auth",
            ],
            "--no-auth",
        ),
        (
            "client --server ftp://x (--listen)",
            vec![
                "client", "--listen", &listen, "--server", "ftp://x", "--token", "T",
            ],
            "scheme",
        ),
        (
            "client --server ftp://x (--stdio)",
            vec!["client", "--stdio", "--server", "ftp://x", "--token", "T"],
            "scheme",
        ),
        (
            "client without a token",
            vec![
                "client",
                "--listen",
                &listen,
                "--server",
                "http://127.0.0.1:9/",
            ],
            "token",
        ),
        (
            "client without --listen or --stdio",
            vec!["client", "--server", "http://127.0.0.1:9/", "--token", "T"],
            "--listen",
        ),
        (
            "client --proxy nonsense",
            vec![
                "client",
                "--listen",
                &listen,
                "--server",
                "http://127.0.0.1:9/",
                "--token",
                "T",
                "--proxy",
                "ftp://proxy",
            ],
            "proxy",
        ),
        (
            "server --max-wait 0",
            vec![
                "server",
                "--listen",
                &listen,
                "--target",
                "127.0.0.1:9",
                "--token",
                "T",
                "--max-wait",
                "0",
            ],
            "--max-wait",
        ),
        (
            "server --idle-timeout below --max-wait",
            vec![
                "server",
                "--listen",
                &listen,
                "--target",
                "127.0.0.1:9",
                "--token",
                "T",
                "--max-wait",
                "20",
                "--idle-timeout",
                "10",
            ],
            "--idle-timeout",
        ),
        (
            "server --max-buffer 10",
            vec![
                "server",
                "--listen",
                &listen,
                "--target",
                "127.0.0.1:9",
                "--token",
                "T",
                "--max-buffer",
                "10",
            ],
            "--max-buffer",
        ),
        (
            "client --silence-timeout 0",
            vec![
                "client",
                "--stdio",
                "--server",
                "http://127.0.0.1:9/",
                "--token",
                "T",
                "--silence-timeout",
                "0",
            ],
            "--silence-timeout",
        ),
        (
            "client --listen with --stdio",
            vec![
                "client",
                "--stdio",
                "--listen",
                &listen,
                "--server",
                "http://127.0.0.1:9/",
                "--token",
                "T",
            ],
            "--stdio",
        ),
        ("no command", vec![], "Usage"),
        ("unknown command", vec!["serve"], "serve"),
        ("demo --loss 90", vec!["demo", "--loss", "90"], "--loss"),
        ("demo --mib 0", vec!["demo", "--mib", "0"], "--mib"),
    ];
    for (what, args, mention) in cases {
        let started = Instant::now();
        let (code, out, err) = run_to_end(&args, Duration::from_secs(10));
        let took = started.elapsed();
        assert_eq!(
            code,
            Some(2),
            "{what}: exit code\nstdout:\n{out}\nstderr:\n{err}"
        );
        assert!(
            err.contains(mention),
            "{what}: stderr should mention {mention:?}:\n{err}"
        );
        assert!(
            !err.contains("serving") && !err.contains("forwarding"),
            "{what}: started before failing:\n{err}"
        );
        assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
    }
    // Nothing was left listening.
    assert!(
        TcpListener::bind(("127.0.0.1", free)).is_ok(),
        "port {free} still taken"
    );
}

/// `--help` works for every command and names its options.
#[test]
fn help_for_every_command() {
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--help"], vec!["server", "client", "demo"]),
        (
            vec!["server", "--help"],
            vec![
                "--listen",
                "--target",
                "--token",
                "HOLDWIRE_TOKEN",
                "--token-file",
                "--no-auth",
                "--path",
                "--direct-listen",
                "--max-wait",
                "--grace",
            ],
        ),
        (
            vec!["client", "--help"],
            vec![
                "--listen",
                "--stdio",
                "--server",
                "--proxy",
                "--direct",
                "--token",
                "--token-file",
                "--no-auth",
            ],
        ),
        (vec!["demo", "--help"], vec!["--loss", "--mib"]),
        (vec!["help", "server"], vec!["--listen", "--target"]),
    ];
    for (args, mentions) in cases {
        let (code, out, err) = run_to_end(&args, Duration::from_secs(10));
        assert_eq!(code, Some(0), "holdwire {args:?}: exit code\n{out}\n{err}");
        for m in mentions {
            assert!(
                out.contains(m),
                "holdwire {args:?} does not mention {m}:\n{out}"
            );
        }
    }
    let (code, out, _) = run_to_end(&["--version"], Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(out.starts_with("holdwire "), "{out}");
}

/// SIGTERM, then a new session during the grace period (another connection keeps the server
/// in its grace period): the protocol says a shutting-down server refuses new sessions
/// (`503 ABORT SHUTDOWN`, docs/PROTOCOL.md 11.8), so the late client must fail promptly rather
/// than be left waiting on a session the server will never serve.
#[test]
fn new_session_during_shutdown_is_refused_promptly() {
    let echo = Echo::start();
    let grace = Duration::from_secs(3);
    let (mut server_proc, server) = server(echo.addr, &["--token", "T", "--grace", "3"]);
    let url = format!("http://{server}/");
    let (_client_proc, local) = client_listen(&url, &["--token", "T"]);
    let mut tcp = connect(local);
    assert_eq!(
        round_trip(&mut tcp, b"hold the grace period"),
        b"hold the grace period"
    );

    server_proc.sigterm();
    let signalled = Instant::now();
    assert!(
        read_to_eof(&mut tcp, Duration::from_secs(5)).is_ok(),
        "EOF after SIGTERM"
    );
    // `tcp` stays open, so the server waits out its grace period.

    let mut late = Proc::start(
        "late holdwire client --stdio",
        holdwire(&["client", "--stdio", "--server", &url, "--token", "T"]),
        true,
    );
    late.stdin.as_mut().unwrap().write_all(b"late\n").unwrap();
    let late_started = Instant::now();
    // Refused at once; at the very latest, it must not outlive the server by long.
    let late_status = late.wait_exit(grace + Duration::from_secs(3));
    let late_took = late_started.elapsed();
    let server_status = server_proc.wait_exit(grace + Duration::from_secs(2));
    eprintln!(
        "late client: {late_status:?} after {late_took:?}; server: {server_status:?} \
         ({:?} after SIGTERM)",
        signalled.elapsed()
    );
    drop(tcp);
    assert_eq!(
        server_status.and_then(|s| s.code()),
        Some(0),
        "server exit; stderr:\n{}",
        server_proc.stderr()
    );
    let Some(late_status) = late_status else {
        panic!(
            "a client opening a session during the server's grace period is still waiting \
             {late_took:?} later (the server exited meanwhile); its stderr:\n{}\nserver's:\n{}",
            late.stderr(),
            server_proc.stderr()
        );
    };
    assert_ne!(late_status.code(), Some(0), "stderr:\n{}", late.stderr());
    assert!(
        late_took < Duration::from_secs(2),
        "refused only after {late_took:?}"
    );
}

/// Malformed addresses are configuration errors (exit 2), reported before anything starts,
/// naming the offending option; like `--target nonsense`.
#[test]
fn malformed_addresses_are_config_errors() {
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "server --listen nonsense",
            vec![
                "server",
                "--listen",
                "nonsense",
                "--target",
                "127.0.0.1:9",
                "--token",
                "T",
            ],
            "nonsense",
        ),
        (
            "server --listen 127.0.0.1:99999",
            vec![
                "server",
                "--listen",
                "127.0.0.1:99999",
                "--target",
                "127.0.0.1:9",
                "--token",
                "T",
            ],
            "99999",
        ),
        (
            "server --direct-listen nonsense",
            vec![
                "server",
                "--listen",
                "127.0.0.1:0",
                "--direct-listen",
                "nonsense",
                "--target",
                "127.0.0.1:9",
                "--token",
                "T",
            ],
            "nonsense",
        ),
        (
            "client --listen nonsense",
            vec![
                "client",
                "--listen",
                "nonsense",
                "--server",
                "http://127.0.0.1:9/",
                "--token",
                "T",
            ],
            "nonsense",
        ),
        (
            "client --direct nonsense",
            vec![
                "client",
                "--listen",
                "127.0.0.1:0",
                "--server",
                "http://127.0.0.1:9/",
                "--token",
                "T",
                "--direct",
                "nonsense",
            ],
            "nonsense",
        ),
    ];
    let mut failures = Vec::new();
    for (what, args, mention) in cases {
        let mut p = Proc::start(what, holdwire(&args), false);
        // Generous: a loaded CI machine can take seconds just to start a process.
        let status = p.wait_exit(Duration::from_secs(15));
        let err = p.stderr();
        match status.and_then(|s| s.code()) {
            Some(2) if err.contains(mention) => {}
            Some(code) => failures.push(format!(
                "{what}: exit {code}, stderr {:?} (want exit 2 naming {mention:?})",
                err.trim()
            )),
            None => failures.push(format!(
                "{what}: still running after 15 s, stderr {:?} (want exit 2 before starting)",
                err.trim()
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Runtime failures exit 1 with a message: a port in use, a server that does not answer.
#[test]
fn runtime_failures_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run_to_end(
        &[
            "server",
            "--listen",
            &taken_addr,
            "--target",
            "127.0.0.1:9",
            "--token",
            "T",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "server on a port in use: {err}");
    assert!(err.contains("cannot listen"), "{err}");
    let (code, _, err) = run_to_end(
        &[
            "client",
            "--listen",
            &taken_addr,
            "--server",
            "http://127.0.0.1:9/",
            "--token",
            "T",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "client on a port in use: {err}");
    assert!(err.contains("cannot listen"), "{err}");

    // Nothing listens at the server URL: --stdio gives up after its silence timeout.
    let nobody = format!("http://127.0.0.1:{}/", common::free_port());
    let started = Instant::now();
    let (code, out, err) = run_to_end(
        &[
            "client",
            "--stdio",
            "--server",
            &nobody,
            "--token",
            "T",
            "--silence-timeout",
            "2",
        ],
        Duration::from_secs(15),
    );
    eprintln!(
        "--stdio to nobody: exit {code:?} after {:?}: {}",
        started.elapsed(),
        err.trim()
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty());
    assert!(err.contains("cannot open the session"), "{err}");
    drop(taken);
}

/// The proxy comes from HTTP_PROXY (with basic auth in its URL) when --proxy is absent, and
/// NO_PROXY bypasses it. A recording relay in front of tinyproxy shows what went through it.
#[test]
fn proxy_from_environment_and_no_proxy() {
    let Some((_proxy, proxy)) = common::tinyproxy_with("BasicAuth hwuser hwpass") else {
        return;
    };
    let echo = Echo::start();
    let (_server_proc, server) = server(echo.addr, &["--token", "T"]);
    let url = format!("http://{server}/");
    let relay = Recorder::start(proxy);

    let stdio = |env: &[(&str, String)]| {
        let mut cmd = holdwire(&["client", "--stdio", "--server", &url, "--token", "T"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut p = Proc::start("holdwire client --stdio", cmd, true);
        let mut stdin = p.stdin.take().unwrap();
        stdin.write_all(b"via the environment\n").unwrap();
        drop(stdin);
        let status = p.wait_exit(Duration::from_secs(20));
        let mut out = Vec::new();
        p.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "client --stdio with {env:?}; stderr:\n{}",
            p.stderr()
        );
        assert_eq!(out, b"via the environment\n");
    };

    stdio(&[("http_proxy", format!("http://hwuser:hwpass@{}", relay.addr))]);
    let through = relay.requests();
    let absolute = format!("POST http://{server}/");
    assert!(
        through.iter().any(|r| r.starts_with(absolute.as_bytes())),
        "no absolute-form POST through the proxy from http_proxy"
    );
    assert!(
        through.iter().all(|r| {
            String::from_utf8_lossy(r)
                .to_lowercase()
                .contains("proxy-authorization: basic")
        }),
        "every request through the proxy carries the credentials from the URL"
    );

    // NO_PROXY: a second relay (a fresh one, so late requests of the first session cannot
    // count) must see no connection at all.
    let unused = Recorder::start(proxy);
    stdio(&[
        (
            "HTTP_PROXY",
            format!("http://hwuser:hwpass@{}", unused.addr),
        ),
        ("NO_PROXY", "localhost,127.0.0.1".into()),
    ]);
    assert_eq!(
        unused.conns.lock().unwrap().len(),
        0,
        "NO_PROXY must bypass the proxy"
    );
    assert_eq!(echo.conns(), 2);

    // Without the credentials, the proxy's 407 ends the client with a message naming it.
    let mut cmd = holdwire(&["client", "--stdio", "--server", &url, "--token", "T"]);
    cmd.env("http_proxy", format!("http://{proxy}"));
    let mut p = Proc::start("holdwire client --stdio", cmd, true);
    let status = p.wait_exit(Duration::from_secs(20));
    let err = p.stderr();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a proxy refusing us: {status:?}\n{err}"
    );
    assert!(
        err.contains("407"),
        "the message names the proxy's 407:\n{err}"
    );
    assert_eq!(echo.conns(), 2);
}

// ---------------------------------------------------------------------------------------------
// TLS: a CA and server certificate from rcgen, in a temporary directory
// ---------------------------------------------------------------------------------------------

mod pki;

/// `holdwire server --tls-cert --tls-key` on 127.0.0.1:0; returns it with the address it prints
/// ("serving https://ADDR/... -> TARGET").
fn server_https(target: SocketAddr, pki: &pki::Pki, args: &[&str]) -> (Proc, SocketAddr) {
    let target = target.to_string();
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
    let mut all = vec![
        "server",
        "--listen",
        "127.0.0.1:0",
        "--target",
        &target,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    all.extend_from_slice(args);
    let mut p = Proc::start("holdwire server", holdwire(&all), false);
    let line = p.wait_line("serving https://", Duration::from_secs(20));
    let addr = line
        .split("serving https://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the server's address from {line:?}"));
    (p, addr)
}

/// Pushes `blocks` blocks of 64 KiB through `local` (a writer thread) while checking the echo
/// block by block and as a checksum, expects a clean EOF, then makes 20 round trips on a second
/// connection. Returns the bulk's and the round trips' durations, and the bytes sent in all.
fn bulk_and_pings(local: SocketAddr, blocks: u64, procs: &[&Proc]) -> (Duration, Duration, u64) {
    const BLOCK: usize = 64 * 1024;
    let logs = || {
        procs
            .iter()
            .map(|p| format!("{}:\n{}", p.name, p.stderr()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let start = Instant::now();
    let seed = 0x7157_cafe;
    let mut tcp = connect(local);
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = tcp.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; BLOCK];
        let mut crc = 0u32;
        for i in 0..blocks {
            block(seed, i, &mut buf);
            crc = crc.rotate_left(5) ^ crc32c(&buf);
            w.write_all(&buf)?;
        }
        w.shutdown(Shutdown::Write)?;
        Ok::<u32, std::io::Error>(crc)
    });
    let (mut got, mut want) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut crc = 0u32;
    for i in 0..blocks {
        if let Err(e) = tcp.read_exact(&mut got) {
            panic!("echo stopped at block {i} of {blocks}: {e}\n{}", logs());
        }
        block(seed, i, &mut want);
        assert!(
            got == want,
            "block {i} of the echo differs from what was sent"
        );
        crc = crc.rotate_left(5) ^ crc32c(&got);
    }
    assert_eq!(crc, writer.join().unwrap().expect("write"), "checksum");
    let rest = read_to_eof(&mut tcp, Duration::from_secs(15)).expect("clean EOF after the echo");
    assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
    let bulk = start.elapsed();

    let mut tcp = connect(local);
    let pings = Instant::now();
    let mut sent = blocks * BLOCK as u64;
    for i in 0..20u32 {
        let msg = format!("ping {i} {}\n", "y".repeat(i as usize * 5));
        assert_eq!(round_trip(&mut tcp, msg.as_bytes()), msg.as_bytes());
        sent += msg.len() as u64;
    }
    let pings = pings.elapsed();
    tcp.shutdown(Shutdown::Write).unwrap();
    let rest = read_to_eof(&mut tcp, Duration::from_secs(10)).expect("clean EOF after pings");
    assert!(rest.is_empty());
    for p in procs {
        assert_no_panic(p);
    }
    (bulk, pings, sent)
}

/// https directly: `server --tls-cert/--tls-key`, `client --listen --ca`: 32 MiB checksummed
/// bulk and interactive echo.
#[test]
fn tls_direct_bulk_and_echo() {
    let pki = pki::generate();
    let echo = Echo::start();
    let (server_proc, server) = server_https(echo.addr, &pki, &["--token", "T"]);
    let ca = pki.ca.to_str().unwrap();
    let (client_proc, local) = client_listen(
        &format!("https://127.0.0.1:{}/", server.port()),
        &["--ca", ca, "--token", "T"],
    );
    const BLOCKS: u64 = 512; // 32 MiB
    let (bulk, pings, sent) = bulk_and_pings(local, BLOCKS, &[&server_proc, &client_proc]);
    assert_eq!(echo.bytes(), sent, "bytes the target received");
    assert_eq!(echo.conns(), 2);
    eprintln!("https direct: 32 MiB up and back in {bulk:?}; 20 round trips in {pings:?}");
}

/// https through squid's CONNECT (its generated config allows CONNECT to any port): 16 MiB and
/// interactive echo.
#[test]
fn tls_through_squid_connect() {
    let Some((_proxy, proxy)) = common::squid() else {
        return;
    };
    let pki = pki::generate();
    let echo = Echo::start();
    let (server_proc, server) = server_https(echo.addr, &pki, &["--token", "T"]);
    let ca = pki.ca.to_str().unwrap();
    let (client_proc, local) = client_listen(
        &format!("https://localhost:{}/", server.port()),
        &[
            "--ca",
            ca,
            "--token",
            "T",
            "--proxy",
            &format!("http://{proxy}"),
        ],
    );
    let (bulk, pings, sent) = bulk_and_pings(local, 256, &[&server_proc, &client_proc]);
    assert_eq!(echo.bytes(), sent, "bytes the target received");
    eprintln!(
        "https through squid CONNECT: 16 MiB up and back in {bulk:?}; 20 round trips in {pings:?}"
    );
}

/// https through tinyproxy's CONNECT with basic auth from the proxy URL (via `https_proxy`): 16
/// MiB and interactive echo. Without the credentials, the client exits 3 naming the 407.
#[test]
fn tls_through_tinyproxy_connect_with_auth() {
    let Some((_proxy, proxy)) = tinyproxy_with_auth() else {
        return;
    };
    let pki = pki::generate();
    let echo = Echo::start();
    let (server_proc, server) = server_https(echo.addr, &pki, &["--token", "T"]);
    let ca = pki.ca.to_str().unwrap();
    let url = format!("https://127.0.0.1:{}/", server.port());
    let mut cmd = holdwire(&[
        "client",
        "--listen",
        "127.0.0.1:0",
        "--server",
        &url,
        "--ca",
        ca,
        "--token",
        "T",
    ]);
    cmd.env("https_proxy", format!("http://hwuser:hwpass@{proxy}"));
    let mut client_proc = Proc::start("holdwire client", cmd, false);
    let line = client_proc.wait_line("forwarding ", Duration::from_secs(20));
    let local: SocketAddr = line
        .split("forwarding ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the client's address from {line:?}"));
    let (bulk, pings, sent) = bulk_and_pings(local, 256, &[&server_proc, &client_proc]);
    assert_eq!(echo.bytes(), sent, "bytes the target received");
    eprintln!(
        "https through tinyproxy CONNECT: 16 MiB up and back in {bulk:?}; 20 round trips in {pings:?}"
    );

    let mut cmd = holdwire(&[
        "client", "--stdio", "--server", &url, "--ca", ca, "--token", "T",
    ]);
    cmd.env("https_proxy", format!("http://{proxy}"));
    let mut p = Proc::start("holdwire client --stdio", cmd, true);
    let status = p.wait_exit(Duration::from_secs(20));
    // The stderr thread may still be reading the last line.
    p.wait_line("proxy authentication required", Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(3), "{}", p.stderr());
    assert_eq!(echo.conns(), 2);
}

fn tinyproxy_with_auth() -> Option<(common::ChildGuard, SocketAddr)> {
    common::tinyproxy_with("BasicAuth hwuser hwpass")
}

/// A client that does not trust the server's CA: `--listen` exits 1 on the first forwarded
/// connection and `--stdio` exits 1, both saying the certificate was rejected; the server logs
/// the failed handshake. Nothing reaches the target.
#[test]
fn tls_unknown_issuer_is_refused_clearly() {
    let pki = pki::generate();
    let echo = Echo::start();
    let (mut server_proc, server) = server_https(echo.addr, &pki, &["--token", "T"]);
    let url = format!("https://127.0.0.1:{}/", server.port());

    let (mut client_proc, local) = client_listen(&url, &["--token", "T"]);
    let mut tcp = connect(local);
    let _ = tcp.write_all(b"hello");
    let status = client_proc.wait_exit(Duration::from_secs(20));
    // The stderr thread may still be reading the last line.
    let line = client_proc.wait_line("was rejected", Duration::from_secs(5));
    assert!(
        line.contains("certificate of 127.0.0.1 was rejected") && line.contains("UnknownIssuer"),
        "{line}"
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "{}",
        client_proc.stderr()
    );

    let (code, _, err) = run_to_end(
        &["client", "--stdio", "--server", &url, "--token", "T"],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");

    server_proc.wait_line("TLS handshake with 127.0.0.1:", Duration::from_secs(10));
    assert_eq!(echo.conns(), 0);
    assert_no_panic(&server_proc);
}

/// TLS configuration errors exit 2 before anything starts, naming the problem.
#[test]
fn tls_configuration_errors_exit_2() {
    let pki = pki::generate();
    let junk = pki.dir.path().join("junk.pem");
    std::fs::write(&junk, "not PEM\n").unwrap();
    let missing = pki.dir.path().join("missing.pem");
    let (cert, key, ca) = (
        pki.cert.to_str().unwrap(),
        pki.key.to_str().unwrap(),
        pki.ca.to_str().unwrap(),
    );
    let (junk, missing) = (junk.to_str().unwrap(), missing.to_str().unwrap());
    let listen = format!("127.0.0.1:{}", common::free_port());
    let server = |extra: &[&str]| {
        let mut args = vec![
            "server",
            "--listen",
            &listen,
            "--target",
            "127.0.0.1:9",
            "--token",
            "T",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let client = |extra: &[&str]| {
        let mut args = vec![
            "client",
            "--stdio",
            "--server",
            "https://127.0.0.1:9/",
            "--token",
            "T",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "missing certificate file",
            server(&["--tls-cert", missing, "--tls-key", key]),
            "missing.pem",
        ),
        (
            "no certificate in the file",
            server(&["--tls-cert", junk, "--tls-key", key]),
            "no PEM certificate",
        ),
        (
            "no key in the file",
            server(&["--tls-cert", cert, "--tls-key", junk]),
            "no PEM private key",
        ),
        (
            "certificate and key that do not fit",
            server(&["--tls-cert", ca, "--tls-key", key]),
            "do not fit",
        ),
        (
            "certificate without key",
            server(&["--tls-cert", cert]),
            "--tls-key",
        ),
        (
            "missing --ca file",
            client(&["--ca", missing]),
            "missing.pem",
        ),
        (
            "--ca without a certificate",
            client(&["--ca", junk]),
            "no PEM certificate",
        ),
        (
            "https proxy",
            client(&["--proxy", "https://127.0.0.1:9"]),
            "https:// proxies",
        ),
    ];
    for (what, args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = run_to_end(&args, Duration::from_secs(10));
        assert_eq!(code, Some(2), "{what}: exit code; stderr:\n{err}");
        assert!(
            err.contains(needle),
            "{what}: stderr lacks {needle:?}:\n{err}"
        );
    }
}
