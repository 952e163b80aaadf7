//! `shmemcache._native`: the Rust glue under the `shmemcache` Python package.
//!
//! Thin on purpose: bytes in, bytes out. Codecs, key building, decorators and context
//! managers live in the Python layer (`python/shmemcache/`). Values arrive encoded; reads
//! copy the stored bytes out first and only then decode them (`bytes`, `str` and pickles
//! here, other codecs in Python), so no Python code runs while a shard lock is held. Every call
//! that can wait (a write's shard lock, a named lock, a memoized computation elsewhere)
//! releases the GIL while it waits; user functions run with it re-taken, outside any
//! shard lock.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyString, PyTuple, PyType};
use serde_bytes::{ByteBuf, Bytes};
use shmemcache::{
    Cache, ComputeError, ComputeOptions, Error, Expiry, LockGuard, Memo, OnError, Options, Recency,
    ShardStats, Ttl,
};

/// Values up to this size are read into a stack buffer first (no heap allocation).
const STACK_VALUE: usize = 1024;

/// The first four bytes of every tagged (non-`bytes`) value; see `shmemcache/codecs.py`.
const MAGIC: &[u8; 4] = b"\x00\xc5sc";

static PICKLE_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A stored value as a Python object: untagged bytes as `bytes`, a `str` or a pickle
/// decoded here, anything else (JSON, a custom codec, errors) by the handle's Python
/// codec `decode`, which raises `CodecError` with the reason.
fn decode_value(py: Python<'_>, raw: &[u8], decode: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    if raw.len() < 5 || raw[..4] != MAGIC[..] {
        return Ok(PyBytes::new(py, raw).into_any().unbind());
    }
    let body = &raw[5..];
    match raw[4] {
        b'B' => return Ok(PyBytes::new(py, body).into_any().unbind()),
        b'S' => {
            if let Ok(s) = std::str::from_utf8(body) {
                return Ok(PyString::new(py, s).into_any().unbind());
            }
        }
        b'P' => {
            let loads = PICKLE_LOADS.import(py, "pickle", "loads")?;
            if let Ok(v) = loads.call1((PyBytes::new(py, body),)) {
                return Ok(v.unbind());
            }
        }
        _ => {}
    }
    Ok(decode.call1((PyBytes::new(py, raw),))?.unbind())
}

// ----- errors --------------------------------------------------------------------------

/// The Python class (in `shmemcache.errors`) an error maps to. The messages are the Rust
/// ones, word for word.
fn error_class(e: &Error) -> &'static str {
    match e {
        Error::InvalidName { .. } => "InvalidName",
        Error::KeyTooLarge { .. } => "KeyTooLarge",
        Error::ValueTooLarge { .. } => "ValueTooLarge",
        Error::ZeroTtl => "ZeroTtl",
        Error::NotFound { .. } => "NotFound",
        Error::AlreadyExists { .. } => "AlreadyExists",
        Error::Incompatible { .. } => "Incompatible",
        Error::Corrupted { .. } => "Corrupted",
        Error::LockTimeout { .. } => "LockTimeout",
        Error::PermissionDenied { .. } => "PermissionDenied",
        Error::NoSpace { .. } => "NoSpace",
        Error::InvalidArgument(_) => "InvalidArgument",
        Error::BadSnapshot { .. } => "BadSnapshot",
        Error::Io { .. } | Error::Os { .. } => "OSFailure",
        Error::NotAnInteger => "NotAnInteger",
        Error::Overflow => "Overflow",
        Error::Codec(_) => "CodecError",
        Error::Busy { .. } => "Busy",
        Error::NotOwner { .. } => "NotOwner",
        Error::CoordinationFull { .. } => "CoordinationFull",
        Error::ComputedElsewhereFailed { .. } => "ComputedElsewhereFailed",
        _ => "Error",
    }
}

/// An instance of the `shmemcache.errors` class `class` with `msg`.
fn py_error(class: &str, msg: String) -> PyErr {
    Python::attach(|py| {
        match py
            .import("shmemcache.errors")
            .and_then(|m| m.getattr(class))
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from))
        {
            Ok(c) => PyErr::from_type(c, msg),
            // The Python layer is missing (the module imported on its own): still an error.
            Err(_) => PyValueError::new_err(msg),
        }
    })
}

