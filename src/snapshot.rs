//! Snapshots: a cache, or one namespace, written to a file and read back, across restarts
//! and reboots. The format is drawn byte by byte in DESIGN.md (§8).
//!
//! Saving copies entries out one shard at a time, a bounded batch per lock hold, and
//! writes them to a file that replaces the old one only once complete and synced (see
//! `sys::file`). Loading reads and checks the whole file before it changes anything.

use crate::cache::{Cache, SCAN_BATCH};
use crate::clock::{monotonic_ns, unix_ns};
use crate::error::{Error, Result};
use crate::fault::{self, FaultPoint};
use crate::layout::{NS_NAME_MAX, NS_SLOTS};
use crate::sys::file::AtomicFile;
use crate::table::{Exported, Now, StoreMode};
use std::io::Write;
use std::path::Path;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// First eight bytes of every snapshot file.
const MAGIC: [u8; 8] = *b"SHMCSNAP";
/// The format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
const REC_ENTRY: u8 = 1;
const REC_END: u8 = 2;
/// Seed of every check word in a snapshot file (xxh3-64).
const CHECK_SEED: u64 = 0x5ea1_5a7e_0000_0001;

/// How [`Cache::load`] treats what the cache already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadMode {
    /// Add the file's entries, overwriting the same keys; everything else stays.
    Merge,
    /// Make each namespace hold exactly the file's entries (on the default handle, every
    /// namespace of the cache: those the file does not hold end up empty). The entries are
    /// written under a new generation that no lookup sees, which then becomes current in
    /// one step per namespace: no process ever sees half a namespace restored. An
    /// invalidation of a namespace while its load runs wins over the load.
    Replace,
}

/// What a save or a load did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotReport {
    /// Entries written (save) or stored (load).
    pub entries: u64,
    /// Their key and value bytes.
    pub bytes: u64,
    /// Entries a load skipped because their TTL ran out since the save.
    pub skipped_expired: u64,
}

/// One entry of a snapshot.
struct Entry<'f> {
    ns: &'f str,
    key: &'f [u8],
    value: &'f [u8],
    /// Remaining TTL when saved, ns; 0 = none.
    ttl_ns: u64,
}

fn header(saved_unix_ns: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    // 12..16: flags, zero.
    h[16..24].copy_from_slice(&saved_unix_ns.to_le_bytes());
    let check = xxh3_64_with_seed(&h[..24], CHECK_SEED);
    h[24..].copy_from_slice(&check.to_le_bytes());
    h
}

fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    let body_len = 1 + e.ns.len() + 4 + e.key.len() + 4 + e.value.len() + 8;
    let start = out.len();
    out.push(REC_ENTRY);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.push(e.ns.len() as u8);
    out.extend_from_slice(e.ns.as_bytes());
    out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    out.extend_from_slice(e.key);
    out.extend_from_slice(&(e.value.len() as u32).to_le_bytes());
    out.extend_from_slice(e.value);
    out.extend_from_slice(&e.ttl_ns.to_le_bytes());
    let check = xxh3_64_with_seed(&out[start..], CHECK_SEED);
    out.extend_from_slice(&check.to_le_bytes());
}

fn put_end(out: &mut Vec<u8>, count: u64) {
    let start = out.len();
    out.push(REC_END);
    out.extend_from_slice(&count.to_le_bytes());
    let check = xxh3_64_with_seed(&out[start..], CHECK_SEED);
    out.extend_from_slice(&check.to_le_bytes());
}

/// A bounds-checked reader over the file's bytes.
struct Reader<'f> {
    b: &'f [u8],
    at: usize,
}

impl<'f> Reader<'f> {
    fn take(&mut self, n: usize) -> std::result::Result<&'f [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(format!("truncated at byte {}", self.b.len()));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
}

