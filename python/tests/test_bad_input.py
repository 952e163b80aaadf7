"""Bad input gives a clear exception, never a crash."""

import threading

import pytest

import shmemcache


def test_unpicklable_value(cache):
    cache["k"] = "old"
    lock = threading.Lock()
    with pytest.raises(shmemcache.CodecError, match="cannot encode a value of type lock"):
        cache["k"] = lock
    assert cache["k"] == "old"  # a failed set leaves the old value
    with pytest.raises(shmemcache.CodecError):
        cache.set("k", lambda: 1)


def test_oversized_value_and_key(cache):
    cache["k"] = "old"
    limit = cache.info()["max_value_len"]
    with pytest.raises(shmemcache.ValueTooLarge, match=f"exceeds the limit of {limit} bytes"):
        cache["k"] = b"x" * (limit + 1)
    assert cache["k"] == "old"
    assert isinstance(shmemcache.ValueTooLarge("x"), ValueError)
    with pytest.raises(shmemcache.KeyTooLarge):
        cache["k" * 100_000] = 1
    with pytest.raises(shmemcache.TooLarge):
        cache.get("k" * 100_000) if False else cache.set("k" * 100_000, 1)


@pytest.mark.parametrize("key", [1, 1.5, None, ("t",), ["l"], object()])
def test_wrong_key_type(cache, key):
    with pytest.raises(TypeError, match="cache keys must be str or bytes"):
        cache[key] = 1
    with pytest.raises(TypeError):
        cache.get(key)
    with pytest.raises(TypeError):
        key in cache
    with pytest.raises(TypeError):
        cache.delete(key)


def test_closed_handle(name):
    c = shmemcache.Cache(name)
    c.close()
    for op in (lambda: c.get("k"), lambda: c.set("k", 1), lambda: len(c),
               lambda: c.lock("l").acquire(), lambda: c.stats(), lambda: c.keys()):
        with pytest.raises(shmemcache.Closed, match="closed"):
            op()
    c.close()  # twice is fine


def test_missing_segment():
    with pytest.raises(shmemcache.NotFound, match="does not exist") as e:
        shmemcache.Cache("pytest-no-such-segment", create=False)
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(shmemcache.NotFound):
        shmemcache.Cache.open_existing("pytest-no-such-segment")


@pytest.mark.parametrize("bad", ["", "a/b", "../etc", "x" * 300, "sp ace"])
def test_bad_segment_name(bad):
    with pytest.raises(shmemcache.InvalidName):
        shmemcache.Cache(bad)


def test_bad_arguments(cache):
    with pytest.raises(shmemcache.ZeroTtl):
        cache.set("k", 1, ttl=0)
    with pytest.raises(ValueError):
        cache.set("k", 1, ttl=-1)
    with pytest.raises(ValueError):
        cache.set("k", 1, ttl=float("nan"))
    with pytest.raises(TypeError):
        cache.set("k", 1, ttl="soon")
    with pytest.raises(TypeError):
        shmemcache.Cache(123)
    with pytest.raises(TypeError):
        cache.incr("k", 1.5)
    cache["text"] = b"abc"
    with pytest.raises(shmemcache.NotAnInteger):
        cache.incr("text")
    cache["big"] = str(2**63 - 1).encode()
    with pytest.raises(shmemcache.Overflow):
        cache.incr("big")
    with pytest.raises(shmemcache.InvalidArgument):
        cache.pool("p", 0)
    with pytest.raises(shmemcache.InvalidArgument):
        cache.lock("").acquire()


def test_exclusive_create(name):
    shmemcache.Cache(name)
    with pytest.raises(shmemcache.AlreadyExists):
        shmemcache.Cache(name, create=True)
    with pytest.raises(shmemcache.AlreadyExists):
        shmemcache.Cache.create_new(name)


def test_undecodable_stored_value(cache):
    cache._n.set("bad", shmemcache.codecs.MAGIC + b"P" + b"\x00garbage")
    with pytest.raises(shmemcache.CodecError, match="cannot decode"):
        cache["bad"]
    cache._n.set("bad", shmemcache.codecs.MAGIC + b"?")
    with pytest.raises(shmemcache.CodecError, match="unknown value tag"):
        cache["bad"]


def test_every_error_is_a_shmemcache_error():
    for n in shmemcache.errors.__all__:
        assert issubclass(getattr(shmemcache, n), shmemcache.Error)
