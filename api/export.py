"""`oprover export trajectories`: finished proof jobs as training data (the repair flywheel).

Two JSONL files, written job by job so an export of millions of rounds never holds more than one job:

* `--out`: one line per round: `(statement, retrieved proofs, previous attempt, Lean's feedback) -> attempt`
  with its verdict. `messages` is the chat the model was sent for that round, rebuilt from the job's record with
  the job's prompt profile by the very code the generate worker uses (`PromptProfile.messages` on a `ProofTask`
  built by `services.rounds.round_task`, as the worker builds it), so it is what the
  model saw byte for byte as long as the profile file is unchanged (profiles are versioned; `prompt_profile`
  names it). The assistant turn is the attempt's extracted Lean code in a ```lean4 block: the raw completion
  (its reasoning) is not kept on the job. The structured fields carry the same parts for other formats.
* `--proofs`: every proved job's proof in the memory's import format (`VerifiedProof.to_record`, what
  `oprover memory import` reads).

Resumable: a job already in a file is skipped; the last job of `--out` is written again (a kill may have cut it
short), and a cut-off last line of either file is dropped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.domain import TERMINAL_STATUSES

_JOB_KEY = re.compile(r"^oprover:job:\{([^}]+)\}$")


@dataclass
class ExportSummary:
    jobs: int = 0  # finished jobs exported by this call
    skipped: int = 0  # already in the files
    rounds: int = 0
    proofs: int = 0

    def __str__(self) -> str:
        return (
            f"exported {self.rounds} rounds and {self.proofs} verified proofs from {self.jobs} finished jobs "
            f"({self.skipped} already exported)"
        )


def finished_job_ids(client: Any, only: Iterable[str] | None = None) -> Iterator[str]:
    """Ids of the jobs on record, in id order (all of them, or those of `only` that exist)."""
    if only is not None:
        yield from sorted(set(only))
        return
    ids = set()
    for key in client.scan_iter(match="oprover:job:{*}", count=1000):
        match = _JOB_KEY.match(key.decode() if isinstance(key, bytes) else key)
        if match:
            ids.add(match.group(1))
    yield from sorted(ids)


def job_ids_of_results(path: Path) -> list[str]:
    """The job ids of an `oprover eval --out` file (every sample of every problem)."""
    from api.evaluation import read_results

    return [s.job_id for r in read_results(path) for s in r.samples if s.job_id]


def round_examples(store: Any, job: dict[str, Any], prompt_dir: Path | None) -> list[dict[str, Any]]:
    """One example per generated attempt of a finished job, chain by chain, round by round."""
    from services.prompts import load_profile
    from services.rounds import round_task

    spec = store.spec(job["id"])
    retrieved = store.retrieved(job["id"]) or []
    by_round = {(a["chain"], a["round"]): a for a in job["attempts"]}
    examples = []
    for attempt in job["attempts"]:
        if attempt.get("code") is None and attempt.get("verdict") != "no_code":
            continue
        if not attempt.get("prompt_profile"):
            continue  # written before profiles were recorded: the prompt cannot be rebuilt
        chain, round_ = attempt["chain"], attempt["round"]
        profile = load_profile(attempt["prompt_profile"], extra_dir=prompt_dir)
        task = round_task(spec, retrieved, round_, by_round.get((chain, round_ - 1)))
        code = attempt.get("code")
        examples.append(
            {
                "job_id": job["id"],
                "chain": chain,
                "round": round_,
                "kind": "repair" if task.previous is not None else "first",
                "messages": [
                    *profile.messages(task),
                    {"role": "assistant", "content": f"```lean4\n{code}\n```" if code is not None else ""},
                ],
                "verdict": attempt.get("verdict"),
                "job_status": job["status"],
                "formal_statement": spec.formal_statement,
                "header": spec.header,
                "informal_statement": spec.informal_statement,
                "retrieved": [asdict(p) for p in retrieved],
                "previous": None
                if task.previous is None
                else {
                    "code": task.previous.code,
                    "verdict": task.previous.verdict.value,
                    "feedback": task.previous.feedback,
                },
                "lean_messages": [m.to_json() for m in task.previous.messages]
                if task.previous and task.previous.messages
                else None,
                "attempt": {
                    "code": code,
                    "verdict": attempt.get("verdict"),
                    "feedback": attempt.get("feedback"),
                    "messages": attempt.get("messages"),
                    "finish_reason": attempt.get("finish_reason"),
                },
                "model": attempt.get("model"),
                "prompt_profile": profile.name,
                "prompt_profile_version": profile.version,
                "usage": attempt.get("usage"),
                "lean": attempt.get("lean"),
            }
        )
    return examples


def proof_record(job: dict[str, Any]) -> dict[str, Any] | None:
    """A proved job's proof as the memory stores it (the fields `remember_proof` gives the memory)."""
    from services.memory import VerifiedProof

    if job["status"] != "proved" or not job.get("proof"):
        return None
    winner = job.get("proved_by") or {}
    attempt: dict[str, Any] = next(
        (a for a in job["attempts"] if (a["chain"], a["round"]) == (winner.get("chain"), winner.get("round"))), {}
    )
    return VerifiedProof(
        formal_statement=job["formal_statement"],
        proof=job["proof"],
        header=job["header"] or "",
        source=f"oprover-serve:{job['id']}",
        model=attempt.get("model"),
        lean_version=(job.get("lean") or {}).get("lean"),
        job_id=job["id"],
        created_at=job.get("finished_at") or 0.0,
    ).to_record()


