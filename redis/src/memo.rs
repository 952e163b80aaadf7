//! Memoization with single flight across machines.
//!
//! Two levels. On each machine the segment's own `get_or_compute` (futex wake-up,
//! dead-owner takeover by pid) lets one process through; the others sleep on the local
//! futex, so one Redis round trip serves all of a machine's waiters. That process then
//! agrees with the other machines through Redis:
//!
//! 1. `GET` the key: computed elsewhere already, done.
//! 2. Else `SET flight:KEY TOKEN NX PX lease`. The winner computes, renewing its lease
//!    every third of it while it runs, stores the value (`SET ... PX ttl`) and publishes
//!    on the key's done channel in one script, then drops its marker.
//! 3. A loser subscribes to the done channel, checks the key once more, and sleeps until
//!    the publish or the marker's remaining lease, then starts over at 1. A marker whose
//!    owner died lapses with its lease (a remote pid cannot be checked) and the next
//!    loser takes over.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmemcache::{ComputeError, ComputeOptions, Ttl};

use crate::{Result, TierError, Tiered};

/// Stores a computed value and wakes the other machines' waiters.
const LAND: &str = r"
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[4], 'done')
return 1
";

/// Extends a flight marker's lease if it is still this owner's.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Drops a flight marker if it is still this owner's, and wakes waiters (to retry).
const ABANDON: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], 'abandoned')
return 1
";

/// Options of [`Tiered::get_or_compute`].
#[derive(Clone, Copy, Debug)]
pub struct RemoteCompute {
    ttl: Option<Duration>,
    lease: Duration,
    wait_timeout: Duration,
}

impl Default for RemoteCompute {
    fn default() -> Self {
        RemoteCompute {
            ttl: None,
            lease: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(60),
        }
    }
}

impl RemoteCompute {
    /// Defaults: no TTL in Redis (L1 copies still live at most `l1_ttl`), a 10 s lease,
    /// waiting up to 60 s.
    pub fn new() -> Self {
        Self::default()
    }
    /// How long the value lives in Redis.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// The computing owner's lease, renewed while it runs: how long a crashed owner
    /// holds up the other machines.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }
    /// How long a caller waits for another machine's computation before giving up
    /// with [`TierError::Busy`].
    pub fn wait_timeout(mut self, d: Duration) -> Self {
        self.wait_timeout = d;
        self
    }
}

/// Why [`Tiered::get_or_compute`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteComputeError<E> {
    /// The function returned this error (nothing was stored; waiters retry).
    #[error("computation failed: {0}")]
    Compute(E),
    /// The cache or Redis failed.
    #[error(transparent)]
    Tier(#[from] TierError),
}

impl Tiered {
    /// The value of `key`, computed by `f` on a miss, with single flight across every
    /// process of every machine: one `f` runs at a time for a key, the others wait for
    /// its value (woken by a publish, not by polling). Keys here are their own key space:
    /// read and write them only through `get_or_compute`.
    pub fn get_or_compute<E>(
        &self,
        key: &[u8],
        opts: &RemoteCompute,
        f: impl FnOnce() -> std::result::Result<Vec<u8>, E>,
    ) -> std::result::Result<Vec<u8>, RemoteComputeError<E>> {
        if opts.lease < Duration::from_millis(3) {
            return Err(TierError::InvalidArgument("a lease must be at least 3 ms".into()).into());
        }
        if opts.ttl.is_some_and(|t| t.is_zero()) {
            return Err(TierError::Cache(shmemcache::Error::ZeroTtl).into());
        }
        self.inner.ensure_subscriber();
        let l1_ttl = opts
            .ttl
            .map_or(self.inner.opts.l1_ttl, |t| t.min(self.inner.opts.l1_ttl));
        let local = ComputeOptions::new()
            .ttl(Ttl::For(l1_ttl))
            .wait_timeout(opts.wait_timeout);
        // Only this machine's flight owner gets here; its value lands in L1 for the rest.
        let mut failure = None;
        let res = self.inner.l1.get_or_compute(&memo_key(key), &local, || {
            self.remote(key, opts, f).map_err(|e| failure = Some(e))
        });
        match res {
            Ok(v) => Ok(v),
            Err(ComputeError::Cache(e)) => Err(TierError::Cache(e).into()),
            Err(ComputeError::Compute(())) => {
                Err(failure
                    .unwrap_or_else(|| TierError::Busy("the computation failed".into()).into()))
            }
        }
    }

