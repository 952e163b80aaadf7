//! `shmemcache bench`: N forked worker processes run one workload against shmemcache and,
//! in the same invocation, against the references chosen with `--compare`; per-op latency
//! goes into an HDR histogram; the report gives ops/s (total and per process), p50, p99,
//! p99.9, hit ratio, evictions, and the ratio of shmemcache to each reference.

mod chart;
mod targets;

use crate::units::{fmt_ns, fmt_rate, parse_duration, parse_size};
use hdrhistogram::Histogram;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use serde_json::{json, Value};
use shmemcache::Error;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use targets::Target;

/// Options of `shmemcache bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Worker processes; a list (1,2,4) runs every count (the chart's x axis).
    /// Default: the number of cores.
    #[arg(long, value_delimiter = ',')]
    pub procs: Vec<usize>,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Key length in bytes (at least 8).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size, e.g. 100 or 4KiB.
    #[arg(long, default_value = "100", value_parser = parse_size)]
    pub value_size: u64,
    /// Operation mix: get, set, 90/10 (90 % gets), or a get percentage such as 75.
    #[arg(long, default_value = "90/10", value_parser = parse_mix)]
    pub mix: u8,
    /// How long each run measures (after the warm-up).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Measure this many operations per process instead of a duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Unmeasured warm-up before each run ("0" for none).
    #[arg(long, default_value = "300ms", value_parser = parse_warmup)]
    pub warmup: Duration,
    /// Key popularity: uniform or zipf.
    #[arg(long, default_value = "uniform", value_parser = ["uniform", "zipf"])]
    pub dist: String,
    /// Zipf exponent.
    #[arg(long, default_value_t = 0.99)]
    pub zipf_s: f64,
    /// Shards of the shmemcache segment and of the floors.
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    /// Create the shmemcache segment with entry checksums (`Options::checksums`), to
    /// measure what they cost against the same references.
    #[arg(long)]
    pub checksums: bool,
    /// References to run in the same invocation: floor (robust mutexes around fixed slots),
    /// optimistic-floor (the same slots read under a seqlock, without a lock), lru, lmdb,
    /// redis.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// Use the redis-server listening on this Unix socket instead of starting one.
    #[arg(long)]
    pub redis_socket: Option<PathBuf>,
    /// The redis-server binary to start when no socket is given.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Run every (target, process count) this many times, interleaved, and report the
    /// median run: a noisy machine then skews one run, not a whole target.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Write bench.json into this directory, and bench.svg when built with the `chart`
    /// feature (without it, a note says the chart was not drawn).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Time one operation in this many (timing every one adds two clock reads per op).
    #[arg(long, default_value_t = 8)]
    pub sample_every: u32,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_mix(s: &str) -> Result<u8, String> {
    match s {
        "get" => Ok(100),
        "set" => Ok(0),
        "90/10" => Ok(90),
        n => n
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| format!("bad mix {s:?}: get, set, 90/10 or a get percentage 0-100")),
    }
}

fn parse_warmup(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        Ok(Duration::ZERO)
    } else {
        parse_duration(s)
    }
}

/// Everything a worker needs, fixed before forking.
pub struct Workload {
    pub keys: Vec<Vec<u8>>,
    pub key_size: usize,
    pub value: Vec<u8>,
    get_percent: u8,
    /// Cumulative key weights for zipf (empty = uniform).
    cdf: Vec<f64>,
    duration: Duration,
    ops: Option<u64>,
    warmup: Duration,
    sample_every: u64,
}

