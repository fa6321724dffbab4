//! The `server_endpoint` target: a [`World`] driven by a sequence of operations.
//!
//! The fuzzer interleaves its own connections (raw bytes, well-formed requests built from
//! arbitrary fields around a valid bundle, replays of genuine requests, closes), the delivery
//! schedule of two genuine clients (send, receive, cut, in any order), application commands
//! on any session, and time. After every operation the world drains and checks its invariants
//! ([`World::check_invariants`], deadlines after `now`, well-formed transmits; with a token,
//! each side of a genuine session reads a prefix of what the other wrote); at the end,
//! [`World::final_check`] requires that nothing leaked and that a fresh session still works.

use std::time::Duration;

use arbitrary::Arbitrary;
use holdwire_proto::wire::AbortCode;

use crate::spec::{BundleCtx, Damage, RequestSpec};
use crate::world::{World, POOL};

/// Most operations run per input (keeps executions fast).
pub const MAX_OPS: usize = 200;

/// The whole input.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Authenticate bundles with a token.
    pub token: bool,
    /// Serve under `/tunnel` rather than `/`.
    pub prefixed: bool,
    /// Genuine clients: `peers % 3` (0 to 2).
    pub peers: u8,
    /// The operations.
    pub ops: Vec<Op>,
}

/// One step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// Accept a connection.
    Accept,
    /// Raw bytes on a fuzzer connection (`conn` picks one, or a new one).
    Raw {
        /// Connection pick.
        conn: u8,
        /// Bytes.
        data: Vec<u8>,
        /// Deliver in two pieces.
        split: Option<u16>,
    },
    /// A request built from `spec` on a fuzzer connection.
    Request {
        /// Connection pick.
        conn: u8,
        /// The request.
        spec: RequestSpec,
        /// Deliver in two pieces.
        split: Option<u16>,
    },
    /// A genuine client's earlier request, again, on a fuzzer connection.
    Replay {
        /// Which recorded request.
        index: u8,
        /// Connection pick.
        conn: u8,
        /// Damage to it.
        damage: Damage,
    },
    /// Close a fuzzer connection.
    Close {
        /// Connection pick.
        conn: u8,
    },
    /// Move time forward.
    Advance {
        /// Milliseconds.
        ms: u16,
    },
    /// `handle_timeout` with an earlier `now` than the last one.
    StaleTimeout {
        /// Milliseconds back.
        back_ms: u16,
    },
    /// Server application write on a pool session.
    Write {
        /// Session pick.
        session: u8,
        /// Length.
        len: u16,
    },
    /// Server application read on a pool session.
    Read {
        /// Session pick.
        session: u8,
        /// Buffer length.
        len: u16,
    },
    /// Server application `read_chunk` on a pool session.
    ReadChunk {
        /// Session pick.
        session: u8,
        /// Most bytes.
        max: u16,
    },
    /// Server application finish on a pool session.
    Finish {
        /// Session pick.
        session: u8,
    },
    /// Server application abort on a pool session.
    Abort {
        /// Session pick.
        session: u8,
        /// Code.
        code: u16,
    },
    /// Deliver a genuine client's oldest queued request.
    PeerSend {
        /// Client pick.
        peer: u8,
        /// Deliver in two pieces.
        split: Option<u16>,
    },
    /// Deliver a genuine client's oldest queued response bytes (or close).
    PeerRecv {
        /// Client pick.
        peer: u8,
        /// Deliver in two pieces.
        split: Option<u16>,
    },
    /// Reset one of a genuine client's connections.
    PeerCut {
        /// Client pick.
        peer: u8,
        /// Link pick.
        which: u8,
    },
    /// Deliver everything queued for a genuine client, both ways.
    PeerPump {
        /// Client pick.
        peer: u8,
    },
    /// Genuine client application write.
    PeerWrite {
        /// Client pick.
        peer: u8,
        /// Length.
        len: u16,
    },
    /// Genuine client application read.
    PeerRead {
        /// Client pick.
        peer: u8,
        /// Buffer length.
        len: u16,
    },
    /// Genuine client finish.
    PeerFinish {
        /// Client pick.
        peer: u8,
    },
    /// Genuine client `handle_timeout` now, due or not.
    PeerTimeout {
        /// Client pick.
        peer: u8,
    },
}

