//! The public handle: [`Cache`] and its [`Options`].

use crate::clock::monotonic_ns;
use crate::error::{Error, Result};
use crate::fault::{self, FaultPoint};
use crate::layout::{Geometry, ShardMeta};
use crate::name::validate_name;
use crate::namespace::Routed;
use crate::sys::fork;
use crate::sys::robust::LockError;
use crate::sys::segment::{OpenMode, OpenParams, Segment};
use crate::table::{
    key_hash, tagged_key_hash, CheckScratch, Deadline, Incr, Now, RepairReport, ShardView,
    StoreMode, Stored, TableError,
};
use std::collections::VecDeque;
use std::time::Duration;

/// How to create (or what to expect when joining) a segment, and per-handle settings.
///
/// Geometry settings apply only when this call creates the segment; a joiner adopts the
/// creator's geometry and [`Cache::adopted`] lists where it differs from what was asked.
///
/// ```no_run
/// use shmemcache::Options;
/// use std::time::Duration;
///
/// let cache = Options::new()
///     .capacity_bytes(256 << 20)
///     .max_entries(1_000_000)
///     .default_ttl(Some(Duration::from_secs(300)))
///     .open("sessions")?;
/// # Ok::<(), shmemcache::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    capacity_bytes: u64,
    max_entries: Option<u64>,
    shards: u32,
    chunk_size: u32,
    max_key_len: u32,
    max_value_len: Option<u32>,
    default_ttl: Option<Duration>,
    mode: u32,
    lock_timeout: Duration,
    init_timeout: Duration,
    checksums: bool,
    allow_foreign_owner: bool,
    coord_slots: u32,
    liveness_interval: Duration,
    persist: Option<crate::persist::Persistence>,
    recency: Recency,
}

/// How gets keep recency ([`Options::recency`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recency {
    /// A get marks its entry accessed (one store, only if not marked yet); eviction walks
    /// from the LRU tail and moves an entry accessed since it was placed to the head
    /// instead of evicting it, clearing the mark (lazy promotion, "second chance", as
    /// memcached does). An entry read since it was last placed is never evicted before one
    /// that has not been.
    #[default]
    Lazy,
    /// Every get moves its entry to the head of the LRU list: strict LRU order, at the
    /// cost of writing three records' links per get.
    Exact,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            capacity_bytes: 64 << 20,
            max_entries: None,
            shards: 16,
            chunk_size: 64,
            max_key_len: 1024,
            max_value_len: None,
            default_ttl: None,
            mode: 0o600,
            lock_timeout: Duration::from_secs(1),
            coord_slots: crate::layout::DEFAULT_COORD_SLOTS,
            liveness_interval: Duration::from_millis(10),
            init_timeout: Duration::from_secs(10),
            checksums: false,
            allow_foreign_owner: false,
            persist: None,
            recency: Recency::Lazy,
        }
    }
}

