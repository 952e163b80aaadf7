//! The named segment: `shm_open`, sizing with `posix_fallocate`, mapping with `memmap2`,
//! the create/join protocol, and raw access to the shard locks and regions.
//!
//! Create/join protocol (DESIGN.md draws it): whoever opens the name takes an exclusive
//! `flock` on it before looking inside. A segment whose header says ready is validated and
//! joined. An empty file, or one whose header a creator wrote but never marked ready while
//! that creator is provably dead (pid + start time), is formatted by the lock holder if it
//! may create: a creator that died mid-initialization never leaves a name unusable. Nothing
//! else is ever formatted, truncated or re-initialized: a damaged header is an error naming
//! the field. `flock` is released as soon as the header is checked: it guards only
//! initialization, never cache operations.

use crate::error::{Error, Result};
use crate::layout::{Geometry, Header, BACKUP_OFFSET, LAYOUT_VERSION, MAGIC, READY};
use crate::sys::{process, robust};
use crate::table::ShardView;
use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::{fchmod, fstat, Mode};
use std::fs::File;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How to treat an existing or missing name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Join it if it exists, create it otherwise.
    OpenOrCreate,
    /// Create it; fail with `AlreadyExists` if it exists.
    CreateNew,
    /// Join it; fail with `NotFound` if it does not exist.
    OpenExisting,
}

/// Everything [`Segment::open`] needs.
#[derive(Clone, Debug)]
pub struct OpenParams {
    /// Create or join.
    pub mode: OpenMode,
    /// Geometry to create with (ignored when joining).
    pub geometry: Geometry,
    /// File mode for a new segment.
    pub perm: u32,
    /// Join segments owned by another user.
    pub allow_foreign_owner: bool,
    /// How long to wait for a creator to finish initializing.
    pub init_timeout: Duration,
}

/// A mapped segment. Dropping it unmaps this process's view only: it never unlinks, so a
/// forked child or any other process exiting leaves the cache in place.
pub struct Segment {
    map: MmapRaw,
    geom: Geometry,
    header: Header,
    created: bool,
    name: String,
    /// This mapping's claim on a per-process counter slot (see `crate::counters`).
    proc_claim: AtomicU64,
}

// SAFETY: the mapping is shared memory accessed only through atomics (the ready flag),
// process-shared mutexes, and slices handed out while such a mutex is held.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` exposes no unsynchronized mutation.
unsafe impl Sync for Segment {}

fn os(op: &'static str, name: &str, e: Errno) -> Error {
    match e {
        Errno::EACCES | Errno::EPERM => Error::PermissionDenied {
            name: name.to_string(),
            reason: format!("{op}: {e}"),
        },
        _ => Error::Os {
            op,
            name: name.to_string(),
            source: std::io::Error::from_raw_os_error(e as i32),
        },
    }
}

fn shm_path(name: &str) -> String {
    format!("/{name}")
}

