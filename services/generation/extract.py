"""Turn one raw completion into the Lean code to check, or into a reason there is none.

What real prover outputs look like (DeepSeek-Prover-V2, Goedel-Prover-V2, Kimina-Prover, OProver):

- the thinking arrives in `reasoning_content` (SGLang `--reasoning-parser qwen3`), or inline in the content as
  `<think>…</think>`, or with only the closing `</think>` (the chat template opened it in the prompt);
- a proof plan with draft blocks first, the final proof in the last block; fences tagged `lean4`, `lean`, or
  untagged; sometimes the closing fence glued to the last line (`linarith```);
- a completion cut at `max_tokens` inside its thinking or inside its final block;
- the whole file (imports, options, opens, the theorem), only declarations, or only the tactic body.

Rules, in order: the answer (content after the thinking) is searched first, the thinking only when the
answer has no code. An unclosed final Lean block means the output was cut: no code, and the problem says
so (an earlier complete block is a draft the model was replacing). Among complete Lean blocks the last one
declaring the target theorem wins, else the last with any `theorem`/`lemma`, else the last. Header lines the
model repeats are left in place: the Lean checker's text policy drops the ones that repeat the request header
and rejects other imports (docs/lean.md, "How a check goes"), so nothing is hidden from it here. A bare
tactic body is completed with the requested statement when the caller passes it.

`extract_code` never raises: any input, however malformed, gives an `Extraction`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from services.errors import InvalidStatement
from services.leantext import DECLARATION_KEYWORDS, blank_comments_and_strings, declarations, parse_statement

logger = logging.getLogger(__name__)

_LEAN_TAGS = frozenset({"lean", "lean4", "lean3"})
_OPEN_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})[ \t]*(?P<lang>[^\s`]*)[^`]*$")
_INLINE_OPEN = re.compile(r"(?P<fence>`{3,})(?P<lang>lean4?|Lean4?)[ \t]*$")
_IMPORT = re.compile(r"(?m)^[ \t]*import[ \t]+\S")
_LEANISH = re.compile(r"\b(theorem|lemma|example|import|by)\b|:=")
_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class Extraction:
    """The code to check, or `problem`: feedback for the model's next round saying why there is none."""

    code: str | None
    problem: str | None
    source: str = "none"  # where the code came from: "answer", "thinking" or "none"
    kind: str | None = None  # "file" (has imports), "declarations", or "body" (tactics only, completed)
    blocks: int = 0  # complete Lean code blocks in the answer


@dataclass(frozen=True)
class _Block:
    lang: str
    code: str
    closed: bool

    @property
    def is_lean(self) -> bool:
        if self.lang:
            return self.lang.lower() in _LEAN_TAGS
        return bool(_LEANISH.search(self.code))


def _scan_blocks(text: str) -> list[_Block]:
    """Fenced code blocks of a Markdown answer, in order; the last may be unclosed."""
    blocks: list[_Block] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        opened = _OPEN_FENCE.match(line)
        if opened:
            indent, width, lang = len(opened["indent"]), len(opened["fence"]), opened["lang"]
        else:
            inline = _INLINE_OPEN.search(line)
            if not inline:
                i += 1
                continue
            indent, width, lang = 0, len(inline["fence"]), inline["lang"]
        body: list[str] = []
        closed = False
        i += 1
        while i < len(lines):
            current = lines[i]
            stripped = current.strip()
            if stripped.startswith("`" * width) and not stripped.strip("`"):
                closed = True
                i += 1
                break
            if current.rstrip().endswith("`" * 3) and stripped.strip("`"):
                # Closing fence glued to the last line of code (`  linarith```).
                body.append(_dedent(current.rstrip().rstrip("`"), indent))
                closed = True
                i += 1
                break
            body.append(_dedent(current, indent))
            i += 1
        blocks.append(_Block(lang=lang, code="\n".join(body), closed=closed))
    return blocks


def _dedent(line: str, indent: int) -> str:
    if indent and line[:indent].strip() == "":
        return line[indent:]
    return line


def _split_thinking(content: str, reasoning: str) -> tuple[str, str, bool]:
    """(answer, thinking, thinking_unclosed) from the content and the separated reasoning."""
    if _THINK_CLOSE in content:
        cut = content.rfind(_THINK_CLOSE)
        inline = content[:cut].replace(_THINK_OPEN, "")
        return content[cut + len(_THINK_CLOSE) :], reasoning + "\n" + inline, False
    if _THINK_OPEN in content:
        cut = content.find(_THINK_OPEN)
        return content[:cut], reasoning + "\n" + content[cut + len(_THINK_OPEN) :], True
    return content, reasoning, False


