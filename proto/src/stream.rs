//! The byte stream of one session, shared by the client and server roles.
//!
//! Each direction is a sequence of numbered messages ending in an optional FIN, which occupies a
//! sequence number of its own. The sender keeps every message until the peer acknowledges it,
//! cumulatively (`ack`: every lower number arrived) or selectively (SACK ranges). A message is
//! deemed lost, and only then resent, when:
//! - the bundle that carried it is known to be lost (a failed exchange, an `UNREADABLE` report, or
//!   a response to the request that carried it which does not acknowledge it), or
//! - (server side only, as a safety net) a bundle sent more than four round trips, and at least
//!   `reorder_window`, after it was delivered while it was not (RACK).
//!
//! The receiver advertises a window in bytes counted from its cumulative acknowledgement, and keeps
//! out-of-order messages within that window and within `max_out_of_order` entries. The sender
//! also keeps its bytes in flight within a send window of about two bandwidth-delay products of
//! the path, measured from delivery rate and round-trip samples (see `SendWindow`).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use crate::auth::{Key, TAG_LEN};
use crate::config::SessionConfig;
use crate::time::Instant;
use crate::wire::{
    self, AbortCode, Bundle, BundleEncoder, Frame, Header, SackRange, FRAME_HEADER_LEN,
    MESSAGE_OVERHEAD, NONCE_LEN,
};

/// How far beyond the cumulative acknowledgement a sequence number may be. A sender keeps at
/// most its send buffer unacknowledged, so this is never reached by a well-behaved peer, and it
/// keeps every sequence computation far from overflow.
const MAX_SEQ_AHEAD: u64 = 1 << 40;
/// New data per bundle is at least this much, whatever the send window.
const MIN_NEW_PER_BUNDLE: usize = 64 * 1024;
/// Most `UNREADABLE` reports taken from one bundle.
pub(crate) const MAX_REPORTS: usize = 16;

/// Counters for one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// HTTP exchanges started (client) or answered (server).
    pub exchanges: u64,
    /// Exchanges that failed (lost, cut, error page, unreadable).
    pub failed_exchanges: u64,
    /// Messages sent, counting resends.
    pub messages_sent: u64,
    /// Messages sent again because they were deemed lost.
    pub messages_resent: u64,
    /// Application bytes sent, counting resends.
    pub bytes_sent: u64,
    /// Application bytes delivered in order by the peer.
    pub bytes_received: u64,
    /// Bundles from the peer that failed to decode.
    pub unreadable_received: u64,
    /// The smoothed round-trip time of an exchange, once measured (client side only).
    pub srtt: Option<Duration>,
}

/// A control frame to put into the next bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    Open {
        nonce: [u8; NONCE_LEN],
        max_wait_ms: u32,
    },
    Close,
    Abort {
        code: AbortCode,
        reason: String,
    },
    Unreadable {
        rid: u64,
    },
}

impl Control {
    fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN
            + match self {
                Control::Open { .. } => NONCE_LEN + 4,
                Control::Close => 0,
                Control::Abort { reason, .. } => 2 + reason.len().min(256),
                Control::Unreadable { .. } => 8,
            }
    }

    fn encode(&self, enc: &mut BundleEncoder<'_>) {
        match self {
            Control::Open { nonce, max_wait_ms } => enc.open(nonce, *max_wait_ms),
            Control::Close => enc.close(),
            Control::Abort { code, reason } => enc.abort(*code, reason),
            Control::Unreadable { rid } => enc.unreadable(*rid),
        }
    }
}

/// Control frames found in a received bundle.
#[derive(Debug, Default)]
pub(crate) struct ReceivedControls {
    pub open: Option<([u8; NONCE_LEN], u32)>,
    pub close: bool,
    pub abort: Option<(AbortCode, String)>,
    pub unreadable: [u64; MAX_REPORTS],
    pub unreadable_count: usize,
    /// The bundle carried messages or a FIN that were new.
    pub new_data: bool,
}

#[derive(Debug)]
struct Entry {
    /// Payload; empty for the FIN.
    data: Bytes,
    fin: bool,
    /// Identifies the bundle (exchange) that last carried it.
    bundle: u64,
    sent_at: Instant,
    /// The sender's delivered-bytes count when this was last sent (for rate samples).
    delivered_at_send: u64,
    /// Sent more than once: its acknowledgement may be for an earlier copy, so it gives no
    /// round-trip sample (Karn's rule).
    resent: bool,
    acked: bool,
    lost: bool,
}

