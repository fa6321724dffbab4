//! # holdwire-std: holdwire over blocking `std::net`
//!
//! holdwire carries a reliable byte stream over plain HTTP/1.1 request/response exchanges
//! (long polling), so that code written for [`TcpStream`] works through firewalls that only
//! let web traffic out, and through HTTP proxies. This crate is the blocking driver: it moves
//! bytes and deadlines between sockets, threads and the sans-IO core
//! [`holdwire_proto`], which makes every protocol decision.
//!
//! - [`Stream`] is the `TcpStream` of holdwire: [`Read`] + [`Write`], half-close with
//!   [`Stream::shutdown`], read and write timeouts, [`Stream::try_clone`] so one thread reads
//!   while another writes, [`Stream::peer_addr`].
//! - [`Listener`] is the `TcpListener`: [`Listener::bind`], [`Listener::accept`],
//!   [`Listener::incoming`], [`Listener::local_addr`]. It serves many sessions at once,
//!   routed by their session ids (128 bits from the OS CSPRNG), and with
//!   [`Listener::bind_with_direct`] also plain TCP on a second port, handed out as the same
//!   [`Stream`] type.
//! - [`Stream::connect`] takes a [`ClientOptions`]: the server URL, the proxy (explicit, with
//!   basic auth from its userinfo, or from `http_proxy`/`NO_PROXY` as curl reads them), a
//!   direct TCP address tried first, and every protocol knob.
//!
//! `https://` servers work with [`Stream::connect`] (the system's root certificates) or
//! [`Stream::connect_with_tls`] (your [`rustls::ClientConfig`], e.g. from
//! [`tls::client_config`] with a private CA), directly or through a forward proxy's `CONNECT`
//! tunnel; see [`tls`]. `https://` proxies (TLS to the proxy itself) are refused with
//! [`io::ErrorKind::Unsupported`], and the [`Listener`] serves plain HTTP only.
//!
//! ## Example
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::net::Shutdown;
//! use holdwire_std::{ClientOptions, Listener, ServerConfig, Stream};
//!
//! # fn main() -> std::io::Result<()> {
//! // Server: an echo service at http://127.0.0.1:8080/tunnel.
//! let config = ServerConfig { path_prefix: "/tunnel".into(), ..ServerConfig::default() };
//! let listener = Listener::bind("127.0.0.1:8080", config)?;
//! std::thread::spawn(move || {
//!     for stream in listener.incoming() {
//!         let mut stream = stream.unwrap();
//!         std::thread::spawn(move || {
//!             let mut reader = stream.try_clone().unwrap();
//!             std::io::copy(&mut reader, &mut stream).unwrap();
//!             stream.shutdown(Shutdown::Write).unwrap();
//!         });
//!     }
//! });
//!
//! // Client: through the proxy named by http_proxy, if any, as curl would.
//! let options = ClientOptions::new("http://127.0.0.1:8080/tunnel")
//!     .and_then(|o| o.proxy_from_env(|k| std::env::var(k).ok()))
//!     .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
//! let mut stream = Stream::connect(options)?;
//! stream.write_all(b"hello")?;
//! stream.shutdown(Shutdown::Write)?;
//! let mut echoed = String::new();
//! stream.read_to_string(&mut echoed)?;
//! assert_eq!(echoed, "hello");
//! # Ok(())
//! # }
//! ```
//!
//! ## Threads and costs
//!
//! Each client session has one owner thread holding the core; each listener has one owner
//! thread for all its sessions and one acceptor thread per port. Every HTTP connection has a
//! reader and a writer thread, so the owner never blocks on a socket. Nothing polls: an idle
//! session sleeps until the core's next deadline (one held request renewed every
//! `max_wait`). Memory is bounded by the core's buffers plus fixed-size queues.
//!
//! ## Errors
//!
//! Session failures come from the core as [`io::Error`]s: [`io::ErrorKind::ConnectionReset`]
//! when the peer aborted, [`io::ErrorKind::TimedOut`] when the session failed (peer or path
//! gone for longer than the configured bounds), [`io::ErrorKind::ConnectionAborted`] after a
//! local abort, and a clean close reads as EOF (`Ok(0)`). A read or write that exceeds the
//! timeout set with [`Stream::set_read_timeout`] / [`Stream::set_write_timeout`] fails with
//! [`io::ErrorKind::WouldBlock`], as `TcpStream` does on Unix, and the session goes on.
//!
//! ## Dropping
//!
//! As with a `TcpStream`, dropping the last handle of a [`Stream`] closes it: the stream is
//! finished and the session keeps running in the background until the peer closes too. If
//! received data was left unread, or arrives later, the session is aborted instead (the
//! peer sees [`io::ErrorKind::ConnectionReset`]), as TCP resets such a socket; a session
//! that has not closed [`DROP_LINGER`] after the drop is aborted. Background work dies with
//! the process: use [`Stream::close`] to wait for a clean close before exiting.
//!
//! ## Logging
//!
//! Set `HOLDWIRE_LOG` (to anything) to have refused requests, failed sessions and
//! connection errors printed to stderr. A plain environment switch keeps the crate free of
//! a logging dependency; the core's counters ([`Stream::stats`], [`Listener::stats`]) are
//! there for programs.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use holdwire_proto::{direct, Token};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, MutexGuard, OnceLock};
use std::time::{Duration, Instant as StdInstant};

