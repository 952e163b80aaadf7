//! The byte layout of a segment: `#[repr(C)]` structs with fixed-width fields, their
//! compile-time size and offset checks, and the geometry arithmetic that places every shard.
//!
//! Everything here is plain data. Nothing read from a segment is trusted until
//! [`Geometry::from_header`] has re-derived every offset and size and compared them.

use bytemuck::{Pod, Zeroable};
use std::mem::{align_of, offset_of, size_of};

/// First eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"SHMCACHE";
/// Bumped whenever any byte of the layout below changes meaning.
pub const LAYOUT_VERSION: u32 = 7;
/// Value of [`Header::ready`] once the creator has finished formatting the segment.
pub const READY: u32 = 0x5245_4459; // "READY"
/// "No index" in every `u32` link (LRU, free lists, chunk chains).
pub const NIL: u32 = u32::MAX;
/// Bytes of a shard's undo area besides the chunk copies: the check word naming the entry
/// the copy was taken from.
pub const UNDO_EXTRA: usize = 8;
/// Bytes of entry an in-place overwrite can save in the undo area (at least one chunk).
pub const UNDO_BYTES: usize = 512;

/// Chunks the undo area holds: an overwrite that keeps an entry's chunk count and needs at
/// most this many is done in place.
pub const fn undo_chunks(chunk_size: usize) -> usize {
    if chunk_size >= UNDO_BYTES {
        1
    } else {
        UNDO_BYTES / chunk_size
    }
}
/// Bytes reserved for a shard's robust mutex and its version word (their own cache line).
pub const LOCK_BLOCK: usize = 64;
/// Offset in a shard's lock block of its version word (a `u64` seqlock count): odd while a
/// lock holder may be changing the shard, bumped by every holder. Optimistic readers check
/// it before and after reading without the lock (DESIGN.md §4.1).
pub const VERSION_OFFSET: usize = 48;
/// Alignment of every section inside a shard, and of the shard stride.
pub const SECTION_ALIGN: usize = 64;

/// Hard limits that keep every index below the bit used as a repair mark.
pub const MAX_SHARDS: u32 = 4096;
/// Upper bound on chunks in one shard (indices must stay below [`NIL`] and the mark bit).
pub const MAX_CHUNKS_PER_SHARD: u32 = 1 << 30;
/// Keys are stored with a 16-bit length.
pub const MAX_KEY_LEN: u32 = u16::MAX as u32 - TAG_LEN as u32;
/// Smallest and largest chunk size accepted (multiples of 8): a chunk must hold an
/// entry's 32-byte [`Record`] and some of its bytes.
pub const MIN_CHUNK: u32 = 48;
/// See [`MIN_CHUNK`].
pub const MAX_CHUNK: u32 = 64 * 1024;

/// The segment header: written once by the creator, read-only afterwards except `ready`.
/// A second copy, the backup, follows it at [`BACKUP_OFFSET`]; both carry a checksum over
/// every field but `ready` ([`Header::checksum`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// [`abi_tag`] of the creating build: mutex size, pointer width, endianness, arch.
    pub abi_tag: u32,
    /// [`READY`] once formatted; written last with release ordering.
    pub ready: u32,
    /// `size_of::<Header>()` as the creator saw it.
    pub header_size: u32,
    /// Number of shards.
    pub shard_count: u32,
    /// Most live entries per shard (at most `chunks_per_shard`).
    pub max_entries_per_shard: u32,
    /// Hash buckets per shard (a power of two).
    pub buckets: u32,
    /// Arena chunks per shard.
    pub chunks_per_shard: u32,
    /// Bytes per arena chunk (a multiple of 8).
    pub chunk_size: u32,
    /// Longest key accepted.
    pub max_key_len: u32,
    /// Longest value accepted.
    pub max_value_len: u32,
    /// Slots in the coordination table (single-flight markers, locks, pool slots).
    pub coord_slots: u32,
    /// TTL applied by `set` when none is given; 0 means entries do not expire by default.
    pub default_ttl_ns: u64,
    /// Seed of the xxh3 key hash; random per segment.
    pub hash_seed: u64,
    /// Wall-clock creation time (ns since the Unix epoch), for display only.
    pub created_unix_ns: u64,
    /// Byte distance between consecutive shards.
    pub shard_stride: u64,
    /// Byte offset of shard 0.
    pub shards_offset: u64,
    /// Bytes the whole segment must have.
    pub total_size: u64,
    /// Process id of the creator: with `creator_start` it tells whether the creator of a
    /// segment never marked ready is still alive.
    pub creator_pid: u32,
    /// Feature bits: [`FLAG_CHECKSUMS`], [`FLAG_EXACT_LRU`].
    pub flags: u32,
    /// Byte offset of the coordination area (after the last shard).
    pub coord_offset: u64,
    /// Start time of the creator (clock ticks after boot), 0 if unknown.
    pub creator_start: u64,
    /// xxh3 of the header's 256 bytes with `ready` and `checksum` zeroed.
    pub checksum: u64,
    /// Reserved for future fields; zero.
    pub _reserved: [u64; 15],
}

/// [`Header::flags`]: every entry carries an 8-byte checksum of its key and value.
pub const FLAG_CHECKSUMS: u32 = 1;
/// [`Header::flags`]: every get moves its entry to the head of the LRU list (strict LRU).
pub const FLAG_EXACT_LRU: u32 = 2;
/// Bytes of an entry's checksum, stored after its value when checksums are on.
pub const CHECKSUM_LEN: usize = 8;

/// Where the backup copy of the header lies: right after the header.
pub const BACKUP_OFFSET: usize = 256;

