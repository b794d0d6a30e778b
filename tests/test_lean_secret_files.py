"""A verify worker warns at start about a secret file submitted code could read.

Each REPL runs under a uid of its own, so the worker's files are out of a REPL's reach only through their mode: a
`.env` (where the settings may hold the Redis password and API keys) left at the default 0644 is readable by every
REPL. The pool says so when it is built; it does not refuse, since such a file may hold nothing secret.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from services.lean.pool import ReplPool
from services.lean.sandbox import can_switch_uids
from standins.fake_repl import write_table
from tests.lean_cases import lean_settings

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not can_switch_uids(),
    reason="the warning is for a worker whose REPLs get uids of their own: needs root with CAP_SETUID/CAP_SETGID",
)


def _pool_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    table = write_table(tmp_path / "table.json", [], default="error")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="oprover"):
        pool = ReplPool(lean_settings(table))
        pool.close()
    return [record.getMessage() for record in caplog.records if "readable by other users" in record.getMessage()]


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o604, True), (0o600, False)])
def test_an_env_file_others_can_read_is_named_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    env = tmp_path / ".env"
    env.write_text("OPROVER_REDIS_URL=redis://:secret@127.0.0.1:6379/0\n")
    env.chmod(mode)
    warnings = _pool_warnings(tmp_path, caplog)
    if warned:
        assert len(warnings) == 1 and str(env) in warnings[0] and "chmod 600 .env" in warnings[0]
    else:
        assert warnings == []


def test_no_env_file_no_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    assert _pool_warnings(tmp_path, caplog) == []
