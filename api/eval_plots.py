"""`oprover eval --plot DIR`: the run's pass@k curve and its cumulative solves by round as PNG files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from api.evaluation import ProblemResult, summarize


def write_plots(results: Sequence[ProblemResult], directory: Path) -> list[Path]:
    """Write `pass_at_k.png` and `solves_by_round.png` into `directory`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    summary = summarize(results)
    directory.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def chart(name: str, *, title: str, xlabel: str, ylabel: str) -> Iterator[Any]:
        """One small chart: the caller draws on the axes it gets; labelled, gridded and written to `name`."""
        fig, ax = plt.subplots(figsize=(5, 3.5))
        try:
            yield ax
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(directory / name, dpi=120)
        finally:
            plt.close(fig)
        written.append(directory / name)

    written: list[Path] = []
    title = f"pass@k, unbiased from n = {summary.n}, {summary.problems} problems"
    with chart("pass_at_k.png", title=title, xlabel="k (samples)", ylabel="pass@k (%)") as ax:
        ks = list(summary.pass_at)
        ax.plot(ks, [100 * summary.pass_at[k] for k in ks], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
    title = f"solves by round, {summary.problems} problems"
    with chart("solves_by_round.png", title=title, xlabel="round", ylabel="problems solved (cumulative)") as ax:
        rounds = list(summary.solved_by_round)
        ax.step(rounds, [summary.solved_by_round[r] for r in rounds], where="post", marker="o")
        ax.set_ylim(0, summary.problems)
    return written
