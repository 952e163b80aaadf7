//! Library side of the `shmemcache` command-line tool: the benchmark's physical references
//! (the locked floor and the optimistic floor), shared by the `bench` subcommand and the
//! `throughput` example. The tool itself is the `shmemcache` binary of this crate.

pub mod floor;
pub mod optimistic_floor;

pub use shmemcache_units as units;
