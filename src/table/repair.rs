//! `repair`: rebuilding the index, LRU list, free lists and counters from the entry records,
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
        if need == 0 {
            return if first == NIL {
                Ok(())
            } else {
                Err((0, "empty entry has a chunk".into()))
            };
        }
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
                RepairReport {
                    kept: 0,
                    dropped,
                    cleared: true,
                }
            }
        }
    }

    pub(super) fn try_repair(&mut self) -> TResult<RepairReport> {
        let n = self.recs.len() as u32;
        let total = self.links.len() as u32;
        // Marks left by an interrupted validation are dropped; links out of range become NIL.
        self.unmark_all();
        for l in self.links.iter_mut() {
            if *l >= total {
                *l = NIL;
            }
        }
        // 0. An overwrite that committed (its new record is live) replaces the old record;
        //    one that did not leaves the new record WRITING, which step 1 drops.
        let (old, new) = (self.meta.replacing, self.meta.replacement);
        self.meta.replacing = NIL;
        self.meta.replacement = NIL;
        // An in-place overwrite caught before it finished: put the saved bytes back.
        // The copy is used only if its check word says it was saved for this very record.
        let undo = std::mem::replace(&mut self.meta.undo, NIL);
        let saved = u64::from_ne_bytes(self.undo[UNDO_REC..UNDO_HEAD].try_into().unwrap_or([0; 8]));
        if undo < n && saved != 0 && saved == self.undo_check(undo) {
            let cs = self.chunk_size;
            self.recs[undo as usize] = bytemuck::pod_read_unaligned(&self.undo[..UNDO_REC]);
            let head = undo as usize * cs;
            self.heads[head..head + cs].copy_from_slice(&self.undo[UNDO_HEAD..UNDO_HEAD + cs]);
        }
        self.undo[UNDO_REC..UNDO_HEAD].fill(0);
        let mut report = RepairReport::default();
        if old < n && new < n && old != new {
            let committed = self.recs[new as usize].state & REC_STATE_MASK == REC_LIVE;
            if committed {
                // The old value was superseded, not lost: not counted as dropped.
                self.recs[old as usize].state = REC_FREE;
            }
        }
        // 1. Decide which records survive, claiming their chunks with the mark bit.
        for r in 0..n {
            let rec = self.recs[r as usize];
            let state = rec.state & REC_STATE_MASK;
            self.recs[r as usize].state = state;
            if state == REC_FREE {
                continue;
            }
            let keep = state == REC_LIVE && self.claim(r).is_ok();
            if !keep {
                self.recs[r as usize].state = REC_FREE;
                report.dropped += 1;
            }
        }
        // 2. Thread the LRU list: the old order as far as it is sound, then the rest.
        let mut order: u32 = NIL; // new head
        let mut tail: u32 = NIL;
        let mut count = 0u32;
        let mut bytes = 0u64;
        let mut expiring = 0u32;
        let push = |recs: &mut [Record], i: u32, order: &mut u32, tail: &mut u32| {
            recs[i as usize].state |= REC_VISITED;
            recs[i as usize].prev = *tail;
            recs[i as usize].next = NIL;
            if *tail == NIL {
                *order = i;
            } else {
                recs[*tail as usize].next = i;
            }
            *tail = i;
        };
        let mut i = self.meta.lru_head;
        let mut steps = 0;
        while i != NIL && (i as usize) < self.recs.len() && steps <= n {
            let rec = self.recs[i as usize];
            if rec.state != REC_LIVE {
                break;
            }
            let next = rec.next;
            push(self.recs, i, &mut order, &mut tail);
            count += 1;
            bytes += Self::entry_len(&rec) as u64;
            expiring += u32::from(rec.expires_at != 0);
            i = next;
            steps += 1;
        }
        for r in 0..n {
            let rec = self.recs[r as usize];
            if rec.state == REC_LIVE {
                push(self.recs, r, &mut order, &mut tail);
                count += 1;
                bytes += Self::entry_len(&rec) as u64;
                expiring += u32::from(rec.expires_at != 0);
            }
        }
        // 3. Free chunks: every unclaimed chunk; then drop the marks.
        let mut free_head = NIL;
        let mut free = 0u32;
        for c in (0..total).rev() {
            if Self::is_marked(self.links[c as usize]) {
                self.links[c as usize] = self.unmarked(c);
            } else {
                self.links[c as usize] = free_head;
                free_head = c;
                free += 1;
            }
        }
        // 4. Index and free records; duplicates of a key keep the more recent entry.
        self.index.fill(0);
        let mut free_rec = NIL;
        for r in (0..n).rev() {
            let st = self.recs[r as usize].state;
            if st & REC_STATE_MASK != REC_LIVE {
                let x = &mut self.recs[r as usize];
                x.state = REC_FREE;
                x.prev = NIL;
                x.next = free_rec;
                x.first_chunk = NIL;
                free_rec = r;
            }
        }
        let m = &mut *self.meta;
        m.lru_head = order;
        m.lru_tail = tail;
        m.len = count;
        m.bytes_used = bytes;
        m.expiring = expiring;
        m.free_rec_head = free_rec;
        m.free_chunk_head = free_head;
        m.free_chunks = free;
        m.sweep_cursor = 0;
        m.dirty = 0;
        let mut i = order;
        while i != NIL {
            let rec = self.recs[i as usize];
            let next = rec.next;
            self.recs[i as usize].state = REC_LIVE;
            let mut key = Vec::with_capacity(rec.key_len as usize);
            self.read_key(i, &mut key)?;
            if self.find(&key, rec.hash)?.is_some() {
                // Duplicate key (possible only after damage): keep the more recent one.
                self.release(i)?;
                report.dropped += 1;
            } else {
                self.index_insert(i, rec.hash)?;
            }
            i = next;
        }
        report.kept = self.meta.len;
        Ok(report)
    }

    /// Claims record `r`'s chunks for repair: checks sizes, chain and key hash. On failure
    /// releases what it claimed.
    pub(super) fn claim(&mut self, r: u32) -> Result<(), String> {
        let rec = self.recs[r as usize];
        if rec.key_len as usize > self.max_key || rec.value_len as usize > self.max_value {
            return Err("sizes out of range".into());
        }
        let need = self.chunks_of(&rec);
        let marked = match self.mark_chain(rec.first_chunk, need) {
            Ok(()) => need,
            Err((k, _)) => {
                self.unmark_prefix(rec.first_chunk, k);
                return Err("chunk chain is damaged".into());
            }
        };
        // One walk over the (marked) chain: the key's hash, and with checksums the hash of
        // key and value and the stored checksum after them. Nothing is allocated.
        let key_len = rec.key_len as usize;
        let kv = Self::entry_len(&rec);
        let mut key_h = Xxh3::with_seed(self.seed);
        let mut sum_h = Xxh3::with_seed(self.seed ^ CHECKSUM_SEED);
        let mut stored = [0u8; CHECKSUM_LEN];
        let whole = self.marked_walk(r, kv + self.trailer, |at, p| {
            let end = at + p.len();
            if at < key_len {
                key_h.update(&p[..key_len.min(end) - at]);
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
        } else if key_h.digest() as u32 != rec.hash {
            Some("key does not match its hash")
        } else if self.trailer != 0 && sum_h.digest() != u64::from_le_bytes(stored) {
            Some("key and value do not match their checksum")
        } else {
            None
        };
        if let Some(p) = problem {
            self.unmark_prefix(rec.first_chunk, marked);
            return Err(p.into());
        }
        Ok(())
    }

    /// Calls `f(offset, piece)` over the first `len` bytes of record `r`'s entry (its head,
    /// then its chain) while chain links carry repair marks. False if the chain leaves the
    /// arena before `len` bytes.
    fn marked_walk(&self, r: u32, len: usize, mut f: impl FnMut(usize, &[u8])) -> bool {
        let cs = self.chunk_size;
        let head = r as usize * cs;
        let Some(first) = self.heads.get(head..head + len.min(cs)) else {
            return false;
        };
        f(0, first);
        let mut at = first.len();
        let mut c = self.recs[r as usize].first_chunk;
        while at < len {
            let n = (len - at).min(cs);
            let Some(piece) = self.arena.get(c as usize * cs..c as usize * cs + n) else {
                return false;
            };
            f(at, piece);
            at += n;
            c = self.unmarked(c);
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
