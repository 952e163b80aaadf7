//! Single-flight memoization, locks, `once` and pools across real processes: forked
//! children, `kill -9` of a holder, inherited guards.
//!
//! Each test forks; run them with a process-per-test runner (`cargo nextest`).

mod common;
use common::*;

use shmemcache::{
    Cache, ComputeError, ComputeOptions, Error, Memo, OnError, OnceBusy, Options, Ttl,
};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn open(name: &str) -> Cache {
    Options::new()
        .capacity_bytes(1 << 20)
        .shards(4)
        .liveness_interval(Duration::from_millis(10))
        .open(name)
        .expect("open")
}

fn count(c: &Cache, key: &[u8]) -> i64 {
    c.get(key)
        .expect("get")
        .map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap())
}

/// Blocks until one byte arrives.
fn wait_byte(r: &mut std::fs::File) {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).expect("signal");
}

/// Forks a child that opens `name` and runs `f` with a pipe end to signal on; returns once
/// the child has sent its first byte.
fn child_signalling(
    name: &Name,
    f: impl FnOnce(&Cache, &mut std::fs::File) -> i32,
) -> nix::unistd::Pid {
    let (mut r, w) = pipe();
    let n = name.0.clone();
    let pid = spawn(move || {
        let mut w = w;
        f(&open(&n), &mut w)
    });
    wait_byte(&mut r);
    pid
}

type Boom = std::io::Error;

fn boom() -> Boom {
    std::io::Error::other("boom")
}

#[test]
fn eight_processes_compute_a_missing_key_once_and_all_get_it() {
    let name = Name::new("flight8");
    let cache = open(&name);
    let (mut go_r, mut go_w) = pipe();
    let kids: Vec<_> = (0..8)
        .map(|_| {
            let name = name.0.clone();
            let mut go_r = go_r.try_clone().unwrap();
            spawn(move || {
                let c = open(&name);
                wait_byte(&mut go_r);
                let v = c
                    .get_or_compute(b"report", &ComputeOptions::new(), || {
                        c.incr(b"calls", 1).unwrap();
                        std::thread::sleep(Duration::from_millis(200));
                        Ok::<_, Boom>(b"the value".to_vec())
                    })
                    .unwrap();
                i32::from(v != b"the value")
            })
        })
        .collect();
    go_w.write_all(&[1; 8]).unwrap();
    for k in kids {
        assert_exits_ok(k);
    }
    assert_eq!(
        count(&cache, b"calls"),
        1,
        "the function ran more than once"
    );
    drop(go_r.read(&mut [0; 0]));
    assert_eq!(
        cache.coordination_stats().unwrap().in_use,
        0,
        "the marker was released"
    );
}

#[test]
fn owner_killed_mid_computation_is_taken_over_by_one_waiter() {
    let name = Name::new("flightkill");
    let cache = open(&name);
    let owner = child_signalling(&name, |c, started| {
        let _ = c.get_or_compute(b"k", &ComputeOptions::new(), || {
            started.write_all(&[1]).unwrap();
            std::thread::sleep(Duration::from_secs(3600));
            Ok::<_, Boom>(b"never".to_vec())
        });
        1
    });
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let name = name.0.clone();
            spawn(move || {
                let c = open(&name);
                let v = c
                    .get_or_compute(b"k", &ComputeOptions::new(), || {
                        c.incr(b"calls", 1).unwrap();
                        Ok::<_, Boom>(b"recomputed".to_vec())
                    })
                    .unwrap();
                i32::from(v != b"recomputed")
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    kill9(owner);
    for w in waiters {
        assert_exits_ok(w);
    }
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "waiters took {took:?} to notice the dead owner"
    );
    assert_eq!(count(&cache, b"calls"), 1, "exactly one waiter takes over");
    assert_eq!(
        cache
            .get_or_compute(b"k", &ComputeOptions::new(), || Err(boom()))
            .unwrap(),
        b"recomputed"
    );
}

/// Owner fails after 300 ms while three processes wait with `policy`; returns the waiters'
/// exit codes (0 = got "retried", 2 = got ComputedElsewhereFailed) and the retry count.
fn failing_owner(policy: OnError, tag: &str) -> (Vec<i32>, i64) {
    let name = Name::new(tag);
    let cache = open(&name);
    let opts = ComputeOptions::new().on_error(policy);
    let owner = child_signalling(&name, |c, started| {
        let r = c.get_or_compute(b"k", &opts, || {
            started.write_all(&[1]).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            Err(boom())
        });
        i32::from(!matches!(r, Err(ComputeError::Compute(_))))
    });
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let name = name.0.clone();
            let opts = opts.clone();
            spawn(move || {
                let c = open(&name);
                match c.get_or_compute(b"k", &opts, || {
                    c.incr(b"retries", 1).unwrap();
                    Ok::<_, Boom>(b"retried".to_vec())
                }) {
                    Ok(v) if v == b"retried" => 0,
                    Err(ComputeError::Cache(Error::ComputedElsewhereFailed { .. })) => 2,
                    _ => 1,
                }
            })
        })
        .collect();
    assert_exits_ok(owner);
    let codes = waiters.into_iter().map(exit_code).collect();
    (codes, count(&cache, b"retries"))
}

