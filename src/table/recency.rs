//! The LRU list: records threaded most recent first through `prev` and `next`.

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

    #[inline]
    pub(super) fn touch(&mut self, i: u32) -> TResult<()> {
        if self.meta.lru_head != i {
            self.lru_unlink(i)?;
            self.lru_push_front(i)?;
        }
        Ok(())
    }
}
