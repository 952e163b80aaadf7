//! `#[memoize]` compiles on the shapes users write and behaves: results are shared through
//! the segment, errors are not cached, `None` is cached only when asked, and the companion
//! module's `reset`, `precache`, `clear` and `stats` work.

use shmemcache::{memoize, Cache, Options};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;

mod common;
use common::*;

static CACHE: LazyLock<Cache> = LazyLock::new(|| {
    let name = format!("shmc-test-{}-memoize", std::process::id());
    let c = Options::new()
        .capacity_bytes(1 << 20)
        .shards(2)
        .open(&name)
        .unwrap();
    Cache::unlink(&name).unwrap(); // the mapping stays; nothing is left in /dev/shm
    c
});

static CALLS: AtomicU32 = AtomicU32::new(0);

/// A plain function with two arguments, one borrowed.
#[memoize(cache = CACHE, ttl = "5m")]
fn area(shape: &str, side: u64) -> u64 {
    CALLS.fetch_add(1, Ordering::SeqCst);
    match shape {
        "square" => side * side,
        _ => 0,
    }
}

#[derive(Debug)]
struct NotFound;

static LOOKUPS: AtomicU32 = AtomicU32::new(0);

/// A fallible function: `Err` is returned and never stored.
#[memoize(cache = CACHE, stale_after = "1m", serve_stale, on_error = "retry")]
fn lookup(id: u32) -> Result<String, NotFound> {
    LOOKUPS.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        return Err(NotFound);
    }
    Ok(format!("user-{id}"))
}

static FINDS: AtomicU32 = AtomicU32::new(0);

/// `None` results are not cached by default.
#[memoize(cache = CACHE)]
fn find(word: String) -> Option<usize> {
    FINDS.fetch_add(1, Ordering::SeqCst);
    "hello world".find(&word)
}

static NO_ARGS: AtomicU32 = AtomicU32::new(0);

/// No arguments, with `None` cached on request.
#[memoize(cache = CACHE, name = "tests::config", cache_none = true)]
fn config() -> Option<u8> {
    NO_ARGS.fetch_add(1, Ordering::SeqCst);
    None
}

#[test]
fn memoize_behaves_like_the_function_and_computes_once() {
    assert_eq!(area("square", 4), 16);
    assert_eq!(area("square", 4), 16);
    assert_eq!(area("circle", 4), 0);
    assert_eq!(CALLS.load(Ordering::SeqCst), 2);
    assert_eq!(area::stats().hits, 1);
    assert!(area::reset("square", 4).unwrap());
    assert_eq!(area("square", 4), 16);
    assert_eq!(CALLS.load(Ordering::SeqCst), 3);
    area::precache("square", 5, &99).unwrap();
    assert_eq!(area("square", 5), 99);
    assert_eq!(area::clear().unwrap(), 3);
    assert_eq!(area("square", 5), 25);

    assert!(lookup(0).is_err());
    assert!(lookup(0).is_err());
    assert_eq!(LOOKUPS.load(Ordering::SeqCst), 2, "errors are not cached");
    assert_eq!(lookup(7).unwrap(), "user-7");
    assert_eq!(lookup(7).unwrap(), "user-7");
    assert_eq!(LOOKUPS.load(Ordering::SeqCst), 3);

    assert_eq!(find("world".to_string()), Some(6));
    assert_eq!(find("world".to_string()), Some(6));
    assert_eq!(find("nope".to_string()), None);
    assert_eq!(find("nope".to_string()), None);
    assert_eq!(FINDS.load(Ordering::SeqCst), 3, "None is recomputed");

    assert_eq!(config(), None);
    assert_eq!(config(), None);
    assert_eq!(NO_ARGS.load(Ordering::SeqCst), 1, "None cached on request");
    assert_eq!(config::clear_in_flight().unwrap(), 0);
}

