//! A Redis (or Valkey) tier under a shmemcache segment, for fleets of more than one
//! machine.
//!
//! Every machine keeps its shared-memory cache as L1: a hit costs what a plain
//! shmemcache get costs. Redis is L2 and the point of agreement between machines:
//!
//! - **Read-through.** An L1 miss reads Redis (`GET` and `PTTL` in one `MULTI`) and fills
//!   L1 with the remaining TTL, capped by [`TierOptions::l1_ttl`], which bounds how stale
//!   an L1 copy can be if an invalidation is lost.
//! - **Write-through.** A set is `SET ... PX` and a `PUBLISH` of an invalidation, in one
//!   Lua script (one round trip, atomic); a delete is `DEL` and the same publish.
//! - **Invalidation fan-out.** One process per machine, elected through the cache's own
//!   lock (so a dead subscriber's lock passes to another process at once), subscribes to
//!   the tier's channel and drops the keys other machines changed from the shared L1.
//! - **Connection loss.** Without Redis, L1 hits are still served (within `l1_ttl`), and
//!   misses and writes return [`TierError::Redis`]: a cache that errors is better than
//!   one that silently diverges. When the subscription is re-established, every L1 entry
//!   of the tier is dropped (a namespace generation bump, O(1)), since invalidations may
//!   have been missed meanwhile; [`TierStats::resubscribed`] counts it.
//!
//! ```no_run
//! use shmemcache::Cache;
//! use shmemcache_redis::{TierOptions, Tiered};
//! use std::time::Duration;
//!
//! let cache = Cache::open("myapp")?;
//! let tier = Tiered::new(&cache, "redis://10.0.0.5/", TierOptions::new("sessions"))?;
//! tier.set(b"user:1", b"alice", Some(Duration::from_secs(300)))?; // every machine sees it
//! assert_eq!(tier.get(b"user:1")?.as_deref(), Some(&b"alice"[..]));
//! # Ok::<(), shmemcache_redis::TierError>(())
//! ```

/// The script `$code`, hashed once per process (`EVALSHA` names it by its SHA-1).
macro_rules! lua {
    ($code:expr) => {{
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        SCRIPT.get_or_init(|| redis::Script::new($code))
    }};
}

mod coord;
mod memo;
mod message;
mod subscriber;
mod typed;

pub use coord::{RemoteLockGuard, RemoteOnceBusy, RemotePool, RemoteSlot};
pub use memo::{RemoteCompute, RemoteComputeError};
pub use typed::TieredTyped;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use message::Invalidation;
use shmemcache::Cache;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// The shared-memory cache failed.
    #[error(transparent)]
    Cache(#[from] shmemcache::Error),
    /// Redis could not be reached, or refused the command. Writes are not applied to
    /// L1 when this is returned (and the key's L1 copy is dropped).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// An option is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A lock across machines is held (and the caller did not wait, or waited its whole
    /// bound), or a `once` body runs elsewhere.
    #[error("busy: {0}")]
    Busy(String),
}

/// Result alias.
pub type Result<T, E = TierError> = std::result::Result<T, E>;

/// How a [`Tiered`] cache behaves. Built with chained setters.
#[derive(Clone, Debug)]
pub struct TierOptions {
    name: String,
    key_prefix: String,
    l1_ttl: Duration,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl TierOptions {
    /// Options for the tier `name`: its L1 namespace (`tier:NAME`), its invalidation
    /// channel (`shmemcache:inv:NAME`) and its subscriber lock. Every machine sharing the
    /// data must use the same name.
    pub fn new(name: &str) -> TierOptions {
        TierOptions {
            name: name.to_string(),
            key_prefix: String::new(),
            l1_ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_millis(250),
            io_timeout: Duration::from_secs(1),
        }
    }

    /// A prefix put before every key in Redis (default none).
    pub fn key_prefix(mut self, p: &str) -> Self {
        self.key_prefix = p.to_string();
        self
    }

    /// The longest an L1 copy lives (default 10 s): how stale a machine can read if an
    /// invalidation is lost.
    pub fn l1_ttl(mut self, d: Duration) -> Self {
        self.l1_ttl = d;
        self
    }

    /// How long connecting to Redis may take before the operation fails (default 250 ms).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long one Redis command may take (default 1 s).
    pub fn io_timeout(mut self, d: Duration) -> Self {
        self.io_timeout = d;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.name.len() > 200 {
            return Err(TierError::InvalidArgument(format!(
                "tier name of {} bytes (1 to 200 allowed)",
                self.name.len()
            )));
        }
        for (what, d) in [
            ("l1_ttl", self.l1_ttl),
            ("connect_timeout", self.connect_timeout),
            ("io_timeout", self.io_timeout),
        ] {
            if d.is_zero() {
                return Err(TierError::InvalidArgument(format!(
                    "{what} must not be zero"
                )));
            }
        }
        Ok(())
    }
}

/// Counters of a tier on this machine: every process's, kept in the segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Gets served by L1 (the hits of the tier's L1 namespace).
    pub l1_hits: u64,
    /// Gets that missed L1 and found the key in Redis.
    pub l2_hits: u64,
    /// Gets found in neither.
    pub misses: u64,
    /// Sets and deletes applied.
    pub writes: u64,
    /// Operations that failed because of Redis.
    pub redis_errors: u64,
    /// Invalidations from other machines applied to this machine's L1.
    pub invalidations: u64,
    /// Times this machine's subscriber (re)subscribed after losing its connection, each
    /// dropping the tier's L1 entries.
    pub resubscribed: u64,
    /// Times a process of this machine became its subscriber.
    pub elections: u64,
    /// The process listening for this machine's invalidations now, if any.
    pub subscriber_pid: Option<u32>,
}

