//! Pieces both owner tasks share: the clock, the OS entropy source, waiting for input or a
//! deadline, and the application side's nudge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use holdwire_proto::time::Clock;
use holdwire_proto::{Entropy, Instant};
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt as _;
use smol::Timer;

use crate::conn::Input;

/// Most inputs fed to the core per wake-up before its outputs are drained again.
pub(crate) const BATCH: usize = 64;

/// The OS CSPRNG as the core's [`Entropy`].
pub(crate) struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        random(buf);
    }
}

/// Fills `buf` from the OS CSPRNG.
pub(crate) fn random(buf: &mut [u8]) {
    // The OS generator only fails on platforms without one or before the kernel seeded it;
    // neither leaves a safe way to make session ids, so this is fatal.
    getrandom::fill(buf).expect("the OS random number generator failed");
}

/// The clock one core sees: `std::time::Instant` mapped onto the core's microseconds.
pub(crate) struct CoreClock(Clock);

impl CoreClock {
    pub(crate) fn new() -> Self {
        CoreClock(Clock::new(std::time::Instant::now()))
    }

    pub(crate) fn now(&self) -> Instant {
        self.0.instant(std::time::Instant::now())
    }

    fn to_std(&self, at: Instant) -> std::time::Instant {
        self.0.to_std(at)
    }
}

/// What woke an owner task.
pub(crate) enum Wake {
    Input(Input),
    Deadline,
    /// Every sender is gone (cannot happen while the shared state lives).
    Closed,
}

/// Waits for the next input, or for `deadline`.
pub(crate) async fn wait(
    rx: &Receiver<Input>,
    deadline: Option<Instant>,
    clock: &CoreClock,
) -> Wake {
    let input = async {
        match rx.recv().await {
            Ok(input) => Wake::Input(input),
            Err(_) => Wake::Closed,
        }
    };
    match deadline {
        Some(at) => {
            let at = clock.to_std(at);
            input
                .or(async {
                    Timer::at(at).await;
                    Wake::Deadline
                })
                .await
        }
        None => input.await,
    }
}

/// Tells the owner task to recompute its deadline, at most one message in flight.
pub(crate) struct Kicker {
    pending: AtomicBool,
    inbox: Sender<Input>,
}

impl Kicker {
    pub(crate) fn new(inbox: Sender<Input>) -> Self {
        Kicker {
            pending: AtomicBool::new(false),
            inbox,
        }
    }

    pub(crate) fn inbox(&self) -> &Sender<Input> {
        &self.inbox
    }

    /// Called by the owner, under the state lock, before it computes its deadline.
    pub(crate) fn reset(&self) {
        self.pending.store(false, Ordering::Relaxed);
    }

    /// Called under the state lock when the core's deadline moved before the armed one. A
    /// full inbox needs no message: the owner is about to wake and recompute anyway.
    pub(crate) fn kick(&self) {
        if !self.pending.swap(true, Ordering::Relaxed) {
            let _ = self.inbox.try_send(Input::Kick);
        }
    }
}

/// Whether `new` is earlier than the deadline the owner waits for.
pub(crate) fn earlier(new: Option<Instant>, armed: Option<Instant>) -> bool {
    match (new, armed) {
        (Some(n), Some(a)) => n < a,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Locks a state mutex, ignoring poisoning: a panic while it was held is a bug in the core or
/// the driver, and the other sessions sharing the lock are better served by going on.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
