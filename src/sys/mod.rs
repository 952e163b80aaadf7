//! The few places that talk to the OS through raw pointers or syscalls: the mapped segment,
//! the robust process-shared mutex, futexes, process identity, the fork hook, files
//! replaced atomically, and clock reads.
//! Everything above works on slices.

pub mod clock;
pub mod file;
pub mod fork;
pub mod futex;
pub mod process;
pub mod robust;
pub mod segment;
