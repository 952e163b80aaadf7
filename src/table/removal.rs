//! Removing entries: deletes, expiry, eviction to make room, and the checks a lookup makes
//! before it trusts an entry (expiry, checksum).

use super::*;

impl ShardView<'_> {
    pub(super) fn remove_at(&mut self, slot: usize, r: u32) -> TResult<()> {
        self.index_remove(slot)?;
        self.release(r)
    }

    /// Unlinks record `r` from the LRU list and frees it and its chunks (not the index slot).
    pub(super) fn release(&mut self, r: u32) -> TResult<()> {
        let rec = *self.rec(r)?;
        self.lru_unlink(r)?;
        self.free_chain(rec.first_chunk, self.chunks_of(&rec))?;
        let free_head = self.meta.free_rec_head;
        let x = self.rec_mut(r)?;
        x.state = REC_FREE;
        x.prev = NIL;
        x.next = free_head;
        x.first_chunk = NIL;
        self.meta.free_rec_head = r;
        self.meta.len = self.meta.len.saturating_sub(1);
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
    pub(super) fn find_live(
        &mut self,
        key: &[u8],
        h: u32,
        now: &mut Now,
    ) -> TResult<Option<(usize, u32)>> {
        match self.find(key, h)? {
            Some((slot, r)) if Self::expired(self.rec(r)?, now) => {
                self.remove_at(slot, r)?;
                self.meta.expirations += 1;
                Ok(None)
            }
            Some((slot, r)) if self.trailer != 0 && !self.checksum_ok(r)? => {
                // Damaged bytes are never returned: the entry is dropped, as a miss.
                self.remove_at(slot, r)?;
                self.meta.checksum_failures += 1;
                Ok(None)
            }
            found => Ok(found),
        }
    }

    /// Whether record `r`'s stored checksum matches its key and value bytes.
    pub(super) fn checksum_ok(&self, r: u32) -> TResult<bool> {
        let rec = *self.rec(r)?;
        let len = Self::entry_len(&rec);
        let mut h = Xxh3::with_seed(self.seed ^ CHECKSUM_SEED);
        self.pieces(r, rec.first_chunk, 0, len, |p| {
            h.update(p);
            true
        })?;
        let mut stored = [0u8; CHECKSUM_LEN];
        let mut at = 0;
        self.pieces(r, rec.first_chunk, len, CHECKSUM_LEN, |p| {
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

    /// Reclaims up to `budget` expired entries, resuming a cursor over the records. Free
    /// when no entry has a deadline.
    pub fn sweep(&mut self, now: &mut Now, budget: u32) -> TResult<u32> {
        if self.meta.expiring == 0 {
            return Ok(0);
        }
        let n = self.recs.len() as u32;
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            let r = self.meta.sweep_cursor % n;
            self.meta.sweep_cursor = (r + 1) % n;
            removed += u32::from(self.expire_if_due(r, now)?);
        }
        Ok(removed)
    }

    /// Removes record `r` if it is live and its deadline has passed; true if it did.
    pub(super) fn expire_if_due(&mut self, r: u32, now: &mut Now) -> TResult<bool> {
        let rec = *self.rec(r)?;
        if rec.state & REC_STATE_MASK != REC_LIVE || !Self::expired(&rec, now) {
            return Ok(false);
        }
        let slot = self.slot_of(r)?;
        self.remove_at(slot, r)?;
        self.meta.expirations += 1;
        Ok(true)
    }

    /// Evicts from the LRU tail until a record and `chunks` chunks are free for a write,
    /// never touching `keep` (the entry an overwrite replaces).
    ///
    /// One record per shard is kept spare: an overwrite writes into it before freeing the
    /// old record, so a new entry needs two free records and an overwrite one. The spare is
    /// not counted in the shard's capacity.
    pub(super) fn make_room(
        &mut self,
        chunks: u32,
        keep: Option<u32>,
        now: &mut Now,
    ) -> TResult<u32> {
        let mut evicted = 0;
        let mut guard = self.recs.len() + 1;
        let records_needed = if keep.is_some() { 1 } else { 2 };
        loop {
            let free_records = (self.recs.len() as u32).saturating_sub(self.meta.len);
            let rec_ok = free_records >= records_needed && self.meta.free_rec_head != NIL;
            if rec_ok && self.meta.free_chunks >= chunks {
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
            let expired = Self::expired(self.rec(v)?, now);
            let slot = self.slot_of(v)?;
            self.remove_at(slot, v)?;
            if expired {
                self.meta.expirations += 1;
            } else {
                self.meta.evictions += 1;
                evicted += 1;
            }
        }
    }
}
