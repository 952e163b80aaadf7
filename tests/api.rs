//! The `Cache` API on a real segment, one process: semantics of every operation.

use shmemcache::{Cache, ComputeError, ComputeOptions, Error, Expiry, Options, Ttl};
use std::collections::BTreeSet;
use std::time::Duration;

struct Seg(Cache);

impl Drop for Seg {
    fn drop(&mut self) {
        let _ = Cache::unlink(self.0.name());
    }
}

fn seg(tag: &str, o: Options) -> Seg {
    let name = format!("shmc-api-{}-{tag}", std::process::id());
    let _ = Cache::unlink(&name);
    Seg(o.create(&name).unwrap())
}

fn opts() -> Options {
    Options::new().capacity_bytes(1 << 20).shards(4)
}

#[test]
fn add_replace_take_delete_contains() {
    let s = seg("ops", opts());
    let c = &s.0;
    assert!(!c.replace(b"k", b"1").unwrap());
    assert!(c.add(b"k", b"1").unwrap());
    assert!(!c.add(b"k", b"2").unwrap());
    assert!(c.replace(b"k", b"3").unwrap());
    assert!(c.contains(b"k").unwrap());
    assert_eq!(c.take(b"k").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(c.take(b"k").unwrap(), None);
    c.set(b"d", b"x").unwrap();
    assert!(c.delete(b"d").unwrap());
    assert!(!c.delete(b"d").unwrap());
    assert!(c.is_empty().unwrap());
}

#[test]
fn set_without_ttl_clears_the_old_deadline_and_default_ttl_applies() {
    let s = seg("ttl", opts().default_ttl(Some(Duration::from_secs(60))));
    let c = &s.0;
    c.set_ttl(b"k", b"v", Some(Duration::from_millis(50)))
        .unwrap();
    c.set_ttl(b"k", b"v", None).unwrap();
    assert_eq!(c.ttl(b"k").unwrap(), Some(Expiry::Never));
    c.set(b"d", b"v").unwrap();
    match c.ttl(b"d").unwrap() {
        Some(Expiry::In(d)) => assert!(d > Duration::from_secs(59) && d <= Duration::from_secs(60)),
        other => panic!("{other:?}"),
    }
    assert!(c.expire(b"d", None).unwrap());
    assert_eq!(c.ttl(b"d").unwrap(), Some(Expiry::Never));
    assert!(!c.expire(b"missing", None).unwrap());
    assert_eq!(c.ttl(b"missing").unwrap(), None);
}

#[test]
fn expired_entries_are_absent_everywhere_and_flushed() {
    let s = seg("expiry", opts());
    let c = &s.0;
    for i in 0..50u32 {
        c.set_ttl(&i.to_be_bytes(), b"v", Some(Duration::from_millis(30)))
            .unwrap();
    }
    c.set(b"stay", b"v").unwrap();
    std::thread::sleep(Duration::from_millis(60));
    assert!(!c.contains(&0u32.to_be_bytes()).unwrap());
    assert_eq!(c.get(&1u32.to_be_bytes()).unwrap(), None);
    // add treats an expired key as absent
    assert!(c.add(&2u32.to_be_bytes(), b"new").unwrap());
    assert_eq!(c.keys().count(), 2);
    let flushed = c.flush_expired().unwrap();
    assert!(flushed >= 40, "flushed {flushed}");
    assert_eq!(c.len().unwrap(), 2);
    assert!(c.stats().unwrap().total.expirations >= 48);
}

#[test]
fn incr_decr_semantics() {
    let s = seg("incr", opts());
    let c = &s.0;
    assert_eq!(c.incr(b"n", 5).unwrap(), 5);
    assert_eq!(c.decr(b"n", 8).unwrap(), -3);
    assert_eq!(c.get(b"n").unwrap().as_deref(), Some(&b"-3"[..]));
    c.set(b"s", b"hello").unwrap();
    assert!(matches!(c.incr(b"s", 1), Err(Error::NotAnInteger)));
    c.set(b"m", i64::MAX.to_string().as_bytes()).unwrap();
    assert!(matches!(c.incr(b"m", 1), Err(Error::Overflow)));
    assert!(matches!(c.decr(b"m", i64::MIN), Err(Error::Overflow)));
}

#[test]
fn keys_iterates_every_live_key_once_across_batches() {
    let s = seg("keys", opts().max_entries(4000).capacity_bytes(4 << 20));
    let c = &s.0;
    let want: BTreeSet<Vec<u8>> = (0..3000u32).map(|i| format!("k{i}").into_bytes()).collect();
    for k in &want {
        c.set(k, b"v").unwrap();
    }
    let got: Vec<Vec<u8>> = c.keys().map(|k| k.unwrap()).collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
}

#[test]
fn stats_count_hits_misses_sets_evictions() {
    let s = seg(
        "stats",
        Options::new()
            .capacity_bytes(64 << 10)
            .shards(1)
            .max_entries(10),
    );
    let c = &s.0;
    for i in 0..15u8 {
        assert_eq!(c.set(&[i], b"v").unwrap().evicted, u32::from(i >= 10));
    }
    c.get(&[14]).unwrap();
    c.get(&[0]).unwrap();
    let t = c.stats().unwrap().total;
    assert_eq!((t.hits, t.misses, t.sets, t.evictions), (1, 1, 15, 5));
    assert_eq!(t.entries, 10);
    assert_eq!(c.stats().unwrap().shards.len(), 1);
    assert_eq!(c.clear().unwrap(), 10);
    assert_eq!(c.len().unwrap(), 0);
}

#[test]
fn large_values_fill_chains_and_evict_until_they_fit() {
    let s = seg("large", Options::new().capacity_bytes(256 << 10).shards(1));
    let c = &s.0;
    let max = c.info().max_value_len as usize;
    for i in 0..20u8 {
        let v = vec![i; max / 3];
        c.set(&[i], &v).unwrap();
        assert_eq!(c.get(&[i]).unwrap(), Some(v));
    }
    assert!(c.stats().unwrap().total.evictions > 0);
    c.set(b"max", &vec![1; max]).unwrap();
    assert_eq!(c.get(b"max").unwrap().map(|v| v.len()), Some(max));
    assert!(c.check().unwrap().is_healthy());
}

#[test]
fn typed_round_trip_and_codec_errors() {
    let s = seg("typed", opts());
    let c = &s.0;
    let t = c.typed::<(String, u32), Vec<f64>>();
    t.set(&("a".into(), 1), &vec![1.5, 2.5]).unwrap();
    assert_eq!(t.get(&("a".into(), 1)).unwrap(), Some(vec![1.5, 2.5]));
    assert!(t.contains(&("a".into(), 1)).unwrap());
    assert_eq!(t.get(&("b".into(), 1)).unwrap(), None);
    // Bytes that are not a Vec<f64> give a codec error, not a panic.
    let raw = c.typed::<(String, u32), u8>();
    raw.set(&("bad".into(), 0), &200).unwrap();
    assert!(matches!(t.get(&("bad".into(), 0)), Err(Error::Codec(_))));
    assert_eq!(t.take(&("a".into(), 1)).unwrap(), Some(vec![1.5, 2.5]));
}

#[test]
fn repair_on_a_healthy_cache_keeps_everything() {
    let s = seg("repair", opts());
    let c = &s.0;
    for i in 0..100u32 {
        c.set(&i.to_le_bytes(), &i.to_be_bytes()).unwrap();
    }
    let r = c.repair().unwrap();
    assert_eq!((r.kept, r.dropped, r.cleared_shards), (100, 0, 0));
    assert_eq!(r.repaired_shards, 0, "nothing to repair");
    assert_eq!(r.coordination_slots_dropped, None);
    // A repair that changed nothing counts no recovery.
    assert_eq!(c.stats().unwrap().total.recoveries, 0);
    for i in 0..100u32 {
        assert_eq!(
            c.get(&i.to_le_bytes()).unwrap(),
            Some(i.to_be_bytes().to_vec())
        );
    }
}

#[test]
fn bad_options_are_clear_errors() {
    let name = format!("shmc-api-{}-badopts", std::process::id());
    for o in [
        Options::new().shards(0),
        Options::new().chunk_size(100),
        Options::new().chunk_size(40),
        Options::new().max_entries(0),
        Options::new().capacity_bytes(1024).shards(64),
        Options::new().lock_timeout(Duration::ZERO),
        Options::new().default_ttl(Some(Duration::ZERO)),
    ] {
        match o.open(&name) {
            Err(Error::InvalidArgument(_)) | Err(Error::ZeroTtl) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
    assert!(!std::path::Path::new(&format!("/dev/shm/{name}")).exists());
}

#[test]
fn get_or_compute_options_per_call() {
    let s = seg("memoopts", opts());
    let c = &s.0;
    let typed = c.typed::<str, Vec<u32>>();
    let calls = std::cell::Cell::new(0);
    let f = || {
        calls.set(calls.get() + 1);
        Ok::<_, std::io::Error>(vec![calls.get()])
    };
    let o = ComputeOptions::new();
    assert_eq!(typed.get_or_compute("k", &o, f).unwrap(), vec![1]);
    assert_eq!(typed.get_or_compute("k", &o, f).unwrap(), vec![1], "hit");
    let skip = ComputeOptions::new().skip_cache(true);
    assert_eq!(typed.get_or_compute("k", &skip, f).unwrap(), vec![2]);
    assert_eq!(
        typed.get_or_compute("k", &o, f).unwrap(),
        vec![1],
        "skip did not store"
    );
    let over = ComputeOptions::new().overwrite(true);
    assert_eq!(typed.get_or_compute("k", &over, f).unwrap(), vec![3]);
    assert_eq!(
        typed.get_or_compute("k", &o, f).unwrap(),
        vec![3],
        "overwrite stored"
    );
    std::thread::sleep(Duration::from_millis(20));
    let young = ComputeOptions::new().max_age(Duration::from_millis(10));
    assert_eq!(
        typed.get_or_compute("k", &young, f).unwrap(),
        vec![4],
        "too old"
    );
    let tiny = ComputeOptions::new().max_size(1); // postcard: 2 bytes for a one-element vec
    assert_eq!(typed.get_or_compute("big", &tiny, f).unwrap(), vec![5]);
    assert_eq!(
        typed.get_or_compute("big", &tiny, f).unwrap(),
        vec![6],
        "not stored"
    );
    let zero = ComputeOptions::new().ttl(Ttl::For(Duration::ZERO));
    assert!(matches!(
        typed.get_or_compute("z", &zero, f),
        Err(ComputeError::Cache(Error::ZeroTtl))
    ));
    let short = ComputeOptions::new().ttl(Ttl::For(Duration::from_millis(30)));
    assert_eq!(typed.get_or_compute("t", &short, f).unwrap(), vec![7]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        typed.get_or_compute("t", &short, f).unwrap(),
        vec![8],
        "expired"
    );
    let err = typed.get_or_compute("e", &o, || Err::<Vec<u32>, _>(std::io::Error::other("no")));
    assert!(matches!(err, Err(ComputeError::Compute(_))));
    assert!(!typed.contains("e").unwrap(), "errors are not stored");
    let long_key = vec![b'x'; 5000];
    assert!(matches!(
        c.get_or_compute(&long_key, &o, || Ok::<_, std::io::Error>(vec![])),
        Err(ComputeError::Cache(Error::KeyTooLarge { .. }))
    ));
    assert_eq!(c.coordination_stats().unwrap().in_use, 0);
}

#[test]
fn lock_and_pool_arguments_are_checked() {
    let s = seg("lockargs", opts());
    let c = &s.0;
    assert!(matches!(
        c.try_lock("", None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        c.try_lock("x", Some(Duration::ZERO)),
        Err(Error::ZeroTtl)
    ));
    assert!(matches!(c.pool("p", 0), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        c.pool("p", 1 << 30),
        Err(Error::InvalidArgument(_))
    ));
    let g = c.try_lock("x", None).unwrap().unwrap();
    assert!(c.try_lock("x", None).unwrap().is_none(), "not re-entrant");
    assert!(g.is_held().unwrap());
    drop(g);
    assert!(!c.is_locked("x").unwrap());
}

#[test]
fn a_full_coordination_table_is_a_clear_error() {
    let s = seg("coordfull", opts().coord_slots(2));
    let c = &s.0;
    let _a = c.try_lock("a", None).unwrap().unwrap();
    let _b = c.try_lock("b", None).unwrap().unwrap();
    assert!(matches!(
        c.try_lock("c", None),
        Err(Error::CoordinationFull { slots: 2 })
    ));
}

#[test]
fn huge_durations_saturate_instead_of_panicking() {
    let max = std::time::Duration::MAX;
    let s = seg(
        "saturate",
        opts()
            .lock_timeout(max)
            .init_timeout(max)
            .liveness_interval(max)
            .default_ttl(Some(max)),
    );
    let c = &s.0;
    c.set(b"a", b"1").unwrap();
    c.set_ttl(b"b", b"2", Some(max)).unwrap();
    assert!(c.expire(b"a", Some(max)).unwrap());
    assert!(matches!(
        c.ttl(b"b").unwrap(),
        Some(shmemcache::Expiry::In(_))
    ));
    let g = c.lock("l", Some(max), max).unwrap();
    assert!(c.try_lock("l", Some(max)).unwrap().is_none());
    g.release().unwrap();
    let opts = shmemcache::ComputeOptions::new()
        .ttl(shmemcache::Ttl::For(max))
        .wait_timeout(max)
        .stale_after(max)
        .max_age(max);
    let v = c
        .get_or_compute(b"m", &opts, || Ok::<_, std::io::Error>(b"x".to_vec()))
        .unwrap();
    assert_eq!(v, b"x");
    let p = c.pool("p", 1).unwrap();
    drop(p.acquire(Some(max)).unwrap());
}

#[test]
fn with_checksums_a_damaged_value_is_a_counted_miss_never_returned() {
    let s = seg("checksums", opts().shards(1).checksums(true));
    let c = &s.0;
    assert!(c.info().checksums);
    let value = b"a value nobody else has: 0123456789abcdef".repeat(3);
    c.set(b"k", &value).unwrap();
    c.set(b"other", b"fine").unwrap();
    assert_eq!(c.get(b"k").unwrap().as_deref(), Some(&value[..]));
    // Flip one byte of the stored value, through the file.
    let path = format!("/dev/shm/{}", c.name());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(value.len())
        .position(|w| w == &value[..])
        .expect("value stored verbatim");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    bytes[at + 10] ^= 0x20;
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes[at + 10..at + 11], (at + 10) as u64)
        .unwrap();
    let report = c.check().unwrap();
    assert!(report.problems[0].1.contains("checksum"), "{report:?}");
    assert_eq!(
        c.get(b"k").unwrap(),
        None,
        "damaged bytes are never returned"
    );
    let t = c.stats().unwrap().total;
    assert_eq!((t.checksum_failures, t.misses), (1, 1));
    assert_eq!(c.get(b"other").unwrap().as_deref(), Some(&b"fine"[..]));
    assert!(c.check().unwrap().is_healthy());
    // Joiners adopt the setting.
    let joined = Options::new().open_existing(c.name()).unwrap();
    assert!(joined.info().checksums);
}

/// Lazy promotion's guarantee: an entry read since it was last placed is never evicted
/// before one that has not been read.
#[test]
fn entries_read_since_placed_outlive_unread_ones() {
    let s = seg(
        "lazy",
        Options::new()
            .capacity_bytes(1 << 20)
            .shards(1)
            .max_entries(100),
    );
    let c = &s.0;
    for i in 0..100u32 {
        c.set(&i.to_le_bytes(), b"v").unwrap();
    }
    // Read every third entry, in no particular order.
    let read: Vec<u32> = (0..100).filter(|i| i % 3 == 0).rev().collect();
    for i in &read {
        assert!(c.get(&i.to_le_bytes()).unwrap().is_some());
    }
    let unread = 100 - read.len() as u32;
    // Each new entry evicts one; the unread go first, all of them, before any read one.
    for n in 0..unread {
        let out = c.set(&(1000 + n).to_le_bytes(), b"new").unwrap();
        assert_eq!(out.evicted, 1);
        for i in &read {
            assert!(
                c.contains(&i.to_le_bytes()).unwrap(),
                "read entry {i} evicted at {n}"
            );
        }
    }
    assert!((0..100u32)
        .filter(|i| i % 3 != 0)
        .all(|i| !c.contains(&i.to_le_bytes()).unwrap()));
    assert_eq!(c.stats().unwrap().total.evictions, unread as u64);
}

/// With `Recency::Exact`, every get moves its entry to the head: strict LRU order.
#[test]
fn exact_recency_keeps_strict_lru_order() {
    use shmemcache::Recency;
    for (recency, evicted) in [(Recency::Exact, b"b"), (Recency::Lazy, b"a")] {
        let s = seg(
            &format!("recency-{recency:?}"),
            Options::new()
                .capacity_bytes(1 << 20)
                .shards(1)
                .max_entries(2)
                .recency(recency),
        );
        let c = &s.0;
        c.set(b"a", b"1").unwrap();
        c.set(b"b", b"2").unwrap();
        c.get(b"b").unwrap();
        c.get(b"a").unwrap(); // strict LRU: a is the most recent now
        c.set(b"c", b"3").unwrap();
        // Strict LRU evicts b; lazy promotion gave both a second chance and evicts the
        // oldest placed, a.
        assert!(!c.contains(evicted).unwrap(), "{recency:?}");
        assert!(c.contains(b"c").unwrap());
    }
}
