"""The text of the chat door: the Lean statement read out of a user's message, and the answer written back.

Reading: the statement is the last ```lean / ```lean4 block of the last user message that holds a `theorem`,
`lemma` or `example`, else bare declaration text in that message. Lines above the declaration in the block
(imports, `open`, `set_option`) are the job's header. An `example` has no name, and the prover's statements
need one, so it is proved as `theorem oprover_example`; a statement without a proof tail gets `:= by sorry`.

Writing: a proved chain's answer is the verified proof in a ```lean4 block and a one-line summary; anything
else says plainly that no proof was found, shows the chain's last attempt and Lean's last errors, and ends with
a marker line a program can look for (`<!-- oprover:status=... -->`; Markdown renderers hide it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from services.errors import InvalidStatement, RequestError
from services.leantext import blank_comments_and_strings, parse_statement

_FENCE = re.compile(r"```[ \t]*(lean4?)[ \t]*\n(.*?)(?:```|\Z)", re.IGNORECASE | re.DOTALL)
# `theorem NAME` / `lemma NAME` / `example (...` outside comments; a declaration starting a line is preferred, so
# prose above it ("the following theorem is ...") is not taken for it.
_KEYWORD = r"(?<![\w.'])(?:(theorem|lemma)(?=[ \t]+[^\s:(){}\[\],])|(example)(?=[\s(:{\[⦃]))"
_DECLARATION_AT_LINE_START = re.compile(r"(?m)^[ \t]*(?:@\[[^\]\n]*\][ \t]*)?" + _KEYWORD)
_DECLARATION = re.compile(_KEYWORD)
EXAMPLE_NAME = "oprover_example"
# Lean's errors shown in a not-proved answer: the first few say what went wrong; the rest is on the job record.
_ERRORS_SHOWN = 5
_ERROR_CHARS = 600

EXPECTED = (
    "model `oprover` proves one Lean 4 theorem: put it in the last user message as a ```lean4 code block (or as "
    "bare `theorem`/`lemma`/`example` text), e.g. ```lean4\\ntheorem t (x : ℝ) (h : 2 * x = 4) : x = 2 := by "
    "sorry\\n```"
)


@dataclass(frozen=True)
class ChatStatement:
    formal_statement: str
    header: str | None  # the block's own header lines, if it had any


def statement_from_messages(messages: list[Any]) -> ChatStatement:
    """The statement the conversation asks to prove; a `RequestError` naming `messages` says what was expected."""
    user = next((m for m in reversed(messages) if m.role == "user"), None)
    if user is None:
        raise RequestError(f"no user message: {EXPECTED}", param="messages", code="no_statement")
    text = user.text()
    candidates = [m.group(2) for m in _FENCE.finditer(text) if _find_declaration(m.group(2))]
    source = candidates[-1] if candidates else _bare_declaration(text)
    if source is None:
        raise RequestError(
            f"the last user message holds no Lean theorem: {EXPECTED}", param="messages", code="no_statement"
        )
    return _split(source)


def _blank(text: str) -> str:
    return blank_comments_and_strings(text, strings=False)


def _find_declaration(text: str) -> re.Match[str] | None:
    blanked = _blank(text)
    return _DECLARATION_AT_LINE_START.search(blanked) or _DECLARATION.search(blanked)


def _bare_declaration(text: str) -> str | None:
    """Declaration text written straight into the message: from its keyword's line to the end."""
    match = _find_declaration(text)
    if match is None:
        return None
    keyword = match.start(1) if match.group(1) else match.start(2)
    line_start = text.rfind("\n", 0, keyword) + 1
    return text[line_start if not _blank(text[line_start:keyword]).strip() else keyword :]


