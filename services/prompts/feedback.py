"""How Lean's feedback on the previous attempt is shown to a model, per the format it was trained with.

The Lean checker gives every round a plain-text feedback (`PreviousAttempt.feedback`), which the `plain`
style shows unchanged. Goedel-Prover-V2 and Kimina-Prover were trained on their own layouts of the REPL's
messages; those styles need the structured messages, passed by the worker in `ProofTask.extra`:

- `extra["lean_messages"]`: JSON list of REPL messages `{"severity", "pos": {"line", "column"},
  "endPos": {...} | null, "data", "goal"?}` (`goal`: the goal before the error, when the checker has it);
- `extra["checked_code"]`: the exact text those positions refer to.

Without them (or when they do not parse) every style falls back to the plain feedback, so a prompt is always
produced. Positions are 1-based lines and 0-based columns in code points, as the REPL reports them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from services.domain import ProofTask

GOEDEL_MAX_ERRORS = 8  # Goedel-Prover-V2's correction prompts show at most 8 errors
KIMINA_MAX_ERRORS = 3  # Kimina-Prover's error-fix turn shows the first 3 errors
_GOEDEL_CONTEXT_BEFORE = 4
_GOEDEL_SPAN_LINES = 6


def _structured(task: ProofTask) -> tuple[list[dict[str, Any]], list[str]] | None:
    raw, code = task.extra.get("lean_messages"), task.extra.get("checked_code")
    if not raw or code is None:
        return None
    try:
        messages = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(messages, list):
        return None
    errors = []
    for message in messages:
        if not isinstance(message, dict) or message.get("severity") != "error":
            continue
        pos = message.get("pos")
        if not isinstance(pos, dict) or not isinstance(pos.get("line"), int):
            continue
        errors.append(message)
    return errors, code.rstrip("\n").split("\n")


def _plain(task: ProofTask) -> str:
    return task.previous.feedback if task.previous is not None else ""


def _span(message: dict[str, Any], lines: list[str]) -> tuple[int, int, int, int]:
    """(start_line, start_col, end_line, end_col), 0-based lines, clamped to the code."""
    last = max(len(lines) - 1, 0)
    pos = message["pos"]
    start_line = min(max(pos["line"] - 1, 0), last)
    start_col = min(max(int(pos.get("column") or 0), 0), len(lines[start_line]))
    end = message.get("endPos")
    if isinstance(end, dict) and isinstance(end.get("line"), int):
        end_line = min(max(end["line"] - 1, start_line), last)
        end_col = min(max(int(end.get("column") or 0), 0), len(lines[end_line]))
        if end_line == start_line:
            end_col = max(end_col, start_col)
    else:
        end_line, end_col = start_line, len(lines[start_line])
    return start_line, start_col, end_line, end_col


def goedel(task: ProofTask) -> str:
    """Each error as a code window with `<error>…</error>` around the failing span, then its message."""
    parsed = _structured(task)
    if parsed is None or not parsed[0]:
        return _plain(task)
    errors, lines = parsed
    out: list[str] = []
    for number, message in enumerate(errors[:GOEDEL_MAX_ERRORS], 1):
        sl, sc, el, ec = _span(message, lines)
        window = lines[max(0, sl - _GOEDEL_CONTEXT_BEFORE) : sl]
        if sl == el:
            line = lines[sl]
            window.append(f"{line[:sc]}<error>{line[sc:ec]}</error>{line[ec:]}")
        else:
            window.append(f"{lines[sl][:sc]}<error>{lines[sl][sc:]}")
            middle = lines[sl + 1 : el]
            if len(middle) > _GOEDEL_SPAN_LINES - 1:
                shown = middle[: _GOEDEL_SPAN_LINES - 1]
                indent = len(shown[-1]) - len(shown[-1].lstrip(" "))
                window += [*shown, "", " " * indent + "... --[Truncated]-- ..."]
            else:
                window += middle
            window.append(f"{lines[el][:ec]}</error>{lines[el][ec:]}")
        if el + 1 < len(lines):
            window.append(lines[el + 1])
        out.append(
            f"\nError {number}:\n\nCorresponding Code:\n```lean4\n"
            + "\n".join(window)
            + f"\n\n```\n\nError Message: {message.get('data', '')}\n"
        )
    if len(errors) > GOEDEL_MAX_ERRORS:
        out.append(f"\n... [Omitted {len(errors) - GOEDEL_MAX_ERRORS} more errors] ...\n")
    return "".join(out)


def kimina(task: ProofTask) -> str:
    """Each error as `# Error i:`, the goal when known, the message, and a numbered code snippet."""
    parsed = _structured(task)
    if parsed is None or not parsed[0]:
        return _plain(task)
    errors, lines = parsed
    out: list[str] = []
    for number, message in enumerate(errors[:KIMINA_MAX_ERRORS], 1):
        sl = _span(message, lines)[0]
        part = f"# Error {number}:\n"
        goal = message.get("goal")
        if isinstance(goal, str) and goal.strip():
            part += f"Goals state before error position: \n{goal.strip()}\n\n"
        part += f"Error message: \n{str(message.get('data', '')).strip()}\n\n"
        snippet = "".join(
            f"{n + 1:03d}{' >' if n == sl else '  '}| {lines[n]}\n"
            for n in range(max(0, sl - 2), min(len(lines), sl + 3))
        )
        part += f"Lean 4 code snippet with error:\n```lean4\n{snippet}```\n"
        out.append(part)
    return "".join(out)


FEEDBACK_RENDERERS: dict[str, Callable[[ProofTask], str]] = {"plain": _plain, "goedel": goedel, "kimina": kimina}
