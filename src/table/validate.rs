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

/// What [`ShardView::validate_with`] keeps track of, outside the segment: the entries it
/// has seen on the LRU list and in the index, the chunks it has seen, and a buffer for one
/// key. Allocate it before taking a shard's lock.
pub struct CheckScratch {
    listed: Bits,
    indexed: Bits,
    chunks: Bits,
    key: Vec<u8>,
}

impl CheckScratch {
    /// Scratch for shards of `chunks` chunks and keys of up to `max_key` bytes.
    pub fn new(chunks: usize, max_key: usize) -> CheckScratch {
        let bits = || Bits(vec![0; chunks.div_ceil(64)]);
        CheckScratch {
            listed: bits(),
            indexed: bits(),
            chunks: bits(),
            key: Vec::with_capacity(max_key),
        }
    }

    /// Scratch for the shards of `g`.
    pub fn for_geometry(g: &Geometry) -> CheckScratch {
        Self::new(g.chunks_per_shard as usize, g.max_key_len as usize)
    }

    fn reset(&mut self, chunks: usize) -> Result<(), String> {
        self.listed.reset(chunks)?;
        self.indexed.reset(chunks)?;
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
        let mut scratch = CheckScratch::new(self.links.len(), self.max_key);
        self.validate_with(&mut scratch)
    }

    /// [`validate`](Self::validate) with scratch memory sized for this shard's geometry.
    pub fn validate_with(&self, scratch: &mut CheckScratch) -> Result<(), String> {
        let n = self.chunk_count();
        scratch.reset(n as usize)?;
        let m = *self.meta;
        if m.dirty != 0 {
            return Err("shard is marked dirty (an update was interrupted)".into());
        }
        if m.replacing != NIL || m.replacement != NIL || m.undo != NIL {
            return Err("an overwrite was left half done".into());
        }
        if m.len > self.max_entries {
            return Err(format!(
                "len {} exceeds capacity {}",
                m.len, self.max_entries
            ));
        }
        // LRU list: every element a live head, links mutual, length = len, tail matches.
        let mut prev = NIL;
        let mut i = m.lru_head;
        let mut count = 0u32;
        let mut bytes = 0u64;
        let mut expiring = 0u32;
        let mut tagged = 0u32;
        while i != NIL {
            if i >= n || !self.is_head(i) {
                return Err(format!("LRU link {i} is not an entry"));
            }
            let r = self.rec(i).map_err(|e| format!("entry {i}: {e:?}"))?;
            if scratch.listed.test_and_set(i as usize) {
                return Err(format!("LRU list revisits entry {i}"));
            }
            if r.state & !REC_TAGGED != REC_LIVE {
                return Err(format!("LRU list holds entry {i} in state {}", r.state));
            }
            if r.prev != prev {
                return Err(format!("entry {i} prev link {} should be {prev}", r.prev));
            }
            if r.key_len as usize > self.max_key || r.value_len as usize > self.max_value {
                return Err(format!("entry {i} exceeds the size limits"));
            }
            bytes += Self::entry_len(r) as u64;
            expiring += u32::from(r.expires_at != 0);
            tagged += u32::from(r.tagged());
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
        if tagged != m.tagged {
            return Err(format!("tagged {} should be {tagged}", m.tagged));
        }
        if expiring != m.expiring {
            return Err(format!("expiring {} should be {expiring}", m.expiring));
        }
        let mut at = 0;
        while let Some(h) = self.next_head(at) {
            if !scratch.listed.get(h as usize) {
                return Err(format!(
                    "chunk {h} is marked as an entry but not on the LRU list"
                ));
            }
            at = h + 1;
        }
        // Index: exactly the live entries, each in its own bucket and findable by its key.
        let mut indexed = 0u32;
        for b in 0..self.buckets.len() {
            let mut i = self.buckets[b];
            while i != NIL {
                if !scratch.listed.get(i as usize) {
                    return Err(format!("bucket {b} holds {i}, which is not a live entry"));
                }
                if scratch.indexed.test_and_set(i as usize) {
                    return Err(format!("entry {i} is indexed twice, or a chain cycles"));
                }
                indexed += 1;
                let rec = *self.rec(i).map_err(|e| format!("entry {i}: {e:?}"))?;
                if self.bucket_of(rec.hash) != b {
                    return Err(format!("entry {i} is in bucket {b}, not its own"));
                }
                // Into memory reserved before locking: no allocation here.
                scratch.key.clear();
                self.read_key(i, &mut scratch.key)
                    .map_err(|e| format!("entry {i}: {e:?}"))?;
                if stored_key_hash(self.seed, &scratch.key, rec.tagged()) as u32 != rec.hash {
                    return Err(format!("entry {i} hash does not match its key"));
                }
                let k = Key {
                    bytes: &scratch.key,
                    hash: rec.hash,
                    tagged: rec.tagged(),
                };
                match self.find(k) {
                    Ok(Some((_, found))) if found == i => {}
                    other => return Err(format!("entry {i} not findable by its key: {other:?}")),
                }
                i = rec.hnext;
            }
        }
        if indexed != m.len {
            return Err(format!("index holds {indexed} entries, len says {}", m.len));
        }
        // Chunks: live chains and the free list partition them.
        let mut owned = 0u32;
        let mut i = m.lru_head;
        while i != NIL {
            let rec = *self.rec(i).map_err(|e| format!("entry {i}: {e:?}"))?;
            let need = self.chunks_of(&rec);
            self.walk_chain(i, need, &mut scratch.chunks)
                .map_err(|e| format!("entry {i}: {e}"))?;
            owned += need;
            if self.trailer != 0 && !self.checksum_ok(i).unwrap_or(false) {
                return Err(format!("entry {i} fails its checksum"));
            }
            i = rec.next;
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
        if owned + nfree != n {
            return Err(format!("{owned} used + {nfree} free chunks != {n}"));
        }
        Ok(())
    }

    /// Follows a chain of exactly `need` chunks from `first`, setting each in `seen` and
    /// failing on a chunk seen before (shared, or a cycle) or a wrong length.
    pub(super) fn walk_chain(&self, first: u32, need: u32, seen: &mut Bits) -> Result<(), String> {
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