/// Runs one input.
pub fn run(input: &Input) {
    let prefix = if input.prefixed { "/tunnel" } else { "/" };
    let mut w = World::new(input.token, prefix, usize::from(input.peers % 3), 0x5eed);
    w.fire_due();
    for op in input.ops.iter().take(MAX_OPS) {
        step(&mut w, op);
        w.fire_due();
    }
    w.final_check();
}

fn pick_peer(w: &World, peer: u8) -> Option<usize> {
    (!w.peers.is_empty()).then(|| usize::from(peer) % w.peers.len())
}

/// Applies one operation.
pub fn step(w: &mut World, op: &Op) {
    let now = w.now;
    match op {
        Op::Accept => {
            w.accept();
        }
        Op::Raw { conn, data, split } => w.send_garbage(*conn, data, *split),
        Op::Request { conn, spec, split } => {
            let i = spec.pool_index(POOL.len()).unwrap_or(0);
            w.built_rid[i] += 1;
            let ctx = BundleCtx {
                response: false,
                session: POOL[i],
                rid: w.built_rid[i],
                ack: 0,
                max_message_len: w.server_config.session.wire.max_message_len,
            };
            let bytes = spec.encode(&w.server_config.path_prefix, &POOL, &ctx);
            w.send_garbage(*conn, &bytes, *split);
        }
        Op::Replay {
            index,
            conn,
            damage,
        } => {
            if w.recorded.is_empty() {
                return;
            }
            let mut bytes = w.recorded[usize::from(*index) % w.recorded.len()].clone();
            damage.apply(&mut bytes);
            w.send_garbage(*conn, &bytes, None);
        }
        Op::Close { conn } => w.close_garbage(*conn),
        Op::Advance { ms } => w.now = now + Duration::from_millis(u64::from(*ms)),
        Op::StaleTimeout { back_ms } => {
            let then = now - Duration::from_millis(u64::from(*back_ms));
            w.server.handle_timeout(then);
            for p in &mut w.peers {
                p.client.handle_timeout(then);
            }
        }
        Op::Write { session, len } => {
            let id = POOL[usize::from(*session) % POOL.len()];
            w.server_write(id, usize::from(*len));
        }
        Op::Read { session, len } => {
            let id = POOL[usize::from(*session) % POOL.len()];
            w.server_read(id, usize::from(*len));
        }
        Op::ReadChunk { session, max } => {
            let id = POOL[usize::from(*session) % POOL.len()];
            w.server_read_chunk(id, usize::from(*max));
        }
        Op::Finish { session } => w.server.finish(POOL[usize::from(*session) % POOL.len()]),
        Op::Abort { session, code } => w.server.abort(
            now,
            POOL[usize::from(*session) % POOL.len()],
            AbortCode(*code),
            "fuzz abort",
        ),
        Op::PeerSend { peer, split } => {
            if let Some(i) = pick_peer(w, *peer) {
                w.peer_send(i, *split);
            }
        }
        Op::PeerRecv { peer, split } => {
            if let Some(i) = pick_peer(w, *peer) {
                w.peer_recv(i, *split);
            }
        }
        Op::PeerCut { peer, which } => {
            if let Some(i) = pick_peer(w, *peer) {
                w.peer_cut(i, *which);
            }
        }
        Op::PeerPump { peer } => {
            if let Some(i) = pick_peer(w, *peer) {
                for _ in 0..1000 {
                    let sent = w.peer_send(i, None);
                    w.settle();
                    let received = w.peer_recv(i, None);
                    w.settle();
                    if !sent && !received {
                        break;
                    }
                }
            }
        }
        Op::PeerWrite { peer, len } => {
            if let Some(i) = pick_peer(w, *peer) {
                w.peer_write(i, usize::from(*len));
            }
        }
        Op::PeerRead { peer, len } => {
            if let Some(i) = pick_peer(w, *peer) {
                w.peer_read(i, usize::from(*len));
            }
        }
        Op::PeerFinish { peer } => {
            if let Some(i) = pick_peer(w, *peer) {
                w.peers[i].client.finish();
            }
        }
        Op::PeerTimeout { peer } => {
            if let Some(i) = pick_peer(w, *peer) {
                w.peers[i].client.handle_timeout(now);
            }
        }
    }
}
