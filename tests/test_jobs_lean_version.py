"""A verify worker serves only the Lean its REPL runs: another version is a refusal to start, never a `pass` in
the announced version's name (services/lean/version.py defines the comparison)."""

from __future__ import annotations

import pytest

from services import keys
from services.lean.version import same_lean
from tests.harness import ServiceHarness


@pytest.mark.parametrize(
    ("announced", "reported", "same"),
    [
        ("v4.15.0", "v4.15.0", True),
        ("v4.15.0", "4.15.0", True),  # `Lean.versionString` has no `v`
        ("4.15.0", "v4.15.0", True),
        ("v4.15.0", "v4.15.0-fake_repl", True),  # the stand-in's build label names no other Lean
        ("v4.15.0", "v4.9.0", False),
        ("v4.15.0", "4.15.1", False),
        ("v4.15.0", "4.15.0-rc1", False),  # a release candidate is not the release
        ("v4.15.0-rc1", "4.15.0-rc1", True),
        ("v4.15.0-rc1", "4.15.0-rc2", False),
        ("v4.16.0-nightly-2024-12-01", "4.16.0-nightly-2024-12-01", True),
        ("v4.16.0", "4.16.0-nightly-2024-12-01", False),
        ("v4.15.0", None, False),  # the REPL did not say: fail closed
        ("v4.15.0", "", False),
        ("v4.15.0", "unknown", False),
        ("latest", "4.15.0", False),
    ],
)
def test_which_versions_are_the_same_lean(announced: str, reported: str | None, same: bool) -> None:
    assert same_lean(announced, reported) is same


@pytest.mark.parametrize("repl_version", ["4.9.0", "4.15.0-rc1"])
def test_a_worker_whose_repl_runs_another_lean_refuses_to_start(harness: ServiceHarness, repl_version: str) -> None:
    harness.lean_rules([{"match": "PASS_ME", "outcome": "pass"}], lean_version=repl_version)  # announced: v4.15.0
    with pytest.raises(RuntimeError, match="verify-worker exited with 1"):
        harness.start_worker("verify", concurrency=1)
    log = harness.log("verify-worker")
    assert "Traceback" not in log
    [line] = [line for line in log.splitlines() if "refusing" in line]
    assert " ERROR " in line and "not starting" in line
    assert f"the REPL runs Lean v{repl_version}, but OPROVER_LEAN_VERSION is v4.15.0" in line
    # It never offered itself: not to the gateway's version routing, not to RQ.
    assert harness.redis.zcard(keys.LEAN_WORKERS) == 0
    assert not any(key.startswith(b"rq:worker:verify") for key in harness.redis.scan_iter("rq:worker:*"))
