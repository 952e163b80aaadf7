//! The machine's subscriber: one process per machine (per tier) holds the tier's
//! subscriber lock in the segment and applies other machines' invalidations to the
//! shared L1. Every process runs a thread that waits for that lock; the lock's owner
//! dying (`kill -9`) frees it, so another process's thread takes over within the lock's
//! liveness interval.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::message::{self, Invalidation};
use crate::{stat, Inner};

/// How long one wait for the lock lasts before the thread checks whether to stop.
const LOCK_WAIT: Duration = Duration::from_millis(200);
/// How often a blocked read of the subscription wakes to check whether to stop.
const READ_TICK: Duration = Duration::from_millis(100);
/// Waits between attempts to (re)connect the subscription.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

impl Inner {
    /// Starts this process's subscriber thread unless it already runs (again in a child
    /// after `fork()`, which has no threads of the parent).
    pub(crate) fn ensure_subscriber(self: &Arc<Self>) {
        let pid = std::process::id();
        if self.started_in.load(Ordering::Relaxed) == pid {
            return;
        }
        let mut slot = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if self.started_in.load(Ordering::Relaxed) == pid {
            return;
        }
        self.subscribed.store(false, Ordering::Relaxed);
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("shmemcache-tier".into())
            .spawn(move || me.elect());
        // No thread to be had: another process may still be the subscriber, and L1
        // copies expire within l1_ttl regardless.
        if let Ok(h) = spawned {
            *slot = Some(h);
            self.started_in.store(pid, Ordering::Relaxed);
        }
    }

    /// Waits to become the machine's subscriber, then serves until told to stop.
    fn elect(&self) {
        let lock = format!("tier-subscriber:{}", self.opts.name);
        while !self.stop.load(Ordering::Relaxed) {
            match self.meta.lock(&lock, None, LOCK_WAIT) {
                Ok(guard) => {
                    let _ = self.meta.incr(stat::ELECTIONS, 1);
                    self.serve();
                    drop(guard);
                }
                Err(shmemcache::Error::Busy { .. }) => {}
                Err(_) => std::thread::sleep(LOCK_WAIT),
            }
        }
    }

    /// Subscribes, applies messages, and resubscribes after a lost connection, until
    /// told to stop.
    fn serve(&self) {
        let mut backoff = BACKOFF_MIN;
        let mut first = true;
        while !self.stop.load(Ordering::Relaxed) {
            let mut conn = match self.connect() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let mut ps = conn.as_pubsub();
            if ps.subscribe(&self.channel).is_err() || ps.set_read_timeout(Some(READ_TICK)).is_err()
            {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            backoff = BACKOFF_MIN;
            // Subscribed: whatever changed before now and was not seen (this machine had
            // no subscriber, or it lost its connection) may be stale in L1. Dropping the
            // tier's L1 entries is one generation bump.
            if self.l1.invalidate().is_ok() && !first {
                let _ = self.meta.incr(stat::RESUBSCRIBED, 1);
            }
            first = false;
            self.listening(true);
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    self.listening(false);
                    return;
                }
                match ps.get_message() {
                    Ok(msg) => self.apply(msg.get_payload_bytes()),
                    Err(e) if e.is_timeout() => {}
                    // The connection is gone: resubscribe (and drop L1 then).
                    Err(_) => break,
                }
            }
            self.listening(false);
        }
    }

    /// Records whether this process is listening on the channel now (and, machine-wide,
    /// which process is).
    fn listening(&self, on: bool) {
        self.subscribed.store(on, Ordering::Relaxed);
        let pid = if on { std::process::id() } else { 0 };
        let _ = self.meta.set(stat::SUBSCRIBER, pid.to_string().as_bytes());
    }

    /// Applies one invalidation message (ignoring this machine's own and malformed ones).
    fn apply(&self, payload: &[u8]) {
        let Some((origin, inv)) = message::decode(payload) else {
            return;
        };
        if origin == self.origin.as_slice() {
            return;
        }
        let done = match inv {
            Invalidation::Key(k) => self.bump(k).is_ok() && self.l1.delete(k).is_ok(),
            Invalidation::All => self.l1.invalidate().is_ok(),
        };
        if done {
            let _ = self.meta.incr(stat::INVALIDATIONS, 1);
        }
    }
}
