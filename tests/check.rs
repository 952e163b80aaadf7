//! `check()` only reads, `repair()` fixes what it reports (shards and the coordination
//! table), and both behave after a `kill -9` or with a stopped lock holder. Real processes
//! and real segments; run with `cargo nextest` (the tests fork).

use shmemcache::fault::{self, FaultAction, FaultPoint};
use shmemcache::{Cache, Error, Options, COORDINATION_LOCK};
use std::os::unix::fs::FileExt;
use std::time::Duration;

mod common;
use common::*;

fn opts() -> Options {
    Options::new()
        .capacity_bytes(1 << 20)
        .shards(4)
        .lock_timeout(Duration::from_millis(300))
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(format!("/dev/shm/{name}")).unwrap()
}

fn filled(name: &Name) -> Cache {
    let cache = opts().create(name).unwrap();
    for i in 0..200u32 {
        cache.set(format!("k{i}").as_bytes(), &[7u8; 150]).unwrap();
    }
    let _ = cache.try_lock("held", None).unwrap().map(std::mem::forget);
    cache
}

#[test]
fn check_leaves_the_segment_byte_identical() {
    let name = Name::new("check-ro");
    let cache = filled(&name);
    let before = bytes(&name);
    for _ in 0..2 {
        assert!(cache.check().unwrap().is_healthy());
        let after = bytes(&name);
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 0, "check() changed {changed} bytes");
    }
    // From another process too, and with the same report every time.
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        let reports: Vec<_> = (0..3).map(|_| c.check().unwrap()).collect();
        i32::from(!reports.iter().all(|r| r.is_healthy() && *r == reports[0]))
    });
    assert_exits_ok(kid);
    assert_eq!(bytes(&name), before);
}

#[test]
fn check_after_a_kill9_inside_a_shard_is_healthy_from_any_process() {
    let name = Name::new("check-kill");
    let cache = filled(&name);
    let c = &cache;
    let kid = spawn(move || {
        fault::arm(FaultPoint::LockHeld, FaultAction::Stop);
        let _ = c.set(b"k1", b"new");
        3
    });
    wait_stopped(kid);
    kill9(kid);
    // Another process checks first: the lock protocol's recovery, then a read-only look.
    let n = name.0.clone();
    let checker = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        i32::from(!c.check().unwrap().is_healthy())
    });
    assert_exits_ok(checker);
    assert_eq!(cache.stats().unwrap().total.recoveries, 1);
    let report = cache.check().unwrap();
    assert!(report.is_healthy(), "{report:?}");
    assert_eq!(
        cache.stats().unwrap().total.recoveries,
        1,
        "checks count no more"
    );
    assert_eq!(cache.get(b"k2").unwrap().as_deref(), Some(&[7u8; 150][..]));
    let r = cache.repair().unwrap();
    assert_eq!((r.repaired_shards, r.dropped), (0, 0), "{r:?}");
    assert_eq!(cache.stats().unwrap().total.recoveries, 1);
}

#[test]
fn check_with_a_stopped_holder_reports_it_instead_of_failing() {
    let name = Name::new("check-stopped");
    let cache = filled(&name);
    let c = &cache;
    let kid = spawn(move || {
        fault::arm(FaultPoint::LockHeld, FaultAction::Stop);
        // A write: gets do not take the lock.
        let _ = c.set(b"k1", b"changed");
        3
    });
    wait_stopped(kid);
    let report = cache.check().unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].1.contains("stopped or hung"),
        "{report:?}"
    );
    kill9(kid);
    assert!(cache.check().unwrap().is_healthy());
}

#[test]
fn a_stopped_coordination_holder_gives_lock_timeout() {
    let name = Name::new("coord-stopped");
    let cache = filled(&name);
    let c = &cache;
    let kid = spawn(move || {
        fault::arm(FaultPoint::CoordHeld, FaultAction::Stop);
        let _ = c.try_lock("other", None);
        3
    });
    wait_stopped(kid);
    match cache.try_lock("mine", None) {
        Err(Error::LockTimeout { shard, waited }) => {
            assert_eq!(shard, COORDINATION_LOCK);
            assert_eq!(waited, Duration::from_millis(300));
        }
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    let e = cache.try_lock("mine", None).unwrap_err().to_string();
    assert!(e.contains("coordination table"), "{e}");
    let report = cache.check().unwrap();
    assert!(report
        .coordination
        .as_deref()
        .unwrap()
        .contains("stopped or hung"));
    kill9(kid);
    assert!(cache.try_lock("mine", None).unwrap().is_some());
}

#[test]
fn repair_brings_a_damaged_coordination_table_back_to_healthy() {
    let name = Name::new("coord-damage");
    let cache = filled(&name);
    // Slot 0 holds the lock taken in `filled`: give it an unknown kind, through the file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/{}", &*name))
        .unwrap();
    let mut h = [0u8; 256];
    file.read_exact_at(&mut h, 0).unwrap();
    let coord_offset = u64::from_ne_bytes(h[112..120].try_into().unwrap());
    let slots = u32::from_ne_bytes(h[52..56].try_into().unwrap()) as u64;
    let region = (coord_offset + 64 + 4 * slots).div_ceil(64) * 64;
    file.write_all_at(&99u32.to_ne_bytes(), region + 64)
        .unwrap();

    let report = cache.check().unwrap();
    let problem = report.coordination.clone().expect("damage reported");
    assert!(problem.contains("unknown kind"), "{problem}");
    assert_eq!(cache.check().unwrap(), report, "check repairs nothing");
    let r = cache.repair().unwrap();
    assert_eq!(r.coordination_slots_dropped, Some(1));
    assert_eq!(r.repaired_shards, 0);
    assert!(cache.check().unwrap().is_healthy());
}
