//! A robust, process-shared `pthread_mutex_t` living in the segment.
//!
//! Robust: when the holder dies, the next `lock` returns `EOWNERDEAD` instead of blocking
//! forever; that holder repairs the protected data and calls `pthread_mutex_consistent`.
//! Acquisition is bounded (`pthread_mutex_timedlock`), so a stopped or hung holder yields
//! a timeout instead of a hang.

use std::io;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
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
    /// The mutex's words are not those of a robust, process-shared mutex: handing it to
    /// glibc could crash this process or fail forever.
    Damaged,
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

// What can be checked of a glibc `pthread_mutex_t` before glibc is handed it: the lock word
// (owner thread id and flag bits) at offset 0 and the kind at offset 16. Other C libraries
// lay it out differently; there the checks are skipped.
#[cfg(target_env = "gnu")]
const KIND_OFFSET: usize = 16;
#[cfg(target_env = "gnu")]
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
#[cfg(target_env = "gnu")]
const FUTEX_OWNER_DIED: u32 = 0x4000_0000;

/// The kind word of a mutex made by [`init`], read once from a private one.
#[cfg(target_env = "gnu")]
fn expected_kind() -> i32 {
    static KIND: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *KIND.get_or_init(|| {
        let mut m = MaybeUninit::<libc::pthread_mutex_t>::zeroed();
        // SAFETY: `m` is a private, suitably aligned, writable mutex nobody else uses.
        if unsafe { init(m.as_mut_ptr()) }.is_err() {
            return -1;
        }
        // SAFETY: `init` succeeded, so `m` is initialized; offset 16 holds an i32 in
        // glibc's layout, inside the 40-byte struct.
        let kind = unsafe {
            m.as_ptr()
                .cast::<u8>()
                .add(KIND_OFFSET)
                .cast::<i32>()
                .read()
        };
        // SAFETY: initialized above, unlocked, destroyed once.
        unsafe { libc::pthread_mutex_destroy(m.as_mut_ptr()) };
        kind
    })
}

/// The lock word of the mutex at `m` (owner thread id and flag bits).
///
/// # Safety
/// `m` must point to 40 mapped, 8-byte aligned bytes that stay mapped for `'a`.
#[cfg(target_env = "gnu")]
unsafe fn lock_word<'a>(m: *mut libc::pthread_mutex_t) -> &'a AtomicU32 {
    // SAFETY: the caller guarantees the word is mapped and aligned for 'a; glibc accesses
    // it with atomic instructions too, and we only load or compare-and-swap it.
    unsafe { AtomicU32::from_ptr(m.cast::<u32>()) }
}

/// The kind word of the mutex at `m`, loaded atomically (other processes may be locking
/// it while we look).
///
/// # Safety
/// `m` must point to 40 mapped, 8-byte aligned bytes.
#[cfg(target_env = "gnu")]
unsafe fn kind_of(m: *mut libc::pthread_mutex_t) -> i32 {
    // SAFETY: offset 16 is inside the 40 mapped bytes and 4-byte aligned (the caller's
    // contract); the load is atomic.
    unsafe { AtomicI32::from_ptr(m.cast::<u8>().add(KIND_OFFSET).cast::<i32>()) }
        .load(Ordering::Relaxed)
}

/// Whether the mutex at `m` looks like one [`init`] made.
///
/// # Safety
/// `m` must point to 40 mapped, 8-byte aligned bytes.
#[inline]
pub unsafe fn looks_sound(m: *mut libc::pthread_mutex_t) -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: forwarded from this function's contract.
        unsafe { kind_of(m) == expected_kind() }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = m;
        true
    }
}

/// If the lock word names an owner thread that no longer exists and the kernel has not
/// flagged it (a damaged word, or an owner the kernel's robust-list walk missed), flags it
/// as owner-died, so the next `lock` gets `EOWNERDEAD` and recovers instead of waiting on a
/// thread that will never unlock.
///
/// # Safety
/// `m` must point to 40 mapped, 8-byte aligned bytes.
#[cold]
unsafe fn flag_dead_owner(m: *mut libc::pthread_mutex_t) {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: forwarded from this function's contract; the reference does not outlive
        // this call.
        let lock = unsafe { lock_word(m) };
        let w = lock.load(Ordering::Relaxed);
        let tid = w & FUTEX_TID_MASK;
        if tid == 0 || w & FUTEX_OWNER_DIED != 0 || tid > i32::MAX as u32 {
            return;
        }
        // kill(tid, 0) fails with ESRCH only when no task has that id.
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(tid as i32), None)
            == Err(nix::errno::Errno::ESRCH)
        {
            let _ =
                lock.compare_exchange(w, w | FUTEX_OWNER_DIED, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = m;
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
    // SAFETY: the caller guarantees `m` is mapped (an initialized mutex, or damage of one).
    if !unsafe { looks_sound(m) } {
        return Err(LockError::Damaged);
    }
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
        // SAFETY: as above.
        unsafe { flag_dead_owner(m) };
        // SAFETY: as above.
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
