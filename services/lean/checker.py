"""`LeanChecker`: theorem and code in, a verdict out, failing closed at every step (docs/lean.md).

The fast path, in a warm REPL reused across checks, can only say "not a pass":

1. text policy on the model's code (`policy.compose`): a violation is `rejected` before Lean sees anything;
2. the requested statement is imposed: Lean compiles the helpers as one command, then the statement verbatim +
   the model's body as a second command on the helpers' environment;
3. compile in the header's environment: any error, any sorry (listed or as the warning in either quote style), a
   heartbeat/recursion-limit message, a `{"message": ...}` reply, a timeout, EOF or an unparseable reply is not
   a pass;
4. `#print axioms` on the target (every named theorem without a statement): its standard answer must be seen and
   list only propext, Classical.choice, Quot.sound;
5. `#check @_root_.<target>` under `pp.all` must print what it prints for the requested statement alone.

Everything the REPL says there could have been written by the code it ran. So a claimed pass goes to the trusted
path, whose verdict alone is the check's:

6. a REPL that has run no check yet elaborates the requested statement (proved by `sorry`) and writes that
   environment to a file (`pickleTo`), which is taken out of its reach, before any model code is sent to it;
   then it compiles the model's commands and writes the resulting environment to a second file;
7. `replay.run_replay`: a fresh sandboxed process that never elaborates or runs anything submitted replays
   every new constant of that file through the kernel, compares the theorem's type with the reference's as an
   `Expr` and collects its axioms from the replayed constants. Its verdict decides.

A proof that crashes or hangs its REPL gets `error`/`timeout` and the process is killed and replaced; only
infrastructure failures that a retry could fix raise `LeanError`.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.domain import Verdict
from services.errors import LeanError, RequestError
from services.lean.feedback import build_feedback
from services.lean.policy import (
    STANDARD_AXIOMS,
    Composed,
    compose,
    header_parts,
    parse_axioms_answer,
    print_axioms_command,
)
from services.lean.pool import HeaderError, Lease, ReplPool
from services.lean.process import ReplFailure
from services.lean.protocol import LeanMessage, ReplReply, Sorry
from services.lean.replay import new_workdir, run_replay
from services.lean.sandbox import HandoffFailed, PickleError
from services.lean.setup import mathlib_revision
from services.leantext import parse_statement
from services.settings import LeanSettings

logger = logging.getLogger(__name__)

_SORRY_WARNING = re.compile(r"declaration uses ['\"]sorry['\"]")
_RESOURCE_MESSAGE = re.compile(r"\(deterministic\) timeout|maxHeartbeats|maximum recursion depth", re.I)
_TYPE_COMMAND = "set_option pp.all true in\n#check @_root_.{name}"
REFERENCE_CACHE = 4096  # requested statements whose printed type (fast path only) is remembered
# Modules the usual headers import that `import Mathlib` already brings in.
_COVERED_BY_MATHLIB = ("Mathlib", "Aesop", "Batteries", "Lean", "Std", "Qq", "ProofWidgets", "Plausible", "Init")


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    messages: list[LeanMessage]
    axioms: list[str] | None
    feedback: str
    time_ms: int
    compiled: str  # the exact full Lean text checked: header + helpers + imposed statement + body
    versions: dict[str, str] = field(default_factory=dict)
    detail: str = ""  # one line on why (for logs and the job record)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "messages": [m.to_json() for m in self.messages],
            "axioms": list(self.axioms) if self.axioms is not None else None,
            "feedback": self.feedback,
            "time_ms": self.time_ms,
            "compiled": self.compiled,
            "versions": dict(self.versions),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class _Outcome:
    """What a stage concluded: the verdict and what to tell about it."""

    verdict: Verdict
    messages: list[LeanMessage]
    detail: str = ""
    axioms: list[str] | None = None
    sorries: tuple[Sorry, ...] = ()
    env: int | None = None  # the REPL environment a compile ended in
    candidate: Path | None = None  # a claimed pass's environment file, written by a REPL that ran no other check
    reference: Path | None = None  # the requested statement's, written before that REPL saw model code


class LeanChecker:
    def __init__(self, settings: LeanSettings) -> None:
        if not settings.replay_cmd:
            raise LeanError(
                "OPROVER_LEAN_REPLAY_CMD is not set: without the kernel replay no proof can pass", transient=False
            )
        self.settings = settings
        self.pool = ReplPool(settings)
        self._static_versions = _configured_versions(settings)
        # Printed reference types for the fast path's `#check` filter, written only by a REPL that had run no
        # model code when it printed them (the trusted path's fresh REPL, before the model's commands).
        self._reference_types: dict[tuple[str, str], str] = {}
        self._reference_lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.pool.start(wait=True)

    def close(self) -> None:
        self.pool.close()

    def health(self) -> None:
        self.pool.health()

    def versions(self) -> dict[str, str]:
        return {"lean": self.pool.lean_version or self.settings.version, **self._static_versions}

    # -- checking ------------------------------------------------------------------------------------------------
    def check(
        self,
        code: str,
        *,
        formal_statement: str | None = None,
        header: str | None = None,
        timeout_s: float | None = None,
    ) -> CheckResult:
        started = time.monotonic()
        header = self.settings.header if header is None else header
        imports, rest = header_parts(header)
        self._require_covered(imports)
        composed = compose(code, header=header, formal_statement=formal_statement)
        compiled = header.rstrip("\n") + "\n\n" + composed.command
        composed.positions.header_lines = header.rstrip("\n").count("\n") + 2

        def done(
            verdict: Verdict,
            messages: list[LeanMessage],
            axioms: list[str] | None = None,
            sorries: tuple[Sorry, ...] = (),
            detail: str = "",
        ) -> CheckResult:
            feedback = build_feedback(
                verdict,
                code=code,
                messages=messages,
                sorries=sorries,
                detail=detail,
                limit=self.settings.feedback_errors,
            )
            return CheckResult(
                verdict=verdict,
                messages=messages,
                axioms=axioms,
                feedback=feedback,
                time_ms=int((time.monotonic() - started) * 1000),
                compiled=compiled,
                versions=self.versions(),
                detail=detail,
            )

        if composed.violations:
            return done(
                Verdict.REJECTED, [v.message(code) for v in composed.violations], detail=composed.violations[0].rule
            )

        limit = self.settings.timeout_s if timeout_s is None else timeout_s
        names = [composed.target] if composed.target else composed.theorems
        workdir = new_workdir()
        try:
            with self.pool.lease() as lease:
                # A REPL that has run no check yet can make the claim the replay checks (step 6) at once.
                trusted = lease.repl.checks == 0
                claim = self._run(lease, composed, formal_statement, header, rest, limit, workdir if trusted else None)
            if claim.verdict is Verdict.PASS and claim.candidate is None:
                # Claimed by a REPL that ran other checks' code before, which may be what answered: the check is
                # repeated in a REPL that has run none.
                with self.pool.fresh() as lease:
                    again = self._run(lease, composed, formal_statement, header, rest, limit, workdir)
                if again.verdict is not Verdict.PASS:
                    logger.warning("a claimed pass did not hold in a fresh REPL: %s", again.detail)
                    detail = f"in a REPL that ran no other check: {again.detail}"
                    return done(again.verdict, [*claim.messages, *again.messages], again.axioms, again.sorries, detail)
                claim = again
            if claim.verdict is not Verdict.PASS or claim.candidate is None:
                return done(claim.verdict, claim.messages, claim.axioms, claim.sorries, claim.detail)
            # The REPL that wrote the files is no longer asked anything; the replay alone decides.
            replayed = run_replay(
                self.settings,
                workdir=workdir,
                candidate=claim.candidate,
                reference=claim.reference,
                imports=list(self.pool.imports),  # what every REPL imported (a request's header may name less)
                theorems=names,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if replayed.ok:
            return done(Verdict.PASS, claim.messages, replayed.axioms, claim.sorries)
        if replayed.infrastructure:
            detail = f"the kernel replay could not judge the proof: {replayed.reason}"
            return done(Verdict.ERROR, [*claim.messages, LeanMessage("error", detail, source="checker")], detail=detail)
        detail = f"the kernel replay refused the proof: {replayed.reason}"
        note = LeanMessage("error", detail, source="checker")
        return done(Verdict.FAIL, [*claim.messages, note], replayed.axioms, claim.sorries, detail)

    def _run(
        self,
        lease: Lease,
        composed: Composed,
        formal_statement: str | None,
        header: str,
        rest: str,
        limit: float,
        workdir: Path | None,
    ) -> _Outcome:
        """Steps 2-5 in the leased REPL: a failure is final, a pass only a claim. With `workdir` (the REPL has run
        no check before) also step 6: the reference is elaborated and written to a file before any model code is
        sent, and a claimed pass leaves the environment file the replay reads."""
        deadline = time.monotonic() + limit
        try:
            try:
                header_env = lease.repl.header_env(rest, deadline)
            except HeaderError as exc:
                raise RequestError(str(exc), param="header", code="invalid_header") from exc
            reference = None
            if workdir is not None and composed.target and formal_statement is not None:
                reference, problem = self._reference(
                    lease, composed.target, header_env, formal_statement, header, workdir, deadline
                )
                if reference is None:
                    return _Outcome(Verdict.FAIL, [LeanMessage("error", problem, source="checker")], problem)
            compiled = self._compile(lease, composed, header_env, deadline)
            if compiled.verdict is not Verdict.PASS or compiled.env is None:
                return compiled
            names = [composed.target] if composed.target else composed.theorems
            axioms, problem = self._axioms(lease, names, compiled.env, deadline)
            if not problem and composed.target and formal_statement is not None:
                problem = self._same_type(
                    lease, composed.target, compiled.env, header_env, formal_statement, header, deadline
                )
            if problem:
                note = LeanMessage(severity="error", data=problem, source="checker")
                return _Outcome(Verdict.FAIL, [*compiled.messages, note], problem, axioms, compiled.sorries)
            candidate = None
            if workdir is not None:
                # Nothing of the process that wrote the file may still run while it is read and replayed.
                lease.retire = "claimed a pass: retired before its environment file is replayed"
                candidate = self._pickle(lease, compiled.env, workdir, "candidate", deadline, last=True)
        except ReplFailure as failure:
            lease.broken = f"{failure.kind}: {failure.detail}"
            return _failure_outcome(failure, limit)
        except HandoffFailed as exc:
            # Our plumbing failed, not the proof: no verdict, the step is retried (a transient LeanError).
            lease.broken = f"environment file handoff failed: {exc}"
            raise LeanError(f"the REPL's environment file could not be taken: {exc}", transient=True) from exc
        except PickleError as exc:
            lease.broken = f"environment file refused: {exc}"
            detail = f"the REPL's environment file was refused: {exc}"
            return _Outcome(Verdict.ERROR, [LeanMessage("error", detail, source="checker")], detail)
        return _Outcome(
            Verdict.PASS, compiled.messages, "", axioms, compiled.sorries, compiled.env, candidate, reference
        )

    def _compile(self, lease: Lease, composed: Composed, env: int, deadline: float) -> _Outcome:
        """Send the composed commands one after another; a pass carries the environment they ended in."""
        messages: list[LeanMessage] = []
        sorries: tuple[Sorry, ...] = ()
        for command in composed.commands:
            reply = lease.process.request(command, env, deadline=deadline)
            verdict, new_messages, detail = self._judge(reply, composed)
            messages += new_messages
            sorries += reply.sorries
            if reply.error is not None:
                lease.broken = f"error reply: {reply.error}"
            if verdict is not Verdict.PASS or reply.env is None:
                return _Outcome(verdict, messages, detail, None, sorries)
            env = reply.env
        return _Outcome(Verdict.PASS, messages, "", None, sorries, env)

    def _reference(
        self,
        lease: Lease,
        name: str,
        header_env: int,
        formal_statement: str,
        header: str,
        workdir: Path,
        deadline: float,
    ) -> tuple[Path | None, str]:
        """The requested statement proved by `sorry`, elaborated by a REPL that has seen no model code: its
        environment file (the replay's reference type) and its printed type (the fast path's filter)."""
        statement = parse_statement(formal_statement).head + " by\n  sorry"
        reply = lease.process.request(statement, header_env, deadline=deadline)
        errors = [m.data for m in reply.messages if m.is_error]
        if reply.error is not None or errors or reply.env is None:
            why = reply.error or "; ".join(errors) or "no environment"
            return None, f"the requested statement does not elaborate on its own ({why})"
        printed, problem = _type_of(lease, name, reply.env, deadline)
        if not problem:
            self._remember_reference((header, formal_statement), printed)
        return self._pickle(lease, reply.env, workdir, "reference", deadline, last=False), ""

    def _pickle(self, lease: Lease, env: int, workdir: Path, what: str, deadline: float, *, last: bool) -> Path:
        """Have the REPL write environment `env` into its private dir, then take the file out of its reach. `last`:
        the REPL has run model code and is asked nothing more, so every process of it is ended before the file is
        read (nothing can change it meanwhile); the reference is taken before any model code was sent."""
        name = f"{what}-{secrets.token_hex(8)}.olean"
        reply = lease.process.pickle(env, lease.process.tmpdir / name, deadline=deadline)
        if reply.error is not None or reply.env != env:
            raise PickleError(f"`pickleTo` failed: {reply.error or reply.raw}")
        return lease.process.take_file(name, workdir / f"{what}.olean", self.settings.max_pickle_mb << 20, stop=last)

    def _remember_reference(self, key: tuple[str, str], printed: str) -> None:
        with self._reference_lock:
            if key not in self._reference_types and len(self._reference_types) >= REFERENCE_CACHE:
                self._reference_types.pop(next(iter(self._reference_types)))
            self._reference_types[key] = printed

    def _same_type(
        self, lease: Lease, name: str, env: int, header_env: int, formal_statement: str, header: str, deadline: float
    ) -> str:
        """The fast path's type filter: Lean prints (`pp.all`) the type of `_root_.<name>` in the final environment
        and for the requested statement proved by `sorry`; the two must be the same text. The reference text
        comes from the cache (filled only by a REPL that had run no model code) or is printed here and not kept:
        this REPL may run code that lies. Catches a swallowed, renamed, redeclared or weakened target early;
        the replay's `Expr` comparison is what decides. Returns a problem or ""."""
        got, problem = _type_of(lease, name, env, deadline)
        if problem:
            return f"the type check of `{name}` failed: {problem}"
        with self._reference_lock:
            expected = self._reference_types.get((header, formal_statement))
        if expected is None:
            reference = parse_statement(formal_statement).head + " by\n  sorry"
            reply = lease.process.request(reference, header_env, deadline=deadline)
            errors = [m.data for m in reply.messages if m.is_error]
            if reply.error is not None or errors or reply.env is None:
                why = reply.error or "; ".join(errors) or "no environment"
                return f"the requested statement does not elaborate on its own ({why})"
            expected, problem = _type_of(lease, name, reply.env, deadline)
            if problem:
                return f"the type check of the requested statement failed: {problem}"
        if " ".join(got.split()) != " ".join(expected.split()):
            return (
                f"`{name}` in the checked environment is not the requested theorem: Lean prints its type as "
                f"{_clip(got)!r}, the requested statement's as {_clip(expected)!r}"
            )
        return ""

    def _require_covered(self, imports: list[str]) -> None:
        require_imports_loaded(imports, self.pool.imports)

    @staticmethod
    def _map(message: LeanMessage, composed: Composed) -> LeanMessage:
        pos_map = composed.positions
        return LeanMessage(
            severity=message.severity,
            data=message.data,
            pos=pos_map.to_code(message.pos),
            end_pos=pos_map.to_code(message.end_pos),
            compiled_pos=pos_map.to_compiled(message.pos),
            compiled_end_pos=pos_map.to_compiled(message.end_pos),
            source="lean",
        )

    def _judge(self, reply: ReplReply, composed: Composed) -> tuple[Verdict, list[LeanMessage], str]:
        messages = [self._map(m, composed) for m in reply.messages]
        if reply.error is not None:
            detail = f"the REPL answered with an error: {reply.error}"
            kind = Verdict.ERROR if "Unknown environment" in reply.error else Verdict.FAIL
            return kind, [*messages, LeanMessage("error", reply.error, source="lean")], detail
        if reply.env is None:
            return Verdict.ERROR, messages, "the REPL's reply has no environment"
        errors = [m for m in messages if m.is_error]
        if errors:
            return Verdict.FAIL, messages, f"{len(errors)} Lean error(s)"
        if any(_RESOURCE_MESSAGE.search(m.data) for m in messages):  # whatever its severity
            return Verdict.FAIL, messages, "Lean reported a heartbeat/recursion limit"
        if reply.sorries or any(_SORRY_WARNING.search(m.data) for m in messages):
            return Verdict.FAIL, messages, "the proof uses sorry"
        return Verdict.PASS, messages, ""

    @staticmethod
    def _axioms(lease: Lease, names: list[str], env: int, deadline: float) -> tuple[list[str], str]:
        """Run `#print axioms` per name; return (union of axioms, problem or "")."""
        found: list[str] = []
        for name in names:
            command = print_axioms_command(name)
            reply = lease.process.request(command, env, deadline=deadline)
            answers = [
                answer
                for m in reply.messages
                if m.severity == "info" and (answer := parse_axioms_answer(m.data)) is not None
            ]
            if reply.error is not None or not answers or any(m.is_error for m in reply.messages):
                why = reply.error or "; ".join(m.data for m in reply.messages) or "no answer"
                return found, f"`{command}` gave no standard answer ({why})"
            printed, axioms = answers[0]
            if printed != name:  # e.g. resolved inside a namespace the code left open: not our theorem
                return found, f"`{command}` answered about `{printed}`"
            found += [a for a in axioms if a not in found]
        extra = [a for a in found if a not in STANDARD_AXIOMS]
        if extra:
            return found, f"the proof depends on non-standard axioms: {', '.join(extra)}"
        return found, ""


