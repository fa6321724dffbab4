//! The load generator (the client side) and the far end (the target the tunnel connects to),
//! plain blocking TCP with large buffers. Every byte is checked where it arrives.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::pattern::{Pattern, Verifier};

/// Bytes per read and write call.
const BUF: usize = 256 * 1024;
/// First bytes of every connection: magic and stream index, so the far end knows the seeds.
const MAGIC: u32 = 0x4857_4231;
/// Size of a ping-pong message.
pub const PING: usize = 64;

/// What the far end does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Far {
    /// Reads and verifies `len` bytes, then expects EOF.
    Sink(u64),
    /// Sends `len` bytes, then half-closes.
    Source(u64),
    /// Both at once.
    Both(u64),
    /// Echoes everything.
    Echo,
}

/// Seed of the upload stream of connection `index`.
fn up_seed(index: u32) -> u64 {
    0x0123_4567_89AB_CDEF ^ (u64::from(index) << 32)
}

/// Seed of the download stream of connection `index`.
fn down_seed(index: u32) -> u64 {
    0xFEDC_BA98_7654_3210 ^ (u64::from(index) << 32)
}

/// The far end's account of one connection.
#[derive(Debug)]
pub struct FarReport {
    /// When the last expected byte was verified (or the connection ended).
    pub done: Instant,
    /// `Err` with the reason when bytes were lost, corrupted or stalled.
    pub result: Result<(), String>,
}

/// The far end: a listener answering each connection as `mode` says.
pub struct FarEnd {
    /// Where the tunnel connects.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted and not yet reported.
    active: Arc<AtomicUsize>,
    /// One report per connection that sent its header.
    pub reports: mpsc::Receiver<FarReport>,
}

impl FarEnd {
    /// Starts a far end on an ephemeral loopback port.
    pub fn start(mode: Far, stall: Duration, deadline: Instant) -> io::Result<FarEnd> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, reports) = mpsc::channel();
        let stopped = stop.clone();
        let active = Arc::new(AtomicUsize::new(0));
        let open = active.clone();
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let tx = tx.clone();
                        let open = open.clone();
                        open.fetch_add(1, Ordering::SeqCst);
                        thread::spawn(move || {
                            let report = serve(conn, mode, stall, deadline);
                            if let Some(report) = report {
                                let _ = tx.send(report);
                            }
                            open.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(FarEnd {
            addr,
            stop,
            active,
            reports,
        })
    }
}

impl Drop for FarEnd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn setup(conn: &TcpStream, stall: Duration) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(stall))?;
    conn.set_write_timeout(Some(stall))?;
    Ok(())
}

/// Reads exactly `buf.len()` bytes, naming a stall or an early EOF.
fn read_exact(conn: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), String> {
    let mut at = 0;
    while at < buf.len() {
        if Instant::now() > deadline {
            return Err("deadline passed".into());
        }
        match conn.read(&mut buf[at..]) {
            Ok(0) => return Err(format!("EOF after {at} of {} bytes", buf.len())),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(describe(&e)),
        }
    }
    Ok(())
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "stalled".into(),
        _ => e.to_string(),
    }
}

