"""The sandbox: a stand-in REPL that tries the network and a write outside its temp dir is blocked.

The probe connects to a TCP server this test runs on the host's loopback, and writes into a directory the worker
owns. Without the sandbox both succeed (the control), with it neither does, while its private temp dir stays
writable. Needs root (to drop to `nobody`) or unprivileged user namespaces; skipped where neither exists.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading

import pytest

from services.domain import Verdict
from services.lean.process import child_environment
from tests.lean_cases import STATEMENT, stand_in_checker


def _netns_available() -> bool:
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not _netns_available(), reason="needs root with network namespaces"
)


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[bool] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(True)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()


def probe(tmp_path, port: int, **settings) -> dict[str, str]:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755, exist_ok=True)
    rules = [{"match": "PROBE", "outcome": "probe", "connect": f"127.0.0.1:{port}", "write": str(outside / "x")}]
    with stand_in_checker(tmp_path, rules, **settings) as checker:
        code = "theorem target_thm (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  PROBE\n"
        result = checker.check(code, formal_statement=STATEMENT)
    assert result.verdict is not Verdict.PASS or result.messages  # the probe reports through an info message
    info = next(m for m in result.messages if m.severity == "info")
    return json.loads(info.data)


def test_without_the_sandbox_the_probe_reaches_network_and_disk(tmp_path, listener) -> None:
    port, accepted = listener
    seen = probe(tmp_path, port, sandbox=False)
    assert seen["network"] == "allowed" and accepted
    assert seen["write"] == "allowed" and seen["uid"] == "0"


def test_sandbox_blocks_network_and_writes_outside_the_temp_dir(tmp_path, listener) -> None:
    port, accepted = listener
    seen = probe(tmp_path, port)
    assert seen["network"].startswith("blocked") and not accepted
    assert seen["write"].startswith("blocked") and "Permission denied" in seen["write"]
    assert seen["tmpdir"].startswith("writable: /tmp/oprover-repl-")
    assert seen["uid"] == "65534"
    assert not (tmp_path / "outside" / "x").exists()


def test_secrets_are_not_passed_to_the_repl() -> None:
    env = child_environment({"PATH": "/bin", "OPROVER_REDIS_URL": "redis://:pw@h", "HF_TOKEN": "t", "LANG": "C"})
    assert env == {"PATH": "/bin", "LANG": "C"}
