//! The client side: one owner task per session, holding a [`holdwire_proto::Client`].
//!
//! The core sits in a mutex shared by the owner task and the application's [`Stream`] handles.
//! The owner waits for socket input or the core's deadline, feeds it in and drains the outputs;
//! an application call (`read`, `write`, `close`, `abort`) runs the core command and drains the
//! outputs itself, under the same lock, and nudges the owner only when the core's deadline
//! moved earlier than the one the owner waits for. Each [`Transmit`](holdwire_proto::Transmit)
//! goes to the connection of its slot, a new one when it says `open`.
//!
//! [`Stream`]: crate::Stream

use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use holdwire_proto::{
    AbortCode, Client, ClientOptions, ConnId, Event, Instant, ReadError, SessionError, SessionId,
    Stats,
};
use smol::channel::{self, Receiver};

use crate::conn::{ConnHandle, Connect, Input};
use crate::driver::{self, earlier, lock, CoreClock, Kicker, Wake, BATCH};
use crate::tls::{ClientTls, TlsConnect};

/// Requests and socket chunks queued for one client owner before its readers wait.
const INBOX: usize = 16;

pub(crate) struct ClientShared {
    state: Mutex<ClientState>,
    kicker: Kicker,
    clock: CoreClock,
}

struct ClientState {
    core: Client,
    authority: String,
    connect_timeout: Duration,
    /// For `https://` servers: how connections are opened.
    tls: Option<Arc<ClientTls>>,
    /// The connection of each slot, with the key its task reports under.
    slots: Vec<Option<(u64, ConnHandle)>>,
    next_key: u64,
    buf: Vec<u8>,
    /// The deadline the owner task waits for.
    armed: Option<Instant>,
    opened: bool,
    outcome: Option<Result<(), SessionError>>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    open_waker: Option<Waker>,
    /// Every application handle is gone: data arriving now aborts the session, as a TCP
    /// socket closed with unread data resets the connection.
    orphan: bool,
}

pub(crate) fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

pub(crate) fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

impl ClientState {
    /// Drains the core's outputs in the documented order, until nothing is left.
    fn drain(&mut self, now: Instant, kicker: &Kicker) {
        loop {
            self.buf.clear();
            while let Some(t) = self.core.poll_transmit(now, &mut self.buf) {
                let bytes = holdwire_proto::take_transmit(&mut self.buf, t.len);
                let slot = usize::try_from(t.conn.0).unwrap_or(usize::MAX);
                if slot >= self.slots.len() {
                    self.slots.resize_with(slot.saturating_add(1), || None);
                }
                match &self.slots[slot] {
                    Some((_, conn)) if !t.open => conn.send(bytes, false),
                    _ => {
                        // A new connection for the slot; the old one (if any) is dropped,
                        // which closes it.
                        let key = self.next_key;
                        self.next_key += 1;
                        let connect = match &self.tls {
                            Some(tls) => Connect::Tls(TlsConnect::Dial(tls.clone())),
                            None => Connect::Dial {
                                authority: self.authority.clone(),
                                timeout: self.connect_timeout,
                            },
                        };
                        let conn = ConnHandle::spawn(connect, kicker.inbox().clone(), key);
                        conn.send(bytes, false);
                        self.slots[slot] = Some((key, conn));
                    }
                }
            }
            while let Some(conn) = self.core.poll_close() {
                if let Some(slot) = self.slot_mut(conn) {
                    *slot = None;
                }
            }
            let mut again = false;
            while let Some(event) = self.core.poll_event() {
                match event {
                    Event::Opened => {
                        self.opened = true;
                        wake(&mut self.open_waker);
                    }
                    Event::Readable => {
                        wake(&mut self.read_waker);
                        if self.orphan && !self.core.is_ended() && self.core.buffered().1 > 0 {
                            self.core
                                .abort(now, AbortCode::APPLICATION, "stream dropped unread");
                            again = true;
                        }
                    }
                    Event::Writable => wake(&mut self.write_waker),
                    Event::Closed => self.end(Ok(())),
                    Event::Failed(e) => self.end(Err(e)),
                }
            }
            if !again {
                return;
            }
        }
    }

    fn end(&mut self, outcome: Result<(), SessionError>) {
        self.outcome = Some(outcome);
        wake(&mut self.open_waker);
        wake(&mut self.read_waker);
        wake(&mut self.write_waker);
    }

    fn slot_mut(&mut self, conn: ConnId) -> Option<&mut Option<(u64, ConnHandle)>> {
        usize::try_from(conn.0)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
    }

    /// The slot whose current connection reports as `key`; stale keys (a replaced or closed
    /// connection) find none.
    fn slot_of(&self, key: u64) -> Option<ConnId> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|(k, _)| *k == key))
            .map(|i| ConnId(i as u64))
    }

    fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Bytes { key, data } => {
                if let Some(conn) = self.slot_of(key) {
                    self.core.handle_bytes(now, conn, &data);
                }
            }
            Input::Closed { key } => {
                if let Some(conn) = self.slot_of(key) {
                    if let Some(slot) = self.slot_mut(conn) {
                        *slot = None;
                    }
                    self.core.handle_closed(now, conn);
                }
            }
            Input::Sent { key } => {
                if let Some(conn) = self.slot_of(key) {
                    self.core.handle_sent(now, conn);
                }
            }
            Input::Accepted(_) | Input::AcceptedTls(_) | Input::Kick => {}
        }
    }
}

