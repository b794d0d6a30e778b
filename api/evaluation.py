"""What an evaluation run measured, independent of how it ran: result records, pass@k, the summary table, and the
comparison of two runs. Pure functions over the lines of a results file (`oprover eval --out`), so they are tested
on hand-made records and used the same way on a finished run, a resumed one, or two runs being compared.

One results line is one problem (`ProblemResult.to_json`). Its `samples` are independent proof jobs of one
chain each (see api/evaluate.py for why a problem's n samples are n jobs rather than one job of n chains): the
unbiased pass@k estimator needs every sample run to its end, and a job of n chains stops its other chains as soon
as one passes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from math import comb
from pathlib import Path
from typing import Any

# A line's `settings` must match for a run to be resumed into the same file, and are what `--compare` diffs.
# `exclude_benchmark`: whether the run kept every problem of the benchmark out of retrieval (api/evaluate.py).
SETTING_FIELDS = ("attempts", "rounds", "top_k", "prompt_profile", "lean_version", "exclude_benchmark")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k).

    It is the probability that k samples drawn without replacement from the n include a passing one (Chen et
    al. 2021, "Evaluating Large Language Models Trained on Code"); averaged over problems it is unbiased, where
    1 - (1 - c/n)^k is not.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def ks_up_to(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself when it is not a power of two."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


@dataclass
class Attempt:
    """One round of one sample: what the model spent and what Lean said."""

    round: int
    verdict: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retrieve_ms: int = 0
    generate_ms: int = 0
    verify_ms: int = 0


@dataclass
class Sample:
    """One proof job of one chain: its end, the round that proved it, and each round's attempt."""

    job_id: str | None
    status: str  # proved | failed | cancelled | error | rejected | expired
    proved_round: int | None = None
    why: str | None = None  # when not proved: the job's error, the HTTP error, or the verdicts that ended it
    wall_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    model: str | None = None
    lean: dict[str, str] | None = None  # Lean, Mathlib and repl versions of the checker that judged it
    prompt_profile: str | None = None  # the profile its prompts were rendered with (the deployment's, if unset)

    @property
    def proved(self) -> bool:
        return self.status == "proved"


@dataclass
class ProblemResult:
    """One results line: a problem, its n samples, and the run's settings."""

    name: str
    samples: list[Sample]
    settings: dict[str, Any]
    wall_s: float = 0.0  # from its first submission to its last sample's end

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def c(self) -> int:
        return sum(1 for s in self.samples if s.proved)

    @property
    def solved(self) -> bool:
        return self.c > 0

    @property
    def first_round(self) -> int | None:
        """The earliest round at which any sample passed."""
        rounds = [s.proved_round for s in self.samples if s.proved and s.proved_round is not None]
        return min(rounds) if rounds else None

    def tokens(self) -> int:
        return sum(a.prompt_tokens + a.completion_tokens for s in self.samples for a in s.attempts)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "solved": self.solved,
            "n": self.n,
            "c": self.c,
            "first_round": self.first_round,
            "wall_s": round(self.wall_s, 3),
            "settings": self.settings,
            "samples": [asdict(s) for s in self.samples],
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ProblemResult:
        samples = []
        for raw in record["samples"]:
            raw = dict(raw)
            attempts = [Attempt(**a) for a in raw.pop("attempts", [])]
            samples.append(Sample(**raw, attempts=attempts))
        return cls(name=record["name"], samples=samples, settings=record["settings"], wall_s=record.get("wall_s", 0))


def read_results(path: Path) -> list[ProblemResult]:
    """The complete lines of a results file; a last line cut off by an interrupted write is ignored (it is the
    problem that was being written, and a resumed run does it again)."""
    if not path.exists():
        return []
    results = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            results.append(ProblemResult.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path} line {number} is not a results record ({exc})") from None
    return results


