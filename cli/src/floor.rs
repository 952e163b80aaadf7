//! The physical reference for benchmarks ("the floor"): per shard, a robust process-shared
//! mutex around an open-addressed lookup (64-bit hash, then a key comparison) and a memcpy of
//! the value.
//! No LRU, no expiry, no eviction, no variable sizes: what any shared-memory cache must pay
//! at least. Mapped from a `memfd`, so it is shared with forked children.

use memmap2::{MmapOptions, MmapRaw};
use shmemcache::support::robust::{self, LOCK_BLOCK};
use std::io;
use std::time::Duration;

/// A fixed set of keys with fixed-size values in shared memory.
///
/// Per shard: a robust mutex, an array of 64-bit key hashes (open addressing, linear
/// probing), and one slot per hash holding the key's length, the key and the value, so a
/// lookup reads the hash array, compares the key and copies the value: the least a correct
/// shared-memory table can do.
pub struct Floor {
    map: MmapRaw,
    shards: usize,
    slots: usize,
    key_width: usize,
    value_len: usize,
    slot_len: usize,
    stride: usize,
}

// SAFETY: shared memory accessed only through process-shared mutexes and slices made under
// them, exactly like `Segment`.
unsafe impl Send for Floor {}
// SAFETY: as above.
unsafe impl Sync for Floor {}

const SEED: u64 = 0x5eed;

/// `shards` shards of `stride` bytes (a multiple of 128) in an anonymous shared mapping (a
/// memfd, inherited by forked children), each starting with an initialized robust mutex.
pub(crate) fn shared_shards(
    name: &std::ffi::CStr,
    shards: usize,
    stride: usize,
) -> io::Result<MmapRaw> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MemFdCreateFlag::empty())
        .map_err(io::Error::from)?;
    let file = std::fs::File::from(fd);
    file.set_len((stride * shards) as u64)?;
    let map = MmapOptions::new().len(stride * shards).map_raw(&file)?;
    for s in 0..shards {
        // SAFETY: the lock block of shard `s` is in bounds (the mapping holds `shards`
        // strides), 128-byte aligned, and not yet shared with any other process.
        unsafe { robust::init(map.as_mut_ptr().add(s * stride).cast()) }?;
    }
    Ok(map)
}

impl Floor {
    /// Builds a floor table holding `keys`, each with a `value_len`-byte value.
    pub fn new(shards: usize, keys: &[Vec<u8>], value_len: usize) -> io::Result<Floor> {
        let shards = shards.max(1);
        let slots = (keys.len().div_ceil(shards) * 2).next_power_of_two().max(8);
        let key_width = keys.iter().map(Vec::len).max().unwrap_or(0).div_ceil(8) * 8;
        let slot_len = (8 + key_width + value_len).div_ceil(8) * 8;
        let stride = (LOCK_BLOCK + 8 * slots + slot_len * slots).div_ceil(128) * 128;
        let map = shared_shards(c"shmemcache-floor", shards, stride)?;
        let floor = Floor {
            map,
            shards,
            slots,
            key_width,
            value_len,
            slot_len,
            stride,
        };
        for k in keys {
            floor.with(k, |found, slot| {
                if !found {
                    slot[..4].copy_from_slice(&(k.len() as u32).to_le_bytes());
                    slot[8..8 + k.len()].copy_from_slice(k);
                }
                true
            });
        }
        Ok(floor)
    }

    /// Locks the shard of `key`, finds its slot (or the empty one where it would go) and
    /// calls `f(found, slot)`; a key never stored is claimed only if `f` returns true.
    fn with(&self, key: &[u8], f: impl FnOnce(bool, &mut [u8]) -> bool) -> bool {
        if key.len() > self.key_width {
            return false;
        }
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(key, SEED) | 1;
        let s = (((h >> 32) * self.shards as u64) >> 32) as usize;
        let base = self.map.as_mut_ptr().wrapping_add(s * self.stride);
        // SAFETY: `base` is shard `s`'s lock block, initialized in `new`, mapped while `self` lives.
        let Ok(_held) = (unsafe { robust::lock(base.cast(), Duration::from_secs(5)) }) else {
            return false;
        };
        // SAFETY: the region after the lock block is in bounds (stride covers it) and this
        // process holds the shard's lock, so nobody else touches it.
        let region = unsafe {
            std::slice::from_raw_parts_mut(base.add(LOCK_BLOCK), self.stride - LOCK_BLOCK)
        };
        let (hb, data) = region.split_at_mut(8 * self.slots);
        let hs: &mut [u64] = bytemuck::cast_slice_mut(hb);
        let mask = self.slots - 1;
        let mut i = h as usize & mask;
        for _ in 0..self.slots {
            let slot = &mut data[i * self.slot_len..(i + 1) * self.slot_len];
            if hs[i] == 0 {
                let claim = f(false, slot);
                if claim {
                    hs[i] = h;
                }
                return claim;
            }
            if hs[i] == h {
                let len = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]) as usize;
                if len == key.len() && &slot[8..8 + len] == key {
                    return f(true, slot);
                }
            }
            i = (i + 1) & mask;
        }
        false
    }

    /// Copies the value of `key` (or as much as fits) into `out`; false if absent.
    pub fn get(&self, key: &[u8], out: &mut [u8]) -> bool {
        let off = 8 + self.key_width;
        let n = self.value_len.min(out.len());
        self.with(key, |found, slot| {
            if found {
                out[..n].copy_from_slice(&slot[off..off + n]);
            }
            found
        })
    }

    /// Overwrites the value of `key` (which must be one of the keys given to `new`).
    pub fn set(&self, key: &[u8], value: &[u8]) -> bool {
        let off = 8 + self.key_width;
        let n = self.value_len.min(value.len());
        self.with(key, |found, slot| {
            if found {
                slot[off..off + n].copy_from_slice(&value[..n]);
            }
            found
        })
    }
}