impl Header {
    /// The checksum of every field but `ready` (the one field written after creation) and
    /// `checksum` itself.
    pub fn checksum(&self) -> u64 {
        let mut h = *self;
        h.ready = 0;
        h.checksum = 0;
        xxhash_rust::xxh3::xxh3_64_with_seed(bytemuck::bytes_of(&h), 0x5348_4d43_4845_4144)
    }

    /// This header with its checksum filled in.
    pub fn sealed(mut self) -> Header {
        self.checksum = self.checksum();
        self
    }

    /// Whether the stored checksum matches the fields.
    pub fn checksum_ok(&self) -> bool {
        self.checksum == self.checksum()
    }

    /// The names of the fields in which `self` and `other` differ.
    pub fn differing_fields(&self, other: &Header) -> Vec<&'static str> {
        let mut d = Vec::new();
        let mut cmp = |name: &'static str, a: &[u8], b: &[u8]| {
            if a != b {
                d.push(name);
            }
        };
        let (a, b) = (self, other);
        cmp("magic", &a.magic, &b.magic);
        macro_rules! fields {
            ($($f:ident),*) => { $( cmp(stringify!($f), &a.$f.to_ne_bytes(), &b.$f.to_ne_bytes()); )* };
        }
        fields!(
            layout_version,
            abi_tag,
            ready,
            header_size,
            shard_count,
            max_entries_per_shard,
            buckets,
            chunks_per_shard,
            chunk_size,
            max_key_len,
            max_value_len,
            coord_slots,
            default_ttl_ns,
            hash_seed,
            created_unix_ns,
            shard_stride,
            shards_offset,
            total_size,
            creator_pid,
            flags,
            coord_offset,
            creator_start,
            checksum
        );
        cmp(
            "reserved",
            bytemuck::cast_slice(&a._reserved),
            bytemuck::cast_slice(&b._reserved),
        );
        d
    }
}

/// Per-shard bookkeeping, guarded by the shard's mutex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ShardMeta {
    /// Non-zero while a mutation is under way; found set by the next holder = repair first.
    pub dirty: u32,
    /// Live entries.
    pub len: u32,
    /// Most recently used entry, or [`NIL`].
    pub lru_head: u32,
    /// Least recently used entry, or [`NIL`].
    pub lru_tail: u32,
    /// Live entries that belong to a namespace ([`REC_TAGGED`]).
    pub tagged: u32,
    /// First free chunk, linked through the chunk-link array.
    pub free_chunk_head: u32,
    /// Length of the free chunk list.
    pub free_chunks: u32,
    /// Where the bounded expiry sweep resumes.
    pub sweep_cursor: u32,
    /// Key + value bytes held by live entries.
    pub bytes_used: u64,
    /// Successful lookups.
    pub hits: u64,
    /// Lookups that found nothing (absent or expired).
    pub misses: u64,
    /// Stores (set/add/replace/incr that wrote a value).
    pub sets: u64,
    /// Entries removed to make room.
    pub evictions: u64,
    /// Entries removed because their TTL had passed.
    pub expirations: u64,
    /// Times this shard was repaired after a dead or panicking holder or detected damage.
    pub recoveries: u64,
    /// Explicit removals (delete/take).
    pub deletes: u64,
    /// Live entries with a deadline: while zero, stores skip the expiry sweep.
    pub expiring: u32,
    /// While an overwrite is under way: the entry being replaced, else [`NIL`].
    pub replacing: u32,
    /// While an overwrite is under way: the entry replacing it, else [`NIL`]. Once its
    /// record is `REC_LIVE` the overwrite has committed, and repair drops `replacing`.
    pub replacement: u32,
    /// While an entry is overwritten in place: the entry whose old chunks (record
    /// included) the undo area holds, else [`NIL`]. Repair puts them back.
    pub undo: u32,
    /// Entries dropped because their checksum did not match (checksums on).
    pub checksum_failures: u64,
    /// Entries reclaimed because their namespace was invalidated after they were written.
    pub invalidated: u64,
}

/// One entry's metadata, at the start of its head chunk (an entry is named by the index
/// of that chunk). 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct Record {
    /// Low 32 bits of the key's hash (the hash bucket and a fast filter).
    pub hash: u32,
    /// LRU neighbour towards the head (more recent), or [`NIL`].
    pub prev: u32,
    /// LRU neighbour towards the tail, or [`NIL`].
    pub next: u32,
    /// Next entry in the same hash bucket, or [`NIL`].
    pub hnext: u32,
    /// Key length in bytes.
    pub key_len: u16,
    /// [`REC_FREE`], [`REC_LIVE`] or [`REC_WRITING`], plus transient flag bits.
    pub state: u16,
    /// Value length in bytes.
    pub value_len: u32,
    /// Absolute expiry on `CLOCK_MONOTONIC` in ns; 0 = never.
    pub expires_at: u64,
}

/// Bytes of an entry's [`Record`] at the start of its head chunk.
pub const REC_LEN: usize = size_of::<Record>();
impl Record {
    /// Whether the entry belongs to a namespace ([`REC_TAGGED`]).
    #[inline]
    pub fn tagged(&self) -> bool {
        self.state & REC_TAGGED != 0
    }

    /// The state with `s` as its value, keeping the tag.
    #[inline]
    pub fn with_state(&self, s: u16) -> u16 {
        (self.state & REC_TAGGED) | s
    }
}

