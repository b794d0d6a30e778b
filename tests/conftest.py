"""Shared fixtures: a real redis-server of the test run's own, and a way to run the service's real processes.

The Redis server is started on a free port (never the machine's default instance, never its database 0);
each test gets an empty database. Tests that need processes use `ServiceHarness` (tests/harness.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.harness import ServiceHarness


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server for this test session; yields its base URL (no database number)."""
    external = os.environ.get("OPROVER_TEST_REDIS_URL")
    if external:  # .ci/run may start one for the whole run
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
