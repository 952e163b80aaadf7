//! Persistent namespaces with real processes and files: several processes write, autosync
//! saves, every process exits and the segment is unlinked (a reboot), and a new process
//! gets the entries back with their remaining TTLs; and cacheman's hooks.

mod common;

use common::{assert_exits_ok, spawn, Name};
use shmemcache::{AutoSync, Cache, Expiry, Item, LoadMode, Options, Persistence};
use std::path::Path;
use std::time::{Duration, Instant};

fn opts() -> Options {
    Options::new().capacity_bytes(4 << 20).shards(4)
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// How many entries the snapshot at `file` holds now (0 if none).
fn saved_entries(file: &Path) -> u64 {
    let probe = Name::new(&format!("probe-{}", std::process::id()));
    let c = opts().create(&probe).unwrap();
    c.load(file, LoadMode::Merge).map_or(0, |r| r.entries)
}

#[test]
fn autosync_saves_and_a_restart_after_the_segment_is_gone_warm_starts() {
    let dir = tempfile::tempdir().unwrap();
    let p = || {
        Persistence::new(dir.path()).autosync(
            AutoSync::new()
                .thresholds(&[(s(1), 2), (s(5), 10)])
                .interval(Duration::from_millis(50)),
        )
    };
    let name = Name::new("persist-restart");
    let file = p().file_of("sessions");
    {
        let cache = opts().create(&name).unwrap();
        let sessions = cache.persistent_namespace("sessions", p()).unwrap();
        sessions.set(b"parent", b"p").unwrap();
        // Two more processes write; each one's edits count in the segment.
        for kid in 0..2u32 {
            let (n, d) = (name.0.clone(), dir.path().to_path_buf());
            assert_exits_ok(spawn(move || {
                let c = Cache::open_existing(&n).unwrap();
                let rule = AutoSync::new()
                    .thresholds(&[(s(1), 2), (s(5), 10)])
                    .interval(Duration::from_millis(50));
                let ns = c
                    .persistent_namespace("sessions", Persistence::new(d.clone()).autosync(rule))
                    .unwrap();
                for i in 0..50u32 {
                    let key = format!("{kid}-{i}");
                    ns.set_ttl(key.as_bytes(), b"v", Some(s(3600))).unwrap();
                }
                // Stay until a save holds this process's edits (autosync or the timer).
                let file = Persistence::new(d).file_of("sessions");
                let want = 1 + 50 * (u64::from(kid) + 1);
                let t = Instant::now();
                while saved_entries(&file) < want && t.elapsed() < s(10) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                0
            }));
        }
        // The timer saves the parent's view too: wait for the file to hold all 101.
        let t = Instant::now();
        while saved_entries(&file) < 101 && t.elapsed() < s(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(saved_entries(&file), 101);
    }
    // "Reboot": every handle gone, the segment unlinked.
    drop(name);
    let name = Name::new("persist-restart-2");
    let cache = opts().create(&name).unwrap();
    let sessions = cache.persistent_namespace("sessions", p()).unwrap();
    assert_eq!(sessions.len().unwrap(), 101);
    assert_eq!(sessions.get(b"parent").unwrap().as_deref(), Some(&b"p"[..]));
    match sessions.ttl(b"1-7").unwrap() {
        Some(Expiry::In(left)) => assert!(left > s(3500) && left <= s(3600), "{left:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sessions.ttl(b"parent").unwrap(), Some(Expiry::Never));
    // A second process opening it does not load again (the namespace exists).
    sessions.set(b"after", b"x").unwrap();
    let n = name.0.clone();
    let d = dir.path().to_path_buf();
    assert_exits_ok(spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        let ns = c
            .persistent_namespace("sessions", Persistence::new(d))
            .unwrap();
        i32::from(ns.get(b"after").unwrap().is_none())
    }));
}

#[test]
fn hooks_validate_build_and_transform_copies() {
    let dir = tempfile::tempdir().unwrap();
    let item = |k: &str, v: &str| Item {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        ttl: None,
    };
    let base = Persistence::new(dir.path()).autosync(None);
    // Nothing saved yet: the builder runs.
    let name = Name::new("persist-hooks");
    let cache = opts().create(&name).unwrap();
    let prices = cache
        .persistent_namespace(
            "prices",
            base.clone().builder(move |ns| vec![item("built", ns)]),
        )
        .unwrap();
    assert_eq!(
        prices.get(b"built").unwrap().as_deref(),
        Some(&b"prices"[..])
    );
    prices.set(b"apple", b"3").unwrap();
    // A pre-save hook changes what is written, not what the cache holds.
    let saving = base.clone().pre_save(|_, items| {
        for it in items.iter_mut() {
            it.value = b"edited".to_vec();
        }
    });
    let h = cache.persistent_namespace("prices", saving).unwrap();
    assert_eq!(h.save_now().unwrap().entries, 2);
    assert_eq!(prices.get(b"apple").unwrap().as_deref(), Some(&b"3"[..]));
    drop((prices, h, cache, name));

    // Restart with a validator that rejects: the builder runs instead of the load.
    let name = Name::new("persist-hooks-2");
    let cache = opts().create(&name).unwrap();
    let prices = cache
        .persistent_namespace(
            "prices",
            base.clone()
                .validator(|_, items| items.len() > 5)
                .builder(|_| {
                    vec![Item {
                        key: b"rebuilt".to_vec(),
                        value: b"1".to_vec(),
                        ttl: None,
                    }]
                }),
        )
        .unwrap();
    assert_eq!(prices.len().unwrap(), 1);
    assert!(prices.get(b"rebuilt").unwrap().is_some());
    drop((prices, cache, name));

    // A validator that panics rejects too.
    let name = Name::new("persist-hooks-3");
    let cache = opts().create(&name).unwrap();
    let prices = cache
        .persistent_namespace(
            "prices",
            base.clone().validator(|_, _| panic!("validator bug")),
        )
        .unwrap();
    assert_eq!(prices.len().unwrap(), 0);
    drop((prices, cache, name));

    // Accepted: the saved (pre-save edited) entries come back, through post-load.
    let name = Name::new("persist-hooks-4");
    let cache = opts().create(&name).unwrap();
    let prices = cache
        .persistent_namespace(
            "prices",
            base.clone()
                .validator(|_, items| items.len() == 2)
                .post_load(|_, items| {
                    items.push(Item {
                        key: b"post".to_vec(),
                        value: b"1".to_vec(),
                        ttl: None,
                    })
                }),
        )
        .unwrap();
    assert_eq!(
        prices.get(b"apple").unwrap().as_deref(),
        Some(&b"edited"[..])
    );
    assert!(prices.get(b"post").unwrap().is_some());
    // A loader hook replaces the file.
    let name2 = Name::new("persist-hooks-5");
    let other = opts().create(&name2).unwrap();
    let loaded = other
        .persistent_namespace(
            "prices",
            base.clone().loader(|ns| {
                Some(vec![Item {
                    key: b"from-loader".to_vec(),
                    value: ns.as_bytes().to_vec(),
                    ttl: Some(s(60)),
                }])
            }),
        )
        .unwrap();
    assert_eq!(loaded.len().unwrap(), 1);
    assert!(matches!(
        loaded.ttl(b"from-loader").unwrap(),
        Some(Expiry::In(_))
    ));
    // Deleting the saved file reaches dependents' files; the entries stay in memory.
    let deps = cache.persistent_namespace("derived", base.clone()).unwrap();
    deps.depends_on(&prices).unwrap();
    deps.set(b"d", b"1").unwrap();
    deps.save_now().unwrap();
    assert!(base.file_of("derived").exists());
    assert_eq!(prices.delete_saved().unwrap(), 2);
    assert!(!base.file_of("prices").exists() && !base.file_of("derived").exists());
    assert!(prices.get(b"apple").unwrap().is_some());
    // Rebuild: invalidates it and its dependents, then builds.
    let rebuilt = cache
        .persistent_namespace(
            "prices",
            base.clone().builder(|_| {
                vec![Item {
                    key: b"fresh".to_vec(),
                    value: b"1".to_vec(),
                    ttl: None,
                }]
            }),
        )
        .unwrap();
    assert_eq!(rebuilt.rebuild().unwrap(), 2);
    assert_eq!(deps.get(b"d").unwrap(), None);
    assert_eq!(rebuilt.get(b"apple").unwrap(), None);
    assert!(rebuilt.get(b"fresh").unwrap().is_some());
}

/// A saver killed with `kill -9` while it holds the machine-wide save: the next process's
/// autosync takes the save over, and the file holds its edits.
#[test]
fn a_saver_that_dies_mid_save_is_taken_over() {
    use common::{kill9, wait_stopped};
    use shmemcache::fault::{self, FaultAction, FaultPoint};
    let dir = tempfile::tempdir().unwrap();
    let rule = || AutoSync::new().thresholds(&[(s(1), 2)]);
    let name = Name::new("persist-takeover");
    let cache = opts().create(&name).unwrap();
    let file = Persistence::new(dir.path()).file_of("jobs");
    let (n, d) = (name.0.clone(), dir.path().to_path_buf());
    let saver = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        let ns = c
            .persistent_namespace("jobs", Persistence::new(d).autosync(rule()))
            .unwrap();
        // The autosync thread stops the whole process inside its save.
        fault::arm(FaultPoint::SnapshotMidWrite, FaultAction::Stop);
        ns.set(b"a", b"1").unwrap();
        ns.set(b"b", b"2").unwrap(); // two edits in a second: a save starts
        std::thread::sleep(s(10));
        0
    });
    wait_stopped(saver);
    kill9(saver);
    assert!(!file.exists(), "the killed save left no file");
    // This process edits: its autosync takes over the save the dead one held.
    let jobs = cache
        .persistent_namespace("jobs", Persistence::new(dir.path()).autosync(rule()))
        .unwrap();
    jobs.set(b"c", b"3").unwrap();
    jobs.set(b"d", b"4").unwrap();
    let t = Instant::now();
    while saved_entries(&file) < 4 && t.elapsed() < s(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(saved_entries(&file), 4);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["jobs.snap"]);
}