/// Checks and decodes a whole snapshot: its save time and its entries.
fn parse(b: &[u8]) -> std::result::Result<(u64, Vec<Entry<'_>>), String> {
    if b.len() < HEADER_LEN || b[..8] != MAGIC {
        return Err("not a shmemcache snapshot (no SHMCSNAP magic)".into());
    }
    let mut r = Reader { b, at: 8 };
    let version = r.u32()?;
    if version != SNAPSHOT_VERSION {
        return Err(format!(
            "format version {version}; this build reads version {SNAPSHOT_VERSION}"
        ));
    }
    let flags = r.u32()?;
    let saved = r.u64()?;
    let check = r.u64()?;
    if check != xxh3_64_with_seed(&b[..24], CHECK_SEED) || flags != 0 {
        return Err("the header is damaged (check word mismatch)".into());
    }
    let mut entries = Vec::new();
    loop {
        let start = r.at;
        match r.u8()? {
            REC_ENTRY => {
                let body_len = r.u32()? as usize;
                let body = r.take(body_len)?;
                let check = r.u64()?;
                if check != xxh3_64_with_seed(&b[start..start + 5 + body_len], CHECK_SEED) {
                    return Err(format!("the record at byte {start} is damaged"));
                }
                let mut e = Reader { b: body, at: 0 };
                let bad = |_| format!("the record at byte {start} is malformed");
                let ns_len = e.u8().map_err(bad)? as usize;
                let ns = std::str::from_utf8(e.take(ns_len).map_err(bad)?)
                    .map_err(|_| format!("the record at byte {start} has a bad namespace"))?;
                let key_len = e.u32().map_err(bad)? as usize;
                let key = e.take(key_len).map_err(bad)?;
                let value_len = e.u32().map_err(bad)? as usize;
                let value = e.take(value_len).map_err(bad)?;
                let ttl_ns = e.u64().map_err(bad)?;
                if e.at != body.len() || ns.len() > NS_NAME_MAX {
                    return Err(format!("the record at byte {start} is malformed"));
                }
                entries.push(Entry {
                    ns,
                    key,
                    value,
                    ttl_ns,
                });
            }
            REC_END => {
                let count = r.u64()?;
                let check = r.u64()?;
                if check != xxh3_64_with_seed(&b[start..start + 9], CHECK_SEED) {
                    return Err(format!("the end record at byte {start} is damaged"));
                }
                if count != entries.len() as u64 {
                    return Err(format!(
                        "the end record counts {count} entries, the file holds {}",
                        entries.len()
                    ));
                }
                if r.at != b.len() {
                    return Err(format!("{} bytes follow the end record", b.len() - r.at));
                }
                return Ok((saved, entries));
            }
            other => return Err(format!("unknown record type {other} at byte {start}")),
        }
    }
}

/// The TTL left at monotonic time `now` of an entry whose deadline is `expires_at`: 0 for
/// none, `None` if it ran out.
fn remaining(expires_at: u64, now: u64) -> Option<u64> {
    match expires_at {
        0 => Some(0),
        at if at <= now => None,
        at => Some(at - now),
    }
}

