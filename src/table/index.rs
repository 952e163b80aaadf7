//! The hash index: open addressing with linear probing, `record + 1` per slot (0 =
//! empty), and backward-shift deletion, so there are no tombstones.

use super::*;

impl ShardView<'_> {
    #[inline]
    pub(super) fn mask(&self) -> usize {
        self.index.len() - 1
    }

    /// Finds the index slot and record of `key`, live or expired.
    #[inline(always)]
    pub(super) fn find(&self, key: &[u8], h: u32) -> TResult<Option<(usize, u32)>> {
        let mask = self.mask();
        let mut s = h as usize & mask;
        for _ in 0..self.index.len() {
            let v = self.index[s];
            if v == 0 {
                return Ok(None);
            }
            let r = v - 1;
            let rec = self.rec(r)?;
            if rec.hash == h && self.key_eq(r, rec, key)? {
                return Ok(Some((s, r)));
            }
            s = (s + 1) & mask;
        }
        corrupt("index has no empty slot")
    }

    pub(super) fn slot_of(&self, r: u32) -> TResult<usize> {
        let mask = self.mask();
        let mut s = self.rec(r)?.hash as usize & mask;
        for _ in 0..self.index.len() {
            match self.index[s] {
                0 => break,
                v if v == r + 1 => return Ok(s),
                _ => s = (s + 1) & mask,
            }
        }
        corrupt("live record missing from the index")
    }

    pub(super) fn index_insert(&mut self, r: u32, h: u32) -> TResult<()> {
        let mask = self.mask();
        let mut s = h as usize & mask;
        for _ in 0..self.index.len() {
            if self.index[s] == 0 {
                self.index[s] = r + 1;
                return Ok(());
            }
            s = (s + 1) & mask;
        }
        corrupt("index has no empty slot")
    }

    /// Empties slot `hole` and shifts back later members of its probe run.
    pub(super) fn index_remove(&mut self, mut hole: usize) -> TResult<()> {
        let mask = self.mask();
        self.index[hole] = 0;
        let mut s = (hole + 1) & mask;
        for _ in 0..self.index.len() {
            let v = self.index[s];
            if v == 0 {
                return Ok(());
            }
            let home = self.rec(v - 1)?.hash as usize & mask;
            // Move the entry at `s` into the hole unless its home lies cyclically in (hole, s].
            let stays = if hole <= s {
                hole < home && home <= s
            } else {
                hole < home || home <= s
            };
            if !stays {
                self.index[hole] = v;
                self.index[s] = 0;
                hole = s;
            }
            s = (s + 1) & mask;
        }
        corrupt("index has no empty slot")
    }
}
