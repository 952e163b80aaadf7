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
        let key = k.probe();
        let mut now = None;
        let found = optimistic(seg.shard_version(k.shard), || {
            match shared.find_probe(key)? {
                None => Ok(None),
                Some((r, rec)) => {
                    if rec.expires_at != 0 && expired(rec.expires_at, &mut now) {
                        return Err(Torn);
                    }
                    Ok(Some((r, hit(&shared, r, &rec)?)))
                }
            }
        })?;
        if k.tagged() && !self.generation_unchanged(k) {
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
        let mut out = Vec::new();
        let found = self.read_unlocked(k, true, |sh, r, rec| {
            out.clear();
            out.resize(rec.value_len as usize, 0);
            sh.copy_value(r, rec, &mut out)?;
            checked(sh, r, k, &out)
        })?;
        Some(found.map(|()| out))
    }

    /// The length of `k`'s value, copied into `buf` if it fits, without the lock.
    #[inline]
    pub(crate) fn get_into_unlocked(&self, k: &Routed, buf: &mut [u8]) -> Option<Option<usize>> {
        if self.geom.exact_lru {
            return None;
        }
        self.read_unlocked(k, true, |sh, r, rec| {
            let len = rec.value_len as usize;
            if let Some(dst) = buf.get_mut(..len) {
                sh.copy_value(r, rec, dst)?;
                checked(sh, r, k, dst)?;
            }
            Ok(len)
        })
    }
}

/// With checksums on, whether entry `r`'s checksum matches `k` (in its stored form, built
/// only then) and the `value` copied out of it: a mismatch is damage or a torn read, which
/// the locked path tells apart (and drops the entry if damaged).
#[inline]
fn checked(sh: &SharedShard, r: u32, k: &Routed, value: &[u8]) -> Result<(), Torn> {
    if sh.has_checksums() && !sh.checksum_ok(r, k.key().bytes, value)? {
        return Err(Torn);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::table::TableError;
    use crate::{Cache, Options};
    use std::sync::atomic::Ordering;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn tagged_keys_with_checksums_are_read_without_the_lock() {
        let name = format!("shmc-unit-{}-tagged-sums", std::process::id());
        let cache = Options::new()
            .capacity_bytes(1 << 20)
            .shards(1)
            .checksums(true)
            .create(&name)
            .unwrap();
        // The default namespace after an invalidation tags its keys, and its locked gets
        // count in the shard: a hit there would mean the lock-free read gave up.
        cache.invalidate().unwrap();
        let long = vec![b'k'; 200];
        for key in [&b"k"[..], &long] {
            cache.set(key, b"value").unwrap();
            assert_eq!(cache.get(key).unwrap().as_deref(), Some(&b"value"[..]));
            let mut buf = [0u8; 8];
            assert_eq!(cache.get_into(key, &mut buf).unwrap(), Some(5));
        }
        let st = cache.stats().unwrap();
        assert_eq!(st.total.hits, 4);
        assert_eq!(st.shards[0].hits, 0, "a get took the lock");
        Cache::unlink(&name).unwrap();
    }

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
