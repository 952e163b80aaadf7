//! Hit and miss counters that do not serialize gets: each process bumps its own slot of the
//! segment's per-process table (`layout::PROC_SLOTS`), lines no other process writes, and
//! `stats()` sums every slot. The slot also counts the gets of the first named namespaces
//! (`layout::PROC_NS`) and the hits of memoized calls (`layout::PROC_MEMO` functions),
//! so a memoized hit writes no shared line either.
//!
//! A slot is claimed on a process's first counted read: a slot this process owns already
//! (another handle to the segment), else a free one, else one whose owner is dead (the
//! same pid and start-time check the coordination table uses). Counts go straight into
//! the segment, so a process that exits, cleanly or killed, loses none; whoever claims its
//! slot next counts on top of its totals. With every slot held by a live process, a
//! process shares one: still exact, as every bump is an atomic add.

use crate::layout::{proc_word, PROC_SLOTS, PROC_WORDS};
use crate::sys::segment::Segment;
use crate::sys::{fork, process};
use std::sync::atomic::{AtomicU64, Ordering};

/// Adds one to word `word` ([`proc_word::HITS`] or [`proc_word::MISSES`]) of this process's
/// slot.
#[inline]
pub(crate) fn bump(seg: &Segment, word: usize) {
    let slot = slot(seg);
    if let Some(w) = seg.proc_words().get(slot * PROC_WORDS + word) {
        w.fetch_add(1, Ordering::Relaxed);
    }
}

/// Adds one to the hits of memo statistics slot `memo` in this process's slot: slot 0 (all
/// memoized calls) has its own word; a function's slot takes one of the process's pairs.
/// False when every pair belongs to other functions: the caller bumps the shared word.
#[inline]
pub(crate) fn bump_memo_hit(seg: &Segment, memo: usize) -> bool {
    use crate::layout::PROC_MEMO;
    let slot = slot(seg);
    let Some(mine) = seg
        .proc_words()
        .get(slot * PROC_WORDS..(slot + 1) * PROC_WORDS)
    else {
        return false;
    };
    if memo == 0 {
        mine[proc_word::MEMO_HITS].fetch_add(1, Ordering::Relaxed);
        return true;
    }
    let id = memo as u64 + 1;
    let pairs = mine[proc_word::MEMO..proc_word::MEMO + 2 * PROC_MEMO].chunks_exact(2);
    for pair in pairs {
        let held = pair[0].load(Ordering::Relaxed);
        let ours = held == id
            || (held == 0
                && match pair[0].compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => true,
                    Err(now) => now == id,
                });
        if ours {
            pair[1].fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }
    false
}

/// The hits of memo statistics slot `memo` counted in every process's slot.
pub(crate) fn memo_hits(seg: &Segment, memo: usize) -> u64 {
    use crate::layout::PROC_MEMO;
    let id = memo as u64 + 1;
    seg.proc_words()
        .chunks_exact(PROC_WORDS)
        .map(|s| {
            if memo == 0 {
                return s[proc_word::MEMO_HITS].load(Ordering::Relaxed);
            }
            s[proc_word::MEMO..proc_word::MEMO + 2 * PROC_MEMO]
                .chunks_exact(2)
                .filter(|p| p[0].load(Ordering::Relaxed) == id)
                .map(|p| p[1].load(Ordering::Relaxed))
                .fold(0u64, u64::wrapping_add)
        })
        .fold(0u64, u64::wrapping_add)
}

/// Every process's hits (or misses): [`proc_word::HITS`] and the per-process namespace
/// words, which count the gets of their namespaces instead of it.
pub(crate) fn total_gets(seg: &Segment, hit: bool) -> u64 {
    use crate::layout::{proc_ns_word, PROC_NS};
    let base = if hit {
        proc_word::HITS
    } else {
        proc_word::MISSES
    };
    let words = || std::iter::once(base).chain((1..=PROC_NS).filter_map(|n| proc_ns_word(n, hit)));
    seg.proc_words()
        .chunks_exact(PROC_WORDS)
        .flat_map(|s| words().map(move |w| s[w].load(Ordering::Relaxed)))
        .fold(0u64, u64::wrapping_add)
}

/// Sums word `word` over every slot.
pub(crate) fn total(seg: &Segment, word: usize) -> u64 {
    seg.proc_words()
        .chunks_exact(PROC_WORDS)
        .map(|s| s[word].load(Ordering::Relaxed))
        .fold(0u64, u64::wrapping_add)
}

/// This process's slot: claimed once per mapping and again after a fork.
#[inline]
fn slot(seg: &Segment) -> usize {
    let claim = seg.proc_claim().load(Ordering::Relaxed);
    let gen = fork::generation() & 0xffff_ffff;
    // The claim: (fork generation + 1) << 32 | slot; 0 = none yet.
    if claim >> 32 == gen + 1 {
        return (claim & 0xffff_ffff) as usize;
    }
    let s = claim_slot(seg.proc_words());
    seg.proc_claim()
        .store(((gen + 1) << 32) | s as u64, Ordering::Relaxed);
    s
}

#[cold]
fn claim_slot(words: &[AtomicU64]) -> usize {
    let me = process::current();
    let owner = process::owner_word(me);
    let owners = || {
        words
            .chunks_exact(PROC_WORDS)
            .map(|s| &s[proc_word::OWNER])
            .enumerate()
    };
    if let Some((i, _)) = owners().find(|(_, w)| w.load(Ordering::Relaxed) == owner) {
        return i;
    }
    for (i, w) in owners() {
        if w.compare_exchange(0, owner, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            return i;
        }
    }
    for (i, w) in owners() {
        let held = w.load(Ordering::Relaxed);
        if !process::owner_alive(held)
            && w.compare_exchange(held, owner, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return i;
        }
    }
    me.pid as usize % PROC_SLOTS
}