/// A Rust error as the matching `shmemcache.errors` exception.
fn to_py(e: Error) -> PyErr {
    py_error(error_class(&e), e.to_string())
}

fn closed_error() -> PyErr {
    py_error("Closed", "the cache handle is closed".to_string())
}

trait OrPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> OrPy<T> for Result<T, Error> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

// ----- arguments -----------------------------------------------------------------------

/// A key: `bytes` as they are, `str` as UTF-8.
fn key_bytes<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(match s.to_cow()? {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        });
    }
    Err(PyTypeError::new_err(format!(
        "cache keys must be str or bytes, not {}",
        key.get_type().name()?
    )))
}

/// A duration in seconds from Python: finite and not negative.
fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a finite, non-negative number of seconds, not {s}"
        ))
    })
}

fn opt_seconds(what: &str, s: Option<f64>) -> PyResult<Option<Duration>> {
    s.map(|s| seconds(what, s)).transpose()
}

// ----- the cache handle ----------------------------------------------------------------

/// `Cache::set_ttl` (evictions), `add_ttl` or `replace_ttl` (stored or not).
type Store<T> = fn(&Cache, &[u8], &[u8], Option<Duration>) -> Result<T, Error>;

/// One handle on a named segment (or one of its namespaces).
#[pyclass(frozen, module = "shmemcache._native", name = "Cache")]
struct NativeCache {
    cache: Arc<Cache>,
    closed: AtomicBool,
}

impl NativeCache {
    fn wrap(cache: Cache) -> NativeCache {
        NativeCache {
            cache: Arc::new(cache),
            closed: AtomicBool::new(false),
        }
    }

    #[inline]
    fn c(&self) -> PyResult<&Cache> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(closed_error());
        }
        Ok(&self.cache)
    }

    /// A store (`set`, `add`, `replace`) without the GIL; no TTL means the default.
    fn store<T: Send>(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &[u8],
        ttl: Option<f64>,
        op: Store<T>,
    ) -> PyResult<T> {
        let c = self.c()?;
        let k = key_bytes(key)?;
        let ttl = opt_seconds("ttl", ttl)?.or(c.default_ttl());
        py.detach(|| op(c, &k, value, ttl)).py_err()
    }

    fn arc(&self) -> PyResult<Arc<Cache>> {
        self.c()?;
        Ok(Arc::clone(&self.cache))
    }
}

