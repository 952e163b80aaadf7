//! When a persistent namespace saves itself: cacheman's rule, over edit counters kept in
//! the segment so that every process's edits count.
//!
//! Edits are counted in time buckets. A threshold `(window, edits)` counts the edits whose
//! age is at least the previous threshold's window and less than its own; a save is due as
//! soon as one count reaches its `edits`. With the defaults, 10,000 edits within a minute,
//! 10 edits aged one to five minutes, or one edit aged five to fifteen minutes. Counts are
//! looked at when an edit happens; the optional interval timer also looks, so a lone edit
//! is saved even if no other edit follows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets of the ring, in the namespace's slot of the segment.
pub const BUCKETS: usize = 15;
const COUNT_BITS: u32 = 24;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

/// Save thresholds of a persistent namespace ([`crate::Persistence::autosync`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoSync {
    checks: Vec<(Duration, u64)>,
    bucket: Duration,
    interval: Option<Duration>,
}

impl Default for AutoSync {
    /// cacheman's defaults: 10,000 edits in 60 s, 10 in 60–300 s, 1 in 300–900 s; one-minute
    /// buckets; no timer.
    fn default() -> Self {
        AutoSync {
            checks: vec![
                (Duration::from_secs(60), 10_000),
                (Duration::from_secs(300), 10),
                (Duration::from_secs(900), 1),
            ],
            bucket: Duration::from_secs(60),
            interval: None,
        }
    }
}

impl AutoSync {
    /// The defaults (see [`Default`]).
    pub fn new() -> AutoSync {
        AutoSync::default()
    }

    /// Replaces the thresholds: `(window, edits)` pairs, sorted by window. The bucket
    /// becomes the longest window over the 15 buckets, in whole seconds (1 s at least);
    /// windows are counted in whole buckets, rounded up.
    pub fn thresholds(mut self, checks: &[(Duration, u64)]) -> AutoSync {
        let mut c = checks.to_vec();
        c.sort_by_key(|&(w, _)| w);
        let longest = c.last().map_or(1, |&(w, _)| w.as_secs().max(1));
        let secs = longest.div_ceil(BUCKETS as u64).max(1);
        self.bucket = Duration::from_secs(secs);
        self.checks = c;
        self
    }

    /// Also checks every `interval`, on a thread of this process, whether a save is due or
    /// edits are waiting, and saves then. Without it, a lone edit waits for the next one.
    pub fn interval(mut self, every: Duration) -> AutoSync {
        self.interval = Some(every);
        self
    }

    /// The timer's interval, if any.
    pub fn timer(&self) -> Option<Duration> {
        self.interval
    }

    fn bucket_secs(&self) -> u64 {
        self.bucket.as_secs().max(1)
    }

