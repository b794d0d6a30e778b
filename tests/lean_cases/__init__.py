"""Helpers for the Lean checker tests: build a checker on the stand-in REPL with a rule table."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.lean import LeanChecker
from services.settings import LeanSettings
from standins.fake_repl import lean_cmd, write_table
from standins.fake_replay import replay_cmd, write_replay_table
from tests.shared_data import shared_path

CASES = Path(__file__).parent
EXPLOITS = CASES / "exploits"
STATEMENT = "theorem target_thm (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by sorry"
GOOD_PROOF = "theorem target_thm (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  positivity\n"
PASS_POSITIVITY = {"match": "positivity", "outcome": "pass"}


def lean_settings(table: Path, **overrides: Any) -> LeanSettings:
    values: dict[str, Any] = {
        "cmd": lean_cmd(table),
        # the stand-in kernel replay, accepting every constant unless a test gives its own `replay_cmd`
        "replay_cmd": replay_cmd(write_replay_table(table.with_name(table.stem + "-replay.json"))),
        "pool_size": 1,
        "spares": 0,
        "timeout_s": 10.0,
        "import_timeout_s": 20.0,
    }
    values.update(overrides)
    return LeanSettings(**values)


@contextlib.contextmanager
def stand_in_checker(
    tmp_path: Path, rules: list[dict[str, Any]], *, table: dict[str, Any] | None = None, **overrides: Any
) -> Iterator[LeanChecker]:
    """A LeanChecker whose REPLs are the stand-in judging by `rules` (started lazily, closed at the end)."""
    options = {"default": "error", **(table or {})}
    path = write_table(tmp_path / f"table-{len(list(tmp_path.glob('table-*')))}.json", rules, **options)
    checker = LeanChecker(lean_settings(path, **overrides))
    try:
        yield checker
    finally:
        checker.close()


def exploit_cases() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, model code, case description) for every tests/lean_cases/exploits/*.lean."""
    out = []
    for lean_file in sorted(EXPLOITS.glob("*.lean")):
        spec = json.loads(lean_file.with_suffix(".json").read_text(encoding="utf-8"))
        out.append((lean_file.stem, lean_file.read_text(encoding="utf-8"), spec))
    return out


def verified_proofs() -> list[dict[str, Any]]:
    path = shared_path("verified_proofs_sample.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def running_as(uid: int | None) -> list[int]:
    """Pids of the live (not zombie) processes whose real uid is `uid`: what a sandbox uid left running."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields["Uid"].split()[0] == str(uid) and not fields["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found
