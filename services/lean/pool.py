"""A pool of warm REPL processes for one verify worker.

`size` checks run at once (default one per core); `size + spares` processes are kept warm, so when a check kills
its REPL (timeout, crash, memory) or a REPL is recycled (after `max_checks_per_repl` checks or above
`max_rss_mb`), the next check takes an already-imported spare while a replacement imports in the background.

Each process imports the header's modules once (env 0 of that process); the rest of a header (`open`,
`set_option`) is a command on top of it whose environment is cached per process, so requests with different
`open`s share one Mathlib import but never each other's scopes.

Spawn failures: a process that cannot start (bad command, sandbox unavailable, header import failing) is
retried with backoff in the background; a check that finds no process and repeated failures raises
`LeanError` (transient unless the configuration itself is wrong).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from services.errors import LeanError, RequestError
from services.lean.policy import header_parts
from services.lean.process import ReplFailure, ReplProcess
from services.lean.sandbox import SandboxConfig, SandboxUnavailable, protect_worker, require_isolation
from services.settings import LeanSettings

logger = logging.getLogger(__name__)

MAX_HEADER_ENVS = 16  # header variants cached per process (each env stays in the REPL's memory)
SPAWN_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
FAILURES_BEFORE_GIVING_UP = 3  # consecutive spawn failures after which a waiting check raises
_VERSION_PROBE = "#eval Lean.versionString"


class HeaderError(Exception):
    """The header does not import or elaborate: a configuration or request problem, not a transient one."""


class SpawnError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class Repl:
    """A warm process: its import environment and the environments of the header variants it has seen."""

    process: ReplProcess
    import_env: int
    header_envs: dict[str, int] = field(default_factory=dict)
    checks: int = 0
    started: float = field(default_factory=time.monotonic)

    def header_env(self, rest: str, deadline: float) -> int:
        """The environment of `rest` (options, `open`s) on top of the imports, created once per process."""
        if not rest.strip():
            return self.import_env
        if rest in self.header_envs:
            return self.header_envs[rest]
        reply = self.process.request(rest, self.import_env, deadline=deadline)
        errors = [m.data for m in reply.messages if m.is_error]
        if reply.error or errors or reply.env is None:
            raise HeaderError(f"the header does not elaborate: {reply.error or '; '.join(errors)}")
        if len(self.header_envs) < MAX_HEADER_ENVS:
            self.header_envs[rest] = reply.env
        return reply.env


# Files the worker may hold secrets in: the settings' env file, relative to where the worker starts.
SECRET_FILES = (".env",)


def warn_about_files_others_can_read(paths: tuple[str, ...] = SECRET_FILES) -> list[str]:
    """A REPL's uid is not the worker's, so what keeps the worker's secret files from submitted code is their mode:
    a `.env` left at the default 0644 is readable by every REPL. Say so at start (not refused: the file may hold no
    secret), with the fix; the warned paths are returned."""
    readable = []
    for name in paths:
        with contextlib.suppress(OSError):
            mode = os.stat(name).st_mode
            if mode & 0o044:
                readable.append(os.path.abspath(name))
                logger.warning(
                    "%s is readable by other users, so by submitted code running in the REPLs: "
                    "`chmod 600 %s` if it holds a secret (docs/lean.md, Sandbox)",
                    os.path.abspath(name),
                    name,
                )
    return readable


class ReplPool:
    def __init__(self, settings: LeanSettings) -> None:
        if not settings.cmd:
            raise LeanError("OPROVER_LEAN_CMD is not set: no command starts a REPL", transient=False)
        self.settings = settings
        self.size = settings.pool_size or os.cpu_count() or 1
        self.target = self.size + settings.spares
        self.imports, self.default_rest = header_parts(settings.header)
        self.sandbox = SandboxConfig.from_settings(settings)
        try:
            own_uids = require_isolation(self.sandbox)  # fail closed before any REPL starts
        except SandboxUnavailable as exc:
            raise LeanError(str(exc), transient=False) from exc
        if settings.sandbox:
            protect_worker()
            if own_uids:
                warn_about_files_others_can_read()
            if not own_uids:
                logger.warning(
                    "REPLs run under the worker's uid %s (OPROVER_LEAN_SANDBOX_SHARED_UID=true): submitted code can "
                    "read the worker's files and other REPLs' (docs/lean.md, Sandbox)",
                    os.geteuid(),
                )
        self._ready: queue.Queue[Repl] = queue.Queue()
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._live = 0  # processes alive or being spawned
        self._busy: set[int] = set()
        self._failures = 0
        self._last_error: SpawnError | None = None
        self._closed = False
        self._started = False
        self._executor = ThreadPoolExecutor(max_workers=min(self.target, 8), thread_name_prefix="repl-spawn")
        self._futures: set[Future[None]] = set()
        self.lean_version: str | None = None
        self.stats = {"spawned": 0, "killed": 0, "recycled": 0, "retired": 0, "spawn_failures": 0}

    # -- life cycle -------------------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        """Start `size + spares` processes; with `wait`, return once one is ready (raise if none can start)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self._fill()
        if wait:
            deadline = time.monotonic() + self.settings.import_timeout_s
            while self._ready.empty():
                self._raise_if_hopeless(any_ready=False)
                if time.monotonic() > deadline:
                    raise LeanError("no REPL finished importing the header in time", transient=True)
                time.sleep(0.02)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for future in list(self._futures):
            future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
        while True:
            try:
                repl = self._ready.get_nowait()
            except queue.Empty:
                break
            repl.process.close(grace_s=0.5)

    def _fill(self) -> None:
        with self._lock:
            if self._closed:
                return
            missing = self.target - self._live
            self._live += max(0, missing)
        for _ in range(max(0, missing)):
            future = self._executor.submit(self._spawn_until_ready)
            self._futures.add(future)
            future.add_done_callback(self._futures.discard)

    def _spawn_until_ready(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                repl = self._spawn()
            except SpawnError as exc:
                with self._lock:
                    self._failures += 1
                    self._last_error = exc
                    self.stats["spawn_failures"] += 1
                logger.warning("REPL failed to start (attempt %s): %s", attempt + 1, exc)
                if not exc.transient:
                    with self._lock:
                        self._live -= 1
                    return
                time.sleep(SPAWN_BACKOFF_S[min(attempt, len(SPAWN_BACKOFF_S) - 1)])
                attempt += 1
                continue
            with self._lock:
                self._failures = 0
                self.stats["spawned"] += 1
                closed = self._closed
            if closed:
                repl.process.close(grace_s=0.2)
                return
            self._ready.put(repl)
            return
        with self._lock:
            self._live -= 1

    def _spawn(self) -> Repl:
        s = self.settings
        try:
            process = ReplProcess(
                s.cmd or "",
                cwd=s.cwd,
                sandbox=self.sandbox,
                max_output_bytes=s.max_output_bytes,
                max_rss_mb=s.max_rss_mb,
            )
        except SandboxUnavailable as exc:
            raise SpawnError(f"sandbox unavailable: {exc}", transient=exc.transient) from exc
        except (OSError, ValueError) as exc:
            raise SpawnError(f"cannot run OPROVER_LEAN_CMD {s.cmd!r}: {exc}", transient=False) from exc
        deadline = time.monotonic() + s.import_timeout_s
        try:
            reply = process.request("\n".join(f"import {m}" for m in self.imports), None, deadline=deadline)
            errors = [m.data for m in reply.messages if m.is_error]
            if reply.error or errors or reply.env is None:
                raise HeaderError(f"importing {self.imports} failed: {reply.error or '; '.join(errors)}")
            repl = Repl(process=process, import_env=reply.env)
            repl.header_env(self.default_rest, deadline)
            if self.lean_version is None:
                self.lean_version = _ask_version(repl, deadline)
        except HeaderError as exc:
            process.kill()
            raise SpawnError(str(exc), transient=False) from exc
        except ReplFailure as exc:
            note = exc.detail
            process.kill()
            if "oprover-sandbox:" in note:
                raise SpawnError(f"sandbox unavailable: {note}", transient=False) from exc
            raise SpawnError(f"REPL failed while importing the header: {note}", transient=True) from exc
        return repl

    # -- leases -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, wait_s: float | None = None) -> Iterator[Lease]:
        """Borrow a warm REPL for one check. The lease decides at the end whether the process is reused."""
        if not self._started:
            self.start(wait=False)
        wait_s = self.settings.import_timeout_s if wait_s is None else wait_s
        if not self._slots.acquire(timeout=wait_s):
            raise LeanError("every REPL stayed busy for the whole wait", transient=True)
        lease: Lease | None = None
        try:
            repl = self._take(time.monotonic() + wait_s)
            lease = Lease(repl)
            try:
                yield lease
            except RequestError:
                raise  # the caller's input was refused before or between requests: the REPL is in step
            except BaseException as exc:
                # Cut off mid-request (RQ's job timeout, a bug): a reply may still be on its way, and a reused
                # REPL would hand it to the next check. Never reuse it.
                lease.broken = lease.broken or f"the check was interrupted ({type(exc).__name__})"
                raise
        finally:
            if lease is not None:
                self._give_back(lease)
            self._slots.release()

    @contextlib.contextmanager
    def fresh(self, wait_s: float | None = None) -> Iterator[Lease]:
        """A REPL that has run no check yet, for one check, killed afterwards.

        What such a process says and writes cannot come from code an earlier check left running in it (a REPL
        reused across checks can be told what to answer by a previous check's code: its stdout is the reply
        channel). It is a warm one from the pool when one is ready (a replacement starts at once), else a new
        one started now."""
        if not self._started:
            self.start(wait=False)
        wait_s = self.settings.import_timeout_s if wait_s is None else wait_s
        if not self._slots.acquire(timeout=wait_s):
            raise LeanError("every REPL stayed busy for the whole wait", transient=True)
        pooled = False
        repl: Repl | None = None
        try:
            repl = self._take_ready(lambda repl: repl.checks == 0)
            pooled = repl is not None
            if repl is None:
                try:
                    repl = self._spawn()
                except SpawnError as exc:
                    raise LeanError(f"no fresh REPL could be started: {exc}", transient=exc.transient) from exc
            lease = Lease(repl)
            yield lease
        finally:
            if repl is not None:
                if pooled:
                    self._discard(repl, reason="used for a trusted check", kill=True, stat="retired")
                else:
                    repl.process.kill()
            self._slots.release()

    def _take_ready(self, wanted: Callable[[Repl], bool]) -> Repl | None:
        """A ready, live REPL that `wanted` accepts, if there is one (the others go back in the queue)."""
        seen: list[Repl] = []
        found: Repl | None = None
        while True:
            try:
                repl = self._ready.get_nowait()
            except queue.Empty:
                break
            if found is None and wanted(repl) and repl.process.alive():
                found = repl
            else:
                seen.append(repl)
        for repl in seen:
            self._ready.put(repl)
        return found

    def _take(self, deadline: float) -> Repl:
        while True:
            try:
                repl = self._ready.get(timeout=0.05)
            except queue.Empty:
                self._raise_if_hopeless(any_ready=False)
                self._fill()
                if time.monotonic() > deadline:
                    raise LeanError("no REPL became ready in time", transient=True) from None
                continue
            if not repl.process.alive():
                self._discard(repl, reason="died while idle")
                continue
            if repl.process.stray_output():
                self._discard(repl, reason="output outside a reply while idle", kill=True)
                continue
            if repl.checks == 0:
                # Keep REPLs that ran no check for `fresh()` (a claimed pass is repeated there) while a used one
                # is ready: the spare then costs no import when a pass needs it.
                used = self._take_ready(lambda repl: repl.checks > 0)
                if used is not None:
                    self._ready.put(repl)
                    return used
            return repl

    def _raise_if_hopeless(self, *, any_ready: bool) -> None:
        with self._lock:
            error, failures, live = self._last_error, self._failures, self._live
        if error is None or any_ready:
            return
        if not error.transient and live == 0:
            raise LeanError(f"no REPL can be started: {error}", transient=False)
        if failures >= FAILURES_BEFORE_GIVING_UP:
            raise LeanError(f"no REPL can be started: {error}", transient=True)

    def _give_back(self, lease: Lease) -> None:
        repl = lease.repl
        repl.checks += 1
        if lease.retire and not lease.broken:  # (already ended when it handed its environment file out)
            self._discard(repl, reason=lease.retire, kill=True, stat="retired")
            return
        if lease.broken or not repl.process.alive():
            self._discard(repl, reason=lease.broken or "died", kill=True)
            return
        if repl.process.stray_output():  # e.g. a reply forged ahead for the next check: never hand it on
            self._discard(repl, reason="output outside a reply", kill=True)
            return
        if repl.checks >= self.settings.max_checks_per_repl:
            self._discard(repl, reason=f"recycled after {repl.checks} checks", recycle=True)
            return
        rss = repl.process.rss_mb()
        if rss > self.settings.max_rss_mb:
            self._discard(repl, reason=f"recycled at {rss:.0f} MB resident", recycle=True)
            return
        self._ready.put(repl)

    def _discard(
        self, repl: Repl, *, reason: str, kill: bool = False, recycle: bool = False, stat: str | None = None
    ) -> None:
        logger.info("retiring REPL pid %s: %s", repl.process.pid, reason)
        with self._lock:
            self._live -= 1
            self.stats[stat or ("recycled" if recycle else "killed")] += 1
        if kill:
            repl.process.kill()
        else:
            self._executor.submit(repl.process.close)
        self._fill()

    # -- introspection ----------------------------------------------------------------------------------------
    def health(self) -> None:
        if not self._started:
            self.start(wait=True)
            return
        self._raise_if_hopeless(any_ready=not self._ready.empty())

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "size": self.size,
                "target": self.target,
                "live": self._live,
                "ready": self._ready.qsize(),
                **self.stats,
            }


class Lease:
    """One check's hold on a REPL; set `broken` (with a reason) to have it killed instead of reused, `retire` to
    have it killed as planned (a claimed pass: nothing of it may run while the replay reads its files)."""

    def __init__(self, repl: Repl) -> None:
        self.repl = repl
        self.broken: str | None = None
        self.retire: str | None = None

    @property
    def process(self) -> ReplProcess:
        return self.repl.process


def _ask_version(repl: Repl, deadline: float) -> str | None:
    try:
        reply = repl.process.request(_VERSION_PROBE, repl.import_env, deadline=deadline)
    except ReplFailure:
        raise
    for message in reply.messages:
        if message.severity == "info":
            value = message.data.strip().strip('"')
            if value:
                return value if value.startswith("v") else f"v{value}"
    return None
