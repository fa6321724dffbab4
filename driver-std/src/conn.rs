//! One TCP connection of a client slot or of the server: a reader thread and a writer thread.
//!
//! # Theory of operation
//!
//! The owner thread (the one that holds the core) must never block on a socket, or two owners
//! writing to each other through full buffers would deadlock. So each connection has:
//! - a **reader thread** that reads into a fixed buffer and forwards each chunk to the owner's
//!   bounded inbox (it blocks there when the owner is behind: memory stays bounded), then
//!   reports the close exactly once;
//! - a **writer thread** that takes whole buffers from the owner (each one HTTP request or
//!   response, written with one `write_all`), so the owner only queues. On the client side it
//!   first opens the connection (`connect_timeout` per address), so connecting does not block
//!   the owner either.
//!
//! The writer queue itself is not bounded by count: the core bounds it (a client slot carries
//! one request at a time; a server connection one response per request). To keep a peer that
//! sends requests without reading our responses from growing it, the reader stops reading
//! while more than [`READ_GATE`] bytes wait to be written on the same connection: the same
//! backpressure TCP applies.
//!
//! Closing is always done by shutting the socket down, which wakes both threads; the reader
//! then reports `Closed` (a connection that never connected reports it from the writer).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use crate::log;

/// Bytes read from a socket per chunk forwarded to the owner.
const READ_CHUNK: usize = 64 * 1024;
/// The reader pauses while more than this many bytes wait to be written on its connection.
const READ_GATE: usize = 256 * 1024;
/// After a response marked "close after", how long the connection may stay open for the
/// peer to read it and close its side, before it is shut down for good (nginx's
/// `lingering_timeout` idea: closing with unread input would reset the connection and could
/// destroy the response in flight).
const LINGER: Duration = Duration::from_secs(2);
/// Stack size of the per-connection threads (their buffers live on the heap).
pub(crate) const THREAD_STACK: usize = 256 * 1024;

/// Names one physical connection in the owner's inbox: the core's connection or slot id,
/// and a generation that tells a slot's successive connections apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tag {
    pub(crate) conn: u64,
    pub(crate) gen: u64,
}

/// What the owner thread waits for.
#[derive(Debug)]
pub(crate) enum Inbox {
    /// Bytes read from a connection.
    Bytes(Tag, Vec<u8>),
    /// The connection ended (EOF, error, or the connection attempt failed).
    Closed(Tag),
    /// A request was written completely (client connections).
    Sent(Tag),
    /// A TCP connection was accepted (server).
    Accepted(TcpStream, SocketAddr),
    /// The application did something: drain the core.
    Kick,
}

/// Waits for the owner's next input until `deadline` (forever without one). `Ok(None)` means
/// the deadline passed; `Err` that every sender is gone.
pub(crate) fn recv_until(
    rx: &Receiver<Inbox>,
    deadline: Option<StdInstant>,
) -> Result<Option<Inbox>, ()> {
    match deadline {
        Some(at) => match rx.recv_timeout(at.saturating_duration_since(StdInstant::now())) {
            Ok(m) => Ok(Some(m)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
        },
        None => rx.recv().map(Some).map_err(|_| ()),
    }
}

#[derive(Debug)]
struct State {
    /// The socket once connected, kept to shut it down from the owner.
    sock: Option<TcpStream>,
    /// The owner closed the connection (or a write failed): stop everything.
    closed: bool,
    /// Bytes queued to the writer and not yet written.
    unwritten: usize,
    /// The reader thread finished.
    reader_done: bool,
    /// Nobody wants this connection's input any more (a response closed it).
    discard_input: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a connection thread panicked; the state stays usable for
        // shutting the socket down, which is all that is left to do.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shutdown(&self) {
        let mut st = self.lock();
        st.closed = true;
        if let Some(sock) = &st.sock {
            let _ = sock.shutdown(Shutdown::Both);
        }
        self.cv.notify_all();
    }
}

