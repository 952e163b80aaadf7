//! Real processes on real segments: fork, a separately launched binary, `kill -9` of a lock
//! holder stopped inside its critical section, SIGSTOP, races to create, contention.
//!
//! Each test forks; run them with a process-per-test runner (`cargo nextest`), as the
//! project's test command does, so no other test thread is running at `fork()`.

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use shmemcache::fault::{self, FaultAction, FaultPoint};
use shmemcache::{Cache, Error, Expiry, Options};
use std::io::{Read, Write};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn small(shards: u32) -> Options {
    Options::new()
        .capacity_bytes(1 << 20)
        .shards(shards)
        .lock_timeout(Duration::from_millis(500))
}

#[test]
fn inherited_handle_knows_it_is_in_a_child_and_drop_does_not_unlink() {
    let name = Name::new("inherit");
    let cache = small(1).create(&name).unwrap();
    assert!(!cache.is_inherited());
    let memo = shmemcache::forkache::ForkSafe::new(std::collections::HashMap::new());
    memo.lock().insert("pid", std::process::id());
    let kid = spawn(move || {
        assert!(cache.is_inherited());
        cache.set(b"k", b"child").unwrap();
        drop(cache);
        // The in-process memo was cleared in the child on first use.
        assert!(memo.lock().is_empty());
        0
    });
    assert_exits_ok(kid);
    let again = Cache::open_existing(&name).unwrap();
    assert_eq!(again.get(b"k").unwrap().as_deref(), Some(&b"child"[..]));
}

#[test]
fn duck_docstring_ten_processes_five_max_keys() {
    let name = Name::new("duck");
    // One shard so that "max entries 5" is exact.
    let cache = small(1).max_entries(5).create(&name).unwrap();
    assert_eq!(cache.info().max_entries, 5);
    // Ten processes attach at once; each stores when released, in order 0..10, and reads back.
    let mut gates = Vec::new();
    let mut kids = Vec::new();
    for i in 0..10 {
        let (r, w) = pipe();
        let (ar, aw) = pipe();
        let n = name.0.clone();
        kids.push(spawn(move || {
            let (mut r, mut aw) = (r, aw);
            let c = Cache::open_existing(&n).unwrap();
            let mut b = [0u8; 1];
            r.read_exact(&mut b).unwrap();
            let key = i.to_string();
            let val = (i * 2).to_string();
            c.set_ttl(
                key.as_bytes(),
                val.as_bytes(),
                Some(Duration::from_secs(10)),
            )
            .unwrap();
            let back = c.get(key.as_bytes()).unwrap();
            aw.write_all(&[1]).unwrap();
            i32::from(back != Some(val.into_bytes()))
        }));
        gates.push((w, ar));
    }
    for (w, ar) in gates.iter_mut() {
        w.write_all(&[1]).unwrap();
        let mut b = [0u8; 1];
        ar.read_exact(&mut b).unwrap();
    }
    kids.into_iter().for_each(assert_exits_ok);
    let mut keys: Vec<String> = cache
        .keys()
        .map(|k| String::from_utf8(k.unwrap()).unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["5", "6", "7", "8", "9"]);
    for i in 5..10 {
        assert_eq!(
            cache.get(i.to_string().as_bytes()).unwrap(),
            Some((i * 2).to_string().into_bytes())
        );
    }
    assert_eq!(cache.stats().unwrap().total.evictions, 5);
}

#[test]
fn ttl_expires_for_every_process() {
    let name = Name::new("ttl");
    let cache = small(2).create(&name).unwrap();
    cache
        .set_ttl(b"short", b"x", Some(Duration::from_millis(300)))
        .unwrap();
    cache.set_ttl(b"long", b"y", None).unwrap();
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        assert!(c.contains(b"short").unwrap());
        match c.ttl(b"short").unwrap() {
            Some(Expiry::In(d)) => assert!(d <= Duration::from_millis(300)),
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(c.get(b"short").unwrap(), None);
        assert_eq!(c.ttl(b"long").unwrap(), Some(Expiry::Never));
        0
    });
    assert_exits_ok(kid);
    assert!(!cache.contains(b"short").unwrap());
    assert_eq!(cache.get(b"long").unwrap().as_deref(), Some(&b"y"[..]));
}