impl Segment {
    /// Opens, creates or joins the segment `name` (already validated).
    pub fn open(name: &str, p: &OpenParams) -> Result<Segment> {
        // A timeout too long to represent is no deadline at all.
        let deadline = Instant::now().checked_add(p.init_timeout);
        loop {
            let (file, created_now) = Self::open_file(name, p)?;
            let joined = Self::init_or_join(name, p, file, created_now, deadline);
            if created_now && joined.is_err() {
                // Ours and never made ready: nobody else can have it mapped.
                let _ = nix::sys::mman::shm_unlink(shm_path(name).as_str());
            }
            if let Some(seg) = joined? {
                return Ok(seg);
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Err(Error::Corrupted {
                    name: name.to_string(),
                    reason: "its creator is still initializing it after the init timeout \
                             (stopped?); unlink it if that process is gone"
                        .to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn open_file(name: &str, p: &OpenParams) -> Result<(File, bool)> {
        let path = shm_path(name);
        let mode = Mode::from_bits_truncate(p.perm as libc::mode_t);
        let excl = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
        loop {
            if p.mode != OpenMode::OpenExisting {
                match nix::sys::mman::shm_open(path.as_str(), excl, mode) {
                    Ok(fd) => {
                        let file = File::from(fd);
                        // shm_open applies the umask; the requested mode is what we promise.
                        fchmod(file.as_raw_fd(), mode).map_err(|e| os("fchmod", name, e))?;
                        return Ok((file, true));
                    }
                    Err(Errno::EEXIST) if p.mode == OpenMode::OpenOrCreate => {}
                    Err(Errno::EEXIST) => {
                        return Err(Error::AlreadyExists {
                            name: name.to_string(),
                        })
                    }
                    Err(e) => return Err(os("shm_open", name, e)),
                }
            }
            match nix::sys::mman::shm_open(path.as_str(), OFlag::O_RDWR, Mode::empty()) {
                Ok(fd) => return Ok((File::from(fd), false)),
                // Unlinked between our two calls: try creating again.
                Err(Errno::ENOENT) if p.mode == OpenMode::OpenOrCreate => continue,
                Err(Errno::ENOENT) => {
                    return Err(Error::NotFound {
                        name: name.to_string(),
                    })
                }
                Err(e) => return Err(os("shm_open", name, e)),
            }
        }
    }

    /// With the init lock held: join a ready segment, or format an uninitialized one if we
    /// may create. `Ok(None)` means "not ready yet, retry".
    fn init_or_join(
        name: &str,
        p: &OpenParams,
        file: File,
        created_now: bool,
        deadline: Option<Instant>,
    ) -> Result<Option<Segment>> {
        let st = fstat(file.as_raw_fd()).map_err(|e| os("fstat", name, e))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if !created_now && st.st_uid != me && !p.allow_foreign_owner {
            return Err(Error::PermissionDenied {
                name: name.to_string(),
                reason: format!(
                    "owned by uid {} (mode {:o}), not by this user (uid {me}); allow foreign owners to join it",
                    st.st_uid,
                    st.st_mode & 0o777
                ),
            });
        }
        let locked = Self::flock_until(name, file, deadline)?;
        let st = fstat(locked.as_raw_fd()).map_err(|e| os("fstat", name, e))?;
        let size = st.st_size.max(0) as u64;
        if size == 0 {
            // Nothing was ever written into it: just created (by us, or by a creator that
            // died before writing its header, or one about to lock it). No process can have
            // mapped anything of it.
            if p.mode == OpenMode::OpenExisting {
                return Ok(None);
            }
            return Self::format(name, &locked, &p.geometry).map(Some);
        }
        let corrupted = |reason: String| Error::Corrupted {
            name: name.to_string(),
            reason,
        };
        if size < size_of::<Header>() as u64 {
            return Err(corrupted(format!(
                "truncated: the file has {size} bytes, fewer than its {}-byte header; \
                 `shmemcache unlink {name}` removes it",
                size_of::<Header>()
            )));
        }
        // A creator that died right after writing its header leaves only the header: the
        // backup then reads as zeros (unsound), and the header alone decides.
        let mut raw = [0u8; BACKUP_OFFSET + size_of::<Header>()];
        let have = (size as usize).min(raw.len());
        locked
            .read_exact_at(&mut raw[..have], 0)
            .map_err(|e| Error::Os {
                op: "read header",
                name: name.to_string(),
                source: e,
            })?;
        let primary = bytemuck::pod_read_unaligned::<Header>(&raw[..size_of::<Header>()]);
        let backup = bytemuck::pod_read_unaligned::<Header>(&raw[BACKUP_OFFSET..]);
        let backup_ok = backup.magic == MAGIC && backup.checksum_ok();
        if primary.magic != MAGIC && !backup_ok {
            return Err(Error::Incompatible {
                name: name.to_string(),
                reason: "not a shmemcache segment (bad magic)".to_string(),
            });
        }
        // Another layout may lay its header out differently: refuse before reading on.
        if primary.magic == MAGIC && primary.layout_version != LAYOUT_VERSION {
            let hint = if backup_ok && backup.layout_version == LAYOUT_VERSION {
                format!(
                    "; its backup copy says version {LAYOUT_VERSION}, so if no other build \
                     made it the field is damaged: `shmemcache repair --force {name}` \
                     restores it"
                )
            } else {
                format!(
                    "; another build of shmemcache made it: once no process of that build \
                     uses it, `shmemcache unlink {name}` removes it and the next open \
                     creates a new one"
                )
            };
            return Err(Error::Incompatible {
                name: name.to_string(),
                reason: format!(
                    "layout version {} (this build reads version {LAYOUT_VERSION}){hint}",
                    primary.layout_version
                ),
            });
        }
        if primary.magic != MAGIC || !primary.checksum_ok() {
            return Err(corrupted(damaged_header(
                name, &primary, &backup, backup_ok,
            )));
        }
        match primary.ready {
            READY => Self::join(name, &locked, primary, size).map(Some),
            0 if backup_ok && backup.ready == READY => Err(corrupted(format!(
                "header field `ready` is damaged (its backup copy says the segment was \
                 completed); `shmemcache repair --force {name}` restores it once no process \
                 has it open"
            ))),
            0 => {
                // A creator wrote its header and has not marked it ready: still working, or
                // died. Only a provably dead creator's segment is taken over, formatted in
                // place with the geometry it chose (never truncated).
                let creator = process::ProcessId {
                    pid: primary.creator_pid,
                    start: primary.creator_start,
                };
                if process::is_alive(creator) {
                    return Ok(None);
                }
                if p.mode == OpenMode::OpenExisting {
                    return Err(corrupted(format!(
                        "it was never completed: its creator (pid {}) died while formatting \
                         it; opening it with Cache::open completes it, or unlink it",
                        primary.creator_pid
                    )));
                }
                let geom = Geometry::from_header(&primary)
                    .map_err(|r| corrupted(format!("bad header: {r}")))?;
                Self::format(name, &locked, &geom).map(Some)
            }
            other => Err(corrupted(format!(
                "header field `ready` is damaged (it holds {other:#x}); `shmemcache repair \
                 --force {name}` restores it from the backup copy once no process has it open"
            ))),
        }
    }

    fn flock_until(name: &str, file: File, deadline: Option<Instant>) -> Result<Flock<File>> {
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(l),
                Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => {
                    if deadline.is_some_and(|d| Instant::now() > d) {
                        return Err(Error::Corrupted {
                            name: name.to_string(),
                            reason: "timed out waiting for its creator to finish initializing it"
                                .to_string(),
                        });
                    }
                    file = f;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err((_, e)) => return Err(os("flock", name, e)),
            }
        }
    }

    fn join(name: &str, file: &File, h: Header, size: u64) -> Result<Segment> {
        let incompatible = |reason: String| Error::Incompatible {
            name: name.to_string(),
            reason,
        };
        if h.layout_version != LAYOUT_VERSION {
            return Err(incompatible(format!(
                "layout version {} (this build reads version {LAYOUT_VERSION})",
                h.layout_version
            )));
        }
        if h.abi_tag != crate::layout::abi_tag() {
            return Err(incompatible(
                "created by a build with another ABI (mutex size, pointer width, byte order or architecture)"
                    .to_string(),
            ));
        }
        let geom = Geometry::from_header(&h).map_err(|reason| Error::Corrupted {
            name: name.to_string(),
            reason: format!("bad header: {reason}"),
        })?;
        if size < geom.total_size as u64 {
            return Err(Error::Corrupted {
                name: name.to_string(),
                reason: format!(
                    "truncated: the file has {size} bytes, its header needs {}",
                    geom.total_size
                ),
            });
        }
        let map = Self::map(name, file, geom.total_size)?;
        Ok(Segment {
            map,
            geom,
            header: h,
            created: false,
            proc_claim: AtomicU64::new(0),
            name: name.to_string(),
        })
    }

    /// Formats the segment under the init lock: a new (empty) file, or a provably dead
    /// creator's half-made one. Never truncates: the file only grows to `total_size`.
    fn format(name: &str, file: &File, geom: &Geometry) -> Result<Segment> {
        let me = process::current();
        let header = geom.to_header(crate::clock::unix_ns(), me.pid, me.start);
        // The header goes first, in one write: from here on, any other opener can tell who
        // is formatting (and whether that process is still alive).
        file.write_all_at(bytemuck::bytes_of(&header), 0)
            .map_err(|e| Error::Os {
                op: "write header",
                name: name.to_string(),
                source: e,
            })?;
        crate::fault::hit(crate::fault::FaultPoint::HeaderWritten);
        // Reserve every page now: a plain ftruncate would let a full /dev/shm surface later
        // as SIGBUS on first touch.
        let len = geom.total_size as i64;
        if let Err(e) = nix::fcntl::posix_fallocate(file.as_raw_fd(), 0, len) {
            return Err(match e {
                Errno::ENOSPC | Errno::EFBIG | Errno::ENOMEM => Error::NoSpace {
                    name: name.to_string(),
                    needed: geom.total_size as u64,
                },
                e => os("posix_fallocate", name, e),
            });
        }
        crate::fault::hit(crate::fault::FaultPoint::Formatting);
        let map = Self::map(name, file, geom.total_size)?;
        let seg = Segment {
            map,
            geom: *geom,
            header,
            created: true,
            proc_claim: AtomicU64::new(0),
            name: name.to_string(),
        };
        for i in 0..geom.shard_count as usize {
            let lock = seg.lock_ptr(i);
            // SAFETY: `lock_ptr` is in bounds and 64-byte aligned; the segment is not ready,
            // so no other process uses it (they wait on our flock or find it not ready).
            unsafe { robust::init(lock) }.map_err(|e| Error::Os {
                op: "pthread_mutex_init",
                name: name.to_string(),
                source: e,
            })?;
            // SAFETY: as above: region `i` is in bounds and not shared.
            let region = unsafe { seg.region_slice(i) };
            ShardView::new(region, geom)
                .map_err(|e| Error::Corrupted {
                    name: name.to_string(),
                    reason: format!("{e:?}"),
                })?
                .format();
        }
        // The coordination area and the memo statistics start zeroed: an empty table. A
        // dead creator's leftovers are cleared (nobody has joined a segment never ready).
        let tail = geom.coord.offset..geom.total_size;
        // SAFETY: the range lies inside the mapping (`total_size` bytes) and nobody else
        // uses the segment yet, as above.
        unsafe { std::ptr::write_bytes(seg.map.as_mut_ptr().add(tail.start), 0, tail.len()) };
        // SAFETY: the coordination mutex lies in bounds, 64-byte aligned (geometry), and the
        // segment is not yet visible to other processes.
        unsafe { robust::init(seg.coord_lock_ptr()) }.map_err(|e| Error::Os {
            op: "pthread_mutex_init",
            name: name.to_string(),
            source: e,
        })?;
        seg.ready_flag().store(READY, Ordering::Release);
        // The backup copy is written last: a ready backup proves the segment was completed,
        // so a damaged `ready` word is never mistaken for a creator that died.
        let mut backup = header;
        backup.ready = READY;
        file.write_all_at(bytemuck::bytes_of(&backup), BACKUP_OFFSET as u64)
            .map_err(|e| Error::Os {
                op: "write header backup",
                name: name.to_string(),
                source: e,
            })?;
        Ok(seg)
    }

    fn map(name: &str, file: &File, len: usize) -> Result<MmapRaw> {
        MmapOptions::new()
            .len(len)
            .map_raw(file)
            .map_err(|e| Error::Os {
                op: "mmap",
                name: name.to_string(),
                source: e,
            })
    }

    /// The offline repair (`shmemcache repair --force`): restores a damaged header from its
    /// backup copy (or a damaged backup from a sound header) and re-initializes lock words
    /// that are not those of a robust, process-shared mutex, marking what they guard dirty
    /// so its next user repairs it. Refused while any other process has the segment
    /// mapped. Returns what it fixed.
    pub fn force_repair(name: &str) -> Result<Vec<String>> {
        let path = shm_path(name);
        let fd = match nix::sys::mman::shm_open(path.as_str(), OFlag::O_RDWR, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(Error::NotFound {
                    name: name.to_string(),
                })
            }
            Err(e) => return Err(os("shm_open", name, e)),
        };
        let deadline = Instant::now().checked_add(Duration::from_secs(5));
        let locked = Self::flock_until(name, File::from(fd), deadline)?;
        let st = fstat(locked.as_raw_fd()).map_err(|e| os("fstat", name, e))?;
        if let Some(pid) = mapped_by(st.st_dev, st.st_ino) {
            return Err(Error::Busy {
                what: "segment",
                name: name.to_string(),
                reason: format!(
                    "process {pid} has it mapped; repair --force runs only when no other \
                     process has the segment open"
                ),
            });
        }
        let io = |op: &'static str| {
            move |e: std::io::Error| Error::Os {
                op,
                name: name.to_string(),
                source: e,
            }
        };
        let corrupted = |reason: String| Error::Corrupted {
            name: name.to_string(),
            reason,
        };
        let mut raw = [0u8; BACKUP_OFFSET + size_of::<Header>()];
        locked
            .read_exact_at(&mut raw, 0)
            .map_err(io("read header"))?;
        let primary = bytemuck::pod_read_unaligned::<Header>(&raw[..size_of::<Header>()]);
        let backup = bytemuck::pod_read_unaligned::<Header>(&raw[BACKUP_OFFSET..]);
        let sound = |h: &Header| h.magic == MAGIC && h.checksum_ok() && h.ready == READY;
        let mut fixed = Vec::new();
        let header = if sound(&backup) {
            let fields = primary.differing_fields(&backup);
            if !fields.is_empty() {
                locked
                    .write_all_at(bytemuck::bytes_of(&backup), 0)
                    .map_err(io("write header"))?;
                fixed.extend(fields.iter().map(|f| format!("header field {f}")));
            }
            backup
        } else if sound(&primary) {
            locked
                .write_all_at(bytemuck::bytes_of(&primary), BACKUP_OFFSET as u64)
                .map_err(io("write header backup"))?;
            fixed.push("the header's backup copy".to_string());
            primary
        } else {
            return Err(corrupted(format!(
                "neither the header nor its backup copy is sound and complete; \
                 `shmemcache unlink {name}` removes it"
            )));
        };
        if header.layout_version != LAYOUT_VERSION {
            return Err(Error::Incompatible {
                name: name.to_string(),
                reason: format!(
                    "layout version {} (this build reads version {LAYOUT_VERSION})",
                    header.layout_version
                ),
            });
        }
        let geom =
            Geometry::from_header(&header).map_err(|r| corrupted(format!("bad header: {r}")))?;
        if (st.st_size.max(0) as u64) < geom.total_size as u64 {
            return Err(corrupted(format!(
                "truncated: the file has {} bytes, its header needs {}",
                st.st_size, geom.total_size
            )));
        }
        let seg = Segment {
            map: Self::map(name, &locked, geom.total_size)?,
            geom,
            header,
            created: false,
            proc_claim: AtomicU64::new(0),
            name: name.to_string(),
        };
        let reinit = |m: *mut libc::pthread_mutex_t, what: String| -> Result<Option<String>> {
            // SAFETY: `m` is a lock block inside the mapping (geometry), 64-byte aligned.
            if unsafe { robust::looks_sound(m) } {
                return Ok(None);
            }
            // SAFETY: as above; no other process maps the segment (checked under the init
            // lock), so nobody can hold or be waiting on this mutex.
            unsafe { robust::init(m) }.map_err(|e| Error::Os {
                op: "pthread_mutex_init",
                name: name.to_string(),
                source: e,
            })?;
            Ok(Some(what))
        };
        for i in 0..geom.shard_count as usize {
            if let Some(what) = reinit(seg.lock_ptr(i), format!("the lock of shard {i}"))? {
                // SAFETY: nobody else maps the segment, and no slice of this region lives.
                let region = unsafe { seg.region_slice(i) };
                // `dirty` is the meta's first word: the next holder repairs the shard.
                region[..4].copy_from_slice(&1u32.to_ne_bytes());
                fixed.push(what);
            }
        }
        if let Some(what) = reinit(seg.coord_lock_ptr(), "the coordination table's lock".into())? {
            let off = geom.coord.region_offset;
            // SAFETY: the coordination region lies inside the mapping (geometry); nobody
            // else maps the segment. `dirty` is its meta's first word.
            unsafe { seg.map.as_mut_ptr().add(off).cast::<u32>().write(1) };
            fixed.push(what);
        }
        Ok(fixed)
    }

    /// Removes the name; processes that have it mapped keep using their mapping.
    pub fn unlink(name: &str) -> Result<()> {
        match nix::sys::mman::shm_unlink(shm_path(name).as_str()) {
            Ok(()) => Ok(()),
            Err(Errno::ENOENT) => Err(Error::NotFound {
                name: name.to_string(),
            }),
            Err(e) => Err(os("shm_unlink", name, e)),
        }
    }

    /// The geometry adopted from the header.
    pub fn geometry(&self) -> &Geometry {
        &self.geom
    }

    /// The header as validated at open.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Whether this handle formatted the segment.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The segment name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ready_flag(&self) -> &AtomicU32 {
        let p = self
            .map
            .as_mut_ptr()
            .wrapping_add(std::mem::offset_of!(Header, ready));
        // SAFETY: offset 16 is within the mapping (>= 256 bytes), 4-byte aligned (the mapping
        // is page aligned), and lives as long as `self`; only atomic accesses are made to it.
        unsafe { AtomicU32::from_ptr(p.cast::<u32>()) }
    }

    #[inline]
    fn lock_ptr(&self, shard: usize) -> *mut libc::pthread_mutex_t {
        assert!(
            shard < self.geom.shard_count as usize,
            "shard index out of range"
        );
        self.map
            .as_mut_ptr()
            .wrapping_add(self.geom.shard_offset(shard))
            .cast()
    }

    /// # Safety
    /// The caller must hold shard `shard`'s lock (or be formatting an unpublished segment)
    /// and must not create a second slice for the same shard while this one lives.
    // Shared memory is mutated through `&self` by design; exclusivity comes from the shard
    // lock, which is this function's safety contract.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    unsafe fn region_slice(&self, shard: usize) -> &mut [u8] {
        let off = self.geom.shard_offset(shard) + self.geom.shard.region_offset;
        debug_assert!(off + self.geom.shard.region_len <= self.map.len());
        // SAFETY: `Geometry::from_header` proved `total_size` covers every shard and the
        // mapping is exactly `total_size` bytes; exclusivity is the caller's contract.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.map.as_mut_ptr().add(off),
                self.geom.shard.region_len,
            )
        }
    }

    /// Locks shard `shard` for at most `timeout`.
    #[inline]
    pub fn lock_shard(
        &self,
        shard: usize,
        timeout: Duration,
    ) -> std::result::Result<ShardGuard<'_>, robust::LockError> {
        // SAFETY: `lock_ptr` points at a mutex initialized by the creator (the segment was
        // ready when joined) and stays mapped while `self` is borrowed.
        let held = unsafe { robust::lock(self.lock_ptr(shard), timeout) }?;
        Ok(ShardGuard {
            held,
            seg: self,
            shard,
        })
    }

    /// The seqlock's write side, for a holder of shard `shard`'s lock about to change it:
    /// makes the version odd before anything changes. A holder that died left it odd
    /// already; `| 1` keeps it so, and the guard's release makes it even and new
    /// (DESIGN.md §4.1).
    #[inline]
    pub fn begin_write(&self, shard: usize) {
        let version = self.shard_version(shard);
        let v = version.load(Ordering::Relaxed);
        if v & 1 == 0 {
            version.store(v | 1, Ordering::Relaxed);
        }
        fence(Ordering::Release);
    }

    /// Shard `shard`'s version word (in its lock block; see [`crate::layout::VERSION_OFFSET`]).
    #[inline]
    pub fn shard_version(&self, shard: usize) -> &AtomicU64 {
        assert!(
            shard < self.geom.shard_count as usize,
            "shard index out of range"
        );
        // `Geometry::from_header` proved every shard lies in the mapping, so this is never
        // empty; the word is past the mutex (compile-time asserts in `layout`).
        let off = self.geom.shard_offset(shard) + crate::layout::VERSION_OFFSET;
        &self.atomic_words_at(off, 1)[0]
    }

    /// Shard `shard`'s accessed marks: one bit per chunk, after its guarded region. Set by
    /// any reader, cleared by lock holders, always atomically.
    #[inline]
    pub fn shard_marks(&self, shard: usize) -> &[AtomicU64] {
        let g = &self.geom;
        if shard >= g.shard_count as usize {
            return &[];
        }
        let words = (g.chunks_per_shard as usize).div_ceil(64);
        self.atomic_words_at(g.shard_offset(shard) + g.shard.marks_off, words)
    }

    /// Shard `shard`'s guarded region as 64-bit words, for reads without the lock: every
    /// access through it is an atomic load (see [`crate::table::SharedShard`]).
    #[inline]
    pub fn shard_words(&self, shard: usize) -> &[AtomicU64] {
        let g = &self.geom;
        if shard >= g.shard_count as usize {
            return &[];
        }
        // Lock holders write these bytes with plain stores; a reader through this slice
        // only loads atomically and trusts nothing it read until the shard's version word
        // confirms no holder ran meanwhile (DESIGN.md §4.1).
        let off = g.shard_offset(shard) + g.shard.region_offset;
        self.atomic_words_at(off, g.shard.region_len / 8)
    }
}

