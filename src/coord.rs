//! The coordination table: single-flight markers, named locks and pool slots, each owned by
//! one process (pid + start time) and one acquisition (token).
//!
//! Safe logic over the bytes of the coordination region, guarded by its own robust mutex.
//! Slots are taken lowest-free-first and `high_water` bounds every scan, so a table with a
//! few live holders is scanned in a few cache lines. Waiting and waking (futex words, one
//! per slot) live in `sync`, outside this module: here nothing sleeps or calls the OS,
//! except through the liveness check the caller passes in.

use crate::layout::{slot_kind, CoordMeta, CoordSlot};
use crate::sys::process::ProcessId;

/// A view of the coordination region.
pub struct CoordView<'a> {
    /// Bookkeeping.
    pub meta: &'a mut CoordMeta,
    slots: &'a mut [CoordSlot],
}

/// What a holder looks like to the liveness check and to release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The owning process.
    pub process: ProcessId,
    /// The acquisition's token.
    pub token: u64,
}

impl<'a> CoordView<'a> {
    /// Interprets `region` (exactly the geometry's coordination region).
    pub fn new(region: &'a mut [u8], slots: u32) -> Result<CoordView<'a>, &'static str> {
        let meta_len = std::mem::size_of::<CoordMeta>();
        let want = meta_len + std::mem::size_of::<CoordSlot>() * slots as usize;
        if region.len() != want {
            return Err("coordination region has the wrong length");
        }
        let (m, s) = region.split_at_mut(meta_len);
        let meta = bytemuck::try_from_bytes_mut::<CoordMeta>(m)
            .map_err(|_| "coordination region is misaligned")?;
        let slots = bytemuck::try_cast_slice_mut::<u8, CoordSlot>(s)
            .map_err(|_| "coordination region is misaligned")?;
        Ok(CoordView { meta, slots })
    }

    fn scan_len(&self) -> usize {
        (self.meta.high_water as usize).min(self.slots.len())
    }

    /// Slot `i`, if in range.
    pub fn slot(&self, i: usize) -> Option<&CoordSlot> {
        self.slots.get(i)
    }

