//! Memoization across processes: `get_or_compute` with a machine-wide single flight,
//! stale-while-refresh, and per-function memo handles.
//!
//! A miss takes the key's flight marker in the coordination table (owner pid + start time +
//! token). Other callers sleep on the marker's futex word and are woken when the value
//! lands; if the owner dies they notice within the liveness interval and one of them takes
//! over. Values written here carry an 8-byte trailer holding when they were computed, which
//! is what `stale_after` and `max_age` compare against.

use crate::cache::Cache;
use crate::clock::monotonic_ns;
use crate::error::{Error, Result};
use crate::layout::{memo_stat, slot_kind, MEMO_STAT_SLOTS};
use crate::sync::{Attempt, Request};
use crate::sys::fork;
use crate::typed::{Codec, Postcard};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// Tag in the top byte of a memo value's trailer; the low 56 bits are the computation time
/// in µs on `CLOCK_MONOTONIC`. A trailer, not a header, so a hit returns the payload by
/// truncating, without moving it.
const TAG: u64 = 0xC5 << 56;
const TRAILER: usize = 8;
/// How long a failed computation stays visible to callers that asked to be told.
const FAILED_HOLD: Duration = Duration::from_millis(100);

/// TTL of a memoized value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ttl {
    /// The segment's default TTL.
    #[default]
    Default,
    /// Never expires (still evicted when room is needed).
    Never,
    /// Expires this long after it is stored.
    For(Duration),
}

/// What waiters do when the computing process's function returns an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// One of the waiters computes again (the default).
    #[default]
    Retry,
    /// Waiters get [`Error::ComputedElsewhereFailed`]; so do callers arriving within
    /// 100 ms of the failure.
    Propagate,
}

/// Options of one `get_or_compute` call or of a memo handle. Built with chained setters.
///
/// ```
/// use shmemcache::{ComputeOptions, Ttl};
/// use std::time::Duration;
/// let opts = ComputeOptions::new()
///     .ttl(Ttl::For(Duration::from_secs(300)))
///     .stale_after(Duration::from_secs(60))
///     .serve_stale(true);
/// # let _ = opts;
/// ```
#[derive(Clone, Debug)]
pub struct ComputeOptions {
    ttl: Ttl,
    stale_after: Option<Duration>,
    serve_stale: bool,
    wait_timeout: Duration,
    on_error: OnError,
    max_size: Option<usize>,
    skip_cache: bool,
    overwrite: bool,
    max_age: Option<Duration>,
}

impl Default for ComputeOptions {
    fn default() -> Self {
        ComputeOptions {
            ttl: Ttl::Default,
            stale_after: None,
            serve_stale: false,
            wait_timeout: Duration::from_secs(60),
            on_error: OnError::Retry,
            max_size: None,
            skip_cache: false,
            overwrite: false,
            max_age: None,
        }
    }
}

impl ComputeOptions {
    /// The defaults: segment TTL, never stale, wait up to 60 s, retry on error.
    pub fn new() -> Self {
        Self::default()
    }
    /// TTL of stored values.
    pub fn ttl(mut self, ttl: Ttl) -> Self {
        self.ttl = ttl;
        self
    }
    /// A value older than this is stale: recomputed, or served while one caller refreshes
    /// it if [`serve_stale`](Self::serve_stale) is on.
    pub fn stale_after(mut self, d: Duration) -> Self {
        self.stale_after = Some(d);
        self
    }
    /// Serve a stale value at once while a single caller refreshes it. Through
    /// [`Memo::try_call_owned`] (what `#[memoize(serve_stale)]` uses) the refresh runs on a
    /// background thread and every caller returns at once; through the other calls the one
    /// caller that wins the refresh runs it inline.
    pub fn serve_stale(mut self, yes: bool) -> Self {
        self.serve_stale = yes;
        self
    }
    /// How long to wait for another process's computation before computing here.
    pub fn wait_timeout(mut self, d: Duration) -> Self {
        self.wait_timeout = d;
        self
    }
    /// What waiters do when the computation fails.
    pub fn on_error(mut self, e: OnError) -> Self {
        self.on_error = e;
        self
    }
    /// Do not store encoded values larger than this (they are still returned).
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max_size = Some(bytes);
        self
    }
    /// Compute without reading or writing the cache (and without a flight marker).
    pub fn skip_cache(mut self, yes: bool) -> Self {
        self.skip_cache = yes;
        self
    }
    /// Compute even on a hit and overwrite the stored value.
    pub fn overwrite(mut self, yes: bool) -> Self {
        self.overwrite = yes;
        self
    }
    /// Treat values older than this as missing, for this call.
    pub fn max_age(mut self, d: Duration) -> Self {
        self.max_age = Some(d);
        self
    }
}

