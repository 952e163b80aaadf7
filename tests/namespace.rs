//! Namespaces with real processes: isolation, a clear seen at once by another process, the
//! generation race of a computation that straddles an invalidation, and dependent
//! invalidation (a cycle, a three-level chain, and cacheman's edge/root scenario).

mod common;

use common::{assert_exits_ok, pipe, spawn, Name};
use shmemcache::{Cache, ComputeOptions, Options};
use std::io::{Read, Write};

fn opts() -> Options {
    Options::new().capacity_bytes(4 << 20).shards(4)
}

fn wait_byte(r: &mut std::fs::File) {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).expect("pipe");
}

fn sorted_keys(c: &Cache) -> Vec<Vec<u8>> {
    let mut k: Vec<_> = c.keys().map(|k| k.unwrap()).collect();
    k.sort();
    k
}

#[test]
fn the_same_key_in_two_namespaces_names_two_entries() {
    let name = Name::new("ns-iso");
    let cache = opts().create(&name).unwrap();
    let a = cache.namespace("a").unwrap();
    let b = cache.namespace("b").unwrap();
    cache.set(b"k", b"root").unwrap();
    a.set(b"k", b"in a").unwrap();
    b.set(b"k", b"in b").unwrap();
    b.set(b"only-b", b"x").unwrap();
    assert_eq!(cache.get(b"k").unwrap().as_deref(), Some(&b"root"[..]));
    assert_eq!(a.get(b"k").unwrap().as_deref(), Some(&b"in a"[..]));
    assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"in b"[..]));
    assert_eq!(a.get(b"only-b").unwrap(), None);
    assert_eq!(
        (cache.len().unwrap(), a.len().unwrap(), b.len().unwrap()),
        (1, 1, 2)
    );
    assert_eq!(sorted_keys(&cache), vec![b"k".to_vec()]);
    assert_eq!(sorted_keys(&b), vec![b"k".to_vec(), b"only-b".to_vec()]);
    assert_eq!(a.namespace_name().as_deref(), Some("a"));
    assert_eq!(cache.namespace_name(), None);
    let names: Vec<String> = cache.namespaces().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["", "a", "b"]);
    // Typed values and deletes stay inside too.
    a.typed::<str, u32>().set("n", &7).unwrap();
    assert_eq!(b.typed::<str, u32>().get("n").unwrap(), None);
    assert!(a.delete(b"k").unwrap());
    assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"in b"[..]));
    // Another process naming the namespace gets the same one.
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        let b = c.namespace("b").unwrap();
        let ok = b.get(b"k").unwrap().as_deref() == Some(&b"in b"[..])
            && c.namespace("a").unwrap().get(b"k").unwrap().is_none();
        b.set(b"from-kid", b"1").unwrap();
        i32::from(!ok)
    });
    assert_exits_ok(kid);
    assert_eq!(b.get(b"from-kid").unwrap().as_deref(), Some(&b"1"[..]));
    let s = b.namespace_stats().unwrap();
    assert_eq!((s.name.as_str(), s.entries, s.sets), ("b", 3, 3));
    assert!(s.hits >= 1 && s.misses >= 1, "{s:?}");
    // `stats()` on a namespace handle is confined to it where it can be.
    let t = b.stats().unwrap().total;
    assert_eq!(
        (t.entries, t.sets, t.hits, t.misses),
        (3, 3, s.hits, s.misses)
    );
    assert_eq!(cache.stats().unwrap().total.entries, 5); // root, a's typed n, b's three
    assert!(cache.check().unwrap().is_healthy());
}

#[test]
fn a_clear_is_seen_at_once_by_another_process() {
    let name = Name::new("ns-clear");
    let cache = opts().create(&name).unwrap();
    let orders = cache.namespace("orders").unwrap();
    let keep = cache.namespace("keep").unwrap();
    for i in 0..200u32 {
        orders.set(&i.to_le_bytes(), b"pending").unwrap();
        keep.set(&i.to_le_bytes(), b"kept").unwrap();
    }
    let (mut ready_r, mut ready_w) = pipe();
    let (mut go_r, mut go_w) = pipe();
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        let orders = c.namespace("orders").unwrap();
        let keep = c.namespace("keep").unwrap();
        let before = orders.get(&7u32.to_le_bytes()).unwrap().is_some();
        ready_w.write_all(b"r").unwrap();
        wait_byte(&mut go_r);
        // The very first get after the other process's clear finds nothing.
        let gone = (0..200u32).all(|i| orders.get(&i.to_le_bytes()).unwrap().is_none());
        let kept = (0..200u32).all(|i| keep.get(&i.to_le_bytes()).unwrap().is_some());
        let empty = orders.len().unwrap() == 0 && orders.keys().next().is_none();
        orders.set(b"new", b"after").unwrap();
        i32::from(!(before && gone && kept && empty))
    });
    wait_byte(&mut ready_r);
    let gen = orders.generation();
    orders.clear().unwrap();
    assert_eq!(orders.generation(), gen + 1);
    go_w.write_all(b"g").unwrap();
    assert_exits_ok(kid);
    assert_eq!(orders.get(b"new").unwrap().as_deref(), Some(&b"after"[..]));
    assert_eq!(orders.len().unwrap(), 1);
    // The old entries are reclaimed by the sweeps, counted as invalidated.
    cache.flush_expired().unwrap();
    let t = cache.stats().unwrap().total;
    assert_eq!(t.invalidated, 200, "{t:?}");
    assert_eq!(t.entries, 201);
    assert_eq!(keep.len().unwrap(), 200);
    assert!(cache.check().unwrap().is_healthy());
}

