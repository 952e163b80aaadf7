//! Namespaces: named parts of one cache, each isolated from the others and each with a
//! **generation** that `clear` and `invalidate` bump. The bump is one atomic store in the
//! segment's namespace table: every process sees it at once, and every entry written under
//! an older generation is absent from then on (the sweeps reclaim it later).
//!
//! How it is stored: a namespaced entry's key starts with a 12-byte tag, the namespace's
//! slot (u32 LE) and the generation it was written under (u64 LE), and its record carries
//! [`REC_TAGGED`](crate::layout::REC_TAGGED). A lookup builds the tag from the current
//! generation, so it cannot find an older generation's entries; the default namespace
//! keeps untagged keys while its generation is 0, exactly as a cache without namespaces.

use crate::cache::{Cache, SCAN_BATCH};
use crate::clock::monotonic_ns;
use crate::error::{Error, Result};
use crate::layout::{ns_word, NS_NAME_MAX, NS_SLOTS, TAG_LEN};
use crate::persist::Persistence;
use crate::table::{Key, Now, Probe, Scope};
use std::cell::OnceCell;
use std::sync::atomic::Ordering;

/// Tagged keys up to this many bytes (tag included) are built on the stack.
const INLINE_TAGGED: usize = 64;

/// A key's stored bytes: the caller's own, or tagged with a namespace and generation.
/// Built for locked operations only (lock-free reads compare tag and key apart); a short
/// tagged key inline, sparing them a heap allocation, a long one on the heap.
pub(crate) enum KeyBytes<'k> {
    Borrowed(&'k [u8]),
    Inline { len: u8, buf: [u8; INLINE_TAGGED] },
    Tagged(Vec<u8>),
}

impl<'k> KeyBytes<'k> {
    /// `key` behind `tag`.
    fn tagged(tag: &[u8; TAG_LEN], key: &[u8]) -> KeyBytes<'k> {
        let len = TAG_LEN + key.len();
        if len <= INLINE_TAGGED {
            let mut buf = [0u8; INLINE_TAGGED];
            buf[..TAG_LEN].copy_from_slice(tag);
            buf[TAG_LEN..len].copy_from_slice(key);
            return KeyBytes::Inline {
                len: len as u8,
                buf,
            };
        }
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(tag);
        v.extend_from_slice(key);
        KeyBytes::Tagged(v)
    }

    #[inline]
    fn get(&self) -> &[u8] {
        match self {
            KeyBytes::Borrowed(k) => k,
            KeyBytes::Inline { len, buf } => &buf[..*len as usize],
            KeyBytes::Tagged(v) => v,
        }
    }
}

/// A key routed to its shard. Its stored form (tag and key in one buffer) is built only
/// when a locked operation asks for it: a lock-free read compares the two parts apart.
pub(crate) struct Routed<'k> {
    user: &'k [u8],
    tag: Option<[u8; TAG_LEN]>,
    stored: OnceCell<KeyBytes<'k>>,
    pub(crate) shard: usize,
    pub(crate) hash: u32,
    /// The generation the tag names (0 untagged).
    pub(crate) gen: u64,
}

impl<'k> Routed<'k> {
    /// `user`, of namespace slot `ns` at generation `gen` (`None`: stored as it is).
    #[inline]
    pub(crate) fn new(user: &'k [u8], tag: Option<(u32, u64)>, shard: usize, hash: u32) -> Self {
        Routed {
            user,
            tag: tag.map(|(ns, gen)| self::tag(ns as usize, gen)),
            stored: OnceCell::new(),
            shard,
            hash,
            gen: tag.map_or(0, |(_, g)| g),
        }
    }

    /// Whether the key carries a namespace tag.
    #[inline]
    pub(crate) fn tagged(&self) -> bool {
        self.tag.is_some()
    }

