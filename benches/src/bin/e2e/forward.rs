//! The std rows' tunnel endpoints: hidden modes of this binary that forward TCP connections
//! through holdwire-std sessions, the blocking driver's library API used as an application
//! would.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

use holdwire_std::{ClientOptions, Listener, ServerConfig, Stream};

const BUF: usize = 256 * 1024;

/// Copies `from` to `to` until EOF, then half-closes `to`.
fn pump(mut from: impl Read, mut to: impl Write, close: impl FnOnce()) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    to.flush()?;
    close();
    Ok(total)
}

/// Joins a holdwire session and a TCP connection both ways; either side's failure aborts the
/// other.
fn splice(session: Stream, tcp: TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let (session_r, tcp_w) = (session.try_clone()?, tcp.try_clone()?);
    let (session_w, tcp_r) = (session.try_clone()?, tcp.try_clone()?);
    let closer = session.try_clone()?;
    let up = thread::spawn(move || {
        let t = tcp_w.try_clone();
        let r = pump(session_r, tcp_w, move || {
            if let Ok(t) = t {
                let _ = t.shutdown(Shutdown::Write);
            }
        });
        if r.is_err() {
            let _ = tcp.shutdown(Shutdown::Both);
        }
        r
    });
    let r = pump(tcp_r, &session_w, || {
        let _ = closer.shutdown(Shutdown::Write);
    });
    if r.is_err() {
        let _ = session_w.abort();
    }
    let up = up
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("panicked")));
    r.and(up).map(|_| ())
}

/// `__std-server LISTEN TARGET`: serves holdwire sessions on LISTEN, each connected to TARGET.
pub fn server(args: &[String]) -> io::Result<()> {
    let [listen, target] = args else {
        return Err(io::Error::other("usage: __std-server LISTEN TARGET"));
    };
    let listener = Listener::bind(listen.as_str(), ServerConfig::default())?;
    for session in listener.incoming() {
        let session = session?;
        let target = target.clone();
        thread::spawn(move || {
            let result = TcpStream::connect(&target).and_then(|tcp| splice(session, tcp));
            if let Err(e) = result {
                eprintln!("std-server: session: {e}");
            }
        });
    }
    Ok(())
}

/// `__std-client LISTEN URL [PROXY]`: carries each TCP connection accepted on LISTEN through a
/// holdwire session of its own.
pub fn client(args: &[String]) -> io::Result<()> {
    let (listen, url, proxy) = match args {
        [l, u] => (l, u, None),
        [l, u, p] => (l, u, Some(p)),
        _ => return Err(io::Error::other("usage: __std-client LISTEN URL [PROXY]")),
    };
    let mut options = ClientOptions::new(url).map_err(io::Error::other)?;
    if let Some(p) = proxy {
        options = options.proxy(p).map_err(io::Error::other)?;
    }
    let listener = TcpListener::bind(listen.as_str())?;
    for tcp in listener.incoming() {
        let tcp = tcp?;
        let options = options.clone();
        thread::spawn(move || {
            let result = Stream::connect(options).and_then(|session| splice(session, tcp));
            if let Err(e) = result {
                eprintln!("std-client: session: {e}");
            }
        });
    }
    Ok(())
}
