import os
import uuid

import pytest

import shmemcache


@pytest.fixture
def name():
    """A fresh segment name, unlinked after the test."""
    n = f"pytest-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield n
    try:
        shmemcache.Cache.unlink(n)
    except shmemcache.NotFound:
        pass


@pytest.fixture
def cache(name):
    c = shmemcache.Cache(name)
    yield c
    c.close()
