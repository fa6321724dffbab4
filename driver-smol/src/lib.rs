//! # holdwire-smol: holdwire for async Rust, on `smol`
//!
//! holdwire carries a reliable byte stream over plain HTTP/1.1 request/response exchanges (long
//! polling), so that code written for `async_net::TcpStream` works through firewalls and HTTP
//! proxies. This crate binds the sans-IO core [`holdwire_proto`] to `async-io` sockets and
//! timers. It moves bytes and deadlines between sockets and the core and makes no protocol
//! decision of its own: what to send, when, on which connection, and when a session has failed
//! are all the core's.
//!
//! - [`Stream`] implements [`futures_io::AsyncRead`] and [`futures_io::AsyncWrite`], like
//!   `async_net::TcpStream`: `close()` is a half-close (the peer reads EOF after the data), it is
//!   `Clone` and can be [`split`](Stream::split) so that one task reads while another writes.
//! - [`Stream::connect`] opens a client session with [`ClientOptions`]: the server URL, a proxy
//!   (explicit, or from the environment as curl does, with basic auth), an optional raw TCP
//!   address tried first, and every protocol knob.
//! - [`Listener`] serves many sessions on one HTTP port (optionally also raw TCP on a second
//!   port) and hands each out as a [`Stream`].
//!
//! ```no_run
//! use holdwire_smol::{ClientOptions, Listener, ServerConfig, Stream};
//! use smol::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # fn main() -> std::io::Result<()> {
//! smol::block_on(async {
//!     // Server: echo every session.
//!     let listener = Listener::bind("127.0.0.1:8080", ServerConfig::default()).await?;
//!     smol::spawn(async move {
//!         while let Ok((stream, _peer)) = listener.accept().await {
//!             smol::spawn(async move {
//!                 let (reader, mut writer) = stream.split();
//!                 smol::io::copy(reader, &mut writer).await?;
//!                 writer.close().await
//!             })
//!             .detach();
//!         }
//!     })
//!     .detach();
//!
//!     // Client: through the proxy named by http_proxy/HTTP_PROXY, if any.
//!     let options = ClientOptions::new("http://127.0.0.1:8080/")
//!         .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
//!         .proxy_from_env(|k| std::env::var(k).ok())
//!         .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
//!     let mut stream = Stream::connect(options).await?;
//!     stream.write_all(b"hello").await?;
//!     stream.close().await?; // half-close: the server reads EOF
//!     let mut echoed = Vec::new();
//!     stream.read_to_end(&mut echoed).await?;
//!     assert_eq!(echoed, b"hello");
//!     Ok(())
//! })
//! # }
//! ```
//!
//! ## Tasks and executors
//! Each client session has one owner task holding its [`holdwire_proto::Client`]; a listener has
//! one owner task holding its [`holdwire_proto::Server`] and an accept task. Every TCP
//! connection has a small task that writes each HTTP message the core produced with one
//! `write_all` and feeds what it reads back to the owner through a bounded channel. These tasks
//! run on `smol`'s global executor (its own threads; `SMOL_THREADS`, default 1), so the
//! application may drive [`Stream`]s from `smol::block_on` or any executor that can run
//! `async-io` futures. No task polls in a loop: an idle session waits on its sockets and one
//! timer at the core's next deadline.
//!
//! The application side calls the core directly under the owner's lock (`read`, `write`,
//! `finish`, `abort`) and drains its outputs, so a write completes exactly when the core took
//! the bytes (backpressure is the core's send buffer) and data moves without a task hop.
//!
//! ## Errors
//! Failures map to [`std::io::Error`] through the core's `From` impls: an aborted session reads
//! and writes `ConnectionReset`, a failed one `TimedOut`, a refused one `ConnectionRefused` or
//! `PermissionDenied`; a clean close reads EOF. A write after `close` is `BrokenPipe`.
//!
//! ## Dropping a stream
//! When the last clone of a session [`Stream`] is dropped, the session is finished (as a TCP
//! socket sends FIN on close) and keeps running until the peer finishes too, so written data is
//! delivered. If received data is left unread, or data arrives afterwards, the session is
//! aborted instead (as TCP resets a socket closed with unread data).
//!
//! ## TLS
//! `https://` server URLs work with [`Stream::connect`] (the system's root certificates) or
//! [`Stream::connect_with_tls`] (your [`rustls::ClientConfig`], e.g. from
//! [`tls::client_config`] with a private CA). Through a forward proxy each connection first
//! opens the proxy's `CONNECT` tunnel. [`Listener::bind_tls`] serves HTTPS. See [`tls`].
//!
//! ## Scope
//! `https://` proxies (TLS to the proxy itself) are not supported: [`Stream::connect`]
//! returns [`io::ErrorKind::Unsupported`]. The direct path is plain TCP with no holdwire
//! framing (and no TLS).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod conn;
mod direct;
mod driver;
pub mod relay;
mod server;
pub mod tls;

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};
use holdwire_proto::url::Scheme;
use smol::io::AsyncWriteExt as _;

