import json
import math
import pickle
import time

import pytest

import shmemcache


def test_dict_protocol(cache):
    cache["a"] = b"raw bytes"
    cache[b"b"] = "text"
    cache["c"] = {"n": [1, 2, 3]}
    assert cache["a"] == b"raw bytes"
    assert cache["b"] == "text"
    assert cache[b"c"] == {"n": [1, 2, 3]}
    assert "a" in cache and b"a" in cache and "zz" not in cache
    assert len(cache) == 3
    assert sorted(cache) == ["a", "b", "c"]
    del cache["a"]
    assert "a" not in cache
    with pytest.raises(KeyError):
        del cache["a"]
    with pytest.raises(KeyError):
        cache["a"]
    assert cache.get("a") is None
    assert cache.get("a", 7) == 7


def test_methods(cache):
    assert cache.set("k", 1) == 0
    assert cache.add("k", 2) is False
    assert cache.add("k2", 2) is True
    assert cache.replace("k", 3) is True
    assert cache.replace("nope", 3) is False
    assert cache["k"] == 3
    assert cache.pop("k") == 3
    assert cache.pop("k", "gone") == "gone"
    with pytest.raises(KeyError):
        cache.pop("k")
    assert cache.take("k2") == 2
    assert cache.take("k2") is None
    assert cache.delete("k2") is False
    assert cache.incr("n") == 1
    assert cache.incr("n", 41) == 42
    assert cache.decr("n", 2) == 40
    assert cache.get("n") == b"40"  # counters are decimal text, readable from Rust
    assert cache.setdefault("sd", [1]) == [1]
    assert cache.setdefault("sd", [2]) == [1]
    cache.update({"u1": 1}, u2=2)
    assert cache.get_many(["u1", "u2", "u3"]) == {"u1": 1, "u2": 2}
    assert sorted(cache.keys(prefix="u")) == ["u1", "u2"]
    assert dict(cache.items("u")) == {"u1": 1, "u2": 2}
    assert cache.clear() == 4  # n, sd, u1, u2
    assert len(cache) == 0


def test_ttl(cache):
    cache.set("t", "v", ttl=0.2)
    assert 0 < cache.ttl("t") <= 0.2
    cache.set("forever", "v")
    assert cache.ttl("forever") == math.inf
    assert cache.ttl("missing") is None
    assert cache.expire("forever", 30)
    assert 29 < cache.ttl("forever") <= 30
    assert cache.expire("forever", None)
    assert cache.ttl("forever") == math.inf
    assert not cache.expire("missing", 1)
    time.sleep(0.25)
    assert "t" not in cache and cache.get("t", "d") == "d"
    # A set without a TTL drops an older deadline.
    import datetime

    cache.set("d", 1, ttl=datetime.timedelta(seconds=5))
    cache.set("d", 2)
    assert cache.ttl("d") == math.inf


def test_default_ttl(name):
    c = shmemcache.Cache(name, ttl=30)
    c["x"] = 1
    assert 29 < c.ttl("x") <= 30
    assert c.info()["default_ttl"] == 30


def test_codecs(name):
    c = shmemcache.Cache(name)
    # bytes that look like a tag are escaped, and come back as they were
    tricky = shmemcache.codecs.MAGIC + b"P" + b"not a pickle"
    c["tricky"] = tricky
    assert c["tricky"] == tricky
    c["empty"] = b""
    assert c["empty"] == b""
    c["ba"] = bytearray(b"xy")
    assert c["ba"] == b"xy"
    j = shmemcache.Cache(name, codec="json")
    j["doc"] = {"a": [1, 2]}
    assert j["doc"] == {"a": [1, 2]}
    assert c["doc"] == {"a": [1, 2]}  # the tag says how to decode
    with pytest.raises(shmemcache.CodecError):
        j["set"] = {1, 2}

    class Upper:
        @staticmethod
        def dumps(v):
            return repr(v).encode()

        @staticmethod
        def loads(b):
            return "decoded:" + b.decode()

    u = shmemcache.Cache(name, codec=Upper)
    u["obj"] = 5
    assert u["obj"] == "decoded:5"
    with pytest.raises(shmemcache.CodecError, match="custom codec"):
        c["obj"]
    with pytest.raises(TypeError):
        shmemcache.Cache(name, codec="yaml")


def test_bytes_are_stored_raw_for_other_languages(cache):
    cache["raw"] = b"hello"
    cache["n"] = 5
    raw = cache._n.get("raw")
    assert raw == b"hello"
    assert cache._n.get("n").startswith(shmemcache.codecs.MAGIC + b"P")
    assert pickle.loads(cache._n.get("n")[5:]) == 5


def test_large_values_roundtrip(cache):
    big = bytes(range(256)) * 1000  # past the stack buffer
    cache["big"] = big
    assert cache["big"] == big
    obj = {"k": list(range(10000))}
    cache["obj"] = obj
    assert cache["obj"] == obj


def test_stats_check_info(cache):
    cache["a"] = 1
    cache.get("a")
    cache.get("b")
    s = cache.stats()
    assert s["hits"] >= 1 and s["misses"] >= 1 and s["entries"] == 1
    assert 0 < s["hit_ratio"] < 1
    assert cache.check() == {"healthy": True, "problems": []}
    info = cache.info()
    assert info["name"] == cache.name and info["shards"] >= 1


def test_joiner_adopts_geometry(name):
    a = shmemcache.Cache(name, max_entries=1000, shards=4)
    b = shmemcache.Cache(name, max_entries=5, shards=1)
    assert a.created and not b.created
    assert b.info()["shards"] == 4 and b.info()["max_entries"] == a.info()["max_entries"]


def test_namespaces(cache):
    users = cache.namespace("users")
    users["1"] = "ada"
    cache["1"] = "default"
    assert users["1"] == "ada" and cache["1"] == "default"
    assert users.clear() == 1
    assert "1" not in users and cache["1"] == "default"


def test_pickle_reopens_by_name(cache):
    cache["k"] = [1]
    copy = pickle.loads(pickle.dumps(cache))
    assert copy["k"] == [1]
    copy["k2"] = 2
    assert cache["k2"] == 2
    ns = pickle.loads(pickle.dumps(cache.namespace("n")))
    ns["x"] = 1
    assert cache.namespace("n")["x"] == 1 and "x" not in cache


def test_context_manager_closes(name):
    with shmemcache.Cache(name) as c:
        c["k"] = 1
    assert c.closed
    with pytest.raises(shmemcache.Closed):
        c["k"]
    # closing detached only this handle: nothing was cleared
    assert shmemcache.Cache(name)["k"] == 1


def test_json_string_roundtrip_is_exact(name):
    c = shmemcache.Cache(name, codec=json)
    c["x"] = [1, "a", None]
    assert c["x"] == [1, "a", None]
