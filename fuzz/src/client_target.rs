//! The `client_session` target: one [`Client`] fed arbitrary response sequences.
//!
//! Responses are raw bytes or well-formed HTTP responses (any status, framing, content type)
//! around a bundle built from arbitrary fields with, by default, the client's session id and
//! the request id of the exchange on that slot, so that the fuzzer reaches the session logic:
//! opening, data, acknowledgements, SACKs, loss reports, close and abort. Closes, resets and
//! time go in between.
//!
//! The harness writes every request at once and reports it with `handle_sent`; a `Sent`
//! operation reports spurious or late completions too.
//!
//! Checked after every operation: every transmit is one well-formed request of the session
//! with a growing request id, on a slot in range, and reuses only a slot whose connection is
//! open; buffers stay within `send_buffer`/`recv_buffer`; requests in flight within
//! `max_in_flight`; nothing follows the final event; and once due timers are handled,
//! `poll_timeout` is after `now`.

use std::time::Duration;

use arbitrary::Arbitrary;
use holdwire_proto::url::Url;
use holdwire_proto::wire::{AbortCode, SessionId};
use holdwire_proto::{Client, ConnId, Endpoint, Event, Instant, SessionError};

use crate::check;
use crate::spec::{BundleCtx, ResponseSpec};
use crate::world::{client_config, token};

/// Most operations run per input.
pub const MAX_OPS: usize = 300;

/// The client's session.
pub const SESSION: SessionId = SessionId([0x5a; 16]);

/// The whole input.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Authenticate bundles with a token (built responses then fail authentication).
    pub token: bool,
    /// `max_in_flight` is `2 + n % 3`.
    pub max_in_flight: u8,
    /// `hold` is `1 + n % 3`.
    pub hold: u8,
    /// The operations.
    pub ops: Vec<Op>,
}

/// One step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// A built response on a slot.
    Respond {
        /// Slot pick.
        slot: u8,
        /// The response.
        spec: ResponseSpec,
        /// Deliver in two pieces.
        split: Option<u16>,
    },
    /// Raw bytes on a slot.
    Raw {
        /// Slot pick.
        slot: u8,
        /// Bytes.
        data: Vec<u8>,
    },
    /// The slot's connection closes (EOF, reset or failed connect).
    Close {
        /// Slot pick.
        slot: u8,
    },
    /// Move time forward.
    Advance {
        /// Milliseconds.
        ms: u16,
    },
    /// `handle_timeout` with an earlier `now`.
    StaleTimeout {
        /// Milliseconds back.
        back_ms: u16,
    },
    /// `handle_timeout` now, due or not.
    Timeout,
    /// Application write.
    Write {
        /// Length.
        len: u16,
    },
    /// Application read.
    Read {
        /// Buffer length.
        len: u16,
    },
    /// Application `read_chunk`.
    ReadChunk {
        /// Most bytes.
        max: u16,
    },
    /// Half-close.
    Finish,
    /// Abort.
    Abort {
        /// Code.
        code: u16,
    },
    /// `handle_sent` on a slot, whether or not a request was just written there.
    Sent {
        /// Slot pick.
        slot: u8,
    },
}

/// The client and what its driver knows.
pub struct Harness {
    /// The core.
    pub client: Client,
    /// Virtual time.
    pub now: Instant,
    max_in_flight: usize,
    send_cap: usize,
    recv_cap: usize,
    /// Per slot: a connection is open.
    conn_open: Vec<bool>,
    /// Per slot: the request id of the latest request written on it.
    slot_rid: Vec<u64>,
    /// Per slot: a pre-opened request's head, waiting for its body.
    pending: Vec<Vec<u8>>,
    /// One past the highest sequence number the client has sent.
    next_seq: u64,
    last_rid: u64,
    end: Option<Result<(), SessionError>>,
    buf: Vec<u8>,
}

impl Harness {
    /// A client per `input`'s knobs.
    pub fn new(input: &Input) -> Self {
        let mut config = client_config(input.token.then(token));
        config.max_in_flight = 2 + usize::from(input.max_in_flight % 3);
        config.hold = 1 + input.hold % 3;
        let url = Url::parse("http://sim.invalid:8080/hw").expect("valid URL");
        let now = Instant::from_micros(1_000_000);
        let max_in_flight = config.max_in_flight;
        let (send_cap, recv_cap) = (config.session.send_buffer, config.session.recv_buffer);
        let client = Client::new(
            config,
            Endpoint::new(&url, SESSION, None),
            SESSION,
            [0xa5; 16],
            now,
        );
        Harness {
            client,
            now,
            max_in_flight,
            send_cap,
            recv_cap,
            conn_open: vec![false; max_in_flight],
            slot_rid: vec![0; max_in_flight],
            pending: vec![Vec::new(); max_in_flight],
            next_seq: 0,
            last_rid: 0,
            end: None,
            buf: Vec::new(),
        }
    }

    fn slot(&self, pick: u8) -> usize {
        usize::from(pick) % self.max_in_flight
    }

