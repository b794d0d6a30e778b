"""Screen stored proofs with the checker's own integrity policy, so the memory shows only what would pass.

Imported corpora carry proofs that passed someone else's checker: `native_decide`, `decide +native`,
`apply?` left in, extra axioms. Shown in a prompt, they teach the model what our checker then refuses. So
every proof is read by `services.lean.policy.compose` (the very function the checker runs before Lean,
with the record's statement imposed) before it is stored. A proof the policy refuses is still stored, with
`admitted = false` and the first violation as `screen_reason`: retrieval never returns it, `stats()`
counts it, and `ProofMemory.rescreen()` reads every point again when the policy changes, so a looser
policy re-admits what a stricter one flagged (and the other way round). The rules are not copied here.

The policy is a Python lexer and costs 20-40 ms per proof on the 2-core development machine (a 3 KB proof; by
bench/bench_memory.py), far more than storing the point. `Screener` therefore spreads a large batch
over worker processes; a handful of proofs are screened in-process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context

from services.memory.schema import VerifiedProof

# Below this many proofs a process pool costs more (interpreter start, imports) than it saves.
POOL_MIN_PROOFS = 64
_CHUNK = 16


def default_header() -> str:
    """The header a request without one is checked with: what the checker would use for this proof."""
    from services.settings import LeanSettings

    return LeanSettings().header


@lru_cache(maxsize=4096)  # the same proof offered again (a retried job, a re-import) is read once per process
def screen(formal_statement: str, proof: str, header: str) -> str | None:
    """Why the checker would refuse `proof` for `formal_statement` before Lean, or None if it would not."""
    from services.lean.policy import compose

    composed = compose(proof, header=header or default_header(), formal_statement=formal_statement)
    return composed.violations[0].rule if composed.violations else None


def _screen_chunk(items: Sequence[tuple[str, str, str]]) -> list[str | None]:
    return [screen(*item) for item in items]


class Screener:
    """`screen` over many proofs, in worker processes when there are enough of them.

    The pool is created on first need and kept (spawned, not forked: the parent holds the engine's
    threads, and a fork copies their locks in whatever state they are in).
    """

    def __init__(self, processes: int | None = None) -> None:
        self.processes = max(1, processes if processes is not None else (os.cpu_count() or 1))
        self._pool: ProcessPoolExecutor | None = None

    def verdicts(self, proofs: Sequence[VerifiedProof]) -> list[str | None]:
        items = [(p.formal_statement, p.proof, p.header) for p in proofs]
        if self.processes == 1 or len(items) < POOL_MIN_PROOFS:
            return _screen_chunk(items)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=get_context("spawn"))
        chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
        return [verdict for chunk in self._pool.map(_screen_chunk, chunks) for verdict in chunk]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Screener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
