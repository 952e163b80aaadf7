//! A reference model of one shard (a `Vec` in LRU order) and a driver that runs the same
//! operations against it and a real `ShardView` in ordinary memory, comparing every
//! result and checking `ShardView::validate` after each step.
//!
//! Used by the unit tests, the proptest suite and the `cargo fuzz` target; it is public
//! only so the fuzz crate can reach it.

use crate::layout::Geometry;
use crate::sys::segment::atomic_words;
use crate::table::{key_hash, Deadline, Incr, Key, Now, ShardView, SharedShard, StoreMode, Stored};
use std::sync::atomic::AtomicU64;

/// A shard living in a heap buffer: for tests, fuzzing and Miri.
pub struct HeapShard {
    buf: Vec<u64>,
    marks: Vec<AtomicU64>,
    geom: Geometry,
}

impl HeapShard {
    /// A formatted, empty shard of `geom`'s shape.
    pub fn new(geom: Geometry) -> HeapShard {
        let mut s = HeapShard {
            buf: vec![0u64; geom.shard.region_len / 8],
            marks: (0..(geom.chunks_per_shard as usize).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            geom,
        };
        s.view().format();
        s
    }

    /// The shard's view.
    pub fn view(&mut self) -> ShardView<'_> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.buf);
        ShardView::open(bytes, &self.marks, &self.geom, &[])
            .expect("heap shard matches its geometry")
    }

    /// The shard as a lock-free reader sees it.
    pub fn shared(&mut self) -> SharedShard<'_> {
        SharedShard::new(atomic_words(&mut self.buf), &self.marks, &self.geom)
    }

    /// The accessed marks.
    pub fn marks(&self) -> &[AtomicU64] {
        &self.marks
    }

    /// Raw bytes, to inject damage in tests.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.buf)
    }

    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geom
    }
}

/// A small geometry that makes eviction, chunk chains and collisions frequent.
pub fn small_geometry() -> Geometry {
    Geometry::new(1, 8, 24, 48, 32, 160, 0, 0x5eed).expect("valid")
}

#[derive(Clone, Debug)]
struct Entry {
    key: Vec<u8>,
    value: Vec<u8>,
    expires: u64,
    /// Read since it was last placed at the head (lazy promotion).
    accessed: bool,
}

/// The reference: entries in LRU order, most recent first, with the same capacity rules
/// and the same recency rule (strict, or lazy promotion with a second chance).
pub struct Model {
    entries: Vec<Entry>,
    exact_lru: bool,
    max_entries: usize,
    chunks: usize,
    chunk_size: usize,
}

impl Model {
    /// An empty model with `g`'s capacity.
    pub fn new(g: &Geometry) -> Model {
        Model {
            entries: Vec::new(),
            exact_lru: g.exact_lru,
            max_entries: g.entry_capacity() as usize,
            chunks: g.chunks_per_shard as usize,
            chunk_size: g.chunk_size as usize,
        }
    }

    /// A model that never evicts: it remembers the last write of every key.
    pub fn unbounded(g: &Geometry) -> Model {
        Model {
            max_entries: usize::MAX,
            chunks: usize::MAX / 2,
            ..Model::new(g)
        }
    }

    /// Chunks an entry takes: its record, key and value.
    fn need(&self, k: usize, v: usize) -> usize {
        crate::layout::chunks_for(k + v, self.chunk_size)
    }

    fn used_chunks(&self) -> usize {
        self.entries
            .iter()
            .map(|e| self.need(e.key.len(), e.value.len()))
            .sum()
    }

    fn pos(&self, key: &[u8]) -> Option<usize> {
        self.entries.iter().position(|e| e.key == key)
    }

    fn expire(&mut self, now: u64) {
        self.entries.retain(|e| e.expires == 0 || now < e.expires);
    }

    fn make_room(&mut self, chunks: usize, need_record: bool, keep: Option<&[u8]>) -> u32 {
        let mut evicted = 0;
        loop {
            let rec_ok = !need_record || self.entries.len() < self.max_entries;
            if rec_ok && self.chunks - self.used_chunks() >= chunks {
                return evicted;
            }
            let victim = (0..self.entries.len())
                .rev()
                .find(|&i| Some(self.entries[i].key.as_slice()) != keep)
                .expect("geometry guarantees room");
            let mut e = self.entries.remove(victim);
            if e.accessed {
                // A second chance: back to the head, unmarked.
                e.accessed = false;
                self.entries.insert(0, e);
                continue;
            }
            evicted += 1;
        }
    }