pub use holdwire_proto as proto;
pub use holdwire_proto::{
    ClientConfig, ClientOptions, ServerConfig, ServerStats, SessionConfig, SessionId, Stats,
};
/// The TLS library used for `https://`, re-exported so that configurations match its version.
pub use rustls;

mod client;
mod conn;
mod server;
pub mod tls;

use client::ClientShared;
use server::{Pending, ServerShared};

/// How long a dropped [`Stream`] may take to close cleanly in the background before it is
/// aborted (TCP keeps an orphaned socket for `tcp_fin_timeout`, 60 s, in the same way).
pub const DROP_LINGER: Duration = Duration::from_secs(30);

// ---- small shared helpers ----

fn log_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("HOLDWIRE_LOG").is_some())
}

/// `eprintln!` when `HOLDWIRE_LOG` is set.
macro_rules! log {
    ($($arg:tt)*) => {
        if $crate::log_enabled() {
            eprintln!("holdwire: {}", format_args!($($arg)*));
        }
    };
}
pub(crate) use log;

fn poisoned() -> io::Error {
    io::Error::other("holdwire: a driver thread panicked")
}

fn deadline_after(timeout: Option<Duration>) -> Option<StdInstant> {
    timeout.map(|t| StdInstant::now() + t)
}

/// Waits on `cv` until notified or `until`; `WouldBlock` once `until` has passed.
fn wait_until<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    until: Option<StdInstant>,
) -> io::Result<MutexGuard<'a, T>> {
    match until {
        None => cv.wait(guard).map_err(|_| poisoned()),
        Some(at) => {
            let left = at.saturating_duration_since(StdInstant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "operation timed out",
                ));
            }
            cv.wait_timeout(guard, left)
                .map(|(g, _)| g)
                .map_err(|_| poisoned())
        }
    }
}

/// A URL as text, without credentials; with or without its path.
fn url_string(url: &proto::url::Url, with_path: bool) -> String {
    let scheme = match url.scheme {
        proto::url::Scheme::Http => "http",
        proto::url::Scheme::Https => "https",
    };
    let path = if with_path { url.path.as_str() } else { "" };
    format!("{scheme}://{}{path}", url.authority())
}

fn unsupported_https() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "https:// proxies are not supported by holdwire-std",
    )
}

// ---- Stream ----

/// Where a [`Stream`] leads.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A plain TCP connection (the direct path), to or from this address.
    Tcp(SocketAddr),
    /// The client side of an HTTP session.
    HttpServer {
        /// The server URL (without credentials).
        url: String,
        /// The forward proxy, `http://host:port` (without credentials), if any.
        proxy: Option<String>,
    },
    /// The server side of an HTTP session: the TCP peer of the request that opened it (a
    /// proxy's address when the session comes through one).
    HttpClient(SocketAddr),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "tcp://{addr}"),
            Peer::HttpServer { url, proxy: None } => f.write_str(url),
            Peer::HttpServer {
                url,
                proxy: Some(proxy),
            } => write!(f, "{url} via {proxy}"),
            Peer::HttpClient(addr) => write!(f, "http client {addr}"),
        }
    }
}

