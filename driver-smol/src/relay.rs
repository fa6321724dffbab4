//! A lossy HTTP relay for tests, demos and benchmarks: it forwards TCP connections to an
//! upstream and drops a given share of whole HTTP requests and responses, closing both sides of
//! the connection as a failing proxy does. It uses holdwire's own HTTP parsers only to find
//! where each message ends.
//!
//! The `holdwire demo --loss` command and the end-to-end benchmark put it between a client and a
//! server:
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! smol::block_on(async {
//!     let upstream = "127.0.0.1:8080".parse().unwrap();
//!     // Drop 2 % of the HTTP messages; the seed makes the choice reproducible.
//!     let relay = holdwire_smol::relay::Relay::start(upstream, 0.02, 1).await?;
//!     println!("connect to http://{}/", relay.addr());
//!     Ok(())
//! })
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::proto::http::{HttpLimits, RequestParser, ResponseParser};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};

/// Counters of a relay.
#[derive(Default, Debug)]
pub struct RelayStats {
    /// Messages forwarded.
    pub forwarded: AtomicU64,
    /// Messages dropped.
    pub dropped: AtomicU64,
}

/// A running relay. Dropping it stops accepting new connections; connections already open
/// run until either side closes.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    stats: Arc<RelayStats>,
    _accept: smol::Task<()>,
}

impl Relay {
    /// Starts a relay on an ephemeral port of 127.0.0.1 to `upstream`, dropping `loss` (0.0 to
    /// 1.0) of the HTTP messages in each direction, chosen by a generator seeded with `seed`.
    pub async fn start(upstream: SocketAddr, loss: f64, seed: u64) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let counters = stats.clone();
        let accept = smol::spawn(async move {
            let mut seed = seed;
            while let Ok((client, _)) = listener.accept().await {
                seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let up = pump(
                    client.clone(),
                    server.clone(),
                    Parser::request(),
                    loss,
                    seed,
                    counters.clone(),
                );
                let down = pump(
                    server,
                    client,
                    Parser::response(),
                    loss,
                    seed ^ 0xFFFF,
                    counters.clone(),
                );
                smol::spawn(up).detach();
                smol::spawn(down).detach();
            }
        });
        Ok(Relay {
            addr,
            stats,
            _accept: accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters of forwarded and dropped messages.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }
}

enum Parser {
    Request(RequestParser),
    Response(ResponseParser),
}

impl Parser {
    fn request() -> Parser {
        Parser::Request(RequestParser::new(HttpLimits::default()))
    }
    fn response() -> Parser {
        Parser::Response(ResponseParser::new(HttpLimits::default()))
    }
    fn push(&mut self, data: &[u8]) -> bool {
        match self {
            Parser::Request(p) => p.push(data).is_ok(),
            Parser::Response(p) => p.push(data).is_ok(),
        }
    }
    /// Whether a whole message is complete; the parser then holds only what follows it.
    fn complete(&mut self) -> Result<bool, ()> {
        match self {
            Parser::Request(p) => p.poll().map(|r| r.is_some()).map_err(|_| ()),
            Parser::Response(p) => p.poll().map(|r| r.is_some()).map_err(|_| ()),
        }
    }
    fn buffered(&self) -> usize {
        match self {
            Parser::Request(p) => p.buffered_len(),
            Parser::Response(p) => p.buffered_len(),
        }
    }
}

async fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mut parser: Parser,
    loss: f64,
    mut seed: u64,
    stats: Arc<RelayStats>,
) {
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        raw.extend_from_slice(&buf[..n]);
        if !parser.push(&buf[..n]) {
            break;
        }
        loop {
            match parser.complete() {
                Ok(true) => {}
                Ok(false) => break,
                Err(()) => {
                    close(&from, &to);
                    return;
                }
            }
            let len = raw.len() - parser.buffered();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let draw = (seed >> 11) as f64 / (1u64 << 53) as f64;
            if draw < loss {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                close(&from, &to);
                return;
            }
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
            if to.write_all(&raw[..len]).await.is_err() {
                close(&from, &to);
                return;
            }
            raw.drain(..len);
        }
    }
    close(&from, &to);
}

fn close(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(std::net::Shutdown::Both);
    let _ = b.shutdown(std::net::Shutdown::Both);
}
