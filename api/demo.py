"""`oprover up --demo`: the whole service on any laptop, on stand-ins for the model and for Lean.

No GPU, no Lean toolchain, no model server to point at: `up --demo` starts the stand-in model
(standins/openai_server.py, model id `standin-oprover-demo`), and its verify worker runs the stand-in REPL and
kernel replay (standins/fake_repl.py, standins/fake_replay.py), all scripted from one sample: a few real MiniF2F
statements with a story each (standins/demo/sample.json): some are proved in round 1, some after a round that fails
with Lean-like errors, some never. The memory starts with a few published proofs (standins/demo/seed_memory.jsonl),
so retrieval has something to show, and grows with every proof the demo finds.

Everything it produces says it is a demo: the model id starts with `standin-`, the Lean version ends in `-standin`
(in `/v1/models`, in every job's `lean` field, in `/readyz`), `/readyz` carries `"demo": true` and the banner, and
`up` prints the banner when it starts. So does every result, for it is what gets copied and shown: each job object
and verify result carries `"demo": true` (`demo_labelled`), `oprover prove` and `oprover verify` print the banner,
and each message of the stand-in Lean says it is one ("demo stand-in Lean accepted the scripted proof (no Lean
ran)", scripted errors likewise). A theorem outside the sample gets an answer the stand-in Lean rejects, so it ends
"not found": the stand-in Lean accepts the sample's scripted proofs of the sample's statements, nothing else.

Its state (Redis data, the memory, logs, the sample files to submit) lives in `data/demo/` under the directory `up`
runs in, emptied at every demo start; its Redis runs on a port of its own. A real `oprover up` keeps its data in
`data/redis` and `data/qdrant` and talks to the Redis of `OPROVER_REDIS_URL`, so the two never meet. The demo
ignores the caller's `OPROVER_*` variables and `.env`: it is the same demo everywhere.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger("oprover")

BANNER = "DEMO: stand-in model and stand-in Lean; no result is a real proof"
DEMO_MODEL = "standin-oprover-demo"
# The stand-in Lean's own words. A pass carries ACCEPTED as an info message (Lean reports infos on proofs it accepts
# too, so the checker's verdict is unchanged); scripted errors start with SCRIPTED, so a failed attempt's feedback
# never reads as Lean's own either.
ACCEPTED = "demo stand-in Lean accepted the scripted proof (no Lean ran)"
SCRIPTED = "demo stand-in Lean, a scripted error (no Lean ran): "
# What the stand-in REPL reports as `Lean.versionString`, and the version the demo's verify worker announces: the
# release of the default deployment with a build label saying what it is (a label is not a different Lean).
DEMO_LEAN_VERSION = "4.15.0-standin"
DEFAULT_DEMO_DIR = Path("data/demo")
MARKER = ".oprover-demo"  # the demo empties only a directory it made itself

# Latencies: long enough that the events arrive one by one as on a real box, short enough that the whole sample
# runs in under a minute. A real 8B model takes tens of seconds per proof, and Lean with Mathlib seconds per check
# and a minute or more to start a REPL (importing Mathlib); the demo says so in its banner.
GENERATE_S = 1.5  # each completion of the stand-in model
CHECK_S = 1.0  # each command the stand-in REPL judges
REPL_START_S = 2.0  # a stand-in REPL importing the header
REPLAY_S = 1.0  # one run of the stand-in kernel replay
MODEL_CAPACITY = 128  # completions the stand-in model serves at once (SGLang's --max-running-requests in `up`)

_REPAIR = re.escape("**Previous Failed Attempt:**")  # how the default prompt profile (oprover) opens a repair


@dataclass(frozen=True)
class Problem:
    name: str
    header: str
    formal_statement: str
    informal_statement: str
    source: str
    outcome: str  # what the script makes of it: "proved in round 1", "proved after a failed round", "never proved"
    answers: list[dict[str, Any]]


def load_sample() -> list[Problem]:
    """The demo's problems with their scripted answers (standins/demo/sample.json)."""
    raw = json.loads(_data("sample.json").read_text(encoding="utf-8"))
    fields = Problem.__dataclass_fields__
    return [Problem(**{key: value for key, value in item.items() if key in fields}) for item in raw["problems"]]


