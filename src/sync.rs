//! Named locks, `once` and pools across processes, and the acquire/wait machinery that
//! single-flight memoization shares with them.
//!
//! Every hold is a slot in the segment's coordination table recording the owner's pid, its
//! start time (so a reused pid is not mistaken for the owner) and a per-acquisition token.
//! Waiters sleep on the slot's futex word and are woken by the release; they also wake at
//! most every [`Options::liveness_interval`](crate::Options::liveness_interval) to check
//! that the holder is still alive, so a holder killed with `kill -9` is taken over
//! promptly, not after its expiry. Liveness is checked outside the coordination lock.

use crate::cache::Cache;
use crate::clock::monotonic_ns;
use crate::coord::{CoordView, Owner};
use crate::error::{Error, Result};
use crate::fault::{self, FaultPoint};
use crate::layout::{slot_kind, CoordSlot};
use crate::sys::process::{self, ProcessId};
use crate::sys::{fork, futex};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Top bit of a wake word: a process may be asleep on it, so a change must be followed by
/// a futex wake.
const SLEEPERS: u32 = 1 << 31;

/// A fresh token for one acquisition: unique within the process (a counter) and across
/// processes (mixed with the pid, start time and fork generation).
pub(crate) fn new_token() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let me = process::current();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&me.pid.to_le_bytes());
    seed[8..16].copy_from_slice(&me.start.to_le_bytes());
    seed[16..24].copy_from_slice(&fork::generation().to_le_bytes());
    seed[24..].copy_from_slice(&n.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&seed) | 1
}

/// What the caller found when it tried to take a slot.
pub(crate) enum Attempt {
    /// Taken: the slot index and the owner identity to release with.
    Got(usize, Owner),
    /// Held by someone else: the holder's slot, its kind, its owner pid, the futex word's
    /// value read under the lock, and when the hold lapses (0 = never).
    Busy {
        slot: usize,
        kind: u32,
        pid: u32,
        seq: u32,
        expires_at: u64,
    },
}

/// One acquisition request.
pub(crate) struct Request<'a> {
    pub kind: u32,
    /// Kinds that count as holders of this key (a failed flight blocks a new flight).
    pub holders: &'a [u32],
    pub key: [u64; 2],
    pub group: u64,
    /// How many holders may coexist (1 for locks and flights, N for pools).
    pub capacity: usize,
    pub expires: Option<Duration>,
}

impl Cache {
    /// The 128-bit coordination key of `name` in namespace `ns`.
    pub(crate) fn coord_key(&self, ns: &str, name: &[u8]) -> [u64; 2] {
        self.coord_key_at(ns, name, None)
    }

    /// [`coord_key`](Self::coord_key) of this handle's namespace and, for what must not
    /// outlive an invalidation (single-flight markers), of generation `gen`.
    pub(crate) fn coord_key_at(&self, kind: &str, name: &[u8], gen: Option<u64>) -> [u64; 2] {
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(self.geom.hash_seed);
        h.update(kind.as_bytes());
        h.update(&[0]);
        if self.ns == 0 && gen.unwrap_or(0) == 0 {
            h.update(&[0]);
        } else {
            // A different byte after the kind keeps these apart from every plain name.
            h.update(&[1]);
            h.update(&(self.ns as u32).to_le_bytes());
            h.update(&gen.unwrap_or(0).to_le_bytes());
        }
        h.update(name);
        let v = h.digest128();
        [v as u64, (v >> 64) as u64]
    }

    /// Runs `f` on the coordination table under its lock, repairing it first if a holder
    /// died or panicked mid-update.
    pub(crate) fn with_coord<R>(&self, f: impl FnOnce(&mut CoordView) -> R) -> Result<R> {
        let mut guard = self
            .seg
            .lock_coord(self.lock_timeout)
            .map_err(|e| self.coord_lock_error(e))?;
        let died = guard.owner_died();
        let slots = self.geom.coord.slots;
        let r = match CoordView::new(guard.region(), slots) {
            Ok(mut view) => {
                if died || view.meta.dirty != 0 {
                    Self::recover_coord(&mut view);
                }
                view.meta.dirty = 1;
                fault::hit(FaultPoint::CoordHeld);
                let r = f(&mut view);
                view.meta.dirty = 0;
                Ok(r)
            }
            Err(reason) => Err(reason),
        };
        // The error message is built after unlocking: nothing allocates under the lock.
        drop(guard);
        r.map_err(|reason| Error::Corrupted {
            name: self.name().to_string(),
            reason: reason.to_string(),
        })
    }

