//! One TCP connection: a small task that writes what its owner queues and feeds what it reads
//! back to the owner's inbox.
//!
//! The owner (the task that holds the core) never awaits a socket. It queues each request or
//! response, whole, in the connection's [`Outbox`]; the connection task writes it with one
//! `write_all`, and between writes waits for the socket to become readable. Reads go through a
//! per-thread scratch buffer and are copied out at their exact length, so an idle connection
//! holds no buffer at all, only its task, its socket and this small outbox.
//!
//! Closing a connection is dropping its [`ConnHandle`]: that cancels the task, which drops the
//! socket. A response that must be written before closing (`close_after`) detaches the task
//! instead, and the task shuts the socket down once the outbox is empty, then lingers briefly
//! (reading and discarding) so that the peer can read that response before the close.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use smol::channel::Sender;
use smol::future::FutureExt as _;
use smol::io::AsyncWriteExt as _;
use smol::{Async, Task, Timer};

/// Largest chunk one read hands to the owner.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// Reads land here first, so that idle connections keep no buffer of their own.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// What an owner task receives: socket input from its connection tasks, new sockets from an
/// accept task, or a nudge from the application side.
pub(crate) enum Input {
    /// Bytes read on connection `key`.
    Bytes {
        /// The connection.
        key: u64,
        /// What was read, at its exact length.
        data: Vec<u8>,
    },
    /// A message was written completely on connection `key`.
    Sent {
        /// The connection.
        key: u64,
    },
    /// Connection `key` reached EOF, failed, or could not be opened.
    Closed {
        /// The connection.
        key: u64,
    },
    /// An accepted TCP connection (server side).
    Accepted(Box<(Async<TcpStream>, SocketAddr)>),
    /// An accepted TLS connection, handshake done (server side).
    AcceptedTls(Box<(crate::tls::ServerStream, SocketAddr)>),
    /// The application moved a deadline earlier: recompute the timer.
    Kick,
}

/// How a connection task gets its socket.
pub(crate) enum Connect {
    /// Already connected (accepted by a listener).
    Accepted(Async<TcpStream>),
    /// Dial `authority` (`host:port`), giving up after `timeout`.
    Dial {
        /// Where to connect.
        authority: String,
        /// Bound on resolving and connecting.
        timeout: Duration,
    },
    /// A TLS connection (see `tls`).
    Tls(crate::tls::TlsConnect),
}

#[derive(Default)]
struct OutState {
    queue: VecDeque<Vec<u8>>,
    close_after: bool,
    waker: Option<Waker>,
}

/// The queue between an owner and one connection task.
#[derive(Default)]
pub(crate) struct Outbox(Mutex<OutState>);

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutState> {
        // A panic while holding this lock leaves a consistent queue: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The owner's side of a connection: queue bytes, or drop to close.
pub(crate) struct ConnHandle {
    out: Arc<Outbox>,
    task: Option<Task<()>>,
}

impl ConnHandle {
    /// Starts a connection task reporting to `inbox` as `key`.
    pub(crate) fn spawn(connect: Connect, inbox: Sender<Input>, key: u64) -> Self {
        let out = Arc::new(Outbox::default());
        let task = smol::spawn(run(connect, out.clone(), inbox, key));
        ConnHandle {
            out,
            task: Some(task),
        }
    }

    /// Queues one whole HTTP message; with `close_after`, the connection closes once it is
    /// written.
    pub(crate) fn send(&self, bytes: Vec<u8>, close_after: bool) {
        let waker = {
            let mut o = self.out.lock();
            o.queue.push_back(bytes);
            o.close_after |= close_after;
            o.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Lets the task finish writing what is queued, then close; the handle goes away.
    pub(crate) fn detach(mut self) {
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}

pub(crate) enum Step {
    Write(Vec<u8>),
    Shutdown,
    Read(io::Result<Option<Vec<u8>>>),
}

/// The next queued message, or `Shutdown` once the queue is empty after a `close_after`.
pub(crate) fn next_outbound(out: &Outbox) -> impl Future<Output = Step> + '_ {
    poll_fn(move |cx| {
        let mut o = out.lock();
        if let Some(bytes) = o.queue.pop_front() {
            return Poll::Ready(Step::Write(bytes));
        }
        if o.close_after {
            return Poll::Ready(Step::Shutdown);
        }
        if !o.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            o.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    })
}

/// Reads what is available into the scratch buffer and copies it out (`None` at EOF).
fn read_now(socket: &TcpStream) -> io::Result<Option<Vec<u8>>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut socket = socket;
        match socket.read(&mut scratch[..])? {
            0 => Ok(None),
            n => Ok(Some(scratch[..n].to_vec())),
        }
    })
}

