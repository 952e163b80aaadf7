//! Drives one shard's table and the reference model with the same operations (decoded from
//! the fuzz input) and fails on any difference or broken invariant. The first byte picks
//! exact mode (expired entries flushed eagerly) or lazy mode, and strict LRU order or lazy
//! promotion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmemcache::model::{run_with, Op};

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    if let Err(e) = run_with(&Op::decode(rest), mode & 1 == 0, mode & 2 != 0) {
        panic!("{e}");
    }
});