/// What a memoized function may return (the `T` of a `Result<T, E>`): anything serde can
/// encode and decode, since results travel between processes as bytes.
///
/// Implemented for every `T: Serialize + DeserializeOwned`. For a type of your own, derive
/// both; shmemcache re-exports serde, so no extra dependency is needed:
///
/// ```
/// #[derive(shmemcache::Serialize, shmemcache::Deserialize)]
/// #[serde(crate = "shmemcache::serde")] // only when your crate does not depend on serde
/// struct Quote {
///     sku: String,
///     cents: u64,
/// }
/// fn check<T: shmemcache::MemoValue>() {}
/// check::<Quote>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the result of a memoized function",
    label = "results must implement serde's `Serialize` and `Deserialize`",
    note = "derive them on your type: `#[derive(shmemcache::Serialize, shmemcache::Deserialize)]` \
            (add `#[serde(crate = \"shmemcache::serde\")]` if your crate does not depend on serde)"
)]
pub trait MemoValue: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> MemoValue for T {}

/// Why `get_or_compute` failed: the caller's function, or the cache.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError<E> {
    /// The function returned this error (nothing was stored).
    #[error("computation failed: {0}")]
    Compute(E),
    /// The cache failed, or another process's computation failed under
    /// [`OnError::Propagate`].
    #[error(transparent)]
    Cache(#[from] Error),
}

impl<E> ComputeError<E> {
    /// The cache error, if that is what this is.
    pub fn cache_error(&self) -> Option<&Error> {
        match self {
            ComputeError::Cache(e) => Some(e),
            ComputeError::Compute(_) => None,
        }
    }
}

/// Where a memoized result came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A fresh stored value.
    Hit,
    /// A stale stored value, served while someone else refreshes it.
    Stale,
    /// Computed by this caller.
    Computed,
    /// Computed by another process while this caller waited.
    Waited,
}

/// Which memoized function a computation belongs to: its flight-marker group and its slot
/// in the segment's memo statistics table (slot 0, every memoized call, is always counted).
#[derive(Clone, Copy)]
pub(crate) struct Scope {
    group: u64,
    stat: Option<usize>,
}

impl Scope {
    /// A computation of no particular function (`get_or_compute` on bytes or typed keys).
    pub(crate) const NONE: Scope = Scope {
        group: 0,
        stat: None,
    };
}

enum Found {
    Fresh(Vec<u8>),
    Stale(Vec<u8>),
    Missing,
}

fn encode_trailer(now_ns: u64) -> [u8; TRAILER] {
    (TAG | ((now_ns / 1000) & ((1 << 56) - 1))).to_le_bytes()
}

/// What a stored memo value is under `opts`: its payload's length with whether it is
/// stale, or `None` if it is malformed or past `max_age` (treated as missing).
fn classify(v: &[u8], opts: &ComputeOptions) -> Option<(usize, bool)> {
    let at = computed_at(v)?;
    let len = v.len() - TRAILER;
    // The clock is read only when an age limit asks for it.
    if opts.max_age.is_none() && opts.stale_after.is_none() {
        return Some((len, false));
    }
    let age = Duration::from_nanos(monotonic_ns().saturating_sub(at));
    if opts.max_age.is_some_and(|m| age > m) {
        return None;
    }
    Some((len, opts.stale_after.is_some_and(|s| age >= s)))
}

/// The payload of a stored memo value if it is fresh under `opts`.
fn fresh_payload<'v>(v: &'v [u8], opts: &ComputeOptions) -> Option<&'v [u8]> {
    match classify(v, opts)? {
        (len, false) => Some(&v[..len]),
        (_, true) => None,
    }
}

/// When a stored memo value was computed (ns), or `None` if it is not a memo value.
fn computed_at(v: &[u8]) -> Option<u64> {
    let at = v.len().checked_sub(TRAILER)?;
    let t = u64::from_le_bytes(v.get(at..)?.try_into().ok()?);
    (t >> 56 == TAG >> 56).then_some((t & ((1 << 56) - 1)) * 1000)
}

/// Releases the flight marker if the computing caller panics or returns early.
pub(crate) struct Flight<'c> {
    cache: &'c Cache,
    slot: usize,
    key: [u64; 2],
    owner: crate::coord::Owner,
    generation: u64,
    /// The namespace generation the computation began in: its result is stored there.
    ns_generation: u64,
}

impl Flight<'_> {
    /// Turns the marker into a "failed" marker that lapses after [`FAILED_HOLD`].
    fn fail(self) {
        let at = monotonic_ns().saturating_add(FAILED_HOLD.as_nanos() as u64);
        let (slot, token) = (self.slot, self.owner.token);
        let marked = self.cache.with_coord(|v| match v.slot(slot).copied() {
            Some(mut s) if s.owner_token == token && s.kind == slot_kind::FLIGHT => {
                s.kind = slot_kind::FAILED;
                s.expires_at = at;
                v.reassign(slot, s);
                self.cache.bump(slot);
                true
            }
            _ => false,
        });
        if matches!(marked, Ok(true)) {
            self.cache.wake(slot);
            std::mem::forget(self);
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if fork::generation() == self.generation {
            let _ = self.cache.release_slot(
                self.slot,
                &[slot_kind::FLIGHT, slot_kind::FAILED],
                self.key,
                self.owner,
            );
        }
    }
}