impl Segment {
    fn coord_lock_ptr(&self) -> *mut libc::pthread_mutex_t {
        self.map
            .as_mut_ptr()
            .wrapping_add(self.geom.coord.offset)
            .cast()
    }

    /// Locks the coordination table for at most `timeout`.
    pub fn lock_coord(
        &self,
        timeout: Duration,
    ) -> std::result::Result<CoordGuard<'_>, robust::LockError> {
        // SAFETY: the coordination mutex was initialized by the creator before the segment
        // was marked ready, and stays mapped while `self` is borrowed.
        let held = unsafe { robust::lock(self.coord_lock_ptr(), timeout) }?;
        Ok(CoordGuard { held, seg: self })
    }

    /// Starts loading the index slot a lookup of hash `h` in `shard` reads first, so that
    /// miss overlaps with taking the shard's lock. A hint only: nothing is read or written.
    #[inline]
    pub fn prefetch_index(&self, shard: usize, h: u32) {
        let g = &self.geom;
        let slot = h as usize & (g.buckets as usize - 1);
        let off = g.shard_offset(shard) + g.shard.region_offset + g.shard.buckets_off + 4 * slot;
        if off >= self.map.len() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `off` is inside the mapping (checked above); a prefetch never faults and
        // has no architectural effect on memory, so it cannot race with other processes.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.map.as_ptr().add(off).cast());
        }
    }

    /// The futex word waiters on coordination slot `slot` sleep on, or `None` if out of range.
    pub fn wake_word(&self, slot: usize) -> Option<&AtomicU32> {
        if slot >= self.geom.coord.slots as usize {
            return None;
        }
        let p = self
            .map
            .as_mut_ptr()
            .wrapping_add(self.geom.coord.wake_offset + 4 * slot);
        // SAFETY: `Geometry` places `slots` u32 words at `wake_offset` inside `total_size`,
        // which the mapping covers; the offset is 4-byte aligned; these words are only ever
        // accessed atomically (here and by the kernel's futex code), never through slices.
        Some(unsafe { AtomicU32::from_ptr(p.cast::<u32>()) })
    }
}

