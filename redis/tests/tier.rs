//! The tier against a real redis-server (started here on a Unix socket), with real
//! processes: two "machines" are two segments sharing one Redis.

mod common;

use std::time::{Duration, Instant};

use common::{spawn_child, wait_for, Redis, Segment};
use shmemcache::Cache;
use shmemcache_redis::{TierError, TierOptions, Tiered};

fn opts() -> TierOptions {
    TierOptions::new("t").l1_ttl(Duration::from_secs(30))
}

/// The pid listening for a machine's invalidations, read from its segment.
fn subscriber_of(seg: &Cache) -> u32 {
    let meta = seg.namespace("tier-meta:t").expect("meta");
    meta.get(b"stat:subscriber")
        .expect("get")
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn read_through_write_through_and_invalidation_across_two_machines() {
    let Some(redis) = Redis::start() else { return };
    let (sa, sb) = (Segment::new("a"), Segment::new("b"));
    let (ca, cb) = (sa.open(), sb.open());
    let a = Tiered::new(&ca, &redis.url(), opts()).unwrap();
    let b = Tiered::new(&cb, &redis.url(), opts()).unwrap();
    let listening = |t: &Tiered| t.is_subscriber();
    assert!(wait_for(Duration::from_secs(10), || listening(&a) && listening(&b)).is_some());

    // Read-through fills L1 with Redis's remaining TTL, capped by l1_ttl.
    a.set(b"k", b"v0", Some(Duration::from_secs(5))).unwrap();
    // B's subscriber drops k once A's invalidation arrives; fill after that.
    assert!(
        wait_for(Duration::from_secs(5), || b.stats().unwrap().invalidations
            >= 1)
        .is_some()
    );
    assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"v0"[..]));
    assert!(b.l1().contains(b"k").unwrap());
    match b.l1().ttl(b"k").unwrap() {
        Some(shmemcache::Expiry::In(d)) => assert!(d <= Duration::from_secs(5), "{d:?}"),
        other => panic!("L1 copy without the Redis TTL: {other:?}"),
    }
    assert_eq!(b.get(b"missing").unwrap(), None);

    // 1,000 writes on A, each dropping B's L1 copy.
    let mut lat = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        assert!(b.get(b"k").unwrap().is_some());
        assert!(b.l1().contains(b"k").unwrap());
        let t = Instant::now();
        a.set(b"k", format!("v{}", i + 1).as_bytes(), None).unwrap();
        let gone = wait_for(Duration::from_secs(5), || !b.l1().contains(b"k").unwrap());
        assert!(gone.is_some(), "write {i} never reached B's L1");
        lat.push(t.elapsed());
        assert_eq!(
            b.get(b"k").unwrap(),
            Some(format!("v{}", i + 1).into_bytes())
        );
    }
    lat.sort();
    println!(
        "invalidation seen in the other machine's L1 (from the start of the write): p50 {:?}, p99 {:?}, max {:?} over {} writes",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
        lat.len()
    );

    // A delete reaches every L1 too, and the writer's own L1 holds the new value.
    assert_eq!(a.l1().get(b"k").unwrap(), Some(b"v1000".to_vec()));
    assert!(b.get(b"k").unwrap().is_some());
    assert!(a.delete(b"k").unwrap());
    assert!(wait_for(Duration::from_secs(5), || !b.l1().contains(b"k").unwrap()).is_some());
    assert_eq!(b.get(b"k").unwrap(), None);
    assert!(!a.delete(b"k").unwrap());

    let (sa_, sb_) = (a.stats().unwrap(), b.stats().unwrap());
    assert!(sb_.invalidations >= 1001, "{sb_:?}");
    assert_eq!(sa_.writes, 1003);
    assert!(sb_.l2_hits >= 1000 && sb_.misses >= 1, "{sb_:?}");
    assert_eq!(sb_.subscriber_pid, Some(std::process::id()));
    assert!(matches!(
        a.set(b"z", b"v", Some(Duration::ZERO)),
        Err(TierError::Cache(shmemcache::Error::ZeroTtl))
    ));
}

