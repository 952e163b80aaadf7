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

pub use cache::{
    Cache, CheckReport, Expiry, Info, Keys, Options, RepairSummary, SetOutcome, ShardStats, Stats,
};
pub use error::{Error, Result};
pub use listing::{list_in, list_segments, SegmentListing};
pub use memo::{ComputeError, ComputeOptions, Memo, MemoStats, MemoValue, OnError, Source, Ttl};
pub use name::{validate_name, MAX_NAME_LEN};
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

/// What `#[memoize]` expands to refers to these; not API.
#[doc(hidden)]
pub mod __macro_support {
    /// Checked where the user wrote the result type, so a missing derive is one clear error
    /// pointing at it.
    #[inline(always)]
    pub fn assert_memo_value<T: crate::MemoValue>() {}
}