def _choose(blocks: list[_Block], theorem_name: str | None) -> _Block | None:
    complete = [b for b in blocks if b.closed and b.is_lean and b.code.strip()]
    if not complete:
        return None
    theorems = {id(block): list(declarations(blank_comments_and_strings(block.code))) for block in complete}
    if theorem_name:
        for block in reversed(complete):
            if any(d.name == theorem_name for d in theorems[id(block)]):
                return block
    for block in reversed(complete):
        if theorems[id(block)]:
            return block
    return complete[-1]


def _classify(code: str) -> str:
    blanked = blank_comments_and_strings(code)
    if _IMPORT.search(blanked):
        return "file"
    if next(declarations(blanked, DECLARATION_KEYWORDS), None):  # any kind: a file of helpers is not a body
        return "declarations"
    return "body"


def _complete_body(body: str, formal_statement: str) -> str | None:
    """The requested statement with `body` as its tactic proof; None if the statement does not parse."""
    try:
        statement = parse_statement(formal_statement)
    except InvalidStatement:
        return None
    text = body.strip("\n")
    lines = text.split("\n")
    first = lines[0].strip() if lines else ""
    if first == "by":
        lines = lines[1:]
    elif first.startswith("by "):
        lines[0] = lines[0].replace("by ", "", 1)
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    shift = min(indents) if indents else 0
    tactics = "\n".join("  " + line[shift:] if line.strip() else "" for line in lines)
    return f"{statement.head} by\n{tactics}"


def _finish(block: _Block, source: str, blocks: int, formal_statement: str | None) -> Extraction:
    code = block.code.strip("\n").rstrip() + "\n"
    kind = _classify(code)
    if kind == "body" and formal_statement:
        completed = _complete_body(code, formal_statement)
        if completed is not None:
            code = completed + "\n"
    return Extraction(code=code, problem=None, source=source, kind=kind, blocks=blocks)


def _extract(
    content: str, reasoning: str, finish_reason: str | None, theorem_name: str | None, formal_statement: str | None
) -> Extraction:
    truncated = finish_reason == "length"
    content, reasoning = content.replace("\r\n", "\n"), reasoning.replace("\r\n", "\n")
    answer, thinking, thinking_unclosed = _split_thinking(content, reasoning)
    blocks = _scan_blocks(answer)
    lean_blocks = [b for b in blocks if b.is_lean]
    complete_count = sum(1 for b in lean_blocks if b.closed)

    if lean_blocks and not lean_blocks[-1].closed and lean_blocks[-1] is blocks[-1]:
        why = "it hit the token limit (max_tokens)" if truncated else "the output stopped"
        return Extraction(
            code=None,
            problem=f"The final Lean code block was never closed: {why} in the middle of the proof. "
            "Write a shorter proof and close the ```lean4 block.",
            blocks=complete_count,
        )
    chosen = _choose(blocks, theorem_name)
    if chosen is not None:
        return _finish(chosen, "answer", complete_count, formal_statement)

    # No code in the answer: the last complete block of the thinking is better than nothing (Lean judges it).
    from_thinking = _choose(_scan_blocks(thinking), theorem_name)
    if from_thinking is not None:
        return _finish(from_thinking, "thinking", 0, formal_statement)

    if thinking_unclosed or (truncated and not answer.strip()):
        problem = (
            "The output ended inside the thinking (token limit reached) before any Lean code was written. "
            "Think more briefly and end with the complete proof in a ```lean4 block."
        )
    elif any(b.code.strip() == "" for b in lean_blocks):
        problem = "The final Lean code block is empty. Put the complete proof inside the ```lean4 block."
    elif blocks:
        problem = "The answer has code blocks but none holds Lean code. Put the proof in a ```lean4 block."
    elif not answer.strip():
        problem = "The answer is empty. End with the complete Lean 4 proof in a ```lean4 block."
    else:
        problem = "The answer has no ```lean4 code block. End with the complete Lean 4 proof in one."
    return Extraction(code=None, problem=problem, blocks=complete_count)


def extract_code(
    content: str | None,
    reasoning: str | None = None,
    *,
    finish_reason: str | None = None,
    theorem_name: str | None = None,
    formal_statement: str | None = None,
) -> Extraction:
    """The Lean code of one completion, or the problem to tell the model. Never raises.

    `finish_reason` ("length" when cut at max_tokens) sharpens the problem text; `theorem_name` prefers the
    block that declares the target; `formal_statement` completes a bare tactic body into a declaration.
    """
    try:
        return _extract(
            content if isinstance(content, str) else "",
            reasoning if isinstance(reasoning, str) else "",
            finish_reason if isinstance(finish_reason, str) else None,
            theorem_name if isinstance(theorem_name, str) and theorem_name else None,
            formal_statement if isinstance(formal_statement, str) else None,
        )
    except Exception as exc:  # the contract: a completion can never crash the worker
        logger.exception("extraction failed on a completion of %d chars", len(content or ""))
        return Extraction(code=None, problem=f"The output could not be read ({type(exc).__name__}).")