    fn store(&mut self, key: &[u8], value: &[u8], exp: Option<u64>, mode: StoreMode) -> Stored {
        let pos = self.pos(key);
        match (mode, pos) {
            (StoreMode::Add, Some(_)) => return Stored::Exists,
            (StoreMode::Replace, None) => return Stored::Missing,
            _ => {}
        }
        let need = self.need(key.len(), value.len());
        let evicted = match pos {
            Some(i) => {
                // An entry that keeps its chunk count, within what the undo area saves, is
                // rewritten in place; any other overwrite takes its new chunks while the
                // old ones are held.
                let old = &self.entries[i];
                let same = need == self.need(old.key.len(), old.value.len());
                let in_place = same && need <= crate::layout::undo_chunks(self.chunk_size);
                if in_place && !self.exact_lru {
                    // Lazy recency: rewritten in place, the entry is marked used, not moved.
                    let e = &mut self.entries[i];
                    e.value = value.to_vec();
                    e.accessed = true;
                    if let Some(t) = exp {
                        e.expires = t;
                    }
                    return Stored::Written { evicted: 0 };
                }
                let ev = if in_place {
                    0
                } else {
                    self.make_room(need, false, Some(key))
                };
                let i = self.pos(key).expect("kept");
                let mut e = self.entries.remove(i);
                e.value = value.to_vec();
                e.accessed = false;
                if let Some(t) = exp {
                    e.expires = t;
                }
                self.entries.insert(0, e);
                ev
            }
            None => {
                let ev = self.make_room(need, true, None);
                self.entries.insert(
                    0,
                    Entry {
                        key: key.to_vec(),
                        value: value.to_vec(),
                        expires: exp.unwrap_or(0),
                        accessed: false,
                    },
                );
                ev
            }
        };
        Stored::Written { evicted }
    }

    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let i = self.pos(key)?;
        if !self.exact_lru {
            self.entries[i].accessed = true;
            return Some(self.entries[i].value.clone());
        }
        let e = self.entries.remove(i);
        let v = e.value.clone();
        self.entries.insert(0, e);
        Some(v)
    }
}

/// One operation of the driver, decoded from fuzz bytes.
#[derive(Clone, Debug)]
pub enum Op {
    /// set/add/replace with an optional TTL.
    Store(u8, usize, Option<u64>, StoreMode),
    /// get.
    Get(u8),
    /// delete.
    Remove(u8),
    /// take (get and remove).
    Take(u8),
    /// incr by delta.
    Incr(u8, i64),
    /// change TTL (None = never).
    Expire(u8, Option<u64>),
    /// move time forward.
    Advance(u64),
    /// clear everything.
    Clear,
    /// crash: run repair, which must keep everything (the shard is consistent).
    Repair,
}

fn key_of(k: u8) -> Vec<u8> {
    // Varied lengths, including ones that leave the head chunk (16 bytes after the record
    // in the small geometry).
    let n = [1usize, 3, 8, 15, 16, 17, 24, 31][(k % 8) as usize];
    let mut key = vec![b'a' + (k % 26); n];
    key[0] = k;
    key
}

fn value_of(k: u8, len: usize, salt: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 ^ salt ^ k as u64).wrapping_mul(31) as u8)
        .collect()
}