impl Segment {
    /// The `count` `u64` words at byte `off` of the mapping, as atomics: empty unless they
    /// lie inside the mapping and `off` is 8-aligned. Every section of shared words that
    /// is only ever accessed atomically (version words, marks, counters, namespace table,
    /// memo statistics) and the lock-free readers' view of a shard go through here.
    #[inline]
    fn atomic_words_at(&self, off: usize, count: usize) -> &[AtomicU64] {
        let end = count.checked_mul(8).and_then(|n| off.checked_add(n));
        if off % 8 != 0 || !matches!(end, Some(e) if e <= self.map.len()) {
            return &[];
        }
        // SAFETY: the `count` words at `off` lie inside the mapping, which is page aligned
        // and lives as long as `self`, and `off` is 8-aligned (both checked above);
        // `AtomicU64` has the size and alignment of `u64`, and through the returned slice
        // the words are only ever accessed atomically.
        unsafe {
            std::slice::from_raw_parts(self.map.as_mut_ptr().add(off).cast::<AtomicU64>(), count)
        }
    }

    /// Word `word` of memo statistics slot `slot`, or `None` if either is out of range.
    pub fn memo_stat_word(&self, slot: usize, word: usize) -> Option<&AtomicU64> {
        use crate::layout::{MEMO_STAT_SLOTS, MEMO_STAT_WORDS};
        if slot >= MEMO_STAT_SLOTS || word >= MEMO_STAT_WORDS {
            return None;
        }
        let off = self.geom.memo_stats_offset + 8 * (slot * MEMO_STAT_WORDS + word);
        self.atomic_words_at(off, 1).first()
    }
}