/// A reliable, bidirectional byte stream: a holdwire session over HTTP, or a plain TCP
/// connection when the direct path was taken. Use it like a [`TcpStream`].
///
/// `Read` and `Write` are also implemented for `&Stream`, and [`Stream::try_clone`] gives
/// another handle on the same stream, so that one thread can read while another writes.
/// Timeouts and shutdowns apply to the stream, not to one handle, as with sockets.
pub struct Stream {
    inner: Inner,
}

enum Inner {
    Tcp(TcpStream),
    Client(Arc<ClientShared>),
    Server(Arc<ServerShared>, SessionId),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Stream");
        if let Some(id) = self.session_id() {
            d.field("session", &id);
        }
        if let Ok(peer) = self.peer() {
            d.field("peer", &peer);
        }
        d.finish_non_exhaustive()
    }
}

impl Stream {
    /// Opens a stream as `options` say: plain TCP to `options.direct` if it is set and
    /// answers within `options.direct_timeout`, otherwise a holdwire session over HTTP to
    /// `options.server` (through `options.proxy` if set). Returns once the server has
    /// confirmed the session; fails after the core's own bounds (`silence_timeout`,
    /// `max_failures`) if it cannot be reached.
    ///
    /// An `https://` server is verified against the system's root certificates
    /// ([`tls::default_client_config`]); see [`connect_with_tls`](Self::connect_with_tls).
    /// `https://` proxies are refused with [`io::ErrorKind::Unsupported`].
    pub fn connect(options: ClientOptions) -> io::Result<Stream> {
        let tls = match options.server.scheme {
            proto::url::Scheme::Https => Some(tls::default_client_config()?),
            proto::url::Scheme::Http => None,
        };
        Stream::connect_inner(options, tls)
    }

    /// As [`connect`](Self::connect), with `tls` for an `https://` server (ignored for
    /// `http://`). Each HTTP connection opens its own TCP connection (through the proxy's
    /// `CONNECT` tunnel when there is a proxy) and TLS session, named by the server URL's
    /// host, and keeps it alive for further requests. A certificate that fails verification,
    /// or a proxy answering `CONNECT` with 407 or 403, fails opening at once with an error
    /// saying so; other failures are retried until the core gives up, and its error names the
    /// last one.
    pub fn connect_with_tls(
        options: ClientOptions,
        tls: Arc<rustls::ClientConfig>,
    ) -> io::Result<Stream> {
        Stream::connect_inner(options, Some(tls))
    }

