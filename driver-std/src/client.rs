//! The client side of an HTTP session: one owner thread runs the core's loop.
//!
//! # Theory of operation
//!
//! The [`holdwire_proto::Client`] lives in a mutex shared by the owner thread and the
//! application's `Stream` handles:
//! - the **owner** waits on its inbox (bytes and closes from connection threads, kicks from
//!   the application) with a timeout at the core's next deadline, then feeds what arrived,
//!   calls `handle_timeout` when due, and drains `poll_transmit` (queue the request on the
//!   slot's connection, opening a new one when told), `poll_close` and `poll_event` (wake
//!   the application's readers and writers);
//! - the **application** calls the core's `read`/`write`/`finish`/`abort` directly under the
//!   lock, waits on a condition variable when the core says "blocked" (so backpressure is
//!   exactly the core's send buffer and receive window), and kicks the owner after every
//!   command so it drains the outputs.
//!
//! When the last handle is dropped the session is finished and keeps running in the
//! background until it closes, or is aborted when unread data is left or arrives (as a TCP
//! socket closed with unread data resets), or when it does not close within
//! [`crate::DROP_LINGER`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use holdwire_proto::time::Clock;
use holdwire_proto::{
    AbortCode, Client, ClientOptions, ConnId, Event, Instant, ReadError, SessionError, SessionId,
    Stats, WriteError,
};

use crate::conn::{Conn, Inbox, Tag};
use crate::tls::ClientTls;
use crate::{deadline_after, log, poisoned, wait_until, DROP_LINGER};

/// Inbox capacity: at most this many chunks (of up to 64 KiB) wait for the owner.
const INBOX: usize = 64;
/// Most inbox messages handled per wake-up before the outputs are drained again.
const BURST: usize = 64;

pub(crate) struct ClientShared {
    state: Mutex<ClientState>,
    readable: Condvar,
    writable: Condvar,
    inbox: SyncSender<Inbox>,
    clock: Clock,
    pub(crate) server: String,
    pub(crate) proxy: Option<String>,
    connected: Arc<Mutex<Option<SocketAddr>>>,
}

struct ClientState {
    core: Client,
    kick_pending: bool,
    opened: bool,
    failure: Option<SessionError>,
    ended: bool,
    owner_done: bool,
    handles: usize,
    detached_at: Option<StdInstant>,
    read_shut: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl ClientShared {
    fn lock(&self) -> io::Result<MutexGuard<'_, ClientState>> {
        self.state.lock().map_err(|_| poisoned())
    }

    fn now(&self) -> Instant {
        self.clock.instant(StdInstant::now())
    }

    /// Wakes the owner after a command, unless a wake-up is already on its way.
    fn kick(&self, st: &mut ClientState) -> bool {
        !std::mem::replace(&mut st.kick_pending, true)
    }