    /// Indices of slots of one of `kinds` holding `key`.
    pub fn find<'s>(&'s self, kinds: &'s [u32], key: [u64; 2]) -> impl Iterator<Item = usize> + 's {
        self.slots[..self.scan_len()]
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.key == key && kinds.contains(&s.kind))
            .map(|(i, _)| i)
    }

    /// The first slot of one of `kinds` holding `key`.
    #[cfg(test)]
    pub fn find_one(&self, kinds: &[u32], key: [u64; 2]) -> Option<usize> {
        self.find(kinds, key).next()
    }

    /// Whether slot `i` lapsed at `now` or belongs to a process that is gone.
    pub fn is_stale(&self, i: usize, now: u64, alive: &mut impl FnMut(ProcessId) -> bool) -> bool {
        let Some(s) = self.slots.get(i) else {
            return false;
        };
        s.kind != slot_kind::FREE
            && ((s.expires_at != 0 && now >= s.expires_at)
                || !alive(ProcessId {
                    pid: s.owner_pid,
                    start: s.owner_start,
                }))
    }

    /// Frees every stale slot of one of `kinds` holding `key`, calling `on_free` with each
    /// index; returns how many.
    pub fn reclaim(
        &mut self,
        kinds: &[u32],
        key: [u64; 2],
        now: u64,
        alive: &mut impl FnMut(ProcessId) -> bool,
        mut on_free: impl FnMut(usize),
    ) -> u32 {
        let mut n = 0;
        for i in 0..self.scan_len() {
            let s = self.slots[i];
            if s.key == key && kinds.contains(&s.kind) && self.is_stale(i, now, alive) {
                self.free(i);
                self.meta.reclaimed += 1;
                on_free(i);
                n += 1;
            }
        }
        n
    }

    /// Up to `out.len()` holders of `key` at indices `>= from`: (index, owner, token).
    /// Returns how many were written.
    pub fn holders_from(
        &self,
        kinds: &[u32],
        key: [u64; 2],
        from: usize,
        out: &mut [(usize, ProcessId, u64)],
    ) -> usize {
        let mut n = 0;
        for (i, s) in self.slots[..self.scan_len()].iter().enumerate().skip(from) {
            if n == out.len() {
                break;
            }
            if s.key == key && kinds.contains(&s.kind) {
                out[n] = (
                    i,
                    ProcessId {
                        pid: s.owner_pid,
                        start: s.owner_start,
                    },
                    s.owner_token,
                );
                n += 1;
            }
        }
        n
    }

    /// Stores `slot` in the lowest free slot; `None` if the table is full.
    pub fn take(&mut self, slot: CoordSlot) -> Option<usize> {
        let n = self.scan_len();
        let i = match self.slots[..n]
            .iter()
            .position(|s| s.kind == slot_kind::FREE)
        {
            Some(i) => i,
            None if n < self.slots.len() => {
                self.meta.high_water = n as u32 + 1;
                n
            }
            None => return None,
        };
        // Kind last: a holder killed mid-write (a signal lands between instructions) leaves
        // a FREE slot or a complete one; the fence keeps the compiler from merging or
        // reordering the two writes.
        self.slots[i] = CoordSlot {
            kind: slot_kind::FREE,
            ..slot
        };
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::Release);
        self.slots[i].kind = slot.kind;
        Some(i)
    }

    /// Rewrites slot `i`'s owner fields (a takeover) and kind.
    pub fn reassign(&mut self, i: usize, slot: CoordSlot) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = slot;
        }
    }

    /// Frees slot `i` and lowers the high-water mark past trailing free slots.
    pub fn free(&mut self, i: usize) {
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        s.kind = slot_kind::FREE;
        *s = CoordSlot::zeroed_free();
        let mut hw = self.scan_len();
        while hw > 0 && self.slots[hw - 1].kind == slot_kind::FREE {
            hw -= 1;
        }
        self.meta.high_water = hw as u32;
    }

    /// Frees slot `i` if it still holds `key` for `owner`; false if it does not (released
    /// already, expired and taken by someone else, or never ours).
    pub fn release(&mut self, i: usize, kinds: &[u32], key: [u64; 2], owner: Owner) -> bool {
        match self.slots.get(i) {
            Some(s)
                if kinds.contains(&s.kind)
                    && s.key == key
                    && s.owner_pid == owner.process.pid
                    && s.owner_token == owner.token =>
            {
                self.free(i);
                true
            }
            _ => false,
        }
    }

    /// Frees every slot of `kind` whose group is `group`; returns how many.
    pub fn free_group(&mut self, kinds: &[u32], group: u64, mut on_free: impl FnMut(usize)) -> u32 {
        let mut n = 0;
        for i in 0..self.scan_len() {
            let s = self.slots[i];
            if kinds.contains(&s.kind) && s.group == group {
                self.free(i);
                on_free(i);
                n += 1;
            }
        }
        n
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.slots[..self.scan_len()]
            .iter()
            .filter(|s| s.kind != slot_kind::FREE)
            .count()
    }

    /// Checks the table's invariants.
    pub fn validate(&self) -> Result<(), String> {
        if self.meta.high_water as usize > self.slots.len() {
            return Err(format!(
                "high-water mark {} exceeds {} slots",
                self.meta.high_water,
                self.slots.len()
            ));
        }
        for (i, s) in self.slots.iter().enumerate() {
            if s.kind > slot_kind::MAX {
                return Err(format!("slot {i} has unknown kind {}", s.kind));
            }
            if s.kind != slot_kind::FREE && i >= self.meta.high_water as usize {
                return Err(format!("slot {i} is in use above the high-water mark"));
            }
            if s.kind != slot_kind::FREE && s.owner_pid == 0 {
                return Err(format!("slot {i} is in use without an owner"));
            }
        }
        Ok(())
    }

    /// Makes the table valid again after a holder died mid-update: slots of unknown kind or
    /// without an owner are freed and the high-water mark is recomputed. Returns how many
    /// slots were dropped.
    pub fn repair(&mut self) -> u32 {
        let mut dropped = 0;
        for s in self.slots.iter_mut() {
            if s.kind > slot_kind::MAX || (s.kind != slot_kind::FREE && s.owner_pid == 0) {
                *s = CoordSlot::zeroed_free();
                dropped += 1;
            }
        }
        let hw = self
            .slots
            .iter()
            .rposition(|s| s.kind != slot_kind::FREE)
            .map_or(0, |i| i + 1);
        self.meta.high_water = hw as u32;
        dropped
    }
}

impl CoordSlot {
    fn zeroed_free() -> CoordSlot {
        bytemuck::Zeroable::zeroed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: u32) -> Vec<u64> {
        vec![0u64; (64 + 64 * n as usize) / 8]
    }

    fn slot(kind: u32, key: u64, pid: u32, token: u64, expires_at: u64) -> CoordSlot {
        CoordSlot {
            kind,
            owner_pid: pid,
            key: [key, 0],
            owner_start: 1,
            owner_token: token,
            expires_at,
            acquired_at: 0,
            group: 7,
        }
    }

