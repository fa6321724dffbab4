//! Configuration of sessions, clients and servers. Every limit has a sane default and can be set.

use core::time::Duration;

use crate::auth::Token;
use crate::http::HttpLimits;
use crate::wire::WireLimits;

/// Knobs shared by both ends of a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Largest bundle (HTTP body) this end sends, in bytes, everything included. The default stays
    /// under nginx's default `client_max_body_size` of 1 MiB.
    pub max_bundle_len: usize,
    /// Most messages in one bundle.
    pub max_bundle_messages: usize,
    /// Largest message payload this end sends. Must not exceed the peer's `wire.max_message_len`.
    pub max_message_len: usize,
    /// Bytes the application may queue that the peer has not acknowledged yet (backpressure).
    pub send_buffer: usize,
    /// Bytes received and not yet read by the application (the receive window).
    pub recv_buffer: usize,
    /// Most out-of-order messages kept while waiting for a gap to fill.
    pub max_out_of_order: usize,
    /// Limits applied when decoding the peer's bundles.
    pub wire: WireLimits,
    /// Limits applied when parsing the peer's HTTP messages.
    pub http: HttpLimits,
    /// A message is deemed lost when one sent this much later (or a round trip later, if
    /// longer) was delivered first.
    pub reorder_window: Duration,
    /// The send window (bytes unacknowledged at once) before the path is measured.
    pub initial_send_window: usize,
    /// The send window never shrinks below this.
    pub min_send_window: usize,
    /// The send window never grows beyond this (the peer's receive window also limits it).
    pub max_send_window: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_bundle_len: 1024 * 1024 - 16 * 1024,
            max_bundle_messages: 1024,
            max_message_len: 64 * 1024,
            send_buffer: 4 * 1024 * 1024,
            recv_buffer: 4 * 1024 * 1024,
            max_out_of_order: 4096,
            wire: WireLimits::default(),
            http: HttpLimits::default(),
            reorder_window: Duration::from_millis(20),
            initial_send_window: 1024 * 1024,
            min_send_window: 256 * 1024,
            max_send_window: 64 * 1024 * 1024,
        }
    }
}

/// Configuration of a client session.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Knobs shared with the server side.
    pub session: SessionConfig,
    /// Most HTTP requests outstanding at once (at least 2), and so most connections.
    pub max_in_flight: usize,
    /// How many requests the client asks the server to hold when the session starts or is
    /// quiet (at least 1). While the server's answers come back full, the client asks for more,
    /// up to `max_hold`, so that downloads fill the path's bandwidth-delay product.
    pub hold: u8,
    /// Most requests the client asks the server to hold.
    pub max_hold: u8,
    /// Retransmission timeout before any round trip was measured.
    pub initial_rto: Duration,
    /// Lower bound of the retransmission timeout.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout (and of the retry backoff).
    pub max_rto: Duration,
    /// The server's maximum wait assumed until the server states its own.
    pub assumed_max_wait: Duration,
    /// The session fails after this long without a valid response.
    pub silence_timeout: Duration,
    /// Opening fails after this long without the server's confirmation.
    pub open_timeout: Duration,
    /// The session fails after this many failed exchanges in a row.
    pub max_failures: u32,
    /// Delay before sending a new request after a response, to gather more data (0: none).
    pub coalesce_delay: Duration,
    /// How often a clean close is announced to the server before giving up.
    pub close_attempts: u32,
    /// Requests kept pre-opened (head sent, body deferred) on a path that closes connections
    /// after every response, as tinyproxy does: such a proxy connects to the server only once
    /// it has a request head, so a request that starts from scratch waits for two handshakes.
    /// 0 turns this off.
    pub preopen: u8,
    /// A pre-opened request is sent (empty, as a poll) at the latest this long after its head,
    /// well before servers and proxies time out a request body.
    pub preopen_lifetime: Duration,
    /// Shared token: authenticate every bundle (see `auth`). Must match the server's.
    pub token: Option<Token>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            session: SessionConfig::default(),
            max_in_flight: 16,
            hold: 2,
            max_hold: 16,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(10),
            assumed_max_wait: Duration::from_secs(20),
            silence_timeout: Duration::from_secs(60),
            open_timeout: Duration::from_secs(20),
            max_failures: 12,
            coalesce_delay: Duration::ZERO,
            close_attempts: 8,
            preopen: 2,
            preopen_lifetime: Duration::from_secs(10),
            token: None,
        }
    }
}

/// Configuration of a server endpoint and of every session it serves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Knobs shared with the client side.
    pub session: SessionConfig,
    /// URL path prefix of the endpoint ("/" or e.g. "/tunnel"); session ids follow it.
    pub path_prefix: alloc::string::String,
    /// Most requests held per session.
    pub max_hold: u8,
    /// A held request is answered after this long even with nothing to send. Keep it below the
    /// shortest idle timeout of any proxy on the path (30 s for Apache Traffic Server).
    pub max_wait: Duration,
    /// How long the acknowledgement of a small bundle of new data may wait for a reply to
    /// carry it, rather than answer a held request with an acknowledgement alone. Interactive
    /// traffic then costs one request per exchange instead of two or three (which matters
    /// most through proxies that open a connection per request). Zero acknowledges at once.
    pub ack_delay: Duration,
    /// A session without any request for this long fails.
    pub idle_timeout: Duration,
    /// Most sessions at once; further opens get 503.
    pub max_sessions: usize,
    /// Most HTTP connections at once; further connections are refused.
    pub max_connections: usize,
    /// Most bytes all connections together may buffer for requests still arriving (each one
    /// is also bounded by `session.http`); past it, further bytes get `503` and a close.
    pub max_request_memory: usize,
    /// A connection must deliver a whole request within this long once it started one, and a
    /// new connection its first request within this long of being accepted (else `408`).
    pub request_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    pub keep_alive_timeout: Duration,
    /// A closed session's id is remembered this long, to answer late requests consistently.
    pub linger: Duration,
    /// Most closed sessions remembered.
    pub max_lingering: usize,
    /// Shared token: require every bundle to be authenticated with it (see `auth`).
    pub token: Option<Token>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            session: SessionConfig::default(),
            path_prefix: alloc::string::String::from("/"),
            max_hold: 16,
            max_wait: Duration::from_secs(20),
            ack_delay: Duration::from_millis(10),
            idle_timeout: Duration::from_secs(60),
            max_sessions: 10_000,
            max_connections: 40_000,
            max_request_memory: 256 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(120),
            linger: Duration::from_secs(60),
            max_lingering: 10_000,
            token: None,
        }
    }
}
