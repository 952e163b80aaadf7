//! The `shmemcache` binary: every subcommand, text and `--json`, and its error paths
//! (one line on stderr, non-zero exit, no panic); `bench` smoke runs against the floor,
//! LMDB and, when `redis-server` is installed, a Redis the test starts on a Unix socket.

use assert_cmd::Command;
use serde_json::Value;
use shmemcache::Cache;
use std::time::Duration;

struct Name(String);

impl Name {
    fn new(tag: &str) -> Name {
        Name(format!("shmc-cli-{}-{tag}", std::process::id()))
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = Cache::unlink(&self.0);
    }
}

fn cli() -> Command {
    Command::cargo_bin("shmemcache").expect("binary built")
}

/// Runs with `--json`, expects exit 0, returns the parsed document.
fn json(args: &[&str]) -> Value {
    let out = cli().arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn text(args: &[&str]) -> String {
    let out = cli().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Expects `code`, a single line on stderr starting with "shmemcache:", and no panic.
fn fails(args: &[&str], code: i32) -> String {
    let out = cli().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    if code == 1 || !err.starts_with("error:") {
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    err
}

#[test]
fn create_set_get_ttl_incr_del_keys_clear_unlink() {
    let n = Name::new("basic");
    let name = n.0.as_str();
    let created = json(&[
        "create",
        name,
        "--capacity",
        "2MiB",
        "--shards",
        "2",
        "--ttl",
        "5m",
    ]);
    assert_eq!(created["shards"], 2);
    let said = text(&["set", name, "user:1", "alice"]);
    assert!(
        said.starts_with("stored user:1 (5 bytes, expires in 4m59"),
        "{said}"
    );
    assert!(text(&["--quiet", "set", name, "user:1", "alice"]).is_empty());
    assert_eq!(text(&["get", name, "user:1"]), "alice\n");
    assert_eq!(json(&["get", name, "user:1"])["value"], "alice");
    let ttl = json(&["ttl", name, "user:1"])["ttl_ms"].as_u64().unwrap();
    assert!(ttl > 290_000 && ttl <= 300_000, "{ttl}");
    // Human-readable, and readable back by the duration parser.
    let human = text(&["ttl", name, "user:1"]);
    assert!(human.starts_with("4m5"), "{human}");
    assert!(
        shmemcache_cli::units::parse_duration(human.trim()).is_ok(),
        "{human}"
    );
    text(&["set", name, "tok", "x", "--ttl", "1.5m"]);
    let tok = json(&["ttl", name, "tok"])["ttl_ms"].as_u64().unwrap();
    assert!((80_000..=90_000).contains(&tok), "1.5m gave {tok} ms");
    text(&["set", name, "forever", "x", "--ttl", "never"]);
    assert_eq!(text(&["ttl", name, "forever"]), "never\n");
    assert_eq!(text(&["del", name, "forever"]), "deleted forever\n");
    assert_eq!(json(&["incr", name, "n", "5"])["value"], 5);
    assert_eq!(text(&["incr", name, "n", "-2"]), "3\n");
    let keys = json(&["keys", name, "--prefix", "user:"]);
    assert_eq!(keys["keys"], serde_json::json!(["user:1"]));
    assert_eq!(
        json(&["keys", name, "--limit", "2"])["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(json(&["del", name, "tok"])["deleted"], true);
    fails(&["del", name, "tok"], 1);
    fails(&["get", name, "tok"], 1);
    fails(&["ttl", name, "tok"], 1);
    assert_eq!(json(&["clear", name])["cleared"], 2);
    assert_eq!(text(&["unlink", name]), format!("unlinked {name}\n"));
    // A missing segment is "not found", like a missing key.
    fails(&["info", name], 1);
    fails(&["get", name, "k"], 1);
}

#[test]
fn binary_keys_print_escaped_and_can_be_addressed() {
    let n = Name::new("binary");
    let name = n.0.as_str();
    text(&[
        "create",
        name,
        "--capacity",
        "1MiB",
        "--shards",
        "1",
        "--ttl",
        "never",
    ]);
    let cache = Cache::open_existing(name).unwrap();
    cache.set(b"memo\0app::f\0\x07k", b"v").unwrap();
    cache.set(b"back\\slash", b"w").unwrap();
    let mut listed: Vec<String> = text(&["keys", name]).lines().map(String::from).collect();
    listed.sort();
    assert_eq!(listed, ["back\\\\slash", "memo\\0app::f\\0\\x07k"]);
    // Every listed key reads back through get, ttl and del.
    for k in &listed {
        assert!(!k.contains('\0'));
        text(&["get", name, k]);
        assert_eq!(text(&["ttl", name, k]), "never\n");
    }
    assert_eq!(text(&["get", name, "memo\\x00app::f\\0\\x07k"]), "v\n");
    // --hex both ways.
    let hex: Vec<String> = text(&["--hex", "keys", name, "--prefix", "6d656d6f"])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(hex, ["6d656d6f006170703a3a6600076b"]);
    assert_eq!(text(&["--hex", "get", name, &hex[0]]), "v\n");
    text(&["--hex", "del", name, &hex[0]]);
    assert_eq!(cache.get(b"memo\0app::f\0\x07k").unwrap(), None);
    let e = fails(&["get", name, "bad\\q"], 2);
    assert!(e.contains("unknown escape"), "{e}");
    let e = fails(&["--hex", "get", name, "abc"], 2);
    assert!(e.contains("odd number"), "{e}");
}

#[test]
fn sizes_and_durations_take_decimals_tib_and_never() {
    let n = Name::new("units");
    let name = n.0.as_str();
    let v = json(&[
        "create",
        name,
        "--capacity",
        "1.5MiB",
        "--shards",
        "1",
        "--ttl",
        "1.5s",
    ]);
    assert_eq!(v["shards"], 1);
    assert_eq!(json(&["info", name])["default_ttl_ms"], 1500);
    // The capacity is the shards' budget: laid out within it, wasting little.
    let cap = json(&["info", name])["capacity_bytes"].as_u64().unwrap();
    assert!(
        ((3 << 19) * 99 / 100..=3 << 19).contains(&cap),
        "1.5MiB asked, {cap} given"
    );
}

#[test]
fn info_stats_check_repair_and_list() {
    let n = Name::new("inspect");
    let name = n.0.as_str();
    text(&["create", name, "--capacity", "1MiB", "--shards", "4"]);
    text(&["set", name, "a", "1"]);
    text(&["get", name, "a"]);
    let info = json(&["info", name]);
    assert_eq!(info["shards"], 4);
    assert_eq!(info["per_shard"].as_array().unwrap().len(), 4);
    assert_eq!(info["total"]["entries"], 1);
    assert_eq!(info["coordination"]["in_use"], 0);
    assert!(text(&["info", name]).contains("layout version:"));
    let stats = json(&["stats", name]);
    assert_eq!(stats["total"]["hits"], 1);
    assert!(text(&["stats", name]).contains("hits 1"));
    // Memoized calls are counted apart from the plain gets.
    let cache = Cache::open_existing(name).unwrap();
    let m: shmemcache::Memo<u64> = shmemcache::Memo::new(&cache, "cli::memo");
    assert_eq!(m.call(&(1u8,), || 5).unwrap(), 5);
    assert_eq!(m.call(&(1u8,), || 5).unwrap(), 5);
    let stats = json(&["stats", name]);
    assert_eq!(stats["total"]["hits"], 1);
    assert_eq!(stats["memo"]["computed"], 1);
    assert_eq!(stats["memo"]["hits"], 1);
    assert!(text(&["stats", name]).contains("memo: hits 1"));
    assert_eq!(json(&["check", name])["healthy"], true);
    assert_eq!(text(&["check", name]), "ok\n");
    assert_eq!(
        json(&["repair", name])["kept"],
        2,
        "the plain entry and the memo entry"
    );
    let list = json(&["list"]);
    let found = list["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .expect("listed");
    assert_eq!(found["mode"], "600");
    assert_eq!(found["compatible"], true);
    assert!(text(&["list"]).contains(name));
}

#[test]
fn stats_watch_reports_rates() {
    let n = Name::new("watch");
    let name = n.0.clone();
    text(&["create", &name, "--capacity", "1MiB", "--shards", "1"]);
    let writer = {
        let name = name.clone();
        std::thread::spawn(move || {
            let c = Cache::open_existing(&name).unwrap();
            c.set(b"k", b"v").unwrap();
            let until = std::time::Instant::now() + Duration::from_millis(600);
            while std::time::Instant::now() < until {
                c.get(b"k").unwrap();
            }
        })
    };
    let out = cli()
        .args(["--json", "stats", &name, "--watch", "200ms", "--count", "2"])
        .output()
        .unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["lookups_per_sec"].as_f64().unwrap() > 0.0);
    let human = text(&["stats", &name, "--watch", "100ms", "--count", "1"]);
    assert!(human.starts_with(&format!("{:>12}", "ops/s")), "{human}");
}

#[test]
fn errors_are_one_clear_line() {
    let missing = Name::new("missing");
    let e = fails(&["info", &missing.0], 1);
    assert!(e.contains("does not exist"), "{e}");
    let e = fails(&["stats", &missing.0, "--count", "3"], 2);
    assert!(e.contains("--watch"), "--count needs --watch: {e}");
    let e = fails(&["get", "../etc", "k"], 2);
    assert!(e.contains("invalid segment name"), "{e}");
    let e = fails(&["create", "x", "--capacity", "12 parsecs"], 2);
    assert!(e.contains("bad size"), "{e}");
    let e = fails(&["create", "x", "--ttl", "0s"], 2);
    assert!(e.contains("zero"), "{e}");
    let e = fails(&["create", "x", "--mode", "999"], 2);
    assert!(e.contains("bad mode"), "{e}");
    fails(&["bench", "--compare", "mongodb", "--duration", "1s"], 2);
    fails(&["bench", "--mix", "120"], 2);
    fails(&["bench", "--keys", "0"], 2);
    fails(&["bench", "--repeat", "0"], 2);
    fails(&["no-such-command"], 2);
    let out = cli().args(["--json", "info", &missing.0]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("does not exist"));
    // A segment of another user: refused with a permission error, not a crash.
    let n = Name::new("foreign");
    text(&["create", &n.0, "--capacity", "1MiB", "--shards", "1"]);
    let path = format!("/dev/shm/{}", n.0);
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(path.as_str(), Some(65534.into()), None).unwrap();
        let e = fails(&["info", &n.0], 2);
        assert!(e.contains("permission denied"), "{e}");
    }
}

fn bench_json(compare: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = cli()
        .args([
            "--json",
            "bench",
            "--procs",
            "1,2",
            "--keys",
            "2000",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--repeat",
            "2",
            "--compare",
            compare,
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("bench.json")).unwrap())
            .unwrap();
    assert_eq!(saved["results"], v["results"]);
    if cfg!(feature = "chart") {
        let svg = std::fs::read_to_string(dir.path().join("bench.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("shmemcache"));
    }
    v
}

fn check_results(v: &Value, targets: &[&str]) {
    for key in ["machine", "workload", "results", "ratios"] {
        assert!(!v[key].is_null(), "missing {key}");
    }
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), targets.len() * 2, "{v}");
    for r in results {
        assert!(targets.contains(&r["target"].as_str().unwrap()));
        for f in ["ops_per_sec", "p50_ns", "p99_ns", "p999_ns", "hit_ratio"] {
            assert!(r[f].as_f64().unwrap() > 0.0, "{f} in {r}");
        }
        let runs = r["runs_ops_per_sec"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "one entry per repetition");
        let per = r["per_process_ops_per_sec"].as_array().unwrap();
        assert_eq!(per.len() as u64, r["procs"].as_u64().unwrap());
        assert!(per.iter().all(|p| p.as_f64().unwrap() > 0.0));
    }
    let ratios = v["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), (targets.len() - 1) * 2);
    assert!(ratios
        .iter()
        .all(|r| r["shmemcache_over"].as_f64().unwrap() > 0.0));
    let shm = results
        .iter()
        .find(|r| r["target"] == "shmemcache")
        .unwrap();
    assert!(shm["evictions"].is_u64());
}

#[test]
#[cfg(feature = "lmdb")]
fn bench_smoke_against_floor_and_lmdb() {
    let v = bench_json("floor,lmdb");
    check_results(&v, &["shmemcache", "floor", "lmdb"]);
}

#[test]
fn bench_smoke_against_floor_and_lru() {
    let v = bench_json("floor,lru");
    check_results(&v, &["shmemcache", "floor", "lru"]);
}

#[test]
#[cfg(feature = "redis")]
fn bench_smoke_against_a_redis_server_it_starts() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        // .ci/run installs redis-server, so in CI its absence is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is missing in CI: .ci/run should have installed it"
        );
        eprintln!("redis-server not installed: skipping the Redis comparison");
        return;
    }
    let v = bench_json("redis");
    check_results(&v, &["shmemcache", "redis"]);
}

#[test]
fn a_damaged_header_names_the_way_out_and_repair_force_takes_it() {
    let n = Name::new("hdr");
    let name = n.0.as_str();
    text(&["create", name, "--capacity", "1MiB", "--shards", "1"]);
    text(&["set", name, "k", "v"]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xee; 4], 64).unwrap(); // hash_seed
    let e = fails(&["get", name, "k"], 2);
    assert!(
        e.contains("hash_seed") && e.contains("repair --force"),
        "{e}"
    );
    let out = cli().args(["repair", "--force", name]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("hash_seed"));
    assert_eq!(text(&["get", name, "k"]), "v\n");
}

#[test]
fn bench_measures_a_segment_with_checksums() {
    let v = json(&[
        "bench",
        "--procs",
        "1",
        "--keys",
        "500",
        "--duration",
        "200ms",
        "--warmup",
        "50ms",
        "--checksums",
        "--quiet",
    ]);
    assert_eq!(v["workload"]["checksums"], true);
    assert!(v["results"][0]["ops_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn ns_list_stats_and_clear() {
    let n = Name::new("ns");
    let name = n.0.as_str();
    text(&["create", name, "--capacity", "1MiB", "--shards", "2"]);
    let c = shmemcache::Cache::open_existing(name).unwrap();
    let orders = c.namespace("orders").unwrap();
    let lines = c.namespace("lines").unwrap();
    lines.depends_on(&orders).unwrap();
    orders.set(b"1", b"a").unwrap();
    orders.set(b"2", b"b").unwrap();
    lines.set(b"1", b"x").unwrap();
    c.set(b"root", b"r").unwrap();
    let v = json(&["ns", "list", name]);
    let names: Vec<&str> = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["", "orders", "lines"]);
    assert_eq!(v["namespaces"][2]["depends_on"][0], "orders");
    let s = json(&["ns", "stats", name, "orders"]);
    assert_eq!(
        (s["entries"].as_u64(), s["sets"].as_u64()),
        (Some(2), Some(2))
    );
    // A plain clear of one namespace; then one reaching its dependents.
    json(&["ns", "clear", name, "lines"]);
    assert_eq!(lines.get(b"1").unwrap(), None);
    assert_eq!(orders.len().unwrap(), 2);
    lines.set(b"1", b"y").unwrap();
    let v = json(&["ns", "clear", name, "orders", "--dependents"]);
    assert_eq!(v["cleared_namespaces"], 2);
    assert_eq!((orders.len().unwrap(), lines.len().unwrap()), (0, 0));
    assert_eq!(c.get(b"root").unwrap().as_deref(), Some(&b"r"[..]));
    // A namespace that does not exist is an error, not created by a typo.
    assert!(fails(&["ns", "stats", name, "ordrs"], 2).contains("no namespace"));
    assert_eq!(c.namespaces().len(), 3);
}

#[test]
fn save_and_load_a_snapshot() {
    let (a, b) = (Name::new("save-a"), Name::new("save-b"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.snap");
    let f = file.to_str().unwrap();
    text(&["create", &a.0, "--capacity", "1MiB", "--shards", "2"]);
    text(&["create", &b.0, "--capacity", "1MiB", "--shards", "2"]);
    let ca = Cache::open_existing(&a.0).unwrap();
    ca.set(b"k1", b"v1").unwrap();
    ca.namespace("users").unwrap().set(b"u", b"alice").unwrap();
    let v = json(&["save", &a.0, f]);
    assert_eq!(v["entries"], 2);
    let v = json(&["load", &b.0, f]);
    assert_eq!(
        (v["entries"].as_u64(), v["skipped_expired"].as_u64()),
        (Some(2), Some(0))
    );
    let cb = Cache::open_existing(&b.0).unwrap();
    assert_eq!(cb.get(b"k1").unwrap().as_deref(), Some(&b"v1"[..]));
    let users = cb.namespace("users").unwrap();
    assert_eq!(users.get(b"u").unwrap().as_deref(), Some(&b"alice"[..]));
    // Replace: what the file does not hold is gone.
    cb.set(b"extra", b"x").unwrap();
    json(&["load", &b.0, f, "--replace"]);
    assert_eq!(cb.get(b"extra").unwrap(), None);
    assert_eq!(cb.get(b"k1").unwrap().as_deref(), Some(&b"v1"[..]));
    // A damaged file: a clear error, exit 2.
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    assert!(fails(&["load", &b.0, f], 2).contains("cannot be loaded"));
}

#[test]
fn create_with_exact_recency_is_reported() {
    let n = Name::new("recency");
    let name = n.0.as_str();
    json(&["create", name, "--capacity", "1MiB", "--recency", "exact"]);
    assert_eq!(json(&["info", name])["recency"], "exact");
    let m = Name::new("recency-lazy");
    json(&["create", &m.0, "--capacity", "1MiB"]);
    assert_eq!(json(&["info", &m.0])["recency"], "lazy");
    fails(&["create", "x-recency-bad", "--recency", "sometimes"], 2);
}
