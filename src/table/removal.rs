//! Removing entries: deletes, expiry, eviction to make room, and the checks a lookup makes
//! before it trusts an entry (expiry, checksum).

use super::*;

impl ShardView<'_> {
    /// Removes entry `r`, whose predecessor in its hash chain is `prev`.
    pub(super) fn remove_at(&mut self, prev: u32, r: u32) -> TResult<()> {
        self.index_remove(prev, r)?;
        self.release(r)
    }

    /// Unlinks entry `r` from the LRU list and frees its chunks (it is out of the index).
    /// The record is marked free and its head bit cleared before any chunk is reused.
    pub(super) fn release(&mut self, r: u32) -> TResult<()> {
        let rec = *self.rec(r)?;
        self.lru_unlink(r)?;
        let x = self.rec_mut(r)?;
        x.state = REC_FREE;
        x.prev = NIL;
        x.next = NIL;
        x.hnext = NIL;
        self.set_head(r, false);
        self.free_chain(r, self.chunks_of(&rec))?;
        self.meta.len = self.meta.len.saturating_sub(1);
        self.meta.tagged = self.meta.tagged.saturating_sub(u32::from(rec.tagged()));
        self.meta.bytes_used = self
            .meta
            .bytes_used
            .saturating_sub(Self::entry_len(&rec) as u64);
        self.deadline_changed(rec.expires_at, 0);
        Ok(())
    }

    #[inline]
    pub(super) fn expired(rec: &Record, now: &mut Now) -> bool {
        rec.expires_at != 0 && now.get() >= rec.expires_at
    }

    /// Finds a live, unexpired entry; an expired one found on the way is reclaimed.
    #[inline(always)]
    pub(super) fn find_live(&mut self, k: Key, now: &mut Now) -> TResult<Option<(u32, u32)>> {
        match self.find(k)? {
            Some((prev, r)) if Self::expired(self.rec(r)?, now) => {
                self.remove_at(prev, r)?;
                self.meta.expirations += 1;
                Ok(None)
            }
            Some((prev, r)) if self.trailer != 0 && !self.checksum_ok(r)? => {
                // Damaged bytes are never returned: the entry is dropped, as a miss.
                self.remove_at(prev, r)?;
                self.meta.checksum_failures += 1;
                Ok(None)
            }
            found => Ok(found),
        }
    }

    /// Whether entry `r`'s stored checksum matches its key and value bytes.
    pub(super) fn checksum_ok(&self, r: u32) -> TResult<bool> {
        let rec = *self.rec(r)?;
        let len = Self::entry_len(&rec);
        let mut h = Xxh3::with_seed(self.seed ^ CHECKSUM_SEED);
        self.pieces(r, 0, len, |p| {
            h.update(p);
            true
        })?;
        let mut stored = [0u8; CHECKSUM_LEN];
        let mut at = 0;
        self.pieces(r, len, CHECKSUM_LEN, |p| {
            stored[at..at + p.len()].copy_from_slice(p);
            at += p.len();
            true
        })?;
        Ok(h.digest() == u64::from_le_bytes(stored))
    }

    /// Keeps `meta.expiring` in step when a live entry's deadline goes from `old` to `new`
    /// (0 = none; an entry removed goes to 0).
    #[inline]
    pub(super) fn deadline_changed(&mut self, old: u64, new: u64) {
        match (old != 0, new != 0) {
            (false, true) => self.meta.expiring += 1,
            (true, false) => self.meta.expiring = self.meta.expiring.saturating_sub(1),
            _ => {}
        }
    }

    /// The first head chunk at or after `c`, if any (a scan of the head bitmap).
    pub(super) fn next_head(&self, c: u32) -> Option<u32> {
        let n = self.chunk_count();
        let mut w = c as usize / 64;
        let mut bits = *self.heads.get(w)? & (!0u64 << (c % 64));
        loop {
            if bits != 0 {
                let i = (w * 64) as u32 + bits.trailing_zeros();
                return (i < n).then_some(i);
            }
            w += 1;
            bits = *self.heads.get(w)?;
        }
    }

    /// The namespace tag of entry `r` (a `rec` of it): its namespace slot and the
    /// generation it was written under. Untagged entries are the default namespace's
    /// generation 0.
    pub(super) fn tag_of(&self, r: u32, rec: &Record) -> TResult<(usize, u64)> {
        if !rec.tagged() {
            return Ok((0, 0));
        }
        if (rec.key_len as usize) < TAG_LEN {
            return corrupt("tagged key shorter than its tag");
        }
        let mut tag = [0u8; TAG_LEN];
        let mut at = 0;
        self.pieces(r, 0, TAG_LEN, |p| {
            tag[at..at + p.len()].copy_from_slice(p);
            at += p.len();
            true
        })?;
        let ns = u32::from_le_bytes(tag[..4].try_into().unwrap_or_default());
        let gen = u64::from_le_bytes(tag[4..].try_into().unwrap_or_default());
        Ok((ns as usize, gen))
    }

    /// Whether entry `r` belongs to a namespace generation older than the current one (it
    /// is absent to every lookup; reclaiming it is up to the sweeps). Generations only grow;
    /// an entry of a newer one is a load being staged, not stale.
    pub(super) fn stale(&self, r: u32, rec: &Record) -> TResult<bool> {
        if self.gens.is_empty() {
            return Ok(false);
        }
        let (ns, gen) = self.tag_of(r, rec)?;
        Ok(self
            .gens
            .get(ns)
            .map_or(true, |g| g.load(Ordering::Acquire) > gen))
    }

    /// Whether the shard may hold entries of an invalidated generation.
    #[inline]
    fn may_hold_stale(&self) -> bool {
        !self.gens.is_empty()
            && (self.meta.tagged != 0 || self.gens[0].load(Ordering::Relaxed) != 0)
    }

    /// Reclaims expired and invalidated entries among up to `budget` entries, resuming a
    /// cursor over the head bitmap. Free when no entry has a deadline or a namespace.
    pub fn sweep(&mut self, now: &mut Now, budget: u32) -> TResult<u32> {
        if self.meta.expiring == 0 && !self.may_hold_stale() {
            return Ok(0);
        }
        let mut removed = 0;
        for _ in 0..budget {
            let r = match self.next_head(self.meta.sweep_cursor) {
                Some(r) => r,
                None => match self.next_head(0) {
                    Some(r) => r,
                    None => return Ok(removed),
                },
            };
            self.meta.sweep_cursor = r + 1;
            removed += u32::from(self.expire_if_due(r, now)?);
        }
        Ok(removed)
    }

    /// Removes entry `r` if it is live and its deadline has passed or its namespace was
    /// invalidated since it was written; true if it did.
    pub(super) fn expire_if_due(&mut self, r: u32, now: &mut Now) -> TResult<bool> {
        let rec = *self.rec(r)?;
        if rec.state & REC_STATE_MASK != REC_LIVE {
            return Ok(false);
        }
        let expired = Self::expired(&rec, now);
        if !expired && !self.stale(r, &rec)? {
            return Ok(false);
        }
        let prev = self.pred_of(r)?;
        self.remove_at(prev, r)?;
        if expired {
            self.meta.expirations += 1;
        } else {
            self.meta.invalidated += 1;
        }
        Ok(true)
    }

    /// Evicts from the LRU tail until `chunks` chunks are free (and, for a new entry, the
    /// shard is below its entry limit), never touching `keep` (the entry an overwrite
    /// replaces, whose chunks stay held until the new entry has committed).
    pub(super) fn make_room(
        &mut self,
        chunks: u32,
        keep: Option<u32>,
        now: &mut Now,
    ) -> TResult<u32> {
        let mut evicted = 0;
        // Every entry can be moved to the head once (its second chance) before one goes.
        let mut guard = 2 * self.meta.len as usize + 2;
        let new_entry = keep.is_none();
        loop {
            let count_ok = !new_entry || self.meta.len < self.max_entries;
            if count_ok && self.meta.free_chunks >= chunks {
                return Ok(evicted);
            }
            let mut v = self.meta.lru_tail;
            if Some(v) == keep {
                v = self.rec(v)?.prev;
            }
            if v == NIL {
                return Err(TableError::NoRoom);
            }
            guard = guard
                .checked_sub(1)
                .ok_or(TableError::Corrupt("LRU list is cyclic"))?;
            let rec = *self.rec(v)?;
            let expired = Self::expired(&rec, now);
            let stale = !expired && self.stale(v, &rec)?;
            if !expired && !stale && self.accessed(v) {
                // Read since it was placed: a second chance at the head, unmarked.
                self.unmark(v);
                self.lru_unlink(v)?;
                self.lru_push_front(v)?;
                continue;
            }
            let prev = self.pred_of(v)?;
            self.remove_at(prev, v)?;
            if expired {
                self.meta.expirations += 1;
            } else if stale {
                self.meta.invalidated += 1;
            } else {
                self.meta.evictions += 1;
                evicted += 1;
            }
        }
    }
}
