//! Opening never destroys: header damage on a live segment is a clear error naming the
//! field (never a re-format, a truncation or SIGBUS), `force_repair` (`shmemcache repair
//! --force`) restores it from the backup copy once nobody is attached, and only a provably
//! dead creator's half-made segment is taken over. Real segments, real processes; run with
//! `cargo nextest` (the tests fork).

use shmemcache::fault::{self, FaultAction, FaultPoint};
use shmemcache::{Cache, Error, Options};
use std::os::unix::fs::FileExt;
use std::time::Duration;

mod common;
use common::*;

fn opts() -> Options {
    Options::new()
        .capacity_bytes(1 << 20)
        .shards(2)
        .default_ttl(Some(Duration::from_secs(3600)))
}

fn file(name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap()
}

/// Every header field: (name, offset, width).
const FIELDS: &[(&str, u64, usize)] = &[
    ("magic", 0, 8),
    ("layout_version", 8, 4),
    ("abi_tag", 12, 4),
    ("ready", 16, 4),
    ("header_size", 20, 4),
    ("shard_count", 24, 4),
    ("max_entries_per_shard", 28, 4),
    ("buckets", 32, 4),
    ("chunks_per_shard", 36, 4),
    ("chunk_size", 40, 4),
    ("max_key_len", 44, 4),
    ("max_value_len", 48, 4),
    ("coord_slots", 52, 4),
    ("default_ttl_ns", 56, 8),
    ("hash_seed", 64, 8),
    ("created_unix_ns", 72, 8),
    ("shard_stride", 80, 8),
    ("shards_offset", 88, 8),
    ("total_size", 96, 8),
    ("creator_pid", 104, 4),
    ("coord_offset", 112, 8),
    ("creator_start", 120, 8),
    ("checksum", 128, 8),
];

#[test]
fn header_damage_while_attached_is_a_clear_error_never_a_reformat() {
    let name = Name::new("hdr-each");
    let cache = opts().create(&name).unwrap();
    for i in 0..100u32 {
        cache.set(&i.to_le_bytes(), &[i as u8; 40]).unwrap();
    }
    let f = file(&name);
    for &(field, off, width) in FIELDS {
        let pristine = std::fs::read(format!("/dev/shm/{}", &*name)).unwrap();
        let mut old = vec![0u8; width];
        f.read_exact_at(&mut old, off).unwrap();
        let damaged: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
        f.write_all_at(&damaged, off).unwrap();
        // A new opener (one that may create) gets a clear error naming what is wrong.
        for opener in [opts().open(&name), Options::new().open_existing(&name)] {
            match opener {
                Err(Error::Corrupted { reason, .. }) => {
                    assert!(
                        reason.contains(field) || reason.contains("checksum"),
                        "{field}: {reason}"
                    );
                    assert!(
                        reason.contains("shmemcache "),
                        "{field}: no way out: {reason}"
                    );
                }
                Err(Error::Incompatible { reason, .. }) => {
                    assert!(
                        ["magic", "layout_version", "abi_tag"].contains(&field),
                        "{field}: {reason}"
                    );
                }
                other => panic!("{field}: {:?}", other.map(|_| ())),
            }
        }
        // Nothing but the damaged bytes changed: no re-format, no truncation.
        let now = std::fs::read(format!("/dev/shm/{}", &*name)).unwrap();
        assert_eq!(now.len(), pristine.len(), "{field}: size changed");
        let changed: Vec<usize> = (0..now.len()).filter(|&i| now[i] != pristine[i]).collect();
        assert!(
            changed
                .iter()
                .all(|&i| (off as usize..off as usize + width).contains(&i)),
            "{field}: bytes outside the field changed: {:?}",
            &changed[..changed.len().min(8)]
        );
        // The attached process keeps working: it validated the header when it joined.
        assert_eq!(cache.get(&7u32.to_le_bytes()).unwrap(), Some(vec![7u8; 40]));
        cache.set(b"still", field.as_bytes()).unwrap();
        f.write_all_at(&old, off).unwrap();
    }
    assert!(opts().open(&name).is_ok());
    assert!(cache.check().unwrap().is_healthy());
}