pub use holdwire_proto as proto;
pub use holdwire_proto::{ClientConfig, ClientOptions, ServerConfig, SessionId, Stats};
/// The TLS library used for `https://`, re-exported so that configurations match its version.
pub use rustls;
pub use server::{Incoming, Listener};

use client::ClientShared;
use server::ServerSession;

/// A client session handle; the last clone's drop releases the session.
struct ClientToken(Arc<ClientShared>);

impl Drop for ClientToken {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[derive(Clone)]
enum Inner {
    Direct(Arc<smol::Async<std::net::TcpStream>>),
    Client(Arc<ClientToken>),
    Server(Arc<ServerSession>),
}

/// A reliable byte stream: a holdwire session over HTTP (client or server side), or a raw TCP
/// connection when the direct path was taken. Clones share the stream.
///
/// Reading and writing go through `&Stream` too, so one task may read while another writes.
/// Each direction remembers one waiting task: two tasks reading (or two writing) the same
/// stream at once may leave one of them unwoken.
#[derive(Clone)]
pub struct Stream {
    inner: Inner,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Stream");
        match &self.inner {
            Inner::Direct(tcp) => d.field("direct", &tcp.get_ref().peer_addr().ok()),
            Inner::Client(t) => d.field("client_session", &t.0.session_id()),
            Inner::Server(s) => d.field("server_session", &s.id()),
        };
        d.finish()
    }
}

/// Opens a client session; the same as [`Stream::connect`].
pub async fn connect(options: ClientOptions) -> io::Result<Stream> {
    Stream::connect(options).await
}

impl Stream {
    /// Connects to the server `options` names and returns once the server confirmed the
    /// session.
    ///
    /// With [`ClientOptions::direct`] set, raw TCP to that address is tried first, within
    /// `direct_timeout`; on failure the session goes over HTTP, each connection to the proxy
    /// (if any) or the server opened within `connect_timeout`. How long opening may take
    /// before it fails is the core's decision (its failure count and silence timeout).
    ///
    /// An `https://` server is verified against the system's root certificates
    /// ([`tls::default_client_config`]); see [`connect_with_tls`](Self::connect_with_tls).
    /// `https://` proxies give [`io::ErrorKind::Unsupported`].
    pub async fn connect(options: ClientOptions) -> io::Result<Stream> {
        let tls = match options.server.scheme {
            Scheme::Https => Some(tls::default_client_config()?),
            Scheme::Http => None,
        };
        Self::connect_inner(options, tls).await
    }

