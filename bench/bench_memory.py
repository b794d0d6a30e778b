"""Benchmark the proof memory: import rate and retrieval latency at 10k and 100k points.

    python bench/bench_memory.py                       # embedded (a temp directory), 10k and 100k points
    python bench/bench_memory.py --sizes 10000 --native # also time embedded Qdrant's own sparse query
    python bench/bench_memory.py --url http://localhost:6333   # the same against a Qdrant server

The points are real Lean statements grown by variation: the 338 verified proofs and the 244 MiniF2F
valid statements of ../shared/data, each copy with perturbed numerals, renamed variables, swapped
number types and relations, and its own theorem name, so token statistics stay those of real
statements while every point is distinct. Queries are the 244 MiniF2F statements (retrieval targets),
each excluded from its own answer as in service.

Columns: `import/s` points stored per second through `ProofMemory.add` (batches of --batch);
`open s` the time to open the store again (embedded mode loads every point and rebuilds the index);
`p50 ms`/`p99 ms` the latency of one `search(top_k=4)`; `RSS MB` this process after the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.memory import ProofMemory, VerifiedProof  # noqa: E402
from services.settings import QdrantSettings  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

TYPES = ["ℝ", "ℚ", "ℤ", "ℕ", "ℂ"]
RELATIONS = [("<", "≤"), ("≤", "<"), (">", "≥"), ("≥", ">")]
RENAMES = [("x", "t"), ("y", "s"), ("n", "m"), ("a", "u"), ("b", "w"), ("f", "g")]


def base_records() -> tuple[list[dict], list[str]]:
    proofs = [json.loads(line) for line in (DATA / "verified_proofs_sample.jsonl").open(encoding="utf-8")]
    queries = [json.loads(line)["formal_statement"] for line in (DATA / "minif2f_valid.jsonl").open(encoding="utf-8")]
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
    return re.sub(r"^(\s*)(theorem|lemma)\s+\S+", rf"\1theorem bench_{copy}", text, count=1)


def grow(n: int, seed: int = 0) -> list[VerifiedProof]:
    proofs, queries = base_records()
    rng = random.Random(seed)
    bases = [(r["formal_statement"], r["proof"]) for r in proofs]
    bases += [(q, proofs[i % len(proofs)]["proof"]) for i, q in enumerate(queries)]
    out = []
    for copy in range(n):
        statement, proof = bases[copy % len(bases)]
        out.append(
            VerifiedProof(
                formal_statement=vary(statement, copy, rng),
                proof=proof + f"\n-- bench copy {copy}",
                source="bench",
                created_at=1_700_000_000.0 + copy,
            )
        )
    return out


def latencies(memory: ProofMemory, queries: list[str], count: int) -> list[float]:
    for q in queries[:5]:  # warm-up
        memory.search(q, top_k=4)
    samples = []
    for i in range(count):
        q = queries[i % len(queries)]
        start = time.perf_counter()
        memory.search(q, top_k=4)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_size(args: argparse.Namespace, n: int, queries: list[str]) -> list[dict]:
    rows = []
    points = grow(n)
    if args.url:
        settings = QdrantSettings(url=args.url, api_key=args.api_key, collection=f"{args.collection}_{n}")
        _drop(settings)
        workdir = None
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=args.dir))
        settings = QdrantSettings(path=workdir / "qdrant")
    try:
        memory = ProofMemory(settings)
        start = time.perf_counter()
        for i in range(0, n, args.batch):
            memory.add(points[i : i + args.batch])
        import_s = time.perf_counter() - start
        assert memory.count() == n, memory.count()
        memory.close()
        del memory
        gc.collect()
        start = time.perf_counter()
        memory = ProofMemory(settings)
        open_s = time.perf_counter() - start
        samples = latencies(memory, queries, args.queries)
        mode = "server" if args.url else "embedded (in-process index)"
        rows.append(_row(mode, n, n / import_s, open_s, samples))
        memory.close()
        if args.native and not args.url:
            native = ProofMemory(settings.model_copy(update={"embedded_index": False}))
            samples = latencies(native, queries, args.native_queries)
            rows.append(_row("embedded (Qdrant's own query)", n, None, None, samples))
            native.close()
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not args.keep:
            _drop(settings)
    return rows


def _row(mode: str, n: int, rate: float | None, open_s: float | None, samples: list[float]) -> dict:
    return {
        "mode": mode,
        "points": n,
        "import/s": "-" if rate is None else f"{rate:,.0f}",
        "open s": "-" if open_s is None else f"{open_s:.1f}",
        "queries": len(samples),
        "p50 ms": f"{statistics.median(samples):.1f}",
        "p99 ms": f"{pct(samples, 0.99):.1f}",
        "RSS MB": f"{psutil.Process().memory_info().rss / 2**20:,.0f}",
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
    parser = argparse.ArgumentParser(description="Import rate and retrieval latency of the proof memory.")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated point counts")
    parser.add_argument("--url", help="a Qdrant server (default: embedded in a temp directory)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--collection", default="oprover_bench", help="server collection prefix (dropped after)")
    parser.add_argument("--keep", action="store_true", help="server: keep the bench collections")
    parser.add_argument("--dir", default=None, help="embedded: parent of the temp directory")
    parser.add_argument("--batch", type=int, default=1000, help="points per add()")
    parser.add_argument("--queries", type=int, default=300, help="timed searches per size")
    parser.add_argument("--native", action="store_true", help="embedded: also time Qdrant's own sparse query")
    parser.add_argument("--native-queries", type=int, default=10)
    args = parser.parse_args(argv)
    _, queries = base_records()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows += run_size(args, n, queries)
        print(table(rows), flush=True)
        print(flush=True)
    print(f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM")


if __name__ == "__main__":
    main()
