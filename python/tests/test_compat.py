import asyncio
import datetime
import multiprocessing as mp
import threading
import time

import pytest

import shmemcache
from shmemcache import compat


@pytest.fixture
def segment(name, monkeypatch):
    monkeypatch.setenv("SHMEMCACHE_SEGMENT", name)
    compat._default = None
    compat._global = None
    yield name
    compat._default = None
    compat._global = None


# ----- duck ---------------------------------------------------------------------------


def _store_and_read(cache, key, value, out):
    cache.set(key, value, expiry=10)
    out.put((key, cache.get(key)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_duck_docstring_scenario(method):
    """duck's usage example: 10 processes store and read back; maxkeys=5 keeps 5."""
    cache = compat.ProcessSafeLRUCache(maxkeys=5)
    ctx = mp.get_context(method)
    out = ctx.Queue()
    ps = [ctx.Process(target=_store_and_read, args=(cache, str(i), i * 2, out)) for i in range(10)]
    for p in ps:
        p.start()
        p.join()  # one after another: LRU order is then the order of the stores
    got = dict(out.get(timeout=10) for _ in ps)
    assert got == {str(i): i * 2 for i in range(10)}
    assert cache.cache == {str(i): i * 2 for i in range(5, 10)}
    assert len(cache) == 5


def test_duck_api_and_fixed_bugs():
    cache = compat.ProcessSafeLRUCache(maxkeys=3)
    cache.set("a", 1, expiry=0.1)
    cache.set(("tuple", 1), "any hashable key")
    assert cache.get(("tuple", 1)) == "any hashable key"
    assert cache.has("a")
    time.sleep(0.15)
    # duck: first get of an expired key ignores the default, has() says True
    assert cache.get("a", "default") == "default"
    assert not cache.has("a")
    cache.set("b", 1, expiry=0.1)
    cache.set("b", 2)  # duck kept the old deadline
    time.sleep(0.15)
    assert cache.get("b") == 2
    with pytest.raises(shmemcache.ZeroTtl):
        cache.set("c", 1, expiry=0)  # duck: 0 meant "never"
    assert cache.get("b", pop=True) == 2 and not cache.has("b")
    cache.set("d", 4)
    cache.delete("d")
    assert cache.get("d") is None
    cache.set("e", 5)
    other = compat.ProcessSafeLRUCache(name=cache.name)
    cache.close()  # duck cleared the shared cache here
    assert other.get("e") == 5
    other.clear()
    assert len(other) == 0
    with pytest.raises(ValueError):
        compat.ProcessSafeLRUCache(maxkeys=0)


# ----- cachier ------------------------------------------------------------------------


def test_cachier_stale_after_and_next_time(segment):
    runs = []

    @compat.cachier(stale_after=datetime.timedelta(seconds=0.3))
    def plain(x):
        runs.append(("plain", x))
        return len(runs)

    assert plain(1) == 1 and plain(1) == 1
    time.sleep(0.35)
    assert plain(1) == 2  # stale: recomputed before returning

    @compat.cachier(stale_after=datetime.timedelta(seconds=0.3), next_time=True)
    def nxt(x):
        runs.append(("next", x))
        time.sleep(0.1)
        return len(runs)

    first = nxt(1)
    time.sleep(0.35)
    t = time.monotonic()
    assert nxt(1) == first  # stale value returned at once
    assert time.monotonic() - t < 0.09
    deadline = time.monotonic() + 5
    while nxt(1) == first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert nxt(1) > first  # refreshed in the background


def test_cachier_methods_and_switches(segment):
    runs = []

    @compat.cachier()
    def f(n, precision=2):
        runs.append(n)
        return None if n < 0 else n**precision

    assert f(3) == 9 and f(3, precision=2) == 9 and runs == [3]
    f.precache_value(100, precision=2, value_to_cache=338350)
    assert f(100) == 338350 and runs == [3]
    assert f(3, cachier__skip_cache=True) == 9 and runs == [3, 3]
    assert f(3, cachier__overwrite_cache=True) == 9 and runs == [3, 3, 3]
    time.sleep(0.02)
    assert f(3, max_age=datetime.timedelta(seconds=0.01)) == 9 and len(runs) == 4
    f(-1)
    f(-1)
    assert runs.count(-1) == 2  # allow_none=False: None is not stored
    f.clear_cache()
    f(3)
    assert len(runs) == 7
    f.clear_being_calculated()
    assert f.cache_dpath() is None


def test_cachier_waiters_compute_when_the_owner_raised(segment):
    calls = []
    gate = threading.Event()

    @compat.cachier()
    def f():
        calls.append(1)
        if len(calls) == 1:
            gate.wait(5)
            raise RuntimeError("owner failed")
        return "computed by a waiter"

    results = []

    def owner():
        try:
            f()
        except RuntimeError as e:
            results.append(str(e))

    t = threading.Thread(target=owner)
    t.start()
    time.sleep(0.1)
    waiter = threading.Thread(target=lambda: results.append(f()))
    waiter.start()
    time.sleep(0.1)
    gate.set()
    t.join()
    waiter.join()
    # cachier gave the waiter None; here it computes
    assert sorted(results) == ["computed by a waiter", "owner failed"]


# ----- py-cachify ---------------------------------------------------------------------


def test_cachify_cached(segment):
    compat.init_cachify(default_cache_ttl=60, prefix="APP-")
    runs = []

    @compat.cached(key="sum-{a}-{b}")
    def sum_two(a, b=1):
        runs.append((a, b))
        return a + b

    assert sum_two(1, 2) == 3 and sum_two(a=1, b=2) == 3 and runs == [(1, 2)]
    assert sum_two(5) == 6
    assert sum_two.reset(1, 2)
    assert sum_two(1, 2) == 3 and len(runs) == 3

    @compat.cached(key="obj-{id}", enc_dec=(lambda o: {"v": o.v}, lambda d: Obj(d["v"])))
    def get_obj(id):
        return Obj(id)

    assert get_obj(4).v == 4 and get_obj(4).v == 4

    @compat.cached(key="user-{user_id}")
    async def get_user(user_id):
        runs.append(user_id)
        return {"id": user_id}

    async def main():
        a = await get_user(42)
        b = await get_user(42)
        await get_user.reset(user_id=42)
        c = await get_user(42)
        return a, b, c

    assert asyncio.run(main()) == ({"id": 42},) * 3
    assert runs.count(42) == 2


class Obj:
    __reduce__ = None  # not picklable: enc_dec makes it cacheable

    def __init__(self, v):
        self.v = v


def test_cachify_lock(segment):
    @compat.lock(key="process-{item_id}", nowait=True)
    def process(item_id):
        assert process.is_locked(item_id=item_id)
        with pytest.raises(compat.CachifyLockError):
            process(item_id)
        return "done"

    assert process("abc") == "done"
    assert not process.is_locked(item_id="abc")
    lk = compat.lock("critical", exp=5)
    with lk:
        assert lk.is_locked()
        other = compat.lock("critical")
        with pytest.raises(compat.CachifyLockError):
            with other:
                pass
        other.release()  # not ours: py-cachify released another's lock here
        assert lk.is_locked()
    assert not lk.is_locked()
    # waiting: nowait=False waits until the holder releases
    holder = compat.lock("w", exp=5)
    holder.__enter__()
    threading.Timer(0.1, holder.release).start()
    t = time.monotonic()
    with compat.lock("w", nowait=False, timeout=5):
        assert time.monotonic() - t >= 0.09
    with pytest.raises(compat.CachifyLockError):
        with compat.lock("w2", nowait=False, timeout=0.1):
            with compat.lock("w2", nowait=False, timeout=0.1):
                pass
    assert isinstance(compat.CachifyLockError("x"), shmemcache.Busy)


def test_cachify_once(segment):
    @compat.once(key="sync-order-{order_id}", return_on_locked="In progress")
    def sync(order_id):
        return ("ran", sync(order_id))

    assert sync(1) == ("ran", "In progress")

    @compat.once(key="daily", raise_on_locked=True)
    def daily():
        with pytest.raises(compat.CachifyLockError):
            daily()
        return "ok"

    assert daily() == "ok"

    @compat.once(key="skip")
    def skip():
        return skip()

    assert skip() is None


def _pooled_worker(segment, rounds, out):
    import os

    os.environ["SHMEMCACHE_SEGMENT"] = segment
    compat._default = None
    compat._global = None
    c = compat.default_cache()
    full = []

    @compat.pooled(key="pool-{kind}", max_size=2, on_full=lambda kind: full.append(1) or "full")
    def work(kind):
        n = c.incr("inside")
        time.sleep(0.003)
        c.incr("inside", -1)
        return n

    seen = [work("x") for _ in range(rounds)]
    out.put((max(s for s in seen if s != "full") if any(s != "full" for s in seen) else 0, len(full)))


def test_cachify_pool_never_admits_three(segment):
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    ps = [ctx.Process(target=_pooled_worker, args=(segment, 150, out)) for _ in range(4)]
    for p in ps:
        p.start()
    res = [out.get(timeout=60) for _ in ps]
    for p in ps:
        p.join()
    assert max(r[0] for r in res) == 2
    assert sum(r[1] for r in res) > 0, "the pool was never full"

    pool = compat.pool("ctx", max_size=1)
    with pool:
        assert pool.size() == 1
        with pytest.raises(compat.CachifyPoolFullError):
            with compat.pool("ctx", max_size=1):
                pass

    @compat.pooled(key="strict", max_size=1, raise_on_full=True)
    def strict():
        with pytest.raises(compat.CachifyPoolFullError):
            strict()
        return strict.size() == 1

    assert strict() is True

    async def main():
        async with compat.pool("actx", max_size=1) as p:
            return await p.asize()

    assert asyncio.run(main()) == 1