#[pymethods]
impl NativeCache {
    /// Opens the segment `name`, creating it with these settings if it does not exist
    /// (`how="open"`), only creating it (`"create"`), or only joining it (`"existing"`).
    /// A joiner adopts the creator's geometry.
    #[new]
    #[pyo3(signature = (name, *, how="open", capacity=None, max_entries=None, shards=None,
                        ttl=None, lock_timeout=None, mode=None, max_value_len=None,
                        checksums=false, exact_lru=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: &str,
        how: &str,
        capacity: Option<u64>,
        max_entries: Option<u64>,
        shards: Option<u32>,
        ttl: Option<f64>,
        lock_timeout: Option<f64>,
        mode: Option<u32>,
        max_value_len: Option<u32>,
        checksums: bool,
        exact_lru: bool,
    ) -> PyResult<NativeCache> {
        let mut o = Options::new();
        if let Some(c) = capacity {
            o = o.capacity_bytes(c);
        }
        if let Some(n) = max_entries {
            o = o.max_entries(n);
        }
        if let Some(n) = shards {
            o = o.shards(n);
        }
        if let Some(t) = ttl {
            o = o.default_ttl(Some(seconds("ttl", t)?));
        }
        if let Some(t) = lock_timeout {
            o = o.lock_timeout(seconds("lock_timeout", t)?);
        }
        if let Some(m) = mode {
            o = o.mode(m);
        }
        if let Some(n) = max_value_len {
            o = o.max_value_len(n);
        }
        o = o.checksums(checksums);
        if exact_lru {
            o = o.recency(Recency::Exact);
        }
        // Opening may wait for a creator to publish the header.
        let cache = py
            .detach(|| match how {
                "open" => o.open(name).map(Some),
                "create" => o.create(name).map(Some),
                "existing" => o.open_existing(name).map(Some),
                _ => Ok(None),
            })
            .py_err()?
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "how must be \"open\", \"create\" or \"existing\", not {how:?}"
                ))
            })?;
        Ok(NativeCache::wrap(cache))
    }

    /// Removes the segment's name (processes that have it mapped keep using it).
    #[staticmethod]
    fn unlink(name: &str) -> PyResult<()> {
        Cache::unlink(name).py_err()
    }

    #[getter]
    fn name(&self) -> String {
        self.cache.name().to_string()
    }

    #[getter]
    fn created(&self) -> bool {
        self.cache.created()
    }

    #[getter]
    fn adopted(&self) -> Vec<String> {
        self.cache.adopted().to_vec()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Detaches this handle: later calls raise `Closed`. The mapping goes when the last
    /// object using it (memo handles, held locks) is gone. Nothing is cleared.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    #[getter]
    fn namespace_name(&self) -> Option<String> {
        self.cache.namespace_name()
    }

    /// The value of `key` (bytes), or None.
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let c = self.c()?;
        let k = key_bytes(key)?;
        let mut buf = [0u8; STACK_VALUE];
        match c.get_into(&k, &mut buf) {
            Ok(Some(n)) => Ok(Some(PyBytes::new(py, &buf[..n]))),
            Ok(None) => Ok(None),
            Err(Error::BufferTooSmall { .. }) => {
                Ok(c.get(&k).py_err()?.map(|v| PyBytes::new(py, &v)))
            }
            Err(e) => Err(to_py(e)),
        }
    }

    /// The value of `key` decoded (see `decode_value`), or `default`.
    fn get_value(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Py<PyAny>,
        decode: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let c = self.c()?;
        let k = key_bytes(key)?;
        let mut buf = [0u8; STACK_VALUE];
        match c.get_into(&k, &mut buf) {
            Ok(Some(n)) => decode_value(py, &buf[..n], decode),
            Ok(None) => Ok(default),
            Err(Error::BufferTooSmall { .. }) => match c.get(&k).py_err()? {
                Some(v) => decode_value(py, &v, decode),
                None => Ok(default),
            },
            Err(e) => Err(to_py(e)),
        }
    }

    fn contains(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.c()?.contains(&key_bytes(key)?).py_err()
    }

    /// Stores `value`; returns how many entries were evicted to make room.
    #[pyo3(signature = (key, value, ttl=None))]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &[u8],
        ttl: Option<f64>,
    ) -> PyResult<u32> {
        self.store(py, key, value, ttl, |c, k, v, t| {
            c.set_ttl(k, v, t).map(|o| o.evicted)
        })
    }

    /// Stores `value` only if `key` is absent; True if it did.
    #[pyo3(signature = (key, value, ttl=None))]
    fn add(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &[u8],
        ttl: Option<f64>,
    ) -> PyResult<bool> {
        self.store(py, key, value, ttl, Cache::add_ttl)
    }

    /// Stores `value` only if `key` is present; True if it did.
    #[pyo3(signature = (key, value, ttl=None))]
    fn replace(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &[u8],
        ttl: Option<f64>,
    ) -> PyResult<bool> {
        self.store(py, key, value, ttl, Cache::replace_ttl)
    }

    /// Removes `key` and returns its value, or None.
    fn take<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let c = self.c()?;
        let k = key_bytes(key)?;
        let v = py.detach(|| c.take(&k)).py_err()?;
        Ok(v.map(|v| PyBytes::new(py, &v)))
    }

    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let c = self.c()?;
        let k = key_bytes(key)?;
        py.detach(|| c.delete(&k)).py_err()
    }

    /// Sets (seconds) or clears (None) the expiry of `key`; False if it is missing.
    #[pyo3(signature = (key, ttl))]
    fn expire(&self, py: Python<'_>, key: &Bound<'_, PyAny>, ttl: Option<f64>) -> PyResult<bool> {
        let c = self.c()?;
        let k = key_bytes(key)?;
        let ttl = opt_seconds("ttl", ttl)?;
        py.detach(|| c.expire(&k, ttl)).py_err()
    }

    /// Seconds left before `key` expires: `inf` if it never does, None if it is missing.
    fn ttl(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        Ok(match self.c()?.ttl(&key_bytes(key)?).py_err()? {
            None => None,
            Some(Expiry::Never) => Some(f64::INFINITY),
            Some(Expiry::In(d)) => Some(d.as_secs_f64()),
        })
    }

    #[pyo3(signature = (key, delta=1))]
    fn incr(&self, py: Python<'_>, key: &Bound<'_, PyAny>, delta: i64) -> PyResult<i64> {
        let c = self.c()?;
        let k = key_bytes(key)?;
        py.detach(|| c.incr(&k, delta)).py_err()
    }

    /// Removes every entry of this handle's namespace; returns how many.
    fn clear(&self, py: Python<'_>) -> PyResult<u64> {
        let c = self.c()?;
        if c.namespace_name().is_some() {
            let n = c.len().py_err()?;
            py.detach(|| c.clear_namespace()).py_err()?;
            return Ok(n);
        }
        py.detach(|| c.clear()).py_err()
    }

    fn len(&self) -> PyResult<u64> {
        self.c()?.len().py_err()
    }

    /// Every live key (as bytes) starting with `prefix`, in no particular order.
    #[pyo3(signature = (prefix=None))]
    fn keys<'py>(
        &self,
        py: Python<'py>,
        prefix: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let c = self.c()?;
        let prefix = prefix.map(key_bytes).transpose()?;
        let p: &[u8] = prefix.as_deref().unwrap_or(&[]);
        let keys = py.detach(|| {
            c.keys()
                .filter(|k| k.as_ref().map_or(true, |k| k.starts_with(p)))
                .collect::<Result<Vec<_>, Error>>()
        });
        Ok(keys.py_err()?.iter().map(|k| PyBytes::new(py, k)).collect())
    }

    /// Counters and occupancy, summed over shards, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.c()?.stats().py_err()?;
        let d = shard_stats(py, &s.total)?;
        d.set_item("shards", s.shards.len())?;
        d.set_item("hit_ratio", s.total.hit_ratio())?;
        Ok(d)
    }

    /// A read-only check of every shard: `{"healthy": bool, "problems": [...]}`.
    fn check<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.c()?;
        let r = py.detach(|| c.check()).py_err()?;
        let d = PyDict::new(py);
        d.set_item("healthy", r.is_healthy())?;
        let mut problems: Vec<String> = r
            .problems
            .iter()
            .map(|(s, p)| format!("shard {s}: {p}"))
            .collect();
        problems.extend(r.coordination.iter().map(|p| format!("coordination: {p}")));
        problems.extend(r.namespaces.iter().map(|p| format!("namespaces: {p}")));
        d.set_item("problems", problems)?;
        Ok(d)
    }

    /// The segment's geometry and identity, as a dict.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let i = self.c()?.info();
        let d = PyDict::new(py);
        d.set_item("name", i.name)?;
        d.set_item("segment_bytes", i.segment_bytes)?;
        d.set_item("layout_version", i.layout_version)?;
        d.set_item("shards", i.shards)?;
        d.set_item("max_entries", i.max_entries)?;
        d.set_item("capacity_bytes", i.capacity_bytes)?;
        d.set_item("chunk_size", i.chunk_size)?;
        d.set_item("max_key_len", i.max_key_len)?;
        d.set_item("max_value_len", i.max_value_len)?;
        d.set_item("default_ttl", i.default_ttl.map(|t| t.as_secs_f64()))?;
        d.set_item("creator_pid", i.creator_pid)?;
        d.set_item("coord_slots", i.coord_slots)?;
        d.set_item("checksums", i.checksums)?;
        d.set_item("exact_lru", i.recency == Recency::Exact)?;
        Ok(d)
    }

    /// A handle on the named namespace of the same segment.
    fn namespace(&self, name: &str) -> PyResult<NativeCache> {
        Ok(NativeCache::wrap(self.c()?.namespace(name).py_err()?))
    }

    // ----- coordination ------------------------------------------------------------

    /// Takes the named lock. `wait=None` never waits (None if busy); otherwise sleeps up
    /// to `wait` seconds without the GIL and raises `Busy` when that runs out.
    #[pyo3(signature = (name, expires=None, wait=None))]
    fn lock(
        &self,
        py: Python<'_>,
        name: &str,
        expires: Option<f64>,
        wait: Option<f64>,
    ) -> PyResult<Option<Guard>> {
        let cache = self.arc()?;
        let expires = opt_seconds("expires", expires)?;
        let wait = opt_seconds("wait", wait)?;
        py.detach(|| {
            Held::try_new(cache, |c| match wait {
                None => c.try_lock(name, expires),
                Some(w) => c.lock(name, expires, w).map(Some),
            })
        })
        .py_err()
        .map(Guard::from_held)
    }

    /// Takes the `once` hold of `name` if no other process runs under it now, else None.
    #[pyo3(signature = (name, expires=None))]
    fn try_once(&self, name: &str, expires: Option<f64>) -> PyResult<Option<Guard>> {
        let cache = self.arc()?;
        let expires = opt_seconds("expires", expires)?;
        Held::try_new(cache, |c| c.try_once(name, expires))
            .py_err()
            .map(Guard::from_held)
    }

    /// Takes a slot of the pool `name` of `size` if one is free, else None.
    #[pyo3(signature = (name, size, expires=None))]
    fn pool_acquire(
        &self,
        name: &str,
        size: usize,
        expires: Option<f64>,
    ) -> PyResult<Option<Guard>> {
        let cache = self.arc()?;
        let expires = opt_seconds("expires", expires)?;
        Held::try_new(cache, |c| c.pool(name, size)?.try_acquire(expires))
            .py_err()
            .map(Guard::from_held)
    }

    /// Slots of the pool held by live processes.
    fn pool_size(&self, name: &str, size: usize) -> PyResult<usize> {
        self.c()?.pool(name, size).py_err()?.size().py_err()
    }

    fn is_locked(&self, name: &str) -> PyResult<bool> {
        self.c()?.is_locked(name).py_err()
    }

    /// Releases the named lock whoever holds it; True if it was held.
    fn force_release(&self, name: &str) -> PyResult<bool> {
        self.c()?.force_release(name).py_err()
    }

    fn __reduce__(&self) -> PyResult<(Py<PyAny>, (String,))> {
        Err(PyTypeError::new_err(
            "pickle the Python-level shmemcache.Cache, which reopens the segment by name",
        ))
    }
}