impl Op {
    /// Decodes ops from arbitrary bytes; never fails.
    pub fn decode(mut data: &[u8]) -> Vec<Op> {
        let mut ops = Vec::new();
        while !data.is_empty() && ops.len() < 512 {
            let mut next = || -> u8 {
                match data.split_first() {
                    Some((&b, rest)) => {
                        data = rest;
                        b
                    }
                    None => 0,
                }
            };
            let tag = next();
            let key = next() % 12;
            let arg = next();
            let ttl = match next() % 4 {
                0 => None,
                n => Some(n as u64 * 10),
            };
            ops.push(match tag % 16 {
                0..=3 => Op::Store(key, arg as usize % 161, ttl, StoreMode::Set),
                4 => Op::Store(key, arg as usize % 40, ttl, StoreMode::Add),
                5 => Op::Store(key, arg as usize % 40, ttl, StoreMode::Replace),
                6..=8 => Op::Get(key),
                9 => Op::Remove(key),
                10 => Op::Take(key),
                11 => Op::Incr(key, arg as i64 - 128),
                12 => Op::Expire(key, ttl),
                13 => Op::Advance(arg as u64 % 25),
                14 => Op::Clear,
                _ => Op::Repair,
            });
        }
        ops
    }
}

/// Runs `ops` against a fresh heap shard and the model, checking `validate()` after every
/// step.
///
/// With `flush_on_advance`, expired entries are reclaimed eagerly whenever time moves, so
/// the table must agree with the capacity-bound model exactly: every result, every
/// eviction count, the length and the final LRU order. Without it, expired entries linger
/// until something finds them, so evictions differ; the model then remembers every key's
/// last write and the table must never return anything else (no stale, expired, deleted
/// or torn value).
pub fn run(ops: &[Op], flush_on_advance: bool) -> Result<(), String> {
    run_with(ops, flush_on_advance, false)
}

/// `key` read as a lock-free reader would at time `now`. `Err(true)`: it found the key
/// expired (left to the locked path); `Err(false)`: it gave up.
fn read_unlocked(shard: &mut HeapShard, key: &[u8], now: u64) -> Result<Option<Vec<u8>>, bool> {
    let g = *shard.geometry();
    let sh = shard.shared();
    match sh.find(Key::plain(g.hash_seed, key)).map_err(|_| false)? {
        None => Ok(None),
        Some((_, rec)) if rec.expires_at != 0 && now >= rec.expires_at => Err(true),
        Some((r, rec)) => {
            let mut out = vec![0; rec.value_len as usize];
            sh.copy_value(r, &rec, &mut out).map_err(|_| false)?;
            match sh.checksum_ok(r, key, &out) {
                Ok(true) => Ok(Some(out)),
                _ => Err(false),
            }
        }
    }
}

/// Fills a heap shard with entries, overwrites its bytes with `data` from the byte
/// `data[0..4]` names on (the rest of `data` is the damage), then reads every key as a
/// lock-free reader would. Any result is acceptable from damaged bytes except a panic, a
/// hang or an out-of-bounds access (which the fuzz target and Miri would catch); returns
/// how many reads gave a value.
pub fn read_damaged(data: &[u8]) -> usize {
    let g = small_geometry();
    let mut shard = HeapShard::new(g);
    for k in 0..12u8 {
        let key = key_of(k);
        let value = value_of(k, 7 * k as usize, 0);
        let _ = shard.view().store(
            Key::plain(g.hash_seed, &key),
            &value,
            Deadline::At(0),
            StoreMode::Set,
            &mut Now::fixed(0),
        );
    }
    if let Some((at, damage)) = data.split_first_chunk::<4>() {
        let bytes = shard.bytes_mut();
        let start = u32::from_le_bytes(*at) as usize % bytes.len();
        for (b, d) in bytes[start..].iter_mut().zip(damage) {
            *b = *d;
        }
    }
    (0..16u8)
        .filter(|k| matches!(read_unlocked(&mut shard, &key_of(*k), 1), Ok(Some(_))))
        .count()
}

