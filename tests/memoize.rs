//! `#[memoize]` compiles on the shapes users write and behaves: results are shared through
//! the segment, errors are not cached, `None` is cached only when asked, and the companion
//! module's `reset`, `precache`, `clear` and `stats` work.

use shmemcache::{memoize, Cache, Options};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;

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