/// Record of no entry (a freed entry's head chunk).
pub const REC_FREE: u16 = 0;
/// Record holds a complete entry.
pub const REC_LIVE: u16 = 1;
/// Record's data is being rewritten; repair drops it.
pub const REC_WRITING: u16 = 2;
/// Mask for the state value (the other bits are transient flags).
pub const REC_STATE_MASK: u16 = 0x00ff;
/// Transient flag used by repair while re-threading the LRU list.
pub const REC_VISITED: u16 = 0x0100;
/// The entry belongs to a namespace: its key bytes start with the namespace's index (u32
/// LE) and the generation it was written under (u64 LE), [`TAG_LEN`] bytes in all.
pub const REC_TAGGED: u16 = 0x0200;
/// Bytes of the namespace tag that starts a tagged entry's key.
pub const TAG_LEN: usize = 12;
/// Mark bit in a chunk link, used by repair and validation only.
pub const CHUNK_MARK: u32 = 1 << 31;

/// Bookkeeping of the coordination table, guarded by the coordination mutex. 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct CoordMeta {
    /// Non-zero while an update is under way; found set by the next holder = repair first.
    pub dirty: u32,
    /// One past the highest slot that may be in use (slots are taken lowest first).
    pub high_water: u32,
    /// Times the table was repaired after a dead or panicking holder.
    pub recoveries: u64,
    /// Slots freed because their holder had died or their lease had expired.
    pub reclaimed: u64,
    /// Reserved; zero.
    pub _reserved: [u64; 5],
}

/// What a coordination slot holds.
pub mod slot_kind {
    /// Unused.
    pub const FREE: u32 = 0;
    /// A computation in flight (single-flight marker).
    pub const FLIGHT: u32 = 1;
    /// A computation that failed; waiters that asked for errors see it until it expires.
    pub const FAILED: u32 = 2;
    /// A named lock (also used by `once`).
    pub const LOCK: u32 = 3;
    /// One holder's slot in a named pool.
    pub const POOL: u32 = 4;
    /// Largest valid kind.
    pub const MAX: u32 = POOL;
}

/// One marker, lock or pool slot, owned by a process. 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct CoordSlot {
    /// A [`slot_kind`] constant.
    pub kind: u32,
    /// Owning process id.
    pub owner_pid: u32,
    /// 128-bit hash of the kind's namespace and the name (or cache key).
    pub key: [u64; 2],
    /// Start time of the owning process (clock ticks after boot): with the pid it names one
    /// process even when pids are reused.
    pub owner_start: u64,
    /// Unique per acquisition: a release must present it.
    pub owner_token: u64,
    /// When the hold lapses (monotonic ns), 0 = never.
    pub expires_at: u64,
    /// When it was taken (monotonic ns).
    pub acquired_at: u64,
    /// Hash of the group the slot belongs to (a memo function's namespace), 0 = none.
    pub group: u64,
}

const _: () = {
    assert!(size_of::<Header>() == 256);
    assert!(offset_of!(Header, layout_version) == 8);
    assert!(offset_of!(Header, abi_tag) == 12);
    assert!(offset_of!(Header, ready) == 16);
    assert!(offset_of!(Header, default_ttl_ns) == 56);
    assert!(offset_of!(Header, hash_seed) == 64);
    assert!(offset_of!(Header, shard_stride) == 80);
    assert!(offset_of!(Header, total_size) == 96);
    assert!(offset_of!(Header, coord_slots) == 52);
    assert!(offset_of!(Header, coord_offset) == 112);
    assert!(offset_of!(Header, creator_start) == 120);
    assert!(offset_of!(Header, checksum) == 128);
    assert!(size_of::<CoordMeta>() == 64);
    assert!(size_of::<CoordSlot>() == 64);
    assert!(offset_of!(CoordSlot, key) == 8);
    assert!(offset_of!(CoordSlot, expires_at) == 40);
    assert!(offset_of!(CoordSlot, group) == 56);
    assert!(size_of::<ShardMeta>() == 128);
    assert!(offset_of!(ShardMeta, bytes_used) == 32);
    assert!(offset_of!(ShardMeta, recoveries) == 80);
    assert!(offset_of!(ShardMeta, expiring) == 96);
    assert!(offset_of!(ShardMeta, replacing) == 100);
    assert!(offset_of!(ShardMeta, replacement) == 104);
    assert!(offset_of!(ShardMeta, undo) == 108);
    assert!(offset_of!(ShardMeta, checksum_failures) == 112);
    assert!(size_of::<Record>() == 32);
    assert!(offset_of!(Record, key_len) == 16);
    assert!(offset_of!(Record, value_len) == 20);
    assert!(offset_of!(Record, expires_at) == 24);
    assert!(align_of::<Record>() == 8);
    assert!(size_of::<libc::pthread_mutex_t>() <= VERSION_OFFSET);
    assert!(VERSION_OFFSET % 8 == 0 && VERSION_OFFSET + 8 <= LOCK_BLOCK);
    assert!(align_of::<libc::pthread_mutex_t>() <= SECTION_ALIGN);
};

/// A tag for what must match between the creating and the joining build beyond the layout
/// version: the mutex's size and alignment, pointer width, byte order and architecture.
pub fn abi_tag() -> u32 {
    let desc = format!(
        "{}-{}-{}-{}-{}",
        size_of::<libc::pthread_mutex_t>(),
        align_of::<libc::pthread_mutex_t>(),
        usize::BITS,
        if cfg!(target_endian = "little") {
            "le"
        } else {
            "be"
        },
        std::env::consts::ARCH,
    );
    xxhash_rust::xxh3::xxh3_64(desc.as_bytes()) as u32
}

const fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Where each section of a shard lies, relative to the start of the shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    /// Offset of the guarded region (meta onwards) from the shard start.
    pub region_offset: usize,
    /// Undo area offset inside the region: a check word and a copy of one chunk.
    pub undo_off: usize,
    /// Bytes of the guarded region.
    pub region_len: usize,
    /// Hash bucket array offset inside the region.
    pub buckets_off: usize,
    /// Head bitmap offset inside the region: one bit per chunk, set where an entry starts.
    pub heads_off: usize,
    /// Chunk-link array offset inside the region.
    pub links_off: usize,
    /// Arena offset inside the region.
    pub arena_off: usize,
    /// Offset of the accessed marks from the shard start, after the region: one bit per
    /// chunk, set by a hit on the entry whose head chunk it is (lazy promotion). Outside
    /// the guarded region because lock-free readers set them.
    pub marks_off: usize,
    /// Whole shard including its lock block, padded to [`SECTION_ALIGN`].
    pub stride: usize,
}

/// Where the coordination area lies: its mutex, the futex words waiters sleep on (one per
/// slot, touched only atomically), and the guarded region (meta, then the slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoordLayout {
    /// Slots in the table.
    pub slots: u32,
    /// Offset of the area (its mutex) in the segment.
    pub offset: usize,
    /// Offset of the wake words in the segment.
    pub wake_offset: usize,
    /// Offset of the guarded region ([`CoordMeta`], then the slots) in the segment.
    pub region_offset: usize,
    /// Bytes of the guarded region.
    pub region_len: usize,
}

/// Slots of the memo statistics table: slot 0 counts every memoized call of the segment,
/// the others one memoized function each (claimed by its namespace hash).
pub const MEMO_STAT_SLOTS: usize = 64;
/// `u64` words per memo statistics slot (128 bytes: two cache lines).
pub const MEMO_STAT_WORDS: usize = 16;

/// Word indices inside a memo statistics slot. Every word is only ever accessed atomically:
/// the counters are bumped without any lock.
pub mod memo_stat {
    /// The function's namespace hash (never 0 once claimed); 0 = free. Slot 0 keeps 0.
    pub const GROUP: usize = 0;
    /// Fresh values returned from the cache.
    pub const HITS: usize = 1;
    /// Stale values served while another caller refreshed them.
    pub const STALE: usize = 2;
    /// Calls that found no fresh value.
    pub const MISSES: usize = 3;
    /// Times the function ran.
    pub const COMPUTED: usize = 4;
    /// Calls that got a value another process computed while they waited.
    pub const WAITED: usize = 5;
    /// Computations taken over from a process that died computing.
    pub const TAKEOVERS: usize = 6;
    /// Waits that reached the wait timeout (the caller then computed itself).
    pub const TIMEOUTS: usize = 7;
    /// Results not stored because of their size (`max_size` or the segment's value limit).
    pub const REJECTED: usize = 8;
}

/// Namespaces a segment holds, the default one (slot 0) included.
pub const NS_SLOTS: usize = 128;
/// 64-bit words per namespace slot (256 bytes). Every word is accessed atomically.
pub const NS_WORDS: usize = 32;
/// Longest namespace name, in bytes.
pub const NS_NAME_MAX: usize = 48;
/// Bytes of the namespace table: the generations, then the slots.
pub const NS_TABLE_BYTES: usize = NS_SLOTS * 8 + NS_SLOTS * NS_WORDS * 8;

/// Slots of the per-process counter table: a process claims one on its first counted
/// read and bumps only its own, so hits and misses cost no write another process's get
/// also makes. A slot outlives its process: the next claimer of a dead owner's slot keeps
/// counting on top of its totals, so nothing counted is lost.
pub const PROC_SLOTS: usize = 128;
/// `u64` words per per-process counter slot (256 bytes: four cache lines).
pub const PROC_WORDS: usize = 32;
/// Named namespaces (slots `1..=PROC_NS`, the first created) whose hits and misses are
/// also counted per process; later ones count in their shared namespace words.
pub const PROC_NS: usize = 6;
/// Bytes of the per-process counter table.
pub const PROC_TABLE_BYTES: usize = PROC_SLOTS * PROC_WORDS * 8;

/// Word indices inside a per-process counter slot. Every word is accessed atomically.
pub mod proc_word {
    /// The owner: its pid in the high 32 bits, the low 32 bits of its start time (clock
    /// ticks after boot) in the low 32; 0 = never claimed. Changed only by compare-and-swap.
    pub const OWNER: usize = 0;
    /// Gets that found their key, counted by the owner. A get of one of the first
    /// [`PROC_NS`](super::PROC_NS) named namespaces counts in that namespace's word
    /// below instead (one atomic add per get); the totals add those words.
    pub const HITS: usize = 1;
    /// Gets that did not (counted as for `HITS`).
    pub const MISSES: usize = 2;
    /// Memoized calls answered from the cache (memo statistics slot 0's hits).
    pub const MEMO_HITS: usize = 3;
    /// Hits of namespace slot `n` (`1..=PROC_NS`) are word `NS + 2 * (n - 1)`, its misses
    /// the word after.
    pub const NS: usize = 4;
    /// [`PROC_MEMO`] pairs: a memo statistics slot + 1 (0 = unused; set by compare-and-swap),
    /// then that memoized function's hits counted by this process.
    pub const MEMO: usize = 16;
}

/// Memoized functions whose hits a process counts in its own slot; further ones count in
/// their shared memo statistics words.
pub const PROC_MEMO: usize = 8;

/// The per-process counter word of namespace slot `ns`'s hits (or misses), if that
/// namespace is counted per process.
#[inline]
pub fn proc_ns_word(ns: usize, hit: bool) -> Option<usize> {
    (1..=PROC_NS)
        .contains(&ns)
        .then(|| proc_word::NS + 2 * (ns - 1) + usize::from(!hit))
}