/// [`run`] with strict LRU order (`exact_lru`) or lazy promotion.
pub fn run_with(ops: &[Op], flush_on_advance: bool, exact_lru: bool) -> Result<(), String> {
    let mut g = small_geometry();
    g.exact_lru = exact_lru;
    let mut shard = HeapShard::new(g);
    let exact = flush_on_advance;
    let mut model = if exact {
        Model::new(&g)
    } else {
        Model::unbounded(&g)
    };
    let mut time = 1000u64;
    for (step, op) in ops.iter().enumerate() {
        // A get is made twice: first as a lock-free reader sees the shard, then locked.
        let unlocked = match op {
            Op::Get(k) => Some(read_unlocked(&mut shard, &key_of(*k), time)),
            _ => None,
        };
        let mut v = shard.view();
        let mut now = Now::fixed(time);
        let ctx = |what: String| format!("step {step} {op:?}: {what}");
        match op {
            Op::Store(k, len, ttl, mode) => {
                let key = key_of(*k);
                let value = value_of(*k, *len, time);
                let h = key_hash(g.hash_seed, &key) as u32;
                let exp = ttl.map(|t| time + t);
                let deadline = Deadline::At(exp.unwrap_or(0));
                let got = v
                    .store(
                        Key {
                            bytes: &key,
                            hash: h,
                            tagged: false,
                        },
                        &value,
                        deadline,
                        *mode,
                        &mut now,
                    )
                    .map_err(|e| ctx(format!("{e:?}")))?;
                let want = model.store(&key, &value, Some(exp.unwrap_or(0)), *mode);
                if exact && got != want {
                    return Err(ctx(format!("store: table {got:?}, model {want:?}")));
                }
                if !exact && matches!(got, Stored::Written { .. }) {
                    // The model may have the key already evicted in the table; align it.
                    if !matches!(want, Stored::Written { .. }) {
                        model.store(&key, &value, Some(exp.unwrap_or(0)), StoreMode::Set);
                    }
                }
            }
            Op::Get(k) => {
                let key = key_of(*k);
                let h = key_hash(g.hash_seed, &key) as u32;
                let got = match v
                    .lookup(
                        Key {
                            bytes: &key,
                            hash: h,
                            tagged: false,
                        },
                        &mut now,
                    )
                    .map_err(|e| ctx(format!("{e:?}")))?
                {
                    Some(r) => {
                        let mut out = Vec::new();
                        v.read_value(r, &mut out)
                            .map_err(|e| ctx(format!("{e:?}")))?;
                        Some(out)
                    }
                    None => None,
                };
                // A quiet shard is never torn: the lock-free read must agree, except that it
                // leaves an expired entry to the locked path.
                match unlocked {
                    Some(Ok(Some(u))) if got.as_ref() != Some(&u) => {
                        return Err(ctx(format!("unlocked read {u:?}, locked {got:?}")));
                    }
                    Some(Ok(None)) if got.is_some() => {
                        return Err(ctx(format!("unlocked read missed, locked {got:?}")));
                    }
                    Some(Err(expired)) if !expired || got.is_some() => {
                        return Err(ctx(format!("unlocked read gave up, locked {got:?}")));
                    }
                    _ => {}
                }
                compare(&mut model, &key, got, exact).map_err(ctx)?;
            }
            Op::Remove(k) => {
                let key = key_of(*k);
                let h = key_hash(g.hash_seed, &key) as u32;
                let got = v
                    .remove(
                        Key {
                            bytes: &key,
                            hash: h,
                            tagged: false,
                        },
                        &mut now,
                    )
                    .map_err(|e| ctx(format!("{e:?}")))?;
                let want = model.pos(&key).map(|i| model.entries.remove(i)).is_some();
                if got != want && (exact || got) {
                    return Err(ctx(format!("remove: table {got}, model {want}")));
                }
            }
            Op::Take(k) => {
                let key = key_of(*k);
                let h = key_hash(g.hash_seed, &key) as u32;
                let mut out = Vec::new();
                let got = v
                    .take(
                        Key {
                            bytes: &key,
                            hash: h,
                            tagged: false,
                        },
                        &mut now,
                        &mut out,
                    )
                    .map_err(|e| ctx(format!("{e:?}")))?
                    .then_some(out);
                let want = model.pos(&key).map(|i| model.entries.remove(i).value);
                if got != want && (exact || got.is_some()) {
                    return Err(ctx(format!("take: table {got:?}, model {want:?}")));
                }
            }
            Op::Incr(k, d) => {
                let key = key_of(*k);
                let h = key_hash(g.hash_seed, &key) as u32;
                let got = v
                    .incr(
                        Key {
                            bytes: &key,
                            hash: h,
                            tagged: false,
                        },
                        *d,
                        0,
                        &mut now,
                    )
                    .map_err(|e| ctx(format!("{e:?}")))?;
                let cur = model.pos(&key).map(|i| model.entries[i].value.clone());
                let want = match cur.as_deref().map(std::str::from_utf8) {
                    None => Incr::Value(*d),
                    Some(Ok(s)) => match s.parse::<i64>() {
                        Ok(n) => n.checked_add(*d).map_or(Incr::Overflow, Incr::Value),
                        Err(_) => Incr::NotInteger,
                    },
                    Some(Err(_)) => Incr::NotInteger,
                };
                if exact && got != want {
                    return Err(ctx(format!("incr: table {got:?}, model {want:?}")));
                }
                if let Incr::Value(n) = got {
                    // The table keeps the deadline of an entry it still had; one it had
                    // evicted (lazy mode only) starts without one.
                    let at = v
                        .deadline(
                            Key {
                                bytes: &key,
                                hash: h,
                                tagged: false,
                            },
                            &mut now,
                        )
                        .map_err(|e| ctx(format!("{e:?}")))?
                        .ok_or_else(|| ctx("incremented entry is missing".into()))?;
                    model.store(&key, n.to_string().as_bytes(), Some(at), StoreMode::Set);
                }
            }
            Op::Expire(k, ttl) => {
                let key = key_of(*k);
                let h = key_hash(g.hash_seed, &key) as u32;
                let at = ttl.map_or(0, |t| time + t);
                let got = v
                    .set_deadline(
                        Key {
                            bytes: &key,
                            hash: h,
                            tagged: false,
                        },
                        at,
                        &mut now,
                    )
                    .map_err(|e| ctx(format!("{e:?}")))?;
                let want = match model.pos(&key) {
                    Some(i) => {
                        model.entries[i].expires = at;
                        true
                    }
                    None => false,
                };
                if got != want && (exact || got) {
                    return Err(ctx(format!("expire: table {got}, model {want}")));
                }
            }
            Op::Advance(dt) => {
                time += dt;
                model.expire(time);
                if flush_on_advance {
                    let mut now = Now::fixed(time);
                    let mut at = Some(0);
                    while let Some(start) = at {
                        at = v
                            .flush_expired_from(start, 3, &mut now)
                            .map_err(|e| ctx(format!("{e:?}")))?
                            .1;
                    }
                }
            }
            Op::Clear => {
                v.clear();
                model.entries.clear();
            }
            Op::Repair => {
                let before = v.meta.len;
                let report = v.repair();
                if report.kept != before || report.dropped != 0 || report.cleared {
                    return Err(ctx(format!(
                        "repair of a sound shard changed it: {report:?}"
                    )));
                }
            }
        }
        v.validate()
            .map_err(|e| ctx(format!("invariant broken: {e}")))?;
        if exact && v.meta.len as usize != model.entries.len() {
            return Err(ctx(format!(
                "len: table {}, model {}",
                v.meta.len,
                model.entries.len()
            )));
        }
    }
    // Final LRU order check in exact mode: walk the table's list against the model.
    if exact {
        let v = shard.view();
        let mut keys = Vec::new();
        let mut i = v.meta.lru_head;
        while i != crate::layout::NIL {
            let mut k = Vec::new();
            v.read_key(i, &mut k).map_err(|e| format!("{e:?}"))?;
            keys.push(k);
            i = v.lru_next(i).map_err(|e| format!("{e:?}"))?;
        }
        let want: Vec<Vec<u8>> = model.entries.iter().map(|e| e.key.clone()).collect();
        if keys != want {
            return Err(format!("LRU order: table {keys:?}, model {want:?}"));
        }
    }
    Ok(())
}

fn compare(model: &mut Model, key: &[u8], got: Option<Vec<u8>>, exact: bool) -> Result<(), String> {
    let want = model.get(key);
    match (&got, &want) {
        (Some(a), Some(b)) if a != b => Err(format!("get: table {a:?}, model {b:?}")),
        (Some(_), None) => Err(format!("get: table returned {got:?}, model has nothing")),
        (None, Some(_)) if exact => Err(format!("get: table missing, model {want:?}")),
        (None, Some(_)) => {
            // Evicted in the table but not in the model: drop it from the model too.
            let i = model.pos(key).expect("present");
            model.entries.remove(i);
            Ok(())
        }
        _ => Ok(()),
    }
}