    fn connect_inner(
        options: ClientOptions,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> io::Result<Stream> {
        if options
            .proxy
            .as_ref()
            .is_some_and(|p| p.scheme == proto::url::Scheme::Https)
        {
            return Err(unsupported_https());
        }
        let tls = match tls {
            Some(config) if options.server.scheme == proto::url::Scheme::Https => {
                Some(tls::ClientTls::new(&options, config)?)
            }
            _ => None,
        };
        if let Some(direct) = &options.direct {
            let token = options.protocol.token.as_ref();
            match connect_direct(direct, options.direct_timeout, token) {
                Ok(sock) => {
                    return Ok(Stream {
                        inner: Inner::Tcp(sock),
                    })
                }
                // A holdwire server that refuses our token will refuse it over HTTP too.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(e),
                Err(e) => log!("direct connection to {direct} failed ({e}); using HTTP"),
            }
        }
        let shared = client::connect(options, tls)?;
        Ok(Stream {
            inner: Inner::Client(shared),
        })
    }

    /// Connects to the server at `url` (`http://host:port/path`) with default knobs, through
    /// the proxy that `http_proxy`/`HTTP_PROXY` and `no_proxy`/`NO_PROXY` name, as curl does.
    pub fn connect_url(url: &str) -> io::Result<Stream> {
        let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        let options = ClientOptions::new(url)
            .map_err(invalid)?
            .proxy_from_env(|k| std::env::var(k).ok())
            .map_err(invalid)?;
        Stream::connect(options)
    }

    /// Shuts down the write half (finish: the peer reads EOF after all data), the read half
    /// (reads return EOF at once and incoming data is discarded), or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let (write, read) = match how {
            Shutdown::Write => (true, false),
            Shutdown::Read => (false, true),
            Shutdown::Both => (true, true),
        };
        match &self.inner {
            Inner::Tcp(s) => s.shutdown(how),
            Inner::Client(c) => client::shutdown(c, write, read),
            Inner::Server(s, id) => server::shutdown(s, *id, write, read),
        }
    }

    /// Aborts the stream: both ends fail at once ([`io::ErrorKind::ConnectionReset`] at the
    /// peer, [`io::ErrorKind::ConnectionAborted`] here). Data not yet delivered is lost. A
    /// plain TCP stream is shut down both ways (std has no portable reset).
    pub fn abort(&self) -> io::Result<()> {
        match &self.inner {
            Inner::Tcp(s) => s.shutdown(Shutdown::Both),
            Inner::Client(c) => client::abort(c),
            Inner::Server(s, id) => server::abort(s, *id),
        }
    }

    /// Finishes the stream, discards further input, and waits until the session has closed
    /// (the peer finished its side too and everything was acknowledged), or failed. Honours
    /// the write timeout. A plain TCP stream is shut down both ways.
    pub fn close(self) -> io::Result<()> {
        match &self.inner {
            Inner::Tcp(s) => s.shutdown(Shutdown::Both),
            Inner::Client(c) => client::close(c),
            Inner::Server(s, id) => server::close(s, *id),
        }
    }

    /// Sets the read timeout: a `read` that waits longer fails with
    /// [`io::ErrorKind::WouldBlock`]. `None` waits forever. A zero duration is an error, as
    /// for `TcpStream`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        match &self.inner {
            Inner::Tcp(s) => s.set_read_timeout(timeout),
            Inner::Client(c) => client::set_timeouts(c, Some(timeout), None),
            Inner::Server(s, id) => server::set_timeouts(s, *id, Some(timeout), None),
        }
    }

    /// Sets the write timeout: a `write` that waits longer for room in the send buffer fails
    /// with [`io::ErrorKind::WouldBlock`]. `None` waits forever.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        match &self.inner {
            Inner::Tcp(s) => s.set_write_timeout(timeout),
            Inner::Client(c) => client::set_timeouts(c, None, Some(timeout)),
            Inner::Server(s, id) => server::set_timeouts(s, *id, None, Some(timeout)),
        }
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        match &self.inner {
            Inner::Tcp(s) => s.read_timeout(),
            Inner::Client(c) => client::timeouts(c).map(|t| t.0),
            Inner::Server(s, id) => server::timeouts(s, *id).map(|t| t.0),
        }
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        match &self.inner {
            Inner::Tcp(s) => s.write_timeout(),
            Inner::Client(c) => client::timeouts(c).map(|t| t.1),
            Inner::Server(s, id) => server::timeouts(s, *id).map(|t| t.1),
        }
    }

    /// Another handle on the same stream. The stream closes when the last handle is dropped.
    pub fn try_clone(&self) -> io::Result<Stream> {
        let inner = match &self.inner {
            Inner::Tcp(s) => Inner::Tcp(s.try_clone()?),
            Inner::Client(c) => {
                client::retain(c)?;
                Inner::Client(c.clone())
            }
            Inner::Server(s, id) => {
                server::retain(s, *id)?;
                Inner::Server(s.clone(), *id)
            }
        };
        Ok(Stream { inner })
    }

    /// The socket address of the other end of the current connection: the TCP peer for a
    /// plain stream; for a client session the proxy or server address last connected to;
    /// for a server session the address of the connection that opened it.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Inner::Tcp(s) => s.peer_addr(),
            Inner::Client(c) => client::peer_addr(c),
            Inner::Server(s, id) => server::peer(s, *id),
        }
    }

    /// Where this stream leads (see [`Peer`]).
    pub fn peer(&self) -> io::Result<Peer> {
        match &self.inner {
            Inner::Tcp(s) => s.peer_addr().map(Peer::Tcp),
            Inner::Client(c) => Ok(Peer::HttpServer {
                url: c.server.clone(),
                proxy: c.proxy.clone(),
            }),
            Inner::Server(s, id) => server::peer(s, *id).map(Peer::HttpClient),
        }
    }

    /// True for a plain TCP stream (the direct path), false for a holdwire session.
    pub fn is_direct(&self) -> bool {
        matches!(self.inner, Inner::Tcp(_))
    }

    /// The holdwire session id, or `None` for a plain TCP stream.
    pub fn session_id(&self) -> Option<SessionId> {
        match &self.inner {
            Inner::Tcp(_) => None,
            Inner::Client(c) => client::session_id(c),
            Inner::Server(_, id) => Some(*id),
        }
    }

    /// The session's counters (exchanges, resends, bytes), or `None` for a plain TCP stream
    /// or a server session already forgotten by the core.
    pub fn stats(&self) -> Option<Stats> {
        match &self.inner {
            Inner::Tcp(_) => None,
            Inner::Client(c) => client::stats(c),
            Inner::Server(s, id) => server::session_stats(s, *id),
        }
    }

    fn read_impl(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.inner {
            Inner::Tcp(s) => (&*s).read(buf),
            Inner::Client(c) => client::read(c, buf),
            Inner::Server(s, id) => server::read(s, *id, buf),
        }
    }

    fn write_impl(&self, buf: &[u8]) -> io::Result<usize> {
        match &self.inner {
            Inner::Tcp(s) => (&*s).write(buf),
            Inner::Client(c) => client::write(c, buf),
            Inner::Server(s, id) => server::write(s, *id, buf),
        }
    }

    fn flush_impl(&self) -> io::Result<()> {
        match &self.inner {
            Inner::Tcp(s) => (&*s).flush(),
            // Written bytes are handed to the core, which sends them as soon as it may.
            Inner::Client(_) | Inner::Server(..) => Ok(()),
        }
    }
}

