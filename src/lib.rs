//! # shmemcache
//!
//! One LRU cache in named shared memory that many processes use at once: forked workers
//! and separately launched programs attach to it by name, entries expire per key, a process
//! killed while holding a lock never wedges the others, and forks are handled for you. No
//! server, no socket: a get is a hash and a copy read under a per-shard version word with
//! no lock taken (it retries if a writer ran meanwhile); a write is a short critical section
//! behind a robust mutex.
//!
//! ```
//! use shmemcache::{Cache, Options};
//! use std::time::Duration;
//!
//! // Any process that names "doc-prices" shares the same entries.
//! let cache = Options::new().capacity_bytes(16 << 20).open("doc-prices")?;
//! cache.set_ttl(b"sku:1", b"9.99", Some(Duration::from_secs(30)))?;
//! assert_eq!(cache.get(b"sku:1")?.as_deref(), Some(&b"9.99"[..]));
//! assert_eq!(cache.incr(b"hits", 1)?, 1);
//! Cache::unlink("doc-prices")?; // the name goes; open handles keep their mapping
//! # Ok::<(), shmemcache::Error>(())
//! ```
//!
//! # A tour
//!
//! **The cache.** [`Cache::open`] opens a segment by name or creates it with the default
//! [`Options`]; a joiner adopts the creator's geometry. Bytes in, bytes out: [`get`],
//! [`get_into`] (no allocation), [`set`], [`set_ttl`], [`add`], [`replace`], [`take`],
//! [`delete`], [`incr`], [`expire`], [`ttl`], [`keys`], [`clear`], [`stats`], [`check`] and
//! [`repair`]. A set evicts least recently used entries when it needs room, and never fails
//! for lack of space when the entry is within the limits.
//!
//! The cache is split into shards (16 by default), each behind its own robust mutex, and
//! Recency is lazy by default ([`Recency`]): a get marks its entry accessed, and eviction
//! gives accessed entries a second chance; strict LRU order is an option.
//!
//! **`max_entries` and LRU order are kept per shard**: each shard holds `max_entries /
//! shards` entries and evicts its own least recently used one. With `shards(1)` both are
//! exact for the whole cache; with more, an entry can be evicted while a less recently used
//! one survives in another shard.
//!
//! **Typed values.** [`Cache::typed`] gives a [`Typed`] view whose keys and values are any
//! serde types, encoded with postcard (or your own [`Codec`]) outside every lock.
//!
//! ```
//! let cache = shmemcache::Cache::open("doc-typed")?;
//! let prices = cache.typed::<(String, u32), f64>();
//! prices.set(&("sku".into(), 7), &9.99)?;
//! assert_eq!(prices.get(&("sku".into(), 7))?, Some(9.99));
//! shmemcache::Cache::unlink("doc-typed")?;
//! # Ok::<(), shmemcache::Error>(())
//! ```
//!
//! **Memoization.** [`Cache::get_or_compute`] computes a missing value once across every
//! process on the machine: the others sleep on a futex and are woken when it lands, and a
//! waiter takes over if the computing process dies. [`Memo`] is a per-function handle, and
//! [`macro@memoize`] the attribute that writes one for you. Their counters
//! ([`MemoStats`]) are machine-wide and apart from the cache's hit ratio.
//!
//! **Namespaces and persistence.** [`Cache::namespace`] gives a named part of the cache with
//! the whole API; [`Cache::invalidate`] drops a namespace and those that
//! [depend on it](Cache::depends_on) for every process at once (one atomic store).
//! [`Cache::save`] and [`Cache::load`] write and read snapshot files, and
//! [`Cache::persistent_namespace`] warm-starts a namespace from its last snapshot, runs
//! [`Persistence`] hooks and saves by [`AutoSync`]'s rule.
//!
//! **Locks, once and pools** across processes: [`Cache::lock`] / [`Cache::try_lock`]
//! (owner-checked release, expiry, dead holders reclaimed), [`Cache::once`] and
//! [`Cache::pool`] (at most N holders machine-wide).
//!
//! ```
//! use shmemcache::{Cache, OnceBusy};
//! use std::time::Duration;
//! let cache = Cache::open("doc-locks")?;
//! let guard = cache.lock("nightly", Some(Duration::from_secs(60)), Duration::from_secs(5))?;
//! assert!(cache.try_lock("nightly", None)?.is_none()); // held (by this process, too)
//! guard.release()?;
//! let ran = cache.once("rebuild", None, OnceBusy::Return(false), || true)?;
//! let out = cache.pool("gpu", 2)?.run_or(None, || "ran", || "full")?;
//! assert!(ran && out == "ran");
//! Cache::unlink("doc-locks")?;
//! # Ok::<(), shmemcache::Error>(())
//! ```
//!
//! **Fork.** Handles keep working in forked children; a child's drop never unlinks or
//! clears anything, [`Cache::is_inherited`] tells a handle that crossed a fork, and guards
//! inherited across a fork do nothing in the child. [`forkache::ForkSafe`] clears
//! in-process caches in a child the first time it touches them.
//!
//! **From the shell.** The `shmemcache` command (crate `shmemcache-cli`:
//! `cargo install --path cli` in the repository) inspects and changes a live cache by name
//! (`info`, `stats --watch`, `get`, `set`, `keys`, `check`, `repair`, ...) and benchmarks
//! it against Redis, LMDB and the floor (`shmemcache bench`).
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `macros` | yes | [`macro@memoize`] |
//! | `lru` | no | [`forkache::ForkClear`] for `lru::LruCache` |
//!
//! (`fault-injection` and `test-support` exist for the project's own tests and benchmarks;
//! they are not API.)
//!
//! # Design
//!
//! The segment layout byte by byte, and the create/join, lock, recovery, coordination and
//! fork protocols: [`design`].
//!
//! [`get`]: Cache::get
//! [`get_into`]: Cache::get_into
//! [`set`]: Cache::set
//! [`set_ttl`]: Cache::set_ttl
//! [`add`]: Cache::add
//! [`replace`]: Cache::replace
//! [`take`]: Cache::take
//! [`delete`]: Cache::delete
//! [`incr`]: Cache::incr
//! [`expire`]: Cache::expire
//! [`ttl`]: Cache::ttl
//! [`keys`]: Cache::keys
//! [`clear`]: Cache::clear
//! [`stats`]: Cache::stats
//! [`check`]: Cache::check
//! [`repair`]: Cache::repair

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!("shmemcache needs Linux: robust process-shared mutexes and /dev/shm");

