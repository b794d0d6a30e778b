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
import sys
import time
from pathlib import Path

import pytest

from services.domain import Verdict
from services.errors import LeanError
from services.lean.process import ReplProcess, SandboxConfig
from services.lean.sandbox import SandboxUnavailable, can_switch_uids, lease_uid
from standins.fake_repl import _shared_python
from tests.harness import ROOT
from tests.lean_cases import STATEMENT, running_as, stand_in_checker


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

LIFETIME_S = 120.0  # an attacker never outlives this, whatever happens to the test


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
        if "ATTACK_SLEEPER" in cmd and detach():  # a quiet leftover, waiting for the next tenant of the uid
            time.sleep(LIFETIME_S)
            os._exit(0)
        if "ATTACK_SYSV_SHM" in cmd:  # System V shared memory: no file, no process, outlives its creator
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            shmid = libc.shmget(0, 1 << 20, 0o1000 | 0o600)  # IPC_PRIVATE, 1 MiB, IPC_CREAT
            reply.setdefault("messages", []).append(
                {"severity": "warning", "pos": {"line": 1, "column": 0}, "endPos": None, "data": str(shmid)}
            )
        if "ATTACK_OPEN_DIR " in cmd:  # a dir of ours that every uid may write in
            path = cmd.split("ATTACK_OPEN_DIR ", 1)[1].split()[0]
            os.mkdir(path)
            os.chmod(path, 0o777)
        if "ATTACK_PLANT " in cmd:  # in another uid's open dir: a dir of ours it can neither list nor empty
            path = cmd.split("ATTACK_PLANT ", 1)[1].split()[0]
            os.mkdir(path, 0o700)
            with open(os.path.join(path, "z"), "wb") as handle:
                handle.write(b"planted")
        if "ATTACK_LIMITS" in cmd:  # what bounds a fork bomb or a disk fill
            import resource
            limits = {name: resource.getrlimit(getattr(resource, name)) for name in ("RLIMIT_NPROC", "RLIMIT_FSIZE")}
            reply.setdefault("messages", []).append(
                {"severity": "warning", "pos": {"line": 1, "column": 0}, "endPos": None, "data": json.dumps(limits)}
            )
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
ROUNDS = 6  # the race was won about one round in three when the reaper ran as the uid: 6 rounds miss it < 10 %


def test_a_leftover_that_kills_the_reaper_does_not_survive_the_repl() -> None:
    """A process the REPL left (setsid, double fork) loops kill(-1, SIGKILL) to kill the reaper of its uid before the
    reaper kills it (it won ~1 round in 3 when the reaper ran as that uid): the reaper must be out of its reach."""
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
def test_a_deep_directory_tree_in_the_private_dir_does_not_keep_the_uid_leased() -> None:
    """`d/d/d/...` 2000 deep in the private dir (a recursive rmtree raised RecursionError): the reaper removes it
    and the uid goes back to the range."""
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


def _notes(reply) -> list[str]:
    return [m.data for m in reply.messages if m.severity == "warning"]