def export_trajectories(
    client: Any,
    out: Path,
    proofs_out: Path,
    *,
    only: Iterable[str] | None = None,
    prompt_dir: Path | None = None,
) -> ExportSummary:
    from services.errors import NotFound
    from services.store import JobStore

    store = JobStore(client)
    done_rounds = _resume(out, redo_last_job=True)
    done_proofs = _resume(proofs_out, redo_last_job=False)
    summary = ExportSummary()
    with out.open("a", encoding="utf-8") as rounds_file, proofs_out.open("a", encoding="utf-8") as proofs_file:
        for job_id in finished_job_ids(client, only):
            if job_id in done_rounds:
                summary.skipped += 1
                continue
            try:
                job = store.get(job_id)
            except NotFound:
                continue  # expired since the listing
            if job["status"] not in TERMINAL_STATUSES:
                continue
            examples = round_examples(store, job, prompt_dir)
            record = proof_record(job)
            if record is not None and job_id not in done_proofs:
                proofs_file.write(json.dumps(record, ensure_ascii=False) + "\n")
                proofs_file.flush()
                summary.proofs += 1
            rounds_file.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
            rounds_file.flush()
            summary.jobs += 1
            summary.rounds += len(examples)
        os.fsync(rounds_file.fileno())
        os.fsync(proofs_file.fileno())
    return summary


def _resume(path: Path, *, redo_last_job: bool) -> set[str]:
    """The job ids in `path`, after dropping a cut-off last line (and, with `redo_last_job`, every line of the
    last job, which a kill may have cut short between two of its lines)."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    lines = data.splitlines(keepends=True)
    ids = [json.loads(line)["job_id"] for line in lines]
    if redo_last_job and ids:
        last = ids[-1]
        while ids and ids[-1] == last:
            ids.pop()
            lines.pop()
        data = b"".join(lines)
    path.write_bytes(data)
    return set(ids)


def command(args: Any) -> int:
    """`oprover export trajectories` (api/cli.py parses the arguments)."""
    from services.redis_clients import sync_client
    from services.settings import load_settings

    settings = load_settings()
    out = Path(args.out)
    proofs_out = Path(args.proofs) if args.proofs else out.with_name(out.stem + ".proofs.jsonl")
    only = job_ids_of_results(Path(args.results)) if args.results else None
    client = sync_client(settings.redis.url, name="oprover-export", max_connections=2)
    try:
        summary = export_trajectories(client, out, proofs_out, only=only, prompt_dir=settings.prompt.dir)
    finally:
        client.close()
    print(summary)
    print(f"rounds: {out}; verified proofs (oprover memory import format): {proofs_out}")
    return 0