#[test]
fn repair_force_restores_a_damaged_header_once_nobody_is_attached() {
    let name = Name::new("hdr-restore");
    let cache = opts().create(&name).unwrap();
    cache.set(b"k", b"v").unwrap();
    let f = file(&name);
    // The ready word and the hash seed, damaged.
    f.write_all_at(&0u32.to_ne_bytes(), 16).unwrap();
    match Options::new().open_existing(&name) {
        Err(Error::Corrupted { reason, .. }) => {
            assert!(
                reason.contains("`ready`") && reason.contains("repair --force"),
                "{reason}"
            )
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    f.write_all_at(&[1, 2, 3], 64).unwrap();
    match opts().open(&name) {
        Err(Error::Corrupted { reason, .. }) => assert!(reason.contains("hash_seed"), "{reason}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // Refused while another process has it mapped (a forked child inherits the mapping).
    let attached = spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    match Cache::force_repair(&name) {
        Err(Error::Busy { reason, .. }) => {
            assert!(reason.contains(&attached.to_string()), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    kill9(attached);
    drop(cache);
    let mut fields = Cache::force_repair(&name).unwrap();
    fields.sort();
    assert_eq!(fields, ["header field hash_seed", "header field ready"]);
    let cache = Options::new().open_existing(&name).unwrap();
    assert_eq!(cache.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(cache.check().unwrap().is_healthy());
    drop(cache);
    assert!(
        Cache::force_repair(&name).unwrap().is_empty(),
        "nothing left to restore"
    );
}

#[test]
fn only_a_dead_creators_half_made_segment_is_taken_over() {
    dead_creator_taken_over(FaultPoint::Formatting, "hdr-creator");
}

#[test]
fn a_creator_dead_right_after_writing_its_header_is_taken_over() {
    // Only the header is in the file (256 bytes): the backup reads as zeros.
    dead_creator_taken_over(FaultPoint::HeaderWritten, "hdr-only");
}

fn dead_creator_taken_over(point: FaultPoint, tag: &str) {
    let name = Name::new(tag);
    let n = name.0.clone();
    let creator = spawn(move || {
        fault::arm(point, FaultAction::Stop);
        let _ = opts().create(&n);
        3
    });
    wait_stopped(creator);
    // The creator is alive (stopped): an opener waits for it, then gives up; nothing is
    // formatted over it.
    let waiting = opts().init_timeout(Duration::from_millis(200)).open(&name);
    match waiting {
        Err(Error::Corrupted { reason, .. }) => assert!(reason.contains("creator"), "{reason}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    kill9(creator);
    // Dead: only an opener that may create takes it over, formatting it in place.
    match Options::new().open_existing(&name) {
        Err(Error::Corrupted { reason, .. }) => assert!(reason.contains("died"), "{reason}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let cache = opts().open(&name).unwrap();
    assert!(cache.created());
    cache.set(b"a", b"1").unwrap();
    assert_eq!(cache.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(cache.check().unwrap().is_healthy());
    assert_eq!(
        Options::new().open_existing(&name).unwrap().info().shards,
        2
    );
}

#[test]
fn a_file_truncated_below_its_header_is_reported_not_reformatted() {
    let name = Name::new("hdr-short");
    drop(opts().create(&name).unwrap());
    let f = file(&name);
    f.set_len(100).unwrap();
    match opts().open(&name) {
        Err(Error::Corrupted { reason, .. }) => assert!(reason.contains("truncated"), "{reason}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(f.metadata().unwrap().len(), 100, "left as it was");
}

#[test]
fn an_unbounded_init_timeout_is_fine() {
    let name = Name::new("hdr-timeout");
    let cache = opts().init_timeout(Duration::MAX).open(&name).unwrap();
    cache.set(b"k", b"v").unwrap();
    let again = opts().init_timeout(Duration::MAX).open(&name).unwrap();
    assert_eq!(again.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    // A creation that fails after the name was made leaves no file behind.
    let bad = Name::new("hdr-nospace");
    let huge = Options::new()
        .capacity_bytes(1 << 46)
        .shards(1)
        .max_value_len(1024);
    assert!(huge.create(&bad).is_err());
    assert!(!std::path::Path::new(&format!("/dev/shm/{}", &*bad)).exists());
}