def _data(name: str) -> Path:
    return Path(str(resources.files("standins").joinpath("demo", name)))


def _flexible(text: str) -> str:
    """A regex matching `text` token by token, whatever whitespace lies between tokens (layout is not content)."""
    return r"\s+".join(re.escape(token) for token in text.split())


def _indented(proof: str) -> str:
    return "\n".join("  " + line for line in proof.splitlines())


def _statement_with_by(problem: Problem) -> str:
    statement = problem.formal_statement.rstrip()
    return statement if statement.endswith(":= by") else statement.removesuffix("sorry").rstrip()


def _target(problem: Problem) -> str:
    """The target as a prompt shows it, `theorem NAME … := by sorry`: a retrieved proof of the same theorem (in the
    memory once the demo proved it) is shown with its proof and never matches."""
    return rf"(?<![\w.'])theorem\s+{re.escape(problem.name)}\s[^`]*?:=\s*by\s+sorry"


def model_script(problems: list[Problem]) -> dict[str, Any]:
    """The stand-in model's script (standins/openai_server.py): answers[0] for a problem's first round, answers[k]
    for a repair round whose previous attempt was answers[k-1] (after the last, the last again)."""
    rules: list[dict[str, Any]] = []
    for problem in problems:
        answers = problem.answers
        for k in range(len(answers) - 1, -1, -1):  # the most specific first: a repair after answers[k]
            previous = rf"{_REPAIR}\s*```lean4\n[^`]*?{_flexible(answers[k]['proof'])}\s*```"
            reply = answers[min(k + 1, len(answers) - 1)]
            rules.append(_answer(problem, reply, rf"{_target(problem)}[\s\S]*?{previous}"))
        rules.append(_answer(problem, answers[0], _target(problem)))
    default = {
        "reasoning_content": "[stand-in model, demo] This theorem is not in the demo sample, so the script has no "
        "proof for it. The answer below is one the demo's stand-in Lean rejects.",
        "content": "Not in the demo sample: no proof.\n\n```lean4\nnorm_num\n```",
    }
    return {"rules": rules, "default": default}


def _answer(problem: Problem, answer: dict[str, Any], regex: str) -> dict[str, Any]:
    code = f"{_statement_with_by(problem)}\n{_indented(answer['proof'])}"
    return {
        "regex": regex,
        "reasoning_content": f"[stand-in model, demo: a scripted answer, not a model's reasoning] {answer['plan']}",
        "content": f"Proof plan: {answer['plan']}\n\n```lean4\n{code}\n```",
    }


def lean_table(problems: list[Problem]) -> dict[str, Any]:
    """The stand-in REPL's table (standins/fake_repl.py): each scripted answer, as the checker sends it (the
    statement, then the proof, to the end of the command), passes or fails with its message; anything else fails."""
    passes, failures = [], []
    for problem in problems:
        for answer in problem.answers:
            proof, verdict = answer["proof"], answer["lean"]
            if verdict == "pass":
                body = _flexible(proof)
            else:
                at = proof.index(verdict["at"])
                before, after = proof[:at], proof[at + len(verdict["at"]) :]
                parts = [_flexible(before), f"(?P<at>{_flexible(verdict['at'])})", _flexible(after)]
                body = r"\s*".join(part for part in parts if part)
            regex = rf"(?m)^{_flexible(_statement_with_by(problem))}\s+{body}\s*\Z"
            if verdict == "pass":
                passes.append({"regex": regex, "outcome": "pass", "messages": [{"severity": "info", "data": ACCEPTED}]})
            else:
                failures.append({"regex": regex, "outcome": "error", "message": SCRIPTED + verdict["error"]})
    rejected = (
        "demo stand-in Lean: this is not one of the demo sample's scripted proofs, and the stand-in accepts nothing "
        "else (it runs no Lean)"
    )
    # reported at the proof (after `:= by`), where Lean reports a failing tactic; the default covers the rest
    anything = {"regex": r":=\s*by\s+(?P<at>\S[\s\S]*?)\s*\Z", "outcome": "error", "message": rejected}
    return {
        "rules": [*passes, *failures, anything],
        "default": {"outcome": "error", "message": rejected},
        "lean_version": DEMO_LEAN_VERSION,
        "import_s": REPL_START_S,
        "check_s": CHECK_S,
    }


