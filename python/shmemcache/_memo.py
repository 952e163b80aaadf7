"""Memoization across processes, with machine-wide single flight."""

import asyncio
import functools
import inspect
import pickle

from . import _native
from ._util import seconds
from .codecs import MAGIC
from .errors import CodecError

__all__ = ["memoize", "Memoized"]

_EMPTY = MAGIC + b"B"  # an empty bytes result (an empty encoding means "do not store")
_P = inspect.Parameter
_native_argkey = _native.argkey
_MISS = object()


def _enc(args):
    """The key bytes of bound arguments: the native encoding (None, bool, int, float,
    str, bytes, tuples), else a pickle behind a prefix the native one never starts with."""
    k = _native_argkey(args)
    return k if k is not None else b"P" + pickle.dumps(args, 5)


class _ArgKey:
    """Builds the cache key of a call from its arguments *after* binding them to the
    signature with defaults applied, so ``f(1)``, ``f(1, 2)`` and ``f(1, b=2)`` are one
    entry when ``b`` defaults to 2. The common all-positional call skips
    ``inspect.Signature.bind``."""

    __slots__ = ("_sig", "_n", "_first_default", "_tail", "_simple")

    def __call__(self, args, kwargs):
        try:
            return self._key(args, kwargs)
        except TypeError:
            raise  # the arguments do not fit the signature
        except Exception as e:
            raise CodecError(
                f"cannot build the cache key: the arguments must be picklable ({e}); "
                "pass key= to memoize to build keys yourself"
            ) from e

    def __init__(self, func):
        self._sig = inspect.signature(func)
        params = list(self._sig.parameters.values())
        self._simple = all(p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD) for p in params)
        self._n = len(params)
        first = self._n
        while first > 0 and params[first - 1].default is not _P.empty:
            first -= 1
        self._first_default = first
        self._tail = tuple(p.default for p in params[first:])

    def full(self, args):
        """``args`` with defaults filled in, if that is the whole binding; else None."""
        n = len(args)
        if n == self._n:
            return args
        if self._first_default <= n < self._n:
            return args + self._tail[n - self._first_default :]
        return None

    def _key(self, args, kwargs):
        if not kwargs and self._simple:
            full = self.full(args)
            if full is not None:
                return _enc(full)
        bound = self._sig.bind(*args, **kwargs)  # a TypeError, as the call itself would give
        bound.apply_defaults()
        if bound.kwargs:
            return _enc((bound.args, tuple(sorted(bound.kwargs.items()))))
        return _enc(bound.args)


def _custom_key(fn):
    def build(args, kwargs):
        k = fn(*args, **kwargs)
        if isinstance(k, bytes):
            return b"b" + k
        if isinstance(k, str):
            return b"s" + k.encode()
        return b"p" + pickle.dumps(k, 5)

    return build


