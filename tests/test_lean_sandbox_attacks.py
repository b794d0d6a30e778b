"""Attacks on the Lean sandbox (services/lean/sandbox.py, sandbox_launch.py) as submitted code would make them.

Each attacker is a real process speaking the repl protocol: `standins.fake_repl.FakeRepl` (NOT Lean) whose
`run_command` also does what the attack needs when a command carries its marker, run under the sandbox the
shipped defaults give (a uid of its own from 50000, a network namespace). Tests that show a hole fail today and
carry `xfail(strict=True)` with the reason; tests that show the defence holds are plain tests.

Every test here kills, as root, whatever an attacker left running (a busy loop must not outlive its test).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from services.lean.process import ReplProcess, SandboxConfig
from services.lean.sandbox import can_switch_uids
from standins.fake_repl import _shared_python
from tests.harness import ROOT


def _netns_available() -> bool:
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not can_switch_uids() or not _netns_available(),
    reason="needs root with CAP_SETUID/CAP_SETGID (to give each REPL a uid of its own) and network namespaces",
)
SHIPPED = SandboxConfig()
TABLE = {"rules": [{"match": "PASS_ME", "outcome": "pass"}], "default": "error"}

# The attacker: FakeRepl plus actions keyed by markers in the command text. Inline (`python -c`): the sandbox uid
# cannot read a test's private temp dir, but it can read the repository.
ATTACKER = r"""
import os, sys, signal, time, json
sys.path.insert(0, ROOT)
from standins.fake_repl import FakeRepl

LIFETIME_S = 60.0  # an attacker never outlives this, whatever happens to the test


def detach():
    # setsid + double fork: out of the REPL's process group and session; returns True in the grandchild
    if os.fork():
        return False
    os.setsid()
    if os.fork():
        os._exit(0)
    for fd in (0, 1, 2):
        os.close(fd)
    return True


def kill_loop():
    # kill every other process of our uid, as soon as it appears (the reaper or launcher of this uid too)
    end = time.monotonic() + LIFETIME_S
    time.sleep(0.5)  # let the REPL send its reply first
    while time.monotonic() < end:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(0)


class Attacker(FakeRepl):
    def run_command(self, cmd, env):
        reply = super().run_command(cmd, env)
        if "ATTACK_KILL_LOOP" in cmd:
            for _ in range(int(self.table.get("killers", 1))):
                if detach():
                    kill_loop()
        if "ATTACK_DEEP " in cmd:  # a directory tree deeper than Python's recursion limit, in our private dir
            depth = int(cmd.split("ATTACK_DEEP ", 1)[1].split()[0])
            here = os.getcwd()
            os.chdir(os.environ["TMPDIR"])
            for _ in range(depth):
                os.mkdir("d")
                os.chdir("d")
            os.chdir(here)
        if "ATTACK_WRITE " in cmd:
            path = cmd.split("ATTACK_WRITE ", 1)[1].split()[0]
            try:
                with open(path, "wb") as handle:
                    handle.write(b"left by a sandboxed process\n" * 1024)
                note = "wrote " + path
            except OSError as exc:
                note = "denied " + path + ": " + str(exc)
            reply.setdefault("messages", []).append(
                {"severity": "warning", "pos": {"line": 1, "column": 0}, "endPos": None, "data": note}
            )
        return reply


sys.exit(Attacker(json.loads(sys.argv[1])).serve())
"""


def attacker_cmd(table: dict | None = None) -> str:
    code = f"ROOT = {str(ROOT)!r}\n" + ATTACKER
    return shlex.join([_shared_python(), "-c", code, json.dumps(table or TABLE)])


def _deadline(seconds: float = 30) -> float:
    return time.monotonic() + seconds


def running_as(uid: int | None) -> list[int]:
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


def end_as_root(process: ReplProcess, uid: int | None) -> None:
    """After an attack: root kills what the sandbox uid left, removes its private dir, and drops a lease the
    sandbox kept (what a worker's restart does), so nothing leaks into later tests."""
    kill_all_as_root(uid)
    process.kill()
    subprocess.run(["rm", "-rf", str(process.tmpdir)], check=False)
    lease = process._sandbox.lease
    if lease is not None:
        lease.release()


def kill_all_as_root(uid: int | None) -> None:
    """Root (with CAP_KILL) ends whatever the attacker left, so no busy loop outlives the test."""
    if uid is None:
        return
    for _ in range(50):
        pids = running_as(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


# -- a process that kills the reaper -----------------------------------------------------------------------------
ROUNDS = 15  # the race is won about one time in three on a 2-core machine: 15 rounds lose it all < 0.5 %


@pytest.mark.xfail(
    strict=True,
    reason="sandbox hole: the reaper (sandbox_launch.py --reap) drops to every uid of the sandbox uid (real, "
    "effective, saved) before its kill(-1), so a process the REPL left behind that loops kill(-1, SIGKILL) can kill "
    "the reaper first; the leftover survives the REPL's end and its uid stays leased (reported to sandbox)",
)
def test_a_leftover_that_kills_the_reaper_does_not_survive_the_repl() -> None:
    for _ in range(ROUNDS):
        process = ReplProcess(attacker_cmd(), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
        uid = process.uid
        assert uid is not None
        try:
            reply = process.request("import Mathlib\n-- ATTACK_KILL_LOOP", None, deadline=_deadline())
            assert reply.env is not None
            time.sleep(1.0)  # the loop runs (and has killed the REPL itself)
            assert running_as(uid), "the attacker's loop should be running before the REPL is ended"
            process.kill()
            time.sleep(0.3)
            survivors = running_as(uid)
            assert survivors == [], f"processes of sandbox uid {uid} outlived the REPL: {survivors}"
            assert process.uid is None
        finally:
            end_as_root(process, uid)


# -- a private dir the reaper cannot remove ------------------------------------------------------------------------
@pytest.mark.xfail(
    strict=True,
    reason="sandbox hole: a directory tree 2000 deep in the private dir makes the reaper's shutil.rmtree raise "
    "RecursionError (not OSError): the reaper exits 1 and the uid stays leased for the worker's life; one "
    "check per uid empties the range (reported to sandbox in MESSAGES.md)",
)
def test_a_deep_directory_tree_in_the_private_dir_does_not_keep_the_uid_leased() -> None:
    process = ReplProcess(attacker_cmd(), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    uid, private = process.uid, process.tmpdir
    try:
        reply = process.request("import Mathlib\n-- ATTACK_DEEP 2000", None, deadline=_deadline(60))
        assert reply.env is not None
        assert (private / "d" / "d").is_dir()
        process.kill()
        assert not private.exists(), "the private dir outlived its REPL"
        assert process.uid is None, f"sandbox uid {uid} stays leased after its REPL ended"
    finally:
        end_as_root(process, uid)