/// Entry point of the reader process of `stats_count_every_process_of_the_machine`.
#[test]
#[ignore = "child process of stats_count_every_process_of_the_machine"]
fn tier_reader_child() {
    let (Ok(seg), Ok(url)) = (std::env::var("TIER_SEGMENT"), std::env::var("TIER_URL")) else {
        return;
    };
    let cache = Cache::open(&seg).unwrap();
    let tier = Tiered::new(&cache, &url, opts()).unwrap();
    for _ in 0..3 {
        assert_eq!(tier.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(tier.get(b"absent").unwrap(), None);
}

#[test]
fn stats_count_every_process_of_the_machine() {
    let Some(redis) = Redis::start() else { return };
    let sa = Segment::new("a");
    let ca = sa.open();
    let a = Tiered::new(&ca, &redis.url(), opts()).unwrap();
    // Subscribed first: a (re)subscription drops L1, which would turn the hits below
    // into Redis reads.
    assert!(wait_for(Duration::from_secs(10), || a.is_subscriber()).is_some());
    a.set(b"k", b"v", None).unwrap();
    let url = redis.url();
    let env = [("TIER_SEGMENT", sa.0.as_str()), ("TIER_URL", url.as_str())];
    let status = spawn_child("tier_reader_child", &env).wait().unwrap();
    assert!(status.success(), "reader: {status:?}");
    let s = a.stats().unwrap();
    // The reader's three L1 hits and one miss, this process's one write.
    assert_eq!(
        (s.l1_hits, s.l2_hits, s.misses, s.writes),
        (3, 0, 1, 1),
        "{s:?}"
    );
    assert_eq!(s.redis_errors, 0);
    assert_eq!(s.subscriber_pid, Some(std::process::id()));
}

/// Entry point of the child processes of the takeover test: joins machine A's tier and
/// idles until killed. Run only when the parent test starts it.
#[test]
#[ignore = "child process of subscriber_takeover_after_kill_9"]
fn tier_child() {
    let (Ok(seg), Ok(url)) = (std::env::var("TIER_SEGMENT"), std::env::var("TIER_URL")) else {
        return;
    };
    let cache = Cache::open(&seg).unwrap();
    let _tier = Tiered::new(&cache, &url, opts()).unwrap();
    // The parent kills this process; exit if it is gone (reparented).
    let parent = std::os::unix::process::parent_id();
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn subscriber_takeover_after_kill_9() {
    let Some(redis) = Redis::start() else { return };
    let (sa, sb) = (Segment::new("a"), Segment::new("b"));
    let ca = sa.open();
    let url = redis.url();
    let env = [("TIER_SEGMENT", sa.0.as_str()), ("TIER_URL", url.as_str())];
    let mut children = [
        spawn_child("tier_child", &env),
        spawn_child("tier_child", &env),
    ];
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    assert!(
        wait_for(Duration::from_secs(20), || pids
            .contains(&subscriber_of(&ca)))
        .is_some(),
        "no child became machine A's subscriber"
    );
    let first = subscriber_of(&ca);
    let b = Tiered::new(&sb.open(), &redis.url(), opts()).unwrap();
    let l1a = ca.namespace("tier:t").unwrap();

    // Machine A's L1 is dropped by B's writes through A's subscriber child.
    let invalidated_on_a = |v: &[u8]| -> Option<Duration> {
        l1a.set(b"k", b"old").unwrap();
        let t = Instant::now();
        b.set(b"k", v, None).unwrap();
        wait_for(Duration::from_millis(500), || !l1a.contains(b"k").unwrap()).map(|_| t.elapsed())
    };
    assert!(invalidated_on_a(b"v1").is_some());

    // kill -9 the subscriber: the other child takes the lock and resubscribes.
    let victim = children.iter_mut().find(|c| c.id() == first).unwrap();
    let killed_at = Instant::now();
    victim.kill().unwrap();
    victim.wait().unwrap();
    let mut n = 0;
    let gap = loop {
        n += 1;
        if invalidated_on_a(format!("v{n}").as_bytes()).is_some() {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "no process took over"
        );
    };
    let second = subscriber_of(&ca);
    println!("subscriber {first} killed: {second} took over; invalidations flowed again after {gap:?} ({n} writes tried)");
    assert!(second != first && pids.contains(&second));
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn redis_outage_fails_writes_and_leaves_nothing_stale() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (sa, sb) = (Segment::new("a"), Segment::new("b"));
    let (ca, cb) = (sa.open(), sb.open());
    let fast = || {
        opts()
            .connect_timeout(Duration::from_millis(100))
            .io_timeout(Duration::from_millis(300))
    };
    let a = Tiered::new(&ca, &redis.url(), fast()).unwrap();
    let b = Tiered::new(&cb, &redis.url(), fast()).unwrap();
    assert!(wait_for(Duration::from_secs(10), || a.is_subscriber()
        && b.is_subscriber())
    .is_some());
    a.set(b"k", b"v1", None).unwrap();
    // B's subscriber applies A's invalidation of k; only then is B's copy a keeper.
    assert!(
        wait_for(Duration::from_secs(5), || b.stats().unwrap().invalidations
            >= 1)
        .is_some()
    );
    assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(b.l1().contains(b"k").unwrap());

    redis.kill();
    // Reads of what L1 holds are served; writes and L1 misses fail cleanly.
    assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(matches!(a.set(b"k", b"v2", None), Err(TierError::Redis(_))));
    assert!(
        !a.l1().contains(b"k").unwrap(),
        "a failed write must not leave its value in L1"
    );
    assert!(matches!(b.get(b"other"), Err(TierError::Redis(_))));
    assert!(matches!(a.delete(b"k"), Err(TierError::Redis(_))));
    assert!(b.stats().unwrap().redis_errors >= 1);

    // Restarted (empty): after the resubscription nothing from before is read from L1.
    redis.restart();
    let resubscribed = |t: &Tiered| t.stats().unwrap().resubscribed >= 1 && t.is_subscriber();
    assert!(wait_for(Duration::from_secs(20), || resubscribed(&a)
        && resubscribed(&b))
    .is_some());
    assert_eq!(
        b.get(b"k").unwrap(),
        None,
        "a stale L1 copy survived the outage"
    );
    a.set(b"k", b"v3", None).unwrap();
    assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"v3"[..]));
}

#[test]
fn bad_options_and_urls_are_clear_errors() {
    let seg = Segment::new("opts");
    let c = seg.open();
    for o in [
        TierOptions::new(""),
        TierOptions::new("t").l1_ttl(Duration::ZERO),
    ] {
        assert!(matches!(
            Tiered::new(&c, "redis://127.0.0.1/", o),
            Err(TierError::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        Tiered::new(&c, "nonsense://x", opts()),
        Err(TierError::Redis(_))
    ));
    // Nothing listens there: the first operation that needs Redis fails, no hang.
    let t = Tiered::new(&c, "unix:///nonexistent/redis.sock", opts()).unwrap();
    assert!(matches!(t.get(b"k"), Err(TierError::Redis(_))));
    assert!(matches!(t.set(b"k", b"v", None), Err(TierError::Redis(_))));
}

#[test]
fn typed_values_across_machines() {
    let Some(redis) = Redis::start() else { return };
    let (sa, sb) = (Segment::new("ta"), Segment::new("tb"));
    let (ca, cb) = (sa.open(), sb.open());
    let a = Tiered::new(&ca, &redis.url(), opts()).unwrap();
    let b = Tiered::new(&cb, &redis.url(), opts()).unwrap();
    let team = (7u32, "core".to_string());
    let v = vec!["ada".to_string(), "grace".to_string()];
    a.typed::<(u32, String), Vec<String>>()
        .set(&team, &v, None)
        .unwrap();
    let on_b = b.typed::<(u32, String), Vec<String>>();
    assert_eq!(on_b.get(&team).unwrap(), Some(v));
    assert!(on_b.delete(&team).unwrap());
    // A's L1 copy goes when B's invalidation arrives.
    let on_a = a.typed::<(u32, String), Vec<String>>();
    assert!(wait_for(Duration::from_secs(5), || on_a
        .get(&team)
        .unwrap()
        .is_none())
    .is_some());
    // Bytes that do not decode as the value type are an error, not a panic: the key 5u32
    // encodes as the single byte 5.
    a.set(&[5], &[0xff, 0xff, 0xff], None).unwrap();
    assert!(matches!(
        a.typed::<u32, String>().get(&5),
        Err(TierError::Cache(shmemcache::Error::Codec(_)))
    ));
}

#[test]
fn a_value_too_large_for_l1_still_replaces_the_old_copy() {
    let Some(redis) = Redis::start() else { return };
    let seg = Segment::new("big");
    let c = shmemcache::Options::new()
        .max_value_len(1024)
        .create(&seg.0)
        .unwrap();
    let t = Tiered::new(&c, &redis.url(), opts()).unwrap();
    t.set(b"k", b"small", None).unwrap();
    assert!(t.l1().contains(b"k").unwrap());
    let big = vec![7u8; 4096];
    t.set(b"k", &big, None).unwrap();
    // L1 cannot hold it: the old copy is gone and reads go to Redis.
    assert!(!t.l1().contains(b"k").unwrap());
    assert_eq!(t.get(b"k").unwrap(), Some(big));
}