fn shard_stats<'py>(py: Python<'py>, s: &ShardStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in [
        ("hits", s.hits),
        ("misses", s.misses),
        ("sets", s.sets),
        ("evictions", s.evictions),
        ("expirations", s.expirations),
        ("deletes", s.deletes),
        ("recoveries", s.recoveries),
        ("entries", s.entries),
        ("entry_capacity", s.entry_capacity),
        ("bytes_used", s.bytes_used),
        ("arena_used", s.arena_used),
        ("arena_capacity", s.arena_capacity),
        ("checksum_failures", s.checksum_failures),
    ] {
        d.set_item(k, v)?;
    }
    Ok(d)
}

// ----- held locks, once holds and pool slots -------------------------------------------

self_cell::self_cell!(
    /// A guard together with the handle it borrows, so Python can hold it across calls.
    struct Held {
        owner: Arc<Cache>,
        #[covariant]
        dependent: HeldGuard,
    }
);

type HeldGuard<'a> = Option<LockGuard<'a>>;

/// A held lock, `once` hold or pool slot. Released by `release()` or when collected.
#[pyclass(frozen, module = "shmemcache._native")]
struct Guard {
    held: Mutex<Option<Held>>,
}

impl Guard {
    fn from_held(h: Held) -> Option<Guard> {
        h.borrow_dependent().is_some().then(|| Guard {
            held: Mutex::new(Some(h)),
        })
    }
}

