//! `get_or_compute` across machines: 4 processes on each of 2 machines (segments) miss
//! one key together, against a real redis-server.

mod common;

use std::time::{Duration, Instant};

use common::{spawn_child, Redis, Segment};
use shmemcache::Cache;
use shmemcache_redis::{RemoteCompute, RemoteComputeError, TierError, TierOptions, Tiered};

/// Child: waits until `MEMO_START_AT` (unix ms), calls `get_or_compute` on the shared key
/// and pushes what it got to the Redis list `results`. The function counts its runs in
/// Redis (`runs`), records its pid (`owner`) and takes `MEMO_FIRST_SECS` on its first run
/// machine-wide, 0.1 s after that.
#[test]
#[ignore = "child process of the memo tests"]
fn memo_child() {
    let (Ok(seg), Ok(url), Ok(start), Ok(first)) = (
        std::env::var("MEMO_SEGMENT"),
        std::env::var("MEMO_URL"),
        std::env::var("MEMO_START_AT"),
        std::env::var("MEMO_FIRST_SECS"),
    ) else {
        return;
    };
    let cache = Cache::open(&seg).unwrap();
    let tier = Tiered::new(&cache, &url, TierOptions::new("m")).unwrap();
    let mut r = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let start: u128 = start.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::thread::sleep(Duration::from_millis(start.saturating_sub(now) as u64));
    let opts = RemoteCompute::new()
        .lease(Duration::from_millis(500))
        .ttl(Duration::from_secs(60));
    let v = tier
        .get_or_compute(b"report", &opts, || {
            let runs: i64 = redis::cmd("INCR").arg("runs").query(&mut r)?;
            let _: () = redis::cmd("SET")
                .arg("owner")
                .arg(std::process::id())
                .query(&mut r)?;
            let secs = if runs == 1 {
                first.parse().unwrap()
            } else {
                0.1
            };
            std::thread::sleep(Duration::from_secs_f64(secs));
            Ok::<_, redis::RedisError>(format!("computed by {}", std::process::id()).into_bytes())
        })
        .unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg("results")
        .arg(v)
        .query(&mut r)
        .unwrap();
}

fn start_workers(
    redis: &Redis,
    machines: [&Segment; 2],
    first_secs: &str,
) -> Vec<std::process::Child> {
    let start = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 1500)
        .to_string();
    let url = redis.url();
    (0..8)
        .map(|i| {
            spawn_child(
                "memo_child",
                &[
                    ("MEMO_SEGMENT", machines[i % 2].0.as_str()),
                    ("MEMO_URL", url.as_str()),
                    ("MEMO_START_AT", start.as_str()),
                    ("MEMO_FIRST_SECS", first_secs),
                ],
            )
        })
        .collect()
}

fn results(r: &mut redis::Connection) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg("results")
        .arg(0)
        .arg(-1)
        .query(r)
        .unwrap()
}

#[test]
fn one_computation_for_eight_processes_on_two_machines() {
    let Some(redis) = Redis::start() else { return };
    let (sa, sb) = (Segment::new("ma"), Segment::new("mb"));
    let mut kids = start_workers(&redis, [&sa, &sb], "0.5");
    for k in kids.iter_mut() {
        assert!(k.wait().unwrap().success(), "a worker failed");
    }
    let mut r = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let runs: i64 = redis::cmd("GET").arg("runs").query(&mut r).unwrap();
    let got = results(&mut r);
    assert_eq!(runs, 1, "the function ran {runs} times");
    assert_eq!(got.len(), 8);
    assert!(got.iter().all(|v| v == &got[0]), "{got:?}");

    // The value is now in Redis and in both L1s: a new caller computes nothing.
    let c = sa.open();
    let t = Tiered::new(&c, &redis.url(), TierOptions::new("m")).unwrap();
    let v = t
        .get_or_compute(
            b"report",
            &RemoteCompute::new(),
            || -> Result<Vec<u8>, ()> { panic!("computed again") },
        )
        .unwrap();
    assert_eq!(String::from_utf8(v).unwrap(), got[0]);
}

#[test]
fn a_killed_owner_is_taken_over_when_its_lease_lapses() {
    let Some(redis) = Redis::start() else { return };
    let (sa, sb) = (Segment::new("ka"), Segment::new("kb"));
    let mut kids = start_workers(&redis, [&sa, &sb], "60");
    let mut r = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let owner: u32 = loop {
        if let Some(pid) = redis::cmd("GET")
            .arg("owner")
            .query::<Option<u32>>(&mut r)
            .unwrap()
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "nobody started computing");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(200));
    let killed_at = Instant::now();
    let victim = kids
        .iter_mut()
        .position(|k| k.id() == owner)
        .expect("the owner is a worker");
    let mut victim = kids.remove(victim);
    victim.kill().unwrap();
    victim.wait().unwrap();
    for k in kids.iter_mut() {
        assert!(k.wait().unwrap().success(), "a worker failed");
    }
    let took = killed_at.elapsed();
    let runs: i64 = redis::cmd("GET").arg("runs").query(&mut r).unwrap();
    let got = results(&mut r);
    println!("owner {owner} killed: {runs} runs in all; the 7 others had the value {took:?} later (lease 500 ms)");
    assert_eq!(runs, 2, "the killed run and exactly one takeover");
    assert_eq!(got.len(), 7);
    assert!(got.iter().all(|v| v == &got[0]) && got[0] != format!("computed by {owner}"));
}

#[test]
fn errors_are_returned_and_not_stored() {
    let Some(redis) = Redis::start() else { return };
    let seg = Segment::new("me");
    let c = seg.open();
    let t = Tiered::new(&c, &redis.url(), TierOptions::new("m")).unwrap();
    let opts = RemoteCompute::new();
    assert!(matches!(
        t.get_or_compute(b"k", &opts, || Err::<Vec<u8>, _>("no")),
        Err(RemoteComputeError::Compute("no"))
    ));
    assert_eq!(
        t.get_or_compute(b"k", &opts, || Ok::<_, ()>(b"yes".to_vec()))
            .unwrap(),
        b"yes"
    );
    assert!(matches!(
        t.get_or_compute(b"k", &RemoteCompute::new().lease(Duration::ZERO), || Ok::<
            _,
            (),
        >(
            vec![]
        )),
        Err(RemoteComputeError::Tier(TierError::InvalidArgument(_)))
    ));
}
