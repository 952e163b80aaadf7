//! An entry's bytes: bounds-checked access to records, and the key, value and checksum
//! bytes laid after the record in its head chunk and on through its chain of chunks.

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
    /// The record at the start of chunk `i`.
    #[inline]
    pub(super) fn rec(&self, i: u32) -> TResult<&Record> {
        let start = i as usize * self.chunk_size;
        self.arena
            .get(start..start + REC_LEN)
            .and_then(|b| bytemuck::try_from_bytes(b).ok())
            .ok_or(TableError::Corrupt("entry index out of range"))
    }

    #[inline]
    pub(super) fn rec_mut(&mut self, i: u32) -> TResult<&mut Record> {
        let start = i as usize * self.chunk_size;
        self.arena
            .get_mut(start..start + REC_LEN)
            .and_then(|b| bytemuck::try_from_bytes_mut(b).ok())
            .ok_or(TableError::Corrupt("entry index out of range"))
    }

    /// Chunks an entry of `len` bytes (key, value and checksum) occupies, its head included.
    #[inline]
    pub(super) fn chunks_for(&self, len: usize) -> u32 {
        crate::layout::chunks_for(len, self.chunk_size) as u32
    }

    /// Chunks record `r`'s entry occupies (its checksum included).
    #[inline]
    pub(super) fn chunks_of(&self, r: &Record) -> u32 {
        self.chunks_for(Self::entry_len(r) + self.trailer)
    }

    #[inline]
    pub(super) fn entry_len(r: &Record) -> usize {
        r.key_len as usize + r.value_len as usize
    }

    /// Bytes of an entry that its head chunk holds after the record.
    #[inline]
    pub(super) fn head_room(&self) -> usize {
        self.chunk_size - REC_LEN
    }

    #[inline]
    pub(super) fn next_chunk(&self, c: u32) -> TResult<u32> {
        match self.links.get(c as usize) {
            Some(&n) if (n as usize) < self.links.len() => Ok(n),
            _ => corrupt("chunk chain leaves the arena"),
        }
    }

    #[inline]
    pub(super) fn is_head(&self, c: u32) -> bool {
        self.heads
            .get(c as usize / 64)
            .is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    #[inline]
    pub(super) fn set_head(&mut self, c: u32, on: bool) {
        if let Some(w) = self.heads.get_mut(c as usize / 64) {
            if on {
                *w |= 1 << (c % 64);
            } else {
                *w &= !(1 << (c % 64));
            }
        }
    }

    /// Calls `f` with consecutive pieces of the `len` bytes starting at byte `off` of entry
    /// `r`'s key, value and checksum bytes.
    pub(super) fn pieces(
        &self,
        r: u32,
        off: usize,
        len: usize,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> TResult<()> {
        if len == 0 {
            return Ok(());
        }
        let (mut c, mut at) = self.seek(r, off)?;
        let mut left = len;
        loop {
            let start = c as usize * self.chunk_size;
            let n = (self.chunk_size - at).min(left);
            let piece = self
                .arena
                .get(start + at..start + at + n)
                .ok_or(TableError::Corrupt("chunk index out of range"))?;
            if !f(piece) {
                return Ok(());
            }
            left -= n;
            if left == 0 {
                return Ok(());
            }
            at = 0;
            c = self.next_chunk(c)?;
        }
    }

    /// Writes `src` at byte `off` of entry `r`'s key, value and checksum bytes.
    pub(super) fn write_at(&mut self, r: u32, off: usize, src: &[u8]) -> TResult<()> {
        if src.is_empty() {
            return Ok(());
        }
        let (mut c, mut at) = self.seek(r, off)?;
        let cs = self.chunk_size;
        let mut done = 0;
        loop {
            let n = (cs - at).min(src.len() - done);
            let start = c as usize * cs + at;
            self.arena
                .get_mut(start..start + n)
                .ok_or(TableError::Corrupt("chunk index out of range"))?
                .copy_from_slice(&src[done..done + n]);
            done += n;
            if done == src.len() {
                return Ok(());
            }
            at = 0;
            c = self.next_chunk(c)?;
        }
    }

    /// Where byte `off` of entry `r`'s bytes lies: the chunk, and the offset inside it.
    #[inline]
    pub(super) fn seek(&self, r: u32, off: usize) -> TResult<(u32, usize)> {
        let room = self.head_room();
        if off < room {
            return Ok((r, REC_LEN + off));
        }
        let cs = self.chunk_size;
        let mut off = off - room;
        let mut c = self.next_chunk(r)?;
        while off >= cs {
            c = self.next_chunk(c)?;
            off -= cs;
        }
        Ok((c, off))
    }

    #[inline]
    pub(super) fn key_eq(&self, i: u32, r: &Record, key: &[u8]) -> TResult<bool> {
        if r.key_len as usize != key.len() {
            return Ok(false);
        }
        if key.len() <= self.head_room() {
            // The common case: the key follows its record, in the same cache line or the
            // next.
            let start = i as usize * self.chunk_size + REC_LEN;
            return Ok(self.arena.get(start..start + key.len()) == Some(key));
        }
        let mut at = 0;
        let mut eq = true;
        self.pieces(i, 0, key.len(), |p| {
            eq = p == &key[at..at + p.len()];
            at += p.len();
            eq
        })?;
        Ok(eq)
    }
}