impl Options {
    /// Defaults: a 64 MiB budget, 16 shards, 64-byte chunks, keys up to 1 KiB, values up
    /// to 1 MiB, no default TTL, mode 0600, 1 s lock timeout.
    pub fn new() -> Options {
        Options::default()
    }
    /// The space budget: the bytes of all shards together (entries, their records, the
    /// index and the chunk links), split evenly across shards. The segment is this plus a
    /// fixed overhead that does not grow with it: 512 bytes of header, the coordination
    /// table (68 bytes per [`coord_slots`](Self::coord_slots) slot plus 64), 8 KiB of memo
    /// statistics and 33 KiB of namespace table, about 110 KiB with the defaults
    /// ([`Info::fixed_overhead_bytes`]).
    ///
    /// Nothing is reserved per entry: an entry takes its 32-byte record and its key and
    /// value bytes, rounded up to whole chunks, so the budget holds as many entries as
    /// their sizes allow. With default options and 16-byte keys, after churn, 56 % of it
    /// holds live key and value bytes with 100 B values, 88 % with 1 KiB values and 89 %
    /// with values of 1 B to 4 KiB (`cargo run --release --example fill`).
    pub fn capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity_bytes = bytes;
        self
    }
    /// Most entries held (rounded up to a multiple of the shard count). Default: as many as
    /// fit in the budget. A limit above one entry per chunk is lowered to that: it could
    /// never be reached.
    ///
    /// The limit, like the LRU order, is kept **per shard**: each shard holds
    /// `max_entries / shards` entries and evicts its own least recently used one when full,
    /// so with several shards an entry can be evicted while a less recently used one
    /// survives in another shard. With `shards(1)` both are exact for the whole cache.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self
    }
    /// Number of independently locked shards (1..=4096; default 16). More shards let more
    /// processes work at once; each keeps its own share of `max_entries` and its own LRU
    /// order (see [`max_entries`](Self::max_entries)).
    pub fn shards(mut self, n: u32) -> Self {
        self.shards = n;
        self
    }
    /// Arena chunk size in bytes (a multiple of 8 in 48..=65536; default 64). An entry
    /// takes whole chunks: its 32-byte record, key and value, chained. Larger chunks mean
    /// fewer links to follow and 4-byte links spread over more bytes, but more space lost
    /// in each entry's last chunk; the default suits entries from tens of bytes to a few
    /// KiB. An entry that fits one chunk is overwritten in place.
    pub fn chunk_size(mut self, n: u32) -> Self {
        self.chunk_size = n;
        self
    }
    /// Longest key accepted (at most 65535).
    pub fn max_key_len(mut self, n: u32) -> Self {
        self.max_key_len = n;
        self
    }
    /// Longest value accepted. Default: 1 MiB, or less if a shard is small (an entry must
    /// fit twice in one shard's chunks, so a store never fails from lack of room).
    pub fn max_value_len(mut self, n: u32) -> Self {
        self.max_value_len = Some(n);
        self
    }
    /// Store a checksum (8 bytes, xxh3) of every entry's key and value, verified on every
    /// read: an entry whose bytes were damaged is dropped and read as a miss (counted in
    /// `ShardStats::checksum_failures`), never returned. Off by default; fixed at creation
    /// (joiners adopt it). Costs the hash of the value on each read and write.
    pub fn checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }
    /// TTL that `set`, `add`, `replace` and `incr` (on a new key) apply. `None`: no expiry.
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }
    /// File mode of a new segment (default `0o600`: this user only).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }
    /// How long an operation waits for a shard lock before `Error::LockTimeout`.
    pub fn lock_timeout(mut self, t: Duration) -> Self {
        self.lock_timeout = t;
        self
    }
    /// How long opening waits for another process to finish creating the segment.
    pub fn init_timeout(mut self, t: Duration) -> Self {
        self.init_timeout = t;
        self
    }
    /// Slots in the coordination table: single-flight markers, named locks and pool
    /// slots held at one time across all processes (default 1024, 64 bytes each).
    pub fn coord_slots(mut self, n: u32) -> Self {
        self.coord_slots = n;
        self
    }
    /// How often a process waiting on a lock, pool or computation checks that the holder
    /// is still alive (default 10 ms). Waiters are woken by releases at once; this bounds
    /// only how long a holder killed with `kill -9` goes unnoticed.
    pub fn liveness_interval(mut self, t: Duration) -> Self {
        self.liveness_interval = t;
        self
    }
    /// Keeps the cache on disk: the default namespace, and every namespace opened through
    /// the handle with [`Cache::namespace`], become persistent namespaces with `p` (a
    /// directory, or a [`Persistence`](crate::Persistence) with hooks and autosync rule).
    /// When this call creates the segment (after a reboot, say), the default namespace
    /// warm-starts from its last snapshot; see [`Cache::persistent_namespace`].
    ///
    /// ```no_run
    /// let cache = shmemcache::Options::new().persist("/var/lib/app/cache").open("app")?;
    /// cache.set(b"k", b"v")?; // saved by autosync's rule
    /// # Ok::<(), shmemcache::Error>(())
    /// ```
    pub fn persist(mut self, p: impl Into<crate::persist::Persistence>) -> Self {
        self.persist = Some(p.into());
        self
    }
    /// How gets keep recency (default [`Recency::Lazy`]). Fixed at creation; joiners adopt
    /// it.
    pub fn recency(mut self, r: Recency) -> Self {
        self.recency = r;
        self
    }
    /// Join segments owned by another user (refused by default).
    pub fn allow_foreign_owner(mut self, yes: bool) -> Self {
        self.allow_foreign_owner = yes;
        self
    }

    /// The geometry these options create.
    pub(crate) fn geometry(&self) -> Result<Geometry> {
        let bad = |m: String| Error::InvalidArgument(m);
        if self.shards == 0 {
            return Err(bad("shards must be at least 1".into()));
        }
        if self.max_entries == Some(0) {
            return Err(bad("max_entries must be at least 1".into()));
        }
        let shards = self.shards as u64;
        let cs = self.chunk_size;
        if cs % 8 != 0 || !(crate::layout::MIN_CHUNK..=crate::layout::MAX_CHUNK).contains(&cs) {
            return Err(bad(format!(
                "chunk size {cs} is not a multiple of 8 in {}..={}",
                crate::layout::MIN_CHUNK,
                crate::layout::MAX_CHUNK
            )));
        }
        // The budget is the shards' bytes: chunks, records, index and links all come out
        // of it. Nothing is reserved per entry, so it holds as many entries as fit.
        let per_shard = self.capacity_bytes / shards;
        let cap_asked = self
            .max_entries
            .map(|n| n.div_ceil(shards).min(u32::MAX as u64) as u32);
        let chunks = crate::layout::chunks_within(per_shard, cs, cap_asked.unwrap_or(u32::MAX));
        let trailer = if self.checksums { 8 } else { 0 };
        // The longest entry must fit twice in a shard (see `Geometry::new`).
        let room = (chunks as u64 / 2) * cs as u64;
        let longest =
            room.saturating_sub((crate::layout::REC_LEN + crate::layout::TAG_LEN) as u64 + trailer);
        let max_value = match self.max_value_len {
            Some(v) => v,
            None => longest.saturating_sub(self.max_key_len as u64).min(1 << 20) as u32,
        };
        if chunks < 2 || max_value == 0 {
            return Err(bad(format!(
                "capacity of {} bytes over {} shards leaves no room for values (keys up to \
                 {} bytes)",
                self.capacity_bytes, self.shards, self.max_key_len
            )));
        }
        // Every entry takes at least one chunk: a larger limit could never be reached.
        let cap = cap_asked.map_or(chunks, |c| c.clamp(1, chunks));
        let ttl = match self.default_ttl {
            Some(d) => ttl_ns(d)?,
            None => 0,
        };
        let seed = random_seed();
        Geometry::new(
            self.shards,
            cap,
            chunks,
            cs,
            self.max_key_len,
            max_value,
            ttl,
            seed,
        )
        .and_then(|g| g.with_coord_slots(self.coord_slots))
        .and_then(|g| g.with_checksums(self.checksums))
        .map(|mut g| {
            g.exact_lru = self.recency == Recency::Exact;
            g
        })
        .map_err(bad)
    }

    fn open_with(&self, name: &str, mode: OpenMode) -> Result<Cache> {
        validate_name(name)?;
        if self.lock_timeout.is_zero() || self.liveness_interval.is_zero() {
            return Err(Error::InvalidArgument(
                "lock_timeout and liveness_interval must be positive".into(),
            ));
        }
        let geometry = self.geometry()?;
        let params = OpenParams {
            mode,
            geometry,
            perm: self.mode,
            allow_foreign_owner: self.allow_foreign_owner,
            init_timeout: self.init_timeout,
        };
        let seg = Segment::open(name, &params)?;
        let adopted = if seg.created() {
            Vec::new()
        } else {
            differences(&geometry, seg.geometry())
        };
        let created = seg.created();
        let mut cache =
            Cache::from_segment(seg, self.lock_timeout, self.liveness_interval, adopted);
        if let Some(p) = &self.persist {
            cache.make_persistent("", p.clone(), created)?;
            cache.auto_persist = Some(std::sync::Arc::new(p.clone()));
        }
        Ok(cache)
    }

    /// Joins `name`, creating it with these options if it does not exist.
    pub fn open(&self, name: &str) -> Result<Cache> {
        self.open_with(name, OpenMode::OpenOrCreate)
    }
    /// Creates `name`; `Error::AlreadyExists` if it exists.
    pub fn create(&self, name: &str) -> Result<Cache> {
        self.open_with(name, OpenMode::CreateNew)
    }
    /// Joins an existing `name`; `Error::NotFound` if there is none.
    pub fn open_existing(&self, name: &str) -> Result<Cache> {
        self.open_with(name, OpenMode::OpenExisting)
    }
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        // No urandom: still vary per segment.
        b = (crate::clock::unix_ns() ^ (std::process::id() as u64) << 32).to_le_bytes();
    }
    u64::from_le_bytes(b)
}