    fn send_kick(&self) {
        // Full: the owner has input to handle and drains after it. Disconnected: the owner
        // is gone and nothing is left to drain.
        match self.inbox.try_send(Inbox::Kick) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Opens an HTTP session (over TLS with `tls`) and waits until the server confirms it.
pub(crate) fn connect(
    options: ClientOptions,
    tls: Option<Arc<ClientTls>>,
) -> io::Result<Arc<ClientShared>> {
    let authority = options.http_connect_authority();
    let addrs: Arc<[SocketAddr]> = std::net::ToSocketAddrs::to_socket_addrs(authority.as_str())?
        .collect::<Vec<_>>()
        .into();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{authority} resolves to no address"),
        ));
    }
    let mut id = [0u8; 16];
    let mut nonce = [0u8; holdwire_proto::wire::NONCE_LEN];
    getrandom::fill(&mut id).map_err(io::Error::other)?;
    getrandom::fill(&mut nonce).map_err(io::Error::other)?;
    let session = SessionId(id);
    let clock = Clock::new(StdInstant::now());
    let core = Client::new(
        options.protocol.clone(),
        options.endpoint(session),
        session,
        nonce,
        Instant::ZERO,
    );
    let (inbox, rx) = mpsc::sync_channel(INBOX);
    let shared = Arc::new(ClientShared {
        state: Mutex::new(ClientState {
            core,
            kick_pending: false,
            opened: false,
            failure: None,
            ended: false,
            owner_done: false,
            handles: 1,
            detached_at: None,
            read_shut: false,
            read_timeout: None,
            write_timeout: None,
        }),
        readable: Condvar::new(),
        writable: Condvar::new(),
        inbox: inbox.clone(),
        clock,
        server: crate::url_string(&options.server, true),
        proxy: options.proxy.as_ref().map(|p| crate::url_string(p, false)),
        connected: Arc::new(Mutex::new(None)),
    });
    let mut owner = Owner {
        shared: shared.clone(),
        rx,
        inbox,
        conns: BTreeMap::new(),
        next_gen: 0,
        addrs,
        connect_timeout: options.connect_timeout,
        buf: Vec::new(),
        tls: tls.clone(),
    };
    thread::Builder::new()
        .name(format!("holdwire-client-{session}"))
        .spawn(move || owner.run())?;
    shared.send_kick();

    let mut st = shared.lock()?;
    while !st.opened && !st.ended && !st.owner_done {
        st = shared.writable.wait(st).map_err(|_| poisoned())?;
    }
    let failure = match (&st.failure, st.opened) {
        (Some(e), _) => Some(io::Error::from(e.clone())),
        (None, false) => Some(poisoned()),
        (None, true) => None,
    };
    let failure = match (failure, &tls) {
        (Some(e), Some(tls)) => Some(tls.explain(e)),
        (failure, _) => failure,
    };
    drop(st);
    if let Some(e) = failure {
        // The session never opened: the handle goes away without lingering.
        release(&shared);
        return Err(e);
    }
    Ok(shared)
}

/// The owner thread's state: the connections and the inbox.
struct Owner {
    shared: Arc<ClientShared>,
    rx: Receiver<Inbox>,
    inbox: SyncSender<Inbox>,
    /// Slot -> (generation, connection).
    conns: BTreeMap<u64, (u64, Conn)>,
    next_gen: u64,
    addrs: Arc<[SocketAddr]>,
    connect_timeout: Duration,
    buf: Vec<u8>,
    /// For `https://` servers: how connections are set up.
    tls: Option<Arc<ClientTls>>,
}

impl Drop for Owner {
    /// Runs when the session is drained, and also if the owner panicked, so that no
    /// application thread waits for it forever.
    fn drop(&mut self) {
        for (_, (_, conn)) in std::mem::take(&mut self.conns) {
            conn.close();
        }
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.owner_done = true;
        drop(st);
        self.shared.readable.notify_all();
        self.shared.writable.notify_all();
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
            let Ok(mut st) = shared.lock() else {
                return;
            };
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
            // A TLS setup failure no retry can cure ends opening now; `connect` reports it.
            if !st.opened && self.tls.as_ref().is_some_and(|t| t.has_fatal_failure()) {
                st.core
                    .abort(now, AbortCode::APPLICATION, "TLS setup failed");
            }
            self.detached(&mut st, now);
            self.drain(&mut st, now);
            if st.core.is_drained() {
                // Dropping the owner closes the connections and tells the handles.
                return;
            }
            let core_deadline = st.core.poll_timeout().map(|t| self.shared.clock.to_std(t));
            let linger = st.detached_at.map(|at| at + DROP_LINGER);
            deadline = match (core_deadline, linger) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }

    fn feed(&mut self, st: &mut ClientState, now: Instant, input: Inbox) {
        match input {
            Inbox::Bytes(tag, bytes) => {
                if self.is_current(tag) {
                    st.core.handle_bytes(now, ConnId(tag.conn), &bytes);
                }
            }
            Inbox::Closed(tag) => {
                if self.is_current(tag) {
                    self.conns.remove(&tag.conn);
                    st.core.handle_closed(now, ConnId(tag.conn));
                }
            }
            Inbox::Sent(tag) => {
                if self.is_current(tag) {
                    st.core.handle_sent(now, ConnId(tag.conn));
                }
            }
            Inbox::Accepted(..) | Inbox::Kick => {}
        }
    }

    fn is_current(&self, tag: Tag) -> bool {
        self.conns
            .get(&tag.conn)
            .is_some_and(|(gen, _)| *gen == tag.gen)
    }

    /// Drains the core's outputs in the documented order.
    fn drain(&mut self, st: &mut ClientState, now: Instant) {
        loop {
            self.buf.clear();
            let Some(t) = st.core.poll_transmit(now, &mut self.buf) else {
                break;
            };
            let bytes = holdwire_proto::take_transmit(&mut self.buf, t.len);
            let slot = t.conn.0;
            if t.open || !self.conns.contains_key(&slot) {
                if let Some((_, old)) = self.conns.remove(&slot) {
                    old.close();
                }
                let gen = self.next_gen;
                self.next_gen += 1;
                let conn = Conn::connect(
                    self.addrs.clone(),
                    self.connect_timeout,
                    Tag { conn: slot, gen },
                    self.inbox.clone(),
                    self.shared.connected.clone(),
                    self.tls.clone(),
                );
                self.conns.insert(slot, (gen, conn));
            }
            if let Some((_, conn)) = self.conns.get(&slot) {
                conn.send(bytes, false);
            }
        }
        while let Some(c) = st.core.poll_close() {
            if let Some((_, conn)) = self.conns.remove(&c.0) {
                conn.close();
            }
        }
        let mut readable = false;
        let mut writable = false;
        while let Some(event) = st.core.poll_event() {
            match event {
                Event::Opened => {
                    st.opened = true;
                    writable = true;
                }
                Event::Readable => readable = true,
                Event::Writable => writable = true,
                Event::Closed => {
                    st.ended = true;
                    (readable, writable) = (true, true);
                }
                Event::Failed(e) => {
                    log!("session {} failed: {e}", st.core.session_id());
                    st.ended = true;
                    st.failure = Some(e);
                    (readable, writable) = (true, true);
                }
            }
        }
        if readable && st.read_shut {
            discard_unread(st);
        }
        if readable {
            self.shared.readable.notify_all();
        }
        if writable {
            self.shared.writable.notify_all();
        }
    }

    /// A dropped stream: abort on unread data or when it lingers too long.
    fn detached(&mut self, st: &mut ClientState, now: Instant) {
        let Some(at) = st.detached_at else { return };
        if st.core.is_ended() {
            return;
        }
        if st.core.buffered().1 > 0 {
            st.core.abort(
                now,
                AbortCode::APPLICATION,
                "stream dropped with unread data",
            );
        } else if StdInstant::now() >= at + DROP_LINGER {
            st.core.abort(
                now,
                AbortCode::TIMED_OUT,
                "stream dropped and the peer did not close",
            );
        }
    }
}

fn discard_unread(st: &mut ClientState) {
    while let Ok(Some(_)) = st.core.read_chunk(usize::MAX) {}
}

// ---- application side ----

pub(crate) fn read(shared: &ClientShared, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let mut st = shared.lock()?;
    let until = deadline_after(st.read_timeout);
    loop {
        if st.read_shut {
            return Ok(0);
        }
        match st.core.read(buf) {
            Ok(n) => {
                let kick = n > 0 && shared.kick(&mut st);
                drop(st);
                if kick {
                    shared.send_kick();
                }
                return Ok(n);
            }
            Err(ReadError::Failed(e)) => return Err(e.into()),
            Err(ReadError::Blocked) if st.owner_done => {
                return Err(io::ErrorKind::NotConnected.into());
            }
            Err(ReadError::Blocked) => {
                st = wait_until(&shared.readable, st, until)?;
            }
        }
    }
}