mod autosync;
mod cache;
mod clock;
mod coord;
mod counters;
mod error;
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub mod fault;
#[cfg(not(feature = "fault-injection"))]
mod fault;
pub mod forkache;
mod layout;
mod listing;
mod memo;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod model;
mod name;
mod namespace;
mod optimistic;
mod persist;
mod snapshot;
mod sync;
mod sys;
mod table;
mod typed;

/// Test and benchmark support (the `test-support` feature): not part of the API, no
/// stability promise.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod support {
    /// The robust process-shared mutex the shards use, for the CLI's benchmark floor.
    pub mod robust {
        pub use crate::layout::LOCK_BLOCK;
        pub use crate::sys::robust::{init, lock, Acquired, Held, LockError};
    }
}

pub use autosync::{AutoSync, EditWindow};
pub use cache::{
    Cache, CheckReport, Expiry, Info, Keys, Options, Recency, RepairSummary, SetOutcome,
    ShardStats, Stats,
};
pub use error::{Error, Result, COORDINATION_LOCK};
pub use listing::{list_segments, SegmentListing};
pub use memo::{ComputeError, ComputeOptions, Memo, MemoStats, MemoValue, OnError, Ttl};
pub use name::{validate_name, MAX_NAME_LEN};
pub use namespace::{GetCounts, NamespaceInfo, NamespaceStats};
pub use persist::{Item, Persistence};
pub use snapshot::{LoadMode, SnapshotReport, SNAPSHOT_VERSION};
pub use sync::{CoordStats, LockGuard, OnceBusy, Pool};
pub use typed::{Codec, Postcard, Typed};

/// serde, re-exported so memoized results and typed values of your own types need no extra
/// dependency: `#[derive(shmemcache::Serialize, shmemcache::Deserialize)]` with
/// `#[serde(crate = "shmemcache::serde")]`.
pub use serde;
pub use serde::{Deserialize, Serialize};

#[cfg(feature = "macros")]
#[doc = include_str!("memoize.md")]
pub use shmemcache_macros::memoize;

#[doc = include_str!("../DESIGN.md")]
pub mod design {}

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// What `#[memoize]` expands to refers to these; not API.
#[doc(hidden)]
pub mod __macro_support {
    /// Checked where the user wrote the result type, so a missing derive is one clear error
    /// pointing at it.
    #[inline(always)]
    pub fn assert_memo_value<T: crate::MemoValue>() {}
}