    /// The key as stored, built on first use. Locked operations take it before locking:
    /// a long tagged key is built on the heap, and nothing may allocate under the lock.
    #[inline]
    pub(crate) fn key(&self) -> Key<'_> {
        let bytes = self.stored.get_or_init(|| match &self.tag {
            None => KeyBytes::Borrowed(self.user),
            Some(t) => KeyBytes::tagged(t, self.user),
        });
        Key {
            bytes: bytes.get(),
            hash: self.hash,
            tagged: self.tag.is_some(),
        }
    }

    /// The key in its two parts, for a lock-free lookup.
    #[inline]
    pub(crate) fn probe(&self) -> Probe<'_> {
        Probe {
            prefix: self.tag.as_ref().map_or(&[][..], |t| &t[..]),
            key: self.user,
            hash: self.hash,
            tagged: self.tag.is_some(),
        }
    }
}

/// The tag that starts the keys of namespace slot `ns` at generation `gen`.
fn tag(ns: usize, gen: u64) -> [u8; TAG_LEN] {
    let mut t = [0u8; TAG_LEN];
    t[..4].copy_from_slice(&(ns as u32).to_le_bytes());
    t[4..].copy_from_slice(&gen.to_le_bytes());
    t
}

/// A namespace's gets, counted by every process ([`Cache::get_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetCounts {
    /// Gets that found a value.
    pub hits: u64,
    /// Gets that did not.
    pub misses: u64,
}

/// One namespace's figures ([`Cache::namespace_stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceStats {
    /// The namespace's name (empty for the default namespace).
    pub name: String,
    /// Its current generation: how many times it was cleared or invalidated.
    pub generation: u64,
    /// Live entries (a scan of every shard, one bounded batch per lock hold).
    pub entries: u64,
    /// Their key and value bytes.
    pub bytes: u64,
    /// Gets that found a value.
    pub hits: u64,
    /// Gets that found none.
    pub misses: u64,
    /// Values written.
    pub sets: u64,
    /// Clears and invalidations (its own and those propagated to it).
    pub invalidations: u64,
}

/// A namespace as [`Cache::namespaces`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Its name (empty for the default namespace).
    pub name: String,
    /// Its current generation.
    pub generation: u64,
    /// The namespaces it depends on: invalidating one of them invalidates this one.
    pub depends_on: Vec<String>,
}

impl Cache {
    /// A handle on the namespace `name` of this cache, creating the namespace if needed.
    ///
    /// The handle has the whole `Cache` API (get, set, keys, len, clear, typed values,
    /// memoization, locks) confined to the namespace: the same key in two namespaces names
    /// two entries. Every process that asks for the same name gets the same namespace.
    /// Names are 1 to 48 bytes; a segment holds 127 namespaces besides the default one.
    ///
    /// ```no_run
    /// # let cache = shmemcache::Cache::open("doc-ns")?;
    /// let orders = cache.namespace("orders")?;
    /// orders.set(b"42", b"pending")?;
    /// assert_eq!(cache.get(b"42")?, None); // the default namespace is another
    /// orders.invalidate()?; // every process: all of `orders` is gone at once
    /// assert_eq!(orders.get(b"42")?, None);
    /// # Ok::<(), shmemcache::Error>(())
    /// ```
    pub fn namespace(&self, name: &str) -> Result<Cache> {
        if let Some(p) = &self.auto_persist {
            return self.persistent_namespace(name, Persistence::clone(p));
        }
        Ok(self.with_namespace(self.ns_open(name)?.0))
    }

