//! The hash index: a power-of-two array of buckets, each the first entry of a chain linked
//! through `Record::hnext`. No tombstones and no load limit: a bucket holds any number.

use super::*;

impl ShardView<'_> {
    #[inline]
    pub(super) fn bucket_of(&self, h: u32) -> usize {
        h as usize & (self.buckets.len() - 1)
    }

    /// Finds `key`'s entry, live or expired: its predecessor in the bucket's chain
    /// ([`NIL`] if it is first) and the entry.
    #[inline(always)]
    pub(super) fn find(&self, k: Key) -> TResult<Option<(u32, u32)>> {
        let mut prev = NIL;
        let mut i = self.buckets[self.bucket_of(k.hash)];
        // A chain longer than the shard has entries is a cycle.
        for _ in 0..=self.meta.len {
            if i == NIL {
                return Ok(None);
            }
            let rec = self.rec(i)?;
            if rec.hash == k.hash && rec.tagged() == k.tagged && self.key_eq(i, rec, k.bytes)? {
                return Ok(Some((prev, i)));
            }
            prev = i;
            i = rec.hnext;
        }
        corrupt("hash chain is cyclic")
    }

    /// The predecessor of entry `r` in its bucket's chain ([`NIL`] if it is first).
    pub(super) fn pred_of(&self, r: u32) -> TResult<u32> {
        let mut prev = NIL;
        let mut i = self.buckets[self.bucket_of(self.rec(r)?.hash)];
        for _ in 0..=self.meta.len {
            if i == r {
                return Ok(prev);
            }
            if i == NIL {
                break;
            }
            prev = i;
            i = self.rec(i)?.hnext;
        }
        corrupt("live entry missing from the index")
    }

    /// Makes entry `r` (whose record holds hash `h`) the first of its bucket's chain.
    pub(super) fn index_insert(&mut self, r: u32, h: u32) -> TResult<()> {
        let b = self.bucket_of(h);
        let first = self.buckets[b];
        self.rec_mut(r)?.hnext = first;
        self.buckets[b] = r;
        Ok(())
    }

    /// Points whatever points at `r` (its predecessor `prev`, or its bucket) at `to`.
    fn index_relink(&mut self, prev: u32, r: u32, to: u32) -> TResult<()> {
        if prev == NIL {
            let b = self.bucket_of(self.rec(r)?.hash);
            self.buckets[b] = to;
        } else {
            self.rec_mut(prev)?.hnext = to;
        }
        Ok(())
    }

    /// Unlinks entry `r`, whose predecessor is `prev`, from its chain.
    pub(super) fn index_remove(&mut self, prev: u32, r: u32) -> TResult<()> {
        let next = self.rec(r)?.hnext;
        self.index_relink(prev, r, next)
    }

    /// Puts entry `new` (same key) in `old`'s place in its chain; `prev` precedes `old`.
    pub(super) fn index_replace(&mut self, prev: u32, old: u32, new: u32) -> TResult<()> {
        let next = self.rec(old)?.hnext;
        self.rec_mut(new)?.hnext = next;
        self.index_relink(prev, old, new)
    }
}
