"""The leanprover-community/repl JSON protocol: request framing and lenient, typed reply parsing.

Framing (REPL/Main.lean `getLines`): the repl reads lines up to the first blank line, right-trims each and joins
them. So a request is one JSON object on one line (`json.dumps` escapes every newline inside strings) followed by
exactly one blank line: a raw newline inside a string would be silently dropped, and a second blank line would be
read as an empty request, which is malformed JSON and kills the process. Replies are `Json.pretty` output (several
lines) followed by a blank line; JSON strings never hold a raw newline, so the first blank line ends a reply.

Replies vary across repl versions; parsing is lenient where the repl is: `endPos` may be missing or null, empty
arrays are omitted, sorries in term mode carry no position, and failures come back as `{"message": "..."}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class ProtocolError(Exception):
    """A reply that is not what the repl protocol allows (not JSON, not an object, wrong field types)."""


@dataclass(frozen=True)
class Pos:
    line: int  # 1-based
    column: int  # 0-based, in Unicode code points (as Lean counts)

    def to_json(self) -> dict[str, int]:
        return {"line": self.line, "column": self.column}


@dataclass(frozen=True)
class LeanMessage:
    """One message. `pos`/`end_pos` are against the model's code when mappable (None otherwise);
    `compiled_pos`/`compiled_end_pos` are against `CheckResult.compiled` (header included)."""

    severity: str  # "error" | "warning" | "info" (or whatever a future repl sends)
    data: str
    pos: Pos | None = None
    end_pos: Pos | None = None
    compiled_pos: Pos | None = None
    compiled_end_pos: Pos | None = None
    source: str = "lean"  # "lean" | "policy" | "checker"
    # The goal before the error, when known (the checker does not ask the REPL for it today); Kimina's
    # repair prompt shows it (services/prompts/feedback.py).
    goal: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @classmethod
    def from_json(cls, stored: Any) -> LeanMessage | None:
        """A message as `to_json` wrote it (a job's stored attempt), or None when it is not one: stored records
        outlive versions, and one bad message must not cost a round its prompt."""
        if not isinstance(stored, dict) or not isinstance(stored.get("severity"), str):
            return None
        return cls(
            severity=stored["severity"],
            data=str(stored.get("data") or ""),
            pos=_stored_pos(stored.get("pos")),
            end_pos=_stored_pos(stored.get("endPos")),
            compiled_pos=_stored_pos(stored.get("compiledPos")),
            compiled_end_pos=_stored_pos(stored.get("compiledEndPos")),
            source=str(stored.get("source") or "lean"),
            goal=stored["goal"] if isinstance(stored.get("goal"), str) else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "pos": self.pos.to_json() if self.pos else None,
            "endPos": self.end_pos.to_json() if self.end_pos else None,
            "data": self.data,
            "source": self.source,
            "compiledPos": self.compiled_pos.to_json() if self.compiled_pos else None,
            "compiledEndPos": self.compiled_end_pos.to_json() if self.compiled_end_pos else None,
            **({"goal": self.goal} if self.goal is not None else {}),
        }


def _stored_pos(stored: Any) -> Pos | None:
    if not isinstance(stored, dict):
        return None
    line, column = stored.get("line"), stored.get("column", 0)
    if type(line) is not int or type(column) is not int:  # bool is an int too
        return None
    return Pos(line=line, column=column)


@dataclass(frozen=True)
class Sorry:
    goal: str
    pos: Pos | None = None
    end_pos: Pos | None = None
    proof_state: int | None = None


@dataclass(frozen=True)
class ReplReply:
    """A parsed reply. `error` is set for the `{"message": ...}` shape (unknown env, Lean exception, ...)."""

    env: int | None = None
    messages: tuple[LeanMessage, ...] = ()
    sorries: tuple[Sorry, ...] = ()
    error: str | None = None
    proof_state: int | None = None
    goals: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def encode_command(cmd: str, env: int | None = None, **extra: Any) -> bytes:
    """One request: a single-line JSON object and one blank line."""
    request: dict[str, Any] = {"cmd": cmd}
    if env is not None:
        request["env"] = env
    request.update(extra)
    line = json.dumps(request, ensure_ascii=False)
    if "\n" in line or "\r" in line:  # json.dumps escapes them; guard the invariant the framing depends on
        raise ProtocolError("a request must be one line")
    return (line + "\n\n").encode("utf-8")


def encode_pickle(path: str, env: int) -> bytes:
    """`{"pickleTo": PATH, "env": N}`: the repl writes environment N (its imports and the constants it added on top
    of them) to PATH as an .olean and answers `{"env": N}` (repl test pickle_environment)."""
    return (json.dumps({"pickleTo": path, "env": env}, ensure_ascii=False) + "\n\n").encode("utf-8")


def _pos(value: Any, what: str) -> Pos | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not an object: {value!r}")
    try:
        return Pos(line=int(value["line"]), column=int(value["column"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"{what} is not a position: {value!r}") from exc


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError(f"{key} is not a list")
    return value


def parse_message(obj: Any) -> LeanMessage:
    if not isinstance(obj, dict) or "data" not in obj:
        raise ProtocolError(f"not a message: {obj!r}")
    data = obj["data"]
    return LeanMessage(
        severity=str(obj.get("severity", "error")).lower(),
        data=data if isinstance(data, str) else json.dumps(data, ensure_ascii=False),
        pos=_pos(obj.get("pos"), "pos"),
        end_pos=_pos(obj.get("endPos"), "endPos"),
    )


def parse_reply(obj: Any) -> ReplReply:
    """Turn one decoded reply into a `ReplReply`; raise `ProtocolError` if it cannot be a repl reply."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"a reply must be a JSON object, got {type(obj).__name__}")
    if "message" in obj and "env" not in obj and "proofState" not in obj:
        return ReplReply(error=str(obj["message"]), raw=obj)
    env = obj.get("env")
    if env is not None and not isinstance(env, int):
        raise ProtocolError(f"env is not an integer: {env!r}")
    sorries = []
    for item in _list(obj, "sorries"):
        if not isinstance(item, dict):
            raise ProtocolError(f"not a sorry: {item!r}")
        sorries.append(
            Sorry(
                goal=str(item.get("goal", "")),
                pos=_pos(item.get("pos"), "pos"),
                end_pos=_pos(item.get("endPos"), "endPos"),
                proof_state=item.get("proofState"),
            )
        )
    goals = obj.get("goals")
    if isinstance(goals, str):  # some tactic replies carry a single pretty-printed string
        goals = [goals]
    return ReplReply(
        env=env,
        messages=tuple(parse_message(m) for m in _list(obj, "messages")),
        sorries=tuple(sorries),
        proof_state=obj.get("proofState"),
        goals=tuple(str(g) for g in (goals or [])),
        raw=obj,
    )


def decode_reply(text: str | bytes) -> ReplReply:
    """Decode the text of one reply (without its terminating blank line)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"reply is not UTF-8: {exc}") from exc
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"reply is not JSON: {exc}: {text[:200]!r}") from exc
    return parse_reply(obj)


def split_replies(stream: str) -> list[str]:
    """Split a transcript of several replies (each ends with a blank line) into reply texts."""
    return [chunk for chunk in stream.split("\n\n") if chunk.strip()]
