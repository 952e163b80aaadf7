//! An entry's bytes: bounds-checked access to records, and the key, value and checksum
//! bytes laid over a record's head chunk and its chain of overflow chunks.

use super::*;

/// Seed tweak of entry checksums, so they differ from key hashes.
pub(super) const CHECKSUM_SEED: u64 = 0x00c4_ec45_0000_0001;

/// The checksum stored after an entry's value when checksums are on.
pub(super) fn entry_checksum(seed: u64, key: &[u8], value: &[u8]) -> u64 {
    let mut h = Xxh3::with_seed(seed ^ CHECKSUM_SEED);
    h.update(key);
    h.update(value);
    h.digest()
}

impl ShardView<'_> {
    #[inline]
    pub(super) fn rec(&self, i: u32) -> TResult<&Record> {
        self.recs
            .get(i as usize)
            .ok_or(TableError::Corrupt("record index out of range"))
    }

    #[inline]
    pub(super) fn rec_mut(&mut self, i: u32) -> TResult<&mut Record> {
        self.recs
            .get_mut(i as usize)
            .ok_or(TableError::Corrupt("record index out of range"))
    }

    /// Overflow chunks an entry of `len` bytes needs beyond its head chunk.
    #[inline]
    pub(super) fn chunks_for(&self, len: usize) -> u32 {
        len.saturating_sub(self.chunk_size)
            .div_ceil(self.chunk_size) as u32
    }

    /// Overflow chunks record `r`'s entry occupies (its checksum included).
    #[inline]
    pub(super) fn chunks_of(&self, r: &Record) -> u32 {
        self.chunks_for(Self::entry_len(r) + self.trailer)
    }

    #[inline]
    pub(super) fn entry_len(r: &Record) -> usize {
        r.key_len as usize + r.value_len as usize
    }

    #[inline]
    pub(super) fn next_chunk(&self, c: u32) -> TResult<u32> {
        match self.links.get(c as usize) {
            Some(&n) if (n as usize) < self.links.len() => Ok(n),
            _ => corrupt("chunk chain leaves the arena"),
        }
    }

    /// Record `r`'s head chunk.
    #[inline]
    pub(super) fn head(&self, r: u32) -> TResult<&[u8]> {
        let start = r as usize * self.chunk_size;
        self.heads
            .get(start..start + self.chunk_size)
            .ok_or(TableError::Corrupt("record index out of range"))
    }

    #[inline]
    pub(super) fn chunk(&self, c: u32) -> TResult<&[u8]> {
        let start = c as usize * self.chunk_size;
        self.arena
            .get(start..start + self.chunk_size)
            .ok_or(TableError::Corrupt("chunk index out of range"))
    }

    /// Calls `f` with consecutive pieces of the `len` bytes starting at byte `off` of record
    /// `r`'s entry: its head chunk, then the overflow chain that begins at `first`.
    pub(super) fn pieces(
        &self,
        r: u32,
        first: u32,
        off: usize,
        len: usize,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> TResult<()> {
        if len == 0 {
            return Ok(());
        }
        let (mut at, mut off) = self.seek(first, off)?;
        let mut left = len;
        loop {
            let piece = match at {
                None => self.head(r)?,
                Some(c) => self.chunk(c)?,
            };
            let n = (self.chunk_size - off).min(left);
            if !f(&piece[off..off + n]) {
                return Ok(());
            }
            left -= n;
            if left == 0 {
                return Ok(());
            }
            off = 0;
            at = Some(self.after(at, first)?);
        }
    }

    /// Writes `src` at byte `off` of record `r`'s entry (head chunk, then the chain at
    /// `first`).
    pub(super) fn write_at(&mut self, r: u32, first: u32, off: usize, src: &[u8]) -> TResult<()> {
        if src.is_empty() {
            return Ok(());
        }
        let (mut at, mut off) = self.seek(first, off)?;
        let cs = self.chunk_size;
        let mut done = 0;
        loop {
            let n = (cs - off).min(src.len() - done);
            let (area, start, what) = match at {
                None => (
                    &mut *self.heads,
                    r as usize * cs,
                    "record index out of range",
                ),
                Some(c) => (
                    &mut *self.arena,
                    c as usize * cs,
                    "chunk index out of range",
                ),
            };
            let dst = area
                .get_mut(start + off..start + off + n)
                .ok_or(TableError::Corrupt(what))?;
            dst.copy_from_slice(&src[done..done + n]);
            done += n;
            if done == src.len() {
                return Ok(());
            }
            off = 0;
            at = Some(self.after(at, first)?);
        }
    }

    /// Where byte `off` of an entry lies: in the head (`None`) or in an overflow chunk of
    /// the chain at `first`, and at which offset inside it.
    #[inline]
    pub(super) fn seek(&self, first: u32, mut off: usize) -> TResult<(Option<u32>, usize)> {
        let cs = self.chunk_size;
        if off < cs {
            return Ok((None, off));
        }
        off -= cs;
        let mut c = first;
        while off >= cs {
            c = self.next_chunk(c)?;
            off -= cs;
        }
        Ok((Some(c), off))
    }

    /// The chunk after `at` (the head, or an overflow chunk) in the chain at `first`.
    #[inline]
    pub(super) fn after(&self, at: Option<u32>, first: u32) -> TResult<u32> {
        match at {
            None => Ok(first),
            Some(c) => self.next_chunk(c),
        }
    }

    #[inline]
    pub(super) fn key_eq(&self, i: u32, r: &Record, key: &[u8]) -> TResult<bool> {
        if r.key_len as usize != key.len() {
            return Ok(false);
        }
        if key.len() <= self.chunk_size {
            // The common case: the whole key is in the head chunk, whose address depends
            // only on the record index, so it loads in parallel with the record.
            return Ok(&self.head(i)?[..key.len()] == key);
        }
        let mut at = 0;
        let mut eq = true;
        self.pieces(i, r.first_chunk, 0, key.len(), |p| {
            eq = p == &key[at..at + p.len()];
            at += p.len();
            eq
        })?;
        Ok(eq)
    }
}
