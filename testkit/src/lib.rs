//! Test support shared by holdwire's driver tests (dev-only, never published).
//!
//! [`FaultRelay`] is a TCP relay on 127.0.0.1 that sits between an HTTP client and its server
//! (or a proxy) and breaks whole HTTP/1.1 exchanges on purpose, the way broken proxies and
//! networks do. It reads each request from the client and each response from the server as a
//! whole message (a head and a `Content-Length` body: what holdwire sends), one exchange at a
//! time per connection, and for each exchange applies at most one [`Fault`], drawn from a
//! seeded random generator with the rates of its [`Plan`] (and, with [`Plan::rotating`], every
//! n-th exchange gets the least-applied fault, so that every fault of the plan surely happens).
//! [`FaultRelay::count`] says how often each fault was applied, so that a test can prove the
//! faults happened.
//!
//! Every socket wait is bounded (short read timeouts, checked against a stop flag and a
//! deadline); dropping the relay stops its threads within a fraction of a second.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One way of breaking an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Close both connections at a random point: before the request is forwarded, after it
    /// is forwarded (the server acts on it, its answer is lost), or after the whole exchange.
    Drop,
    /// Forward only a random prefix of the request, then close both connections.
    CutRequest,
    /// Forward the request, then only a random prefix of the response, then close both.
    CutResponse,
    /// Wait up to [`Plan::max_delay`] before forwarding the request and again the response.
    Delay,
    /// Forward part of the response, stall for [`Plan::stall`], then send the rest.
    Stall,
    /// Flip one byte of the request body before forwarding it.
    FlipRequest,
    /// Flip one byte of the response body before forwarding it.
    FlipResponse,
    /// Answer with a proxy's `502` or `503` HTML page: either instead of forwarding the request,
    /// or in place of the server's response to it.
    ErrorPage,
    /// Replay an earlier request (of any connection): either again on a new connection beside
    /// the current exchange, or instead of the current request, whose client then gets the
    /// answer to the old one.
    Replay,
}

impl Fault {
    /// Every fault kind.
    pub const ALL: [Fault; 9] = [
        Fault::Drop,
        Fault::CutRequest,
        Fault::CutResponse,
        Fault::Delay,
        Fault::Stall,
        Fault::FlipRequest,
        Fault::FlipResponse,
        Fault::ErrorPage,
        Fault::Replay,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Which faults a relay applies, how often, and its seed.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Seed of the relay's random choices (each connection derives its own generator from it).
    pub seed: u64,
    /// Probability per exchange of each fault, indexed like [`Fault::ALL`]. Their sum is at
    /// most 1: an exchange gets at most one fault.
    rates: [f64; 9],
    /// Longest wait of [`Fault::Delay`].
    pub max_delay: Duration,
    /// How long [`Fault::Stall`] stalls a response.
    pub stall: Duration,
    /// When non-zero, every `rotate`-th exchange (counted over all connections) gets the
    /// least-applied fault with a non-zero rate instead of a random draw, so that every
    /// fault of the plan is applied within the first `9 * rotate` exchanges or so, however
    /// the random draws fall.
    pub rotate: u64,
}

impl Plan {
    /// No faults at all (a plain relay), with `seed`.
    pub fn new(seed: u64) -> Plan {
        Plan {
            seed,
            rates: [0.0; 9],
            max_delay: Duration::from_millis(50),
            stall: Duration::from_millis(1500),
            rotate: 0,
        }
    }

    /// Every fault kind, each with probability `rate` per exchange.
    pub fn mixed(seed: u64, rate: f64) -> Plan {
        Fault::ALL
            .iter()
            .fold(Plan::new(seed), |plan, &f| plan.with(f, rate))
    }

    /// Sets the probability per exchange of `fault`.
    ///
    /// # Panics
    /// If the rates would add up to more than 1, or `rate` is not in `0..=1`.
    pub fn with(mut self, fault: Fault, rate: f64) -> Plan {
        assert!(
            (0.0..=1.0).contains(&rate),
            "rate {rate} is not a probability"
        );
        self.rates[fault.index()] = rate;
        assert!(
            self.rates.iter().sum::<f64>() <= 1.0,
            "fault rates exceed 1"
        );
        self
    }

