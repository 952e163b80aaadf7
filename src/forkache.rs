//! In-process caches that clear themselves in a forked child.
//!
//! A `HashMap` memo filled in a parent is copied into every child by `fork()`; values that
//! depend on the process (its pid, open connections, thread handles, random state) are then
//! silently wrong. [`ForkSafe`] wraps any cache implementing [`ForkClear`] and clears it the
//! first time it is used in a child after a fork.
//!
//! ```
//! use shmemcache::forkache::ForkSafe;
//! use std::collections::HashMap;
//!
//! let memo: ForkSafe<HashMap<&str, u32>> = ForkSafe::new(HashMap::new());
//! memo.lock().insert("pid", std::process::id());
//! // After fork(), the child's first `memo.lock()` sees an empty map.
//! assert_eq!(memo.lock().get("pid"), Some(&std::process::id()));
//! ```
//!
//! Caveat shared by every in-process lock: if another thread of the parent holds the
//! wrapper's mutex at the instant of `fork()`, the child inherits it locked.

use crate::sys::fork;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
#[cfg(feature = "lru")]
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A cache that can be emptied after a fork.
pub trait ForkClear {
    /// Drops every entry.
    fn clear_for_fork(&mut self);
}

impl<K, V, S> ForkClear for HashMap<K, V, S> {
    fn clear_for_fork(&mut self) {
        self.clear()
    }
}
impl<K, S> ForkClear for HashSet<K, S> {
    fn clear_for_fork(&mut self) {
        self.clear()
    }
}
impl<K, V> ForkClear for BTreeMap<K, V> {
    fn clear_for_fork(&mut self) {
        self.clear()
    }
}
impl<K> ForkClear for BTreeSet<K> {
    fn clear_for_fork(&mut self) {
        self.clear()
    }
}
impl<T> ForkClear for VecDeque<T> {
    fn clear_for_fork(&mut self) {
        self.clear()
    }
}
impl<T> ForkClear for Vec<T> {
    fn clear_for_fork(&mut self) {
        self.clear()
    }
}
impl<T> ForkClear for Option<T> {
    fn clear_for_fork(&mut self) {
        *self = None
    }
}

#[cfg(feature = "lru")]
impl<K: Hash + Eq, V, S: BuildHasher> ForkClear for lru::LruCache<K, V, S> {
    fn clear_for_fork(&mut self) {
        self.clear()
    }
}

/// A mutex-guarded in-process cache that is cleared on first use after `fork()`.
pub struct ForkSafe<C> {
    generation: AtomicU64,
    inner: Mutex<C>,
}

impl<C: ForkClear> ForkSafe<C> {
    /// Wraps `cache`; it belongs to the current process.
    pub fn new(cache: C) -> ForkSafe<C> {
        ForkSafe {
            generation: AtomicU64::new(fork::generation()),
            inner: Mutex::new(cache),
        }
    }

    /// Locks the cache, clearing it first if this process is a fork child that has not used
    /// it yet. A poisoned lock is recovered (the cache is cleared: its state is unknown).
    pub fn lock(&self) -> MutexGuard<'_, C> {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                let mut g = poisoned.into_inner();
                g.clear_for_fork();
                g
            }
        };
        let now = fork::generation();
        if self.generation.load(Ordering::Acquire) != now {
            guard.clear_for_fork();
            self.generation.store(now, Ordering::Release);
        }
        guard
    }

    /// Runs `f` with the cache locked.
    pub fn with<R>(&self, f: impl FnOnce(&mut C) -> R) -> R {
        f(&mut self.lock())
    }

    /// Unwraps the cache.
    pub fn into_inner(self) -> C {
        self.inner.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl<C: ForkClear + Default> Default for ForkSafe<C> {
    fn default() -> Self {
        ForkSafe::new(C::default())
    }
}
