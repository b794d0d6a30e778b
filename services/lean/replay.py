"""The trusted step: replay a REPL's environment through Lean's kernel in a fresh process that runs no submitted code.

The REPL elaborates submitted code, so whatever it says (replies, messages, `#print axioms`, `#check`) can be
forged by that code. A pass is therefore decided here, on data:

1. the REPL writes the environment it ended with to a file (`pickleTo`: an .olean holding its imports and the
   constants it added on top of them) in its private dir, under its own uid. That file is hostile input: it is
   taken (`ReplProcess.take_file`) only after every process of that uid was killed, and only if it is a regular
   file (no symlink, FIFO or device) of that uid with one link, at most `max_pickle_mb`; copied into a fresh
   0700 directory of the worker's, from which the launcher copies it into the replay's own private dir;
2. the replay program (`lean_files/OproverReplay.lean`, built in the Lean image; `OPROVER_LEAN_REPLAY_CMD`) runs
   in the same sandbox as a REPL, in a fresh process: it imports the header's modules from the read-only
   toolchain and Mathlib, reads the file as data, sends every new constant to the kernel
   (`Environment.replay`), takes each theorem's type from the replayed environment and compares it as an `Expr`
   with the reference type (the requested statement elaborated by a REPL before any model code was sent to it),
   and collects axioms by walking the replayed constants;
3. the last line it prints is its verdict (JSON). Anything else (no verdict, a crash, a timeout, a non-zero
   exit, a verdict that does not cover every theorem) is not a pass.

Request (a JSON file, the program's only argument)::

    {"candidate": PATH, "reference": PATH | null, "imports": ["Mathlib", …], "theorems": [["Ns", "name"], …],
     "permittedAxioms": ["propext", "Classical.choice", "Quot.sound"]}

Verdict (the last line of stdout)::

    {"ok": bool, "replayed": N, "theorems": [{"name": "Ns.name", "axioms": […], "typeMatches": bool | null}],
     "errors": […]}
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from services.lean.policy import STANDARD_AXIOMS
from services.lean.sandbox import Sandbox, SandboxConfig, SandboxUnavailable
from services.settings import LeanSettings

VERDICT_TAIL_BYTES = 64 * 1024  # the verdict is one short line; more output than this is not read


@dataclass(frozen=True)
class ReplayVerdict:
    ok: bool
    reason: str = ""
    axioms: list[str] = field(default_factory=list)
    replayed: int = 0
    infrastructure: bool = False  # the replay could not judge (did not start, crashed, timed out, no verdict)


def name_parts(name: str) -> list[str]:
    """`Ns.«odd name».t` -> ["Ns", "odd name", "t"]: the components of a Lean name as the program builds it."""
    parts = re.findall(r"«([^»]*)»|([^.«»]+)", name)
    return [a or b for a, b in parts] or [name]


def new_workdir() -> Path:
    """A fresh directory for one replay's input files, private to the worker (0700): the launcher opens them before
    it leaves the worker's uid and copies them into the replay's own private dir."""
    return Path(tempfile.mkdtemp(prefix="oprover-replay-"))


def run_replay(
    settings: LeanSettings,
    *,
    workdir: Path,
    candidate: Path,
    reference: Path | None,
    imports: list[str],
    theorems: list[str],
) -> ReplayVerdict:
    """Run the replay program on files already taken into `workdir`; fail closed on anything but its verdict."""
    if not settings.replay_cmd:
        return ReplayVerdict(False, "no replay program is configured (OPROVER_LEAN_REPLAY_CMD)", infrastructure=True)
    try:
        sandbox = Sandbox(SandboxConfig.from_settings(settings))  # its own uid and private dir, as a REPL's
    except SandboxUnavailable as exc:
        return ReplayVerdict(False, f"the replay cannot be sandboxed: {exc}", infrastructure=True)
    # The replay reads its inputs in its own private dir (the launcher copies them there) or, with the sandbox
    # off, where the worker wrote them.
    inputs = sandbox.private_dir if settings.sandbox else workdir
    request = {
        "candidate": str(inputs / candidate.name),
        "reference": str(inputs / reference.name) if reference else None,
        "imports": imports,
        "theorems": [name_parts(name) for name in theorems],
        "permittedAxioms": sorted(STANDARD_AXIOMS),
    }
    request_path = workdir / "request.json"
    request_path.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    request_path.chmod(0o444)
    handed = [request_path, candidate, *([reference] if reference else [])]
    argv = sandbox.argv([*shlex.split(settings.replay_cmd), str(inputs / request_path.name)], copy_in=handed)
    try:
        process = subprocess.Popen(
            argv,
            cwd=str(settings.cwd) if settings.cwd else None,
            env=sandbox.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
        )
    except OSError as exc:
        sandbox.close(None)
        return ReplayVerdict(False, f"the replay program could not start: {exc}", infrastructure=True)
    try:
        stdout, stderr = process.communicate(timeout=settings.replay_timeout_s)
    except subprocess.TimeoutExpired:
        sandbox.stop(process)
        process.communicate()
        return ReplayVerdict(False, f"the replay took longer than {settings.replay_timeout_s:g} s", infrastructure=True)
    finally:
        sandbox.close(process)  # nothing it started outlives it
    return read_verdict(
        stdout[-VERDICT_TAIL_BYTES:],
        stderr[-VERDICT_TAIL_BYTES:],
        process.returncode,
        theorems,
        with_reference=reference is not None,
    )


def read_verdict(
    stdout: bytes, stderr: bytes, returncode: int, theorems: list[str], *, with_reference: bool
) -> ReplayVerdict:
    """The program's verdict, checked again here: ok, exit status 0, and every requested theorem judged, with a
    matching type (when a reference was given) and only permitted axioms."""
    lines = [line for line in stdout.decode("utf-8", "replace").splitlines() if line.strip()]
    try:
        verdict = json.loads(lines[-1])
        ok = verdict["ok"]
        judged = {str(entry["name"]): entry for entry in verdict.get("theorems", [])}
        errors = [str(error) for error in verdict.get("errors", [])]
    except (IndexError, ValueError, KeyError, TypeError):
        tail = " | ".join(stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        reason = f"the replay gave no verdict ({how})" + (f": {tail}" if tail else "")
        return ReplayVerdict(False, reason, infrastructure=True)
    axioms: list[str] = []
    problems = list(errors)
    for name in theorems:
        entry = judged.get(".".join(name_parts(name)))
        if entry is None:
            problems.append(f"the replay did not judge {name}")
            continue
        if with_reference and entry.get("typeMatches") is not True:
            problems.append(f"the type of {name} in the replayed environment is not the requested statement's")
        found = [str(a) for a in entry.get("axioms", [])]
        axioms += [a for a in found if a not in axioms]
    extra = [a for a in axioms if a not in STANDARD_AXIOMS]
    if extra:
        problems.append(f"the proof depends on non-standard axioms: {', '.join(extra)}")
    if ok is not True or returncode != 0 or problems:
        reason = "; ".join(dict.fromkeys(problems)) or f"the replay did not confirm the proof (exit {returncode})"
        return ReplayVerdict(False, reason, axioms, int(verdict.get("replayed", 0) or 0))
    return ReplayVerdict(True, "", axioms, int(verdict.get("replayed", 0) or 0))