    #[test]
    fn take_free_and_high_water() {
        let mut buf = table(4);
        let mut v = CoordView::new(bytemuck::cast_slice_mut(&mut buf), 4).unwrap();
        let a = v.take(slot(slot_kind::LOCK, 1, 10, 1, 0)).unwrap();
        let b = v.take(slot(slot_kind::LOCK, 2, 10, 2, 0)).unwrap();
        assert_eq!((a, b, v.meta.high_water), (0, 1, 2));
        v.free(a);
        assert_eq!(v.meta.high_water, 2);
        assert_eq!(v.take(slot(slot_kind::POOL, 3, 10, 3, 0)), Some(0));
        for k in 4..6 {
            v.take(slot(slot_kind::POOL, k, 10, k, 0)).unwrap();
        }
        assert_eq!(v.take(slot(slot_kind::POOL, 9, 10, 9, 0)), None, "full");
        v.free(3);
        v.free(2);
        assert_eq!(v.meta.high_water, 2);
        assert_eq!(v.used(), 2);
        v.validate().unwrap();
    }

    #[test]
    fn release_checks_owner_and_token() {
        let mut buf = table(4);
        let mut v = CoordView::new(bytemuck::cast_slice_mut(&mut buf), 4).unwrap();
        let i = v.take(slot(slot_kind::LOCK, 1, 10, 5, 0)).unwrap();
        let me = |token| Owner {
            process: ProcessId { pid: 10, start: 1 },
            token,
        };
        assert!(
            !v.release(i, &[slot_kind::LOCK], [1, 0], me(6)),
            "other token"
        );
        assert!(
            !v.release(i, &[slot_kind::POOL], [1, 0], me(5)),
            "other kind"
        );
        assert!(v.release(i, &[slot_kind::LOCK], [1, 0], me(5)));
        assert!(!v.release(i, &[slot_kind::LOCK], [1, 0], me(5)), "twice");
    }

    #[test]
    fn reclaim_frees_dead_and_expired_only() {
        let mut buf = table(8);
        let mut v = CoordView::new(bytemuck::cast_slice_mut(&mut buf), 8).unwrap();
        v.take(slot(slot_kind::POOL, 1, 10, 1, 0)).unwrap(); // alive
        v.take(slot(slot_kind::POOL, 1, 11, 2, 0)).unwrap(); // dead
        v.take(slot(slot_kind::POOL, 1, 10, 3, 50)).unwrap(); // expired at 100
        v.take(slot(slot_kind::POOL, 2, 11, 4, 0)).unwrap(); // other key
        let mut alive = |p: ProcessId| p.pid == 10;
        assert_eq!(
            v.reclaim(&[slot_kind::POOL], [1, 0], 100, &mut alive, |_| {}),
            2
        );
        assert_eq!(v.find(&[slot_kind::POOL], [1, 0]).count(), 1);
        assert_eq!(v.find(&[slot_kind::POOL], [2, 0]).count(), 1);
        assert_eq!(v.meta.reclaimed, 2);
        assert_eq!(v.free_group(&[slot_kind::POOL], 7, |_| {}), 2);
        assert_eq!(v.meta.high_water, 0);
    }

    #[test]
    fn repair_drops_garbage_and_keeps_sound_slots() {
        let mut buf = table(8);
        {
            let mut v = CoordView::new(bytemuck::cast_slice_mut(&mut buf), 8).unwrap();
            v.take(slot(slot_kind::LOCK, 1, 10, 1, 0)).unwrap();
            v.take(slot(slot_kind::LOCK, 2, 10, 2, 0)).unwrap();
        }
        // Damage: slot 1 gets an unknown kind, slot 5 a kind without owner, high water lies.
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        bytes[64 + 64] = 99;
        bytes[64 + 5 * 64] = 3;
        bytes[4] = 200;
        let mut v = CoordView::new(bytes, 8).unwrap();
        assert!(v.validate().is_err());
        assert_eq!(v.repair(), 2);
        v.validate().unwrap();
        assert_eq!(v.meta.high_water, 1);
        assert_eq!(v.find_one(&[slot_kind::LOCK], [1, 0]), Some(0));
    }

    #[test]
    fn wrong_region_length_is_an_error() {
        let mut buf = table(4);
        assert!(CoordView::new(bytemuck::cast_slice_mut(&mut buf), 5).is_err());
    }

