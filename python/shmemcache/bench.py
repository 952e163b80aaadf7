"""``python -m shmemcache.bench``: shmemcache from Python against what Python programs
use today to share a cache between processes, measured in one run.

Gets and a 90/10 get/set mix from 1 and 2 processes, over 1,000 keys holding 100-byte
``bytes`` values or small pickled dicts, for: shmemcache, ``multiprocessing.Manager().dict()``,
diskcache, redis-py over a Unix socket (a ``redis-server`` this script starts) and
py-lmdb. The last three run where they are installed (``pip install diskcache redis
lmdb``; ``redis-server`` on the PATH). It also times a ``memoize`` hit against a plain
get of the same value. Options: ``--seconds S`` per cell, ``--procs 1,2``,
``--only shmemcache,manager,...``, ``--json``.
"""

import argparse
import json
import multiprocessing as mp
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time

import shmemcache

KEYS = 1000
VALUE = b"v" * 100
DICT = {"id": 12345, "name": "widget", "tags": ["a", "b"], "price": 9.99}


class Shm:
    name = "shmemcache"

    def __init__(self, ctx):
        self.segment = f"bench-py-{os.getpid()}"
        shmemcache.Cache(self.segment)

    def client(self):
        c = shmemcache.Cache(self.segment)
        return c.get, c.set

    def close(self):
        shmemcache.Cache.unlink(self.segment)


class Manager:
    name = "Manager().dict()"

    def __init__(self, ctx):
        self.m = ctx.Manager()
        self.d = self.m.dict()

    def client(self):
        d = self.d
        return d.get, d.__setitem__

    def close(self):
        self.m.shutdown()


