//! TLS with rustls (ring provider): `https://` client connections, directly or inside a
//! forward proxy's `CONNECT` tunnel, and TLS listeners.
//!
//! Each client connection slot opens its own TCP connection (to the proxy when there is one),
//! asks for the tunnel with the core's `CONNECT` request and reads the answer with the core's
//! parser, then runs the TLS handshake with the server URL's host as the name (SNI and
//! certificate check). Plain holdwire requests (origin form) go inside, over keep-alive, as on
//! plain HTTP. On a [`Listener`](crate::Listener) bound with TLS, each accepted connection does
//! its handshake in a task of its own within [`HANDSHAKE_TIMEOUT`], so a slow or failing client
//! holds up nobody; only then does the connection reach the core.
//!
//! Certificate verification always happens: there is no switch to turn it off. Use
//! [`client_config`] with extra roots for private CAs.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_io::{AsyncRead, AsyncWrite};
use holdwire_proto::http::{ConnectError, ConnectResponseParser, HttpLimits};
use holdwire_proto::ClientOptions;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use smol::channel::Sender;
use smol::future::FutureExt as _;
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};
use smol::{Async, Timer};

use crate::conn::{self, next_outbound, Input, Outbox, Step};

/// How long a TLS listener waits for a client's handshake; also bounds sending `close_notify`.
/// (A client's TCP connect, `CONNECT` and handshake are bounded by its `connect_timeout`.)
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes a listener runs at once; connections beyond this are closed unanswered.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Largest chunk one read hands to the owner (a TLS record holds at most 16 KiB).
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Reads land here first, so that idle connections keep no read buffer of their own.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// The crypto provider every configuration made here uses: rustls's `ring` provider.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// A client configuration trusting the operating system's root certificates
/// (rustls-native-certs) plus `extra_roots`, with ALPN `http/1.1`.
///
/// System certificates that cannot be parsed are skipped; an empty system store is not an
/// error (servers then need their CA in `extra_roots`). An extra root that is not a valid CA
/// certificate is an [`io::ErrorKind::InvalidInput`] error.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(native.certs);
    for (i, cert) in extra_roots.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| invalid(format!("extra root certificate #{}: {e}", i + 1)))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration [`Stream::connect`](crate::Stream::connect) uses for `https://` servers:
/// [`client_config`] with no extra roots, loaded once.
pub fn default_client_config() -> io::Result<Arc<rustls::ClientConfig>> {
    static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = DEFAULT.get() {
        return Ok(config.clone());
    }
    let config = client_config(&[])?;
    Ok(DEFAULT.get_or_init(|| config).clone())
}

/// Reads every certificate from the PEM file at `path` (a chain: the leaf first, or CA
/// certificates). No certificate in the file is an error.
pub fn load_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let describe = |e: rustls::pki_types::pem::Error| match e {
        rustls::pki_types::pem::Error::Io(e) => {
            io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        }
        e => invalid(format!("{}: bad PEM: {e}", path.display())),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(describe)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(describe)?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 RSA or SEC1 EC) from the PEM file at `path`.
pub fn load_private_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(e) => {
            io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        }
        rustls::pki_types::pem::Error::NoItemsFound => invalid(format!(
            "{}: no PEM private key (PKCS#8, RSA or EC) found",
            path.display()
        )),
        e => invalid(format!("{}: bad PEM: {e}", path.display())),
    })
}

/// A server configuration presenting `chain` (leaf first) with `key`, ALPN `http/1.1`, no
/// client certificates. A key that does not match the leaf, or is of an unsupported kind,
/// is an [`io::ErrorKind::InvalidInput`] error.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> io::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("certificate and key do not fit together: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] from a PEM certificate chain file and a PEM private key file.
pub fn server_config_from_pem(cert: &Path, key: &Path) -> io::Result<Arc<rustls::ServerConfig>> {
    let chain = load_certs(cert)?;
    let private_key = load_private_key(key)?;
    server_config(chain, private_key)
        .map_err(|e| invalid(format!("{} and {}: {e}", cert.display(), key.display())))
}

// ---------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------

/// A connection-setup failure, kept for [`Stream::connect`](crate::Stream::connect)'s error.
struct Failure {
    kind: io::ErrorKind,
    message: String,
}

/// What the connection tasks of one client session need to open TLS connections.
pub(crate) struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    /// Where TCP goes: the proxy's or the server's `host:port`.
    authority: String,
    /// The `CONNECT` request, when going through a proxy.
    tunnel: Option<Vec<u8>>,
    limits: HttpLimits,
    /// Bound on TCP connect, `CONNECT` and handshake together.
    timeout: Duration,
    /// The last setup failure.
    last_failure: Mutex<Option<Failure>>,
    /// Failures that no retry can cure (certificate rejected, proxy refuses us) end opening.
    fatal: Sender<io::Error>,
}