#[test]
fn memoize_inside_a_function_body_with_a_user_struct_and_per_call_options() {
    // Everything here is function-local: the static, the type and the memoized function.
    static LOCAL: LazyLock<Cache> = LazyLock::new(|| {
        let name = format!("shmc-test-{}-memoize-local", std::process::id());
        let c = Options::new().capacity_bytes(1 << 20).open(&name).unwrap();
        Cache::unlink(&name).unwrap();
        c
    });
    static RUNS: AtomicU32 = AtomicU32::new(0);

    #[derive(Clone, Debug, PartialEq, shmemcache::Serialize, shmemcache::Deserialize)]
    #[serde(crate = "shmemcache::serde")]
    struct Quote {
        sku: String,
        cents: u64,
    }

    #[memoize(cache = LOCAL, ttl = "1.5m")]
    fn quote(sku: &str, qty: u32) -> Quote {
        RUNS.fetch_add(1, Ordering::SeqCst);
        Quote {
            sku: sku.to_string(),
            cents: 100 * qty as u64,
        }
    }

    assert_eq!(quote("a", 2).cents, 200);
    assert_eq!(quote("a", 2).cents, 200);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    // Per-call options: overwrite recomputes, skip_cache neither reads nor writes.
    assert_eq!(
        quote::with(quote::options().overwrite(true))
            .call("a", 2)
            .cents,
        200
    );
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);
    quote::precache(
        "b",
        1,
        &Quote {
            sku: "b".into(),
            cents: 7,
        },
    )
    .unwrap();
    assert_eq!(quote("b", 1).cents, 7);
    let skipped = quote::with(quote::options().skip_cache(true)).call("b", 1);
    assert_eq!(skipped.cents, 100, "skip_cache computes");
    assert_eq!(quote("b", 1).cents, 7, "and leaves the stored value alone");
    // max_age: a value older than this is treated as missing for this call.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let aged = quote::with(quote::options().max_age(std::time::Duration::from_millis(5)));
    assert_eq!(aged.call("b", 1).cents, 100);
    // ttl = "1.5m" reached the stored entry.
    let key = quote::memo().key(&("a", 2u32)).unwrap();
    match LOCAL.ttl(&key).unwrap() {
        Some(shmemcache::Expiry::In(d)) => assert!(d.as_secs() > 80 && d.as_secs() <= 90),
        other => panic!("{other:?}"),
    }
    let s = quote::stats();
    assert_eq!((s.hits, s.computed), (3, 4), "{s:?}");
}

static KEYED: AtomicU32 = AtomicU32::new(0);

fn region_key(region: &&str, _verbose: &bool) -> String {
    region.to_string()
}

/// The key ignores `verbose`: calls differing only in it share one result.
#[memoize(cache = CACHE, key = region_key)]
fn report(region: &str, verbose: bool) -> String {
    KEYED.fetch_add(1, Ordering::SeqCst);
    format!("{region}:{verbose}")
}

static TEMPLATED: AtomicU32 = AtomicU32::new(0);

/// py-cachify style: the key is a template over the argument names.
#[memoize(cache = CACHE, key = "user:{id}")]
fn profile(id: u32, _trace: u64) -> String {
    TEMPLATED.fetch_add(1, Ordering::SeqCst);
    format!("profile-{id}")
}

struct Catalog {
    region: String,
    calls: AtomicU32,
}

impl Catalog {
    fn price_key(&self, sku: &&str) -> (String, String) {
        (self.region.clone(), sku.to_string())
    }

    #[memoize(cache = CACHE, key = Self::price_key)]
    fn price(&self, sku: &str) -> u64 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        sku.len() as u64
    }

    #[memoize(cache = CACHE, ignore_self)]
    fn tax(&self, country: u16) -> u32 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        country as u32 % 7
    }
}

#[test]
fn key_functions_templates_and_methods() {
    assert_eq!(report("eu", true), "eu:true");
    assert_eq!(
        report("eu", false),
        "eu:true",
        "verbose is not part of the key"
    );
    assert_eq!(KEYED.load(Ordering::SeqCst), 1);

    assert_eq!(profile(7, 1), "profile-7");
    assert_eq!(profile(7, 2), "profile-7");
    assert_eq!(TEMPLATED.load(Ordering::SeqCst), 1);
    assert!(profile::reset(7, 0).unwrap());

    let eu = Catalog {
        region: "eu".into(),
        calls: AtomicU32::new(0),
    };
    let us = Catalog {
        region: "us".into(),
        calls: AtomicU32::new(0),
    };
    assert_eq!(eu.price("abc"), 3);
    assert_eq!(eu.price("abc"), 3);
    assert_eq!(us.price("abc"), 3);
    assert_eq!(eu.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        us.calls.load(Ordering::SeqCst),
        1,
        "self is part of price's key"
    );
    assert_eq!(eu.tax(10), 3);
    assert_eq!(us.tax(10), 3);
    assert_eq!(us.calls.load(Ordering::SeqCst), 1, "tax ignores self");
    let opts = shmemcache::ComputeOptions::new().overwrite(true);
    assert_eq!(eu.price_with(&opts, "abc"), 3);
    assert_eq!(eu.calls.load(Ordering::SeqCst), 3);
    assert_eq!(Catalog::price_memo().stats().computed, 3);
}

static SLOW_RUNS: AtomicU32 = AtomicU32::new(0);

#[memoize(cache = CACHE, name = "tests::slow")]
fn slow(n: u64) -> u64 {
    SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(300));
    n * 2
}