    /// Drains the client and checks its outputs and bounds.
    pub fn drain(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            loop {
                self.buf.clear();
                let Some(t) = self.client.poll_transmit(self.now, &mut self.buf) else {
                    break;
                };
                moved = true;
                assert_eq!(t.len, self.buf.len(), "transmit length");
                let slot = usize::try_from(t.conn.0).unwrap_or(usize::MAX);
                assert!(slot < self.max_in_flight, "slot {slot} out of range");
                assert!(
                    t.open || self.conn_open[slot],
                    "request on slot {slot} without `open`, but its connection is closed"
                );
                if t.open {
                    // A new connection: whatever was pre-opened on the old one is gone.
                    self.pending[slot].clear();
                }
                self.conn_open[slot] = true;
                let Some(bundle) =
                    check::client_transmit_on_slot(&mut self.pending[slot], &self.buf, SESSION)
                else {
                    self.client.handle_sent(self.now, t.conn);
                    continue;
                };
                let rid = bundle.header().rid;
                assert!(
                    rid > self.last_rid,
                    "request id {rid} after {}",
                    self.last_rid
                );
                self.last_rid = rid;
                self.slot_rid[slot] = rid;
                self.next_seq = self.next_seq.max(check::next_seq(&bundle));
                // Written at once, as a driver with room in its socket buffer would.
                self.client.handle_sent(self.now, t.conn);
            }
            while let Some(c) = self.client.poll_close() {
                moved = true;
                if let Some(open) = usize::try_from(c.0)
                    .ok()
                    .and_then(|s| self.conn_open.get_mut(s))
                {
                    *open = false;
                }
                if let Some(p) = usize::try_from(c.0)
                    .ok()
                    .and_then(|s| self.pending.get_mut(s))
                {
                    p.clear();
                }
            }
            while let Some(ev) = self.client.poll_event() {
                moved = true;
                assert!(
                    self.end.is_none() || !check::enabled("events-after-end"),
                    "event {ev:?} after the final event {:?}",
                    self.end
                );
                match ev {
                    Event::Closed if self.end.is_none() => self.end = Some(Ok(())),
                    Event::Failed(e) if self.end.is_none() => self.end = Some(Err(e)),
                    _ => {}
                }
            }
            let (send, recv) = self.client.buffered();
            assert!(
                send <= self.send_cap,
                "send buffer {send} > {}",
                self.send_cap
            );
            assert!(
                recv <= self.recv_cap,
                "receive buffer {recv} > {}",
                self.recv_cap
            );
            assert!(self.client.requests_in_flight() <= self.max_in_flight);
            if !moved {
                return;
            }
        }
        panic!("client keeps producing output");
    }

    /// Handles due timers and checks that the next deadline is after `now`.
    pub fn fire_due(&mut self) {
        self.drain();
        if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
            self.client.handle_timeout(self.now);
            self.drain();
        }
        if let Some(t) = self
            .client
            .poll_timeout()
            .filter(|_| check::enabled("deadlines"))
        {
            assert!(
                t > self.now,
                "deadline {t:?} not after {:?} once handled",
                self.now
            );
        }
    }

    /// Applies one operation.
    pub fn step(&mut self, op: &Op) {
        let now = self.now;
        match op {
            Op::Respond { slot, spec, split } => {
                let slot = self.slot(*slot);
                let ctx = BundleCtx {
                    response: true,
                    session: SESSION,
                    rid: self.slot_rid[slot],
                    ack: self.next_seq,
                    max_message_len: 4096,
                };
                let bytes = spec.encode(&ctx);
                let conn = ConnId(slot as u64);
                match split.map(|s| usize::from(s) % (bytes.len() + 1)) {
                    Some(at) => {
                        self.client.handle_bytes(now, conn, &bytes[..at]);
                        self.drain();
                        self.client.handle_bytes(now, conn, &bytes[at..]);
                    }
                    None => self.client.handle_bytes(now, conn, &bytes),
                }
            }
            Op::Raw { slot, data } => {
                let conn = ConnId(self.slot(*slot) as u64);
                self.client.handle_bytes(now, conn, data);
            }
            Op::Close { slot } => {
                let slot = self.slot(*slot);
                self.conn_open[slot] = false;
                self.pending[slot].clear();
                self.client.handle_closed(now, ConnId(slot as u64));
            }
            Op::Advance { ms } => self.now = now + Duration::from_millis(u64::from(*ms)),
            Op::StaleTimeout { back_ms } => self
                .client
                .handle_timeout(now - Duration::from_millis(u64::from(*back_ms))),
            Op::Timeout => self.client.handle_timeout(now),
            Op::Write { len } => {
                let _ = self.client.write(&crate::pattern(3, usize::from(*len)));
            }
            Op::Read { len } => {
                let mut buf = vec![0u8; usize::from(*len)];
                let _ = self.client.read(&mut buf);
            }
            Op::ReadChunk { max } => {
                let _ = self.client.read_chunk(usize::from(*max));
            }
            Op::Finish => self.client.finish(),
            Op::Abort { code } => self.client.abort(now, AbortCode(*code), "fuzz abort"),
            Op::Sent { slot } => self
                .client
                .handle_sent(now, ConnId(self.slot(*slot) as u64)),
        }
    }
}

/// Runs one input.
pub fn run(input: &Input) {
    let mut h = Harness::new(input);
    h.fire_due();
    for op in input.ops.iter().take(MAX_OPS) {
        h.step(op);
        h.fire_due();
    }
}