#[test]
fn a_value_computed_before_an_invalidation_stays_invisible() {
    let name = Name::new("ns-race");
    let cache = opts().create(&name).unwrap();
    let reports = cache.namespace("reports").unwrap();
    let (mut computing_r, mut computing_w) = pipe();
    let (mut go_r, mut go_w) = pipe();
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        let reports = c.namespace("reports").unwrap();
        let v = reports
            .get_or_compute(b"q1", &ComputeOptions::new(), || {
                computing_w.write_all(b"c").unwrap();
                wait_byte(&mut go_r); // the invalidation happens now
                Ok::<_, std::io::Error>(b"old".to_vec())
            })
            .unwrap();
        i32::from(v != b"old")
    });
    wait_byte(&mut computing_r);
    assert_eq!(reports.invalidate().unwrap(), 1);
    // The computation under way does not hold up one that starts after the invalidation.
    let fresh = reports
        .get_or_compute(b"q1", &ComputeOptions::new(), || {
            Ok::<_, std::io::Error>(b"new".to_vec())
        })
        .unwrap();
    assert_eq!(fresh, b"new");
    go_w.write_all(b"g").unwrap();
    assert_exits_ok(kid);
    // The old computation stored its result under the old generation: invisible.
    assert_eq!(
        reports.get(b"q1").unwrap().as_deref().map(|v| &v[..3]),
        Some(&b"new"[..])
    );
    // A plain set of a value read before the invalidation is a new write, and visible.
    reports.invalidate().unwrap();
    assert_eq!(reports.get(b"q1").unwrap(), None);
    assert!(cache.check().unwrap().is_healthy());
}

#[test]
fn invalidation_reaches_dependents_through_a_chain_and_a_cycle_once_each() {
    let name = Name::new("ns-deps");
    let cache = opts().create(&name).unwrap();
    let ns = |n: &str| cache.namespace(n).unwrap();
    let (root, mid, leaf, other) = (ns("root"), ns("mid"), ns("leaf"), ns("other"));
    mid.depends_on(&root).unwrap();
    leaf.depends_on(&mid).unwrap();
    let (a, b) = (ns("a"), ns("b"));
    a.depends_on(&b).unwrap();
    b.depends_on(&a).unwrap();
    assert!(a.depends_on(&a).is_err());
    // Another process fills them all, so the dependencies live in the segment.
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        for ns in ["root", "mid", "leaf", "other", "a", "b"] {
            c.namespace(ns).unwrap().set(b"k", ns.as_bytes()).unwrap();
        }
        0
    });
    assert_exits_ok(kid);
    let gens = |v: &[&Cache]| v.iter().map(|c| c.generation()).collect::<Vec<_>>();
    let before = gens(&[&root, &mid, &leaf, &other, &a, &b]);
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        let root = c.namespace("root").unwrap();
        i32::from(root.invalidate().unwrap() != 3)
    });
    assert_exits_ok(kid);
    for c in [&root, &mid, &leaf] {
        assert_eq!(c.get(b"k").unwrap(), None);
    }
    assert!(other.get(b"k").unwrap().is_some());
    // Invalidating the leaf goes no further up.
    leaf.set(b"k", b"again").unwrap();
    mid.set(b"k", b"again").unwrap();
    assert_eq!(leaf.invalidate().unwrap(), 1);
    assert!(mid.get(b"k").unwrap().is_some());
    // The cycle: each bumped once.
    assert_eq!(a.invalidate().unwrap(), 2);
    let after = gens(&[&root, &mid, &leaf, &other, &a, &b]);
    assert_eq!(after[0], before[0] + 1);
    assert_eq!(after[1], before[1] + 1);
    assert_eq!(after[2], before[2] + 2);
    assert_eq!(after[3], before[3]);
    assert_eq!((after[4], after[5]), (before[4] + 1, before[5] + 1));
    // clear() does not propagate.
    mid.set(b"k", b"x").unwrap();
    leaf.set(b"k", b"y").unwrap();
    mid.clear().unwrap();
    assert!(leaf.get(b"k").unwrap().is_some());
    let listed = cache.namespaces();
    let leaf_info = listed.iter().find(|n| n.name == "leaf").unwrap();
    assert_eq!(leaf_info.depends_on, ["mid"]);
}