def require_imports_loaded(imports: list[str], loaded: list[str]) -> None:
    """Raise a `RequestError` (param `header`) for a requested import the REPLs, which import `loaded`, lack.

    Also used by the gateway, which refuses such a request before enqueueing it."""
    have = set(loaded)
    for module in imports:
        root = module.split(".")[0]
        if module in have or any(module.startswith(m + ".") for m in have):
            continue
        if "Mathlib" in have and root in _COVERED_BY_MATHLIB:
            continue
        raise RequestError(
            f"header imports {module}, which this Lean worker does not load (it imports "
            f"{', '.join(loaded) or 'nothing'})",
            param="header",
            code="unsupported_import",
        )


def _type_of(lease: Lease, name: str, env: int, deadline: float) -> tuple[str, str]:
    """(what `#check @_root_.<name>` prints with `pp.all`, problem or ""): exactly one info message, no error."""
    reply = lease.process.request(_TYPE_COMMAND.format(name=name), env, deadline=deadline)
    if reply.error is not None:
        return "", f"the REPL answered with an error: {reply.error}"
    errors = [m.data for m in reply.messages if m.is_error]
    infos = [m.data for m in reply.messages if m.severity == "info"]
    if errors or len(infos) != 1 or not infos[0].strip():
        return "", "; ".join(errors) or f"expected one answer, got {len(infos)}"
    return infos[0], ""


def _failure_outcome(failure: ReplFailure, limit: float) -> _Outcome:
    logger.info("check ended by %s: %s", failure.kind, failure.detail)
    if failure.kind == "timeout":
        detail = f"no answer within {limit:g} s; the Lean process was killed"
        verdict = Verdict.TIMEOUT
    else:
        detail, verdict = _failure_text(failure), Verdict.ERROR
    return _Outcome(verdict, [LeanMessage(severity="error", data=detail, source="checker")], detail)


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"


def _failure_text(failure: ReplFailure) -> str:
    return {
        "crash": "the Lean process crashed on this proof",
        "memory_limit": "the proof exceeded the memory limit",
        "output_limit": "Lean's output for this proof exceeded the size limit",
        "protocol": "the REPL's reply could not be read",
    }.get(failure.kind, "the Lean checker failed") + f" ({failure.detail})"


def _configured_versions(settings: LeanSettings) -> dict[str, str]:
    mathlib = settings.mathlib_version
    if mathlib is None and settings.cwd is not None:
        mathlib = mathlib_revision(Path(settings.cwd))
    return {"mathlib": mathlib or "unknown", "repl": settings.repl_version or "unknown"}
