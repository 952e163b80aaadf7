//! The few places that talk to the OS through raw pointers: the mapped segment, the
//! robust process-shared mutex, and the fork hook. Everything above works on slices.

pub mod floor;
pub mod fork;
pub mod robust;
pub mod segment;
