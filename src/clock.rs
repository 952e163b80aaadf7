//! The clock entries expire on: `CLOCK_MONOTONIC`, the same in every process of one boot
//! (unlike `Instant`, whose value cannot be shared, or wall time, which jumps).

use crate::sys::clock::read_ns;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds on `CLOCK_MONOTONIC`, never 0 (0 means "no deadline" in a record).
#[inline]
pub fn monotonic_ns() -> u64 {
    read_ns(libc::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available")
        .max(1)
}

/// How far ahead of the coarse clock a deadline must lie for [`expired`] to trust that
/// clock. `CLOCK_MONOTONIC_COARSE` is the monotonic time of the kernel's last tick, so it
/// trails the precise clock by about one tick (1 to 10 ms with `HZ` 1000 to 100) and
/// never leads it; 100 ms is ten ticks at the slowest common rate.
pub const COARSE_MARGIN_NS: u64 = 100_000_000;

/// Whether `deadline` (ns on `CLOCK_MONOTONIC`, not 0) has passed. Reads the coarse
/// clock (a few ns, no time-stamp counter read), and the precise one, into `precise`,
/// only when the deadline lies within [`COARSE_MARGIN_NS`] of it: a deadline already
/// behind the coarse clock is behind the precise one too, and one further than the
/// margin ahead of it is still ahead of the precise one.
#[inline]
pub fn expired(deadline: u64, precise: &mut Option<u64>) -> bool {
    if let Some(coarse) = coarse_ns() {
        if deadline <= coarse {
            return true;
        }
        if deadline - coarse > COARSE_MARGIN_NS {
            return false;
        }
    }
    *precise.get_or_insert_with(monotonic_ns) >= deadline
}

/// Nanoseconds on `CLOCK_MONOTONIC_COARSE` (see [`COARSE_MARGIN_NS`]).
#[inline]
fn coarse_ns() -> Option<u64> {
    read_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// Nanoseconds since the Unix epoch (display only).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn the_coarse_check_agrees_with_the_precise_clock() {
        let now = monotonic_ns();
        let mut p = None;
        assert!(expired(now, &mut p), "a deadline already reached");
        assert!(expired(1, &mut None), "a deadline long past");
        assert!(
            !expired(now + 3_600_000_000_000, &mut None),
            "an hour ahead"
        );
        // Within the margin the precise clock decides (read once, into `p`). A thread
        // preempted for 80 ms may find the deadline behind the coarse clock and skip it:
        // then it has really passed.
        let deadline = monotonic_ns() + COARSE_MARGIN_NS * 8 / 10;
        let mut p = None;
        let e = expired(deadline, &mut p);
        match p {
            Some(p) => assert_eq!(e, p >= deadline),
            None => assert!(!e || monotonic_ns() >= deadline),
        }
        // A deadline far past the margin needs no precise read.
        let mut p = None;
        assert!(!expired(monotonic_ns() + 10 * COARSE_MARGIN_NS, &mut p));
        assert!(p.is_none(), "far deadlines need no precise read");
        // The coarse clock never leads the precise one.
        for _ in 0..1000 {
            let c = coarse_ns().unwrap();
            assert!(c <= monotonic_ns());
        }
    }
}