fn differences(asked: &Geometry, got: &Geometry) -> Vec<String> {
    let mut d = Vec::new();
    let mut cmp = |what: &str, a: u64, b: u64| {
        if a != b {
            d.push(format!("{what}: asked {a}, segment has {b}"));
        }
    };
    cmp("shards", asked.shard_count as u64, got.shard_count as u64);
    cmp(
        "entries per shard",
        asked.entry_capacity() as u64,
        got.entry_capacity() as u64,
    );
    cmp(
        "arena bytes per shard",
        asked.arena_bytes(),
        got.arena_bytes(),
    );
    cmp("chunk size", asked.chunk_size as u64, got.chunk_size as u64);
    cmp(
        "max key length",
        asked.max_key_len as u64,
        got.max_key_len as u64,
    );
    cmp(
        "max value length",
        asked.max_value_len as u64,
        got.max_value_len as u64,
    );
    cmp("default TTL (ns)", asked.default_ttl_ns, got.default_ttl_ns);
    cmp("checksums", asked.checksums as u64, got.checksums as u64);
    cmp("exact LRU", asked.exact_lru as u64, got.exact_lru as u64);
    cmp(
        "coordination slots",
        asked.coord.slots as u64,
        got.coord.slots as u64,
    );
    d
}

/// A TTL in ns. Longer than about 146 years (`u64::MAX / 4` ns) saturates: deadlines stay
/// far from overflow when added to the clock.
fn ttl_ns(d: Duration) -> Result<u64> {
    if d.is_zero() {
        return Err(Error::ZeroTtl);
    }
    Ok(d.as_nanos().min(u64::MAX as u128 / 4) as u64)
}

/// hits / (hits + misses), or 0 with neither.
pub(crate) fn hit_ratio(hits: u64, misses: u64) -> f64 {
    match hits + misses {
        0 => 0.0,
        n => hits as f64 / n as f64,
    }
}

/// Remaining lifetime of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The entry does not expire.
    Never,
    /// The entry expires after this long.
    In(Duration),
}

/// Counters of one shard, or summed over all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Lookups that found a live entry. In the totals: every hit of every process. Per
    /// shard: only the hits counted under the shard's lock (gets that take no lock, and
    /// every get of the first six named namespaces, count in their process's slot, which
    /// has no shard).
    pub hits: u64,
    /// Lookups that found nothing (totals and per shard as for `hits`).
    pub misses: u64,
    /// Values written.
    pub sets: u64,
    /// Live entries removed to make room.
    pub evictions: u64,
    /// Entries removed because they had expired.
    pub expirations: u64,
    /// Explicit removals.
    pub deletes: u64,
    /// Repairs after a dead or panicking lock holder, or detected damage.
    pub recoveries: u64,
    /// Entries held (including expired ones not yet reclaimed).
    pub entries: u64,
    /// Entry capacity.
    pub entry_capacity: u64,
    /// Key + value bytes held.
    pub bytes_used: u64,
    /// Arena bytes in use: whole chunks, records included.
    pub arena_used: u64,
    /// Bytes besides keys and values that the entries take: their 32-byte records, a
    /// 4-byte link per chunk they occupy, and the shard's hash buckets (4 bytes each).
    /// `metadata_bytes / entries` is the metadata per entry.
    pub metadata_bytes: u64,
    /// Arena capacity in bytes.
    pub arena_capacity: u64,
    /// Entries dropped on read because their checksum did not match (`Options::checksums`).
    pub checksum_failures: u64,
    /// Of `entries`, those that belong to a namespace other than the default one (or to
    /// the default one after it was invalidated).
    pub namespaced: u64,
    /// Entries reclaimed because their namespace was cleared or invalidated.
    pub invalidated: u64,
}

impl ShardStats {
    fn from_meta(m: &ShardMeta, g: &Geometry) -> ShardStats {
        let cs = g.chunk_size as u64;
        let used = (g.chunks_per_shard as u64).saturating_sub(m.free_chunks as u64);
        ShardStats {
            hits: m.hits,
            misses: m.misses,
            sets: m.sets,
            evictions: m.evictions,
            expirations: m.expirations,
            deletes: m.deletes,
            recoveries: m.recoveries,
            entries: m.len as u64,
            entry_capacity: g.entry_capacity() as u64,
            bytes_used: m.bytes_used,
            arena_used: used * cs,
            metadata_bytes: m.len as u64 * crate::layout::REC_LEN as u64
                + used * 4
                + g.buckets as u64 * 4,
            arena_capacity: g.arena_bytes(),
            checksum_failures: m.checksum_failures,
            namespaced: m.tagged as u64,
            invalidated: m.invalidated,
        }
    }

    fn add(&mut self, o: &ShardStats) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.sets += o.sets;
        self.evictions += o.evictions;
        self.expirations += o.expirations;
        self.deletes += o.deletes;
        self.checksum_failures += o.checksum_failures;
        self.namespaced += o.namespaced;
        self.invalidated += o.invalidated;
        self.recoveries += o.recoveries;
        self.entries += o.entries;
        self.entry_capacity += o.entry_capacity;
        self.bytes_used += o.bytes_used;
        self.arena_used += o.arena_used;
        self.metadata_bytes += o.metadata_bytes;
        self.arena_capacity += o.arena_capacity;
    }

    /// hits / (hits + misses), or 0 with no lookups.
    pub fn hit_ratio(&self) -> f64 {
        hit_ratio(self.hits, self.misses)
    }
}

/// Counters per shard and in total.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sum over all shards.
    pub total: ShardStats,
    /// One entry per shard.
    pub shards: Vec<ShardStats>,
}

/// What [`Cache::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// `(shard, problem)` for every shard that breaks an invariant.
    pub problems: Vec<(usize, String)>,
    /// What is wrong with the coordination table (markers, locks, pool slots), if anything.
    pub coordination: Option<String>,
    /// What is wrong with the namespace table (a name length, a dependency or a generation
    /// out of range), if anything.
    pub namespaces: Option<String>,
}

impl CheckReport {
    /// True when no problem was found.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty() && self.coordination.is_none() && self.namespaces.is_none()
    }
}

