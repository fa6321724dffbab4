//! The server side: [`Listener`], one owner task holding a [`holdwire_proto::Server`] for every
//! session of the endpoint.
//!
//! An accept task hands new TCP connections to the owner, which announces them to the core
//! (`handle_accept`; `None` at the connection cap drops the socket) and starts a small
//! connection task for each (see `conn`). The core routes requests to sessions and holds them;
//! each [`ServerTransmit`](holdwire_proto::ServerTransmit) is queued whole on its connection.
//! [`Event::Opened`] makes a server-side [`Stream`] that [`Listener::accept`] hands out. As on
//! the client side, the core sits in a mutex that application calls lock too: they run the
//! command and drain the outputs themselves, and nudge the owner only to re-arm its timer.
//!
//! Optionally a second port accepts raw TCP (the client's direct-first attempt); those
//! connections are handed out as the same [`Stream`] type.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use holdwire_proto::{
    AbortCode, Event, Instant, ReadError, Server, ServerConfig, ServerStats, SessionId, Stats,
    WriteError,
};
use smol::channel::{self, Receiver, Sender};
use smol::stream::Stream as _;
use smol::{Async, Task, Timer};

use crate::client::{set_waker, wake};
use crate::conn::{ConnHandle, Connect, Input};
use crate::driver::{self, earlier, lock, CoreClock, Kicker, OsEntropy, Wake, BATCH};
use crate::tls::{Acceptor, TlsConnect};
use crate::Stream;

/// Socket chunks and accepted connections queued for the owner before producers wait.
const INBOX: usize = 1024;

/// Raw TCP connections accepted but not yet taken by `accept`, before the accept task waits.
const DIRECT_BACKLOG: usize = 64;

/// Pause after an accept error (e.g. out of file descriptors) so that it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

pub(crate) struct ServerShared {
    state: Mutex<ServerState>,
    kicker: Kicker,
    clock: CoreClock,
}

struct ServerState {
    core: Server,
    /// Open connections by core `ConnId`, with the peer address.
    conns: HashMap<u64, (ConnHandle, SocketAddr)>,
    /// Sessions handed to the application (or still queued for `accept`).
    sessions: HashMap<SessionId, SessionSlot>,
    accepted: VecDeque<(Stream, SocketAddr)>,
    accept_wakers: Vec<Waker>,
    /// The `Listener` is alive: new sessions are accepted.
    listening: bool,
    /// Log refused requests (see `Listener::log_refusals`).
    log_refusals: bool,
    buf: Vec<u8>,
    armed: Option<Instant>,
    /// The peer of the connection whose input is being fed, for `Event::Opened`.
    peer: Option<SocketAddr>,
}

#[derive(Default)]
struct SessionSlot {
    read: Option<Waker>,
    write: Option<Waker>,
    /// Every application handle is gone.
    orphan: bool,
    /// The final event was seen.
    ended: bool,
}

/// A server-side session handle; the last clone's drop releases the session.
pub(crate) struct ServerSession {
    shared: Arc<ServerShared>,
    id: SessionId,
    peer: SocketAddr,
}

impl Drop for ServerSession {
    fn drop(&mut self) {
        self.shared.release(self.id);
    }
}

impl ServerSession {
    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn shared(&self) -> &Arc<ServerShared> {
        &self.shared
    }
}