impl ClientTls {
    /// The TLS setup for a session with `options`, and where fatal setup failures arrive.
    pub(crate) fn new(
        options: &ClientOptions,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<(Arc<ClientTls>, smol::channel::Receiver<io::Error>)> {
        let server_name = ServerName::try_from(options.server.host.clone()).map_err(|e| {
            invalid(format!(
                "{:?} is not a valid TLS server name: {e}",
                options.server.host
            ))
        })?;
        let (fatal, fatal_rx) = smol::channel::bounded(1);
        let tls = ClientTls {
            config,
            server_name,
            authority: options.http_connect_authority(),
            tunnel: options.connect_tunnel_head(),
            limits: options.protocol.session.http.clone(),
            timeout: options.connect_timeout,
            last_failure: Mutex::new(None),
            fatal,
        };
        Ok((Arc::new(tls), fatal_rx))
    }

    /// TCP connect, `CONNECT` through the proxy if any, then the TLS handshake.
    async fn open(&self) -> io::Result<ClientStream> {
        let setup = async {
            let socket = conn::dial(&self.authority, self.timeout).await?;
            let mut tcp = Rewind {
                prefix: Vec::new(),
                inner: socket,
            };
            if let Some(head) = &self.tunnel {
                tcp.prefix = open_tunnel(&mut tcp.inner, head, &self.limits).await?;
            }
            let connector = futures_rustls::TlsConnector::from(self.config.clone());
            connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| self.describe_handshake_error(e))
        };
        within(self.timeout, "TCP connect and TLS handshake", setup).await
    }

    fn describe_handshake_error(&self, e: io::Error) -> io::Error {
        let host = self.server_name.to_str();
        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls @ rustls::Error::InvalidCertificate(cert)) => {
                let hint = match cert {
                    rustls::CertificateError::UnknownIssuer => {
                        "; add the CA that signed it to the trusted roots"
                    }
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. } => {
                        "; it is not valid for the host in the server URL"
                    }
                    _ => "",
                };
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    CertificateRejected(format!(
                        "TLS: the certificate of {host} was rejected ({tls}){hint}"
                    )),
                )
            }
            Some(tls) => io::Error::new(e.kind(), format!("TLS handshake with {host}: {tls}")),
            None => io::Error::new(e.kind(), format!("TLS handshake with {host}: {e}")),
        }
    }

    /// Keeps `e` for the session's error, and ends opening at once if no retry can cure it.
    fn report(&self, e: io::Error) {
        let fatal = is_fatal(&e);
        *crate::driver::lock(&self.last_failure) = Some(Failure {
            kind: e.kind(),
            message: e.to_string(),
        });
        if fatal {
            let _ = self.fatal.try_send(e);
        }
    }
}

/// The server's certificate failed verification.
#[derive(Debug)]
struct CertificateRejected(String);

impl std::fmt::Display for CertificateRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertificateRejected {}

/// A rejected certificate, or a proxy that refuses us (407, 403), fails the same way every time.
fn is_fatal(e: &io::Error) -> bool {
    let Some(inner) = e.get_ref() else {
        return false;
    };
    if let Some(c) = inner.downcast_ref::<ConnectError>() {
        return matches!(
            c,
            ConnectError::ProxyAuthenticationRequired | ConnectError::Refused { status: 403 }
        );
    }
    inner.is::<CertificateRejected>()
}

/// Adds the last setup failure to a session error from opening.
pub(crate) fn with_last_failure(e: io::Error, tls: &ClientTls) -> io::Error {
    match crate::driver::lock(&tls.last_failure).as_ref() {
        Some(f) => io::Error::new(
            if e.kind() == io::ErrorKind::TimedOut {
                f.kind
            } else {
                e.kind()
            },
            format!("{e}; last connection attempt: {}", f.message),
        ),
        None => e,
    }
}

/// Sends `head` (a `CONNECT` request) and reads the proxy's answer; returns the bytes that
/// followed a 2xx answer (the start of the tunnel).
async fn open_tunnel(
    socket: &mut Async<TcpStream>,
    head: &[u8],
    limits: &HttpLimits,
) -> io::Result<Vec<u8>> {
    socket.write_all(head).await?;
    let mut parser = ConnectResponseParser::new(limits.clone());
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err(parser.eof().into());
        }
        if let Some(rest) = parser.push(&buf[..n])? {
            return Ok(rest);
        }
    }
}

