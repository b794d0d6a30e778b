"""`oprover memory import | stats | export` as an operator runs them (embedded Qdrant in a temp dir)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import SHARED_DATA
from tests.harness import ROOT

SAMPLE = SHARED_DATA / "verified_proofs_sample.jsonl"


def _oprover(*args: str, qdrant: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPROVER_QDRANT_PATH": str(qdrant)}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_import_is_idempotent_and_export_round_trips(tmp_path: Path) -> None:
    qdrant = tmp_path / "qdrant"
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    first = _oprover("memory", "import", str(SAMPLE), qdrant=qdrant)
    assert first.returncode == 0, first.stderr
    assert re.search(rf"added\s+{len(records)}\b", first.stdout)
    again = _oprover("memory", "import", str(SAMPLE), qdrant=qdrant)
    assert again.returncode == 0, again.stderr
    assert re.search(r"added\s+0\b", again.stdout) and re.search(rf"duplicates\s+{len(records)}\b", again.stdout)
    stats = _oprover("memory", "stats", qdrant=qdrant)
    assert stats.returncode == 0, stats.stderr
    assert re.search(rf"points\s+{len(records)}\b", stats.stdout), stats.stdout
    exported = tmp_path / "export.jsonl"
    out = _oprover("memory", "export", str(exported), qdrant=qdrant)
    assert out.returncode == 0, out.stderr
    assert {json.loads(line)["proof"] for line in exported.read_text().splitlines()} == {r["proof"] for r in records}


def test_import_needs_a_path(tmp_path: Path) -> None:
    result = _oprover("memory", "import", qdrant=tmp_path / "qdrant")
    assert result.returncode == 2
    assert "needs a PATH" in result.stderr