def _split(source: str) -> ChatStatement:
    """Header lines above the declaration, and the statement (with any comment right above it)."""
    blanked = _blank(source)
    match = _find_declaration(source)
    assert match is not None  # callers pass text that holds a declaration
    line_start = blanked.rfind("\n", 0, match.start(1) if match.group(1) else match.start(2)) + 1
    lines = source[:line_start].splitlines(keepends=True)
    blank_lines = blanked[:line_start].splitlines(keepends=True)
    cut = len(lines)
    while cut > 0 and not blank_lines[cut - 1].strip():  # comments and blank lines stay with the statement
        cut -= 1
    header = "".join(lines[:cut]).strip()
    statement = ("".join(lines[cut:]) + source[line_start:]).strip()
    example = _find_declaration(statement)
    if example is not None and example.group(2):
        statement = statement[: example.start(2)] + f"theorem {EXAMPLE_NAME}" + statement[example.end(2) :]
    if ":=" not in _blank(statement):
        statement += " := by sorry"
    try:
        parse_statement(statement, param="messages")
    except InvalidStatement as exc:
        raise RequestError(f"{exc.message} ({EXPECTED})", param="messages", code="invalid_statement") from None
    return ChatStatement(formal_statement=statement, header=header or None)


# --- the answer ----------------------------------------------------------------------------------------------------
def _seconds(job: dict[str, Any]) -> float:
    end = job.get("finished_at") or job.get("created_at") or 0.0
    return max(0.0, end - (job.get("created_at") or end))


def _chain_attempts(job: dict[str, Any], chain: int) -> list[dict[str, Any]]:
    return [a for a in job["attempts"] if a["chain"] == chain]


def status_marker(job: dict[str, Any], chain: int) -> str:
    return f"<!-- oprover:status={chain_status(job, chain)} job={job['id']} chain={chain} -->"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def chain_status(job: dict[str, Any], chain: int) -> str:
    """What this chain came to: `proved`, or the job's status (`failed`, `cancelled`, `error`), or `stopped`
    when another chain proved the theorem first."""
    if job["status"] == "proved":
        return "proved" if (job.get("proved_by") or {}).get("chain") == chain else "stopped"
    return str(job["status"])


def answer(job: dict[str, Any], chain: int) -> str:
    """The `content` of choice `chain`: the proof, or an honest account of why there is none."""
    status = chain_status(job, chain)
    attempts = job["attempts"]
    chains = job["config"]["attempts"]
    deepest = max((a["round"] for a in attempts), default=0)
    summary = (
        f"{_count(len(attempts), 'attempt')} over {_count(chains, 'chain')}, up to round {deepest} "
        f"of {job['config']['rounds']}, {_seconds(job):.1f} s"
    )
    if status == "proved":
        winner = job["proved_by"]
        return (
            f"```lean4\n{(job['proof'] or '').strip()}\n```\n\n"
            f"Proved: Lean accepted this proof (chain {winner['chain']}, round {winner['round']}; {summary}).\n"
        )
    why = {
        "failed": "no attempt passed Lean's check",
        "stopped": f"this chain was stopped when chain {(job.get('proved_by') or {}).get('chain')} found a proof",
        "cancelled": "the proof job was cancelled",
        "error": f"the proof job ended with an error: {job.get('error')}",
    }.get(status, f"the proof job is {status}")
    parts = [f"Not proved: {why} ({summary})."]
    last = _chain_attempts(job, chain)[-1:] or []
    if last:
        attempt = last[0]
        parts.append(
            f"The last attempt (chain {chain}, round {attempt['round']}; Lean's verdict: {attempt.get('verdict')}):"
        )
        parts.append(f"```lean4\n{(attempt.get('code') or '(no Lean code in the completion)').strip()}\n```")
        errors = lean_errors(attempt)
        if errors:
            parts.append("Lean's last errors:\n```text\n" + "\n".join(errors) + "\n```")
    parts.append(status_marker(job, chain))
    return "\n\n".join(parts) + "\n"


def lean_errors(attempt: dict[str, Any]) -> list[str]:
    """Lean's error messages on an attempt (`line:col: text`), or the checker's feedback when it gave none."""
    errors = []
    for message in attempt.get("messages") or []:
        if message.get("severity") != "error":
            continue
        pos = message.get("pos") or {}
        where = f"{pos.get('line')}:{pos.get('column')}: " if pos else ""
        errors.append(where + str(message.get("data", ""))[:_ERROR_CHARS])
    if not errors and attempt.get("feedback"):
        errors.append(str(attempt["feedback"])[: _ERROR_CHARS * 2])
    return errors[:_ERRORS_SHOWN]


def first_error(attempt: dict[str, Any]) -> str | None:
    errors = lean_errors(attempt)
    return errors[0].splitlines()[0] if errors else None
