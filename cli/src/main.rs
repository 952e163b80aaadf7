//! `shmemcache`: inspect and change a live cache by name, and benchmark IPC caches.
//!
//! Every subcommand prints human-readable text by default and one JSON document with
//! `--json` (`stats --watch --json` prints JSON Lines: one document per refresh). Errors
//! are one line on stderr: exit code 1 for "not found" (a missing segment or key) or an
//! unhealthy `check`, 2 for every other error.
//!
//! Keys are printed escaped (`\x00` for a NUL byte, `\\` for a backslash) and read back
//! the same way, so any key `keys` lists can be given to `get`, `del` or `ttl`; `--hex`
//! takes and prints keys as hex instead.

mod bench;
mod keys;
mod units;

use clap::{Parser, Subcommand};
use keys::KeyArg;
use serde_json::{json, Value};
use shmemcache::{Cache, Error, Expiry, Options, ShardStats};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use units::{fmt_bytes, fmt_duration, parse_duration, parse_mode, parse_size, parse_ttl};

/// A TTL on the command line: a duration such as `30s` or `1.5h`, or `never`.
#[derive(Clone, Copy, Debug)]
struct Ttl(Option<Duration>);

fn ttl_arg(s: &str) -> Result<Ttl, String> {
    parse_ttl(s).map(Ttl)
}