/// A socket whose first reads return `prefix` (bytes read past the proxy's answer).
pub(crate) struct Rewind<S> {
    prefix: Vec<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if !self.prefix.is_empty() {
            let n = buf.len().min(self.prefix.len());
            buf[..n].copy_from_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            if self.prefix.is_empty() {
                self.prefix = Vec::new();
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

type ClientStream = futures_rustls::client::TlsStream<Rewind<Async<TcpStream>>>;

/// A TLS connection accepted by a listener, handshake done.
pub(crate) type ServerStream = futures_rustls::server::TlsStream<Async<TcpStream>>;

/// How a TLS connection task gets its stream.
pub(crate) enum TlsConnect {
    /// Open one for a client session.
    Dial(Arc<ClientTls>),
    /// Accepted by a listener.
    Accepted(Box<ServerStream>),
}

/// A TLS connection task: like a plain one (see `conn`), over a TLS stream.
pub(crate) async fn run(connect: TlsConnect, out: Arc<Outbox>, inbox: Sender<Input>, key: u64) {
    match connect {
        TlsConnect::Accepted(stream) => pump(*stream, &out, &inbox, key).await,
        TlsConnect::Dial(tls) => match tls.open().await {
            Ok(stream) => pump(stream, &out, &inbox, key).await,
            Err(e) => tls.report(e),
        },
    }
    let _ = inbox.send(Input::Closed { key }).await;
}

/// Writes what the owner queues, each message whole, and feeds what is read back to it,
/// until the connection ends.
async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    out: &Outbox,
    inbox: &Sender<Input>,
    key: u64,
) {
    loop {
        // Writes first: a queued message never waits behind reads.
        let step = next_outbound(out)
            .or(async { Step::Read(read_chunk(&mut stream).await) })
            .await;
        match step {
            Step::Write(bytes) => {
                if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
                if inbox.send(Input::Sent { key }).await.is_err() {
                    return;
                }
            }
            Step::Shutdown => {
                // close_notify, then the TCP half-close.
                let _ = within(HANDSHAKE_TIMEOUT, "TLS close", stream.close()).await;
                return;
            }
            Step::Read(Ok(Some(data))) => {
                if inbox.send(Input::Bytes { key, data }).await.is_err() {
                    return;
                }
            }
            Step::Read(Ok(None) | Err(_)) => return,
        }
    }
}

/// Reads what is available through the scratch buffer and copies it out (`None` at EOF).
fn read_chunk<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> impl Future<Output = io::Result<Option<Vec<u8>>>> + '_ {
    poll_fn(move |cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) => Poll::Ready(Ok(None)),
                Poll::Ready(Ok(n)) => Poll::Ready(Ok(Some(scratch[..n].to_vec()))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
}

/// Runs `future`, failing with `TimedOut` after `timeout`.
async fn within<T>(
    timeout: Duration,
    what: &str,
    future: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future
        .or(async {
            Timer::after(timeout).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} timed out after {timeout:?}"),
            ))
        })
        .await
}

// ---------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------

/// A listener's TLS side: runs each accepted connection's handshake in its own task.
pub(crate) struct Acceptor {
    acceptor: futures_rustls::TlsAcceptor,
    /// Print failed handshakes to stderr (the listener's `log_refusals`).
    pub(crate) log: Arc<AtomicBool>,
    pending: Arc<AtomicUsize>,
}

impl Acceptor {
    pub(crate) fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Acceptor {
            acceptor: config.into(),
            log: Arc::default(),
            pending: Arc::default(),
        }
    }

    /// Starts the handshake of an accepted connection; once done, the connection goes to the
    /// owner's inbox. Failures and timeouts are logged (if asked) and close the connection.
    pub(crate) fn handshake(
        &self,
        socket: Async<TcpStream>,
        peer: SocketAddr,
        inbox: &Sender<Input>,
    ) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_HANDSHAKES {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            if self.log.load(Ordering::Relaxed) {
                tracing::warn!("too many TLS handshakes at once: closed {peer}");
            }
            return;
        }
        let _ = socket.get_ref().set_nodelay(true);
        let accept = self.acceptor.accept(socket);
        let log = self.log.clone();
        let pending = self.pending.clone();
        let inbox = inbox.clone();
        smol::spawn(async move {
            let result = within(HANDSHAKE_TIMEOUT, "TLS handshake", accept).await;
            pending.fetch_sub(1, Ordering::AcqRel);
            match result {
                Ok(stream) => {
                    let _ = inbox
                        .send(Input::AcceptedTls(Box::new((stream, peer))))
                        .await;
                }
                Err(e) => {
                    if log.load(Ordering::Relaxed) {
                        tracing::warn!("TLS handshake with {peer} failed: {e}");
                    }
                }
            }
        })
        .detach();
    }
}
