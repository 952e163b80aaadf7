//! Locks, `once` and pools across machines (py-cachify's, with owner tokens).
//!
//! - A lock is `SET lock:NAME TOKEN NX PX ms`; only a holder with the token releases it
//!   (a Lua compare-and-delete), and `force_release` is the explicit exception. The hold
//!   is a lease: a holder on another machine cannot be checked for liveness, so a
//!   crashed holder's lock frees itself when the lease lapses.
//! - Waiters subscribe to the lock's channel: a release publishes there and wakes them;
//!   a lapsing lease is caught by waking at most at its remaining time.
//! - A pool is a sorted set of holder tokens scored by lease end, changed by one Lua
//!   script that first drops lapsed holders.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{Result, TierError, Tiered};

/// Releases a lock only for its holder, and wakes waiters.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
";

/// Deletes a lock whoever holds it, and wakes waiters.
const FORCE_RELEASE: &str = r"
local n = redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], 'released')
return n
";

/// Takes a pool slot if fewer than ARGV[1] unlapsed holders; ARGV[2] lease ms, ARGV[3]
/// token.
const POOL_ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
";

/// Unlapsed holders of a pool.
const POOL_SIZE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
";

/// Tokens are unique per hold: machine, process, a counter and the time.
pub(crate) fn token(tier: &Tiered) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}/{}/{n}/{t}",
        String::from_utf8_lossy(&tier.inner.origin),
        std::process::id()
    )
}

fn lease_ms(what: &str, d: Duration) -> Result<u64> {
    match d.as_millis() {
        0 => Err(TierError::InvalidArgument(format!(
            "{what} must be at least 1 ms"
        ))),
        ms => Ok(ms.min(u64::MAX as u128) as u64),
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 {
        return Err(TierError::InvalidArgument(format!(
            "lock or pool name of {} bytes (1 to 256 allowed)",
            name.len()
        )));
    }
    Ok(())
}

/// A lock held across machines. Released on drop, or with [`release`](Self::release) to
/// learn whether the hold was still this guard's.
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub struct RemoteLockGuard<'t> {
    tier: &'t Tiered,
    key: String,
    channel: String,
    token: String,
    done: bool,
}

impl RemoteLockGuard<'_> {
    /// Releases the hold. `Ok(false)` if it was no longer this guard's (the lease lapsed,
    /// or someone force-released it): another holder's lock is never released.
    pub fn release(mut self) -> Result<bool> {
        self.done = true;
        self.release_now()
    }

    fn release_now(&self) -> Result<bool> {
        let n: i64 = self.tier.inner.with_conn(|c| {
            lua!(RELEASE)
                .key(&self.key)
                .arg(&self.token)
                .arg(&self.channel)
                .invoke(c)
        })?;
        Ok(n == 1)
    }

    /// Whether Redis still has this guard's token on the lock.
    pub fn is_held(&self) -> Result<bool> {
        let v: Option<String> = self
            .tier
            .inner
            .with_conn(|c| redis::cmd("GET").arg(&self.key).query(c))?;
        Ok(v.as_deref() == Some(self.token.as_str()))
    }
}

impl Drop for RemoteLockGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.release_now();
        }
    }
}

/// What [`Tiered::once`] returns when the body runs on another machine or process.
#[derive(Debug)]
pub enum RemoteOnceBusy<T> {
    /// Return this value.
    Return(T),
    /// Return [`TierError::Busy`].
    Error,
}

/// A pool across machines: at most `max_size` holders at once.
#[derive(Debug)]
pub struct RemotePool<'t> {
    tier: &'t Tiered,
    key: String,
    max_size: usize,
}

impl<'t> RemotePool<'t> {
    /// Takes a slot for at most `lease` if fewer than `max_size` are held; `None` if full.
    pub fn try_acquire(&self, lease: Duration) -> Result<Option<RemoteSlot<'t>>> {
        let ms = lease_ms("a pool lease", lease)?;
        let token = token(self.tier);
        let n: i64 = self.tier.inner.with_conn(|c| {
            lua!(POOL_ACQUIRE)
                .key(&self.key)
                .arg(self.max_size)
                .arg(ms)
                .arg(&token)
                .invoke(c)
        })?;
        Ok((n == 1).then(|| RemoteSlot {
            tier: self.tier,
            key: self.key.clone(),
            token,
            done: false,
        }))
    }

    /// Holders whose lease has not lapsed.
    pub fn size(&self) -> Result<usize> {
        let n: i64 = self
            .tier
            .inner
            .with_conn(|c| lua!(POOL_SIZE).key(&self.key).invoke(c))?;
        Ok(n.max(0) as usize)
    }

    /// The pool's capacity.
    pub fn max_size(&self) -> usize {
        self.max_size
    }
}

/// A held pool slot; freed on drop or with [`release`](Self::release).
#[must_use = "the slot is freed when it is dropped"]
#[derive(Debug)]
pub struct RemoteSlot<'t> {
    tier: &'t Tiered,
    key: String,
    token: String,
    done: bool,
}

