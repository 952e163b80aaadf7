//! Damaged mutex words: a lock word that is not a robust mutex's is refused before glibc
//! sees it (a `Corrupted` error, never a crash or an endless `EINVAL`), `check()` reports it,
//! and `force_repair` (`shmemcache repair --force`) re-initializes it once nobody is
//! attached. A lock word naming a dead owner the kernel never flagged is recovered like any
//! dead holder. Real segments and processes; run with `cargo nextest`.

use shmemcache::{Cache, Error, Options};
use std::os::unix::fs::FileExt;
use std::time::Duration;

mod common;
use common::*;

fn opts() -> Options {
    Options::new()
        .capacity_bytes(1 << 20)
        .shards(1)
        .lock_timeout(Duration::from_millis(500))
}

/// Shard 0's mutex starts right after the header and its backup (512) and its lock block
/// is the shard's first 64 bytes. The coordination mutex is at the header's coord_offset.
const SHARD0_LOCK: u64 = 512;

fn file(name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap()
}

fn coord_lock(f: &std::fs::File) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 112).unwrap();
    u64::from_ne_bytes(b)
}

#[test]
fn a_damaged_lock_kind_is_an_error_then_repaired_offline() {
    let name = Name::new("lockkind");
    let cache = opts().create(&name).unwrap();
    for i in 0..50u32 {
        cache.set(&i.to_le_bytes(), b"value").unwrap();
    }
    let f = file(&name);
    // The kind word (offset 16 in glibc's pthread_mutex_t).
    f.write_all_at(&0x7777_7777u32.to_ne_bytes(), SHARD0_LOCK + 16)
        .unwrap();
    // Gets do not take the lock: they still find their values.
    assert_eq!(
        cache.get(&1u32.to_le_bytes()).unwrap().as_deref(),
        Some(&b"value"[..])
    );
    match cache.set(&1u32.to_le_bytes(), b"value") {
        Err(Error::Corrupted { reason, .. }) => {
            assert!(reason.contains("lock word of shard 0"), "{reason}");
            assert!(reason.contains("repair --force"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let report = cache.check().unwrap();
    assert!(!report.is_healthy());
    assert!(report.problems[0].1.contains("lock word"), "{report:?}");
    drop(cache);
    let fixed = Cache::force_repair(&name).unwrap();
    assert_eq!(fixed, ["the lock of shard 0"]);
    let cache = opts().open_existing(&name).unwrap();
    for i in 0..50u32 {
        assert_eq!(
            cache.get(&i.to_le_bytes()).unwrap().as_deref(),
            Some(&b"value"[..])
        );
    }
    assert!(cache.check().unwrap().is_healthy());
    assert_eq!(
        cache.stats().unwrap().total.recoveries,
        1,
        "the shard was re-validated"
    );
    drop(cache);
    assert!(Cache::force_repair(&name).unwrap().is_empty());
}

#[test]
fn a_damaged_coordination_lock_is_an_error_then_repaired_offline() {
    let name = Name::new("lockcoord");
    let cache = opts().create(&name).unwrap();
    let f = file(&name);
    f.write_all_at(&0x0101_0101u32.to_ne_bytes(), coord_lock(&f) + 16)
        .unwrap();
    assert!(matches!(
        cache.try_lock("job", None),
        Err(Error::Corrupted { .. })
    ));
    let report = cache.check().unwrap();
    assert!(report.coordination.unwrap().contains("lock word"));
    drop(cache);
    assert_eq!(
        Cache::force_repair(&name).unwrap(),
        ["the coordination table's lock"]
    );
    let cache = opts().open_existing(&name).unwrap();
    assert!(cache.try_lock("job", None).unwrap().is_some());
}

#[test]
fn a_lock_word_naming_a_dead_owner_is_recovered_not_waited_on() {
    let name = Name::new("lockdead");
    let cache = opts().create(&name).unwrap();
    cache.set(b"k", b"v").unwrap();
    // A thread id that no longer exists: a child that has exited.
    let kid = spawn(|| 0);
    assert_exits_ok(kid);
    let f = file(&name);
    f.write_all_at(&(kid.as_raw() as u32).to_ne_bytes(), SHARD0_LOCK)
        .unwrap();
    let t = std::time::Instant::now();
    assert_eq!(cache.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "waited {:?}",
        t.elapsed()
    );
    assert_eq!(cache.stats().unwrap().total.recoveries, 1);
    assert!(cache.check().unwrap().is_healthy());
}
