//! How much of the space budget holds live key and value bytes, after churn.
//!
//! For each value-size mix, creates a segment with default options and a 4 MiB budget
//! (`capacity_bytes`), writes random keys (16 bytes) until three times the budget has been
//! written, and reports the segment's size and the live key + value bytes, each against the
//! budget.
//!
//! ```text
//! cargo run --release --example fill [-- MiB [MAX_ENTRIES]]
//! ```
//!
//! With `MAX_ENTRIES`, the segments are made with `Options::max_entries` set to it instead
//! of the default (one entry per 256 bytes of budget).

use shmemcache::{Cache, Options};

/// A small deterministic generator: enough for picking sizes and keys.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Picks a value size.
type SizeOf = fn(&mut SplitMix) -> usize;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(4);
    let max_entries: Option<u64> = std::env::args().nth(2).map(|a| a.parse()).transpose()?;
    let budget = mib << 20;
    println!(
        "budget {mib} MiB, {}, keys of 16 bytes, 3x the budget written",
        max_entries.map_or("default options".to_string(), |n| format!(
            "max_entries {n}"
        ))
    );
    println!(
        "{:<22} {:>12} {:>10} {:>12} {:>10} {:>9}",
        "values", "segment", "of budget", "live bytes", "of budget", "entries"
    );
    let mixes: [(&str, SizeOf); 3] = [
        ("100 B", |_| 100),
        ("1 KiB", |_| 1024),
        ("mixed 1 B - 4 KiB", |r| 1 + (r.next() % 4096) as usize),
    ];
    for (label, size) in mixes {
        let name = format!("shmemcache-fill-{}", std::process::id());
        let _ = Cache::unlink(&name);
        let mut opts = Options::new().capacity_bytes(budget);
        if let Some(n) = max_entries {
            opts = opts.max_entries(n);
        }
        let cache = opts.create(&name)?;
        Cache::unlink(&name)?; // the mapping stays; nothing is left behind
        let mut rng = SplitMix(42);
        let value = vec![0x5a; 4096];
        let mut written = 0u64;
        while written < 3 * budget {
            let key = format!("{:016x}", rng.next());
            let n = size(&mut rng).min(cache.info().max_value_len as usize);
            cache.set(key.as_bytes(), &value[..n])?;
            written += (key.len() + n) as u64;
        }
        let info = cache.info();
        let total = cache.stats()?.total;
        println!(
            "{:<22} {:>10.2}MB {:>9.1}% {:>10.2}MB {:>9.1}% {:>9}",
            label,
            info.segment_bytes as f64 / 1e6,
            100.0 * info.segment_bytes as f64 / budget as f64,
            total.bytes_used as f64 / 1e6,
            100.0 * total.bytes_used as f64 / budget as f64,
            total.entries
        );
    }
    Ok(())
}