    /// Sets [`Plan::rotate`].
    pub fn rotating(mut self, every: u64) -> Plan {
        self.rotate = every;
        self
    }

    /// The fault for exchange number `n` (from 1), if any.
    fn choose(&self, n: u64, rng: &mut Rng, counts: &[AtomicU64; 9]) -> Option<Fault> {
        if self.rotate > 0 && n % self.rotate == 0 {
            let least = Fault::ALL
                .iter()
                .filter(|f| self.rates[f.index()] > 0.0)
                .min_by_key(|f| counts[f.index()].load(Ordering::Relaxed));
            if let Some(&f) = least {
                return Some(f);
            }
        }
        self.pick(rng)
    }

    /// Draws the fault for one exchange, if any.
    fn pick(&self, rng: &mut Rng) -> Option<Fault> {
        let mut r = rng.unit();
        for f in Fault::ALL {
            let rate = self.rates[f.index()];
            if r < rate {
                return Some(f);
            }
            r -= rate;
        }
        None
    }
}

/// SplitMix64: small, seeded, good enough to choose faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Requests kept for [`Fault::Replay`].
const CAPTURED: usize = 16;
/// How long a relayed connection may wait for the client's next request.
const REQUEST_WAIT: Duration = Duration::from_secs(300);
/// How long the relay waits for a response (servers hold requests up to their `max_wait`).
const RESPONSE_WAIT: Duration = Duration::from_secs(120);
/// Largest HTTP head the relay accepts.
const MAX_HEAD: usize = 64 * 1024;

struct Shared {
    plan: Mutex<Plan>,
    upstream: SocketAddr,
    counts: [AtomicU64; 9],
    exchanges: AtomicU64,
    connections: AtomicU64,
    stop: AtomicBool,
    captured: Mutex<VecDeque<Vec<u8>>>,
}

/// A fault-injecting HTTP relay on 127.0.0.1; see the crate documentation.
pub struct FaultRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultRelay {
    /// Listens on an ephemeral 127.0.0.1 port and relays every connection to `upstream`.
    pub fn start(upstream: SocketAddr, plan: Plan) -> io::Result<FaultRelay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            plan: Mutex::new(plan),
            upstream,
            counts: Default::default(),
            exchanges: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            captured: Mutex::new(VecDeque::new()),
        });
        let accept_shared = shared.clone();
        thread::Builder::new()
            .name("fault-relay".into())
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(FaultRelay { addr, shared })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many times `fault` was applied so far.
    pub fn count(&self, fault: Fault) -> u64 {
        self.shared.counts[fault.index()].load(Ordering::Relaxed)
    }

    /// Requests read from clients so far.
    pub fn exchanges(&self) -> u64 {
        self.shared.exchanges.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// The last requests with a body that clients sent through the relay (at most 16, oldest
    /// first), each a whole HTTP message as the client sent it.
    pub fn captured(&self) -> Vec<Vec<u8>> {
        let captured = self
            .shared
            .captured
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        captured.iter().cloned().collect()
    }

    /// Replaces the plan for the exchanges that start from now on (for example to cut a
    /// session off completely in the middle of a transfer).
    pub fn set_plan(&self, plan: Plan) {
        *self.shared.plan() = plan;
    }

    /// A one-line summary: exchanges, connections and each fault's count.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} exchanges on {} connections;",
            self.exchanges(),
            self.connections()
        );
        for f in Fault::ALL {
            s.push_str(&format!(" {f:?} {}", self.count(f)));
        }
        s
    }
}

