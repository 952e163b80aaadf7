//! Library side of the `shmemcache` command-line tool: the benchmark's physical reference
//! (the floor), shared by the `bench` subcommand and the `throughput` example. The tool
//! itself is the `shmemcache` binary of this crate.

pub mod floor;

pub use shmemcache_units as units;
