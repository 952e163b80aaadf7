//! The optimistic reference for benchmarks ("the optimistic floor"): per shard a version
//! word (a seqlock) and fixed slots, read without any lock. A get loads the version, finds
//! the key, copies the value and loads the version again, retrying if a writer came in
//! between; a set takes the shard's robust mutex and makes the version odd while it
//! writes. No LRU, no expiry, no eviction, no variable sizes: the limit of a design whose
//! gets take no lock.
//!
//! Every word that another process may write while it is read is an `AtomicU64`, read and
//! written with atomic operations only (the value copy too, word by word), so a torn read
//! is a retry, never a data race.

use memmap2::MmapRaw;
use shmemcache::support::robust::{self, LOCK_BLOCK};
use std::io;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

/// A fixed set of keys with fixed-size values in shared memory, read under a seqlock.
pub struct OptimisticFloor {
    map: MmapRaw,
    shards: usize,
    slots: usize,
    /// Words per slot: key length, key words, value words.
    slot_words: usize,
    key_words: usize,
    value_len: usize,
    /// Bytes between shards.
    stride: usize,
}

// SAFETY: shared memory accessed only through atomics and process-shared mutexes.
unsafe impl Send for OptimisticFloor {}
// SAFETY: as above.
unsafe impl Sync for OptimisticFloor {}

const SEED: u64 = 0x5eed;
/// Optimistic attempts before a get reads under the lock.
const TRIES: usize = 64;
/// The version word sits on its own line after the lock block.
const VERSION_BLOCK: usize = 64;

#[cfg(not(target_endian = "little"))]
compile_error!("the optimistic floor copies little-endian words as bytes");

fn words_of(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks(8).map(|c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(w)
    })
}

impl OptimisticFloor {
    /// Builds the table holding `keys`, each with a `value_len`-byte value.
    pub fn new(shards: usize, keys: &[Vec<u8>], value_len: usize) -> io::Result<OptimisticFloor> {
        let shards = shards.max(1);
        let slots = (keys.len().div_ceil(shards) * 2).next_power_of_two().max(8);
        let key_words = keys.iter().map(Vec::len).max().unwrap_or(0).div_ceil(8);
        let slot_words = 1 + key_words + value_len.div_ceil(8);
        let stride =
            (LOCK_BLOCK + VERSION_BLOCK + 8 * slots + 8 * slot_words * slots).div_ceil(128) * 128;
        let map = crate::floor::shared_shards(c"shmemcache-optimistic-floor", shards, stride)?;
        let f = OptimisticFloor {
            map,
            shards,
            slots,
            slot_words,
            key_words,
            value_len,
            stride,
        };
        for k in keys {
            f.claim(k);
        }
        Ok(f)
    }

    /// Shard `s`'s version word, hash array and slot words.
    fn shard(&self, s: usize) -> (&AtomicU64, &[AtomicU64], &[AtomicU64]) {
        let words = (self.stride - LOCK_BLOCK) / 8;
        let base = self
            .map
            .as_mut_ptr()
            .wrapping_add(s * self.stride + LOCK_BLOCK);
        // SAFETY: shard `s`'s words after its lock block lie inside the mapping (`stride`
        // covers them), are 8-byte aligned, and are only ever accessed atomically;
        // `AtomicU64` has the layout of `u64`.
        let all: &[AtomicU64] = unsafe { std::slice::from_raw_parts(base.cast(), words) };
        let (version, rest) = all.split_at(VERSION_BLOCK / 8);
        let (hashes, slots) = rest.split_at(self.slots);
        (&version[0], hashes, slots)
    }

    fn route(&self, key: &[u8]) -> (usize, u64) {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(key, SEED) | 1;
        ((((h >> 32) * self.shards as u64) >> 32) as usize, h)
    }

