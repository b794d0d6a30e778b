"""The sandbox: each REPL under a uid of its own, without network, secrets or reach into other REPLs' files.

Stand-ins that are real processes probe it: `fake_repl`'s `probe` outcome connects to a TCP server this test runs
on the host's loopback and writes into a directory the worker owns; `standins/probing_repl.py` reads every
process's environment and tries to read, overwrite and replace another REPL's handoff file. Without the sandbox
they succeed (the controls), with it they do not. Switching uids needs root (or CAP_SETUID and CAP_SETGID), and
the network namespace needs root or unprivileged user namespaces: elsewhere these tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from services.domain import Verdict
from services.errors import LeanError
from services.lean.pool import ReplPool
from services.lean.process import PickleError, ReplProcess, SandboxConfig, child_environment
from services.lean.sandbox import HandoffFailed, can_switch_uids
from standins.fake_repl import lean_cmd, write_table
from standins.probing_repl import MARK, probing_cmd
from tests.harness import ROOT
from tests.lean_cases import STATEMENT, lean_settings, running_as, stand_in_checker


def _netns_available() -> bool:
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not can_switch_uids() or not _netns_available(),
    reason="needs root with CAP_SETUID/CAP_SETGID (to give each REPL a uid of its own) and network namespaces",
)
SHIPPED = SandboxConfig()  # the shipped defaults: own uids from 50000, network namespace
RULES: list[dict[str, Any]] = [{"match": "PASS_ME", "outcome": "pass"}]
TABLE: dict[str, Any] = {"rules": RULES, "default": "error"}


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[bool] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(True)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()


def probe(tmp_path, port: int, **settings) -> dict[str, str]:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755, exist_ok=True)
    rules = [{"match": "PROBE", "outcome": "probe", "connect": f"127.0.0.1:{port}", "write": str(outside / "x")}]
    with stand_in_checker(tmp_path, rules, **settings) as checker:
        code = "theorem target_thm (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  PROBE\n"
        result = checker.check(code, formal_statement=STATEMENT)
    assert result.verdict is not Verdict.PASS or result.messages  # the probe reports through an info message
    info = next(m for m in result.messages if m.severity == "info")
    return json.loads(info.data)


def test_without_the_sandbox_the_probe_reaches_network_and_disk(tmp_path, listener) -> None:
    port, accepted = listener
    seen = probe(tmp_path, port, sandbox=False)
    assert seen["network"] == "allowed" and accepted
    assert seen["write"] == "allowed" and seen["uid"] == "0"


def test_sandbox_blocks_network_and_writes_outside_the_temp_dir(tmp_path, listener) -> None:
    port, accepted = listener
    seen = probe(tmp_path, port)
    assert seen["network"].startswith("blocked") and not accepted
    assert seen["write"].startswith("blocked") and "Permission denied" in seen["write"]
    assert seen["tmpdir"].startswith("writable: /tmp/oprover-sandbox-")
    assert SHIPPED.uid_base <= int(seen["uid"]) < SHIPPED.uid_base + SHIPPED.uid_count
    assert not (tmp_path / "outside" / "x").exists()


def test_only_what_lean_needs_is_passed_to_the_repl() -> None:
    env = child_environment(
        {
            "PATH": "/bin",
            "LANG": "C",
            "ELAN_HOME": "/opt/elan",
            "LEAN_PATH": "/opt/lean/lib",
            "OPROVER_REDIS_URL": "redis://:pw@h",
            "REDIS_PASSWORD": "pw",
            "HF_TOKEN": "t",
            "LEAN_API_KEY": "k",
            "DATABASE_URL": "postgres://u:pw@h",  # named like nothing secret: still not Lean's business
            "AWS_SECRET_ACCESS_KEY": "s",
        }
    )
    assert env == {"PATH": "/bin", "LANG": "C", "ELAN_HOME": "/opt/elan", "LEAN_PATH": "/opt/lean/lib"}


def _report(reply) -> dict:
    return json.loads(next(m.data for m in reply.messages if '"probe": "probing_repl"' in m.data))


def _deadline() -> float:
    return time.monotonic() + 30


def test_each_repl_has_its_own_uid_and_cannot_read_or_replace_anothers_handoff(tmp_path) -> None:
    """REPL a writes its environment file (as for the replay); REPL b, running probing code, is told the exact
    path and tries to read, overwrite and replace it, and to read the worker's environment. All refused; the
    worker takes a's file with a's bytes, after every process of a has ended."""
    a = ReplProcess(probing_cmd(TABLE), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    b = ReplProcess(probing_cmd(TABLE), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    try:
        env = a.request("import Mathlib", None, deadline=_deadline()).env
        assert env is not None
        assert a.pickle(env, a.tmpdir / "candidate-1.olean", deadline=_deadline()).env == env
        handoff = a.tmpdir / "candidate-1.olean"
        original = handoff.read_bytes()  # (this test runs as root with every capability: it may look)
        assert a.uid is not None and b.uid is not None and len({a.uid, b.uid, os.geteuid()}) == 3
        assert handoff.stat().st_uid == a.uid
        assert (a.tmpdir.stat().st_uid, a.tmpdir.stat().st_mode & 0o777) == (a.uid, 0o700)

        report = _report(b.request(f"import Mathlib\n-- PROBE_PATH {handoff}", None, deadline=_deadline()))
        assert report["uid"] == b.uid and report["gid"] == b.uid
        assert report["wrote"] == []
        for attempt in (str(handoff), f"write {handoff}", f"replace {handoff}", f"{a.tmpdir}/"):
            assert report["denied"][attempt].startswith("PermissionError"), attempt
        assert str(handoff) not in report["read"]
        assert report["denied"][f"/proc/{os.getpid()}/environ"].startswith("PermissionError")  # the worker's
        assert f"/proc/{a.pid}/environ" in report["denied"]  # another REPL's

        copy = a.take_file("candidate-1.olean", tmp_path / "candidate.olean", 1 << 20, stop=True)
        assert copy.read_bytes() == original and not a.alive()
        assert not a.tmpdir.exists()  # removed with the REPL
    finally:
        a.kill()
        b.kill()


def test_without_own_uids_the_probe_replaces_anothers_handoff(tmp_path) -> None:
    """The control: REPLs that share a uid (here the sandbox is off) can rewrite each other's files, which is
    why the worker would then have replayed the attacker's bytes."""
    off = SandboxConfig(enabled=False)
    a = ReplProcess(probing_cmd(TABLE), cwd=None, sandbox=off, max_output_bytes=1 << 24)
    b = ReplProcess(probing_cmd(TABLE), cwd=None, sandbox=off, max_output_bytes=1 << 24)
    try:
        env = a.request("import Mathlib", None, deadline=_deadline()).env
        assert env is not None and a.pickle(env, a.tmpdir / "candidate-1.olean", deadline=_deadline()).env == env
        handoff = a.tmpdir / "candidate-1.olean"
        report = _report(b.request(f"import Mathlib\n-- PROBE_PATH {handoff}", None, deadline=_deadline()))
        assert f"replaced {handoff}" in report["wrote"]
        assert "environ" in "".join(report["read"])  # every process's environment, the worker's included
        copy = a.take_file("candidate-1.olean", tmp_path / "candidate.olean", 1 << 20, stop=True)
        assert copy.read_bytes() == MARK
    finally:
        a.kill()
        b.kill()