impl Shared {
    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((down, _)) => {
                let index = shared.connections.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let _ = thread::Builder::new()
                    .name("fault-relay-conn".into())
                    .spawn(move || relay_connection(&shared, down, index));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// One whole HTTP message: its head and `Content-Length` body.
struct Message {
    bytes: Vec<u8>,
    head_len: usize,
    /// The head says `Connection: close` (or it is HTTP/1.0 without keep-alive).
    close: bool,
}

impl Message {
    fn body_len(&self) -> usize {
        self.bytes.len() - self.head_len
    }
}

/// A socket and the bytes read from it beyond the last message.
struct Peer {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    fn new(tcp: TcpStream) -> Peer {
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(Duration::from_millis(50)));
        let _ = tcp.set_write_timeout(Some(Duration::from_secs(30)));
        Peer {
            tcp,
            buf: Vec::new(),
        }
    }

    /// Reads the next whole message; `None` on EOF, an error, a malformed head, the stop flag or
    /// after `limit`.
    fn read_message(&mut self, stop: &AtomicBool, limit: Duration) -> Option<Message> {
        let until = Instant::now() + limit;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(parsed) = parse_message(&self.buf) {
                let (len, head_len, close) = parsed.ok()?;
                let bytes: Vec<u8> = self.buf.drain(..len).collect();
                return Some(Message {
                    bytes,
                    head_len,
                    close,
                });
            }
            if stop.load(Ordering::Relaxed) || Instant::now() >= until {
                return None;
            }
            match self.tcp.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        self.tcp.write_all(bytes).is_ok()
    }

    fn close(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}

/// The first message in `data`: `None` if incomplete, else `Ok((length, head length,
/// connection close))`, or `Err` for a head the relay cannot frame.
#[allow(clippy::type_complexity)]
fn parse_message(data: &[u8]) -> Option<Result<(usize, usize, bool), ()>> {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (data.len() > MAX_HEAD).then_some(Err(()));
    };
    let head_len = end + 4;
    let head = String::from_utf8_lossy(&data[..end]);
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default();
    let http10 = start.starts_with("HTTP/1.0") || start.ends_with("HTTP/1.0");
    let mut body_len = 0usize;
    let mut close = http10;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse() {
                Ok(n) => body_len = n,
                Err(_) => return Some(Err(())),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Some(Err(()));
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close")
                || (http10 && !value.eq_ignore_ascii_case("keep-alive"));
        }
    }
    let len = head_len.checked_add(body_len)?;
    (data.len() >= len).then_some(Ok((len, head_len, close)))
}

/// A proxy-style error page.
fn error_page(status: u16, close: bool) -> Vec<u8> {
    let reason = if status == 502 {
        "Bad Gateway"
    } else {
        "Service Unavailable"
    };
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{status} {reason}</title></head>\n\
         <body><h1>{reason}</h1><p>The proxy could not reach the origin server.</p>\
         <hr><address>fault-relay</address></body></html>\n"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: {}\r\n\r\n{body}",
        body.len(),
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes()
}

/// Flips one byte of `message`'s body to a different value; false if it has no body.
fn flip_body(message: &mut Message, rng: &mut Rng) -> bool {
    if message.body_len() == 0 {
        return false;
    }
    let at = message.head_len + rng.below(message.body_len());
    message.bytes[at] ^= 1 + rng.below(255) as u8;
    true
}

/// Sleeps `d` in short steps; false if the relay was stopped meanwhile.
fn nap(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
    }
    true
}

/// What to do after an exchange.
enum Next {
    Continue,
    Close,
}

fn relay_connection(shared: &Arc<Shared>, down: TcpStream, index: u64) {
    let seed = shared.plan().seed;
    let mut rng = Rng(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let Ok(up) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5)) else {
        return;
    };
    let (mut down, mut up) = (Peer::new(down), Peer::new(up));
    while let Some(request) = down.read_message(&shared.stop, REQUEST_WAIT) {
        let n = shared.exchanges.fetch_add(1, Ordering::Relaxed) + 1;
        let fault = shared.plan().choose(n, &mut rng, &shared.counts);
        let next = exchange(shared, &mut rng, &mut down, &mut up, request, fault);
        if matches!(next, Next::Close) {
            break;
        }
    }
    down.close();
    up.close();
}

fn count(shared: &Shared, fault: Fault) {
    shared.counts[fault.index()].fetch_add(1, Ordering::Relaxed);
}