    /// As [`connect`](Self::connect), with `tls` for an `https://` server (ignored for
    /// `http://`). Each HTTP connection of the session opens its own TCP connection (through
    /// the proxy's `CONNECT` tunnel when there is a proxy) and TLS session, named by the
    /// server URL's host; requests then use keep-alive as on plain HTTP.
    ///
    /// A certificate that fails verification, or a proxy that answers `CONNECT` with 407 or
    /// 403, fails opening at once ([`io::ErrorKind::InvalidData`],
    /// [`io::ErrorKind::PermissionDenied`], [`io::ErrorKind::ConnectionRefused`]); other
    /// connection failures are retried until the core gives up, and its error then names the
    /// last one.
    pub async fn connect_with_tls(
        options: ClientOptions,
        tls: Arc<rustls::ClientConfig>,
    ) -> io::Result<Stream> {
        Self::connect_inner(options, Some(tls)).await
    }

    async fn connect_inner(
        options: ClientOptions,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> io::Result<Stream> {
        if options
            .proxy
            .as_ref()
            .is_some_and(|p| p.scheme == Scheme::Https)
        {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "https:// proxies are not supported by holdwire-smol",
            ));
        }
        let tls = match tls {
            Some(config) if options.server.scheme == Scheme::Https => {
                Some(tls::ClientTls::new(&options, config)?)
            }
            _ => None,
        };
        if let Some(addr) = &options.direct {
            let token = options.protocol.token.as_ref();
            let attempt = direct::within(options.direct_timeout, async {
                let socket = conn::dial(addr, options.direct_timeout).await?;
                let mut tcp = smol::net::TcpStream::from(socket);
                direct::client(&mut tcp, token).await?;
                Ok(tcp)
            });
            match attempt.await {
                Ok(tcp) => return Ok(Stream::from_tcp(tcp)),
                // A holdwire server that refuses our token would refuse it over HTTP too.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(e),
                Err(_) => {}
            }
        }
        let Some((tls, fatal)) = tls else {
            let token = Arc::new(ClientToken(ClientShared::start(&options, None)));
            poll_fn(|cx| token.0.poll_opened(cx)).await?;
            return Ok(Stream {
                inner: Inner::Client(token),
            });
        };
        let token = Arc::new(ClientToken(ClientShared::start(
            &options,
            Some(tls.clone()),
        )));
        let opened = poll_fn(|cx| token.0.poll_opened(cx));
        // A failure no retry can cure ends opening at once (dropping `token` aborts it).
        let opened = async { opened.await.map_err(|e| tls::with_last_failure(e, &tls)) };
        let failed = async {
            match fatal.recv().await {
                Ok(e) => Err(e),
                Err(_) => std::future::pending().await,
            }
        };
        smol::future::or(opened, failed).await?;
        Ok(Stream {
            inner: Inner::Client(token),
        })
    }

    /// Wraps a raw TCP connection (the direct path) as a `Stream`.
    pub fn from_tcp(tcp: smol::net::TcpStream) -> Stream {
        Stream {
            inner: Inner::Direct(tcp.into()),
        }
    }

    pub(crate) fn server(session: ServerSession) -> Stream {
        Stream {
            inner: Inner::Server(Arc::new(session)),
        }
    }

    /// Whether this is a raw TCP connection (the direct path) rather than a session.
    pub fn is_direct(&self) -> bool {
        matches!(self.inner, Inner::Direct(_))
    }

    /// The session id, for a session.
    pub fn session_id(&self) -> Option<SessionId> {
        match &self.inner {
            Inner::Direct(_) => None,
            Inner::Client(t) => Some(t.0.session_id()),
            Inner::Server(s) => Some(s.id()),
        }
    }

    /// The TCP peer: of the raw connection, or, on the server side, of the connection that
    /// opened the session (a reverse proxy's address when there is one). A client session has
    /// no single peer ([`io::ErrorKind::Unsupported`]).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Inner::Direct(tcp) => tcp.get_ref().peer_addr(),
            Inner::Client(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a client session may use several connections, possibly through a proxy",
            )),
            Inner::Server(s) => Ok(s.peer()),
        }
    }

    /// The session's counters from the core (`None` for raw TCP, or once the server forgot
    /// the session).
    pub fn stats(&self) -> Option<Stats> {
        match &self.inner {
            Inner::Direct(_) => None,
            Inner::Client(t) => Some(t.0.stats()),
            Inner::Server(s) => s.shared().stats(s.id()),
        }
    }

    /// Requests the server holds for this session right now (server side only), for
    /// monitoring.
    pub fn held_requests(&self) -> Option<usize> {
        match &self.inner {
            Inner::Server(s) => Some(s.shared().held_requests(s.id())),
            _ => None,
        }
    }

    /// Aborts the session: the peer's reads and writes fail with `ConnectionReset`, and so do
    /// this side's. For raw TCP, shuts down both directions.
    pub fn abort(&self, reason: &str) {
        match &self.inner {
            Inner::Direct(tcp) => {
                let _ = tcp.get_ref().shutdown(std::net::Shutdown::Both);
            }
            Inner::Client(t) => t.0.abort(reason),
            Inner::Server(s) => s.shared().abort(s.id(), reason),
        }
    }

    /// Splits into a read half and a write half that can move to different tasks.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        (ReadHalf(self.clone()), WriteHalf(self))
    }
}

