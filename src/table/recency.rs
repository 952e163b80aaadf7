//! The LRU list: records threaded most recent first through `prev` and `next`. With lazy
//! promotion (the default) a hit only marks its entry accessed; eviction moves an accessed
//! tail entry to the head (clearing the mark) instead of evicting it.

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
        let r = self.rec_mut(i)?;
        if r.state & REC_ACCESSED == 0 {
            r.state |= REC_ACCESSED;
        }
        Ok(())
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
