//! A robust, process-shared `pthread_mutex_t` living in the segment.
//!
//! Robust: when the holder dies, the next `lock` returns `EOWNERDEAD` instead of blocking
//! forever; that holder repairs the protected data and calls `pthread_mutex_consistent`.
//! Acquisition is bounded (`pthread_mutex_timedlock`), so a stopped or hung holder yields
//! a timeout instead of a hang.

use std::io;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::time::Duration;

/// How a lock was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The previous holder unlocked normally.
    Clean,
    /// The previous holder died holding it: the data may be half-updated.
    OwnerDied,
}

/// Why a lock was not obtained.
#[derive(Debug)]
pub enum LockError {
    /// Not acquired before the deadline.
    Timeout,
    /// A holder got `EOWNERDEAD` and unlocked without marking it consistent.
    NotRecoverable,
    /// Anything else.
    Os(io::Error),
}

/// Initializes a robust, process-shared mutex at `m`.
///
/// # Safety
/// `m` must be valid for writes of a `pthread_mutex_t`, suitably aligned, and no process
/// may be using it.
pub unsafe fn init(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY: `attr` is a local initialized by pthread_mutexattr_init before any other use.
    check(unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) })?;
    let result = (|| {
        // SAFETY: `attr` was initialized above.
        check(unsafe {
            libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED)
        })?;
        // SAFETY: `attr` was initialized above.
        check(unsafe {
            libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST)
        })?;
        // SAFETY: the caller guarantees `m` is valid, aligned and unused; `attr` is initialized.
        check(unsafe { libc::pthread_mutex_init(m, attr.as_ptr()) })
    })();
    // SAFETY: `attr` was initialized and is destroyed exactly once.
    unsafe { libc::pthread_mutexattr_destroy(attr.as_mut_ptr()) };
    result
}

/// A held lock; unlocks on drop (after marking the mutex consistent if the previous owner
/// had died, so a panic during repair cannot leave it unrecoverable: the shard's dirty
/// marker makes the next holder repair again).
pub struct Held<'a> {
    m: *mut libc::pthread_mutex_t,
    acquired: Acquired,
    _segment: PhantomData<&'a ()>,
}

impl Held<'_> {
    /// Whether the previous holder died.
    #[inline]
    pub fn acquired(&self) -> Acquired {
        self.acquired
    }
}

impl Drop for Held<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.acquired == Acquired::OwnerDied {
            // SAFETY: `m` is a live robust mutex this thread holds (constructed only by `lock`).
            unsafe { libc::pthread_mutex_consistent(self.m) };
        }
        // SAFETY: `m` is a live mutex this thread holds.
        unsafe { libc::pthread_mutex_unlock(self.m) };
    }
}

/// Trylock attempts, with exponential backoff between them, before a timed sleep.
const SPIN_TRIES: u32 = 12;

/// Locks `m`, waiting at most `timeout`.
///
/// # Safety
/// `m` must point to a mutex initialized by [`init`] that stays mapped for `'a`.
#[inline]
pub unsafe fn lock<'a>(
    m: *mut libc::pthread_mutex_t,
    timeout: Duration,
) -> Result<Held<'a>, LockError> {
    // SAFETY: the caller guarantees `m` is an initialized mutex that outlives 'a.
    let rc = unsafe { libc::pthread_mutex_trylock(m) };
    if rc == 0 {
        return Ok(Held {
            m,
            acquired: Acquired::Clean,
            _segment: PhantomData,
        });
    }
    // SAFETY: forwarded from this function's contract.
    unsafe { lock_slow(m, timeout, rc) }
}

/// The rest of [`lock`] after a first `trylock` that returned `rc` (not 0).
///
/// # Safety
/// As for [`lock`].
#[cold]
#[inline(never)]
unsafe fn lock_slow<'a>(
    m: *mut libc::pthread_mutex_t,
    timeout: Duration,
    mut rc: libc::c_int,
) -> Result<Held<'a>, LockError> {
    // Critical sections last a few hundred ns: spin briefly before sleeping in the kernel,
    // which glibc's robust timedlock does at once (a futex wait, and a futex wake for the
    // holder when it unlocks). The spin is bounded (~450 pause instructions), so a stopped
    // or descheduled holder costs a few µs before the timed sleep.
    let backoff = crossbeam_utils::Backoff::new();
    for _ in 0..SPIN_TRIES {
        if rc != libc::EBUSY {
            break;
        }
        backoff.spin();
        // SAFETY: the caller guarantees `m` is an initialized mutex that outlives 'a.
        rc = unsafe { libc::pthread_mutex_trylock(m) };
    }
    if rc == libc::EBUSY {
        let deadline = realtime_deadline(timeout);
        loop {
            // SAFETY: as above; `deadline` is a valid timespec.
            rc = unsafe { libc::pthread_mutex_timedlock(m, &deadline) };
            if rc != libc::EINTR {
                break;
            }
        }
    }
    let acquired = match rc {
        0 => Acquired::Clean,
        libc::EOWNERDEAD => Acquired::OwnerDied,
        libc::ETIMEDOUT => return Err(LockError::Timeout),
        libc::ENOTRECOVERABLE => return Err(LockError::NotRecoverable),
        e => return Err(LockError::Os(io::Error::from_raw_os_error(e))),
    };
    Ok(Held {
        m,
        acquired,
        _segment: PhantomData,
    })
}

/// `pthread_mutex_timedlock` takes an absolute `CLOCK_REALTIME` deadline.
fn realtime_deadline(timeout: Duration) -> libc::timespec {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default();
    let at = now.saturating_add(timeout);
    libc::timespec {
        tv_sec: at.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: at.subsec_nanos() as libc::c_long,
    }
}
