//! `repair`: rebuilding the index, LRU list, free list and counters from the entries (the
//! head bitmap and the records it points at),
//! after a dead or panicking holder or detected damage. It marks chains with bit 31 of
//! their links while it works (the one structural writer besides the operations).

use super::*;

impl ShardView<'_> {
    //
    // Both use bit 31 of a chunk link as a "claimed" mark. `NIL` already has that bit set, so
    // a chain's last chunk is marked as a self-link (`c | MARK`), restored to `NIL` after.

    #[inline]
    pub(super) fn is_marked(link: u32) -> bool {
        link != NIL && link & CHUNK_MARK != 0
    }

    #[inline]
    pub(super) fn set_mark(&mut self, c: u32, next: u32) {
        self.links[c as usize] = if next == NIL { c } else { next } | CHUNK_MARK;
    }

    /// The link of `c` with its mark removed.
    #[inline]
    pub(super) fn unmarked(&self, c: u32) -> u32 {
        let l = self.links[c as usize];
        if !Self::is_marked(l) {
            return l;
        }
        let t = l & !CHUNK_MARK;
        if t == c {
            NIL
        } else {
            t
        }
    }

    pub(super) fn unmark_all(&mut self) {
        for c in 0..self.links.len() as u32 {
            self.links[c as usize] = self.unmarked(c);
        }
    }

    /// Marks the chunks of a chain of exactly `need` chunks from `first`. On error returns
    /// how many chunks it marked (callers release them or unmark everything).
    pub(super) fn mark_chain(&mut self, first: u32, need: u32) -> Result<(), (u32, String)> {
        let mut c = first;
        for k in 0..need {
            let Some(&l) = self.links.get(c as usize) else {
                return Err((k, format!("chunk {c} out of range")));
            };
            if Self::is_marked(l) {
                return Err((k, format!("chunk {c} is shared or the chain cycles")));
            }
            let last = k + 1 == need;
            if !last && l == NIL {
                return Err((k, "chain is shorter than its entry".into()));
            }
            self.set_mark(c, if last { NIL } else { l });
            if last && l != NIL {
                return Err((k + 1, "chain is longer than its entry".into()));
            }
            c = l;
        }
        Ok(())
    }

    /// Rebuilds the index, LRU list, free lists and counters from the entry records, keeping
    /// every record whose key, sizes, hash and chunk chain check out and dropping the rest
    /// (including a record caught mid-rewrite). Counters (hits, ...) are kept.
    pub fn repair(&mut self) -> RepairReport {
        match self.try_repair() {
            Ok(report) if self.validate().is_ok() => report,
            _ => {
                let dropped = self.meta.len;
                let counters = *self.meta;
                self.format();
                let m = &mut *self.meta;
                m.hits = counters.hits;
                m.misses = counters.misses;
                m.sets = counters.sets;
                m.evictions = counters.evictions;
                m.expirations = counters.expirations;
                m.recoveries = counters.recoveries;
                m.deletes = counters.deletes;
                m.checksum_failures = counters.checksum_failures;
                m.invalidated = counters.invalidated;
                RepairReport {
                    kept: 0,
                    dropped,
                    cleared: true,
                }
            }
        }
    }

    pub(super) fn try_repair(&mut self) -> TResult<RepairReport> {
        let n = self.chunk_count();
        // Marks left by an interrupted repair are dropped; links out of range become NIL.
        self.unmark_all();
        for l in self.links.iter_mut() {
            if *l >= n {
                *l = NIL;
            }
        }
        // 0. An overwrite that committed (its new entry is live) replaces the old entry;
        //    one that did not leaves the new entry WRITING, which step 1 drops.
        let (old, new) = (self.meta.replacing, self.meta.replacement);
        self.meta.replacing = NIL;
        self.meta.replacement = NIL;
        if old < n && new < n && old != new && self.is_head(new) && self.is_head(old) {
            let committed = self.rec(new)?.state & REC_STATE_MASK == REC_LIVE;
            if committed {
                // The old value was superseded, not lost: not counted as dropped.
                self.rec_mut(old)?.state = REC_FREE;
            }
        }
        // An in-place overwrite caught before it finished: put the saved chunks back.
        // The copy is used only if its check word says it was saved for this very entry.
        let undo = std::mem::replace(&mut self.meta.undo, NIL);
        let saved = u64::from_ne_bytes(self.undo[..UNDO_HEAD].try_into().unwrap_or([0; 8]));
        if undo < n && saved != 0 && saved == self.undo_check(undo) {
            // The saved record says how many chunks were saved; the chain's links did not
            // change, so the copy goes back along them.
            let rec: Record =
                bytemuck::pod_read_unaligned(&self.undo[UNDO_HEAD..UNDO_HEAD + REC_LEN]);
            let k = self.chunks_of(&rec) as usize;
            let cs = self.chunk_size;
            let mut c = undo;
            for j in 0..k.min(self.undo_chunks()) {
                let (at, from) = (c as usize * cs, UNDO_HEAD + j * cs);
                self.arena[at..at + cs].copy_from_slice(&self.undo[from..from + cs]);
                match self.links[c as usize] {
                    next if next < n => c = next,
                    _ => break,
                }
            }
        }
        self.undo[..UNDO_HEAD].fill(0);
        let mut report = RepairReport::default();
        // 1. Decide which entries survive, claiming their chunks with the mark bit.
        let mut at = 0;
        while let Some(r) = self.next_head(at) {
            at = r + 1;
            let state = self.rec(r)?.state & REC_STATE_MASK;
            if state == REC_LIVE && self.claim(r).is_ok() {
                let x = self.rec_mut(r)?;
                x.state = x.with_state(REC_LIVE);
            } else {
                // Only the bit goes: a damaged bit may point into another entry's bytes,
                // which must not be written.
                self.set_head(r, false);
                // A record already marked free was a removal caught mid-way: not a loss.
                report.dropped += u32::from(state != REC_FREE);
            }
        }
        // 2. Thread the LRU list: the old order as far as it is sound, then the rest.
        let mut order: u32 = NIL; // new head
        let mut tail: u32 = NIL;
        let mut count = 0u32;
        let mut bytes = 0u64;
        let mut expiring = 0u32;
        let mut push = |v: &mut Self, i: u32| -> TResult<()> {
            let rec = *v.rec(i)?;
            count += 1;
            bytes += Self::entry_len(&rec) as u64;
            expiring += u32::from(rec.expires_at != 0);
            let x = v.rec_mut(i)?;
            x.state |= REC_VISITED;
            x.prev = tail;
            x.next = NIL;
            if tail == NIL {
                order = i;
            } else {
                v.rec_mut(tail)?.next = i;
            }
            tail = i;
            Ok(())
        };
        let mut i = self.meta.lru_head;
        let mut steps = 0;
        while i < n && self.is_head(i) && steps <= n {
            let rec = *self.rec(i)?;
            if rec.state & !REC_TAGGED != REC_LIVE {
                break;
            }
            push(self, i)?;
            i = rec.next;
            steps += 1;
        }
        let mut at = 0;
        while let Some(r) = self.next_head(at) {
            at = r + 1;
            if self.rec(r)?.state & !REC_TAGGED == REC_LIVE {
                push(self, r)?;
            }
        }
        // 3. Free chunks: every unclaimed chunk; then drop the marks.
        let mut free_head = NIL;
        let mut free = 0u32;
        for c in (0..n).rev() {
            if Self::is_marked(self.links[c as usize]) {
                self.links[c as usize] = self.unmarked(c);
            } else {
                self.links[c as usize] = free_head;
                free_head = c;
                free += 1;
            }
        }
        // 4. The index; duplicates of a key keep the more recent entry.
        self.buckets.fill(NIL);
        let m = &mut *self.meta;
        m.lru_head = order;
        m.lru_tail = tail;
        m.len = count;
        m.bytes_used = bytes;
        m.expiring = expiring;
        m.tagged = 0;
        m.free_chunk_head = free_head;
        m.free_chunks = free;
        m.sweep_cursor = 0;
        m.dirty = 0;
        let mut i = order;
        while i != NIL {
            let rec = *self.rec(i)?;
            let x = self.rec_mut(i)?;
            x.state = x.with_state(REC_LIVE);
            self.meta.tagged += u32::from(rec.tagged());
            let mut key = Vec::with_capacity(rec.key_len as usize);
            self.read_key(i, &mut key)?;
            let k = Key {
                bytes: &key,
                hash: rec.hash,
                tagged: rec.tagged(),
            };
            if self.find(k)?.is_some() {
                // Duplicate key (possible only after damage): keep the more recent one.
                self.release(i)?;
                report.dropped += 1;
            } else {
                self.index_insert(i, rec.hash)?;
            }
            i = rec.next;
        }
        // 5. More entries than the limit (only after damage): the least recent go.
        while self.meta.len > self.max_entries {
            let v = self.meta.lru_tail;
            let prev = self.pred_of(v)?;
            self.remove_at(prev, v)?;
            report.dropped += 1;
        }
        report.kept = self.meta.len;
        Ok(report)
    }

    /// Claims entry `r`'s chunks for repair: checks sizes, chain and key hash. On failure
    /// releases what it claimed.
    pub(super) fn claim(&mut self, r: u32) -> Result<(), String> {
        let rec = *self.rec(r).map_err(|e| format!("{e:?}"))?;
        if rec.key_len as usize > self.max_key || rec.value_len as usize > self.max_value {
            return Err("sizes out of range".into());
        }
        let need = self.chunks_of(&rec);
        let marked = match self.mark_chain(r, need) {
            Ok(()) => need,
            Err((k, _)) => {
                self.unmark_prefix(r, k);
                return Err("chunk chain is damaged".into());
            }
        };
        // One walk over the (marked) chain: the key's hash, and with checksums the hash of
        // key and value and the stored checksum after them. Nothing is allocated.
        let key_len = rec.key_len as usize;
        let kv = Self::entry_len(&rec);
        // A tagged key hashes its bytes after the tag, then XORs in the tag's word.
        let (key_from, tag) = match rec.tagged() {
            false => (0, 0),
            true => match self.tag_of(r, &rec) {
                Ok((ns, gen)) => (TAG_LEN, tag_word(ns as u32, gen)),
                Err(_) => {
                    self.unmark_prefix(r, marked);
                    return Err("tagged key shorter than its tag".into());
                }
            },
        };
        let mut key_h = Xxh3::with_seed(self.seed);
        let mut sum_h = Xxh3::with_seed(self.seed ^ CHECKSUM_SEED);
        let mut stored = [0u8; CHECKSUM_LEN];
        let whole = self.marked_walk(r, kv + self.trailer, |at, p| {
            let end = at + p.len();
            if at.max(key_from) < key_len.min(end) {
                key_h.update(&p[at.max(key_from) - at..key_len.min(end) - at]);
            }
            if at < kv {
                sum_h.update(&p[..kv.min(end) - at]);
            }
            for (i, &b) in p.iter().enumerate().skip(kv.saturating_sub(at)) {
                stored[at + i - kv] = b;
            }
        });
        let problem = if !whole {
            Some("chunk chain is damaged")
        } else if (key_h.digest() ^ tag) as u32 != rec.hash {
            Some("key does not match its hash")
        } else if self.trailer != 0 && sum_h.digest() != u64::from_le_bytes(stored) {
            Some("key and value do not match their checksum")
        } else {
            None
        };
        if let Some(p) = problem {
            self.unmark_prefix(r, marked);
            return Err(p.into());
        }
        Ok(())
    }

    /// Calls `f(offset, piece)` over the first `len` bytes of entry `r` (after its record,
    /// then on through its chain) while chain links carry repair marks. False if the chain
    /// leaves the arena before `len` bytes.
    fn marked_walk(&self, r: u32, len: usize, mut f: impl FnMut(usize, &[u8])) -> bool {
        let cs = self.chunk_size;
        let head = r as usize * cs + REC_LEN;
        let Some(first) = self.arena.get(head..head + len.min(cs - REC_LEN)) else {
            return false;
        };
        f(0, first);
        let mut at = first.len();
        let mut c = r;
        while at < len {
            if c as usize >= self.links.len() {
                return false;
            }
            c = self.unmarked(c);
            let n = (len - at).min(cs);
            let Some(piece) = self.arena.get(c as usize * cs..c as usize * cs + n) else {
                return false;
            };
            f(at, piece);
            at += n;
        }
        true
    }

    /// Unmarks the first `count` chunks of the chain at `first`.
    pub(super) fn unmark_prefix(&mut self, first: u32, count: u32) {
        let mut c = first;
        for _ in 0..count {
            let next = self.unmarked(c);
            self.links[c as usize] = next;
            c = next;
        }
    }
}
