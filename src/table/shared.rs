//! Reading a shard without its lock: the read side of the shard's seqlock (DESIGN.md §4.1).
//!
//! A [`SharedShard`] sees the guarded region as 64-bit words and only ever loads them
//! atomically, so a lock holder changing the shard meanwhile costs a retry, never undefined
//! behaviour. Nothing it reads is trusted: every index and length is bounds-checked against
//! the geometry, and every walk is bounded by it, so a torn or damaged view ends in
//! [`Torn`] (the caller retries, then takes the lock), never in a panic, an out-of-bounds
//! access or a loop. A result is only used once [`optimistic`] has seen the shard's version
//! unchanged and even around the whole read.

use super::*;
use std::sync::atomic::fence;

/// An optimistic read gave up: the view was torn or inconsistent. The caller retries or
/// falls back to the locked path, which also repairs what is really damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Torn;

type SResult<T> = Result<T, Torn>;

/// Attempts of an optimistic read before the caller takes the lock: with a `pause` between
/// them, enough to outlast a write's critical section (a few hundred ns), so a reader
/// meeting a writer rarely falls back to waiting on the lock (4 attempts measured 3 %
/// slower at 90/10 on 2 processes).
pub const OPTIMISTIC_TRIES: u32 = 32;

/// Runs `read` between two loads of a shard's `version` word, up to [`OPTIMISTIC_TRIES`]
/// times. `Some(v)`: `read` returned `v` while no lock holder ran. `None`: a holder kept
/// running, or `read` found the shard inconsistent while none ran: take the lock.
#[inline]
pub fn optimistic<T>(version: &AtomicU64, mut read: impl FnMut() -> SResult<T>) -> Option<T> {
    for _ in 0..OPTIMISTIC_TRIES {
        let before = version.load(Ordering::Acquire);
        if before & 1 == 0 {
            let result = read();
            // Orders every load `read` made before the second load of the version: if any
            // of them saw a holder's store, this load sees that holder's odd version.
            fence(Ordering::Acquire);
            if version.load(Ordering::Relaxed) == before {
                return result.ok();
            }
        }
        std::hint::spin_loop();
    }
    None
}

/// A shard's region seen as atomic words, with the geometry needed to find entries in it.
pub struct SharedShard<'a> {
    words: &'a [AtomicU64],
    marks: &'a [AtomicU64],
    buckets_off: usize,
    bucket_mask: u32,
    links_off: usize,
    arena_off: usize,
    chunks: u32,
    chunk_size: usize,
    /// Longest hash chain a consistent shard can hold.
    max_walk: u32,
    max_key: usize,
    max_value: usize,
    trailer: usize,
    seed: u64,
}

impl<'a> SharedShard<'a> {
    /// A view of the region `words` (`geom.shard.region_len / 8` words) and its accessed
    /// `marks`. A slice of the wrong length gives a view whose every read is [`Torn`].
    #[inline(always)]
    pub fn new(words: &'a [AtomicU64], marks: &'a [AtomicU64], geom: &Geometry) -> Self {
        let s = &geom.shard;
        let ok = words.len() * 8 == s.region_len;
        SharedShard {
            words: if ok { words } else { &[] },
            marks,
            buckets_off: s.buckets_off,
            bucket_mask: geom.buckets.max(1) - 1,
            links_off: s.links_off,
            arena_off: s.arena_off,
            chunks: geom.chunks_per_shard,
            chunk_size: geom.chunk_size as usize,
            max_walk: geom.max_entries_per_shard.min(geom.chunks_per_shard),
            max_key: geom.max_key_len as usize + TAG_LEN,
            max_value: geom.max_value_len as usize,
            trailer: geom.trailer(),
            seed: geom.hash_seed,
        }
    }

    #[inline(always)]
    fn word(&self, index: usize) -> SResult<[u8; 8]> {
        match self.words.get(index) {
            Some(w) => Ok(w.load(Ordering::Relaxed).to_ne_bytes()),
            None => Err(Torn),
        }
    }

    /// The `u32` at byte `off` of the region (4-aligned).
    #[inline(always)]
    fn u32_at(&self, off: usize) -> SResult<u32> {
        let w = self.word(off / 8)?;
        let at = off % 8;
        let b = w.get(at..at + 4).ok_or(Torn)?;
        Ok(u32::from_ne_bytes(b.try_into().map_err(|_| Torn)?))
    }