impl Cache {
    fn memo_read(&self, key: &[u8], opts: &ComputeOptions) -> Result<Found> {
        let Some(mut v) = self.get_as(key, false)? else {
            return Ok(Found::Missing);
        };
        let Some((len, stale)) = classify(&v, opts) else {
            return Ok(Found::Missing);
        };
        v.truncate(len);
        Ok(if stale {
            Found::Stale(v)
        } else {
            Found::Fresh(v)
        })
    }

    /// Adds one to counter `word` of the segment's memo statistics, in the total (slot 0)
    /// and in `scope`'s own slot. Lock-free: the counters are atomics in the segment.
    fn tally(&self, scope: Scope, word: usize) {
        for slot in [Some(0), scope.stat.filter(|&s| s != 0)]
            .into_iter()
            .flatten()
        {
            // Hits, the per-call counter, go to this process's own slot when they can.
            if word == memo_stat::HITS && crate::counters::bump_memo_hit(&self.seg, slot) {
                continue;
            }
            if let Some(w) = self.seg.memo_stat_word(slot, word) {
                w.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The memo statistics slot of the function whose namespace hashes to `group`, claimed
    /// on first use; `None` when all slots belong to other functions.
    pub(crate) fn memo_stat_slot(&self, group: u64) -> Option<usize> {
        let n = MEMO_STAT_SLOTS - 1;
        let start = (group % n as u64) as usize;
        (0..n).map(|i| 1 + (start + i) % n).find(|&slot| {
            let Some(w) = self.seg.memo_stat_word(slot, memo_stat::GROUP) else {
                return false;
            };
            match w.compare_exchange(0, group, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => true,
                Err(owner) => owner == group,
            }
        })
    }

    /// The counters of memo statistics slot `slot`.
    pub(crate) fn memo_stats_of(&self, slot: usize) -> MemoStats {
        let get = |word| {
            self.seg
                .memo_stat_word(slot, word)
                .map_or(0, |w| w.load(Ordering::Relaxed))
        };
        MemoStats {
            hits: get(memo_stat::HITS).wrapping_add(crate::counters::memo_hits(&self.seg, slot)),
            stale: get(memo_stat::STALE),
            misses: get(memo_stat::MISSES),
            computed: get(memo_stat::COMPUTED),
            waited: get(memo_stat::WAITED),
            takeovers: get(memo_stat::TAKEOVERS),
            timeouts: get(memo_stat::TIMEOUTS),
            rejected: get(memo_stat::REJECTED),
        }
    }

    /// Machine-wide counters of every memoized call on this segment (`get_or_compute`,
    /// [`Memo`] handles and `#[memoize]` functions together), kept apart from
    /// [`Cache::stats`], whose hits and misses count plain gets only.
    pub fn memo_stats(&self) -> MemoStats {
        self.memo_stats_of(0)
    }

    fn memo_store(&self, key: &[u8], payload: &[u8], opts: &ComputeOptions, scope: Scope) {
        if opts.max_size.is_some_and(|m| payload.len() > m) {
            self.tally(scope, memo_stat::REJECTED);
            return;
        }
        let mut buf = Vec::with_capacity(payload.len() + TRAILER);
        buf.extend_from_slice(payload);
        buf.extend_from_slice(&encode_trailer(monotonic_ns()));
        // A value that cannot be stored (too large, lock timeout) is still returned.
        let stored = match opts.ttl {
            Ttl::Default => self.set(key, &buf),
            Ttl::Never => self.set_ttl(key, &buf, None),
            Ttl::For(d) => self.set_ttl(key, &buf, Some(d)),
        };
        if let Err(Error::ValueTooLarge { .. }) = stored {
            self.tally(scope, memo_stat::REJECTED);
        }
    }

    /// Stores `payload` as a memoized value computed now (used by `precache`).
    pub(crate) fn memo_put(
        &self,
        key: &[u8],
        payload: &[u8],
        opts: &ComputeOptions,
        scope: Scope,
    ) -> Result<()> {
        self.check_key(key)?;
        self.memo_store(key, payload, opts, scope);
        Ok(())
    }

    /// The shared core. `f` returns the result and, if it should be stored, its encoding;
    /// `decode` turns a stored payload back into a result.
    pub(crate) fn compute_core<T, E>(
        &self,
        key: &[u8],
        scope: Scope,
        opts: &ComputeOptions,
        f: impl FnOnce() -> std::result::Result<(T, Option<Vec<u8>>), E>,
        decode: impl Fn(Vec<u8>) -> Option<T>,
    ) -> std::result::Result<(T, Source), ComputeError<E>> {
        if let Ttl::For(d) = opts.ttl {
            if d.is_zero() {
                return Err(Error::ZeroTtl.into());
            }
        }
        if opts.skip_cache {
            self.check_key(key)?;
            self.tally(scope, memo_stat::COMPUTED);
            let (v, _) = f().map_err(ComputeError::Compute)?;
            return Ok((v, Source::Computed));
        }
        let mut stale = None;
        if !opts.overwrite {
            match self.memo_read(key, opts)? {
                Found::Fresh(p) => {
                    if let Some(v) = decode(p) {
                        self.tally(scope, memo_stat::HITS);
                        return Ok((v, Source::Hit));
                    }
                }
                Found::Stale(p) if opts.serve_stale => stale = Some(p),
                _ => {}
            }
        }
        if stale.is_none() {
            self.tally(scope, memo_stat::MISSES);
        }
        // From here on the computation is under way: its marker and its result belong to
        // the generation it began in, so an invalidation meanwhile hides the result.
        let pinned = self.pinned();
        let this = &pinned;
        this.compute_pinned(key, scope, opts, stale, f, decode)
    }

    /// The rest of [`compute_core`](Self::compute_core), on a handle pinned to one
    /// generation.
    fn compute_pinned<T, E>(
        &self,
        key: &[u8],
        scope: Scope,
        opts: &ComputeOptions,
        stale: Option<Vec<u8>>,
        f: impl FnOnce() -> std::result::Result<(T, Option<Vec<u8>>), E>,
        decode: impl Fn(Vec<u8>) -> Option<T>,
    ) -> std::result::Result<(T, Source), ComputeError<E>> {
        // Only a miss or a stale hit needs the marker, so a fresh hit never hashes its key.
        let req = self.flight_request(key, scope.group);
        if let Some(p) = stale {
            // One caller refreshes (inline); everyone else is served the stale value.
            match self.attempt(&req)? {
                Attempt::Got(slot, owner) => {
                    let flight = self.flight(slot, req.key, owner);
                    self.tally(scope, memo_stat::MISSES);
                    return self.run_owner(key, opts, scope, flight, f);
                }
                Attempt::Busy { .. } => {
                    if let Some(v) = decode(p) {
                        self.tally(scope, memo_stat::STALE);
                        return Ok((v, Source::Stale));
                    }
                }
            }
            return Err(Error::Codec("stored value no longer decodes".into()).into());
        }
        let wait_ns = opts.wait_timeout.as_nanos().min(u64::MAX as u128) as u64;
        let deadline = monotonic_ns().saturating_add(wait_ns);
        let mut waited = false;
        loop {
            match self.attempt(&req)? {
                Attempt::Got(slot, owner) => {
                    let flight = self.flight(slot, req.key, owner);
                    // Someone may have stored it between our miss and our acquisition.
                    if !opts.overwrite {
                        if let Found::Fresh(p) = self.memo_read(key, opts)? {
                            if let Some(v) = decode(p) {
                                drop(flight);
                                let (src, word) = if waited {
                                    (Source::Waited, memo_stat::WAITED)
                                } else {
                                    (Source::Hit, memo_stat::HITS)
                                };
                                self.tally(scope, word);
                                return Ok((v, src));
                            }
                        }
                    }
                    return self.run_owner(key, opts, scope, flight, f);
                }
                Attempt::Busy {
                    slot,
                    kind,
                    pid,
                    seq,
                    expires_at,
                } => {
                    if kind == slot_kind::FAILED {
                        match opts.on_error {
                            OnError::Propagate => {
                                return Err(Error::ComputedElsewhereFailed { pid }.into())
                            }
                            OnError::Retry => {
                                self.with_coord(|v| {
                                    if v.slot(slot).is_some_and(|s| s.kind == slot_kind::FAILED) {
                                        v.free(slot);
                                        self.bump(slot);
                                    }
                                })?;
                                continue;
                            }
                        }
                    }
                    // A dead owner is taken over now, not after a timeout.
                    if self.reap(req.holders, req.key)? > 0 {
                        self.tally(scope, memo_stat::TAKEOVERS);
                        continue;
                    }
                    if monotonic_ns() >= deadline {
                        // Waited long enough: compute here, without the marker.
                        self.tally(scope, memo_stat::TIMEOUTS);
                        self.tally(scope, memo_stat::COMPUTED);
                        let (v, bytes) = f().map_err(ComputeError::Compute)?;
                        if let Some(b) = bytes {
                            self.memo_store(key, &b, opts, scope);
                        }
                        return Ok((v, Source::Computed));
                    }
                    waited = true;
                    self.sleep_on(slot, seq, expires_at, deadline);
                    if let Found::Fresh(p) = self.memo_read(key, opts)? {
                        if let Some(v) = decode(p) {
                            self.tally(scope, memo_stat::WAITED);
                            return Ok((v, Source::Waited));
                        }
                    }
                }
            }
        }
    }

    /// The first step of a call whose refresh can run off the caller's path: a fresh value
    /// is a hit; a stale one is returned at once to every caller, and the one caller that
    /// takes the key's flight marker hands it to `refresh`, which recomputes elsewhere and
    /// drops it when done. `Ok(None)`: missing (or no longer decodable), so the caller takes
    /// the ordinary path and computes (or waits).
    pub(crate) fn stale_or_refresh<T>(
        &'static self,
        key: &[u8],
        scope: Scope,
        opts: &ComputeOptions,
        decode: impl Fn(Vec<u8>) -> Option<T>,
        refresh: impl FnOnce(Flight<'static>),
    ) -> Result<Option<T>> {
        let stale = match self.memo_read(key, opts)? {
            Found::Fresh(p) => {
                let v = decode(p);
                if v.is_some() {
                    self.tally(scope, memo_stat::HITS);
                }
                return Ok(v);
            }
            Found::Stale(p) => p,
            Found::Missing => return Ok(None),
        };
        let Some(v) = decode(stale) else {
            return Ok(None);
        };
        let req = self.flight_request(key, scope.group);
        if let Attempt::Got(slot, owner) = self.attempt(&req)? {
            refresh(self.flight(slot, req.key, owner));
        }
        self.tally(scope, memo_stat::STALE);
        Ok(Some(v))
    }

    /// Runs a refresh handed over by [`stale_or_refresh`](Self::stale_or_refresh), on the
    /// refresher's thread: computes, stores, and releases the flight marker (waking anyone
    /// waiting on it). A failed computation leaves the stale value in place.
    pub(crate) fn finish_refresh<E>(
        &self,
        key: &[u8],
        scope: Scope,
        opts: &ComputeOptions,
        flight: Flight<'_>,
        f: impl FnOnce() -> std::result::Result<Option<Vec<u8>>, E>,
    ) {
        self.tally(scope, memo_stat::COMPUTED);
        match f() {
            Ok(bytes) => {
                if let Some(b) = bytes {
                    let mut pinned = self.clone_handle();
                    pinned.pin = Some(flight.ns_generation);
                    pinned.memo_store(key, &b, opts, scope);
                }
                drop(flight);
            }
            Err(_) => match opts.on_error {
                OnError::Propagate => flight.fail(),
                OnError::Retry => drop(flight),
            },
        }
    }

    /// The single-flight marker request for cache key `key` of memo group `group`.
    fn flight_request(&self, key: &[u8], group: u64) -> Request<'static> {
        Request {
            kind: slot_kind::FLIGHT,
            holders: &[slot_kind::FLIGHT, slot_kind::FAILED],
            key: self.coord_key_at("flight", key, Some(self.route_generation())),
            group,
            capacity: 1,
            expires: None,
        }
    }

    fn flight(&self, slot: usize, key: [u64; 2], owner: crate::coord::Owner) -> Flight<'_> {
        Flight {
            cache: self,
            slot,
            key,
            owner,
            generation: fork::generation(),
            ns_generation: self.route_generation(),
        }
    }

    fn run_owner<T, E>(
        &self,
        key: &[u8],
        opts: &ComputeOptions,
        scope: Scope,
        flight: Flight<'_>,
        f: impl FnOnce() -> std::result::Result<(T, Option<Vec<u8>>), E>,
    ) -> std::result::Result<(T, Source), ComputeError<E>> {
        self.tally(scope, memo_stat::COMPUTED);
        match f() {
            Ok((v, bytes)) => {
                if let Some(b) = bytes {
                    self.memo_store(key, &b, opts, scope);
                }
                drop(flight);
                Ok((v, Source::Computed))
            }
            Err(e) => {
                match opts.on_error {
                    OnError::Propagate => flight.fail(),
                    OnError::Retry => drop(flight),
                }
                Err(ComputeError::Compute(e))
            }
        }
    }

    /// The value of `key`, computing it with `f` on a miss. Across every process on the
    /// machine at most one computation of a key runs at a time: other callers sleep until
    /// the value lands (woken by a futex, not polling) and return it. If the computing
    /// process dies, a waiter takes over within the liveness interval.
    ///
    /// Values stored here carry an 8-byte trailer (when they were computed); write such
    /// keys only through `get_or_compute` or a [`Memo`]'s `precache`.
    ///
    /// ```no_run
    /// # let cache = shmemcache::Cache::open("memo-doc")?;
    /// use shmemcache::ComputeOptions;
    /// let v = cache.get_or_compute(b"report:42", &ComputeOptions::new(), || {
    ///     Ok::<_, std::io::Error>(b"expensive result".to_vec())
    /// })?;
    /// # let _ = v;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_or_compute<E>(
        &self,
        key: &[u8],
        opts: &ComputeOptions,
        f: impl FnOnce() -> std::result::Result<Vec<u8>, E>,
    ) -> std::result::Result<Vec<u8>, ComputeError<E>> {
        self.compute_core(
            key,
            Scope::NONE,
            opts,
            || f().map(|v| (v.clone(), Some(v))),
            Some,
        )
        .map(|(v, _)| v)
    }

    /// Frees every single-flight marker of `group` (a memo's namespace): cachier's
    /// `clear_being_calculated`. Their waiters wake and one of them computes.
    pub(crate) fn clear_flights(&self, group: u64) -> Result<u32> {
        // Allocated before locking: nothing allocates under the coordination lock.
        let mut freed = Vec::with_capacity(self.geom.coord.slots as usize);
        let n = self.with_coord(|v| {
            v.free_group(&[slot_kind::FLIGHT, slot_kind::FAILED], group, |i| {
                self.bump(i);
                freed.push(i);
            })
        })?;
        for i in freed {
            self.wake(i);
        }
        Ok(n)
    }
}

/// Machine-wide counters of memoized calls, kept in the segment so every process adds to
/// and reads the same numbers: of one function ([`Memo::stats`], `f::stats()` of a
/// `#[memoize]` function) or of all of them ([`Cache::memo_stats`]). They are separate
/// from [`Cache::stats`], whose hits and misses count plain gets only.
///
/// Every call ends as exactly one of: a hit, a stale value served, a value computed here,
/// or a value another process computed while this call waited (`waited`). `misses` counts
/// the calls that found no fresh value (the ones that computed or waited). In other words:
/// hits, misses, computations (`computed`), waits (`waited`), takeovers, timeouts and size
/// rejections (`rejected`), plus stale values served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoStats {
    /// Fresh values returned from the cache.
    pub hits: u64,
    /// Stale values returned at once while another caller refreshed them.
    pub stale: u64,
    /// Calls that found no fresh value.
    pub misses: u64,
    /// Times the function ran (in any process).
    pub computed: u64,
    /// Calls that got a value another process computed while they waited.
    pub waited: u64,
    /// Computations taken over because the computing process died.
    pub takeovers: u64,
    /// Waits that reached the wait timeout (the caller then computed itself).
    pub timeouts: u64,
    /// Results not stored because of their size (`max_size`, or the segment's value limit).
    pub rejected: u64,
}

