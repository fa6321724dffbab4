//! The server side: one owner thread runs the [`holdwire_proto::Server`] for every session.
//!
//! # Theory of operation
//!
//! - An **acceptor thread** accepts TCP connections on the HTTP port and hands them to the
//!   owner's inbox (it blocks there when the owner is behind). The owner announces each to
//!   the core (`handle_accept`; `None` at the connection cap: the socket is closed) and
//!   starts its reader and writer threads ([`crate::conn`]).
//! - The **owner** feeds bytes and closes to the core, calls `handle_timeout` when due, and
//!   drains `poll_transmit` (each response queued whole on its connection, which is shut
//!   down after it when `close_after`), `poll_close`, `poll_refusal` (logged) and
//!   `poll_event`: [`Event::Opened`] puts the new session in the accept backlog, the other
//!   events wake that session's readers and writers.
//! - The **application** calls the core's per-session `read`/`write`/`finish`/`abort` under
//!   the lock and waits on the session's condition variables when blocked, as on the client.
//! - With a direct port, a second acceptor puts raw TCP connections in the same backlog.
//!
//! Dropping the [`crate::Listener`] stops handing out sessions: sessions opened afterwards
//! (and those still in the backlog) are aborted, the direct port closes, and the HTTP port
//! keeps serving the sessions already accepted until the last one ends.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use holdwire_proto::time::Clock;
use holdwire_proto::{direct, Token};
use holdwire_proto::{
    AbortCode, ConnId, Entropy, Event, Instant, ReadError, Server, ServerConfig, ServerEvent,
    ServerStats, SessionError, SessionId, Stats, WriteError,
};

use crate::conn::{Conn, Inbox, Tag, THREAD_STACK};
use crate::{deadline_after, log, poisoned, wait_until, DROP_LINGER};

/// Inbox capacity: at most this many chunks (of up to 64 KiB) wait for the owner.
const INBOX: usize = 256;
/// Most inbox messages handled per wake-up before checking timers.
const BURST: usize = 256;
/// Most raw TCP connections waiting in the backlog for `accept` (HTTP sessions are bounded
/// by the core's `max_sessions`).
const MAX_TCP_BACKLOG: usize = 128;
/// Pause after an `accept` error that is not about one connection (e.g. out of descriptors),
/// so that the acceptor does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The OS CSPRNG as the core's entropy source (server nonces).
struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        // `Entropy::fill` cannot report failure, and there is no safe substitute for the
        // OS generator: refusing to go on is the only sound choice.
        if let Err(e) = getrandom::fill(buf) {
            panic!("holdwire: the OS random number generator failed: {e}");
        }
    }
}

pub(crate) struct ServerShared {
    state: Mutex<ServerState>,
    accept_cv: Condvar,
    backlog_space: Condvar,
    inbox: SyncSender<Inbox>,
    clock: Clock,
    pub(crate) local: SocketAddr,
    pub(crate) direct_local: Option<SocketAddr>,
}

struct ServerState {
    core: Server,
    sessions: BTreeMap<SessionId, SessionApp>,
    backlog: VecDeque<Pending>,
    tcp_backlog: usize,
    kick_pending: bool,
    listener_open: bool,
    owner_done: bool,
    /// Dropped sessions: abort any still open at this deadline.
    detached: BinaryHeap<Reverse<(StdInstant, SessionId)>>,
}

/// A stream waiting for `accept`.
pub(crate) enum Pending {
    Http(SessionId, SocketAddr),
    Tcp(TcpStream, SocketAddr),
}

/// What the application side knows of one session.
struct SessionApp {
    readable: Arc<Condvar>,
    writable: Arc<Condvar>,
    handles: usize,
    in_backlog: bool,
    outcome: Option<Result<(), SessionError>>,
    read_shut: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    peer: SocketAddr,
}

impl SessionApp {
    fn is_detached(&self) -> bool {
        self.handles == 0 && !self.in_backlog
    }
}