def settings_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {key: (a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}


# --- the summary -----------------------------------------------------------------------------------------------------
@dataclass
class Summary:
    problems: int
    solved: int
    n: int  # samples per problem (the smallest, if lines differ)
    pass_at: dict[int, float]  # k -> mean unbiased pass@k over the problems
    solved_by_round: dict[int, int]  # round -> problems first solved at or before it (cumulative)
    tokens_solved: float  # mean tokens per solved problem
    tokens_unsolved: float
    wall_solved_s: float  # mean wall time per solved problem
    wall_unsolved_s: float
    lean_share: float  # Lean's part of the time the service spent on the attempts (retrieve + generate + verify)
    not_proved: dict[str, int]  # sample end -> count, over samples that did not prove
    models: list[str]
    lean: list[str]
    profiles: list[str]


def summarize(results: Sequence[ProblemResult]) -> Summary:
    if not results:
        raise ValueError("no results to summarize")
    n = min(r.n for r in results)
    pass_at = {k: sum(pass_at_k(r.n, r.c, k) for r in results) / len(results) for k in ks_up_to(n)} if n else {}
    rounds = max([a.round for r in results for s in r.samples for a in s.attempts] or [0])
    firsts = [r.first_round for r in results if r.first_round is not None]
    solved_by_round = {rnd: sum(1 for f in firsts if f <= rnd) for rnd in range(1, rounds + 1)}
    solved = [r for r in results if r.solved]
    unsolved = [r for r in results if not r.solved]
    lean_ms = sum(a.verify_ms for r in results for s in r.samples for a in s.attempts)
    all_ms = sum(a.retrieve_ms + a.generate_ms + a.verify_ms for r in results for s in r.samples for a in s.attempts)
    not_proved: dict[str, int] = {}
    for r in results:
        for s in r.samples:
            if not s.proved:
                not_proved[s.status] = not_proved.get(s.status, 0) + 1
    return Summary(
        problems=len(results),
        solved=len(solved),
        n=n,
        pass_at=pass_at,
        solved_by_round=solved_by_round,
        tokens_solved=_mean(r.tokens() for r in solved),
        tokens_unsolved=_mean(r.tokens() for r in unsolved),
        wall_solved_s=_mean(r.wall_s for r in solved),
        wall_unsolved_s=_mean(r.wall_s for r in unsolved),
        lean_share=lean_ms / all_ms if all_ms else 0.0,
        not_proved=not_proved,
        models=sorted({s.model for r in results for s in r.samples if s.model}),
        profiles=sorted({s.prompt_profile for r in results for s in r.samples if s.prompt_profile}),
        lean=sorted({_lean_label(s.lean) for r in results for s in r.samples if s.lean}),
    )


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


def _lean_label(lean: dict[str, str]) -> str:
    return " ".join(f"{key} {value}" for key, value in sorted(lean.items()))


def format_summary(summary: Summary, settings: dict[str, Any] | None = None) -> str:
    lines = [
        f"solved {summary.solved} of {summary.problems} problems ({100 * summary.solved / summary.problems:.1f}%)",
        f"pass@k: unbiased estimator 1 - C(n-c,k)/C(n,k) from n = {summary.n} independent samples per problem, "
        "averaged over problems",
    ]
    lines += _table(["", "estimate"], [[f"pass@{k}", f"{100 * v:.1f}%"] for k, v in summary.pass_at.items()])
    lines.append("problems solved by round (cumulative: some sample passed at or before it)")
    lines += _table(["round", "solved"], [[str(r), str(c)] for r, c in summary.solved_by_round.items()])
    lines += _table(
        ["", "problems", "tokens/problem", "wall s/problem"],
        [
            ["solved", str(summary.solved), f"{summary.tokens_solved:.0f}", f"{summary.wall_solved_s:.1f}"],
            [
                "unsolved",
                str(summary.problems - summary.solved),
                f"{summary.tokens_unsolved:.0f}",
                f"{summary.wall_unsolved_s:.1f}",
            ],
        ],
    )
    lines.append(f"Lean's share of the attempts' time (retrieve + generate + verify): {100 * summary.lean_share:.1f}%")
    if summary.not_proved:
        ends = ", ".join(f"{status} {count}" for status, count in sorted(summary.not_proved.items()))
        lines.append(f"samples not proved: {ends}")
    lines.append(
        f"model: {', '.join(summary.models) or 'unknown'}; prompt profile: {', '.join(summary.profiles) or 'unknown'}; "
        f"Lean: {'; '.join(summary.lean) or 'unknown'}"
    )
    if settings:
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> Iterator[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        yield "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


# --- comparing two runs --------------------------------------------------------------------------------------------
def format_comparison(a_path: str, a: Sequence[ProblemResult], b_path: str, b: Sequence[ProblemResult]) -> str:
    """The settings that differ, pass@k side by side on the problems both ran, and the problems each solved
    alone."""
    a_by, b_by = {r.name: r for r in a}, {r.name: r for r in b}
    common = sorted(set(a_by) & set(b_by))
    lines = [f"A = {a_path} ({len(a)} problems), B = {b_path} ({len(b)} problems); {len(common)} in both"]
    diff = settings_differences(_run_settings(a), _run_settings(b))
    diff.update(
        {
            key: value
            for key, value in {
                "model": (_models(a), _models(b)),
                "lean": (_leans(a), _leans(b)),
            }.items()
            if value[0] != value[1]
        }
    )
    if diff:
        lines.append("settings that differ:")
        lines += [f"  {key}: A {va!r}  B {vb!r}" for key, va, vb in ((k, *v) for k, v in diff.items())]
    else:
        lines.append("same settings, model and Lean")
    if not common:
        lines.append("no problem in common: nothing to compare")
        return "\n".join(lines)
    sa, sb = summarize([a_by[n] for n in common]), summarize([b_by[n] for n in common])
    rows = [
        [str(k), f"{100 * sa.pass_at[k]:.1f}%", f"{100 * sb.pass_at[k]:.1f}%", f"{100 * (sb.pass_at[k] - va):+.1f}"]
        for k, va in sa.pass_at.items()
        if k in sb.pass_at
    ]
    rows.append(["solved", str(sa.solved), str(sb.solved), f"{sb.solved - sa.solved:+d}"])
    lines.append(f"on the {len(common)} problems both ran (unbiased pass@k):")
    lines += _table(["k", "A", "B", "B - A"], rows)
    only_a = [n for n in common if a_by[n].solved and not b_by[n].solved]
    only_b = [n for n in common if b_by[n].solved and not a_by[n].solved]
    lines.append(f"solved by A alone ({len(only_a)}): {' '.join(only_a) or '-'}")
    lines.append(f"solved by B alone ({len(only_b)}): {' '.join(only_b) or '-'}")
    return "\n".join(lines)


def _run_settings(results: Sequence[ProblemResult]) -> dict[str, Any]:
    return dict(results[0].settings) if results else {}


def _models(results: Sequence[ProblemResult]) -> list[str]:
    return sorted({s.model for r in results for s in r.samples if s.model})


def _leans(results: Sequence[ProblemResult]) -> list[str]:
    return sorted({_lean_label(s.lean) for r in results for s in r.samples if s.lean})
