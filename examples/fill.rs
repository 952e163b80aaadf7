//! How much of the space budget holds live key and value bytes, after churn.
//!
//! For each value-size mix, creates a segment with default options and a 4 MiB budget
//! (`capacity_bytes`), writes random keys (16 bytes) until three times the budget has been
//! written, and reports the segment's size, the live key + value bytes against the budget,
//! and the metadata per entry (records, chunk links and buckets).
//!
//! ```text
//! cargo run --release --example fill [-- MiB [MAX_ENTRIES]]
//! ```
//!
//! With `MAX_ENTRIES`, the segments are made with `Options::max_entries` set to it.
//! `tests/fill.rs` runs the same table and holds it to its floors.

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

/// One row of the table.
pub struct Row {
    /// Which value sizes.
    pub label: &'static str,
    /// Bytes of the segment, fixed overhead included.
    pub segment: u64,
    /// Bytes of the segment outside the shards (header, coordination table, memo stats).
    pub fixed_overhead: u64,
    /// Live key and value bytes.
    pub live: u64,
    /// Live entries.
    pub entries: u64,
    /// Records, chunk links and buckets, per live entry.
    pub metadata_per_entry: f64,
}

/// Picks a value size.
type SizeOf = fn(&mut SplitMix) -> usize;

/// The value-size mixes: 100 B, 1 KiB, and uniform 1 B to 4 KiB.
const MIXES: [(&str, SizeOf); 3] = [
    ("100 B", |_| 100),
    ("1 KiB", |_| 1024),
    ("mixed 1 B - 4 KiB", |r| 1 + (r.next() % 4096) as usize),
];

/// Fills one segment per mix with a `budget`-byte capacity and reports each.
pub fn table(budget: u64, max_entries: Option<u64>) -> Result<Vec<Row>, shmemcache::Error> {
    let mut rows = Vec::new();
    for (label, size) in MIXES {
        let name = format!("shmemcache-fill-{}", std::process::id());
        let _ = Cache::unlink(&name);
        let mut opts = Options::new().capacity_bytes(budget);
        if let Some(n) = max_entries {
            opts = opts.max_entries(n);
        }
        let cache = opts.create(&name)?;
        Cache::unlink(&name)?; // the mapping stays; nothing is left behind
        let max_value = cache.info().max_value_len as usize;
        let mut rng = SplitMix(42);
        let value = vec![0x5a; 4096];
        let mut written = 0u64;
        while written < 3 * budget {
            let key = format!("{:016x}", rng.next());
            let n = size(&mut rng).min(max_value);
            cache.set(key.as_bytes(), &value[..n])?;
            written += (key.len() + n) as u64;
        }
        let info = cache.info();
        let total = cache.stats()?.total;
        rows.push(Row {
            label,
            segment: info.segment_bytes,
            fixed_overhead: info.fixed_overhead_bytes,
            live: total.bytes_used,
            entries: total.entries,
            metadata_per_entry: total.metadata_bytes as f64 / total.entries.max(1) as f64,
        });
    }
    Ok(rows)
}

/// Prints `rows` as the README's table.
pub fn print(budget: u64, rows: &[Row]) {
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9}",
        "values", "segment", "of budget", "live", "of budget", "entries", "meta/entry"
    );
    for r in rows {
        let pct = |v: u64| 100.0 * v as f64 / budget as f64;
        println!(
            "{:<18} {:>8.2}MB {:>9.1}% {:>8.2}MB {:>9.1}% {:>8} {:>8.1} B",
            r.label,
            r.segment as f64 / 1e6,
            pct(r.segment),
            r.live as f64 / 1e6,
            pct(r.live),
            r.entries,
            r.metadata_per_entry,
        );
    }
    if let Some(r) = rows.first() {
        println!(
            "the segment is the budget plus {} bytes of fixed overhead",
            r.fixed_overhead
        );
    }
}

#[allow(dead_code)] // `tests/fill.rs` includes this file and calls `table` only.
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
    print(budget, &table(budget, max_entries)?);
    Ok(())
}