/// Fills a one-shard cache, has a child stop itself inside the critical section at `point`
/// while storing key 50, kills it with SIGKILL, and checks the parent recovers.
fn kill_holder_inside_critical_section(point: FaultPoint, tag: &str) {
    let name = Name::new(tag);
    let cache = small(1).create(&name).unwrap();
    let key = |i: u32| format!("key-{i:03}");
    for i in 0..100 {
        cache.set(key(i).as_bytes(), &[i as u8; 150]).unwrap();
    }
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = small(1).open_existing(&n).unwrap();
        fault::arm(point, FaultAction::Stop);
        // Stops inside; only SIGKILL ends it.
        c.set(key(50).as_bytes(), &[0xEE; 300]).unwrap();
        3
    });
    wait_stopped(kid);
    kill9(kid);
    let t = Instant::now();
    let got = cache.get(key(1).as_bytes()).unwrap();
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "first operation after the holder died took {took:?}"
    );
    assert_eq!(got, Some(vec![1u8; 150]));
    assert!(cache.stats().unwrap().total.recoveries >= 1);
    let report = cache.check().unwrap();
    assert!(report.is_healthy(), "{:?}", report.problems);
    for i in (0..100).filter(|&i| i != 50) {
        assert_eq!(
            cache.get(key(i).as_bytes()).unwrap(),
            Some(vec![i as u8; 150]),
            "entry {i} lost"
        );
    }
    // The interrupted entry is either intact (old value) or gone, never torn.
    let v = cache.get(key(50).as_bytes()).unwrap();
    assert!(v.is_none() || v == Some(vec![50u8; 150]), "{v:?}");
    cache.set(key(50).as_bytes(), b"fresh").unwrap();
    assert!(cache.check().unwrap().is_healthy());
}

#[test]
fn kill9_inside_the_coordination_table_is_recovered() {
    let name = Name::new("coordkill");
    let cache = small(1).create(&name).unwrap();
    let held = cache.try_lock("kept", None).unwrap().unwrap();
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = small(1).open_existing(&n).unwrap();
        fault::arm(FaultPoint::CoordHeld, FaultAction::Stop);
        // Stops holding the coordination lock; only SIGKILL ends it.
        let _ = c.try_lock("other", None);
        3
    });
    wait_stopped(kid);
    kill9(kid);
    let t = Instant::now();
    let g = cache.try_lock("other", None).unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(100), "took {took:?}");
    assert!(g.is_some());
    let st = cache.coordination_stats().unwrap();
    assert_eq!(st.recoveries, 1);
    assert_eq!(st.in_use, 2, "the surviving lock and the new one");
    assert!(
        cache.is_locked("kept").unwrap(),
        "holds outside the interruption survive"
    );
    assert!(cache.check().unwrap().is_healthy());
    held.release().unwrap();
}

#[test]
fn kill9_of_holder_mid_store_is_recovered() {
    kill_holder_inside_critical_section(FaultPoint::StoreMidWrite, "kill-mid");
}

#[test]
fn kill9_of_holder_right_after_locking_is_recovered() {
    kill_holder_inside_critical_section(FaultPoint::LockHeld, "kill-lock");
}

#[test]
fn abort_inside_critical_section_is_recovered() {
    let name = Name::new("abort");
    let cache = small(1).create(&name).unwrap();
    cache.set(b"a", b"1").unwrap();
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = small(1).open_existing(&n).unwrap();
        fault::arm(FaultPoint::StoreMidWrite, FaultAction::Abort);
        let _ = c.set(b"b", b"2");
        3
    });
    match waitpid(kid, None).unwrap() {
        WaitStatus::Signaled(_, Signal::SIGABRT, _) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(cache.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(cache.stats().unwrap().total.recoveries, 1);
    assert!(cache.check().unwrap().is_healthy());
}

#[test]
fn panic_inside_critical_section_is_repaired_by_the_next_holder() {
    let name = Name::new("panic");
    let cache = small(1).create(&name).unwrap();
    for i in 0..20u8 {
        cache.set(&[i; 10], &[i; 70]).unwrap();
    }
    let n = name.0.clone();
    // In a child, so the armed fault cannot fire in another test's thread.
    let kid = spawn(move || {
        let c = small(1).open_existing(&n).unwrap();
        fault::arm(FaultPoint::StoreMidWrite, FaultAction::Panic);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| c.set(&[5; 10], &[0xAB; 200])));
        assert!(r.is_err(), "the injected panic did not fire");
        // The same process continues: the shard was left dirty and is repaired on next use.
        assert_eq!(c.get(&[1; 10]).unwrap(), Some(vec![1; 70]));
        assert_eq!(c.stats().unwrap().total.recoveries, 1);
        assert!(c.check().unwrap().is_healthy());
        0
    });
    assert_exits_ok(kid);
    for i in (0..20u8).filter(|&i| i != 5) {
        assert_eq!(cache.get(&[i; 10]).unwrap(), Some(vec![i; 70]));
    }
}

