"""Prompt profiles: versioned TOML files that say exactly what each prover model is sent.

A profile file (`<name>.toml`, schema 1):

    name = "oprover"                 # must equal the file name
    version = "1"                    # bump on every byte change of a template
    description = "..."
    sources = ["repo@commit:path", ...]   # where the wording comes from, or a note that it is ours
    keeps_history = false            # true: repair rounds are new turns after the previous answer

    [sampling]                       # defaults; a request may override them
    temperature = 0.6
    top_p = 0.95
    max_tokens = 32768
    stop = []

    [request]                        # extra body fields sent with every completion (optional)

    [templates]
    system = "..."                   # optional system message
    user = "..."                     # the first user message: the stable part
    repair = "..."                   # rounds >= 2: appended to `user` (keeps_history = false) or the next user turn
    assistant = "..."                # keeps_history = true: the previous attempt as the assistant turn
    retrieved = "..."                # the retrieval block, rendered only when proofs were retrieved
    retrieved_item = "..."           # one retrieved proof

Templates use `{{name}}` placeholders, `{{#name}}…{{/name}}` (only when `name` is non-empty) and `{{^name}}…
{{/name}}` (only when it is empty). Values are inserted once and never re-read, so Lean code with braces is
safe. `system` and `user` may not use per-round values (previous attempt, feedback, round): the loader refuses
such a file, which is what makes every profile's first message a stable prefix for SGLang's radix cache.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.domain import ProofTask, RetrievedProof, Sampling
from services.errors import InvalidStatement
from services.leantext import parse_statement

SCHEMA_VERSION = 1

_TOKEN = re.compile(r"\{\{([#^/]?)([a-z][a-z0-9_]*)\}\}")
_SECTION = re.compile(r"\{\{([#^])([a-z][a-z0-9_]*)\}\}(.*?)\{\{/\2\}\}", re.DOTALL)

# Values known for the whole job (the same in every round and every chain).
STABLE_FIELDS = frozenset(
    {
        "header",
        "formal_statement",
        "statement_by",
        "statement_sorry",
        "statement_sorry_block",
        "code_by",
        "code_sorry",
        "code_sorry_block",
        "informal_statement",
        "problem",
        "theorem_name",
        "retrieved",
        "retrieved_count",
    }
)
# Values that change from round to round: only `repair` and `assistant` may use them.
ROUND_FIELDS = frozenset(
    {
        "previous_code",
        "previous_output",
        "feedback",
        "verdict",
        "round",
        "previous_round",
        "previous_round_index0",
    }
)
ITEM_FIELDS = frozenset({"index", "id", "formal_statement", "proof", "score"})
BLOCK_FIELDS = frozenset({"items", "count"})

_TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "system": STABLE_FIELDS,
    "user": STABLE_FIELDS,
    "repair": STABLE_FIELDS | ROUND_FIELDS,
    "assistant": STABLE_FIELDS | ROUND_FIELDS,
    "retrieved": BLOCK_FIELDS,
    "retrieved_item": ITEM_FIELDS,
}


@dataclass(frozen=True)
class ProfileSampling(Sampling):
    """The profile's sampling defaults: a `Sampling`, also readable like a mapping (`.get("stop", ())`)."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.__dataclass_fields__ else default

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


class PromptProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and what is wrong with it."""


def _placeholders(template: str) -> set[str]:
    return {m.group(2) for m in _TOKEN.finditer(template)}


def _check_template(where: str, key: str, template: str) -> None:
    allowed = _TEMPLATE_FIELDS[key]
    unknown = _placeholders(template) - allowed
    if unknown:
        hint = " (per-round values belong in `repair`/`assistant`)" if unknown & ROUND_FIELDS else ""
        raise PromptProfileError(
            f"{where}: templates.{key} uses unknown placeholders {sorted(unknown)}{hint}; allowed: {sorted(allowed)}"
        )
    stack: list[str] = []
    for match in _TOKEN.finditer(template):
        kind, name = match.group(1), match.group(2)
        if kind in ("#", "^"):
            stack.append(name)
        elif kind == "/" and (not stack or stack.pop() != name):
            raise PromptProfileError(f"{where}: templates.{key} closes section {name!r} that is not open")
    if stack:
        raise PromptProfileError(f"{where}: templates.{key} leaves section {stack[-1]!r} open")


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill a template: sections first (on template text only), then each placeholder exactly once."""

    def section(match: re.Match[str]) -> str:
        kind, name, inner = match.group(1), match.group(2), match.group(3)
        present = bool(values.get(name))
        return inner if present == (kind == "#") else ""

    previous = None
    text = template
    while previous != text:  # nested sections resolve from the inside out
        previous, text = text, _SECTION.sub(section, text)
    return _TOKEN.sub(lambda m: values.get(m.group(2), ""), text)


