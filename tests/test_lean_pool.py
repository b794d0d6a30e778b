"""The pool under load and abuse: hangs, crashes, memory, floods, garbage, concurrency, recycling, start-up."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from services.domain import Verdict
from services.errors import LeanError, RequestError
from services.lean import LeanChecker
from standins.fake_repl import write_table
from tests.lean_cases import GOOD_PROOF, PASS_POSITIVITY, STATEMENT, lean_settings, stand_in_checker

RULES: list[dict[str, Any]] = [
    {"match": "HANG_ME", "outcome": "hang"},
    {"match": "CRASH_ME", "outcome": "crash"},
    {"match": "FLOOD_ME", "outcome": "flood", "bytes": 200_000},
    {"match": "GARBAGE_ME", "outcome": "garbage"},
    {"match": "BLOW_UP", "outcome": "memory", "memory_mb": 4096},
    {"match": "GROW_ME", "outcome": "error", "message": "linarith failed", "rss_mb": 120},
    {"match": "SLOW_ME", "outcome": "pass", "check_s": 0.4},
    {"match": "SLOW_NO", "outcome": "error", "check_s": 0.4},
    {"match": "NOPE", "outcome": "error", "message": "linarith failed"},
    PASS_POSITIVITY,
]


def proof(tactic: str) -> str:
    return f"theorem target_thm (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  {tactic}\n"


def pids(checker: LeanChecker) -> set[int]:
    return {r.process.pid for r in list(checker.pool._ready.queue)}


@pytest.mark.timing  # the kill lands within 2 s of the 1 s timeout
def test_hung_check_is_killed_at_its_timeout_and_replaced(tmp_path) -> None:
    with stand_in_checker(tmp_path, RULES, timeout_s=1.0) as checker:
        checker.start()
        before = pids(checker)
        started = time.monotonic()
        result = checker.check(proof("HANG_ME"), formal_statement=STATEMENT)
        assert result.verdict is Verdict.TIMEOUT
        assert 1.0 <= time.monotonic() - started < 3.0
        assert "time limit" in result.feedback
        after = checker.check(GOOD_PROOF, formal_statement=STATEMENT)
        assert after.verdict is Verdict.PASS
        assert pids(checker).isdisjoint(before)  # the hung process is gone, a new one serves
        assert checker.pool.stats["killed"] == 1


@pytest.mark.timing  # a 0.5 s timeout answered within 5 s, REPL start included
def test_timeout_argument_overrides_the_setting(tmp_path) -> None:
    with stand_in_checker(tmp_path, RULES, timeout_s=30.0) as checker:
        started = time.monotonic()
        result = checker.check(proof("HANG_ME"), formal_statement=STATEMENT, timeout_s=0.5)
        assert result.verdict is Verdict.TIMEOUT and time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("tactic", "kind"),
    [("CRASH_ME", "crashed"), ("FLOOD_ME", "size limit"), ("GARBAGE_ME", "could not be read")],
    ids=["crash", "output-cap", "unparseable"],
)
def test_broken_repl_is_replaced_and_the_next_proof_is_checked_normally(tmp_path, tactic, kind) -> None:
    with stand_in_checker(tmp_path, RULES, max_output_bytes=64 * 1024) as checker:
        result = checker.check(proof(tactic), formal_statement=STATEMENT)
        assert result.verdict is Verdict.ERROR
        assert kind in result.detail
        assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS


def test_memory_blow_up_is_stopped_by_the_address_space_limit(tmp_path) -> None:
    with stand_in_checker(tmp_path, RULES, address_space_mb=400) as checker:
        result = checker.check(proof("BLOW_UP"), formal_statement=STATEMENT)
        assert result.verdict is Verdict.ERROR and "crashed" in result.detail
        assert "out of memory" in result.detail
        assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS


def test_memory_blow_up_is_stopped_by_the_rss_watchdog(tmp_path) -> None:
    with stand_in_checker(tmp_path, RULES, max_rss_mb=300) as checker:
        result = checker.check(proof("BLOW_UP"), formal_statement=STATEMENT)
        assert result.verdict is Verdict.ERROR and "memory limit" in result.detail
        assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS


def test_repl_above_the_rss_limit_is_recycled_after_its_check(tmp_path) -> None:
    with stand_in_checker(tmp_path, RULES, max_rss_mb=100) as checker:
        checker.start()
        first = pids(checker)
        # The leak is there when the compile's reply is sent. Measured after the check, the REPL is recycled; a
        # loaded machine may make that reply take longer than the watchdog's 0.2 s, and then the watchdog ends it
        # mid-check instead. Either way it never serves another check.
        result = checker.check(proof("GROW_ME"), formal_statement=STATEMENT)
        if result.verdict is Verdict.FAIL:
            assert "linarith failed" in result.feedback and checker.pool.stats["recycled"] == 1
        else:
            assert result.verdict is Verdict.ERROR and "memory limit" in result.detail
            assert checker.pool.stats["killed"] == 1
        assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS
        assert pids(checker).isdisjoint(first)


def test_repl_is_recycled_after_max_checks(tmp_path) -> None:
    with stand_in_checker(tmp_path, RULES, max_checks_per_repl=3) as checker:
        for _ in range(7):  # failing checks: a claimed pass retires its REPL anyway (tests/test_lean_replay.py)
            assert checker.check(proof("NOPE"), formal_statement=STATEMENT).verdict is Verdict.FAIL
        assert checker.pool.stats["recycled"] == 2
        assert checker.pool.stats["spawned"] >= 3


@pytest.mark.timing  # 4 checks in under 2.8 s
def test_several_checks_in_flight_and_a_hang_does_not_delay_the_others(tmp_path) -> None:
    with stand_in_checker(tmp_path, RULES, pool_size=2, spares=1, timeout_s=3.0) as checker:
        checker.start()
        results: dict[str, Verdict] = {}

        def run(key: str, tactic: str) -> None:
            results[key] = checker.check(proof(tactic), formal_statement=STATEMENT).verdict

        hang = threading.Thread(target=run, args=("hang", "HANG_ME"))
        hang.start()
        started = time.monotonic()
        for k in range(4):
            run(f"slow{k}", "SLOW_NO")  # one after another on the second REPL while the first hangs
        assert time.monotonic() - started < 2.8
        hang.join()
        assert results.pop("hang") is Verdict.TIMEOUT
        assert set(results.values()) == {Verdict.FAIL}
        assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS


@pytest.mark.timing  # 0.2 s between in parallel and in a row
def test_checks_run_in_parallel(tmp_path) -> None:
    with stand_in_checker(tmp_path, RULES, pool_size=2, spares=0) as checker:
        checker.start()
        while checker.pool._ready.qsize() < 2:
            time.sleep(0.01)
        # Failing checks: a claimed pass also costs the trusted path (tests/test_lean_replay.py).
        threads = [
            threading.Thread(target=checker.check, args=(proof("SLOW_NO"),), kwargs={"formal_statement": STATEMENT})
            for _ in range(4)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert time.monotonic() - started < 1.4  # 4 x 0.4 s on 2 REPLs, not 1.6 s in a row


def test_request_headers_get_their_own_environment(tmp_path) -> None:
    with stand_in_checker(tmp_path, RULES) as checker:
        header = "import Mathlib\nimport Aesop\nset_option maxHeartbeats 0\nopen Real\n"
        failed = checker.check(proof("NOPE"), formal_statement=STATEMENT, header=header)
        assert failed.verdict is Verdict.FAIL and failed.compiled.startswith(header.rstrip("\n") + "\n\n")
        repl = next(iter(checker.pool._ready.queue))
        assert "set_option maxHeartbeats 0\nopen Real" in repl.header_envs  # kept by the reused process
        result = checker.check(GOOD_PROOF, formal_statement=STATEMENT, header=header)
        assert result.verdict is Verdict.PASS
        assert result.compiled.startswith(header.rstrip("\n") + "\n\n")
        with pytest.raises(RequestError) as caught:
            checker.check(GOOD_PROOF, formal_statement=STATEMENT, header="import MyPrivateLib\n")
        assert caught.value.param == "header"


def test_plain_code_without_a_statement_checks_every_theorem(tmp_path) -> None:
    rules = [{"match": "positivity", "outcome": "pass"}, {"match": "trivial", "outcome": "pass"}]
    with stand_in_checker(tmp_path, rules) as checker:
        code = "theorem a : True := trivial\n\ntheorem b (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by positivity\n"
        result = checker.check(code)
        assert result.verdict is Verdict.PASS and result.axioms == ["propext", "Classical.choice", "Quot.sound"]
        assert checker.check("example : True := trivial").verdict is Verdict.REJECTED


def test_versions_are_announced(tmp_path) -> None:
    with stand_in_checker(tmp_path, RULES, table={"lean_version": "4.15.0-fake_repl"}) as checker:
        checker.start()
        assert checker.versions()["lean"] == "v4.15.0-fake_repl"
        result = checker.check(GOOD_PROOF, formal_statement=STATEMENT)
        assert result.versions["lean"] == "v4.15.0-fake_repl"
        assert result.to_json()["versions"] == result.versions


def test_no_repl_can_start_raises_a_transient_lean_error(tmp_path) -> None:
    table = write_table(tmp_path / "t.json", RULES)
    settings = lean_settings(table, cmd="/bin/false")
    checker = LeanChecker(settings)
    try:
        with pytest.raises(LeanError) as caught:
            checker.check(GOOD_PROOF, formal_statement=STATEMENT)
        assert caught.value.transient
        with pytest.raises(LeanError):
            checker.health()
    finally:
        checker.close()


def test_missing_command_is_a_permanent_lean_error(tmp_path) -> None:
    table = write_table(tmp_path / "t.json", RULES)
    checker = LeanChecker(lean_settings(table, cmd="/nonexistent/repl"))
    try:
        with pytest.raises(LeanError) as caught:
            checker.start()
        assert not caught.value.transient
    finally:
        checker.close()
    with pytest.raises(LeanError):
        LeanChecker(lean_settings(table, cmd=None))


def test_header_that_does_not_import_is_a_permanent_lean_error(tmp_path) -> None:
    table = write_table(tmp_path / "t.json", RULES)
    checker = LeanChecker(lean_settings(table, header="import Mathlib\nopen Real\ntheorem broken : False := by simp"))
    try:
        with pytest.raises(LeanError) as caught:
            checker.start()
        assert not caught.value.transient and "header" in str(caught.value)
    finally:
        checker.close()


def test_a_check_cut_off_by_the_job_timeout_never_hands_its_reply_to_the_next(tmp_path) -> None:
    """RQ's TimerDeathPenalty raises inside the worker thread mid-request; that REPL must not be reused."""
    from rq.timeouts import JobTimeoutException, TimerDeathPenalty

    with stand_in_checker(
        tmp_path, [{"match": "SLOW_FAIL", "outcome": "error", "check_s": 1.5}, PASS_POSITIVITY], pool_size=1, spares=0
    ) as checker:
        checker.start()
        outcome: list[BaseException] = []

        def cut_off() -> None:
            try:
                with TimerDeathPenalty(0.5, JobTimeoutException):
                    checker.check(proof("SLOW_FAIL"), formal_statement=STATEMENT)
            except JobTimeoutException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=cut_off)
        thread.start()
        thread.join(timeout=30)
        assert outcome, "the check should have been cut off"
        for _ in range(3):  # with the stale reply handed on, these would read SLOW_FAIL's error
            assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS
