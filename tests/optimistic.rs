//! Gets without the shard lock, across real processes: torn-read torture, a writer killed
//! inside its critical section while readers run, lazy recency across processes, and
//! machine-wide hit/miss counters from per-process slots.

mod common;

use common::*;
use nix::unistd::Pid;
use shmemcache::fault::{self, FaultAction, FaultPoint};
use shmemcache::{Cache, ComputeOptions, Error, Memo, Options, Recency};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A value that proves itself: its length, its key and a checksum of both and of the
/// filler, then the filler.
fn make_value(key: &[u8], len: usize, seed: u64) -> Vec<u8> {
    let len = len.max(4 + 2 + key.len() + 8);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(len as u32).to_le_bytes());
    v.extend_from_slice(&(key.len() as u16).to_le_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(&[0; 8]);
    let mut x = seed | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    let sum = checksum(&v);
    let at = 6 + key.len();
    v[at..at + 8].copy_from_slice(&sum.to_le_bytes());
    v
}

fn checksum(v: &[u8]) -> u64 {
    let k = u16::from_le_bytes([v[4], v[5]]) as usize;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (i, b) in v.iter().enumerate() {
        let b = if (6 + k..14 + k).contains(&i) { 0 } else { *b };
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Whether `v` is a whole value written for `key` by [`make_value`].
fn valid(key: &[u8], v: &[u8]) -> bool {
    if v.len() < 14 + key.len() {
        return false;
    }
    let len = u32::from_le_bytes(v[..4].try_into().unwrap()) as usize;
    let k = u16::from_le_bytes([v[4], v[5]]) as usize;
    if len != v.len() || k != key.len() || &v[6..6 + k] != key {
        return false;
    }
    let stored = u64::from_le_bytes(v[6 + k..14 + k].try_into().unwrap());
    stored == checksum(v)
}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("torture:{i}").into_bytes()
}

/// Sends one report line in a single `write` (shorter than `PIPE_BUF`, so lines of
/// several children never interleave).
fn report(w: &mut std::fs::File, line: String) {
    w.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// Every child's report line from `r` (a tag, then two numbers), once the children exited.
fn reports(kids: &[Pid], mut r: std::fs::File) -> Vec<(String, u64, u64)> {
    for &k in kids {
        assert_exits_ok(k);
    }
    let mut text = String::new();
    r.read_to_string(&mut text).unwrap();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn torn_read_torture_returns_no_invalid_value() {
    let secs: u64 = std::env::var("TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let name = Name::new("torture");
    // Small enough that writers keep evicting: chunks are freed and reused under readers.
    let cache = Options::new()
        .capacity_bytes(512 << 10)
        .shards(2)
        .create(&name)
        .unwrap();
    const KEYS: u64 = 300;
    let (r, w) = pipe();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut kids = Vec::new();
    for writer in 0..2u64 {
        let n = name.0.clone();
        let mut w = w.try_clone().unwrap();
        kids.push(spawn(move || {
            let c = Cache::open_existing(&n).unwrap();
            let mut next = rng(0x9e37 + writer);
            let mut writes = 0u64;
            while Instant::now() < deadline {
                let i = next() % KEYS;
                let len = 1 + (next() % 3072) as usize;
                let k = key(i);
                c.set(&k, &make_value(&k, len, next())).unwrap();
                writes += 1;
                if writes % 64 == 0 {
                    c.delete(&key(next() % KEYS)).unwrap();
                }
            }
            report(&mut w, format!("writer {writes} 0"));
            0
        }));
    }
    for reader in 0..2u64 {
        let n = name.0.clone();
        let mut w = w.try_clone().unwrap();
        kids.push(spawn(move || {
            let c = Cache::open_existing(&n).unwrap();
            let mut next = rng(0x51ed + reader);
            let (mut hits, mut invalid) = (0u64, 0u64);
            let mut buf = vec![0u8; 4096];
            while Instant::now() < deadline {
                let k = key(next() % KEYS);
                // Both read paths: into a buffer, and into a new vector.
                let got = if next() % 2 == 0 {
                    c.get(&k).unwrap()
                } else {
                    c.get_into(&k, &mut buf).unwrap().map(|n| buf[..n].to_vec())
                };
                if let Some(v) = got {
                    hits += 1;
                    invalid += u64::from(!valid(&k, &v));
                }
            }
            report(&mut w, format!("reader {hits} {invalid}"));
            0
        }));
    }
    drop(w);
    let got = reports(&kids, r);
    let writes: u64 = got.iter().filter(|r| r.0 == "writer").map(|r| r.1).sum();
    let (hits, invalid) = got
        .iter()
        .filter(|r| r.0 == "reader")
        .fold((0, 0), |(h, i), r| (h + r.1, i + r.2));
    let st = cache.stats().unwrap();
    println!(
        "torture {secs} s: {writes} writes, {hits} valid reads checked by 2 reader processes, \
         {invalid} invalid; {} evictions",
        st.total.evictions
    );
    assert_eq!(invalid, 0, "torn values returned");
    assert!(hits > 1000, "readers made no progress: {hits} hits");
    assert!(st.total.evictions > 0, "the test never reused chunks");
    assert!(cache.check().unwrap().is_healthy());
}

#[test]
fn a_writer_killed_mid_write_never_strands_or_fools_readers() {
    let name = Name::new("killed-writer");
    let timeout = Duration::from_millis(300);
    let cache = Options::new()
        .capacity_bytes(1 << 20)
        .shards(1)
        .lock_timeout(timeout)
        .create(&name)
        .unwrap();
    const KEYS: u64 = 50;
    for i in 0..KEYS {
        let k = key(i);
        cache.set(&k, &make_value(&k, 200, i)).unwrap();
    }
    let (r, w) = pipe();
    let run = Duration::from_millis(1500);
    let mut readers = Vec::new();
    for reader in 0..2u64 {
        let n = name.0.clone();
        let mut w = w.try_clone().unwrap();
        readers.push(spawn(move || {
            let c = Options::new()
                .lock_timeout(timeout)
                .open_existing(&n)
                .unwrap();
            let mut next = rng(7 + reader);
            let end = Instant::now() + run;
            let (mut invalid, mut slowest) = (0u64, Duration::ZERO);
            while Instant::now() < end {
                let k = key(next() % KEYS);
                let t = Instant::now();
                match c.get(&k) {
                    Ok(Some(v)) => invalid += u64::from(!valid(&k, &v)),
                    Ok(None) | Err(Error::LockTimeout { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
                slowest = slowest.max(t.elapsed());
            }
            report(&mut w, format!("reader {} {invalid}", slowest.as_micros()));
            0
        }));
    }
    drop(w);
    // Writers stop inside the critical section, half way through rewriting a value and
    // holding the lock, and are killed there; the readers run all along. Rounds 0 and 2
    // write out of place (a longer value), round 1 in place (the same length), where the
    // entry's own bytes are half rewritten.
    for round in 0..3u64 {
        let n = name.0.clone();
        let writer = spawn(move || {
            let c = Cache::open_existing(&n).unwrap();
            fault::arm(FaultPoint::StoreMidWrite, FaultAction::Stop);
            let k = key(round);
            let len = if round == 1 { 200 } else { 2000 };
            let _ = c.set(&k, &make_value(&k, len, 99 + round));
            3
        });
        wait_stopped(writer);
        std::thread::sleep(Duration::from_millis(400));
        kill9(writer);
    }
    let got = reports(&readers, r);
    let budget = timeout + Duration::from_millis(200);
    for (_, slowest_us, invalid) in &got {
        println!("reader: slowest get {slowest_us} µs, {invalid} invalid values");
        assert_eq!(*invalid, 0);
        assert!(
            Duration::from_micros(*slowest_us) <= budget,
            "a get took {slowest_us} µs, past its lock timeout"
        );
    }
    for i in 0..KEYS {
        let k = key(i);
        let v = cache
            .get(&k)
            .unwrap()
            .expect("only rewritten keys, never lost");
        assert!(valid(&k, &v));
    }
    assert!(cache.check().unwrap().is_healthy());
}

#[test]
fn lazy_recency_keeps_entries_another_process_read() {
    let name = Name::new("lazy-xproc");
    let cache = Options::new()
        .capacity_bytes(64 << 10)
        .max_entries(64)
        .shards(1)
        .create(&name)
        .unwrap();
    let cap = cache.info().max_entries;
    for i in 0..cap {
        cache.set(&key(i), b"v").unwrap();
    }
    // Another process reads every third key (lock-free gets set their accessed marks).
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        for i in (0..cap).step_by(3) {
            assert!(c.get(&key(i)).unwrap().is_some());
        }
        0
    });
    assert_exits_ok(kid);
    // Writing a third of the capacity anew evicts only entries nobody read.
    for i in cap..cap + cap / 3 {
        cache.set(&key(i), b"v").unwrap();
    }
    for i in (0..cap).step_by(3) {
        assert!(
            cache.contains(&key(i)).unwrap(),
            "read entry {i} was evicted"
        );
    }
    let evicted = (0..cap)
        .filter(|i| !cache.contains(&key(*i)).unwrap())
        .count();
    assert!(evicted >= (cap / 3) as usize, "{evicted}");
}

#[test]
fn stats_total_hits_and_misses_of_processes_that_exited() {
    let name = Name::new("counters");
    let cache = Options::new()
        .capacity_bytes(1 << 20)
        .create(&name)
        .unwrap();
    for i in 0..10 {
        cache.set(&key(i), b"v").unwrap();
    }
    let before = cache.stats().unwrap().total;
    let mut kids = Vec::new();
    // Per child: 100 + 10 * c hits and 7 * c misses; one child is killed after counting.
    for c in 0..4u64 {
        let n = name.0.clone();
        kids.push(spawn(move || {
            let cache = Cache::open_existing(&n).unwrap();
            for j in 0..100 + 10 * c {
                assert!(cache.get(&key(j % 10)).unwrap().is_some());
            }
            let mut buf = [0u8; 8];
            for j in 0..7 * c {
                assert!(cache.get_into(&key(100 + j), &mut buf).unwrap().is_none());
            }
            0
        }));
    }
    for k in kids {
        assert_exits_ok(k);
    }
    let n = name.0.clone();
    let doomed = spawn(move || {
        let cache = Cache::open_existing(&n).unwrap();
        for j in 0..50 {
            assert!(cache.get(&key(j % 10)).unwrap().is_some());
        }
        // Stop to be killed: what was counted is already in the segment.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP).unwrap();
        0
    });
    wait_stopped(doomed);
    kill9(doomed);
    let after = cache.stats().unwrap().total;
    assert_eq!(after.hits - before.hits, 4 * 100 + 10 * 6 + 50);
    assert_eq!(after.misses - before.misses, 7 * 6);
}

#[test]
fn namespace_hits_and_misses_of_processes_that_exited() {
    let name = Name::new("ns-counters");
    let cache = Options::new()
        .capacity_bytes(1 << 20)
        .create(&name)
        .unwrap();
    // Eight namespaces: the first six count per process, the others in shared words.
    let names: Vec<String> = (0..8).map(|i| format!("ns{i}")).collect();
    for n in &names {
        cache.namespace(n).unwrap().set(b"k", b"v").unwrap();
    }
    let kids: Vec<Pid> = (0..3u64)
        .map(|c| {
            let (n, names) = (name.0.clone(), names.clone());
            spawn(move || {
                let cache = Cache::open_existing(&n).unwrap();
                for (i, ns) in names.iter().enumerate() {
                    let h = cache.namespace(ns).unwrap();
                    for _ in 0..(i as u64 + 1) * (c + 1) {
                        assert!(h.get(b"k").unwrap().is_some());
                    }
                    assert!(h.get(b"absent").unwrap().is_none());
                }
                0
            })
        })
        .collect();
    for k in kids {
        assert_exits_ok(k);
    }
    for (i, ns) in names.iter().enumerate() {
        let h = cache.namespace(ns).unwrap();
        let st = h.namespace_stats().unwrap();
        // Children 1, 2 and 3 read it (i + 1) times each, times their number.
        assert_eq!(st.hits, (i as u64 + 1) * 6, "{ns}");
        assert_eq!(st.misses, 3, "{ns}");
        assert_eq!(h.stats().unwrap().total.hits, (i as u64 + 1) * 6, "{ns}");
    }
    // The default namespace's figures are the cache's less the named ones'.
    let all = cache.stats().unwrap().total;
    let default = cache.namespace_stats().unwrap();
    assert_eq!(default.hits, all.hits - (1..=8).map(|i| i * 6).sum::<u64>());
    // Each get counted once in the totals, whichever word it went to.
    assert_eq!(all.hits, (1..=8).map(|i| i * 6).sum::<u64>());
    assert_eq!(all.misses, 8 * 3);
    assert_eq!((default.hits, default.misses), (0, 0));
}

#[test]
fn locked_gets_of_a_namespace_count_once() {
    let name = Name::new("ns-locked-counts");
    // Strict LRU: every get takes the shard lock.
    let cache = Options::new()
        .capacity_bytes(1 << 20)
        .recency(Recency::Exact)
        .create(&name)
        .unwrap();
    let ns = cache.namespace("locked").unwrap();
    ns.set(b"k", b"v").unwrap();
    for _ in 0..5 {
        assert!(ns.get(b"k").unwrap().is_some());
    }
    let mut buf = [0u8; 8];
    assert_eq!(ns.get_into(b"k", &mut buf).unwrap(), Some(1));
    assert!(ns.get(b"absent").unwrap().is_none());
    // A key too long for the stack-built tagged form (which is then made before the lock).
    let long = vec![b'x'; 300];
    ns.set(&long, b"w").unwrap();
    assert_eq!(ns.get(&long).unwrap().as_deref(), Some(&b"w"[..]));
    assert!(
        cache.get(&long).unwrap().is_none(),
        "the default namespace's key is another"
    );
    let all = cache.stats().unwrap().total;
    assert_eq!((all.hits, all.misses), (7, 2));
    let own = ns.namespace_stats().unwrap();
    assert_eq!((own.hits, own.misses), (7, 1));
    assert_eq!(cache.namespace_stats().unwrap().hits, 0);
}

#[test]
fn memoized_hits_of_processes_that_exited_are_all_counted() {
    let name = Name::new("memo-counters");
    let cache = Options::new()
        .capacity_bytes(1 << 20)
        .create(&name)
        .unwrap();
    // Ten memoized functions, more than a process counts in its own slot (eight): the
    // rest count in the shared words, and the sums must not care.
    let fns: Vec<String> = (0..10).map(|i| format!("fn{i}")).collect();
    for f in &fns {
        let m: Memo<u32> = Memo::new(&cache, f);
        assert_eq!(m.call(&1u32, || 7).unwrap(), 7);
    }
    cache
        .get_or_compute(b"plain", &ComputeOptions::new(), || {
            Ok::<_, std::io::Error>(b"v".to_vec())
        })
        .unwrap();
    let before = cache.memo_stats();
    let kids: Vec<Pid> = (0..3u64)
        .map(|c| {
            let (n, fns) = (name.0.clone(), fns.clone());
            spawn(move || {
                let cache = Cache::open_existing(&n).unwrap();
                for (i, f) in fns.iter().enumerate() {
                    let m: Memo<u32> = Memo::new(&cache, f);
                    for _ in 0..(i as u64 + 1) * (c + 1) {
                        assert_eq!(m.call(&1u32, || panic!("a hit was expected")).unwrap(), 7);
                    }
                }
                for _ in 0..5 {
                    let v = cache
                        .get_or_compute(b"plain", &ComputeOptions::new(), || {
                            Err::<Vec<u8>, _>("a hit was expected")
                        })
                        .unwrap();
                    assert_eq!(v, b"v");
                }
                0
            })
        })
        .collect();
    for k in kids {
        assert_exits_ok(k);
    }
    for (i, f) in fns.iter().enumerate() {
        let m: Memo<u32> = Memo::new(&cache, f);
        // Children 1, 2 and 3 called it (i + 1) times each, times their number.
        assert_eq!(m.stats().hits, (i as u64 + 1) * 6, "{f}");
    }
    let after = cache.memo_stats();
    let function_hits: u64 = (1..=10).map(|i| i * 6).sum();
    assert_eq!(after.hits - before.hits, function_hits + 3 * 5);
}
