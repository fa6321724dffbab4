//! `https://` client connections with rustls (ring provider), for the reader-thread and
//! writer-thread model of `conn`.
//!
//! # Theory of operation
//!
//! The connection's writer thread opens TCP, asks the proxy for a `CONNECT` tunnel if there is
//! one (request and answer from the core), and completes the TLS handshake, all blocking with
//! the connect timeout on the socket. Then the one `rustls::ClientConnection` is shared by the
//! two threads under a mutex that is never held across socket IO:
//! - the reader blocks on the raw socket without the lock, then feeds what arrived to rustls
//!   and takes the plaintext out under it;
//! - every write of TLS records (the writer's data, or what rustls wants to send after a read)
//!   happens under a second lock that owns the write side of the socket, and takes the records
//!   out of rustls while holding it, so records reach the socket in the order they were made.
//!
//! Certificate verification always happens (the server URL's host is the name checked).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use holdwire_proto::http::{ConnectError, ConnectResponseParser, HttpLimits};
use holdwire_proto::ClientOptions;
use rustls::pki_types::{CertificateDer, ServerName};

/// Largest TLS record on the wire (16 KiB of plaintext plus the record overhead).
const RECORD: usize = 16 * 1024 + 2048;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent across a panic: keep using them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client configuration trusting the operating system's root certificates
/// (rustls-native-certs) plus `extra_roots`, with the `ring` provider and ALPN `http/1.1`.
/// Unparsable system certificates are skipped; an invalid extra root is an
/// [`io::ErrorKind::InvalidInput`] error.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> io::Result<Arc<rustls::ClientConfig>> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let mut roots = rustls::RootCertStore::empty();
    let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for (i, cert) in extra_roots.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| invalid(format!("extra root certificate #{}: {e}", i + 1)))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`client_config`] without extra roots, loaded once: what
/// [`Stream::connect`](crate::Stream::connect) uses for `https://` servers.
pub fn default_client_config() -> io::Result<Arc<rustls::ClientConfig>> {
    static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = DEFAULT.get() {
        return Ok(config.clone());
    }
    let config = client_config(&[])?;
    Ok(DEFAULT.get_or_init(|| config).clone())
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

/// What the connections of one client session need to open TLS connections, and the setup
/// failure that ends opening.
pub(crate) struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    tunnel: Option<Vec<u8>>,
    limits: HttpLimits,
    timeout: Duration,
    /// The last setup failure, and whether no retry can cure it.
    failure: Mutex<Option<(io::Error, bool)>>,
}

impl ClientTls {
    pub(crate) fn new(
        options: &ClientOptions,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<Arc<ClientTls>> {
        let server_name = ServerName::try_from(options.server.host.clone()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{:?} is not a valid TLS server name: {e}",
                    options.server.host
                ),
            )
        })?;
        Ok(Arc::new(ClientTls {
            config,
            server_name,
            tunnel: options.connect_tunnel_head(),
            limits: options.protocol.session.http.clone(),
            timeout: options.connect_timeout,
            failure: Mutex::new(None),
        }))
    }

    /// A failure no retry can cure happened (a rejected certificate, a proxy refusing us).
    pub(crate) fn has_fatal_failure(&self) -> bool {
        lock(&self.failure)
            .as_ref()
            .is_some_and(|(_, fatal)| *fatal)
    }

    /// The error to report for a session that did not open: the fatal setup failure itself,
    /// or `e` naming the last setup failure.
    pub(crate) fn explain(&self, e: io::Error) -> io::Error {
        match lock(&self.failure).take() {
            Some((f, true)) => f,
            Some((f, false)) => io::Error::new(
                if e.kind() == io::ErrorKind::TimedOut {
                    f.kind()
                } else {
                    e.kind()
                },
                format!("{e}; last connection attempt: {f}"),
            ),
            None => e,
        }
    }

    fn report(&self, e: io::Error) {
        let fatal = match e.get_ref() {
            Some(inner) => {
                inner.is::<CertificateRejected>()
                    || inner.downcast_ref::<ConnectError>().is_some_and(|c| {
                        matches!(
                            c,
                            ConnectError::ProxyAuthenticationRequired
                                | ConnectError::Refused { status: 403 }
                        )
                    })
            }
            None => false,
        };
        crate::log!("TLS connection setup failed: {e}");
        let mut failure = lock(&self.failure);
        // A fatal failure stays until it is reported.
        if !failure.as_ref().is_some_and(|(_, f)| *f) {
            *failure = Some((e, fatal));
        }
    }

    /// On a connected socket: the `CONNECT` tunnel if any, then the TLS handshake. Failures
    /// are kept for [`explain`](Self::explain).
    pub(crate) fn establish(&self, sock: &TcpStream) -> Option<(TlsReader, TlsWriter)> {
        match self.try_establish(sock) {
            Ok(halves) => Some(halves),
            Err(e) => {
                self.report(e);
                None
            }
        }
    }

    fn try_establish(&self, sock: &TcpStream) -> io::Result<(TlsReader, TlsWriter)> {
        sock.set_read_timeout(Some(self.timeout))?;
        sock.set_write_timeout(Some(self.timeout))?;
        let mut pending = Vec::new();
        if let Some(head) = &self.tunnel {
            pending = open_tunnel(sock, head, &self.limits)?;
        }
        let mut conn = rustls::ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(io::Error::other)?;
        let mut reader = sock;
        let mut writer = sock;
        while conn.is_handshaking() {
            while conn.wants_write() {
                conn.write_tls(&mut writer)?;
            }
            if !conn.is_handshaking() {
                break;
            }
            if pending.is_empty() {
                let mut buf = vec![0u8; RECORD];
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("TLS handshake with {}: connection closed", self.host()),
                    ));
                }
                pending.extend_from_slice(&buf[..n]);
            }
            let used = conn.read_tls(&mut &pending[..])?;
            if used == 0 {
                return Err(io::Error::other("TLS handshake: rustls took no input"));
            }
            pending.drain(..used);
            if let Err(e) = conn.process_new_packets() {
                // Tell the server why, as rustls would.
                while conn.wants_write() {
                    let _ = conn.write_tls(&mut writer);
                }
                return Err(self.describe(e));
            }
        }
        while conn.wants_write() {
            conn.write_tls(&mut writer)?;
        }
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        let shared = Arc::new(TlsShared {
            conn: Mutex::new(conn),
            tx: Mutex::new(sock.try_clone()?),
        });
        Ok((
            TlsReader {
                sock: sock.try_clone()?,
                shared: shared.clone(),
                start: 0,
                end: pending.len(),
                raw: {
                    pending.resize(pending.len().max(RECORD), 0);
                    pending
                },
            },
            TlsWriter { shared },
        ))
    }

    fn host(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    fn describe(&self, e: rustls::Error) -> io::Error {
        let host = self.host();
        match &e {
            rustls::Error::InvalidCertificate(cert) => {
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
                        "TLS: the certificate of {host} was rejected ({e}){hint}"
                    )),
                )
            }
            _ => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS handshake with {host}: {e}"),
            ),
        }
    }
}

