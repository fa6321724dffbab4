//! # holdwire-proto: the sans-IO core of holdwire
//!
//! holdwire carries a reliable, bidirectional byte stream over plain HTTP/1.1 request/response
//! exchanges, so that anything written for a TCP stream works through firewalls that only let
//! web traffic out through an HTTP proxy. This crate holds every protocol decision and no IO:
//! it takes events (bytes arrived, a connection closed, a timer fired, the application wrote)
//! with the current time passed in, and emits actions (bytes to send, connections to open or
//! close, the next deadline, session events). It reads no clock, spawns nothing and draws no
//! random numbers; drivers (`holdwire-std`, `holdwire-smol`) do that and stay thin.
//!
//! ## Roles
//! - [`Client`]: one session, talking to one server URL, possibly through a forward proxy. It
//!   names connection *slots*; the driver opens, writes and closes them as told.
//! - [`Server`]: one endpoint serving many sessions, routed by the session id in the URL path.
//!   The driver announces accepted connections and feeds their bytes.
//!
//! ## Method families
//! - getters (`&self`): `stats`, `is_open`, `session_count`, ...
//! - `handle_*(now, ...)`: input from the network or the clock (`handle_bytes`,
//!   `handle_closed`, `handle_timeout`, and `handle_accept` on the server);
//! - application commands: `write`, `read`, `read_chunk`, `finish` (half-close), `abort`;
//! - `poll_*`: outputs, drained until `None`.
//!
//! ## The run loop
//! After any `handle_*` call or command, drain in this order:
//! 1. `poll_transmit(now, &mut buf)` until `None`: each [`Transmit`] (client) or
//!    [`ServerTransmit`] names a connection and the bytes appended to `buf`, to be written in
//!    one (vectored) write; a client `Transmit` with `open` asks for a new connection first.
//! 2. `poll_close()` until `None`: connections to close.
//! 3. `poll_event()` until `None`: [`Event`]s for the application.
//! 4. `poll_timeout()`: when to call `handle_timeout` next (`None`: no timer).
//!
//! ```text
//! loop {
//!     while let Some(t) = core.poll_transmit(now, &mut buf) { send(t.conn, &buf[..t.len]); buf.clear(); }
//!     while let Some(c) = core.poll_close() { close(c); }
//!     while let Some(e) = core.poll_event() { deliver(e); }
//!     let deadline = core.poll_timeout();
//!     let input = wait_for_input_or(deadline);
//!     now = clock();
//!     feed(input, now); // handle_bytes / handle_closed / handle_timeout / write / read
//! }
//! ```
//!
//! Time is an [`Instant`] (microseconds from a driver-chosen epoch). An earlier `now` than
//! one seen before is treated as the later one; `handle_timeout` called early is harmless.
//!
//! ## Wire format
//! [`wire`] encodes and decodes bundles (the HTTP bodies); [`http`] frames them as HTTP/1.1;
//! `docs/PROTOCOL.md` specifies both byte for byte.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    clippy::std_instead_of_core,
    clippy::alloc_instead_of_core
)]

extern crate alloc;

pub mod auth;
pub mod client;
pub mod config;
pub mod direct;
pub mod error;
pub mod http;
pub mod options;
pub mod server;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod stream;
pub mod time;
pub mod url;
pub mod wire;

pub use auth::Token;
pub use client::{Client, ConnId, Endpoint, Transmit};
pub use config::{ClientConfig, ServerConfig, SessionConfig};
pub use error::{Event, ReadError, SessionError, WriteError};
pub use options::{ClientOptions, OptionsError};
pub use server::{Entropy, Refusal, Server, ServerEvent, ServerStats, ServerTransmit};
pub use stream::Stats;
pub use time::Instant;
pub use wire::{AbortCode, SessionId};

/// Takes the `len` bytes that one `poll_transmit` appended to an empty `buf`, without copying
/// them: the buffer itself is handed over and `buf` is left empty, with room for a transmit of
/// the same size. If `buf` holds more than `len` bytes, those are copied out instead.
pub fn take_transmit(buf: &mut alloc::vec::Vec<u8>, len: usize) -> alloc::vec::Vec<u8> {
    if buf.len() != len {
        let bytes = buf[buf.len().saturating_sub(len)..].to_vec();
        buf.clear();
        return bytes;
    }
    core::mem::replace(buf, alloc::vec::Vec::with_capacity(len))
}