#[pymethods]
impl Guard {
    /// Releases the hold. Raises `NotOwner` if it lapsed and may be another's now.
    /// Releasing twice is a no-op.
    fn release(&self) -> PyResult<()> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        match held {
            Some(mut h) => h
                .with_dependent_mut(|_, g| g.take().map_or(Ok(()), |g| g.release()))
                .py_err(),
            None => Ok(()),
        }
    }

    /// Whether the hold is still this guard's.
    fn is_held(&self) -> PyResult<bool> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_ref().and_then(|h| h.borrow_dependent().as_ref()) {
            Some(g) => g.is_held().py_err(),
            None => Ok(false),
        }
    }

    /// Whether this guard came from the parent across `fork()` (it then does nothing).
    fn is_inherited(&self) -> bool {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref()
            .and_then(|h| h.borrow_dependent().as_ref())
            .is_some_and(|g| g.is_inherited())
    }
}

// ----- memoization ---------------------------------------------------------------------

self_cell::self_cell!(
    /// A memo handle together with the cache it borrows.
    struct MemoCell {
        owner: Arc<Cache>,
        #[covariant]
        dependent: RawMemo,
    }
);

type RawMemo<'a> = Memo<'a, ByteBuf>;

/// Which handle serves calls: a borrowed one, or (with `serve_stale`, whose refreshes run
/// on a thread after the call returns) one that lives as long as the process.
enum MemoHandle {
    Cell(MemoCell),
    Static(&'static Memo<'static, ByteBuf>),
}