    /// The slot of the key whose length is `len` and words `kw` in a shard's words, if
    /// present.
    fn find(
        &self,
        hashes: &[AtomicU64],
        slots: &[AtomicU64],
        len: usize,
        kw: &[u64],
        h: u64,
    ) -> Option<usize> {
        let mask = self.slots - 1;
        let mut i = h as usize & mask;
        for _ in 0..self.slots {
            match hashes[i].load(Ordering::Relaxed) {
                0 => return None,
                x if x == h => {
                    let w = &slots[i * self.slot_words..(i + 1) * self.slot_words];
                    let same = w[0].load(Ordering::Relaxed) == len as u64
                        && kw
                            .iter()
                            .zip(&w[1..])
                            .all(|(a, b)| b.load(Ordering::Relaxed) == *a);
                    if same {
                        return Some(i);
                    }
                }
                _ => {}
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Runs `f` on shard `s` under its lock, with the version odd meanwhile.
    fn write<R>(&self, s: usize, f: impl FnOnce(&[AtomicU64], &[AtomicU64]) -> R) -> Option<R> {
        let lock = self.map.as_mut_ptr().wrapping_add(s * self.stride);
        // SAFETY: `lock` is shard `s`'s lock block, initialized in `new`, mapped while
        // `self` lives.
        let _held = unsafe { robust::lock(lock.cast(), Duration::from_secs(5)) }.ok()?;
        let (version, hashes, slots) = self.shard(s);
        let v = version.load(Ordering::Relaxed);
        version.store(v | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        let r = f(hashes, slots);
        version.store((v | 1) + 1, Ordering::Release);
        Some(r)
    }

    fn claim(&self, key: &[u8]) {
        if key.len() > 8 * self.key_words {
            return;
        }
        let (s, h) = self.route(key);
        let mask = self.slots - 1;
        self.write(s, |hashes, slots| {
            let mut i = h as usize & mask;
            for _ in 0..self.slots {
                if hashes[i].load(Ordering::Relaxed) == 0 {
                    let w = &slots[i * self.slot_words..(i + 1) * self.slot_words];
                    w[0].store(key.len() as u64, Ordering::Relaxed);
                    for (d, x) in w[1..].iter().zip(words_of(key)) {
                        d.store(x, Ordering::Relaxed);
                    }
                    hashes[i].store(h, Ordering::Relaxed);
                    return;
                }
                i = (i + 1) & mask;
            }
        });
    }

    /// Loads slot `i`'s value words into `buf` (word by word, atomically).
    fn load_value(&self, slots: &[AtomicU64], i: usize, buf: &mut [u64]) {
        let start = i * self.slot_words + 1 + self.key_words;
        let n = buf.len();
        for (d, x) in buf.iter_mut().zip(&slots[start..start + n]) {
            *d = x.load(Ordering::Relaxed);
        }
    }

    /// Copies the value of `key` (or as much as fits) into `out`; false if absent.
    pub fn get(&self, key: &[u8], out: &mut [u8]) -> bool {
        const KEY_MAX: usize = 8;
        // Values up to this many words are read into the stack; longer ones into the heap.
        const INLINE: usize = 32;
        let vw = self.value_len.div_ceil(8);
        if self.key_words > KEY_MAX || key.len() > 8 * self.key_words {
            return false;
        }
        let (s, h) = self.route(key);
        let (version, hashes, slots) = self.shard(s);
        // The key's words once, and the value's into a buffer of this thread's own.
        let mut kw = [0u64; KEY_MAX];
        for (d, x) in kw.iter_mut().zip(words_of(key)) {
            *d = x;
        }
        let kw = &kw[..self.key_words];
        let mut inline = [0u64; INLINE];
        let mut heap = Vec::new();
        let buf: &mut [u64] = if vw <= INLINE {
            &mut inline[..vw]
        } else {
            heap.resize(vw, 0);
            &mut heap
        };
        let mut found = None;
        let mut settled = false;
        for _ in 0..TRIES {
            let v1 = version.load(Ordering::Acquire);
            if v1 & 1 != 0 {
                std::hint::spin_loop();
                continue;
            }
            found = self.find(hashes, slots, key.len(), kw, h);
            if let Some(i) = found {
                self.load_value(slots, i, buf);
            }
            fence(Ordering::Acquire);
            if version.load(Ordering::Relaxed) == v1 {
                settled = true;
                break;
            }
        }
        if !settled {
            // Writers kept coming: read under the lock.
            found = self
                .write(s, |hashes, slots| {
                    let f = self.find(hashes, slots, key.len(), kw, h);
                    if let Some(i) = f {
                        self.load_value(slots, i, buf);
                    }
                    f
                })
                .flatten();
        }
        if found.is_some() {
            // Little-endian words are the value's bytes in order: one copy.
            let n = self.value_len.min(out.len());
            out[..n].copy_from_slice(&bytemuck::cast_slice::<u64, u8>(buf)[..n]);
        }
        found.is_some()
    }

    /// Overwrites the value of `key` (which must be one of the keys given to `new`).
    pub fn set(&self, key: &[u8], value: &[u8]) -> bool {
        if key.len() > 8 * self.key_words {
            return false;
        }
        let (s, h) = self.route(key);
        let n = self.value_len.min(value.len());
        let kw: Vec<u64> = words_of(key)
            .chain(std::iter::repeat(0))
            .take(self.key_words)
            .collect();
        self.write(s, |hashes, slots| {
            match self.find(hashes, slots, key.len(), &kw, h) {
                Some(i) => {
                    let w = &slots[i * self.slot_words..(i + 1) * self.slot_words];
                    for (d, x) in w[1 + self.key_words..].iter().zip(words_of(&value[..n])) {
                        d.store(x, Ordering::Relaxed);
                    }
                    true
                }
                None => false,
            }
        })
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_was_written_across_a_fork() {
        let keys: Vec<Vec<u8>> = (0..100u32)
            .map(|i| format!("key-{i}").into_bytes())
            .collect();
        let f = OptimisticFloor::new(4, &keys, 100).unwrap();
        let mut out = [0u8; 100];
        assert!(f.get(b"key-7", &mut out));
        assert_eq!(out, [0u8; 100]);
        assert!(f.set(b"key-7", &[7u8; 100]));
        assert!(f.get(b"key-7", &mut out));
        assert_eq!(out, [7u8; 100]);
        assert!(!f.get(b"absent", &mut out));
        assert!(!f.set(b"absent", &[1u8; 100]));
        // SAFETY: the child only touches the shared mapping and exits with `_exit`.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = f.set(b"key-9", &[9u8; 100]);
                // SAFETY: `_exit` skips the parent's destructors and atexit handlers.
                unsafe { libc::_exit(i32::from(!ok)) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert!(matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)));
            }
        }
        assert!(f.get(b"key-9", &mut out));
        assert_eq!(out, [9u8; 100]);
    }
}