/// Reads and verifies `len` bytes of stream `seed`, then expects EOF.
fn receive(
    conn: &mut TcpStream,
    seed: u64,
    len: u64,
    deadline: Instant,
) -> (Instant, Result<(), String>) {
    let mut verifier = Verifier::new(seed);
    let mut buf = vec![0u8; BUF];
    let fail =
        |v: &Verifier, why: String| Err(format!("{why} ({} of {len} bytes verified)", v.pos));
    loop {
        if Instant::now() > deadline {
            return (Instant::now(), fail(&verifier, "deadline passed".into()));
        }
        match conn.read(&mut buf) {
            Ok(0) if verifier.pos == len => return (Instant::now(), Ok(())),
            Ok(0) => return (Instant::now(), fail(&verifier, "early EOF".into())),
            Ok(n) => {
                if verifier.pos + n as u64 > len {
                    return (
                        Instant::now(),
                        fail(&verifier, "bytes beyond the end".into()),
                    );
                }
                if !verifier.check(&buf[..n]) {
                    return (Instant::now(), fail(&verifier, "corrupted data".into()));
                }
                if verifier.pos == len {
                    // Everything arrived; the stream must end cleanly too.
                    let done = Instant::now();
                    let end = match conn.read(&mut buf[..1]) {
                        Ok(0) => Ok(()),
                        Ok(_) => fail(&verifier, "bytes beyond the end".into()),
                        Err(e) => fail(&verifier, format!("no EOF: {}", describe(&e))),
                    };
                    return (done, end);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Instant::now(), fail(&verifier, describe(&e))),
        }
    }
}

/// Sends `len` bytes of stream `seed`, then half-closes.
fn send(conn: &mut TcpStream, seed: u64, len: u64, deadline: Instant) -> Result<(), String> {
    let pattern = Pattern::new(seed);
    let mut buf = vec![0u8; BUF];
    let mut pos = 0;
    while pos < len {
        if Instant::now() > deadline {
            return Err(format!("deadline passed ({pos} of {len} bytes sent)"));
        }
        let n = (len - pos).min(BUF as u64) as usize;
        pattern.fill(pos, &mut buf[..n]);
        conn.write_all(&buf[..n])
            .map_err(|e| format!("send: {} ({pos} of {len} bytes sent)", describe(&e)))?;
        pos += n as u64;
    }
    conn.shutdown(Shutdown::Write)
        .map_err(|e| format!("half-close: {e}"))
}

/// Reads until EOF or error, discarding (waiting for the peer to finish).
fn drain(conn: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}

fn serve(mut conn: TcpStream, mode: Far, stall: Duration, deadline: Instant) -> Option<FarReport> {
    setup(&conn, stall).ok()?;
    let mut head = [0u8; 8];
    if let Err(e) = read_exact(&mut conn, &mut head, deadline) {
        return Some(FarReport {
            done: Instant::now(),
            result: Err(format!("far end: no header: {e}")),
        });
    }
    let magic = u32::from_le_bytes(head[..4].try_into().unwrap());
    let index = u32::from_le_bytes(head[4..].try_into().unwrap());
    if magic != MAGIC {
        return Some(FarReport {
            done: Instant::now(),
            result: Err("far end: corrupted header".into()),
        });
    }
    let (done, result) = match mode {
        Far::Sink(len) => receive(&mut conn, up_seed(index), len, deadline),
        Far::Source(len) => {
            let r = send(&mut conn, down_seed(index), len, deadline);
            drain(&mut conn);
            (Instant::now(), r)
        }
        Far::Both(len) => {
            let mut writer = conn.try_clone().ok()?;
            let sender = thread::spawn(move || send(&mut writer, down_seed(index), len, deadline));
            let (done, received) = receive(&mut conn, up_seed(index), len, deadline);
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err("sender panicked".into()));
            (done, received.and(sent))
        }
        Far::Echo => {
            let mut buf = vec![0u8; 64 * 1024];
            let r = loop {
                match conn.read(&mut buf) {
                    Ok(0) => break conn.shutdown(Shutdown::Write).map_err(|e| e.to_string()),
                    Ok(n) => {
                        if let Err(e) = conn.write_all(&buf[..n]) {
                            break Err(describe(&e));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(describe(&e)),
                }
            };
            (Instant::now(), r)
        }
    };
    Some(FarReport {
        done,
        result: result.map_err(|e| format!("far end: {e}")),
    })
}

/// What one test measured on the client side.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Payload bytes moved (both directions counted).
    pub bytes: u64,
    /// Seconds from the first connect to the last byte verified.
    pub seconds: f64,
    /// Round-trip times of the ping-pong, in microseconds, sorted.
    pub rtts_us: Vec<f64>,
}

fn connect(entry: SocketAddr, stall: Duration, index: u32) -> Result<TcpStream, String> {
    let mut conn =
        TcpStream::connect_timeout(&entry, stall).map_err(|e| format!("connect: {e}"))?;
    setup(&conn, stall).map_err(|e| e.to_string())?;
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&MAGIC.to_le_bytes());
    head[4..].copy_from_slice(&index.to_le_bytes());
    conn.write_all(&head).map_err(|e| format!("header: {e}"))?;
    Ok(conn)
}

/// Waits for `count` far-end reports (call once the client side is done); the latest
/// completion time, or the first failure. Connections that never reached the far end fail
/// once nothing is in progress there.
fn far_reports(far: &FarEnd, count: usize, deadline: Instant) -> Result<Instant, String> {
    let mut last: Option<Instant> = None;
    let mut received = 0;
    let mut idle_polls = 0;
    while received < count {
        if Instant::now() > deadline + Duration::from_secs(1) {
            return Err("far end: no report before the deadline".into());
        }
        match far.reports.recv_timeout(Duration::from_millis(200)) {
            Ok(report) => {
                report.result?;
                received += 1;
                last = Some(last.map_or(report.done, |l| l.max(report.done)));
            }
            Err(_) if far.active.load(Ordering::SeqCst) == 0 => {
                idle_polls += 1;
                if idle_polls >= 10 {
                    return Err(format!(
                        "far end: only {received} of {count} connections arrived"
                    ));
                }
            }
            Err(_) => idle_polls = 0,
        }
    }
    last.ok_or_else(|| "no connections".into())
}

