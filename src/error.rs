//! The one error type.

use std::time::Duration;

/// Everything that can go wrong. Matching should use a wildcard arm: new variants may be
/// added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The segment name is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid segment name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key is longer than the segment's key limit.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// Key length.
        len: usize,
        /// The segment's limit.
        max: usize,
    },
    /// The value is longer than the segment's value limit.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Value length.
        len: usize,
        /// The segment's limit.
        max: usize,
    },
    /// A TTL of zero was given; use `None` for "never expires".
    #[error("a TTL of zero is not allowed (use None for no expiry)")]
    ZeroTtl,
    /// No segment by that name.
    #[error("segment {name:?} does not exist")]
    NotFound {
        /// Segment name.
        name: String,
    },
    /// A segment by that name exists and creation was exclusive.
    #[error("segment {name:?} already exists")]
    AlreadyExists {
        /// Segment name.
        name: String,
    },
    /// The segment was made by an incompatible build or is not a shmemcache segment.
    #[error("segment {name:?} is incompatible: {reason}")]
    Incompatible {
        /// Segment name.
        name: String,
        /// What differs.
        reason: String,
    },
    /// The segment's structure is damaged beyond what a handle can use.
    #[error("segment {name:?} is corrupted: {reason}")]
    Corrupted {
        /// Segment name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A shard lock, or the coordination table's, could not be taken in time: its holder
    /// is stopped or hung.
    #[error("timed out after {waited:?} waiting for the lock of {} (its holder is stopped or hung)", lock_name(*shard))]
    LockTimeout {
        /// Shard index, or [`COORDINATION_LOCK`] for the coordination table (locks, once,
        /// pools and single-flight markers).
        shard: usize,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The segment belongs to another user or its mode forbids access.
    #[error("permission denied for segment {name:?}: {reason}")]
    PermissionDenied {
        /// Segment name.
        name: String,
        /// Why.
        reason: String,
    },
    /// `/dev/shm` (tmpfs) has no room for the segment.
    #[error("no space in /dev/shm for segment {name:?} of {needed} bytes")]
    NoSpace {
        /// Segment name.
        name: String,
        /// Bytes the segment needs.
        needed: u64,
    },
    /// An option or argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A snapshot file is not one this build can load: truncated, damaged, or foreign.
    /// Nothing in the cache was changed.
    #[error("snapshot {path:?} cannot be loaded: {reason}")]
    BadSnapshot {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{op} {path:?} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `incr`/`decr` found a value that is not a decimal `i64`.
    #[error("the stored value is not a decimal integer")]
    NotAnInteger,
    /// `incr`/`decr` would overflow an `i64`.
    #[error("integer overflow")]
    Overflow,
    /// `get_into` was given a buffer shorter than the value.
    #[error("buffer of {len} bytes is too small for a value of {needed} bytes")]
    BufferTooSmall {
        /// Value length.
        needed: usize,
        /// Buffer length.
        len: usize,
    },
    /// Encoding or decoding a typed key or value failed.
    #[error("codec error: {0}")]
    Codec(String),
    /// A lock is held by a live process, a pool is full, or a `once` body is running
    /// elsewhere, and the caller chose not to wait (or waited its full bound).
    #[error("{what} {name:?} is busy: {reason}")]
    Busy {
        /// "lock", "pool" or "once".
        what: &'static str,
        /// Its name.
        name: String,
        /// Who holds it, or how long the caller waited.
        reason: String,
    },
    /// A release was refused: the hold lapsed and the lock or slot may now be another owner's.
    #[error(
        "{what} {name:?} is no longer held by this guard (its hold expired or was force-released)"
    )]
    NotOwner {
        /// "lock" or "pool".
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// Every coordination slot (single-flight markers, locks, pool slots) is in use.
    #[error("all {slots} coordination slots are in use; create the segment with more")]
    CoordinationFull {
        /// Slots in the segment.
        slots: u32,
    },
    /// Another process's computation of this key failed and the caller asked to be told
    /// rather than to retry.
    #[error("the computation of this key failed in process {pid}")]
    ComputedElsewhereFailed {
        /// The process whose computation failed.
        pid: u32,
    },
    /// Any other operating-system error.
    #[error("{op} failed for segment {name:?}: {source}")]
    Os {
        /// The failing call.
        op: &'static str,
        /// Segment name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// [`Error::LockTimeout`]'s `shard` when the lock was the coordination table's.
pub const COORDINATION_LOCK: usize = usize::MAX;

fn lock_name(shard: usize) -> String {
    if shard == COORDINATION_LOCK {
        "the coordination table".to_string()
    } else {
        format!("shard {shard}")
    }
}
