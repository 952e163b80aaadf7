"""Locks, once and pools across every process of the machine: context managers (sync
and async) and decorators. Holds are owned: only the holder releases (``force_release``
is the explicit exception), and a holder that dies frees its hold."""

import asyncio
import functools
import inspect
import threading

from ._util import Template, seconds
from .errors import Busy

__all__ = ["Lock", "Once", "Pool", "RAISE"]

#: ``on_busy`` / ``on_full`` value meaning "raise :class:`shmemcache.Busy`".
RAISE = object()

_FOREVER = 10.0 * 365 * 24 * 3600


class _Holds:
    """The holds taken through one object, newest last. A release gives back the newest
    hold of the calling thread, or, when that thread has none (a lock handed to another
    thread, as ``threading.Lock`` allows), the newest of all."""

    def __init__(self):
        self._mu = threading.Lock()
        self._held = []  # (thread id, guard)

    def push(self, guard):
        with self._mu:
            self._held.append((threading.get_ident(), guard))

    def pop(self):
        me = threading.get_ident()
        with self._mu:
            if not self._held:
                raise RuntimeError("release of a lock, once or pool slot that is not held")
            for i in range(len(self._held) - 1, -1, -1):
                if self._held[i][0] == me:
                    return self._held.pop(i)[1]
            return self._held.pop()[1]

    def __bool__(self):
        return bool(self._held)


async def _in_thread(fn, *args):
    """Runs a blocking acquire on a worker thread. If the awaiting task is cancelled
    while it waits, a hold that arrives later is released, not leaked."""
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:

        def drop(f):
            if not f.cancelled() and f.exception() is None and f.result() is not None:
                try:
                    f.result().release()
                except Exception:
                    pass

        fut.add_done_callback(drop)
        raise


class _Coord:
    """What locks, once and pools share: a name (maybe a template), the cache, and the
    holds taken through it."""

    def __init__(self, cache, name, expires):
        self._cache = cache
        self._template = Template(name)
        self.name = name
        self.expires = seconds("expires", expires)
        self._holds = _Holds()

    def _name(self, args=(), kwargs=None):
        return self._template.render(args, kwargs)

    def _push(self, guard):
        self._holds.push(guard)

    def __exit__(self, *exc):
        self._holds.pop().release()

    async def __aexit__(self, *exc):
        self._holds.pop().release()

    def _decorate_held(self, func, take, busy):
        """Decorates ``func`` to run holding ``take(name)`` (None when busy), released
        after; when busy, the call returns ``busy(name, args, kwargs)`` instead."""

        def body(name, f, args, kwargs, is_async):
            g = take(name)
            if is_async:

                async def run():
                    if g is None:
                        r = busy(name, args, kwargs)
                        return await r if inspect.isawaitable(r) else r
                    try:
                        return await f(*args, **kwargs)
                    finally:
                        g.release()

                return run()
            if g is None:
                return busy(name, args, kwargs)
            try:
                return f(*args, **kwargs)
            finally:
                g.release()

        return self._decorate(func, body)

    def _decorate(self, func, body):
        template = Template(self.name, func)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def awrapper(*args, **kwargs):
                return await body(template.render(args, kwargs), func, args, kwargs, True)

            return awrapper

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return body(template.render(args, kwargs), func, args, kwargs, False)

        return wrapper