    /// The words holding the `len` bytes at byte `off` of the region.
    #[inline(always)]
    fn span_words(&self, off: usize, len: usize) -> SResult<&'a [AtomicU64]> {
        let end = off.checked_add(len).ok_or(Torn)?;
        self.words.get(off / 8..end.div_ceil(8)).ok_or(Torn)
    }

    /// Fills `dst` from the region's bytes starting at byte `off`, eight at a time: whole
    /// words when `off` is aligned (the common case: keys and values follow 8-aligned
    /// records), else each eight joined from the two words they straddle.
    #[inline(always)]
    fn load(&self, off: usize, dst: &mut [u8]) -> SResult<()> {
        let words = self.span_words(off, dst.len())?;
        let skip = off % 8;
        let full = dst.len() / 8;
        let (body, tail) = dst.split_at_mut(full * 8);
        if skip == 0 {
            // A line at a time: eight loads issued back to back, then one 64-byte store.
            let body_len = body.len();
            let mut lines = body.chunks_exact_mut(64);
            let mut src = words.chunks_exact(8);
            for (d, w) in (&mut lines).zip(&mut src) {
                let line: [u64; 8] = std::array::from_fn(|i| w[i].load(Ordering::Relaxed));
                d.copy_from_slice(bytemuck::bytes_of(&line));
            }
            let done = body_len - lines.into_remainder().len();
            for (d, w) in body[done..].chunks_exact_mut(8).zip(&words[done / 8..]) {
                d.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
            }
        } else {
            // Misaligned (the value follows a key of any length): a line at a time too,
            // nine loads joined pairwise into eight words, on little-endian machines.
            let mut k = 0;
            if cfg!(target_endian = "little") {
                let (lo, hi) = (8 * skip as u32, 64 - 8 * skip as u32);
                for d in body.chunks_exact_mut(64) {
                    let w = words.get(k..k + 9).ok_or(Torn)?;
                    let w: [u64; 9] = std::array::from_fn(|i| w[i].load(Ordering::Relaxed));
                    let line: [u64; 8] = std::array::from_fn(|i| (w[i] >> lo) | (w[i + 1] << hi));
                    d.copy_from_slice(bytemuck::bytes_of(&line));
                    k += 8;
                }
            }
            for (j, d) in body[8 * k..].chunks_exact_mut(8).enumerate() {
                d.copy_from_slice(&eight(words, k + j, skip).to_le_bytes());
            }
        }
        if !tail.is_empty() {
            let last = eight(words, full, skip).to_le_bytes();
            for (d, b) in tail.iter_mut().zip(last) {
                *d = b;
            }
        }
        Ok(())
    }

    /// [`load`](Self::load) of `dst[..len]` where the caller fills the rest of `dst`
    /// afterwards: a last partial word may then be stored whole (its extra bytes are
    /// overwritten later), sparing a byte loop at every chunk boundary.
    #[inline(always)]
    fn load_before(&self, off: usize, dst: &mut [u8], len: usize) -> SResult<()> {
        let body = len & !7;
        if len > body && body + 8 <= dst.len() {
            self.load(off, &mut dst[..body])?;
            let words = self.span_words(off, len)?;
            dst[body..body + 8].copy_from_slice(&eight(words, body / 8, off % 8).to_le_bytes());
            return Ok(());
        }
        self.load(off, &mut dst[..len])
    }

    /// Whether the region's bytes starting at byte `off` equal `want`.
    #[inline(always)]
    fn equals(&self, off: usize, want: &[u8]) -> SResult<bool> {
        let words = self.span_words(off, want.len())?;
        let skip = off % 8;
        let full = want.len() / 8;
        for (j, w) in want.chunks_exact(8).enumerate() {
            if eight(words, j, skip).to_le_bytes() != w {
                return Ok(false);
            }
        }
        let rest = want.len() - 8 * full;
        if rest == 0 {
            return Ok(true);
        }
        // The last 1..=7 bytes in one masked compare, not a byte loop.
        let mask = u64::MAX >> (64 - 8 * rest);
        Ok((eight(words, full, skip) ^ tail_le(want, rest)) & mask == 0)
    }

    /// The record of the entry whose head chunk is `i`.
    #[inline(always)]
    pub fn record(&self, i: u32) -> SResult<Record> {
        if i >= self.chunks {
            return Err(Torn);
        }
        let first = (self.arena_off + i as usize * self.chunk_size) / 8;
        let mut b = [0u8; REC_LEN];
        for (k, part) in b.chunks_exact_mut(8).enumerate() {
            part.copy_from_slice(&self.word(first + k)?);
        }
        Ok(bytemuck::cast(b))
    }

    #[inline]
    fn next_chunk(&self, c: u32) -> SResult<u32> {
        match self.u32_at(self.links_off + 4 * c as usize)? {
            n if n < self.chunks => Ok(n),
            _ => Err(Torn),
        }
    }

    /// Calls `f(region offset, start, len)` for consecutive pieces of the `len` bytes
    /// starting at byte `off` of entry `r`'s key, value and checksum bytes, `start` counting
    /// from `off`. Bounded by `len`: a cyclic chain only repeats chunks.
    #[inline(always)]
    fn pieces(
        &self,
        r: u32,
        off: usize,
        len: usize,
        mut f: impl FnMut(usize, usize, usize) -> SResult<bool>,
    ) -> SResult<()> {
        if len == 0 {
            // Nothing to read, and `off` may be the very end of the chain.
            return Ok(());
        }
        let cs = self.chunk_size;
        let room = cs - REC_LEN;
        let (mut c, mut at) = if off < room {
            (r, REC_LEN + off)
        } else {
            let mut c = self.next_chunk(r)?;
            let mut left = off - room;
            while left >= cs {
                c = self.next_chunk(c)?;
                left -= cs;
            }
            (c, left)
        };
        let mut done = 0;
        while done < len {
            if c >= self.chunks {
                return Err(Torn);
            }
            let n = (cs - at).min(len - done);
            if !f(self.arena_off + c as usize * cs + at, done, n)? {
                return Ok(());
            }
            done += n;
            if done < len {
                at = 0;
                c = self.next_chunk(c)?;
            }
        }
        Ok(())
    }

    /// Finds `key`'s entry: its head chunk and record. Only a live record is reported;
    /// a chain longer than the shard can hold is [`Torn`].
    #[inline]
    #[cfg_attr(not(any(test, feature = "test-support")), allow(dead_code))]
    pub fn find(&self, k: Key) -> SResult<Option<(u32, Record)>> {
        self.find_probe(k.into())
    }

    /// [`find`](Self::find) of a key given in two parts.
    #[inline]
    pub fn find_probe(&self, k: Probe) -> SResult<Option<(u32, Record)>> {
        let b = (k.hash & self.bucket_mask) as usize;
        let len = k.prefix.len() + k.key.len();
        let mut i = self.u32_at(self.buckets_off + 4 * b)?;
        for _ in 0..=self.max_walk {
            if i == NIL {
                return Ok(None);
            }
            let rec = self.record(i)?;
            if rec.hash == k.hash
                && rec.tagged() == k.tagged
                && rec.key_len as usize == len
                && self.key_eq(i, 0, k.prefix)?
                && self.key_eq(i, k.prefix.len(), k.key)?
            {
                if rec.state & REC_STATE_MASK != REC_LIVE
                    || rec.value_len as usize > self.max_value
                    || len > self.max_key
                {
                    return Err(Torn);
                }
                return Ok(Some((i, rec)));
            }
            i = rec.hnext;
        }
        Err(Torn)
    }

    /// Whether entry `i`'s key holds `want` from its byte `off` on.
    #[inline]
    fn key_eq(&self, i: u32, off: usize, want: &[u8]) -> SResult<bool> {
        let mut eq = true;
        self.pieces(i, off, want.len(), |at, start, n| {
            eq = self.equals(at, &want[start..start + n])?;
            Ok(eq)
        })?;
        Ok(eq)
    }

    /// Whether entries carry checksums (which cover the whole stored key).
    #[inline]
    pub fn has_checksums(&self) -> bool {
        self.trailer != 0
    }

    /// Copies the value of entry `r` (record `rec`) into `dst`, which must be exactly its
    /// length.
    #[inline]
    pub fn copy_value(&self, r: u32, rec: &Record, dst: &mut [u8]) -> SResult<()> {
        if dst.len() != rec.value_len as usize {
            return Err(Torn);
        }
        self.pieces(r, rec.key_len as usize, dst.len(), |off, start, n| {
            self.load_before(off, &mut dst[start..], n)?;
            Ok(true)
        })
    }

    /// With checksums on, whether entry `r`'s stored checksum matches `key` and `value`
    /// (copied out already); always true with checksums off.
    pub fn checksum_ok(&self, r: u32, key: &[u8], value: &[u8]) -> SResult<bool> {
        if self.trailer == 0 {
            return Ok(true);
        }
        let mut stored = [0u8; CHECKSUM_LEN];
        self.pieces(r, key.len() + value.len(), CHECKSUM_LEN, |off, start, n| {
            self.load(off, &mut stored[start..start + n])?;
            Ok(true)
        })?;
        Ok(u64::from_le_bytes(stored) == entry_checksum(self.seed, key, value))
    }

    /// Marks entry `r` accessed (lazy promotion): one atomic write, and only if unmarked.
    /// A mark set on a chunk reused meanwhile only gives that entry a second chance.
    #[inline]
    pub fn mark_accessed(&self, r: u32) {
        super::recency::mark_accessed(self.marks, r);
    }
}

