"""Strict mode (audits): replay a passing proof in a fresh kernel environment (lean_files/StrictCheck.lean).

Runs `lake env lean --run StrictCheck.lean COMPILED REFERENCE NAME` in the Lean project, sandboxed like a REPL.
Fails closed: anything but a final JSON line saying `"ok": true` is a failure with the reason.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from services.lean.process import LAUNCHER, child_environment
from services.settings import LeanSettings

STRICT_CHECK = Path(__file__).with_name("lean_files") / "StrictCheck.lean"


@dataclass(frozen=True)
class StrictResult:
    ok: bool
    reason: str = ""
    axioms: list[str] = field(default_factory=list)


def strict_argv(settings: LeanSettings) -> list[str]:
    """`lake env lean` when the REPL runs under `lake env`, else `lean` from PATH."""
    cmd = shlex.split(settings.cmd or "")
    prefix = cmd[:2] if cmd[:2] == ["lake", "env"] else []
    return [*prefix, "lean", "--run", str(STRICT_CHECK)]


def run_strict(settings: LeanSettings, *, compiled: str, reference: str, name: str) -> StrictResult:
    workdir = Path(tempfile.mkdtemp(prefix="oprover-strict-"))
    try:
        workdir.chmod(0o755)  # the sandbox user reads the two files
        (workdir / "Compiled.lean").write_text(compiled, encoding="utf-8")
        (workdir / "Reference.lean").write_text(reference, encoding="utf-8")
        for path in workdir.iterdir():
            path.chmod(0o644)
        argv = [*strict_argv(settings), str(workdir / "Compiled.lean"), str(workdir / "Reference.lean"), name]
        if settings.sandbox:
            launcher = [sys.executable, "-I", "-S", str(LAUNCHER)]
            launcher += ["--net", "isolate" if settings.sandbox_network else "keep"]
            launcher += ["--as-mb", str(settings.address_space_mb), "--cpu-s", str(settings.cpu_limit_s)]
            if os.geteuid() == 0 and settings.sandbox_user:
                entry = pwd.getpwnam(settings.sandbox_user)
                launcher += ["--uid", str(entry.pw_uid), "--gid", str(entry.pw_gid)]
            argv = [*launcher, "--", *argv]
        env = child_environment()
        env["TMPDIR"] = str(workdir)
        try:
            done = subprocess.run(
                argv,
                cwd=str(settings.cwd) if settings.cwd else None,
                env=env,
                capture_output=True,
                text=True,
                timeout=settings.import_timeout_s + settings.timeout_s,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            return StrictResult(False, "strict check timed out")
        except OSError as exc:
            return StrictResult(False, f"strict check could not start: {exc}")
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        try:
            verdict = json.loads(lines[-1])
            ok = verdict["ok"] is True and done.returncode == 0
            axioms = [str(a) for a in verdict.get("axioms", [])]
            reason = "; ".join(str(e) for e in verdict.get("errors", []))
        except (IndexError, ValueError, KeyError, TypeError):
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return StrictResult(False, f"strict check gave no verdict (exit {done.returncode}): {' | '.join(tail)}")
        return StrictResult(ok, "" if ok else reason or f"strict check failed (exit {done.returncode})", axioms)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