impl Segment {
    /// The namespace generations: word `i` is namespace slot `i`'s current generation.
    #[inline]
    pub fn ns_gens(&self) -> &[AtomicU64] {
        self.atomic_words_at(self.geom.ns_offset, crate::layout::NS_SLOTS)
    }

    /// Words `first..first + count` of namespace slot `slot` (empty if out of range).
    pub fn ns_words(&self, slot: usize, first: usize, count: usize) -> &[AtomicU64] {
        use crate::layout::{NS_SLOTS, NS_WORDS};
        if slot >= NS_SLOTS || first + count > NS_WORDS {
            return &[];
        }
        let off = self.geom.ns_offset + 8 * NS_SLOTS + 8 * (slot * NS_WORDS + first);
        self.atomic_words_at(off, count)
    }

    /// This mapping's claim on a per-process counter slot (see `crate::counters`).
    #[inline]
    pub fn proc_claim(&self) -> &AtomicU64 {
        &self.proc_claim
    }

    /// The per-process counter table: word `w` of slot `s` is element `s * PROC_WORDS + w`
    /// (empty if the mapping is too short).
    #[inline]
    pub fn proc_words(&self) -> &[AtomicU64] {
        use crate::layout::{PROC_SLOTS, PROC_WORDS};
        self.atomic_words_at(self.geom.counters_offset, PROC_SLOTS * PROC_WORDS)
    }