def demo_labelled(result: dict[str, Any], demo: bool) -> dict[str, Any]:
    """A job object or verify result as the gateway answers it: under `oprover up --demo` (ApiSettings.demo) it
    carries `"demo": true`, so a result copied out of the demo still says no Lean checked it; else it is unchanged
    (the field is absent off-demo)."""
    if demo:
        result["demo"] = True
    return result


def _lock(handle: Any) -> bool:
    """Take an exclusive lock on an open file without waiting; False if another process holds it."""
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    """The demo's directory, its settings for `up` and its children, and its stand-in model server."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.problems = load_sample()
        self.redis_url = f"redis://127.0.0.1:{_free_port()}/0"
        self.model_port = _free_port()
        self._lock: Any = None

    @classmethod
    def prepare(cls, directory: Path = DEFAULT_DEMO_DIR) -> Demo:
        """Empty (or make) the demo directory and write the scripts, tables and sample files into it."""
        from api.launch import LaunchError

        directory = directory.resolve()
        marker = directory / MARKER
        if directory.exists():
            if not marker.is_file() and any(directory.iterdir()):
                raise LaunchError(f"{directory} holds files the demo did not write; move them, or run elsewhere")
            if marker.is_file():
                with open(marker) as held:
                    if not _lock(held):
                        raise LaunchError(f"another demo runs on {directory}: stop it (Ctrl-C) or run elsewhere")
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        marker.write_text("written by `oprover up --demo`; emptied at every demo start\n")
        demo = cls(directory)
        # held while this `up` runs (closed by the OS when it exits), so a second demo here cannot empty its files
        demo._lock = open(marker)  # noqa: SIM115
        _lock(demo._lock)
        demo._write_files()
        return demo

    def _write_files(self) -> None:
        from standins.fake_repl import write_table
        from standins.fake_replay import write_replay_table

        (self.directory / "lean").mkdir()  # OPROVER_LEAN_CWD: the stand-ins read nothing there
        (self.directory / "logs").mkdir()
        table = lean_table(self.problems)
        write_table(self.directory / "lean-table.json", table.pop("rules"), **table)
        write_replay_table(self.directory / "replay-table.json", replay_s=REPLAY_S)
        (self.directory / "model-script.json").write_text(
            json.dumps(model_script(self.problems), ensure_ascii=False, indent=1), encoding="utf-8"
        )
        sample = self.directory / "sample"
        sample.mkdir()
        with open(self.directory / "sample.jsonl", "w", encoding="utf-8") as bench:
            for problem in self.problems:
                statement = f"{_statement_with_by(problem)} sorry\n"
                (sample / f"{problem.name}.lean").write_text(problem.header + statement, encoding="utf-8")
                record = {
                    "name": problem.name,
                    "header": problem.header,
                    "formal_statement": statement,
                    "informal_statement": problem.informal_statement,
                    "source": problem.source,
                    "demo_outcome": problem.outcome,
                }
                bench.write(json.dumps(record, ensure_ascii=False) + "\n")

    # --- what `up` runs -------------------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Every OPROVER_* variable of `up` and its children (the caller's own are dropped)."""
        from standins.fake_repl import lean_cmd
        from standins.fake_replay import replay_cmd

        return {
            "OPROVER_REDIS_URL": self.redis_url,  # a Redis of its own: a real service's queues never see a demo job
            "OPROVER_GENERATOR_MODEL": DEMO_MODEL,
            "OPROVER_LEAN_CMD": lean_cmd(self.directory / "lean-table.json"),
            "OPROVER_LEAN_REPLAY_CMD": replay_cmd(self.directory / "replay-table.json"),
            "OPROVER_LEAN_CWD": str(self.directory / "lean"),
            "OPROVER_LEAN_VERSION": f"v{DEMO_LEAN_VERSION}",
            "OPROVER_LEAN_MATHLIB_VERSION": "standin",
            "OPROVER_LEAN_REPL_VERSION": "standin",
            # The stand-in REPL runs none of the code it is sent (it looks verdicts up in its table), so there is
            # nothing to isolate; and the sandbox needs user namespaces, which macOS and some Linux setups lack.
            "OPROVER_LEAN_SANDBOX": "false",
            "OPROVER_QDRANT_PATH": str(self.directory / "qdrant"),
            "OPROVER_API_DEMO": "true",
        }

    def model_server(self) -> Any:
        """The stand-in model, started and stopped by `up` like the SGLang it stands in for."""
        from api.launch import ModelServer, SGLangLaunch

        command = [
            sys.executable,
            "-m",
            "standins.openai_server",
            "--port",
            "{port}",
            "--model",
            DEMO_MODEL,
            "--script",
            str(self.directory / "model-script.json"),
            "--capacity",
            str(MODEL_CAPACITY),
            "--latency-s",
            str(GENERATE_S),
        ]
        launch = SGLangLaunch(port=self.model_port, command=shlex.join(command), ready_timeout_s=60.0)
        return ModelServer(launch, log_path=self.directory / "logs" / "standin-model.log")

    def seed_memory(self, settings: Any) -> None:
        """Put the seed proofs into the demo's memory. A failure leaves the memory empty, not the demo stopped: the
        demo still proves its sample, retrieval just shows nothing until the first proof."""
        from services.errors import MemoryError_
        from services.memory import ProofMemory, import_proofs

        seed = _data("seed_memory.jsonl")
        try:
            memory = ProofMemory(settings)
            try:
                summary = import_proofs(memory, seed, progress=False)
            finally:
                memory.close()
        except (MemoryError_, OSError, ValueError) as exc:
            logger.warning("demo memory not seeded from %s: %s", seed, exc)
            return
        logger.info("demo memory seeded with %d published proofs (%s)", summary.added, seed)

    # --- what it tells the user -----------------------------------------------------------------------------------
    def starting(self) -> str:
        return (
            f"\n{'=' * 100}\n{BANNER}\n"
            f"  model: {DEMO_MODEL} (scripted answers, {GENERATE_S:g} s each); Lean: {DEMO_LEAN_VERSION} (a table of "
            f"verdicts, {CHECK_S:g} s a check)\n"
            f"  state: {self.directory} (emptied at the next demo start); Redis on {self.redis_url}\n{'=' * 100}\n"
        )

    def ready(self, url: str, metrics_url: str, default_url: str) -> str:
        shown = self._shown(self.directory / "sample")
        at = "" if url == default_url else f" --url {url}"
        lines = [
            f"\n{'=' * 100}",
            f"{BANNER}. Ready on {url}; try, in another terminal:",
            f"  oprover prove{at} {shown}/mathd_algebra_455.lean   # fails round 1, proved in round 2",
            f"  oprover prove{at} {shown}/imo_1987_p4.lean         # never proved: not found, with its attempts",
            f"  oprover eval{at} {self._shown(self.directory / 'sample.jsonl')} --out results.jsonl   # all of it",
            f"  curl -s {url}/readyz | jq .demo,.banner",
            f"  curl -s {metrics_url}/metrics | grep oprover_memory_proofs   # the memory grows with each proof",
            "The sample:",
        ]
        lines += [f"  {p.name:<26} {p.outcome}" for p in self.problems]
        lines.append("=" * 100)
        return "\n".join(lines) + "\n"

    @staticmethod
    def _shown(path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
