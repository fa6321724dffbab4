//! The server endpoint: many sessions, demultiplexed by the session id in the URL path.
//!
//! The driver announces each accepted TCP connection ([`Server::handle_accept`]) and feeds its
//! bytes. A complete request is routed to its session, which applies the bundle and then *holds*
//! the request. A session answers its oldest held request when:
//! - it holds more requests than it granted (`hold`),
//! - it has something to send (data, a resend, a FIN, a control frame),
//! - new data needs acknowledging and another request stays held,
//! - the request was held for `max_wait` (so no proxy times it out), or the session ended.
//!
//! The first and third wait up to `ack_delay` when a small bundle of new data came with a lone
//! extra request (interactive traffic), so that a reply can carry the acknowledgement.
//!
//! A request whose request id was seen before (a proxy retry, a replay) is applied for its
//! messages and acknowledgement only (both idempotent) and answered at once without data, so a
//! replay can neither steal data nor change the session.
//!
//! Timers (held requests, idle sessions, slow or idle connections) live in one heap with lazy
//! invalidation: each session or connection remembers the deadline it registered, and heap
//! entries that no longer match are skipped.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;

use bytes::Bytes;

use crate::auth::{Key, SessionKeys, TAG_LEN};
use crate::client::ConnId;
use crate::config::ServerConfig;
use crate::error::{Event, ReadError, SessionError, WriteError};
use crate::http::{self, Method, Request, RequestParser};
use crate::stream::{Control, Stats, Stream};
use crate::time::{self, Instant};
use crate::wire::{self, AbortCode, BundleEncoder, Header, SessionId, NONCE_LEN};

/// A source of unpredictable bytes (the driver's CSPRNG). The core draws no randomness itself.
pub trait Entropy {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// One HTTP response (or interim response) to write on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct ServerTransmit {
    /// The connection to write on.
    pub conn: ConnId,
    /// Bytes appended to the buffer.
    pub len: usize,
    /// Close the connection after writing.
    pub close_after: bool,
}

/// Something that happened to one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEvent {
    /// The session.
    pub session: SessionId,
    /// What happened; [`Event::Opened`] announces a new session.
    pub event: Event,
}

/// Counters for the whole endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Requests refused with a 4xx or 5xx status.
    pub requests_refused: u64,
    /// Request bodies that failed to decode.
    pub unreadable_requests: u64,
    /// Requests recognised as duplicates or replays.
    pub duplicate_requests: u64,
}

/// Why a request was refused, for logs: the driver may print these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The connection.
    pub conn: ConnId,
    /// HTTP status sent.
    pub status: u16,
    /// What was wrong.
    pub reason: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Session(SessionId),
    Conn(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Waiting for (the rest of) a request.
    Reading,
    /// Its request is held by a session.
    Held(SessionId),
    /// A response is queued; no further request is read until it is written.
    Answering,
}

#[derive(Debug)]
struct Conn {
    parser: RequestParser,
    state: ConnState,
    keep_alive: bool,
    /// When the request in progress started (or the connection went idle).
    since: Instant,
    timer: Option<Instant>,
    /// A whole request arrived on it: idle from then on is keep-alive, not a stalled start.
    served: bool,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    conn: ConnId,
    rid: u64,
    at: Instant,
    keep_alive: bool,
    /// Answer without data (a duplicate or replay).
    bare: bool,
}

#[derive(Debug)]
struct Session {
    stream: Stream,
    held: VecDeque<Held>,
    hold: u8,
    max_rid: u64,
    seen_rids: u128,
    last_request: Instant,
    nonce: [u8; NONCE_LEN],
    confirm_open: bool,
    ack_urgent: bool,
    /// A small bundle of new data arrived: an acknowledgement alone waits until then for data
    /// to go with it (an interactive reply), instead of using up a held request.
    ack_wait_until: Option<Instant>,
    outcome: Option<Result<(), SessionError>>,
    /// When the session ended.
    ended_at: Option<Instant>,
    abort_to_send: Option<(AbortCode, String)>,
    timer: Option<Instant>,
    dirty: bool,
    /// With a token: the key of the client's opening requests, and the session's keys.
    open_key: Option<Key>,
    keys: Option<SessionKeys>,
    /// The application was told of the session (at once without a token; after the first
    /// request tagged with the session key with one, which proves the open was not a replay).
    announced: bool,
}

impl Session {
    /// Records `rid`; returns false if it was seen before (or is too old to tell).
    fn note_rid(&mut self, rid: u64) -> bool {
        if rid > self.max_rid {
            let shift = rid - self.max_rid;
            self.seen_rids = if shift >= 128 {
                0
            } else {
                self.seen_rids << shift
            };
            self.seen_rids |= 1;
            self.max_rid = rid;
            return true;
        }
        let age = self.max_rid - rid;
        if age >= 128 || self.seen_rids & (1 << age) != 0 {
            return false;
        }
        self.seen_rids |= 1 << age;
        true
    }