    /// The slot of namespace `name`, made if missing, and whether this call made it.
    pub(crate) fn ns_open(&self, name: &str) -> Result<(usize, bool)> {
        if name.is_empty() || name.len() > NS_NAME_MAX || name.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "namespace name {name:?} must be 1 to {NS_NAME_MAX} bytes, without NUL"
            )));
        }
        self.with_coord(|_| self.ns_find_or_create(name.as_bytes()))?
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the cache already has {} namespaces, the most it holds",
                    NS_SLOTS - 1
                ))
            })
    }

    /// The namespace this handle addresses: `None` for the default namespace.
    pub fn namespace_name(&self) -> Option<String> {
        (self.ns != 0).then(|| self.ns_name(self.ns))
    }

    /// The handle's namespace's current generation (0 until its first clear or
    /// invalidation).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.seg
            .ns_gens()
            .get(self.ns)
            .map_or(0, |g| g.load(Ordering::Acquire))
    }

    /// Invalidates this namespace and, recursively, every namespace that depends on it
    /// ([`depends_on`](Self::depends_on)): each one's generation is bumped once (cycles
    /// included), under the coordination lock, so every entry they held is absent at once
    /// in every process. A value computed before and stored after stays invisible: stores
    /// of memoized results go under the generation their computation began in. Returns how
    /// many namespaces were invalidated.
    ///
    /// On the default namespace this drops its entries alone, unlike
    /// [`clear`](Self::clear), which empties the whole cache.
    pub fn invalidate(&self) -> Result<u32> {
        // Fixed-size bookkeeping: nothing allocates under the lock.
        self.with_coord(|_| {
            let mut done = [false; NS_SLOTS];
            let mut queue = [0usize; NS_SLOTS];
            let (mut head, mut tail) = (0, 1);
            queue[0] = self.ns;
            done[self.ns] = true;
            while head < tail {
                let s = queue[head];
                head += 1;
                self.ns_bump(s);
                for (d, seen) in done.iter_mut().enumerate() {
                    if !*seen && self.ns_used(d) && self.ns_parents(d).contains(&(s as u8 + 1)) {
                        *seen = true;
                        queue[tail] = d;
                        tail += 1;
                    }
                }
            }
            tail as u32
        })
    }

    /// Drops every entry of this handle's namespace alone, at once for every process: its
    /// generation is bumped, dependents are left alone. The same as [`clear`](Self::clear)
    /// on a namespace handle; on the default one it spares the other namespaces, where
    /// `clear` empties the whole cache.
    pub fn clear_namespace(&self) -> Result<()> {
        let ns = self.ns;
        self.with_coord(|_| self.ns_bump(ns))
    }

    /// This handle, writing under a new generation of its namespace that no lookup sees
    /// until [`publish_staged`](Self::publish_staged) makes it current.
    pub(crate) fn staged(&self) -> Result<Cache> {
        let ns = self.ns;
        let gen = self.with_coord(|_| {
            let last = self.seg.ns_word(ns, ns_word::LAST_GEN)?;
            let cur = self.seg.ns_gens().get(ns)?.load(Ordering::Acquire);
            let next = last.load(Ordering::Acquire).max(cur).saturating_add(1);
            last.store(next, Ordering::Release);
            Some(next)
        })?;
        let gen = gen.ok_or_else(|| Error::InvalidArgument("namespace out of range".into()))?;
        let mut h = self.clone_handle();
        h.pin = Some(gen);
        Ok(h)
    }

    /// Makes the generation a [`staged`](Self::staged) handle wrote under current, in one
    /// store: every entry of the namespace's previous generation is gone at once. If the
    /// namespace was invalidated after staging began, the invalidation wins: the staged
    /// entries stay invisible (and are reclaimed as stale). True if it was published.
    pub(crate) fn publish_staged(&self) -> Result<bool> {
        let (ns, Some(gen)) = (self.ns, self.pin) else {
            return Ok(false);
        };
        self.with_coord(|_| {
            let Some(g) = self.seg.ns_gens().get(ns) else {
                return false;
            };
            if g.load(Ordering::Acquire) >= gen {
                return false;
            }
            g.store(gen, Ordering::Release);
            if let Some(c) = self.seg.ns_word(ns, ns_word::INVALIDATIONS) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            true
        })
    }

    /// Makes this namespace depend on `root`: invalidating `root` invalidates this one too.
    /// Stored in the segment, so it holds for every process. A namespace depends on at most
    /// 8 others; cycles are allowed (an invalidation bumps each namespace once).
    pub fn depends_on(&self, root: &Cache) -> Result<()> {
        if !std::sync::Arc::ptr_eq(&self.seg, &root.seg) && self.name() != root.name() {
            return Err(Error::InvalidArgument(
                "a namespace can only depend on a namespace of the same cache".into(),
            ));
        }
        if root.ns == self.ns {
            return Err(Error::InvalidArgument(
                "a namespace cannot depend on itself".into(),
            ));
        }
        let added = self.with_coord(|_| {
            let Some(w) = self.seg.ns_word(self.ns, ns_word::PARENTS) else {
                return false;
            };
            let mut bytes = w.load(Ordering::Acquire).to_le_bytes();
            let want = root.ns as u8 + 1;
            if bytes.contains(&want) {
                return true;
            }
            let Some(free) = bytes.iter().position(|&b| b == 0) else {
                return false;
            };
            bytes[free] = want;
            w.store(u64::from_le_bytes(bytes), Ordering::Release);
            true
        })?;
        if !added {
            return Err(Error::InvalidArgument(format!(
                "namespace {:?} already depends on 8 others",
                self.ns_name(self.ns)
            )));
        }
        Ok(())
    }

    /// Every namespace of the cache, the default one first. Reads the namespace table
    /// without a lock: a slot's name is complete before it is marked in use.
    pub fn namespaces(&self) -> Vec<NamespaceInfo> {
        (0..NS_SLOTS)
            .filter(|&s| s == 0 || self.ns_used(s))
            .map(|s| NamespaceInfo {
                name: self.ns_name(s),
                generation: self
                    .seg
                    .ns_gens()
                    .get(s)
                    .map_or(0, |g| g.load(Ordering::Acquire)),
                depends_on: self
                    .ns_parents(s)
                    .iter()
                    .filter(|&&b| b != 0 && (b as usize) <= NS_SLOTS)
                    .map(|&b| self.ns_name(b as usize - 1))
                    .collect(),
            })
            .collect()
    }

    /// Hits (or misses) of the gets of namespace slot `ns`: its shared word plus, for the
    /// first named namespaces, every process's own count.
    pub(crate) fn ns_gets(&self, ns: usize, hit: bool) -> u64 {
        let w = if hit { ns_word::HITS } else { ns_word::MISSES };
        let shared = self
            .seg
            .ns_word(ns, w)
            .map_or(0, |x| x.load(Ordering::Relaxed));
        let own = crate::layout::proc_ns_word(ns, hit)
            .map_or(0, |pw| crate::counters::total(&self.seg, pw));
        shared.wrapping_add(own)
    }

    /// The hits and misses of this handle's namespace, every process's: the counters of
    /// [`namespace_stats`](Self::namespace_stats) without its scan, so cheap enough to
    /// poll. For the default namespace they are the cache's less the other namespaces'
    /// (which reads every shard's counters).
    ///
    /// ```
    /// # let name = format!("doc-get-counts-{}", std::process::id());
    /// let cache = shmemcache::Cache::open(&name)?;
    /// let users = cache.namespace("users")?;
    /// users.set(b"1", b"alice")?;
    /// users.get(b"1")?;
    /// users.get(b"2")?;
    /// assert_eq!(users.get_counts()?, shmemcache::GetCounts { hits: 1, misses: 1 });
    /// # shmemcache::Cache::unlink(&name)?;
    /// # Ok::<(), shmemcache::Error>(())
    /// ```
    pub fn get_counts(&self) -> Result<GetCounts> {
        Ok(self.own_counts()?.0)
    }

    /// This namespace's gets and sets; for the default namespace, the cache's totals (one
    /// read of every shard's counters) less the other namespaces'.
    fn own_counts(&self) -> Result<(GetCounts, u64)> {
        let sets = |s: usize| {
            self.seg
                .ns_word(s, ns_word::SETS)
                .map_or(0, |x| x.load(Ordering::Relaxed))
        };
        if self.ns != 0 {
            let gets = GetCounts {
                hits: self.ns_gets(self.ns, true),
                misses: self.ns_gets(self.ns, false),
            };
            return Ok((gets, sets(self.ns)));
        }
        let t = self.stats()?.total;
        let others = |hit| (1..NS_SLOTS).map(|s| self.ns_gets(s, hit)).sum::<u64>();
        let gets = GetCounts {
            hits: t.hits.saturating_sub(others(true)),
            misses: t.misses.saturating_sub(others(false)),
        };
        let other_sets = (1..NS_SLOTS).map(sets).sum::<u64>();
        Ok((gets, t.sets.saturating_sub(other_sets)))
    }

    /// This namespace's figures. Entries and bytes come from a scan of every shard (one
    /// bounded batch per lock hold); the counters from the namespace table. For the
    /// default namespace, hits, misses and sets are the cache's less the other
    /// namespaces'.
    pub fn namespace_stats(&self) -> Result<NamespaceStats> {
        let (entries, bytes) = self.ns_scan_count()?;
        let word = |s: usize, w: usize| {
            self.seg
                .ns_word(s, w)
                .map_or(0, |x| x.load(Ordering::Relaxed))
        };
        let (GetCounts { hits, misses }, sets) = self.own_counts()?;
        Ok(NamespaceStats {
            name: self.ns_name(self.ns),
            generation: self.generation(),
            entries,
            bytes,
            hits,
            misses,
            sets,
            invalidations: word(self.ns, ns_word::INVALIDATIONS),
        })
    }

    /// The namespace table's invariants, read-only: each used slot's name length within
    /// 48, its dependencies naming used slots, and its generation not past the last one
    /// handed out (staged loads aside, a generation comes from that counter).
    pub(crate) fn check_namespaces(&self) -> Option<String> {
        for s in 0..NS_SLOTS {
            let state = self
                .seg
                .ns_word(s, ns_word::STATE)
                .map_or(0, |w| w.load(Ordering::Acquire));
            if state == 0 {
                continue;
            }
            if state & 0xff != 1 || (state >> 8) as usize > NS_NAME_MAX || state >> 8 == 0 {
                return Some(format!(
                    "namespace slot {s} has a damaged state word {state:#x}"
                ));
            }
            for p in self.ns_parents(s) {
                if p != 0 && (p as usize > NS_SLOTS || !(p == 1 || self.ns_used(p as usize - 1))) {
                    return Some(format!(
                        "namespace slot {s} depends on a slot not in use ({p})"
                    ));
                }
            }
            let last = self
                .seg
                .ns_word(s, ns_word::LAST_GEN)
                .map_or(0, |w| w.load(Ordering::Acquire));
            let gen = self
                .seg
                .ns_gens()
                .get(s)
                .map_or(0, |g| g.load(Ordering::Acquire));
            if gen > last {
                return Some(format!(
                    "namespace slot {s} is at generation {gen}, past the last handed out ({last})"
                ));
            }
        }
        None
    }

    // ----- internals ----------------------------------------------------------------------

    /// A handle like this one on namespace slot `slot`.
    pub(crate) fn with_namespace(&self, slot: usize) -> Cache {
        let mut c = self.clone_handle();
        c.ns = slot;
        c.pin = None;
        c.persist = None;
        c
    }

    /// The slots that depend on slot `s` directly.
    pub(crate) fn ns_dependents(&self, s: usize) -> Vec<usize> {
        (0..NS_SLOTS)
            .filter(|&d| self.ns_used(d) && self.ns_parents(d).contains(&(s as u8 + 1)))
            .collect()
    }

    /// Counts an event of a named namespace (the default one uses the shard counters).
    #[inline]
    pub(crate) fn ns_count(&self, word: usize) {
        if self.ns != 0 {
            if let Some(w) = self.seg.ns_word(self.ns, word) {
                w.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The scope of this namespace's entries at the current generation.
    pub(crate) fn with_scope<R>(&self, f: impl FnOnce(Scope) -> R) -> R {
        let gen = self.generation();
        if self.ns == 0 && gen == 0 {
            f(Scope::Plain)
        } else {
            let t = tag(self.ns, gen);
            f(Scope::Tag(&t))
        }
    }

    /// Live entries of this namespace and their bytes, by a scan.
    pub(crate) fn ns_scan_count(&self) -> Result<(u64, u64)> {
        let per_shard = self.ns_scan_counts()?;
        Ok(per_shard
            .iter()
            .fold((0, 0), |(n, b), &(sn, sb)| (n + sn, b + sb)))
    }

    /// Live entries of this namespace and their bytes, per shard, by a scan.
    pub(crate) fn ns_scan_counts(&self) -> Result<Vec<(u64, u64)>> {
        self.with_scope(|scope| {
            let mut per_shard = Vec::with_capacity(self.geom.shard_count as usize);
            for s in 0..self.geom.shard_count as usize {
                let (mut n, mut bytes) = (0, 0);
                let mut at = Some(0);
                while let Some(start) = at {
                    let (c, b, next) = self.with_shard(s, |v| {
                        v.count_from(start, SCAN_BATCH, &mut Now::lazy(monotonic_ns), scope)
                    })?;
                    n += c;
                    bytes += b;
                    at = next;
                }
                per_shard.push((n, bytes));
            }
            Ok(per_shard)
        })
    }

    /// Bumps slot `s`'s generation (caller holds the coordination lock).
    pub(crate) fn ns_bump(&self, s: usize) {
        let (Some(last), Some(count)) = (
            self.seg.ns_word(s, ns_word::LAST_GEN),
            self.seg.ns_word(s, ns_word::INVALIDATIONS),
        ) else {
            return;
        };
        let gens = self.seg.ns_gens();
        // Past both the last generation handed out and the current one, so a damaged
        // counter can never bring an old generation back.
        let cur = gens.get(s).map_or(0, |g| g.load(Ordering::Acquire));
        let next = last.load(Ordering::Acquire).max(cur).saturating_add(1);
        last.store(next, Ordering::Release);
        if let Some(g) = gens.get(s) {
            g.store(next, Ordering::Release);
        }
        count.fetch_add(1, Ordering::Relaxed);
    }

    fn ns_used(&self, s: usize) -> bool {
        self.seg
            .ns_word(s, ns_word::STATE)
            .is_some_and(|w| w.load(Ordering::Acquire) & 0xff == 1)
    }

    /// Slot `s`'s name bytes and their length (0 for the default namespace or a damaged
    /// length). Does not allocate.
    fn ns_name_bytes(&self, s: usize) -> ([u8; NS_NAME_MAX], usize) {
        let mut bytes = [0u8; NS_NAME_MAX];
        let Some(state) = self.seg.ns_word(s, ns_word::STATE) else {
            return (bytes, 0);
        };
        let len = (state.load(Ordering::Acquire) >> 8) as usize;
        if s == 0 || len > NS_NAME_MAX {
            return (bytes, 0);
        }
        for (i, c) in bytes.chunks_exact_mut(8).enumerate() {
            let w = self
                .seg
                .ns_word(s, ns_word::NAME + i)
                .map_or(0, |w| w.load(Ordering::Acquire));
            c.copy_from_slice(&w.to_le_bytes());
        }
        (bytes, len)
    }

    /// Slot `s`'s name ("" for the default namespace).
    pub(crate) fn ns_name(&self, s: usize) -> String {
        let (b, n) = self.ns_name_bytes(s);
        String::from_utf8_lossy(&b[..n]).into_owned()
    }

    /// The namespaces slot `s` depends on, one byte each (slot + 1; 0 = none).
    fn ns_parents(&self, s: usize) -> [u8; 8] {
        self.seg
            .ns_word(s, ns_word::PARENTS)
            .map_or(0, |w| w.load(Ordering::Acquire))
            .to_le_bytes()
    }

    /// The slot named `name`, claimed if there is none; `None` when the table is full
    /// (caller holds the coordination lock; nothing here allocates).
    pub(crate) fn ns_find_or_create(&self, name: &[u8]) -> Option<(usize, bool)> {
        let mut free = None;
        for s in 1..NS_SLOTS {
            if !self.ns_used(s) {
                free = free.or(Some(s));
                continue;
            }
            let (b, n) = self.ns_name_bytes(s);
            if &b[..n] == name {
                return Some((s, false));
            }
        }
        let s = free?;
        let mut padded = [0u8; NS_NAME_MAX];
        padded[..name.len()].copy_from_slice(name);
        for (i, c) in padded.chunks_exact(8).enumerate() {
            if let Some(w) = self.seg.ns_word(s, ns_word::NAME + i) {
                w.store(
                    u64::from_le_bytes(c.try_into().unwrap_or_default()),
                    Ordering::Relaxed,
                );
            }
        }
        for w in [
            ns_word::PARENTS,
            ns_word::HITS,
            ns_word::MISSES,
            ns_word::SETS,
            ns_word::INVALIDATIONS,
        ] {
            if let Some(x) = self.seg.ns_word(s, w) {
                x.store(0, Ordering::Relaxed);
            }
        }
        if let Some(st) = self.seg.ns_word(s, ns_word::STATE) {
            st.store(1 | (name.len() as u64) << 8, Ordering::Release);
        }
        Some((s, true))
    }
}
