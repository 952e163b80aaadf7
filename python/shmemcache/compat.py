"""Drop-in replacements for the APIs of duck's ``ProcessSafeLRUCache``, cachier and
py-cachify, backed by one shared-memory segment, so a user migrates by changing an
import. Where a seed library's behaviour is a bug, these behave correctly, and each
docstring says where they differ.

By default everything here uses the segment named by ``$SHMEMCACHE_SEGMENT``
(``"shmemcache-compat"`` when unset); pass ``cache=`` to use another.
"""

import atexit
import functools
import inspect
import itertools
import os
import pickle
import threading

from ._cache import Cache
from ._coord import RAISE, Lock, Once, Pool, _in_thread
from ._memo import Memoized
from ._util import Template, seconds
from .errors import Busy

__all__ = [
    "ProcessSafeLRUCache",
    "cachier",
    "init_cachify",
    "Cachify",
    "cached",
    "lock",
    "once",
    "pool",
    "pooled",
    "CachifyLockError",
    "CachifyPoolFullError",
    "default_cache",
]

_default = None
_default_lock = threading.Lock()


def default_cache():
    """The compat layer's shared cache: the segment ``$SHMEMCACHE_SEGMENT``, or
    ``"shmemcache-compat"``."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Cache(os.environ.get("SHMEMCACHE_SEGMENT", "shmemcache-compat"))
        return _default


def _resolve(cache):
    if cache is None:
        return default_cache()
    if isinstance(cache, str):
        return Cache(cache)
    if isinstance(cache, Cache):
        return cache
    raise TypeError(f"cache must be a shmemcache.Cache or a segment name, not {type(cache).__name__}")


# ----- duck: ProcessSafeLRUCache --------------------------------------------------------

_names = itertools.count()


def _key(key):
    """duck accepts any hashable key; str and bytes map to themselves, others are pickled
    behind a prefix no str key can start with."""
    if isinstance(key, (str, bytes)):
        return key
    return b"\x00k" + pickle.dumps(key, 5)


class ProcessSafeLRUCache:
    """duck's ``ProcessSafeLRUCache``: one LRU cache shared by many processes, with
    per-key expiry. No ``multiprocessing.Manager`` process: the entries live in a
    shared-memory segment, so it works between forked workers, spawned processes (the
    object pickles by name) and unrelated programs (pass ``name=``).

    ``maxkeys`` bounds the number of entries; the least recently used is evicted when a
    set would exceed it (exact LRU, one shard).

    Differences from duck, on purpose (duck's behaviour is a bug in each case):

    * an expired key is absent everywhere: ``get`` returns ``default`` and ``has`` is
      False on the first call after expiry, not only from the second;
    * ``set`` without ``expiry`` clears an older deadline instead of keeping it;
    * ``expiry=0`` is rejected (``shmemcache.ZeroTtl``) instead of meaning "never"; use
      ``None``;
    * ``close()`` detaches this handle; it does not clear the shared cache (use
      ``clear()``).

    >>> from shmemcache.compat import ProcessSafeLRUCache
    >>> cache = ProcessSafeLRUCache(maxkeys=2)
    >>> cache.set("a", 1); cache.set("b", 2); cache.set("c", 3)
    >>> cache.has("a"), cache.get("c")
    (False, 3)
    >>> cache.get("c", pop=True), cache.has("c")
    (3, False)
    """

    def __init__(self, maxkeys=None, *, name=None, capacity=None):
        if maxkeys is not None and (isinstance(maxkeys, bool) or not isinstance(maxkeys, int) or maxkeys < 1):
            raise ValueError(f"maxkeys must be a positive int or None, not {maxkeys!r}")
        self.maxkeys = maxkeys
        owned = name is None
        if owned:
            name = f"pslru-{os.getpid()}-{next(_names)}-{os.urandom(4).hex()}"
        opts = dict(capacity=capacity)
        if maxkeys is not None:
            opts.update(max_entries=maxkeys, shards=1, exact_lru=True)
        self._cache = Cache(name, **opts)
        self._name = name
        self._creator = os.getpid() if (owned and self._cache.created) else None
        if self._creator is not None:
            atexit.register(self._unlink_at_exit, name, self._creator)

    @staticmethod
    def _unlink_at_exit(name, creator):
        # A generated name belongs to the process tree of its creator, like duck's
        # Manager: the creator's exit removes the name (children that still have it
        # mapped keep working).
        if os.getpid() == creator:
            try:
                Cache.unlink(name)
            except Exception:
                pass

    def __reduce__(self):
        return (_reopen_pslru, (self._name, self.maxkeys))

    @property
    def name(self):
        """The segment's name: open the same cache elsewhere with ``name=``."""
        return self._name

    def set(self, key, value, expiry=None):
        """Sets ``key`` to ``value``, expiring after ``expiry`` seconds (None: never)."""
        self._cache.set(_key(key), value, ttl=expiry)

    def get(self, key, default=None, pop=False):
        """The value of ``key`` (``default`` if missing or expired); ``pop`` removes it."""
        if pop:
            v = self._cache.take(_key(key))
            return default if v is None else v
        return self._cache.get(_key(key), default)

    def has(self, key):
        """Whether ``key`` is present and unexpired."""
        return _key(key) in self._cache

    def delete(self, key):
        """Deletes ``key`` if present."""
        self._cache.delete(_key(key))

    def clear(self):
        """Removes every entry, for every process."""
        self._cache.clear()

    def close(self):
        """Detaches this handle; the shared entries stay (duck cleared them here)."""
        self._cache.close()

    @property
    def cache(self):
        """A snapshot of the entries, as a dict (duck's ``cache`` attribute)."""
        out = {}
        for k in self._cache.keys(raw=True):
            v = self._cache.get(k)
            if v is None:
                continue
            if k[:2] == b"\x00k":
                out[pickle.loads(k[2:])] = v
            else:
                try:
                    out[k.decode()] = v
                except UnicodeDecodeError:
                    out[k] = v
        return out

    def __len__(self):
        return len(self._cache)

    def __contains__(self, key):
        return self.has(key)


def _reopen_pslru(name, maxkeys):
    return ProcessSafeLRUCache(maxkeys, name=name)


# ----- cachier -------------------------------------------------------------------------

_FOREVER = 10.0 * 365 * 24 * 3600


def cachier(
    stale_after=None,
    next_time=False,
    allow_none=False,
    wait_for_calc_timeout=0,
    *,
    cache=None,
    hash_func=None,
    **_ignored,
):
    """cachier's decorator, on shared memory: every process of the machine shares the
    results, and a computation runs once at a time machine-wide.

    ``stale_after`` (a ``timedelta`` or seconds): older results are recomputed;
    ``next_time=True``: a stale result is returned at once while one process recomputes
    it in the background; ``allow_none=False`` (cachier's default): None results are not
    stored; ``wait_for_calc_timeout`` (seconds, 0 = no bound): how long a caller waits
    for another process's computation before computing itself. ``hash_func(args,
    kwargs)`` replaces the argument key. Backend options (``backend``,
    ``cache_dir``, ``separate_files``, ...) are accepted and ignored.

    The decorated function has ``clear_cache()``, ``clear_being_calculated()``,
    ``precache_value(*args, value_to_cache, **kwargs)`` and ``cache_dpath()`` (None), and
    takes cachier's per-call arguments ``cachier__skip_cache``,
    ``cachier__overwrite_cache`` and ``max_age`` (or ``cachier__max_age``).

    Differences from cachier, on purpose: a computing process that dies does not leave
    its "being calculated" marker behind (waiters see the owner is dead and one of them
    computes); waiters of a computation that raised compute themselves instead of
    getting None; ``f(1)`` and ``f(1, b=2)`` are one entry when ``b`` defaults to 2.
    """

    def deco(func):
        c = _resolve(cache)
        key = None
        if hash_func is not None:
            key = lambda *a, **kw: hash_func(a, kw)  # noqa: E731
        memo = Memoized(
            c,
            func,
            stale_after=stale_after,
            serve_stale=bool(next_time) and stale_after is not None,
            wait_timeout=_FOREVER if not wait_for_calc_timeout else wait_for_calc_timeout,
            cache_none=allow_none,
            key=key,
            name=f"cachier:{func.__module__}.{func.__qualname__}",
        )

        def _translate(kwargs):
            kw = dict(kwargs)
            if kw.pop("cachier__skip_cache", False):
                kw["shmemcache__skip_cache"] = True
            if kw.pop("cachier__overwrite_cache", False):
                kw["shmemcache__overwrite"] = True
            age = kw.pop("cachier__max_age", None)
            if age is None and "max_age" in kw and "max_age" not in memo._argkey_params:
                age = kw.pop("max_age")
            if age is not None:
                kw["shmemcache__max_age"] = age
            return kw

        memo._argkey_params = set(inspect.signature(func).parameters)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return memo(*args, **_translate(kwargs))

        wrapper.clear_cache = lambda: memo.clear() and None
        wrapper.clear_being_calculated = lambda: memo.clear_in_flight() and None

        def precache_value(*args, value_to_cache, **kwargs):
            memo.precache(*args, value=value_to_cache, **kwargs)
            return value_to_cache

        wrapper.precache_value = precache_value
        wrapper.cache_dpath = lambda: None
        wrapper.memo = memo
        return wrapper

    return deco


# ----- py-cachify ------------------------------------------------------------------------


class CachifyLockError(Busy):
    """py-cachify's error for a held lock or a running ``once``."""


class CachifyPoolFullError(Busy):
    """py-cachify's error for a full pool."""


class _Maybe:
    """A value that is also awaitable, so ``f.reset(...)`` works with and without
    ``await`` (py-cachify's async functions have coroutine companions)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __await__(self):
        if False:  # pragma: no cover - makes this a generator
            yield
        return self.value

    def __bool__(self):
        return bool(self.value)

    def __eq__(self, other):
        return self.value == other

    def __repr__(self):
        return repr(self.value)


class Cachify:
    """A py-cachify instance: ``cached``, ``lock``, ``once``, ``pool`` and ``pooled``
    with a key ``prefix`` and defaults of its own, over one shared-memory cache.

    Differences from py-cachify, on purpose: a lock is released only by its holder (a
    hold carries an owner token; ``force_release`` takes a lock from a live holder
    explicitly); ``once``'s hold expiry is per call (``exp=``), defaulting to the
    instance's; a holder that dies frees its lock or pool slot at once rather than after
    the expiry; waiting for a lock sleeps until the release instead of polling.
    """

    def __init__(self, cache=None, prefix="", default_cache_ttl=None,
                 default_lock_expiration=30, default_pool_slot_expiration=600):
        self.cache = _resolve(cache)
        self.prefix = prefix
        self.default_cache_ttl = default_cache_ttl
        self.default_lock_expiration = default_lock_expiration
        self.default_pool_slot_expiration = default_pool_slot_expiration

    # ----- cached ------------------------------------------------------------------

    def cached(self, key, ttl=RAISE, enc_dec=None):
        """Caches the function's result under the key template (``"user-{user_id}"``),
        with single flight across processes. ``ttl`` defaults to the instance's
        ``default_cache_ttl`` (None = never expires). ``enc_dec=(encode, decode)`` maps
        results to something picklable and back. ``f.reset(*args, **kwargs)`` forgets
        one result."""
        ttl = self.default_cache_ttl if ttl is RAISE else ttl

        def deco(func):
            template = Template(self.prefix + key, func)
            enc, dec = enc_dec if enc_dec else (None, None)
            is_async = inspect.iscoroutinefunction(func)
            body = func
            if enc is not None:
                if is_async:

                    async def body(*a, **kw):
                        return enc(await func(*a, **kw))
                else:

                    def body(*a, **kw):
                        return enc(func(*a, **kw))

                functools.update_wrapper(body, func)
            memo = Memoized(
                self.cache,
                body,
                ttl=float("inf") if ttl is None else ttl,
                key=lambda *a, **kw: template.render(a, kw),
                name=f"cachify:{self.prefix}",
            )

            if is_async:

                @functools.wraps(func)
                async def wrapper(*args, **kwargs):
                    v = await memo.acall(*args, **kwargs)
                    return dec(v) if dec else v
            else:

                @functools.wraps(func)
                def wrapper(*args, **kwargs):
                    v = memo(*args, **kwargs)
                    return dec(v) if dec else v

            wrapper.reset = lambda *a, **kw: _Maybe(memo.reset(*a, **kw))
            wrapper.memo = memo
            return wrapper

        return deco

    # ----- lock --------------------------------------------------------------------

    def lock(self, key, nowait=True, timeout=None, exp=RAISE):
        """py-cachify's lock: a context manager (sync and async) and a decorator.
        ``nowait=True`` raises ``CachifyLockError`` at once when held; otherwise waits
        up to ``timeout`` seconds (None: without bound). ``exp`` bounds the hold
        (default: the instance's ``default_lock_expiration``; None: no bound)."""
        exp = self.default_lock_expiration if exp is RAISE else exp
        return _CachifyLock(self, key, nowait, timeout, exp)

    def once(self, key, raise_on_locked=False, return_on_locked=None, exp=RAISE):
        """Runs the function unless it is running under the same (templated) key in any
        process; then raises ``CachifyLockError`` (``raise_on_locked``) or returns
        ``return_on_locked``."""
        exp = self.default_lock_expiration if exp is RAISE else exp
        on_busy = RAISE if raise_on_locked else return_on_locked
        return Once(self.cache, self.prefix + key, exp, on_busy, error=CachifyLockError)

    # ----- pools -------------------------------------------------------------------

    def pool(self, key, max_size, slot_exp=RAISE):
        """A pool of ``max_size`` slots: ``with``/``async with`` raises
        ``CachifyPoolFullError`` when full; ``size()`` / ``asize()`` count holders."""
        exp = self.default_pool_slot_expiration if slot_exp is RAISE else slot_exp
        return _CachifyPool(self, self.prefix + key, max_size, exp)

    def pooled(self, key, max_size, on_full=None, raise_on_full=False, slot_exp=RAISE):
        """Runs the function holding a slot of the (templated) pool; when it is full,
        calls ``on_full(*args, **kwargs)``, or raises ``CachifyPoolFullError``
        (``raise_on_full``, or no ``on_full``: nothing to return). ``f.size(*args,
        **kwargs)`` counts the holders."""
        exp = self.default_pool_slot_expiration if slot_exp is RAISE else slot_exp
        full = None if raise_on_full else on_full
        pool = Pool(self.cache, self.prefix + key, max_size, exp, full, error=CachifyPoolFullError)

        def deco(func):
            wrapper = pool(func)
            template = Template(self.prefix + key, func)
            wrapper.size = lambda *a, **kw: _Maybe(
                self.cache._n.pool_size(template.render(a, kw), max_size)
            )
            return wrapper

        return deco


class _CachifyLock:
    def __init__(self, inst, key, nowait, timeout, exp):
        self._inst = inst
        self._key = inst.prefix + key
        wait = 0 if nowait else (None if timeout is None else timeout)
        self._lock = Lock(inst.cache, self._key, expires=exp, wait=wait)

    def _translate(self, fn, *args):
        try:
            return fn(*args)
        except CachifyLockError:
            raise
        except Busy as e:
            raise CachifyLockError(str(e)) from None

    def __enter__(self):
        self._translate(self._lock.__enter__)
        return self

    def __exit__(self, *exc):
        self._lock.__exit__(*exc)

    async def __aenter__(self):
        try:
            await self._lock.__aenter__()
        except Busy as e:
            raise CachifyLockError(str(e)) from None
        return self

    async def __aexit__(self, *exc):
        await self._lock.__aexit__(*exc)

    def is_locked(self, *args, **kwargs):
        return self._inst.cache._n.is_locked(self._lock._template.render(args, kwargs))

    async def is_alocked(self, *args, **kwargs):
        return self.is_locked(*args, **kwargs)

    def release(self):
        """Releases the hold this thread took in a ``with`` block; holds of other
        processes are never released here (py-cachify released them: a bug)."""
        if self._lock._holds:
            self._lock.release()

    async def arelease(self):
        self.release()

    def force_release(self, *args, **kwargs):
        """Takes the lock from whoever holds it (explicitly); True if it was held."""
        return self._inst.cache._n.force_release(self._lock._template.render(args, kwargs))

    def __call__(self, func):
        template = Template(self._key, func)
        lk = self._lock
        is_async = inspect.iscoroutinefunction(func)

        def take(name):
            return self._translate(lk._take, name, lk.wait)

        if is_async:

            @functools.wraps(func)
            async def wrapper(*args, **kwargs):
                name = template.render(args, kwargs)
                try:
                    g = await _in_thread(lk._take, name, lk.wait)
                except Busy as e:
                    raise CachifyLockError(str(e)) from None
                try:
                    return await func(*args, **kwargs)
                finally:
                    g.release()
        else:

            @functools.wraps(func)
            def wrapper(*args, **kwargs):
                g = take(template.render(args, kwargs))
                try:
                    return func(*args, **kwargs)
                finally:
                    g.release()

        n = self._inst.cache._n
        wrapper.is_locked = lambda *a, **kw: _Maybe(n.is_locked(template.render(a, kw)))
        # Only the holder releases: from outside the function there is nothing of ours.
        wrapper.release = lambda *a, **kw: _Maybe(None)
        wrapper.force_release = lambda *a, **kw: n.force_release(template.render(a, kw))
        return wrapper


class _CachifyPool:
    def __init__(self, inst, key, max_size, exp):
        self._inst = inst
        self._key = key
        self.max_size = max_size
        self._exp = seconds("slot_exp", exp)
        self._holds = threading.local()

    def _stack(self):
        s = getattr(self._holds, "stack", None)
        if s is None:
            s = self._holds.stack = []
        return s

    def __enter__(self):
        g = self._inst.cache._n.pool_acquire(self._key, self.max_size, self._exp)
        if g is None:
            raise CachifyPoolFullError(f"pool {self._key!r} is full: {self.max_size} slots held")
        self._stack().append(g)
        return self

    def __exit__(self, *exc):
        self._stack().pop().release()

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, *exc):
        self.__exit__(*exc)

    def size(self):
        return self._inst.cache._n.pool_size(self._key, self.max_size)

    async def asize(self):
        return self.size()


_global = None


def init_cachify(cache=None, prefix="", default_cache_ttl=None, default_lock_expiration=30,
                 default_pool_slot_expiration=600, is_global=True, **_ignored):
    """py-cachify's ``init_cachify``: configures the module-level ``cached``, ``lock``,
    ``once``, ``pool`` and ``pooled`` (or, with ``is_global=False``, returns an instance
    of its own). Client arguments of other backends are accepted and ignored."""
    global _global
    inst = Cachify(cache, prefix, default_cache_ttl, default_lock_expiration,
                   default_pool_slot_expiration)
    if is_global:
        _global = inst
    return inst


def _inst():
    global _global
    if _global is None:
        _global = Cachify()
    return _global


def cached(key, ttl=RAISE, enc_dec=None):
    """See :meth:`Cachify.cached` (the global instance)."""
    return _inst().cached(key, ttl, enc_dec)


def lock(key, nowait=True, timeout=None, exp=RAISE):
    """See :meth:`Cachify.lock` (the global instance)."""
    return _inst().lock(key, nowait, timeout, exp)


def once(key, raise_on_locked=False, return_on_locked=None, exp=RAISE):
    """See :meth:`Cachify.once` (the global instance)."""
    return _inst().once(key, raise_on_locked, return_on_locked, exp)


def pool(key, max_size, slot_exp=RAISE):
    """See :meth:`Cachify.pool` (the global instance)."""
    return _inst().pool(key, max_size, slot_exp)


def pooled(key, max_size, on_full=None, raise_on_full=False, slot_exp=RAISE):
    """See :meth:`Cachify.pooled` (the global instance)."""
    return _inst().pooled(key, max_size, on_full, raise_on_full, slot_exp)