@dataclass(frozen=True)
class PromptProfile:
    name: str
    version: str
    description: str
    sampling: ProfileSampling
    keeps_history: bool
    templates: Mapping[str, str]
    request_extra: Mapping[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    digest: str = ""  # sha256 of the file's bytes: record it on every attempt
    path: str = ""
    feedback_renderer: Callable[[ProofTask], str] | None = field(default=None, compare=False, repr=False)

    @property
    def uses_retrieval(self) -> bool:
        """Whether retrieved proofs appear in the prompt at all (if not, the worker can skip retrieval)."""
        return any("retrieved" in _placeholders(t) for t in self.templates.values())

    # -- rendering -------------------------------------------------------------------------------------

    def stable_values(self, task: ProofTask) -> dict[str, str]:
        header = task.header.strip("\n")
        try:
            statement = parse_statement(task.formal_statement)
            head, name = statement.head, statement.name
        except InvalidStatement:  # the gateway validated it; still, never fail a prompt over layout
            head = re.sub(r":=\s*(by(\s+sorry)?)?\s*\Z", "", task.formal_statement.rstrip()).rstrip() + " :="
            name = ""
        statement_by = f"{head} by"
        statement_sorry = f"{head} by sorry"
        statement_sorry_block = f"{head} by\n  sorry"

        def with_header(statement_text: str) -> str:
            return f"{header}\n\n{statement_text}" if header else statement_text

        retrieved = self._render_retrieved(task.retrieved)
        return {
            "header": header,
            "formal_statement": task.formal_statement.strip("\n"),
            "statement_by": statement_by,
            "statement_sorry": statement_sorry,
            "statement_sorry_block": statement_sorry_block,
            "code_by": with_header(statement_by),
            "code_sorry": with_header(statement_sorry),
            "code_sorry_block": with_header(statement_sorry_block),
            "informal_statement": (task.informal_statement or "").strip(),
            # What to show as "the problem" when there is no informal statement: the statement itself.
            "problem": (task.informal_statement or "").strip() or statement_by,
            "theorem_name": name,
            "retrieved": retrieved,
            "retrieved_count": str(len(task.retrieved)) if retrieved else "",
        }

    def _render_retrieved(self, proofs: tuple[RetrievedProof, ...]) -> str:
        block = self.templates.get("retrieved", "")
        if not proofs or not block:
            return ""
        item_template = self.templates.get("retrieved_item", "{{proof}}")
        items = [
            render(
                item_template,
                {
                    "index": str(i),
                    "id": proof.id,
                    "formal_statement": proof.formal_statement.strip("\n"),
                    "proof": proof.proof.strip("\n"),
                    "score": f"{proof.score:.3f}",
                },
            )
            for i, proof in enumerate(proofs, 1)
        ]
        return render(block, {"items": "\n\n".join(items), "count": str(len(items))})

    def round_values(self, task: ProofTask) -> dict[str, str]:
        previous = task.previous
        if previous is None:
            return {}
        code = previous.code.strip("\n")
        feedback = self.feedback_renderer(task) if self.feedback_renderer else previous.feedback
        output = task.extra.get("previous_output") or (f"```lean4\n{code}\n```" if code else "")
        return {
            "previous_code": code,
            "previous_output": output,
            "feedback": feedback.strip("\n"),
            "verdict": str(previous.verdict),
            "round": str(task.round),
            "previous_round": str(task.round - 1),
            "previous_round_index0": str(task.round - 2),
        }

    def messages(self, task: ProofTask) -> list[dict[str, str]]:
        """The chat messages of one round: stable part first, the per-round part last."""
        values = self.stable_values(task)
        messages: list[dict[str, str]] = []
        system = render(self.templates.get("system", ""), values)
        if system:
            messages.append({"role": "system", "content": system})
        user = render(self.templates["user"], values)
        if task.previous is None or task.round <= 1:
            messages.append({"role": "user", "content": user})
            return messages
        values |= self.round_values(task)
        repair = render(self.templates["repair"], values)
        if self.keeps_history:
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": render(self.templates["assistant"], values)})
            messages.append({"role": "user", "content": repair})
        else:
            messages.append({"role": "user", "content": user + repair})
        return messages


def parse_profile(
    raw_bytes: bytes,
    *,
    where: str,
    expected_name: str | None = None,
    feedback_renderers: Mapping[str, Callable[[ProofTask], str]] | None = None,
) -> PromptProfile:
    """Build a profile from a file's bytes, refusing anything the loader could not render reliably."""
    import tomllib

    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PromptProfileError(f"{where}: not valid UTF-8 TOML: {exc}") from exc

    def need(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], prefix: str = "") -> Any:
        if key not in table:
            raise PromptProfileError(f"{where}: missing {prefix}{key}")
        if not isinstance(table[key], kind) or (isinstance(table[key], bool) and kind is not bool):
            raise PromptProfileError(f"{where}: {prefix}{key} has the wrong type ({type(table[key]).__name__})")
        return table[key]

    schema = raw.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise PromptProfileError(f"{where}: schema {schema!r} is not supported (this loader reads {SCHEMA_VERSION})")
    name = need(raw, "name", str)
    if expected_name is not None and name != expected_name:
        raise PromptProfileError(f"{where}: name {name!r} differs from the file name {expected_name!r}")
    version = str(need(raw, "version", (str, int)))
    keeps_history = need(raw, "keeps_history", bool)
    sampling_raw = need(raw, "sampling", dict)
    try:
        temperature = float(need(sampling_raw, "temperature", (int, float), "sampling."))
        top_p = float(need(sampling_raw, "top_p", (int, float), "sampling."))
        max_tokens = int(need(sampling_raw, "max_tokens", int, "sampling."))
        stop = tuple(str(s) for s in sampling_raw.get("stop", []))
    except (TypeError, ValueError) as exc:
        raise PromptProfileError(f"{where}: bad sampling: {exc}") from exc
    if not (0 <= temperature <= 2 and 0 < top_p <= 1 and max_tokens >= 1):
        raise PromptProfileError(f"{where}: sampling out of range")
    templates = dict(need(raw, "templates", dict))
    unknown = set(templates) - set(_TEMPLATE_FIELDS)
    if unknown:
        raise PromptProfileError(f"{where}: unknown templates {sorted(unknown)}")
    for key, template in templates.items():
        if not isinstance(template, str):
            raise PromptProfileError(f"{where}: templates.{key} must be a string")
        _check_template(where, key, template)
    required = ["user", "repair"] + (["assistant"] if keeps_history else [])
    for key in required:
        if not templates.get(key):
            raise PromptProfileError(f"{where}: templates.{key} is required")
    request_extra = raw.get("request", {})
    if not isinstance(request_extra, dict):
        raise PromptProfileError(f"{where}: [request] must be a table")
    sources = raw.get("sources", [])
    renderer_name = raw.get("feedback", {}).get("style", "plain") if isinstance(raw.get("feedback"), dict) else "plain"
    renderers = feedback_renderers or {}
    if renderer_name != "plain" and renderer_name not in renderers:
        raise PromptProfileError(f"{where}: unknown feedback style {renderer_name!r}")
    return PromptProfile(
        name=name,
        version=version,
        description=str(raw.get("description", "")),
        sampling=ProfileSampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop),
        keeps_history=keeps_history,
        templates=templates,
        request_extra=json.loads(json.dumps(request_extra)),
        sources=tuple(str(s) for s in sources),
        digest=hashlib.sha256(raw_bytes).hexdigest(),
        path=where,
        feedback_renderer=renderers.get(renderer_name),
    )
