"""`oprover eval`: run a JSONL benchmark against a running service and report what it proved, at what cost.

How a run is shaped, and why:

* A problem's n samples (`--attempts n`) are n proof jobs of one chain each, not one job of n chains. A job
  stops its other chains as soon as one passes (that is what a user wants from the service), so a job of n
  chains never tells how many of its n samples would have passed, and the unbiased pass@k estimator needs that
  count. Each job still runs `--rounds` rounds of repair.
* At most `--concurrency` jobs are in flight, so a big benchmark does not flood the queue ahead of other users.
* Every problem's line is appended to `--out` when its last sample ends (api/evaluation.py describes a line), and
  flushed at once: a run that is interrupted or killed loses only the problems in flight, and running the same
  command again skips the problems already in the file (the settings must match; a cut-off last line is
  dropped and done again).
* Ctrl-C cancels the jobs in flight (`DELETE`), so the run leaves no work behind in the service.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.evaluation import (
    SETTING_FIELDS,
    Attempt,
    ProblemResult,
    Sample,
    read_results,
    settings_differences,
)
from services.domain import TERMINAL_STATUSES


class EvalFailed(Exception):
    """The run cannot start (a bad benchmark or results file): `oprover eval` prints it as one line, exit 2."""


WHY_MAX_CHARS = 300


@dataclass
class EvalOptions:
    attempts: int = 1
    rounds: int | None = None
    top_k: int | None = None
    prompt_profile: str | None = None
    lean_version: str | None = None
    concurrency: int = 8
    poll_s: float = 2.0
    exclude_benchmark: bool = True
    # The request's `exclude` when `exclude_benchmark`: every problem of the benchmark (benchmark_exclusion).
    exclusion: dict[str, list[str]] | None = None

    def settings(self) -> dict[str, Any]:
        """What a results line records (None: the deployment's default, shown on each sample's jobs)."""
        return {name: getattr(self, name) for name in SETTING_FIELDS}

    def request(self, problem: dict[str, Any], name: str, sample: int, bench: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "formal_statement": problem["formal_statement"],
            "attempts": 1,
            "metadata": {"benchmark": bench, "name": name, "sample": sample},
        }
        if problem.get("header"):
            body["header"] = problem["header"]
        if problem.get("informal_statement"):
            body["informal_statement"] = problem["informal_statement"]
        for option in ("rounds", "top_k", "prompt_profile", "lean_version"):
            if getattr(self, option) is not None:
                body[option] = getattr(self, option)
        if self.exclude_benchmark and self.exclusion:
            body["exclude"] = self.exclusion
        return body


def benchmark_exclusion(problems: list[dict[str, Any]], names: list[str]) -> dict[str, list[str]]:
    """The `exclude` of every job of a run: each problem's statement (and the alternative statements of other
    Lean versions a record may carry, `alt_*: {"formal_statement"}`) as the memory's body hash, and each
    problem's name, so no problem of the benchmark is retrieved for any other while the run lasts, not even a
    re-worded version stored under its name. Hashes, not statements: the same list goes with every job."""
    from services.memory.schema import body_hash

    statements = [p["formal_statement"] for p in problems] + [
        value["formal_statement"]
        for p in problems
        for key, value in p.items()
        if key.startswith("alt_") and isinstance(value, dict) and isinstance(value.get("formal_statement"), str)
    ]
    return {
        "statement_hashes": sorted({body_hash(s) for s in statements}),
        "names": sorted(set(names) | {str(p["name"]) for p in problems if p.get("name")}),
    }


def problem_names(problems: list[dict[str, Any]], path: str) -> list[str]:
    """Each problem's name (its `name`, else its line index); a name twice would make resuming ambiguous."""
    names = [str(problem.get("name", index)) for index, problem in enumerate(problems)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{path} names problem {name!r} twice; results are kept by name, so names must differ")
        seen.add(name)
    return names


def sample_from_job(job: dict[str, Any]) -> Sample:
    """One finished job as a sample: how it ended, why it did not prove, each round's spend."""
    attempts = [
        Attempt(
            round=a["round"],
            verdict=a.get("verdict"),
            prompt_tokens=int((a.get("usage") or {}).get("prompt_tokens", 0)),
            completion_tokens=int((a.get("usage") or {}).get("completion_tokens", 0)),
            retrieve_ms=int((a.get("timings") or {}).get("retrieve_ms", 0)),
            generate_ms=int((a.get("timings") or {}).get("generate_ms", 0)),
            verify_ms=int((a.get("timings") or {}).get("verify_ms", 0)),
        )
        for a in job.get("attempts", [])
    ]
    status = job["status"]
    why = None
    if status == "failed":
        verdicts = ", ".join(f"round {a.round} {a.verdict}" for a in attempts)
        last = next((a for a in reversed(job.get("attempts", [])) if a.get("feedback")), None)
        feedback = (last or {}).get("feedback") or ""
        why = f"every round failed ({verdicts})" + (f"; last feedback: {feedback.splitlines()[0]}" if feedback else "")
    elif status == "error":
        why = job.get("error") or "error (no message)"
    elif status == "cancelled":
        why = "cancelled by someone else while the run went on"
    proved_by = job.get("proved_by") or {}
    finished = job.get("finished_at") or time.time()
    lean = job.get("lean") or next((a["lean"] for a in job.get("attempts", []) if a.get("lean")), None)
    return Sample(
        job_id=job["id"],
        status=status,
        proved_round=proved_by.get("round") if status == "proved" else None,
        why=why[:WHY_MAX_CHARS] if why else None,
        wall_s=round(finished - job["created_at"], 3),
        attempts=attempts,
        model=next((a["model"] for a in reversed(job.get("attempts", [])) if a.get("model")), None),
        lean=lean,
        prompt_profile=next((a["prompt_profile"] for a in job.get("attempts", []) if a.get("prompt_profile")), None),
    )


@dataclass
class _Problem:
    name: str
    record: dict[str, Any]
    samples: dict[int, Sample] = field(default_factory=dict)
    started: float | None = None


class EvalRun:
    """Submits the samples of the problems not yet in the results file, keeps `concurrency` jobs in flight,
    and appends each problem's line as its last sample ends. `in_flight` is what Ctrl-C has to cancel."""

    def __init__(
        self,
        client: Any,
        options: EvalOptions,
        *,
        bench: str,
        out: Path | None,
        on_problem: Callable[[ProblemResult], None] = lambda _: None,
        on_outage: Callable[[str | None], None] = lambda _: None,
    ) -> None:
        self.client = client
        self.options = options
        self.bench = bench
        self.out = out
        self.on_problem = on_problem
        self.on_outage = on_outage
        self.in_flight: dict[str, tuple[_Problem, int]] = {}  # job id -> (problem, sample index)
        self.results: list[ProblemResult] = []
        self._answered_once = False

    def done_before(self, names: list[str]) -> list[ProblemResult]:
        """The results file's lines for these problems, after checking they were made with these settings."""
        if self.out is None:
            return []
        _drop_cut_off_line(self.out)
        wanted = set(names)
        done = [r for r in read_results(self.out) if r.name in wanted]
        settings = self.options.settings()
        for result in done:
            diff = settings_differences(result.settings, settings)
            if diff:
                described = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in diff.items())
                raise ValueError(
                    f"{self.out} holds results made with other settings ({described}): resume with the same "
                    "settings, or write to another --out"
                )
        return done

    def run(self, problems: list[tuple[str, dict[str, Any]]]) -> list[ProblemResult]:
        pending: list[tuple[_Problem, int]] = []
        for name, record in problems:
            problem = _Problem(name, record)
            pending += [(problem, sample) for sample in range(self.options.attempts)]
        pending.reverse()  # pop() from the end: the benchmark's order
        while pending or self.in_flight:
            while pending and len(self.in_flight) < self.options.concurrency:
                problem, sample = pending[-1]
                if not self._submit(problem, sample):
                    break  # the gateway is down: poll (and wait) before submitting more
                pending.pop()
            self._poll()
            if self.in_flight or pending:
                time.sleep(self.options.poll_s)
        return self.results

    # --- one job -------------------------------------------------------------------------------------------------
    def _submit(self, problem: _Problem, sample: int) -> bool:
        import httpx

        from api.cli import _error_line

        body = self.options.request(problem.record, problem.name, sample, self.bench)
        if problem.started is None:
            problem.started = time.time()
        try:
            response = self.client.post("/v1/prove", json=body)
        except httpx.TransportError as exc:
            if not self._answered_once:
                raise  # never reached: the command says the gateway is not there
            self.on_outage(str(exc) or type(exc).__name__)
            return False
        if response.status_code >= 500:
            self.on_outage(_error_line(response))
            return False
        self._answered()
        if response.status_code not in (200, 202):
            self._ended(problem, sample, Sample(job_id=None, status="rejected", why=_error_line(response)))
            return True
        self.in_flight[response.json()["id"]] = (problem, sample)
        return True

    def _poll(self) -> None:
        import httpx

        from api.cli import _error_line

        for job_id, (problem, sample) in list(self.in_flight.items()):
            try:
                response = self.client.get(f"/v1/prove/{job_id}")
            except httpx.TransportError as exc:
                self.on_outage(str(exc) or type(exc).__name__)
                return
            if response.status_code == 404:
                del self.in_flight[job_id]
                self._ended(problem, sample, Sample(job_id=job_id, status="expired", why="the job record expired"))
                continue
            if response.status_code != 200:
                self.on_outage(_error_line(response))
                return
            self._answered()
            job = response.json()
            if job["status"] in TERMINAL_STATUSES:
                del self.in_flight[job_id]
                self._ended(problem, sample, sample_from_job(job))

    def _answered(self) -> None:
        if self._answered_once:
            self.on_outage(None)
        self._answered_once = True

    def _ended(self, problem: _Problem, sample: int, result: Sample) -> None:
        problem.samples[sample] = result
        if len(problem.samples) < self.options.attempts:
            return
        samples = [problem.samples[i] for i in range(self.options.attempts)]
        ends = [s.wall_s for s in samples]
        line = ProblemResult(
            name=problem.name,
            samples=samples,
            settings=self.options.settings(),
            wall_s=round(max(time.time() - (problem.started or time.time()), max(ends)), 3),
        )
        if self.out is not None:
            with self.out.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line.to_json(), ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        self.results.append(line)
        self.on_problem(line)