#[derive(Parser)]
#[command(
    name = "shmemcache",
    version,
    about = "Shared-memory LRU cache: inspect and change a cache by name, benchmark IPC caches"
)]
struct Cli {
    /// Print one JSON document instead of text (JSON Lines, one object per refresh, for
    /// `stats --watch`).
    #[arg(long, global = true)]
    json: bool,
    /// Keys on the command line and in output are hex (`00ff41`) instead of escaped text.
    #[arg(long, global = true)]
    hex: bool,
    /// Print nothing on success for commands that change the cache (set, del, ...).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a segment (fails if it exists).
    Create {
        name: String,
        /// Space budget of the shards (entries, records, index), e.g. 64MiB; the segment
        /// adds a fixed ~110 KiB for the header, coordination table, memo stats and
        /// namespace table.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        capacity: u64,
        /// Most entries (default: as many as fit in the capacity).
        #[arg(long)]
        max_entries: Option<u64>,
        /// Number of shards.
        #[arg(long, default_value_t = 16)]
        shards: u32,
        /// Default TTL of entries stored without one: e.g. 5m, 1.5h, or never (the default).
        #[arg(long, value_parser = ttl_arg)]
        ttl: Option<Ttl>,
        /// File mode, octal.
        #[arg(long, default_value = "600", value_parser = parse_mode)]
        mode: u32,
        /// Store a checksum with every entry; damaged values read as misses.
        #[arg(long)]
        checksums: bool,
        /// How gets keep recency: lazy (mark, second chance at eviction) or exact (strict
        /// LRU: every get moves its entry).
        #[arg(long, default_value = "lazy", value_parser = ["lazy", "exact"])]
        recency: String,
    },
    /// Show geometry, usage and per-shard fill.
    Info { name: String },
    /// Show counters; with --watch, refresh with rates.
    Stats {
        name: String,
        /// Refresh every interval (e.g. 1s) until interrupted; with --json, one JSON object
        /// per line (JSON Lines).
        #[arg(long, value_parser = parse_duration, num_args = 0..=1, default_missing_value = "1s")]
        watch: Option<Duration>,
        /// Stop after this many refreshes (needs --watch).
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
    /// List every shmemcache segment on this machine.
    List,
    /// Print a value (raw bytes to stdout).
    Get { name: String, key: String },
    /// Store a value.
    Set {
        name: String,
        key: String,
        value: String,
        /// TTL, e.g. 30s or 1.5h, or never; without it the segment's default TTL applies.
        #[arg(long, value_parser = ttl_arg)]
        ttl: Option<Ttl>,
    },
    /// Delete a key.
    Del { name: String, key: String },
    /// Show a key's remaining TTL (e.g. 4m59.96s, or never).
    Ttl { name: String, key: String },
    /// Add to an integer value.
    Incr {
        name: String,
        key: String,
        #[arg(default_value_t = 1, allow_hyphen_values = true)]
        delta: i64,
    },
    /// List keys, escaped (or hex with --hex), one per line.
    Keys {
        name: String,
        /// Only keys starting with this (escaped like a key argument).
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Remove every entry.
    Clear { name: String },
    /// Remove the segment's name (processes that have it open keep their mapping).
    Unlink { name: String },
    /// Write the cache's live entries (or one namespace's) to a snapshot file, replaced
    /// atomically.
    Save {
        name: String,
        file: std::path::PathBuf,
        /// Only this namespace.
        #[arg(long)]
        ns: Option<String>,
    },
    /// Load a snapshot file; expired entries are skipped.
    Load {
        name: String,
        file: std::path::PathBuf,
        /// Into this namespace only.
        #[arg(long)]
        ns: Option<String>,
        /// Replace each namespace's contents in one step instead of merging.
        #[arg(long)]
        replace: bool,
    },
    /// Namespaces: list them, show one's figures, or clear one (every process sees it at
    /// once).
    Ns {
        #[command(subcommand)]
        cmd: NsCmd,
    },
    /// Validate every invariant; exit 1 with a report if damaged.
    Check { name: String },
    /// Rebuild damaged shards and the coordination table; with --force, first restore a
    /// damaged header from its backup copy (only while no process has the segment open).
    Repair {
        name: String,
        /// Restore the header from its backup copy (refused while the segment is mapped).
        #[arg(long)]
        force: bool,
    },
    /// Benchmark shmemcache across processes, optionally against Redis, LMDB, the floor
    /// and an in-process LRU, in the same run.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum NsCmd {
    /// List the namespaces of a segment, with their generations and dependencies.
    List { name: String },
    /// Show a namespace's entries, bytes and counters.
    Stats { name: String, ns: String },
    /// Clear a namespace: all of its entries are gone at once, for every process.
    Clear {
        name: String,
        ns: String,
        /// Also clear the namespaces that depend on it (`invalidate`).
        #[arg(long)]
        dependents: bool,
    },
}

/// What a subcommand produced: JSON for `--json`, text otherwise, and an exit code.
struct Output {
    json: Value,
    text: String,
    code: u8,
}

impl Output {
    fn ok(json: Value, text: impl Into<String>) -> Output {
        Output {
            json,
            text: text.into(),
            code: 0,
        }
    }
}

fn not_found(key: &str) -> Output {
    eprintln!("shmemcache: key {key} not found");
    Output {
        json: json!({ "found": false, "key": key }),
        text: String::new(),
        code: 1,
    }
}

/// How this invocation reads and prints.
#[derive(Clone, Copy)]
struct Ctx {
    json: bool,
    keys: KeyArg,
    quiet: bool,
}

impl Ctx {
    fn key(&self, s: &str) -> Result<Vec<u8>, Error> {
        self.keys.parse(s).map_err(Error::InvalidArgument)
    }
    /// What a command that changed the cache says, unless `--quiet`.
    fn said(&self, text: String) -> String {
        if self.quiet {
            String::new()
        } else {
            text
        }
    }
}

fn shard_json(s: &ShardStats) -> Value {
    json!({
        "hits": s.hits, "misses": s.misses, "sets": s.sets, "evictions": s.evictions,
        "expirations": s.expirations, "deletes": s.deletes, "recoveries": s.recoveries,
        "entries": s.entries, "entry_capacity": s.entry_capacity, "bytes_used": s.bytes_used,
        "arena_used": s.arena_used, "arena_capacity": s.arena_capacity,
        "metadata_bytes": s.metadata_bytes,
        "checksum_failures": s.checksum_failures,
    })
}

fn open(name: &str) -> Result<Cache, Error> {
    Options::new().open_existing(name)
}

/// The default namespace is addressed as "" (or "default" when no namespace has that name).
fn open_ns(name: &str, ns: &str) -> Result<Cache, Error> {
    let c = open(name)?;
    if ns.is_empty() || (ns == "default" && !c.namespaces().iter().any(|n| n.name == ns)) {
        return Ok(c);
    }
    // Only an existing namespace: a typo must not create one.
    if !c.namespaces().iter().any(|n| n.name == ns) {
        return Err(Error::InvalidArgument(format!(
            "segment {name} has no namespace {ns:?} (see `shmemcache ns list {name}`)"
        )));
    }
    c.namespace(ns)
}

fn namespaces(cmd: NsCmd, ctx: Ctx) -> Result<Output, Error> {
    Ok(match cmd {
        NsCmd::List { name } => {
            let list = open(&name)?.namespaces();
            let mut text = format!("{:<24} {:>10}  depends on\n", "namespace", "generation");
            let mut rows = Vec::new();
            for n in &list {
                let shown = if n.name.is_empty() {
                    "(default)"
                } else {
                    &n.name
                };
                text.push_str(&format!(
                    "{:<24} {:>10}  {}\n",
                    shown,
                    n.generation,
                    n.depends_on.join(", ")
                ));
                rows.push(json!({
                    "name": n.name, "generation": n.generation, "depends_on": n.depends_on,
                }));
            }
            Output::ok(json!({ "namespaces": rows }), text.trim_end().to_string())
        }
        NsCmd::Stats { name, ns } => {
            let s = open_ns(&name, &ns)?.namespace_stats()?;
            let text = format!(
                "namespace:     {}\ngeneration:    {}\nentries:       {}\nbytes:         {}\n\
                 hits:          {}\nmisses:        {}\nsets:          {}\ninvalidations: {}",
                if s.name.is_empty() {
                    "(default)"
                } else {
                    &s.name
                },
                s.generation,
                s.entries,
                fmt_bytes(s.bytes),
                s.hits,
                s.misses,
                s.sets,
                s.invalidations
            );
            Output::ok(
                json!({
                    "name": s.name, "generation": s.generation, "entries": s.entries,
                    "bytes": s.bytes, "hits": s.hits, "misses": s.misses, "sets": s.sets,
                    "invalidations": s.invalidations,
                }),
                text,
            )
        }
        NsCmd::Clear {
            name,
            ns,
            dependents,
        } => {
            let c = open_ns(&name, &ns)?;
            let n = if dependents {
                c.invalidate()?
            } else {
                // The namespace alone (for the default one, not the whole cache).
                c.clear_namespace()?;
                1
            };
            Output::ok(
                json!({ "cleared_namespaces": n, "generation": c.generation() }),
                ctx.said(format!("cleared {n} namespace(s)")),
            )
        }
    })
}

fn run(cmd: Cmd, ctx: Ctx) -> Result<Output, Error> {
    let as_json = ctx.json;
    Ok(match cmd {
        Cmd::Create {
            name,
            capacity,
            max_entries,
            shards,
            ttl,
            mode,
            checksums,
            recency,
        } => {
            let mut o = Options::new()
                .capacity_bytes(capacity)
                .shards(shards)
                .default_ttl(ttl.and_then(|t| t.0))
                .mode(mode)
                .checksums(checksums)
                .recency(if recency == "exact" {
                    shmemcache::Recency::Exact
                } else {
                    shmemcache::Recency::Lazy
                });
            if let Some(n) = max_entries {
                o = o.max_entries(n);
            }
            let i = o.create(&name)?.info();
            Output::ok(
                json!({ "created": i.name, "segment_bytes": i.segment_bytes,
                        "max_entries": i.max_entries, "shards": i.shards }),
                ctx.said(format!(
                    "created {} ({} mapped, {} entries, {} shards)",
                    i.name,
                    fmt_bytes(i.segment_bytes),
                    i.max_entries,
                    i.shards
                )),
            )
        }
        Cmd::Info { name } => info(&name)?,
        Cmd::Stats { name, watch, count } => match watch {
            Some(every) => return watch_stats(&name, every, count, as_json),
            None => {
                let c = open(&name)?;
                let t = c.stats()?.total;
                let m = c.memo_stats();
                Output::ok(
                    json!({ "hit_ratio": t.hit_ratio(), "total": shard_json(&t),
                            "memo": { "hits": m.hits, "stale": m.stale, "misses": m.misses,
                                      "computed": m.computed, "waited": m.waited,
                                      "takeovers": m.takeovers, "timeouts": m.timeouts,
                                      "rejected": m.rejected } }),
                    format!(
                        "hits {} misses {} ratio {:.3} sets {} evictions {} expirations {} \
                         deletes {} recoveries {} entries {}\n\
                         memo: hits {} stale {} misses {} computed {} waited {} takeovers {} \
                         timeouts {} rejected {}",
                        t.hits,
                        t.misses,
                        t.hit_ratio(),
                        t.sets,
                        t.evictions,
                        t.expirations,
                        t.deletes,
                        t.recoveries,
                        t.entries,
                        m.hits,
                        m.stale,
                        m.misses,
                        m.computed,
                        m.waited,
                        m.takeovers,
                        m.timeouts,
                        m.rejected
                    ),
                )
            }
        },
        Cmd::List => {
            let all = shmemcache::list_segments()?;
            let mut text = format!(
                "{:<32} {:>10} {:>6} {:>5} {:>7} {:>8}",
                "NAME", "SIZE", "UID", "MODE", "LAYOUT", "SHARDS"
            );
            for s in &all {
                text.push_str(&format!(
                    "\n{:<32} {:>10} {:>6} {:>5o} {:>7} {:>8}",
                    s.name,
                    fmt_bytes(s.size),
                    s.uid,
                    s.mode,
                    if s.compatible {
                        s.layout_version.to_string()
                    } else {
                        format!("{}!", s.layout_version)
                    },
                    s.shards
                ));
            }
            let rows: Vec<Value> = all
                .iter()
                .map(|s| {
                    json!({ "name": s.name, "size": s.size, "uid": s.uid,
                            "mode": format!("{:o}", s.mode), "layout_version": s.layout_version,
                            "compatible": s.compatible, "shards": s.shards,
                            "creator_pid": s.creator_pid })
                })
                .collect();
            Output::ok(json!({ "segments": rows }), text)
        }
        Cmd::Get { name, key } => match open(&name)?.get(&ctx.key(&key)?)? {
            Some(v) => {
                if as_json {
                    let text = std::str::from_utf8(&v).ok();
                    Output::ok(
                        json!({ "found": true, "key": key,
                                "value": text.map_or_else(|| keys::escape(&v), str::to_string),
                                "binary": text.is_none() }),
                        "",
                    )
                } else {
                    // Raw bytes, not lossy text: the value may be binary.
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&v);
                    let _ = out.write_all(b"\n");
                    Output::ok(Value::Null, "")
                }
            }
            None => not_found(&key),
        },
        Cmd::Set {
            name,
            key,
            value,
            ttl,
        } => {
            let c = open(&name)?;
            let k = ctx.key(&key)?;
            let r = match ttl {
                Some(Ttl(t)) => c.set_ttl(&k, value.as_bytes(), t)?,
                None => c.set(&k, value.as_bytes())?,
            };
            let expiry = match c.ttl(&k)? {
                Some(Expiry::In(d)) => format!(", expires in {}", fmt_duration(d)),
                _ => String::new(),
            };
            let evicted = match r.evicted {
                0 => String::new(),
                n => format!(", evicted {n} to make room"),
            };
            Output::ok(
                json!({ "stored": true, "key": key, "evicted": r.evicted }),
                ctx.said(format!(
                    "stored {key} ({} bytes{expiry}{evicted})",
                    value.len()
                )),
            )
        }
        Cmd::Del { name, key } => {
            if open(&name)?.delete(&ctx.key(&key)?)? {
                Output::ok(
                    json!({ "deleted": true, "key": key }),
                    ctx.said(format!("deleted {key}")),
                )
            } else {
                not_found(&key)
            }
        }
        Cmd::Ttl { name, key } => match open(&name)?.ttl(&ctx.key(&key)?)? {
            Some(Expiry::Never) => Output::ok(json!({ "ttl_ms": null }), "never"),
            Some(Expiry::In(d)) => {
                Output::ok(json!({ "ttl_ms": d.as_millis() as u64 }), fmt_duration(d))
            }
            None => not_found(&key),
        },
        Cmd::Incr { name, key, delta } => {
            let v = open(&name)?.incr(&ctx.key(&key)?, delta)?;
            Output::ok(json!({ "value": v }), v.to_string())
        }
        Cmd::Keys {
            name,
            prefix,
            limit,
        } => {
            let c = open(&name)?;
            let prefix = prefix.map(|p| ctx.key(&p)).transpose()?;
            let mut keys = Vec::new();
            for k in c.keys() {
                if limit.is_some_and(|l| keys.len() >= l) {
                    break;
                }
                let k = k?;
                if prefix.as_ref().map_or(true, |p| k.starts_with(p)) {
                    keys.push(ctx.keys.show(&k));
                }
            }
            let text = keys.join("\n");
            Output::ok(json!({ "keys": keys }), text)
        }
        Cmd::Clear { name } => {
            let n = open(&name)?.clear()?;
            Output::ok(
                json!({ "cleared": n }),
                ctx.said(format!("cleared {n} entries")),
            )
        }
        Cmd::Ns { cmd } => namespaces(cmd, ctx)?,
        Cmd::Save { name, file, ns } => {
            let c = open(&name)?;
            let c = match ns {
                Some(ns) => c.namespace(&ns)?,
                None => c,
            };
            let r = c.save(&file)?;
            Output::ok(
                json!({ "entries": r.entries, "bytes": r.bytes, "file": file }),
                ctx.said(format!(
                    "saved {} entries ({}) to {}",
                    r.entries,
                    fmt_bytes(r.bytes),
                    file.display()
                )),
            )
        }
        Cmd::Load {
            name,
            file,
            ns,
            replace,
        } => {
            let c = open(&name)?;
            let c = match ns {
                Some(ns) => c.namespace(&ns)?,
                None => c,
            };
            let mode = if replace {
                shmemcache::LoadMode::Replace
            } else {
                shmemcache::LoadMode::Merge
            };
            let r = c.load(&file, mode)?;
            Output::ok(
                json!({
                    "entries": r.entries, "bytes": r.bytes,
                    "skipped_expired": r.skipped_expired,
                }),
                ctx.said(format!(
                    "loaded {} entries ({}), skipped {} expired",
                    r.entries,
                    fmt_bytes(r.bytes),
                    r.skipped_expired
                )),
            )
        }
        Cmd::Unlink { name } => {
            Cache::unlink(&name)?;
            let text = ctx.said(format!("unlinked {name}"));
            Output::ok(json!({ "unlinked": name }), text)
        }
        Cmd::Check { name } => {
            let r = open(&name)?.check()?;
            let mut problems: Vec<String> = r
                .problems
                .iter()
                .map(|(s, p)| format!("shard {s}: {p}"))
                .collect();
            if let Some(p) = &r.coordination {
                problems.push(format!("coordination table: {p}"));
            }
            if let Some(p) = &r.namespaces {
                problems.push(format!("namespace table: {p}"));
            }
            Output {
                json: json!({ "healthy": r.is_healthy(), "problems": problems }),
                text: if problems.is_empty() {
                    "ok".into()
                } else {
                    problems.join("\n")
                },
                code: if r.is_healthy() { 0 } else { 1 },
            }
        }
        Cmd::Repair { name, force } => {
            let restored = if force {
                Cache::force_repair(&name)?
            } else {
                Vec::new()
            };
            if !restored.is_empty() && !as_json {
                eprintln!("shmemcache: repaired offline: {}", restored.join(", "));
            }
            let r = open(&name)?.repair()?;
            let coord = match r.coordination_slots_dropped {
                None => "coordination table healthy".to_string(),
                Some(n) => format!("coordination table repaired ({n} slots dropped)"),
            };
            Output::ok(
                json!({ "kept": r.kept, "dropped": r.dropped,
                        "repaired_offline": restored,
                        "repaired_shards": r.repaired_shards,
                        "cleared_shards": r.cleared_shards,
                        "coordination_slots_dropped": r.coordination_slots_dropped }),
                format!(
                    "repaired {} shards: kept {} entries, dropped {}, cleared shards {}; {coord}",
                    r.repaired_shards, r.kept, r.dropped, r.cleared_shards
                ),
            )
        }
        Cmd::Bench(args) => bench::run(args, as_json)?,
    })
}

fn info(name: &str) -> Result<Output, Error> {
    let c = open(name)?;
    let i = c.info();
    let s = c.stats()?;
    let co = c.coordination_stats()?;
    let mut text = String::new();
    let mut line = |k: &str, v: String| text.push_str(&format!("{k:<16} {v}\n"));
    line("name:", i.name.clone());
    line("layout version:", i.layout_version.to_string());
    line("segment size:", fmt_bytes(i.segment_bytes));
    line("shards:", i.shards.to_string());
    line(
        "entries:",
        format!("{} / {}", s.total.entries, i.max_entries),
    );
    line(
        "arena:",
        format!(
            "{} / {} (chunk {}B)",
            fmt_bytes(s.total.arena_used),
            fmt_bytes(s.total.arena_capacity),
            i.chunk_size
        ),
    );
    line(
        "max key/value:",
        format!("{}B / {}", i.max_key_len, fmt_bytes(i.max_value_len as u64)),
    );
    line(
        "default TTL:",
        i.default_ttl.map_or("none".into(), fmt_duration),
    );
    line(
        "checksums:",
        if i.checksums { "on" } else { "off" }.to_string(),
    );
    line(
        "coordination:",
        format!("{} / {} slots in use", co.in_use, co.slots),
    );
    line("creator pid:", i.creator_pid.to_string());
    for (n, sh) in s.shards.iter().enumerate() {
        text.push_str(&format!(
            "  shard {n:>3}: {:>8} entries, {:>5.1}% arena\n",
            sh.entries,
            100.0 * sh.arena_used as f64 / sh.arena_capacity.max(1) as f64
        ));
    }
    let shards: Vec<Value> = s.shards.iter().map(shard_json).collect();
    Ok(Output::ok(
        json!({
            "name": i.name, "layout_version": i.layout_version,
            "segment_bytes": i.segment_bytes, "shards": i.shards,
            "max_entries": i.max_entries, "capacity_bytes": i.capacity_bytes,
            "fixed_overhead_bytes": i.fixed_overhead_bytes,
            "chunk_size": i.chunk_size, "max_key_len": i.max_key_len,
            "max_value_len": i.max_value_len,
            "default_ttl_ms": i.default_ttl.map(|d| d.as_millis() as u64),
            "creator_pid": i.creator_pid, "created_unix_ns": i.created_unix_ns,
            "checksums": i.checksums,
            "recency": if i.recency == shmemcache::Recency::Exact { "exact" } else { "lazy" },
            "coordination": { "slots": co.slots, "in_use": co.in_use,
                              "recoveries": co.recoveries, "reclaimed": co.reclaimed },
            "total": shard_json(&s.total), "per_shard": shards,
        }),
        text.trim_end(),
    ))
}

/// `stats --watch`: one line (or JSON object) per interval with rates since the last one.
fn watch_stats(
    name: &str,
    every: Duration,
    count: Option<u64>,
    as_json: bool,
) -> Result<Output, Error> {
    let c = open(name)?;
    let mut prev = c.stats()?.total;
    let mut at = Instant::now();
    let mut out = std::io::stdout().lock();
    if !as_json {
        let _ = writeln!(
            out,
            "{:>12} {:>8} {:>12} {:>10} {:>10} {:>10}",
            "ops/s", "hit%", "sets/s", "evict/s", "entries", "recoveries"
        );
    }
    let mut n = 0;
    while count.map_or(true, |c| n < c) {
        std::thread::sleep(every);
        let now = c.stats()?.total;
        let dt = at.elapsed().as_secs_f64().max(1e-9);
        at = Instant::now();
        let lookups = (now.hits + now.misses).saturating_sub(prev.hits + prev.misses);
        let hits = now.hits.saturating_sub(prev.hits);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        let hit_ratio = if lookups == 0 {
            None
        } else {
            Some(hits as f64 / lookups as f64)
        };
        if as_json {
            let _ = writeln!(
                out,
                "{}",
                json!({ "lookups_per_sec": lookups as f64 / dt, "hit_ratio": hit_ratio,
                        "sets_per_sec": rate(now.sets, prev.sets),
                        "evictions_per_sec": rate(now.evictions, prev.evictions),
                        "entries": now.entries, "recoveries": now.recoveries })
            );
        } else {
            let _ = writeln!(
                out,
                "{:>12.0} {:>8} {:>12.0} {:>10.0} {:>10} {:>10}",
                lookups as f64 / dt,
                hit_ratio.map_or("-".into(), |r| format!("{:.1}", r * 100.0)),
                rate(now.sets, prev.sets),
                rate(now.evictions, prev.evictions),
                now.entries,
                now.recoveries
            );
        }
        let _ = out.flush();
        prev = now;
        n += 1;
    }
    Ok(Output::ok(Value::Null, ""))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let as_json = cli.json;
    let ctx = Ctx {
        json: cli.json,
        keys: KeyArg { hex: cli.hex },
        quiet: cli.quiet,
    };
    match run(cli.cmd, ctx) {
        Ok(o) => {
            let mut out = std::io::stdout().lock();
            if as_json {
                if !o.json.is_null() {
                    let _ = writeln!(out, "{}", o.json);
                }
            } else if !o.text.is_empty() {
                let _ = writeln!(out, "{}", o.text);
            }
            ExitCode::from(o.code)
        }
        Err(e) => {
            if as_json {
                let _ = writeln!(std::io::stdout(), "{}", json!({ "error": e.to_string() }));
            }
            eprintln!("shmemcache: {e}");
            // "Not found" is 1 whether a key or the segment is missing; 2 is every other error.
            ExitCode::from(if matches!(e, Error::NotFound { .. }) {
                1
            } else {
                2
            })
        }
    }
}