fn check_timeout(timeout: Option<Duration>) -> io::Result<()> {
    if timeout == Some(Duration::ZERO) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        ));
    }
    Ok(())
}

/// Plain TCP to `addr` (all of its addresses) and the direct handshake, within `timeout` in
/// total. A far end that is not a holdwire server is an error of kind `InvalidData`; a token
/// mismatch one of kind `PermissionDenied`.
fn connect_direct(addr: &str, timeout: Duration, token: Option<&Token>) -> io::Result<TcpStream> {
    let until = StdInstant::now() + timeout;
    let sock = connect_direct_tcp(addr, timeout)?;
    let left = until.saturating_duration_since(StdInstant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "direct connect timed out",
        ));
    }
    direct_client_handshake(&sock, left, token)?;
    Ok(sock)
}

fn direct_client_handshake(
    sock: &TcpStream,
    timeout: Duration,
    token: Option<&Token>,
) -> io::Result<()> {
    let mut sock = sock;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(io::Error::other)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.write_all(&direct::client_hello(&nonce, token.is_some()))?;
    let mut hello = [0u8; direct::SERVER_HELLO_LEN];
    sock.read_exact(&mut hello).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            io::Error::new(io::ErrorKind::InvalidData, direct::DirectError::NotHoldwire)
        }
        _ => e,
    })?;
    let server_nonce = direct::check_server_hello(token, &nonce, &hello).map_err(|e| {
        let kind = match e {
            direct::DirectError::NotHoldwire | direct::DirectError::Refused => {
                io::ErrorKind::InvalidData
            }
            _ => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, e)
    })?;
    if let Some(token) = token {
        sock.write_all(&direct::client_proof(token, &nonce, &server_nonce))?;
    }
    sock.set_read_timeout(None)
}

