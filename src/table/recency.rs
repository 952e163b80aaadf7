//! The LRU list: records threaded most recent first through `prev` and `next`. With lazy
//! promotion (the default) a hit only sets its entry's accessed mark (a bit outside the
//! guarded region, which lock-free readers set too); eviction moves an accessed tail entry
//! to the head (clearing the mark) instead of evicting it.

use super::*;

impl ShardView<'_> {
    pub(super) fn lru_unlink(&mut self, i: u32) -> TResult<()> {
        let (prev, next) = {
            let r = self.rec(i)?;
            (r.prev, r.next)
        };
        if prev == NIL {
            self.meta.lru_head = next;
        } else {
            self.rec_mut(prev)?.next = next;
        }
        if next == NIL {
            self.meta.lru_tail = prev;
        } else {
            self.rec_mut(next)?.prev = prev;
        }
        Ok(())
    }

    pub(super) fn lru_push_front(&mut self, i: u32) -> TResult<()> {
        let head = self.meta.lru_head;
        {
            let r = self.rec_mut(i)?;
            r.prev = NIL;
            r.next = head;
        }
        if head == NIL {
            self.meta.lru_tail = i;
        } else {
            self.rec_mut(head)?.prev = i;
        }
        self.meta.lru_head = i;
        Ok(())
    }

    /// What a hit does to recency: with strict LRU, moves the entry to the head; else
    /// marks it accessed, with one store and only if it is not marked yet, so a hot entry
    /// does not keep writing its line.
    #[inline]
    pub(super) fn promote(&mut self, i: u32) -> TResult<()> {
        if self.exact_lru {
            return self.touch(i);
        }
        self.rec(i)?;
        mark_accessed(self.marks, i);
        Ok(())
    }

    /// Whether entry `i` was read since it was last placed.
    #[inline]
    pub(super) fn accessed(&self, i: u32) -> bool {
        is_accessed(self.marks, i)
    }

    /// Clears entry `i`'s accessed mark: it is placed anew.
    #[inline]
    pub(super) fn unmark(&self, i: u32) {
        if let Some(w) = self.marks.get(i as usize / 64) {
            let bit = 1u64 << (i % 64);
            if w.load(Ordering::Relaxed) & bit != 0 {
                w.fetch_and(!bit, Ordering::Relaxed);
            }
        }
    }

    #[inline]
    pub(super) fn touch(&mut self, i: u32) -> TResult<()> {
        if self.meta.lru_head != i {
            self.lru_unlink(i)?;
            self.lru_push_front(i)?;
        }
        Ok(())
    }
}

/// Whether chunk `i`'s accessed mark is set in `marks`.
#[inline]
pub(crate) fn is_accessed(marks: &[AtomicU64], i: u32) -> bool {
    marks
        .get(i as usize / 64)
        .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (i % 64)) != 0)
}

/// Sets chunk `i`'s accessed mark in `marks`, with one atomic write and only if it is not
/// set yet, so a hot entry's hits do not keep writing a shared line. Out of range: nothing.
#[inline]
pub(crate) fn mark_accessed(marks: &[AtomicU64], i: u32) {
    if let Some(w) = marks.get(i as usize / 64) {
        let bit = 1u64 << (i % 64);
        if w.load(Ordering::Relaxed) & bit == 0 {
            w.fetch_or(bit, Ordering::Relaxed);
        }
    }
}