/// Machine-wide counters, in the tier's meta namespace. (L1 hits are the L1 namespace's
/// own hit count: an L1 hit writes nothing more than a plain get does.)
pub(crate) mod stat {
    pub const L2_HITS: &[u8] = b"stat:l2-hits";
    pub const MISSES: &[u8] = b"stat:misses";
    pub const WRITES: &[u8] = b"stat:writes";
    pub const REDIS_ERRORS: &[u8] = b"stat:redis-errors";
    pub const INVALIDATIONS: &[u8] = b"stat:invalidations";
    pub const RESUBSCRIBED: &[u8] = b"stat:resubscribed";
    pub const ELECTIONS: &[u8] = b"stat:elections";
    pub const SUBSCRIBER: &[u8] = b"stat:subscriber";
}

/// Stripes of the fill sequence (see [`Inner::stripe`]).
const STRIPES: u64 = 16;

/// A cache with a shared-memory L1 on this machine and Redis underneath. Cheap to share
/// between threads; one per process and tier is enough.
pub struct Tiered {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The tier's L1 entries: a namespace, so dropping them all is one generation bump.
    pub(crate) l1: Cache,
    /// Fill sequences and machine-wide counters (not dropped with L1).
    pub(crate) meta: Cache,
    pub(crate) client: redis::Client,
    pub(crate) opts: TierOptions,
    pub(crate) channel: String,
    /// Who this L1 is, in invalidation messages: boot id, segment name, creation time.
    pub(crate) origin: Vec<u8>,
    /// This process's command connection, with the pid that opened it.
    conn: Mutex<Option<(u32, redis::Connection)>>,
    /// The process whose subscriber thread runs (0: none started).
    pub(crate) started_in: AtomicU32,
    pub(crate) stop: AtomicBool,
    pub(crate) subscribed: AtomicBool,
    pub(crate) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Tiered {
    /// A tier over `cache` (any handle on the segment) and the Redis at `redis_url`
    /// (`redis://host:port/db`, `unix:///path/to/redis.sock`, ...). Starts this process's
    /// subscriber thread, which becomes the machine's subscriber when no other process
    /// holds that role. Does not connect to Redis yet: an unreachable Redis shows up as
    /// errors of the operations that need it.
    pub fn new(cache: &Cache, redis_url: &str, opts: TierOptions) -> Result<Tiered> {
        opts.validate()?;
        let client = redis::Client::open(redis_url)?;
        let l1 = cache.namespace(&format!("tier:{}", opts.name))?;
        let meta = cache.namespace(&format!("tier-meta:{}", opts.name))?;
        let info = cache.info();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let origin = format!("{}/{}/{}", boot.trim(), info.name, info.created_unix_ns).into_bytes();
        let inner = Arc::new(Inner {
            l1,
            meta,
            client,
            channel: format!("shmemcache:inv:{}", opts.name),
            opts,
            origin,
            conn: Mutex::new(None),
            started_in: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let t = Tiered { inner };
        t.inner.ensure_subscriber();
        Ok(t)
    }

    /// The value of `key`: from L1, else from Redis (filling L1), else `None`.
    // Not inlined: measured, a caller that inlines it copies the returned vector through
    // a 16-byte load that stalls on the callee's 8-byte stores (+5 to 9 ns a hit).
    #[inline(never)]
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.inner.l1.get(key)? {
            return Ok(Some(v));
        }
        // A forked child starts its own subscriber thread on first use.
        self.inner.ensure_subscriber();
        self.inner.read_through(key)
    }

    /// Stores `value` in Redis (expiring after `ttl`, or never) and in this machine's L1,
    /// and tells every other machine to drop its copy. On a Redis error nothing is
    /// stored in L1 and the error is returned.
    pub fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.inner.ensure_subscriber();
        self.inner.write(key, Some((value, ttl))).map(|_| ())
    }

    /// Deletes `key` from Redis and from every machine's L1; true if Redis had it.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.inner.ensure_subscriber();
        self.inner.write(key, None)
    }