class Lock(_Coord):
    """A named lock across processes.

    ``expires`` bounds a hold (seconds; None = until released or the holder dies).
    ``wait`` is how long ``with`` and ``acquire()`` wait for a holder to release
    (seconds; None = without bound, 0 = not at all); waiting sleeps without the GIL and
    is woken by the release, not by polling. ``Busy`` is raised when the wait runs out.
    A ``with`` block that outlives its hold raises ``NotOwner`` at its end: another
    process may have held the lock meanwhile.

    As a decorator, the name may be a template filled from the call's arguments:
    ``@cache.lock("order-{order_id}")``.

    >>> import shmemcache
    >>> cache = shmemcache.Cache("doctest-lock")
    >>> with cache.lock("report", expires=60):
    ...     cache.lock("report").locked()
    True
    >>> shmemcache.Cache.unlink("doctest-lock")
    """

    def __init__(self, cache, name, expires=None, wait=None):
        super().__init__(cache, name, expires)
        self.wait = seconds("wait", wait)

    def _take(self, name, wait):
        n = self._cache._n
        if wait == 0:
            g = n.lock(name, self.expires, None)
            if g is None:
                raise Busy(f"lock {name!r} is busy: held by another process")
            return g
        return n.lock(name, self.expires, _FOREVER if wait is None else wait)

    def acquire(self, blocking=True, timeout=None):
        """Takes the lock for this thread's ``release()``; False if it could not (no
        waiting when ``blocking`` is false; at most ``timeout`` seconds otherwise)."""
        wait = 0 if not blocking else (self.wait if timeout is None else seconds("timeout", timeout))
        try:
            self._push(self._take(self._name(), wait))
            return True
        except Busy:
            return False

    def release(self):
        """Releases the hold this thread took last. ``NotOwner`` if it lapsed."""
        self._holds.pop().release()

    def locked(self):
        """Whether a live process holds the lock now."""
        return self._cache._n.is_locked(self._name())

    def force_release(self):
        """Releases the lock whoever holds it; True if it was held."""
        return self._cache._n.force_release(self._name())

    def __enter__(self):
        self._push(self._take(self._name(), self.wait))
        return self

    async def __aenter__(self):
        self._push(await _in_thread(self._take, self._name(), self.wait))
        return self

    def __call__(self, func):
        def body(name, f, args, kwargs, is_async):
            if is_async:

                async def run():
                    g = await _in_thread(self._take, name, self.wait)
                    try:
                        return await f(*args, **kwargs)
                    finally:
                        g.release()

                return run()
            g = self._take(name, self.wait)
            try:
                return f(*args, **kwargs)
            finally:
                g.release()

        return self._decorate(func, body)


class Once(_Coord):
    """Runs a body unless another process is running it under the same name right now
    ("not concurrently", as py-cachify's ``once``; a later call runs it again).

    As a decorator, a busy call returns ``on_busy`` (default None) without running, or
    raises ``Busy`` if ``on_busy`` is :data:`shmemcache.RAISE`. As a ``with`` block,
    which cannot be skipped, a busy name raises ``Busy``. ``error`` is the class raised
    (``Busy`` or a subclass of it).
    """

    def __init__(self, cache, name, expires=None, on_busy=None, *, error=Busy):
        super().__init__(cache, name, expires)
        self.on_busy = on_busy
        self.error = error

    def _busy(self, name, args=(), kwargs=None):
        if self.on_busy is RAISE:
            raise self.error(f"once {name!r} is busy: running in another process")
        return self.on_busy

    def _try(self, name):
        return self._cache._n.try_once(name, self.expires)

    def __enter__(self):
        name = self._name()
        g = self._try(name)
        if g is None:
            raise self.error(f"once {name!r} is busy: running in another process")
        self._push(g)
        return self

    async def __aenter__(self):
        return self.__enter__()

    def __call__(self, func):
        return self._decorate_held(func, self._try, self._busy)


class Pool(_Coord):
    """At most ``size`` concurrent holders across every process. A slot of a holder that
    dies is reclaimed; ``expires`` bounds a hold.

    ``with pool:`` raises ``Busy`` when every slot is held. As a decorator, a full pool
    calls ``on_full(*args, **kwargs)`` if given, else raises ``Busy``. ``error`` is the
    class raised (``Busy`` or a subclass of it).
    """

    def __init__(self, cache, name, size, expires=None, on_full=None, *, error=Busy):
        super().__init__(cache, name, expires)
        self.error = error
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"pool size must be an int, not {type(size).__name__}")
        self.size = size
        self.on_full = on_full
        # Validates the size against the segment now rather than at first use.
        if "{" not in name:
            cache._n.pool_size(name, size)

    def _try(self, name):
        return self._cache._n.pool_acquire(name, self.size, self.expires)

    def try_acquire(self):
        """Takes a slot for this thread's ``release()`` if one is free; False if full."""
        g = self._try(self._name())
        if g is None:
            return False
        self._push(g)
        return True

    def release(self):
        """Releases the slot this thread took last."""
        self._holds.pop().release()

    def held(self):
        """Slots held by live processes now."""
        return self._cache._n.pool_size(self._name(), self.size)

    def __enter__(self):
        name = self._name()
        g = self._try(name)
        if g is None:
            raise self.error(f"pool {name!r} is busy: all {self.size} slots are held")
        self._push(g)
        return self

    async def __aenter__(self):
        return self.__enter__()

    def _full(self, name, args, kwargs):
        if self.on_full is None or self.on_full is RAISE:
            raise self.error(f"pool {name!r} is busy: all {self.size} slots are held")
        return self.on_full(*args, **kwargs)

    def __call__(self, func):
        return self._decorate_held(func, self._try, self._full)