enum WriteCmd {
    Data { bytes: Vec<u8>, close_after: bool },
}

/// The owner's handle on one connection. Dropping it lets queued writes finish but queues
/// no more; use [`Conn::close`] to cut the connection at once.
#[derive(Debug)]
pub(crate) struct Conn {
    shared: Arc<Shared>,
    writer: Sender<WriteCmd>,
}

impl std::fmt::Debug for WriteCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteCmd::Data { bytes, close_after } => f
                .debug_struct("Data")
                .field("len", &bytes.len())
                .field("close_after", close_after)
                .finish(),
        }
    }
}

impl Conn {
    fn new() -> (Conn, Receiver<WriteCmd>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                sock: None,
                closed: false,
                unwritten: 0,
                reader_done: false,
                discard_input: false,
            }),
            cv: Condvar::new(),
        });
        let (writer, rx) = mpsc::channel();
        (Conn { shared, writer }, rx)
    }

    /// Opens a client connection to the first of `addrs` that answers within `timeout`
    /// each, in a new writer thread; bytes and the close go to `inbox` under `tag`.
    /// `connected` records the address reached.
    pub(crate) fn connect(
        addrs: Arc<[SocketAddr]>,
        timeout: Duration,
        tag: Tag,
        inbox: SyncSender<Inbox>,
        connected: Arc<Mutex<Option<SocketAddr>>>,
        tls: Option<Arc<crate::tls::ClientTls>>,
    ) -> Conn {
        let (conn, rx) = Conn::new();
        let shared = conn.shared.clone();
        let fallback = inbox.clone();
        let spawned = thread::Builder::new()
            .name("holdwire-conn".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let Some(sock) = connect_any(&addrs, timeout, &shared) else {
                    let _ = inbox.send(Inbox::Closed(tag));
                    return;
                };
                if let Ok(addr) = sock.peer_addr() {
                    *connected.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
                }
                if let Some(tls) = tls {
                    // CONNECT tunnel and handshake here, in this thread, then TLS halves.
                    let Some((reader, writer)) = tls.establish(&sock) else {
                        shared.shutdown();
                        let _ = inbox.send(Inbox::Closed(tag));
                        return;
                    };
                    if spawn_reader(&shared, reader, tag, inbox.clone()).is_err() {
                        let _ = inbox.send(Inbox::Closed(tag));
                        return;
                    }
                    write_loop(&shared, writer, &sock, rx, Some((tag, inbox)));
                    return;
                }
                if start_reader(&shared, &sock, tag, inbox.clone()).is_err() {
                    let _ = inbox.send(Inbox::Closed(tag));
                    return;
                }
                write_loop(&shared, &sock, &sock, rx, Some((tag, inbox)));
            });
        if spawned.is_err() {
            // No thread: the owner learns of the failure like any failed connect, through
            // its inbox, from a thread that will not block it (the inbox may be full).
            let _ = thread::Builder::new()
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    let _ = fallback.send(Inbox::Closed(tag));
                });
        }
        conn
    }

    /// Starts the threads of an accepted server connection.
    pub(crate) fn accepted(
        sock: TcpStream,
        tag: Tag,
        inbox: SyncSender<Inbox>,
    ) -> io::Result<Conn> {
        let (conn, rx) = Conn::new();
        conn.shared.lock().sock = Some(sock.try_clone()?);
        start_reader(&conn.shared, &sock, tag, inbox)?;
        let shared = conn.shared.clone();
        let spawned = thread::Builder::new()
            .name("holdwire-write".into())
            .stack_size(THREAD_STACK)
            .spawn(move || write_loop(&shared, &sock, &sock, rx, None));
        if let Err(e) = spawned {
            conn.close();
            return Err(e);
        }
        Ok(conn)
    }

    /// Queues one whole request or response. With `close_after`, the connection is shut
    /// down once it is written (after a short linger for the peer to read it).
    pub(crate) fn send(&self, bytes: Vec<u8>, close_after: bool) {
        self.shared.lock().unwritten += bytes.len();
        // A send error means the writer is gone (the connection failed); its reader
        // reports the close.
        let _ = self.writer.send(WriteCmd::Data { bytes, close_after });
    }

    /// Cuts the connection now: both threads wake and end, the reader reports the close.
    pub(crate) fn close(&self) {
        self.shared.shutdown();
    }
}

