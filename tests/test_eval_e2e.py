"""`oprover eval` end to end: the real gateway, workers and Redis, the stand-in generator and REPL
(standins/: their answers are the test's script, not the model's or Lean's). Real MiniF2F statements.

Each problem's samples are scripted to pass a known number of times (the generator's `times`), so pass@k is
known by hand; a run killed half-way (SIGKILL, no chance to clean up) and run again with the same --out ends
with the same results as an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import ROOT, ServiceHarness
from tests.shared_data import GOLDEN, read_jsonl

pytestmark = pytest.mark.slow

# problem name -> how many of its 4 samples the stand-in generator answers with a passing proof
PASSES = {"mathd_algebra_182": 1, "mathd_numbertheory_169": 2, "mathd_algebra_462": 0}
SAMPLES = 4
GENERATION_S = 1.0  # each stand-in generation takes a second, like a short real one


def _bench(tmp_path: Path) -> Path:
    records = read_jsonl(GOLDEN / "minif2f_problems.jsonl")
    chosen = [r for name in PASSES for r in records if r["name"] == name]
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return path


def _script(harness: ServiceHarness, bench: Path) -> None:
    """Fresh `times` for every problem: `PASSES[name]` passing answers, then failing ones."""
    rules = []
    for line in bench.read_text().splitlines():
        problem = json.loads(line)
        statement = problem["formal_statement"].rstrip()
        rules.append(
            {
                "match": problem["name"],
                "times": PASSES[problem["name"]],
                "delay_s": GENERATION_S,
                "content": f"```lean4\n{statement}\n  norm_num -- PASS_ME\n```",
            }
        )
        rules.append(
            {"match": problem["name"], "delay_s": GENERATION_S, "content": f"```lean4\n{statement}\n  simp\n```"}
        )
    harness.generator.script(rules)


def _eval(url: str, bench: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "api.cli", "eval", str(bench), "--url", url, "--out", str(out),
        "--attempts", str(SAMPLES), "--rounds", "1", "--top-k", "0", "--concurrency", "4", "--poll-s", "0.2",
    ]  # fmt: skip


def _outcome(out: Path) -> dict[str, tuple]:
    """What a results file says about each problem, without job ids and times (which differ run to run)."""
    outcome = {}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        statuses = sorted(s["status"] for s in record["samples"])
        verdicts = sorted(a["verdict"] for s in record["samples"] for a in s["attempts"])
        outcome[record["name"]] = (record["n"], record["c"], record["first_round"], tuple(statuses), tuple(verdicts))
    return outcome


def _wait_idle(harness: ServiceHarness, timeout_s: float = 60) -> None:
    """Until no generation is in flight (the killed run's jobs go on in the service until they end)."""
    deadline = time.monotonic() + timeout_s
    while any(r["finished_at"] is None for r in harness.generator.requests()):
        assert time.monotonic() < deadline, "the stand-in generator still has requests in flight"
        time.sleep(0.2)
    time.sleep(1.0)  # their verification


def test_eval_reports_hand_computed_pass_at_k_and_a_killed_run_resumes_to_the_same_results(
    harness: ServiceHarness, tmp_path: Path
) -> None:
    bench = _bench(tmp_path)
    url = harness.start_gateway()
    harness.start_worker("generate", concurrency=4)
    harness.start_worker("verify")

    # an uninterrupted run
    _script(harness, bench)
    whole = tmp_path / "whole.jsonl"
    plots = tmp_path / "plots"
    run = subprocess.run(
        [*_eval(url, bench, whole), "--plot", str(plots)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    # pass@1 = (1/4 + 2/4 + 0) / 3; pass@2 = (1 - C(3,2)/C(4,2) + 1 - C(2,2)/C(4,2) + 0) / 3 = (1/2 + 5/6) / 3;
    # pass@4 = (1 + 1 + 0) / 3
    assert "unbiased estimator" in run.stdout
    table = dict(
        line.split() for line in run.stdout.splitlines() if line.strip().startswith("pass@") and ":" not in line
    )
    assert table == {"pass@1": "25.0%", "pass@2": "44.4%", "pass@4": "66.7%"}, run.stdout
    assert "solved 2 of 3 problems" in run.stdout
    assert sorted(p.name for p in plots.iterdir()) == ["pass_at_k.png", "solves_by_round.png"]
    assert _outcome(whole) == {
        "mathd_algebra_182": (4, 1, 1, ("failed",) * 3 + ("proved",), ("fail",) * 3 + ("pass",)),
        "mathd_numbertheory_169": (4, 2, 1, ("failed",) * 2 + ("proved",) * 2, ("fail",) * 2 + ("pass",) * 2),
        "mathd_algebra_462": (4, 0, None, ("failed",) * 4, ("fail",) * 4),
    }
    line = json.loads(whole.read_text().splitlines()[0])
    sample = next(s for s in line["samples"] if s["status"] == "failed")
    assert sample["job_id"] and sample["why"].startswith("every round failed (round 1 fail)")
    assert sample["model"].startswith("standin-") and sample["lean"]["lean"] and sample["prompt_profile"]
    assert line["settings"] == {
        "attempts": 4, "rounds": 1, "top_k": 0, "prompt_profile": None, "lean_version": None,
        "exclude_benchmark": True,
    }  # fmt: skip

    # the same run, killed once its first problem is written
    _wait_idle(harness)
    _script(harness, bench)
    resumed = tmp_path / "resumed.jsonl"
    killed = subprocess.Popen(_eval(url, bench, resumed), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (resumed.exists() and resumed.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline and killed.poll() is None, "the first problem never ended"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
    finally:
        if killed.poll() is None:
            killed.kill()
        killed.communicate()
    written = resumed.read_text().count("\n")
    assert 1 <= written < len(PASSES), "killed half-way"
    _wait_idle(harness)
    _script(harness, bench)
    again = subprocess.run(_eval(url, bench, resumed), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"{written} already in {resumed}, skipped" in again.stdout
    assert _outcome(resumed) == _outcome(whole)
    assert len(resumed.read_text().splitlines()) == len(PASSES)


def test_compare_prints_the_difference_of_two_results_files(tmp_path: Path) -> None:
    from api.evaluation import Attempt, ProblemResult, Sample

    def line(name: str, proved: bool, rounds: int) -> str:
        sample = Sample(
            job_id="j",
            status="proved" if proved else "failed",
            proved_round=1 if proved else None,
            attempts=[Attempt(round=1, verdict="pass" if proved else "fail")],
        )
        return json.dumps(ProblemResult(name, [sample], {"attempts": 1, "rounds": rounds}).to_json()) + "\n"

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(line("p", True, 1) + line("q", False, 1))
    b.write_text(line("p", False, 2) + line("q", True, 2))
    run = subprocess.run(
        [sys.executable, "-m", "api.cli", "eval", "--compare", str(a), str(b)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "rounds: A 1  B 2" in run.stdout
    assert "solved by A alone (1): p" in run.stdout and "solved by B alone (1): q" in run.stdout


def test_eval_against_oprover_up_with_the_shipped_defaults_and_real_latencies(redis_url: str, tmp_path: Path) -> None:
    """`oprover up` as shipped (only where Redis, the generator and the REPL are), a generator answering in 3 s
    and a REPL that takes 2 s to start and 1 s a check: one problem is proved in round 1 by every sample, the
    other in round 2 after Lean's feedback, so pass@k is 100% and the solves by round are 1 then 2."""
    from standins.fake_repl import lean_cmd, write_table
    from standins.openai_server import StandinServer
    from tests.harness import OproverUp

    message = "linarith failed to find a contradiction"
    first, second = _bench(tmp_path).read_text().splitlines()[:2]
    bench = tmp_path / "two.jsonl"
    bench.write_text(first + "\n" + second + "\n")
    easy, hard = json.loads(first), json.loads(second)
    with StandinServer() as generator:
        generator.script(
            [
                {"match": message, "delay_s": 3.0,
                 "content": f"```lean4\n{hard['formal_statement'].rstrip()}\n  norm_num -- PASS_ME\n```"},
                {"match": hard["name"], "delay_s": 3.0,
                 "content": f"```lean4\n{hard['formal_statement'].rstrip()}\n  nlinarith\n```"},
                {"match": easy["name"], "delay_s": 3.0,
                 "content": f"```lean4\n{easy['formal_statement'].rstrip()}\n  ring -- PASS_ME\n```"},
            ]
        )  # fmt: skip
        table = write_table(
            tmp_path / "repl-table.json",
            [{"match": "PASS_ME", "outcome": "pass"}, {"match": "nlinarith", "outcome": "error", "message": message}],
            default="error",
            import_s=2.0,
            check_s=1.0,
        )
        up = OproverUp(redis_url=redis_url, workdir=tmp_path, generator_url=generator.url, lean_cmd=lean_cmd(table))
        try:
            up.start()
            out = tmp_path / "results.jsonl"
            run = subprocess.run(
                [sys.executable, "-m", "api.cli", "eval", str(bench), "--url", up.url, "--out", str(out),
                 "--attempts", "2", "--top-k", "0"],
                cwd=tmp_path, env=up.env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        finally:
            up.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    table_rows = dict(
        line.split() for line in run.stdout.splitlines() if line.strip().startswith("pass@") and ":" not in line
    )
    assert table_rows == {"pass@1": "100.0%", "pass@2": "100.0%"}, run.stdout
    assert "no contamination" in run.stdout
    rounds = [line.split() for line in run.stdout.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 2]
    assert rounds == [["1", "1"], ["2", "2"]], run.stdout
    records = {json.loads(line)["name"]: json.loads(line) for line in out.read_text().splitlines()}
    assert records[hard["name"]]["first_round"] == 2 and records[easy["name"]]["first_round"] == 1