/// The send window: how many bytes may be unacknowledged at once, from the measured delivery
/// rate and round-trip time of the path (its bandwidth-delay product), as BBR estimates them.
///
/// Many parallel HTTP connections each carrying a large body overfill a bottleneck's queue
/// (and delay every request behind it): keeping about two bandwidth-delay products in
/// flight fills the path without that. The window follows the highest recent delivery rate (a
/// sample is the bytes delivered between a message's sending and its acknowledgement over that
/// time) times the lowest round trip.
///
/// A session starts in *startup*, as BBR does: the first samples are small (the first bundles
/// carry what the application had written so far), so the window never shrinks then: it is
/// the largest of its initial size and the estimates, which double per acknowledgement loop
/// while the window limits the sender (the gain is two). Three window-limited loops without a
/// quarter more delivery rate end startup, and the window becomes the estimate.
///
/// Afterwards, where the window itself capped the delivery rate (the sender had data it could
/// not send), the estimate only mirrors the window: on a path whose acknowledgements take
/// several round trips of the shortest exchange (a proxy that opens a connection per request,
/// each in slow start) it would shrink the window to its minimum. There the window grows by a
/// quarter per acknowledgement loop instead, for as long as the delivery rate keeps growing
/// with it.
#[derive(Debug)]
struct SendWindow {
    /// Bytes acknowledged so far (cumulatively or selectively).
    delivered: u64,
    /// The window in bytes.
    bytes: u64,
    min: u64,
    max: u64,
    /// The lowest round trip seen, and when; forgotten after `MIN_RTT_LIFETIME`.
    min_rtt: Option<(Duration, Instant)>,
    /// Highest delivery rate (bytes per second) in this period and the previous one.
    rate_now: u64,
    rate_before: u64,
    period_start: Instant,
    /// The last time the window, not the data, limited what could be sent.
    limited_at: Option<Instant>,
    /// The bundle being planned was cut short by the window (stamped when it is written).
    limited_now: bool,
    /// The last growth beyond the estimate, and the delivery rate then.
    grown_at: Instant,
    rate_at_growth: u64,
    /// Growth steps in a row after which the delivery rate did not follow.
    stalled_growths: u8,
    /// In startup (see above).
    startup: bool,
}

/// Growth steps without a higher delivery rate after which the window stops growing.
const MAX_STALLED_GROWTHS: u8 = 2;
/// Window-limited loops without a quarter more delivery rate that end startup (BBR's count).
const STARTUP_STALLED_LOOPS: u8 = 3;

/// How long a round-trip minimum stays valid (paths change).
const MIN_RTT_LIFETIME: Duration = Duration::from_secs(10);
/// The window in bandwidth-delay products.
const WINDOW_GAIN: u64 = 2;

impl SendWindow {
    fn new(initial: u64, min: u64, max: u64) -> Self {
        SendWindow {
            delivered: 0,
            bytes: initial.clamp(min, max),
            min,
            max,
            min_rtt: None,
            rate_now: 0,
            rate_before: 0,
            period_start: Instant::ZERO,
            limited_at: None,
            limited_now: false,
            grown_at: Instant::ZERO,
            rate_at_growth: 0,
            stalled_growths: 0,
            startup: true,
        }
    }

