"""How Lean's feedback on the previous attempt is shown to a model, per the format it was trained with.

The Lean checker gives every round a plain-text feedback (`PreviousAttempt.feedback`), which the `plain`
style shows unchanged. Goedel-Prover-V2 and Kimina-Prover were trained on their own layouts of the REPL's
messages; those styles lay out `PreviousAttempt.messages` (`LeanMessage`s whose positions refer to
`PreviousAttempt.code`; services/rounds.py reads them off the stored attempt).

Without error messages with a position every style falls back to the plain feedback, so a prompt is always
produced. Positions are 1-based lines and 0-based columns in code points, as the REPL reports them.
"""

from __future__ import annotations

from collections.abc import Callable

from services.domain import ProofTask
from services.lean.protocol import LeanMessage

GOEDEL_MAX_ERRORS = 8  # Goedel-Prover-V2's correction prompts show at most 8 errors
KIMINA_MAX_ERRORS = 3  # Kimina-Prover's error-fix turn shows the first 3 errors
_GOEDEL_CONTEXT_BEFORE = 4
_GOEDEL_SPAN_LINES = 6


def _structured(task: ProofTask) -> tuple[list[LeanMessage], list[str]] | None:
    """The previous attempt's errors that have a position, and its code's lines (what the positions refer to)."""
    previous = task.previous
    if previous is None or not previous.messages:
        return None
    errors = [message for message in previous.messages if message.is_error and message.pos is not None]
    return errors, previous.code.rstrip("\n").split("\n")


def _plain(task: ProofTask) -> str:
    return task.previous.feedback if task.previous is not None else ""


def _span(message: LeanMessage, lines: list[str]) -> tuple[int, int, int, int]:
    """(start_line, start_col, end_line, end_col), 0-based lines, clamped to the code."""
    last = max(len(lines) - 1, 0)
    pos, end = message.pos, message.end_pos
    assert pos is not None  # _structured keeps only messages with a position
    start_line = min(max(pos.line - 1, 0), last)
    start_col = min(max(pos.column, 0), len(lines[start_line]))
    if end is not None:
        end_line = min(max(end.line - 1, start_line), last)
        end_col = min(max(end.column, 0), len(lines[end_line]))
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
            + f"\n\n```\n\nError Message: {message.data}\n"
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
        if message.goal and message.goal.strip():
            part += f"Goals state before error position: \n{message.goal.strip()}\n\n"
        part += f"Error message: \n{message.data.strip()}\n\n"
        snippet = "".join(
            f"{n + 1:03d}{' >' if n == sl else '  '}| {lines[n]}\n"
            for n in range(max(0, sl - 2), min(len(lines), sl + 3))
        )
        part += f"Lean 4 code snippet with error:\n```lean4\n{snippet}```\n"
        out.append(part)
    return "".join(out)


FEEDBACK_RENDERERS: dict[str, Callable[[ProofTask], str]] = {"plain": _plain, "goedel": goedel, "kimina": kimina}