    fn coord_lock_error(&self, e: crate::sys::robust::LockError) -> Error {
        use crate::sys::robust::LockError;
        match e {
            LockError::Timeout => Error::LockTimeout {
                shard: crate::error::COORDINATION_LOCK,
                waited: self.lock_timeout,
            },
            LockError::NotRecoverable => Error::Corrupted {
                name: self.name().to_string(),
                reason: "the coordination table's lock is not recoverable".to_string(),
            },
            LockError::Damaged => Error::Corrupted {
                name: self.name().to_string(),
                reason: format!(
                    "the coordination table's lock word is damaged; `shmemcache repair --force \
                     {}` re-initializes it once no process has the segment open",
                    self.name()
                ),
            },
            LockError::Os(source) => Error::Os {
                op: "pthread_mutex_timedlock",
                name: self.name().to_string(),
                source,
            },
        }
    }

    /// The coordination table's invariant check. Like a shard's, it only reads, after the
    /// lock protocol's recovery when a holder died mid-update.
    pub(crate) fn check_coord(&self) -> Result<Option<String>> {
        let mut guard = match self.seg.lock_coord(self.lock_timeout) {
            Ok(g) => g,
            Err(crate::sys::robust::LockError::Timeout) => return Ok(Some(self.not_checked())),
            Err(
                e @ (crate::sys::robust::LockError::Damaged
                | crate::sys::robust::LockError::NotRecoverable),
            ) => return Ok(Some(self.coord_lock_error(e).to_string())),
            Err(e) => return Err(self.coord_lock_error(e)),
        };
        let died = guard.owner_died();
        let slots = self.geom.coord.slots;
        Ok(match CoordView::new(guard.region(), slots) {
            Ok(mut v) => {
                if died || v.meta.dirty != 0 {
                    Self::recover_coord(&mut v);
                }
                v.validate().err()
            }
            Err(e) => Some(e.to_string()),
        })
    }

    /// The lock protocol's recovery of the coordination table.
    #[cold]
    fn recover_coord(view: &mut CoordView) -> u32 {
        view.meta.dirty = 1;
        let dropped = view.repair();
        view.meta.recoveries += 1;
        view.meta.dirty = 0;
        dropped
    }

    /// Repairs the coordination table if it is damaged; how many slots that freed, or
    /// `None` if it was healthy.
    pub(crate) fn repair_coord(&self) -> Result<Option<u32>> {
        self.with_coord(|v| {
            if v.validate().is_ok() {
                return None;
            }
            Some(Self::recover_coord(v))
        })
    }

    /// The coordination table's state: slots in use (in-flight computations, held locks
    /// and pool slots), capacity, repairs and reclaimed holds.
    pub fn coordination_stats(&self) -> Result<CoordStats> {
        self.with_coord(|v| CoordStats {
            in_use: v.used(),
            slots: self.geom.coord.slots,
            recoveries: v.meta.recoveries,
            reclaimed: v.meta.reclaimed,
        })
    }

