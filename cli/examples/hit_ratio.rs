//! Hit ratio under eviction pressure: lazy promotion against strict LRU on the same trace.
//!
//! A zipf-distributed trace over ten times as many keys as the cache holds; every miss
//! stores the key (a read-through cache). Both caches are single-shard, so both policies
//! are exact over the whole cache, and see the same keys in the same order.
//!
//! ```text
//! cargo run --release -p shmemcache-cli --example hit_ratio [-- --zipf-s 0.99 --capacity 10000]
//! ```

use clap::Parser;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use shmemcache::{Cache, Options, Recency};

#[derive(Parser)]
struct Args {
    /// Entries the cache holds.
    #[arg(long, default_value_t = 10_000)]
    capacity: u64,
    /// Distinct keys in the trace, as a multiple of the capacity.
    #[arg(long, default_value_t = 10)]
    keys_per_entry: u64,
    /// Zipf exponent.
    #[arg(long, default_value_t = 0.99)]
    zipf_s: f64,
    /// Requests in the trace.
    #[arg(long, default_value_t = 2_000_000)]
    requests: u64,
}

fn run(a: &Args, recency: Recency) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    let name = format!("shmemcache-hit-ratio-{}", std::process::id());
    let _ = Cache::unlink(&name);
    let cache = Options::new()
        .shards(1)
        .capacity_bytes(a.capacity * 200 + (1 << 20))
        .max_entries(a.capacity)
        .recency(recency)
        .create(&name)?;
    Cache::unlink(&name)?; // the mapping stays; nothing is left behind
    let keys = a.capacity * a.keys_per_entry;
    let zipf = Zipf::new(keys, a.zipf_s).map_err(|e| format!("--zipf-s: {e}"))?;
    let mut rng = SmallRng::seed_from_u64(7);
    let (mut hits, value) = (0u64, [0x5au8; 100]);
    for _ in 0..a.requests {
        let k = (zipf.sample(&mut rng) as u64).to_le_bytes();
        if cache.get_into(&k, &mut [0u8; 100])?.is_some() {
            hits += 1;
        } else {
            cache.set(&k, &value)?;
        }
    }
    Ok((
        hits as f64 / a.requests as f64,
        cache.stats()?.total.evictions,
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    println!(
        "zipf {} over {} keys, cache of {} entries, {} requests",
        a.zipf_s,
        a.capacity * a.keys_per_entry,
        a.capacity,
        a.requests
    );
    let (exact, ev_exact) = run(&a, Recency::Exact)?;
    let (lazy, ev_lazy) = run(&a, Recency::Lazy)?;
    println!(
        "strict LRU (Recency::Exact)     hit ratio {:.2} %  ({ev_exact} evictions)",
        100.0 * exact
    );
    println!(
        "lazy promotion (Recency::Lazy)  hit ratio {:.2} %  ({ev_lazy} evictions)",
        100.0 * lazy
    );
    println!("difference: {:+.2} points", 100.0 * (lazy - exact));
    Ok(())
}
