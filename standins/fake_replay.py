"""A stand-in for the kernel replay program (services/lean/lean_files/OproverReplay.lean): same protocol, verdicts
from a per-test table. It never runs Lean's kernel.

Run as ``python standins/fake_replay.py --table-json TABLE REQUEST.json``, exactly like the real program
(``oprover-replay REQUEST.json``). The request names the environment files the REPL wrote with ``pickleTo`` (here
the JSON that `standins/fake_repl.py` writes instead of an .olean), the modules they must sit on, the
theorems to judge and the axioms permitted. The last line on stdout is the verdict::

    {"ok": true, "replayed": 2, "theorems": [{"name": "t", "axioms": ["propext"], "typeMatches": true}],
     "errors": []}

What it does, standing in for the real program step by step:

* reads the candidate file (a missing, unreadable or foreign file is ``ok: false``), requires its imports to be
  the request's;
* "replays" every constant: the table's kernel rules, tried in order on each constant's value (its declaration's
  text), may reject it (``{"match": "bogus", "kernel": "reject", "message": "…"}``; ``default``: ``accept``);
* per requested theorem: it must be one of the file's own constants and a theorem; its axioms are its recorded
  axioms plus every new axiom it names; with a reference file, its type must equal the reference's (layout aside).

Table options for the runner's robustness tests: ``verdict`` = ``normal`` | ``garbage`` (no JSON) | ``silent``
(nothing) | ``crash`` (SIGSEGV) | ``hang``; ``replay_s`` (time spent, as importing Mathlib costs).
It says on stderr what it is. Standard library only: like `standins/fake_repl.py` (whose docstring says which
interpreter the sandbox user can run and what ``OPROVER_LEAN_CWD`` is for), ``replay_cmd`` names an interpreter
every user may execute and passes the table inline, and the verify worker runs it in ``OPROVER_LEAN_CWD``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

try:
    from standins.fake_repl import PICKLE_FORMAT, _shared_python
except ImportError:  # run as a script: its own directory is on sys.path
    from fake_repl import PICKLE_FORMAT, _shared_python  # type: ignore[no-redef]

NOT_LEAN = "fake_replay stand-in, NOT Lean's kernel"


def replay_cmd(table_path: str | os.PathLike[str]) -> str:
    """The OPROVER_LEAN_REPLAY_CMD that starts this stand-in on the table at `table_path` (inline, like
    `fake_repl.lean_cmd`: the sandbox user may not read a test's temp dir)."""
    path = Path(table_path).resolve()
    table = json.dumps(json.loads(path.read_text(encoding="utf-8")), ensure_ascii=False, separators=(",", ":"))
    script = str(Path(__file__).resolve())
    return shlex.join([_shared_python(), script, "--table-json", table])


def write_replay_table(path: str | os.PathLike[str], rules: list[dict[str, Any]] | None = None, **options: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"rules": rules or [], **options}, ensure_ascii=False), encoding="utf-8")
    return path


def _load(path: str) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"cannot read the environment file {path}: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != PICKLE_FORMAT:
        raise ValueError(f"{path} is not an environment file")
    return record


def _kernel(table: dict[str, Any], constant: dict[str, Any]) -> str | None:
    """None when the stand-in kernel accepts the constant, else why not."""
    value = str(constant.get("value", ""))
    for rule in table.get("rules", []):
        hit = rule["match"] in value if "match" in rule else bool(re.search(rule.get("regex", "(?!)"), value))
        if hit:
            if rule.get("kernel", "reject") == "accept":
                return None
            return str(rule.get("message", f"(kernel) declaration type mismatch, '{constant.get('name')}'"))
    if table.get("default", "accept") == "accept":
        return None
    return f"(kernel) the stand-in kernel's table accepts no rule for '{constant.get('name')}'"


def judge(table: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    errors: list[str] = []
    verdict: dict[str, Any] = {"ok": False, "replayed": 0, "theorems": [], "errors": errors, "program": NOT_LEAN}
    try:
        candidate = _load(request["candidate"])
        reference = _load(request["reference"]) if request.get("reference") else None
    except ValueError as exc:
        errors.append(str(exc))
        return verdict
    imports = list(request.get("imports", []))
    for record, what in ((candidate, "candidate"), (reference, "reference")):
        if record is not None and list(record.get("imports", [])) != imports:
            errors.append(f"the {what} environment imports {record.get('imports')}, not {imports}")
    if errors:
        return verdict
    constants = {c["name"]: c for c in candidate.get("constants", [])}
    for constant in constants.values():
        problem = _kernel(table, constant)
        if problem:
            errors.append(f"kernel replay failed: {problem}")
            return verdict
    verdict["replayed"] = len(constants)
    permitted = set(request.get("permittedAxioms", []))
    new_axioms = [c["name"] for c in constants.values() if c.get("kind") == "axiom"]
    for parts in request.get("theorems", []):
        name = ".".join(parts)
        constant = constants.get(name)
        if constant is None:
            errors.append(f"{name} is not a constant of the checked environment")
            continue
        if constant.get("kind") != "theorem":
            errors.append(f"{name} is a {constant.get('kind')}, not a theorem")
        axioms = list(constant.get("axioms", []))
        named = [a for a in new_axioms if re.search(rf"(?<![\w.]){re.escape(a)}(?!\w)", str(constant["value"]))]
        axioms += [a for a in named if a != name]
        entry: dict[str, Any] = {"name": name, "axioms": axioms, "typeMatches": None}
        if reference is not None:
            wanted = {c["name"]: c for c in reference.get("constants", [])}.get(name)
            if wanted is None:
                errors.append(f"the reference environment has no {name}")
            else:
                entry["typeMatches"] = " ".join(str(constant["type"]).split()) == " ".join(str(wanted["type"]).split())
                if not entry["typeMatches"]:
                    errors.append(f"the type of {name} differs from the requested statement's")
        extra = [a for a in axioms if a not in permitted]
        if extra:
            errors.append(f"{name} depends on axioms outside the permitted ones: {', '.join(extra)}")
        verdict["theorems"].append(entry)
    verdict["ok"] = not errors
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in for the kernel replay program (not Lean).")
    parser.add_argument("--table-json", default='{"rules": []}')
    parser.add_argument("request", type=Path)
    args = parser.parse_args(argv)
    table = json.loads(args.table_json)
    sys.stderr.write(f"fake_replay: {NOT_LEAN}\n")
    sys.stderr.flush()
    time.sleep(float(table.get("replay_s", 0.0)))
    mode = table.get("verdict", "normal")
    if mode == "hang":
        while True:
            time.sleep(3600)
    if mode == "crash":
        sys.stdout.write('{"ok": tr')
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "silent":
        return 0
    if mode == "garbage":
        sys.stdout.write("PANIC at Lean.Environment.replay: fake_replay stand-in\n")
        return 0
    try:
        request = json.loads(args.request.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"fake_replay: cannot read the request: {exc}\n")
        return 2
    verdict = judge(table, request)
    sys.stdout.write(json.dumps(verdict, ensure_ascii=False) + "\n")
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
