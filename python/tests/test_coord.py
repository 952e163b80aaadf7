import asyncio
import multiprocessing as mp
import threading
import time

import pytest

import shmemcache
import workers


def test_lock_excludes_across_processes(name, tmp_path):
    shmemcache.Cache(name)
    path = tmp_path / "counter"
    path.write_text("0")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=workers.locked_increments, args=(name, str(path), 200)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert path.read_text() == "800"


def test_pool_of_two_never_admits_three(name):
    shmemcache.Cache(name)
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        out = pool.starmap(workers.pool_user, [(name, 200)] * 4)
    assert max(s for s, _ in out) <= 2
    assert max(s for s, _ in out) == 2, "the pool never had two holders at once"
    assert sum(a for _, a in out) > 0


def test_lock_api(cache):
    lk = cache.lock("a", expires=10, wait=0)
    assert not lk.locked()
    with lk:
        assert lk.locked()
        other = cache.lock("a", wait=0)
        assert other.acquire() is False
        with pytest.raises(shmemcache.Busy):
            with other:
                pass
        t = time.monotonic()
        assert cache.lock("a").acquire(timeout=0.2) is False
        assert time.monotonic() - t >= 0.19
    assert not lk.locked()
    assert lk.acquire()
    assert lk.force_release() is True
    with pytest.raises(shmemcache.NotOwner):
        lk.release()


def test_lock_expiry_and_wait_is_woken(cache):
    holder = cache.lock("w")
    holder.acquire()
    t = time.monotonic()
    threading.Timer(0.2, holder.release).start()
    with cache.lock("w", wait=10):
        waited = time.monotonic() - t
    assert 0.15 < waited < 2
    # A body that outlives its hold learns it at the end: exclusion was not guaranteed.
    with pytest.raises(shmemcache.NotOwner):
        with cache.lock("e", expires=0.1):
            time.sleep(0.15)
            assert not cache.lock("e").locked()


def test_blocking_wait_releases_the_gil(cache):
    holder = cache.lock("g")
    holder.acquire()
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    th = threading.Thread(target=ticker)
    th.start()
    assert cache.lock("g").acquire(timeout=0.3) is False
    stop.set()
    th.join()
    holder.release()
    assert len(ticks) > 50, "the waiting thread held the GIL"


def test_lock_decorator_with_template(cache):
    @cache.lock("item-{item_id}", wait=0)
    def work(item_id):
        return cache.lock(f"item-{item_id}").locked()

    assert work(5) is True
    assert not cache.lock("item-5").locked()


def test_once(cache):
    inner = []

    @cache.once("job-{n}")
    def job(n):
        inner.append(job(n))  # the same name is busy while it runs
        return "ran"

    assert job(1) == "ran" and inner == [None]

    @cache.once("strict", on_busy=shmemcache.RAISE)
    def strict():
        with pytest.raises(shmemcache.Busy):
            strict()
        return "ok"

    assert strict() == "ok"
    with cache.once("block"):
        with pytest.raises(shmemcache.Busy):
            with cache.once("block"):
                pass
    with cache.once("block"):
        pass  # released


def test_pool_api(cache):
    p = cache.pool("p", 2)
    with p:
        assert p.try_acquire()
        assert p.held() == 2
        assert not cache.pool("p", 2).try_acquire()
        p.release()
    assert p.held() == 0

    @cache.pool("d", 1)
    def inner():
        with pytest.raises(shmemcache.Busy):
            inner()
        return "ok"

    assert inner() == "ok"


def test_async_forms(cache):
    async def main():
        holder = cache.lock("al")
        holder.acquire()
        beats = []

        async def heartbeat():
            for _ in range(20):
                beats.append(1)
                await asyncio.sleep(0.01)

        async def waiter():
            async with cache.lock("al", wait=5):
                return len(beats)

        asyncio.get_running_loop().call_later(0.15, holder.release)
        hb = asyncio.create_task(heartbeat())
        seen = await waiter()
        await hb
        async with cache.pool("ap", 1):
            pass
        async with cache.once("ao"):
            pass

        @cache.lock("dec")
        async def locked():
            return cache.lock("dec").locked()

        return seen, await locked()

    seen, locked = asyncio.run(main())
    assert seen >= 5, "the event loop was blocked while waiting for the lock"
    assert locked is True


def test_cancelled_async_acquire_does_not_leak(cache):
    async def main():
        holder = cache.lock("c")
        holder.acquire()
        task = asyncio.create_task(cache.lock("c", wait=5).__aenter__())
        await asyncio.sleep(0.05)
        task.cancel()
        holder.release()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)

    asyncio.run(main())
    time.sleep(0.2)
    assert not cache.lock("c").locked()