/// Word indices inside a namespace slot.
pub mod ns_word {
    /// 0: free; else 1 | name length << 8.
    pub const STATE: usize = 0;
    /// The last generation handed out (bumps and staged loads take the next one).
    pub const LAST_GEN: usize = 1;
    /// Up to 8 namespaces this one depends on, one byte each: slot + 1, 0 = none.
    pub const PARENTS: usize = 2;
    /// Hits of gets in this namespace.
    pub const HITS: usize = 3;
    /// Misses of gets in this namespace.
    pub const MISSES: usize = 4;
    /// Values written in this namespace.
    pub const SETS: usize = 5;
    /// Generation bumps (clear, invalidate, a replacing load).
    pub const INVALIDATIONS: usize = 6;
    /// The name, little-endian in six words.
    pub const NAME: usize = 8;
    /// Autosync's edit counters: a ring of 15 buckets, each `epoch << 24 | edits`.
    /// Words 29 to 31 are reserved (zero).
    pub const EDITS: usize = 14;
}

/// Default number of coordination slots.
pub const DEFAULT_COORD_SLOTS: u32 = 1024;
/// Upper bound on coordination slots.
pub const MAX_COORD_SLOTS: u32 = 1 << 20;

/// Everything a handle needs to find its way in a segment, derived from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Number of shards.
    pub shard_count: u32,
    /// Most live entries per shard (at most `chunks_per_shard`: every entry takes a chunk).
    pub max_entries_per_shard: u32,
    /// Hash buckets per shard (power of two).
    pub buckets: u32,
    /// Arena chunks per shard.
    pub chunks_per_shard: u32,
    /// Bytes per chunk (a multiple of 8).
    pub chunk_size: u32,
    /// Longest key.
    pub max_key_len: u32,
    /// Longest value.
    pub max_value_len: u32,
    /// Default TTL in ns, 0 = none.
    pub default_ttl_ns: u64,
    /// Key hash seed.
    pub hash_seed: u64,
    /// Every entry carries a checksum of its key and value ([`FLAG_CHECKSUMS`]).
    pub checksums: bool,
    /// Every get moves its entry to the head of the LRU list ([`FLAG_EXACT_LRU`]); else a
    /// get marks it accessed and eviction gives it a second chance.
    pub exact_lru: bool,
    /// Section offsets.
    pub shard: ShardLayout,
    /// Offset of shard 0 in the segment.
    pub shards_offset: usize,
    /// The coordination area, after the last shard.
    pub coord: CoordLayout,
    /// Offset of the memo statistics table ([`MEMO_STAT_SLOTS`] slots of
    /// [`MEMO_STAT_WORDS`] words), after the coordination area.
    pub memo_stats_offset: usize,
    /// Offset of the namespace table: [`NS_SLOTS`] generations, then [`NS_SLOTS`] slots of
    /// [`NS_WORDS`] words, after the memo statistics.
    pub ns_offset: usize,
    /// Offset of the per-process counter table ([`PROC_SLOTS`] slots of [`PROC_WORDS`]
    /// words), after the namespace table.
    pub counters_offset: usize,
    /// Required segment size.
    pub total_size: usize,
}

/// Why a set of numbers cannot be a geometry.
pub type GeometryError = String;

/// Chunks an entry of `len` key, value and checksum bytes occupies: its record and bytes,
/// laid over whole chunks.
#[inline]
pub const fn chunks_for(len: usize, chunk_size: usize) -> usize {
    (REC_LEN + len).div_ceil(chunk_size)
}

/// Hash buckets for a shard of `chunks` chunks holding at most `max_entries` entries: a
/// power of two, about one per two entries when entries are capped low, else one per eight
/// chunks rounded up (a bucket costs 4 bytes: half a byte to a byte per chunk). Chains stay
/// short for any entry size: one entry per chunk is the worst case, at four to eight.
pub fn buckets_for(max_entries: u32, chunks: u32) -> u32 {
    let want = (max_entries / 2).min(chunks / 8).max(8);
    want.next_power_of_two()
}

/// Bytes of a shard of `chunks` chunks of `chunk_size` bytes with `buckets` buckets, its
/// lock block included; and the section offsets. `None` on overflow.
fn shard_sections(chunks: u64, chunk_size: u64, buckets: u64) -> Option<ShardLayout> {
    let a = SECTION_ALIGN as u64;
    let meta = size_of::<ShardMeta>() as u64;
    let undo_off = align_up(meta, a);
    let undo_len = UNDO_EXTRA as u64 + undo_chunks(chunk_size as usize) as u64 * chunk_size;
    let buckets_off = align_up(undo_off + undo_len, a);
    let heads_off = align_up(buckets_off + 4 * buckets, a);
    let links_off = align_up(heads_off + 8 * chunks.div_ceil(64), a);
    let arena_off = align_up(links_off + 4 * chunks, a);
    let region_len = align_up(arena_off.checked_add(chunks.checked_mul(chunk_size)?)?, a);
    let marks_off = LOCK_BLOCK as u64 + region_len;
    let stride = align_up(marks_off + 8 * chunks.div_ceil(64), 2 * a);
    let u = |v: u64| usize::try_from(v).ok();
    Some(ShardLayout {
        region_offset: LOCK_BLOCK,
        undo_off: u(undo_off)?,
        region_len: u(region_len)?,
        buckets_off: u(buckets_off)?,
        heads_off: u(heads_off)?,
        links_off: u(links_off)?,
        arena_off: u(arena_off)?,
        marks_off: u(marks_off)?,
        stride: u(stride)?,
    })
}

