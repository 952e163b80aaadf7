//! Fault injection for crash tests (the `fault-injection` feature; without it every hook
//! compiles to nothing).
//!
//! A test arms a point and an action; the next time this process passes that point inside
//! a shard's critical section, it stops itself (`SIGSTOP`, so the test can `kill -9` it
//! while it holds the lock), aborts, or panics.

/// Places inside a critical section where a fault can fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultPoint {
    /// Right after the shard lock is taken and the shard marked dirty, before the operation.
    LockHeld = 1,
    /// Inside a store, after the entry is marked as being rewritten and its data written,
    /// before it is linked and marked live.
    StoreMidWrite = 2,
    /// Right after the coordination table's lock is taken and the table marked dirty.
    CoordHeld = 3,
    /// Inside an overwrite, right after the new record committed (became live) and before
    /// the old one is unlinked and freed.
    StoreCommitted = 4,
    /// Inside a delete, after the key left the index and before its record is freed.
    RemoveMidway = 5,
    /// While creating a segment: it is sized and its header written, it is not yet
    /// marked ready.
    Formatting = 6,
    /// While creating a segment: right after its header is written, before the file is
    /// sized.
    HeaderWritten = 7,
    /// While saving a snapshot: after a batch of entries was written to the (still
    /// unnamed) file, outside every lock.
    SnapshotMidWrite = 8,
}

/// What happens at an armed point.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultAction {
    /// `raise(SIGSTOP)`: the process stops holding the lock.
    Stop = 1,
    /// `abort()`: the process dies holding the lock.
    Abort = 2,
    /// `panic!`: unwinds through the critical section.
    Panic = 3,
}

#[cfg(feature = "fault-injection")]
mod imp {
    use super::*;
    use std::sync::atomic::{AtomicU16, Ordering};

    static ARMED: AtomicU16 = AtomicU16::new(0);

    pub fn arm(point: FaultPoint, action: FaultAction) {
        ARMED.store(((point as u16) << 8) | action as u16, Ordering::SeqCst);
    }

    pub fn disarm() {
        ARMED.store(0, Ordering::SeqCst);
    }

    #[inline]
    pub fn hit(point: FaultPoint) {
        let armed = ARMED.load(Ordering::Relaxed);
        if armed == 0 || (armed >> 8) as u8 != point as u8 {
            return;
        }
        // One shot: the fault fires once per arming.
        ARMED.store(0, Ordering::SeqCst);
        match armed as u8 {
            1 => {
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
            }
            2 => std::process::abort(),
            _ => panic!("injected fault at {point:?}"),
        }
    }
}

/// Arms `point` with `action` for this process (one shot).
#[cfg(feature = "fault-injection")]
pub fn arm(point: FaultPoint, action: FaultAction) {
    imp::arm(point, action)
}

/// Disarms any armed point.
#[cfg(feature = "fault-injection")]
pub fn disarm() {
    imp::disarm()
}

#[inline(always)]
pub(crate) fn hit(_point: FaultPoint) {
    #[cfg(feature = "fault-injection")]
    imp::hit(_point)
}
