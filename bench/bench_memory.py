"""Benchmark the proof memory: import rate, open time, retrieval latency and memory at 100k and 1M points.

    python bench/bench_memory.py                                  # embedded (Qdrant Edge), 100k and 1M points
    python bench/bench_memory.py --sizes 100000 --baseline DIR    # + the previous embedded store, same run
    python bench/bench_memory.py --url http://localhost:6333      # the same against a Qdrant server

The points are real Lean statements grown by variation: the 338 verified proofs and the 244 MiniF2F
valid statements of ../shared/data, each copy with perturbed numerals, renamed variables, swapped number
types and relations, and its own theorem name, so token statistics stay those of real statements while
every point is distinct. Points are generated a batch at a time (the bench never holds a million proofs).

Per size:
* `import/s`: points stored per second through `ProofMemory.store` (batches of --batch), tokens and hashes
  included. The checker-policy screen is not in it: a copy's verdict is its base proof's, computed once per
  base (582 policy runs); its own cost is the `screen ms/proof` line, measured on those runs.
* then a fresh process (`--serve`) opens the store and answers: `open s` (opening the directory),
  `p50 ms`/`p99 ms` of `search(top_k=4)` over the 244 MiniF2F statements with the MiniF2F exclusion file
  set (each query excludes its own theorem and the benchmark's 244, inside the query), `RSS MB` of that
  process after the queries (peak in parentheses), and `disk MB` of the directory.

`--baseline DIR` runs the same sizes with the earlier embedded store (qdrant-client local mode plus an
in-process inverted index) from a checkout of the previous release in DIR, through that checkout's own
bench, so the two are measured in one run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.memory import ProofMemory, VerifiedProof  # noqa: E402
from services.memory.screening import screen  # noqa: E402
from services.settings import QdrantSettings  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
EXCLUDE = DATA / "minif2f_valid.jsonl"

TYPES = ["ℝ", "ℚ", "ℤ", "ℕ", "ℂ"]
RELATIONS = [("<", "≤"), ("≤", "<"), (">", "≥"), ("≥", ">")]
RENAMES = [("x", "t"), ("y", "s"), ("n", "m"), ("a", "u"), ("b", "w"), ("f", "g")]
_NAME = re.compile(r"^(\s*)(theorem|lemma)\s+(\S+)", re.MULTILINE)


def base_records() -> tuple[list[dict], list[str]]:
    proofs = [json.loads(line) for line in (DATA / "verified_proofs_sample.jsonl").open(encoding="utf-8")]
    queries = [json.loads(line)["formal_statement"] for line in EXCLUDE.open(encoding="utf-8")]
    return proofs, queries


def vary(statement: str, copy: int, rng: random.Random) -> str:
    """A distinct, still Lean-looking variant of `statement`."""
    text = re.sub(r"(?<![\w₀-₉])\d+(?![\w₀-₉])", lambda m: str(max(0, int(m.group()) + rng.randint(-3, 9))), statement)
    if rng.random() < 0.3:
        old, new = rng.choice(RELATIONS)
        text = text.replace(f" {old} ", f" {new} ", 1)
    if rng.random() < 0.3:
        text = text.replace(rng.choice(TYPES), rng.choice(TYPES))
    if rng.random() < 0.3:
        old, new = rng.choice(RENAMES)
        text = re.sub(rf"\b{old}\b", new, text)
    return _NAME.sub(rf"\1theorem bench_{copy}", text, count=1)


def bases() -> list[tuple[str, str, str, str]]:
    """(statement, proof, proof's theorem name, header) of every base: sample proofs, then MiniF2F statements
    paired with a sample proof (renamed, so the policy finds the theorem it imposes the statement on)."""
    proofs, queries = base_records()
    out = []
    for r in proofs:
        out.append((r["formal_statement"], r["proof"], r["name"], r["header"]))
    for i, q in enumerate(queries):
        r = proofs[i % len(proofs)]
        out.append((q, r["proof"], r["name"], r["header"]))
    return out


def base_verdicts(bases_: list[tuple[str, str, str, str]]) -> tuple[list[str | None], float]:
    """The policy's verdict on each base proof under a bench name, and the mean ms per policy run."""
    start = time.perf_counter()
    verdicts = []
    for statement, proof, name, header in bases_:
        renamed = _NAME.sub(r"\1theorem bench_0", statement, count=1)
        verdicts.append(screen(renamed, _rename(proof, name, "bench_0"), header))
    return verdicts, (time.perf_counter() - start) * 1000 / len(bases_)


def _rename(proof: str, old: str, new: str) -> str:
    return re.sub(rf"(?<![\w.']){re.escape(old)}(?![\w'])", new, proof)


def grow(n: int, batch: int, verdicts: list[str | None], seed: int = 0) -> Iterator[tuple[list[VerifiedProof], dict]]:
    """`n` points, `batch` at a time, each with its base proof's screening verdict. The proof keeps its base's
    theorem name (the verdict was taken under a bench name: the policy's rules do not depend on it)."""
    bases_ = bases()
    rng = random.Random(seed)
    out: list[VerifiedProof] = []
    known: dict[str, str | None] = {}
    for copy in range(n):
        b = copy % len(bases_)
        statement, proof, _, header = bases_[b]
        point = VerifiedProof(
            formal_statement=vary(statement, copy, rng),
            proof=proof + f"\n-- bench copy {copy}",
            header=header,
            source="bench",
            created_at=1_700_000_000.0 + copy,
        )
        out.append(point)
        known[point.point_id] = verdicts[b]
        if len(out) == batch:
            yield out, known
            out, known = [], {}
    if out:
        yield out, known


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def serve(settings: QdrantSettings, queries: list[str], count: int) -> dict:
    """In a fresh process: open the store, time `count` searches, report this process's memory."""
    start = time.perf_counter()
    memory = ProofMemory(settings)
    open_s = time.perf_counter() - start
    for q in queries[:5]:  # warm-up
        memory.search(q, top_k=4)
    samples = []
    got = []
    for i in range(count):
        q = queries[i % len(queries)]
        start = time.perf_counter()
        hits = memory.search(q, top_k=4)
        samples.append((time.perf_counter() - start) * 1000)
        got.append(len({h.formal_statement for h in hits}))
    points = memory.count()
    memory.close()
    return {
        "open_s": open_s,
        "p50": statistics.median(samples),
        "p99": pct(samples, 0.99),
        "queries": len(samples),
        "distinct_min": min(got),
        "points": points,
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_size(args: argparse.Namespace, n: int, verdicts: list[str | None]) -> list[dict]:
    """Import `n` points; at each of `args.checkpoints` below `n` and at `n`, measure a fresh process serving
    the store so far (one import, several sizes: the slope)."""
    if args.url:
        settings = QdrantSettings(url=args.url, api_key=args.api_key, collection=f"{args.collection}_{n}")
        _drop(settings)
        workdir = None
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=args.dir))
        settings = QdrantSettings(path=workdir / "qdrant")
    stops = sorted({c for c in args.checkpoints if 0 < c < n} | {n})
    rows = []
    try:
        memory = ProofMemory(settings)
        in_store = 0.0  # seconds inside ProofMemory.store: tokens, hashes, screening verdicts, the engine
        stored = flagged = 0
        for points, known in grow(n, args.batch, verdicts):
            start = time.perf_counter()
            flagged += sum(memory.store(points, verdicts=known).flagged.values())
            in_store += time.perf_counter() - start
            stored += len(points)
            if args.progress and stored % 10_000 == 0:
                print(f"  {stored:,} stored, {stored / in_store:,.0f}/s in store()", file=sys.stderr, flush=True)
            if stored in stops:
                assert memory.count() == stored, memory.count()
                memory.close()
                rows.append(_measure(args, settings, workdir, stored, stored / in_store, flagged))
                print(table(rows), flush=True)
                if stored < n:
                    memory = ProofMemory(settings)
        return rows
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not args.keep:
            _drop(settings)