#[test]
fn stopped_holder_gives_lock_timeout_then_recovers_after_kill() {
    let name = Name::new("sigstop");
    let timeout = Duration::from_millis(200);
    let cache = small(1).lock_timeout(timeout).create(&name).unwrap();
    cache.set(b"k", b"v").unwrap();
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = small(1).open_existing(&n).unwrap();
        fault::arm(FaultPoint::LockHeld, FaultAction::Stop);
        // A write: gets do not take the lock.
        let _ = c.set(b"k", b"v2");
        3
    });
    wait_stopped(kid);
    let t = Instant::now();
    // A get finds the stopped writer mid-change (the shard's version odd): it cannot read
    // without the lock, and the lock is not free.
    match cache.get(b"k") {
        Err(Error::LockTimeout { shard: 0, waited }) => assert_eq!(waited, timeout),
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    let took = t.elapsed();
    assert!(took >= timeout, "gave up early: {took:?}");
    assert!(took < timeout * 10, "waited far past the bound: {took:?}");
    kill9(kid);
    assert_eq!(cache.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn contended_incr_from_two_processes_is_exact() {
    let name = Name::new("incr");
    let cache = small(4).create(&name).unwrap();
    const N: i64 = 100_000;
    let kids: Vec<Pid> = (0..2)
        .map(|_| {
            let n = name.0.clone();
            spawn(move || {
                let c = Cache::open_existing(&n).unwrap();
                for i in 0..N {
                    c.incr(format!("ctr-{}", i % 4).as_bytes(), 1).unwrap();
                }
                0
            })
        })
        .collect();
    kids.into_iter().for_each(assert_exits_ok);
    let total: i64 = (0..4)
        .map(|i| {
            let v = cache.get(format!("ctr-{i}").as_bytes()).unwrap().unwrap();
            std::str::from_utf8(&v).unwrap().parse::<i64>().unwrap()
        })
        .sum();
    assert_eq!(total, 2 * N);
}

#[test]
fn racing_creators_end_with_one_segment() {
    let name = Name::new("race");
    let kids: Vec<Pid> = (0..8)
        .map(|i| {
            let n = name.0.clone();
            spawn(move || {
                // Different options: joiners must adopt the winner's geometry.
                let c = small(1 + i % 3).open(&n).unwrap();
                c.set(format!("p{i}").as_bytes(), b"x").unwrap();
                i32::from(c.created()) * 10
            })
        })
        .collect();
    let creators: i32 = kids.into_iter().map(exit_code).sum::<i32>() / 10;
    assert_eq!(creators, 1, "exactly one process creates");
    let c = Cache::open_existing(&name).unwrap();
    assert_eq!(c.len().unwrap(), 8);
}

#[test]
fn joiner_adopts_and_reports_the_creators_geometry() {
    let name = Name::new("adopt");
    let _creator = small(4).create(&name).unwrap();
    let joiner = small(8).max_key_len(100).open(&name).unwrap();
    assert!(!joiner.created());
    assert_eq!(joiner.info().shards, 4);
    let diffs = joiner.adopted().join("; ");
    assert!(diffs.contains("shards: asked 8, segment has 4"), "{diffs}");
    assert!(diffs.contains("max key length"), "{diffs}");
}

// ----- bad input -------------------------------------------------------------------------

#[test]
fn invalid_names_are_refused_before_touching_the_system() {
    let long = "x".repeat(201);
    for bad in ["../x", "", "/", "a/b", ".hidden", long.as_str()] {
        match Options::new().open(bad) {
            Err(Error::InvalidName { .. }) => {}
            other => panic!("{bad:?}: {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn create_exclusive_and_open_existing_report_clearly() {
    let name = Name::new("excl");
    match Options::new().open_existing(&name) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    let _c = small(1).create(&name).unwrap();
    match small(1).create(&name) {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(
        std::fs::metadata(format!("/dev/shm/{}", &*name))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600
    );
}

fn shm_file(name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(format!("/dev/shm/{name}"))
        .unwrap()
}

#[test]
fn foreign_file_with_wrong_magic_is_incompatible() {
    let name = Name::new("magic");
    shm_file(&name).write_all(&[0x5a; 4096]).unwrap();
    match Options::new().open(&name) {
        Err(Error::Incompatible { reason, .. }) => assert!(reason.contains("magic"), "{reason}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // The foreign file is left alone.
    assert_eq!(
        std::fs::read(format!("/dev/shm/{}", &*name)).unwrap(),
        vec![0x5a; 4096]
    );
}

#[test]
fn other_layout_version_is_incompatible() {
    let name = Name::new("version");
    drop(small(1).create(&name).unwrap());
    let f = shm_file(&name);
    std::os::unix::fs::FileExt::write_all_at(&f, &99u32.to_ne_bytes(), 8).unwrap();
    match Options::new().open_existing(&name) {
        Err(Error::Incompatible { reason, .. }) => {
            assert!(reason.contains("layout version 99"), "{reason}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn truncated_segment_is_reported_corrupted() {
    let name = Name::new("trunc");
    drop(small(1).create(&name).unwrap());
    let f = shm_file(&name);
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
    match Options::new().open_existing(&name) {
        Err(Error::Corrupted { reason, .. }) => assert!(reason.contains("truncated"), "{reason}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn damaged_header_geometry_is_reported_corrupted() {
    let name = Name::new("hdr");
    drop(small(1).create(&name).unwrap());
    let f = shm_file(&name);
    // shard_count at offset 24.
    std::os::unix::fs::FileExt::write_all_at(&f, &0u32.to_ne_bytes(), 24).unwrap();
    match Options::new().open_existing(&name) {
        Err(Error::Corrupted { .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn segment_of_another_user_is_refused_unless_allowed() {
    let name = Name::new("owner");
    drop(small(1).mode(0o666).create(&name).unwrap());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot give the segment to another user; skipping");
        return;
    }
    let path = format!("/dev/shm/{}", &*name);
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    match Options::new().open_existing(&name) {
        Err(Error::PermissionDenied { reason, .. }) => {
            assert!(reason.contains("65534"), "{reason}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let c = Options::new()
        .allow_foreign_owner(true)
        .open_existing(&name)
        .unwrap();
    c.set(b"k", b"v").unwrap();
}

#[test]
fn full_dev_shm_is_reported_and_leaves_nothing_behind() {
    let name = Name::new("nospace");
    match Options::new()
        .capacity_bytes(1 << 40)
        .max_entries(1 << 20)
        .open(&name)
    {
        Err(Error::NoSpace { needed, .. }) => assert!(needed >= (1u64 << 40) / 100 * 99),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(!std::path::Path::new(&format!("/dev/shm/{}", &*name)).exists());
}

#[test]
fn oversized_and_zero_ttl_writes_fail_and_keep_the_old_value() {
    let name = Name::new("limits");
    let cache = small(1)
        .max_key_len(64)
        .max_value_len(1000)
        .create(&name)
        .unwrap();
    cache.set(b"k", b"old").unwrap();
    assert!(matches!(
        cache.set(b"k", &[0; 1001]),
        Err(Error::ValueTooLarge {
            len: 1001,
            max: 1000
        })
    ));
    assert!(matches!(
        cache.set(&[b'k'; 65], b"v"),
        Err(Error::KeyTooLarge { len: 65, max: 64 })
    ));
    assert!(matches!(
        cache.set_ttl(b"k", b"new", Some(Duration::ZERO)),
        Err(Error::ZeroTtl)
    ));
    assert!(matches!(
        cache.expire(b"k", Some(Duration::ZERO)),
        Err(Error::ZeroTtl)
    ));
    assert_eq!(cache.get(b"k").unwrap().as_deref(), Some(&b"old"[..]));
    let mut small_buf = [0u8; 2];
    assert!(matches!(
        cache.get_into(b"k", &mut small_buf),
        Err(Error::BufferTooSmall { needed: 3, len: 2 })
    ));
}