/// Bytes before shard 0: the header, then its backup copy.
pub const SHARDS_OFFSET: usize = 2 * size_of::<Header>();

/// The largest chunk count whose shard, lock block included, fits in `budget` bytes with
/// `max_entries` entries at most (0 if none fits).
pub fn chunks_within(budget: u64, chunk_size: u32, max_entries: u32) -> u32 {
    let cs = chunk_size as u64;
    // Per chunk: its bytes, its link, its head and accessed bits and at least half a byte
    // of bucket: an overestimate, stepped down until it fits.
    let n = budget as u128 * 8 / (8 * cs as u128 + 38);
    let mut n = n.min(MAX_CHUNKS_PER_SHARD as u128) as u32;
    let fits = |n: u32| {
        shard_sections(n as u64, cs, buckets_for(max_entries.min(n), n) as u64)
            .is_some_and(|l| l.stride as u64 <= budget)
    };
    while n > 0 && !fits(n) {
        // Section padding is at most a few hundred bytes: a few steps back find the fit.
        n -= 1 + (n / 4096).min(64);
    }
    n
}

impl Geometry {
    /// Derives the full geometry from the independent parameters, checking every bound
    /// and every multiplication.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard_count: u32,
        max_entries_per_shard: u32,
        chunks_per_shard: u32,
        chunk_size: u32,
        max_key_len: u32,
        max_value_len: u32,
        default_ttl_ns: u64,
        hash_seed: u64,
    ) -> Result<Geometry, GeometryError> {
        if shard_count == 0 || shard_count > MAX_SHARDS {
            return Err(format!(
                "shard count {shard_count} is outside 1..={MAX_SHARDS}"
            ));
        }
        if chunks_per_shard == 0 || chunks_per_shard > MAX_CHUNKS_PER_SHARD {
            return Err(format!(
                "chunks per shard {chunks_per_shard} is outside 1..={MAX_CHUNKS_PER_SHARD}"
            ));
        }
        if !(1..=chunks_per_shard).contains(&max_entries_per_shard) {
            return Err(format!(
                "entries per shard {max_entries_per_shard} is outside 1..={chunks_per_shard} \
                 (every entry takes a chunk)"
            ));
        }
        if chunk_size % 8 != 0 || !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
            return Err(format!(
                "chunk size {chunk_size} is not a multiple of 8 in {MIN_CHUNK}..={MAX_CHUNK}"
            ));
        }
        if max_key_len == 0 || max_key_len > MAX_KEY_LEN {
            return Err(format!(
                "max key length {max_key_len} is outside 1..={MAX_KEY_LEN}"
            ));
        }
        if default_ttl_ns > u64::MAX / 4 {
            return Err(format!(
                "default TTL of {default_ttl_ns} ns is out of range"
            ));
        }
        let buckets = buckets_for(max_entries_per_shard, chunks_per_shard);
        let shard = shard_sections(chunks_per_shard as u64, chunk_size as u64, buckets as u64)
            .ok_or_else(|| "shard size overflows".to_string())?;
        let total = (shard.stride as u64)
            .checked_mul(shard_count as u64)
            .and_then(|s| s.checked_add(SHARDS_OFFSET as u64))
            .filter(|t| *t <= isize::MAX as u64 / 2)
            .ok_or_else(|| "segment size overflows".to_string())?;
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| "segment too large".to_string());
        let g = Geometry {
            shard_count,
            max_entries_per_shard,
            buckets,
            chunks_per_shard,
            chunk_size,
            max_key_len,
            max_value_len,
            default_ttl_ns,
            hash_seed,
            checksums: false,
            exact_lru: false,
            shard,
            shards_offset: SHARDS_OFFSET,
            coord: CoordLayout {
                slots: 0,
                offset: to_usize(total)?,
                wake_offset: 0,
                region_offset: 0,
                region_len: 0,
            },
            memo_stats_offset: 0,
            ns_offset: 0,
            counters_offset: 0,
            total_size: to_usize(total)?,
        };
        g.check_longest(0)?;
        g.with_coord_slots(DEFAULT_COORD_SLOTS)
    }

    /// Checks that the longest entry, with `trailer` checksum bytes, fits twice in a shard:
    /// then evicting every other entry always frees enough for a write, old value included.
    fn check_longest(&self, trailer: u64) -> Result<(), GeometryError> {
        let longest =
            self.max_key_len as u64 + TAG_LEN as u64 + self.max_value_len as u64 + trailer;
        let need = (REC_LEN as u64 + longest).div_ceil(self.chunk_size as u64);
        if need * 2 > self.chunks_per_shard as u64 {
            return Err(format!(
                "an entry of up to {longest} bytes needs {need} chunks, which do not fit \
                 twice in a shard's {}",
                self.chunks_per_shard
            ));
        }
        Ok(())
    }

    /// The same geometry with entry checksums on or off; checks that the longest entry,
    /// checksum included, still fits twice in a shard.
    pub fn with_checksums(mut self, on: bool) -> Result<Geometry, GeometryError> {
        if on {
            self.check_longest(CHECKSUM_LEN as u64)?;
        }
        self.checksums = on;
        Ok(self)
    }

    /// Bytes an entry's key and value carry besides themselves: its checksum, if any.
    pub fn trailer(&self) -> usize {
        if self.checksums {
            CHECKSUM_LEN
        } else {
            0
        }
    }

    /// The same geometry with a coordination table of `slots` slots.
    pub fn with_coord_slots(mut self, slots: u32) -> Result<Geometry, GeometryError> {
        if slots == 0 || slots > MAX_COORD_SLOTS {
            return Err(format!(
                "coordination slots {slots} is outside 1..={MAX_COORD_SLOTS}"
            ));
        }
        let a = SECTION_ALIGN as u64;
        let offset = self.coord.offset as u64;
        let wake = offset + LOCK_BLOCK as u64;
        let region = align_up(wake + 4 * slots as u64, a);
        let region_len =
            size_of::<CoordMeta>() as u64 + size_of::<CoordSlot>() as u64 * slots as u64;
        let memo_stats = align_up(region + region_len, 2 * a);
        let ns = align_up(
            memo_stats + (MEMO_STAT_SLOTS * MEMO_STAT_WORDS * 8) as u64,
            2 * a,
        );
        let counters = align_up(ns + NS_TABLE_BYTES as u64, 2 * a);
        let total = counters + PROC_TABLE_BYTES as u64;
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| "segment too large".to_string());
        self.memo_stats_offset = to_usize(memo_stats)?;
        self.ns_offset = to_usize(ns)?;
        self.counters_offset = to_usize(counters)?;
        self.coord = CoordLayout {
            slots,
            offset: self.coord.offset,
            wake_offset: to_usize(wake)?,
            region_offset: to_usize(region)?,
            region_len: to_usize(region_len)?,
        };
        self.total_size = to_usize(total)?;
        Ok(self)
    }

    /// Re-derives the geometry from a header read out of a segment and checks that the
    /// derived sizes equal the stored ones: nothing in the header is used unchecked.
    pub fn from_header(h: &Header) -> Result<Geometry, GeometryError> {
        let g = Geometry::new(
            h.shard_count,
            h.max_entries_per_shard,
            h.chunks_per_shard,
            h.chunk_size,
            h.max_key_len,
            h.max_value_len,
            h.default_ttl_ns,
            h.hash_seed,
        )?
        .with_coord_slots(h.coord_slots)?;
        if h.flags & !(FLAG_CHECKSUMS | FLAG_EXACT_LRU) != 0 {
            return Err(format!("unknown feature flags {:#x}", h.flags));
        }
        let mut g = g.with_checksums(h.flags & FLAG_CHECKSUMS != 0)?;
        g.exact_lru = h.flags & FLAG_EXACT_LRU != 0;
        if g.buckets != h.buckets
            || g.coord.offset as u64 != h.coord_offset
            || g.shard.stride as u64 != h.shard_stride
            || g.shards_offset as u64 != h.shards_offset
            || g.total_size as u64 != h.total_size
            || h.header_size as usize != size_of::<Header>()
        {
            return Err("header sizes disagree with its own geometry".to_string());
        }
        Ok(g)
    }

    /// A header describing this geometry (not yet marked ready).
    pub fn to_header(self, created_unix_ns: u64, creator_pid: u32, creator_start: u64) -> Header {
        Header {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            abi_tag: abi_tag(),
            ready: 0,
            header_size: size_of::<Header>() as u32,
            shard_count: self.shard_count,
            max_entries_per_shard: self.max_entries_per_shard,
            buckets: self.buckets,
            chunks_per_shard: self.chunks_per_shard,
            chunk_size: self.chunk_size,
            max_key_len: self.max_key_len,
            max_value_len: self.max_value_len,
            coord_slots: self.coord.slots,
            default_ttl_ns: self.default_ttl_ns,
            hash_seed: self.hash_seed,
            created_unix_ns,
            shard_stride: self.shard.stride as u64,
            shards_offset: self.shards_offset as u64,
            total_size: self.total_size as u64,
            creator_pid,
            flags: if self.checksums { FLAG_CHECKSUMS } else { 0 }
                | if self.exact_lru { FLAG_EXACT_LRU } else { 0 },
            coord_offset: self.coord.offset as u64,
            creator_start,
            checksum: 0,
            _reserved: [0; 15],
        }
        .sealed()
    }

    /// Live entries a shard holds at most.
    pub fn entry_capacity(&self) -> u32 {
        self.max_entries_per_shard
    }

    /// Key and value storage per shard: the arena's chunks (records included).
    pub fn arena_bytes(&self) -> u64 {
        self.chunks_per_shard as u64 * self.chunk_size as u64
    }

    /// Which shard a 64-bit key hash belongs to (high bits; the low bits pick the slot).
    #[inline]
    pub fn shard_of(&self, hash: u64) -> usize {
        (((hash >> 32) * self.shard_count as u64) >> 32) as usize
    }

    /// Byte offset of shard `i`'s lock block in the segment.
    #[inline]
    pub fn shard_offset(&self, i: usize) -> usize {
        self.shards_offset + i * self.shard.stride
    }

    /// Bytes of the segment outside the shards: the header and its backup, the
    /// coordination area and the memo statistics. Fixed by `coord_slots`, not by the
    /// capacity.
    pub fn fixed_overhead_bytes(&self) -> u64 {
        (self.total_size - self.shard_count as usize * self.shard.stride) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom() -> Geometry {
        Geometry::new(4, 100, 1000, 64, 250, 10_000, 0, 7).unwrap()
    }

    #[test]
    fn header_round_trips_through_geometry() {
        let g = geom();
        let h = g.to_header(1, 2, 3);
        assert_eq!(Geometry::from_header(&h).unwrap(), g);
    }

    #[test]
    fn tampered_header_is_refused() {
        let mut h = geom().to_header(1, 2, 3);
        h.total_size += 64;
        assert!(Geometry::from_header(&h).is_err());
        let mut h = geom().to_header(1, 2, 3);
        h.buckets = 4;
        assert!(Geometry::from_header(&h).is_err());
        let mut h = geom().to_header(1, 2, 3);
        h.chunk_size = 60;
        assert!(Geometry::from_header(&h).is_err());
        let mut h = geom().to_header(1, 2, 3);
        h.shard_count = u32::MAX;
        assert!(Geometry::from_header(&h).is_err());
        let mut h = geom().to_header(1, 2, 3);
        h.max_entries_per_shard = 1001;
        assert!(Geometry::from_header(&h).is_err());
    }

    #[test]
    fn sections_are_aligned_and_disjoint() {
        let g = geom();
        let s = g.shard;
        assert!(s.undo_off >= size_of::<ShardMeta>());
        let undo = UNDO_EXTRA + undo_chunks(g.chunk_size as usize) * g.chunk_size as usize;
        assert!(s.buckets_off >= s.undo_off + undo);
        assert!(s.heads_off >= s.buckets_off + 4 * g.buckets as usize);
        assert!(s.links_off >= s.heads_off + (g.chunks_per_shard as usize).div_ceil(64) * 8);
        assert!(s.arena_off >= s.links_off + 4 * g.chunks_per_shard as usize);
        assert!(s.region_len >= s.arena_off + g.arena_bytes() as usize);
        assert_eq!(s.marks_off, LOCK_BLOCK + s.region_len);
        assert!(s.stride >= s.marks_off + (g.chunks_per_shard as usize).div_ceil(64) * 8);
        for off in [
            s.marks_off,
            s.buckets_off,
            s.heads_off,
            s.links_off,
            s.arena_off,
            s.stride,
        ] {
            assert_eq!(off % SECTION_ALIGN, 0);
        }
        let c = g.coord;
        assert_eq!(c.offset, g.shards_offset + 4 * s.stride);
        assert_eq!(c.offset % (2 * SECTION_ALIGN), 0);
        assert_eq!(c.wake_offset, c.offset + LOCK_BLOCK);
        assert!(c.region_offset >= c.wake_offset + 4 * c.slots as usize);
        assert_eq!(c.region_offset % SECTION_ALIGN, 0);
        assert_eq!(c.region_len, 64 + 64 * c.slots as usize);
        assert!(g.memo_stats_offset >= c.region_offset + c.region_len);
        assert_eq!(g.memo_stats_offset % (2 * SECTION_ALIGN), 0);
        assert!(g.ns_offset >= g.memo_stats_offset + MEMO_STAT_SLOTS * MEMO_STAT_WORDS * 8);
        assert_eq!(g.ns_offset % (2 * SECTION_ALIGN), 0);
        assert!(g.counters_offset >= g.ns_offset + NS_TABLE_BYTES);
        assert_eq!(g.counters_offset % (2 * SECTION_ALIGN), 0);
        assert_eq!(g.total_size, g.counters_offset + PROC_TABLE_BYTES);
        assert!(g.with_coord_slots(0).is_err());
        assert!(g.with_coord_slots(MAX_COORD_SLOTS + 1).is_err());
    }

    #[test]
    fn entry_limit_must_fit_twice_in_a_shard() {
        // Record, tag, key and value: 32 + 12 + 100 + 300 bytes = 7 chunks of 64: twice is
        // 14 > 10.
        assert!(Geometry::new(1, 10, 10, 64, 100, 300, 0, 0).is_err());
        assert!(Geometry::new(1, 10, 10, 64, 20, 100, 0, 0).is_ok());
        // Checksums add 8 bytes: 32 + 12 + 20 + 100 + 8 = 172 -> 3 chunks, 6 <= 10 still.
        let g = Geometry::new(1, 10, 10, 64, 20, 100, 0, 0).unwrap();
        assert!(g.with_checksums(true).is_ok());
        let g = Geometry::new(1, 10, 10, 64, 20, 252, 0, 0).unwrap();
        assert!(g.with_checksums(true).is_err());
    }

    #[test]
    fn entries_cannot_outnumber_chunks() {
        assert!(Geometry::new(1, 11, 10, 64, 8, 8, 0, 0).is_err());
        assert!(Geometry::new(1, 0, 10, 64, 8, 8, 0, 0).is_err());
        assert!(Geometry::new(1, 10, 10, 64, 8, 8, 0, 0).is_ok());
    }

    #[test]
    fn buckets_cost_at_most_a_byte_per_chunk() {
        for chunks in [64u32, 100, 1000, 4096, 100_000, 1 << 24] {
            let b = buckets_for(chunks, chunks);
            assert!(b.is_power_of_two());
            assert!(b as u64 * 4 <= chunks as u64, "{chunks} -> {b}");
            // Chains stay short even if every entry fits one chunk.
            assert!(chunks / b <= 8, "{chunks} -> {b}");
        }
        // A low entry cap sizes the buckets to the entries: two per bucket at most.
        assert_eq!(buckets_for(1000, 1 << 20), 512);
    }

    #[test]
    fn chunks_within_fills_the_budget() {
        for (budget, cs) in [
            (1u64 << 20, 64u32),
            (4 << 20, 64),
            (1 << 16, 256),
            (5000, 48),
        ] {
            let n = chunks_within(budget, cs, u32::MAX);
            let g = Geometry::new(1, n, n, cs, 1, 1, 0, 0).unwrap();
            assert!(g.shard.stride as u64 <= budget, "{budget}/{cs}: {n}");
            // Within a few chunks of the most that could fit.
            let slack = budget - g.shard.stride as u64;
            assert!(
                slack < 8 * (cs as u64 + 5) + 1024,
                "{budget}/{cs}: slack {slack}"
            );
        }
        assert_eq!(chunks_within(100, 64, u32::MAX), 0);
    }
}
