//! The clock entries expire on: `CLOCK_MONOTONIC`, the same in every process of one boot
//! (unlike `Instant`, whose value cannot be shared, or wall time, which jumps).

use nix::time::{clock_gettime, ClockId};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds on `CLOCK_MONOTONIC`, never 0 (0 means "no deadline" in a record).
pub fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    (t.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec() as u64)
        .max(1)
}

/// Nanoseconds since the Unix epoch (display only).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}
