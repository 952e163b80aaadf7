"""``python -m shmemcache``: a multi-process demo on the default segment.

Four worker processes share one cache: they memoize a slow function (it runs once
machine-wide, whoever asks first), count requests with an atomic counter, take turns
under a named lock, and then read as fast as they can. Options: ``--workers N``,
``--name SEGMENT``, ``--seconds S``.
"""

import argparse
import multiprocessing as mp
import os
import time

import shmemcache
from shmemcache._cache import default_name


def slow_square(cache, x):
    cache.incr("demo:computations")
    time.sleep(0.5)  # an expensive computation
    return x * x


def worker(name, seconds, out):
    cache = shmemcache.Cache(name)
    square = cache.memoize(lambda x: slow_square(cache, x), name="demo.slow_square", ttl=60)
    t = time.perf_counter()
    v = square(12)
    waited = time.perf_counter() - t
    cache.incr("demo:requests")
    with cache.lock("demo:turn", wait=10):
        cache.set(f"demo:worker:{os.getpid()}", {"pid": os.getpid(), "result": v})
    cache.set("demo:hot", b"x" * 100)
    n = 0
    end = time.perf_counter() + seconds
    get = cache.get
    while time.perf_counter() < end:
        for _ in range(1000):
            get("demo:hot")
        n += 1000
    out.put((os.getpid(), v, waited, n / seconds))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m shmemcache", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--name", default=default_name())
    p.add_argument("--seconds", type=float, default=1.0)
    a = p.parse_args(argv)
    cache = shmemcache.Cache(a.name)
    for k in ("demo:computations", "demo:requests"):
        cache.delete(k)
    shmemcache.Memoized(cache, lambda x: None, name="demo.slow_square").clear()
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(a.name, a.seconds, out)) for _ in range(a.workers)]
    t = time.perf_counter()
    for pr in procs:
        pr.start()
    results = [out.get(timeout=120) for _ in procs]
    for pr in procs:
        pr.join()
    print(f"segment {a.name!r}: {a.workers} worker processes, {time.perf_counter() - t:.2f} s")
    for pid, v, waited, rate in sorted(results):
        print(f"  worker {pid}: square(12) = {v} after {waited * 1000:.0f} ms; "
              f"{rate / 1e6:.2f} M gets/s")
    computed = int(cache.get("demo:computations", b"0"))
    print(f"slow_square ran {computed} time(s) for {int(cache.get('demo:requests', b'0'))} requests")
    print(f"total: {sum(r[3] for r in results) / 1e6:.2f} M gets/s across {a.workers} processes")
    print(f"entries now: {len(cache)}; check: {cache.check()}")
    if computed != 1:
        raise SystemExit("single flight failed: the function ran more than once")


if __name__ == "__main__":
    main()