impl ServerState {
    fn drain(&mut self, now: Instant, shared: &Arc<ServerShared>) {
        // Peers of the connections closed here, for the log lines of their refusals (a refusal
        // usually closes its connection before it is logged).
        let mut closed: Vec<(u64, SocketAddr)> = Vec::new();
        loop {
            self.buf.clear();
            while let Some(t) = self.core.poll_transmit(now, &mut self.buf) {
                let bytes = holdwire_proto::take_transmit(&mut self.buf, t.len);
                if t.close_after {
                    if let Some((conn, peer)) = self.conns.remove(&t.conn.0) {
                        conn.send(bytes, true);
                        conn.detach();
                        if self.log_refusals {
                            closed.push((t.conn.0, peer));
                        }
                    }
                } else if let Some((conn, _)) = self.conns.get(&t.conn.0) {
                    conn.send(bytes, false);
                }
            }
            while let Some(conn) = self.core.poll_close() {
                if let Some((_, peer)) = self.conns.remove(&conn.0) {
                    if self.log_refusals {
                        closed.push((conn.0, peer));
                    }
                }
            }
            // Refusals are for logs, which the application asks for.
            while let Some(refusal) = self.core.poll_refusal() {
                if self.log_refusals {
                    let key = refusal.conn.0;
                    let peer = self.conns.get(&key).map(|(_, p)| *p).or_else(|| {
                        closed
                            .iter()
                            .rev()
                            .find(|(k, _)| *k == key)
                            .map(|(_, p)| *p)
                    });
                    tracing::warn!(
                        "refused a request from {}: HTTP {} ({})",
                        peer.map_or_else(|| "a closed connection".to_string(), |p| p.to_string()),
                        refusal.status,
                        refusal.reason
                    );
                }
            }
            let mut again = false;
            while let Some(ev) = self.core.poll_event() {
                let id = ev.session;
                match ev.event {
                    Event::Opened => {
                        if self.listening {
                            let peer = self
                                .peer
                                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                            self.sessions.insert(id, SessionSlot::default());
                            let stream = Stream::server(ServerSession {
                                shared: shared.clone(),
                                id,
                                peer,
                            });
                            self.accepted.push_back((stream, peer));
                            for w in self.accept_wakers.drain(..) {
                                w.wake();
                            }
                        } else {
                            self.core
                                .abort(now, id, AbortCode::SHUTDOWN, "listener closed");
                            again = true;
                        }
                    }
                    Event::Readable => {
                        let orphan = match self.sessions.get_mut(&id) {
                            Some(slot) => {
                                wake(&mut slot.read);
                                slot.orphan && !slot.ended
                            }
                            None => false,
                        };
                        if orphan && self.core.buffered(id).is_some_and(|b| b.1 > 0) {
                            self.core.abort(
                                now,
                                id,
                                AbortCode::APPLICATION,
                                "stream dropped unread",
                            );
                            again = true;
                        }
                    }
                    Event::Writable => {
                        if let Some(slot) = self.sessions.get_mut(&id) {
                            wake(&mut slot.write);
                        }
                    }
                    Event::Closed | Event::Failed(_) => {
                        if let Some(slot) = self.sessions.get_mut(&id) {
                            slot.ended = true;
                            wake(&mut slot.read);
                            wake(&mut slot.write);
                            if slot.orphan {
                                self.sessions.remove(&id);
                            }
                        }
                    }
                }
            }
            if !again {
                return;
            }
        }
    }

    fn handle(&mut self, now: Instant, input: Input, kicker: &Kicker) {
        self.peer = None;
        match input {
            Input::Bytes { key, data } => {
                if let Some((_, peer)) = self.conns.get(&key) {
                    self.peer = Some(*peer);
                    self.core
                        .handle_bytes(now, holdwire_proto::ConnId(key), &data);
                }
            }
            Input::Closed { key } => {
                self.conns.remove(&key);
                self.core.handle_closed(now, holdwire_proto::ConnId(key));
            }
            Input::Accepted(accepted) => {
                let (socket, peer) = *accepted;
                self.accept(now, Connect::Accepted(socket), peer, kicker);
            }
            Input::AcceptedTls(accepted) => {
                let (stream, peer) = *accepted;
                let connect = Connect::Tls(TlsConnect::Accepted(Box::new(stream)));
                self.accept(now, connect, peer, kicker);
            }
            Input::Sent { .. } | Input::Kick => {}
        }
    }
}

impl ServerState {
    /// Announces a new connection to the core and starts its task; at the connection cap the
    /// core says no, and dropping `connect` closes the socket.
    fn accept(&mut self, now: Instant, connect: Connect, peer: SocketAddr, kicker: &Kicker) {
        // At the connection cap the core says no: dropping the socket closes it.
        if let Some(conn) = self.core.handle_accept(now) {
            let handle = ConnHandle::spawn(connect, kicker.inbox().clone(), conn.0);
            self.conns.insert(conn.0, (handle, peer));
        } else if self.log_refusals {
            tracing::warn!("refused a connection from {peer}: connection limit reached");
        }
    }
}

impl ServerShared {
    fn after_command(self: &Arc<Self>, st: &mut ServerState) {
        st.drain(self.clock.now(), self);
        // Also wake the owner when it may be time to stop (listener and sessions gone).
        if earlier(st.core.poll_timeout(), st.armed) || (!st.listening && st.sessions.is_empty()) {
            self.kicker.kick();
        }
    }

