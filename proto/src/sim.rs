//! A deterministic simulated network for testing the core (and for benches and fuzzing).
//!
//! Clients and one server are joined by simulated TCP connections: each client connection slot
//! maps to one link, which the server sees as an accepted connection. Every HTTP message crosses
//! the link as a whole, after the path's one-way latency (plus seeded jitter) and, with a rate
//! set, after serialisation behind earlier bytes in the same direction. A seeded PRNG decides
//! faults per message: drop (with the link closed, or silently hung), duplicate a request on a
//! new link (a proxy retry), corrupt a byte, cut the message midway, replace a response with a
//! proxy error page, close every link after one response (as tinyproxy does), and partitions.
//!
//! Time is virtual: each step jumps to the earliest of the pending deliveries and the cores'
//! deadlines; equal instants are ordered by a sequence number. Runs are bounded in steps and in
//! virtual time, and a core that asks to be woken at the current instant without making
//! progress is reported as a livelock.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::time::Duration;

use crate::client::{Client, ConnId, Endpoint};
use crate::config::{ClientConfig, ServerConfig};
use crate::error::{Event, ReadError, SessionError, WriteError};
use crate::server::{Entropy, Server};
use crate::time::Instant;
use crate::url::Url;
use crate::wire::SessionId;

/// SplitMix64: a tiny seeded generator, plenty for fault decisions.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p` (0.0 to 1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

impl Entropy for SimRng {
    fn fill(&mut self, buf: &mut [u8]) {
        SimRng::fill(self, buf);
    }
}

/// Fault probabilities, per HTTP message.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// A request vanishes and its link closes.
    pub drop_request: f64,
    /// A response vanishes and its link closes.
    pub drop_response: f64,
    /// A request vanishes and its link hangs (no close is ever seen).
    pub hang_request: f64,
    /// A response vanishes and its link hangs.
    pub hang_response: f64,
    /// A request is also delivered on a second link, as a retrying proxy does.
    pub duplicate_request: f64,
    /// One byte of a request body is flipped.
    pub corrupt_request: f64,
    /// One byte of a response body is flipped.
    pub corrupt_response: f64,
    /// A request is cut midway and its link closes.
    pub cut_request: f64,
    /// A response is cut midway and its link closes.
    pub cut_response: f64,
    /// A response is replaced by a proxy's 502/503 HTML page.
    pub error_page: f64,
    /// Every link closes after one response without saying so in its headers (tinyproxy 1.11
    /// strips `Connection: close`).
    pub close_after_response: bool,
}

/// The simulated path.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed for jitter and faults.
    pub seed: u64,
    /// One-way latency.
    pub latency: Duration,
    /// Extra random one-way delay, up to this much.
    pub jitter: Duration,
    /// Bytes per second each way (0: unlimited).
    pub rate: u64,
    /// Faults.
    pub faults: Faults,
    /// From this instant on, every message is lost (a permanent partition).
    pub partition_at: Option<Instant>,
    /// Most steps before the run stops.
    pub max_steps: u64,
    /// Most virtual time before the run stops.
    pub max_time: Duration,
    /// Record a line per network event in [`Sim::trace`].
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            rate: 0,
            faults: Faults::default(),
            partition_at: None,
            max_steps: 2_000_000,
            max_time: Duration::from_secs(600),
            trace: false,
        }
    }
}

/// What each side's application does.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Bytes the client application sends.
    pub client_sends: Vec<u8>,
    /// Bytes the server application sends.
    pub server_sends: Vec<u8>,
    /// Largest single write.
    pub write_chunk: usize,
    /// Size of each read.
    pub read_chunk: usize,
    /// Pause after each read (virtual time): with a small `read_chunk`, a slow reader. Zero
    /// reads everything available at once.
    pub read_pause: Duration,
    /// Finish (half-close) after sending everything.
    pub finish: bool,
    /// The client aborts once it has sent this many bytes.
    pub client_abort_after: Option<usize>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            client_sends: Vec::new(),
            server_sends: Vec::new(),
            write_chunk: 16 * 1024,
            read_chunk: 1 << 20,
            read_pause: Duration::ZERO,
            finish: true,
            client_abort_after: None,
        }
    }
}

