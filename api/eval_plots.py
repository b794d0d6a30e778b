"""`oprover eval --plot DIR`: the run's pass@k curve and its cumulative solves by round as PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from api.evaluation import ProblemResult, summarize


def write_plots(results: Sequence[ProblemResult], directory: Path) -> list[Path]:
    """Write `pass_at_k.png` and `solves_by_round.png` into `directory`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    summary = summarize(results)
    directory.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = list(summary.pass_at)
    ax.plot(ks, [100 * summary.pass_at[k] for k in ks], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"pass@k, unbiased from n = {summary.n}, {summary.problems} problems")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = directory / "pass_at_k.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    rounds = list(summary.solved_by_round)
    ax.step(rounds, [summary.solved_by_round[r] for r in rounds], where="post", marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("problems solved (cumulative)")
    ax.set_ylim(0, summary.problems)
    ax.set_title(f"solves by round, {summary.problems} problems")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = directory / "solves_by_round.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written