impl Workload {
    fn new(a: &BenchArgs) -> Result<Workload, String> {
        if a.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        let width = a.keys.to_string().len();
        if a.key_size < width.max(8) {
            return Err(format!(
                "--key-size {} is too short for {} distinct keys (need at least {})",
                a.key_size,
                a.keys,
                width.max(8)
            ));
        }
        if a.value_size == 0 || a.value_size > 1 << 20 {
            return Err("--value-size must be between 1 byte and 1MiB".into());
        }
        if a.sample_every == 0 {
            return Err("--sample-every must be at least 1".into());
        }
        let keys = (0..a.keys)
            .map(|i| {
                let mut k = format!("k{i:0width$}").into_bytes();
                k.resize(a.key_size, b'.');
                k
            })
            .collect();
        let cdf = if a.dist == "zipf" {
            if !(a.zipf_s > 0.0 && a.zipf_s.is_finite()) {
                return Err("--zipf-s must be positive".into());
            }
            let mut acc = 0.0;
            let mut c: Vec<f64> = (0..a.keys)
                .map(|i| {
                    acc += 1.0 / ((i + 1) as f64).powf(a.zipf_s);
                    acc
                })
                .collect();
            c.iter_mut().for_each(|v| *v /= acc);
            c
        } else {
            Vec::new()
        };
        Ok(Workload {
            keys,
            key_size: a.key_size,
            value: vec![0xA5; a.value_size as usize],
            get_percent: a.mix,
            cdf,
            duration: a.duration,
            ops: a.ops,
            warmup: a.warmup,
            sample_every: a.sample_every as u64,
        })
    }

    fn pick(&self, r: u64) -> usize {
        if self.cdf.is_empty() {
            (r % self.keys.len() as u64) as usize
        } else {
            let u = (r >> 11) as f64 / (1u64 << 53) as f64;
            self.cdf
                .partition_point(|&c| c < u)
                .min(self.keys.len() - 1)
        }
    }
}

