"""`python -m bench`: one entry for every benchmark, writing its tables into docs/benchmarks.md without losing
the page's hand-written text."""

from __future__ import annotations

import subprocess
import sys

from bench.__main__ import BEGIN, END, with_tables
from tests.harness import ROOT


def test_the_tables_are_replaced_between_the_markers_and_the_text_around_them_stays() -> None:
    page = f"# Benchmarks\n\nwhat bounds the latency\n\n{BEGIN}\nold numbers\n{END}\n\n## notes\nkept\n"
    written = with_tables(page, "| new | 1 |")
    assert "old numbers" not in written and "| new | 1 |" in written
    assert written.startswith("# Benchmarks\n\nwhat bounds the latency\n\n") and written.endswith("## notes\nkept\n")
    assert with_tables(written, "| newer | 2 |").count(BEGIN) == 1
    assert with_tables("", "| t |") == f"{BEGIN}\n| t |\n{END}\n"


def test_an_unknown_benchmark_is_refused_naming_the_known_ones() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "unknown benchmark(s) nope; known: latency, lean, generate, memory" in run.stderr