pub(crate) fn write(shared: &ClientShared, data: &[u8]) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    let mut st = shared.lock()?;
    let until = deadline_after(st.write_timeout);
    loop {
        match st.core.write(data) {
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
            Err(WriteError::Blocked) => {
                st = wait_until(&shared.writable, st, until)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Half-close (`finish`) and/or stop reading (incoming data is discarded from now on).
pub(crate) fn shutdown(shared: &ClientShared, write: bool, read: bool) -> io::Result<()> {
    let mut st = shared.lock()?;
    if write {
        st.core.finish();
    }
    if read {
        st.read_shut = true;
        discard_unread(&mut st);
        shared.readable.notify_all();
    }
    let kick = shared.kick(&mut st);
    drop(st);
    if kick {
        shared.send_kick();
    }
    Ok(())
}

pub(crate) fn abort(shared: &ClientShared) -> io::Result<()> {
    let mut st = shared.lock()?;
    let now = shared.now();
    st.core
        .abort(now, AbortCode::APPLICATION, "aborted by the application");
    let kick = shared.kick(&mut st);
    drop(st);
    if kick {
        shared.send_kick();
    }
    Ok(())
}

/// Finishes, discards input, and waits until the session has ended.
pub(crate) fn close(shared: &ClientShared) -> io::Result<()> {
    shutdown(shared, true, true)?;
    let mut st = shared.lock()?;
    let until = deadline_after(st.write_timeout);
    while !st.ended {
        if st.owner_done {
            return Err(io::ErrorKind::NotConnected.into());
        }
        st = wait_until(&shared.writable, st, until)?;
    }
    match &st.failure {
        Some(e) => Err(e.clone().into()),
        None => Ok(()),
    }
}

pub(crate) fn set_timeouts(
    shared: &ClientShared,
    read: Option<Option<Duration>>,
    write: Option<Option<Duration>>,
) -> io::Result<()> {
    let mut st = shared.lock()?;
    if let Some(t) = read {
        st.read_timeout = t;
    }
    if let Some(t) = write {
        st.write_timeout = t;
    }
    Ok(())
}

pub(crate) fn timeouts(shared: &ClientShared) -> io::Result<(Option<Duration>, Option<Duration>)> {
    let st = shared.lock()?;
    Ok((st.read_timeout, st.write_timeout))
}

pub(crate) fn session_id(shared: &ClientShared) -> Option<SessionId> {
    shared.lock().ok().map(|st| st.core.session_id())
}

pub(crate) fn stats(shared: &ClientShared) -> Option<Stats> {
    shared.lock().ok().map(|st| st.core.stats())
}

pub(crate) fn peer_addr(shared: &ClientShared) -> io::Result<SocketAddr> {
    shared
        .connected
        .lock()
        .map_err(|_| poisoned())?
        .ok_or_else(|| io::ErrorKind::NotConnected.into())
}

/// A new handle (`try_clone`).
pub(crate) fn retain(shared: &ClientShared) -> io::Result<()> {
    shared.lock()?.handles += 1;
    Ok(())
}

/// A handle went away; the last one finishes the session (or aborts it on unread data) and
/// leaves it to close in the background.
pub(crate) fn release(shared: &ClientShared) {
    let Ok(mut st) = shared.lock() else { return };
    st.handles = st.handles.saturating_sub(1);
    if st.handles > 0 {
        return;
    }
    st.detached_at = Some(StdInstant::now());
    if !st.core.is_ended() {
        if st.core.buffered().1 > 0 {
            let now = shared.now();
            st.core.abort(
                now,
                AbortCode::APPLICATION,
                "stream dropped with unread data",
            );
        } else {
            st.core.finish();
        }
    }
    let kick = shared.kick(&mut st);
    drop(st);
    if kick {
        shared.send_kick();
    }
}
