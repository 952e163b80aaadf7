//! `validate`: every invariant of a shard checked read-only, with memory of its own.

use super::*;

/// A bit set over `0..len`, in memory of its own.
#[derive(Default)]
pub struct Bits(Vec<u64>);

impl Bits {
    fn reset(&mut self, len: usize) -> Result<(), String> {
        let words = len.div_ceil(64);
        if self.0.len() != words {
            return Err(format!(
                "check scratch is for {} bits, not {len}",
                self.0.len() * 64
            ));
        }
        self.0.fill(0);
        Ok(())
    }

    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Sets bit `i`; true if it was set already (or `i` is out of range).
    fn test_and_set(&mut self, i: usize) -> bool {
        match self.0.get_mut(i / 64) {
            Some(w) => {
                let was = *w & (1 << (i % 64)) != 0;
                *w |= 1 << (i % 64);
                was
            }
            None => true,
        }
    }
}

/// What [`ShardView::validate_with`] keeps track of, outside the segment: the records and
/// chunks it has seen, and a buffer for one key. Allocate it before taking a shard's lock.
pub struct CheckScratch {
    recs: Bits,
    chunks: Bits,
    key: Vec<u8>,
}

impl CheckScratch {
    /// Scratch for shards of `records` records, `chunks` overflow chunks and keys of up to
    /// `max_key` bytes.
    pub fn new(records: usize, chunks: usize, max_key: usize) -> CheckScratch {
        CheckScratch {
            recs: Bits(vec![0; records.div_ceil(64)]),
            chunks: Bits(vec![0; chunks.div_ceil(64)]),
            key: Vec::with_capacity(max_key),
        }
    }

    /// Scratch for the shards of `g`.
    pub fn for_geometry(g: &Geometry) -> CheckScratch {
        Self::new(
            g.entries_per_shard as usize,
            g.chunks_per_shard as usize,
            g.max_key_len as usize,
        )
    }

    fn reset(&mut self, records: usize, chunks: usize) -> Result<(), String> {
        self.recs.reset(records)?;
        self.chunks.reset(chunks)?;
        self.key.clear();
        Ok(())
    }
}

