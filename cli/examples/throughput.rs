//! Multi-process throughput on the default demo segment, with the floor measured in the
//! same run.
//!
//! Forks N worker processes that hammer one cache by name (10,000 keys, 100-byte values,
//! uniform keys) with three mixes (all gets, 90% gets / 10% sets, all sets), then runs the
//! same workload against the floor: robust mutexes around a lookup and a memcpy with no
//! cache logic. Prints ops/s, p50/p99 latency and the ratio to the floor.
//!
//! ```text
//! cargo run --release -p shmemcache-cli --example throughput -- --help
//! ```

use clap::Parser;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use shmemcache::{Cache, Options};
use shmemcache_cli::floor::Floor;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const SEGMENT: &str = "shmemcache-demo";
const SAMPLE_EVERY: u64 = 32;
const MAX_SAMPLES: usize = 16_384;

/// Multi-process throughput of shmemcache against the floor, measured in one run.
#[derive(Parser)]
struct Args {
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    procs: u16,
    /// Seconds per run.
    #[arg(long, default_value_t = 1.0)]
    secs: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    value: u64,
    /// Shards of the demo segment and of the floor.
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// Alternating runs per mix; the pair with the median ratio is shown.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    /// Key popularity: uniform, or zipf with exponent --zipf-s.
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "zipf"])]
    dist: String,
    /// Zipf exponent.
    #[arg(long, default_value_t = 0.99)]
    zipf_s: f64,
    /// Create the demo segment with entry checksums (`Options::checksums`).
    #[arg(long)]
    checksums: bool,
}

#[derive(Clone, Copy)]
enum Mix {
    Get,
    Mixed9010,
    Set,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Get => "get",
            Mix::Mixed9010 => "90/10",
            Mix::Set => "set",
        }
    }
    fn is_set(self, r: u64) -> bool {
        match self {
            Mix::Get => false,
            Mix::Mixed9010 => r % 10 == 0,
            Mix::Set => true,
        }
    }
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Cache(&'a Cache),
    Floor(&'a Floor),
}

struct Result {
    ops_per_sec: f64,
    p50_ns: u32,
    p99_ns: u32,
}

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("key:{i:08}:{}", "x".repeat(i % 17)).into_bytes())
        .collect()
}

/// One worker's loop; returns (ops, latency samples in ns).
fn work(
    t: Target,
    keys: &[Vec<u8>],
    value: &[u8],
    mix: Mix,
    secs: f64,
    pick: &Pick,
    seed: u64,
) -> (u64, Vec<u32>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; value.len()];
    let mut samples = Vec::with_capacity(MAX_SAMPLES);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut ops = 0u64;
    loop {
        for _ in 0..256 {
            let key = &keys[pick.next(&mut rng)];
            let set = mix.is_set(rng.gen::<u32>() as u64);
            let timed = ops % SAMPLE_EVERY == 0;
            let t0 = timed.then(Instant::now);
            match (t, set) {
                (Target::Cache(c), false) => {
                    std::hint::black_box(c.get_into(key, &mut buf).expect("get"));
                }
                (Target::Cache(c), true) => {
                    c.set(key, value).expect("set");
                }
                (Target::Floor(f), false) => {
                    std::hint::black_box(f.get(key, &mut buf));
                }
                (Target::Floor(f), true) => {
                    f.set(key, value);
                }
            }
            if let Some(t0) = t0 {
                if samples.len() < MAX_SAMPLES {
                    samples.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                }
            }
            ops += 1;
        }
        if Instant::now() >= deadline {
            return (ops, samples);
        }
    }
}

