"""Functions run in child processes (importable, so the spawn start method works too)."""

import os
import time

import shmemcache


def store_and_read(cache, key, value):
    cache.set(key, value)
    return cache.get(key)


def read(cache, key):
    return cache.get(key)


def slow_calls(name, start_at, x):
    """Calls a memoized function whose body counts its runs in the cache."""
    cache = shmemcache.Cache(name)

    @cache.memoize(name="tests.slow")
    def slow(x):
        cache.incr("runs")
        time.sleep(0.5)
        return {"x": x, "by": os.getpid()}

    time.sleep(max(0.0, start_at - time.time()))
    return slow(x)


def locked_increments(name, path, n):
    """n read-modify-write increments of a file counter, each under the named lock."""
    cache = shmemcache.Cache(name)
    for _ in range(n):
        with cache.lock("file-counter", wait=30):
            with open(path) as f:
                v = int(f.read() or 0)
            with open(path, "w") as f:
                f.write(str(v + 1))


def pool_user(name, rounds):
    """Holds a slot of a pool of 2 for a moment, recording the concurrency it saw."""
    cache = shmemcache.Cache(name)
    seen = 0
    admitted = 0
    for _ in range(rounds):
        try:
            with cache.pool("two", 2):
                admitted += 1
                now = cache.incr("inside")
                seen = max(seen, now)
                time.sleep(0.002)
                cache.incr("inside", -1)
        except shmemcache.Busy:
            time.sleep(0.001)
    return seen, admitted