/// The last `rest` (1..=7) bytes of `b` as a little-endian integer, read as at most two
/// overlapping loads from `b` (no copy into a buffer).
#[inline(always)]
fn tail_le(b: &[u8], rest: usize) -> u64 {
    let n = b.len();
    let u64_at = |i: usize| {
        b.get(i..i + 8)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .and_then(|s| s.try_into().ok())
            .map_or(0, |a| u64::from(u32::from_le_bytes(a)))
    };
    let u16_at = |i: usize| {
        b.get(i..i + 2)
            .and_then(|s| s.try_into().ok())
            .map_or(0, |a| u64::from(u16::from_le_bytes(a)))
    };
    if n >= 8 {
        return u64_at(n - 8) >> (8 * (8 - rest));
    }
    // `b` is shorter than a word, so it is all tail: `rest == n`.
    match n {
        4..=7 => u32_at(0) | (u32_at(n - 4) << (8 * (n - 4))),
        2..=3 => u16_at(0) | (u16_at(n - 2) << (8 * (n - 2))),
        _ => b.first().map_or(0, |&x| u64::from(x)),
    }
}

/// Bytes `8 * j + skip ..` of the bytes `words` hold, as a little-endian `u64` (missing
/// bytes past the end read as 0): one or two atomic loads.
#[inline(always)]
fn eight(words: &[AtomicU64], j: usize, skip: usize) -> u64 {
    let le = |w: &AtomicU64| u64::from_le_bytes(w.load(Ordering::Relaxed).to_ne_bytes());
    let lo = words.get(j).map_or(0, le);
    if skip == 0 {
        return lo;
    }
    let hi = words.get(j + 1).map_or(0, le);
    (lo >> (8 * skip)) | (hi << (64 - 8 * skip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{small_geometry, HeapShard};

    #[test]
    fn equals_and_load_agree_with_the_bytes_at_every_offset_and_length() {
        let mut s = HeapShard::new(small_geometry());
        let bytes: Vec<u8> = (0..256u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        s.bytes_mut()[..256].copy_from_slice(&bytes);
        let sh = s.shared();
        let lens = if cfg!(miri) { 0..20 } else { 0..41 };
        for off in 0..24 {
            for len in lens.clone() {
                let same = &bytes[off..off + len];
                assert_eq!(sh.equals(off, same), Ok(true), "off {off} len {len}");
                let mut copy = vec![0u8; len];
                sh.load(off, &mut copy).unwrap();
                assert_eq!(copy, same, "load at {off}, {len} bytes");
                for at in 0..len {
                    let mut other = same.to_vec();
                    other[at] ^= 0x20;
                    assert_eq!(
                        sh.equals(off, &other),
                        Ok(false),
                        "off {off} len {len} at {at}"
                    );
                }
            }
        }
    }

    fn set(s: &mut HeapShard, k: &[u8], v: &[u8], exp: u64) {
        let g = *s.geometry();
        let key = Key::plain(g.hash_seed, k);
        s.view()
            .store(
                key,
                v,
                Deadline::At(exp),
                StoreMode::Set,
                &mut Now::fixed(0),
            )
            .unwrap();
    }

    fn read(s: &mut HeapShard, k: &[u8]) -> SResult<Option<Vec<u8>>> {
        let g = *s.geometry();
        let key = Key::plain(g.hash_seed, k);
        let sh = s.shared();
        match sh.find(key)? {
            None => Ok(None),
            Some((r, rec)) => {
                let mut out = vec![0; rec.value_len as usize];
                sh.copy_value(r, &rec, &mut out)?;
                if !sh.checksum_ok(r, k, &out)? {
                    return Err(Torn);
                }
                Ok(Some(out))
            }
        }
    }

    #[test]
    fn reads_what_the_locked_path_wrote() {
        let mut s = HeapShard::new(small_geometry());
        set(&mut s, b"a", b"one", 0);
        let long: Vec<u8> = (0..150u8).collect();
        set(&mut s, b"a-key-of-thirty-two-bytes-length", &long, 0);
        assert_eq!(read(&mut s, b"a"), Ok(Some(b"one".to_vec())));
        assert_eq!(
            read(&mut s, b"a-key-of-thirty-two-bytes-length"),
            Ok(Some(long))
        );
        assert_eq!(read(&mut s, b"b"), Ok(None));
        let g = *s.geometry();
        let sh = s.shared();
        let (r, _) = sh.find(Key::plain(g.hash_seed, b"a")).unwrap().unwrap();
        sh.mark_accessed(r);
        assert!(super::super::recency::is_accessed(s.marks(), r));
    }

    #[test]
    fn loads_agree_with_the_bytes_at_every_offset_and_length() {
        let mut words: Vec<u64> = (0..16u64)
            .map(|i| u64::from_ne_bytes(std::array::from_fn(|b| (i * 8 + b as u64) as u8)))
            .collect();
        let g = small_geometry();
        let atomic = crate::sys::segment::atomic_words(&mut words);
        let sh = SharedShard {
            words: atomic,
            ..SharedShard::new(&[], &[], &g)
        };
        let (offs, lens) = if cfg!(miri) { (12, 20) } else { (40, 70) };
        for off in 0..offs {
            for len in 0..lens {
                let mut dst = vec![0xee; len];
                sh.load(off, &mut dst).unwrap();
                let want: Vec<u8> = (off..off + len).map(|b| b as u8).collect();
                assert_eq!(dst, want, "offset {off}, length {len}");
                assert!(sh.equals(off, &want).unwrap());
            }
        }
        assert_eq!(sh.load(120, &mut [0; 9]), Err(Torn));
        assert_eq!(sh.load(usize::MAX - 3, &mut [0; 9]), Err(Torn));
    }

    #[test]
    fn a_version_that_moves_or_is_odd_is_never_trusted() {
        let v = AtomicU64::new(4);
        assert_eq!(optimistic(&v, || Ok(7)), Some(7));
        // A holder is running: odd, every attempt gives up.
        v.store(5, Ordering::Relaxed);
        let mut calls = 0;
        assert_eq!(
            optimistic(&v, || {
                calls += 1;
                Ok(1)
            }),
            None
        );
        assert_eq!(calls, 0);
        // The version moves during each read: the result is thrown away.
        v.store(6, Ordering::Relaxed);
        assert_eq!(
            optimistic(&v, || {
                v.fetch_add(2, Ordering::Relaxed);
                Ok(1)
            }),
            None
        );
        // Consistent but inconsistent data: straight to the lock.
        assert_eq!(optimistic::<u8>(&v, || Err(Torn)), None);
    }

    #[test]
    fn concurrent_random_stores_never_panic_or_loop() {
        // One thread keeps storing random words over a shard full of entries while another
        // reads every key the lock-free way: any answer, never a panic or a hang. Both
        // sides are atomic, so this is defined behaviour (and Miri checks it).
        let g = small_geometry();
        let mut s = HeapShard::new(g);
        for i in 0..8u8 {
            set(&mut s, &[i; 5], &[i; 90], 0);
        }
        let mut buf: Vec<u64> = bytemuck::cast_slice(s.bytes_mut()).to_vec();
        let words = crate::sys::segment::atomic_words(&mut buf);
        let sh = SharedShard::new(words, &[], &g);
        for i in 0..8u8 {
            // Before the damage starts every entry reads back whole.
            let (at, rec) = sh.find(Key::plain(g.hash_seed, &[i; 5])).unwrap().unwrap();
            let mut out = vec![0; rec.value_len as usize];
            sh.copy_value(at, &rec, &mut out).unwrap();
            assert_eq!(out, [i; 90]);
        }
        let rounds = if cfg!(miri) { 20 } else { 20_000 };
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|t| {
            t.spawn(|| {
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                while !done.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    words[x as usize % words.len()].store(x.rotate_left(17), Ordering::Relaxed);
                }
            });
            for r in 0..rounds {
                let i = (r % 8) as u8;
                if let Ok(Some((at, rec))) = sh.find(Key::plain(g.hash_seed, &[i; 5])) {
                    let mut out = vec![0; rec.value_len as usize];
                    let _ = sh.copy_value(at, &rec, &mut out);
                }
            }
            done.store(true, Ordering::Relaxed);
        });
    }

    #[test]
    fn random_bytes_never_panic_or_loop() {
        let g = small_geometry();
        let mut s = HeapShard::new(g);
        for i in 0..8u8 {
            set(&mut s, &[i; 5], &[i; 90], 0);
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        // Miri interprets every load: fewer rounds there.
        for round in 0..if cfg!(miri) { 40 } else { 300 } {
            let bytes = s.bytes_mut();
            for _ in 0..1 + round % 40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % bytes.len();
                bytes[at] = (x >> 32) as u8;
            }
            for i in 0..8u8 {
                // Anything but a panic or a hang is acceptable from damaged bytes.
                let _ = read(&mut s, &[i; 5]);
            }
        }
    }
}
