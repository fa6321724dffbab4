//! The client side of one session.
//!
//! The client owns a small set of connection slots (at most `max_in_flight`), each carrying one
//! HTTP exchange at a time. It sends a request:
//! - to keep the server holding `hold` requests (plus one while it has unacknowledged data, so
//!   the server can answer one with the acknowledgement), re-parking after every response;
//! - at once when there is data, a lost message, a control frame or a window update to send and
//!   a slot is free (no timer delays a lone message; `coalesce_delay` is opt-in).
//!
//! Every request has a deadline by which the server must have answered it: `max_wait` plus the
//! retransmission timeout for a request the server may hold, or just the retransmission timeout
//! for the oldest requests beyond the server's hold count (the server answers those at once).
//! A request that misses its deadline, fails on its connection, or gets an error page is lost:
//! its messages are resent and the server is told (an `UNREADABLE` report) so it resends what its
//! answer carried. After `max_failures` failures in a row or `silence_timeout` without a valid
//! response the session fails.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use bytes::Bytes;

use crate::auth::{Key, SessionKeys};
use crate::config::ClientConfig;
use crate::error::{Event, ReadError, SessionError, WriteError};
use crate::http::{self, RequestHead, RequestTarget, Response, ResponseParser};
use crate::stream::{Control, RttEstimator, Stats, Stream, MAX_REPORTS};
use crate::time::{self, Instant};
use crate::url::{Scheme, Url};
use crate::wire::{self, AbortCode, DecodeError, Header, SessionId, NONCE_LEN};

/// Pre-opened requests refused or cut in a row before pre-opening stops for the session.
const MAX_PRIME_FAILURES: u8 = 3;

/// An answer this large shows bulk data from the server (its bundles carry at least 64 KiB of
/// new data each, whatever its send window).
const BULK_ANSWER: usize = 48 * 1024;

/// Identifies one of the client's connection slots (or one server-side connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// One HTTP request to write on a connection; its bytes were appended to the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// The connection slot to write on.
    pub conn: ConnId,
    /// Bytes appended to the buffer.
    pub len: usize,
    /// Open a new connection for this slot first, closing any previous one of the slot (a
    /// close of this slot still queued in [`Client::poll_close`] is withdrawn).
    pub open: bool,
}

/// Where and how requests are addressed: the request target, `Host` and proxy headers.
#[derive(Clone, Debug)]
pub struct Endpoint {
    host_header: String,
    path: String,
    absolute: Option<(String, u16)>,
    proxy_authorization: Option<String>,
    /// Ask for a fresh connection per request (`Connection: close`), for HTTP/1.0 proxies.
    pub close_each: bool,
}

impl Endpoint {
    /// Addresses session `session` at `server`, optionally through a forward proxy. Plain HTTP
    /// through a proxy uses the absolute-form target and the proxy's credentials; HTTPS goes
    /// through a CONNECT tunnel the driver opens, so requests stay in origin form.
    pub fn new(server: &Url, session: SessionId, proxy: Option<&Url>) -> Self {
        let mut hex = [0u8; 32];
        session.write_hex(&mut hex);
        let hex = core::str::from_utf8(&hex).unwrap_or_default();
        let path = server.session_path(hex);
        let forward = proxy.is_some() && server.scheme == Scheme::Http;
        let absolute = forward.then(|| (server.host.clone(), server.port));
        let proxy_authorization = proxy.filter(|_| forward).and_then(|p| {
            p.username
                .as_deref()
                .map(|u| http::basic_auth_value(u, p.password.as_deref().unwrap_or("")))
        });
        Endpoint {
            host_header: server.host_header(),
            path,
            absolute,
            proxy_authorization,
            close_each: false,
        }
    }

    fn encode_head(&self, buf: &mut Vec<u8>, content_length: usize) {
        self.encode_head_framed(buf, Some(content_length));
    }

    /// The head of a request whose body goes out later (chunked).
    fn encode_deferred_head(&self, buf: &mut Vec<u8>) {
        self.encode_head_framed(buf, None);
    }