/// One worker's tallies, sent to the parent through a pipe.
struct Tally {
    ops: u64,
    hits: u64,
    gets: u64,
    elapsed_ns: u64,
    /// Operations that returned an error.
    errors: u64,
    hist: Histogram<u64>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

impl Tally {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [self.ops, self.hits, self.gets, self.elapsed_ns, self.errors] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for iv in self.hist.iter_recorded() {
            out.extend_from_slice(&iv.value_iterated_to().to_le_bytes());
            out.extend_from_slice(&iv.count_at_value().to_le_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Tally> {
        let word = |i: usize| {
            Some(u64::from_le_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let mut hist = new_hist();
        let pairs = b.get(40..)?;
        for p in pairs.chunks_exact(16) {
            let v = u64::from_le_bytes(p[..8].try_into().ok()?);
            let n = u64::from_le_bytes(p[8..].try_into().ok()?);
            hist.record_n(v.max(1), n).ok()?;
        }
        Some(Tally {
            ops: word(0)?,
            hits: word(1)?,
            gets: word(2)?,
            elapsed_ns: word(3)?,
            errors: word(4)?,
            hist,
        })
    }
}

/// The worker loop: warm up, then measure.
fn work(t: &dyn Target, w: &Workload, seed: u64) -> Result<Tally, String> {
    let mut client = t.worker(w)?;
    let mut buf = vec![0u8; w.value.len()];
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut one = |client: &mut dyn targets::Worker, r: u64, gets: &mut u64| -> bool {
        let key = &w.keys[w.pick(r)];
        if (r >> 40) % 100 < w.get_percent as u64 {
            *gets += 1;
            client.get(key, &mut buf)
        } else {
            client.set(key, &w.value);
            false
        }
    };
    let warm_until = Instant::now() + w.warmup;
    let mut ignored = 0;
    while Instant::now() < warm_until {
        for _ in 0..64 {
            one(&mut *client, next(), &mut ignored);
        }
    }
    let mut tally = Tally {
        ops: 0,
        hits: 0,
        gets: 0,
        elapsed_ns: 0,
        errors: 0,
        hist: new_hist(),
    };
    let start = Instant::now();
    let end = start + w.duration;
    loop {
        for _ in 0..64 {
            let r = next();
            let timed = tally.ops % w.sample_every == 0;
            let t0 = timed.then(Instant::now);
            let hit = one(&mut *client, r, &mut tally.gets);
            if let Some(t0) = t0 {
                let _ = tally.hist.record((t0.elapsed().as_nanos() as u64).max(1));
            }
            tally.hits += hit as u64;
            tally.ops += 1;
        }
        let done = match w.ops {
            Some(n) => tally.ops >= n,
            None => Instant::now() >= end,
        };
        if done {
            break;
        }
    }
    tally.elapsed_ns = start.elapsed().as_nanos() as u64;
    tally.errors = client.errors();
    Ok(tally)
}

/// One (target, process count) measurement.
pub struct RunResult {
    pub target: &'static str,
    pub procs: usize,
    pub ops_per_sec: f64,
    pub per_process: Vec<f64>,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub hit_ratio: Option<f64>,
    pub evictions: Option<u64>,
    /// Operations that returned an error (measured runs; the median run's count).
    pub errors: u64,
    /// Total ops/s of every repetition (the reported run is their median).
    pub runs: Vec<f64>,
}

fn run_one(
    t: &dyn Target,
    w: &Workload,
    procs: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<RunResult, String> {
    let evictions_before = t.evictions();
    let mut readers = Vec::new();
    let mut pids = Vec::new();
    for p in 0..procs {
        let (r, wr) = nix::unistd::pipe().map_err(|e| e.to_string())?;
        // SAFETY: the parent is single-threaded here (no progress thread: the bar is ticked
        // from this thread); the child runs the worker loop and leaves with `_exit`.
        match unsafe { fork() }.map_err(|e| e.to_string())? {
            ForkResult::Child => {
                drop(r);
                let mut wr = std::fs::File::from(wr);
                let code = match work(t, w, 0x9E37_79B9_7F4A_7C15 ^ (p as u64 + 1) << 17) {
                    Ok(tally) => {
                        let _ = wr.write_all(&tally.encode());
                        0
                    }
                    Err(e) => {
                        let _ = wr.write_all(format!("ERR{e}").as_bytes());
                        1
                    }
                };
                drop(wr);
                // SAFETY: leave without running the parent's destructors or atexit hooks.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(wr);
                readers.push(std::fs::File::from(r));
                pids.push(child);
            }
        }
    }
    // Read every report while ticking the bar; pipes are read as data arrives so a large
    // histogram never blocks a worker.
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); procs];
    let mut open: Vec<bool> = vec![true; procs];
    let started = Instant::now();
    while open.iter().any(|o| *o) {
        let mut fds: Vec<PollFd> = readers
            .iter()
            .zip(&open)
            .filter(|(_, o)| **o)
            .map(|(r, _)| PollFd::new(r.as_fd(), PollFlags::POLLIN))
            .collect();
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u16));
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut k = 0;
        for i in 0..procs {
            if !open[i] {
                continue;
            }
            if ready[k] {
                let mut chunk = [0u8; 65536];
                match readers[i].read(&mut chunk) {
                    Ok(0) | Err(_) => open[i] = false,
                    Ok(n) => bufs[i].extend_from_slice(&chunk[..n]),
                }
            }
            k += 1;
        }
        if let Some(pb) = progress {
            pb.set_position(started.elapsed().as_millis() as u64);
        }
    }
    let mut failed = None;
    for p in pids {
        match waitpid(p, None) {
            Ok(WaitStatus::Exited(_, 0)) => {}
            other => failed = Some(format!("worker {p} ended with {other:?}")),
        }
    }
    let mut hist = new_hist();
    let (mut hits, mut gets, mut errors) = (0u64, 0u64, 0u64);
    let mut per_process = Vec::new();
    let mut total_rate = 0.0;
    for b in &bufs {
        if let Some(msg) = b.strip_prefix(b"ERR") {
            return Err(format!("{}: {}", t.name(), String::from_utf8_lossy(msg)));
        }
        let tally = Tally::decode(b).ok_or_else(|| {
            failed
                .clone()
                .unwrap_or_else(|| "a worker sent no report".into())
        })?;
        let rate = tally.ops as f64 / (tally.elapsed_ns.max(1) as f64 / 1e9);
        per_process.push(rate);
        total_rate += rate;
        hits += tally.hits;
        gets += tally.gets;
        errors += tally.errors;
        hist.add(&tally.hist).map_err(|e| e.to_string())?;
    }
    if let Some(f) = failed {
        return Err(format!("{}: {f}", t.name()));
    }
    Ok(RunResult {
        target: t.name(),
        procs,
        ops_per_sec: total_rate,
        per_process,
        p50_ns: hist.value_at_quantile(0.5),
        p99_ns: hist.value_at_quantile(0.99),
        p999_ns: hist.value_at_quantile(0.999),
        hit_ratio: (gets > 0).then(|| hits as f64 / gets as f64),
        evictions: match (evictions_before, t.evictions()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        errors,
        runs: Vec::new(),
    })
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

/// Runs each (repetition, target, process count) in that order, so repetitions interleave;
/// every target is prepared afresh for each repetition (an LMDB file or a Redis server that
/// grew in one run does not slow the next) and released after it. Returns the median run
/// of each (target, count).
fn measure(
    list: &mut [Box<dyn Target>],
    w: &Workload,
    a: &BenchArgs,
    show: bool,
) -> Result<Vec<RunResult>, String> {
    let mut all: Vec<Vec<RunResult>> = Vec::new();
    for rep in 0..a.repeat {
        let mut k = 0;
        for t in list.iter_mut() {
            t.prepare(w).map_err(|e| format!("{}: {e}", t.name()))?;
            for &procs in &a.procs {
                let pb = show.then(|| {
                    let pb =
                        indicatif::ProgressBar::new((w.warmup + w.duration).as_millis() as u64);
                    pb.set_style(
                        indicatif::ProgressStyle::with_template("{msg:<28} [{bar:30}] {elapsed}")
                            .expect("valid template"),
                    );
                    pb.set_message(format!("{} × {procs} ({}/{})", t.name(), rep + 1, a.repeat));
                    pb
                });
                let r = run_one(&**t, w, procs, pb.as_ref());
                if let Some(pb) = pb {
                    pb.finish_and_clear();
                }
                if rep == 0 {
                    all.push(Vec::new());
                }
                all[k].push(r?);
                k += 1;
            }
            t.finish();
        }
    }
    Ok(all
        .into_iter()
        .map(|mut runs| {
            let rates: Vec<f64> = runs.iter().map(|r| r.ops_per_sec).collect();
            runs.sort_by(|x, y| x.ops_per_sec.total_cmp(&y.ops_per_sec));
            let mut median = runs.swap_remove(runs.len() / 2);
            median.runs = rates;
            median
        })
        .collect())
}

/// Runs the benchmark and builds its report.
pub fn run(mut a: BenchArgs, as_json: bool) -> Result<crate::Output, Error> {
    let bad = |m: String| Error::InvalidArgument(m);
    if a.procs.is_empty() {
        a.procs = vec![std::thread::available_parallelism().map_or(2, |n| n.get())];
    }
    if a.procs.iter().any(|&p| p == 0 || p > 1024) {
        return Err(bad("--procs must be between 1 and 1024".into()));
    }
    let w = Workload::new(&a).map_err(bad)?;
    let mut list: Vec<Box<dyn Target>> = vec![Box::new(targets::ShmemTarget {
        segment: format!("shmemcache-bench-{}", std::process::id()),
        shards: a.shards,
        checksums: a.checksums,
        cache: None,
    })];
    for name in &a.compare {
        if list.iter().any(|t| t.name() == name) {
            continue;
        }
        list.push(targets::make(name, &a).map_err(bad)?);
    }
    if a.repeat == 0 || a.repeat > 100 {
        return Err(bad("--repeat must be between 1 and 100".into()));
    }
    let show = !a.quiet && !as_json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let outcome = measure(&mut list, &w, &a, show);
    for t in list.iter_mut() {
        t.finish();
    }
    let results = outcome.map_err(|f| Error::InvalidArgument(format!("benchmark failed: {f}")))?;
    let report = report_json(&a, &w, &results);
    if let Some(dir) = &a.out {
        write_out(dir, &report, &results)?;
    }
    Ok(crate::Output {
        text: report_text(&a, &results),
        json: report,
        code: 0,
    })
}

fn ratios(results: &[RunResult]) -> Vec<(usize, &'static str, f64)> {
    let mut out = Vec::new();
    for s in results.iter().filter(|r| r.target == "shmemcache") {
        for o in results
            .iter()
            .filter(|r| r.target != "shmemcache" && r.procs == s.procs)
        {
            out.push((s.procs, o.target, s.ops_per_sec / o.ops_per_sec.max(1e-9)));
        }
    }
    out
}

fn report_json(a: &BenchArgs, w: &Workload, results: &[RunResult]) -> Value {
    let rows: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "target": r.target, "procs": r.procs, "ops_per_sec": r.ops_per_sec,
                "per_process_ops_per_sec": r.per_process, "p50_ns": r.p50_ns,
                "p99_ns": r.p99_ns, "p999_ns": r.p999_ns, "hit_ratio": r.hit_ratio,
                "evictions": r.evictions, "errors": r.errors, "runs_ops_per_sec": r.runs,
            })
        })
        .collect();
    let ratio_rows: Vec<Value> = ratios(results)
        .into_iter()
        .map(|(p, vs, x)| json!({ "procs": p, "versus": vs, "shmemcache_over": x }))
        .collect();
    json!({
        "machine": machine(),
        "workload": {
            "keys": w.keys.len(), "key_size": w.key_size, "value_size": w.value.len(),
            "get_percent": w.get_percent, "distribution": a.dist,
            "zipf_s": (a.dist == "zipf").then_some(a.zipf_s),
            "duration_ms": w.ops.is_none().then_some(w.duration.as_millis() as u64),
            "ops_per_process": w.ops, "warmup_ms": w.warmup.as_millis() as u64,
            "sample_every": w.sample_every, "shards": a.shards, "checksums": a.checksums, "procs": a.procs,
            "repeat": a.repeat,
        },
        "results": rows,
        "ratios": ratio_rows,
    })
}