/// What [`Cache::repair`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairSummary {
    /// Entries kept across all shards.
    pub kept: u64,
    /// Entries dropped because they failed validation.
    pub dropped: u64,
    /// Shards that were damaged and rebuilt.
    pub repaired_shards: u32,
    /// Shards that had to be cleared.
    pub cleared_shards: u32,
    /// Coordination slots freed because they were damaged (`None`: the table was healthy).
    pub coordination_slots_dropped: Option<u32>,
}

/// Outcome of a successful store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetOutcome {
    /// Live entries evicted (least recently used first) to make room.
    pub evicted: u32,
}

/// Facts about the attached segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    /// Segment name.
    pub name: String,
    /// Bytes mapped.
    pub segment_bytes: u64,
    /// Layout version.
    pub layout_version: u32,
    /// Shards.
    pub shards: u32,
    /// Entry capacity (all shards).
    pub max_entries: u64,
    /// Bytes of all shards: the capacity budget as it was laid out (chunks, records, index,
    /// links, at most the `capacity_bytes` asked for).
    pub capacity_bytes: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// Longest key.
    pub max_key_len: u32,
    /// Longest value.
    pub max_value_len: u32,
    /// Default TTL.
    pub default_ttl: Option<Duration>,
    /// Creation time, ns since the Unix epoch.
    pub created_unix_ns: u64,
    /// Creator's pid.
    pub creator_pid: u32,
    /// Bytes of the segment outside the shards, not counted in `capacity_bytes`: the
    /// header and its backup (512), the coordination table (68 bytes per slot plus 64)
    /// the memo statistics (8 KiB) and the namespace table (33 KiB).
    pub fixed_overhead_bytes: u64,
    /// Coordination slots (single-flight markers, locks, pool slots held at one time).
    pub coord_slots: u32,
    /// Whether every entry carries a checksum of its key and value.
    pub checksums: bool,
    /// How gets keep recency.
    pub recency: Recency,
}

/// A handle on a shared cache. Cheap to share between threads (`Send + Sync`); each
/// process, forked or launched separately, opens its own by name.
///
/// Dropping a handle detaches: the segment stays until [`Cache::unlink`].
///
/// ```no_run
/// use shmemcache::Cache;
/// use std::time::Duration;
///
/// let cache = Cache::open("demo")?;
/// cache.set(b"greeting", b"hello")?;
/// cache.set_ttl(b"session:42", b"alice", Some(Duration::from_secs(60)))?;
/// assert_eq!(cache.get(b"greeting")?.as_deref(), Some(&b"hello"[..]));
/// # Ok::<(), shmemcache::Error>(())
/// ```
pub struct Cache {
    pub(crate) seg: std::sync::Arc<Segment>,
    pub(crate) geom: Geometry,
    pub(crate) lock_timeout: Duration,
    pub(crate) liveness_interval: Duration,
    adopted: Vec<String>,
    fork_generation: u64,
    /// The namespace this handle addresses: a slot of the namespace table, 0 = default.
    pub(crate) ns: usize,
    /// The generation this handle routes keys under, if fixed (a computation under way).
    pub(crate) pin: Option<u64>,
    /// Set on a persistent namespace's handle: its hooks and autosync.
    pub(crate) persist: Option<std::sync::Arc<crate::persist::PersistState>>,
    /// Set by [`Options::persist`]: every namespace opened through this handle persists.
    pub(crate) auto_persist: Option<std::sync::Arc<crate::persist::Persistence>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.name())
            .field("shards", &self.geom.shard_count)
            .field("inherited", &self.is_inherited())
            .finish_non_exhaustive()
    }
}

/// Entries examined per lock hold by scans (keys, flush_expired).
pub(crate) const SCAN_BATCH: u32 = 256;

impl Cache {
    fn from_segment(
        seg: Segment,
        lock_timeout: Duration,
        liveness_interval: Duration,
        adopted: Vec<String>,
    ) -> Cache {
        let geom = *seg.geometry();
        Cache {
            seg: std::sync::Arc::new(seg),
            ns: 0,
            pin: None,
            persist: None,
            auto_persist: None,
            geom,
            lock_timeout,
            liveness_interval,
            adopted,
            fork_generation: fork::generation(),
        }
    }

    /// Another handle on the same mapping and namespace (no new mapping, no syscall).
    pub(crate) fn clone_handle(&self) -> Cache {
        Cache {
            seg: std::sync::Arc::clone(&self.seg),
            geom: self.geom,
            lock_timeout: self.lock_timeout,
            liveness_interval: self.liveness_interval,
            adopted: Vec::new(),
            fork_generation: self.fork_generation,
            ns: self.ns,
            pin: self.pin,
            persist: self.persist.clone(),
            auto_persist: self.auto_persist.clone(),
        }
    }

    /// This handle, with keys routed under the namespace's current generation from now
    /// on, whatever invalidations follow.
    pub(crate) fn pinned(&self) -> Cache {
        let mut c = self.clone_handle();
        c.pin = Some(self.route_generation());
        c
    }

    /// The generation keys are routed under: the pinned one, else the current one.
    #[inline]
    pub(crate) fn route_generation(&self) -> u64 {
        self.pin.unwrap_or_else(|| self.generation())
    }

    /// Joins `name`, creating it with default [`Options`] if missing.
    pub fn open(name: &str) -> Result<Cache> {
        Options::new().open(name)
    }

    /// Joins an existing `name` with default per-handle settings.
    pub fn open_existing(name: &str) -> Result<Cache> {
        Options::new().open_existing(name)
    }

    /// Removes the segment's name. Attached processes keep working on their mapping; the
    /// memory is freed when the last one detaches.
    pub fn unlink(name: &str) -> Result<()> {
        validate_name(name)?;
        Segment::unlink(name)
    }

    /// The offline repair behind `shmemcache repair --force NAME`, for damage that makes
    /// opening or locking fail with a `Corrupted` error: restores a damaged header from its
    /// backup copy (or a damaged backup from a sound header), and re-initializes lock words
    /// that are no longer a robust mutex's, marking the shard (or coordination table) they
    /// guard dirty so its next user repairs it. Refused with `Error::Busy` while any other
    /// process has the segment mapped. Returns what it fixed (empty: nothing was wrong).
    pub fn force_repair(name: &str) -> Result<Vec<String>> {
        validate_name(name)?;
        Segment::force_repair(name)
    }

    /// The segment name.
    pub fn name(&self) -> &str {
        self.seg.name()
    }