# -- what a check leaves outside its private dir ------------------------------------------------------------------
def test_files_a_repl_writes_outside_its_private_dir_do_not_outlive_it() -> None:
    """A file in /dev/shm (RAM) of the sandbox uid, outside its private dir: removed with the REPL."""
    left = Path("/dev/shm") / f"oprover-attack-{os.getpid()}-{time.monotonic_ns()}"
    process = ReplProcess(attacker_cmd(), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    uid = process.uid
    try:
        reply = process.request(f"import Mathlib\n-- ATTACK_WRITE {left}", None, deadline=_deadline())
        assert _notes(reply) == [f"wrote {left}"]  # (the sandbox allows the write itself)
        process.kill()
        assert not left.exists(), f"{left} ({left.stat().st_size} bytes of uid {uid}) outlived the check"
    finally:
        end_as_root(process, uid)
        left.unlink(missing_ok=True)


def test_a_repl_runs_with_a_process_count_and_file_size_limit() -> None:
    """A fork bomb or one huge file of one check must not take the machine (pid_max here is 32768, below the
    inherited per-uid process limit)."""
    process = ReplProcess(attacker_cmd(), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    uid = process.uid
    try:
        reply = process.request("import Mathlib\n-- ATTACK_LIMITS", None, deadline=_deadline())
        limits = json.loads(_notes(reply)[0])
        unlimited = -1  # resource.RLIM_INFINITY
        # (threads count too: Lean runs one per core and a few more; 4096 is far above what a check needs, far below
        # the tens of thousands the kernel's default per-uid limit lets a fork bomb take)
        assert 0 <= limits["RLIMIT_NPROC"][1] <= 4096, f"a sandbox uid may run this many processes: {limits}"
        assert limits["RLIMIT_FSIZE"][1] != unlimited, f"a sandbox uid may write files of any size: {limits}"
    finally:
        end_as_root(process, uid)


# -- every uid leased -------------------------------------------------------------------------------------------
def _private_range(slot: int) -> int:
    """The first of 4 uids (a range of COUNT <= 2 and its reapers) that no other test, here or in a parallel test
    process, leases from: one `slot` per test."""
    return 62000 + (os.getpid() % 250) * 32 + slot * 4


def test_a_check_with_every_uid_leased_fails_closed_without_hanging(tmp_path) -> None:
    """Every uid of the range held elsewhere (another worker on the machine): an honest passing proof gets no
    pass and no hang: a transient LeanError (the job retries) within seconds."""
    base = _private_range(0)
    cfg = SandboxConfig(uid_base=base, uid_count=2)
    held = [lease_uid(cfg), lease_uid(cfg)]
    code = "theorem target_thm (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  PASS_ME\n"
    rules = [{"match": "PASS_ME", "outcome": "pass"}]
    try:
        with stand_in_checker(tmp_path, rules, sandbox_uid_base=base, sandbox_uid_count=2) as checker:
            started = time.monotonic()
            with pytest.raises(LeanError, match="all 2 sandbox uids") as raised:
                checker.check(code, formal_statement=STATEMENT)
            assert raised.value.transient and time.monotonic() - started < 60
        held.pop().release()  # one uid free: the REPL and the replay take it in turn (or the replay finds none)
        with stand_in_checker(tmp_path, rules, sandbox_uid_base=base, sandbox_uid_count=2) as checker:
            result = checker.check(code, formal_statement=STATEMENT)
            assert result.verdict in {Verdict.PASS, Verdict.ERROR}
            if result.verdict is Verdict.ERROR:
                assert "cannot be sandboxed" in result.messages[0].data
        held.pop().release()  # the control: with the range free, the same proof passes
        with stand_in_checker(tmp_path, rules, sandbox_uid_base=base, sandbox_uid_count=2) as checker:
            assert checker.check(code, formal_statement=STATEMENT).verdict is Verdict.PASS
    finally:
        for lease in held:
            lease.release()


# -- one lease table per machine? ------------------------------------------------------------------------------
def test_workers_with_different_tmpdirs_never_lease_the_same_uid(tmp_path) -> None:
    """Two workers on one machine whose TMPDIR differ lease from one table."""
    base = _private_range(1)
    cfg = SandboxConfig(uid_base=base, uid_count=1)
    held = lease_uid(cfg)  # this worker holds the only uid of the range
    other_tmp = tmp_path / "other-tmp"
    other_tmp.mkdir()
    script = (
        "from services.lean.sandbox import SandboxConfig, SandboxUnavailable, lease_uid\n"
        "try:\n"
        f"    print(lease_uid(SandboxConfig(uid_base={base}, uid_count=1)).uid)\n"
        "except SandboxUnavailable as exc:\n"
        "    print('refused:', exc)\n"
    )
    try:
        env = {**os.environ, "TMPDIR": str(other_tmp)}  # another worker, started with its own temp dir
        other = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() != str(held.uid), f"uid {held.uid} leased twice at once"
    finally:
        held.release()


# -- another check's private dir, named on a public command line -------------------------------------------------
def test_a_launchers_private_dir_is_not_named_on_its_public_command_line() -> None:
    """Deterministic form of a race (a squatter reading new processes' command lines won it once in ~20 launches
    here): the name must be secret until the dir exists, or the dir must live where no sandbox uid can create."""
    process = ReplProcess(attacker_cmd(), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    try:
        assert process.request("import Mathlib", None, deadline=_deadline()).env is not None
        public = str(process.proc.args)  # the argv the launcher ran with: /proc/<pid>/cmdline, which every uid reads
        parent = process.tmpdir.parent
        creatable = parent.stat().st_mode & 0o002  # a dir anyone may create names in (/tmp)
        assert not (str(process.tmpdir) in public and creatable), (
            f"{process.tmpdir} is named on the launcher's command line and {parent} lets any uid create it"
        )
    finally:
        end_as_root(process, process.uid)


# -- two checks together: a dir one of them cannot remove ----------------------------------------------------------
def test_a_dir_another_uid_planted_in_a_repls_open_dir_does_not_keep_its_uid_leased() -> None:
    """REPL u makes /tmp/d mode 0777; REPL v (a concurrent check) makes /tmp/d/y 0700 with a file in it (u's reaper
    could not empty it and kept u's uid leased): both uids go back to the range."""
    shared = Path("/tmp") / f"oprover-attack-{os.getpid()}-{time.monotonic_ns()}"
    u = ReplProcess(attacker_cmd(), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    v = ReplProcess(attacker_cmd(), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    uids = (u.uid, v.uid)
    try:
        assert u.request(f"import Mathlib\n-- ATTACK_OPEN_DIR {shared}", None, deadline=_deadline()).env is not None
        assert v.request(f"import Mathlib\n-- ATTACK_PLANT {shared}/y", None, deadline=_deadline()).env is not None
        assert (shared / "y" / "z").stat().st_uid == v.uid
        v.kill()
        u.kill()
        assert v.uid is None
        assert u.uid is None, f"sandbox uid {uids[0]} stays leased after its REPL ended"
    finally:
        end_as_root(u, uids[0])
        end_as_root(v, uids[1])
        subprocess.run(["rm", "-rf", str(shared)], check=False)


# -- two uid ranges on one machine -------------------------------------------------------------------------------
def test_a_reaper_never_kills_a_repl_of_a_worker_with_the_next_uid_range() -> None:
    """Worker A leases from BASE (COUNT 1: its reaper runs as BASE+1), worker B from BASE+1 on the same machine: B's
    REPL would run as A's reaper uid, which A's reaper's kill(-1) reaches. Either A's lease is refused while B
    holds that uid, or ending A's REPL leaves B's alone."""
    base = _private_range(2)
    first = SandboxConfig(uid_base=base, uid_count=1)  # REPL uid base, its reaper base + 1
    second = SandboxConfig(uid_base=base + 1, uid_count=1)  # another worker on the machine, the next range
    honest = ReplProcess(attacker_cmd(), cwd=None, sandbox=second, max_output_bytes=1 << 24)
    other: ReplProcess | None = None
    try:
        assert honest.request("import Mathlib", None, deadline=_deadline()).env is not None
        try:
            other = ReplProcess(attacker_cmd(), cwd=None, sandbox=first, max_output_bytes=1 << 24)
        except SandboxUnavailable as exc:
            assert exc.transient and "in use" in str(exc)
        else:
            assert other.request("import Mathlib", None, deadline=_deadline()).env is not None
            other.kill()  # ends the first worker's REPL, and nothing else
            time.sleep(0.2)
        assert honest.alive(), "the first worker's sandbox killed the REPL of another worker"
        assert honest.request("import Mathlib", None, deadline=_deadline()).env is not None
    finally:
        end_as_root(honest, honest.uid)
        if other is not None:
            end_as_root(other, other.uid)


# -- a worker killed while it held a uid ----------------------------------------------------------------------------
def test_a_uid_of_a_killed_worker_is_leased_again_without_its_leftovers(tmp_path) -> None:
    """A worker SIGKILLed with a REPL running (no cleanup; the REPL left a setsid sleeper): its flock goes with it,
    the next worker leases the same uid, and that uid's new REPL starts with no process of the previous tenant."""
    base = _private_range(3)
    script = (
        "import sys, time\n"
        "from services.lean.process import ReplProcess, SandboxConfig\n"
        "from tests.test_lean_sandbox_attacks import attacker_cmd\n"
        f"process = ReplProcess(attacker_cmd(), cwd=None, sandbox=SandboxConfig(uid_base={base}, uid_count=1), "
        "max_output_bytes=1 << 24)\n"
        "process.request('import Mathlib\\n-- ATTACK_SLEEPER', None, deadline=time.monotonic() + 30)\n"
        "print(process.uid, flush=True)\n"
        "time.sleep(300)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    process = None
    try:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        assert line.strip().isdigit(), f"the first worker did not start its REPL (exit {worker.poll()})"
        uid = int(line)
        time.sleep(0.5)
        leftovers = running_as(uid)
        assert len(leftovers) >= 2  # the REPL and its sleeper
        worker.kill()  # no finally, no atexit: the lease's flock and nothing else goes
        worker.wait(timeout=10)
        process = ReplProcess(
            attacker_cmd(), cwd=None, sandbox=SandboxConfig(uid_base=base, uid_count=1), max_output_bytes=1 << 24
        )
        assert process.uid == uid
        assert process.request("import Mathlib", None, deadline=_deadline()).env is not None
        assert running_as(uid) == [process.pid], f"the previous tenant's {leftovers} still run beside the new REPL"
    finally:
        worker.kill()
        worker.wait(timeout=10)
        if worker.stdout is not None:
            worker.stdout.close()
        if process is not None:
            end_as_root(process, process.uid)
        kill_all_as_root(base)


# -- System V IPC ---------------------------------------------------------------------------------------------------
def _sysv_shm_of(uid: int | None) -> list[int]:
    """Ids of the System V shared memory segments `uid` owns (in the worker's IPC namespace)."""
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    header = Path("/proc/sysvipc/shm").read_text().splitlines()[0].split()
    return [
        int(f[header.index("shmid")]) for f in (line.split() for line in lines) if f[header.index("uid")] == str(uid)
    ]


def test_shared_memory_a_repl_created_does_not_outlive_it() -> None:
    """A System V shared memory segment (shmget) belongs to no file and no process: it goes only with the IPC
    namespace it was made in, so the sandbox's own one must end with the REPL."""
    process = ReplProcess(attacker_cmd(), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    uid = process.uid
    try:
        reply = process.request("import Mathlib\n-- ATTACK_SYSV_SHM", None, deadline=_deadline())
        shmid = int(_notes(reply)[0])
        assert shmid >= 0  # (the sandbox allows the segment itself)
        process.kill()
        left = _sysv_shm_of(uid)
        assert left == [], f"System V shared memory {left} of sandbox uid {uid} outlived its REPL"
    finally:
        end_as_root(process, uid)
        for shmid in _sysv_shm_of(uid):
            subprocess.run(["ipcrm", "-m", str(shmid)], check=False)