    pub(crate) fn poll_read(
        self: &Arc<Self>,
        id: SessionId,
        cx: &Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = lock(&self.state);
        match st.core.read(id, buf) {
            Ok(n) => {
                if n > 0 {
                    self.after_command(&mut st);
                }
                Poll::Ready(Ok(n))
            }
            Err(ReadError::Blocked) => {
                if let Some(slot) = st.sessions.get_mut(&id) {
                    set_waker(&mut slot.read, cx);
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    pub(crate) fn poll_write(
        self: &Arc<Self>,
        id: SessionId,
        cx: &Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = lock(&self.state);
        match st.core.write(id, data) {
            Ok(n) => {
                if n > 0 {
                    self.after_command(&mut st);
                }
                Poll::Ready(Ok(n))
            }
            Err(WriteError::Blocked) => {
                if let Some(slot) = st.sessions.get_mut(&id) {
                    set_waker(&mut slot.write, cx);
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    pub(crate) fn close(self: &Arc<Self>, id: SessionId) -> io::Result<()> {
        let mut st = lock(&self.state);
        // An empty write changes nothing and reports a failed session.
        if let Err(WriteError::Failed(e)) = st.core.write(id, &[]) {
            return Err(e.into());
        }
        st.core.finish(id);
        self.after_command(&mut st);
        Ok(())
    }

    pub(crate) fn abort(self: &Arc<Self>, id: SessionId, reason: &str) {
        let mut st = lock(&self.state);
        let now = self.clock.now();
        st.core.abort(now, id, AbortCode::APPLICATION, reason);
        self.after_command(&mut st);
    }

    /// The last handle of session `id` is gone: finish its stream, or abort it if data would
    /// be lost unread; forget it once it ended.
    fn release(self: &Arc<Self>, id: SessionId) {
        let mut st = lock(&self.state);
        let ended = match st.sessions.get_mut(&id) {
            Some(slot) => {
                slot.orphan = true;
                slot.ended
            }
            None => return,
        };
        if ended {
            st.sessions.remove(&id);
            if !st.listening && st.sessions.is_empty() {
                self.kicker.kick();
            }
            return;
        }
        if st.core.buffered(id).is_some_and(|b| b.1 > 0) {
            let now = self.clock.now();
            st.core
                .abort(now, id, AbortCode::APPLICATION, "stream dropped unread");
        } else {
            st.core.finish(id);
        }
        self.after_command(&mut st);
    }

    pub(crate) fn stats(&self, id: SessionId) -> Option<Stats> {
        lock(&self.state).core.session_stats(id)
    }

    pub(crate) fn held_requests(&self, id: SessionId) -> usize {
        lock(&self.state).core.held_requests(id)
    }
}

/// The owner task of a listener.
async fn drive(shared: Arc<ServerShared>, rx: Receiver<Input>, accept_task: Task<()>) {
    let mut now = shared.clock.now();
    loop {
        let deadline = {
            let mut st = lock(&shared.state);
            shared.kicker.reset();
            st.drain(now, &shared);
            if !st.listening && st.sessions.is_empty() && st.core.session_count() == 0 {
                st.conns.clear();
                break;
            }
            let deadline = st.core.poll_timeout();
            st.armed = deadline;
            deadline
        };
        let wake = driver::wait(&rx, deadline, &shared.clock).await;
        let first = match wake {
            Wake::Input(input) => Some(input),
            Wake::Deadline => {
                // Let connection tasks that are ready run first, so that requests already
                // received are fed in before the deadline is handled.
                smol::future::yield_now().await;
                None
            }
            Wake::Closed => break,
        };
        now = shared.clock.now();
        let mut st = lock(&shared.state);
        for input in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            .take(BATCH)
        {
            st.handle(now, input, &shared.kicker);
            // Drained per input, so that `Event::Opened` knows the connection's peer.
            st.drain(now, &shared);
        }
        st.peer = None;
        if st.core.poll_timeout().is_some_and(|t| t <= now) {
            st.core.handle_timeout(now);
        }
    }
    drop(accept_task);
}

/// Accepts TCP connections for the owner (with `tls`, after each one's handshake); stops when
/// the owner is gone (it cancels this task).
async fn accept_http(listener: Async<TcpListener>, inbox: Sender<Input>, tls: Option<Acceptor>) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) if tls.is_some() => {
                if let Some(tls) = &tls {
                    tls.handshake(socket, peer, &inbox);
                }
            }
            Ok(accepted) => {
                if inbox
                    .send(Input::Accepted(Box::new(accepted)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(_) => {
                Timer::after(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Accepts raw TCP connections (the direct path) and, once each passed the direct handshake
/// (on its own task, so a slow client holds up nobody), queues it for `accept`.
async fn accept_direct(
    listener: Async<TcpListener>,
    out: Sender<(Stream, SocketAddr)>,
    token: Option<holdwire_proto::Token>,
) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let _ = socket.get_ref().set_nodelay(true);
                let out = out.clone();
                let token = token.clone();
                smol::spawn(async move {
                    let mut tcp = smol::net::TcpStream::from(socket);
                    let handshake = crate::direct::within(
                        holdwire_proto::direct::ACCEPT_TIMEOUT,
                        crate::direct::server(&mut tcp, token.as_ref()),
                    );
                    if handshake.await.is_ok() {
                        let _ = out.send((Stream::from_tcp(tcp), peer)).await;
                    }
                })
                .detach();
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(_) => {
                Timer::after(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn bind_first(addr: impl smol::net::AsyncToSocketAddrs) -> io::Result<Async<TcpListener>> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
    for a in smol::net::resolve(addr).await? {
        match Async::<TcpListener>::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// An accepted session or raw connection, with its peer address.
type Accepted = (Stream, SocketAddr);

struct Direct {
    addr: SocketAddr,
    /// In a mutex because the receiver keeps its waker registration between polls.
    rx: Mutex<Pin<Box<Receiver<Accepted>>>>,
    _task: Task<()>,
}

/// A holdwire server endpoint: accepts sessions over HTTP (and optionally raw TCP) and hands
/// each out as a [`Stream`], as `async_net::TcpListener` hands out `TcpStream`s.
///
/// Dropping the listener stops handing out new sessions (new ones are refused), but sessions
/// already accepted keep working: their HTTP port stays open until the last of them ends.
pub struct Listener {
    shared: Arc<ServerShared>,
    local: SocketAddr,
    direct: Option<Direct>,
    /// With TLS: whether failed handshakes are logged.
    tls_log: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local)
            .field("direct_addr", &self.direct.as_ref().map(|d| d.addr))
            .field("tls", &self.tls_log.is_some())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Listens for holdwire sessions over HTTP on `addr`, with the endpoint configuration
    /// `config` (path prefix, limits, timeouts).
    pub async fn bind(
        addr: impl smol::net::AsyncToSocketAddrs,
        config: ServerConfig,
    ) -> io::Result<Listener> {
        Self::start(bind_first(addr).await?, None, config, None)
    }

    /// As [`bind`](Self::bind), serving HTTPS: each connection's TLS handshake runs in a task
    /// of its own within [`tls::HANDSHAKE_TIMEOUT`](crate::tls::HANDSHAKE_TIMEOUT) before the
    /// connection is served, so a slow or failing client holds up no other. Failed handshakes
    /// are printed with [`log_refusals`](Self::log_refusals). Build `tls` with
    /// [`tls::server_config_from_pem`](crate::tls::server_config_from_pem), or bring your own.
    pub async fn bind_tls(
        addr: impl smol::net::AsyncToSocketAddrs,
        config: ServerConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> io::Result<Listener> {
        Self::start(bind_first(addr).await?, None, config, Some(tls))
    }

    /// [`bind_tls`](Self::bind_tls) with raw TCP on `direct` as in
    /// [`bind_with_direct`](Self::bind_with_direct) (the direct path has no TLS).
    pub async fn bind_tls_with_direct(
        addr: impl smol::net::AsyncToSocketAddrs,
        direct: impl smol::net::AsyncToSocketAddrs,
        config: ServerConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> io::Result<Listener> {
        let http = bind_first(addr).await?;
        let direct = bind_first(direct).await?;
        Self::start(http, Some(direct), config, Some(tls))
    }

    /// As [`bind`](Self::bind), and also accepts raw TCP on `direct` (for clients that try
    /// [`ClientOptions::direct`](holdwire_proto::ClientOptions::direct) first); those
    /// connections are handed out by [`accept`](Self::accept) as [`Stream`]s too.
    pub async fn bind_with_direct(
        addr: impl smol::net::AsyncToSocketAddrs,
        direct: impl smol::net::AsyncToSocketAddrs,
        config: ServerConfig,
    ) -> io::Result<Listener> {
        let http = bind_first(addr).await?;
        let direct = bind_first(direct).await?;
        Self::start(http, Some(direct), config, None)
    }

    fn start(
        http: Async<TcpListener>,
        direct: Option<Async<TcpListener>>,
        config: ServerConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Listener> {
        let local = http.get_ref().local_addr()?;
        let direct = match direct {
            Some(l) => {
                let addr = l.get_ref().local_addr()?;
                let (tx, rx) = channel::bounded(DIRECT_BACKLOG);
                let task = smol::spawn(accept_direct(l, tx, config.token.clone()));
                Some(Direct {
                    addr,
                    rx: Mutex::new(Box::pin(rx)),
                    _task: task,
                })
            }
            None => None,
        };
        let (tx, rx) = channel::bounded(INBOX);
        let tls = tls.map(Acceptor::new);
        let tls_log = tls.as_ref().map(|t| t.log.clone());
        let accept_task = smol::spawn(accept_http(http, tx.clone(), tls));
        let shared = Arc::new(ServerShared {
            state: Mutex::new(ServerState {
                core: Server::new(config, Box::new(OsEntropy)),
                conns: HashMap::new(),
                sessions: HashMap::new(),
                accepted: VecDeque::new(),
                accept_wakers: Vec::new(),
                listening: true,
                log_refusals: false,
                buf: Vec::new(),
                armed: None,
                peer: None,
            }),
            kicker: Kicker::new(tx),
            clock: CoreClock::new(),
        });
        smol::spawn(drive(shared.clone(), rx, accept_task)).detach();
        Ok(Listener {
            shared,
            local,
            direct,
            tls_log,
        })
    }

    /// Waits for the next session (or raw TCP connection), with the address of the TCP peer
    /// that opened it (for a session through a reverse proxy, the proxy's address).
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next session or raw TCP connection.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, SocketAddr)>> {
        {
            let mut st = lock(&self.shared.state);
            if let Some(next) = st.accepted.pop_front() {
                return Poll::Ready(Ok(next));
            }
            if !st.accept_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                st.accept_wakers.push(cx.waker().clone());
            }
        }
        if let Some(direct) = &self.direct {
            let mut rx = lock(&direct.rx);
            if let Poll::Ready(Some(next)) = rx.as_mut().poll_next(cx) {
                return Poll::Ready(Ok(next));
            }
        }
        Poll::Pending
    }

    /// The stream of incoming sessions and raw TCP connections; never ends.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The HTTP address this listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// The raw TCP address, if bound with [`bind_with_direct`](Self::bind_with_direct).
    pub fn direct_addr(&self) -> Option<SocketAddr> {
        self.direct.as_ref().map(|d| d.addr)
    }

    /// Sessions alive in the core (accepted or not, including ones still closing).
    pub fn session_count(&self) -> usize {
        lock(&self.shared.state).core.session_count()
    }

    /// HTTP connections open.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.state).core.connection_count()
    }

    /// Endpoint counters from the core.
    pub fn stats(&self) -> ServerStats {
        lock(&self.shared.state).core.stats()
    }

    /// Logs every refused request (bad token, unknown session, malformed, oversized or too
    /// slow request, limits) as a `tracing` warning, with the peer address, HTTP status and
    /// reason; every connection closed at the connection limit; and, with TLS, every failed
    /// handshake.
    pub fn log_refusals(&self, on: bool) {
        lock(&self.shared.state).log_refusals = on;
        if let Some(log) = &self.tls_log {
            log.store(on, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Starts a graceful shutdown: new sessions are refused and every session's stream is
    /// finished, so clients read EOF once they have the data; sessions then close as their
    /// clients finish too (see [`Server::shutdown`](holdwire_proto::Server::shutdown)).
    pub fn shutdown(&self) {
        let mut st = lock(&self.shared.state);
        let now = self.shared.clock.now();
        st.core.shutdown(now);
        self.shared.after_command(&mut st);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let queued = {
            let mut st = lock(&self.shared.state);
            st.listening = false;
            self.shared.kicker.kick();
            std::mem::take(&mut st.accepted)
        };
        // Sessions never accepted are refused, as TCP resets connections left in the backlog
        // of a closed listener. Outside the lock: aborting and dropping lock the state.
        for (stream, _) in queued {
            stream.abort("listener closed");
        }
    }
}

/// The stream of [`Listener::accept`] results, from [`Listener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a Listener,
}

impl smol::stream::Stream for Incoming<'_> {
    type Item = io::Result<Stream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.listener
            .poll_accept(cx)
            .map(|r| Some(r.map(|(stream, _)| stream)))
    }
}
