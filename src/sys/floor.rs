//! The physical reference for benchmarks ("the floor"): per shard, a robust process-shared
//! mutex around an open-addressed lookup of a 64-bit key hash and a memcpy of the value.
//! No LRU, no expiry, no eviction, no variable sizes: what any shared-memory cache must pay
//! at least. Mapped from a `memfd`, so it is shared with forked children.

use crate::layout::LOCK_BLOCK;
use crate::sys::robust;
use memmap2::{MmapOptions, MmapRaw};
use std::io;
use std::time::Duration;

/// A fixed set of keys with fixed-size values in shared memory.
pub struct Floor {
    map: MmapRaw,
    shards: usize,
    slots: usize,
    value_len: usize,
    stride: usize,
}

// SAFETY: shared memory accessed only through process-shared mutexes and slices made under
// them, exactly like `Segment`.
unsafe impl Send for Floor {}
// SAFETY: as above.
unsafe impl Sync for Floor {}

const SEED: u64 = 0x5eed;

impl Floor {
    /// Builds a floor table holding `keys`, each with a `value_len`-byte value.
    pub fn new(shards: usize, keys: &[Vec<u8>], value_len: usize) -> io::Result<Floor> {
        let shards = shards.max(1);
        let slots = (keys.len().div_ceil(shards) * 2).next_power_of_two().max(8);
        let hashes = 8 * slots;
        let stride = (LOCK_BLOCK + hashes + value_len * slots).div_ceil(128) * 128;
        let fd = nix::sys::memfd::memfd_create(
            c"shmemcache-floor",
            nix::sys::memfd::MemFdCreateFlag::empty(),
        )
        .map_err(io::Error::from)?;
        let file = std::fs::File::from(fd);
        file.set_len((stride * shards) as u64)?;
        let map = MmapOptions::new().len(stride * shards).map_raw(&file)?;
        let floor = Floor {
            map,
            shards,
            slots,
            value_len,
            stride,
        };
        for s in 0..shards {
            // SAFETY: the lock block of shard `s` is in bounds, 128-byte aligned, and not yet
            // shared with any other process.
            unsafe { robust::init(floor.map.as_mut_ptr().add(s * stride).cast()) }?;
        }
        for k in keys {
            floor.with(k, |hs, vals, h, slot| {
                if hs[slot] == 0 {
                    hs[slot] = h;
                }
                vals.fill(0);
            });
        }
        Ok(floor)
    }

    fn with<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&mut [u64], &mut [u8], u64, usize) -> R,
    ) -> Option<R> {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(key, SEED) | 1;
        let s = (((h >> 32) * self.shards as u64) >> 32) as usize;
        let base = self.map.as_mut_ptr().wrapping_add(s * self.stride);
        // SAFETY: `base` is shard `s`'s lock block, initialized in `new`, mapped while `self` lives.
        let _held = unsafe { robust::lock(base.cast(), Duration::from_secs(5)) }.ok()?;
        // SAFETY: the region after the lock block is in bounds (stride covers it) and this
        // process holds the shard's lock, so nobody else touches it.
        let region = unsafe {
            std::slice::from_raw_parts_mut(base.add(LOCK_BLOCK), self.stride - LOCK_BLOCK)
        };
        let (hb, vb) = region.split_at_mut(8 * self.slots);
        let hs: &mut [u64] = bytemuck::cast_slice_mut(hb);
        let mask = self.slots - 1;
        let mut i = h as usize & mask;
        while hs[i] != 0 && hs[i] != h {
            i = (i + 1) & mask;
        }
        let v = &mut vb[i * self.value_len..(i + 1) * self.value_len];
        Some(f(hs, v, h, i))
    }

    /// Copies the value of `key` into `out`; false if absent.
    pub fn get(&self, key: &[u8], out: &mut [u8]) -> bool {
        self.with(key, |hs, v, h, i| {
            let hit = hs[i] == h;
            if hit {
                out[..v.len()].copy_from_slice(v);
            }
            hit
        })
        .unwrap_or(false)
    }

    /// Overwrites the value of `key` (which must be one of the keys given to `new`).
    pub fn set(&self, key: &[u8], value: &[u8]) -> bool {
        self.with(key, |hs, v, h, i| {
            let hit = hs[i] == h;
            if hit {
                let n = v.len().min(value.len());
                v[..n].copy_from_slice(&value[..n]);
            }
            hit
        })
        .unwrap_or(false)
    }
}