/// Bulk up: `len` bytes from the client to the far end (a `Far::Sink`).
pub fn bulk_up(
    entry: SocketAddr,
    far: &FarEnd,
    len: u64,
    stall: Duration,
    deadline: Instant,
) -> Result<Outcome, String> {
    let start = Instant::now();
    let mut conn = connect(entry, stall, 0)?;
    send(&mut conn, up_seed(0), len, deadline)?;
    let done = far_reports(far, 1, deadline)?;
    drain(&mut conn);
    Ok(Outcome {
        bytes: len,
        seconds: (done - start).as_secs_f64(),
        ..Outcome::default()
    })
}

/// Bulk down: `len` bytes from the far end (a `Far::Source`) to the client.
pub fn bulk_down(
    entry: SocketAddr,
    far: &FarEnd,
    len: u64,
    stall: Duration,
    deadline: Instant,
) -> Result<Outcome, String> {
    let start = Instant::now();
    let mut conn = connect(entry, stall, 0)?;
    let (done, received) = receive(&mut conn, down_seed(0), len, deadline);
    let _ = conn.shutdown(Shutdown::Write);
    received?;
    far_reports(far, 1, deadline)?;
    Ok(Outcome {
        bytes: len,
        seconds: (done - start).as_secs_f64(),
        ..Outcome::default()
    })
}

/// Both ways at once, `len` bytes each (the far end is a `Far::Both`).
pub fn bidi(
    entry: SocketAddr,
    far: &FarEnd,
    len: u64,
    stall: Duration,
    deadline: Instant,
) -> Result<Outcome, String> {
    let start = Instant::now();
    let mut conn = connect(entry, stall, 0)?;
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let sender = thread::spawn(move || send(&mut writer, up_seed(0), len, deadline));
    let (done_down, received) = receive(&mut conn, down_seed(0), len, deadline);
    let sent = sender
        .join()
        .unwrap_or_else(|_| Err("sender panicked".into()));
    let _ = conn.shutdown(Shutdown::Both);
    received.map_err(|e| format!("download: {e}"))?;
    sent.map_err(|e| format!("upload: {e}"))?;
    let done_up = far_reports(far, 1, deadline)?;
    Ok(Outcome {
        bytes: 2 * len,
        seconds: (done_down.max(done_up) - start).as_secs_f64(),
        ..Outcome::default()
    })
}

/// Ping-pong: `warmup` then `count` round trips of 64 bytes (the far end is a `Far::Echo`).
pub fn ping_pong(
    entry: SocketAddr,
    far: &FarEnd,
    warmup: usize,
    count: usize,
    stall: Duration,
    deadline: Instant,
) -> Result<Outcome, String> {
    let start = Instant::now();
    let mut conn = connect(entry, stall, 0)?;
    let mut out = [0u8; PING];
    let mut back = [0u8; PING];
    let mut rtts = Vec::with_capacity(count);
    let pattern = Pattern::new(up_seed(0));
    for round in 0..warmup + count {
        let pos = (round * PING) as u64;
        pattern.fill(pos, &mut out);
        let sent = Instant::now();
        conn.write_all(&out)
            .map_err(|e| format!("ping {round}: {}", describe(&e)))?;
        read_exact(&mut conn, &mut back, deadline).map_err(|e| format!("ping {round}: {e}"))?;
        if back != out {
            return Err(format!("ping {round}: corrupted echo"));
        }
        if round >= warmup {
            rtts.push(sent.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
    let mut rest = [0u8; 1];
    match conn.read(&mut rest) {
        Ok(0) => {}
        Ok(_) => return Err("bytes beyond the echoes".into()),
        Err(e) => return Err(format!("no EOF after the pings: {}", describe(&e))),
    }
    far_reports(far, 1, deadline)?;
    rtts.sort_by(|a, b| a.total_cmp(b));
    Ok(Outcome {
        bytes: (2 * PING * (warmup + count)) as u64,
        seconds: start.elapsed().as_secs_f64(),
        rtts_us: rtts,
    })
}

/// `streams` concurrent uploads of `len / streams` bytes each (the far end is a `Far::Sink`
/// of that size); aggregate throughput.
pub fn streams(
    entry: SocketAddr,
    far: &FarEnd,
    streams: u32,
    each: u64,
    stall: Duration,
    deadline: Instant,
) -> Result<Outcome, String> {
    let barrier = Arc::new(Barrier::new(streams as usize + 1));
    let workers: Vec<_> = (0..streams)
        .map(|index| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut conn = connect(entry, stall, index)?;
                send(&mut conn, up_seed(index), each, deadline)?;
                drain(&mut conn);
                Ok::<(), String>(())
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut first_error = None;
    for (i, w) in workers.into_iter().enumerate() {
        if let Err(e) = w.join().unwrap_or_else(|_| Err("panicked".into())) {
            first_error.get_or_insert(format!("stream {i}: {e}"));
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let done = far_reports(far, streams as usize, deadline)?;
    Ok(Outcome {
        bytes: each * u64::from(streams),
        seconds: (done - start).as_secs_f64(),
        ..Outcome::default()
    })
}
