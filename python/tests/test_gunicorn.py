"""A real gunicorn with 4 prefork workers sharing one cache."""

import concurrent.futures as cf
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

import shmemcache

pytest.importorskip("gunicorn")

APP = textwrap.dedent(
    """
    import os, time
    import shmemcache

    cache = shmemcache.Cache(os.environ["SHMEMCACHE_SEGMENT"])

    @cache.memoize(name="app.report")
    def report(day):
        runs = cache.incr("runs")
        cache.set("owner", os.getpid())
        time.sleep(float(os.environ.get("FIRST_RUN_SECS", "1")) if runs == 1 else 0.2)
        return f"report {day} by {os.getpid()}"

    def app(environ, start_response):
        body = report(environ.get("PATH_INFO", "/").strip("/")).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    """
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gunicorn(name, tmp_path):
    (tmp_path / "memoapp.py").write_text(APP)
    procs = []

    def start(*extra, first_run_secs=1.0):
        port = free_port()
        env = dict(os.environ, SHMEMCACHE_SEGMENT=name, FIRST_RUN_SECS=str(first_run_secs))
        p = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "4", "-b", f"127.0.0.1:{port}",
             "--chdir", str(tmp_path), "--timeout", "60", *extra, "memoapp:app"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "gunicorn.log", "w"),
        )
        procs.append(p)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert p.poll() is None, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.1)
        time.sleep(0.5)  # let every worker boot
        return port

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def fetch(port, path, retries=0):
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
                return r.read().decode(), attempt
        except (urllib.error.URLError, ConnectionError, OSError):
            if attempt == retries:
                raise
            time.sleep(0.1)


def test_fifty_concurrent_requests_run_the_body_once(gunicorn, name):
    port = gunicorn()
    with cf.ThreadPoolExecutor(50) as ex:
        answers = [a for a, _ in ex.map(lambda _: fetch(port, "/monday"), range(50))]
    cache = shmemcache.Cache(name)
    assert cache.get("runs") == b"1", "the memoized body ran more than once"
    assert len(set(answers)) == 1 and answers[0].startswith("report monday by ")


def test_killed_computing_worker_is_taken_over(gunicorn, name):
    port = gunicorn("--preload", first_run_secs=30)
    cache = shmemcache.Cache(name)
    with cf.ThreadPoolExecutor(12) as ex:
        futs = [ex.submit(fetch, port, "/tuesday", 3) for _ in range(12)]
        deadline = time.time() + 20
        while cache.get("owner") is None and time.time() < deadline:
            time.sleep(0.02)
        owner = cache.get("owner")
        assert owner is not None, "no worker started computing"
        time.sleep(0.3)  # the other workers are now waiting on the owner
        t = time.monotonic()
        os.kill(owner, signal.SIGKILL)
        results = [f.result(timeout=60) for f in futs]
        took = time.monotonic() - t
    answers = {a for a, _ in results}
    retried = sum(1 for _, n in results if n)
    print(f"takeover: every request answered {took:.2f} s after the kill; {retried} retried "
          "(their connection was to the killed worker)")
    assert cache.get("runs") == b"2"  # the killed run and the takeover
    assert len(answers) == 1
    assert answers.pop() != f"report tuesday by {owner}"
    assert took < 10
