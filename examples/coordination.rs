//! Costs of the coordination features, measured in one run on one segment:
//!
//! - waiter wake-up latency: a forked waiter sleeps in `get_or_compute` while the parent
//!   computes; the latency is from the moment the parent's function returns to the moment
//!   the waiter has the value (both read `CLOCK_MONOTONIC`, which processes share);
//! - uncontended `try_lock` + release, next to a plain `get` as the yardstick;
//! - a `get_or_compute` hit next to a plain `get` of the same value (target: at most 1.2x).
//!
//! ```text
//! cargo run --release --example coordination -- [--rounds 2000]
//! ```

use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
use shmemcache::{Cache, ComputeOptions, Options};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const SEGMENT: &str = "shmemcache-coordination-demo";

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn pct(sorted: &[u64], q: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q) as usize)
        .copied()
        .unwrap_or(0)
}

/// Median ns per call of `f` over `n` calls, in 15 batches.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let mut batches: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[batches.len() / 2]
}

fn wake_latency(rounds: u32) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let cache = Cache::open_existing(SEGMENT)?;
    let (sig_r, sig_w) = nix::unistd::pipe()?;
    let (res_r, res_w) = nix::unistd::pipe()?;
    // SAFETY: single-threaded at this point; the child runs the waiter loop and `_exit`s.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop((sig_w, res_r));
            let mut sig = std::fs::File::from(sig_r);
            let mut res = std::fs::File::from(res_w);
            let c = Cache::open_existing(SEGMENT).expect("open");
            let mut b = [0u8; 1];
            for i in 0..rounds {
                sig.read_exact(&mut b).expect("signal");
                let key = format!("wake:{i}");
                let v = c
                    .get_or_compute(key.as_bytes(), &ComputeOptions::new(), || {
                        Err::<Vec<u8>, _>("the waiter never computes")
                    })
                    .expect("value");
                let now = monotonic_ns();
                let done = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
                res.write_all(&now.saturating_sub(done).to_le_bytes())
                    .expect("report");
            }
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop((sig_r, res_w));
            let mut sig = std::fs::File::from(sig_w);
            let mut res = std::fs::File::from(res_r);
            let mut lat = Vec::with_capacity(rounds as usize);
            for i in 0..rounds {
                let key = format!("wake:{i}");
                cache.get_or_compute(key.as_bytes(), &ComputeOptions::new(), || {
                    sig.write_all(&[1]).expect("signal");
                    // Long enough for the waiter to find the marker and fall asleep.
                    std::thread::sleep(Duration::from_millis(2));
                    Ok::<_, std::io::Error>(monotonic_ns().to_le_bytes().to_vec())
                })?;
                let mut b = [0u8; 8];
                res.read_exact(&mut b)?;
                lat.push(u64::from_le_bytes(b));
            }
            waitpid(child, None)?;
            lat.sort_unstable();
            Ok(lat)
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rounds = 2000u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--rounds", Some(n)) => rounds = n,
            _ => {
                eprintln!("usage: coordination [--rounds N]");
                std::process::exit(2);
            }
        }
    }
    let _ = Cache::unlink(SEGMENT);
    let cache = Options::new().capacity_bytes(64 << 20).open(SEGMENT)?;
    println!(
        "shmemcache coordination costs ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let lat = wake_latency(rounds)?;
    println!(
        "waiter wake-up after the value lands ({rounds} rounds, 2 processes): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        pct(&lat, 0.5) as f64 / 1e3,
        pct(&lat, 0.99) as f64 / 1e3,
        lat.last().copied().unwrap_or(0) as f64 / 1e3
    );

    let value = vec![7u8; 100];
    cache.set(b"plain", &value)?;
    let opts = ComputeOptions::new();
    cache.get_or_compute(b"memo", &opts, || Ok::<_, std::io::Error>(value.clone()))?;
    let get = per_call(200_000, || {
        std::hint::black_box(cache.get(b"plain").expect("get"));
    });
    let hit = per_call(200_000, || {
        std::hint::black_box(
            cache
                .get_or_compute(b"memo", &opts, || Err::<Vec<u8>, _>("hit expected"))
                .expect("hit"),
        );
    });
    let lock = per_call(100_000, || {
        let g = cache.try_lock("bench", None).expect("lock").expect("free");
        g.release().expect("release");
    });
    println!("plain get (100 B, 1 process):          {get:>8.0} ns");
    println!(
        "get_or_compute hit (100 B):            {hit:>8.0} ns   ({:.2}x plain get; target <= 1.2x)",
        hit / get
    );
    println!(
        "try_lock + release, uncontended:       {lock:>8.0} ns   ({:.1}x plain get)",
        lock / get
    );
    drop(cache);
    Cache::unlink(SEGMENT)?;
    Ok(())
}