impl ServerShared {
    fn lock(&self) -> io::Result<MutexGuard<'_, ServerState>> {
        self.state.lock().map_err(|_| poisoned())
    }

    fn now(&self) -> Instant {
        self.clock.instant(StdInstant::now())
    }

    fn kick(&self, st: &mut ServerState) -> bool {
        !std::mem::replace(&mut st.kick_pending, true)
    }

    fn send_kick(&self) {
        // Full: the owner has input to handle and drains after it. Disconnected: gone.
        match self.inbox.try_send(Inbox::Kick) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Runs `f` on the state, then wakes the owner to drain what it queued.
    fn command<R>(&self, f: impl FnOnce(&mut ServerState, Instant) -> R) -> io::Result<R> {
        let mut st = self.lock()?;
        let now = self.now();
        let r = f(&mut st, now);
        let kick = self.kick(&mut st);
        drop(st);
        if kick {
            self.send_kick();
        }
        Ok(r)
    }
}

/// Starts the owner and acceptor threads.
pub(crate) fn start(
    http: TcpListener,
    direct: Option<TcpListener>,
    config: ServerConfig,
) -> io::Result<Arc<ServerShared>> {
    let local = http.local_addr()?;
    let direct_local = direct.as_ref().map(TcpListener::local_addr).transpose()?;
    let token = config.token.clone();
    let (inbox, rx) = mpsc::sync_channel(INBOX);
    let shared = Arc::new(ServerShared {
        state: Mutex::new(ServerState {
            core: Server::new(config, Box::new(OsEntropy)),
            sessions: BTreeMap::new(),
            backlog: VecDeque::new(),
            tcp_backlog: 0,
            kick_pending: false,
            listener_open: true,
            owner_done: false,
            detached: BinaryHeap::new(),
        }),
        accept_cv: Condvar::new(),
        backlog_space: Condvar::new(),
        inbox: inbox.clone(),
        clock: Clock::new(StdInstant::now()),
        local,
        direct_local,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut owner = Owner {
        shared: shared.clone(),
        rx,
        inbox: inbox.clone(),
        conns: BTreeMap::new(),
        last_peer: local,
        buf: Vec::new(),
        stop: stop.clone(),
    };
    let spawn = |name: &str| {
        thread::Builder::new()
            .name(name.into())
            .stack_size(THREAD_STACK)
    };
    // The owner runs the core: the default stack, not the small one of the I/O threads.
    thread::Builder::new()
        .name("holdwire-server".into())
        .spawn(move || owner.run())?;
    if let Err(e) = spawn("holdwire-accept").spawn(move || accept_loop(http, inbox, stop)) {
        close_listener(&shared);
        return Err(e);
    }
    if let Some(direct) = direct {
        let s = shared.clone();
        if let Err(e) = spawn("holdwire-accept-tcp").spawn(move || direct_loop(direct, s, token)) {
            close_listener(&shared);
            return Err(e);
        }
    }
    Ok(shared)
}

fn accept_loop(listener: TcpListener, inbox: SyncSender<Inbox>, stop: Arc<AtomicBool>) {
    loop {
        match listener.accept() {
            Ok((sock, addr)) => {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let _ = sock.set_nodelay(true);
                if inbox.send(Inbox::Accepted(sock, addr)).is_err() {
                    return;
                }
            }
            Err(e) => {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                accept_error(e);
            }
        }
    }
}

fn direct_loop(listener: TcpListener, shared: Arc<ServerShared>, token: Option<Token>) {
    loop {
        {
            let Ok(mut st) = shared.lock() else { return };
            while st.listener_open && st.tcp_backlog >= MAX_TCP_BACKLOG {
                let Ok(g) = shared.backlog_space.wait(st) else {
                    return;
                };
                st = g;
            }
            if !st.listener_open {
                return;
            }
        }
        match listener.accept() {
            Ok((sock, addr)) => {
                let _ = sock.set_nodelay(true);
                // The handshake runs on its own thread, so a slow client holds up nobody.
                let shared = shared.clone();
                let token = token.clone();
                let spawned = thread::Builder::new()
                    .name("holdwire-direct".into())
                    .stack_size(THREAD_STACK)
                    .spawn(move || match direct_handshake(&sock, token.as_ref()) {
                        Ok(()) => {
                            let Ok(mut st) = shared.lock() else { return };
                            if st.listener_open {
                                st.backlog.push_back(Pending::Tcp(sock, addr));
                                st.tcp_backlog += 1;
                                shared.accept_cv.notify_one();
                            }
                        }
                        Err(e) => log!("direct connection from {addr} refused: {e}"),
                    });
                if let Err(e) = spawned {
                    log!("direct connection dropped: {e}");
                }
            }
            Err(e) => accept_error(e),
        }
    }
}

/// The server's side of the direct handshake (`holdwire_proto::direct`).
fn direct_handshake(sock: &TcpStream, token: Option<&Token>) -> io::Result<()> {
    use std::io::{Read, Write};
    let mut sock = sock;
    sock.set_read_timeout(Some(direct::ACCEPT_TIMEOUT))?;
    let mut hello = [0u8; direct::CLIENT_HELLO_LEN];
    sock.read_exact(&mut hello)?;
    let mut server_nonce = [0u8; 16];
    getrandom::fill(&mut server_nonce).map_err(io::Error::other)?;
    let (verdict, reply) = direct::server_hello(token, &hello, &server_nonce, true);
    sock.write_all(&reply)?;
    let client_nonce = verdict.map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    if let Some(token) = token {
        let mut proof = [0u8; direct::PROOF_LEN];
        sock.read_exact(&mut proof)?;
        direct::check_client_proof(token, &client_nonce, &server_nonce, &proof)
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    }
    sock.set_read_timeout(None)
}

fn accept_error(e: io::Error) {
    log!("accept failed: {e}");
    if !matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) {
        thread::sleep(ACCEPT_ERROR_PAUSE);
    }
}

/// Wakes a thread blocked in `accept` on `addr` by connecting to it.
fn wake_acceptor(addr: SocketAddr) {
    let mut target = addr;
    if addr.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
}

struct Owner {
    shared: Arc<ServerShared>,
    rx: Receiver<Inbox>,
    inbox: SyncSender<Inbox>,
    conns: BTreeMap<u64, (Conn, SocketAddr)>,
    last_peer: SocketAddr,
    buf: Vec<u8>,
    stop: Arc<AtomicBool>,
}

impl Drop for Owner {
    /// Runs when the listener is gone and its last session ended, and also if the owner
    /// panicked, so that no application thread waits for it forever.
    fn drop(&mut self) {
        for (_, (conn, _)) in std::mem::take(&mut self.conns) {
            conn.close();
        }
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.owner_done = true;
        for app in st.sessions.values() {
            app.readable.notify_all();
            app.writable.notify_all();
        }
        drop(st);
        self.shared.accept_cv.notify_all();
        self.stop.store(true, Ordering::Release);
        wake_acceptor(self.shared.local);
    }
}

impl Owner {
    fn run(&mut self) {
        let mut deadline: Option<StdInstant> = None;
        loop {
            let Ok(first) = crate::conn::recv_until(&self.rx, deadline) else {
                return;
            };
            let shared = self.shared.clone();
            let Ok(mut st) = shared.lock() else { return };
            st.kick_pending = false;
            let now = self.shared.now();
            let mut next = first;
            for _ in 0..BURST {
                let Some(input) = next.take() else { break };
                self.feed(&mut st, now, input);
                self.drain(&mut st, now);
                next = self.rx.try_recv().ok();
            }
            if let Some(input) = next {
                self.feed(&mut st, now, input);
            }
            if st.core.poll_timeout().is_some_and(|t| t <= now) {
                st.core.handle_timeout(now);
            }
            self.linger_expired(&mut st, now);
            self.drain(&mut st, now);
            if !st.listener_open && st.core.session_count() == 0 {
                // Dropping the owner stops the acceptor and closes the connections.
                return;
            }
            let core = st.core.poll_timeout().map(|t| self.shared.clock.to_std(t));
            let linger = st.detached.peek().map(|Reverse((at, _))| *at);
            deadline = match (core, linger) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }

    fn feed(&mut self, st: &mut ServerState, now: Instant, input: Inbox) {
        match input {
            Inbox::Accepted(sock, addr) => {
                let Some(id) = st.core.handle_accept(now) else {
                    log!("connection from {addr} refused: connection limit");
                    return;
                };
                let tag = Tag { conn: id.0, gen: 0 };
                match Conn::accepted(sock, tag, self.inbox.clone()) {
                    Ok(conn) => {
                        self.conns.insert(id.0, (conn, addr));
                    }
                    Err(e) => {
                        log!("connection from {addr} dropped: {e}");
                        st.core.handle_closed(now, id);
                    }
                }
            }
            Inbox::Bytes(tag, bytes) => {
                if let Some((_, addr)) = self.conns.get(&tag.conn) {
                    self.last_peer = *addr;
                }
                st.core.handle_bytes(now, ConnId(tag.conn), &bytes);
            }
            Inbox::Closed(tag) => {
                self.conns.remove(&tag.conn);
                st.core.handle_closed(now, ConnId(tag.conn));
            }
            Inbox::Sent(_) | Inbox::Kick => {}
        }
    }

    /// Drains the core's outputs in the documented order, again while handling an event
    /// issued a command (an abort).
    fn drain(&mut self, st: &mut ServerState, now: Instant) {
        loop {
            self.drain_once(st, now);
            if !self.handle_events(st, now) {
                return;
            }
        }
    }

    fn drain_once(&mut self, st: &mut ServerState, now: Instant) {
        // Peers of the connections closed here, for the log lines of their refusals (a refusal
        // usually closes its connection before it is logged).
        let mut closed: Vec<(u64, SocketAddr)> = Vec::new();
        loop {
            self.buf.clear();
            let Some(t) = st.core.poll_transmit(now, &mut self.buf) else {
                break;
            };
            if let Some((conn, _)) = self.conns.get(&t.conn.0) {
                conn.send(
                    holdwire_proto::take_transmit(&mut self.buf, t.len),
                    t.close_after,
                );
            }
            if t.close_after {
                // The writer shuts the socket down once the response is out.
                if let Some((_, peer)) = self.conns.remove(&t.conn.0) {
                    closed.push((t.conn.0, peer));
                }
            }
        }
        while let Some(c) = st.core.poll_close() {
            if let Some((conn, peer)) = self.conns.remove(&c.0) {
                conn.close();
                closed.push((c.0, peer));
            }
        }
        while let Some(r) = st.core.poll_refusal() {
            let key = r.conn.0;
            let peer = self.conns.get(&key).map(|(_, a)| *a).or_else(|| {
                closed
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == key)
                    .map(|(_, a)| *a)
            });
            log!(
                "refused a request from {}: HTTP {} {}",
                peer.map_or_else(|| "?".into(), |a| a.to_string()),
                r.status,
                r.reason
            );
        }
    }

    /// Returns true if a command was issued, so the outputs need draining again.
    fn handle_events(&mut self, st: &mut ServerState, now: Instant) -> bool {
        let mut again = false;
        while let Some(ServerEvent { session, event }) = st.core.poll_event() {
            let ServerState {
                core,
                sessions,
                backlog,
                listener_open,
                ..
            } = &mut *st;
            match event {
                Event::Opened => {
                    if *listener_open {
                        sessions.insert(
                            session,
                            SessionApp {
                                readable: Arc::new(Condvar::new()),
                                writable: Arc::new(Condvar::new()),
                                handles: 0,
                                in_backlog: true,
                                outcome: None,
                                read_shut: false,
                                read_timeout: None,
                                write_timeout: None,
                                peer: self.last_peer,
                            },
                        );
                        backlog.push_back(Pending::Http(session, self.last_peer));
                        self.shared.accept_cv.notify_one();
                    } else {
                        core.abort(now, session, AbortCode::SHUTDOWN, "listener closed");
                        again = true;
                    }
                }
                Event::Readable => {
                    let Some(app) = sessions.get(&session) else {
                        // Nobody will read it: let the core forget the session.
                        discard_unread(core, session);
                        continue;
                    };
                    if app.is_detached() {
                        unwanted_input(core, now, session);
                        again = true;
                    } else if app.read_shut {
                        discard_unread(core, session);
                        again = true;
                    }
                    app.readable.notify_all();
                }
                Event::Writable => {
                    if let Some(app) = sessions.get(&session) {
                        app.writable.notify_all();
                    }
                }
                Event::Closed | Event::Failed(_) => {
                    let outcome = match event {
                        Event::Failed(e) => {
                            log!("session {session} failed: {e}");
                            Err(e)
                        }
                        _ => Ok(()),
                    };
                    let Some(app) = sessions.get_mut(&session) else {
                        continue;
                    };
                    app.outcome = Some(outcome);
                    app.readable.notify_all();
                    app.writable.notify_all();
                    if app.is_detached() {
                        sessions.remove(&session);
                        discard_unread(core, session);
                        again = true;
                    }
                }
            }
        }
        again
    }

    /// Aborts dropped sessions that did not close within [`DROP_LINGER`].
    fn linger_expired(&mut self, st: &mut ServerState, now: Instant) {
        let now_std = StdInstant::now();
        while let Some(Reverse((at, id))) = st.detached.peek().copied() {
            if at > now_std {
                break;
            }
            st.detached.pop();
            if st
                .sessions
                .get(&id)
                .is_some_and(|a| a.is_detached() && a.outcome.is_none())
            {
                st.core.abort(
                    now,
                    id,
                    AbortCode::TIMED_OUT,
                    "stream dropped and the peer did not close",
                );
            }
        }
    }
}

/// Data arrived for a dropped stream: abort, as TCP resets a closed socket that receives data.
fn unwanted_input(core: &mut Server, now: Instant, id: SessionId) {
    if core.buffered(id).is_some_and(|(_, unread)| unread > 0) {
        core.abort(
            now,
            id,
            AbortCode::APPLICATION,
            "stream dropped with unread data",
        );
        discard_unread(core, id);
    }
}

fn discard_unread(core: &mut Server, id: SessionId) {
    while let Ok(Some(_)) = core.read_chunk(id, usize::MAX) {}
}

/// Stops handing out sessions (the `Listener` was dropped).
pub(crate) fn close_listener(shared: &ServerShared) {
    let Ok(mut st) = shared.lock() else { return };
    st.listener_open = false;
    // New opens are refused from now on; sessions already handed out carry on.
    st.core.stop_accepting();
    let now = shared.now();
    let ServerState {
        core,
        sessions,
        backlog,
        ..
    } = &mut *st;
    for pending in backlog.drain(..) {
        if let Pending::Http(id, _) = pending {
            core.abort(now, id, AbortCode::SHUTDOWN, "listener closed");
            sessions.remove(&id);
            discard_unread(core, id);
        }
    }
    st.tcp_backlog = 0;
    shared.backlog_space.notify_all();
    shared.accept_cv.notify_all();
    let kick = shared.kick(&mut st);
    drop(st);
    if kick {
        shared.send_kick();
    }
    if let Some(addr) = shared.direct_local {
        wake_acceptor(addr);
    }
}

/// Takes the next stream from the backlog, waiting at most `timeout`.
pub(crate) fn accept(shared: &ServerShared, timeout: Option<Duration>) -> io::Result<Pending> {
    let mut st = shared.lock()?;
    let until = deadline_after(timeout);
    loop {
        if let Some(p) = st.backlog.pop_front() {
            match &p {
                Pending::Http(id, _) => {
                    if let Some(app) = st.sessions.get_mut(id) {
                        app.in_backlog = false;
                        app.handles = 1;
                    }
                }
                Pending::Tcp(..) => {
                    st.tcp_backlog = st.tcp_backlog.saturating_sub(1);
                    shared.backlog_space.notify_one();
                }
            }
            return Ok(p);
        }
        if st.owner_done {
            return Err(io::ErrorKind::NotConnected.into());
        }
        st = wait_until(&shared.accept_cv, st, until)?;
    }
}

pub(crate) fn stats(shared: &ServerShared) -> io::Result<(ServerStats, usize)> {
    let st = shared.lock()?;
    Ok((st.core.stats(), st.core.session_count()))
}

// ---- one session, application side ----

fn app(st: &ServerState, id: SessionId) -> io::Result<&SessionApp> {
    st.sessions
        .get(&id)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "session handle released"))
}