def _measure(
    args: argparse.Namespace, settings: QdrantSettings, workdir: Path | None, n: int, rate: float, flagged: int
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--serve",
        json.dumps(settings.model_dump(mode="json")),
        "--queries",
        str(args.queries),
    ]
    served = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {
        "mode": "server" if args.url else "embedded, Qdrant Edge",
        "points": n,
        "import/s": f"{rate:,.0f}",
        "open s": f"{served['open_s']:.2f}",
        "queries": served["queries"],
        "p50 ms": f"{served['p50']:.1f}",
        "p99 ms": f"{served['p99']:.1f}",
        "RSS MB (peak)": f"{served['rss_mb']:,.0f} ({served['peak_mb']:,.0f})",
        "disk MB": "-" if workdir is None else f"{disk_mb(workdir):,.0f}",
        "flagged": flagged,
    }


def run_baseline(args: argparse.Namespace, n: int) -> dict:
    """The previous release's embedded store, through its own bench in the checkout `args.baseline`."""
    cmd = [sys.executable, "bench/bench_memory.py", "--sizes", str(n), "--queries", str(args.queries)]
    if args.dir:
        cmd += ["--dir", args.dir]
    out = subprocess.run(cmd, cwd=args.baseline, check=True, capture_output=True, text=True).stdout
    row = next(line for line in out.splitlines() if line.startswith("| embedded"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    _, points, rate, open_s, queries, p50, p99, rss = cells
    return {
        "mode": "embedded, previous (local mode + in-process index)",
        "points": int(points),
        "import/s": rate,
        "open s": open_s,
        "queries": int(queries),
        "p50 ms": p50,
        "p99 ms": p99,
        "RSS MB (peak)": f"{rss} (-)",
        "disk MB": "-",
        "flagged": "-",
    }


def _drop(settings: QdrantSettings) -> None:
    from qdrant_client import QdrantClient

    client = QdrantClient(url=settings.url, api_key=settings.api_key)
    try:
        if client.collection_exists(settings.collection):
            client.delete_collection(settings.collection)
    finally:
        client.close()


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    line = "| " + " | ".join(k.ljust(widths[k]) for k in keys) + " |"
    rule = "| " + " | ".join("-" * widths[k] for k in keys) + " |"
    body = ["| " + " | ".join(str(r[k]).ljust(widths[k]) for k in keys) + " |" for r in rows]
    return "\n".join([line, rule, *body])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Import rate, open time and retrieval latency of the proof memory.")
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated point counts")
    parser.add_argument("--url", help="a Qdrant server (default: embedded in a temp directory)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--collection", default="oprover_bench", help="server collection prefix (dropped after)")
    parser.add_argument("--keep", action="store_true", help="server: keep the bench collections")
    parser.add_argument("--dir", default=None, help="embedded: parent of the temp directory")
    parser.add_argument("--batch", type=int, default=1000, help="points per store()")
    parser.add_argument("--queries", type=int, default=300, help="timed searches per size")
    parser.add_argument("--baseline", default=None, help="checkout of the previous release: measure it too")
    parser.add_argument("--baseline-sizes", default=None, help="sizes for the baseline (default: --sizes)")
    parser.add_argument("--progress", action="store_true", help="print import progress on stderr")
    parser.add_argument(
        "--checkpoints",
        default="",
        type=lambda text: [int(c) for c in text.split(",") if c],
        help="also measure the store at these sizes on the way (comma-separated)",
    )
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # internal: the fresh-process phase
    args = parser.parse_args(argv)
    _, queries = base_records()
    if args.serve:
        settings = QdrantSettings(**{**json.loads(args.serve), "exclude_file": str(EXCLUDE)})
        print(json.dumps(serve(settings, queries, args.queries)))
        return
    verdicts, screen_ms = base_verdicts(bases())
    print(
        f"screen ms/proof: {screen_ms:.1f} (the checker's policy on the {len(verdicts)} base proofs; "
        f"{sum(v is not None for v in verdicts)} flagged)",
        flush=True,
    )
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        if args.baseline and str(n) in (args.baseline_sizes or args.sizes).split(","):
            rows.append(run_baseline(args, n))
            print(table(rows), flush=True)
        rows += run_size(args, n, verdicts)
        print(table(rows), flush=True)
        print(flush=True)
    print(f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, pid {os.getpid()}")


if __name__ == "__main__":
    main()
