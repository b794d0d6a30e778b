"""One REPL process: spawn (sandboxed: services/lean/sandbox.py), one request at a time with a wall-clock deadline,
an output cap and a memory watchdog, handoff of the files it writes, and kill of everything it started.

The repl has no per-command timeout and `lake env repl` is two processes, so a hung check is ended by SIGKILL to
every process of the REPL's own uid (else of the process group it was started in, `process_group=0`). Reading
uses `select` on the raw pipe: the deadline, the byte cap and the RSS watchdog are enforced while the reply is
being written, never after.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from services.lean.protocol import ProtocolError, ReplReply, decode_reply, encode_command, encode_pickle
from services.lean.sandbox import PickleError, Sandbox, SandboxConfig, SandboxUnavailable, child_environment

__all__ = ["PickleError", "ReplProcess", "SandboxConfig", "SandboxUnavailable", "child_environment"]

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.2  # how often RSS is sampled while a reply is awaited
STDERR_TAIL_BYTES = 8192  # kept for diagnostics; the repl itself writes nothing there


class ReplFailure(Exception):
    """The process could not answer. `kind` becomes the check's status; `detail` goes to the logs/feedback."""

    kind = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ReplTimeout(ReplFailure):
    kind = "timeout"


class ReplDied(ReplFailure):
    kind = "crash"


class ReplOutputTooLarge(ReplFailure):
    kind = "output_limit"


class ReplMemoryExceeded(ReplFailure):
    kind = "memory_limit"


class ReplProtocolFailure(ReplFailure):
    kind = "protocol"