fn connect_any(addrs: &[SocketAddr], timeout: Duration, shared: &Shared) -> Option<TcpStream> {
    for addr in addrs {
        if shared.lock().closed {
            return None;
        }
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(sock) => {
                let _ = sock.set_nodelay(true);
                let mut st = shared.lock();
                if st.closed {
                    return None;
                }
                st.sock = Some(sock.try_clone().ok()?);
                return Some(sock);
            }
            Err(e) => log!("connect to {addr} failed: {e}"),
        }
    }
    None
}

fn start_reader(
    shared: &Arc<Shared>,
    sock: &TcpStream,
    tag: Tag,
    inbox: SyncSender<Inbox>,
) -> io::Result<()> {
    spawn_reader(shared, sock.try_clone()?, tag, inbox)
}

/// Starts the reader thread on `source` (the socket, or the reading half of a TLS connection).
fn spawn_reader(
    shared: &Arc<Shared>,
    source: impl Read + Send + 'static,
    tag: Tag,
    inbox: SyncSender<Inbox>,
) -> io::Result<()> {
    let shared = shared.clone();
    thread::Builder::new()
        .name("holdwire-read".into())
        .stack_size(THREAD_STACK)
        .spawn(move || read_loop(&shared, source, tag, inbox))?;
    Ok(())
}

fn read_loop(shared: &Shared, mut sock: impl Read, tag: Tag, inbox: SyncSender<Inbox>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        {
            let mut st = shared.lock();
            while st.unwritten > READ_GATE && !st.closed {
                st = shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.closed {
                break;
            }
        }
        let n = match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if shared.lock().discard_input {
            continue;
        }
        if inbox.send(Inbox::Bytes(tag, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    {
        let mut st = shared.lock();
        st.reader_done = true;
        shared.cv.notify_all();
    }
    let _ = inbox.send(Inbox::Closed(tag));
}

/// Writes what the owner queues to `sink` (the socket, or the writing half of a TLS
/// connection over `sock`). With `sent`, reports each completed write (the core times the
/// answers a request triggers from when it has left).
fn write_loop(
    shared: &Shared,
    mut sink: impl Write,
    sock: &TcpStream,
    rx: Receiver<WriteCmd>,
    sent: Option<(Tag, SyncSender<Inbox>)>,
) {
    // Ends when the owner drops its handle (and everything queued is written).
    while let Ok(WriteCmd::Data { bytes, close_after }) = rx.recv() {
        let result = sink.write_all(&bytes);
        if let (Ok(()), Some((tag, inbox))) = (&result, &sent) {
            let _ = inbox.send(Inbox::Sent(*tag));
        }
        {
            let mut st = shared.lock();
            st.unwritten = st.unwritten.saturating_sub(bytes.len());
            shared.cv.notify_all();
        }
        if let Err(e) = result {
            log!("write failed: {e}");
            shared.shutdown();
            return;
        }
        if close_after {
            linger_close(shared, sock);
            return;
        }
    }
}

/// Sends FIN, lets the peer read the response and close its side (input is discarded),
/// then shuts the socket down for good, at the latest after [`LINGER`].
fn linger_close(shared: &Shared, sock: &TcpStream) {
    let _ = sock.shutdown(Shutdown::Write);
    let until = StdInstant::now() + LINGER;
    let mut st = shared.lock();
    st.discard_input = true;
    while !st.reader_done && !st.closed {
        let left = until.saturating_duration_since(StdInstant::now());
        if left.is_zero() {
            break;
        }
        st = shared
            .cv
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    drop(st);
    shared.shutdown();
}
