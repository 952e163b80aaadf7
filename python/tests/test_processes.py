"""Handles across fork, multiprocessing (fork and spawn) and fork_safe."""

import functools
import multiprocessing as mp
import os

import pytest

import shmemcache
import workers


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_share_entries(name, method):
    cache = shmemcache.Cache(name)
    cache["from-parent"] = {"set": "before the pool"}
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        got = pool.starmap(workers.store_and_read, [(cache, f"k{i}", [i]) for i in range(20)])
        seen = pool.starmap(workers.read, [(cache, "from-parent")] * 4)
    assert got == [[i] for i in range(20)]
    assert seen == [{"set": "before the pool"}] * 4
    assert [cache[f"k{i}"] for i in range(20)] == [[i] for i in range(20)]


def test_handle_after_os_fork(cache):
    cache["p"] = 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = cache["p"] == 1
            cache["c"] = os.getpid()
            with cache.lock("l", wait=5):
                pass
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert cache["c"] == pid


def test_inherited_lock_does_nothing_in_child(cache):
    lk = cache.lock("inh")
    lk.acquire()
    pid = os.fork()
    if pid == 0:
        try:
            lk.release()  # inherited: not the child's to release
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert lk.locked()
    lk.release()


def test_fork_safe_clears_in_child():
    @shmemcache.fork_safe
    @functools.lru_cache
    def my_pid():
        return os.getpid()

    class Store(dict):
        pass

    store = shmemcache.fork_safe(Store(a=1))
    assert my_pid() == os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = my_pid() == os.getpid() and len(store) == 0
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert my_pid() == os.getpid() and store == {"a": 1}
    with pytest.raises(TypeError):
        shmemcache.fork_safe(object())
