//! The operations callers use: lookups, stores (crash-atomic, see DESIGN.md §5), removals,
//! increments and the bounded walks over keys and expired entries.

use super::*;

impl ShardView<'_> {
    /// Looks `key` up; on a hit makes it most recently used and returns its record.
    /// (The cache calls [`lookup_as`](Self::lookup_as); the model and tests call this.)
    #[cfg(any(test, feature = "test-support"))]
    #[inline]
    pub fn lookup(&mut self, k: Key, now: &mut Now) -> TResult<Option<u32>> {
        self.lookup_as(k, now, true)
    }

    /// [`lookup`](Self::lookup), counting a hit or miss only if `counted`: the memo layer's
    /// own reads keep out of the cache's hit ratio, which is about user gets.
    #[inline]
    pub fn lookup_as(&mut self, k: Key, now: &mut Now, counted: bool) -> TResult<Option<u32>> {
        match self.find_live(k, now)? {
            Some((_, r)) => {
                self.promote(r)?;
                self.meta.hits += counted as u64;
                Ok(Some(r))
            }
            None => {
                self.meta.misses += counted as u64;
                Ok(None)
            }
        }
    }

    /// True if `key` is present and unexpired (no LRU or hit/miss effect).
    pub fn contains(&mut self, k: Key, now: &mut Now) -> TResult<bool> {
        Ok(self.find_live(k, now)?.is_some())
    }

    /// The LRU successor (less recent) of record `r`, or `NIL`.
    #[cfg_attr(not(any(test, feature = "test-support")), allow(dead_code))]
    pub fn lru_next(&self, r: u32) -> TResult<u32> {
        Ok(self.rec(r)?.next)
    }

    /// Value length of record `r`.
    pub fn value_len(&self, r: u32) -> TResult<usize> {
        Ok(self.rec(r)?.value_len as usize)
    }

    /// Absolute expiry of record `r` (0 = never).
    #[cfg_attr(not(any(test, feature = "test-support")), allow(dead_code))]
    pub fn expires_at(&self, r: u32) -> TResult<u64> {
        Ok(self.rec(r)?.expires_at)
    }

    /// Appends record `r`'s value to `out`.
    pub fn read_value(&self, r: u32, out: &mut Vec<u8>) -> TResult<()> {
        let rec = *self.rec(r)?;
        out.reserve(rec.value_len as usize);
        self.pieces(r, rec.key_len as usize, rec.value_len as usize, |p| {
            out.extend_from_slice(p);
            true
        })
    }

    /// Copies record `r`'s value into the front of `dst` (which must be long enough).
    pub fn copy_value(&self, r: u32, dst: &mut [u8]) -> TResult<()> {
        let rec = *self.rec(r)?;
        let dst = &mut dst[..rec.value_len as usize];
        let mut at = 0;
        self.pieces(r, rec.key_len as usize, rec.value_len as usize, |p| {
            dst[at..at + p.len()].copy_from_slice(p);
            at += p.len();
            true
        })
    }

    /// Appends record `r`'s key to `out`.
    pub fn read_key(&self, r: u32, out: &mut Vec<u8>) -> TResult<()> {
        let rec = *self.rec(r)?;
        out.reserve(rec.key_len as usize);
        self.pieces(r, 0, rec.key_len as usize, |p| {
            out.extend_from_slice(p);
            true
        })
    }

    /// Stores `key` → `value`. Sizes must already be within the geometry's limits. On any
    /// error the old entry, if any, is unchanged.
    pub fn store(
        &mut self,
        k: Key,
        value: &[u8],
        deadline: Deadline,
        mode: StoreMode,
        now: &mut Now,
    ) -> TResult<Stored> {
        let (key, h) = (k.bytes, k.hash);
        if key.len() > self.max_key || value.len() > self.max_value {
            return Err(TableError::NoRoom);
        }
        let found = self.find_live(k, now)?;
        match (mode, found) {
            (StoreMode::Add, Some(_)) => return Ok(Stored::Exists),
            (StoreMode::Replace, None) => return Ok(Stored::Missing),
            _ => {}
        }
        // Entries never move, so `found`'s entry stays valid across the sweep (which, at the
        // same `now`, cannot expire it).
        self.sweep(now, 2)?;
        let need = self.chunks_for(key.len() + value.len() + self.trailer);
        let expires_at = match (deadline, found) {
            (Deadline::At(t), _) => t,
            (Deadline::Keep { .. }, Some((_, old))) => self.rec(old)?.expires_at,
            (Deadline::Keep { default }, None) => default,
        };
        let old = found.map(|(_, r)| r);
        if let Some(o) = old {
            if self.chunks_of(self.rec(o)?) == need && need as usize <= self.undo_chunks() {
                return self.overwrite_in_place(o, need, key, value, expires_at);
            }
        }
        // Every other write goes out of place into fresh chunks and commits with one store:
        // the new record's state becoming LIVE. A crash before that leaves the old entry (or
        // none) whole; after it, repair finishes the overwrite (see `ShardMeta::replacing`).
        let evicted = self.make_room(need, old, now)?;
        let r = self.alloc_chain(need)?;
        // A mark left by a reader of a former entry here must not give this one a chance.
        self.unmark(r);
        *self.rec_mut(r)? = Record {
            hash: h,
            prev: NIL,
            next: NIL,
            hnext: NIL,
            key_len: key.len() as u16,
            state: REC_WRITING | if k.tagged { REC_TAGGED } else { 0 },
            value_len: value.len() as u32,
            expires_at,
        };
        // Only a record that says WRITING is ever marked as a head: repair drops it.
        self.set_head(r, true);
        self.write_at(r, 0, key)?;
        self.write_at(r, key.len(), value)?;
        if self.trailer != 0 {
            let sum = entry_checksum(self.seed, key, value).to_le_bytes();
            self.write_at(r, key.len() + value.len(), &sum)?;
        }
        match found {
            None => {
                self.index_insert(r, h)?;
                crate::fault::hit(crate::fault::FaultPoint::StoreMidWrite);
                self.commit(r)?;
            }
            Some((_, o)) => {
                self.meta.replacing = o;
                self.meta.replacement = r;
                crate::fault::hit(crate::fault::FaultPoint::StoreMidWrite);
                self.commit(r)?;
                crate::fault::hit(crate::fault::FaultPoint::StoreCommitted);
                // The sweep may have removed `o`'s chain neighbours: find its predecessor
                // again.
                let prev = self.pred_of(o)?;
                self.index_replace(prev, o, r)?;
                self.release(o)?;
                self.meta.replacing = NIL;
                self.meta.replacement = NIL;
            }
        }
        self.lru_push_front(r)?;
        self.deadline_changed(0, expires_at);
        self.meta.len += 1;
        self.meta.tagged += u32::from(k.tagged);
        self.meta.bytes_used += (key.len() + value.len()) as u64;
        self.meta.sets += 1;
        Ok(Stored::Written { evicted })
    }

    /// Makes entry `r` live (the commit of a write), keeping its tag.
    #[inline]
    fn commit(&mut self, r: u32) -> TResult<()> {
        let x = self.rec_mut(r)?;
        x.state = x.with_state(REC_LIVE);
        Ok(())
    }

    /// Chunks the undo area can save.
    #[inline]
    pub(super) fn undo_chunks(&self) -> usize {
        (self.undo.len() - UNDO_HEAD) / self.chunk_size
    }

    /// Overwrites entry `o`, whose old and new bytes both take `n` chunks (at most what the
    /// undo area holds), in place. Crash-atomic through the undo area: the old chunks
    /// (record included) are copied there and `meta.undo` set before anything changes, and
    /// `meta.undo` cleared once the new entry is whole; repair puts a saved copy back.
    pub(super) fn overwrite_in_place(
        &mut self,
        o: u32,
        n: u32,
        key: &[u8],
        value: &[u8],
        expires_at: u64,
    ) -> TResult<Stored> {
        let old = *self.rec(o)?;
        let cs = self.chunk_size;
        let mut c = o;
        for k in 0..n as usize {
            let start = c as usize * cs;
            let src = self
                .arena
                .get(start..start + cs)
                .ok_or(TableError::Corrupt("chunk index out of range"))?;
            let at = UNDO_HEAD + k * cs;
            self.undo[at..at + cs].copy_from_slice(src);
            if k + 1 < n as usize {
                c = self.next_chunk(c)?;
            }
        }
        let check = self.undo_check(o);
        self.undo[..UNDO_HEAD].copy_from_slice(&check.to_ne_bytes());
        self.meta.undo = o;
        crate::fault::hit(crate::fault::FaultPoint::StoreMidWrite);
        // The key is the same; only the value and its checksum change.
        self.write_at(o, key.len(), value)?;
        if self.trailer != 0 {
            let sum = entry_checksum(self.seed, key, value).to_le_bytes();
            self.write_at(o, key.len() + value.len(), &sum)?;
        }
        let x = self.rec_mut(o)?;
        x.value_len = value.len() as u32;
        x.expires_at = expires_at;
        self.meta.undo = NIL;
        // A spent copy must never be put back by a later, damaged `meta.undo`.
        self.undo[..UNDO_HEAD].fill(0);
        crate::fault::hit(crate::fault::FaultPoint::StoreCommitted);
        self.deadline_changed(old.expires_at, expires_at);
        self.meta.bytes_used =
            self.meta.bytes_used.saturating_sub(old.value_len as u64) + value.len() as u64;
        // Strict LRU: a write places the entry anew, at the head. Lazy recency: a rewrite in
        // place marks the entry used, as a hit does, and leaves the LRU list alone: the
        // write touches no neighbour's record and not the list head, the lines other
        // writers of the shard contend for.
        if self.exact_lru {
            self.unmark(o);
            self.touch(o)?;
        } else {
            self.promote(o)?;
        }
        self.meta.sets += 1;
        Ok(Stored::Written { evicted: 0 })
    }

    /// The check word of the undo area's copy of record `o`: non-zero, and naming `o`. It is
    /// zeroed as soon as the overwrite commits, so only a copy of an overwrite caught
    /// mid-way matches; what the copy holds is checked again by repair (key hash, sizes).
    pub(super) fn undo_check(&self, o: u32) -> u64 {
        (u64::from(o) << 32) | 0x55d0_c0de
    }

    /// Removes `key`; true if a live entry was removed.
    pub fn remove(&mut self, k: Key, now: &mut Now) -> TResult<bool> {
        match self.find_live(k, now)? {
            Some((prev, r)) => {
                self.index_remove(prev, r)?;
                crate::fault::hit(crate::fault::FaultPoint::RemoveMidway);
                self.release(r)?;
                self.meta.deletes += 1;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Removes `key` and appends its value to `out`; true if it was present.
    pub fn take(&mut self, k: Key, now: &mut Now, out: &mut Vec<u8>) -> TResult<bool> {
        match self.find_live(k, now)? {
            Some((prev, r)) => {
                self.read_value(r, out)?;
                self.remove_at(prev, r)?;
                self.meta.hits += 1;
                self.meta.deletes += 1;
                Ok(true)
            }
            None => {
                self.meta.misses += 1;
                Ok(false)
            }
        }
    }

    /// Absolute expiry of `key` (Some(0) = never), None if absent.
    pub fn deadline(&mut self, k: Key, now: &mut Now) -> TResult<Option<u64>> {
        match self.find_live(k, now)? {
            Some((_, r)) => Ok(Some(self.rec(r)?.expires_at)),
            None => Ok(None),
        }
    }

    /// Sets a new absolute expiry (0 = never) on `key`; false if absent.
    pub fn set_deadline(&mut self, k: Key, at: u64, now: &mut Now) -> TResult<bool> {
        match self.find_live(k, now)? {
            Some((_, r)) => {
                let old = std::mem::replace(&mut self.rec_mut(r)?.expires_at, at);
                self.deadline_changed(old, at);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Adds `delta` to the decimal integer stored at `key`; a missing key starts from 0 and
    /// gets `new_deadline`. The existing deadline is kept.
    pub fn incr(&mut self, k: Key, delta: i64, new_deadline: u64, now: &mut Now) -> TResult<Incr> {
        let current = match self.find_live(k, now)? {
            Some((_, r)) => {
                let rec = *self.rec(r)?;
                if rec.value_len > 20 {
                    return Ok(Incr::NotInteger);
                }
                let mut buf = [0u8; 20];
                self.copy_value(r, &mut buf)?;
                match std::str::from_utf8(&buf[..rec.value_len as usize])
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    Some(v) => v,
                    None => return Ok(Incr::NotInteger),
                }
            }
            None => 0,
        };
        let Some(next) = current.checked_add(delta) else {
            return Ok(Incr::Overflow);
        };
        let mut buf = [0u8; 20];
        let text = format_i64(next, &mut buf);
        self.store(
            k,
            text,
            Deadline::Keep {
                default: new_deadline,
            },
            StoreMode::Set,
            now,
        )?;
        Ok(Incr::Value(next))
    }

    /// Whether entry `r` is live, unexpired and in `scope`.
    fn in_scope(&self, r: u32, rec: &Record, scope: Scope, now: &mut Now) -> TResult<bool> {
        if rec.state & REC_STATE_MASK != REC_LIVE || Self::expired(rec, now) {
            return Ok(false);
        }
        match scope {
            Scope::Plain => Ok(!rec.tagged()),
            Scope::Tag(tag) => {
                if !rec.tagged() || (rec.key_len as usize) < TAG_LEN {
                    return Ok(false);
                }
                let mut eq = true;
                let mut at = 0;
                self.pieces(r, 0, TAG_LEN, |p| {
                    eq &= p == &tag[at..at + p.len()];
                    at += p.len();
                    eq
                })?;
                Ok(eq)
            }
        }
    }

    /// Up to `max` live keys in `scope` from chunk `start` on (tags stripped); returns where
    /// to resume (None = done).
    pub fn keys_from(
        &mut self,
        start: u32,
        max: usize,
        now: &mut Now,
        scope: Scope,
        out: &mut Vec<Vec<u8>>,
    ) -> TResult<Option<u32>> {
        let skip = match scope {
            Scope::Plain => 0,
            Scope::Tag(_) => TAG_LEN,
        };
        let mut at = start;
        while let Some(r) = self.next_head(at) {
            if out.len() >= max {
                return Ok(Some(r));
            }
            let rec = *self.rec(r)?;
            if self.in_scope(r, &rec, scope, now)? {
                let mut k = Vec::with_capacity(rec.key_len as usize - skip);
                self.pieces(r, skip, rec.key_len as usize - skip, |p| {
                    k.extend_from_slice(p);
                    true
                })?;
                out.push(k);
            }
            at = r + 1;
        }
        Ok(None)
    }

    /// Copies out the live, current entries among the next `max` entries from chunk
    /// `start` on (only namespace slot `only`'s, if given; entries whose checksum fails are
    /// left out); returns where to resume.
    pub fn export_from(
        &mut self,
        start: u32,
        max: u32,
        now: &mut Now,
        only: Option<usize>,
        out: &mut Vec<Exported>,
    ) -> TResult<Option<u32>> {
        let mut at = start;
        for _ in 0..max {
            let Some(r) = self.next_head(at) else {
                return Ok(None);
            };
            at = r + 1;
            let rec = *self.rec(r)?;
            if rec.state & REC_STATE_MASK != REC_LIVE || Self::expired(&rec, now) {
                continue;
            }
            // Only the current generation: not an invalidated one, not a load being staged.
            let (ns, gen) = self.tag_of(r, &rec)?;
            let current = self.gens.get(ns).map(|g| g.load(Ordering::Acquire));
            if !self.gens.is_empty() && current != Some(gen) {
                continue;
            }
            if only.is_some_and(|o| o != ns) || (self.trailer != 0 && !self.checksum_ok(r)?) {
                continue;
            }
            let skip = if rec.tagged() { TAG_LEN } else { 0 };
            let klen = (rec.key_len as usize).saturating_sub(skip);
            let mut key = Vec::with_capacity(klen);
            self.pieces(r, skip, klen, |p| {
                key.extend_from_slice(p);
                true
            })?;
            let mut value = Vec::new();
            self.read_value(r, &mut value)?;
            out.push(Exported {
                ns,
                key,
                value,
                expires_at: rec.expires_at,
            });
        }
        Ok(self.next_head(at))
    }

    /// Counts the live entries in `scope` among the next `max` entries from chunk `start`
    /// on: (entries, their key + value bytes without tags, where to resume).
    pub fn count_from(
        &mut self,
        start: u32,
        max: u32,
        now: &mut Now,
        scope: Scope,
    ) -> TResult<(u64, u64, Option<u32>)> {
        let skip = match scope {
            Scope::Plain => 0,
            Scope::Tag(_) => TAG_LEN as u64,
        };
        let (mut n, mut bytes) = (0, 0);
        let mut at = start;
        for _ in 0..max {
            let Some(r) = self.next_head(at) else {
                return Ok((n, bytes, None));
            };
            let rec = *self.rec(r)?;
            if self.in_scope(r, &rec, scope, now)? {
                n += 1;
                bytes += Self::entry_len(&rec) as u64 - skip;
            }
            at = r + 1;
        }
        Ok((n, bytes, self.next_head(at)))
    }

    /// Reclaims every expired entry among the next `max` entries from chunk `start` on;
    /// returns the count and where to resume.
    pub fn flush_expired_from(
        &mut self,
        start: u32,
        max: u32,
        now: &mut Now,
    ) -> TResult<(u32, Option<u32>)> {
        let mut removed = 0;
        let mut at = start;
        for _ in 0..max {
            let Some(r) = self.next_head(at) else {
                return Ok((removed, None));
            };
            removed += u32::from(self.expire_if_due(r, now)?);
            at = r + 1;
        }
        Ok((removed, self.next_head(at)))
    }
}