/// Sends `head` (a `CONNECT` request) and reads the answer; returns the bytes after a 2xx
/// answer's head.
fn open_tunnel(sock: &TcpStream, head: &[u8], limits: &HttpLimits) -> io::Result<Vec<u8>> {
    let mut sock = sock;
    sock.write_all(head)?;
    let mut parser = ConnectResponseParser::new(limits.clone());
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Err(parser.eof().into());
        }
        if let Some(rest) = parser.push(&buf[..n])? {
            return Ok(rest);
        }
    }
}

struct TlsShared {
    conn: Mutex<rustls::ClientConnection>,
    /// The socket's write side: TLS records are taken out of `conn` and written under it.
    tx: Mutex<TcpStream>,
}

impl TlsShared {
    /// Encrypts `data` (may be empty) and writes every record rustls has to send.
    fn send(&self, mut data: &[u8]) -> io::Result<()> {
        let mut tx = lock(&self.tx);
        let mut records = Vec::new();
        loop {
            let taken = {
                let mut conn = lock(&self.conn);
                let taken = if data.is_empty() {
                    0
                } else {
                    conn.writer().write(data)?
                };
                while conn.wants_write() {
                    conn.write_tls(&mut records)?;
                }
                taken
            };
            data = &data[taken..];
            if records.is_empty() {
                if data.is_empty() {
                    return Ok(());
                }
                if taken == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                continue;
            }
            tx.write_all(&records)?;
            records.clear();
        }
    }
}

/// The reading half of a TLS connection: plaintext out of the shared `ClientConnection`.
pub(crate) struct TlsReader {
    sock: TcpStream,
    shared: Arc<TlsShared>,
    /// Receive buffer; `raw[start..end]` is what rustls has not taken yet.
    raw: Vec<u8>,
    start: usize,
    end: usize,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match lock(&self.shared.conn).reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.start == self.end {
                let n = self.sock.read(&mut self.raw)?;
                if n == 0 {
                    // A close without close_notify: HTTP framing tells a cut message anyway.
                    return Ok(0);
                }
                (self.start, self.end) = (0, n);
            }
            let wants_write = {
                let mut conn = lock(&self.shared.conn);
                let used = conn.read_tls(&mut &self.raw[self.start..self.end])?;
                if used == 0 {
                    return Err(io::Error::other("TLS: rustls took no input"));
                }
                self.start += used;
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                conn.wants_write()
            };
            if wants_write {
                self.shared.send(&[])?;
            }
        }
    }
}

/// The writing half of a TLS connection.
pub(crate) struct TlsWriter {
    shared: Arc<TlsShared>,
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.send(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
