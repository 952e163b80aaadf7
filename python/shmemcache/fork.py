"""Clearing in-process caches in a forked child (forkache's job).

A ``functools.lru_cache`` filled in a parent is copied into every forked child, where
its entries may be wrong (a cached pid, an open connection, a per-process secret).
``fork_safe`` clears such a cache in the child right after ``fork()``, through
``os.register_at_fork``. It is unrelated to :class:`shmemcache.Cache`, which is shared
on purpose and needs no such care.
"""

import os
import threading
import weakref

__all__ = ["fork_safe"]

_METHODS = ("cache_clear", "clear", "delete_memoized")
_registry = {}  # id -> (weakref or object, method name)
_lock = threading.Lock()


def _clear_all():
    for ref, method in list(_registry.values()):
        obj = ref() if isinstance(ref, weakref.ref) else ref
        if obj is not None:
            try:
                getattr(obj, method)()
            except Exception:
                # A child must come up even if one cache refuses to clear.
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_clear_all)


def fork_safe(obj=None, *, method=None):
    """Registers ``obj`` (a cached function or a cache object) to be cleared in every
    child forked from now on, and returns it, so it works as a decorator:

    >>> import functools, shmemcache
    >>> @shmemcache.fork_safe
    ... @functools.lru_cache
    ... def my_pid():
    ...     return os.getpid()

    ``method`` names the clearing method; by default the first of ``cache_clear``,
    ``clear`` and ``delete_memoized`` that ``obj`` has.
    """
    if obj is None:
        return lambda o: fork_safe(o, method=method)
    name = method
    if name is None:
        name = next((m for m in _METHODS if callable(getattr(obj, m, None))), None)
        if name is None:
            raise TypeError(
                f"{type(obj).__name__} has none of {', '.join(_METHODS)}; pass method="
            )
    elif not callable(getattr(obj, name, None)):
        raise TypeError(f"{type(obj).__name__} has no method {name!r}")
    try:
        ref = weakref.ref(obj, lambda _r, k=id(obj): _registry.pop(k, None))
    except TypeError:
        ref = obj  # not weakly referenceable: kept alive by the registry
    with _lock:
        _registry[id(obj)] = (ref, name)
    return obj