    fn should_answer(&self, now: Instant, config: &ServerConfig) -> bool {
        let Some(front) = self.held.front() else {
            return false;
        };
        // Only a lone extra request waits (interactive traffic); more mean an upload is
        // under way, whose acknowledgements must flow at once. `max_hold` is never exceeded.
        let ack_waits = self.ack_wait_until.is_some_and(|t| now < t)
            && self.held.len() <= usize::from(self.hold) + 1
            && self.held.len() <= usize::from(config.max_hold.max(1));
        front.bare
            || self.outcome.is_some()
            || self.confirm_open
            || (self.ack_answer_due() && !ack_waits)
            || self.stream.send.has_sendable()
            || (self.held.len() >= 2 && self.stream.recv.window_opened())
            || front.at + config.max_wait <= now
    }

    /// A held request is owed an answer, possibly only an acknowledgement: more are held than
    /// granted, or new data needs acknowledging and another request stays held.
    fn ack_answer_due(&self) -> bool {
        self.held.len() > usize::from(self.hold) || (self.held.len() >= 2 && self.ack_urgent)
    }

    fn deadline(&self, config: &ServerConfig) -> Option<Instant> {
        if let Some(ended) = self.ended_at {
            // Held requests of an ended session are answered at once; what is left is data the
            // application has not read, kept for `linger` at most.
            return Some(ended + config.linger);
        }
        let idle = self.last_request + config.idle_timeout;
        // The end of an acknowledgement's wait matters only if it will then be answered.
        let ack_due = self
            .ack_answer_due()
            .then_some(self.ack_wait_until)
            .flatten();
        let held = self.held.front().map(|h| {
            let expiry = h.at + config.max_wait;
            ack_due.map_or(expiry, |t| t.min(expiry))
        });
        Some(held.map_or(idle, |h| h.min(idle)))
    }
}

#[derive(Debug, Clone)]
struct Lingering {
    until: Instant,
    outcome: Result<(), SessionError>,
    /// To authenticate late answers.
    keys: Option<SessionKeys>,
}

/// The server endpoint. See the crate docs for the run loop.
pub struct Server {
    config: ServerConfig,
    entropy: Box<dyn Entropy + Send>,
    sessions: BTreeMap<SessionId, Session>,
    lingering: BTreeMap<SessionId, Lingering>,
    linger_order: VecDeque<(Instant, SessionId)>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    dirty: VecDeque<SessionId>,
    immediate: VecDeque<(ConnId, Vec<u8>, bool)>,
    closes: VecDeque<ConnId>,
    events: VecDeque<ServerEvent>,
    refusals: VecDeque<Refusal>,
    reparse: VecDeque<ConnId>,
    controls: Vec<Control>,
    stats: ServerStats,
    shutting_down: bool,
    last_now: Instant,
    /// Sum of the connections' parser buffers.
    request_memory: usize,
}

impl core::fmt::Debug for Server {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("sessions", &self.sessions.len())
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Most refusals kept for the driver's log before older ones are dropped.
const MAX_REFUSALS: usize = 1024;

/// Bundles up to this size count as interactive: the acknowledgement of their data may wait
/// `ServerConfig::ack_delay` for a reply to carry it.
const DELAYED_ACK_MAX_BUNDLE: usize = 16 * 1024;

impl Server {
    /// Creates an endpoint. `entropy` supplies the per-session server nonces.
    pub fn new(config: ServerConfig, entropy: Box<dyn Entropy + Send>) -> Self {
        Server {
            config,
            entropy,
            sessions: BTreeMap::new(),
            lingering: BTreeMap::new(),
            linger_order: VecDeque::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            timers: BinaryHeap::new(),
            dirty: VecDeque::new(),
            immediate: VecDeque::new(),
            closes: VecDeque::new(),
            events: VecDeque::new(),
            refusals: VecDeque::new(),
            reparse: VecDeque::new(),
            controls: Vec::new(),
            stats: ServerStats::default(),
            shutting_down: false,
            last_now: Instant::ZERO,
            request_memory: 0,
        }
    }

    // ---- getters ----

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Sessions alive (not yet removed).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Connections open.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Endpoint counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// One session's counters.
    pub fn session_stats(&self, id: SessionId) -> Option<Stats> {
        self.sessions.get(&id).map(|s| s.stream.stats)
    }

    /// Requests held by a session.
    pub fn held_requests(&self, id: SessionId) -> usize {
        self.sessions.get(&id).map_or(0, |s| s.held.len())
    }

    /// Bytes a session buffers: (sending, receiving).
    pub fn buffered(&self, id: SessionId) -> Option<(usize, usize)> {
        self.sessions
            .get(&id)
            .map(|s| (s.stream.send.buffered(), s.stream.recv.buffered()))
    }

    /// Sessions still alive during a shutdown.
    pub fn is_idle(&self) -> bool {
        self.sessions.is_empty()
    }

    // ---- connections ----

    /// A connection was accepted. Returns `None` when at `max_connections`: close it.
    pub fn handle_accept(&mut self, now: Instant) -> Option<ConnId> {
        let now = time::advance(&mut self.last_now, now);
        if self.conns.len() >= self.config.max_connections {
            return None;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                parser: RequestParser::new(self.config.session.http.clone()),
                state: ConnState::Reading,
                keep_alive: true,
                since: now,
                timer: None,
                served: false,
            },
        );
        self.update_conn_timer(id);
        Some(ConnId(id))
    }

