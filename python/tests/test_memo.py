import asyncio
import multiprocessing as mp
import os
import signal
import time

import pytest

import shmemcache
import workers


def test_signature_binding_shares_entries(cache):
    calls = []

    @cache.memoize
    def f(a, b=2, *, c=3):
        calls.append((a, b, c))
        return a + b + c

    assert f(1) == f(1, 2) == f(1, b=2) == f(a=1) == f(1, c=3) == f(1, 2, c=3) == 6
    assert calls == [(1, 2, 3)]
    assert f(1, 5) == 9 and len(calls) == 2
    with pytest.raises(TypeError):
        f()  # the binding error, as a plain call would give
    with pytest.raises(TypeError):
        f(1, 2, 3)


def test_varargs_and_custom_key(cache):
    seen = []

    @cache.memoize
    def v(*args, **kw):
        seen.append(1)
        return sum(args) + sum(kw.values())

    assert v(1, 2, x=3) == v(1, 2, x=3) == 6 and len(seen) == 1

    @cache.memoize(key=lambda user, request_id: f"user:{user}")
    def profile(user, request_id):
        seen.append(2)
        return {"user": user}

    assert profile("ada", 1) == profile("ada", 2) and seen.count(2) == 1


def test_companions(cache):
    runs = []

    @cache.memoize(ttl=60)
    def f(x):
        runs.append(x)
        return [x]

    f(1)
    f(2)
    assert f.reset(1) is True and f.reset(1) is False
    f(1)
    assert runs == [1, 2, 1]
    f.precache(7, value="pre")
    assert f(7) == "pre" and runs == [1, 2, 1]
    s = f.stats()
    assert s["computed"] == 3 and s["hits"] == 1 and s["misses"] == 3
    assert f.clear() == 3
    f(1)
    assert runs[-1] == 1 and len(runs) == 4
    assert f.clear_in_flight() == 0


def test_per_call_switches(cache):
    runs = []

    @cache.memoize
    def f(x):
        runs.append(x)
        return len(runs)

    assert f(1) == 1
    assert f(1, shmemcache__skip_cache=True) == 2  # computed, not stored
    assert f(1) == 1
    assert f(1, shmemcache__overwrite=True) == 3
    assert f(1) == 3
    time.sleep(0.05)
    assert f(1, shmemcache__max_age=0.01) == 4
    assert f(1) == 4


def test_ttl_stale_after_and_none(cache):
    runs = []

    @cache.memoize(stale_after=0.1)
    def f():
        runs.append(1)
        return len(runs)

    assert f() == 1 and f() == 1
    time.sleep(0.15)
    assert f() == 2

    @cache.memoize(cache_none=False)
    def g():
        runs.append(2)

    g()
    g()
    assert runs.count(2) == 2


def test_results_of_every_type(cache):
    vals = iter([b"", b"raw", "s", None, 0, {"a": (1, 2)}, shmemcache.codecs.MAGIC + b"x"])

    @cache.memoize
    def f(i):
        return next(vals)

    got = [f(i) for i in range(7)]
    again = [f(i) for i in range(7)]
    assert got == again == [b"", b"raw", "s", None, 0, {"a": (1, 2)}, shmemcache.codecs.MAGIC + b"x"]


def test_exception_is_not_cached(cache):
    n = []

    @cache.memoize
    def f():
        n.append(1)
        if len(n) == 1:
            raise ValueError("first call fails")
        return "ok"

    with pytest.raises(ValueError, match="first call fails"):
        f()
    assert f() == "ok"


def test_unpicklable_result_is_a_clear_error(cache):
    import threading

    @cache.memoize
    def f():
        return threading.Lock()

    with pytest.raises(shmemcache.CodecError):
        f()


class Point:
    def __init__(self, x):
        self.x = x

    def norm(self, scale):
        return self.x * scale


def test_methods_and_async(cache):
    class Svc:
        @cache.memoize
        def get(self, x):
            return x

    # self is part of the key: a local class cannot be pickled, and says so
    with pytest.raises(shmemcache.CodecError, match="arguments must be picklable"):
        Svc().get(2)
    Point.norm = cache.memoize(Point.norm)
    assert Point(2).norm(3) == 6 and Point(2).norm(3) == 6
    assert Point.norm.stats()["hits"] == 1

    @cache.memoize
    async def aget(x):
        await asyncio.sleep(0)
        return x * 2

    @cache.memoize
    def sget(x):
        return x * 3

    async def main():
        return await aget(4), await aget(4), await sget.acall(5), aget.stats()["hits"]

    assert asyncio.run(main()) == (8, 8, 15, 1)


def test_single_flight_across_8_processes(name):
    cache = shmemcache.Cache(name)
    ctx = mp.get_context("fork")
    start_at = time.time() + 1.0  # every worker calls at once
    with ctx.Pool(8) as pool:
        res = [pool.apply_async(workers.slow_calls, (name, start_at, 42)) for _ in range(8)]
        out = [r.get(timeout=60) for r in res]
    assert cache.get("runs") == b"1", "the body ran more than once"
    assert all(o == out[0] for o in out) and out[0]["x"] == 42


def _owner(name, ready_key):
    cache = shmemcache.Cache(name)

    @cache.memoize(name="tests.takeover")
    def f():
        cache.set(ready_key, os.getpid())
        time.sleep(60)  # killed before it returns
        return "from the dead owner"

    f()


def test_dead_owner_is_taken_over(name):
    cache = shmemcache.Cache(name)
    ctx = mp.get_context("fork")
    owner = ctx.Process(target=_owner, args=(name, "owner-pid"))
    owner.start()
    deadline = time.time() + 10
    while cache.get("owner-pid") is None and time.time() < deadline:
        time.sleep(0.01)
    assert cache.get("owner-pid") is not None

    @cache.memoize(name="tests.takeover")
    def f():
        return "from the waiter"

    def kill_soon():
        time.sleep(0.3)
        os.kill(owner.pid, signal.SIGKILL)

    import threading

    threading.Thread(target=kill_soon).start()
    t = time.monotonic()
    assert f() == "from the waiter"
    waited = time.monotonic() - t
    owner.join()
    assert owner.exitcode == -signal.SIGKILL
    assert 0.25 < waited < 5, waited
    assert f.stats()["takeovers"] >= 1


def test_memoized_function_pickles_by_reference(cache):
    import pickle
    import sys
    import types

    mod = types.ModuleType("pytest_memo_mod")
    sys.modules[mod.__name__] = mod
    try:

        def double(x):
            return 2 * x

        double.__module__ = mod.__name__
        double.__qualname__ = "double"
        mod.double = cache.memoize(double)
        assert pickle.loads(pickle.dumps(mod.double)) is mod.double
        assert mod.double(4) == 8 and mod.double(4) == 8
        assert mod.double.__name__ == "double" and mod.double.__wrapped__ is double
        assert mod.double.stats()["hits"] == 1
    finally:
        del sys.modules[mod.__name__]