    /// This machine's turn: the value from Redis, or computed here if no other machine
    /// is computing it, or waited for.
    fn remote<E>(
        &self,
        key: &[u8],
        opts: &RemoteCompute,
        f: impl FnOnce() -> std::result::Result<Vec<u8>, E>,
    ) -> std::result::Result<Vec<u8>, RemoteComputeError<E>> {
        let n = &self.inner.opts.name;
        let value_key = self.inner.redis_key(&memo_key(key));
        let mut flight =
            format!("{}shmemcache:flight:{n}:", self.inner.opts.key_prefix).into_bytes();
        flight.extend_from_slice(key);
        let mut channel = format!("shmemcache:flight-done:{n}:").into_bytes();
        channel.extend_from_slice(key);
        let keys = FlightKeys {
            value: &value_key,
            flight: &flight,
            channel: &channel,
        };
        let mut f = Some(f);
        let deadline = Instant::now() + opts.wait_timeout;
        // Most calls find the value or win at once: subscribe only to wait.
        if let Some(out) = self.attempt(&keys, opts, &mut f)? {
            return out;
        }
        let mut conn = self.inner.connect().map_err(TierError::from)?;
        let mut ps = conn.as_pubsub();
        ps.subscribe(&channel).map_err(TierError::from)?;
        loop {
            // Subscribed before this check: a landing after it wakes us.
            if let Some(out) = self.attempt(&keys, opts, &mut f)? {
                return out;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TierError::Busy(format!(
                    "another machine's computation did not finish within {:?}",
                    opts.wait_timeout
                ))
                .into());
            }
            let pttl: i64 = self
                .inner
                .with_conn(|c| redis::cmd("PTTL").arg(&flight).query(c))?;
            let nap = (deadline - now)
                .min(Duration::from_millis(pttl.max(1) as u64))
                .max(Duration::from_millis(1));
            ps.set_read_timeout(Some(nap)).map_err(TierError::from)?;
            match ps.get_message() {
                Ok(_) => {}
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(TierError::from(e).into()),
            }
        }
    }

    /// One try: `Some` with the stored value, or with the outcome of computing it here
    /// (if this call won the marker); `None` if another owner's marker stands.
    #[allow(clippy::type_complexity)]
    fn attempt<E, F>(
        &self,
        k: &FlightKeys<'_>,
        opts: &RemoteCompute,
        f: &mut Option<F>,
    ) -> Result<Option<std::result::Result<Vec<u8>, RemoteComputeError<E>>>>
    where
        F: FnOnce() -> std::result::Result<Vec<u8>, E>,
    {
        let found: Option<Vec<u8>> = self
            .inner
            .with_conn(|c| redis::cmd("GET").arg(k.value).query(c))?;
        if let Some(v) = found {
            return Ok(Some(Ok(v)));
        }
        let token = crate::coord::token(self);
        let lease = opts.lease.as_millis() as u64;
        let won: Option<String> = self.inner.with_conn(|c| {
            redis::cmd("SET")
                .arg(k.flight)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(lease)
                .query(c)
        })?;
        if won.is_none() {
            return Ok(None);
        }
        let f = f.take().expect("a call wins the marker at most once");
        Ok(Some(self.own(k, opts, &token, f)))
    }

    /// Computes as the owner, renewing the lease meanwhile, then lands the value (or
    /// abandons the marker so a waiter retries).
    fn own<E>(
        &self,
        k: &FlightKeys<'_>,
        opts: &RemoteCompute,
        token: &str,
        f: impl FnOnce() -> std::result::Result<Vec<u8>, E>,
    ) -> std::result::Result<Vec<u8>, RemoteComputeError<E>> {
        let lease = opts.lease.as_millis() as u64;
        let out = std::thread::scope(|s| {
            let (stop, stopped) = mpsc::channel::<()>();
            s.spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(opts.lease / 3)
                {
                    let renewed: Result<i64> = self
                        .inner
                        .with_conn(|c| lua!(RENEW).key(k.flight).arg(token).arg(lease).invoke(c));
                    // Lost (lapsed, force-cleared): renewing again would be wrong.
                    if matches!(renewed, Ok(0)) {
                        break;
                    }
                }
            });
            let out = f();
            drop(stop);
            out
        });
        match out {
            Ok(v) => {
                let px = opts.ttl.map_or(0, |t| t.as_millis().max(1) as u64);
                self.inner.with_conn(|c| {
                    lua!(LAND)
                        .key(k.value)
                        .key(k.flight)
                        .arg(&v)
                        .arg(px)
                        .arg(token)
                        .arg(k.channel)
                        .invoke::<i64>(c)
                })?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.inner.with_conn(|c| {
                    lua!(ABANDON)
                        .key(k.flight)
                        .arg(token)
                        .arg(k.channel)
                        .invoke::<i64>(c)
                });
                Err(RemoteComputeError::Compute(e))
            }
        }
    }
}

/// The Redis names of one key's flight.
struct FlightKeys<'a> {
    value: &'a [u8],
    flight: &'a [u8],
    channel: &'a [u8],
}

fn memo_key(key: &[u8]) -> Vec<u8> {
    let mut k = b"memo\0".to_vec();
    k.extend_from_slice(key);
    k
}
