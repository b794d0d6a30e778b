"""The pure parts of `oprover eval` (api/evaluation.py): the unbiased pass@k estimator against hand-computed
values, the summary table, resuming a results file, and comparing two runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.evaluate import EvalOptions, EvalRun, problem_names
from api.evaluation import (
    Attempt,
    ProblemResult,
    Sample,
    format_comparison,
    format_summary,
    ks_up_to,
    pass_at_k,
    read_results,
    summarize,
)


def _problem(name: str, passes: list[int | None], settings: dict | None = None) -> ProblemResult:
    """A problem whose samples passed at the given rounds (None: did not pass, after two failed rounds)."""
    samples = []
    for i, round_ in enumerate(passes):
        rounds = [1] if round_ == 1 else [1, 2]
        attempts = [
            Attempt(
                round=r,
                verdict="pass" if r == round_ else "fail",
                prompt_tokens=100,
                completion_tokens=50,
                generate_ms=300,
                verify_ms=100,
            )
            for r in rounds
        ]
        samples.append(
            Sample(
                job_id=f"{name}-{i}",
                status="proved" if round_ else "failed",
                proved_round=round_,
                why=None if round_ else "every round failed",
                wall_s=2.0,
                attempts=attempts,
                model="standin-oprover",
                lean={"lean": "v4.15.0"},
            )
        )
    return ProblemResult(name=name, samples=samples, settings=settings or {"attempts": len(passes)}, wall_s=4.0)


def test_pass_at_k_is_the_unbiased_estimator_on_hand_computed_cases() -> None:
    # n = 4 samples, c = 1 passed: pass@1 = 1 - C(3,1)/C(4,1) = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    # not the biased 1 - (1 - c/n)^k, which would give 1 - 0.75^2 = 0.4375 here
    assert pass_at_k(4, 1, 2) != pytest.approx(1 - 0.75**2)
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)


def test_ks_are_powers_of_two_up_to_n_and_n_itself() -> None:
    assert ks_up_to(1) == [1]
    assert ks_up_to(4) == [1, 2, 4]
    assert ks_up_to(6) == [1, 2, 4, 6]


def test_summary_averages_pass_at_k_over_problems_and_counts_solves_by_round() -> None:
    results = [_problem("a", [2, None, None, None]), _problem("b", [1, 2, None, None]), _problem("c", [None] * 4)]
    summary = summarize(results)
    assert summary.pass_at[1] == pytest.approx((0.25 + 0.5 + 0) / 3)
    assert summary.pass_at[2] == pytest.approx((0.5 + 5 / 6 + 0) / 3)
    assert summary.pass_at[4] == pytest.approx(2 / 3)
    assert summary.solved_by_round == {1: 1, 2: 2}
    assert summary.lean_share == pytest.approx(0.25)
    assert summary.not_proved == {"failed": 9}
    text = format_summary(summary)
    assert "unbiased estimator" in text and "n = 4 independent samples" in text
    assert "25.0%" in text and "44.4%" in text and "66.7%" in text


def test_a_results_line_survives_the_round_trip_and_a_cut_off_last_line_is_dropped(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    first, second = _problem("a", [1, None]), _problem("b", [None, None])
    out.write_text(json.dumps(first.to_json()) + "\n" + json.dumps(second.to_json())[:40])
    assert [r.to_json() for r in read_results(out)] == [first.to_json()]
    run = EvalRun(None, EvalOptions(attempts=2), bench="b.jsonl", out=out)
    first.settings = EvalOptions(attempts=2).settings()
    out.write_text(json.dumps(first.to_json()) + "\n" + '{"name": "b", "sa')
    assert [r.name for r in run.done_before(["a", "b"])] == ["a"]
    assert out.read_text().endswith("}\n")  # the next line appended starts on its own line


def test_resuming_with_other_settings_is_refused_naming_them(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    done = _problem("a", [1, None], settings=EvalOptions(attempts=2, rounds=4).settings())
    out.write_text(json.dumps(done.to_json()) + "\n")
    run = EvalRun(None, EvalOptions(attempts=2, rounds=8), bench="b.jsonl", out=out)
    with pytest.raises(ValueError, match="rounds 4 there, 8 now"):
        run.done_before(["a"])


def test_a_problem_named_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="names problem 'x' twice"):
        problem_names([{"name": "x"}, {"name": "y"}, {"name": "x"}], "bench.jsonl")


def test_comparison_names_the_settings_that_differ_and_the_problems_each_solved_alone() -> None:
    a = [_problem("p", [1, None], {"rounds": 2}), _problem("q", [None, None], {"rounds": 2})]
    b = [_problem("p", [None, None], {"rounds": 4}), _problem("q", [2, 2], {"rounds": 4}), _problem("r", [1, 1])]
    text = format_comparison("a.jsonl", a, "b.jsonl", b)
    assert "rounds: A 2  B 4" in text
    assert "2 in both" in text
    assert "solved by A alone (1): p" in text
    assert "solved by B alone (1): q" in text


def test_plots_are_written_as_png_files(tmp_path: Path) -> None:
    from api.eval_plots import write_plots

    paths = write_plots([_problem("a", [2, None]), _problem("b", [1, 1])], tmp_path / "plots")
    assert [p.name for p in paths] == ["pass_at_k.png", "solves_by_round.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_a_sample_not_proved_says_why() -> None:
    from api.evaluate import sample_from_job

    attempt = {"chain": 0, "round": 1, "verdict": None, "model": "standin-oprover", "usage": {"prompt_tokens": 7}}
    errored = sample_from_job(
        {"id": "j1", "status": "error", "error": "generator unreachable at http://gpu:30000 (round 1 of chain 0)",
         "created_at": 10.0, "finished_at": 12.5, "attempts": [attempt]}
    )  # fmt: skip
    assert errored.why == "generator unreachable at http://gpu:30000 (round 1 of chain 0)"
    assert (errored.wall_s, errored.attempts[0].prompt_tokens, errored.model) == (2.5, 7, "standin-oprover")
    failed = sample_from_job(
        {"id": "j2", "status": "failed", "created_at": 0.0, "finished_at": 1.0,
         "attempts": [{**attempt, "verdict": "fail", "feedback": "linarith failed\nmore"}]}
    )  # fmt: skip
    assert failed.why == "every round failed (round 1 fail); last feedback: linarith failed"


def test_bad_numbers_of_samples_are_refused_naming_the_flag(tmp_path: Path) -> None:
    import subprocess
    import sys

    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"name": "t", "formal_statement": "theorem t : True := by\n"}) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "api.cli", "eval", str(bench), "--attempts", "0", "--url", "http://127.0.0.1:9"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip() == "oprover eval: --attempts must be at least 1 (got 0)"
