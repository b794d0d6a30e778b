"""The trusted step: replay a REPL's environment through Lean's kernel in a fresh process that runs no submitted code.

The REPL elaborates submitted code, so whatever it says (replies, messages, `#print axioms`, `#check`) can be
forged by that code. A pass is therefore decided here, on data:

1. the REPL writes the environment it ended with to a file (`pickleTo`: an .olean holding its imports and the
   constants it added on top of them). That file is hostile input: `take_pickle` accepts only a regular file
   (no symlink, FIFO or device), at most `max_pickle_mb`, copied into a fresh directory the worker owns, read-only
   to the replay;
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

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from services.lean.policy import STANDARD_AXIOMS
from services.lean.process import SandboxConfig, child_environment, sandbox_argv
from services.settings import LeanSettings

VERDICT_TAIL_BYTES = 64 * 1024  # the verdict is one short line; more output than this is not read


class PickleError(Exception):
    """The environment file a REPL wrote cannot be handed to the replay (missing, not a regular file, too big)."""


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


def take_pickle(source: Path, destination: Path, max_bytes: int) -> Path:
    """Copy the environment file a REPL wrote at `source` to `destination` (in a directory the worker created),
    trusting nothing about it: refused unless a regular file of 1..`max_bytes` bytes; opened without following a
    symlink and without blocking on a FIFO; the copy is read-only."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(source, flags)
    except FileNotFoundError as exc:
        raise PickleError("the REPL wrote no environment file") from exc
    except OSError as exc:  # ELOOP: a symlink
        raise PickleError(f"the environment file cannot be opened safely: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PickleError("the environment file is not a regular file")
        if info.st_size == 0:
            raise PickleError("the environment file is empty")
        if info.st_size > max_bytes:
            raise PickleError(f"the environment file is larger than {max_bytes // (1 << 20)} MB")
        os.set_blocking(fd, True)
        copied = 0
        with open(destination, "xb") as out:
            while chunk := os.read(fd, 1 << 20):
                copied += len(chunk)
                if copied > max_bytes:  # it grew while being read
                    raise PickleError(f"the environment file is larger than {max_bytes // (1 << 20)} MB")
                out.write(chunk)
        destination.chmod(0o444)
        return destination
    finally:
        os.close(fd)


def new_workdir() -> Path:
    """A fresh directory for one replay's input files: owned by the worker, readable (not writable) by the
    sandbox user the replay runs as."""
    workdir = Path(tempfile.mkdtemp(prefix="oprover-replay-"))
    workdir.chmod(0o755)
    return workdir


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
    request = {
        "candidate": str(candidate),
        "reference": str(reference) if reference else None,
        "imports": imports,
        "theorems": [name_parts(name) for name in theorems],
        "permittedAxioms": sorted(STANDARD_AXIOMS),
    }
    request_path = workdir / "request.json"
    request_path.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    request_path.chmod(0o444)
    private = Path(tempfile.mkdtemp(prefix="oprover-replay-tmp-"))  # its TMPDIR/HOME; it should write nothing
    argv = [*shlex.split(settings.replay_cmd), str(request_path)]
    if settings.sandbox:
        sandbox = SandboxConfig(
            enabled=True,
            network=settings.sandbox_network,
            user=settings.sandbox_user,
            address_space_mb=settings.address_space_mb,
            cpu_limit_s=settings.cpu_limit_s,
        )
        argv = [*sandbox_argv(sandbox, private), *argv]
    env = child_environment()
    env.update({"TMPDIR": str(private), "HOME": str(private)})
    try:
        process = subprocess.Popen(
            argv,
            cwd=str(settings.cwd) if settings.cwd else None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
        )
    except OSError as exc:
        shutil.rmtree(private, ignore_errors=True)
        return ReplayVerdict(False, f"the replay program could not start: {exc}", infrastructure=True)
    try:
        stdout, stderr = process.communicate(timeout=settings.replay_timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return ReplayVerdict(False, f"the replay took longer than {settings.replay_timeout_s:g} s", infrastructure=True)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # nothing it started outlives it
        shutil.rmtree(private, ignore_errors=True)
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