class Memoized:
    """A memoized function. Calls return the stored result when there is one; on a miss
    exactly one caller on the whole machine runs the function while the others sleep
    (woken by a futex, not polling) and get its result. If the computing process dies,
    a waiter takes over. Results round-trip through the cache's codec.

    Per call, keyword arguments (removed before the function sees them):
    ``shmemcache__skip_cache=True`` computes without reading or writing the cache,
    ``shmemcache__overwrite=True`` computes and replaces the stored result,
    ``shmemcache__max_age=seconds`` treats an older result as missing.
    """

    def __init__(
        self,
        cache,
        func,
        *,
        ttl=None,
        stale_after=None,
        serve_stale=False,
        max_size=None,
        wait_timeout=None,
        key=None,
        name=None,
        cache_none=True,
        propagate_errors=False,
    ):
        if not callable(func):
            raise TypeError(f"memoize needs a callable, not {type(func).__name__}")
        functools.update_wrapper(self, func)
        self._func = func
        self._cache = cache
        self._is_async = inspect.iscoroutinefunction(func)
        self._argkey = _custom_key(key) if key is not None else _ArgKey(func)
        # The hit path for all-positional calls: no binding, no pickling, one native call.
        self._fast = self._argkey.full if (key is None and self._argkey._simple) else None
        self._cache_none = cache_none
        self._encode = cache._codec.encode
        self._decode = cache._codec.decode
        self.name = name or f"{func.__module__}.{func.__qualname__}"
        ttl = seconds("ttl", ttl)
        self._memo = _native.MemoFn(
            cache._n,
            self.name,
            ttl=ttl,
            stale_after=seconds("stale_after", stale_after),
            serve_stale=bool(serve_stale),
            max_size=max_size,
            wait_timeout=seconds("wait_timeout", wait_timeout),
            propagate_errors=propagate_errors,
        )

    # ----- calls ------------------------------------------------------------------

    def _encoded(self, value):
        if value is None and not self._cache_none:
            return b""
        enc = self._encode(value)
        return enc if enc else _EMPTY

    def _switches(self, kwargs):
        skip = kwargs.pop("shmemcache__skip_cache", False)
        overwrite = kwargs.pop("shmemcache__overwrite", False)
        max_age = seconds("max_age", kwargs.pop("shmemcache__max_age", None))
        return skip, overwrite, max_age

    def _call(self, args, kwargs, skip=False, overwrite=False, max_age=None, run=None):
        argkey = self._argkey(args, kwargs)
        func = run or self._func

        def compute():
            v = func(*args, **kwargs)
            return v, self._encoded(v)

        raw, value = self._memo.call(argkey, compute, skip=skip, overwrite=overwrite, max_age=max_age)
        if raw is None:
            return value
        if raw[:4] != MAGIC:
            return raw
        return self._decode(raw)

    def __call__(self, *args, **kwargs):
        if self._is_async:
            return self.acall(*args, **kwargs)
        if not kwargs and self._fast is not None:
            full = self._fast(args)
            if full is not None:
                v = self._memo.lookup(full, self._decode, _MISS)
                if v is not _MISS:
                    return v
        return self._full(*args, **kwargs)

    def _full(self, *args, **kwargs):
        """The call past the hit path: binding, single flight, computing."""
        skip, overwrite, max_age = self._switches(kwargs) if kwargs else (False, False, None)
        return self._call(args, kwargs, skip, overwrite, max_age)

    def wrapper(self):
        """The callable ``memoize`` returns: this function's hit path in native code, with
        the companions (``reset``, ``stats``, ...) as attributes."""
        if self._is_async:

            @functools.wraps(self._func)
            async def afunc(*args, **kwargs):
                return await self.acall(*args, **kwargs)

            f = afunc
        else:
            # A native callable: a hit of an all-positional call runs no Python frame at
            # all. The arity -1 turns that off (custom keys, keyword-only or * parameters).
            n = self._argkey._n if self._fast is not None else -1
            f = _native.MemoCall(self._memo, n, self._decode, self._full)
            functools.update_wrapper(f, self._func)

        for name in ("acall", "reset", "precache", "clear", "clear_in_flight", "stats"):
            setattr(f, name, getattr(self, name))
        f.memo = self
        f.name = self.name
        return f

    async def acall(self, *args, **kwargs):
        """The memoized call, awaited: waiting for another process's computation happens
        on a worker thread, so the event loop keeps running. An ``async def`` function
        runs on the calling loop."""
        loop = asyncio.get_running_loop()
        switches = self._switches(kwargs)
        run = None
        if self._is_async:
            func = self._func

            def run(*a, **kw):
                return asyncio.run_coroutine_threadsafe(func(*a, **kw), loop).result()

        return await loop.run_in_executor(
            None, functools.partial(self._call, args, kwargs, *switches, run=run)
        )

    def __get__(self, obj, objtype=None):  # used when a Memoized is a class attribute
        # Decorating a method: bind like a function (``self`` is part of the key).
        if obj is None:
            return self
        return functools.partial(self, obj)

    # ----- companions -------------------------------------------------------------

    def reset(self, *args, **kwargs):
        """Forgets the stored result of this call; True if there was one."""
        return self._memo.reset(self._argkey(args, kwargs))

    def precache(self, *args, value, **kwargs):
        """Stores ``value`` as the result of this call, as if just computed."""
        enc = self._encoded(value)
        if not enc:
            raise CodecError("None is not cached by this function (cache_none=False)")
        self._memo.precache(self._argkey(args, kwargs), enc)

    def clear(self):
        """Forgets every stored result of this function; returns how many."""
        return self._memo.clear()

    def clear_in_flight(self):
        """Drops this function's in-flight markers (cachier's
        ``clear_being_calculated``): their waiters compute themselves."""
        return self._memo.clear_in_flight()

    def stats(self):
        """Machine-wide counters of this function: hits, misses, computed, waited,
        takeovers, ... (a dict)."""
        return self._memo.stats()

    def __repr__(self):
        return f"<shmemcache.Memoized {self.name} on {self._cache!r}>"


def memoize(cache, func=None, **options):
    """Memoizes ``func`` in ``cache``, as ``@cache.memoize(...)`` or
    ``@shmemcache.memoize(cache, ...)``.

    Options: ``ttl`` (seconds or timedelta; ``math.inf`` = never expires), ``stale_after``
    (older results are recomputed), ``serve_stale`` (with ``stale_after``: return the
    stale result at once while one process refreshes it in the background),
    ``max_size`` (larger encoded results are returned but not stored),
    ``wait_timeout`` (how long to wait for another process's computation before
    computing here), ``key`` (a function of the arguments giving the key, instead of the
    bound arguments), ``name`` (the key space; default ``module.qualname``),
    ``cache_none`` (False: None results are not stored), ``propagate_errors`` (True:
    waiters get ``ComputedElsewhereFailed`` when the computation raises, instead of
    computing themselves).

    >>> import shmemcache
    >>> cache = shmemcache.Cache("doctest-memo")
    >>> @cache.memoize(ttl=60)
    ... def square(x, power=2):
    ...     return x ** power
    >>> square(4), square(4, power=2), square(4, 2)
    (16, 16, 16)
    >>> square.stats()["computed"]
    1
    >>> shmemcache.Cache.unlink("doctest-memo")
    """
    if func is None:
        return lambda f: Memoized(cache, f, **options).wrapper()
    return Memoized(cache, func, **options).wrapper()