    /// True if this handle created the segment.
    pub fn created(&self) -> bool {
        self.seg.created()
    }

    /// Where the joined segment's geometry differs from what this handle's options asked
    /// for (empty if it created the segment or everything matched).
    pub fn adopted(&self) -> &[String] {
        &self.adopted
    }

    /// True when this handle was opened before a `fork()` and is now used in the child.
    pub fn is_inherited(&self) -> bool {
        fork::generation() != self.fork_generation
    }

    /// Geometry and identity of the segment.
    pub fn info(&self) -> Info {
        let g = &self.geom;
        let h = self.seg.header();
        Info {
            name: self.name().to_string(),
            segment_bytes: g.total_size as u64,
            layout_version: h.layout_version,
            shards: g.shard_count,
            max_entries: g.entry_capacity() as u64 * g.shard_count as u64,
            capacity_bytes: g.shard.stride as u64 * g.shard_count as u64,
            chunk_size: g.chunk_size,
            max_key_len: g.max_key_len,
            max_value_len: g.max_value_len,
            default_ttl: (g.default_ttl_ns != 0).then(|| Duration::from_nanos(g.default_ttl_ns)),
            created_unix_ns: h.created_unix_ns,
            creator_pid: h.creator_pid,
            fixed_overhead_bytes: g.fixed_overhead_bytes(),
            coord_slots: g.coord.slots,
            checksums: g.checksums,
            recency: if g.exact_lru {
                Recency::Exact
            } else {
                Recency::Lazy
            },
        }
    }

    // ----- locking ------------------------------------------------------------------------

    /// Runs `op` on shard `shard` under its lock. Repairs first if the previous holder died
    /// or left the shard dirty; repairs and retries once if `op` finds damage.
    #[inline]
    pub(crate) fn with_shard<R>(
        &self,
        shard: usize,
        mut op: impl FnMut(&mut ShardView) -> Result<R, TableError>,
    ) -> Result<R> {
        let mut guard = match self.seg.lock_shard(shard, self.lock_timeout) {
            Ok(g) => g,
            Err(e) => return Err(self.lock_error(shard, e)),
        };
        let died = guard.owner_died();
        let region = guard.region();
        let marks = self.seg.shard_marks(shard);
        let mut view = match ShardView::open(region, marks, &self.geom, self.seg.ns_gens()) {
            Ok(v) => v,
            Err(e) => return Err(self.corrupted(e)),
        };
        if died || view.meta.dirty != 0 {
            Self::recover(&mut view);
        }
        view.meta.dirty = 1;
        fault::hit(FaultPoint::LockHeld);
        let result = match op(&mut view) {
            Err(TableError::Corrupt(_)) => self.repair_and_retry(&mut view, op),
            other => other,
        };
        view.meta.dirty = 0;
        result.map_err(|e| self.corrupted(e))
    }

    /// `op` found damage: repair the shard and run it once more (repairing again if it
    /// still finds damage, so the shard is left consistent either way).
    #[cold]
    #[inline(never)]
    fn repair_and_retry<R>(
        &self,
        view: &mut ShardView,
        mut op: impl FnMut(&mut ShardView) -> Result<R, TableError>,
    ) -> Result<R, TableError> {
        Self::recover(view);
        view.meta.dirty = 1;
        let result = op(view);
        if matches!(result, Err(TableError::Corrupt(_))) {
            Self::recover(view);
        }
        result
    }

    #[cold]
    fn recover(view: &mut ShardView) -> RepairReport {
        view.meta.dirty = 1;
        let report = view.repair();
        view.meta.recoveries += 1;
        view.meta.dirty = 0;
        report
    }

    #[cold]
    fn lock_error(&self, shard: usize, e: LockError) -> Error {
        match e {
            LockError::Timeout => Error::LockTimeout {
                shard,
                waited: self.lock_timeout,
            },
            LockError::NotRecoverable => Error::Corrupted {
                name: self.name().to_string(),
                reason: format!("the lock of shard {shard} is not recoverable"),
            },
            LockError::Damaged => Error::Corrupted {
                name: self.name().to_string(),
                reason: format!(
                    "the lock word of shard {shard} is damaged; `shmemcache repair --force {}` \
                     re-initializes it once no process has the segment open",
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

    #[cold]
    fn corrupted(&self, e: TableError) -> Error {
        Error::Corrupted {
            name: self.name().to_string(),
            reason: match e {
                TableError::Corrupt(what) => format!("{what} (the shard was repaired)"),
                TableError::NoRoom => "an entry within the limits did not fit".to_string(),
            },
        }
    }

    /// Routes `key` of this handle's namespace, under its current generation.
    #[inline(always)]
    pub(crate) fn route<'k>(&self, key: &'k [u8]) -> Result<Routed<'k>> {
        self.route_at(key, self.route_generation())
    }

    /// Routes `key` of this handle's namespace as written under generation `gen`: the
    /// default namespace's generation 0 stores keys as they are, every other one prefixes
    /// them with its tag.
    #[inline(always)]
    pub(crate) fn route_at<'k>(&self, key: &'k [u8], gen: u64) -> Result<Routed<'k>> {
        if key.len() > self.geom.max_key_len as usize {
            return Err(self.key_too_large(key.len()));
        }
        let (tag, h) = if self.ns == 0 && gen == 0 {
            (None, key_hash(self.geom.hash_seed, key))
        } else {
            let ns = self.ns as u32;
            (
                Some((ns, gen)),
                tagged_key_hash(self.geom.hash_seed, ns, gen, key),
            )
        };
        let shard = self.geom.shard_of(h);
        self.seg.prefetch_index(shard, h as u32);
        Ok(Routed::new(key, tag, shard, h as u32))
    }

    #[cold]
    fn key_too_large(&self, len: usize) -> Error {
        Error::KeyTooLarge {
            len,
            max: self.geom.max_key_len as usize,
        }
    }