class Disk:
    name = "diskcache"

    def __init__(self, ctx):
        import diskcache  # noqa: F401

        self.dir = tempfile.mkdtemp(prefix="bench-diskcache-")

    def client(self):
        import diskcache

        c = diskcache.Cache(self.dir)
        return c.get, c.set

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    name = "redis-py (unix socket)"

    def __init__(self, ctx):
        import redis  # noqa: F401

        exe = shutil.which("redis-server")
        if exe is None:
            raise ImportError("redis-server is not on the PATH")
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.sock = os.path.join(self.dir, "redis.sock")
        self.proc = subprocess.Popen(
            [exe, "--port", "0", "--unixsocket", self.sock, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            if os.path.exists(self.sock):
                break
            time.sleep(0.05)

    def client(self):
        import redis

        r = redis.Redis(unix_socket_path=self.sock)
        return r.get, r.set

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Lmdb:
    name = "py-lmdb"

    def __init__(self, ctx):
        import lmdb  # noqa: F401

        self.dir = tempfile.mkdtemp(prefix="bench-lmdb-")

    def client(self):
        import lmdb

        env = lmdb.open(self.dir, map_size=1 << 28, lock=True)

        def get(k):
            with env.begin() as t:
                return t.get(k)

        def put(k, v):
            with env.begin(write=True) as t:
                t.put(k, v)

        return get, put

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


BACKENDS = {"shmemcache": Shm, "manager": Manager, "diskcache": Disk, "redis": Redis, "lmdb": Lmdb}


def worker(backend, kind, mix, seconds, start_at, out):
    get, put = backend.client()
    keys = [f"key:{i}".encode() for i in range(KEYS)]
    rnd = random.Random(os.getpid())
    order = [rnd.randrange(KEYS) for _ in range(4096)]
    writes = [rnd.random() < 0.1 for _ in range(4096)] if mix == "90/10" else [False] * 4096
    native = backend.name == "shmemcache"
    value = VALUE if kind == "bytes" else DICT
    stored = value if (native or kind == "bytes") else pickle.dumps(value, 5)
    loads = (lambda b: b) if (native or kind == "bytes") else pickle.loads
    time.sleep(max(0.0, start_at - time.time()))
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for j in range(256):
            i = (n + j) & 4095
            k = keys[order[i]]
            if writes[i]:
                put(k, stored)
            else:
                loads(get(k))
        n += 256
    out.put(n / seconds)


def preload(backend, kind):
    get, put = backend.client()
    stored = VALUE if kind == "bytes" else (DICT if backend.name == "shmemcache" else pickle.dumps(DICT, 5))
    for i in range(KEYS):
        put(f"key:{i}".encode(), stored)


def measure(backend, kind, mix, procs, seconds, ctx):
    # In a child: some clients (py-lmdb) must not be opened before a fork.
    p = ctx.Process(target=preload, args=(backend, kind))
    p.start()
    p.join()
    out = ctx.Queue()
    start_at = time.time() + 0.3
    ps = [ctx.Process(target=worker, args=(backend, kind, mix, seconds, start_at, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    total = sum(out.get(timeout=seconds * 10 + 60) for _ in ps)
    for p in ps:
        p.join()
    return total


def memo_vs_get(seconds):
    """One process: a memoize hit against a plain get of the same 100-byte value."""
    seg = f"bench-py-memo-{os.getpid()}"
    c = shmemcache.Cache(seg)
    try:

        @c.memoize
        def f(i):
            return VALUE

        for i in range(KEYS):
            f(i)
            c.set(f"key:{i}", VALUE)
        keys = [f"key:{i}" for i in range(KEYS)]

        def rate(fn, args):
            n = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                for a in args:
                    fn(a)
                n += len(args)
            return n / seconds

        get = c.get
        g = rate(get, keys)
        m = rate(f, list(range(KEYS)))
        return g, m
    finally:
        shmemcache.Cache.unlink(seg)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m shmemcache.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--procs", default="1,2")
    p.add_argument("--only", default=",".join(BACKENDS))
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    a = p.parse_args(argv)
    ctx = mp.get_context("fork")
    procs = [int(x) for x in a.procs.split(",")]
    rows = []
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {KEYS} keys, "
          f"{a.seconds:g} s per cell (ops/s summed over processes)")
    for key in a.only.split(","):
        try:
            b = BACKENDS[key](ctx)
        except ImportError as e:
            print(f"  {key}: not installed ({e}); skipped")
            continue
        try:
            for kind in ("bytes", "dict"):
                for mix in ("get", "90/10"):
                    for n in procs:
                        r = measure(b, kind, mix, n, a.seconds, ctx)
                        rows.append({"backend": b.name, "value": kind, "mix": mix, "procs": n, "ops": r})
                        print(f"  {b.name:24} {kind:5} {mix:5} {n} proc: {r:12,.0f} ops/s", flush=True)
        finally:
            b.close()
    base = {(r["value"], r["mix"], r["procs"]): r["ops"] for r in rows if r["backend"] == "shmemcache"}
    print("\nshmemcache / other, same run:")
    others = sorted({r["backend"] for r in rows} - {"shmemcache"})
    print(f"  {'value mix procs':22}" + "".join(f"{o:>26}" for o in others))
    for (kind, mix, n), ops in base.items():
        cells = []
        for o in others:
            r = next((x["ops"] for x in rows if x["backend"] == o and (x["value"], x["mix"], x["procs"]) == (kind, mix, n)), None)
            cells.append(f"{ops / r:>25,.0f}x" if r else f"{'-':>26}")
        print(f"  {kind:5} {mix:5} {n} proc {ops/1e6:5.2f}M" + "".join(cells))
    g, m = memo_vs_get(a.seconds)
    print(f"\n1 process, 100 B: plain get {g:,.0f}/s ({1e9 / g:.0f} ns), memoize hit {m:,.0f}/s "
          f"({1e9 / m:.0f} ns): a hit costs {g / m:.2f}x a get")
    if a.json:
        print(json.dumps({"rows": rows, "get": g, "memo_hit": m}))


if __name__ == "__main__":
    main()