#[test]
fn failed_computation_is_retried_by_one_waiter() {
    let (codes, retries) = failing_owner(OnError::Retry, "failretry");
    assert_eq!(codes, vec![0, 0, 0]);
    assert_eq!(
        retries, 1,
        "one waiter recomputes, the others get its value"
    );
}

#[test]
fn failed_computation_is_reported_to_waiters_that_ask() {
    let (codes, retries) = failing_owner(OnError::Propagate, "failprop");
    assert_eq!(codes, vec![2, 2, 2]);
    assert_eq!(retries, 0);
}

#[test]
fn stale_value_is_served_while_exactly_one_refresh_runs() {
    let name = Name::new("stale");
    let cache = open(&name);
    let opts = ComputeOptions::new()
        .ttl(Ttl::Never)
        .stale_after(Duration::from_millis(200))
        .serve_stale(true);
    let first = cache
        .get_or_compute(b"k", &opts, || Ok::<_, Boom>(b"v1".to_vec()))
        .unwrap();
    assert_eq!(first, b"v1");
    std::thread::sleep(Duration::from_millis(300));
    let refresher = child_signalling(&name, |c, started| {
        let v = c
            .get_or_compute(b"k", &opts, || {
                c.incr(b"refreshes", 1).unwrap();
                started.write_all(&[1]).unwrap();
                std::thread::sleep(Duration::from_millis(500));
                Ok::<_, Boom>(b"v2".to_vec())
            })
            .unwrap();
        i32::from(v != b"v2")
    });
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let name = name.0.clone();
            let opts = opts.clone();
            spawn(move || {
                let c = open(&name);
                let t = Instant::now();
                let v = c
                    .get_or_compute(b"k", &opts, || {
                        c.incr(b"refreshes", 1).unwrap();
                        Ok::<_, Boom>(b"wrong".to_vec())
                    })
                    .unwrap();
                // Served the stale value at once, not after the refresh.
                i32::from(v != b"v1" || t.elapsed() > Duration::from_millis(300))
            })
        })
        .collect();
    for r in readers {
        assert_exits_ok(r);
    }
    assert_exits_ok(refresher);
    assert_eq!(count(&cache, b"refreshes"), 1);
    let now = cache
        .get_or_compute(b"k", &opts, || Ok::<_, Boom>(b"wrong".to_vec()))
        .unwrap();
    assert_eq!(now, b"v2", "the refreshed value replaced the stale one");
}

#[test]
fn lock_excludes_across_processes() {
    let name = Name::new("lockmutex");
    let cache = open(&name);
    let kids: Vec<_> = (0..4)
        .map(|_| {
            let name = name.0.clone();
            spawn(move || {
                let c = open(&name);
                for _ in 0..100 {
                    let g = c.lock("counter", None, Duration::from_secs(10)).unwrap();
                    if c.incr(b"holders", 1).unwrap() != 1 {
                        return 3;
                    }
                    c.incr(b"total", 1).unwrap();
                    std::thread::yield_now();
                    c.decr(b"holders", 1).unwrap();
                    g.release().unwrap();
                }
                0
            })
        })
        .collect();
    for k in kids {
        assert_exits_ok(k);
    }
    assert_eq!(count(&cache, b"total"), 400);
    assert!(!cache.is_locked("counter").unwrap());
}

