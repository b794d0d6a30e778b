"""Where tests find real data, and what they do when it is absent.

Two kinds of real data:
- `tests/golden/`: small copies a clone needs (a few MiniF2F problems in `minif2f_problems.jsonl`, two published
  proofs in `verified_proofs.jsonl`, copied from `../shared/data`), so the end-to-end tests run anywhere.
- `../shared/data` beside the repository: the whole MiniF2F valid split, the 338 published proofs and the REPL
  transcripts. Tests that need all of it call `shared_path`, which skips them, naming the file, when the folder
  is absent (README, "Development").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_path(relative: str) -> Path:
    """`../shared/data/<relative>`; skips the calling test, or the whole module when called at import, if absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(
            f"../shared/data is absent: {relative} is real data not copied into tests/golden/ ({SHARED_DATA})",
            allow_module_level=True,
        )
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def golden_record(file: str, name: str, **where: object) -> dict[str, Any]:
    """The first record of `tests/golden/<file>` named `name` whose fields equal `where`."""
    for record in read_jsonl(GOLDEN / file):
        if record["name"] == name and all(record.get(k) == v for k, v in where.items()):
            return record
    raise KeyError(name)