impl MemoStats {
    /// hits / (hits + misses), or 0 with no calls.
    pub fn hit_ratio(&self) -> f64 {
        crate::cache::hit_ratio(self.hits, self.misses)
    }
}

/// A memoized function's handle: its own key namespace in a cache (cachier's per-function
/// cache), its options, and `precache` / `reset` / `clear` / `clear_in_flight`.
///
/// Keys are the namespace followed by the codec's encoding of the arguments, so every
/// process that encodes the same arguments the same way shares results. Pass arguments as
/// a tuple in declaration order with defaults filled in (what `#[memoize]` does), and use
/// the same argument types everywhere: the key is their encoding.
///
/// ```no_run
/// use shmemcache::{Cache, ComputeOptions, Memo};
/// let cache = Cache::open("memo-handle-doc")?;
/// let square: Memo<u64> = Memo::new(&cache, "app::square");
/// let v = square.call(&(12,), || 12 * 12)?;
/// assert_eq!(v, 144);
/// square.reset(&(12,))?;
/// # Ok::<(), shmemcache::Error>(())
/// ```
pub struct Memo<'c, R, C: Codec = Postcard> {
    cache: &'c Cache,
    namespace: Vec<u8>,
    group: u64,
    opts: ComputeOptions,
    dont_cache_if: Option<fn(&R) -> bool>,
    codec: C,
    /// The memo statistics slot, resolved on first use: [`UNRESOLVED`], [`NO_SLOT`] or
    /// the slot index.
    stat_slot: AtomicUsize,
    /// This handle's background refresher: a thread fed through a channel, and the fork
    /// generation it was started in (a forked child starts its own).
    refresher: Mutex<Option<(u64, mpsc::Sender<Job>)>>,
    _result: PhantomData<fn() -> R>,
}