/// `Options::persist(dir)`: the default namespace and every namespace opened through the
/// handle persist, and a new segment warm-starts from them.
#[test]
fn options_persist_covers_the_default_namespace_and_every_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let name = Name::new("persist-options");
    {
        let cache = opts().persist(dir.path()).create(&name).unwrap();
        cache.set(b"root-key", b"r").unwrap();
        let users = cache.namespace("users").unwrap();
        users.set_ttl(b"alice", b"1", Some(s(600))).unwrap();
        cache.save_now().unwrap();
        users.save_now().unwrap();
        assert!(Persistence::new(dir.path()).file_of("").exists());
    }
    drop(name);
    let name = Name::new("persist-options-2");
    let cache = opts().persist(dir.path()).create(&name).unwrap();
    assert_eq!(cache.get(b"root-key").unwrap().as_deref(), Some(&b"r"[..]));
    assert_eq!(cache.len().unwrap(), 1);
    let users = cache.namespace("users").unwrap();
    assert_eq!(users.get(b"alice").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(matches!(users.ttl(b"alice").unwrap(), Some(Expiry::In(_))));
    // A joiner does not load again: it sees what is there.
    cache.set(b"root-key", b"changed").unwrap();
    let joined = opts().persist(dir.path()).open(&name).unwrap();
    assert_eq!(
        joined.get(b"root-key").unwrap().as_deref(),
        Some(&b"changed"[..])
    );
}