impl ShardView<'_> {
    /// Checks every invariant of the shard; `Err` says the first one broken. Only reads:
    /// what it has seen is kept in memory of its own (here allocated; see
    /// [`validate_with`](Self::validate_with) to allocate it before taking a lock).
    pub fn validate(&self) -> Result<(), String> {
        let mut scratch = CheckScratch::new(self.recs.len(), self.links.len(), self.max_key);
        self.validate_with(&mut scratch)
    }

    /// [`validate`](Self::validate) with scratch memory sized for this shard's geometry.
    pub fn validate_with(&self, scratch: &mut CheckScratch) -> Result<(), String> {
        scratch.reset(self.recs.len(), self.links.len())?;
        let n = self.recs.len() as u32;
        let m = *self.meta;
        if m.dirty != 0 {
            return Err("shard is marked dirty (an update was interrupted)".into());
        }
        if m.replacing != NIL || m.replacement != NIL || m.undo != NIL {
            return Err("an overwrite was left half done".into());
        }
        if m.len > n {
            return Err(format!("len {} exceeds capacity {n}", m.len));
        }
        // LRU list: every element live, links mutual, length = len, tail matches.
        let mut prev = NIL;
        let mut i = m.lru_head;
        let mut count = 0u32;
        let mut bytes = 0u64;
        let mut expiring = 0u32;
        while i != NIL {
            let r = self
                .recs
                .get(i as usize)
                .ok_or_else(|| format!("LRU link {i} out of range"))?;
            if scratch.recs.test_and_set(i as usize) {
                return Err(format!("LRU list revisits record {i}"));
            }
            if r.state != REC_LIVE {
                return Err(format!("LRU list holds record {i} in state {}", r.state));
            }
            if r.prev != prev {
                return Err(format!("record {i} prev link {} should be {prev}", r.prev));
            }
            bytes += Self::entry_len(r) as u64;
            expiring += u32::from(r.expires_at != 0);
            count += 1;
            prev = i;
            i = r.next;
        }
        if m.lru_tail != prev {
            return Err(format!("LRU tail {} should be {prev}", m.lru_tail));
        }
        if count != m.len {
            return Err(format!("LRU list has {count} entries, len says {}", m.len));
        }
        if bytes != m.bytes_used {
            return Err(format!("bytes_used {} should be {bytes}", m.bytes_used));
        }
        if expiring != m.expiring {
            return Err(format!("expiring {} should be {expiring}", m.expiring));
        }
        if let Some(i) = (0..self.recs.len())
            .find(|&i| self.recs[i].state & REC_STATE_MASK != REC_FREE && !scratch.recs.get(i))
        {
            return Err(format!("record {i} is in use but not on the LRU list"));
        }
        // Free record list.
        let mut i = m.free_rec_head;
        let mut free = 0u32;
        while i != NIL {
            let r = self
                .recs
                .get(i as usize)
                .ok_or_else(|| format!("free record link {i} out of range"))?;
            if r.state != REC_FREE {
                return Err(format!("free list holds record {i} in state {}", r.state));
            }
            if scratch.recs.test_and_set(i as usize) {
                return Err("free record list is cyclic".into());
            }
            free += 1;
            i = r.next;
        }
        if free + count != n {
            return Err(format!(
                "{free} free + {count} live records != capacity {n}"
            ));
        }
        // Index: exactly the live records, each findable by its own key from its home slot.
        let used = self.index.iter().filter(|&&v| v != 0).count() as u32;
        if used != m.len {
            return Err(format!("index holds {used} entries, len says {}", m.len));
        }
        for slot in 0..self.index.len() {
            let v = self.index[slot];
            if v == 0 {
                continue;
            }
            let r = v - 1;
            let rec = *self
                .recs
                .get(r as usize)
                .ok_or_else(|| format!("index slot {slot} points outside the records"))?;
            if rec.state & REC_STATE_MASK != REC_LIVE {
                return Err(format!("index slot {slot} points at a free record {r}"));
            }
            if rec.key_len as usize > self.max_key || rec.value_len as usize > self.max_value {
                return Err(format!("record {r} exceeds the size limits"));
            }
            // Into memory reserved before locking: no allocation here.
            scratch.key.clear();
            self.read_key(r, &mut scratch.key)
                .map_err(|e| format!("record {r}: {e:?}"))?;
            if key_hash(self.seed, &scratch.key) as u32 != rec.hash {
                return Err(format!("record {r} hash does not match its key"));
            }
            match self.find(&scratch.key, rec.hash) {
                Ok(Some((s, found))) if s == slot && found == r => {}
                other => return Err(format!("record {r} not findable from its home: {other:?}")),
            }
        }
        // Overflow chunks: live chains and the free list partition them.
        let total = self.links.len() as u32;
        let mut owned = 0u32;
        for r in 0..n {
            let rec = self.recs[r as usize];
            if rec.state & REC_STATE_MASK != REC_LIVE {
                continue;
            }
            let need = self.chunks_of(&rec);
            self.walk_chain(rec.first_chunk, need, &mut scratch.chunks)
                .map_err(|e| format!("record {r}: {e}"))?;
            owned += need;
            if self.trailer != 0 && !self.checksum_ok(r).unwrap_or(false) {
                return Err(format!("record {r} fails its checksum"));
            }
        }
        let mut c = m.free_chunk_head;
        let mut nfree = 0u32;
        while c != NIL {
            let l = *self
                .links
                .get(c as usize)
                .ok_or_else(|| format!("free chunk link {c} out of range"))?;
            if scratch.chunks.test_and_set(c as usize) {
                return Err(format!(
                    "chunk {c} is both free and used, or the free list cycles"
                ));
            }
            nfree += 1;
            c = l;
        }
        if nfree != m.free_chunks {
            return Err(format!(
                "free chunk list has {nfree}, counter says {}",
                m.free_chunks
            ));
        }
        if owned + nfree != total {
            return Err(format!("{owned} used + {nfree} free chunks != {total}"));
        }
        Ok(())
    }

    /// Follows a chain of exactly `need` chunks from `first`, setting each in `seen` and
    /// failing on a chunk seen before (shared, or a cycle) or a wrong length.
    pub(super) fn walk_chain(&self, first: u32, need: u32, seen: &mut Bits) -> Result<(), String> {
        if need == 0 {
            return if first == NIL {
                Ok(())
            } else {
                Err("empty entry has a chunk".into())
            };
        }
        let mut c = first;
        for k in 0..need {
            let Some(&l) = self.links.get(c as usize) else {
                return Err(format!("chunk {c} out of range"));
            };
            if seen.test_and_set(c as usize) {
                return Err(format!("chunk {c} is shared or the chain cycles"));
            }
            let last = k + 1 == need;
            if !last && l == NIL {
                return Err("chain is shorter than its entry".into());
            }
            if last && l != NIL {
                return Err("chain is longer than its entry".into());
            }
            c = l;
        }
        Ok(())
    }
}
