"""The cache handle: a dict-like view of one named shared-memory segment."""

import os

from . import _native
from ._util import seconds
from .codecs import Codec


_MISSING = object()

__all__ = ["Cache"]


class Cache:
    """One LRU cache in shared memory, shared by every process that opens ``name``.

    The first process to open a name creates the segment with these settings; later
    ones (forked children, other programs, Rust binaries) join it and adopt the
    creator's geometry, whatever they pass.

    ``capacity`` is the whole segment's budget in bytes; ``max_entries`` bounds the
    number of entries; ``ttl`` is the default time to live (seconds or ``timedelta``,
    ``None`` = no expiry); ``lock_timeout`` bounds how long an operation waits for a
    shard lock whose holder is stopped (``LockTimeout`` after that); ``mode`` is the
    segment file's permission bits.

    Keys are ``str`` (stored as UTF-8) or ``bytes``. ``bytes`` values are stored as they
    are; ``str`` and every other object go through a small tag and, for objects, the
    codec (pickle protocol 5 by default; ``"json"``, or any object with ``dumps`` and
    ``loads``). Encoding and decoding happen in the calling process, never while a
    shard lock is held.

    >>> import shmemcache
    >>> cache = shmemcache.Cache("doctest-cache")
    >>> cache["greeting"] = "hello"
    >>> cache.set("user:1", {"name": "Ada"}, ttl=60)
    0
    >>> cache["user:1"]["name"]
    'Ada'
    >>> "greeting" in cache
    True
    >>> cache.get("missing", "default")
    'default'
    >>> shmemcache.Cache.unlink("doctest-cache")
    """

    __slots__ = ("_n", "_codec", "_enc", "_dec", "_settings", "__weakref__")

    def __init__(
        self,
        name,
        *,
        capacity=None,
        max_entries=None,
        shards=None,
        ttl=None,
        lock_timeout=None,
        mode=0o600,
        codec="pickle",
        max_value_len=None,
        checksums=False,
        exact_lru=False,
        create=None,
        _native_handle=None,
    ):
        if not isinstance(name, str):
            raise TypeError(f"a segment name must be a str, not {type(name).__name__}")
        self._codec = Codec(codec)
        self._enc = self._codec.encode
        self._dec = self._codec.decode
        self._settings = dict(
            capacity=capacity,
            max_entries=max_entries,
            shards=shards,
            ttl=ttl,
            lock_timeout=lock_timeout,
            mode=mode,
            codec=codec,
            max_value_len=max_value_len,
            checksums=checksums,
            exact_lru=exact_lru,
        )
        if _native_handle is not None:
            self._n = _native_handle
            return
        how = {None: "open", True: "create", False: "existing"}.get(create)
        if how is None:
            raise TypeError("create must be None (open or create), True or False")
        self._n = _native.Cache(
            name,
            how=how,
            capacity=capacity,
            max_entries=max_entries,
            shards=shards,
            ttl=seconds("ttl", ttl),
            lock_timeout=seconds("lock_timeout", lock_timeout),
            mode=mode,
            max_value_len=max_value_len,
            checksums=checksums,
            exact_lru=exact_lru,
        )

    # ----- identity ---------------------------------------------------------------

    @property
    def name(self):
        """The segment's name."""
        return self._n.name

    @property
    def created(self):
        """Whether this handle created the segment (rather than joined it)."""
        return self._n.created

    @property
    def closed(self):
        return self._n.closed

    @property
    def codec(self):
        """The codec spec this handle encodes objects with."""
        return self._codec.spec

    @classmethod
    def open_existing(cls, name, **options):
        """Joins the segment ``name``; ``NotFound`` if it does not exist."""
        return cls(name, create=False, **options)

    @classmethod
    def create_new(cls, name, **options):
        """Creates the segment ``name``; ``AlreadyExists`` if it exists."""
        return cls(name, create=True, **options)

    @staticmethod
    def unlink(name):
        """Removes the segment's name; processes that have it open keep using it."""
        _native.Cache.unlink(name)

    def close(self):
        """Detaches this handle (later calls raise ``Closed``). Nothing is cleared."""
        self._n.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        ns = self._n.namespace_name
        where = f" namespace={ns!r}" if ns else ""
        state = " closed" if self._n.closed else ""
        return f"<shmemcache.Cache {self._n.name!r}{where}{state}>"

    def __reduce__(self):
        # Pickled for another process (multiprocessing's spawn, a pool's task): the copy
        # reopens the segment by name and adopts its geometry.
        return (_reopen, (self._n.name, self._n.namespace_name, self._settings))

    def info(self):
        """The segment's geometry (a dict)."""
        return self._n.info()

    # ----- reads ----------------------------------------------------------------

    def get(self, key, default=None):
        """The value of ``key``, or ``default`` if it is missing or expired."""
        return self._n.get_value(key, default, self._dec)

    def __getitem__(self, key):
        v = self._n.get_value(key, _MISSING, self._dec)
        if v is _MISSING:
            raise KeyError(key)
        return v

    def get_many(self, keys):
        """A dict of the values of ``keys`` that are present."""
        out = {}
        get = self._n.get_value
        for k in keys:
            v = get(k, _MISSING, self._dec)
            if v is not _MISSING:
                out[k] = v
        return out

    def __contains__(self, key):
        return self._n.contains(key)

    def ttl(self, key):
        """Seconds before ``key`` expires: ``math.inf`` if never, None if missing."""
        return self._n.ttl(key)

    def __len__(self):
        return self._n.len()

    def keys(self, prefix=None, *, raw=False):
        """The live keys (starting with ``prefix``), in no particular order. Keys that
        are valid UTF-8 come back as ``str`` unless ``raw`` is true."""
        ks = self._n.keys(prefix.encode() if isinstance(prefix, str) else prefix)
        if raw:
            return ks
        out = []
        for k in ks:
            try:
                out.append(k.decode())
            except UnicodeDecodeError:
                out.append(k)
        return out

    def __iter__(self):
        return iter(self.keys())

    def items(self, prefix=None):
        """(key, value) pairs of the live keys starting with ``prefix``."""
        for k in self.keys(prefix):
            v = self._n.get_value(k, _MISSING, self._dec)
            if v is not _MISSING:
                yield k, v

    # ----- writes ---------------------------------------------------------------

    def set(self, key, value, ttl=None):
        """Stores ``value`` under ``key``. ``ttl`` (seconds or ``timedelta``) bounds its
        life; without one the cache's default applies and any older deadline is
        dropped. A zero TTL is an error (``ZeroTtl``). Returns how many least recently
        used entries were evicted to make room."""
        return self._n.set(key, self._enc(value), seconds("ttl", ttl) if ttl is not None else None)

    def __setitem__(self, key, value):
        self._n.set(key, self._enc(value))

    def add(self, key, value, ttl=None):
        """Stores ``value`` only if ``key`` is absent; True if it did."""
        return self._n.add(key, self._enc(value), seconds("ttl", ttl))

    def replace(self, key, value, ttl=None):
        """Stores ``value`` only if ``key`` is present; True if it did."""
        return self._n.replace(key, self._enc(value), seconds("ttl", ttl))

    def setdefault(self, key, default=None):
        """The value of ``key``, storing ``default`` first if it is absent."""
        while True:
            v = self._n.get_value(key, _MISSING, self._dec)
            if v is not _MISSING:
                return v
            if self._n.add(key, self._enc(default), None):
                return default

    def update(self, other=(), **kw):
        """Stores every pair of a mapping or iterable of pairs (and keyword arguments)."""
        items = other.items() if hasattr(other, "items") else other
        for k, v in items:
            self[k] = v
        for k, v in kw.items():
            self[k] = v

    def take(self, key):
        """Removes ``key`` and returns its value, or None if it was missing."""
        raw = self._n.take(key)
        return None if raw is None else self._dec(raw)

    def pop(self, key, default=_MISSING):
        """Removes ``key`` and returns its value; ``default`` (or ``KeyError``) if missing."""
        raw = self._n.take(key)
        if raw is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return self._dec(raw)

    def delete(self, key):
        """Removes ``key``; True if it was there."""
        return self._n.delete(key)

    def __delitem__(self, key):
        if not self._n.delete(key):
            raise KeyError(key)

    def expire(self, key, ttl):
        """Gives ``key`` a new time to live (None: never expires); False if missing."""
        return self._n.expire(key, seconds("ttl", ttl))

    def incr(self, key, delta=1):
        """Adds ``delta`` to the decimal integer stored under ``key`` (absent counts as 0)
        and returns the result, atomically across processes. Counters are stored as
        decimal text (``b"42"``), which Rust and the CLI read too."""
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}")
        return self._n.incr(key, delta)

    def decr(self, key, delta=1):
        """``incr(key, -delta)``."""
        return self.incr(key, -delta)

    def clear(self):
        """Removes every entry (of this namespace); returns how many there were."""
        return self._n.clear()

    # ----- inspection -----------------------------------------------------------

    def stats(self):
        """Machine-wide counters and occupancy: hits, misses, sets, evictions,
        expirations, entries, bytes used, ... (a dict)."""
        return self._n.stats()

    def check(self):
        """A read-only consistency check: ``{"healthy": bool, "problems": [...]}``."""
        return self._n.check()

    # ----- namespaces -----------------------------------------------------------

    def namespace(self, name):
        """A handle on the named namespace of this segment: its own keys, cleared in
        O(1) with ``clear()``."""
        return Cache(self._n.name, codec=self._codec.spec, _native_handle=self._n.namespace(name))

    # ----- memoization and coordination -----------------------------------------

    def memoize(self, func=None, **options):
        """Memoizes a function across every process of the machine, with single flight:
        see :func:`shmemcache.memoize`."""
        from ._memo import memoize

        return memoize(self, func, **options)

    def lock(self, name, expires=None, wait=None):
        """A named lock across processes: see :class:`shmemcache.Lock`."""
        from ._coord import Lock

        return Lock(self, name, expires=expires, wait=wait)

    def once(self, name, expires=None, on_busy=None):
        """Runs a body unless it is running under ``name`` elsewhere: see
        :class:`shmemcache.Once`."""
        from ._coord import Once

        return Once(self, name, expires=expires, on_busy=on_busy)

    def pool(self, name, size, expires=None):
        """At most ``size`` holders across processes: see :class:`shmemcache.Pool`."""
        from ._coord import Pool

        return Pool(self, name, size, expires=expires)


def _reopen(name, namespace, settings):
    settings = dict(settings)
    codec = settings.pop("codec")
    c = Cache(name, codec=codec, **settings)
    return c.namespace(namespace) if namespace else c


def default_name():
    """The segment name used by the demo and the benchmark unless one is given."""
    return os.environ.get("SHMEMCACHE_NAME", "shmemcache-py-demo")