#[test]
fn memo_stats_are_machine_wide_and_apart_from_the_cache_hit_ratio() {
    LazyLock::force(&CACHE); // the children inherit this mapping (its name is unlinked)
    let (r, w) = pipe();
    let kids: Vec<_> = (0..4)
        .map(|_| {
            let r = r.try_clone().unwrap();
            spawn(move || {
                let mut b = [0u8; 1];
                std::io::Read::read_exact(&mut &r, &mut b).unwrap();
                i32::from(slow(21) != 42)
            })
        })
        .collect();
    std::io::Write::write_all(&mut &w, &[1; 4]).unwrap();
    kids.into_iter().for_each(assert_exits_ok);
    assert_eq!(slow(21), 42);
    assert_eq!(
        SLOW_RUNS.load(Ordering::SeqCst),
        0,
        "computed in a child, not here"
    );
    // One computation, seen by every process: the counters live in the segment.
    let s = slow::stats();
    assert_eq!(s.computed, 1, "{s:?}");
    assert_eq!(s.hits + s.waited, 4, "{s:?}");
    assert!(
        s.waited >= 1,
        "the others waited for the one computation: {s:?}"
    );
    assert_eq!(s.misses, 1 + s.waited, "{s:?}");
    assert_eq!((s.takeovers, s.timeouts, s.rejected), (0, 0, 0));
    assert!(CACHE.memo_stats().computed >= 1);
    // The cache's own hit/miss counters saw no memo traffic, only plain gets.
    let plain = CACHE.stats().unwrap().total;
    assert_eq!((plain.hits, plain.misses), (0, 0), "{plain:?}");
    assert_eq!(CACHE.get(b"absent").unwrap(), None);
    assert_eq!(CACHE.stats().unwrap().total.misses, 1);
}

#[memoize(cache = CACHE, max_size = 4)]
fn big(n: usize) -> Vec<u8> {
    vec![7; n]
}

#[test]
fn oversized_results_are_returned_and_counted_not_stored() {
    assert_eq!(big(64).len(), 64);
    assert_eq!(big(64).len(), 64);
    let s = big::stats();
    assert_eq!((s.computed, s.rejected, s.hits), (2, 2, 0), "{s:?}");
}

/// Each computation takes the next generation number from the cache itself (machine-wide)
/// and, after the first, half a second.
#[memoize(cache = CACHE, name = "tests::stale_gen", stale_after = "200ms", serve_stale)]
fn stale_gen(_k: u8) -> i64 {
    let g = CACHE.incr(b"stale-gen", 1).unwrap();
    if g > 1 {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    g
}

#[test]
fn serve_stale_returns_at_once_to_every_caller_while_one_refresh_runs_in_the_background() {
    LazyLock::force(&CACHE);
    assert_eq!(stale_gen(1), 1);
    std::thread::sleep(std::time::Duration::from_millis(250)); // now stale
    let (r, w) = pipe();
    let (results_r, results_w) = pipe();
    let kids: Vec<_> = (0..4)
        .map(|_| {
            let (r, out) = (r.try_clone().unwrap(), results_w.try_clone().unwrap());
            spawn(move || {
                let mut b = [0u8; 1];
                std::io::Read::read_exact(&mut &r, &mut b).unwrap();
                let t = std::time::Instant::now();
                let v = stale_gen(1);
                let us = t.elapsed().as_micros() as u64;
                std::io::Write::write_all(&mut &out, &us.to_le_bytes()).unwrap();
                // Stay alive while a refresh started here may still be running.
                std::thread::sleep(std::time::Duration::from_millis(900));
                i32::from(v != 1)
            })
        })
        .collect();
    drop(results_w);
    std::io::Write::write_all(&mut &w, &[1; 4]).unwrap();
    let mut waits = Vec::new();
    for _ in 0..4 {
        let mut b = [0u8; 8];
        std::io::Read::read_exact(&mut &results_r, &mut b).unwrap();
        waits.push(u64::from_le_bytes(b));
    }
    kids.into_iter().for_each(assert_exits_ok);
    println!("stale callers returned in {waits:?} µs while the 500 ms refresh ran");
    assert!(
        waits.iter().all(|&us| us < 50_000),
        "every caller gets the stale value at once (target 20 ms): {waits:?} µs"
    );
    // Exactly one refresh ran, in the background, and its value is served now.
    assert_eq!(CACHE.get(b"stale-gen").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(stale_gen(1), 2);
    let s = stale_gen::stats();
    assert!(s.stale >= 4, "{s:?}");
}

static PRICES: AtomicU32 = AtomicU32::new(0);

/// Kept in a namespace: invalidating the namespace drops every memoized result at once.
#[memoize(cache = CACHE, namespace = "prices")]
fn price(item: u32) -> u32 {
    PRICES.fetch_add(1, Ordering::SeqCst);
    item * 100
}

#[test]
fn a_memoized_function_in_a_namespace_is_invalidated_with_it() {
    assert_eq!(price(3), 300);
    assert_eq!(price(3), 300);
    assert_eq!(PRICES.load(Ordering::SeqCst), 1);
    let ns = CACHE.namespace("prices").unwrap();
    assert_eq!(ns.len().unwrap(), 1);
    // Its entry is in the namespace, under the function's name, and not in the default one.
    let has_price = |k: &[u8]| k.windows(5).any(|w| w == b"price");
    assert!(ns.keys().all(|k| has_price(&k.unwrap())));
    assert!(CACHE.keys().all(|k| !has_price(&k.unwrap())));
    ns.invalidate().unwrap();
    assert_eq!(price(3), 300);
    assert_eq!(
        PRICES.load(Ordering::SeqCst),
        2,
        "recomputed after the invalidation"
    );
}