/// A refresh to run on a handle's refresher thread.
type Job = Box<dyn FnOnce() + Send>;

const UNRESOLVED: usize = usize::MAX;
const NO_SLOT: usize = usize::MAX - 1;

impl<'c, R> Memo<'c, R, Postcard> {
    /// A handle for the function named `namespace` (make it unique per function, and
    /// change it when the function's meaning changes).
    pub fn new(cache: &'c Cache, namespace: &str) -> Self {
        Self::with_codec(cache, namespace, Postcard)
    }
}

impl<'c, R, C: Codec> Memo<'c, R, C> {
    /// Like [`Memo::new`] with another codec.
    pub fn with_codec(cache: &'c Cache, namespace: &str, codec: C) -> Self {
        let mut ns = b"memo\0".to_vec();
        ns.extend_from_slice(namespace.as_bytes());
        ns.push(0);
        let group = xxhash_rust::xxh3::xxh3_64(&ns) | 1;
        Memo {
            cache,
            namespace: ns,
            group,
            opts: ComputeOptions::default(),
            dont_cache_if: None,
            codec,
            stat_slot: AtomicUsize::new(UNRESOLVED),
            refresher: Mutex::new(None),
            _result: PhantomData,
        }
    }

    /// This function's flight group and statistics slot.
    fn scope(&self) -> Scope {
        let mut slot = self.stat_slot.load(Ordering::Relaxed);
        if slot == UNRESOLVED {
            slot = self.cache.memo_stat_slot(self.group).unwrap_or(NO_SLOT);
            self.stat_slot.store(slot, Ordering::Relaxed);
        }
        Scope {
            group: self.group,
            stat: (slot != NO_SLOT).then_some(slot),
        }
    }