    /// Bumps slot `i`'s futex word (under the coordination lock) so sleepers see a change.
    /// The low 31 bits count changes; the top bit says someone may be asleep on it.
    pub(crate) fn bump(&self, i: usize) {
        if let Some(w) = self.seg.wake_word(i) {
            let _ = w.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some((v.wrapping_add(1) & !SLEEPERS) | (v & SLEEPERS))
            });
        }
    }

    /// Wakes every sleeper on slot `i` (after the coordination lock is released); no
    /// syscall when nobody announced sleeping.
    pub(crate) fn wake(&self, i: usize) {
        if let Some(w) = self.seg.wake_word(i) {
            if w.load(Ordering::Acquire) & SLEEPERS != 0 {
                w.fetch_and(!SLEEPERS, Ordering::AcqRel);
                futex::wake_all(w);
            }
        }
    }

    /// One attempt: reclaim lapsed holders, then take a slot if there is room.
    pub(crate) fn attempt(&self, req: &Request) -> Result<Attempt> {
        let me = process::current();
        let now = monotonic_ns();
        let token = new_token();
        let slots = self.geom.coord.slots;
        self.with_coord(|v| {
            // Lapsed holds go now; dead holders are found outside the lock (see `reap`).
            v.reclaim(req.holders, req.key, now, &mut |_| true, |i| self.bump(i));
            let mut held = v.find(req.holders, req.key);
            let first = held.next();
            let count = first.map_or(0, |_| 1 + held.count());
            if count < req.capacity {
                let slot = CoordSlot {
                    kind: req.kind,
                    owner_pid: me.pid,
                    key: req.key,
                    owner_start: me.start,
                    owner_token: token,
                    expires_at: req.expires.map_or(0, |d| {
                        now.saturating_add(d.as_nanos().min(u64::MAX as u128) as u64)
                    }),
                    acquired_at: now,
                    group: req.group,
                };
                return match v.take(slot) {
                    Some(i) => Ok(Attempt::Got(i, Owner { process: me, token })),
                    None => Err(Error::CoordinationFull { slots }),
                };
            }
            let i = first.unwrap_or(0);
            let s = v.slot(i).copied().unwrap_or(bytemuck::Zeroable::zeroed());
            Ok(Attempt::Busy {
                slot: i,
                kind: s.kind,
                pid: s.owner_pid,
                seq: self
                    .seg
                    .wake_word(i)
                    .map_or(0, |w| w.load(Ordering::Acquire)),
                expires_at: s.expires_at,
            })
        })?
    }

    /// Frees the holders of `key` whose processes are gone, in batches: liveness is read
    /// from `/proc` outside the lock, and a slot is freed only if it still has the token
    /// seen then. Returns how many were freed.
    pub(crate) fn reap(&self, holders: &[u32], key: [u64; 2]) -> Result<u32> {
        const BATCH: usize = 32;
        let mut freed = 0;
        let mut from = 0;
        loop {
            let mut seen = [(0usize, ProcessId { pid: 0, start: 0 }, 0u64); BATCH];
            let n = self.with_coord(|v| v.holders_from(holders, key, from, &mut seen))?;
            let mut dead = [(0usize, ProcessId { pid: 0, start: 0 }, 0u64); BATCH];
            let mut d = 0;
            for &h in &seen[..n] {
                if !process::is_alive(h.1) {
                    dead[d] = h;
                    d += 1;
                }
            }
            if d > 0 {
                freed += self.with_coord(|v| {
                    let mut k = 0;
                    for &(i, p, token) in &dead[..d] {
                        if v.slot(i)
                            .is_some_and(|s| s.owner_pid == p.pid && s.owner_token == token)
                        {
                            v.free(i);
                            v.meta.reclaimed += 1;
                            self.bump(i);
                            k += 1;
                        }
                    }
                    k
                })?;
                for &(i, _, _) in &dead[..d] {
                    self.wake(i);
                }
            }
            if n < BATCH {
                return Ok(freed);
            }
            from = seen[n - 1].0 + 1;
        }
    }

    /// Frees a slot if it is still `owner`'s and wakes its sleepers. Returns whether it was
    /// freed and whether its hold had lapsed (expired, even if nobody took it yet), both
    /// read in one lock hold.
    pub(crate) fn release_slot(
        &self,
        i: usize,
        kinds: &[u32],
        key: [u64; 2],
        owner: Owner,
    ) -> Result<(bool, bool)> {
        let now = monotonic_ns();
        let (freed, lapsed) = self.with_coord(|v| {
            let lapsed = v
                .slot(i)
                .is_some_and(|s| s.expires_at != 0 && now >= s.expires_at);
            let freed = v.release(i, kinds, key, owner);
            if freed {
                self.bump(i);
            }
            (freed, lapsed)
        })?;
        if freed {
            self.wake(i);
        }
        Ok((freed, lapsed))
    }

    /// Sleeps until slot `i`'s word moves from `seq`, the hold lapses, the liveness
    /// interval passes, or `deadline` (monotonic ns) comes.
    pub(crate) fn sleep_on(&self, i: usize, seq: u32, expires_at: u64, deadline: u64) {
        let now = monotonic_ns();
        let mut until = deadline.min(now.saturating_add(self.liveness_ns()));
        if expires_at != 0 {
            until = until.min(expires_at);
        }
        if until <= now {
            return;
        }
        if let Some(w) = self.seg.wake_word(i) {
            // Announce the sleep, then sleep only if nothing changed since `seq` was read.
            let cur = w.fetch_or(SLEEPERS, Ordering::AcqRel);
            if cur & !SLEEPERS == seq & !SLEEPERS {
                futex::wait(w, cur | SLEEPERS, Duration::from_nanos(until - now));
            }
        }
    }

    fn liveness_ns(&self) -> u64 {
        self.liveness_interval.as_nanos().min(u64::MAX as u128) as u64
    }

    /// Takes a slot, waiting up to `wait` (None = one attempt, plus one more after reaping
    /// dead holders). Returns the holder's pid when it gives up.
    pub(crate) fn acquire(
        &self,
        req: &Request,
        wait: Option<Duration>,
    ) -> Result<std::result::Result<(usize, Owner), u32>> {
        let deadline = monotonic_ns()
            .saturating_add(wait.map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64));
        loop {
            match self.attempt(req)? {
                Attempt::Got(i, owner) => return Ok(Ok((i, owner))),
                Attempt::Busy {
                    slot,
                    pid,
                    seq,
                    expires_at,
                    ..
                } => {
                    // A dead holder is reclaimed on this attempt, not after its expiry.
                    if self.reap(req.holders, req.key)? > 0 {
                        continue;
                    }
                    if monotonic_ns() >= deadline {
                        return Ok(Err(pid));
                    }
                    self.sleep_on(slot, seq, expires_at, deadline);
                }
            }
        }
    }

    // ----- named locks ------------------------------------------------------------------

    fn lock_request<'a>(&self, name: &str, expires: Option<Duration>) -> Result<Request<'a>> {
        check_name(name)?;
        if expires == Some(Duration::ZERO) {
            return Err(Error::ZeroTtl);
        }
        Ok(Request {
            kind: slot_kind::LOCK,
            holders: &[slot_kind::LOCK],
            key: self.coord_key("lock", name.as_bytes()),
            group: 0,
            capacity: 1,
            expires,
        })
    }

    /// Takes the named lock if it is free (or its holder died or its hold expired); never
    /// waits. `expires` bounds the hold (`None` = until released or the holder dies).
    ///
    /// ```no_run
    /// # let cache = shmemcache::Cache::open("locks-doc")?;
    /// use std::time::Duration;
    /// if let Some(guard) = cache.try_lock("nightly-report", Some(Duration::from_secs(60)))? {
    ///     // ... only one process on the machine gets here at a time ...
    ///     guard.release()?;
    /// }
    /// # Ok::<(), shmemcache::Error>(())
    /// ```
    pub fn try_lock(&self, name: &str, expires: Option<Duration>) -> Result<Option<LockGuard<'_>>> {
        let req = self.lock_request(name, expires)?;
        Ok(self.acquire(&req, None)?.ok().map(|(slot, owner)| {
            LockGuard::new(self, "lock", name, req.kind, req.key, slot, owner)
        }))
    }

    /// Takes the named lock, sleeping up to `wait` for its holder to release it (woken by
    /// the release, not by polling). [`Error::Busy`] when the wait runs out.
    pub fn lock(
        &self,
        name: &str,
        expires: Option<Duration>,
        wait: Duration,
    ) -> Result<LockGuard<'_>> {
        let req = self.lock_request(name, expires)?;
        match self.acquire(&req, Some(wait))? {
            Ok((slot, owner)) => Ok(LockGuard::new(
                self, "lock", name, req.kind, req.key, slot, owner,
            )),
            Err(pid) => Err(Error::Busy {
                what: "lock",
                name: name.to_string(),
                reason: format!("held by process {pid}; waited {wait:?}"),
            }),
        }
    }

    /// Whether the named lock is held by a live process with an unexpired hold.
    pub fn is_locked(&self, name: &str) -> Result<bool> {
        let req = self.lock_request(name, None)?;
        self.reap(req.holders, req.key)?;
        let now = monotonic_ns();
        self.with_coord(|v| {
            v.find(req.holders, req.key).any(|i| {
                v.slot(i)
                    .is_some_and(|s| s.expires_at == 0 || now < s.expires_at)
            })
        })
    }

    /// Releases the named lock whoever holds it; true if it was held. The holder's guard
    /// then finds its release refused ([`Error::NotOwner`]).
    pub fn force_release(&self, name: &str) -> Result<bool> {
        let req = self.lock_request(name, None)?;
        let mut freed = [0usize; 1];
        let n = self.with_coord(|v| {
            v.reclaim(req.holders, req.key, 0, &mut |_| false, |i| {
                freed[0] = i;
                self.bump(i);
            })
        })?;
        if n > 0 {
            self.wake(freed[0]);
        }
        Ok(n > 0)
    }

    /// Runs `f` unless another process is running it under the same name right now, in
    /// which case `busy` says what to return instead. The name's lock is held while `f`
    /// runs (for at most `expires`, default none) and released afterwards, so a later call
    /// runs `f` again: this is py-cachify's `once`, "not concurrently", not "only ever".
    ///
    /// ```no_run
    /// # let cache = shmemcache::Cache::open("once-doc")?;
    /// use shmemcache::OnceBusy;
    /// let ran = cache.once("rebuild-index", None, OnceBusy::Return(false), || {
    ///     // ... rebuild ...
    ///     true
    /// })?;
    /// # let _ = ran;
    /// # Ok::<(), shmemcache::Error>(())
    /// ```
    pub fn once<T>(
        &self,
        name: &str,
        expires: Option<Duration>,
        busy: OnceBusy<T>,
        f: impl FnOnce() -> T,
    ) -> Result<T> {
        let req = Request {
            key: self.coord_key("once", name.as_bytes()),
            ..self.lock_request(name, expires)?
        };
        match self.acquire(&req, None)? {
            Ok((slot, owner)) => {
                let guard = LockGuard::new(self, "once", name, req.kind, req.key, slot, owner);
                let out = f();
                drop(guard);
                Ok(out)
            }
            Err(pid) => match busy {
                OnceBusy::Return(v) => Ok(v),
                OnceBusy::Error => Err(Error::Busy {
                    what: "once",
                    name: name.to_string(),
                    reason: format!("running in process {pid}"),
                }),
            },
        }
    }

    /// The guard form of [`once`](Cache::once), for callers that cannot hand over a
    /// closure (a `with` block in another language): the name's `once` hold if no other
    /// process is running under it now, else `None`. Release the guard when the body ends.
    ///
    /// ```no_run
    /// # let cache = shmemcache::Cache::open("try-once-doc")?;
    /// if let Some(guard) = cache.try_once("rebuild-index", None)? {
    ///     // ... rebuild ...
    ///     guard.release()?;
    /// }
    /// # Ok::<(), shmemcache::Error>(())
    /// ```
    pub fn try_once(&self, name: &str, expires: Option<Duration>) -> Result<Option<LockGuard<'_>>> {
        let req = Request {
            key: self.coord_key("once", name.as_bytes()),
            ..self.lock_request(name, expires)?
        };
        Ok(self.acquire(&req, None)?.ok().map(|(slot, owner)| {
            LockGuard::new(self, "once", name, req.kind, req.key, slot, owner)
        }))
    }

    // ----- pools ------------------------------------------------------------------------

    /// A named pool admitting at most `max_size` holders across all processes.
    pub fn pool(&self, name: &str, max_size: usize) -> Result<Pool<'_>> {
        check_name(name)?;
        if max_size == 0 || max_size > self.geom.coord.slots as usize {
            return Err(Error::InvalidArgument(format!(
                "pool size {max_size} is outside 1..={}",
                self.geom.coord.slots
            )));
        }
        Ok(Pool {
            cache: self,
            name: name.to_string(),
            key: self.coord_key("pool", name.as_bytes()),
            max_size,
        })
    }
}