    /// Records one edit at `now` (time since the Unix epoch) in `ring`.
    pub(crate) fn record(&self, ring: &[AtomicU64], now: Duration) {
        if ring.is_empty() {
            return;
        }
        let epoch = now.as_secs() / self.bucket_secs();
        let w = &ring[(epoch % ring.len() as u64) as usize];
        let mut cur = w.load(Ordering::Acquire);
        loop {
            let next = if cur >> COUNT_BITS != epoch {
                (epoch << COUNT_BITS) | 1
            } else if cur & COUNT_MAX == COUNT_MAX {
                cur
            } else {
                cur + 1
            };
            match w.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Edits in `ring` whose age in buckets is in `lo..hi` at `now`.
    fn count(&self, ring: &[AtomicU64], now: Duration, lo: u64, hi: u64) -> u64 {
        let epoch = now.as_secs() / self.bucket_secs();
        ring.iter()
            .map(|w| w.load(Ordering::Acquire))
            .filter(|&v| v != 0 && v >> COUNT_BITS <= epoch)
            .filter(|&v| (lo..hi).contains(&(epoch - (v >> COUNT_BITS))))
            .map(|v| v & COUNT_MAX)
            .sum()
    }

    /// Whether a save is due at `now`.
    pub(crate) fn due(&self, ring: &[AtomicU64], now: Duration) -> bool {
        let b = self.bucket_secs();
        let mut lo = 0;
        for &(window, edits) in &self.checks {
            let hi = window.as_secs().div_ceil(b).max(lo + 1);
            if self.count(ring, now, lo, hi) >= edits.max(1) {
                return true;
            }
            lo = hi;
        }
        false
    }

    /// Whether any edit is counted.
    pub(crate) fn pending(&self, ring: &[AtomicU64]) -> bool {
        ring.iter()
            .any(|w| w.load(Ordering::Acquire) & COUNT_MAX != 0)
    }

    /// Forgets every edit (a save or a load just happened).
    pub(crate) fn reset(&self, ring: &[AtomicU64]) {
        for w in ring {
            w.store(0, Ordering::Release);
        }
    }
}

/// Edit counters in memory of their own, with a clock of the caller's: the same rule as a
/// persistent namespace applies, for checking thresholds (cacheman's tests use a fake
/// clock the same way).
///
/// ```
/// use shmemcache::{AutoSync, EditWindow};
/// use std::time::Duration;
///
/// let s = Duration::from_secs;
/// let rule = AutoSync::new().thresholds(&[(s(1), 2), (s(5), 10)]);
/// let mut w = EditWindow::new(rule);
/// assert!(!w.edit(s(100))); // one edit: no save
/// assert!(w.edit(s(100))); // two in a second: save (and the count starts over)
/// ```
pub struct EditWindow {
    rule: AutoSync,
    ring: Vec<AtomicU64>,
}

impl EditWindow {
    /// Counters for `rule`, all zero.
    pub fn new(rule: AutoSync) -> EditWindow {
        EditWindow {
            rule,
            ring: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records an edit at `now` (any monotonic origin); true if a save is due, in which
    /// case the counts start over, as after a save.
    pub fn edit(&mut self, now: Duration) -> bool {
        self.rule.record(&self.ring, now);
        self.check(now)
    }

    /// True if a save is due at `now` (the counts then start over).
    pub fn check(&mut self, now: Duration) -> bool {
        let due = self.rule.due(&self.ring, now);
        if due {
            self.rule.reset(&self.ring);
        }
        due
    }

    /// Edits counted in the window of threshold `i` at `now`.
    pub fn edits_in(&self, i: usize, now: Duration) -> u64 {
        let b = self.rule.bucket_secs();
        let mut lo = 0;
        for (j, &(window, _)) in self.rule.checks.iter().enumerate() {
            let hi = window.as_secs().div_ceil(b).max(lo + 1);
            if j == i {
                return self.rule.count(&self.ring, now, lo, hi);
            }
            lo = hi;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// cacheman's fast settings: 2 edits within 1 s, or 10 aged 1 to 5 s.
    fn fast() -> EditWindow {
        EditWindow::new(AutoSync::new().thresholds(&[(s(1), 2), (s(5), 10)]))
    }

    #[test]
    fn one_edit_does_not_save_two_in_a_second_do() {
        let mut w = fast();
        let t = s(1_000);
        assert!(!w.edit(t));
        assert!(w.edit(t));
        // Counts start over after the save.
        assert!(!w.edit(t));
    }

    #[test]
    fn edits_two_seconds_apart_do_not_save() {
        let mut w = fast();
        assert!(!w.edit(s(1_000)));
        assert!(!w.edit(s(1_002)));
        assert_eq!(w.edits_in(0, s(1_002)), 1);
        assert_eq!(w.edits_in(1, s(1_002)), 1);
    }

    #[test]
    fn ten_edits_in_one_second_save_every_second_edit() {
        let mut w = fast();
        let saves = (0..10).filter(|_| w.edit(s(2_000))).count();
        assert_eq!(saves, 5);
    }

    #[test]
    fn edits_move_out_of_the_windows() {
        let mut w = fast();
        // One second apart: neither threshold is met.
        assert!(!w.edit(s(5_000)));
        assert!(!w.edit(s(5_001)));
        assert_eq!(w.edits_in(0, s(5_001)), 1);
        assert_eq!(w.edits_in(1, s(5_001)), 1);
        assert_eq!(w.edits_in(1, s(5_004)), 2);
        assert_eq!(w.edits_in(1, s(5_006)), 0, "both aged out after 5 s");
        assert_eq!(w.edits_in(1, s(5_100)), 0);
        // Edits from the future of a clock that went back are not counted.
        assert_eq!(w.edits_in(0, s(4_000)), 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "10,000 edits: too slow under Miri")]
    fn defaults_use_minute_buckets() {
        let mut w = EditWindow::new(AutoSync::new());
        let t0 = s(60 * 1_000);
        for _ in 0..9_999 {
            assert!(!w.edit(t0));
        }
        assert!(w.edit(t0), "the 10,000th edit within a minute saves");
        // One lone edit is due once it is five minutes old, at a check.
        assert!(!w.edit(t0));
        assert!(!w.check(t0 + s(240)));
        assert!(w.check(t0 + s(300)));
    }

    #[test]
    fn bucket_fits_every_window() {
        let r = AutoSync::new().thresholds(&[(s(10), 1), (s(45), 2)]);
        assert_eq!(r.bucket_secs(), 3);
        let r = AutoSync::new().thresholds(&[(s(60), 10_000), (s(300), 10), (s(900), 1)]);
        assert_eq!(r, AutoSync::new());
        let r = AutoSync::new().thresholds(&[(s(7), 1)]);
        assert_eq!(r.bucket_secs(), 1);
    }
}