    /// The counters.
    pub fn stats(&self) -> Result<TierStats> {
        let i = &self.inner;
        let shared = |k: &[u8]| -> Result<u64> { Ok(i.meta.incr(k, 0)?.max(0) as u64) };
        let pid = shared(stat::SUBSCRIBER)? as u32;
        Ok(TierStats {
            l1_hits: i.l1.get_counts()?.hits,
            l2_hits: shared(stat::L2_HITS)?,
            misses: shared(stat::MISSES)?,
            writes: shared(stat::WRITES)?,
            redis_errors: shared(stat::REDIS_ERRORS)?,
            invalidations: shared(stat::INVALIDATIONS)?,
            resubscribed: shared(stat::RESUBSCRIBED)?,
            elections: shared(stat::ELECTIONS)?,
            subscriber_pid: (pid != 0).then_some(pid),
        })
    }

    /// Whether this process is the machine's subscriber and listening now.
    pub fn is_subscriber(&self) -> bool {
        self.inner.subscribed.load(Ordering::Relaxed)
    }

    /// The machine's shared-memory L1 of this tier (a namespace of the segment).
    pub fn l1(&self) -> &Cache {
        &self.inner.l1
    }
}

impl std::fmt::Debug for Tiered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiered")
            .field("name", &self.inner.opts.name)
            .field("channel", &self.inner.channel)
            .field("subscriber", &self.is_subscriber())
            .finish_non_exhaustive()
    }
}

impl Drop for Tiered {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        let handle = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // Only this process's own thread can be joined (a forked child has none).
        if self.inner.started_in.load(Ordering::Relaxed) == std::process::id() {
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
    }
}

/// `SET key value [PX ms]` then `PUBLISH channel message`, atomically.
const SET_AND_PUBLISH: &str = r"
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// `DEL key` then `PUBLISH channel message`, atomically; returns what `DEL` returned.
const DEL_AND_PUBLISH: &str = r"
local n = redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
";

