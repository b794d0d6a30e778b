"""Feedback for the model's next round: what went wrong, where, and the goal Lean was looking at.

Errors come first (then sorries), at most `limit` of them, each as its message, a window of the model's own code
with the span marked by `^`, and the goal when Lean gave one (an `unsolved goals` message holds it in its text;
a `sorry` carries it). Policy rejections, timeouts and resource limits get their own plain statements.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.domain import Verdict
from services.lean.protocol import LeanMessage, Pos, Sorry

WINDOW_BEFORE = 2  # lines of context above the marked line
WINDOW_AFTER = 1
MAX_MESSAGE_CHARS = 2000  # one Lean message can be enormous (a huge goal); the model needs its start


def code_window(code: str, pos: Pos, end: Pos | None) -> str:
    lines = code.split("\n")
    if not 1 <= pos.line <= len(lines):
        return ""
    first = max(1, pos.line - WINDOW_BEFORE)
    last = min(len(lines), pos.line + WINDOW_AFTER)
    width = len(str(last))
    out = []
    for number in range(first, last + 1):
        text = lines[number - 1]
        out.append(f"{number:>{width}} | {text}")
        if number == pos.line:
            stop = end.column if end and end.line == pos.line and end.column > pos.column else len(text)
            stop = max(stop, pos.column + 1)
            out.append(" " * (width + 3) + " " * pos.column + "^" * (stop - pos.column))
    return "\n".join(out)


def describe_message(message: LeanMessage, code: str) -> str:
    data = message.data if len(message.data) <= MAX_MESSAGE_CHARS else message.data[:MAX_MESSAGE_CHARS] + " …"
    if message.pos:
        where = f" at line {message.pos.line}, column {message.pos.column}"
    elif message.compiled_pos:
        where = " in the theorem statement"
    else:
        where = ""
    parts = [f"{message.severity}{where}: {data}"]
    if message.pos:
        window = code_window(code, message.pos, message.end_pos)
        if window:
            parts.append(window)
    return "\n".join(parts)


def build_feedback(
    verdict: Verdict,
    *,
    code: str,
    messages: Sequence[LeanMessage],
    sorries: Sequence[Sorry] = (),
    detail: str = "",
    limit: int = 8,
) -> str:
    if verdict is Verdict.PASS:
        return "Lean accepted the proof."
    if verdict is Verdict.TIMEOUT:
        return f"Lean did not finish checking within the time limit ({detail}). Use a shorter or faster proof."
    if verdict is Verdict.ERROR:
        return f"The Lean checker could not judge this proof: {detail}"
    if verdict is Verdict.REJECTED:
        header = "The proof was rejected before Lean saw it (integrity policy):"
    else:
        header = "Lean rejected the proof." if not detail else f"Lean rejected the proof: {detail}"
    shown = [m for m in messages if m.is_error]
    shown += [m for m in messages if not m.is_error and "sorry" in m.data]
    blocks = [describe_message(m, code) for m in shown[:limit]]
    for item in list(sorries)[: max(0, limit - len(blocks))]:
        where = f"line {item.pos.line}, column {item.pos.column}" if item.pos else "somewhere"
        blocks.append(f"unfinished proof (sorry) at {where}; goal:\n{item.goal}")
    hidden = len(shown) - min(len(shown), limit)
    if hidden > 0:
        blocks.append(f"({hidden} more errors not shown)")
    return "\n\n".join([header, *blocks])