def _drop_cut_off_line(path: Path) -> None:
    """A run killed while writing leaves a last line without its newline: drop it, so the next line appended
    starts on a line of its own (the problem is done again)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def cancel_in_flight(client: Any, run: EvalRun) -> tuple[int, int]:
    """DELETE every job in flight; (cancelled, in flight)."""
    import httpx

    cancelled = 0
    for job_id in list(run.in_flight):
        try:
            if client.delete(f"/v1/prove/{job_id}", timeout=10).status_code == 200:
                cancelled += 1
        except httpx.TransportError:
            break  # the gateway is gone: the count says what was not cancelled
    return cancelled, len(run.in_flight)


def progress_bar(total: int, initial_solved: int) -> Any:
    """A tqdm bar on stderr with solved-so-far and ETA; silent when stderr is not a terminal (a log file, CI)."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="problem", desc="eval", file=sys.stderr, disable=not sys.stderr.isatty())
    bar.set_postfix(solved=initial_solved)
    return bar


def command(args: Any) -> int:
    """`oprover eval` (api/cli.py parses the arguments): a run, or `--compare A B`."""
    from api import cli
    from api.evaluation import format_comparison, format_summary, summarize

    if args.compare:
        runs = []
        for path in args.compare:
            try:
                results = read_results(Path(path))
            except (OSError, ValueError) as exc:
                raise EvalFailed(str(exc)) from None
            if not results:
                raise EvalFailed(f"{path} holds no results")
            runs.append(results)
        print(format_comparison(args.compare[0], runs[0], args.compare[1], runs[1]))
        return 0
    if not args.bench:
        raise EvalFailed("name a benchmark JSONL (or --compare A B)")
    for flag, value in (("--attempts", args.attempts), ("--concurrency", args.concurrency), ("--rounds", args.rounds)):
        if value is not None and value < 1:
            raise EvalFailed(f"{flag} must be at least 1 (got {value})")
    try:
        problems = cli.read_benchmark(args.bench)
    except cli.CommandFailed as exc:  # api.cli's class, which differs from `python -m api.cli`'s own
        raise EvalFailed(str(exc)) from None
    try:
        exclusion = benchmark_exclusion(problems, problem_names(problems, args.bench))  # the whole benchmark
        if args.limit:
            problems = problems[: args.limit]
        names = problem_names(problems, args.bench)
    except ValueError as exc:
        raise EvalFailed(str(exc)) from None
    exclude_benchmark = not getattr(args, "no_exclude_benchmark", False)
    options = EvalOptions(
        attempts=args.attempts,
        rounds=args.rounds,
        top_k=args.top_k,
        prompt_profile=args.prompt_profile,
        lean_version=args.lean_version,
        concurrency=args.concurrency,
        poll_s=args.poll_s,
        exclude_benchmark=exclude_benchmark,
        exclusion=exclusion,
    )
    out = Path(args.out) if args.out else None
    outage = cli._Outage(args.url)
    with cli._client(args) as client:
        run = EvalRun(
            client,
            options,
            bench=Path(args.bench).name,
            out=out,
            on_outage=lambda why: outage.failed(why) if why else outage.answered(),
        )
        try:
            done = run.done_before(names)
        except (OSError, ValueError) as exc:
            raise EvalFailed(str(exc)) from None
        done_names = {r.name for r in done}
        todo = [(name, p) for name, p in zip(names, problems, strict=True) if name not in done_names]
        print(
            f"{len(problems)} problems x {options.attempts} independent sample(s) of up to "
            f"{options.rounds or 'the default'} round(s); {options.concurrency} jobs in flight"
            + (f"; {len(done)} already in {out}, skipped" if done else "")
            + ("" if out else "; no --out: results are not saved and the run cannot be resumed")
        )
        if exclude_benchmark:
            print(
                f"no contamination: every job asks the service never to retrieve a proof of any of the "
                f"{len(exclusion['statement_hashes'])} statements or {len(exclusion['names'])} problem names of "
                f"this benchmark (by statement hash and by name; --no-exclude-benchmark turns this off)"
            )
        else:
            print(
                "--no-exclude-benchmark: proofs of this benchmark's other problems may be retrieved (a problem's "
                "own statement and name never are)"
            )
        solved = sum(1 for r in done if r.solved)
        bar = progress_bar(len(todo), solved)

        def one_more(result: ProblemResult) -> None:
            nonlocal solved
            solved += result.solved
            bar.set_postfix(solved=solved)
            bar.update(1)

        run.on_problem = one_more
        try:
            run.run(todo)
        except KeyboardInterrupt:
            bar.close()
            cancelled, in_flight = cancel_in_flight(client, run)
            print(
                f"oprover eval: interrupted; cancelled {cancelled} of {in_flight} unfinished job(s)",
                file=sys.stderr,
            )
            return 130
        bar.close()
    by_name = {r.name: r for r in [*done, *run.results]}
    results = [by_name[name] for name in names if name in by_name]
    print(format_summary(summarize(results), options.settings()))
    if args.plot:
        from api.eval_plots import write_plots

        for path in write_plots(results, Path(args.plot)):
            print(f"wrote {path}")
    return 0