/// One side's application state.
#[derive(Clone, Debug, Default)]
pub struct AppSide {
    /// Bytes written so far.
    pub sent: usize,
    /// Bytes read so far.
    pub received: Vec<u8>,
    /// Read EOF.
    pub eof: bool,
    /// Finished its stream.
    pub finished: bool,
    /// The final event, once seen.
    pub end: Option<Result<(), SessionError>>,
    /// When the final event was seen.
    pub end_at: Option<Instant>,
    /// Events after the final one (must stay 0).
    pub events_after_end: u32,
    /// A read failed with this error.
    pub read_error: Option<ReadError>,
    /// With a read pause: no read before this instant.
    pub next_read: Instant,
}

impl AppSide {
    /// Reads what `read` yields, within the workload's pacing. Returns whether anything moved.
    fn read_with(
        &mut self,
        w: &Workload,
        now: Instant,
        mut read: impl FnMut(&mut [u8]) -> Result<usize, ReadError>,
    ) -> bool {
        let mut moved = false;
        let mut buf = alloc::vec![0u8; w.read_chunk.max(1)];
        while !self.eof && self.read_error.is_none() && now >= self.next_read {
            match read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.received.extend_from_slice(&buf[..n]);
                    self.next_read = now + w.read_pause;
                }
                Err(ReadError::Blocked) => return moved,
                Err(e) => self.read_error = Some(e),
            }
            moved = true;
        }
        moved
    }

    /// When a paced reader wants to read next, if it waits.
    fn wants_read_at(&self, now: Instant) -> Option<Instant> {
        (!self.eof && self.read_error.is_none() && self.next_read > now).then_some(self.next_read)
    }
}

#[derive(Debug)]
enum Delivery {
    /// The request's last byte left the client.
    Sent {
        link: u64,
    },
    ToServer {
        link: u64,
        bytes: Vec<u8>,
    },
    ServerClosed {
        link: u64,
    },
    ToClient {
        link: u64,
        bytes: Vec<u8>,
    },
    ClientClosed {
        link: u64,
    },
}

#[derive(Debug)]
struct Link {
    client: usize,
    slot: u64,
    server_conn: Option<ConnId>,
    /// A duplicate created by a "proxy retry": its responses go nowhere.
    phantom: bool,
    hung: bool,
}

/// One simulated client with its application.
#[derive(Debug)]
pub struct SimClient {
    /// The core.
    pub core: Client,
    /// Its application.
    pub app: AppSide,
    /// The server-side application of the same session.
    pub server_app: AppSide,
    slot_links: BTreeMap<u64, u64>,
    server_finished: bool,
}

/// The simulation: clients, one server and the network.
pub struct Sim {
    /// Path configuration.
    pub config: SimConfig,
    /// The workload every client runs.
    pub workload: Workload,
    /// Current virtual time.
    pub now: Instant,
    /// Clients.
    pub clients: Vec<SimClient>,
    /// The server.
    pub server: Server,
    sessions: BTreeMap<SessionId, usize>,
    rng: SimRng,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    deliveries: BTreeMap<usize, Delivery>,
    next_delivery: usize,
    seq: u64,
    links: BTreeMap<u64, Link>,
    conn_links: BTreeMap<ConnId, u64>,
    next_link: u64,
    up_busy_until: Instant,
    down_busy_until: Instant,
    /// Steps taken.
    pub steps: u64,
    /// Largest (send, receive) buffering seen at any client.
    pub max_client_buffered: (usize, usize),
    /// Largest (send, receive) buffering seen at the server, per session.
    pub max_server_buffered: (usize, usize),
    /// Messages that crossed the network, each way.
    pub messages: (u64, u64),
    /// Times a server application write found no held request to carry it.
    pub writes_without_held_request: u64,
    buf: Vec<u8>,
    /// One line per network event when `config.trace` is set.
    pub trace: Vec<String>,
}