/// cacheman's README scenario: an edge cache holding `raw * 5`, computed from a root cache,
/// stale until the root is invalidated; here each step runs in another process.
#[test]
fn cachemans_edge_and_root_across_two_processes() {
    let name = Name::new("ns-cacheman");
    let cache = opts().create(&name).unwrap();
    let root = cache.namespace("root").unwrap();
    let edge = cache.namespace("edge").unwrap();
    edge.depends_on(&root).unwrap();
    let n = name.0.clone();
    // The worker: edge["processed"], computed from root["raw"] if missing.
    let processed = move || {
        let n = n.clone();
        let kid = spawn(move || {
            let c = Cache::open_existing(&n).unwrap();
            let (root, edge) = (c.namespace("root").unwrap(), c.namespace("edge").unwrap());
            let (root, edge) = (root.typed::<str, i64>(), edge.typed::<str, i64>());
            let v = match edge.get("processed").unwrap() {
                Some(v) => v,
                None => {
                    let v = root.get("raw").unwrap().unwrap_or(0) * 5;
                    edge.set("processed", &v).unwrap();
                    v
                }
            };
            v as i32
        });
        common::exit_code(kid)
    };
    assert_eq!(processed(), 0); // no raw value yet
    root.typed::<str, i64>().set("raw", &1).unwrap();
    assert_eq!(processed(), 0); // still 0: cached in edge
    root.invalidate().unwrap(); // invalidates the edge too
    assert_eq!(edge.len().unwrap(), 0);
    root.typed::<str, i64>().set("raw", &1).unwrap();
    assert_eq!(processed(), 5);
    assert_eq!(edge.typed::<str, i64>().get("processed").unwrap(), Some(5));
}

#[test]
fn invalidating_the_default_namespace_drops_only_its_entries() {
    let name = Name::new("ns-default");
    let cache = opts().create(&name).unwrap();
    let other = cache.namespace("other").unwrap();
    for i in 0..50u32 {
        cache.set(&i.to_le_bytes(), b"v0").unwrap();
    }
    other.set(b"k", b"kept").unwrap();
    assert_eq!(cache.invalidate().unwrap(), 1);
    assert_eq!(cache.get(&1u32.to_le_bytes()).unwrap(), None);
    assert_eq!(cache.len().unwrap(), 0);
    cache.set(b"after", b"v1").unwrap();
    assert_eq!(cache.get(b"after").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(sorted_keys(&cache), vec![b"after".to_vec()]);
    assert_eq!(cache.len().unwrap(), 1);
    assert_eq!(other.get(b"k").unwrap().as_deref(), Some(&b"kept"[..]));
    // Another process sees the same.
    let n = name.0.clone();
    let kid = spawn(move || {
        let c = Cache::open_existing(&n).unwrap();
        let ok = c.get(&1u32.to_le_bytes()).unwrap().is_none()
            && c.get(b"after").unwrap().as_deref() == Some(&b"v1"[..]);
        i32::from(!ok)
    });
    assert_exits_ok(kid);
    cache.flush_expired().unwrap();
    assert_eq!(cache.stats().unwrap().total.invalidated, 50);
    assert!(cache.check().unwrap().is_healthy());
    // The whole-cache clear still empties every namespace.
    cache.clear().unwrap();
    assert_eq!(other.get(b"k").unwrap(), None);
}

#[test]
fn check_reports_a_damaged_namespace_table() {
    use std::os::unix::fs::FileExt;
    let name = Name::new("ns-check");
    let cache = opts().create(&name).unwrap();
    let a = cache.namespace("a").unwrap();
    a.set(b"k", b"v").unwrap();
    assert!(cache.check().unwrap().is_healthy());
    // Slot 1's state word, a name length of 200. The table is followed by the per-process
    // counters (32 KiB) that end the segment: 128 slots of 256 bytes after the generations
    // (DESIGN.md §1.6).
    let g = cache.info();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{}", &*name))
        .unwrap();
    let slot1 = g.segment_bytes - 32768 - 128 * 256 + 256;
    file.write_all_at(&(1u64 | 200 << 8).to_le_bytes(), slot1)
        .unwrap();
    let r = cache.check().unwrap();
    assert!(!r.is_healthy());
    assert!(r.namespaces.unwrap().contains("slot 1"));
    // Damage there never crashes a lookup: the namespace's name reads as empty.
    assert!(cache.namespaces().len() >= 2);
}

#[test]
fn names_are_checked_and_the_table_holds_127() {
    let name = Name::new("ns-full");
    let cache = opts().create(&name).unwrap();
    for bad in ["", "a\0b", &"x".repeat(49)] {
        assert!(matches!(
            cache.namespace(bad),
            Err(shmemcache::Error::InvalidArgument(_))
        ));
    }
    assert!(cache.namespace(&"y".repeat(48)).is_ok());
    for i in 1..127 {
        cache.namespace(&format!("ns-{i}")).unwrap();
    }
    // Full: a clear error; every existing name still opens.
    assert!(matches!(
        cache.namespace("one-too-many"),
        Err(shmemcache::Error::InvalidArgument(m)) if m.contains("127")
    ));
    assert!(cache.namespace("ns-5").is_ok());
    assert_eq!(cache.namespaces().len(), 128);
}
