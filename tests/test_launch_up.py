"""`oprover up` with no OPROVER_GENERATOR_URL starts the model server itself, proves a theorem through it, and
stops it on Ctrl-C.

The model server is the stand-in generator given as OPROVER_SGLANG_CMD (what a box without the `gpu` extra
would run SGLang as), answering in seconds like a real generation; Lean is the stand-in REPL. Apart from the
parts pointed at (Redis, Lean, the launch command and its port), `up` runs on the shipped default settings.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from standins.fake_repl import lean_cmd, write_table
from standins.fake_replay import replay_cmd, write_replay_table
from tests.conftest import free_port
from tests.harness import ROOT

pytestmark = pytest.mark.slow

STATEMENT = "theorem demo_add_comm (a b : ℕ) : a + b = b + a := by sorry"
GOOD = "theorem demo_add_comm (a b : ℕ) : a + b = b + a := by\n  exact Nat.add_comm a b"


def _listeners(port: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in process.net_connections()):
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return found


def _three_free_ports() -> int:
    """A port whose next two are free as well: `up` puts its workers' /metrics there."""
    while True:
        port = free_port()
        try:
            for offset in (1, 2):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue


def test_up_launches_the_model_server_proves_and_stops_it(redis_url, tmp_path):
    model_port, port = free_port(), _three_free_ports()
    table = write_table(
        tmp_path / "repl-table.json",
        [{"match": "Nat.add_comm", "outcome": "pass", "check_s": 0.5}],
        default="error",
        import_s=2.0,
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPROVER_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),  # the stand-in lives in tests/, and `up` runs in its own directory
            "OPROVER_REDIS_URL": redis_url,
            "OPROVER_LEAN_CMD": lean_cmd(table),
            # the stand-in kernel replay, which alone decides a pass (accepting every constant)
            "OPROVER_LEAN_REPLAY_CMD": replay_cmd(write_replay_table(tmp_path / "replay-table.json")),
            "OPROVER_LEAN_CWD": str(tmp_path),
            "OPROVER_QDRANT_PATH": str(tmp_path / "qdrant"),
            "OPROVER_SGLANG_CMD": f"{sys.executable} -m standins.openai_server --port {{port}}",
            "OPROVER_SGLANG_PORT": str(model_port),
        }
    )
    with open(tmp_path / "up.log", "wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "up", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    model: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-4000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "up.log").read_text()[-4000:])
        # every process of `up` serves /metrics: the gateway on its port, the workers on the next two
        assert "oprover_queue_jobs" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "oprover_generations_total" in httpx.get(f"http://127.0.0.1:{port + 1}/metrics", timeout=5).text
        assert "oprover_lean_pool_size" in httpx.get(f"http://127.0.0.1:{port + 2}/metrics", timeout=5).text
        model = _listeners(model_port)
        assert len(model) == 1 and "standins.openai_server" in " ".join(model[0].cmdline())
        admin = httpx.Client(base_url=f"http://127.0.0.1:{model_port}", timeout=10)
        admin.post(
            "/_admin/script", json={"rules": [], "default": {"content": f"```lean4\n{GOOD}\n```", "delay_s": 3.0}}
        ).raise_for_status()
        started = time.monotonic()
        job = httpx.post(
            f"http://127.0.0.1:{port}/v1/prove?wait=60", json={"formal_statement": STATEMENT}, timeout=90
        ).json()
        assert job["status"] == "proved", job
        assert time.monotonic() - started >= 3.0  # the generation took the stand-in's seconds
        assert job["attempts"][0]["model"].startswith("standin-")
        assert len(admin.get("/_admin/requests").json()["requests"]) == 1
        admin.close()
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        code = up.wait(timeout=60)
    log = (tmp_path / "up.log").read_text()
    assert code == 0, log[-4000:]
    assert model and (not model[0].is_running() or model[0].status() == psutil.STATUS_ZOMBIE), log[-2000:]
    assert _listeners(model_port) == []
    assert "stopped the model server" in log


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"OPROVER_GENERATOR_URL": "http://127.0.0.1:9/v1"}, "run `oprover lean setup data/lean`"),
        ({"OPROVER_LEAN_CMD": "lake env repl"}, "pip install -e .[gpu]"),
    ],
)
def test_up_says_in_one_line_what_is_missing(tmp_path, settings, says):
    """No Lean project / no model server and no SGLang: one line naming the command to run, before anything starts."""
    if "OPROVER_GENERATOR_URL" not in settings and importlib.util.find_spec("sglang") is not None:
        pytest.skip("sglang is installed here: up would start it rather than say it is missing")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPROVER_")}
    env.update({"PYTHONPATH": str(ROOT), "OPROVER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", **settings})
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "up", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("oprover up: ") and says in last, result.stderr
    assert not (tmp_path / "data" / "redis").exists()  # nothing was started
