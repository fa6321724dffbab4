//! A server endpoint, genuine clients and in-memory links whose deliveries the fuzzer
//! schedules, plus connections the fuzzer writes to directly.
//!
//! Links carry whole transmits with zero latency, in order, and only when told: a request
//! waits in `up` until delivered to the server, a response in `down` until delivered to the
//! client. A close from the client's side (its `poll_close`, or a `Transmit` that reopens the
//! slot) reaches the server at once; a close from the server's side (`close_after`,
//! `poll_close`) reaches the client after the bytes queued before it, as TCP would.
//!
//! After every step the world drains every core (transmits, closes, events, in the documented
//! order), fires due timers, and checks the invariants listed on [`World::check_invariants`].
//! [`World::final_check`] then lets everything time out and runs a fresh, well-behaved session
//! end to end against the same server.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use holdwire_proto::config::{ClientConfig, ServerConfig, SessionConfig};
use holdwire_proto::http::HttpLimits;
use holdwire_proto::sim::SimRng;
use holdwire_proto::url::Url;
use holdwire_proto::wire::{SessionId, WireLimits};
use holdwire_proto::{
    AbortCode, Client, ConnId, Endpoint, Event, Instant, ReadError, Server, ServerEvent,
    SessionError, Token,
};

use crate::check;

/// Session knobs shared by the server and the clients: small, so that caps are reached.
// `..Default::default()` keeps this building when `proto` adds a knob.
#[allow(clippy::needless_update)]
pub fn session_config() -> SessionConfig {
    SessionConfig {
        max_bundle_len: 8 * 1024,
        max_bundle_messages: 32,
        max_message_len: 1024,
        send_buffer: 16 * 1024,
        recv_buffer: 16 * 1024,
        max_out_of_order: 32,
        wire: WireLimits {
            max_bundle_len: 32 * 1024,
            max_message_len: 4096,
            max_sack_ranges: 8,
            max_frames: 256,
            max_reason_len: 256,
        },
        http: HttpLimits {
            max_head_len: 4096,
            max_headers: 32,
            max_body_len: 32 * 1024,
        },
        reorder_window: Duration::from_millis(10),
        ..SessionConfig::default()
    }
}

/// The token used when a run authenticates bundles.
pub fn token() -> Token {
    Token::new(b"holdwire fuzz token")
}

/// The server under test: max 4 sessions, 8 connections, short timeouts.
pub fn server_config(token: Option<Token>, prefix: &str) -> ServerConfig {
    ServerConfig {
        session: session_config(),
        path_prefix: prefix.into(),
        max_hold: 2,
        max_wait: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(10),
        max_sessions: 4,
        max_connections: 8,
        request_timeout: Duration::from_secs(3),
        keep_alive_timeout: Duration::from_secs(5),
        linger: Duration::from_secs(5),
        max_lingering: 4,
        token,
        ..ServerConfig::default()
    }
}

/// A client to match [`server_config`].
pub fn client_config(token: Option<Token>) -> ClientConfig {
    ClientConfig {
        session: session_config(),
        max_in_flight: 4,
        hold: 1,
        max_hold: 2,
        initial_rto: Duration::from_millis(300),
        min_rto: Duration::from_millis(100),
        max_rto: Duration::from_secs(2),
        assumed_max_wait: Duration::from_secs(2),
        silence_timeout: Duration::from_secs(15),
        max_failures: 12,
        coalesce_delay: Duration::ZERO,
        close_attempts: 4,
        token,
        ..ClientConfig::default()
    }
}

/// Session ids the fuzzer's own requests and the application commands address. The genuine
/// clients use the first ones, so the fuzzer can attack their sessions.
pub const POOL: [SessionId; 4] = [
    SessionId([0x10; 16]),
    SessionId([0x11; 16]),
    SessionId([0x12; 16]),
    SessionId([0x13; 16]),
];

