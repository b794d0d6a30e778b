"""`oprover lean setup DIR [--lean-version V]`: a pinned Lean + Mathlib + repl on this machine, without Docker.

Layout (the one Kimina Lean Server and our Dockerfile.lean use as well):

    DIR/mathlib4   Mathlib at tag V, its compiled cache fetched (`lake exe cache get`): the Lean project (cwd)
    DIR/repl       leanprover-community/repl at tag V, built (`lake build`)
    DIR/replay     the kernel replay program (services/lean/lean_files), built on the same toolchain

Both repositories tag each Lean release (`v4.15.0`, ...), so one version pins all three. Every step is skipped
when already done, so a failed run can simply be run again; each failure names the step and the likely cause
(elan missing, no network, no disk space).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

LEAN_FILES = Path(__file__).with_name("lean_files")  # the replay program's sources, shipped with the package
MATHLIB_GIT = "https://github.com/leanprover-community/mathlib4"
REPL_GIT = "https://github.com/leanprover-community/repl"
MIN_FREE_GB = 12.0  # toolchain ~1 GB, Mathlib sources + cache ~6-8 GB, room for the repl build

EXIT_OK = 0
EXIT_STEP_FAILED = 1
EXIT_NO_ELAN = 2
EXIT_NO_DISK = 3
EXIT_CONFLICT = 4


class SetupFailed(Exception):
    def __init__(self, message: str, code: int = EXIT_STEP_FAILED) -> None:
        super().__init__(message)
        self.code = code


def normalize_version(version: str) -> str:
    version = version.strip()
    return version if version.startswith("v") else f"v{version}"


def setup_lean_project(
    directory: Path,
    lean_version: str = "v4.15.0",
    *,
    env: Mapping[str, str] | None = None,
    min_free_gb: float = MIN_FREE_GB,
    out: Callable[[str], None] = print,
) -> int:
    """Create or complete the pinned project in `directory`; print the OPROVER_LEAN_* settings. Returns an exit code."""
    version = normalize_version(lean_version)
    run_env = dict(os.environ if env is None else env)
    directory = Path(directory).expanduser().resolve()
    try:
        tools = _find_tools(run_env)
        directory.mkdir(parents=True, exist_ok=True)
        free_gb = shutil.disk_usage(directory).free / 1e9
        if free_gb < min_free_gb and not (directory / "mathlib4" / ".lake").exists():
            raise SetupFailed(
                f"only {free_gb:.1f} GB free in {directory}; Mathlib and its cache need about {min_free_gb:.0f} GB",
                EXIT_NO_DISK,
            )
        toolchain = f"leanprover/lean4:{version}"
        _step(out, f"toolchain {toolchain}", [tools["elan"], "toolchain", "install", toolchain], directory, run_env)
        mathlib = directory / "mathlib4"
        repl = directory / "repl"
        _clone(out, tools["git"], MATHLIB_GIT, version, mathlib, run_env)
        _clone(out, tools["git"], REPL_GIT, version, repl, run_env)
        _check_toolchain(mathlib, toolchain)
        _check_toolchain(repl, toolchain)
        _step(out, "Mathlib cache", ["lake", "exe", "cache", "get"], mathlib, run_env)
        binary = repl / ".lake" / "build" / "bin" / "repl"
        if not binary.exists():
            _step(out, "build the repl", ["lake", "build"], repl, run_env)
        if not binary.exists():
            raise SetupFailed(f"`lake build` finished but {binary} does not exist")
        replay = directory / "replay"
        replay_binary = replay / ".lake" / "build" / "bin" / "oprover-replay"
        if not replay_binary.exists():
            replay.mkdir(exist_ok=True)
            for source in LEAN_FILES.glob("*.lean"):
                shutil.copy2(source, replay / source.name)
            (replay / "lean-toolchain").write_text(toolchain + "\n", encoding="utf-8")
            _step(out, "build the kernel replay program", ["lake", "build"], replay, run_env)
        if not replay_binary.exists():
            raise SetupFailed(f"`lake build` finished but {replay_binary} does not exist")
    except SetupFailed as exc:
        out(f"oprover lean setup failed: {exc}")
        return exc.code
    mathlib_rev = mathlib_revision(mathlib) or version
    out("Lean is ready. Use these settings (e.g. in .env):")
    out(f"OPROVER_LEAN_CMD='lake env {binary}'")
    out(f"OPROVER_LEAN_REPLAY_CMD='lake env {replay_binary}'")
    out(f"OPROVER_LEAN_CWD={mathlib}")
    out(f"OPROVER_LEAN_VERSION={version}")
    out(f"OPROVER_LEAN_MATHLIB_VERSION={mathlib_rev}")
    out(f"OPROVER_LEAN_REPL_VERSION={version}")
    return EXIT_OK


def _find_tools(env: Mapping[str, str]) -> dict[str, str]:
    path = env.get("PATH", os.defpath)
    elan = shutil.which("elan", path=path) or _elan_home_tool("elan", env)
    if not elan:
        raise SetupFailed(
            "elan is not installed (https://github.com/leanprover/elan: `curl https://raw.githubusercontent.com/"
            "leanprover/elan/master/elan-init.sh -sSf | sh`), then run this again",
            EXIT_NO_ELAN,
        )
    git = shutil.which("git", path=path)
    if not git:
        raise SetupFailed("git is not installed", EXIT_NO_ELAN)
    return {"elan": elan, "git": git}


def _elan_home_tool(name: str, env: Mapping[str, str]) -> str | None:
    home = env.get("ELAN_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".elan")
    candidate = Path(home) / "bin" / name
    return str(candidate) if candidate.exists() else None


def _step(out: Callable[[str], None], what: str, argv: list[str], cwd: Path, env: Mapping[str, str]) -> None:
    out(f"-> {what}: {' '.join(argv)}")
    try:
        done = subprocess.run(argv, cwd=cwd, env=dict(env), capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise SetupFailed(f"{what}: {argv[0]} not found ({exc}); is elan's bin directory on PATH?") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        text = "\n".join(tail)
        hint = ""
        lowered = text.lower()
        if any(s in lowered for s in ("could not resolve", "network", "unable to access", "timed out", "curl")):
            hint = " (no network? this step downloads from GitHub)"
        elif "no space" in lowered:
            hint = " (disk full)"
        raise SetupFailed(f"{what} failed with exit status {done.returncode}{hint}:\n{text}")


def _clone(out: Callable[[str], None], git: str, url: str, version: str, target: Path, env: Mapping[str, str]) -> None:
    if (target / ".git").exists() or (target / "lean-toolchain").exists():
        out(f"-> {target.name}: already present")
        return
    argv = [git, "clone", "--depth", "1", "--branch", version, url, str(target)]
    _step(out, f"clone {target.name} {version}", argv, target.parent, env)


def _check_toolchain(project: Path, toolchain: str) -> None:
    path = project / "lean-toolchain"
    try:
        found = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SetupFailed(f"{path} is missing: {project} is not a Lean project") from exc
    if found != toolchain:
        raise SetupFailed(
            f"{project} is pinned to {found}, not {toolchain}: use another DIR per Lean version", EXIT_CONFLICT
        )


def mathlib_revision(project: Path) -> str | None:
    """Mathlib's commit: from a project's lake-manifest, or (in Mathlib's own clone) from git's HEAD."""
    try:
        manifest = json.loads((project / "lake-manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    for entry in manifest.get("packages", []):
        if entry.get("name") == "mathlib":
            return entry.get("rev")
    head = project / ".git" / "HEAD"
    return head.read_text(encoding="utf-8").strip() if head.exists() else None
