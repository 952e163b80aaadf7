//! The lock-free reader over damaged shard bytes: a shard holding entries is overwritten
//! from an offset with the fuzz input, then every key is read as a lock-free reader would.
//! Any answer is acceptable; a panic, a hang or an out-of-bounds access is not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = shmemcache::model::read_damaged(data);
});
