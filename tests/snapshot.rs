//! Snapshots with real processes and real files: a restart after the segment is gone, a
//! Replace no reader sees half of, damaged, truncated and foreign files refused with the
//! cache unchanged, and a saver killed with `kill -9` mid-write.

mod common;

use common::{assert_exits_ok, kill9, spawn, wait_stopped, Name};
use shmemcache::fault::{self, FaultAction, FaultPoint};
use shmemcache::{Cache, Error, Expiry, LoadMode, Options};
use std::path::Path;
use std::time::Duration;

fn opts() -> Options {
    Options::new().capacity_bytes(8 << 20).shards(4)
}

/// Every (key, value) of a handle's namespace, sorted.
fn contents(c: &Cache) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<_> = c
        .keys()
        .map(|k| {
            let k = k.unwrap();
            let val = c.get(&k).unwrap().unwrap();
            (k, val)
        })
        .collect();
    v.sort();
    v
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn entries_come_back_after_the_segment_is_gone_with_their_remaining_ttls() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.snap");
    let name = Name::new("snap-restart");
    {
        let cache = opts().create(&name).unwrap();
        // Several processes write: the parent, and two children in two namespaces.
        cache.set(b"plain", b"forever").unwrap();
        cache
            .set_ttl(b"short", b"gone", Some(Duration::from_millis(150)))
            .unwrap();
        cache
            .set_ttl(b"hour", b"kept", Some(Duration::from_secs(3600)))
            .unwrap();
        for ns in ["users", "orders"] {
            let n = name.0.clone();
            assert_exits_ok(spawn(move || {
                let c = Cache::open_existing(&n).unwrap().namespace(ns).unwrap();
                for i in 0..100u32 {
                    c.set(&i.to_le_bytes(), format!("{ns}-{i}").as_bytes())
                        .unwrap();
                }
                0
            }));
        }
        let r = cache.save(&file).unwrap();
        assert_eq!(r.entries, 203);
        // A namespace alone.
        let users = cache.namespace("users").unwrap();
        assert_eq!(
            users.save(dir.path().join("users.snap")).unwrap().entries,
            100
        );
    }
    // "Reboot": every process gone, the segment unlinked.
    drop(name);
    std::thread::sleep(Duration::from_millis(200)); // `short` runs out meanwhile
    let name = Name::new("snap-restart-2");
    let cache = opts().create(&name).unwrap();
    let r = cache.load(&file, LoadMode::Merge).unwrap();
    assert_eq!((r.entries, r.skipped_expired), (202, 1));
    assert_eq!(
        cache.get(b"plain").unwrap().as_deref(),
        Some(&b"forever"[..])
    );
    assert_eq!(cache.get(b"short").unwrap(), None);
    match cache.ttl(b"hour").unwrap() {
        Some(Expiry::In(left)) => {
            assert!(left <= Duration::from_secs(3600) && left > Duration::from_secs(3590))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cache.ttl(b"plain").unwrap(), Some(Expiry::Never));
    let users = cache.namespace("users").unwrap();
    assert_eq!(users.len().unwrap(), 100);
    assert_eq!(
        users.get(&7u32.to_le_bytes()).unwrap().as_deref(),
        Some(&b"users-7"[..])
    );
    assert_eq!(cache.namespace("orders").unwrap().len().unwrap(), 100);
    // A namespace's snapshot loads into any namespace handle.
    let copy = cache.namespace("users-copy").unwrap();
    assert_eq!(
        copy.load(dir.path().join("users.snap"), LoadMode::Merge)
            .unwrap()
            .entries,
        100
    );
    assert_eq!(contents(&copy), contents(&users));
    assert!(cache.check().unwrap().is_healthy());
    assert_eq!(files_in(dir.path()), ["cache.snap", "users.snap"]);
}

#[test]
fn replace_flips_at_once_and_no_reader_sees_half_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v2.snap");
    let name = Name::new("snap-replace");
    let cache = opts().create(&name).unwrap();
    let cfg = cache.namespace("config").unwrap();
    // Version 2 is saved, then version 1 (plus an extra key) is what the cache holds.
    for i in 0..500u32 {
        cfg.set(&i.to_le_bytes(), b"2").unwrap();
    }
    cfg.save(&file).unwrap();
    for i in 0..500u32 {
        cfg.set(&i.to_le_bytes(), b"1").unwrap();
    }
    cfg.set(b"extra", b"1").unwrap();
    // A reader in another process: key 0 then key 499, over and over. Each read sees a
    // whole version: never a missing key, never version 2 then version 1.
    let (mut go_r, mut go_w) = common::pipe();
    let n = name.0.clone();
    let reader = spawn(move || {
        use std::io::Read;
        let c = Cache::open_existing(&n)
            .unwrap()
            .namespace("config")
            .unwrap();
        let mut b = [0u8; 1];
        go_r.read_exact(&mut b).unwrap();
        let mut seen_new = false;
        for _ in 0..200_000 {
            let first = c.get(&0u32.to_le_bytes()).unwrap();
            let last = c.get(&499u32.to_le_bytes()).unwrap();
            match (first.as_deref(), last.as_deref()) {
                (Some(b"1"), Some(b"1")) if !seen_new => {}
                (Some(b"1"), Some(b"2")) if !seen_new => seen_new = true,
                (Some(b"2"), Some(b"2")) => seen_new = true,
                _ => return 1,
            }
            if seen_new && c.get(b"extra").unwrap().is_some() {
                return 2;
            }
        }
        0
    });
    use std::io::Write;
    go_w.write_all(b"g").unwrap();
    let r = cfg.load(&file, LoadMode::Replace).unwrap();
    assert_eq!(r.entries, 500);
    assert_exits_ok(reader);
    assert_eq!(cfg.get(b"extra").unwrap(), None);
    assert_eq!(cfg.len().unwrap(), 500);
    assert!(contents(&cfg).iter().all(|(_, v)| v == b"2"));
}