@pytest.mark.parametrize(
    ("mode", "why"),
    [("symlink", "opened safely"), ("fifo", "not a regular file"), ("missing", "no environment file")],
)
def test_a_handoff_that_is_not_a_regular_file_of_the_repl_is_refused(tmp_path, mode: str, why: str) -> None:
    process = ReplProcess(probing_cmd({**TABLE, "pickle": mode}), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    try:
        env = process.request("import Mathlib", None, deadline=_deadline()).env
        assert env is not None and process.pickle(env, process.tmpdir / "c.olean", deadline=_deadline()).env == env
        with pytest.raises(PickleError, match=why):
            process.take_file("c.olean", tmp_path / "c.olean", 1 << 20, stop=True)
        assert not (tmp_path / "c.olean").exists()
    finally:
        process.kill()


def test_a_handoff_owned_by_another_uid_is_refused(tmp_path) -> None:
    """A file in the REPL's dir that the REPL did not write (here: planted by root) is not taken."""
    process = ReplProcess(probing_cmd(TABLE), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    try:
        assert process.request("import Mathlib", None, deadline=_deadline()).env is not None
        (process.tmpdir / "c.olean").write_bytes(b"not the REPL's")
        with pytest.raises(PickleError, match=f"belongs to uid 0, not to uid {process.uid}"):
            process.take_file("c.olean", tmp_path / "c.olean", 1 << 20, stop=False)
    finally:
        process.kill()


def test_processes_a_repl_left_outside_its_process_group_end_with_it() -> None:
    """`setsid` + a double fork leaves the process group; the uid of its own still finds it."""
    escape = "(setsid sleep 300 &) ; exec " + probing_cmd(TABLE)
    process = ReplProcess(f"sh -c {json.dumps(escape)}", cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    uid = process.uid
    try:
        assert process.request("import Mathlib", None, deadline=_deadline()).env is not None
        assert running_as(uid)  # the REPL and the escaped sleep
        assert any(_pgid(pid) != process.pid for pid in running_as(uid))
    finally:
        process.kill()
    assert running_as(uid) == []


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


def test_a_worker_that_cannot_switch_uids_refuses_to_start_unless_told_to_share(tmp_path) -> None:
    """Root without CAP_SETUID/CAP_SETGID (what `cap_drop: [ALL]` alone gives): the pool fails closed with one
    line naming the fix; with OPROVER_LEAN_SANDBOX_SHARED_UID=true its REPLs run under its own uid."""
    table = write_table(tmp_path / "t.json", RULES, default="error")
    script = (
        "import sys, json\n"
        "from services.lean.pool import ReplPool\n"
        "from services.settings import LeanSettings\n"
        "from services.errors import LeanError\n"
        f"settings = LeanSettings(cmd={lean_cmd(table)!r}, pool_size=1, spares=0, "
        "sandbox_shared_uid=sys.argv[1] == 'shared')\n"
        "try:\n"
        "    pool = ReplPool(settings)\n"
        "except LeanError as exc:\n"
        "    print('refused:', exc); sys.exit(3)\n"
        "pool.start()\n"
        "with pool.lease() as lease:\n"
        "    print('uid', lease.process.uid)\n"
        "pool.close()\n"
    )
    dropped = ["setpriv", "--bounding-set", "-setuid,-setgid", "--inh-caps", "-setuid,-setgid", "--"]
    run = [*dropped, sys.executable, "-c", script]
    refused = subprocess.run([*run, "own"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 3, refused.stderr
    line = refused.stdout.strip()
    assert line.count("\n") == 0 and "cannot run REPLs under uids of their own" in line
    assert "OPROVER_LEAN_SANDBOX_SHARED_UID=true" in line
    shared = subprocess.run([*run, "shared"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout.strip() == "uid None"  # no uid of its own: the worker's
    assert "REPLs run under the worker's uid" in shared.stderr


def test_a_uid_range_past_the_last_uid_is_refused_at_start(tmp_path) -> None:
    table = write_table(tmp_path / "t.json", RULES)
    with pytest.raises(LeanError, match="not usable"):
        ReplPool(lean_settings(table, sandbox_uid_base=2**32 - 5, sandbox_uid_count=10))


# -- what an unsandboxed REPL on the same machine may do to live checks -----------------------------------------
def test_an_unsandboxed_probe_beside_a_check_leaves_its_genuine_pass_alone(tmp_path) -> None:
    """What turned 41 genuine passes of a load test into `error` ("File exists: /tmp/oprover-replay-…/candidate.olean",
    "the environment file belongs to uid 0"): the control's probing REPL above, unsandboxed and so running as root
    beside it, wrote `candidate.olean` into every live replay dir and replaced every file in every live private dir
    on the machine. Here it runs, sent a command every 50 ms, while the real checker (shipped sandbox, stand-in REPL
    at a second per check) checks a proof that passes: the pass must stand, and nothing of the check be touched."""
    vandal = ReplProcess(probing_cmd(TABLE), cwd=None, sandbox=SandboxConfig(enabled=False), max_output_bytes=1 << 24)
    done = threading.Event()
    swept: list[dict[str, Any]] = []

    def sweep() -> None:
        while not done.is_set():
            swept.append(_report(vandal.request("import Mathlib", None, deadline=_deadline())))
            time.sleep(0.05)

    thread = threading.Thread(target=sweep, daemon=True)
    try:
        with stand_in_checker(tmp_path, RULES, table={"check_s": 1.0}) as checker:
            checker.start()
            thread.start()
            result = checker.check(
                "theorem target_thm (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  PASS_ME\n", formal_statement=STATEMENT
            )
    finally:
        done.set()
        thread.join(timeout=30)
        vandal.kill()
    assert result.verdict is Verdict.PASS, result.detail
    assert swept, "the probe never ran beside the check"
    looked = [path for report in swept for path in report["read"] if path.startswith("/tmp/oprover-replay-")]
    assert looked, "the probe never saw the check's replay dir (nothing was tested)"
    written = [path for report in swept for path in report["wrote"] if "/tmp/oprover-" in path]
    assert written == [], f"the unsandboxed probe wrote into other checks' files: {written[:5]}"


def test_a_file_left_at_the_handoffs_destination_is_no_verdict_and_is_not_removed(tmp_path) -> None:
    """The worker's side of a handoff failing (here: its destination exists, as a vandal's file did) says nothing
    about the proof: `HandoffFailed` (the checker retries the step), not `PickleError` (a refused file, the proof's
    doing); and the file found there is not the worker's to delete."""
    process = ReplProcess(probing_cmd(TABLE), cwd=None, sandbox=SHIPPED, max_output_bytes=1 << 24)
    planted = tmp_path / "candidate.olean"
    planted.write_bytes(b"left here by someone else")
    try:
        env = process.request("import Mathlib", None, deadline=_deadline()).env
        assert env is not None and process.pickle(env, process.tmpdir / "c.olean", deadline=_deadline()).env == env
        with pytest.raises(HandoffFailed, match="cannot be created") as caught:
            process.take_file("c.olean", planted, 1 << 20, stop=True)
        assert not isinstance(caught.value, PickleError)
        assert planted.read_bytes() == b"left here by someone else"
    finally:
        process.kill()