/// Writes `items` (of one namespace) to `path` as a snapshot, replacing it atomically.
pub(crate) fn write_items(path: &Path, items: &[crate::persist::Item]) -> Result<SnapshotReport> {
    let io = |op| {
        move |source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = AtomicFile::create(path).map_err(io("create a temporary file for"))?;
    let mut buf = Vec::with_capacity(HEADER_LEN + 64 * items.len());
    buf.extend_from_slice(&header(unix_ns()));
    let mut report = SnapshotReport::default();
    for it in items {
        let ttl_ns = it.ttl.map_or(0, |d| (d.as_nanos() as u64).max(1));
        put_entry(
            &mut buf,
            &Entry {
                ns: "",
                key: &it.key,
                value: &it.value,
                ttl_ns,
            },
        );
        report.entries += 1;
        report.bytes += (it.key.len() + it.value.len()) as u64;
    }
    put_end(&mut buf, report.entries);
    file.file().write_all(&buf).map_err(io("write"))?;
    fault::hit(FaultPoint::SnapshotMidWrite);
    file.commit().map_err(io("replace"))?;
    Ok(report)
}

/// Reads the snapshot at `path` as items with what remains of their TTLs (expired ones
/// left out); `None` if there is no such file.
pub(crate) fn read_items(path: &Path) -> Result<Option<Vec<crate::persist::Item>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let (saved, entries) = parse(&bytes).map_err(|reason| Error::BadSnapshot {
        path: path.to_path_buf(),
        reason,
    })?;
    let elapsed = unix_ns().saturating_sub(saved);
    Ok(Some(
        entries
            .iter()
            .filter(|e| e.ttl_ns == 0 || e.ttl_ns > elapsed)
            .map(|e| crate::persist::Item {
                key: e.key.to_vec(),
                value: e.value.to_vec(),
                ttl: (e.ttl_ns != 0).then(|| std::time::Duration::from_nanos(e.ttl_ns - elapsed)),
            })
            .collect(),
    ))
}

impl Cache {
    /// Calls `f(now, batch)` for each batch of live entries of the current generations
    /// (of namespace slot `only`, if given), copied out one bounded batch per lock hold;
    /// `now` is the monotonic time right after the batch was copied.
    fn export_batches(
        &self,
        only: Option<usize>,
        mut f: impl FnMut(u64, &mut Vec<Exported>) -> Result<()>,
    ) -> Result<()> {
        let mut out = Vec::new();
        for s in 0..self.geom.shard_count as usize {
            let mut at = Some(0);
            while let Some(start) = at {
                at = self.with_shard(s, |v| {
                    out.clear();
                    v.export_from(
                        start,
                        SCAN_BATCH,
                        &mut Now::lazy(monotonic_ns),
                        only,
                        &mut out,
                    )
                })?;
                f(monotonic_ns(), &mut out)?;
            }
        }
        Ok(())
    }

    /// This namespace's live entries, copied out one bounded batch per lock hold, with
    /// what remains of their TTLs.
    pub(crate) fn export_items(&self) -> Result<Vec<crate::persist::Item>> {
        let mut items = Vec::new();
        self.export_batches(Some(self.ns), |now, batch| {
            for e in batch.drain(..) {
                let Some(ttl_ns) = remaining(e.expires_at, now) else {
                    continue;
                };
                items.push(crate::persist::Item {
                    key: e.key,
                    value: e.value,
                    ttl: (ttl_ns != 0).then(|| std::time::Duration::from_nanos(ttl_ns)),
                });
            }
            Ok(())
        })?;
        Ok(items)
    }

    /// Writes this cache's live entries to `path`: on the default handle, every namespace's;
    /// on a [namespace](Self::namespace) handle, that namespace's. Each entry keeps its
    /// remaining TTL. Shard locks are taken one at a time, for one bounded batch each, so
    /// other processes keep working; the snapshot is a consistent copy of each batch, not
    /// of the whole cache at one instant.
    ///
    /// The file is replaced atomically: written unnamed in the same directory, synced,
    /// then renamed over `path` and the directory synced. A crash at any point leaves the
    /// previous file intact and no temporary file behind.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<SnapshotReport> {
        let path = path.as_ref();
        let io = |op| {
            move |source| Error::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        let names: Vec<String> = (0..NS_SLOTS).map(|s| self.ns_name(s)).collect();
        let only = (self.ns != 0).then_some(self.ns);
        let mut file = AtomicFile::create(path).map_err(io("create a temporary file for"))?;
        let mut w = std::io::BufWriter::new(file.file());
        w.write_all(&header(unix_ns())).map_err(io("write"))?;
        let mut report = SnapshotReport::default();
        let mut buf = Vec::new();
        self.export_batches(only, |now, batch| {
            buf.clear();
            for e in batch.drain(..) {
                let Some(ttl_ns) = remaining(e.expires_at, now) else {
                    continue;
                };
                let name = if only.is_some() {
                    ""
                } else {
                    names.get(e.ns).map_or("", String::as_str)
                };
                report.entries += 1;
                report.bytes += (e.key.len() + e.value.len()) as u64;
                put_entry(
                    &mut buf,
                    &Entry {
                        ns: name,
                        key: &e.key,
                        value: &e.value,
                        ttl_ns,
                    },
                );
            }
            w.write_all(&buf).map_err(io("write"))?;
            fault::hit(FaultPoint::SnapshotMidWrite);
            Ok(())
        })?;
        buf.clear();
        put_end(&mut buf, report.entries);
        w.write_all(&buf).map_err(io("write"))?;
        w.flush().map_err(io("write"))?;
        drop(w);
        file.commit().map_err(io("replace"))?;
        Ok(report)
    }