    fn encode_head_framed(&self, buf: &mut Vec<u8>, content_length: Option<usize>) {
        let target = match &self.absolute {
            Some((host, port)) => RequestTarget::Absolute {
                host,
                port: *port,
                path: &self.path,
            },
            None => RequestTarget::Origin { path: &self.path },
        };
        let head = RequestHead {
            target,
            host: &self.host_header,
            proxy_authorization: self.proxy_authorization.as_deref(),
            content_length: content_length.unwrap_or(0),
            close: self.close_each,
        };
        match content_length {
            Some(_) => http::encode_request_head(buf, &head),
            None => http::encode_deferred_request_head(buf, &head),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// No connection.
    Closed,
    /// A keep-alive connection with no exchange on it.
    Idle,
    /// An exchange is in progress.
    Busy,
    /// A request head went out with its body deferred (see `ClientConfig::preopen`).
    Primed,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    parser: ResponseParser,
    /// The exchange in progress went on a connection that had carried one before.
    reused: bool,
    /// Response bytes arrived for the exchange in progress.
    answered: bool,
    /// When the slot was primed; whether the exchange in progress went on a primed slot.
    primed_at: Instant,
    was_primed: bool,
}

#[derive(Debug)]
struct InFlight {
    rid: u64,
    slot: usize,
    sent_at: Instant,
    answer_by: Instant,
    /// Bytes of the request, head and body.
    len: usize,
    carried_data: bool,
    carried_close: bool,
    /// The request whose sending shortened this one's deadline (the server answers this one
    /// once that one arrives).
    forced_by: Option<u64>,
}

#[derive(Debug)]
struct LostReport {
    rid: u64,
    /// The latest request that carried this report.
    carried_by: Option<u64>,
}

/// Lifecycle of the client session.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server to confirm the session.
    Opening,
    /// Established.
    Open,
    /// Ended (clean or failed); announcing it to the server if needed.
    Ended(Result<(), SessionError>),
}

/// The client side of one session. See the crate docs for the run loop.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    endpoint: Endpoint,
    session: SessionId,
    nonce: [u8; NONCE_LEN],
    stream: Stream,
    phase: Phase,
    slots: Vec<Slot>,
    in_flight: VecDeque<InFlight>,
    closes: VecDeque<ConnId>,
    events: VecDeque<Event>,
    /// `Closed` or `Failed` was queued.
    final_event_out: bool,
    lost_reports: VecDeque<LostReport>,
    controls: Vec<Control>,
    next_rid: u64,
    /// The number of held requests asked for now (adaptive, see `ClientConfig::hold`).
    hold_target: u8,
    /// When `hold_target` last changed.
    hold_changed_at: Instant,
    /// When an answer last came back full.
    last_full_answer: Instant,
    /// The server must hear of a lowered `hold_target`.
    hold_update_due: bool,
    granted_hold: u8,
    server_max_wait: Duration,
    rtt: RttEstimator,
    failures: u32,
    /// When the last counted failure happened.
    last_failure: Instant,
    /// Connections the peer closed right after a response (see `note_closed_after_response`).
    closed_after_response: u8,
    /// Pre-opened requests refused or cut in a row; at `MAX_PRIME_FAILURES` the path is
    /// taken not to support them.
    prime_failures: u8,
    retry_at: Option<Instant>,
    coalesce_until: Option<Instant>,
    last_heard: Instant,
    last_now: Instant,
    abort_to_send: Option<(AbortCode, String)>,
    close_attempts_left: u32,
    close_in_flight: bool,
    server_nonce: Option<[u8; NONCE_LEN]>,
    /// With a token: the key of opening requests, then the session's keys.
    open_key: Option<Key>,
    keys: Option<SessionKeys>,
}

impl Client {
    /// Creates a session. `session` and `nonce` must come from a CSPRNG: the id is the
    /// session's only name on the wire and in URLs.
    pub fn new(
        mut config: ClientConfig,
        endpoint: Endpoint,
        session: SessionId,
        nonce: [u8; NONCE_LEN],
        now: Instant,
    ) -> Self {
        config.max_in_flight = config.max_in_flight.max(2);
        config.hold = config.hold.max(1);
        // Keep two slots beyond the held requests: one to send on, one to tell the server of a
        // lower hold count.
        let slots_cap = u8::try_from(config.max_in_flight.saturating_sub(2)).unwrap_or(u8::MAX);
        config.hold = config.hold.min(slots_cap.max(1));
        config.max_hold = config
            .max_hold
            .clamp(config.hold, slots_cap.max(config.hold));
        let slots = (0..config.max_in_flight)
            .map(|_| Slot {
                state: SlotState::Closed,
                parser: ResponseParser::new(config.session.http.clone()),
                reused: false,
                answered: false,
                primed_at: Instant::ZERO,
                was_primed: false,
            })
            .collect();
        let rtt = RttEstimator::new(config.initial_rto, config.min_rto, config.max_rto);
        Client {
            stream: Stream::new(&config.session, false),
            server_max_wait: config.assumed_max_wait,
            endpoint,
            session,
            nonce,
            phase: Phase::Opening,
            slots,
            in_flight: VecDeque::new(),
            closes: VecDeque::new(),
            events: VecDeque::new(),
            final_event_out: false,
            lost_reports: VecDeque::new(),
            controls: Vec::new(),
            next_rid: 1,
            hold_target: config.hold,
            hold_changed_at: now,
            last_full_answer: now,
            hold_update_due: false,
            granted_hold: 1,
            rtt,
            failures: 0,
            last_failure: Instant::ZERO,
            closed_after_response: 0,
            prime_failures: 0,
            retry_at: None,
            coalesce_until: None,
            last_heard: now,
            last_now: now,
            abort_to_send: None,
            close_attempts_left: 0,
            close_in_flight: false,
            server_nonce: None,
            open_key: config.token.as_ref().map(|t| Key::open(t, session, &nonce)),
            keys: None,
            config,
        }
    }