    /// A delivery sample: the newest message just acknowledged was sent at `sent_at`, when
    /// `delivered_then` bytes had been delivered.
    fn sample(&mut self, now: Instant, sent_at: Instant, delivered_then: u64) {
        let rtt = now.saturating_duration_since(sent_at);
        if self.min_rtt.is_none_or(|(min, at)| {
            rtt <= min || now.saturating_duration_since(at) > MIN_RTT_LIFETIME
        }) {
            self.min_rtt = Some((rtt, now));
        }
        let Some((min_rtt, _)) = self.min_rtt else {
            return;
        };
        let micros = rtt.as_micros().max(1);
        let bytes = u128::from(self.delivered.saturating_sub(delivered_then));
        let rate = u64::try_from(bytes * 1_000_000 / micros).unwrap_or(u64::MAX);
        // The maximum over two periods of ten round trips each.
        let period = (min_rtt * 10).max(Duration::from_millis(50));
        if now.saturating_duration_since(self.period_start) > period {
            self.rate_before = self.rate_now;
            self.rate_now = 0;
            self.period_start = now;
        }
        self.rate_now = self.rate_now.max(rate);
        let best = u128::from(self.rate_now.max(self.rate_before));
        let bdp = best * min_rtt.as_micros() / 1_000_000;
        let estimate = u64::try_from(bdp * u128::from(WINDOW_GAIN)).unwrap_or(u64::MAX);
        let best = u64::try_from(best).unwrap_or(u64::MAX);
        // Window-limited during this message's flight: the estimate mirrors the window.
        let limited = self.limited_at.is_some_and(|t| t >= sent_at);
        if self.startup {
            // Only the end of startup may shrink the window.
            let mut window = self.bytes.max(estimate);
            if limited && now.saturating_duration_since(self.grown_at) >= rtt {
                self.grown_at = now;
                if best >= self.rate_at_growth.saturating_add(self.rate_at_growth / 4) {
                    self.stalled_growths = 0;
                    self.rate_at_growth = best;
                } else {
                    self.stalled_growths += 1;
                    if self.stalled_growths >= STARTUP_STALLED_LOOPS {
                        self.startup = false;
                        self.stalled_growths = 0;
                        window = estimate;
                    }
                }
            }
            self.bytes = window.clamp(self.min, self.max);
            return;
        }
        if !limited {
            self.bytes = estimate.clamp(self.min, self.max);
            return;
        }
        let mut window = self.bytes.max(estimate);
        if now.saturating_duration_since(self.grown_at) >= rtt {
            // One step per acknowledgement loop, while the rate follows (by an eighth).
            if best > self.rate_at_growth.saturating_add(self.rate_at_growth / 8) {
                self.stalled_growths = 0;
            } else {
                self.stalled_growths = self.stalled_growths.saturating_add(1);
            }
            if self.stalled_growths < MAX_STALLED_GROWTHS {
                window = window.saturating_add(window / 4);
                self.grown_at = now;
                self.rate_at_growth = best;
            }
        }
        self.bytes = window.clamp(self.min, self.max);
    }
}

/// RFC 6298 round-trip estimation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RttEstimator {
    pub(crate) srtt: Option<Duration>,
    rttvar: Duration,
    initial: Duration,
    min: Duration,
    max: Duration,
    pub(crate) backoff: u32,
}

impl RttEstimator {
    pub(crate) fn new(initial: Duration, min: Duration, max: Duration) -> Self {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            initial,
            min,
            max,
            backoff: 0,
        }
    }

    pub(crate) fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        self.backoff = 0;
    }

    pub(crate) fn rto(&self) -> Duration {
        let base = match self.srtt {
            None => self.initial,
            Some(srtt) => srtt + (self.rttvar * 4).max(Duration::from_millis(1)),
        };
        let backed = base.saturating_mul(1u32 << self.backoff.min(16));
        backed.clamp(self.min, self.max)
    }
}