fn report_text(a: &BenchArgs, results: &[RunResult]) -> String {
    let mut s = format!(
        "{:<11} {:>5} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9}\n",
        "target", "procs", "ops/s", "p50", "p99", "p99.9", "hit%", "evictions"
    );
    for r in results {
        s.push_str(&format!(
            "{:<11} {:>5} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9}\n",
            r.target,
            r.procs,
            fmt_rate(r.ops_per_sec),
            fmt_ns(r.p50_ns),
            fmt_ns(r.p99_ns),
            fmt_ns(r.p999_ns),
            r.hit_ratio
                .map_or("-".into(), |h| format!("{:.1}", h * 100.0)),
            r.evictions.map_or("-".into(), |e| e.to_string())
        ));
    }
    for r in results.iter().filter(|r| r.errors > 0) {
        s.push_str(&format!(
            "{} at {} processes: {} operations failed (e.g. LockTimeout)\n",
            r.target, r.procs, r.errors
        ));
    }
    if a.repeat > 1 {
        s.push_str(&format!(
            "(each row: the median of {} interleaved runs; every run's ops/s is in the JSON)\n",
            a.repeat
        ));
    }
    for (p, vs, x) in ratios(results) {
        s.push_str(&format!(
            "\nshmemcache / {vs} at {p} process{}: {x:.2}x",
            if p == 1 { "" } else { "es" }
        ));
    }
    if a.procs.len() == 1 && results.iter().all(|r| r.per_process.len() > 1) {
        s.push_str("\nper process ops/s:");
        for r in results {
            let each: Vec<String> = r.per_process.iter().map(|v| fmt_rate(*v)).collect();
            s.push_str(&format!("\n  {:<11} {}", r.target, each.join(" ")));
        }
    }
    s
}

fn write_out(dir: &std::path::Path, report: &Value, results: &[RunResult]) -> Result<(), Error> {
    let io = |op: &'static str| {
        move |e: std::io::Error| Error::Os {
            op,
            name: dir.display().to_string(),
            source: e,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create_dir_all"))?;
    let text = serde_json::to_string_pretty(report).map_err(|e| Error::Codec(e.to_string()))?;
    std::fs::write(dir.join("bench.json"), text).map_err(io("write bench.json"))?;
    if !chart::BUILT {
        eprintln!(
            "shmemcache: note: wrote bench.json only; bench.svg needs the `chart` feature \
             (cargo install shmemcache-cli --features chart)"
        );
        return Ok(());
    }
    chart::write_svg(&dir.join("bench.svg"), results).map_err(|e| Error::Os {
        op: "write bench.svg",
        name: dir.display().to_string(),
        source: std::io::Error::other(e),
    })
}
