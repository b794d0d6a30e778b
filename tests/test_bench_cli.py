"""`python -m bench`: one entry for every benchmark, writing its tables into docs/benchmarks.md without losing
the page's hand-written text."""

from __future__ import annotations

import subprocess
import sys

from bench.__main__ import BEGIN, END, with_block
from tests.harness import ROOT


def test_a_benchmark_block_is_replaced_and_the_text_and_other_blocks_around_it_stay() -> None:
    lean = f"{BEGIN.format(name='lean')}\nold lean numbers\n{END.format(name='lean')}"
    page = f"# Benchmarks\n\nwhat bounds the latency\n\n{lean}\n\n## notes\nkept\n"
    written = with_block(page, "lean", "| new | 1 |")
    assert "old lean numbers" not in written and "| new | 1 |" in written
    assert written.startswith("# Benchmarks\n\nwhat bounds the latency\n\n") and written.endswith("## notes\nkept\n")
    both = with_block(written, "latency", "| latency | 2 |")
    assert both.startswith(written.rstrip()) and both.rstrip().endswith(END.format(name="latency"))
    again = with_block(both, "lean", "| newer | 3 |")
    assert again.count(BEGIN.format(name="lean")) == 1 and "| latency | 2 |" in again and "| new | 1 |" not in again


def test_an_unknown_benchmark_is_refused_naming_the_known_ones() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "unknown benchmark(s) nope; known: latency, lean, generate, memory, load" in run.stderr
