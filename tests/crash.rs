//! Crash atomicity with real processes: a child stops itself inside the critical section
//! of a set, an overwrite (same size and another size), an incr or a delete, at every
//! fault point that operation passes, and is killed with `kill -9` there. The next
//! operation from the parent recovers the shard, and the key holds its old value or its
//! new one: never neither, never anything else. Counters never move back.
//!
//! Run with a process-per-test runner (`cargo nextest`), as the test command does.

use shmemcache::fault::{self, FaultAction, FaultPoint};
use shmemcache::Options;
use std::time::Duration;

mod common;
use common::*;

#[derive(Clone, Copy, Debug)]
enum Op {
    SetNew,
    OverwriteSameSize,
    OverwriteOtherSize,
    Incr,
    Delete,
}

impl Op {
    /// The fault points this operation passes.
    fn points(self) -> &'static [FaultPoint] {
        use FaultPoint::*;
        match self {
            Op::SetNew => &[LockHeld, StoreMidWrite],
            Op::OverwriteSameSize | Op::OverwriteOtherSize | Op::Incr => {
                &[LockHeld, StoreMidWrite, StoreCommitted]
            }
            Op::Delete => &[LockHeld, RemoveMidway],
        }
    }
}

/// A value of `len` bytes that says which round and version wrote it.
fn value(round: u32, version: u8, len: usize) -> Vec<u8> {
    let mut v = format!("r{round}v{version}:").into_bytes();
    v.resize(len, b'a' + version);
    v
}

#[test]
fn kill9_at_every_fault_point_leaves_old_or_new() {
    let name = Name::new("crash");
    // Two shards, small: evictions and multi-chunk values happen too.
    let cache = Options::new()
        .capacity_bytes(256 << 10)
        .shards(2)
        .chunk_size(64)
        .lock_timeout(Duration::from_millis(500))
        .create(&name)
        .unwrap();
    let ops = [
        Op::SetNew,
        Op::OverwriteSameSize,
        Op::OverwriteOtherSize,
        Op::Incr,
        Op::Delete,
    ];
    let rounds_wanted = 1000u32;
    let (mut old_kept, mut new_kept) = (0u32, 0u32);
    let mut counter = 0i64; // the counter's value as the parent knows it
    cache.set(b"counter", b"0").unwrap();
    let mut round = 0u32;
    'outer: loop {
        for op in ops {
            for &point in op.points() {
                if round == rounds_wanted {
                    break 'outer;
                }
                round += 1;
                let key = format!("key-{}", round % 50).into_bytes();
                let long = 40 + (round as usize * 37) % 300;
                let before: Option<Vec<u8>> = match op {
                    Op::SetNew => {
                        cache.delete(&key).unwrap();
                        None
                    }
                    Op::Incr => None,
                    _ => {
                        let v = value(round, 1, long);
                        cache.set(&key, &v).unwrap();
                        Some(v)
                    }
                };
                let after: Option<Vec<u8>> = match op {
                    Op::SetNew | Op::OverwriteSameSize => Some(value(round, 2, long)),
                    Op::OverwriteOtherSize => Some(value(round, 2, 300 - long / 2)),
                    Op::Incr | Op::Delete => None,
                };
                let (k, a, cache) = (key.clone(), after.clone(), &cache);
                let kid = spawn(move || {
                    fault::arm(point, FaultAction::Stop);
                    match op {
                        Op::Incr => {
                            let _ = cache.incr(b"counter", 1);
                        }
                        Op::Delete => {
                            let _ = cache.delete(&k);
                        }
                        _ => {
                            let _ = cache.set(&k, a.as_deref().unwrap());
                        }
                    }
                    3 // never reached: the fault stops the child
                });
                wait_stopped(kid);
                kill9(kid);
                // The next operation repairs the shard the child died in.
                if let Op::Incr = op {
                    let now = cache
                        .get(b"counter")
                        .unwrap()
                        .expect("the counter survives");
                    let now: i64 = std::str::from_utf8(&now).unwrap().parse().unwrap();
                    assert!(
                        now == counter || now == counter + 1,
                        "round {round} {op:?} at {point:?}: counter {counter} became {now}"
                    );
                    if now == counter {
                        old_kept += 1;
                    } else {
                        new_kept += 1;
                    }
                    counter = now;
                } else {
                    let got = cache.get(&key).unwrap();
                    let new = match op {
                        Op::Delete => None,
                        _ => after.clone(),
                    };
                    if got == before {
                        old_kept += 1;
                    } else if got == new {
                        new_kept += 1;
                    } else {
                        panic!(
                            "round {round} {op:?} at {point:?}: neither old nor new: {:?}",
                            got.map(|g| String::from_utf8_lossy(&g).into_owned())
                        );
                    }
                }
            }
        }
    }
    let report = cache.check().unwrap();
    assert!(report.is_healthy(), "{report:?}");
    let recoveries = cache.stats().unwrap().total.recoveries;
    println!(
        "crash rounds: {round} kill -9s inside the critical section; old value kept {old_kept}, \
         new value kept {new_kept}, neither 0; {recoveries} shard recoveries"
    );
    assert_eq!(round, rounds_wanted);
    assert_eq!(old_kept + new_kept, round);
    assert!(recoveries >= u64::from(round), "every kill was recovered");
    // Both sides of the commit point were exercised.
    assert!(old_kept > 0 && new_kept > 0);
}