    /// Rejects keys over the segment's limit.
    pub(crate) fn check_key(&self, key: &[u8]) -> Result<()> {
        self.route(key).map(|_| ())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.geom.max_value_len as usize {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: self.geom.max_value_len as usize,
            });
        }
        Ok(())
    }

    /// Deadline for a TTL; `None` = never. Reads the clock only when needed.
    fn deadline(&self, ttl: Option<Duration>) -> Result<u64> {
        match ttl {
            None => Ok(0),
            Some(d) => Ok(monotonic_ns().saturating_add(ttl_ns(d)?)),
        }
    }

    fn default_deadline(&self) -> u64 {
        match self.geom.default_ttl_ns {
            0 => 0,
            t => monotonic_ns().saturating_add(t),
        }
    }

    // ----- reads --------------------------------------------------------------------------

    /// The value of `key`, copied out; makes it most recently used.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_as(key, true)
    }

    /// [`get`](Self::get), counted in the hit/miss statistics only if `counted`.
    #[inline]
    pub(crate) fn get_as(&self, key: &[u8], counted: bool) -> Result<Option<Vec<u8>>> {
        let k = self.route(key)?;
        self.get_routed(&k, counted)
    }

    /// [`get_as`](Self::get_as) of a key already routed.
    #[inline]
    pub(crate) fn get_routed(&self, k: &Routed, counted: bool) -> Result<Option<Vec<u8>>> {
        if let Some(res) = self.get_unlocked(k) {
            if counted {
                self.count_unlocked(res.is_some());
            }
            return Ok(res);
        }
        let stored = k.key();
        let res = self.with_shard(k.shard, |v| {
            let mut now = Now::lazy(monotonic_ns);
            match v.lookup_as(stored, &mut now, self.shard_counts(counted))? {
                Some(r) => {
                    let mut out = Vec::new();
                    v.read_value(r, &mut out)?;
                    Ok(Some(out))
                }
                None => Ok(None),
            }
        })?;
        if counted {
            self.ns_hit(res.is_some());
        }
        Ok(res)
    }

    /// Counts a get made without the lock in this process's counter slot: in the word of
    /// its namespace if that namespace has one there (one atomic add; the totals add those
    /// words), else in the process's own hits or misses and the namespace's shared word.
    #[inline]
    fn count_unlocked(&self, hit: bool) {
        use crate::layout::proc_word::{HITS, MISSES};
        if crate::layout::proc_ns_word(self.ns, hit).is_none() {
            crate::counters::bump(&self.seg, if hit { HITS } else { MISSES });
        }
        self.ns_hit(hit);
    }

    /// Whether the shard counts this handle's locked gets: not those of a namespace
    /// counted per process, which [`ns_hit`](Self::ns_hit) counts (once) instead.
    #[inline]
    fn shard_counts(&self, counted: bool) -> bool {
        counted && crate::layout::proc_ns_word(self.ns, true).is_none()
    }

    /// Counts a get of a named namespace: in this process's slot for the first
    /// [`PROC_NS`](crate::layout::PROC_NS) named namespaces, else in its shared words.
    #[inline]
    fn ns_hit(&self, hit: bool) {
        use crate::layout::ns_word::{HITS, MISSES};
        if self.ns == 0 {
            return;
        }
        match crate::layout::proc_ns_word(self.ns, hit) {
            Some(w) => crate::counters::bump(&self.seg, w),
            None => self.ns_count(if hit { HITS } else { MISSES }),
        }
    }

    /// Copies the value of `key` into `buf` without allocating; returns its length.
    /// A value longer than `buf` gives `Error::BufferTooSmall` (with the length needed).
    pub fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<Option<usize>> {
        self.get_into_as(key, buf, true)
    }

    /// [`get_into`](Self::get_into), counted in the hit/miss statistics only if `counted`.
    pub(crate) fn get_into_as(
        &self,
        key: &[u8],
        buf: &mut [u8],
        counted: bool,
    ) -> Result<Option<usize>> {
        let k = self.route(key)?;
        let res = match self.get_into_unlocked(&k, buf) {
            Some(res) => {
                if counted {
                    self.count_unlocked(res.is_some());
                }
                res
            }
            None => {
                let stored = k.key();
                let res = self.with_shard(k.shard, |v| {
                    let mut now = Now::lazy(monotonic_ns);
                    match v.lookup_as(stored, &mut now, self.shard_counts(counted))? {
                        Some(r) => {
                            let len = v.value_len(r)?;
                            if len <= buf.len() {
                                v.copy_value(r, buf)?;
                            }
                            Ok(Some(len))
                        }
                        None => Ok(None),
                    }
                })?;
                if counted {
                    self.ns_hit(res.is_some());
                }
                res
            }
        };
        match res {
            Some(len) if len > buf.len() => Err(Error::BufferTooSmall {
                needed: len,
                len: buf.len(),
            }),
            other => Ok(other),
        }
    }

    /// True if `key` is present and unexpired. Does not change recency or hit counters.
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        let k = self.route(key)?;
        if let Some(found) = self.read_unlocked(&k, false, |_, _, _| Ok(())) {
            return Ok(found.is_some());
        }
        let stored = k.key();
        self.with_shard(k.shard, |v| {
            v.contains(stored, &mut Now::lazy(monotonic_ns))
        })
    }

    /// Remaining lifetime of `key`, or `None` if absent.
    pub fn ttl(&self, key: &[u8]) -> Result<Option<Expiry>> {
        let k = self.route(key)?;
        let mut now = 0;
        let at = match self.read_unlocked(&k, false, |_, _, rec| Ok(rec.expires_at)) {
            Some(at) => {
                now = monotonic_ns();
                at
            }
            None => {
                let stored = k.key();
                self.with_shard(k.shard, |v| {
                    let mut n = Now::lazy(monotonic_ns);
                    let at = v.deadline(stored, &mut n)?;
                    now = n.get();
                    Ok(at)
                })?
            }
        };
        Ok(at.map(|at| match at {
            0 => Expiry::Never,
            at => Expiry::In(Duration::from_nanos(at.saturating_sub(now))),
        }))
    }

    // ----- writes -------------------------------------------------------------------------

    fn store(&self, key: &[u8], value: &[u8], deadline: u64, mode: StoreMode) -> Result<Stored> {
        let k = self.route(key)?;
        self.store_routed(&k, value, deadline, mode)
    }

    /// Stores under a key already routed (and so under the generation it was routed at).
    pub(crate) fn store_routed(
        &self,
        k: &Routed,
        value: &[u8],
        deadline: u64,
        mode: StoreMode,
    ) -> Result<Stored> {
        self.check_value(value)?;
        let stored = k.key();
        let s = self.with_shard(k.shard, |v| {
            v.store(
                stored,
                value,
                Deadline::At(deadline),
                mode,
                &mut Now::lazy(monotonic_ns),
            )
        })?;
        if matches!(s, Stored::Written { .. }) {
            self.ns_count(crate::layout::ns_word::SETS);
            self.edited();
        }
        Ok(s)
    }

    fn written(s: Stored) -> Option<SetOutcome> {
        match s {
            Stored::Written { evicted } => Some(SetOutcome { evicted }),
            _ => None,
        }
    }

    /// Stores `key` → `value` with the default TTL, replacing any old value (and its
    /// deadline). Evicts least recently used entries if needed; a value within the limits
    /// always fits. On error the old value is untouched.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<SetOutcome> {
        self.set_ttl(key, value, self.default_ttl())
    }

    /// Stores with an explicit TTL (`None`: never expires; zero is an error).
    pub fn set_ttl(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<SetOutcome> {
        let d = self.deadline(ttl)?;
        let s = self.store(key, value, d, StoreMode::Set)?;
        Ok(Self::written(s).expect("set always writes"))
    }

    /// Stores only if `key` is absent (atomically); true if stored. Default TTL.
    pub fn add(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        self.add_ttl(key, value, self.default_ttl())
    }

    /// [`Cache::add`] with an explicit TTL.
    pub fn add_ttl(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let d = self.deadline(ttl)?;
        Ok(Self::written(self.store(key, value, d, StoreMode::Add)?).is_some())
    }

    /// Stores only if `key` is present; true if stored. Default TTL.
    pub fn replace(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        self.replace_ttl(key, value, self.default_ttl())
    }

    /// [`Cache::replace`] with an explicit TTL.
    pub fn replace_ttl(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let d = self.deadline(ttl)?;
        Ok(Self::written(self.store(key, value, d, StoreMode::Replace)?).is_some())
    }

    /// The default TTL of the segment.
    pub fn default_ttl(&self) -> Option<Duration> {
        (self.geom.default_ttl_ns != 0).then(|| Duration::from_nanos(self.geom.default_ttl_ns))
    }

    /// Removes `key` and returns its value.
    pub fn take(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = self.route(key)?;
        let stored = k.key();
        let v = self.with_shard(k.shard, |v| {
            let mut out = Vec::new();
            Ok(v.take(stored, &mut Now::lazy(monotonic_ns), &mut out)?
                .then_some(out))
        })?;
        if v.is_some() {
            self.edited();
        }
        Ok(v)
    }

    /// Removes `key`; true if it was present.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        let k = self.route(key)?;
        let stored = k.key();
        let gone = self.with_shard(k.shard, |v| v.remove(stored, &mut Now::lazy(monotonic_ns)))?;
        if gone {
            self.edited();
        }
        Ok(gone)
    }

    /// Changes the TTL of `key` (`None`: never expires); false if absent.
    pub fn expire(&self, key: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let k = self.route(key)?;
        let at = self.deadline(ttl)?;
        let stored = k.key();
        let changed = self.with_shard(k.shard, |v| {
            v.set_deadline(stored, at, &mut Now::lazy(monotonic_ns))
        })?;
        if changed {
            self.edited();
        }
        Ok(changed)
    }

    /// Atomically adds `delta` to the decimal integer at `key` and returns the result. A
    /// missing key counts as 0 and gets the default TTL; an existing key keeps its deadline.
    pub fn incr(&self, key: &[u8], delta: i64) -> Result<i64> {
        let k = self.route(key)?;
        let d = self.default_deadline();
        let stored = k.key();
        match self.with_shard(k.shard, |v| {
            v.incr(stored, delta, d, &mut Now::lazy(monotonic_ns))
        })? {
            Incr::Value(n) => {
                self.edited();
                Ok(n)
            }
            Incr::NotInteger => Err(Error::NotAnInteger),
            Incr::Overflow => Err(Error::Overflow),
        }
    }

    /// `incr(key, -delta)`.
    pub fn decr(&self, key: &[u8], delta: i64) -> Result<i64> {
        self.incr(key, delta.checked_neg().ok_or(Error::Overflow)?)
    }

    // ----- whole-cache operations ---------------------------------------------------------

    /// On the cache's default handle: removes every entry of every namespace; returns how
    /// many there were.
    ///
    /// On a [`namespace`](Self::namespace) handle: bumps the namespace's generation (O(1),
    /// seen by every process at once), so all of its entries are absent from then on and
    /// are reclaimed by the sweeps later; returns 0, since nothing is counted. Unlike
    /// [`invalidate`](Self::invalidate), it does not reach dependent namespaces.
    pub fn clear(&self) -> Result<u64> {
        if self.ns != 0 {
            self.clear_namespace()?;
            return Ok(0);
        }
        let mut n = 0;
        for s in 0..self.geom.shard_count as usize {
            n += self.with_shard(s, |v| Ok(v.clear()))? as u64;
        }
        Ok(n)
    }

    /// Entries held in this handle's namespace. For the default namespace (never
    /// invalidated) that is a sum of per-shard counters, expired entries not yet reclaimed
    /// included (see `flush_expired`); for any other, a scan that counts live entries.
    pub fn len(&self) -> Result<u64> {
        if self.ns == 0 && self.generation() == 0 {
            let t = self.stats()?.total;
            return Ok(t.entries - t.namespaced);
        }
        Ok(self.ns_scan_count()?.0)
    }

    /// True when no entries are held.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Counters per shard and in total.
    ///
    /// On the default handle they are the whole cache's. On a
    /// [namespace](Self::namespace) handle, `entries`, `bytes_used` (both from a scan, per
    /// shard) and `hits`, `misses` and `sets` (in the total) are the namespace's own; the
    /// rest (evictions, expirations, recoveries, capacity, ...) are the shards', which the
    /// namespaces share. [`namespace_stats`](Self::namespace_stats) gives one namespace's
    /// figures alone.
    pub fn stats(&self) -> Result<Stats> {
        let mut st = Stats::default();
        for s in 0..self.geom.shard_count as usize {
            let m = self.with_shard(s, |v| Ok(*v.meta))?;
            st.shards.push(ShardStats::from_meta(&m, &self.geom));
        }
        if self.ns != 0 {
            for (sh, (n, b)) in st.shards.iter_mut().zip(self.ns_scan_counts()?) {
                (sh.entries, sh.bytes_used, sh.namespaced) = (n, b, n);
                (sh.hits, sh.misses, sh.sets) = (0, 0, 0);
            }
        }
        for one in &st.shards {
            st.total.add(one);
        }
        if self.ns == 0 {
            // Gets made without the lock are counted per process, not per shard.
            st.total.hits += crate::counters::total_gets(&self.seg, true);
            st.total.misses += crate::counters::total_gets(&self.seg, false);
        }
        if self.ns != 0 {
            let word = |w| {
                self.seg
                    .ns_word(self.ns, w)
                    .map_or(0, |x| x.load(std::sync::atomic::Ordering::Relaxed))
            };
            use crate::layout::ns_word::SETS;
            (st.total.hits, st.total.misses, st.total.sets) = (
                self.ns_gets(self.ns, true),
                self.ns_gets(self.ns, false),
                word(SETS),
            );
        }
        Ok(st)
    }

    /// Reclaims every expired entry, holding each shard's lock for at most a few hundred
    /// records at a time; returns how many were reclaimed.
    pub fn flush_expired(&self) -> Result<u64> {
        let mut n = 0;
        for s in 0..self.geom.shard_count as usize {
            let mut at = Some(0);
            while let Some(start) = at {
                let (k, next) = self.with_shard(s, |v| {
                    v.flush_expired_from(start, SCAN_BATCH, &mut Now::lazy(monotonic_ns))
                })?;
                n += k as u64;
                at = next;
            }
        }
        Ok(n)
    }

    /// Iterates over live keys, a bounded batch per lock hold. Weakly consistent: keys
    /// added or removed meanwhile may or may not appear.
    pub fn keys(&self) -> Keys<'_> {
        Keys {
            cache: self,
            tag: self.with_scope(|s| match s {
                crate::table::Scope::Plain => None,
                crate::table::Scope::Tag(t) => Some(*t),
            }),
            shard: 0,
            cursor: Some(0),
            buf: VecDeque::new(),
        }
    }

    /// Checks every invariant of every shard and of the coordination table, and reports
    /// what is wrong. It only reads: it writes nothing to the segment, and repairs nothing
    /// (see [`repair`](Self::repair)), with one exception every operation shares: a shard
    /// whose last lock holder died inside it (or panicked) gets the lock protocol's
    /// recovery before it is looked at. So after a `kill -9` of a holder, `check()` from any
    /// process is healthy. A shard whose lock is held by a stopped process is reported as
    /// not checked, after the lock timeout.
    pub fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        // Its memory is allocated here, before any lock: nothing allocates under one.
        let mut scratch = CheckScratch::for_geometry(&self.geom);
        for s in 0..self.geom.shard_count as usize {
            let mut guard = match self.seg.lock_shard(s, self.lock_timeout) {
                Ok(g) => g,
                Err(LockError::Timeout) => {
                    report.problems.push((s, self.not_checked()));
                    continue;
                }
                Err(e @ (LockError::Damaged | LockError::NotRecoverable)) => {
                    report.problems.push((s, self.lock_error(s, e).to_string()));
                    continue;
                }
                Err(e) => return Err(self.lock_error(s, e)),
            };
            let died = guard.owner_died();
            let marks = self.seg.shard_marks(s);
            match ShardView::open(guard.region_quiet(), marks, &self.geom, self.seg.ns_gens()) {
                Ok(mut v) => {
                    if died || v.meta.dirty != 0 {
                        self.seg.begin_write(s);
                        Self::recover(&mut v);
                    }
                    if let Err(e) = v.validate_with(&mut scratch) {
                        report.problems.push((s, e));
                    }
                }
                Err(e) => report.problems.push((s, format!("{e:?}"))),
            }
        }
        report.coordination = self.check_coord()?;
        report.namespaces = self.check_namespaces();
        Ok(report)
    }

    #[cold]
    pub(crate) fn not_checked(&self) -> String {
        format!(
            "not checked: its lock was held for {:?} by a stopped or hung process",
            self.lock_timeout
        )
    }

    /// Repairs what [`check`](Self::check) finds: every damaged shard is rebuilt from its
    /// entry records (dropping only entries that fail validation), and the coordination
    /// table from its slots. Healthy shards are left alone, and a recovery is counted only
    /// where something changed.
    pub fn repair(&self) -> Result<RepairSummary> {
        let mut sum = RepairSummary::default();
        let mut scratch = CheckScratch::for_geometry(&self.geom);
        for s in 0..self.geom.shard_count as usize {
            let rep = self.with_shard(s, |v| {
                // `with_shard` marks the shard dirty while `op` runs: look past that mark.
                v.meta.dirty = 0;
                let healthy = v.validate_with(&mut scratch).is_ok();
                v.meta.dirty = 1;
                if healthy {
                    return Ok((v.meta.len, None));
                }
                Ok((0, Some(Self::recover(v))))
            })?;
            match rep {
                (len, None) => sum.kept += len as u64,
                (_, Some(rep)) => {
                    sum.repaired_shards += 1;
                    sum.kept += rep.kept as u64;
                    sum.dropped += rep.dropped as u64;
                    sum.cleared_shards += rep.cleared as u32;
                }
            }
        }
        sum.coordination_slots_dropped = self.repair_coord()?;
        Ok(sum)
    }
}