#[test]
fn lock_nowait_timeout_and_force_release() {
    let name = Name::new("lockops");
    let cache = open(&name);
    let guard = cache.try_lock("job", None).unwrap().expect("free at first");
    assert!(cache.is_locked("job").unwrap());
    let n = name.0.clone();
    let other = spawn(move || {
        let c = open(&n);
        if c.try_lock("job", None).unwrap().is_some() {
            return 2;
        }
        let t = Instant::now();
        match c.lock("job", None, Duration::from_millis(150)) {
            Err(Error::Busy { what: "lock", .. }) if t.elapsed() >= Duration::from_millis(150) => {}
            _ => return 3,
        }
        i32::from(!c.force_release("job").unwrap())
    });
    assert_exits_ok(other);
    assert!(!cache.is_locked("job").unwrap());
    assert!(matches!(guard.release(), Err(Error::NotOwner { .. })));
}

#[test]
fn releasing_a_lock_that_expired_and_was_retaken_is_refused() {
    let name = Name::new("lockexpire");
    let cache = open(&name);
    let guard = cache
        .try_lock("job", Some(Duration::from_millis(50)))
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let n = name.0.clone();
    let (mut held_r, held_w) = pipe();
    let (done_r, mut done_w) = pipe();
    let other = spawn(move || {
        let c = open(&n);
        let mut held_w = held_w;
        let mut done_r = done_r;
        let g = c.try_lock("job", None).unwrap();
        held_w.write_all(&[u8::from(g.is_some())]).unwrap();
        wait_byte(&mut done_r);
        match g {
            Some(g) => i32::from(g.release().is_err()),
            None => 4,
        }
    });
    wait_byte(&mut held_r);
    assert!(matches!(guard.release(), Err(Error::NotOwner { .. })));
    assert!(
        cache.is_locked("job").unwrap(),
        "the new owner still holds it"
    );
    done_w.write_all(&[1]).unwrap();
    assert_exits_ok(other);
    assert!(!cache.is_locked("job").unwrap());
}

#[test]
fn lock_of_a_killed_holder_is_reclaimed_at_once() {
    let name = Name::new("lockdead");
    let cache = open(&name);
    let holder = child_signalling(&name, |c, held| {
        let _g = c.try_lock("job", None).unwrap().unwrap();
        held.write_all(&[1]).unwrap();
        std::thread::sleep(Duration::from_secs(3600));
        0
    });
    assert!(cache.try_lock("job", None).unwrap().is_none());
    kill9(holder);
    let g = cache.try_lock("job", None).unwrap();
    assert!(
        g.is_some(),
        "a dead holder's lock is taken on the next attempt"
    );
}

#[test]
fn inherited_guard_does_nothing_in_the_child() {
    let name = Name::new("lockfork");
    let cache = open(&name);
    // The parent's copy is never dropped (the closure owning it is discarded in the parent);
    // the child drops its inherited copy.
    let guard = std::mem::ManuallyDrop::new(cache.try_lock("job", None).unwrap().unwrap());
    let cache_ref = &cache;
    let child = spawn(move || {
        let guard = std::mem::ManuallyDrop::into_inner(guard);
        if !guard.is_inherited() {
            return 2;
        }
        drop(guard);
        i32::from(!cache_ref.is_locked("job").unwrap())
    });
    assert_exits_ok(child);
    assert!(
        cache.is_locked("job").unwrap(),
        "the child's drop did not release it"
    );
    assert!(cache.force_release("job").unwrap());
}

#[test]
fn once_runs_in_one_process_at_a_time() {
    let name = Name::new("once");
    let cache = open(&name);
    let runner = child_signalling(&name, |c, started| {
        let ran = c
            .once("rebuild", None, OnceBusy::Return(false), || {
                started.write_all(&[1]).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                true
            })
            .unwrap();
        i32::from(!ran)
    });
    let skipped = cache
        .once("rebuild", None, OnceBusy::Return(false), || true)
        .unwrap();
    assert!(!skipped, "busy elsewhere: the fallback value is returned");
    assert!(matches!(
        cache.once("rebuild", None, OnceBusy::Error, || true),
        Err(Error::Busy { what: "once", .. })
    ));
    assert_exits_ok(runner);
    assert!(cache
        .once("rebuild", None, OnceBusy::Return(false), || true)
        .unwrap());
}