    /// Word `word` of namespace slot `slot`, or `None` if either is out of range.
    pub fn ns_word(&self, slot: usize, word: usize) -> Option<&AtomicU64> {
        self.ns_words(slot, word, 1).first()
    }
}

/// Words of ordinary memory seen as atomics, as a shard's words are by lock-free readers:
/// how a shard kept in a heap buffer (tests, fuzzing, Miri) is read the same way.
#[cfg(any(test, feature = "test-support"))]
pub fn atomic_words(words: &mut [u64]) -> &[AtomicU64] {
    const _: () = assert!(std::mem::align_of::<AtomicU64>() == std::mem::align_of::<u64>());
    // SAFETY: `AtomicU64` has the size and (asserted above) the alignment of `u64`, and the
    // exclusive borrow means no other access to these words exists while the result lives.
    unsafe { &*(words as *mut [u64] as *const [AtomicU64]) }
}

/// Exclusive access to the coordination table's guarded bytes for as long as it lives.
pub struct CoordGuard<'a> {
    held: robust::Held<'a>,
    seg: &'a Segment,
}

impl CoordGuard<'_> {
    /// Whether the previous holder died holding the lock.
    #[inline]
    pub fn owner_died(&self) -> bool {
        self.held.acquired() == robust::Acquired::OwnerDied
    }

    /// The guarded region: [`crate::layout::CoordMeta`] then the slots.
    #[inline]
    pub fn region(&mut self) -> &mut [u8] {
        let c = &self.seg.geom.coord;
        debug_assert!(c.region_offset + c.region_len <= self.seg.map.len());
        // SAFETY: `Geometry` proved the region lies inside the mapping; this guard holds the
        // coordination lock and `&mut self` makes the slice unique for its lifetime.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.seg.map.as_mut_ptr().add(c.region_offset),
                c.region_len,
            )
        }
    }
}

