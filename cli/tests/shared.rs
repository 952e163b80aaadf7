//! A separately launched program (the `shmemcache` binary) and forked children of a Rust
//! program share one cache by name.
//!
//! Each test forks; run them with a process-per-test runner (`cargo nextest`).

use nix::unistd::Pid;
use shmemcache::{Cache, Options};
use std::process::Command;
use std::time::Duration;

#[path = "../../tests/common/mod.rs"]
mod common;
use common::*;

fn small(shards: u32) -> Options {
    Options::new()
        .capacity_bytes(1 << 20)
        .shards(shards)
        .lock_timeout(Duration::from_millis(500))
}

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shmemcache"))
}

#[test]
fn forked_children_and_a_separate_binary_share_one_cache() {
    let name = Name::new("share");
    let cache = small(4).create(&name).unwrap();
    cache.set(b"from-parent", b"p").unwrap();
    let kids: Vec<Pid> = (0..3)
        .map(|i| {
            let n = name.0.clone();
            spawn(move || {
                // Both the inherited handle and a fresh one by name must work in the child.
                let fresh = Cache::open_existing(&n).unwrap();
                assert_eq!(
                    fresh.get(b"from-parent").unwrap().as_deref(),
                    Some(&b"p"[..])
                );
                fresh
                    .set(format!("child-{i}").as_bytes(), format!("v{i}").as_bytes())
                    .unwrap();
                0
            })
        })
        .collect();
    kids.into_iter().for_each(assert_exits_ok);
    // The children have exited (and dropped their handles): the segment is still there.
    assert!(std::path::Path::new(&format!("/dev/shm/{}", &*name)).exists());
    for i in 0..3 {
        assert_eq!(
            cache.get(format!("child-{i}").as_bytes()).unwrap(),
            Some(format!("v{i}").into_bytes())
        );
    }
    // A separately launched program reads and writes the same cache by name.
    let out = cli().args(["get", &name, "child-1"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"v1\n");
    let out = cli()
        .args(["set", &name, "from-cli", "c"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(cache.get(b"from-cli").unwrap().as_deref(), Some(&b"c"[..]));
    let out = cli().args(["incr", &name, "n", "7"]).output().unwrap();
    assert_eq!(out.stdout, b"7\n");
    assert_eq!(cache.incr(b"n", 1).unwrap(), 8);
}
