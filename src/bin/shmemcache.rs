//! `shmemcache`: inspect and change a live cache by name.

use clap::{Parser, Subcommand};
use shmemcache::{Cache, Error, Expiry, Options};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "shmemcache",
    version,
    about = "Shared-memory LRU cache: inspect and change a cache by name"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a segment (fails if it exists).
    Create {
        name: String,
        /// Key+value capacity, e.g. 64MiB.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        capacity: u64,
        /// Most entries (default: one per 256 bytes of capacity).
        #[arg(long)]
        max_entries: Option<u64>,
        /// Number of shards.
        #[arg(long, default_value_t = 16)]
        shards: u32,
        /// Default TTL, e.g. 5m.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// File mode, octal.
        #[arg(long, default_value = "600", value_parser = parse_mode)]
        mode: u32,
    },
    /// Show geometry and usage.
    Info { name: String },
    /// Show counters.
    Stats { name: String },
    /// Print a value (raw bytes to stdout).
    Get { name: String, key: String },
    /// Store a value.
    Set {
        name: String,
        key: String,
        value: String,
        /// TTL, e.g. 30s; none = the segment's default.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Delete a key.
    Del { name: String, key: String },
    /// Show a key's remaining TTL.
    Ttl { name: String, key: String },
    /// Add to an integer value.
    Incr {
        name: String,
        key: String,
        #[arg(default_value_t = 1, allow_hyphen_values = true)]
        delta: i64,
    },
    /// List keys.
    Keys {
        name: String,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Remove every entry.
    Clear { name: String },
    /// Remove the segment's name.
    Unlink { name: String },
    /// Validate every invariant; exit 1 with a report if damaged.
    Check { name: String },
    /// Rebuild damaged shards from their entry records.
    Repair { name: String },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (try 64MiB)"))?;
    let mul: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?} (use B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (try 30s, 5m)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m, h, d)")),
    };
    if d.is_zero() {
        return Err("a duration of zero is not allowed".into());
    }
    Ok(d)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("bad mode {s:?} (octal, e.g. 600)"))
}

fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    let open = |name: &str| Options::new().open_existing(name);
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Create {
            name,
            capacity,
            max_entries,
            shards,
            ttl,
            mode,
        } => {
            let mut o = Options::new()
                .capacity_bytes(capacity)
                .shards(shards)
                .default_ttl(ttl)
                .mode(mode);
            if let Some(n) = max_entries {
                o = o.max_entries(n);
            }
            let c = o.create(&name)?;
            let i = c.info();
            let _ = writeln!(
                out,
                "created {} ({} mapped, {} entries, {} shards)",
                i.name,
                fmt_bytes(i.segment_bytes),
                i.max_entries,
                i.shards
            );
        }
        Cmd::Info { name } => {
            let c = open(&name)?;
            let i = c.info();
            let s = c.stats()?;
            let _ = writeln!(out, "name:            {}", i.name);
            let _ = writeln!(out, "layout version:  {}", i.layout_version);
            let _ = writeln!(out, "segment size:    {}", fmt_bytes(i.segment_bytes));
            let _ = writeln!(out, "shards:          {}", i.shards);
            let _ = writeln!(
                out,
                "entries:         {} / {}",
                s.total.entries, i.max_entries
            );
            let _ = writeln!(
                out,
                "arena:           {} / {} (chunk {}B)",
                fmt_bytes(s.total.arena_used),
                fmt_bytes(i.capacity_bytes),
                i.chunk_size
            );
            let _ = writeln!(
                out,
                "max key/value:   {}B / {}",
                i.max_key_len,
                fmt_bytes(i.max_value_len as u64)
            );
            let _ = writeln!(
                out,
                "default TTL:     {}",
                i.default_ttl
                    .map_or("none".to_string(), |d| format!("{d:?}"))
            );
            let _ = writeln!(out, "creator pid:     {}", i.creator_pid);
            for (n, sh) in s.shards.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  shard {n:>3}: {:>8} entries, {:>5.1}% arena",
                    sh.entries,
                    100.0 * sh.arena_used as f64 / sh.arena_capacity.max(1) as f64
                );
            }
        }
        Cmd::Stats { name } => {
            let t = open(&name)?.stats()?.total;
            let _ = writeln!(out, "hits {} misses {} ratio {:.3} sets {} evictions {} expirations {} deletes {} recoveries {} entries {}",
                t.hits, t.misses, t.hit_ratio(), t.sets, t.evictions, t.expirations, t.deletes, t.recoveries, t.entries);
        }
        Cmd::Get { name, key } => match open(&name)?.get(key.as_bytes())? {
            Some(v) => {
                let _ = out.write_all(&v);
                let _ = writeln!(out);
            }
            None => {
                eprintln!("shmemcache: key {key:?} not found");
                return Ok(ExitCode::from(1));
            }
        },
        Cmd::Set {
            name,
            key,
            value,
            ttl,
        } => {
            let c = open(&name)?;
            match ttl {
                Some(t) => c.set_ttl(key.as_bytes(), value.as_bytes(), Some(t))?,
                None => c.set(key.as_bytes(), value.as_bytes())?,
            };
        }
        Cmd::Del { name, key } => {
            if !open(&name)?.delete(key.as_bytes())? {
                eprintln!("shmemcache: key {key:?} not found");
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Ttl { name, key } => match open(&name)?.ttl(key.as_bytes())? {
            Some(Expiry::Never) => {
                let _ = writeln!(out, "never");
            }
            Some(Expiry::In(d)) => {
                let _ = writeln!(out, "{}ms", d.as_millis());
            }
            None => {
                eprintln!("shmemcache: key {key:?} not found");
                return Ok(ExitCode::from(1));
            }
        },
        Cmd::Incr { name, key, delta } => {
            let v = open(&name)?.incr(key.as_bytes(), delta)?;
            let _ = writeln!(out, "{v}");
        }
        Cmd::Keys {
            name,
            prefix,
            limit,
        } => {
            let c = open(&name)?;
            let mut n = 0;
            for k in c.keys() {
                let k = k?;
                if prefix
                    .as_ref()
                    .is_some_and(|p| !k.starts_with(p.as_bytes()))
                {
                    continue;
                }
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
                let _ = writeln!(out, "{}", String::from_utf8_lossy(&k));
                n += 1;
            }
        }
        Cmd::Clear { name } => {
            let n = open(&name)?.clear()?;
            let _ = writeln!(out, "cleared {n} entries");
        }
        Cmd::Unlink { name } => Cache::unlink(&name)?,
        Cmd::Check { name } => {
            let r = open(&name)?.check()?;
            if r.is_healthy() {
                let _ = writeln!(out, "ok");
            } else {
                for (s, p) in &r.problems {
                    let _ = writeln!(out, "shard {s}: {p}");
                }
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Repair { name } => {
            let r = open(&name)?.repair()?;
            let _ = writeln!(
                out,
                "kept {} dropped {} cleared shards {}",
                r.kept, r.dropped, r.cleared_shards
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shmemcache: {e}");
            ExitCode::from(2)
        }
    }
}