/// Exclusive access to one shard's guarded bytes for as long as it lives.
pub struct ShardGuard<'a> {
    held: robust::Held<'a>,
    seg: &'a Segment,
    shard: usize,
}

impl Drop for ShardGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Odd: this holder (or one that died) changed the shard. Even and new before the
        // lock is released (the field `held` drops after this): every change made
        // happens-before the store. A holder unwinding from a panic may have left the
        // shard half changed (and dirty): it stays odd, so readers take the lock, and the
        // next holder repairs it first.
        let version = self.seg.shard_version(self.shard);
        let v = version.load(Ordering::Relaxed);
        if v & 1 == 1 && !std::thread::panicking() {
            version.store(v.wrapping_add(1), Ordering::Release);
        }
    }
}

impl ShardGuard<'_> {
    /// Whether the previous holder died holding the lock.
    pub fn owner_died(&self) -> bool {
        self.held.acquired() == robust::Acquired::OwnerDied
    }

    /// The shard's guarded region, to change it: lock-free readers of the shard will retry
    /// until this guard is dropped.
    #[inline]
    pub fn region(&mut self) -> &mut [u8] {
        self.seg.begin_write(self.shard);
        // SAFETY: this guard holds the shard's lock, and the `&mut self` borrow makes the
        // slice unique for its lifetime.
        unsafe { self.seg.region_slice(self.shard) }
    }

    /// The shard's guarded region, for a holder that only reads it (or calls
    /// [`Segment::begin_write`] before it changes anything): lock-free readers carry on.
    pub fn region_quiet(&mut self) -> &mut [u8] {
        // SAFETY: as in `region`.
        unsafe { self.seg.region_slice(self.shard) }
    }
}