/// Iterator over keys; see [`Cache::keys`].
pub struct Keys<'a> {
    cache: &'a Cache,
    /// The namespace tag of the keys listed (`None`: untagged keys).
    tag: Option<[u8; crate::layout::TAG_LEN]>,
    shard: usize,
    cursor: Option<u32>,
    buf: VecDeque<Vec<u8>>,
}

impl Iterator for Keys<'_> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(k) = self.buf.pop_front() {
                return Some(Ok(k));
            }
            if self.shard >= self.cache.geom.shard_count as usize {
                return None;
            }
            let Some(start) = self.cursor else {
                self.shard += 1;
                self.cursor = Some(0);
                continue;
            };
            let mut out = Vec::new();
            let res = self.cache.with_shard(self.shard, |v| {
                out.clear();
                let scope = match &self.tag {
                    None => crate::table::Scope::Plain,
                    Some(t) => crate::table::Scope::Tag(t),
                };
                v.keys_from(
                    start,
                    SCAN_BATCH as usize,
                    &mut Now::lazy(monotonic_ns),
                    scope,
                    &mut out,
                )
            });
            match res {
                Ok(next) => {
                    self.cursor = next;
                    self.buf.extend(out);
                }
                Err(e) => {
                    self.shard = usize::MAX;
                    return Some(Err(e));
                }
            }
        }
    }
}