pub(crate) fn read(shared: &ServerShared, id: SessionId, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let mut st = shared.lock()?;
    let until = deadline_after(app(&st, id)?.read_timeout);
    loop {
        let a = app(&st, id)?;
        if a.read_shut {
            return Ok(0);
        }
        let recorded = a.outcome.clone();
        let cv = a.readable.clone();
        match st.core.read(id, buf) {
            Ok(n) => {
                let kick = n > 0 && shared.kick(&mut st);
                drop(st);
                if kick {
                    shared.send_kick();
                }
                return Ok(n);
            }
            Err(ReadError::Failed(e)) => {
                // Long after the end the core has forgotten the session: use what we saw.
                return match recorded {
                    Some(Ok(())) => Ok(0),
                    Some(Err(rec)) => Err(rec.into()),
                    None => Err(e.into()),
                };
            }
            Err(ReadError::Blocked) if st.owner_done => {
                return Err(io::ErrorKind::NotConnected.into());
            }
            Err(ReadError::Blocked) => st = wait_until(&cv, st, until)?,
        }
    }
}

pub(crate) fn write(shared: &ServerShared, id: SessionId, data: &[u8]) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    let mut st = shared.lock()?;
    let until = deadline_after(app(&st, id)?.write_timeout);
    loop {
        let a = app(&st, id)?;
        let recorded = a.outcome.clone();
        let cv = a.writable.clone();
        match st.core.write(id, data) {
            Ok(n) => {
                let kick = shared.kick(&mut st);
                drop(st);
                if kick {
                    shared.send_kick();
                }
                return Ok(n);
            }
            Err(WriteError::Blocked) if st.owner_done => {
                return Err(io::ErrorKind::NotConnected.into());
            }
            Err(WriteError::Blocked) => st = wait_until(&cv, st, until)?,
            Err(WriteError::Failed(e)) => {
                return match recorded {
                    Some(Ok(())) => Err(WriteError::Finished.into()),
                    Some(Err(rec)) => Err(rec.into()),
                    None => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub(crate) fn shutdown(
    shared: &ServerShared,
    id: SessionId,
    write: bool,
    read: bool,
) -> io::Result<()> {
    shared.command(|st, _| {
        if write {
            st.core.finish(id);
        }
        if read {
            if let Some(app) = st.sessions.get_mut(&id) {
                app.read_shut = true;
                app.readable.notify_all();
            }
            discard_unread(&mut st.core, id);
        }
    })
}

pub(crate) fn abort(shared: &ServerShared, id: SessionId) -> io::Result<()> {
    shared.command(|st, now| {
        st.core.abort(
            now,
            id,
            AbortCode::APPLICATION,
            "aborted by the application",
        );
    })
}

pub(crate) fn close(shared: &ServerShared, id: SessionId) -> io::Result<()> {
    shutdown(shared, id, true, true)?;
    let mut st = shared.lock()?;
    let until = deadline_after(app(&st, id)?.write_timeout);
    loop {
        let a = app(&st, id)?;
        match &a.outcome {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => return Err(e.clone().into()),
            None => {}
        }
        if st.owner_done {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let cv = a.writable.clone();
        st = wait_until(&cv, st, until)?;
    }
}

pub(crate) fn set_timeouts(
    shared: &ServerShared,
    id: SessionId,
    read: Option<Option<Duration>>,
    write: Option<Option<Duration>>,
) -> io::Result<()> {
    let mut st = shared.lock()?;
    let app = st
        .sessions
        .get_mut(&id)
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
    if let Some(t) = read {
        app.read_timeout = t;
    }
    if let Some(t) = write {
        app.write_timeout = t;
    }
    Ok(())
}

pub(crate) fn timeouts(
    shared: &ServerShared,
    id: SessionId,
) -> io::Result<(Option<Duration>, Option<Duration>)> {
    let st = shared.lock()?;
    let a = app(&st, id)?;
    Ok((a.read_timeout, a.write_timeout))
}

pub(crate) fn peer(shared: &ServerShared, id: SessionId) -> io::Result<SocketAddr> {
    let st = shared.lock()?;
    Ok(app(&st, id)?.peer)
}

pub(crate) fn session_stats(shared: &ServerShared, id: SessionId) -> Option<Stats> {
    shared.lock().ok()?.core.session_stats(id)
}

pub(crate) fn retain(shared: &ServerShared, id: SessionId) -> io::Result<()> {
    let mut st = shared.lock()?;
    let app = st
        .sessions
        .get_mut(&id)
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
    app.handles += 1;
    Ok(())
}

/// A handle went away; the last one finishes the session (or aborts it on unread data) and
/// leaves it to close in the background.
pub(crate) fn release(shared: &ServerShared, id: SessionId) {
    let _ = shared.command(|st, now| {
        let Some(app) = st.sessions.get_mut(&id) else {
            return;
        };
        app.handles = app.handles.saturating_sub(1);
        if app.handles > 0 {
            return;
        }
        if app.outcome.is_some() {
            st.sessions.remove(&id);
            discard_unread(&mut st.core, id);
            return;
        }
        st.detached
            .push(Reverse((StdInstant::now() + DROP_LINGER, id)));
        if st.core.buffered(id).is_some_and(|(_, unread)| unread > 0) {
            unwanted_input(&mut st.core, now, id);
        } else {
            st.core.finish(id);
        }
    });
}