/// Forks `procs` workers running `mix` on `t` at the same time; collects their results.
fn run(t: Target, a: &Args, keys: &[Vec<u8>], value: &[u8], pick: &Pick, mix: Mix) -> Result {
    let (go_r, go_w) = nix::unistd::pipe().expect("pipe");
    let mut go_w = std::fs::File::from(go_w);
    let mut go_r = std::fs::File::from(go_r);
    let mut outs = Vec::new();
    let mut pids = Vec::new();
    for p in 0..a.procs {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        // SAFETY: single-threaded program; the child only runs the benchmark loop and exits.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(r);
                let mut w = std::fs::File::from(w);
                let mut b = [0u8; 1];
                go_r.read_exact(&mut b).expect("start signal");
                let (ops, samples) =
                    work(t, keys, value, mix, a.secs, pick, 0x9E37_79B9 + p as u64);
                let mut out = ops.to_le_bytes().to_vec();
                for s in samples {
                    out.extend_from_slice(&s.to_le_bytes());
                }
                w.write_all(&out).expect("report");
                drop(w);
                // SAFETY: leave without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            ForkResult::Parent { child } => {
                drop(w);
                outs.push(std::fs::File::from(r));
                pids.push(child);
            }
        }
    }
    let started = Instant::now();
    go_w.write_all(&vec![1u8; a.procs as usize]).expect("start");
    let mut total = 0u64;
    let mut lat = Vec::new();
    for mut o in outs {
        let mut data = Vec::new();
        o.read_to_end(&mut data).expect("read report");
        total += u64::from_le_bytes(data[..8].try_into().expect("ops"));
        lat.extend(
            data[8..]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap())),
        );
    }
    let elapsed = started.elapsed().as_secs_f64().max(a.secs);
    for p in pids {
        waitpid(p, None).expect("waitpid");
    }
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    Result {
        ops_per_sec: total as f64 / elapsed,
        p50_ns: pct(0.50),
        p99_ns: pct(0.99),
    }
}

/// Which key each operation uses.
enum Pick {
    Uniform(usize),
    Zipf(Zipf<f64>),
}

impl Pick {
    fn next(&self, rng: &mut SmallRng) -> usize {
        match self {
            Pick::Uniform(n) => rng.gen_range(0..*n),
            // Zipf samples ranks 1..=n.
            Pick::Zipf(z) => z.sample(rng) as usize - 1,
        }
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let keys = keys(a.keys as usize);
    let value = vec![0xA5u8; a.value as usize];
    let pick = match a.dist.as_str() {
        "zipf" => Pick::Zipf(Zipf::new(a.keys, a.zipf_s).map_err(|e| format!("--zipf-s: {e}"))?),
        _ => Pick::Uniform(keys.len()),
    };
    let _ = Cache::unlink(SEGMENT);
    let cache = Options::new()
        .shards(a.shards)
        .checksums(a.checksums)
        .open(SEGMENT)?;
    for k in &keys {
        cache.set(k, &value)?;
    }
    let floor = Floor::new(a.shards as usize, &keys, value.len())?;
    println!(
        "shmemcache throughput: {} processes, {} keys ({}), {} B values{}, {} shards, {} s per run, median of {} alternating runs, {} cores",
        a.procs,
        a.keys,
        a.dist,
        a.value,
        if a.checksums { " with checksums" } else { "" },
        a.shards,
        a.secs,
        a.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<6} {:>14} {:>9} {:>9}   {:>14} {:>9} {:>9}   {:>8}",
        "mix", "shmemcache/s", "p50 ns", "p99 ns", "floor/s", "p50 ns", "p99 ns", "ratio"
    );
    for mix in [Mix::Get, Mix::Mixed9010, Mix::Set] {
        // Alternate cache and floor runs and keep the pair with the median ratio: a noisy
        // moment then skews one run, not the comparison.
        let mut pairs: Vec<(Result, Result)> = (0..a.runs)
            .map(|_| {
                let c = run(Target::Cache(&cache), &a, &keys, &value, &pick, mix);
                let f = run(Target::Floor(&floor), &a, &keys, &value, &pick, mix);
                (c, f)
            })
            .collect();
        pairs.sort_by(|x, y| {
            (x.0.ops_per_sec / x.1.ops_per_sec).total_cmp(&(y.0.ops_per_sec / y.1.ops_per_sec))
        });
        let (c, f) = pairs.swap_remove(pairs.len() / 2);
        println!(
            "{:<6} {:>14.0} {:>9} {:>9}   {:>14.0} {:>9} {:>9}   {:>7.1}%",
            mix.name(),
            c.ops_per_sec,
            c.p50_ns,
            c.p99_ns,
            f.ops_per_sec,
            f.p50_ns,
            f.p99_ns,
            100.0 * c.ops_per_sec / f.ops_per_sec
        );
    }
    let st = cache.stats()?.total;
    println!(
        "cache after the runs: {} entries, hit ratio {:.3}, {} evictions, {} recoveries; check: {}",
        st.entries,
        st.hit_ratio(),
        st.evictions,
        st.recoveries,
        if cache.check()?.is_healthy() {
            "healthy"
        } else {
            "DAMAGED"
        }
    );
    drop(cache);
    Cache::unlink(SEGMENT)?;
    Ok(())
}