impl RemoteSlot<'_> {
    /// Frees the slot; `Ok(false)` if its lease had lapsed (it was no longer held).
    pub fn release(mut self) -> Result<bool> {
        self.done = true;
        self.release_now()
    }

    fn release_now(&self) -> Result<bool> {
        let n: i64 = self
            .tier
            .inner
            .with_conn(|c| redis::cmd("ZREM").arg(&self.key).arg(&self.token).query(c))?;
        Ok(n == 1)
    }
}

impl Drop for RemoteSlot<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.release_now();
        }
    }
}

impl Tiered {
    fn lock_key(&self, kind: &str, name: &str) -> (String, String) {
        let n = &self.inner.opts.name;
        (
            format!("{}shmemcache:{kind}:{n}:{name}", self.inner.opts.key_prefix),
            format!("shmemcache:{kind}-released:{n}:{name}"),
        )
    }

    fn try_take(
        &self,
        kind: &str,
        name: &str,
        lease: Duration,
    ) -> Result<Option<RemoteLockGuard<'_>>> {
        check_name(name)?;
        let ms = lease_ms("a lock lease", lease)?;
        let (key, channel) = self.lock_key(kind, name);
        let token = token(self);
        let ok: Option<String> = self.inner.with_conn(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query(c)
        })?;
        Ok(ok.map(|_| RemoteLockGuard {
            tier: self,
            key,
            channel,
            token,
            done: false,
        }))
    }

    /// Takes the named lock across every machine if it is free, for at most `lease`
    /// (a holder on another machine cannot be checked for liveness: a crashed holder's
    /// lock frees itself when its lease lapses). Never waits.
    pub fn try_lock(&self, name: &str, lease: Duration) -> Result<Option<RemoteLockGuard<'_>>> {
        self.try_take("lock", name, lease)
    }

    /// Takes the named lock, waiting up to `wait`: woken by a release (published on the
    /// lock's channel), or when the holder's lease lapses. [`TierError::Busy`] when the
    /// wait runs out.
    pub fn lock(&self, name: &str, lease: Duration, wait: Duration) -> Result<RemoteLockGuard<'_>> {
        if let Some(g) = self.try_lock(name, lease)? {
            return Ok(g);
        }
        let deadline = Instant::now() + wait;
        let (key, channel) = self.lock_key("lock", name);
        // A connection of its own: a subscribed connection takes no other commands.
        let mut sub = self.inner.connect()?;
        let mut ps = sub.as_pubsub();
        ps.subscribe(&channel)?;
        loop {
            // Subscribed before this attempt: a release after it cannot be missed.
            if let Some(g) = self.try_lock(name, lease)? {
                return Ok(g);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TierError::Busy(format!(
                    "lock {name:?} is held; waited {wait:?}"
                )));
            }
            let pttl: i64 = self
                .inner
                .with_conn(|c| redis::cmd("PTTL").arg(&key).query(c))?;
            let lapse = Duration::from_millis(pttl.max(1) as u64);
            let nap = (deadline - now).min(lapse).max(Duration::from_millis(1));
            ps.set_read_timeout(Some(nap))?;
            match ps.get_message() {
                Ok(_) => {}
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether the named lock is held by anyone now.
    pub fn is_locked(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let (key, _) = self.lock_key("lock", name);
        let n: i64 = self
            .inner
            .with_conn(|c| redis::cmd("EXISTS").arg(&key).query(c))?;
        Ok(n == 1)
    }

    /// Releases the named lock whoever holds it (their guard's release then returns
    /// `false`); true if it was held.
    pub fn force_release(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let (key, channel) = self.lock_key("lock", name);
        let n: i64 = self
            .inner
            .with_conn(|c| lua!(FORCE_RELEASE).key(&key).arg(&channel).invoke(c))?;
        Ok(n == 1)
    }

    /// Runs `f` unless it is running under `name` on any machine now (py-cachify's
    /// `once`): the hold lasts while `f` runs, at most `lease`.
    pub fn once<T>(
        &self,
        name: &str,
        lease: Duration,
        busy: RemoteOnceBusy<T>,
        f: impl FnOnce() -> T,
    ) -> Result<T> {
        match self.try_take("once", name, lease)? {
            Some(g) => {
                let out = f();
                drop(g);
                Ok(out)
            }
            None => match busy {
                RemoteOnceBusy::Return(v) => Ok(v),
                RemoteOnceBusy::Error => Err(TierError::Busy(format!(
                    "once {name:?} is running on another machine or process"
                ))),
            },
        }
    }

    /// The named pool of `max_size` slots, shared by every machine.
    pub fn pool(&self, name: &str, max_size: usize) -> Result<RemotePool<'_>> {
        check_name(name)?;
        if max_size == 0 {
            return Err(TierError::InvalidArgument(
                "a pool needs at least 1 slot".into(),
            ));
        }
        let (key, _) = self.lock_key("pool", name);
        Ok(RemotePool {
            tier: self,
            key,
            max_size,
        })
    }
}
