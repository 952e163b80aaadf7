//! Futex wait and wake on a word in the shared mapping.
//!
//! The words live in a `MAP_SHARED` segment, so the non-private futex operations are used:
//! the kernel keys them by the underlying page, which makes a wake in one process reach a
//! waiter in another.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `word` holds `expected`, for at most `timeout`. Returns on a wake, a timeout,
/// a signal, or at once if the word already differs; callers re-check their condition.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 that outlives the call; FUTEX_WAIT only reads it
    // and takes a relative timeout, for which `ts` is a valid timespec. Every outcome (woken,
    // EAGAIN, ETIMEDOUT, EINTR) is handled by the caller re-checking.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// Wakes every process and thread sleeping on `word`.
pub fn wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not access user memory beyond
    // using its address as the key.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}