impl Inner {
    pub(crate) fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.opts.key_prefix.len() + key.len());
        k.extend_from_slice(self.opts.key_prefix.as_bytes());
        k.extend_from_slice(key);
        k
    }

    /// The fill-sequence stripe of `key`. Every change to a key's L1 copy (a local write,
    /// an applied invalidation) first bumps its stripe; a fill or a write re-reads the
    /// stripe after touching L1 and drops what it stored if the stripe moved meanwhile,
    /// so a value read from Redis before a change can never outlive that change in L1.
    fn stripe(key: &[u8]) -> Vec<u8> {
        // FNV-1a: stable across builds and processes.
        let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        format!("seq:{}", h % STRIPES).into_bytes()
    }

    fn seq(&self, stripe: &[u8]) -> Result<i64> {
        self.ensure_stripe(stripe)?;
        Ok(self.meta.incr(stripe, 0)?)
    }

    pub(crate) fn bump(&self, key: &[u8]) -> Result<i64> {
        let stripe = Self::stripe(key);
        self.ensure_stripe(&stripe)?;
        Ok(self.meta.incr(&stripe, 1)?)
    }

    /// Creates a missing stripe at a random number, not at 0: a stripe is an ordinary
    /// entry that the segment may evict, and one evicted and re-created between a fill's
    /// two reads must not come back to the number the fill read first.
    fn ensure_stripe(&self, stripe: &[u8]) -> Result<()> {
        if !self.meta.contains(stripe)? {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write(stripe);
            // 2^47 starting points, and room for 2^62 bumps after any of them.
            let start = h.finish() >> 17;
            // Another process may have created it meanwhile: its number serves as well.
            let _ = self.meta.add(stripe, start.to_string().as_bytes());
        }
        Ok(())
    }

    /// Adds one to machine-wide counter `which`. (A counter that cannot be bumped, on a
    /// cache that fails, is not worth failing the operation it counts.)
    fn count(&self, which: &[u8]) {
        let _ = self.meta.incr(which, 1);
    }

    /// Runs `f` on this process's connection, opening it if needed; drops a connection
    /// that failed, so the next operation reconnects.
    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let pid = std::process::id();
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(slot.as_ref(), Some((p, _)) if *p == pid) {
            // A connection inherited across fork() shares its socket with the parent:
            // never used here (dropping it closes only this process's descriptor).
            *slot = None;
            match self.connect() {
                Ok(c) => *slot = Some((pid, c)),
                Err(e) => {
                    self.count(stat::REDIS_ERRORS);
                    return Err(e.into());
                }
            }
        }
        let (_, conn) = slot.as_mut().expect("connected above");
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.count(stat::REDIS_ERRORS);
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                {
                    *slot = None;
                }
                Err(e.into())
            }
        }
    }

    pub(crate) fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let c = self
            .client
            .get_connection_with_timeout(self.opts.connect_timeout)?;
        c.set_read_timeout(Some(self.opts.io_timeout))?;
        c.set_write_timeout(Some(self.opts.io_timeout))?;
        Ok(c)
    }

    fn read_through(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let stripe = Self::stripe(key);
        let before = self.seq(&stripe)?;
        let rk = self.redis_key(key);
        let (value, pttl): (Option<Vec<u8>>, i64) = self.with_conn(|c| {
            redis::pipe()
                .atomic()
                .cmd("GET")
                .arg(&rk)
                .cmd("PTTL")
                .arg(&rk)
                .query(c)
        })?;
        let Some(value) = value else {
            self.count(stat::MISSES);
            return Ok(None);
        };
        self.count(stat::L2_HITS);
        // -1: no expiry in Redis; -2: gone since the GET, 0: about to go (served, not
        // kept).
        if pttl == 0 || pttl < -1 {
            return Ok(Some(value));
        }
        let mut ttl = self.opts.l1_ttl;
        if pttl > 0 {
            ttl = ttl.min(Duration::from_millis(pttl as u64));
        }
        // A value L1 cannot hold (too large) is served without being kept.
        if self.l1.set_ttl(key, &value, Some(ttl)).is_ok() && self.seq(&stripe)? != before {
            self.l1.delete(key)?;
        }
        Ok(Some(value))
    }

    /// A set (`Some((value, ttl))`) or a delete (`None`), through Redis, then L1.
    fn write(&self, key: &[u8], change: Option<(&[u8], Option<Duration>)>) -> Result<bool> {
        if let Some((_, Some(t))) = change {
            if t.is_zero() {
                return Err(shmemcache::Error::ZeroTtl.into());
            }
        }
        let stripe = Self::stripe(key);
        let before = self.seq(&stripe)?;
        let rk = self.redis_key(key);
        let msg = message::encode(&self.origin, &Invalidation::Key(key));
        let res = self.with_conn(|c| match change {
            Some((value, ttl)) => {
                let px = ttl.map_or(0, |t| t.as_millis().max(1) as u64);
                lua!(SET_AND_PUBLISH)
                    .key(&rk)
                    .arg(value)
                    .arg(px)
                    .arg(&self.channel)
                    .arg(&msg)
                    .invoke::<i64>(c)
                    .map(|_| true)
            }
            None => lua!(DEL_AND_PUBLISH)
                .key(&rk)
                .arg(&self.channel)
                .arg(&msg)
                .invoke::<i64>(c)
                .map(|n| n > 0),
        });
        let done = match res {
            Ok(done) => done,
            Err(e) => {
                // The command may or may not have reached Redis: this machine's copy is
                // no longer known to be current.
                self.bump(key)?;
                self.l1.delete(key)?;
                return Err(e);
            }
        };
        self.count(stat::WRITES);
        let mine = self.bump(key)?;
        match change {
            Some((value, ttl)) => {
                let l1_ttl = ttl.map_or(self.opts.l1_ttl, |t| t.min(self.opts.l1_ttl));
                // A value L1 cannot hold (too large) leaves L1's older copy in place:
                // that copy must go. So must ours if someone else changed the key
                // between our Redis write and our L1 store (which is newer is unknown).
                let stored = self.l1.set_ttl(key, value, Some(l1_ttl)).is_ok();
                if !stored || mine != before + 1 || self.seq(&stripe)? != mine {
                    self.l1.delete(key)?;
                }
            }
            None => {
                self.l1.delete(key)?;
            }
        }
        Ok(done)
    }
}
