"""`setup_lean_project` with stand-in `elan`, `git` and `lake` executables that record their calls."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from services.lean.setup import EXIT_CONFLICT, EXIT_NO_DISK, EXIT_NO_ELAN, EXIT_OK, EXIT_STEP_FAILED, setup_lean_project

STANDIN = """#!/bin/sh
# stand-in {name}: records its call, then behaves just enough like the real tool
printf '%s\\t%s\\t%s\\n' "{name}" "$PWD" "$*" >> "$CALLS"
{body}
"""
GIT = """
if [ -n "$GIT_FAIL" ]; then
  echo "fatal: unable to access 'https://github.com/': Could not resolve host" >&2; exit 128
fi
for arg; do target=$arg; done
branch=$5
mkdir -p "$target/.git"
echo "leanprover/lean4:$branch" > "$target/lean-toolchain"
echo "0123456789abcdef0123456789abcdef01234567" > "$target/.git/HEAD"
"""
LAKE = """
case "$*" in
  "exe cache get") mkdir -p .lake/build ;;
  "build") mkdir -p .lake/build/bin && touch .lake/build/bin/repl .lake/build/bin/oprover-replay ;;
esac
"""


def make_tools(bin_dir: Path, names: tuple[str, ...] = ("elan", "git", "lake")) -> None:
    bodies = {"elan": "exit 0", "git": GIT, "lake": LAKE}
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        path = bin_dir / name
        path.write_text(STANDIN.format(name=name, body=bodies[name]))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def calls(log: Path) -> list[tuple[str, str, str]]:
    if not log.exists():
        return []
    return [(tool, cwd, args) for tool, cwd, args in (line.split("\t") for line in log.read_text().splitlines())]


@pytest.fixture
def tool_env(tmp_path):
    bin_dir = tmp_path / "bin"
    make_tools(bin_dir)
    log = tmp_path / "calls.tsv"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(log), "HOME": str(tmp_path)}
    return env, log


def test_fresh_setup_runs_every_step_and_prints_settings(tmp_path, tool_env) -> None:
    env, log = tool_env
    lines: list[str] = []
    code = setup_lean_project(tmp_path / "lean", "4.15.0", env=env, min_free_gb=0, out=lines.append)
    assert code == EXIT_OK, lines
    made = [(tool, Path(cwd).name, args) for tool, cwd, args in calls(log)]
    root = tmp_path / "lean"
    assert made == [
        ("elan", "lean", "toolchain install leanprover/lean4:v4.15.0"),
        (
            "git",
            "lean",
            f"clone --depth 1 --branch v4.15.0 https://github.com/leanprover-community/mathlib4 {root}/mathlib4",
        ),
        ("git", "lean", f"clone --depth 1 --branch v4.15.0 https://github.com/leanprover-community/repl {root}/repl"),
        ("lake", "mathlib4", "exe cache get"),
        ("lake", "repl", "build"),
        ("lake", "replay", "build"),
    ]
    assert f"OPROVER_LEAN_CMD='lake env {root}/repl/.lake/build/bin/repl'" in lines
    assert f"OPROVER_LEAN_REPLAY_CMD='lake env {root}/replay/.lake/build/bin/oprover-replay'" in lines
    replay = root / "replay"
    assert (replay / "OproverReplay.lean").exists() and (replay / "lakefile.lean").exists()
    assert (replay / "lean-toolchain").read_text() == "leanprover/lean4:v4.15.0\n"
    assert f"OPROVER_LEAN_CWD={root}/mathlib4" in lines
    assert "OPROVER_LEAN_VERSION=v4.15.0" in lines
    assert "OPROVER_LEAN_MATHLIB_VERSION=0123456789abcdef0123456789abcdef01234567" in lines


def test_rerun_skips_what_is_done(tmp_path, tool_env) -> None:
    env, log = tool_env
    assert setup_lean_project(tmp_path / "lean", "v4.15.0", env=env, min_free_gb=0, out=lambda _: None) == 0
    log.unlink()
    assert setup_lean_project(tmp_path / "lean", "v4.15.0", env=env, min_free_gb=0, out=lambda _: None) == 0
    assert [c[0] for c in calls(log)] == ["elan", "lake"]  # toolchain (idempotent) and the cache; no clone, no build


def test_no_elan_says_how_to_install_it(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    make_tools(bin_dir, names=("git", "lake"))
    lines: list[str] = []
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "CALLS": str(tmp_path / "c")}
    assert setup_lean_project(tmp_path / "lean", env=env, out=lines.append) == EXIT_NO_ELAN
    assert "elan is not installed" in lines[-1] and "elan-init.sh" in lines[-1]


def test_no_network_is_named(tmp_path, tool_env) -> None:
    env, _ = tool_env
    lines: list[str] = []
    code = setup_lean_project(tmp_path / "lean", env={**env, "GIT_FAIL": "1"}, min_free_gb=0, out=lines.append)
    assert code == EXIT_STEP_FAILED
    assert "clone mathlib4 v4.15.0 failed" in lines[-1] and "no network?" in lines[-1]


def test_not_enough_disk_is_named(tmp_path, tool_env) -> None:
    env, _ = tool_env
    lines: list[str] = []
    assert setup_lean_project(tmp_path / "lean", env=env, min_free_gb=10**9, out=lines.append) == EXIT_NO_DISK
    assert "GB free" in lines[-1]


def test_a_directory_of_another_version_is_refused(tmp_path, tool_env) -> None:
    env, _ = tool_env
    assert setup_lean_project(tmp_path / "lean", "v4.9.0", env=env, min_free_gb=0, out=lambda _: None) == 0
    lines: list[str] = []
    assert setup_lean_project(tmp_path / "lean", "v4.15.0", env=env, min_free_gb=0, out=lines.append) == EXIT_CONFLICT
    assert "pinned to leanprover/lean4:v4.9.0" in lines[-1]


def test_stand_ins_were_really_executed(tmp_path, tool_env) -> None:
    env, log = tool_env
    setup_lean_project(tmp_path / "lean", env=env, min_free_gb=0, out=lambda _: None)
    assert os.access(tmp_path / "lean" / "repl" / ".lake" / "build" / "bin" / "repl", os.F_OK)
    assert json.dumps(calls(log))  # recorded by the processes, not by us
