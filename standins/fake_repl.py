"""A stand-in for the leanprover-community/repl binary: same protocol, verdicts from a per-test table.

Run as ``python -m standins.fake_repl --table TABLE.json`` (or as a script: ``python
standins/fake_repl.py --table TABLE.json``). It is a real process that speaks the repl's JSON protocol on
stdin/stdout the way the real binary does (REPL/Main.lean):

* a request is read line by line up to the first blank line; lines are right-trimmed and joined, so a raw
  newline inside a JSON string is lost exactly as in the real repl; EOF ends the process with status 0;
* a request starting with ``#`` or ``--`` is skipped without a reply;
* malformed JSON is an uncaught exception: a message on stderr and exit status 1 (the real repl dies too);
* replies are Lean's ``Json.pretty`` at width 80 (keys in reverse order, multi-line when long) followed by a
  blank line; empty ``messages``/``sorries`` are omitted; ``{"message": ...}`` for unknown environments;
* every command gets the next environment number; ``#print axioms N`` answers with Lean's info message, and
  ``#check @N`` (optionally under ``set_option … in``) with one info message at the ``#check`` token, ``N : TYPE``
  (the layout of the real repl's ``#check`` replies in the transcripts); declaring a name twice is an error
  (``'N' has already been declared``), as in Lean, and a declaration proved by ``sorry`` alone gets Lean's
  ``sorry`` warning whatever the table says.

It never runs Lean. It judges each command from the table, whose rules are tried in order (first match wins).
A command is what the checker sends: the header, then the theorem as the request's statement with the proof's
body. ``match`` is a substring of it, ``regex`` a Python regular expression
searched in it (``re.search``; a group named ``at`` marks where Lean reports the message, e.g. the failing
tactic; else the whole match), ``always: true`` matches every command; without a match ``default`` decides (an
outcome name, or a rule object without a match, e.g. ``{"outcome": "error", "message": "..."}``)::

    {"rules": [{"match": "nlinarith [sq_nonneg", "outcome": "pass"},
               {"match": "linarith", "outcome": "error", "message": "linarith failed to find a contradiction"},
               {"regex": "HANG_\\\\w+", "outcome": "hang"}],
     "default": "error", "import_s": 0.0, "check_s": 0.0, "lean_version": "4.15.0-fake_repl"}

Outcomes: ``pass``, ``error``, ``sorry``, ``axiom`` (compiles; ``#print axioms`` lists the rule's ``axioms``),
``hang``, ``spin`` (burns CPU), ``crash``, ``memory`` (allocates until ``memory_mb`` or the address-space limit),
``flood`` (a reply of ``bytes`` bytes), ``garbage`` (an unparseable reply), ``error_reply`` (``{"message": ...}``
as when Lean throws), ``probe`` (tries the network and a
write outside its temp dir, reports both as an info message). Any rule may set ``check_s`` (time to spend),
``rss_mb`` (resident memory to keep after the check), ``axioms``, ``message``, ``goal``, ``severity``,
``messages`` (extra ``[{"severity", "data"}]``). Table option ``print_axioms``: ``normal`` (default), ``silent``
(no message), ``unknown`` (unknown constant), ``garbage`` (unreadable answer); ``check`` likewise for ``#check``:
``normal``, ``silent``, ``unknown``, ``garbage``, ``twice`` (two answers). The stand-in cannot elaborate, so the
type ``#check`` prints is the declaration's own text (``∀ binders, type``, layout collapsed), or a rule's ``type``
(what Lean would print if the rule's trick had changed the theorem).

``{"pickleTo": PATH, "env": N}`` writes environment N as the repl does (reply ``{"env": N}``), but as JSON: its
root's imports and, per declared constant, what the environment really holds (name, kind, type, value = the
declaration's text, axioms). That is what `standins/fake_replay.py`, the stand-in kernel replay, reads.
Table option ``pickle`` makes the file hostile (``missing``, ``garbage``, ``huge``, ``symlink``, ``fifo``,
``error``).

Outcomes that model a REPL process taken over by the code it ran (its reply channel is Lean code's stdout):
``lie`` claims a clean pass (no messages, standard axioms, the declared type) while the environment holds the
rule's ``truth`` (``type``/``axioms``/``value``; by default the axioms gain ``sorryAx``: the proof did not
elaborate); ``plant`` fails this check but lies the same way about every later command of the process;
``forge`` answers, then writes a second, forged reply ahead for whatever request comes next.

So nobody mistakes it for Lean: it says so on stderr at start, and ``#eval Lean.versionString`` answers the table's
``lean_version`` (default ``4.15.0-fake_repl``; the demo's is ``4.15.0-standin``). A verify worker compares that
with ``OPROVER_LEAN_VERSION``: the release (``4.15.0``) must be the same, a build label after ``-`` is ignored.

Running it under a verify worker (``OPROVER_LEAN_CMD``; ``lean_cmd`` below builds it):

* Interpreter. Only the standard library is used, so any Python 3.11+ runs it. With the sandbox on (the default,
  ``OPROVER_LEAN_SANDBOX``; docs/lean.md) a worker running as root starts each REPL as an unprivileged user, which
  cannot run a venv's python under ``/root`` (mode 700): ``lean_cmd`` therefore names the first of the current
  interpreter, ``/usr/bin/python3`` and ``/usr/local/bin/python3`` that every user may execute (the file and each
  directory above it world-executable), and that user must also be able to read this file. The table goes inline
  (``--table-json``) for the same reason: that user may not read a test's private temp dir. With
  ``OPROVER_LEAN_SANDBOX=false`` (what ``oprover up --demo`` sets: this stand-in runs none of the code it is sent)
  the REPL runs as the worker's own user.
* ``OPROVER_LEAN_CWD`` is the directory the REPL and the kernel replay run in. For real Lean it is the Mathlib
  project (``lake env`` finds the toolchain and the compiled Mathlib from there) and where the checker reads
  ``lake-manifest.json`` for the Mathlib revision it reports (unless ``OPROVER_LEAN_MATHLIB_VERSION`` is set). The
  stand-ins read nothing there, so any directory their user can enter works (tests give an empty one); unset,
  they run in the worker's own directory and the Mathlib revision is reported as ``unknown``.
* The REPL's stderr (this stand-in's "NOT Lean" line) is kept by the pool for crash reports; its stdout is the
  protocol.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

STANDARD_AXIOMS = ["propext", "Classical.choice", "Quot.sound"]
PICKLE_FORMAT = "fake_repl environment (stand-in, NOT an .olean)"
DEFAULT_LEAN_VERSION = "4.15.0-fake_repl"
WIDTH = 80  # Lean's `Json.pretty` default line width

# ---------------------------------------------------------------------------------------------------------
# Lean's Json.pretty, re-implemented: `Json.render` builds a `Format` (groups, nests, soft lines) and
# `Format.pretty` lays it out Wadler-style: a group goes flat when it and the text after it, up to the next
# line break, fit in the width.
# ---------------------------------------------------------------------------------------------------------
_LINE = object()


def _render_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _bracket(left: str, items: list[Any], right: str) -> tuple:
    inner: list[Any] = []
    for k, item in enumerate(items):
        if k:
            inner += [",", _LINE]
        inner.append(item)
    return ("group", ("nest", len(left), ("cat", [left, *inner, right])))


def _doc(value: Any) -> Any:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _render_string(value)
    if isinstance(value, list):
        return _bracket("[", [_doc(v) for v in value], "]")
    if isinstance(value, dict):
        # Lean keeps object fields in an RB map and folds them into a list, so they come out in reverse order.
        keys = sorted(value, reverse=True)
        return _bracket("{", [("group", ("cat", [_render_string(k), ":", _LINE, _doc(value[k])])) for k in keys], "}")
    raise TypeError(f"not JSON: {value!r}")


def _fits(room: int, items: list[tuple[int, bool, Any]]) -> bool:
    stack = list(items)
    while stack:
        if room < 0:
            return False
        indent, flat, doc = stack.pop()
        if isinstance(doc, str):
            room -= len(doc)
        elif doc is _LINE:
            if not flat:
                return True
            room -= 1
        elif doc[0] == "cat":
            stack.extend((indent, flat, d) for d in reversed(doc[1]))
        elif doc[0] == "nest":
            stack.append((indent + doc[1], flat, doc[2]))
        else:  # group inside the rest: measured in the mode of what encloses it
            stack.append((indent, flat, doc[1]))
    return room >= 0


def render_json(value: Any, width: int = WIDTH) -> str:
    """Lay out `value` exactly as Lean 4's `Json.pretty` does (checked against the repl's own test outputs)."""
    out: list[str] = []
    column = 0
    stack: list[tuple[int, bool, Any]] = [(0, False, _doc(value))]
    while stack:
        indent, flat, doc = stack.pop()
        if isinstance(doc, str):
            out.append(doc)
            column += len(doc)
        elif doc is _LINE:
            if flat:
                out.append(" ")
                column += 1
            else:
                out.append("\n" + " " * indent)
                column = indent
        elif doc[0] == "cat":
            stack.extend((indent, flat, d) for d in reversed(doc[1]))
        elif doc[0] == "nest":
            stack.append((indent + doc[1], flat, doc[2]))
        else:
            if flat:
                stack.append((indent, True, doc[1]))
            else:
                rest = [(i, f, d) for (i, f, d) in stack]
                goes_flat = _fits(width - column, [*rest, (indent, True, doc[1])])
                stack.append((indent, goes_flat, doc[1]))
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------
def write_table(path: str | os.PathLike[str], rules: list[dict[str, Any]], **options: Any) -> Path:
    """Write a stand-in table (rules plus options such as default, import_s, check_s) and return its path."""
    path = Path(path)
    path.write_text(json.dumps({"rules": rules, **options}, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def lean_cmd(table_path: str | os.PathLike[str]) -> str:
    """The OPROVER_LEAN_CMD that starts this stand-in on the table at `table_path`.

    The table's content is passed on the command line (`--table-json`) as well as its path: the sandbox runs
    the REPL as an unprivileged user that may not read a test's private temp dir. So write the table first,
    and build the command again after changing it. The interpreter is one that user can execute.
    """
    path = Path(table_path).resolve()
    table = json.dumps(json.loads(path.read_text(encoding="utf-8")), ensure_ascii=False, separators=(",", ":"))
    return shlex.join([_shared_python(), str(Path(__file__).resolve()), "--table", str(path), "--table-json", table])


def _world_executable(path: Path) -> bool:
    try:
        real = path.resolve(strict=True)
    except OSError:
        return False
    if not real.stat().st_mode & 0o001:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in real.parents)


def _shared_python() -> str:
    """An interpreter every user can run (a venv under /root is not); the stand-in needs only the stdlib."""
    candidates = [Path(sys.executable), Path("/usr/bin/python3"), Path("/usr/local/bin/python3")]
    for candidate in candidates:
        if _world_executable(candidate):
            return str(candidate)
    return sys.executable


# ---------------------------------------------------------------------------------------------------------
# The REPL
# ---------------------------------------------------------------------------------------------------------
# A declaration as Lean reads it: the keyword as a token anywhere (any whitespace before the name), the name
# possibly `«…»`-quoted (so `«a\nb»` is one name) or `_root_.`-prefixed.
_DECL_NAME = re.compile(
    r"(?<![\w'!?.])(theorem|lemma|def|abbrev|instance|axiom|opaque)\s+((?:«[^»]*»|[^\s(){}\[\]:,⦃⦄«])+)"
)
_PRINT_AXIOMS = re.compile(r"^\s*#print\s+axioms\s+(\S+)\s*$")
# `#check`, optionally under `set_option … in` (the checker asks `set_option pp.all true in #check @_root_.NAME`)
_CHECK = re.compile(r"^\s*(?:set_option\s+\S+\s+\S+\s+in\s+)?(#check)\s+(@?)(\S+)\s*$")
_SORRY_BODY = re.compile(r":=\s*(?:by\s+)?sorry\s*$")
_OPEN = {"(": ")", "[": "]", "{": "}", "⦃": "⦄", "⟨": "⟩"}
_VERSION_EVAL = re.compile(r"^\s*#eval\s+Lean\.versionString\s*$")
_IMPORT = re.compile(r"(?m)^\s*import\s+\S+.*$")
_KIND = {"lemma": "theorem", "abbrev": "def", "instance": "def"}

_KEEP: list[bytearray | mmap.mmap] = []


def _code_only(text: str) -> str:
    """`text` with comments and string contents blanked (offsets kept), lexed as Lean does: a block comment's
    body starts three characters after its `/` (so `/-/- -/` is one comment), comments nest."""
    out, i, n = list(text), 0, len(text)
    while i < n:
        if text.startswith("--", i):
            end = text.find("\n", i)
            end = n if end == -1 else end
        elif text.startswith("/-", i):
            depth, end = 1, i + 3
            while end < n and depth:
                if text.startswith("-/", end):
                    depth, end = depth - 1, end + 2
                elif text.startswith("/-", end):
                    depth, end = depth + 1, end + 2
                else:
                    end += 1
        elif text[i] == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            end = min(end + 1, n)
        elif text[i] == "«":
            end = text.find("»", i)
            i = n if end == -1 else end + 1
            continue
        else:
            i += 1
            continue
        for k in range(i, min(end, n)):
            if out[k] != "\n":
                out[k] = " "
        i = max(end, i + 1)
    return "".join(out)


def _name(text: str) -> str:
    """A written name as Lean resolves it: `_root_.` dropped, `«…»` quotes removed per component."""
    text = text.removeprefix("_root_.")
    return re.sub(r"«([^»]*)»", r"\1", text)


def _signature(cmd: str, name_end: int) -> str:
    """What `#check` prints for a declaration whose name ends at `name_end`: `name : ∀ binders, type` (the
    stand-in cannot elaborate, so the type is the declared text with its layout collapsed)."""
    depth, colon, k = 0, None, name_end
    while k < len(cmd):
        c = cmd[k]
        if c in _OPEN:
            depth += 1
        elif c in _OPEN.values():
            depth -= 1
        elif depth == 0 and cmd.startswith(":=", k):
            break
        elif depth == 0 and c == ":" and colon is None:
            colon = k
        k += 1
    if colon is None:
        return " ".join(cmd[name_end:k].split())
    binders = " ".join(cmd[name_end:colon].split())
    typ = " ".join(cmd[colon + 1 : k].split())
    return (
        f"∀ {binders}, {typ}" if binders else typ
    )  # memory a `rss_mb` rule keeps resident, as a leaking elaborator would


def _pos(text: str, offset: int) -> dict[str, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1)
    return {"line": line, "column": column}


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(render_json(obj) + "\n")
    sys.stdout.write("\n")
    sys.stdout.flush()


class FakeRepl:
    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.envs: list[dict[str, list[str]]] = []  # env id -> declared name -> axioms (what it claims)
        self.types: list[dict[str, str]] = []  # env id -> declared name -> what `#check` prints (what it claims)
        # env id -> declared name -> what the environment really holds (written by `pickleTo`): a lying REPL
        # claims one thing in its replies, but its environment file holds the truth
        self.truth: list[dict[str, dict[str, Any]]] = []
        self.imports: list[list[str]] = []  # env id -> modules its root imported
        self.root_imports: list[str] = []
        self.proof_states = 0
        self.lying = False  # set by a `plant` outcome: every later command is claimed to pass

    # -- judging ------------------------------------------------------------------------------------------
    def _rule_for(self, code: str) -> tuple[dict[str, Any], tuple[int, int] | None]:
        for rule in self.table.get("rules", []):
            if "match" in rule:
                at = code.find(rule["match"])
                if at >= 0:
                    return rule, (at, at + len(rule["match"]))
            elif "regex" in rule:
                found = re.search(rule["regex"], code)
                if found:
                    # a group named `at` says where Lean reports the message (the failing tactic), else the match
                    marked = "at" in found.re.groupindex and found.group("at") is not None
                    return rule, found.span("at") if marked else found.span()
            elif rule.get("always"):
                return rule, None
        default = self.table.get("default", "error")
        return ({"outcome": default} if isinstance(default, str) else dict(default)), None

    def _new_env(
        self,
        base: int | None,
        decls: dict[str, list[str]],
        types: dict[str, str] | None = None,
        truth: dict[str, dict[str, Any]] | None = None,
    ) -> int:
        names = dict(self.envs[base]) if base is not None else {}
        names.update(decls)
        self.envs.append(names)
        known = dict(self.types[base]) if base is not None else {}
        known.update(types or {})
        self.types.append(known)
        held = dict(self.truth[base]) if base is not None else {}
        held.update(truth or {})
        self.truth.append(held)
        self.imports.append(list(self.imports[base]) if base is not None else list(self.root_imports))
        return len(self.envs) - 1

    def run_command(self, cmd: str, env: int | None) -> dict[str, Any]:
        if env is not None and not (0 <= env < len(self.envs)):
            return {"message": "Unknown environment."}
        if env is None and _IMPORT.search(cmd):
            time.sleep(float(self.table.get("import_s", 0.0)))
        body = _IMPORT.sub("", cmd) if env is None else cmd
        if env is None:  # the root of a new chain of environments: what `pickleTo` records as its imports
            self.root_imports = [line.split()[1] for line in _IMPORT.findall(cmd) if len(line.split()) > 1]
        if _VERSION_EVAL.match(body):
            data = _render_string(str(self.table.get("lean_version", DEFAULT_LEAN_VERSION)))
            return self._info(cmd, body, data, env)
        match = _PRINT_AXIOMS.match(body)
        if match:
            return self._print_axioms(cmd, match.group(1), env)
        match = _CHECK.match(body)
        if match:
            return self._check(cmd, match, env)
        code = _code_only(body)
        if not _DECL_NAME.search(code) and not re.search(r"\b(example|theorem|lemma)\b", code):
            # header-like text (imports, options, `open`): nothing to judge
            return {"env": self._new_env(env, {})}
        return self._judge(cmd, env)

    def _info(self, cmd: str, shown: str, data: str, env: int | None) -> dict[str, Any]:
        start = cmd.find(shown.strip())
        msg = {
            "severity": "info",
            "pos": _pos(cmd, start),
            "endPos": _pos(cmd, start + len(shown.strip())),
            "data": data,
        }
        return {"messages": [msg], "env": self._new_env(env, {})}

    def _print_axioms(self, cmd: str, name: str, env: int | None) -> dict[str, Any]:
        name = _name(name)
        known = self.envs[env] if env is not None else {}
        mode = self.table.get("print_axioms", "normal")
        if mode == "silent":  # an answer without the message (what a broken or future repl might send)
            return {"env": self._new_env(env, {})}
        if mode == "garbage":
            sys.stdout.write("fake_repl stand-in: deliberately unreadable #print axioms answer\n\n")
            sys.stdout.flush()
            return {}
        if mode == "unknown":
            known = {}
        start = cmd.find("#print")
        end = len(cmd.rstrip())
        if name not in known:
            msg = {
                "severity": "error",
                "pos": _pos(cmd, cmd.find(name, start)),
                "endPos": _pos(cmd, cmd.find(name, start) + len(name)),
                "data": f"unknown constant '{name}'",
            }
            return {"messages": [msg], "env": self._new_env(env, {})}
        axioms = known[name]
        if axioms:
            data = f"'{name}' depends on axioms: [{', '.join(axioms)}]"
        else:
            data = f"'{name}' does not depend on any axioms"
        msg = {"severity": "info", "pos": _pos(cmd, start), "endPos": _pos(cmd, end), "data": data}
        return {"messages": [msg], "env": self._new_env(env, {})}

    def _check(self, cmd: str, match: re.Match[str], env: int | None) -> dict[str, Any]:
        """`#check @NAME` as Lean answers it: one info message at the `#check` token, `NAME : TYPE`."""
        mode = self.table.get("check", "normal")
        if mode == "silent":
            return {"env": self._new_env(env, {})}
        if mode == "garbage":
            sys.stdout.write("fake_repl stand-in: deliberately unreadable #check answer\n\n")
            sys.stdout.flush()
            return {}
        written = match.group(3)
        name = _name(written)
        known = self.types[env] if env is not None else {}
        if name not in known or mode == "unknown":
            at = match.start(3)
            msg = {
                "severity": "error",
                "pos": _pos(cmd, at),
                "endPos": _pos(cmd, at + len(written)),
                "data": f"unknown identifier '{written}'",
            }
            return {"messages": [msg], "env": self._new_env(env, {})}
        at = match.start(1)
        data = f"{name} : {known[name]}"
        msg = {"severity": "info", "pos": _pos(cmd, at), "endPos": _pos(cmd, at + 6), "data": data}
        messages = [msg, dict(msg)] if mode == "twice" else [msg]
        return {"messages": messages, "env": self._new_env(env, {})}

    def _judge(self, cmd: str, env: int | None) -> dict[str, Any]:
        rule, span = self._rule_for(cmd)
        code = _code_only(cmd)
        if _SORRY_BODY.search(code.rstrip()) and len(_DECL_NAME.findall(code)) == 1:
            rule, span = {"outcome": "sorry"}, None  # Lean accepts a `sorry` proof, with its warning
        outcome = rule.get("outcome", "error")
        time.sleep(float(rule.get("check_s", self.table.get("check_s", 0.0))))
        decls = list(_DECL_NAME.finditer(code))
        if outcome == "hang":
            while True:
                time.sleep(3600)
        if outcome == "spin":
            while True:
                pass
        if outcome == "crash":
            sys.stdout.write('{"messages":\n [{"severity": "error",\n')
            sys.stdout.flush()
            sys.stderr.write("INTERNAL PANIC: fake_repl stand-in simulating a crash\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGSEGV)
        if outcome == "memory":
            self._blow_up(int(rule.get("memory_mb", 4096)))
        if outcome == "error_reply":  # the repl caught an exception from Lean: no env, just a message
            return {"message": rule.get("message", "Lean error:\nfake_repl stand-in exception")}
        if outcome == "garbage":
            sys.stdout.write("fake_repl stand-in: this reply is deliberately not JSON\n\n")
            sys.stdout.flush()
            return {}
        if rule.get("rss_mb"):
            # resident at once (the kernel populates every page): a leak that is there when the reply is sent,
            # not one still growing while the RSS watchdog samples
            size = int(rule["rss_mb"]) * 1024 * 1024
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
            _KEEP.append(mmap.mmap(-1, size, flags=flags))

        axioms = list(rule.get("axioms", STANDARD_AXIOMS))
        messages: list[dict[str, Any]] = []
        sorries: list[dict[str, Any]] = []
        first = decls[0] if decls else None
        name_span = (first.start(2), first.end(2)) if first else (0, 0)
        at = span or name_span
        if outcome == "error":
            messages.append(
                {
                    "severity": rule.get("severity", "error"),
                    "pos": _pos(cmd, at[0]),
                    "endPos": _pos(cmd, at[1]),
                    "data": rule.get("message", "fake_repl stand-in: no rule of the table accepted this proof"),
                }
            )
            axioms = [*axioms, "sorryAx"]  # Lean adds a declaration that failed to elaborate, with sorryAx
        elif outcome == "sorry":
            sorry_at = cmd.find("sorry") if span is None else span[0]
            sorry_at = sorry_at if sorry_at >= 0 else at[0]
            sorries.append(
                {
                    "proofState": self.proof_states,
                    "pos": _pos(cmd, sorry_at),
                    "goal": rule.get("goal", "⊢ False"),
                    "endPos": _pos(cmd, sorry_at + 5),
                }
            )
            self.proof_states += 1
            messages.append(
                {
                    "severity": "warning",
                    "pos": _pos(cmd, name_span[0]),
                    "endPos": _pos(cmd, name_span[1]),
                    "data": "declaration uses 'sorry'",
                }
            )
            axioms = [*axioms, "sorryAx"]
        elif outcome == "flood":
            size = int(rule.get("bytes", 16 * 1024 * 1024))
            messages.append(
                {"severity": "info", "pos": _pos(cmd, at[0]), "endPos": _pos(cmd, at[1]), "data": "x" * size}
            )
        elif outcome == "probe":
            messages.append(
                {
                    "severity": "info",
                    "pos": _pos(cmd, at[0]),
                    "endPos": _pos(cmd, at[1]),
                    "data": json.dumps(_probe(rule)),
                }
            )
        elif outcome not in ("pass", "axiom", "lie", "plant", "forge"):
            raise SystemExit(f"fake_repl: unknown outcome {outcome!r} in the table")
        if outcome == "plant":  # this check fails, but code it ran now lies in every later reply
            messages.append(
                {
                    "severity": "error",
                    "pos": _pos(cmd, at[0]),
                    "endPos": _pos(cmd, at[1]),
                    "data": rule.get("message", "fake_repl stand-in: planted code, this check fails"),
                }
            )
        for extra in rule.get("messages", []):
            messages.append(
                {
                    "severity": extra.get("severity", "warning"),
                    "pos": _pos(cmd, at[0]),
                    "endPos": _pos(cmd, at[1]),
                    "data": extra["data"],
                }
            )
        known = dict(self.envs[env]) if env is not None else {}
        types: dict[str, str] = {}
        held: dict[str, dict[str, Any]] = {}
        truth = dict(rule.get("truth", {}))
        if outcome == "lie" and "axioms" not in truth:
            truth["axioms"] = [*STANDARD_AXIOMS, "sorryAx"]  # what it hides: the proof did not elaborate
        for k, decl in enumerate(decls):  # as Lean: a name declared twice is an error
            name = _name(decl.group(2))
            if name in known or name in types:
                messages.append(
                    {
                        "severity": "error",
                        "pos": _pos(cmd, decl.start(2)),
                        "endPos": _pos(cmd, decl.end(2)),
                        "data": f"'{name}' has already been declared",
                    }
                )
                continue
            types[name] = str(rule.get("type", _signature(code, decl.end(2))))
            end = decls[k + 1].start() if k + 1 < len(decls) else len(cmd)
            held[name] = {
                "name": name,
                "kind": _KIND.get(decl.group(1), decl.group(1)),
                "type": str(truth.get("type", types[name])),
                "value": str(truth.get("value", cmd[decl.start() : end])),
                "axioms": list(truth.get("axioms", axioms)),
            }
        if outcome in ("lie", "forge") or self.lying:
            # What a process whose reply channel Lean code controls can send: a clean pass, whatever happened.
            # The environment (`held`, what `pickleTo` writes) still holds what was really declared.
            sorries, messages = [], []
            axioms = list(STANDARD_AXIOMS)
            types = {name: _signature(code, decl.end(2)) for decl in decls if (name := _name(decl.group(2))) in types}
        if outcome == "plant":
            self.lying = True
        reply: dict[str, Any] = {}
        if sorries:
            reply["sorries"] = sorries
        if messages:
            reply["messages"] = messages
        reply["env"] = self._new_env(env, {name: axioms for name in types}, types, held)
        if outcome == "forge":  # a forged reply written ahead, for whatever request comes next
            _reply(reply)
            return {"env": reply["env"]}
        return reply

    def pickle_to(self, path: str, env: int) -> dict[str, Any]:
        """`pickleTo`: write environment `env` to `path` (here as JSON, not an .olean: this is a stand-in).

        Table option `pickle` makes the file hostile: `missing` (reply, no file), `garbage` (not a pickle),
        `huge` (`pickle_bytes`, sparse), `symlink` (a link to another file), `fifo` (a named pipe), `error`
        (the repl's `{"message": ...}`)."""
        if not 0 <= env < len(self.envs):
            return {"message": "Unknown environment."}
        mode = self.table.get("pickle", "normal")
        target = Path(path)
        try:
            if mode == "error":
                return {"message": f"fake_repl stand-in: cannot write {path}"}
            if mode == "garbage":
                target.write_bytes(b"olean\x01 fake_repl stand-in: not an environment file \xff\xfe")
            elif mode == "huge":
                with open(target, "wb") as handle:
                    handle.truncate(int(self.table.get("pickle_bytes", 1 << 30)))
            elif mode == "symlink":
                target.symlink_to(self.table.get("pickle_link", "/etc/hostname"))
            elif mode == "fifo":
                os.mkfifo(target)
            elif mode != "missing":
                record = {
                    "format": PICKLE_FORMAT,
                    "imports": self.imports[env],
                    "constants": list(self.truth[env].values()),
                }
                target.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        except OSError as exc:
            return {"message": f"{exc}"}
        return {"env": env}

    @staticmethod
    def _blow_up(limit_mb: int) -> None:
        try:
            for _ in range(limit_mb // 64):
                block = bytearray(64 * 1024 * 1024)
                block[::4096] = b"\1" * len(block[::4096])
                _KEEP.append(block)
        except MemoryError:
            sys.stderr.write("INTERNAL PANIC: out of memory\n")
            sys.stderr.flush()
            os._exit(1)
        while True:  # it got all it asked for and is still elaborating
            time.sleep(3600)

    # -- the loop --------------------------------------------------------------------------------------------
    def serve(self) -> int:
        stdin = sys.stdin
        while True:
            query = _get_lines(stdin)
            if query == "":
                return 0
            if query.startswith(("#", "--")):
                continue
            try:
                request = json.loads(query)
                if not isinstance(request, dict):
                    raise ValueError("expected an object")
            except ValueError as exc:
                error = {"message": f"Could not parse JSON:\n{exc}"}
                sys.stderr.write(f"uncaught exception: {render_json(error)}\n")
                sys.stderr.flush()
                return 1
            if "cmd" in request:
                reply = self.run_command(str(request["cmd"]), request.get("env"))
            elif "path" in request:
                try:
                    text = Path(request["path"]).read_text(encoding="utf-8")
                except OSError as exc:
                    reply = {"message": f"no such file or directory (error code: 2)\n  file: {exc.filename}"}
                else:
                    reply = self.run_command(text, request.get("env"))
            elif "pickleTo" in request:
                if "env" in request:
                    reply = self.pickle_to(str(request["pickleTo"]), int(request["env"]))
                else:
                    reply = {"message": "Unknown proof state."}
            elif "tactic" in request:
                reply = {"message": "Unknown proof state."}
            else:
                error = {"message": "Could not parse as a valid JSON command:\nfake_repl stand-in: unsupported"}
                sys.stderr.write(f"uncaught exception: {render_json(error)}\n")
                sys.stderr.flush()
                return 1
            if reply:
                _reply(reply)


def _get_lines(stream: Any) -> str:
    """The repl's `getLines`: lines up to a blank one, each right-trimmed and concatenated."""
    parts: list[str] = []
    while True:
        line = stream.readline()
        if line.strip() == "":
            return "".join(parts) + line if parts or line else ""
        parts.append(line.rstrip())


def _probe(rule: dict[str, Any]) -> dict[str, str]:
    """Try what a sandbox must forbid: a TCP connection and a write outside the private temp dir."""
    result: dict[str, str] = {}
    target = rule.get("connect")
    if target:
        host, port = target.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                result["network"] = "allowed"
        except OSError as exc:
            result["network"] = f"blocked: {exc.__class__.__name__}: {exc}"
    path = rule.get("write")
    if path:
        try:
            Path(path).write_text("written by the fake_repl stand-in\n")
            result["write"] = "allowed"
        except OSError as exc:
            result["write"] = f"blocked: {exc.__class__.__name__}: {exc}"
    tmp = os.environ.get("TMPDIR", "/tmp")
    try:
        (Path(tmp) / "fake_repl_probe.txt").write_text("ok")
        result["tmpdir"] = f"writable: {tmp}"
    except OSError as exc:
        result["tmpdir"] = f"blocked: {exc}"
    result["uid"] = str(os.getuid())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in for the leanprover-community/repl binary (not Lean).")
    parser.add_argument("--table", required=True, type=Path, help="JSON table of rules deciding each verdict")
    parser.add_argument("--table-json", help="the table itself (wins over --table; see lean_cmd)")
    args = parser.parse_args(argv)
    text = args.table_json if args.table_json else args.table.read_text(encoding="utf-8")
    table = json.loads(text)
    sys.stderr.write(f"fake_repl: stand-in for leanprover-community/repl, NOT Lean (table {args.table})\n")
    sys.stderr.flush()
    return FakeRepl(table).serve()


if __name__ == "__main__":
    sys.exit(main())
