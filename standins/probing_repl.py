"""A stand-in REPL that, on every command, tries to steal the worker's secrets and tamper with other REPLs' files,
and reports all it got in the Lean messages it returns. NOT Lean.

It is `standins/fake_repl.py` (same protocol, same rule table deciding each verdict) plus a probe that runs before
every reply, as code submitted to a real REPL could. The probe tries to:

* read every process's ``/proc/<pid>/environ`` and ``maps``, its ``cwd``/``root`` links and ``fd`` list, the
  worker's (``/proc/<ppid>/...``) first, and the worker's and its own ``cmdline`` (world-readable by design: never
  a place for a secret);
* read the files the table names (``probe.files``: a secret file of the worker, the Redis configuration …) and
  any file under the worker's cwd it can list;
* list, read and write into every other sandbox's private dir (``/tmp/oprover-sandbox-*``), the worker's replay
  dirs (``/tmp/oprover-replay-*``) and uid lock dirs, and every path a command names after ``PROBE_PATH`` (another
  REPL's handoff file): overwrite it, replace it by a new file. The sweep of the shared dirs writes only where
  the kernel decides (never as root, never its own uid's files or a directory opened to all): unsandboxed, it
  would vandalise every live check on the machine; a ``PROBE_PATH`` is always written.

Its report is one warning message per reply (a warning, so the checker's verdicts are what the table says)::

    {"probe": "probing_repl", "uid": 50007, "gid": 50007, "read": {PATH: TEXT, …}, "denied": {PATH: ERROR, …},
     "wrote": [PATH, …]}

Run as ``python standins/probing_repl.py --table-json TABLE`` (as `fake_repl`; `probing_cmd` builds it).
Standard library only.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

try:
    from standins.fake_repl import FakeRepl, _shared_python
except ImportError:  # run as a script: its own directory is on sys.path
    from fake_repl import FakeRepl, _shared_python  # type: ignore[no-redef]

READ_CAP = 4096  # bytes kept per file read (what a real exploit would print)
_PROBE_PATH = re.compile(r"PROBE_PATH\s+(\S+)")
_SHARED_DIRS = ("/tmp/oprover-sandbox-*", "/tmp/oprover-replay-*", "/tmp/oprover-sandbox-uids-*", "/tmp/oprover-lean-*")
MARK = b"planted by probing_repl\n"


def probing_cmd(table: dict[str, Any]) -> str:
    """The OPROVER_LEAN_CMD that starts this probe on `table` (inline: the sandbox uid cannot read a test's dir)."""
    inline = json.dumps(table, ensure_ascii=False, separators=(",", ":"))
    return shlex.join([_shared_python(), str(Path(__file__).resolve()), "--table-json", inline])


class Probe:
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.read: dict[str, str] = {}
        self.denied: dict[str, str] = {}
        self.wrote: list[str] = []

    def _read(self, path: str) -> None:
        try:
            with open(path, "rb") as handle:
                self.read[path] = handle.read(READ_CAP).decode("utf-8", "replace")
        except OSError as exc:
            self.denied[path] = f"{type(exc).__name__}: {exc.strerror}"

    def _link(self, path: str) -> None:
        try:
            self.read[path] = os.readlink(path)
        except OSError as exc:
            self.denied[path] = f"{type(exc).__name__}: {exc.strerror}"

    def _list(self, path: str) -> list[str]:
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            self.denied[path + "/"] = f"{type(exc).__name__}: {exc.strerror}"
            return []
        self.read[path + "/"] = " ".join(names)
        return [os.path.join(path, name) for name in names]

    def _write(self, path: str) -> None:
        """Overwrite `path` in place, then try to replace it by a file of ours (rename over it)."""
        try:
            with open(path, "r+b" if os.path.exists(path) else "wb") as handle:
                handle.write(MARK)
            self.wrote.append(path)
        except OSError as exc:
            self.denied["write " + path] = f"{type(exc).__name__}: {exc.strerror}"
        ours = os.path.join(os.environ.get("TMPDIR", "/tmp"), "probing_repl-replacement")
        try:
            with open(ours, "wb") as handle:
                handle.write(MARK)
            os.replace(ours, path)
            self.wrote.append("replaced " + path)
        except OSError as exc:
            self.denied["replace " + path] = f"{type(exc).__name__}: {exc.strerror}"

    def _sweep_may_write(self, path: str) -> bool:
        """Whether the sweep of the machine's shared dirs tries to write `path`: only where the kernel decides, i.e.
        not as root (it may write anything: nothing to learn), not into its own uid's files (allowed by design), not
        into a directory its owner opened to every uid (another test's or REPL's choice, not a hole).
        An unsandboxed probe (a test's control, run as root) would otherwise rewrite the live handoff files and
        replay dirs of every other worker and test on the machine, turning their genuine passes into errors.
        Paths a command names (``PROBE_PATH``) are always tried: that is the control's point."""
        me = os.geteuid()
        try:
            info = os.lstat(path)
        except OSError:
            return False
        opened = os.path.isdir(path) and info.st_mode & 0o002  # its owner let every uid write there
        if me == 0 or info.st_uid == me or opened:
            self.denied["write " + path] = "skipped: the probe could write it without any isolation to test"
            return False
        return True

    def run(self, cmd: str) -> dict[str, Any]:
        own = os.environ.get("TMPDIR", "")
        pids = sorted((int(p) for p in os.listdir("/proc") if p.isdigit()), key=lambda p: p != os.getppid())
        for pid in pids:
            for name in ("environ", "maps"):
                self._read(f"/proc/{pid}/{name}")
            if pid in (os.getpid(), os.getppid()):  # (every command line is public; these two make the point)
                self._read(f"/proc/{pid}/cmdline")
            for name in ("cwd", "root"):
                self._link(f"/proc/{pid}/{name}")
            self._list(f"/proc/{pid}/fd")
        for path in self.options.get("files", []):
            self._read(path)
        cwd = self.read.get(f"/proc/{os.getppid()}/cwd")
        if cwd:
            for path in self._list(cwd)[:50]:
                if os.path.isfile(path):
                    self._read(path)
        for pattern in _SHARED_DIRS:
            for directory in glob.glob(pattern):
                if own and os.path.realpath(directory) == os.path.realpath(own):
                    continue
                for path in self._list(directory):
                    self._read(path)
                    if self._sweep_may_write(path):
                        self._write(path)
                if self._sweep_may_write(directory):
                    self._write(os.path.join(directory, "candidate.olean"))
        for path in _PROBE_PATH.findall(cmd):
            self._read(path)
            self._write(path)
        return {
            "probe": "probing_repl",
            "uid": os.getuid(),
            "gid": os.getgid(),
            "read": self.read,
            "denied": self.denied,
            "wrote": self.wrote,
        }


class ProbingRepl(FakeRepl):
    """`FakeRepl`'s verdicts, with the probe's report added to every reply that has an environment."""

    def run_command(self, cmd: str, env: int | None) -> dict[str, Any]:
        reply = super().run_command(cmd, env)
        if "env" in reply:
            report = Probe(dict(self.table.get("probe", {}))).run(cmd)
            data = json.dumps(report, ensure_ascii=False)
            position = {"line": 1, "column": 0}
            note = {"severity": "warning", "pos": position, "endPos": position, "data": data}
            reply["messages"] = [*reply.get("messages", []), note]
        return reply


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="A probing stand-in for the repl (NOT Lean).")
    parser.add_argument("--table-json", required=True, help="the fake_repl rule table, plus `probe` options")
    args = parser.parse_args(argv)
    sys.stderr.write("probing_repl: stand-in for leanprover-community/repl that probes its sandbox, NOT Lean\n")
    sys.stderr.flush()
    return ProbingRepl(json.loads(args.table_json)).serve()


if __name__ == "__main__":
    sys.exit(main())