async fn run(connect: Connect, out: Arc<Outbox>, inbox: Sender<Input>, key: u64) {
    let socket = match connect {
        Connect::Accepted(socket) => socket,
        Connect::Tls(tls) => return crate::tls::run(tls, out, inbox, key).await,
        Connect::Dial { authority, timeout } => match dial(&authority, timeout).await {
            Ok(socket) => socket,
            Err(_) => {
                let _ = inbox.send(Input::Closed { key }).await;
                return;
            }
        },
    };
    let _ = socket.get_ref().set_nodelay(true);
    loop {
        // Writes first: a queued message never waits behind reads.
        let step = next_outbound(&out)
            .or(async { Step::Read(socket.read_with(read_now).await) })
            .await;
        match step {
            Step::Write(bytes) => {
                if (&socket).write_all(&bytes).await.is_err() {
                    break;
                }
                if inbox.send(Input::Sent { key }).await.is_err() {
                    return;
                }
            }
            Step::Shutdown => {
                let _ = socket.get_ref().shutdown(Shutdown::Write);
                linger(&socket).await;
                break;
            }
            Step::Read(Ok(Some(data))) => {
                if inbox.send(Input::Bytes { key, data }).await.is_err() {
                    return;
                }
            }
            Step::Read(Ok(None) | Err(_)) => break,
        }
    }
    let _ = inbox.send(Input::Closed { key }).await;
}

/// How long a connection closing after its last response keeps reading (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes discarded while lingering.
const LINGER_MAX_BYTES: usize = 16 * 1024 * 1024;

/// After the last response of a connection that closes (its write side already shut down):
/// reads and discards what the peer still sends, until its EOF, for at most [`LINGER`] and
/// [`LINGER_MAX_BYTES`]. Closing a socket with unread input resets the connection, and the
/// reset can destroy the response before the peer reads it: a client still sending a body
/// that was refused (`413`, `408`, `400`) would see a reset instead of the status. (nginx's
/// and Apache's "lingering close".)
async fn linger(socket: &Async<TcpStream>) {
    let drain = async {
        let mut discarded = 0usize;
        while discarded <= LINGER_MAX_BYTES {
            match socket.read_with(discard_now).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    drain
        .or(async {
            Timer::after(LINGER).await;
        })
        .await;
}

/// Reads what is available into the scratch buffer and forgets it; 0 at EOF.
fn discard_now(socket: &TcpStream) -> io::Result<usize> {
    SCRATCH.with(|scratch| {
        let mut socket = socket;
        socket.read(&mut scratch.borrow_mut()[..])
    })
}

/// Connects to `authority` (`host:port`, IPv6 in brackets) within `timeout`, trying each
/// resolved address in turn.
pub(crate) async fn dial(authority: &str, timeout: Duration) -> io::Result<Async<TcpStream>> {
    let attempt = async {
        let addrs = match authority.parse::<SocketAddr>() {
            Ok(addr) => vec![addr],
            Err(_) => smol::net::resolve(authority).await?,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
        for addr in addrs {
            match Async::<TcpStream>::connect(addr).await {
                Ok(socket) => {
                    let _ = socket.get_ref().set_nodelay(true);
                    return Ok(socket);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    attempt
        .or(async {
            Timer::after(timeout).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {authority} timed out"),
            ))
        })
        .await
}