class ReplProcess:
    """A started REPL. Not thread-safe: the pool hands it to one check at a time."""

    def __init__(
        self,
        cmd: str,
        *,
        cwd: Path | None,
        sandbox: SandboxConfig,
        max_output_bytes: int,
        max_rss_mb: int = 0,
    ) -> None:
        self.cmd = cmd
        self.cwd = cwd
        self.sandbox = sandbox
        self.max_output_bytes = max_output_bytes
        self.max_rss_mb = max_rss_mb
        argv = shlex.split(cmd)
        if not argv:
            raise ValueError("empty REPL command")
        self._sandbox = Sandbox(sandbox)  # its own uid, its private dir (raises SandboxUnavailable)
        self.tmpdir = self._sandbox.private_dir
        self._buffer = b""
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        try:
            self.proc = subprocess.Popen(
                self._sandbox.argv(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(cwd) if cwd else None,
                env=self._sandbox.environment(),
                process_group=0,
                close_fds=True,
            )
        except BaseException:
            self._sandbox.close(None)
            raise
        self.pid = self.proc.pid
        self._stderr_thread = threading.Thread(target=self._drain_stderr, name=f"repl-stderr-{self.pid}", daemon=True)
        self._stderr_thread.start()
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]

    @property
    def uid(self) -> int | None:
        """The uid the REPL runs as when it has one of its own (None: the sandbox is off or shares the worker's)."""
        return self._sandbox.uid

    # -- diagnostics ---------------------------------------------------------------------------------------
    def _drain_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        for chunk in iter(lambda: stream.read1(4096), b""):  # type: ignore[attr-defined]
            self._stderr.append(chunk)
            self._stderr_size += len(chunk)
            while self._stderr_size > STDERR_TAIL_BYTES and len(self._stderr) > 1:
                self._stderr_size -= len(self._stderr.popleft())

    def stderr_tail(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")[-STDERR_TAIL_BYTES:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        """Resident memory of the REPL and its descendants (`lake env` runs the repl as a child).

        Reads /proc/PID/task/*/children (no scan of every process, unlike psutil's `children()`), which matters
        because it runs after every check; falls back to psutil where that file does not exist."""
        total = 0
        for pid in self._tree():
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_info().rss
        return total / (1024 * 1024)

    def _tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as handle:
                        todo += [int(child) for child in handle.read().split()]
            except FileNotFoundError:
                if pid == self.pid and os.path.exists(f"/proc/{pid}"):
                    try:
                        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
                    except psutil.Error:
                        return pids
            except (OSError, ValueError):
                continue
        return pids

    # -- requests ------------------------------------------------------------------------------------------
    def request(self, cmd: str, env: int | None, *, deadline: float) -> ReplReply:
        """Send one command and wait for its reply until `deadline` (time.monotonic())."""
        return self._exchange(encode_command(cmd, env), deadline)

    def pickle(self, env: int, path: Path, *, deadline: float) -> ReplReply:
        """`pickleTo`: have the repl write environment `env` to `path` (an .olean; see services/lean/replay.py)."""
        return self._exchange(encode_pickle(str(path), env), deadline)

    def _exchange(self, request: bytes, deadline: float) -> ReplReply:
        # Lean code shares the repl's stdout, which is the reply channel. Output that is not the one reply to the
        # one request in flight (written ahead, or after the reply) is forged or stray: the process is not
        # trusted with another request. (A pass never rests on these replies: services/lean/replay.py.)
        self._refuse_stray_output()
        self._write(request, deadline)
        text = self._read_reply(deadline)
        if self._buffer.strip():
            raise ReplProtocolFailure(f"output after the reply: {self._buffer[:200]!r}")
        try:
            return decode_reply(text)
        except ProtocolError as exc:
            raise ReplProtocolFailure(str(exc)) from exc

    def _refuse_stray_output(self) -> None:
        if self.stray_output():
            raise ReplProtocolFailure(f"output outside a reply: {self._buffer[:200]!r}")

    def stray_output(self) -> bool:
        """Whether the process wrote anything since its last reply (checked without waiting)."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        with contextlib.suppress(OSError, ValueError):
            readable, _, _ = select.select([fd], [], [], 0)
            if readable:
                with contextlib.suppress(BlockingIOError):
                    self._buffer += os.read(fd, 1 << 16)  # b"" at EOF: a dead process, reported elsewhere
        return bool(self._buffer.strip())

    def _write(self, data: bytes, deadline: float) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        fd = stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplTimeout("the REPL did not read the request in time")
            _, writable, _ = select.select([], [fd], [], min(remaining, WATCH_INTERVAL_S))
            if not writable:
                if not self.alive():
                    raise ReplDied(self._death_note())
                continue
            try:
                sent = os.write(fd, view)
            except BrokenPipeError as exc:
                raise ReplDied(self._death_note()) from exc
            view = view[sent:]

    def _read_reply(self, deadline: float) -> bytes:
        stdout = self.proc.stdout
        assert stdout is not None
        fd = stdout.fileno()
        next_watch = time.monotonic() + WATCH_INTERVAL_S
        while True:
            self._buffer = self._buffer.lstrip(b"\n")  # blank lines between replies
            end = self._buffer.find(b"\n\n")
            if end >= 0:
                reply, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
                return reply
            if len(self._buffer) > self.max_output_bytes:
                raise ReplOutputTooLarge(f"the reply exceeded {self.max_output_bytes} bytes")
            now = time.monotonic()
            if now >= deadline:
                raise ReplTimeout("no reply before the deadline")
            if now >= next_watch:
                next_watch = now + WATCH_INTERVAL_S
                if self.max_rss_mb and self.rss_mb() > self.max_rss_mb:
                    raise ReplMemoryExceeded(f"resident memory above {self.max_rss_mb} MB")
            readable, _, _ = select.select([fd], [], [], max(0.0, min(deadline, next_watch) - now))
            if not readable:
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                self.proc.wait(timeout=5)
                raise ReplDied(self._death_note())
            self._buffer += chunk

    def _death_note(self) -> str:
        code = self.proc.poll()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout=2)
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        tail = self.stderr_tail().strip().splitlines()[-3:]
        return f"the REPL process ended ({how})" + (": " + " | ".join(tail) if tail else "")

    # -- handoff -----------------------------------------------------------------------------------------------
    def take_file(self, name: str, destination: Path, max_bytes: int, *, stop: bool) -> Path:
        """Copy the file `name` the REPL wrote into its private dir (`tmpdir`) to `destination`, refusing anything
        but a regular file of the REPL's uid (`PickleError`). With `stop`, every process of the REPL is ended
        first (it is not asked anything after); without, only for a file written before any model code was sent."""
        return self._sandbox.take(name, destination, max_bytes, process=self.proc if stop else None)

    # -- ending ----------------------------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL everything the REPL started (the REPL, `lake`, anything Lean code started, wherever it went
        when the REPL has a uid of its own; else its process group), remove its private dir, free its uid."""
        self._sandbox.close(self.proc)
        self._cleanup()

    def close(self, grace_s: float = 2.0) -> None:
        """End politely (EOF makes the repl exit), then kill."""
        if self.alive():
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        self.kill()

    def _cleanup(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream:
                    stream.close()
        self._stderr_thread.join(timeout=2)
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stderr:
                self.proc.stderr.close()

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "alive": self.alive(), "rss_mb": round(self.rss_mb(), 1)}