    // ---- getters ----

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            srtt: self.rtt.srtt,
            ..self.stream.stats
        }
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt
    }

    /// The send window: bytes that may be unacknowledged at once, from the measured delivery
    /// rate and round-trip time.
    pub fn send_window(&self) -> u64 {
        self.stream.send.send_window()
    }

    /// Requests pre-opened (head sent, body deferred) right now; see `ClientConfig::preopen`.
    pub fn preopened_requests(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Primed)
            .count()
    }

    /// Requests currently outstanding.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The server confirmed the session.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The session ended (cleanly or not); no more application data moves.
    pub fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended(_))
    }

    /// The session ended and nothing remains to tell the server: the driver may drop it.
    pub fn is_drained(&self) -> bool {
        self.is_ended()
            && self.abort_to_send.is_none()
            && self.close_attempts_left == 0
            && self.in_flight.is_empty()
    }

    /// Bytes buffered for sending (queued plus unacknowledged) and received but unread.
    pub fn buffered(&self) -> (usize, usize) {
        (self.stream.send.buffered(), self.stream.recv.buffered())
    }

    /// The server's nonce from its confirmation (for keying an authentication extension).
    pub fn server_nonce(&self) -> Option<[u8; NONCE_LEN]> {
        self.server_nonce
    }

    // ---- application commands ----

    /// Queues application bytes; takes what fits in the send buffer.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        match &self.phase {
            Phase::Ended(Err(e)) => return Err(WriteError::Failed(e.clone())),
            Phase::Ended(Ok(())) => return Err(WriteError::Finished),
            _ => {}
        }
        if self.stream.send.is_finish_requested() {
            return Err(WriteError::Finished);
        }
        match self.stream.send.write(data) {
            0 if !data.is_empty() => Err(WriteError::Blocked),
            n => Ok(n),
        }
    }

    /// Copies received bytes into `buf`. `Ok(0)` (for a non-empty `buf`) is the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        let n = self.stream.recv.read(buf);
        self.after_read(n, buf.is_empty())
    }

    /// Takes up to `max` received bytes without copying. `Ok(None)` is the end of the stream.
    pub fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        match self.stream.recv.read_chunk(max) {
            Some(chunk) => Ok(Some(chunk)),
            None => self.after_read(0, max == 0).map(|_| None),
        }
    }

    fn after_read(&mut self, n: usize, empty: bool) -> Result<usize, ReadError> {
        if n > 0 || empty || self.stream.recv.is_finished() {
            return Ok(n);
        }
        match &self.phase {
            Phase::Ended(Err(e)) => Err(ReadError::Failed(e.clone())),
            _ => Err(ReadError::Blocked),
        }
    }

    /// Ends this side's stream (half-close): the server reads EOF after all the data.
    pub fn finish(&mut self) {
        if !self.is_ended() {
            self.stream.send.finish();
        }
    }

    /// Aborts the session: the server is told, and both ends report failure.
    pub fn abort(&mut self, now: Instant, code: AbortCode, reason: &str) {
        let now = time::advance(&mut self.last_now, now);
        if self.is_ended() {
            return;
        }
        self.abort_to_send = Some((code, String::from(reason)));
        self.end(now, Err(SessionError::LocallyAborted));
    }

    // ---- network input ----

    /// Response bytes arrived on `conn`.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let now = time::advance(&mut self.last_now, now);
        let Some(slot) = self.slot_index(conn) else {
            return;
        };
        if self.slots[slot].state != SlotState::Busy {
            if self.slots[slot].state == SlotState::Primed {
                // The proxy answered a request whose body was not sent: it refuses them.
                self.prime_failed();
            }
            // Bytes with no request outstanding: the connection is unusable.
            self.close_slot(slot);
            return;
        }
        self.slots[slot].answered = true;
        // An answer is arriving: its request is not lost, however long the body takes.
        let rto = self.rtt.rto();
        if let Some(r) = self.in_flight.iter_mut().find(|r| r.slot == slot) {
            r.answer_by = r.answer_by.max(now + rto);
        }
        if self.slots[slot].parser.push(data).is_err() {
            self.slot_failed(now, slot);
            return;
        }
        match self.slots[slot].parser.poll() {
            Ok(Some(response)) => {
                if self.slots[slot].was_primed {
                    self.prime_failures = 0;
                }
                self.on_response(now, slot, response);
            }
            Ok(None) => {}
            Err(_) => self.slot_failed(now, slot),
        }
    }

    fn prime_failed(&mut self) {
        self.prime_failures = self.prime_failures.saturating_add(1);
    }

    /// `conn` closed (EOF, reset, or the connection attempt failed).
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        let now = time::advance(&mut self.last_now, now);
        let Some(slot) = self.slot_index(conn) else {
            return;
        };
        match self.slots[slot].state {
            SlotState::Closed => {}
            SlotState::Primed => {
                // Closed before its body went out: a proxy that refuses deferred bodies does so
                // at once; one that times them out does so much later.
                if now < self.slots[slot].primed_at + Duration::from_secs(1) {
                    self.prime_failed();
                }
                self.reset_slot(slot);
            }
            SlotState::Idle => {
                // The proxy or server closed a kept-alive connection after its response.
                self.note_closed_after_response();
                self.reset_slot(slot);
            }
            SlotState::Busy => match self.slots[slot].parser.eof() {
                Ok(Some(response)) => {
                    self.on_response(now, slot, response);
                    self.reset_slot(slot);
                }
                _ => {
                    // A reused connection closed before any answer: the keep-alive race with a
                    // peer that closes after each response. Resend, but it is no failure.
                    let race = self.slots[slot].reused && !self.slots[slot].answered;
                    if race {
                        self.note_closed_after_response();
                    }
                    self.reset_slot(slot);
                    if let Some(rid) = self.rid_on_slot(slot) {
                        self.request_lost_counted(now, rid, !race);
                    }
                }
            },
        }
    }

    /// The request last handed out for `conn` was written completely. Drivers must call it: the
    /// answers that request makes the server give are expected within one RTO from now (until
    /// then, only the `max_wait` deadline applies).
    pub fn handle_sent(&mut self, now: Instant, conn: ConnId) {
        let now = time::advance(&mut self.last_now, now);
        let Some(slot) = self.slot_index(conn) else {
            return;
        };
        let Some(rid) = self.rid_on_slot(slot) else {
            return;
        };
        // The forcing request reaches the server once the requests ahead of it on the path
        // have drained: allow for that at the measured delivery rate.
        let queued: usize = self.in_flight.iter().map(|r| r.len).sum();
        let drain = self
            .stream
            .send
            .delivery_rate()
            .map_or(Duration::ZERO, |rate| {
                Duration::from_micros(
                    u64::try_from(queued as u128 * 1_000_000 / u128::from(rate.max(1)))
                        .unwrap_or(u64::MAX),
                )
            });
        let by = now + self.rtt.rto() + drain.min(self.config.max_rto);
        for r in &mut self.in_flight {
            if r.forced_by == Some(rid) {
                r.answer_by = r.answer_by.min(by);
            }
        }
    }

    /// Timers: call at or after the instant [`Client::poll_timeout`] returned.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = time::advance(&mut self.last_now, now);
        if !self.is_ended() && now >= self.silence_deadline() {
            self.end(now, Err(SessionError::TimedOut));
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
        }
        if self.coalesce_until.is_some_and(|t| t <= now) {
            self.coalesce_until = None;
        }
        if self.hold_decay_at().is_some_and(|t| t <= now) {
            // The server releases the extra held requests when it hears of it.
            self.hold_target = self.config.hold;
            self.hold_changed_at = now;
            self.hold_update_due = true;
        }
        while let Some(r) = self.in_flight.iter().find(|r| r.answer_by <= now) {
            let (slot, rid) = (r.slot, r.rid);
            self.rtt.backoff = self.rtt.backoff.saturating_add(1);
            self.close_slot(slot);
            self.request_lost(now, rid);
        }
    }

    // ---- outputs ----

    /// Connections the driver should close now.
    pub fn poll_close(&mut self) -> Option<ConnId> {
        self.closes.pop_front()
    }

    /// Session events, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant at which [`Client::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if !self.is_ended() {
            consider(self.silence_deadline());
        }
        if let Some(t) = self.retry_at {
            consider(t);
        }
        if let Some(t) = self.coalesce_until {
            consider(t);
        }
        if let Some(t) = self.hold_decay_at() {
            consider(t);
        }
        for r in &self.in_flight {
            consider(r.answer_by);
        }
        if self.phase == Phase::Open {
            // An expired pre-opened request is sent by `poll_transmit`, which waits out a
            // retry backoff first.
            let not_before = self.retry_at.unwrap_or(Instant::ZERO);
            for s in self.slots.iter().filter(|s| s.state == SlotState::Primed) {
                consider((s.primed_at + self.config.preopen_lifetime).max(not_before));
            }
        }
        next
    }

    /// Appends the next HTTP request to `buf`, if one should be sent now.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let now = time::advance(&mut self.last_now, now);
        if self.retry_at.is_some_and(|t| t > now) {
            return None;
        }
        if let Some(t) = self.transmit_request(now, buf) {
            return Some(t);
        }
        self.transmit_prime(now, buf)
    }

    /// Pre-opens a request (its head only) when the path closes connections after every
    /// response and fewer than `preopen` are waiting.
    fn transmit_prime(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if self.phase != Phase::Open
            || !self.endpoint.close_each
            || self.prime_failures >= MAX_PRIME_FAILURES
        {
            return None;
        }
        let primed = self
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Primed)
            .count();
        let closed = self
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Closed)
            .count();
        // Leave a slot for a request that cannot wait.
        if primed >= usize::from(self.config.preopen) || closed < 2 {
            return None;
        }
        let slot = self
            .slots
            .iter()
            .position(|s| s.state == SlotState::Closed)?;
        let start = buf.len();
        self.endpoint.encode_deferred_head(buf);
        self.closes.retain(|c| c.0 != slot as u64);
        let s = &mut self.slots[slot];
        s.state = SlotState::Primed;
        s.primed_at = now;
        Some(Transmit {
            conn: ConnId(slot as u64),
            len: buf.len() - start,
            open: true,
        })
    }

    fn transmit_request(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let slot = self.free_slot()?;
        let in_flight = self.in_flight.len();
        let ended = self.is_ended();
        let controls_only = match &self.phase {
            Phase::Ended(_) => {
                let close_due = self.close_attempts_left > 0 && !self.close_in_flight;
                if self.abort_to_send.is_none() && !close_due {
                    return None;
                }
                true
            }
            Phase::Opening if in_flight > 0 => return None,
            Phase::Opening => false,
            Phase::Open => {
                let park_target =
                    usize::from(self.granted_hold) + usize::from(self.stream.send.has_unacked());
                let coalescing = self.coalesce_until.is_some() && in_flight > 0;
                let has_reports = self.lost_reports.iter().any(|r| {
                    r.carried_by
                        .is_none_or(|rid| !self.in_flight.iter().any(|f| f.rid == rid))
                });
                let prime_expired = self.slots.iter().any(|s| {
                    s.state == SlotState::Primed
                        && now >= s.primed_at + self.config.preopen_lifetime
                });
                let has_news = self.stream.send.has_sendable()
                    || prime_expired
                    || self.hold_update_due
                    || has_reports
                    || self.stream.recv.window_opened();
                if in_flight >= park_target && (coalescing || !has_news) {
                    return None;
                }
                false
            }
        };
        let rid = self.next_rid;
        self.next_rid += 1;
        self.hold_update_due = false;

        self.controls.clear();
        if self.phase == Phase::Opening {
            self.controls.push(Control::Open {
                nonce: self.nonce,
                max_wait_ms: 0,
            });
        }
        let mut carried_close = false;
        if ended {
            if let Some((code, reason)) = self.abort_to_send.take() {
                self.controls.push(Control::Abort { code, reason });
            } else {
                self.controls.push(Control::Close);
                self.close_in_flight = true;
                carried_close = true;
            }
        }
        for report in self.lost_reports.iter_mut().take(MAX_REPORTS) {
            self.controls.push(Control::Unreadable { rid: report.rid });
            report.carried_by = Some(rid);
        }

        // With authentication, opening requests carry no data: a replay of them must not
        // deliver anything.
        let opening_authenticated = self.phase == Phase::Opening && self.open_key.is_some();
        let key = match (&self.keys, &self.open_key) {
            (Some(keys), _) => Some(&keys.c2s),
            (None, key) => key.as_ref(),
        };
        let planned = self.stream.plan(
            &self.config.session,
            &self.controls,
            !controls_only && !opening_authenticated,
            key.is_some(),
        );
        let carried_data = planned.messages > 0;
        let start = buf.len();
        let primed = self.slots[slot].state == SlotState::Primed;
        let bundle_len = planned.len;
        if primed {
            http::encode_deferred_body_prefix(buf, bundle_len);
        } else {
            self.endpoint.encode_head(buf, planned.len);
        }
        let header = Header {
            response: false,
            session: self.session,
            rid,
            ack: 0,
            window: 0,
            hold: self.hold_target,
            held_us: 0,
        };
        self.stream
            .write(planned, buf, header, &self.controls, rid, now, key);
        if primed {
            http::encode_deferred_body_suffix(buf, bundle_len);
        }
        self.stream.stats.exchanges += 1;

        let open = self.slots[slot].state == SlotState::Closed;
        // (A pre-opened connection closing before its answer is no keep-alive race.)
        self.slots[slot].reused = !open && !primed;
        self.slots[slot].was_primed = primed;
        self.slots[slot].answered = false;
        if open {
            // Opening replaces the slot's old connection: a pending close of it is implied, and
            // must not hit the new one whatever order the driver drains outputs in.
            self.closes.retain(|c| c.0 != slot as u64);
        }
        self.slots[slot].state = SlotState::Busy;
        let rto = self.rtt.rto();
        self.in_flight.push_back(InFlight {
            rid,
            slot,
            sent_at: now,
            answer_by: now + self.server_max_wait + rto,
            len: buf.len() - start,
            carried_data,
            carried_close,
            forced_by: None,
        });
        // The server answers at once the oldest requests beyond its hold count, and the
        // oldest held request when new data needs acknowledging.
        let in_flight = self.in_flight.len();
        let mut forced = in_flight.saturating_sub(usize::from(self.granted_hold));
        if forced == 0 && (carried_data || ended) && in_flight >= 2 {
            forced = 1;
        }
        if ended || self.phase == Phase::Opening {
            forced = in_flight;
        }
        // Their deadline shortens to one RTO once the request that makes the server answer
        // them has left (see `handle_sent`): a big request can take long to cross a slow uplink.
        for r in self.in_flight.iter_mut().take(forced) {
            if r.forced_by.is_none() && r.rid != rid {
                r.forced_by = Some(rid);
            }
        }
        if ended || self.phase == Phase::Opening {
            // Nothing else is in flight that could delay this one.
            if let Some(r) = self.in_flight.back_mut() {
                r.answer_by = r.answer_by.min(now + rto);
            }
        }
        Some(Transmit {
            conn: ConnId(slot as u64),
            len: buf.len() - start,
            open,
        })
    }

    // ---- internals ----

    fn slot_index(&self, conn: ConnId) -> Option<usize> {
        usize::try_from(conn.0)
            .ok()
            .filter(|&i| i < self.slots.len())
    }

    /// The slot for the next request: the oldest pre-opened one (its connection, and the
    /// proxy's to the server, are ready), else an idle keep-alive one, else a new connection.
    fn free_slot(&self) -> Option<usize> {
        let primed = (0..self.slots.len())
            .filter(|&i| self.slots[i].state == SlotState::Primed)
            .min_by_key(|&i| self.slots[i].primed_at);
        let idle = || self.slots.iter().position(|s| s.state == SlotState::Idle);
        let closed = || self.slots.iter().position(|s| s.state == SlotState::Closed);
        primed.or_else(idle).or_else(closed)
    }

    fn reset_slot(&mut self, slot: usize) {
        self.slots[slot].state = SlotState::Closed;
        self.slots[slot].was_primed = false;
        self.slots[slot].parser = ResponseParser::new(self.config.session.http.clone());
    }

    /// Closes the slot's connection (told to the driver) and forgets its parser state.
    fn close_slot(&mut self, slot: usize) {
        if self.slots[slot].state != SlotState::Closed {
            self.closes.push_back(ConnId(slot as u64));
        }
        self.reset_slot(slot);
    }

    /// Counts connections closed by the peer right after a response. From the second one on, the
    /// path is taken to close after every response (tinyproxy does, without saying so): every
    /// request then goes on a fresh connection and asks for `Connection: close`.
    fn note_closed_after_response(&mut self) {
        self.closed_after_response = self.closed_after_response.saturating_add(1);
        if self.closed_after_response >= 2 {
            self.endpoint.close_each = true;
        }
    }

    /// Whether the path was found to close connections after each response.
    pub fn uses_fresh_connections(&self) -> bool {
        self.endpoint.close_each
    }

    fn slot_failed(&mut self, now: Instant, slot: usize) {
        self.close_slot(slot);
        if let Some(rid) = self.rid_on_slot(slot) {
            self.request_lost(now, rid);
        }
    }

    fn rid_on_slot(&self, slot: usize) -> Option<u64> {
        self.in_flight
            .iter()
            .find(|r| r.slot == slot)
            .map(|r| r.rid)
    }

    /// Exchange `rid` failed: its bundle is lost, and so may be the server's answer.
    fn request_lost(&mut self, now: Instant, rid: u64) {
        self.request_lost_counted(now, rid, true);
    }

    /// As [`Client::request_lost`]; `counts` says whether it counts as a failed exchange
    /// towards `max_failures`.
    fn request_lost_counted(&mut self, now: Instant, rid: u64, counts: bool) {
        let Some(req) = self.finish_exchange(rid) else {
            return;
        };
        self.stream.send.on_bundle_lost(req.rid);
        if req.carried_close {
            self.close_in_flight = false;
            self.close_attempts_left = self.close_attempts_left.saturating_sub(1);
        }
        self.add_report(req.rid);
        self.stream.stats.failed_exchanges += 1;
        // Requests that were outstanding together fail together when a path breaks: they
        // count as one failure.
        if self.is_ended() || !counts || req.sent_at < self.last_failure {
            return;
        }
        self.last_failure = now;
        self.failures += 1;
        if self.failures >= self.config.max_failures {
            self.end(now, Err(SessionError::TimedOut));
            return;
        }
        if self.failures > 1 {
            let delay = self
                .rtt
                .rto()
                .saturating_mul(1u32 << (self.failures - 2).min(16))
                .min(self.config.max_rto);
            self.retry_at = Some(now + delay);
        }
    }

    fn add_report(&mut self, rid: u64) {
        if self.lost_reports.len() == MAX_REPORTS {
            self.lost_reports.pop_front();
        }
        self.lost_reports.push_back(LostReport {
            rid,
            carried_by: None,
        });
    }

    fn on_response(&mut self, now: Instant, slot: usize, response: Response) {
        let Some(i) = self.in_flight.iter().position(|r| r.slot == slot) else {
            self.close_slot(slot);
            return;
        };
        // Only the exchange's own slot: free it for the next request first.
        let reusable = response.keep_alive && !self.endpoint.close_each;
        if reusable && self.slots[slot].parser.buffered_len() == 0 {
            self.slots[slot].state = SlotState::Idle;
        } else {
            self.close_slot(slot);
        }
        let rid = self.in_flight[i].rid;
        let bundle = match wire::decode(response.body.clone(), &self.config.session.wire) {
            Ok(b)
                if b.header().response
                    && b.header().session == self.session
                    && (b.header().rid == rid || b.header().rid == 0) =>
            {
                b
            }
            Ok(_) => return self.request_lost(now, rid),
            Err(DecodeError::ChecksumMismatch) if response.status == 200 => {
                self.stream.stats.unreadable_received += 1;
                return self.request_lost(now, rid);
            }
            Err(_) => {
                // Not our server's answer: a proxy's error page or refusal.
                // While opening, "no such resource" (404 for a wrong path, 405 or 410 from a
                // web server that is not holdwire) will not go away by retrying: report it now
                // rather than time out later. (A 400 may be our server's answer to a bundle
                // corrupted on the way, and is retried.)
                let opening_refused =
                    self.phase == Phase::Opening && matches!(response.status, 404 | 405 | 410);
                if (opening_refused || matches!(response.status, 401 | 403 | 407))
                    && !self.is_ended()
                {
                    self.finish_exchange(rid);
                    self.end(
                        now,
                        Err(SessionError::Rejected {
                            status: response.status,
                        }),
                    );
                    return;
                }
                return self.request_lost(now, rid);
            }
        };
        if response.status == 200 && self.config.token.is_some() && !self.authentic(&bundle) {
            if self.is_ended() {
                // Only the announcement of our end was outstanding: stop announcing.
                self.finish_exchange(rid);
                self.close_in_flight = false;
                self.close_attempts_left = 0;
                return;
            }
            if bundle.tag().is_empty() {
                self.finish_exchange(rid);
                let what = "server response not authenticated (no token on the server?)";
                return self.end(now, Err(SessionError::Protocol(what)));
            }
            // Tampered with on the way, or not from our server: a failed exchange.
            return self.request_lost(now, rid);
        }
        if response.status != 200
            && bundle
                .frames()
                .any(|f| matches!(f, wire::Frame::Unreadable { .. }))
        {
            // The server could not read this request: send its contents again.
            return self.request_lost(now, rid);
        }
        let Some(req) = self.finish_exchange(rid) else {
            return;
        };
        let header = *bundle.header();
        let controls = match self.stream.process(&bundle, now) {
            Ok(c) => c,
            Err(what) => {
                self.end(now, Err(SessionError::Protocol(what)));
                return;
            }
        };
        self.last_heard = now;
        self.failures = 0;
        self.retry_at = None;
        if response.status == 200 {
            let rtt = now
                .saturating_duration_since(req.sent_at)
                .saturating_sub(Duration::from_micros(u64::from(header.held_us)));
            self.rtt.sample(rtt);
        }
        self.granted_hold = header.hold.max(1);
        self.adapt_hold(now, bundle.as_bytes().len());
        self.lost_reports
            .retain(|r| r.carried_by.is_none_or(|by| by != rid));
        if req.carried_close {
            self.close_in_flight = false;
            self.close_attempts_left = 0;
        }
        for &lost in &controls.unreadable[..controls.unreadable_count] {
            let lost = if lost == 0 { rid } else { lost };
            self.stream.send.on_bundle_lost(lost);
        }
        if req.carried_data && self.stream.send.bundle_has_unacked(rid) {
            // The server answered after reading this request, so what it did not
            // acknowledge did not make it (unreadable, or beyond its window).
            self.stream.send.on_bundle_lost(rid);
        }
        if let Some((nonce, max_wait_ms)) = controls.open {
            if self.phase == Phase::Opening {
                self.server_nonce = Some(nonce);
                if max_wait_ms > 0 {
                    self.server_max_wait = Duration::from_millis(u64::from(max_wait_ms));
                }
                self.phase = Phase::Open;
                self.emit(Event::Opened);
            }
        }
        if controls.new_data {
            self.emit(Event::Readable);
        }
        if self.stream.send.take_writable() {
            self.emit(Event::Writable);
        }
        if let Some((code, reason)) = controls.abort {
            let error = if response.status != 200 && self.phase == Phase::Opening {
                SessionError::Rejected {
                    status: response.status,
                }
            } else {
                SessionError::Aborted { code, reason }
            };
            self.abort_to_send = None;
            self.close_attempts_left = 0;
            self.end(now, Err(error));
            return;
        }
        if self.phase == Phase::Opening && response.status != 200 {
            self.end(
                now,
                Err(SessionError::Rejected {
                    status: response.status,
                }),
            );
            return;
        }
        if self.stream.is_done() && !self.is_ended() {
            self.close_attempts_left = self.config.close_attempts;
            self.end(now, Ok(()));
        } else if controls.close && !self.is_ended() {
            self.end(
                now,
                Err(SessionError::Protocol("server closed the session early")),
            );
        }
        if self.config.coalesce_delay > Duration::ZERO {
            self.coalesce_until = Some(now + self.config.coalesce_delay);
        }
    }

    /// Asks for one more held request while answers come back large (the server is sending in
    /// bulk, and its send window may need more parked requests per round trip than it has).
    fn adapt_hold(&mut self, now: Instant, answer_len: usize) {
        if answer_len >= (self.config.session.max_bundle_len / 2).min(BULK_ANSWER) {
            self.last_full_answer = now;
            if self.hold_target < self.config.max_hold {
                self.hold_target += 1;
                self.hold_changed_at = now;
            }
        }
    }

    /// When a raised hold count falls back: four round trips without a full answer.
    fn hold_decay_at(&self) -> Option<Instant> {
        (self.hold_target > self.config.hold && !self.is_ended()).then(|| {
            let rtt = self.rtt.srtt.unwrap_or(self.config.initial_rto);
            self.last_full_answer.max(self.hold_changed_at) + rtt * 4
        })
    }

    /// Requests the server is asked to hold now.
    pub fn hold_target(&self) -> u8 {
        self.hold_target
    }

    /// Checks a response's tag, deriving the session keys from the server's OPEN first.
    fn authentic(&mut self, bundle: &wire::Bundle) -> bool {
        let (Some(token), None) = (&self.config.token, &self.keys) else {
            return self
                .keys
                .as_ref()
                .is_some_and(|k| k.s2c.verify(bundle.signed_bytes(), bundle.tag()));
        };
        let server_nonce = bundle.frames().find_map(|f| match f {
            wire::Frame::Open { nonce, .. } => Some(nonce),
            _ => None,
        });
        let Some(server_nonce) = server_nonce else {
            return false;
        };
        let keys = SessionKeys::derive(token, self.session, &self.nonce, &server_nonce);
        if !keys.s2c.verify(bundle.signed_bytes(), bundle.tag()) {
            return false;
        }
        self.keys = Some(keys);
        true
    }

    fn finish_exchange(&mut self, rid: u64) -> Option<InFlight> {
        let i = self.in_flight.iter().position(|r| r.rid == rid)?;
        self.in_flight.remove(i)
    }

    /// When the session fails for want of an answer: `open_timeout` while opening (counted from
    /// creation), `silence_timeout` after the last valid response once open.
    fn silence_deadline(&self) -> Instant {
        match self.phase {
            Phase::Opening => {
                self.last_heard + self.config.open_timeout.min(self.config.silence_timeout)
            }
            _ => self.last_heard + self.config.silence_timeout,
        }
    }

    /// Queues an event, unless the final one is out: nothing follows `Closed` or `Failed`.
    fn emit(&mut self, event: Event) {
        if !self.final_event_out {
            self.events.push_back(event);
        }
    }

    /// Ends the session once, with its final event.
    fn end(&mut self, now: Instant, outcome: Result<(), SessionError>) {
        if self.is_ended() {
            return;
        }
        let event = match &outcome {
            Ok(()) => Event::Closed,
            Err(e) => Event::Failed(e.clone()),
        };
        if outcome.is_err() {
            self.close_attempts_left = 0;
        }
        // A failure found here is news to the server: tell it once, best effort, so it need not
        // wait for its idle timeout. (Refusals and aborts came from the server itself.)
        match &outcome {
            Err(SessionError::TimedOut) if self.abort_to_send.is_none() => {
                self.abort_to_send = Some((AbortCode::TIMED_OUT, String::from("client timed out")));
            }
            Err(SessionError::Protocol(what)) if self.abort_to_send.is_none() => {
                self.abort_to_send = Some((AbortCode::PROTOCOL_VIOLATION, String::from(*what)));
            }
            _ => {}
        }
        self.phase = Phase::Ended(outcome);
        self.retry_at = None;
        // Pre-opened requests would only hold the proxy's connections.
        for slot in 0..self.slots.len() {
            if self.slots[slot].state == SlotState::Primed {
                self.close_slot(slot);
            }
        }
        self.coalesce_until = None;
        // Outstanding requests need not wait for the server's maximum wait any more.
        let rto = self.rtt.rto();
        for r in &mut self.in_flight {
            r.answer_by = r.answer_by.min(now + rto);
        }
        self.emit(Event::Readable);
        self.final_event_out = true;
        self.events.push_back(event);
    }
}
