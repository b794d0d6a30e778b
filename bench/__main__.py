"""`python -m bench` (`make bench`): run every benchmark and write their tables to docs/benchmarks.md.

    python -m bench                      # all of them, sizes bounded for a small shared machine (minutes)
    python -m bench --only lean,latency  # some of them
    python -m bench --full               # each benchmark at its own defaults (long: the memory bench imports 1M)
    python -m bench --only load          # 500 concurrent proof jobs through `oprover up` (about 10 minutes)

Each benchmark is its own script in this package (run alone with `python bench/<name>.py --help`); this entry
runs them one after another as subprocesses, so one's processes and memory are gone before the next starts,
and records next to their tables what a reader needs to trust them: the date, the machine, the versions, the
command, and the load average before and after each one (the machine may be shared).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (script, bounded arguments, what it answers)
BENCHMARKS: dict[str, tuple[str, list[str], str]] = {
    "latency": (
        "latency.py",
        ["--rounds", "8", "--jobs", "3", "--submissions", "100", "--get-s", "3", "--e2e-jobs", "16"],
        "What the service adds to a round against a direct in-process loop, where it goes, the gateway under load",
    ),
    "lean": (
        "bench_lean.py",
        ["--proofs", "20"],
        "Checks per second of the Lean checker pool, a fresh process per proof, and Kimina's way of driving REPLs",
    ),
    "generate": (
        "bench_generate.py",
        ["--quick"],
        "Whether the generate workers keep a fixed-capacity generator busy",
    ),
    "memory": (
        "bench_memory.py",
        ["--sizes", "20000", "--queries", "100"],
        "Import rate, open time and retrieval latency of the proof memory",
    ),
    "load": (
        "load.py",
        # One REPL per core (2 here) would need over an hour for 500 jobs' checks: the table prints the change. The
        # run takes about 15 minutes at a load of 20-40 on 2 cores; jobs not ended after 30 are reported as such.
        ["--jobs", "500", "--verify-slots", "32", "--time-limit-s", "1800"],
        "500 proof jobs at once through `oprover up` against stand-ins at real latencies: errors, latency against "
        "the floor, peak memory and Redis connections, and that nothing was lost",
    ),
}
# A benchmark's block in the page: `python -m bench --only NAME` rewrites that block alone.
BEGIN = "<!-- bench:{name} written by `python -m bench`; edits inside are overwritten -->"
END = "<!-- bench:{name} end -->"
VERSIONED = ("fastapi", "uvicorn", "rq", "redis", "httpx", "qdrant-edge-py", "qdrant-client", "pydantic")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        ram = "RAM unknown"
    return f"{os.cpu_count()} CPUs ({cpu}), {ram}, {platform.system()} {platform.release()}"


def _versions() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    redis_server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    parts = [f"oprover-serve {commit.stdout.strip() or 'unknown'}", f"Python {platform.python_version()}"]
    parts.append(redis_server.stdout.split(" sha=")[0].strip() or "redis-server unknown")
    for package in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{package} {metadata.version(package)}")
    return ", ".join(parts)


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def with_block(document: str, name: str, text: str) -> str:
    """`document` with the block of `name` replaced by `text`, or `text` appended as that block: the page's
    hand-written reading of the numbers and the other benchmarks' blocks stay as they are."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    block = f"{begin}\n{text.strip()}\n{end}"
    if begin in document and end in document:
        before, rest = document.split(begin, 1)
        return before + block + rest.split(end, 1)[1]
    return (document.rstrip() + "\n\n" if document.strip() else "") + block + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated, of {', '.join(BENCHMARKS)}")
    parser.add_argument("--full", action="store_true", help="each benchmark at its own defaults, not bounded")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="the Markdown file written")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    sections: list[tuple[str, str]] = []
    failed = []
    for name in names:
        script, bounded, what = BENCHMARKS[name]
        cmd = [sys.executable, str(ROOT / "bench" / script), *([] if args.full else bounded)]
        shown = "python " + " ".join(shlex.quote(c) for c in [f"bench/{script}", *cmd[2:]])
        print(f"== {name}: {shown}", flush=True)
        load_before, started = _load(), time.monotonic()
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        elapsed, load_after = time.monotonic() - started, _load()
        output = run.stdout.strip()
        print(output, flush=True)
        if run.returncode != 0:
            failed.append(name)
            tail = "\n".join(run.stderr.strip().splitlines()[-15:])
            print(tail, file=sys.stderr)
            output += f"\n\n(exit {run.returncode}; last lines of its stderr:)\n\n```\n{tail}\n```"
        sections.append(
            (
                name,
                f"## {name}\n\n{what}.\n\n`{shown}` — {elapsed:.0f} s; load average (1/5/15 min) {load_before} before, "
                f"{load_after} after (2 cores: a load above 2 means other work shared the machine and these numbers "
                f"are measured under that load).\n\n{output}\n",
            )
        )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"Written by `{command.strip()}` (`make bench` runs them all) on {now}.\n\n"
        f"- machine: {_machine()}\n- versions: {_versions()}\n"
        "- the model and Lean are stand-ins (standins/): these numbers measure the service around them, "
        "never the model's or Lean's speed\n"
    )
    out = Path(args.out)
    document = out.read_text(encoding="utf-8") if out.exists() else "# Benchmarks\n"
    for name, section in sections:
        document = with_block(document, name, f"{section}\n{header}")
    out.write_text(document, encoding="utf-8")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
