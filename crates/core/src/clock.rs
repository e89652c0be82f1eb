//! Time, passed in. The core's decisions take `now` as an argument; the
//! parts that wait or expire (the worker's schedules, the cache's entries)
//! read it from a [`Clock`], so that tests move time instead of sleeping.

use chrono::{DateTime, Utc};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the time comes from.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Wall-clock time.
    fn now(&self) -> DateTime<Utc>;
    /// Monotonic time, for expiries and back-offs.
    fn instant(&self) -> Instant;
}

/// The system's clocks: the one place a running syncd reads them for
/// what a clock decides.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told: both its times advance together.
#[derive(Debug)]
pub struct ManualClock {
    wall: DateTime<Utc>,
    origin: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at `wall`.
    pub fn at(wall: DateTime<Utc>) -> ManualClock {
        ManualClock {
            wall,
            origin: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().expect("clock lock") += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().expect("clock lock")
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.wall + chrono::Duration::from_std(self.elapsed()).expect("a test's time span")
    }

    fn instant(&self) -> Instant {
        self.origin + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_manual_clock_moves_both_times_together_and_only_when_told() {
        let start = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
        let clock = ManualClock::at(start);
        let (wall, mono) = (clock.now(), clock.instant());
        assert_eq!(wall, start);
        assert_eq!(clock.instant(), mono, "it does not move by itself");
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - wall, chrono::Duration::milliseconds(1500));
        assert_eq!(clock.instant() - mono, Duration::from_millis(1500));
    }
}