/// Plain TCP to `addr`, all of its addresses within `timeout` in total.
fn connect_direct_tcp(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let until = StdInstant::now() + timeout;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
    for a in addr.to_socket_addrs()? {
        let left = until.saturating_duration_since(StdInstant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "direct connect timed out",
            ));
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(sock) => {
                sock.set_nodelay(true)?;
                return Ok(sock);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_impl(buf)
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_impl(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_impl()
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_impl()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        match &self.inner {
            Inner::Tcp(_) => {}
            Inner::Client(c) => client::release(c),
            Inner::Server(s, id) => server::release(s, *id),
        }
    }
}

// ---- Listener ----

/// A holdwire server endpoint: the `TcpListener` of holdwire.
///
/// It serves every session on one HTTP port (sessions are routed by the id in the request
/// path, under `ServerConfig::path_prefix`) and, with [`Listener::bind_with_direct`], plain
/// TCP on a second port. Both kinds come out of [`Listener::accept`] as [`Stream`]s.
///
/// Dropping the listener stops handing out streams: later sessions are refused (aborted),
/// the direct port closes, and the HTTP port keeps serving the sessions already accepted
/// until they end.
pub struct Listener {
    shared: Arc<ServerShared>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.shared.local)
            .field("direct_addr", &self.shared.direct_local)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Serves holdwire over HTTP on `addr`.
    pub fn bind(addr: impl ToSocketAddrs, config: ServerConfig) -> io::Result<Listener> {
        let http = TcpListener::bind(addr)?;
        Ok(Listener {
            shared: server::start(http, None, config)?,
        })
    }

    /// Serves holdwire over HTTP on `http` and plain TCP on `direct` (for clients that try
    /// the direct path first); both are handed out by [`Listener::accept`].
    pub fn bind_with_direct(
        http: impl ToSocketAddrs,
        direct: impl ToSocketAddrs,
        config: ServerConfig,
    ) -> io::Result<Listener> {
        let http = TcpListener::bind(http)?;
        let direct = TcpListener::bind(direct)?;
        Ok(Listener {
            shared: server::start(http, Some(direct), config)?,
        })
    }

    /// Waits for the next stream: a new session (once its first request arrived) or a
    /// direct TCP connection. Returns it with the peer's address (for a session, the TCP
    /// peer of its first request: a proxy's address when it came through one).
    pub fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        self.accept_inner(None)
    }

    /// Like [`Listener::accept`], but fails with [`io::ErrorKind::WouldBlock`] when nothing
    /// arrives within `timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<(Stream, SocketAddr)> {
        self.accept_inner(Some(timeout))
    }

    fn accept_inner(&self, timeout: Option<Duration>) -> io::Result<(Stream, SocketAddr)> {
        match server::accept(&self.shared, timeout)? {
            Pending::Http(id, addr) => Ok((
                Stream {
                    inner: Inner::Server(self.shared.clone(), id),
                },
                addr,
            )),
            Pending::Tcp(sock, addr) => Ok((
                Stream {
                    inner: Inner::Tcp(sock),
                },
                addr,
            )),
        }
    }

    /// An endless iterator over accepted streams, like `TcpListener::incoming`.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The HTTP port's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.shared.local)
    }

    /// The direct TCP port's address, if there is one.
    pub fn direct_addr(&self) -> Option<SocketAddr> {
        self.shared.direct_local
    }

    /// The endpoint's counters.
    pub fn stats(&self) -> io::Result<ServerStats> {
        server::stats(&self.shared).map(|(s, _)| s)
    }

    /// Sessions alive in the core (accepted or not, not yet ended and forgotten).
    pub fn session_count(&self) -> io::Result<usize> {
        server::stats(&self.shared).map(|(_, n)| n)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        server::close_listener(&self.shared);
    }
}

/// The iterator returned by [`Listener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a Listener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<Stream>;
    fn next(&mut self) -> Option<io::Result<Stream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_can_be_shared_between_threads() {
        send_sync::<Stream>();
        send_sync::<Listener>();
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        let url = proto::url::Url::parse("http://user:pw@Proxy.example:3128/x/").unwrap();
        assert_eq!(url_string(&url, false), "http://proxy.example:3128");
        assert_eq!(url_string(&url, true), "http://proxy.example:3128/x");
        let v6 = proto::url::Url::parse("http://[::1]/").unwrap();
        assert_eq!(url_string(&v6, true), "http://[::1]:80/");
    }

    #[test]
    fn zero_timeouts_are_refused() {
        assert!(check_timeout(Some(Duration::ZERO)).is_err());
        assert!(check_timeout(None).is_ok());
    }
}