impl ClientShared {
    /// Creates the session's core and starts its owner task; with `tls`, its connections are
    /// TLS ones.
    pub(crate) fn start(options: &ClientOptions, tls: Option<Arc<ClientTls>>) -> Arc<ClientShared> {
        let mut id = [0u8; 16];
        driver::random(&mut id);
        let mut nonce = [0u8; 16];
        driver::random(&mut nonce);
        let session = SessionId(id);
        let clock = CoreClock::new();
        let core = Client::new(
            options.protocol.clone(),
            options.endpoint(session),
            session,
            nonce,
            clock.now(),
        );
        let (tx, rx) = channel::bounded(INBOX);
        let shared = Arc::new(ClientShared {
            state: Mutex::new(ClientState {
                core,
                authority: options.http_connect_authority(),
                connect_timeout: options.connect_timeout,
                tls,
                slots: Vec::new(),
                next_key: 0,
                buf: Vec::new(),
                armed: None,
                opened: false,
                outcome: None,
                read_waker: None,
                write_waker: None,
                open_waker: None,
                orphan: false,
            }),
            kicker: Kicker::new(tx),
            clock,
        });
        smol::spawn(drive(shared.clone(), rx)).detach();
        shared
    }

    /// Runs after every application command: drain, and re-arm the owner if needed.
    fn after_command(&self, st: &mut ClientState) {
        st.drain(self.clock.now(), &self.kicker);
        if earlier(st.core.poll_timeout(), st.armed) {
            self.kicker.kick();
        }
    }

    /// Ready once the server confirmed the session, or with the reason it failed.
    pub(crate) fn poll_opened(&self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        let mut st = lock(&self.state);
        if st.opened {
            return Poll::Ready(Ok(()));
        }
        match &st.outcome {
            Some(Err(e)) => Poll::Ready(Err(e.clone().into())),
            Some(Ok(())) => Poll::Ready(Ok(())),
            None => {
                set_waker(&mut st.open_waker, cx);
                Poll::Pending
            }
        }
    }

    pub(crate) fn poll_read(&self, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut st = lock(&self.state);
        match st.core.read(buf) {
            Ok(n) => {
                if n > 0 {
                    self.after_command(&mut st);
                }
                Poll::Ready(Ok(n))
            }
            Err(ReadError::Blocked) => {
                set_waker(&mut st.read_waker, cx);
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    pub(crate) fn poll_write(&self, cx: &Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut st = lock(&self.state);
        match st.core.write(data) {
            Ok(n) => {
                if n > 0 {
                    self.after_command(&mut st);
                }
                Poll::Ready(Ok(n))
            }
            Err(holdwire_proto::WriteError::Blocked) => {
                set_waker(&mut st.write_waker, cx);
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    /// Half-close: the server reads EOF after all the data written so far.
    pub(crate) fn close(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.core.finish();
        self.after_command(&mut st);
        match &st.outcome {
            Some(Err(e)) => Err(e.clone().into()),
            _ => Ok(()),
        }
    }

    pub(crate) fn abort(&self, reason: &str) {
        let mut st = lock(&self.state);
        let now = self.clock.now();
        st.core.abort(now, AbortCode::APPLICATION, reason);
        self.after_command(&mut st);
    }

    /// The last application handle is gone: finish the stream, or abort if data would be
    /// lost unread (or the session was never handed out: `connect` was cancelled).
    pub(crate) fn release(&self) {
        let mut st = lock(&self.state);
        if st.core.is_ended() {
            return;
        }
        if !st.opened || st.core.buffered().1 > 0 {
            let now = self.clock.now();
            let reason = if st.opened {
                "stream dropped unread"
            } else {
                "connect cancelled"
            };
            st.core.abort(now, AbortCode::APPLICATION, reason);
        } else {
            st.core.finish();
            st.orphan = true;
        }
        self.after_command(&mut st);
    }

    pub(crate) fn session_id(&self) -> SessionId {
        lock(&self.state).core.session_id()
    }

    pub(crate) fn stats(&self) -> Stats {
        lock(&self.state).core.stats()
    }
}

/// The owner task: waits for input or the deadline, feeds the core, drains its outputs.
async fn drive(shared: Arc<ClientShared>, rx: Receiver<Input>) {
    let mut now = shared.clock.now();
    loop {
        let deadline = {
            let mut st = lock(&shared.state);
            shared.kicker.reset();
            st.drain(now, &shared.kicker);
            if st.core.is_drained() {
                st.slots.clear();
                return;
            }
            let deadline = st.core.poll_timeout();
            st.armed = deadline;
            deadline
        };
        let wake = driver::wait(&rx, deadline, &shared.clock).await;
        let first = match wake {
            Wake::Input(input) => Some(input),
            Wake::Deadline => {
                // Let connection tasks that are ready run first, so that responses already
                // received are fed in before the deadline declares them lost.
                smol::future::yield_now().await;
                None
            }
            Wake::Closed => return,
        };
        now = shared.clock.now();
        let mut st = lock(&shared.state);
        for input in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            .take(BATCH)
        {
            st.handle(now, input);
        }
        if st.core.poll_timeout().is_some_and(|t| t <= now) {
            st.core.handle_timeout(now);
        }
    }
}