/// The sending half: application bytes not yet sent, and sent messages not yet acknowledged.
#[derive(Debug)]
pub(crate) struct SendQueue {
    pending: BytesMut,
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`; everything below it is acknowledged.
    base: u64,
    entries_bytes: usize,
    lost: VecDeque<u64>,
    cap: usize,
    fin_requested: bool,
    fin_seq: Option<u64>,
    peer_window: u64,
    window: SendWindow,
    /// Bytes of entries acknowledged selectively (still queued behind a gap).
    sacked_bytes: usize,
    delivered_sent_at: Option<Instant>,
    /// A write was refused or cut short: report `Writable` when room appears.
    writer_blocked: bool,
}

impl SendQueue {
    pub(crate) fn new(config: &SessionConfig) -> Self {
        let cap = config.send_buffer;
        SendQueue {
            pending: BytesMut::new(),
            entries: VecDeque::new(),
            base: 0,
            entries_bytes: 0,
            lost: VecDeque::new(),
            cap,
            fin_requested: false,
            fin_seq: None,
            // Until the peer states its window, assume one message fits.
            peer_window: 64 * 1024,
            window: SendWindow::new(
                config.initial_send_window as u64,
                config.min_send_window as u64,
                (config.max_send_window as u64).max(config.min_send_window as u64),
            ),
            sacked_bytes: 0,
            delivered_sent_at: None,
            writer_blocked: false,
        }
    }

    fn next_seq(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// Bytes buffered: queued plus sent and unacknowledged.
    pub(crate) fn buffered(&self) -> usize {
        self.pending.len() + self.entries_bytes
    }

    /// Queues as much of `data` as fits; returns how much.
    pub(crate) fn write(&mut self, data: &[u8]) -> usize {
        let room = self.cap.saturating_sub(self.buffered());
        let n = room.min(data.len());
        if n < data.len() {
            self.writer_blocked = true;
        }
        if n > 0 {
            self.pending.extend_from_slice(&data[..n]);
        }
        n
    }

    pub(crate) fn finish(&mut self) {
        self.fin_requested = true;
    }

    pub(crate) fn is_finish_requested(&self) -> bool {
        self.fin_requested
    }

    /// The FIN was sent and acknowledged.
    pub(crate) fn is_fin_acked(&self) -> bool {
        matches!(self.fin_seq, Some(s) if s < self.base)
    }

    pub(crate) fn has_unacked(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Something could go into a bundle now: a lost message, new data within the peer's
    /// window, or the FIN.
    pub(crate) fn has_sendable(&self) -> bool {
        self.first_lost().is_some() || self.can_send_new() || self.fin_sendable()
    }

    fn first_lost(&self) -> Option<u64> {
        self.lost.iter().copied().find(|&seq| {
            seq >= self.base
                && self
                    .entries
                    .get((seq - self.base) as usize)
                    .is_some_and(|e| !e.acked && e.lost)
        })
    }

    fn can_send_new(&self) -> bool {
        !self.pending.is_empty() && self.window_room() > 0
    }

    /// New bytes that may be sent now: within the peer's receive window (counting everything
    /// unacknowledged) and within the send window (counting what is still in flight).
    fn window_room(&self) -> u64 {
        let unacked = self.entries_bytes as u64;
        let in_flight = unacked - self.sacked_bytes as u64;
        self.peer_window
            .saturating_sub(unacked)
            .min(self.window.bytes.saturating_sub(in_flight))
    }

    /// The highest recent delivery rate in bytes per second, once measured.
    pub(crate) fn delivery_rate(&self) -> Option<u64> {
        let best = self.window.rate_now.max(self.window.rate_before);
        (best > 0).then_some(best)
    }

    /// The current send window in bytes.
    pub(crate) fn send_window(&self) -> u64 {
        self.window.bytes
    }

    fn fin_sendable(&self) -> bool {
        self.fin_requested && self.fin_seq.is_none() && self.pending.is_empty()
    }

    /// Chooses what goes into a bundle of at most `budget` payload bytes (message overheads
    /// included) and `max_messages` messages, recording the chosen sequence numbers in `out`.
    /// New messages are cut from the queued bytes here. Returns the bytes the chosen frames take.
    pub(crate) fn plan(
        &mut self,
        budget: usize,
        max_messages: usize,
        max_message_len: usize,
        out: &mut Vec<u64>,
    ) -> usize {
        out.clear();
        let mut used = 0usize;
        // Resends first, in the order they were found lost.
        while out.len() < max_messages {
            let Some(&seq) = self.lost.front() else { break };
            let Some(entry) = seq
                .checked_sub(self.base)
                .and_then(|i| self.entries.get(i as usize))
            else {
                self.lost.pop_front();
                continue;
            };
            if entry.acked || !entry.lost {
                self.lost.pop_front();
                continue;
            }
            let cost = frame_cost(entry);
            if used + cost > budget {
                break;
            }
            self.lost.pop_front();
            used += cost;
            out.push(seq);
        }
        // New data within the windows, at most a quarter of the send window per bundle so
        // that several requests share it (one request per window would wait a round trip).
        let mut new_budget = usize::try_from(self.window.bytes / 4)
            .unwrap_or(usize::MAX)
            .max(MIN_NEW_PER_BUNDLE);
        while out.len() < max_messages && !self.pending.is_empty() {
            let window_room = self.window_room();
            if window_room == 0 {
                self.window.limited_now = true;
            }
            let space = budget
                .saturating_sub(used + MESSAGE_OVERHEAD)
                .min(new_budget.saturating_sub(MESSAGE_OVERHEAD));
            let n = self
                .pending
                .len()
                .min(max_message_len)
                .min(space)
                .min(usize::try_from(window_room).unwrap_or(usize::MAX));
            if n == 0 {
                break;
            }
            let data = self.pending.split_to(n).freeze();
            used += MESSAGE_OVERHEAD + n;
            new_budget = new_budget.saturating_sub(MESSAGE_OVERHEAD + n);
            self.entries_bytes += n;
            out.push(self.next_seq());
            self.entries.push_back(Entry {
                data,
                fin: false,
                bundle: 0,
                sent_at: Instant::ZERO,
                delivered_at_send: 0,
                resent: false,
                acked: false,
                lost: false,
            });
        }
        if self.fin_sendable() && out.len() < max_messages && used + FRAME_HEADER_LEN + 8 <= budget
        {
            used += FRAME_HEADER_LEN + 8;
            let seq = self.next_seq();
            self.fin_seq = Some(seq);
            out.push(seq);
            self.entries.push_back(Entry {
                data: Bytes::new(),
                fin: true,
                bundle: 0,
                sent_at: Instant::ZERO,
                delivered_at_send: 0,
                resent: false,
                acked: false,
                lost: false,
            });
        }
        used
    }

    /// Writes the planned messages and stamps them as sent in `bundle` at `now`.
    fn write_planned(
        &mut self,
        enc: &mut BundleEncoder<'_>,
        planned: &[u64],
        bundle: u64,
        now: Instant,
        stats: &mut Stats,
    ) {
        if core::mem::take(&mut self.window.limited_now) {
            self.window.limited_at = Some(now);
        }
        for &seq in planned {
            let Some(entry) = self.entries.get_mut((seq - self.base) as usize) else {
                continue;
            };
            if entry.fin {
                enc.fin(seq);
            } else {
                enc.message(seq, &entry.data);
                stats.bytes_sent += entry.data.len() as u64;
            }
            if entry.lost {
                stats.messages_resent += 1;
                entry.resent = true;
            }
            stats.messages_sent += 1;
            entry.lost = false;
            entry.bundle = bundle;
            entry.sent_at = now;
            entry.delivered_at_send = self.window.delivered;
        }
    }

    /// Applies the peer's acknowledgement, arriving at `now`.
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        ack: u64,
        sacks: impl Iterator<Item = SackRange>,
        window: u32,
        reorder_window: Option<Duration>,
    ) -> Result<(), &'static str> {
        let next = self.next_seq();
        if ack > next {
            return Err("acknowledgement of a message never sent");
        }
        if ack >= self.base {
            // A bundle overtaken by a newer acknowledgement carries a stale window.
            self.peer_window = u64::from(window);
        }
        // The newest message newly acknowledged: (sent at, delivered count then, resent).
        let mut newest: Option<(Instant, u64, bool)> = None;
        let mut delivered = 0u64;
        let mut note = |entry: &Entry| {
            delivered += entry.data.len().max(1) as u64;
            if newest.is_none_or(|(n, _, _)| entry.sent_at > n) {
                newest = Some((entry.sent_at, entry.delivered_at_send, entry.resent));
            }
        };
        while self.base < ack {
            // The loop runs at most entries.len() times: ack <= next_seq.
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            self.base += 1;
            self.entries_bytes -= entry.data.len();
            if entry.acked {
                self.sacked_bytes -= entry.data.len();
            } else {
                note(&entry);
            }
        }
        for range in sacks {
            if range.end > next {
                return Err("selective acknowledgement of a message never sent");
            }
            let start = range.start.max(self.base);
            for seq in start..range.end {
                let i = (seq - self.base) as usize;
                let entry = &mut self.entries[i];
                if !entry.acked {
                    entry.acked = true;
                    self.sacked_bytes += entry.data.len();
                    note(entry);
                }
            }
        }
        self.window.delivered += delivered;
        if let Some((sent_at, delivered_then, false)) = newest {
            self.window.sample(now, sent_at, delivered_then);
        }
        let newest = newest.map(|(sent_at, _, _)| sent_at);
        if let Some(n) = newest {
            if self.delivered_sent_at.is_none_or(|d| n > d) {
                self.delivered_sent_at = Some(n);
            }
        }
        // RACK (RFC 8985): a message sent more than the reorder window before one already
        // delivered is not coming. Parallel connections through a busy path reorder by far
        // more than TCP's quarter round trip (one connection's body waits behind another's
        // in the bottleneck queue), and the peer reports lost exchanges exactly, so this is a
        // safety net: the window is four round trips (of the message just delivered), at
        // least `reorder_window`.
        let Some(reorder_window) = reorder_window else {
            return Ok(());
        };
        let window = newest.map_or(reorder_window, |sent| {
            reorder_window.max(now.saturating_duration_since(sent) * 4)
        });
        if let Some(horizon) = self.delivered_sent_at.map(|d| d - window) {
            for (i, entry) in self.entries.iter_mut().enumerate() {
                if !entry.acked && !entry.lost && entry.sent_at < horizon {
                    entry.lost = true;
                    self.lost.push_back(self.base + i as u64);
                }
            }
        }
        Ok(())
    }

    /// The bundle `bundle` is known lost: its unacknowledged messages are to be resent.
    pub(crate) fn on_bundle_lost(&mut self, bundle: u64) -> bool {
        let mut any = false;
        for (i, entry) in self.entries.iter_mut().enumerate() {
            if entry.bundle == bundle && !entry.acked && !entry.lost {
                entry.lost = true;
                self.lost.push_back(self.base + i as u64);
                any = true;
            }
        }
        any
    }

    /// Whether any unacknowledged message was last sent in `bundle`.
    pub(crate) fn bundle_has_unacked(&self, bundle: u64) -> bool {
        self.entries.iter().any(|e| e.bundle == bundle && !e.acked)
    }

    /// Reports (once) that buffer space appeared after a refused write.
    pub(crate) fn take_writable(&mut self) -> bool {
        if self.writer_blocked && self.buffered() < self.cap {
            self.writer_blocked = false;
            return true;
        }
        false
    }
}

fn frame_cost(entry: &Entry) -> usize {
    if entry.fin {
        FRAME_HEADER_LEN + 8
    } else {
        MESSAGE_OVERHEAD + entry.data.len()
    }
}

/// The receiving half: in-order data waiting for the application, and out-of-order messages.
#[derive(Debug)]
pub(crate) struct RecvQueue {
    next: u64,
    ready: VecDeque<Bytes>,
    ready_len: usize,
    /// Out-of-order messages; an empty payload marks the FIN.
    out_of_order: BTreeMap<u64, Bytes>,
    /// Payload bytes held out of order.
    out_of_order_bytes: usize,
    fin_seq: Option<u64>,
    cap: usize,
    max_out_of_order: usize,
    /// The window last advertised to the peer.
    advertised: u32,
}

impl RecvQueue {
    pub(crate) fn new(cap: usize, max_out_of_order: usize) -> Self {
        RecvQueue {
            next: 0,
            ready: VecDeque::new(),
            ready_len: 0,
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            fin_seq: None,
            cap,
            max_out_of_order,
            advertised: 0,
        }
    }

    /// The cumulative acknowledgement: the next sequence number expected.
    pub(crate) fn ack(&self) -> u64 {
        self.next
    }

    /// The window to advertise, in bytes from the cumulative acknowledgement.
    pub(crate) fn window(&self) -> u32 {
        u32::try_from(self.cap.saturating_sub(self.ready_len)).unwrap_or(u32::MAX)
    }

    /// The peer's FIN arrived in order: after the ready bytes, the stream ends.
    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.fin_seq, Some(s) if s < self.next)
    }

    /// Payload bytes held: never more than the receive buffer. (Out-of-order bookkeeping adds
    /// at most `max_out_of_order` small entries on top.)
    pub(crate) fn buffered(&self) -> usize {
        self.ready_len + self.out_of_order_bytes
    }

    /// Takes one message. Returns whether it was new.
    pub(crate) fn on_message(&mut self, seq: u64, payload: Bytes) -> Result<bool, &'static str> {
        if seq < self.next || self.out_of_order.contains_key(&seq) {
            return Ok(false);
        }
        if seq - self.next >= MAX_SEQ_AHEAD {
            return Err("message sequence number out of range");
        }
        if matches!(self.fin_seq, Some(f) if seq >= f) {
            return Err("message after the end of the stream");
        }
        // Whatever its place, a message must fit with everything held: a sender within the
        // advertised window always fits; one beyond it is dropped, so never acknowledged.
        if self.buffered() + payload.len() > self.cap {
            return Ok(false);
        }
        if seq == self.next {
            self.ready_len += payload.len();
            self.ready.push_back(payload);
            self.next += 1;
            self.drain_in_order();
            return Ok(true);
        }
        if self.out_of_order.len() >= self.max_out_of_order {
            return Ok(false);
        }
        self.out_of_order_bytes += payload.len();
        self.out_of_order.insert(seq, payload);
        Ok(true)
    }

    /// Takes the FIN. Returns whether it was new.
    pub(crate) fn on_fin(&mut self, seq: u64) -> Result<bool, &'static str> {
        match self.fin_seq {
            Some(f) if f == seq => return Ok(false),
            Some(_) => return Err("two different ends of stream"),
            None => {}
        }
        if seq < self.next {
            return Err("end of stream inside received data");
        }
        if seq - self.next >= MAX_SEQ_AHEAD {
            return Err("end of stream sequence number out of range");
        }
        if self.out_of_order.range(seq..).next().is_some() {
            return Err("end of stream before received data");
        }
        self.fin_seq = Some(seq);
        if seq == self.next {
            self.next += 1;
        } else {
            self.out_of_order.insert(seq, Bytes::new());
        }
        Ok(true)
    }

    fn drain_in_order(&mut self) {
        while let Some(entry) = self.out_of_order.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            let payload = entry.remove();
            self.out_of_order_bytes -= payload.len();
            self.next += 1;
            if !payload.is_empty() {
                self.ready_len += payload.len();
                self.ready.push_back(payload);
            }
        }
    }

    /// Copies ready bytes into `buf`.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = self.ready.front_mut() else {
                break;
            };
            let take = front.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&front[..take]);
            front.advance(take);
            n += take;
            if front.is_empty() {
                self.ready.pop_front();
            }
        }
        self.ready_len -= n;
        n
    }

    /// Takes up to `max` ready bytes without copying.
    pub(crate) fn read_chunk(&mut self, max: usize) -> Option<Bytes> {
        let front = self.ready.front_mut()?;
        let chunk = if front.len() <= max {
            self.ready.pop_front()?
        } else {
            front.split_to(max)
        };
        self.ready_len -= chunk.len();
        Some(chunk)
    }

    /// Fills `out` with SACK ranges above the cumulative acknowledgement (lowest first).
    pub(crate) fn sacks(&self, out: &mut Vec<SackRange>, max: usize) {
        out.clear();
        for &seq in self.out_of_order.keys() {
            match out.last_mut() {
                Some(last) if last.end == seq => last.end += 1,
                _ => {
                    if out.len() == max {
                        break;
                    }
                    out.push(SackRange {
                        start: seq,
                        end: seq + 1,
                    });
                }
            }
        }
    }

    /// Whether the window grew enough since last advertised that the peer should hear of it.
    pub(crate) fn window_opened(&self) -> bool {
        let now = self.window();
        let quarter = u32::try_from(self.cap / 4).unwrap_or(u32::MAX);
        self.advertised < quarter && now >= quarter.saturating_mul(2)
    }
}

/// The stream state of one session plus reusable scratch space for building bundles.
#[derive(Debug)]
pub(crate) struct Stream {
    pub send: SendQueue,
    pub recv: RecvQueue,
    pub stats: Stats,
    sack_scratch: Vec<SackRange>,
    plan_scratch: Vec<u64>,
    /// The RACK reorder window; `None` where every loss is detected exactly instead.
    reorder_window: Option<Duration>,
}

/// A bundle ready to be written: its exact length is known before the HTTP head is.
#[must_use]
pub(crate) struct PlannedBundle {
    pub len: usize,
    /// Messages (and FIN) chosen.
    pub messages: usize,
}

impl Stream {
    /// `rack`: detect losses by reordering (RACK). The client does not need it: each answer
    /// acknowledges its own request's messages, so a message is lost exactly when its request
    /// fails or its answer does not acknowledge it; guessing from reordering across parallel
    /// connections would only resend what is still on its way.
    pub(crate) fn new(config: &SessionConfig, rack: bool) -> Self {
        Stream {
            send: SendQueue::new(config),
            recv: RecvQueue::new(config.recv_buffer, config.max_out_of_order),
            stats: Stats::default(),
            sack_scratch: Vec::new(),
            plan_scratch: Vec::new(),
            reorder_window: rack.then_some(config.reorder_window),
        }
    }

    /// Chooses the contents of the next bundle. `allow_data` false sends acknowledgements and
    /// controls only.
    pub(crate) fn plan(
        &mut self,
        config: &SessionConfig,
        controls: &[Control],
        allow_data: bool,
        tagged: bool,
    ) -> PlannedBundle {
        let max_sacks = config.wire.max_sack_ranges.min(32);
        self.recv.sacks(&mut self.sack_scratch, max_sacks);
        let controls_len: usize = controls.iter().map(Control::encoded_len).sum();
        let tag_len = if tagged { usize::from(TAG_LEN) } else { 0 };
        let fixed = wire::bundle_len(self.sack_scratch.len(), controls_len, tag_len);
        let frames_len = if allow_data {
            let budget = config.max_bundle_len.saturating_sub(fixed);
            self.send.plan(
                budget,
                config.max_bundle_messages,
                config.max_message_len,
                &mut self.plan_scratch,
            )
        } else {
            self.plan_scratch.clear();
            0
        };
        PlannedBundle {
            len: fixed + frames_len,
            messages: self.plan_scratch.len(),
        }
    }

    /// Writes the planned bundle to `buf`, tagged with `key` if given (as planned).
    #[allow(clippy::too_many_arguments)] // One call site per role; a struct would only rename them.
    pub(crate) fn write(
        &mut self,
        planned: PlannedBundle,
        buf: &mut Vec<u8>,
        mut header: Header,
        controls: &[Control],
        bundle: u64,
        now: Instant,
        key: Option<&Key>,
    ) {
        header.ack = self.recv.ack();
        header.window = self.recv.window();
        self.recv.advertised = header.window;
        let start = buf.len();
        let tag_len = if key.is_some() { TAG_LEN } else { 0 };
        let mut enc = BundleEncoder::new(buf, &header, &self.sack_scratch, tag_len);
        for control in controls {
            control.encode(&mut enc);
        }
        let planned_seqs = core::mem::take(&mut self.plan_scratch);
        self.send
            .write_planned(&mut enc, &planned_seqs, bundle, now, &mut self.stats);
        self.plan_scratch = planned_seqs;
        let written = match key {
            Some(key) => enc.finish(|data, tag| key.sign(data, tag)),
            None => enc.finish_untagged(),
        };
        debug_assert_eq!(written, planned.len);
        debug_assert_eq!(buf.len() - start, planned.len);
    }

    /// Applies a received bundle, arriving at `now`: acknowledgements, messages and control
    /// frames.
    pub(crate) fn process(
        &mut self,
        bundle: &Bundle,
        now: Instant,
    ) -> Result<ReceivedControls, &'static str> {
        let header = bundle.header();
        let mut controls = ReceivedControls::default();
        self.send.on_ack(
            now,
            header.ack,
            bundle.sacks(),
            header.window,
            self.reorder_window,
        )?;
        for frame in bundle.frames() {
            match frame {
                Frame::Message { seq, payload } => {
                    let len = payload.len();
                    if self.recv.on_message(seq, payload)? {
                        controls.new_data = true;
                        self.stats.bytes_received += len as u64;
                    }
                }
                Frame::Fin { seq } => {
                    if self.recv.on_fin(seq)? {
                        controls.new_data = true;
                    }
                }
                Frame::Open { nonce, max_wait_ms } => controls.open = Some((nonce, max_wait_ms)),
                Frame::Close => controls.close = true,
                Frame::Abort { code, reason } => {
                    let text = core::str::from_utf8(&reason).unwrap_or("");
                    controls.abort = Some((code, String::from(text)));
                }
                Frame::Unreadable { rid } => {
                    if controls.unreadable_count < MAX_REPORTS {
                        controls.unreadable[controls.unreadable_count] = rid;
                        controls.unreadable_count += 1;
                    }
                }
                Frame::Unknown { .. } => {}
            }
        }
        Ok(controls)
    }

    /// Both directions finished and were acknowledged.
    pub(crate) fn is_done(&self) -> bool {
        self.send.is_fin_acked() && self.recv.is_finished()
    }
}
