"""`oprover up` as a user runs it: its own redis-server, the gateway and both workers, with the stand-ins.

- When the Redis that `up` started dies, `up` starts it again on the same port and data directory, and the
  gateway and workers reconnect: the service answers again without anyone touching it.
- Ctrl-C stops everything cleanly: exit 0, and no traceback from any process or thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from standins.fake_repl import lean_cmd, write_table
from standins.fake_replay import replay_cmd, write_replay_table
from standins.openai_server import StandinServer
from tests.conftest import free_port
from tests.harness import stop_up

pytestmark = pytest.mark.slow

STATEMENT = "theorem t (x : ℕ) (h : x = 1) : x + 1 = 2 := by"


class Up:
    def __init__(self, workdir: Path, generator_url: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nobody serves it: `up` starts a redis-server
        table = write_table(workdir / "repl-table.json", [{"match": "PASS_ME", "outcome": "pass"}], default="error")
        env = {key: value for key, value in os.environ.items() if not key.startswith("OPROVER_")}
        env.update(
            OPROVER_REDIS_URL=self.redis_url,
            OPROVER_GENERATOR_URL=generator_url,
            OPROVER_LEAN_CMD=lean_cmd(table),
            OPROVER_LEAN_REPLAY_CMD=replay_cmd(write_replay_table(workdir / "replay-table.json")),
            OPROVER_QDRANT_PATH=str(workdir / "qdrant"),
            # Lighter than the defaults: this test is about Redis and signals, not throughput.
            OPROVER_GENERATOR_CONCURRENCY="4",
            OPROVER_LEAN_POOL_SIZE="1",
        )
        self.log_path = workdir / "up.log"
        with open(self.log_path, "wb") as log:  # the children keep their own copies of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "up", "--port", str(self.port)],
                cwd=workdir,  # `up` keeps its Redis data in ./data/redis
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            assert code is None, f"oprover up exited with {code}:\n{self.log()[-4000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            time.sleep(0.5)
        raise AssertionError(f"oprover up not ready after {timeout_s} s:\n{self.log()[-4000:]}")

    def verify(self) -> dict:
        response = httpx.post(f"{self.url}/v1/verify", json={"code": STATEMENT + "\n  PASS_ME\n"}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def ctrl_c(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)

    def close(self) -> None:
        """Whatever happened, leave nothing running."""
        stop_up(self.process)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    generator = StandinServer()
    service = None
    try:
        service = Up(tmp_path, generator.url)
        yield service
    finally:
        if service is not None:
            service.close()
        generator.close()


def test_up_restarts_its_redis_when_it_dies_and_the_service_answers_again(up: Up) -> None:
    assert up.verify()["verdict"] == "pass"
    client = redis.Redis.from_url(up.redis_url)
    client.set("written-before-the-crash", "kept")
    time.sleep(1.5)  # AOF is flushed every second
    first_pid = client.info("server")["process_id"]
    os.kill(first_pid, signal.SIGKILL)

    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(redis.RedisError):
            if client.info("server")["process_id"] != first_pid:
                break
        assert time.monotonic() < deadline, f"Redis was not restarted:\n{up.log()[-4000:]}"
        time.sleep(0.2)
    assert up.process.poll() is None, up.log()[-4000:]
    assert client.get("written-before-the-crash") == b"kept"  # same port, same data directory
    assert "redis-server exited with code" in up.log() and "restarting it on the same port" in up.log()

    up.wait_ready()  # the gateway and both workers reconnected
    assert up.verify()["verdict"] == "pass"  # and a check goes through the new Redis to the verify worker
    client.close()
    assert up.ctrl_c() == 0


def test_ctrl_c_of_up_stops_everything_without_a_traceback(up: Up) -> None:
    assert up.verify()["verdict"] == "pass"
    assert up.ctrl_c() == 0
    log = up.log()
    assert "Traceback" not in log, log[-6000:]
    assert "Bad file descriptor" not in log