    /// Options for every call (see [`ComputeOptions`]).
    pub fn options(mut self, opts: ComputeOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The options every call uses, to start a per-call variant from
    /// ([`try_call_with`](Memo::try_call_with)).
    pub fn compute_options(&self) -> &ComputeOptions {
        &self.opts
    }

    /// Results for which `pred` is true are returned but not stored (e.g. `Option::is_none`
    /// to not cache negative results).
    pub fn dont_cache_if(mut self, pred: fn(&R) -> bool) -> Self {
        self.dont_cache_if = Some(pred);
        self
    }

    /// The cache key of `args`.
    pub fn key<A: Serialize + ?Sized>(&self, args: &A) -> Result<Vec<u8>> {
        // One allocation for the common key: the name, then the arguments in place.
        let mut k = Vec::with_capacity(self.namespace.len() + 64);
        k.extend_from_slice(&self.namespace);
        self.codec.encode_into(args, &mut k)?;
        Ok(k)
    }

    /// Forgets the result for `args`; true if there was one.
    pub fn reset<A: Serialize + ?Sized>(&self, args: &A) -> Result<bool> {
        self.cache.delete(&self.key(args)?)
    }

    /// Forgets every result of this function; returns how many were removed.
    pub fn clear(&self) -> Result<usize> {
        let mut n = 0;
        for k in self.cache.keys() {
            let k = k?;
            if k.starts_with(&self.namespace) && self.cache.delete(&k)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Drops every in-flight marker of this function (cachier's `clear_being_calculated`):
    /// callers waiting on them compute themselves. Returns how many were dropped.
    pub fn clear_in_flight(&self) -> Result<u32> {
        self.cache.clear_flights(self.group)
    }

    /// Machine-wide counters of this function: every process calling it through a handle
    /// of the same namespace adds to them. All zero if the segment's table of per-function
    /// counters (63 functions) is full; [`Cache::memo_stats`] still counts every call.
    pub fn stats(&self) -> MemoStats {
        match self.scope().stat {
            Some(slot) => self.cache.memo_stats_of(slot),
            None => MemoStats::default(),
        }
    }

    /// The cache this handle uses.
    pub fn cache(&self) -> &'c Cache {
        self.cache
    }
}

/// With a cache and a handle that live as long as the program (a `static`, as
/// `#[memoize]` makes), a stale value's refresh can run off the caller's path.
impl<R, C> Memo<'static, R, C>
where
    R: MemoValue + Send + 'static,
    C: Codec + Sync + 'static,
{
    /// Like [`try_call`](Memo::try_call), but with `serve_stale` on, every caller of a stale
    /// key, the one that triggers the refresh included, returns the stale value at once:
    /// the refresh runs on a thread this handle owns (one per process, restarted in a forked
    /// child), and the key's flight marker still makes it the only refresh machine-wide. If
    /// the refreshing process dies, the marker's owner is dead and the next caller takes
    /// over as usual. A missing key is computed by the caller, with single flight, as in
    /// `try_call`. `f` must own what it needs: it may run after this call returns.
    pub fn try_call_owned<A, E, F>(
        &'static self,
        args: &A,
        f: F,
    ) -> std::result::Result<R, ComputeError<E>>
    where
        A: Serialize + ?Sized,
        E: Send + 'static,
        F: FnOnce() -> std::result::Result<R, E> + Send + 'static,
    {
        let opts = &self.opts;
        if !opts.serve_stale || opts.stale_after.is_none() || opts.skip_cache || opts.overwrite {
            return self.try_call(args, f);
        }
        let key = self.key(args)?;
        let scope = self.scope();
        let codec = &self.codec;
        let mut job = Some(f);
        let served = self.cache.stale_or_refresh(
            &key,
            scope,
            opts,
            |p| codec.decode(&p).ok(),
            |flight| {
                let f = job.take().expect("one refresh");
                let key = key.clone();
                self.spawn_refresh(Box::new(move || {
                    let skip = self.dont_cache_if;
                    let run = || {
                        f().map(|v| {
                            if skip.is_some_and(|p| p(&v)) {
                                None
                            } else {
                                self.codec.encode(&v).ok()
                            }
                        })
                    };
                    self.cache
                        .finish_refresh(&key, scope, &self.opts, flight, run);
                }));
            },
        )?;
        match (served, job) {
            (Some(v), _) => Ok(v),
            (None, Some(f)) => self.try_call(args, f),
            (None, None) => unreachable!("a refresh is handed over only with a value served"),
        }
    }

    /// Queues `job` on this handle's refresher thread, starting it (again, after a fork)
    /// when needed.
    fn spawn_refresh(&'static self, job: Job) {
        let generation = fork::generation();
        let mut slot = self.refresher.lock().unwrap_or_else(|e| e.into_inner());
        let job = match slot.as_ref().filter(|(g, _)| *g == generation) {
            Some((_, tx)) => match tx.send(job) {
                Ok(()) => return,
                // The thread is gone (it panicked): start another.
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("shmemcache-refresh".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        match started {
            Ok(_) => {
                let _ = tx.send(job);
                *slot = Some((generation, tx));
            }
            // No thread to be had: refresh here rather than not at all.
            Err(_) => {
                drop(slot);
                job();
            }
        }
    }
}

/// Calls need the result to travel between processes as bytes.
impl<R: MemoValue, C: Codec> Memo<'_, R, C> {
    /// The memoized result for `args`, computing it with `f` on a miss (once across all
    /// processes at a time), with this handle's options.
    pub fn call<A: Serialize + ?Sized>(&self, args: &A, f: impl FnOnce() -> R) -> Result<R> {
        self.try_call(args, || Ok::<R, std::convert::Infallible>(f()))
            .map_err(|e| match e {
                ComputeError::Cache(e) => e,
                ComputeError::Compute(never) => match never {},
            })
    }

    /// Like [`call`](Memo::call) for a fallible function: errors are returned and not stored.
    pub fn try_call<A: Serialize + ?Sized, E>(
        &self,
        args: &A,
        f: impl FnOnce() -> std::result::Result<R, E>,
    ) -> std::result::Result<R, ComputeError<E>> {
        self.try_call_with(args, &self.opts, f)
    }

    /// Like [`try_call`](Memo::try_call) with options for this call only (skip or
    /// overwrite the cache, a maximum age, ...).
    pub fn try_call_with<A: Serialize + ?Sized, E>(
        &self,
        args: &A,
        opts: &ComputeOptions,
        f: impl FnOnce() -> std::result::Result<R, E>,
    ) -> std::result::Result<R, ComputeError<E>> {
        let key = self.key(args)?;
        let skip = self.dont_cache_if;
        let codec = &self.codec;
        let (v, _) = self.cache.compute_core(
            &key,
            self.scope(),
            opts,
            || {
                let v = f()?;
                let bytes = if skip.is_some_and(|p| p(&v)) {
                    None
                } else {
                    codec.encode(&v).ok()
                };
                Ok((v, bytes))
            },
            |p| codec.decode(&p).ok(),
        )?;
        Ok(v)
    }

    /// The stored result for `args` if there is a fresh one (counted as a hit), else
    /// `None` (nothing counted): a hit path for bindings that build the computation only
    /// on a miss, then call [`try_call`](Memo::try_call). A stale result is `None` too.
    ///
    /// ```
    /// use shmemcache::{Cache, Memo};
    /// let cache = Cache::open("memo-lookup-doc")?;
    /// let double: Memo<u64> = Memo::new(&cache, "doc::double");
    /// assert_eq!(double.lookup(&(4,))?, None);
    /// double.call(&(4,), || 8)?;
    /// assert_eq!(double.lookup(&(4,))?, Some(8));
    /// assert_eq!(double.stats().hits, 1);
    /// # Cache::unlink("memo-lookup-doc")?;
    /// # Ok::<(), shmemcache::Error>(())
    /// ```
    pub fn lookup<A: Serialize + ?Sized>(&self, args: &A) -> Result<Option<R>> {
        if self.opts.skip_cache || self.opts.overwrite {
            return Ok(None);
        }
        let key = self.key(args)?;
        // Results up to a few hundred bytes are read without a heap copy.
        let mut buf = [0u8; 512];
        let found = match self.cache.get_into_as(&key, &mut buf, false) {
            Ok(Some(n)) => {
                fresh_payload(&buf[..n], &self.opts).and_then(|p| self.codec.decode(p).ok())
            }
            Ok(None) => None,
            Err(Error::BufferTooSmall { .. }) => match self.cache.memo_read(&key, &self.opts)? {
                Found::Fresh(p) => self.codec.decode(&p).ok(),
                _ => None,
            },
            Err(e) => return Err(e),
        };
        if found.is_some() {
            self.cache.tally(self.scope(), memo_stat::HITS);
        }
        Ok(found)
    }

    /// Stores `value` as the result for `args`, as if just computed.
    pub fn precache<A: Serialize + ?Sized>(&self, args: &A, value: &R) -> Result<()> {
        let key = self.key(args)?;
        let bytes = self.codec.encode(value)?;
        self.cache.memo_put(&key, &bytes, &self.opts, self.scope())
    }
}
