//! The core's notion of time.
//!
//! The core never reads a clock. Drivers pass [`Instant`]s they derive from their own clock (for
//! example microseconds since the driver started); the simulated network passes virtual time.
//! An earlier `now` than one seen before is clamped, never an error.

use core::ops::{Add, Sub};
use core::time::Duration;

/// A point in time: microseconds since an epoch chosen by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The driver's epoch.
    pub const ZERO: Instant = Instant(0);

    /// An instant `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Instant(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        let micros = u64::try_from(rhs.as_micros()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(micros))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        let micros = u64::try_from(rhs.as_micros()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_sub(micros))
    }
}

/// Conversions from and to `std::time::Instant` for drivers.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: std::time::Instant,
}

#[cfg(feature = "std")]
impl Clock {
    /// A clock whose epoch is `epoch`.
    pub fn new(epoch: std::time::Instant) -> Self {
        Clock { epoch }
    }

    /// Converts a std instant (clamped to the epoch).
    pub fn instant(&self, at: std::time::Instant) -> Instant {
        let micros = at.saturating_duration_since(self.epoch).as_micros();
        Instant(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// Converts a core instant back to a std instant.
    pub fn to_std(&self, at: Instant) -> std::time::Instant {
        self.epoch + Duration::from_micros(at.0)
    }
}

/// Keeps `now` monotonic: returns the later of `last` and `now` and remembers it.
pub(crate) fn advance(last: &mut Instant, now: Instant) -> Instant {
    if now > *last {
        *last = now;
    }
    *last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_micros(5);
        assert_eq!((t - Duration::from_secs(1)).as_micros(), 0);
        assert_eq!(
            (Instant::from_micros(u64::MAX) + Duration::from_secs(1)).as_micros(),
            u64::MAX
        );
        assert_eq!(
            t.saturating_duration_since(Instant::from_micros(9)),
            Duration::ZERO
        );
        let mut last = Instant::from_micros(10);
        assert_eq!(advance(&mut last, Instant::from_micros(3)).as_micros(), 10);
        assert_eq!(advance(&mut last, Instant::from_micros(30)).as_micros(), 30);
    }
}
