//! Benchmarks for holdwire: criterion micro-benchmarks (`cargo bench -p holdwire-benches`) and
//! helpers they share. The end-to-end side-by-side benchmark is the `e2e` binary
//! (`src/bin/e2e`, see docs/BENCHMARKS.md).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use holdwire_proto::url::Url;
use holdwire_proto::{
    Client, ClientConfig, ConnId, Endpoint, Instant, Server, ServerConfig, SessionId,
};

/// A client and a server core joined in memory: every request and response is handed over at
/// once, on connections mapped one to one. No sockets, no clock: time only moves when asked.
pub struct Pair {
    /// The client core.
    pub client: Client,
    /// The server core.
    pub server: Server,
    /// The session id.
    pub session: SessionId,
    /// Virtual time.
    pub now: Instant,
    slots: Vec<Option<ConnId>>,
    buf: Vec<u8>,
}

impl Pair {
    /// An opened session with default configurations.
    pub fn new(client: ClientConfig, server: ServerConfig) -> Pair {
        let url = Url::parse("http://bench.invalid/").expect("literal URL");
        let session = SessionId([7; 16]);
        let client = Client::new(
            client,
            Endpoint::new(&url, session, None),
            session,
            [1; 16],
            Instant::ZERO,
        );
        let server = Server::new(server, Box::new(holdwire_proto::sim::SimRng::new(1)));
        let mut pair = Pair {
            client,
            server,
            session,
            now: Instant::ZERO,
            slots: Vec::new(),
            buf: Vec::with_capacity(2 << 20),
        };
        pair.pump();
        assert!(pair.client.is_open());
        pair
    }

    /// Moves every pending request and response until both cores are quiet. Returns the number
    /// of HTTP messages moved.
    pub fn pump(&mut self) -> usize {
        let mut moved = 0;
        loop {
            let mut any = false;
            while let Some(t) = self.client.poll_transmit(self.now, &mut self.buf) {
                let slot = usize::try_from(t.conn.0).expect("small slot index");
                if self.slots.len() <= slot {
                    self.slots.resize(slot + 1, None);
                }
                if t.open || self.slots[slot].is_none() {
                    if let Some(old) = self.slots[slot].take() {
                        self.server.handle_closed(self.now, old);
                    }
                    self.slots[slot] = self.server.handle_accept(self.now);
                }
                let conn = self.slots[slot].expect("server accepts");
                self.server.handle_bytes(self.now, conn, &self.buf[..t.len]);
                self.buf.clear();
                moved += 1;
                any = true;
            }
            while self.client.poll_close().is_some() {}
            while let Some(t) = self.server.poll_transmit(self.now, &mut self.buf) {
                let slot = self.slots.iter().position(|s| *s == Some(t.conn));
                if let Some(slot) = slot {
                    self.client
                        .handle_bytes(self.now, ConnId(slot as u64), &self.buf[..t.len]);
                    if t.close_after {
                        self.slots[slot] = None;
                        self.client.handle_closed(self.now, ConnId(slot as u64));
                    }
                }
                self.buf.clear();
                moved += 1;
                any = true;
            }
            while self.server.poll_close().is_some() {}
            while self.server.poll_event().is_some() {}
            while self.client.poll_event().is_some() {}
            if !any {
                return moved;
            }
        }
    }
}