impl MemoHandle {
    fn with<T>(&self, f: impl FnOnce(&Memo<'_, ByteBuf>) -> T) -> T {
        match self {
            MemoHandle::Cell(c) => f(c.borrow_dependent()),
            MemoHandle::Static(m) => f(m),
        }
    }
}

/// A memoized call's outcome: the stored bytes (a hit, or computed elsewhere), or the
/// object this call computed.
type CallResult = (Option<Py<PyBytes>>, Option<Py<PyAny>>);

/// A memoized function's shared state: its key space, flight group and counters.
/// Results are opaque bytes here; the Python layer encodes and decodes them. An empty
/// result means "return, but do not store".
#[pyclass(frozen, module = "shmemcache._native")]
struct MemoFn {
    handle: MemoHandle,
    serve_stale: bool,
}

impl MemoFn {
    /// The decoded fresh result for `args`, if there is one.
    fn hit(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        decode: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let mut key = Vec::with_capacity(64);
        if !encode_args(args.as_any(), &mut key)? {
            return Ok(None);
        }
        match self.handle.with(|m| m.lookup(Bytes::new(&key))).py_err()? {
            Some(b) => decode_value(py, &b, decode).map(Some),
            None => Ok(None),
        }
    }
}

/// A memoized function as Python calls it: a hit of an all-positional call is served
/// here without a Python frame; everything else goes to the Python layer's `slow` call.
/// Carries a `__dict__` for `functools.update_wrapper` and the companions.
#[pyclass(frozen, dict, module = "shmemcache._native")]
struct MemoCall {
    memo: Py<MemoFn>,
    /// Positional arguments of a whole binding, or -1 (custom keys, `*args`, keyword-only).
    arity: isize,
    decode: Py<PyAny>,
    slow: Py<PyAny>,
}

#[pymethods]
impl MemoCall {
    #[new]
    fn new(memo: Py<MemoFn>, arity: isize, decode: Py<PyAny>, slow: Py<PyAny>) -> MemoCall {
        MemoCall {
            memo,
            arity,
            decode,
            slow,
        }
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        if kwargs.is_none_or(|d| d.is_empty()) && args.len() as isize == self.arity {
            if let Some(v) = self.memo.get().hit(py, args, self.decode.bind(py))? {
                return Ok(v);
            }
        }
        Ok(self.slow.bind(py).call(args, kwargs)?.unbind())
    }

    /// Binds like a function when it is a class attribute (a memoized method).
    fn __get__(
        slf: &Bound<'_, Self>,
        obj: Option<&Bound<'_, PyAny>>,
        _objtype: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        match obj {
            None => Ok(slf.clone().into_any().unbind()),
            Some(o) if o.is_none() => Ok(slf.clone().into_any().unbind()),
            Some(o) => Ok(py
                .import("types")?
                .getattr("MethodType")?
                .call1((slf, o))?
                .unbind()),
        }
    }

