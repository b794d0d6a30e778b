"""`oprover memory import | stats | export` as an operator runs them (embedded Qdrant in a temp dir)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from standins.fake_repl import lean_cmd, write_table
from standins.openai_server import StandinServer
from tests.harness import ROOT, OproverUp
from tests.shared_data import shared_path

SAMPLE = shared_path("verified_proofs_sample.jsonl")


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


def test_memory_import_while_oprover_up_runs(redis_url: str, tmp_path: Path) -> None:
    """A user grows the memory without stopping the service: `oprover memory import` hands the proofs to the
    generate worker that owns the embedded store, which serves them in the next job's prompt at once.
    `oprover up` runs with the shipped defaults; the stand-in generator answers at a real model's pace."""
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    proved = next(r for r in records if r["name"] == "mathd_algebra_43")
    with StandinServer() as generator:
        generator.script([], default={"content": "[standin] no proof", "delay_s": 3.0})
        table = write_table(tmp_path / "repl-table.json", [], default="error", import_s=2.0, check_s=1.0)
        up = OproverUp(redis_url=redis_url, workdir=tmp_path, generator_url=generator.url, lean_cmd=lean_cmd(table))
        try:
            up.start()
            env = {**up.env}
            imported = subprocess.run(
                [sys.executable, "-m", "api.cli", "memory", "import", str(SAMPLE), "--wait", "120"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert imported.returncode == 0, imported.stdout + imported.stderr
            assert "open in a running process: staging the import and handing it over" in imported.stdout
            assert re.search(rf"taken in by the running owner: {len(records)} new, 0 already stored", imported.stdout)
            # anything else than an import names the owner and what to do
            stats = subprocess.run(
                [sys.executable, "-m", "api.cli", "memory", "stats"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert stats.returncode != 0 and "open in another process" in stats.stderr
            # The next job's first prompt shows the imported proof of the same kind of problem.
            statement = proved["formal_statement"].replace("mathd_algebra_43", "asked").replace("f 3 = 0", "f 3 = 1")
            with up.client() as client:
                job = client.post("/v1/prove", json={"formal_statement": statement, "rounds": 1}).json()
                deadline = time.monotonic() + 120
                while not generator.requests() and time.monotonic() < deadline:
                    time.sleep(0.5)
                client.delete(f"/v1/prove/{job['id']}")
            prompt = json.dumps(generator.requests()[0]["body"], ensure_ascii=False)
            assert "theorem mathd_algebra_43" in prompt  # only the imported proof carries this name
        finally:
            up.stop()
    reopened = _oprover("memory", "stats", qdrant=tmp_path / "qdrant")
    assert reopened.returncode == 0, reopened.stderr
    assert re.search(rf"points\s+{len(records)}\b", reopened.stdout)
    assert re.search(r"screened out\s+[1-9]", reopened.stdout), reopened.stdout
