//! The few places that talk to the OS through raw pointers or syscalls: the mapped segment,
//! the robust process-shared mutex, futexes, process identity, the fork hook, and files
//! replaced atomically.
//! Everything above works on slices.

pub mod file;
pub mod fork;
pub mod futex;
pub mod process;
pub mod robust;
pub mod segment;