    /// Bytes arrived on `conn`.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let now = time::advance(&mut self.last_now, now);
        let Some(c) = self.conns.get_mut(&conn.0) else {
            return;
        };
        // The first bytes of a request start its clock (a chunked body in progress may have
        // nothing buffered undecoded, so ask the parser, not its buffer).
        if !c.parser.is_mid_request() && c.state == ConnState::Reading {
            c.since = now;
        }
        // All connections together may buffer at most `max_request_memory` of requests still
        // arriving: past it, this connection is refused and the others carry on.
        let before = c.parser.buffered_len();
        if self.request_memory + data.len() > self.config.max_request_memory {
            self.refuse(conn, 503, "server busy: request memory exhausted", true);
            return;
        }
        let pushed = c.parser.push(data);
        let after = c.parser.buffered_len();
        self.request_memory = self.request_memory + after - before;
        if let Err(e) = pushed {
            self.refuse(
                conn,
                e.status(),
                "malformed or oversized HTTP request",
                true,
            );
            return;
        }
        self.parse(now, conn);
    }

    /// `conn` closed or failed.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        let now = time::advance(&mut self.last_now, now);
        self.release_held(conn);
        self.drop_conn(conn.0);
        self.immediate.retain(|(c, _, _)| *c != conn);
        let _ = now;
    }

    /// Forgets connection `id` and what its parser buffered.
    fn drop_conn(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            self.request_memory -= c.parser.buffered_len();
        }
    }

    /// Bytes buffered for requests still arriving, over all connections.
    pub fn request_memory(&self) -> usize {
        self.request_memory
    }

    /// Drops the request a session holds on `conn`, if any: nothing more will be written there.
    fn release_held(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn.0) else {
            return;
        };
        if let ConnState::Held(id) = c.state {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.held.retain(|h| h.conn != conn);
                self.touch(id);
            }
        }
    }

    fn parse(&mut self, now: Instant, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&conn.0) else {
                return;
            };
            if c.state != ConnState::Reading {
                return;
            }
            if c.parser.take_expect_continue() {
                self.immediate
                    .push_back((conn, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), false));
            }
            let before = c.parser.buffered_len();
            let polled = c.parser.poll();
            let after = c.parser.buffered_len();
            self.request_memory = self.request_memory + after - before;
            match polled {
                Ok(Some(request)) => {
                    c.keep_alive = request.keep_alive;
                    c.served = true;
                    self.on_request(now, conn, request);
                }
                Ok(None) => {
                    self.update_conn_timer(conn.0);
                    return;
                }
                Err(e) => {
                    self.refuse(
                        conn,
                        e.status(),
                        "malformed or oversized HTTP request",
                        true,
                    );
                    return;
                }
            }
        }
    }

    // ---- requests ----

    fn on_request(&mut self, now: Instant, conn: ConnId, request: Request) {
        let prefix = self.config.path_prefix.trim_end_matches('/');
        let Some(rest) = request.path.strip_prefix(prefix) else {
            self.refuse(conn, 404, "path outside the endpoint", false);
            return;
        };
        let rest = rest.trim_start_matches('/');
        if rest.is_empty() && matches!(request.method, Method::Get | Method::Head) {
            let body: &[u8] = if request.method == Method::Get {
                b"holdwire\n"
            } else {
                b""
            };
            self.respond_text(conn, 200, body, 9, false);
            return;
        }
        let Some(id) = SessionId::parse_hex(rest.as_bytes()) else {
            self.refuse(conn, 404, "no session id in path", false);
            return;
        };
        if request.method != Method::Post {
            self.refuse(conn, 405, "method not allowed", false);
            return;
        }
        let bundle = match wire::decode(request.body, &self.config.session.wire) {
            Ok(b) => b,
            Err(_) => {
                self.stats.unreadable_requests += 1;
                self.respond_bare(conn, 400, id, 0, |enc| enc.unreadable(0));
                self.note_refusal(conn, 400, "unreadable bundle");
                return;
            }
        };
        let header = *bundle.header();
        if header.response || header.session != id || header.rid == 0 {
            self.respond_bare(conn, 400, id, header.rid, |enc| {
                enc.abort(AbortCode::PROTOCOL_VIOLATION, "bad bundle header")
            });
            self.note_refusal(conn, 400, "bundle header does not match request");
            return;
        }
        if !self.sessions.contains_key(&id) {
            if let Some(l) = self.lingering.get(&id) {
                let rid = header.rid;
                let authentic = l
                    .keys
                    .as_ref()
                    .is_none_or(|k| k.c2s.verify(bundle.signed_bytes(), bundle.tag()));
                let s2c = l.keys.as_ref().map(|k| k.s2c.clone());
                match (&l.outcome, authentic) {
                    (_, false) => self.refuse_auth(conn, id, rid),
                    (Ok(()), true) => {
                        self.respond_bare_keyed(conn, 200, id, rid, s2c.as_ref(), |enc| enc.close())
                    }
                    (Err(_), true) => {
                        self.respond_bare(conn, 410, id, rid, |enc| {
                            enc.abort(AbortCode::UNKNOWN_SESSION, "session ended")
                        });
                        self.note_refusal(conn, 410, "session ended abnormally");
                    }
                }
                return;
            }
            let client_nonce = bundle.frames().find_map(|f| match f {
                wire::Frame::Open { nonce, .. } => Some(nonce),
                _ => None,
            });
            let Some(client_nonce) = client_nonce else {
                self.respond_bare(conn, 404, id, header.rid, |enc| {
                    enc.abort(AbortCode::UNKNOWN_SESSION, "unknown session")
                });
                self.note_refusal(conn, 404, "unknown session");
                return;
            };
            let open_key = self
                .config
                .token
                .as_ref()
                .map(|t| Key::open(t, id, &client_nonce));
            if let Some(key) = &open_key {
                if !key.verify(bundle.signed_bytes(), bundle.tag()) {
                    self.refuse_auth(conn, id, header.rid);
                    return;
                }
            }
            if self.shutting_down {
                self.respond_bare(conn, 503, id, header.rid, |enc| {
                    enc.abort(AbortCode::SHUTDOWN, "server shutting down")
                });
                self.note_refusal(conn, 503, "shutting down");
                return;
            }
            if self.sessions.len() >= self.config.max_sessions {
                self.respond_bare(conn, 503, id, header.rid, |enc| {
                    enc.abort(AbortCode::SESSION_LIMIT, "too many sessions")
                });
                self.note_refusal(conn, 503, "session limit reached");
                return;
            }
            let mut nonce = [0u8; NONCE_LEN];
            self.entropy.fill(&mut nonce);
            let keys = self
                .config
                .token
                .as_ref()
                .map(|t| SessionKeys::derive(t, id, &client_nonce, &nonce));
            let announced = keys.is_none();
            self.sessions.insert(
                id,
                Session {
                    stream: Stream::new(&self.config.session, true),
                    held: VecDeque::new(),
                    hold: 1,
                    max_rid: 0,
                    seen_rids: 0,
                    last_request: now,
                    nonce,
                    confirm_open: true,
                    ack_urgent: false,
                    ack_wait_until: None,
                    outcome: None,
                    ended_at: None,
                    abort_to_send: None,
                    timer: None,
                    dirty: false,
                    open_key,
                    keys,
                    announced,
                },
            );
            self.stats.sessions_opened += 1;
            if announced {
                self.events.push_back(ServerEvent {
                    session: id,
                    event: Event::Opened,
                });
            }
        }
        // Authentication of a known session: the session key, or (before the session is
        // proven) the opening key for a repeated open, which is held but not applied.
        let mut opening_only = false;
        if let Some(s) = self.sessions.get_mut(&id) {
            if let Some(keys) = &s.keys {
                if keys.c2s.verify(bundle.signed_bytes(), bundle.tag()) {
                    if !s.announced {
                        s.announced = true;
                        self.events.push_back(ServerEvent {
                            session: id,
                            event: Event::Opened,
                        });
                    }
                } else if !s.announced
                    && s.open_key
                        .as_ref()
                        .is_some_and(|k| k.verify(bundle.signed_bytes(), bundle.tag()))
                {
                    opening_only = true;
                } else {
                    self.refuse_auth(conn, id, header.rid);
                    return;
                }
            }
        }
        if opening_only {
            let Some(s) = self.sessions.get_mut(&id) else {
                return;
            };
            let fresh = s.note_rid(header.rid);
            s.last_request = now;
            if fresh {
                s.confirm_open = true;
            }
            self.hold_request(now, conn, id, header.rid, !fresh);
            return;
        }
        let max_hold = self.config.max_hold.max(1);
        let ack_delay = self.config.ack_delay;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let fresh = s.note_rid(header.rid);
        if !fresh {
            self.stats.duplicate_requests += 1;
        }
        s.last_request = now;
        if !fresh {
            // A retry (or replay) of a request: the proxy may have given up on the original,
            // so what our answer to it carried may be lost, and a still-held original sits on a
            // connection nobody reads. Resend the one, drop the other; the copy is answered
            // without data below.
            s.stream.send.on_bundle_lost(header.rid);
            if let Some(i) = s.held.iter().position(|h| h.rid == header.rid) {
                if let Some(h) = s.held.remove(i) {
                    self.drop_conn(h.conn.0);
                    self.closes.push_back(h.conn);
                }
            }
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let controls = match s.stream.process(&bundle, now) {
            Ok(c) => c,
            Err(what) => {
                self.end_session(id, Err(SessionError::Protocol(what)), true);
                self.hold_request(now, conn, id, header.rid, true);
                return;
            }
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        // Nothing follows a session's final event.
        let live = s.outcome.is_none();
        if controls.new_data {
            if !s.ack_urgent {
                // Only a small bundle waits: a bulk upload needs its acknowledgements at once.
                let small = bundle.as_bytes().len() <= DELAYED_ACK_MAX_BUNDLE;
                s.ack_wait_until = (small && !ack_delay.is_zero()).then(|| now + ack_delay);
            }
            s.ack_urgent = true;
            if live {
                self.events.push_back(ServerEvent {
                    session: id,
                    event: Event::Readable,
                });
            }
        }
        if s.stream.send.take_writable() && live {
            self.events.push_back(ServerEvent {
                session: id,
                event: Event::Writable,
            });
        }
        if fresh {
            let mut dead = Vec::new();
            s.hold = header.hold.clamp(1, max_hold);
            if controls.open.is_some() && s.outcome.is_none() {
                s.confirm_open = true;
            }
            for &rid in &controls.unreadable[..controls.unreadable_count] {
                // The client gave up on that exchange: what its answer carried is lost, a
                // request still held for it sits on a dead connection, and a copy of it arriving
                // late (a proxy's retry) must be treated as the duplicate it is.
                s.stream.send.on_bundle_lost(rid);
                if rid < header.rid {
                    s.note_rid(rid);
                }
                if let Some(i) = s.held.iter().position(|h| h.rid == rid) {
                    if let Some(h) = s.held.remove(i) {
                        dead.push(h.conn);
                    }
                }
            }
            for conn in dead {
                self.drop_conn(conn.0);
                self.closes.push_back(conn);
            }
            if let Some((code, reason)) = controls.abort {
                self.end_session(id, Err(SessionError::Aborted { code, reason }), false);
            } else if controls.close {
                let Some(s) = self.sessions.get(&id) else {
                    return;
                };
                let outcome = if s.stream.is_done() {
                    Ok(())
                } else {
                    Err(SessionError::Protocol(
                        "client closed before the streams ended",
                    ))
                };
                self.end_session(id, outcome, false);
            }
        }
        self.hold_request(now, conn, id, header.rid, !fresh);
    }

    fn hold_request(&mut self, now: Instant, conn: ConnId, id: SessionId, rid: u64, bare: bool) {
        let Some(c) = self.conns.get_mut(&conn.0) else {
            return;
        };
        c.state = ConnState::Held(id);
        let keep_alive = c.keep_alive;
        self.update_conn_timer(conn.0);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let held = Held {
            conn,
            rid,
            at: now,
            keep_alive,
            bare,
        };
        // Oldest first: parallel connections deliver requests in any order.
        let at = s
            .held
            .iter()
            .position(|h| h.rid > rid)
            .unwrap_or(s.held.len());
        s.held.insert(at, held);
        self.touch(id);
    }

    // ---- application commands, per session ----

    /// Queues bytes for session `id`; takes what fits in its send buffer.
    pub fn write(&mut self, id: SessionId, data: &[u8]) -> Result<usize, WriteError> {
        let Some(s) = self.sessions.get_mut(&id) else {
            return Err(WriteError::Failed(self.gone_reason(id)));
        };
        match &s.outcome {
            Some(Err(e)) => return Err(WriteError::Failed(e.clone())),
            Some(Ok(())) => return Err(WriteError::Finished),
            None => {}
        }
        if s.stream.send.is_finish_requested() {
            return Err(WriteError::Finished);
        }
        let n = s.stream.send.write(data);
        if n > 0 {
            self.touch(id);
        }
        match n {
            0 if !data.is_empty() => Err(WriteError::Blocked),
            n => Ok(n),
        }
    }

    /// Copies received bytes of session `id` into `buf`; `Ok(0)` is the end of its stream.
    pub fn read(&mut self, id: SessionId, buf: &mut [u8]) -> Result<usize, ReadError> {
        let Some(s) = self.sessions.get_mut(&id) else {
            return self.gone_read(id);
        };
        let was_closed = s.stream.recv.window() == 0;
        let n = s.stream.recv.read(buf);
        let finished = s.stream.recv.is_finished();
        let failed = match &s.outcome {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        };
        if n > 0 && (was_closed || s.stream.recv.window_opened()) {
            self.touch(id);
        } else {
            self.maybe_remove(id);
        }
        if n > 0 || buf.is_empty() || finished {
            return Ok(n);
        }
        match failed {
            Some(e) => Err(ReadError::Failed(e)),
            None => Err(ReadError::Blocked),
        }
    }

    /// Takes up to `max` received bytes of session `id` without copying.
    pub fn read_chunk(&mut self, id: SessionId, max: usize) -> Result<Option<Bytes>, ReadError> {
        let Some(s) = self.sessions.get_mut(&id) else {
            return self.gone_read(id).map(|_| None);
        };
        if let Some(chunk) = s.stream.recv.read_chunk(max) {
            self.touch(id);
            return Ok(Some(chunk));
        }
        let finished = s.stream.recv.is_finished();
        let failed = match &s.outcome {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        };
        self.maybe_remove(id);
        match (finished || max == 0, failed) {
            (true, _) => Ok(None),
            (false, Some(e)) => Err(ReadError::Failed(e)),
            (false, None) => Err(ReadError::Blocked),
        }
    }

    /// Ends the server's stream of session `id` (half-close).
    pub fn finish(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if s.outcome.is_none() {
                s.stream.send.finish();
                self.touch(id);
            }
        }
    }

    /// Aborts session `id`: the client is told, and both ends report failure.
    pub fn abort(&mut self, now: Instant, id: SessionId, code: AbortCode, reason: &str) {
        time::advance(&mut self.last_now, now);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.outcome.is_some() {
            return;
        }
        s.abort_to_send = Some((code, String::from(reason)));
        self.end_session(id, Err(SessionError::LocallyAborted), false);
    }

    /// Refuses new sessions from now on (`503` with `ABORT SHUTDOWN`); sessions already open
    /// carry on.
    pub fn stop_accepting(&mut self) {
        self.shutting_down = true;
    }

    /// Stops accepting sessions and finishes every session's stream, so that clients read EOF
    /// once the data is delivered. Sessions then close as their clients finish too.
    pub fn shutdown(&mut self, now: Instant) {
        time::advance(&mut self.last_now, now);
        self.shutting_down = true;
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.finish(id);
        }
    }

    /// Aborts every remaining session (the end of a shutdown's grace period).
    pub fn abort_all(&mut self, now: Instant, reason: &str) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.abort(now, id, AbortCode::SHUTDOWN, reason);
        }
    }

    fn gone_reason(&self, id: SessionId) -> SessionError {
        match self.lingering.get(&id).map(|l| &l.outcome) {
            Some(Err(e)) => e.clone(),
            _ => SessionError::Protocol("unknown session"),
        }
    }

    fn gone_read(&self, id: SessionId) -> Result<usize, ReadError> {
        match self.lingering.get(&id).map(|l| &l.outcome) {
            Some(Ok(())) => Ok(0),
            _ => Err(ReadError::Failed(self.gone_reason(id))),
        }
    }

    // ---- timers ----

    /// Timers: call at or after the instant [`Server::poll_timeout`] returned.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = time::advance(&mut self.last_now, now);
        // Collect first: handling a timer may register a deadline that is already due (a held
        // request is answered by the next poll_transmit, not here).
        let mut due = Vec::new();
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            due.push((at, key));
        }
        for (at, key) in due {
            match key {
                TimerKey::Session(id) => {
                    let Some(s) = self.sessions.get_mut(&id) else {
                        continue;
                    };
                    if s.timer != Some(at) {
                        continue;
                    }
                    s.timer = None;
                    if s.ended_at.is_some_and(|e| now >= e + self.config.linger) {
                        // Nobody read what is left: retire the session anyway.
                        s.stream.recv = crate::stream::RecvQueue::new(0, 0);
                        let held: Vec<ConnId> = s.held.drain(..).map(|h| h.conn).collect();
                        for conn in held {
                            self.drop_conn(conn.0);
                            self.closes.push_back(conn);
                        }
                        self.maybe_remove(id);
                        continue;
                    }
                    if s.outcome.is_none() && now >= s.last_request + self.config.idle_timeout {
                        let outcome = if s.stream.is_done() {
                            Ok(())
                        } else {
                            Err(SessionError::TimedOut)
                        };
                        self.end_session(id, outcome, false);
                    }
                    self.touch(id);
                }
                TimerKey::Conn(cid) => {
                    let Some(c) = self.conns.get_mut(&cid) else {
                        continue;
                    };
                    if c.timer != Some(at) {
                        continue;
                    }
                    c.timer = None;
                    if c.state == ConnState::Reading {
                        if c.parser.is_mid_request() {
                            self.refuse(ConnId(cid), 408, "request too slow", true);
                        } else if !c.served {
                            self.refuse(ConnId(cid), 408, "no request on a new connection", true);
                        } else {
                            self.drop_conn(cid);
                            self.closes.push_back(ConnId(cid));
                        }
                    }
                }
            }
        }
        while let Some(&(until, id)) = self.linger_order.front() {
            if until > now {
                break;
            }
            self.linger_order.pop_front();
            if self.lingering.get(&id).is_some_and(|l| l.until == until) {
                self.lingering.remove(&id);
            }
        }
        // Bound the heap: stale entries accumulate when deadlines move.
        if self.timers.len() > 4 * (self.sessions.len() + self.conns.len()) + 1024 {
            self.rebuild_timers();
        }
    }

    /// The next instant at which [`Server::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            let live = match key {
                TimerKey::Session(id) => {
                    self.sessions.get(&id).is_some_and(|s| s.timer == Some(at))
                }
                TimerKey::Conn(c) => self.conns.get(&c).is_some_and(|c| c.timer == Some(at)),
            };
            if live {
                break;
            }
            self.timers.pop();
        }
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let linger = self.linger_order.front().map(|(until, _)| *until);
        match (timer, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn rebuild_timers(&mut self) {
        self.timers.clear();
        for (id, s) in &self.sessions {
            if let Some(at) = s.timer {
                self.timers.push(Reverse((at, TimerKey::Session(*id))));
            }
        }
        for (id, c) in &self.conns {
            if let Some(at) = c.timer {
                self.timers.push(Reverse((at, TimerKey::Conn(*id))));
            }
        }
    }

    fn update_session_timer(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let deadline = s.deadline(&self.config);
        if deadline != s.timer {
            s.timer = deadline;
            if let Some(at) = deadline {
                self.timers.push(Reverse((at, TimerKey::Session(id))));
            }
        }
    }

    fn update_conn_timer(&mut self, cid: u64) {
        let Some(c) = self.conns.get_mut(&cid) else {
            return;
        };
        let deadline = match c.state {
            // A new connection must start its first request as promptly as it must finish one:
            // otherwise silent connections could pin a slot each for the keep-alive timeout.
            ConnState::Reading if c.parser.is_mid_request() || !c.served => {
                Some(c.since + self.config.request_timeout)
            }
            ConnState::Reading => Some(c.since + self.config.keep_alive_timeout),
            _ => None,
        };
        if deadline != c.timer {
            c.timer = deadline;
            if let Some(at) = deadline {
                self.timers.push(Reverse((at, TimerKey::Conn(cid))));
            }
        }
    }

    /// Marks a session for attention by `poll_transmit` and refreshes its timer.
    fn touch(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !s.dirty {
            s.dirty = true;
            self.dirty.push_back(id);
        }
        self.update_session_timer(id);
    }

    // ---- outputs ----

    /// Session events, in order.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Refused requests, for the driver's log.
    pub fn poll_refusal(&mut self) -> Option<Refusal> {
        self.refusals.pop_front()
    }

    /// Connections the driver should close now.
    pub fn poll_close(&mut self) -> Option<ConnId> {
        self.closes.pop_front()
    }

    /// Appends the next response to `buf`, if one is due.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<ServerTransmit> {
        let now = time::advance(&mut self.last_now, now);
        loop {
            if let Some(conn) = self.reparse.pop_front() {
                self.parse(now, conn);
                continue;
            }
            if let Some((conn, bytes, close_after)) = self.immediate.pop_front() {
                let start = buf.len();
                buf.extend_from_slice(&bytes);
                self.after_response(conn, close_after);
                return Some(ServerTransmit {
                    conn,
                    len: buf.len() - start,
                    close_after,
                });
            }
            let id = self.dirty.front().copied()?;
            let Some(s) = self.sessions.get_mut(&id) else {
                self.dirty.pop_front();
                continue;
            };
            if !s.should_answer(now, &self.config) {
                s.dirty = false;
                self.dirty.pop_front();
                self.update_session_timer(id);
                self.maybe_remove(id);
                continue;
            }
            // Keep the session at the front: it may have more to answer.
            return Some(self.answer(now, id, buf));
        }
    }

    /// Answers the oldest held request of session `id`.
    fn answer(&mut self, now: Instant, id: SessionId, buf: &mut Vec<u8>) -> ServerTransmit {
        let max_wait_ms = u32::try_from(self.config.max_wait.as_millis()).unwrap_or(u32::MAX);
        let shutting_down = self.shutting_down;
        let s = self
            .sessions
            .get_mut(&id)
            .expect("caller checked the session exists");
        let held = s
            .held
            .pop_front()
            .expect("should_answer requires a held request");
        self.controls.clear();
        if s.confirm_open && !held.bare {
            self.controls.push(Control::Open {
                nonce: s.nonce,
                max_wait_ms,
            });
            s.confirm_open = false;
        }
        match &s.outcome {
            Some(Ok(())) => self.controls.push(Control::Close),
            Some(Err(_)) => {
                let (code, reason) = s
                    .abort_to_send
                    .clone()
                    .unwrap_or((AbortCode::UNSPECIFIED, String::new()));
                self.controls.push(Control::Abort { code, reason });
            }
            None => {}
        }
        let allow_data = !held.bare && s.outcome.is_none();
        // Until the session is proven fresh, answers carry no data (nothing can be queued yet).
        let allow_data = allow_data && s.announced;
        let key = s.keys.as_ref().map(|k| &k.s2c);
        let planned = s.stream.plan(
            &self.config.session,
            &self.controls,
            allow_data,
            key.is_some(),
        );
        let close_after = !held.keep_alive || shutting_down && s.outcome.is_some();
        let start = buf.len();
        http::encode_response_head(buf, 200, planned.len, close_after, false);
        let held_us = now.saturating_duration_since(held.at).as_micros();
        let header = Header {
            response: true,
            session: id,
            rid: held.rid,
            ack: 0,
            window: 0,
            hold: s.hold,
            held_us: u32::try_from(held_us).unwrap_or(u32::MAX),
        };
        s.stream
            .write(planned, buf, header, &self.controls, held.rid, now, key);
        s.stream.stats.exchanges += 1;
        s.ack_urgent = false;
        s.ack_wait_until = None;
        self.update_session_timer(id);
        self.after_response(held.conn, close_after);
        ServerTransmit {
            conn: held.conn,
            len: buf.len() - start,
            close_after,
        }
    }

    /// The connection's response is written: read its next request, or forget it.
    fn after_response(&mut self, conn: ConnId, close_after: bool) {
        if close_after {
            self.drop_conn(conn.0);
            return;
        }
        let Some(c) = self.conns.get_mut(&conn.0) else {
            return;
        };
        c.state = ConnState::Reading;
        c.since = self.last_now;
        self.update_conn_timer(conn.0);
        self.reparse.push_back(conn);
    }

    fn end_session(&mut self, id: SessionId, outcome: Result<(), SessionError>, protocol: bool) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.outcome.is_some() {
            return;
        }
        if protocol {
            s.abort_to_send = Some((
                AbortCode::PROTOCOL_VIOLATION,
                String::from("protocol violation"),
            ));
        }
        let event = match &outcome {
            Ok(()) => Event::Closed,
            Err(e) => Event::Failed(e.clone()),
        };
        s.outcome = Some(outcome);
        s.ended_at = Some(self.last_now);
        // The application hears nothing of a session it was never told of (an unproven open).
        if s.announced {
            self.events.push_back(ServerEvent {
                session: id,
                event: Event::Readable,
            });
            self.events.push_back(ServerEvent { session: id, event });
        }
        self.touch(id);
    }

    /// Removes an ended session once its held requests are answered and its data read.
    fn maybe_remove(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        let Some(outcome) = &s.outcome else { return };
        let unread = outcome.is_ok() && s.stream.recv.buffered() > 0;
        if !s.held.is_empty() || s.dirty || unread {
            return;
        }
        let outcome = outcome.clone();
        let keys = self.sessions.remove(&id).and_then(|s| s.keys);
        if self.lingering.len() >= self.config.max_lingering {
            if let Some((_, old)) = self.linger_order.pop_front() {
                self.lingering.remove(&old);
            }
        }
        let until = self.last_now + self.config.linger;
        self.lingering.insert(
            id,
            Lingering {
                until,
                outcome,
                keys,
            },
        );
        self.linger_order.push_back((until, id));
    }

    // ---- immediate responses ----

    fn note_refusal(&mut self, conn: ConnId, status: u16, reason: &'static str) {
        self.stats.requests_refused += 1;
        if self.refusals.len() == MAX_REFUSALS {
            self.refusals.pop_front();
        }
        self.refusals.push_back(Refusal {
            conn,
            status,
            reason,
        });
    }

    /// Refuses a request whose tag does not verify; the session, if any, is untouched.
    fn refuse_auth(&mut self, conn: ConnId, id: SessionId, rid: u64) {
        self.respond_bare(conn, 403, id, rid, |enc| {
            enc.abort(AbortCode::AUTH_FAILED, "authentication failed")
        });
        self.note_refusal(conn, 403, "authentication failed");
    }

    /// Answers with a plain-text error and logs the refusal.
    fn refuse(&mut self, conn: ConnId, status: u16, reason: &'static str, close: bool) {
        self.note_refusal(conn, status, reason);
        let mut text = Vec::with_capacity(reason.len() + 1);
        text.extend_from_slice(reason.as_bytes());
        text.push(b'\n');
        let len = text.len();
        self.respond_text(conn, status, &text, len, close);
    }

    fn respond_text(&mut self, conn: ConnId, status: u16, body: &[u8], len: usize, close: bool) {
        // The connection's next word is this answer: a request held on it is given up.
        self.release_held(conn);
        let Some(c) = self.conns.get_mut(&conn.0) else {
            return;
        };
        let close = close || !c.keep_alive;
        c.state = ConnState::Answering;
        let mut out = Vec::with_capacity(128 + body.len());
        http::encode_response_head(&mut out, status, len, close, true);
        out.extend_from_slice(body);
        self.immediate.push_back((conn, out, close));
    }

    /// Answers at once with an untagged bundle holding only control frames.
    fn respond_bare(
        &mut self,
        conn: ConnId,
        status: u16,
        id: SessionId,
        rid: u64,
        frames: impl FnOnce(&mut BundleEncoder<'_>),
    ) {
        self.respond_bare_keyed(conn, status, id, rid, None, frames);
    }

    /// Answers at once with a bundle holding only control frames, tagged with `key` if given.
    fn respond_bare_keyed(
        &mut self,
        conn: ConnId,
        status: u16,
        id: SessionId,
        rid: u64,
        key: Option<&Key>,
        frames: impl FnOnce(&mut BundleEncoder<'_>),
    ) {
        let Some(c) = self.conns.get_mut(&conn.0) else {
            return;
        };
        let close = !c.keep_alive || status == 400;
        c.state = ConnState::Answering;
        let mut body = Vec::with_capacity(128);
        let (ack, window) = self
            .sessions
            .get(&id)
            .map_or((0, 0), |s| (s.stream.recv.ack(), s.stream.recv.window()));
        let header = Header {
            response: true,
            session: id,
            rid,
            ack,
            window,
            ..Header::default()
        };
        let tag_len = if key.is_some() { TAG_LEN } else { 0 };
        let mut enc = BundleEncoder::new(&mut body, &header, &[], tag_len);
        frames(&mut enc);
        match key {
            Some(key) => enc.finish(|data, tag| key.sign(data, tag)),
            None => enc.finish_untagged(),
        };
        let mut out = Vec::with_capacity(160 + body.len());
        http::encode_response_head(&mut out, status, body.len(), close, false);
        out.extend_from_slice(&body);
        self.immediate.push_back((conn, out, close));
    }
}