impl AsyncRead for &Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match &self.inner {
            Inner::Direct(tcp) => Pin::new(&mut &**tcp).poll_read(cx, buf),
            Inner::Client(t) => t.0.poll_read(cx, buf),
            Inner::Server(s) => s.shared().poll_read(s.id(), cx, buf),
        }
    }
}

impl AsyncWrite for &Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &self.inner {
            Inner::Direct(tcp) => Pin::new(&mut &**tcp).poll_write(cx, buf),
            Inner::Client(t) => t.0.poll_write(cx, buf),
            Inner::Server(s) => s.shared().poll_write(s.id(), cx, buf),
        }
    }

    /// Data is handed to the core as it is written; there is nothing to flush.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.inner {
            Inner::Direct(tcp) => Pin::new(&mut &**tcp).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Half-close: finishes this side's stream; the peer reads EOF after all the data.
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.inner {
            Inner::Direct(tcp) => Poll::Ready(tcp.get_ref().shutdown(std::net::Shutdown::Write)),
            Inner::Client(t) => Poll::Ready(t.0.close()),
            Inner::Server(s) => Poll::Ready(s.shared().close(s.id())),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_close(cx)
    }
}

/// The reading half of a [`Stream`], from [`Stream::split`].
#[derive(Debug)]
pub struct ReadHalf(Stream);

/// The writing half of a [`Stream`], from [`Stream::split`]; `close()` is the half-close.
#[derive(Debug)]
pub struct WriteHalf(Stream);

impl ReadHalf {
    /// The stream both halves share.
    pub fn stream(&self) -> &Stream {
        &self.0
    }
}

impl WriteHalf {
    /// The stream both halves share.
    pub fn stream(&self) -> &Stream {
        &self.0
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &self.0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &self.0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &self.0).poll_close(cx)
    }
}

/// Copies `a` to `b` and `b` to `a` at once, half-closing each destination when its source
/// reaches EOF (what a port forwarder does with a local TCP connection and a [`Stream`]).
/// Returns the bytes copied each way, or the first error.
pub async fn copy_bidirectional<A, B>(a: A, b: B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Clone + Unpin,
    B: AsyncRead + AsyncWrite + Clone + Unpin,
{
    let (a_reader, mut a_writer) = (a.clone(), a);
    let (b_reader, mut b_writer) = (b.clone(), b);
    let a_to_b = async move {
        let n = smol::io::copy(a_reader, &mut b_writer).await?;
        b_writer.close().await?;
        Ok(n)
    };
    let b_to_a = async move {
        let n = smol::io::copy(b_reader, &mut a_writer).await?;
        a_writer.close().await?;
        Ok(n)
    };
    smol::future::try_zip(a_to_b, b_to_a).await
}
