//! Chunks: taking a chain from the free list and giving it back.

use super::*;

impl ShardView<'_> {
    /// Takes `n` (at least 1) chunks from the free list, linked into a chain ending in
    /// [`NIL`]; returns the first.
    pub(super) fn alloc_chain(&mut self, n: u32) -> TResult<u32> {
        if n == 0 || self.meta.free_chunks < n {
            return Err(TableError::NoRoom);
        }
        let first = self.meta.free_chunk_head;
        let mut last = first;
        if last as usize >= self.links.len() {
            return corrupt("free chunk list leaves the arena");
        }
        for _ in 1..n {
            last = self.next_chunk(last)?;
        }
        let rest = self.links[last as usize];
        if rest != NIL && rest as usize >= self.links.len() {
            return corrupt("free chunk list leaves the arena");
        }
        self.links[last as usize] = NIL;
        self.meta.free_chunk_head = rest;
        self.meta.free_chunks -= n;
        Ok(first)
    }

    /// Gives the `n` chunks of the chain at `first` back to the free list.
    pub(super) fn free_chain(&mut self, first: u32, n: u32) -> TResult<()> {
        if n == 0 {
            return Ok(());
        }
        let mut last = first;
        if last as usize >= self.links.len() {
            return corrupt("chunk chain leaves the arena");
        }
        for _ in 1..n {
            last = self.next_chunk(last)?;
        }
        self.links[last as usize] = self.meta.free_chunk_head;
        self.meta.free_chunk_head = first;
        self.meta.free_chunks += n;
        Ok(())
    }
}