/// Forwards one exchange, applying `fault`.
fn exchange(
    shared: &Arc<Shared>,
    rng: &mut Rng,
    down: &mut Peer,
    up: &mut Peer,
    mut request: Message,
    fault: Option<Fault>,
) -> Next {
    let stop = &shared.stop;
    // An earlier request to replay, chosen before this one is captured.
    let replayed = match fault {
        Some(Fault::Replay) => {
            let captured = shared.captured.lock().unwrap_or_else(|e| e.into_inner());
            (!captured.is_empty()).then(|| captured[rng.below(captured.len())].clone())
        }
        _ => None,
    };
    if request.body_len() > 0 {
        let mut captured = shared.captured.lock().unwrap_or_else(|e| e.into_inner());
        if captured.len() == CAPTURED {
            captured.pop_front();
        }
        captured.push_back(request.bytes.clone());
    }
    match fault {
        Some(Fault::Drop) => {
            count(shared, Fault::Drop);
            match rng.below(3) {
                0 => return Next::Close,
                1 => {
                    up.send(&request.bytes);
                    // Let the server read it before the connection goes.
                    nap(stop, Duration::from_millis(5));
                    return Next::Close;
                }
                _ => {
                    let _ = forward(shared, down, up, &request);
                    return Next::Close;
                }
            }
        }
        Some(Fault::CutRequest) => {
            count(shared, Fault::CutRequest);
            let cut = 1 + rng.below(request.bytes.len() - 1);
            up.send(&request.bytes[..cut]);
            nap(stop, Duration::from_millis(5));
            return Next::Close;
        }
        Some(Fault::CutResponse) => {
            if !up.send(&request.bytes) {
                return Next::Close;
            }
            let Some(response) = up.read_message(stop, RESPONSE_WAIT) else {
                return Next::Close;
            };
            count(shared, Fault::CutResponse);
            let cut = 1 + rng.below(response.bytes.len() - 1);
            down.send(&response.bytes[..cut]);
            return Next::Close;
        }
        Some(Fault::Delay) => {
            count(shared, Fault::Delay);
            let max = shared.plan().max_delay.as_micros().max(1) as usize;
            if !nap(stop, Duration::from_micros(rng.below(max) as u64)) || !up.send(&request.bytes)
            {
                return Next::Close;
            }
            let Some(response) = up.read_message(stop, RESPONSE_WAIT) else {
                return Next::Close;
            };
            if !nap(stop, Duration::from_micros(rng.below(max) as u64))
                || !down.send(&response.bytes)
            {
                return Next::Close;
            }
            return close_after(&request, &response);
        }
        Some(Fault::Stall) => {
            if !up.send(&request.bytes) {
                return Next::Close;
            }
            let Some(response) = up.read_message(stop, RESPONSE_WAIT) else {
                return Next::Close;
            };
            count(shared, Fault::Stall);
            let cut = rng.below(response.bytes.len());
            let stall = shared.plan().stall;
            if !down.send(&response.bytes[..cut])
                || !nap(stop, stall)
                || !down.send(&response.bytes[cut..])
            {
                return Next::Close;
            }
            return close_after(&request, &response);
        }
        Some(Fault::FlipRequest) => {
            if flip_body(&mut request, rng) {
                count(shared, Fault::FlipRequest);
            }
        }
        Some(Fault::ErrorPage) => {
            count(shared, Fault::ErrorPage);
            let close = request.close || rng.below(2) == 0;
            if rng.below(2) == 0 {
                // The proxy could not reach the server: the request never arrives.
                down.send(&error_page(502, close));
            } else {
                // The server acted on the request, but its answer is replaced.
                if !up.send(&request.bytes) {
                    return Next::Close;
                }
                let Some(response) = up.read_message(stop, RESPONSE_WAIT) else {
                    return Next::Close;
                };
                down.send(&error_page(503, close || response.close));
                if response.close {
                    return Next::Close;
                }
            }
            return if close { Next::Close } else { Next::Continue };
        }
        Some(Fault::Replay) => {
            if let Some(old) = replayed {
                count(shared, Fault::Replay);
                if rng.below(2) == 0 {
                    // Instead of the current request: its client gets the old one's answer.
                    if !up.send(&old) {
                        return Next::Close;
                    }
                    let Some(response) = up.read_message(stop, RESPONSE_WAIT) else {
                        return Next::Close;
                    };
                    if !down.send(&response.bytes) {
                        return Next::Close;
                    }
                    return close_after(&request, &response);
                }
                // Again on a new connection, beside the current exchange.
                replay_beside(shared, old);
            }
        }
        Some(Fault::FlipResponse) | None => {}
    }
    let flip_response = fault == Some(Fault::FlipResponse);
    if !up.send(&request.bytes) {
        return Next::Close;
    }
    let Some(mut response) = up.read_message(stop, RESPONSE_WAIT) else {
        return Next::Close;
    };
    if flip_response && flip_body(&mut response, rng) {
        count(shared, Fault::FlipResponse);
    }
    if !down.send(&response.bytes) {
        return Next::Close;
    }
    close_after(&request, &response)
}