/// The first line of an HTTP message, for traces.
fn first_line(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(bytes.len().min(60));
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Sim {
    fn log(&mut self, what: impl FnOnce() -> String) {
        if self.config.trace {
            let line = format!(
                "{:>10.3}ms {}",
                self.now.as_micros() as f64 / 1000.0,
                what()
            );
            self.trace.push(line);
        }
    }

    /// A simulation of `n` clients running `workload` against one server.
    pub fn new(
        config: SimConfig,
        client_config: ClientConfig,
        server_config: ServerConfig,
        workload: Workload,
        n: usize,
    ) -> Self {
        let mut rng = SimRng::new(config.seed);
        let url = Url::parse(&format!("http://sim.invalid{}", server_config.path_prefix))
            .expect("server path prefix makes a valid URL");
        let server = Server::new(server_config, Box::new(SimRng::new(config.seed ^ 0xABCD)));
        let mut sessions = BTreeMap::new();
        let clients = (0..n)
            .map(|i| {
                let mut id = [0u8; 16];
                rng.fill(&mut id);
                let mut nonce = [0u8; 16];
                rng.fill(&mut nonce);
                let id = SessionId(id);
                sessions.insert(id, i);
                let endpoint = Endpoint::new(&url, id, None);
                SimClient {
                    core: Client::new(client_config.clone(), endpoint, id, nonce, Instant::ZERO),
                    app: AppSide::default(),
                    server_app: AppSide::default(),
                    slot_links: BTreeMap::new(),
                    server_finished: false,
                }
            })
            .collect();
        Sim {
            config,
            workload,
            now: Instant::ZERO,
            clients,
            server,
            sessions,
            rng,
            queue: BinaryHeap::new(),
            deliveries: BTreeMap::new(),
            next_delivery: 0,
            seq: 0,
            links: BTreeMap::new(),
            conn_links: BTreeMap::new(),
            next_link: 0,
            up_busy_until: Instant::ZERO,
            down_busy_until: Instant::ZERO,
            steps: 0,
            max_client_buffered: (0, 0),
            max_server_buffered: (0, 0),
            messages: (0, 0),
            writes_without_held_request: 0,
            buf: Vec::new(),
            trace: Vec::new(),
        }
    }

    /// Runs until every session ended on both sides and the network is quiet, or a budget ran
    /// out. Returns an error describing a livelock or deadlock.
    pub fn run(&mut self) -> Result<(), String> {
        let deadline = Instant::ZERO + self.config.max_time;
        let mut same_instant_steps = 0u64;
        loop {
            self.settle();
            if self.all_ended() && self.queue.is_empty() {
                return Ok(());
            }
            if self.steps >= self.config.max_steps {
                return Err(format!("step budget exhausted at {:?}", self.now));
            }
            self.steps += 1;
            let next = self.next_instant();
            let Some(next) = next else {
                return Err(format!("deadlock at {:?}: nothing scheduled", self.now));
            };
            if next > deadline {
                return Ok(());
            }
            if next <= self.now {
                same_instant_steps += 1;
                if same_instant_steps > 10_000 {
                    return Err(format!("livelock at {:?}", self.now));
                }
            } else {
                same_instant_steps = 0;
                self.now = next;
            }
            self.step();
        }
    }

    /// Every session ended on both sides.
    pub fn all_ended(&self) -> bool {
        self.clients.iter().all(|c| {
            let server_done =
                c.server_app.end.is_some() || self.server.buffered(c.core.session_id()).is_none();
            let read_out = |a: &AppSide| {
                a.eof || a.read_error.is_some() || a.end.as_ref().is_some_and(|e| e.is_err())
            };
            c.app.end.is_some()
                && server_done
                && c.core.is_drained()
                && read_out(&c.app)
                && (read_out(&c.server_app) || c.server_app.end.is_none())
        })
    }

    fn next_instant(&mut self) -> Option<Instant> {
        let mut next = self.queue.peek().map(|Reverse((t, _, _))| *t);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        let now = self.now;
        for c in &self.clients {
            consider(c.core.poll_timeout());
            consider(c.app.wants_read_at(now));
            consider(c.server_app.wants_read_at(now));
        }
        consider(self.server.poll_timeout());
        next
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(Reverse((t, _, id))) = self.queue.peek().copied() {
            if t > now {
                break;
            }
            self.queue.pop();
            if let Some(d) = self.deliveries.remove(&id) {
                self.deliver(d);
            }
            self.settle();
        }
        for i in 0..self.clients.len() {
            if self.clients[i]
                .core
                .poll_timeout()
                .is_some_and(|t| t <= now)
            {
                self.clients[i].core.handle_timeout(now);
            }
        }
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        // Once outputs are drained, no core may ask to be woken at or before the present.
        self.settle();
        for c in &self.clients {
            if let Some(t) = c.core.poll_timeout() {
                assert!(t > now, "client deadline {t:?} not after {now:?}");
            }
        }
        if let Some(t) = self.server.poll_timeout() {
            assert!(t > now, "server deadline {t:?} not after {now:?}");
        }
    }

    fn schedule(&mut self, at: Instant, d: Delivery) {
        let id = self.next_delivery;
        self.next_delivery += 1;
        self.deliveries.insert(id, d);
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, id)));
    }

    fn partitioned(&self) -> bool {
        self.config.partition_at.is_some_and(|t| self.now >= t)
    }

    /// When the first and the last byte of a message of `len` bytes sent now arrive, one way.
    fn arrival_span(&mut self, len: usize, upstream: bool) -> (Instant, Instant) {
        let queue_start = {
            let busy = if upstream {
                self.up_busy_until
            } else {
                self.down_busy_until
            };
            busy.max(self.now)
        };
        let last = self.arrival(len, upstream);
        let first = if self.config.rate > 0 {
            (queue_start + self.config.latency).min(last)
        } else {
            last
        };
        (first, last)
    }

    /// When a message of `len` bytes sent now arrives, one way.
    fn arrival(&mut self, len: usize, upstream: bool) -> Instant {
        let jitter = if self.config.jitter > Duration::ZERO {
            Duration::from_micros(self.rng.below(self.config.jitter.as_micros() as u64 + 1))
        } else {
            Duration::ZERO
        };
        let mut depart = self.now;
        let serialisation = (len as u64)
            .saturating_mul(1_000_000)
            .checked_div(self.config.rate);
        if let Some(micros) = serialisation {
            let busy = if upstream {
                &mut self.up_busy_until
            } else {
                &mut self.down_busy_until
            };
            let start = (*busy).max(self.now);
            *busy = start + Duration::from_micros(micros);
            depart = *busy;
        }
        depart + self.config.latency + jitter
    }

    /// Feeds the applications and drains every core until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.clients.len() {
                moved |= self.drain_client(i);
                moved |= self.client_app(i);
            }
            moved |= self.drain_server();
            moved |= self.server_apps();
            if !moved {
                return;
            }
        }
        panic!("sim: cores keep producing output at {:?}", self.now);
    }

    fn drain_client(&mut self, i: usize) -> bool {
        let mut moved = false;
        let now = self.now;
        loop {
            self.buf.clear();
            let Some(t) = self.clients[i].core.poll_transmit(now, &mut self.buf) else {
                break;
            };
            moved = true;
            let bytes = self.buf[..t.len].to_vec();
            let link = match (t.open, self.clients[i].slot_links.get(&t.conn.0).copied()) {
                (false, Some(link)) => link,
                (_, old) => {
                    if let Some(old) = old {
                        self.close_link_from_client(old);
                    }
                    let link = self.next_link;
                    self.next_link += 1;
                    self.links.insert(
                        link,
                        Link {
                            client: i,
                            slot: t.conn.0,
                            server_conn: None,
                            phantom: false,
                            hung: false,
                        },
                    );
                    self.clients[i].slot_links.insert(t.conn.0, link);
                    link
                }
            };
            self.log(|| {
                format!(
                    "client {i} slot {} link {link} open={} sends {} bytes",
                    t.conn.0, t.open, t.len
                )
            });
            self.send_request(link, bytes);
        }
        while let Some(conn) = self.clients[i].core.poll_close() {
            moved = true;
            if let Some(link) = self.clients[i].slot_links.remove(&conn.0) {
                self.close_link_from_client(link);
            }
        }
        while let Some(event) = self.clients[i].core.poll_event() {
            moved = true;
            self.log(|| format!("client {i} event {event:?}"));
            let app = &mut self.clients[i].app;
            if app.end.is_some() {
                app.events_after_end += 1;
            }
            match event {
                Event::Closed => {
                    app.end = Some(Ok(()));
                    app.end_at = Some(now);
                }
                Event::Failed(e) => {
                    app.end = Some(Err(e));
                    app.end_at = Some(now);
                }
                _ => {}
            }
        }
        moved
    }

    fn send_request(&mut self, link: u64, mut bytes: Vec<u8>) {
        self.messages.0 += 1;
        if self.partitioned() {
            return;
        }
        let f = self.config.faults.clone();
        let at = self.arrival(bytes.len(), true);
        let sent = at - self.config.latency;
        self.schedule(sent.max(self.now), Delivery::Sent { link });
        if self.rng.chance(f.hang_request) {
            if let Some(l) = self.links.get_mut(&link) {
                l.hung = true;
            }
            return;
        }
        if self.rng.chance(f.drop_request) {
            self.schedule(at, Delivery::ClientClosed { link });
            return;
        }
        if self.rng.chance(f.duplicate_request) {
            let dup = self.next_link;
            self.next_link += 1;
            let client = self.links.get(&link).map_or(0, |l| l.client);
            self.links.insert(
                dup,
                Link {
                    client,
                    slot: u64::MAX,
                    server_conn: None,
                    phantom: true,
                    hung: false,
                },
            );
            self.schedule(
                at,
                Delivery::ToServer {
                    link: dup,
                    bytes: bytes.clone(),
                },
            );
        }
        if self.rng.chance(f.corrupt_request) {
            flip_body_byte(&mut self.rng, &mut bytes);
        }
        if self.rng.chance(f.cut_request) {
            let keep = self.rng.below(bytes.len() as u64) as usize;
            bytes.truncate(keep);
            self.schedule(at, Delivery::ToServer { link, bytes });
            self.schedule(at, Delivery::ClientClosed { link });
            return;
        }
        self.schedule(at, Delivery::ToServer { link, bytes });
    }

    /// The client closed `link`: the server sees the close after the latency.
    fn close_link_from_client(&mut self, link: u64) {
        let at = self.now + self.config.latency;
        self.schedule(at, Delivery::ClientClosed { link });
    }

    fn drain_server(&mut self) -> bool {
        let mut moved = false;
        let now = self.now;
        loop {
            self.buf.clear();
            let Some(t) = self.server.poll_transmit(now, &mut self.buf) else {
                break;
            };
            moved = true;
            let bytes = self.buf[..t.len].to_vec();
            let Some(&link) = self.conn_links.get(&t.conn) else {
                continue;
            };
            self.send_response(link, bytes, t.close_after);
        }
        while let Some(conn) = self.server.poll_close() {
            moved = true;
            if let Some(link) = self.conn_links.remove(&conn) {
                let at = self.now + self.config.latency;
                self.schedule(at, Delivery::ServerClosed { link });
            }
        }
        while let Some(r) = self.server.poll_refusal() {
            self.log(|| format!("server refused {r:?}"));
        }
        while let Some(ev) = self.server.poll_event() {
            moved = true;
            self.log(|| format!("server event {:?}", ev.event));
            let Some(&i) = self.sessions.get(&ev.session) else {
                continue;
            };
            let app = &mut self.clients[i].server_app;
            if app.end.is_some() {
                app.events_after_end += 1;
            }
            match ev.event {
                Event::Closed => {
                    app.end = Some(Ok(()));
                    app.end_at = Some(now);
                }
                Event::Failed(e) => {
                    app.end = Some(Err(e));
                    app.end_at = Some(now);
                }
                _ => {}
            }
        }
        moved
    }

    fn send_response(&mut self, link: u64, mut bytes: Vec<u8>, close_after: bool) {
        self.messages.1 += 1;
        let Some(l) = self.links.get(&link) else {
            return;
        };
        if l.phantom || l.hung || self.partitioned() {
            return;
        }
        let f = self.config.faults.clone();
        let (first, at) = self.arrival_span(bytes.len(), false);
        let close = close_after || f.close_after_response;
        if self.rng.chance(f.hang_response) {
            if let Some(l) = self.links.get_mut(&link) {
                l.hung = true;
            }
            return;
        }
        if self.rng.chance(f.drop_response) {
            self.schedule(at, Delivery::ServerClosed { link });
            self.close_server_side(link, at);
            return;
        }
        if self.rng.chance(f.error_page) {
            let page = b"<html><body><h1>503 Service Unavailable</h1>No server is available to handle this request.</body></html>\n";
            let mut out = Vec::new();
            out.extend_from_slice(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nConnection: close\r\nContent-Length: ");
            out.extend_from_slice(format!("{}", page.len()).as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(page);
            self.schedule(at, Delivery::ToClient { link, bytes: out });
            self.schedule(at, Delivery::ServerClosed { link });
            self.close_server_side(link, at);
            return;
        }
        if self.rng.chance(f.corrupt_response) {
            flip_body_byte(&mut self.rng, &mut bytes);
        }
        if self.rng.chance(f.cut_response) {
            let keep = self.rng.below(bytes.len() as u64) as usize;
            bytes.truncate(keep);
            self.schedule(at, Delivery::ToClient { link, bytes });
            self.schedule(at, Delivery::ServerClosed { link });
            self.close_server_side(link, at);
            return;
        }
        // The head arrives with the first byte, the body with the last.
        let head_len = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        if first < at && head_len > 0 && head_len < bytes.len() {
            let body = bytes.split_off(head_len);
            self.schedule(first, Delivery::ToClient { link, bytes });
            self.schedule(at, Delivery::ToClient { link, bytes: body });
        } else {
            self.schedule(at, Delivery::ToClient { link, bytes });
        }
        if close {
            self.schedule(at, Delivery::ServerClosed { link });
            if !close_after {
                self.close_server_side(link, at);
            }
        }
    }

    /// The proxy also closes its side towards the server.
    fn close_server_side(&mut self, link: u64, at: Instant) {
        if let Some(conn) = self.links.get(&link).and_then(|l| l.server_conn) {
            self.conn_links.remove(&conn);
            let _ = at;
            self.server.handle_closed(self.now, conn);
        }
    }

    fn deliver(&mut self, d: Delivery) {
        let now = self.now;
        self.log(|| match &d {
            Delivery::Sent { link } => format!("link {link} request sent"),
            Delivery::ToServer { link, bytes } => {
                format!(
                    "link {link} -> server: {} ({} bytes)",
                    first_line(bytes),
                    bytes.len()
                )
            }
            Delivery::ToClient { link, bytes } => {
                format!(
                    "link {link} -> client: {} ({} bytes)",
                    first_line(bytes),
                    bytes.len()
                )
            }
            Delivery::ClientClosed { link } => format!("link {link} closed by client side"),
            Delivery::ServerClosed { link } => format!("link {link} closed by server side"),
        });
        match d {
            Delivery::Sent { link } => {
                let Some(l) = self.links.get(&link) else {
                    return;
                };
                let (client, slot) = (l.client, l.slot);
                if self
                    .clients
                    .get(client)
                    .and_then(|c| c.slot_links.get(&slot))
                    == Some(&link)
                {
                    self.clients[client].core.handle_sent(now, ConnId(slot));
                }
            }
            Delivery::ToServer { link, bytes } => {
                let Some(l) = self.links.get_mut(&link) else {
                    return;
                };
                if l.hung {
                    return;
                }
                let conn = match l.server_conn {
                    Some(c) => c,
                    None => {
                        let Some(c) = self.server.handle_accept(now) else {
                            return;
                        };
                        l.server_conn = Some(c);
                        self.conn_links.insert(c, link);
                        c
                    }
                };
                self.server.handle_bytes(now, conn, &bytes);
            }
            Delivery::ClientClosed { link } => {
                if let Some(l) = self.links.get_mut(&link) {
                    // The client side learns of a drop too (a reset from the proxy).
                    let (client, slot, conn) = (l.client, l.slot, l.server_conn.take());
                    if let Some(conn) = conn {
                        self.conn_links.remove(&conn);
                        self.server.handle_closed(now, conn);
                    }
                    if self
                        .clients
                        .get(client)
                        .and_then(|c| c.slot_links.get(&slot))
                        == Some(&link)
                    {
                        self.clients[client].slot_links.remove(&slot);
                        self.clients[client].core.handle_closed(now, ConnId(slot));
                    }
                }
            }
            Delivery::ToClient { link, bytes } => {
                let Some(l) = self.links.get(&link) else {
                    return;
                };
                let (client, slot) = (l.client, l.slot);
                if self
                    .clients
                    .get(client)
                    .and_then(|c| c.slot_links.get(&slot))
                    == Some(&link)
                {
                    self.clients[client]
                        .core
                        .handle_bytes(now, ConnId(slot), &bytes);
                }
            }
            Delivery::ServerClosed { link } => {
                let Some(l) = self.links.remove(&link) else {
                    return;
                };
                if let Some(conn) = l.server_conn {
                    self.conn_links.remove(&conn);
                    self.server.handle_closed(now, conn);
                }
                if self
                    .clients
                    .get(l.client)
                    .and_then(|c| c.slot_links.get(&l.slot))
                    == Some(&link)
                {
                    self.clients[l.client].slot_links.remove(&l.slot);
                    self.clients[l.client]
                        .core
                        .handle_closed(now, ConnId(l.slot));
                }
            }
        }
    }

    fn client_app(&mut self, i: usize) -> bool {
        let w = &self.workload;
        let c = &mut self.clients[i];
        let mut moved = false;
        if c.app.end.is_none() || c.core.is_ended() {
            // Write.
            while c.app.sent < w.client_sends.len() && !c.core.is_ended() {
                if let Some(limit) = w.client_abort_after {
                    if c.app.sent >= limit {
                        c.core
                            .abort(self.now, crate::wire::AbortCode::APPLICATION, "test abort");
                        moved = true;
                        break;
                    }
                }
                let end = (c.app.sent + w.write_chunk).min(w.client_sends.len());
                match c.core.write(&w.client_sends[c.app.sent..end]) {
                    Ok(n) => {
                        c.app.sent += n;
                        moved |= n > 0;
                    }
                    Err(WriteError::Blocked) | Err(_) => break,
                }
            }
            if w.finish && !c.app.finished && c.app.sent == w.client_sends.len() {
                c.core.finish();
                c.app.finished = true;
                moved = true;
            }
        }
        // Read.
        let now = self.now;
        let core = &mut c.core;
        moved |= c.app.read_with(w, now, |buf| core.read(buf));
        let b = c.core.buffered();
        self.max_client_buffered.0 = self.max_client_buffered.0.max(b.0);
        self.max_client_buffered.1 = self.max_client_buffered.1.max(b.1);
        moved
    }

    fn server_apps(&mut self) -> bool {
        let mut moved = false;
        let ids: Vec<(SessionId, usize)> = self.sessions.iter().map(|(k, v)| (*k, *v)).collect();
        for (id, i) in ids {
            let alive = self.server.buffered(id).is_some();
            let w = &self.workload;
            let c = &mut self.clients[i];
            if !alive && c.server_app.end.is_none() {
                continue; // Not opened yet.
            }
            while alive && c.server_app.sent < w.server_sends.len() && c.server_app.end.is_none() {
                let end = (c.server_app.sent + w.write_chunk).min(w.server_sends.len());
                let idle = self.server.buffered(id).is_some_and(|b| b.0 == 0);
                let held = self.server.held_requests(id);
                match self
                    .server
                    .write(id, &w.server_sends[c.server_app.sent..end])
                {
                    Ok(n) => {
                        if idle && held == 0 && n > 0 {
                            self.writes_without_held_request += 1;
                        }
                        c.server_app.sent += n;
                        moved |= n > 0;
                    }
                    Err(_) => break,
                }
            }
            if alive && w.finish && !c.server_finished && c.server_app.sent == w.server_sends.len()
            {
                self.server.finish(id);
                c.server_finished = true;
                c.server_app.finished = true;
                moved = true;
            }
            let server = &mut self.server;
            moved |= c
                .server_app
                .read_with(w, self.now, |buf| server.read(id, buf));
            if let Some(b) = self.server.buffered(id) {
                self.max_server_buffered.0 = self.max_server_buffered.0.max(b.0);
                self.max_server_buffered.1 = self.max_server_buffered.1.max(b.1);
            }
        }
        moved
    }
}

/// Flips one byte after the HTTP head (or anywhere if there is no body).
fn flip_body_byte(rng: &mut SimRng, bytes: &mut [u8]) {
    if bytes.is_empty() {
        return;
    }
    let body_start = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| p + 4);
    let span = bytes.len() - body_start;
    let at = if span > 0 {
        body_start + rng.below(span as u64) as usize
    } else {
        rng.below(bytes.len() as u64) as usize
    };
    bytes[at] ^= 1 << rng.below(8);
}

/// A deterministic pseudo-random payload of `len` bytes.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SimRng::new(seed);
    let mut v = alloc::vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Describes an application side's received bytes against what was expected, for assertions.
pub fn check_stream(name: &str, expected: &[u8], received: &[u8]) -> Result<(), String> {
    if expected == received {
        return Ok(());
    }
    let first_diff = expected
        .iter()
        .zip(received)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(received.len()));
    Err(format!(
        "{name}: expected {} bytes, received {}, first difference at {first_diff}",
        expected.len(),
        received.len()
    ))
}

/// Queued deliveries, for debugging.
impl core::fmt::Debug for Sim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("steps", &self.steps)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}