/// The session of the final, well-behaved client (no spec byte pattern builds it).
pub const FRESH: SessionId =
    SessionId([0xf0, 0x0d, 0xca, 0xfe, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);

/// A genuine client and its application.
#[derive(Debug)]
pub struct Peer {
    /// The core.
    pub client: Client,
    /// Its session.
    pub id: SessionId,
    slot_link: BTreeMap<u64, u64>,
    last_rid: u64,
    /// Driven automatically: writes `to_send`, reads everything.
    pub auto: bool,
    /// What the application sends when `auto`.
    pub to_send: Vec<u8>,
    /// How much of it was accepted.
    pub sent: usize,
    /// Finish once everything is sent.
    pub finish_when_sent: bool,
    finished: bool,
    /// Every byte the client accepted from its application, in order.
    pub written: Vec<u8>,
    /// Bytes read.
    pub received: Vec<u8>,
    /// Read the end of the stream.
    pub eof: bool,
    /// The final event.
    pub end: Option<Result<(), SessionError>>,
}

/// The server-side application of one session.
#[derive(Debug, Default)]
pub struct ServerApp {
    /// Saw `Opened`.
    pub opened: bool,
    /// Driven automatically: writes `to_send`, reads everything.
    pub auto: bool,
    /// What it sends when `auto`.
    pub to_send: Vec<u8>,
    /// How much of it was accepted.
    pub sent: usize,
    /// Finish once everything is sent.
    pub finish_when_sent: bool,
    finished: bool,
    /// Every byte the server accepted from this application, in order.
    pub written: Vec<u8>,
    /// Bytes read.
    pub received: Vec<u8>,
    /// Read the end of the stream.
    pub eof: bool,
    /// The final event.
    pub end: Option<Result<(), SessionError>>,
}

#[derive(Debug)]
struct Link {
    peer: usize,
    slot: u64,
    /// The server's connection, once the first request reached it.
    conn: Option<ConnId>,
    /// The server closed or refused the connection: requests go nowhere.
    server_gone: bool,
    up: VecDeque<Vec<u8>>,
    down: VecDeque<Vec<u8>>,
    /// The server closed after the bytes in `down`.
    down_closed: bool,
    /// A pre-opened request's head sent on this link, waiting for its body.
    pending: Vec<u8>,
}

/// The whole scene.
pub struct World {
    /// The endpoint under test.
    pub server: Server,
    /// Its configuration.
    pub server_config: ServerConfig,
    /// The genuine clients' configuration.
    pub client_config: ClientConfig,
    /// Virtual time.
    pub now: Instant,
    /// Genuine clients.
    pub peers: Vec<Peer>,
    /// Server-side applications, by session.
    pub apps: BTreeMap<SessionId, ServerApp>,
    /// Server connections the fuzzer writes to directly.
    pub garbage: Vec<ConnId>,
    /// Requests the genuine clients wrote (the latest 32), for replays.
    pub recorded: VecDeque<Vec<u8>>,
    /// Request ids the fuzzer's own requests used, per pool session.
    pub built_rid: [u64; POOL.len()],
    links: BTreeMap<u64, Link>,
    conn_link: BTreeMap<ConnId, u64>,
    next_link: u64,
    /// Connections the server accepted and that are still open on both sides.
    open_conns: BTreeSet<ConnId>,
    /// New sessions' apps are driven automatically.
    auto: bool,
    /// When set, every transmit is recorded here: `(true, request)` or `(false, response)`
    /// (the corpus generator uses this).
    pub trace: Option<Vec<(bool, Vec<u8>)>>,
    buf: Vec<u8>,
}

impl World {
    /// A server (with the token if `token`, under `prefix`) and `peers` genuine clients of
    /// the first pool sessions.
    pub fn new(with_token: bool, prefix: &str, peers: usize, seed: u64) -> Self {
        let token = with_token.then(token);
        let server_config = server_config(token.clone(), prefix);
        let client_config = client_config(token);
        let server = Server::new(server_config.clone(), Box::new(SimRng::new(seed)));
        let mut world = World {
            server,
            server_config,
            client_config,
            now: Instant::from_micros(1_000_000),
            peers: Vec::new(),
            apps: BTreeMap::new(),
            garbage: Vec::new(),
            recorded: VecDeque::new(),
            built_rid: [0; POOL.len()],
            links: BTreeMap::new(),
            conn_link: BTreeMap::new(),
            next_link: 0,
            open_conns: BTreeSet::new(),
            auto: false,
            trace: None,
            buf: Vec::new(),
        };
        for &id in POOL.iter().take(peers) {
            world.add_peer(id);
        }
        world
    }

    /// Adds a genuine client of session `id`; returns its index.
    pub fn add_peer(&mut self, id: SessionId) -> usize {
        let url = Url::parse(&format!(
            "http://sim.invalid{}",
            self.server_config.path_prefix
        ))
        .expect("the prefix makes a valid URL");
        let mut nonce = [0u8; 16];
        SimRng::new(u64::from(id.0[0]) ^ self.now.as_micros()).fill(&mut nonce);
        let client = Client::new(
            self.client_config.clone(),
            Endpoint::new(&url, id, None),
            id,
            nonce,
            self.now,
        );
        self.peers.push(Peer {
            client,
            id,
            slot_link: BTreeMap::new(),
            last_rid: 0,
            auto: self.auto,
            to_send: Vec::new(),
            sent: 0,
            finish_when_sent: false,
            finished: false,
            written: Vec::new(),
            received: Vec::new(),
            eof: false,
            end: None,
        });
        self.peers.len() - 1
    }

    // ---- the fuzzer's own connections ----

    /// Accepts a connection for the fuzzer.
    pub fn accept(&mut self) -> Option<ConnId> {
        let conn = self.server.handle_accept(self.now)?;
        trace!("{:?} garbage accept {conn:?}", self.now);
        assert!(
            self.open_conns.insert(conn),
            "connection id {conn:?} handed out twice"
        );
        self.garbage.push(conn);
        Some(conn)
    }

    /// One of the fuzzer's connections, or a new one when `pick` says so.
    pub fn garbage_conn(&mut self, pick: u8) -> Option<ConnId> {
        let i = usize::from(pick) % (self.garbage.len() + 1);
        match self.garbage.get(i) {
            Some(&c) => Some(c),
            None => self.accept(),
        }
    }

    /// Writes `bytes` on a fuzzer connection, in two pieces cut at `split` if given.
    pub fn send_garbage(&mut self, pick: u8, bytes: &[u8], split: Option<u16>) {
        let Some(conn) = self.garbage_conn(pick) else {
            return;
        };
        trace!(
            "{:?} garbage {conn:?} <- {:?}",
            self.now,
            crate::check::show(bytes)
        );
        match split.map(|s| usize::from(s) % (bytes.len() + 1)) {
            Some(at) => {
                let (a, b) = bytes.split_at(at);
                self.server.handle_bytes(self.now, conn, a);
                self.settle();
                if self.open_conns.contains(&conn) {
                    self.server.handle_bytes(self.now, conn, b);
                }
            }
            None => self.server.handle_bytes(self.now, conn, bytes),
        }
    }

    /// Closes a fuzzer connection.
    pub fn close_garbage(&mut self, pick: u8) {
        if self.garbage.is_empty() {
            return;
        }
        let conn = self.garbage[usize::from(pick) % self.garbage.len()];
        trace!("{:?} garbage {conn:?} closed", self.now);
        self.server.handle_closed(self.now, conn);
        self.forget_conn(conn);
    }

    fn forget_conn(&mut self, conn: ConnId) {
        self.open_conns.remove(&conn);
        self.garbage.retain(|&c| c != conn);
        if let Some(l) = self.conn_link.remove(&conn) {
            if let Some(link) = self.links.get_mut(&l) {
                link.conn = None;
                link.server_gone = true;
                link.down_closed = true;
            }
        }
    }

    // ---- genuine clients' links ----

    fn peer_links(&self, peer: usize) -> Vec<u64> {
        self.links
            .iter()
            .filter(|(_, l)| l.peer == peer)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Delivers the oldest queued request of `peer` (split in two at `split`); false if none.
    pub fn peer_send(&mut self, peer: usize, split: Option<u16>) -> bool {
        let Some(l) = self
            .peer_links(peer)
            .into_iter()
            .find(|l| !self.links[l].up.is_empty())
        else {
            return false;
        };
        self.deliver_up(l, split);
        true
    }

    /// Delivers the oldest queued response bytes (or server close) to `peer`; false if none.
    pub fn peer_recv(&mut self, peer: usize, split: Option<u16>) -> bool {
        let Some(l) = self.peer_links(peer).into_iter().find(|l| {
            let link = &self.links[l];
            !link.down.is_empty() || link.down_closed
        }) else {
            return false;
        };
        self.deliver_down(l, split);
        true
    }

    /// Cuts the oldest link of `peer` (a reset seen by both ends); false if none.
    pub fn peer_cut(&mut self, peer: usize, which: u8) -> bool {
        let links = self.peer_links(peer);
        if links.is_empty() {
            return false;
        }
        let l = links[usize::from(which) % links.len()];
        let Some(link) = self.links.remove(&l) else {
            return false;
        };
        trace!("{:?} cut link {l} ({:?})", self.now, link.conn);
        if let Some(conn) = link.conn {
            self.server.handle_closed(self.now, conn);
            self.forget_conn(conn);
        }
        self.client_sees_close(link.peer, link.slot, l);
        true
    }

    fn client_sees_close(&mut self, peer: usize, slot: u64, link: u64) {
        let p = &mut self.peers[peer];
        if p.slot_link.get(&slot) == Some(&link) {
            trace!(
                "{:?} client {} slot {slot} sees link {link} close",
                self.now,
                p.id
            );
            p.slot_link.remove(&slot);
            p.client.handle_closed(self.now, ConnId(slot));
        }
    }

    fn deliver_up(&mut self, l: u64, split: Option<u16>) {
        let now = self.now;
        let Some(link) = self.links.get_mut(&l) else {
            return;
        };
        let Some(bytes) = link.up.pop_front() else {
            return;
        };
        if link.server_gone {
            return;
        }
        let conn = match link.conn {
            Some(c) => c,
            None => match self.server.handle_accept(now) {
                Some(c) => {
                    trace!("{now:?} link {l} accepted as {c:?}");
                    link.conn = Some(c);
                    assert!(
                        self.open_conns.insert(c),
                        "connection id {c:?} handed out twice"
                    );
                    self.conn_link.insert(c, l);
                    c
                }
                None => {
                    // Refused at max_connections: the client sees the connection close.
                    link.server_gone = true;
                    link.down_closed = true;
                    return;
                }
            },
        };
        trace!(
            "{now:?} link {l} {conn:?} <- {:?}",
            crate::check::show(&bytes)
        );
        let (peer, slot) = (link.peer, link.slot);
        match split.map(|s| usize::from(s) % (bytes.len() + 1)) {
            Some(at) => {
                self.server.handle_bytes(now, conn, &bytes[..at]);
                self.settle();
                if self.open_conns.contains(&conn) {
                    self.server.handle_bytes(now, conn, &bytes[at..]);
                }
            }
            None => self.server.handle_bytes(now, conn, &bytes),
        }
        // The request has left: the client arms the deadlines it forces.
        if self.peers[peer].slot_link.get(&slot) == Some(&l) {
            self.peers[peer].client.handle_sent(now, ConnId(slot));
        }
    }

    fn deliver_down(&mut self, l: u64, split: Option<u16>) {
        let now = self.now;
        let Some(link) = self.links.get_mut(&l) else {
            return;
        };
        let (peer, slot) = (link.peer, link.slot);
        let current = self.peers[peer].slot_link.get(&slot) == Some(&l);
        if let Some(bytes) = link.down.pop_front() {
            if !current {
                return;
            }
            trace!(
                "{now:?} link {l} -> client {} slot {slot}: {:?}",
                self.peers[peer].id,
                crate::check::show(&bytes)
            );
            let client = &mut self.peers[peer].client;
            match split.map(|s| usize::from(s) % (bytes.len() + 1)) {
                Some(at) => {
                    client.handle_bytes(now, ConnId(slot), &bytes[..at]);
                    client.handle_bytes(now, ConnId(slot), &bytes[at..]);
                }
                None => client.handle_bytes(now, ConnId(slot), &bytes),
            }
        } else if link.down_closed {
            self.links.remove(&l);
            self.client_sees_close(peer, slot, l);
        }
    }

    /// The client closed link `l` (its `poll_close`, or a reopened slot).
    fn close_link_from_client(&mut self, l: u64) {
        if let Some(link) = self.links.remove(&l) {
            trace!("{:?} client closes link {l} ({:?})", self.now, link.conn);
            if let Some(conn) = link.conn {
                self.server.handle_closed(self.now, conn);
                self.forget_conn(conn);
            }
        }
    }

    // ---- draining ----

    /// Drains every core until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = self.drain_server();
            for i in 0..self.peers.len() {
                moved |= self.drain_peer(i);
            }
            moved |= self.run_apps();
            if !moved {
                self.check_invariants();
                return;
            }
        }
        panic!("cores keep producing output at {:?}", self.now);
    }

    fn drain_server(&mut self) -> bool {
        let mut moved = false;
        loop {
            self.buf.clear();
            let Some(t) = self.server.poll_transmit(self.now, &mut self.buf) else {
                break;
            };
            moved = true;
            trace!(
                "{:?} server -> {:?} close_after={}: {:?}",
                self.now,
                t.conn,
                t.close_after,
                crate::check::show(&self.buf)
            );
            assert_eq!(t.len, self.buf.len(), "transmit length");
            assert!(
                self.open_conns.contains(&t.conn),
                "server wrote on {:?}, which is closed or was never accepted",
                t.conn
            );
            let (status, _bundle) = check::server_transmit(&self.buf);
            if let Some(trace) = &mut self.trace {
                trace.push((false, self.buf.clone()));
            }
            if status == 100 {
                assert!(!t.close_after, "100 Continue with close_after");
            }
            if let Some(&l) = self.conn_link.get(&t.conn) {
                if let Some(link) = self.links.get_mut(&l) {
                    link.down.push_back(self.buf.clone());
                }
            }
            if t.close_after {
                self.forget_conn(t.conn);
            }
        }
        while let Some(conn) = self.server.poll_close() {
            trace!("{:?} server closes {conn:?}", self.now);
            moved = true;
            self.forget_conn(conn);
        }
        while self.server.poll_refusal().is_some() {}
        while let Some(ev) = self.server.poll_event() {
            trace!(
                "{:?} server event {:?} {:?}",
                self.now,
                ev.session,
                ev.event
            );
            moved = true;
            self.on_server_event(ev);
        }
        moved
    }

    fn on_server_event(&mut self, ev: ServerEvent) {
        let auto = self.auto;
        let app = self.apps.entry(ev.session).or_insert_with(|| ServerApp {
            auto,
            ..ServerApp::default()
        });
        match ev.event {
            Event::Opened => {
                if app.end.is_some() {
                    // A new session under an id whose old session was forgotten.
                    *app = ServerApp {
                        auto,
                        ..ServerApp::default()
                    };
                }
                assert!(!app.opened, "{}: Opened twice", ev.session);
                app.opened = true;
            }
            event => {
                assert!(
                    app.end.is_none() || !check::enabled("events-after-end"),
                    "{}: server event {event:?} after the final event {:?}",
                    ev.session,
                    app.end
                );
                match event {
                    Event::Closed if app.end.is_none() => app.end = Some(Ok(())),
                    Event::Failed(e) if app.end.is_none() => app.end = Some(Err(e)),
                    _ => {}
                }
            }
        }
    }

    fn drain_peer(&mut self, i: usize) -> bool {
        let mut moved = false;
        let max_in_flight = self.client_config.max_in_flight.max(2) as u64;
        loop {
            self.buf.clear();
            let Some(t) = self.peers[i].client.poll_transmit(self.now, &mut self.buf) else {
                break;
            };
            moved = true;
            assert_eq!(t.len, self.buf.len(), "transmit length");
            assert!(t.conn.0 < max_in_flight, "slot {:?} out of range", t.conn);
            let slot = t.conn.0;
            let l = match (t.open, self.peers[i].slot_link.get(&slot).copied()) {
                (false, Some(l)) => l,
                (false, None) => {
                    panic!("request on slot {slot} without `open`, but the slot has no connection")
                }
                (true, old) => {
                    if let Some(old) = old {
                        self.close_link_from_client(old);
                    }
                    let l = self.next_link;
                    self.next_link += 1;
                    self.links.insert(
                        l,
                        Link {
                            peer: i,
                            slot,
                            conn: None,
                            server_gone: false,
                            up: VecDeque::new(),
                            down: VecDeque::new(),
                            down_closed: false,
                            pending: Vec::new(),
                        },
                    );
                    self.peers[i].slot_link.insert(slot, l);
                    l
                }
            };
            let Some(link) = self.links.get_mut(&l) else {
                continue;
            };
            link.up.push_back(self.buf.clone());
            if let Some(trace) = &mut self.trace {
                trace.push((true, self.buf.clone()));
            }
            let whole = [&link.pending[..], &self.buf[..]].concat();
            let Some(bundle) =
                check::client_transmit_on_slot(&mut link.pending, &self.buf, self.peers[i].id)
            else {
                // A pre-opened request's head: its body follows on this link.
                continue;
            };
            let rid = bundle.header().rid;
            assert!(
                rid > self.peers[i].last_rid,
                "request id {rid} after {}",
                self.peers[i].last_rid
            );
            self.peers[i].last_rid = rid;
            if self.recorded.len() == 32 {
                self.recorded.pop_front();
            }
            self.recorded.push_back(whole);
            trace!(
                "{:?} client {} slot {slot} open={} rid {rid}",
                self.now,
                self.peers[i].id,
                t.open
            );
        }
        while let Some(conn) = self.peers[i].client.poll_close() {
            moved = true;
            if let Some(l) = self.peers[i].slot_link.remove(&conn.0) {
                self.close_link_from_client(l);
            }
        }
        while let Some(event) = self.peers[i].client.poll_event() {
            trace!("{:?} client {} event {event:?}", self.now, self.peers[i].id);
            moved = true;
            let p = &mut self.peers[i];
            assert!(
                p.end.is_none() || !check::enabled("events-after-end"),
                "client {}: event {event:?} after the final event {:?}",
                p.id,
                p.end
            );
            match event {
                Event::Closed if p.end.is_none() => p.end = Some(Ok(())),
                Event::Failed(e) if p.end.is_none() => p.end = Some(Err(e)),
                _ => {}
            }
        }
        moved
    }

    /// Drives the automatic applications; true if anything moved.
    fn run_apps(&mut self) -> bool {
        let mut moved = false;
        let mut buf = [0u8; 4096];
        for p in self.peers.iter_mut().filter(|p| p.auto) {
            while p.sent < p.to_send.len() {
                match p.client.write(&p.to_send[p.sent..]) {
                    Ok(n) if n > 0 => {
                        p.written.extend_from_slice(&p.to_send[p.sent..p.sent + n]);
                        p.sent += n;
                        moved = true;
                    }
                    _ => break,
                }
            }
            if p.finish_when_sent && !p.finished && p.sent == p.to_send.len() {
                p.client.finish();
                p.finished = true;
                moved = true;
            }
            while !p.eof {
                match p.client.read(&mut buf) {
                    Ok(0) => p.eof = true,
                    Ok(n) => p.received.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
                moved = true;
            }
        }
        for (&id, app) in self.apps.iter_mut().filter(|(_, a)| a.auto) {
            if self.server.buffered(id).is_none() {
                continue;
            }
            while app.sent < app.to_send.len() {
                match self.server.write(id, &app.to_send[app.sent..]) {
                    Ok(n) if n > 0 => {
                        app.written
                            .extend_from_slice(&app.to_send[app.sent..app.sent + n]);
                        app.sent += n;
                        moved = true;
                    }
                    _ => break,
                }
            }
            if app.finish_when_sent && !app.finished && app.sent == app.to_send.len() {
                self.server.finish(id);
                app.finished = true;
                moved = true;
            }
            while !app.eof {
                match self.server.read(id, &mut buf) {
                    Ok(0) => app.eof = true,
                    Ok(n) => app.received.extend_from_slice(&buf[..n]),
                    Err(ReadError::Blocked) => break,
                    Err(ReadError::Failed(_)) => {
                        app.eof = true;
                        break;
                    }
                }
                moved = true;
            }
        }
        moved
    }

    // ---- application commands (recorded for the integrity check) ----

    fn app(&mut self, id: SessionId) -> &mut ServerApp {
        let auto = self.auto;
        self.apps.entry(id).or_insert_with(|| ServerApp {
            auto,
            ..ServerApp::default()
        })
    }

    /// The server application writes `len` more bytes of its stream on session `id`.
    pub fn server_write(&mut self, id: SessionId, len: usize) {
        let data = stream_bytes(0x5e, self.app(id).written.len(), len);
        if let Ok(n) = self.server.write(id, &data) {
            self.app(id).written.extend_from_slice(&data[..n]);
        }
    }

    /// The server application reads up to `len` bytes of session `id`.
    pub fn server_read(&mut self, id: SessionId, len: usize) {
        let mut buf = vec![0u8; len];
        if let Ok(n) = self.server.read(id, &mut buf) {
            self.app(id).received.extend_from_slice(&buf[..n]);
        }
    }

    /// The server application takes up to `max` bytes of session `id`.
    pub fn server_read_chunk(&mut self, id: SessionId, max: usize) {
        if let Ok(Some(chunk)) = self.server.read_chunk(id, max) {
            assert!(
                chunk.len() <= max,
                "read_chunk gave {} > {max} bytes",
                chunk.len()
            );
            self.app(id).received.extend_from_slice(&chunk);
        }
    }

    /// Genuine client `i` writes `len` more bytes of its stream.
    pub fn peer_write(&mut self, i: usize, len: usize) {
        let p = &mut self.peers[i];
        let data = stream_bytes(0xc1, p.written.len(), len);
        if let Ok(n) = p.client.write(&data) {
            p.written.extend_from_slice(&data[..n]);
        }
    }

    /// Genuine client `i` reads up to `len` bytes.
    pub fn peer_read(&mut self, i: usize, len: usize) {
        let p = &mut self.peers[i];
        let mut buf = vec![0u8; len];
        if let Ok(n) = p.client.read(&mut buf) {
            p.received.extend_from_slice(&buf[..n]);
        }
    }

    // ---- time ----

    /// Handles every due timer, drains, and checks that no core then asks to be woken at or
    /// before the present (a deadline that stays due is a livelock).
    pub fn fire_due(&mut self) {
        self.settle();
        let now = self.now;
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        for p in &mut self.peers {
            if p.client.poll_timeout().is_some_and(|t| t <= now) {
                p.client.handle_timeout(now);
            }
        }
        self.settle();
        if !check::enabled("deadlines") {
            return;
        }
        if let Some(t) = self.server.poll_timeout() {
            assert!(
                t > now,
                "server deadline {t:?} not after {now:?} once handled"
            );
        }
        for p in &self.peers {
            if let Some(t) = p.client.poll_timeout() {
                assert!(
                    t > now,
                    "client {} deadline {t:?} not after {now:?} once handled",
                    p.id
                );
            }
        }
    }

    /// The earliest deadline of any core.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let mut next = self.server.poll_timeout();
        for p in &self.peers {
            if let Some(t) = p.client.poll_timeout() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Moves time forward by `d` and fires what is due.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.fire_due();
    }

    // ---- invariants ----

    /// After every drain:
    /// - connections and sessions within `max_connections` and `max_sessions`;
    /// - every session's buffers within `send_buffer` and `recv_buffer`, and its held
    ///   requests within `max_hold`;
    /// - every client's buffers within its caps and its requests within `max_in_flight`.
    pub fn check_invariants(&self) {
        let sc = &self.server_config;
        assert!(
            self.server.connection_count() <= sc.max_connections,
            "{} connections",
            self.server.connection_count()
        );
        assert!(
            self.server.session_count() <= sc.max_sessions,
            "{} sessions",
            self.server.session_count()
        );
        let ids = POOL
            .iter()
            .chain(self.apps.keys())
            .chain(self.peers.iter().map(|p| &p.id));
        for &id in ids {
            if let Some((send, recv)) = self.server.buffered(id) {
                assert!(
                    send <= sc.session.send_buffer,
                    "{id}: server send buffer {send} > {}",
                    sc.session.send_buffer
                );
                assert!(
                    recv <= sc.session.recv_buffer,
                    "{id}: server receive buffer {recv} > {}",
                    sc.session.recv_buffer
                );
            }
            let held = self.server.held_requests(id);
            assert!(
                held <= usize::from(sc.max_hold.max(1)),
                "{id}: {held} requests held, max_hold {}",
                sc.max_hold
            );
        }
        let cc = &self.client_config;
        for p in &self.peers {
            let (send, recv) = p.client.buffered();
            assert!(
                send <= cc.session.send_buffer,
                "client {}: send buffer {send} > {}",
                p.id,
                cc.session.send_buffer
            );
            assert!(
                recv <= cc.session.recv_buffer,
                "client {}: receive buffer {recv} > {}",
                p.id,
                cc.session.recv_buffer
            );
            assert!(p.client.requests_in_flight() <= cc.max_in_flight.max(2));
        }
        // With a token nobody but the genuine client can put bytes into its session, and no
        // replay can deliver anything twice: each side reads a prefix of what the other wrote.
        if sc.token.is_some() {
            for p in &self.peers {
                let Some(app) = self.apps.get(&p.id) else {
                    continue;
                };
                assert!(
                    p.written.starts_with(&app.received),
                    "{}: the server read {} bytes that are not what the client wrote ({} bytes)",
                    p.id,
                    app.received.len(),
                    p.written.len()
                );
                assert!(
                    app.written.starts_with(&p.received),
                    "{}: the client read {} bytes that are not what the server wrote ({} bytes)",
                    p.id,
                    p.received.len(),
                    app.written.len()
                );
            }
        }
    }

    // ---- the end ----

    /// Delivers everything queued on every link, draining after each delivery.
    fn deliver_all(&mut self) -> bool {
        let mut moved = false;
        for _ in 0..100_000 {
            let next = self.links.iter().find_map(|(&l, link)| {
                if !link.up.is_empty() {
                    Some((l, true))
                } else if !link.down.is_empty() || link.down_closed {
                    Some((l, false))
                } else {
                    None
                }
            });
            let Some((l, up)) = next else {
                return moved;
            };
            moved = true;
            if up {
                self.deliver_up(l, None);
            } else {
                self.deliver_down(l, None);
            }
            self.settle();
        }
        panic!("links never empty at {:?}", self.now);
    }

    /// Runs with every link delivering at once, time jumping to the next deadline, until
    /// `done` or `until`.
    pub fn run_until(&mut self, until: Instant, mut done: impl FnMut(&World) -> bool) {
        for _ in 0..200_000 {
            self.fire_due();
            if self.deliver_all() {
                continue;
            }
            if done(self) || self.now >= until {
                return;
            }
            match self.next_deadline() {
                // (A deadline not after `now` only survives `fire_due` with the `deadlines`
                // check skipped: step over it.)
                Some(t) if t <= self.now => {
                    self.now = (self.now + Duration::from_secs(1)).min(until)
                }
                Some(t) => self.now = t.min(until),
                None => return,
            }
        }
        panic!("step budget exhausted at {:?}", self.now);
    }

    /// The endpoint was fed garbage; now everyone behaves. Checks that:
    /// 1. once every genuine client gave up and every timeout ran out, no session and no
    ///    connection is left (nothing leaks);
    /// 2. a fresh client then opens a session and moves data both ways, intact, to a clean
    ///    close on both ends.
    pub fn final_check(&mut self) {
        self.auto = true;
        for p in &mut self.peers {
            p.auto = true;
            p.client
                .abort(self.now, AbortCode::APPLICATION, "fuzz run over");
        }
        for app in self.apps.values_mut() {
            app.auto = true;
        }
        self.fire_due();
        let quiet = self.now + Duration::from_secs(60);
        self.run_until(quiet, |_| false);
        assert_eq!(
            self.server.session_count(),
            0,
            "sessions left after every client gave up and every timeout ran out"
        );
        assert_eq!(
            self.server.connection_count(),
            0,
            "connections left after every client gave up and every timeout ran out"
        );
        self.run_fresh_session(20_000, 15_000);
    }

    /// A well-behaved session: the client sends `up` bytes, the server `down`, both finish.
    pub fn run_fresh_session(&mut self, up: usize, down: usize) {
        let i = self.add_peer(FRESH);
        let p = &mut self.peers[i];
        p.auto = true;
        p.to_send = crate::pattern(7, up);
        p.finish_when_sent = true;
        self.apps.insert(
            FRESH,
            ServerApp {
                auto: true,
                to_send: crate::pattern(9, down),
                finish_when_sent: true,
                ..ServerApp::default()
            },
        );
        let until = self.now + Duration::from_secs(120);
        self.run_until(until, |w| {
            let p = &w.peers[i];
            let app = &w.apps[&FRESH];
            p.end.is_some() && p.eof && app.end.is_some() && app.eof && p.client.is_drained()
        });
        let p = &self.peers[i];
        let app = &self.apps[&FRESH];
        assert_eq!(p.end, Some(Ok(())), "fresh client did not close cleanly");
        assert_eq!(
            app.end,
            Some(Ok(())),
            "fresh session did not close cleanly on the server"
        );
        assert!(app.opened, "fresh session never announced");
        assert!(
            p.received == crate::pattern(9, down),
            "client received {} bytes, not the server's {down}",
            p.received.len()
        );
        assert!(
            app.received == crate::pattern(7, up),
            "server received {} bytes, not the client's {up}",
            app.received.len()
        );
    }
}

/// Bytes `offset..offset + len` of a stream where every position has its own value (a
/// duplicated, lost or reordered piece shows), seeded by `seed`.
pub fn stream_bytes(seed: u8, offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| {
            let x = (i as u64 ^ u64::from(seed)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (x >> 56) as u8
        })
        .collect()
}