/// See [`Cache::coordination_stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoordStats {
    /// Slots held now.
    pub in_use: usize,
    /// Slots in the segment.
    pub slots: u32,
    /// Times the table was repaired after a holder died or panicked while updating it.
    pub recoveries: u64,
    /// Holds freed because their process died or their hold expired.
    pub reclaimed: u64,
}

/// Names of locks, pools and `once` bodies: 1 to 256 bytes.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 {
        return Err(Error::InvalidArgument(format!(
            "lock or pool name of {} bytes (1 to 256 allowed)",
            name.len()
        )));
    }
    Ok(())
}

/// What [`Cache::once`] returns when the body is already running elsewhere.
#[derive(Debug)]
pub enum OnceBusy<T> {
    /// Return this value.
    Return(T),
    /// Return [`Error::Busy`].
    Error,
}

/// A held named lock (or pool slot). Released on drop, or explicitly with
/// [`release`](LockGuard::release) to learn whether the hold was still ours. A guard
/// inherited across `fork()` does nothing in the child: the parent still owns the hold.
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'c> {
    cache: &'c Cache,
    what: &'static str,
    name: String,
    kind: u32,
    key: [u64; 2],
    slot: usize,
    owner: Owner,
    generation: u64,
    done: bool,
}

impl<'c> LockGuard<'c> {
    fn new(
        cache: &'c Cache,
        what: &'static str,
        name: &str,
        kind: u32,
        key: [u64; 2],
        slot: usize,
        owner: Owner,
    ) -> LockGuard<'c> {
        LockGuard {
            cache,
            what,
            name: name.to_string(),
            kind,
            key,
            slot,
            owner,
            generation: fork::generation(),
            done: false,
        }
    }

    /// The name of the lock or pool.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this guard was inherited across `fork()` (and so does nothing).
    pub fn is_inherited(&self) -> bool {
        fork::generation() != self.generation
    }

    /// Whether the hold is still this guard's (not expired and taken, not force-released).
    pub fn is_held(&self) -> Result<bool> {
        let now = monotonic_ns();
        self.cache.with_coord(|v| {
            v.slot(self.slot).is_some_and(|s| {
                s.kind == self.kind
                    && s.key == self.key
                    && s.owner_token == self.owner.token
                    && (s.expires_at == 0 || now < s.expires_at)
            })
        })
    }

    /// Releases the hold. [`Error::NotOwner`] if it is no longer this guard's: it expired
    /// and another process took it, or it was force-released. Releasing someone else's
    /// hold is refused, never done silently.
    pub fn release(mut self) -> Result<()> {
        self.done = true;
        if self.is_inherited() {
            return Ok(());
        }
        // An expired hold is no longer ours even if nobody took it yet.
        let (freed, expired) =
            self.cache
                .release_slot(self.slot, &[self.kind], self.key, self.owner)?;
        if freed && !expired {
            Ok(())
        } else {
            Err(Error::NotOwner {
                what: self.what,
                name: self.name.clone(),
            })
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if !self.done && !self.is_inherited() {
            let _ = self
                .cache
                .release_slot(self.slot, &[self.kind], self.key, self.owner);
        }
    }
}

