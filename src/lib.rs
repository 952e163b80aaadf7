//! # shmemcache
//!
//! One LRU cache in named shared memory that many processes use at once: forked workers
//! and separately launched programs attach to it by name, entries expire per key, a process
//! killed while holding a lock never wedges the others, and forks are handled for you.
//!
//! ```no_run
//! use shmemcache::{Cache, Options};
//! use std::time::Duration;
//!
//! // Any process that names "prices" shares the same entries.
//! let cache = Options::new().capacity_bytes(128 << 20).open("prices")?;
//! cache.set_ttl(b"sku:1", b"9.99", Some(Duration::from_secs(30)))?;
//! if let Some(v) = cache.get(b"sku:1")? {
//!     println!("{}", String::from_utf8_lossy(&v));
//! }
//! let hits = cache.incr(b"hits", 1)?;
//! # let _ = hits;
//! # Ok::<(), shmemcache::Error>(())
//! ```
//!
//! Layout, locking, recovery and fork protocols are drawn in `DESIGN.md`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!("shmemcache needs Linux: robust process-shared mutexes and /dev/shm");

mod cache;
mod clock;
mod coord;
mod error;
pub mod fault;
pub mod forkache;
pub mod layout;
mod listing;
mod memo;
#[doc(hidden)]
pub mod model;
mod name;
mod sys;
#[doc(hidden)]
pub use sys::floor::Floor;
mod sync;
pub mod table;
mod typed;

pub use cache::{
    Cache, CheckReport, Expiry, Info, Keys, Options, RepairSummary, SetOutcome, ShardStats, Stats,
};
pub use error::{Error, Result};
pub use listing::{list_in, list_segments, SegmentListing};
pub use memo::{ComputeError, ComputeOptions, Memo, MemoStats, OnError, Source, Ttl};
pub use name::{validate_name, MAX_NAME_LEN};
/// Memoizes a free function across processes; see [`Memo`] for the semantics.
#[cfg(feature = "macros")]
pub use shmemcache_macros::memoize;
pub use sync::{CoordStats, LockGuard, OnceBusy, Pool};
pub use typed::{Codec, Postcard, Typed};