#[test]
fn pool_never_admits_more_than_its_size() {
    let name = Name::new("pool");
    let cache = open(&name);
    const N: usize = 2;
    let kids: Vec<_> = (0..4 * N)
        .map(|_| {
            let name = name.0.clone();
            spawn(move || {
                let c = open(&name);
                let pool = c.pool("workers", N).unwrap();
                // Each process needs 10 admissions; a full pool sends it round again.
                let mut admitted = 0;
                while admitted < 10 {
                    let r = pool
                        .run_or(
                            None,
                            || {
                                let inside = c.incr(b"inside", 1).unwrap();
                                std::thread::sleep(Duration::from_micros(500));
                                c.decr(b"inside", 1).unwrap();
                                Some(inside <= N as i64)
                            },
                            || None,
                        )
                        .unwrap();
                    match r {
                        Some(true) => admitted += 1,
                        Some(false) => return 3,
                        None => std::thread::yield_now(),
                    }
                }
                c.incr(b"admitted", admitted).unwrap();
                0
            })
        })
        .collect();
    for k in kids {
        assert_exits_ok(k);
    }
    assert_eq!(count(&cache, b"admitted"), 80);
    assert_eq!(cache.pool("workers", N).unwrap().size().unwrap(), 0);
}

#[test]
fn pool_slot_of_a_killed_holder_is_reclaimed() {
    let name = Name::new("pooldead");
    let cache = open(&name);
    let holder = child_signalling(&name, |c, held| {
        let _slot = c.pool("p", 1).unwrap().acquire(None).unwrap();
        held.write_all(&[1]).unwrap();
        std::thread::sleep(Duration::from_secs(3600));
        0
    });
    let pool = cache.pool("p", 1).unwrap();
    assert_eq!(pool.size().unwrap(), 1);
    assert!(matches!(
        pool.acquire(None),
        Err(Error::Busy { what: "pool", .. })
    ));
    kill9(holder);
    let slot = pool
        .acquire(None)
        .expect("the dead holder's slot is reclaimed");
    assert_eq!(pool.size().unwrap(), 1);
    drop(slot);
    assert_eq!(pool.size().unwrap(), 0);
}

#[test]
fn memo_handle_shares_results_between_processes() {
    let name = Name::new("memo");
    let cache = open(&name);
    let square: Memo<u64> = Memo::new(&cache, "tests::square");
    let n = name.0.clone();
    let child = spawn(move || {
        let c = open(&n);
        let m: Memo<u64> = Memo::new(&c, "tests::square");
        i32::from(m.call(&(7,), || 49).unwrap() != 49)
    });
    assert_exits_ok(child);
    assert_eq!(square.call(&(7,), || panic!("computed twice")).unwrap(), 49);
    assert_eq!(square.stats().hits, 1);
    square.precache(&(8,), &1000).unwrap();
    assert_eq!(square.call(&(8,), || 64).unwrap(), 1000);
    assert!(square.reset(&(8,)).unwrap());
    assert_eq!(square.call(&(8,), || 64).unwrap(), 64);
    let other: Memo<u64> = Memo::new(&cache, "tests::other");
    other.call(&(1,), || 1).unwrap();
    assert_eq!(square.clear().unwrap(), 2);
    assert_eq!(
        other.call(&(1,), || 2).unwrap(),
        1,
        "other functions keep theirs"
    );
}

#[test]
fn clear_in_flight_lets_waiters_compute() {
    let name = Name::new("clearflight");
    let cache = open(&name);
    let stuck = child_signalling(&name, |c, started| {
        let m: Memo<String> = Memo::new(c, "tests::slow");
        let _ = m.call(&(1,), || {
            started.write_all(&[1]).unwrap();
            std::thread::sleep(Duration::from_secs(3600));
            String::new()
        });
        0
    });
    let m: Memo<String> = Memo::new(&cache, "tests::slow");
    assert_eq!(m.clear_in_flight().unwrap(), 1);
    let t = Instant::now();
    assert_eq!(m.call(&(1,), || "here".to_string()).unwrap(), "here");
    assert!(t.elapsed() < Duration::from_secs(1));
    kill9(stuck);
}
