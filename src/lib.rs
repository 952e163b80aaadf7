//! shmemcache
#![deny(unsafe_op_in_unsafe_fn)]
pub mod layout;
pub mod table;
#[doc(hidden)]
pub mod model;
