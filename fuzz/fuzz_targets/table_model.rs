//! Drives one shard's table and the reference model with the same operations (decoded from
//! the fuzz input) and fails on any difference or broken invariant. The first byte picks
//! exact mode (expired entries flushed eagerly) or lazy mode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmemcache::model::{run, Op};

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    if let Err(e) = run(&Op::decode(rest), mode & 1 == 0) {
        panic!("{e}");
    }
});