    /// Pickled by reference, as a function is: by its module and qualified name.
    fn __reduce__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.getattr("__qualname__")?.unbind())
    }
}

#[pymethods]
impl MemoFn {
    #[new]
    #[pyo3(signature = (cache, name, *, ttl=None, stale_after=None, serve_stale=false,
                        max_size=None, wait_timeout=None, propagate_errors=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        cache: &NativeCache,
        name: &str,
        ttl: Option<f64>,
        stale_after: Option<f64>,
        serve_stale: bool,
        max_size: Option<usize>,
        wait_timeout: Option<f64>,
        propagate_errors: bool,
    ) -> PyResult<MemoFn> {
        let mut o = ComputeOptions::new();
        match ttl {
            None => {}
            Some(t) if t == f64::INFINITY => o = o.ttl(Ttl::Never),
            Some(t) => o = o.ttl(Ttl::For(seconds("ttl", t)?)),
        }
        if let Some(s) = opt_seconds("stale_after", stale_after)? {
            o = o.stale_after(s);
        }
        o = o.serve_stale(serve_stale);
        if let Some(m) = max_size {
            o = o.max_size(m);
        }
        if let Some(w) = opt_seconds("wait_timeout", wait_timeout)? {
            o = o.wait_timeout(w);
        }
        if propagate_errors {
            o = o.on_error(OnError::Propagate);
        }
        let arc = cache.arc()?;
        let serve = serve_stale && stale_after.is_some();
        let handle = if serve {
            // The background refresh outlives the call, so the handle and its cache must
            // live as long as the process. One per decorated function: a small, bounded cost.
            let cache: &'static Cache = Box::leak(Box::new(arc));
            let memo = Memo::new(cache, name)
                .options(o)
                .dont_cache_if(|b: &ByteBuf| b.is_empty());
            MemoHandle::Static(Box::leak(Box::new(memo)))
        } else {
            MemoHandle::Cell(MemoCell::new(arc, |c| {
                Memo::new(c, name)
                    .options(o)
                    .dont_cache_if(|b: &ByteBuf| b.is_empty())
            }))
        };
        Ok(MemoFn {
            handle,
            serve_stale: serve,
        })
    }

    /// The stored result for `argkey`, or computes it: `compute()` returns `(result,
    /// encoded)`, `encoded` empty to not store it. Returns `(stored_bytes, None)` on a hit
    /// or a result computed elsewhere, `(None, result)` when this call computed it.
    #[pyo3(signature = (argkey, compute, *, skip=false, overwrite=false, max_age=None))]
    fn call(
        &self,
        py: Python<'_>,
        argkey: &[u8],
        compute: Py<PyAny>,
        skip: bool,
        overwrite: bool,
        max_age: Option<f64>,
    ) -> PyResult<CallResult> {
        let max_age = opt_seconds("max_age", max_age)?;
        let computed: Arc<Mutex<Option<Py<PyAny>>>> = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&computed);
        let run = move || -> Result<ByteBuf, PyErr> {
            Python::attach(|py| {
                let out = compute.call0(py)?;
                let (obj, enc): (Py<PyAny>, Vec<u8>) = out.extract(py)?;
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(obj);
                Ok(ByteBuf::from(enc))
            })
        };
        let res = py.detach(|| match &self.handle {
            MemoHandle::Static(m)
                if self.serve_stale && !skip && !overwrite && max_age.is_none() =>
            {
                m.try_call_owned(Bytes::new(argkey), run)
            }
            h => h.with(|m| {
                let mut o = m.compute_options().clone();
                o = o.skip_cache(skip).overwrite(overwrite);
                if let Some(a) = max_age {
                    o = o.max_age(a);
                }
                m.try_call_with(Bytes::new(argkey), &o, run)
            }),
        });
        let mine = computed.lock().unwrap_or_else(|e| e.into_inner()).take();
        match res {
            Ok(bytes) => match mine {
                // This call ran the function (stored or not): its own object.
                Some(obj) => Ok((None, Some(obj))),
                None => Ok((Some(PyBytes::new(py, &bytes).unbind()), None)),
            },
            Err(ComputeError::Compute(e)) => Err(e),
            Err(ComputeError::Cache(e)) => Err(to_py(e)),
        }
    }

    /// The decoded fresh result for the call `args` (a tuple of positional arguments), or
    /// `miss`: a miss, a stale result, or arguments the key encoder does not take (the
    /// caller then goes the full way, through `argkey` and `call`).
    fn lookup(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        decode: &Bound<'_, PyAny>,
        miss: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        Ok(self.hit(py, args, decode)?.unwrap_or(miss))
    }

    /// Forgets the result for `argkey`; True if there was one.
    fn reset(&self, py: Python<'_>, argkey: &[u8]) -> PyResult<bool> {
        py.detach(|| self.handle.with(|m| m.reset(Bytes::new(argkey))))
            .py_err()
    }

    /// Stores `encoded` as the result for `argkey`, as if just computed.
    fn precache(&self, py: Python<'_>, argkey: &[u8], encoded: Vec<u8>) -> PyResult<()> {
        let v = ByteBuf::from(encoded);
        py.detach(|| self.handle.with(|m| m.precache(Bytes::new(argkey), &v)))
            .py_err()
    }

    /// Forgets every result of this function; returns how many.
    fn clear(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| self.handle.with(|m| m.clear())).py_err()
    }

    /// Drops this function's in-flight markers; their waiters compute themselves.
    fn clear_in_flight(&self) -> PyResult<u32> {
        self.handle.with(|m| m.clear_in_flight()).py_err()
    }

    /// Machine-wide counters of this function, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.handle.with(|m| m.stats());
        let d = PyDict::new(py);
        for (k, v) in [
            ("hits", s.hits),
            ("stale", s.stale),
            ("misses", s.misses),
            ("computed", s.computed),
            ("waited", s.waited),
            ("takeovers", s.takeovers),
            ("timeouts", s.timeouts),
            ("rejected", s.rejected),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}

