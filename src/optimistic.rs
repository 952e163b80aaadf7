//! The cache's reads without the shard lock: the seqlock read side (DESIGN.md §4.1) put
//! together with routing, expiry, namespaces, recency and counters. Each returns `None`
//! when the caller must take the locked path instead: a lock holder kept running, the
//! view was inconsistent, or the entry has expired (the locked path reclaims it).

use crate::cache::Cache;
use crate::clock::expired;
use crate::layout::Record;
use crate::namespace::Routed;
use crate::table::{optimistic, SharedShard, Torn};
use std::sync::atomic::Ordering;

impl Cache {
    /// Looks `k` up without the lock. On a hit, `hit` copies out what the caller needs
    /// (it may run more than once, and what it copied counts only if the result is
    /// returned); with `promote`, the entry is then marked accessed. `Some(None)`: a miss.
    #[inline]
    pub(crate) fn read_unlocked<T>(
        &self,
        k: &Routed,
        promote: bool,
        mut hit: impl FnMut(&SharedShard, u32, &Record) -> Result<T, Torn>,
    ) -> Option<Option<T>> {
        let seg = &self.seg;
        let shared = SharedShard::new(
            seg.shard_words(k.shard),
            seg.shard_marks(k.shard),
            &self.geom,
        );
        let key = k.key();
        let mut now = None;
        let found = optimistic(seg.shard_version(k.shard), || match shared.find(key)? {
            None => Ok(None),
            Some((r, rec)) => {
                if rec.expires_at != 0 && expired(rec.expires_at, &mut now) {
                    return Err(Torn);
                }
                Ok(Some((r, hit(&shared, r, &rec)?)))
            }
        })?;
        if k.tagged && !self.generation_unchanged(k) {
            // Invalidated while we read: what we found may belong to the old generation.
            return None;
        }
        Some(found.map(|(r, value)| {
            if promote {
                shared.mark_accessed(r);
            }
            value
        }))
    }

    /// Whether the generation in `k`'s tag is still its namespace's current one.
    #[inline]
    fn generation_unchanged(&self, k: &Routed) -> bool {
        self.seg
            .ns_gens()
            .get(self.ns)
            .is_some_and(|g| g.load(Ordering::Acquire) == k.gen)
    }

    /// The value of `k` copied into a new vector, without the lock. Recency is promoted
    /// only in lazy mode; strict LRU must move the entry, which takes the lock.
    #[inline]
    pub(crate) fn get_unlocked(&self, k: &Routed) -> Option<Option<Vec<u8>>> {
        if self.geom.exact_lru {
            return None;
        }
        let key = k.key().bytes;
        let mut out = Vec::new();
        let found = self.read_unlocked(k, true, |sh, r, rec| {
            out.clear();
            out.resize(rec.value_len as usize, 0);
            sh.copy_value(r, rec, &mut out)?;
            match sh.checksum_ok(r, key, &out)? {
                true => Ok(()),
                // Damage or a torn read: the locked path tells which (and drops the entry).
                false => Err(Torn),
            }
        })?;
        Some(found.map(|()| out))
    }

    /// The length of `k`'s value, copied into `buf` if it fits, without the lock.
    #[inline]
    pub(crate) fn get_into_unlocked(&self, k: &Routed, buf: &mut [u8]) -> Option<Option<usize>> {
        if self.geom.exact_lru {
            return None;
        }
        let key = k.key().bytes;
        self.read_unlocked(k, true, |sh, r, rec| {
            let len = rec.value_len as usize;
            if let Some(dst) = buf.get_mut(..len) {
                sh.copy_value(r, rec, dst)?;
                if !sh.checksum_ok(r, key, dst)? {
                    return Err(Torn);
                }
            }
            Ok(len)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::table::TableError;
    use crate::{Cache, Options};
    use std::sync::atomic::Ordering;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn a_panicking_holder_leaves_readers_to_the_lock_until_repaired() {
        let name = format!("shmc-unit-{}-panic-version", std::process::id());
        let cache = Options::new()
            .capacity_bytes(1 << 20)
            .shards(1)
            .create(&name)
            .unwrap();
        cache.set(b"k", b"v").unwrap();
        let version = || cache.seg.shard_version(0).load(Ordering::Relaxed);
        assert_eq!(version() & 1, 0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.with_shard(0, |_| -> Result<(), TableError> { panic!("mid-change") })
        }));
        assert!(r.is_err());
        // Half changed as far as anyone knows: no reader may trust the shard.
        assert_eq!(version() & 1, 1);
        // A get takes the lock, which repairs first, and leaves the version even.
        assert_eq!(cache.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(version() & 1, 0);
        assert_eq!(cache.stats().unwrap().total.recoveries, 1);
        Cache::unlink(&name).unwrap();
    }
}