/// A process other than this one that has the file `(dev, ino)` mapped, if any can be seen
/// in `/proc` (processes of other users may be hidden; so are processes that opened the
/// name without mapping it yet).
fn mapped_by(dev: libc::dev_t, ino: libc::ino_t) -> Option<u32> {
    let me = std::process::id();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want_dev = format!("{major:02x}:{minor:02x}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else {
            continue;
        };
        let hit = maps.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (dev, inode) = (f.nth(3), f.next());
            dev == Some(want_dev.as_str()) && inode.and_then(|i| i.parse().ok()) == Some(ino)
        });
        if hit {
            return Some(pid);
        }
    }
    None
}

/// What is wrong with a header whose checksum does not match: the fields that differ from
/// a sound backup copy, or that both copies are damaged.
fn damaged_header(name: &str, primary: &Header, backup: &Header, backup_ok: bool) -> String {
    if backup_ok {
        let fields = primary
            .differing_fields(backup)
            .into_iter()
            .filter(|f| *f != "ready" && *f != "checksum")
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let which = if fields.is_empty() {
            "its checksum".to_string()
        } else {
            format!("header field {fields}")
        };
        format!(
            "{which} is damaged (the backup copy differs); `shmemcache repair --force {name}` \
             restores the header from the backup once no process has it open, or \
             `shmemcache unlink {name}` removes it"
        )
    } else {
        format!(
            "its header and the header's backup copy are both damaged (checksum mismatch); \
             `shmemcache unlink {name}` removes it"
        )
    }
}