/// Appends the key encoding of `v` (None, bool, int, float, str, bytes and tuples of
/// them); false if `v` holds anything else. Every value has one encoding, and two
/// values share one only if Python compares them equal and they have the same type.
fn encode_args(v: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<bool> {
    fn len(out: &mut Vec<u8>, n: usize) {
        out.extend_from_slice(&(n as u64).to_le_bytes());
    }
    if v.is_none() {
        out.push(b'N');
    } else if let Ok(b) = v.cast_exact::<PyBool>() {
        out.push(if b.is_true() { b'T' } else { b'F' });
    } else if v.is_exact_instance_of::<PyInt>() {
        match v.extract::<i64>() {
            Ok(i) => {
                out.push(b'i');
                out.extend_from_slice(&i.to_le_bytes());
            }
            Err(_) => return Ok(false),
        }
    } else if let Ok(f) = v.cast_exact::<PyFloat>() {
        out.push(b'f');
        out.extend_from_slice(&f.value().to_bits().to_le_bytes());
    } else if let Ok(s) = v.cast_exact::<PyString>() {
        let s = s.to_cow()?;
        out.push(b's');
        len(out, s.len());
        out.extend_from_slice(s.as_bytes());
    } else if let Ok(b) = v.cast_exact::<PyBytes>() {
        out.push(b'b');
        len(out, b.as_bytes().len());
        out.extend_from_slice(b.as_bytes());
    } else if let Ok(t) = v.cast_exact::<PyTuple>() {
        out.push(b't');
        len(out, t.len());
        for item in t.iter() {
            if !encode_args(&item, out)? {
                return Ok(false);
            }
        }
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// The key of a call's bound arguments: the native encoding when every argument has
/// one, else `None` (the Python layer then pickles them behind a distinct prefix).
#[pyfunction]
fn argkey<'py>(py: Python<'py>, args: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let mut key = Vec::with_capacity(64);
    Ok(encode_args(args, &mut key)?.then(|| PyBytes::new(py, &key)))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeCache>()?;
    m.add_class::<Guard>()?;
    m.add_class::<MemoFn>()?;
    m.add_class::<MemoCall>()?;
    m.add_function(wrap_pyfunction!(argkey, m)?)?;
    m.add("STACK_VALUE", STACK_VALUE)?;
    Ok(())
}