    /// Loads a snapshot written by [`save`](Self::save). The whole file is read and every
    /// record's check word verified first: a truncated, damaged or foreign file is an
    /// [`Error::BadSnapshot`] and the cache is left as it was.
    ///
    /// Entries whose TTL ran out since the save (by the wall clock) are skipped; the others
    /// get what remained of it. On the default handle each entry goes to the namespace it
    /// was saved from (created if missing); on a namespace handle, every entry goes to that
    /// namespace. See [`LoadMode`] for `Merge` and `Replace`.
    pub fn load(&self, path: impl AsRef<Path>, mode: LoadMode) -> Result<SnapshotReport> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let (saved, entries) = parse(&bytes).map_err(|reason| Error::BadSnapshot {
            path: path.to_path_buf(),
            reason,
        })?;
        let elapsed = unix_ns().saturating_sub(saved);
        // Each namespace the file fills, and the handle its entries are written through:
        // for Replace, pinned to a fresh generation that becomes current at the end.
        let mut targets: Vec<(String, Cache)> = Vec::new();
        if mode == LoadMode::Replace {
            // Every namespace the load replaces, those the file leaves empty included.
            self.load_target(&mut targets, "", mode)?;
            if self.ns == 0 {
                for n in self.namespaces().into_iter().filter(|n| !n.name.is_empty()) {
                    self.load_target(&mut targets, &n.name, mode)?;
                }
            }
        }
        let mut report = SnapshotReport::default();
        for e in &entries {
            let ttl = match e.ttl_ns {
                0 => None,
                t if t <= elapsed => {
                    report.skipped_expired += 1;
                    continue;
                }
                t => Some(std::time::Duration::from_nanos(t - elapsed)),
            };
            let i = self.load_target(&mut targets, e.ns, mode)?;
            let h = &targets[i].1;
            let k = h.route(e.key)?;
            let deadline = match ttl {
                None => 0,
                Some(d) => monotonic_ns().saturating_add(d.as_nanos() as u64),
            };
            h.store_routed(&k, e.value, deadline, StoreMode::Set)?;
            report.entries += 1;
            report.bytes += (e.key.len() + e.value.len()) as u64;
        }
        if mode == LoadMode::Replace {
            for (_, h) in &targets {
                h.publish_staged()?;
            }
        }
        Ok(report)
    }

    /// The handle a load writes namespace `ns`'s entries through (made on first use).
    fn load_target(
        &self,
        targets: &mut Vec<(String, Cache)>,
        ns: &str,
        mode: LoadMode,
    ) -> Result<usize> {
        // A namespace handle takes every entry, whatever namespace it was saved from.
        let ns = if self.ns != 0 { "" } else { ns };
        if let Some(i) = targets.iter().position(|(n, _)| n == ns) {
            return Ok(i);
        }
        let h = if self.ns != 0 || ns.is_empty() {
            self.clone_handle()
        } else {
            self.namespace(ns)?
        };
        let h = match mode {
            LoadMode::Merge => h,
            LoadMode::Replace => h.staged()?,
        };
        targets.push((ns.to_string(), h));
        Ok(targets.len() - 1)
    }
}