/// A named pool: at most `max_size` concurrent holders across every process.
#[derive(Debug)]
pub struct Pool<'c> {
    cache: &'c Cache,
    name: String,
    key: [u64; 2],
    max_size: usize,
}

impl<'c> Pool<'c> {
    fn request(&self, expires: Option<Duration>) -> Result<Request<'static>> {
        if expires == Some(Duration::ZERO) {
            return Err(Error::ZeroTtl);
        }
        Ok(Request {
            kind: slot_kind::POOL,
            holders: &[slot_kind::POOL],
            key: self.key,
            group: 0,
            capacity: self.max_size,
            expires,
        })
    }

    /// Takes a slot if fewer than `max_size` are held (dead holders' and expired slots are
    /// reclaimed first); [`Error::Busy`] when full. `expires` bounds the hold.
    pub fn acquire(&self, expires: Option<Duration>) -> Result<LockGuard<'c>> {
        match self.try_acquire(expires)? {
            Some(g) => Ok(g),
            None => Err(Error::Busy {
                what: "pool",
                name: self.name.clone(),
                reason: format!("all {} slots are held", self.max_size),
            }),
        }
    }

    /// Like [`acquire`](Pool::acquire), but `None` when full.
    pub fn try_acquire(&self, expires: Option<Duration>) -> Result<Option<LockGuard<'c>>> {
        let req = self.request(expires)?;
        Ok(self.cache.acquire(&req, None)?.ok().map(|(slot, owner)| {
            LockGuard::new(
                self.cache, "pool", &self.name, req.kind, req.key, slot, owner,
            )
        }))
    }

    /// Runs `f` holding a slot, or returns `fallback()` when the pool is full.
    pub fn run_or<T>(
        &self,
        expires: Option<Duration>,
        f: impl FnOnce() -> T,
        fallback: impl FnOnce() -> T,
    ) -> Result<T> {
        match self.try_acquire(expires)? {
            Some(g) => {
                let out = f();
                drop(g);
                Ok(out)
            }
            None => Ok(fallback()),
        }
    }

    /// Slots held by live processes right now.
    pub fn size(&self) -> Result<usize> {
        self.cache.reap(&[slot_kind::POOL], self.key)?;
        let now = monotonic_ns();
        self.cache.with_coord(|v| {
            v.find(&[slot_kind::POOL], self.key)
                .filter(|&i| {
                    v.slot(i)
                        .is_some_and(|s| s.expires_at == 0 || now < s.expires_at)
                })
                .count()
        })
    }

    /// The pool's capacity.
    pub fn max_size(&self) -> usize {
        self.max_size
    }
}