/// Forwards the request and its response unchanged; false if either failed.
fn forward(shared: &Shared, down: &mut Peer, up: &mut Peer, request: &Message) -> bool {
    up.send(&request.bytes)
        && up
            .read_message(&shared.stop, RESPONSE_WAIT)
            .is_some_and(|response| down.send(&response.bytes))
}

fn close_after(request: &Message, response: &Message) -> Next {
    if request.close || response.close {
        Next::Close
    } else {
        Next::Continue
    }
}

/// Sends `old` on a new upstream connection and discards the answer (bounded in time).
fn replay_beside(shared: &Arc<Shared>, old: Vec<u8>) {
    let shared = shared.clone();
    let _ = thread::Builder::new()
        .name("fault-relay-replay".into())
        .spawn(move || {
            let Ok(tcp) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))
            else {
                return;
            };
            let mut peer = Peer::new(tcp);
            if peer.send(&old) {
                let _ = peer.read_message(&shared.stop, RESPONSE_WAIT);
            }
            peer.close();
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_content_length_messages() {
        let data = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST";
        assert_eq!(parse_message(data), Some(Ok((42, 39, false))));
        assert_eq!(parse_message(&data[..41]), None);
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_message(close),
            Some(Ok((close.len(), close.len(), true)))
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_message(chunked), Some(Err(())));
    }

    #[test]
    fn plan_draws_faults_at_their_rates() {
        let plan = Plan::new(1)
            .with(Fault::Drop, 0.25)
            .with(Fault::Replay, 0.5);
        let mut rng = Rng(7);
        let mut drops = 0;
        let mut replays = 0;
        let mut none = 0;
        for _ in 0..10_000 {
            match plan.pick(&mut rng) {
                Some(Fault::Drop) => drops += 1,
                Some(Fault::Replay) => replays += 1,
                None => none += 1,
                Some(other) => panic!("{other:?} has rate 0"),
            }
        }
        assert!((2200..2800).contains(&drops), "{drops}");
        assert!((4700..5300).contains(&replays), "{replays}");
        assert!((2200..2800).contains(&none), "{none}");
    }

    #[test]
    fn rotation_applies_the_least_applied_fault() {
        let plan = Plan::new(1)
            .with(Fault::Drop, 0.001)
            .with(Fault::Stall, 0.001)
            .rotating(2);
        let counts: [AtomicU64; 9] = Default::default();
        let mut rng = Rng(3);
        counts[Fault::Drop.index()].store(5, Ordering::Relaxed);
        assert_eq!(plan.choose(4, &mut rng, &counts), Some(Fault::Stall));
        counts[Fault::Stall.index()].store(6, Ordering::Relaxed);
        assert_eq!(plan.choose(6, &mut rng, &counts), Some(Fault::Drop));
    }

    #[test]
    fn relays_and_counts_flips() {
        // A one-shot HTTP server answering a fixed body.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        thread::spawn(move || {
            let (tcp, _) = server.accept().unwrap();
            let mut peer = Peer::new(tcp);
            let never = AtomicBool::new(false);
            while let Some(_req) = peer.read_message(&never, Duration::from_secs(10)) {
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong");
            }
        });
        let relay = FaultRelay::start(addr, Plan::new(3).with(Fault::FlipResponse, 1.0)).unwrap();
        let mut client = Peer::new(TcpStream::connect(relay.addr()).unwrap());
        let never = AtomicBool::new(false);
        for _ in 0..3 {
            assert!(client.send(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nping"));
            let response = client
                .read_message(&never, Duration::from_secs(10))
                .expect("a response");
            assert_eq!(
                &response.bytes[..response.head_len],
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
            );
            assert_ne!(&response.bytes[response.head_len..], b"pong");
        }
        assert_eq!(relay.count(Fault::FlipResponse), 3);
        assert_eq!(relay.exchanges(), 3);
    }
}