#[test]
fn damaged_truncated_and_foreign_files_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.snap");
    let name = Name::new("snap-bad");
    let cache = opts().create(&name).unwrap();
    for i in 0..40u32 {
        cache.set(&i.to_le_bytes(), &[i as u8; 30]).unwrap();
    }
    cache.save(&good).unwrap();
    // What the cache holds when the bad files are offered: something else.
    cache.clear().unwrap();
    cache.set(b"current", b"state").unwrap();
    let before = contents(&cache);
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.snap");
    let mut refused = 0;
    let mut offer = |b: &[u8], what: &str| {
        std::fs::write(&bad, b).unwrap();
        for mode in [LoadMode::Merge, LoadMode::Replace] {
            match cache.load(&bad, mode) {
                Err(Error::BadSnapshot { reason, .. }) => assert!(!reason.is_empty()),
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(contents(&cache), before, "{what}");
        }
        refused += 1;
    };
    // Byte flips all over the file.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = bytes.clone();
        let at = (x as usize) % b.len();
        b[at] ^= 1 << ((x >> 60) % 8);
        offer(&b, &format!("flip at {at}"));
    }
    for len in [
        0,
        7,
        31,
        32,
        33,
        bytes.len() / 2,
        bytes.len() - 17,
        bytes.len() - 1,
    ] {
        offer(&bytes[..len], &format!("truncated to {len}"));
    }
    offer(b"this is not a snapshot at all, just some text", "foreign");
    let mut other_version = bytes.clone();
    other_version[8] = 9;
    offer(&other_version, "version 9");
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"trailing");
    offer(&longer, "trailing bytes");
    assert_eq!(refused, 300 + 8 + 3);
    // A missing file is an I/O error, also changing nothing.
    assert!(matches!(
        cache.load(dir.path().join("missing.snap"), LoadMode::Merge),
        Err(Error::Io { .. })
    ));
    // The good file still loads.
    assert_eq!(cache.load(&good, LoadMode::Merge).unwrap().entries, 40);
}

#[test]
fn a_saver_killed_mid_write_leaves_the_old_snapshot_and_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.snap");
    let name = Name::new("snap-crash");
    let cache = opts().create(&name).unwrap();
    for i in 0..2000u32 {
        cache.set(&i.to_le_bytes(), b"old").unwrap();
    }
    cache.save(&file).unwrap();
    let old = std::fs::read(&file).unwrap();
    for i in 0..2000u32 {
        cache.set(&i.to_le_bytes(), b"new value, longer").unwrap();
    }
    for round in 0..3 {
        let (n, f) = (name.0.clone(), file.clone());
        let kid = spawn(move || {
            let c = Cache::open_existing(&n).unwrap();
            // Stops after the first batch is written to the unnamed file.
            fault::arm(FaultPoint::SnapshotMidWrite, FaultAction::Stop);
            c.save(&f).map(|_| 0).unwrap_or(3)
        });
        wait_stopped(kid);
        kill9(kid);
        assert_eq!(std::fs::read(&file).unwrap(), old, "round {round}");
        assert_eq!(files_in(dir.path()), ["cache.snap"], "round {round}");
    }
    // The old snapshot is intact and loadable; a completed save replaces it.
    let other = Name::new("snap-crash-2");
    let fresh = opts().create(&other).unwrap();
    assert_eq!(fresh.load(&file, LoadMode::Merge).unwrap().entries, 2000);
    assert_eq!(
        fresh.get(&5u32.to_le_bytes()).unwrap().as_deref(),
        Some(&b"old"[..])
    );
    cache.save(&file).unwrap();
    fresh.load(&file, LoadMode::Merge).unwrap();
    assert_eq!(
        fresh.get(&5u32.to_le_bytes()).unwrap().as_deref(),
        Some(&b"new value, longer"[..])
    );
    assert_eq!(files_in(dir.path()), ["cache.snap"]);
}