    /// The table against a model that is just an array of optional slots, over random
    /// takes, releases (right and wrong owners), reclaims, group frees and frees.
    #[test]
    #[cfg_attr(miri, ignore)] // thousands of cases; the unit tests above run under Miri
    fn matches_a_model_of_optional_slots() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        #[derive(Clone, Debug)]
        enum Step {
            Take(u32, u64, u32, u64),
            Release(usize, u64, u32, bool),
            Reclaim(u64, u64, u32),
            FreeGroup(u64),
            Free(usize),
        }
        let step = prop_oneof![
            4 => (1..=slot_kind::MAX, 0..4u64, 1..4u32, prop_oneof![Just(0u64), Just(50), Just(150)])
                .prop_map(|(k, key, pid, exp)| Step::Take(k, key, pid, exp)),
            2 => (0..10usize, 0..4u64, 1..4u32, any::<bool>())
                .prop_map(|(i, key, pid, right)| Step::Release(i, key, pid, right)),
            1 => (0..4u64, prop_oneof![Just(0u64), Just(100), Just(200)], 1..4u32)
                .prop_map(|(key, now, dead)| Step::Reclaim(key, now, dead)),
            1 => (0..3u64).prop_map(Step::FreeGroup),
            1 => (0..10usize).prop_map(Step::Free),
        ];
        let mut runner = TestRunner::new(Config {
            cases: 400,
            ..Config::default()
        });
        runner
            .run(&proptest::collection::vec(step, 0..80), |steps| {
                const N: u32 = 8;
                let mut buf = table(N);
                let mut v = CoordView::new(bytemuck::cast_slice_mut(&mut buf), N).unwrap();
                let mut model: Vec<Option<CoordSlot>> = vec![None; N as usize];
                let mut token = 0u64;
                for s in &steps {
                    match *s {
                        Step::Take(kind, key, pid, exp) => {
                            token += 1;
                            let mut new = slot(kind, key, pid, token, exp);
                            new.group = key % 3;
                            let want = model.iter().position(Option::is_none);
                            prop_assert_eq!(v.take(new), want);
                            if let Some(i) = want {
                                model[i] = Some(new);
                            }
                        }
                        Step::Release(i, key, pid, right) => {
                            let held = model.get(i).copied().flatten();
                            let tok = match (right, held) {
                                (true, Some(h)) => h.owner_token,
                                _ => u64::MAX,
                            };
                            let owner = Owner {
                                process: ProcessId { pid, start: 1 },
                                token: tok,
                            };
                            let kinds = [
                                slot_kind::FLIGHT,
                                slot_kind::FAILED,
                                slot_kind::LOCK,
                                slot_kind::POOL,
                            ];
                            let ok = held.is_some_and(|h| {
                                h.key == [key, 0] && h.owner_pid == pid && h.owner_token == tok
                            });
                            prop_assert_eq!(v.release(i, &kinds, [key, 0], owner), ok);
                            if ok {
                                model[i] = None;
                            }
                        }
                        Step::Reclaim(key, now, dead) => {
                            let kinds = [slot_kind::LOCK, slot_kind::POOL];
                            let mut alive = |p: ProcessId| p.pid != dead;
                            let mut want = 0;
                            for m in model.iter_mut() {
                                if let Some(h) = *m {
                                    let stale = (h.expires_at != 0 && now >= h.expires_at)
                                        || h.owner_pid == dead;
                                    if h.key == [key, 0] && kinds.contains(&h.kind) && stale {
                                        *m = None;
                                        want += 1;
                                    }
                                }
                            }
                            prop_assert_eq!(
                                v.reclaim(&kinds, [key, 0], now, &mut alive, |_| {}),
                                want
                            );
                        }
                        Step::FreeGroup(g) => {
                            let kinds = [slot_kind::FLIGHT, slot_kind::FAILED];
                            let mut want = 0;
                            for m in model.iter_mut() {
                                if m.is_some_and(|h| h.group == g && kinds.contains(&h.kind)) {
                                    *m = None;
                                    want += 1;
                                }
                            }
                            prop_assert_eq!(v.free_group(&kinds, g, |_| {}), want);
                        }
                        Step::Free(i) => {
                            v.free(i);
                            if let Some(m) = model.get_mut(i) {
                                *m = None;
                            }
                        }
                    }
                    prop_assert!(v.validate().is_ok(), "{:?}", v.validate());
                    let hw = model.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
                    prop_assert_eq!(v.meta.high_water as usize, hw);
                    prop_assert_eq!(v.used(), model.iter().flatten().count());
                    for key in 0..4u64 {
                        let all = [
                            slot_kind::FLIGHT,
                            slot_kind::FAILED,
                            slot_kind::LOCK,
                            slot_kind::POOL,
                        ];
                        let got: Vec<usize> = v.find(&all, [key, 0]).collect();
                        let want: Vec<usize> = (0..model.len())
                            .filter(|&i| model[i].is_some_and(|h| h.key == [key, 0]))
                            .collect();
                        prop_assert_eq!(got, want);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
