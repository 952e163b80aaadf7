//! Fork detection: a `pthread_atfork` child handler bumps a process-wide generation.
//!
//! Only an atomic increment happens in the handler (nothing else is async-signal-safe
//! there); handles compare the generation they were made in with the current one on use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Installs the handler (once per process; children inherit it).
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: `in_child` is an `extern "C"` function with no arguments that only does an
        // atomic increment; the other two handlers are absent.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        // ENOMEM is the only documented failure; without the hook we fall back to pid checks.
        let _ = rc;
    });
}

/// How many `fork()`s separate this process from the first one that installed the hook.
/// A handle made in generation `g` is in a child when this differs from `g`.
#[inline]
pub fn generation() -> u64 {
    install();
    GENERATION.load(Ordering::Relaxed)
}
