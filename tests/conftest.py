"""Shared fixtures: a real redis-server of the test run's own, and a way to run the service's real processes.

The Redis server is started on a free port (never the machine's default instance, never its database 0);
each test gets an empty database. Tests that need processes use `ServiceHarness` (tests/harness.py).

`make test` runs the suite on several pytest-xdist workers, one test file at a time per worker (`--dist loadfile`,
so a module's one `oprover up` is started once): each worker is a session of its own, with its own redis-server,
its own tmp dirs and its own slice of ports (tests/harness.py `free_port`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.harness import ServiceHarness, free_port


def pytest_configure(config: pytest.Config) -> None:
    """A pytest started in the background by a shell without job control ignores SIGINT, and every process a test
    starts would inherit that: the `oprover` commands the tests stop with Ctrl-C would never see it."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers, the files whose tests start `oprover up` or several processes (`realtime`, `slow`) go first.

    Files are handed to workers in collection order (`--no-loadscope-reorder`); a long file handed out last would
    run alone while the other workers sit idle. Every worker sorts alike, so their collections stay identical.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return

    def weight(item: pytest.Item) -> int:
        return 2 if item.get_closest_marker("realtime") else 1 if item.get_closest_marker("slow") else 0

    file_weight: dict[Path, int] = {}  # in collection order
    for item in items:
        file_weight[item.path] = max(file_weight.get(item.path, 0), weight(item))
    rank = {path: (-heaviest, position) for position, (path, heaviest) in enumerate(file_weight.items())}
    items.sort(key=lambda item: rank[item.path])  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server for this test session; yields its base URL (no database number)."""
    external = os.environ.get("OPROVER_TEST_REDIS_URL")
    if external:  # a server started for the whole run; its databases 1-15 are handed out as if it were our own
        if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
            pytest.fail("OPROVER_TEST_REDIS_URL is one server: run without -n (the workers would share databases)")
        yield external.rstrip("/")
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make install` (or `apt-get install redis-server`)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="oprover-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--databases",
            "16",
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


_next_db = iter(range(1, 13))


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """An empty database of the session's Redis (never 0; 13-15 belong to module-scoped services)."""
    global _next_db
    try:
        db = next(_next_db)
    except StopIteration:
        _next_db = iter(range(1, 13))
        db = next(_next_db)
    url = f"{redis_server}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url=redis_url)
    yield client
    client.close()


@pytest.fixture
def harness(redis_url: str, tmp_path: Path) -> Iterator[ServiceHarness]:
    service = ServiceHarness(redis_url=redis_url, workdir=tmp_path)
    try:
        yield service
    finally:
        service.close()
