"""The sandbox one Lean process (a REPL or the kernel replay) runs in: its own uid, its private dir, its
environment, and how everything it started is ended and what it wrote is taken out (docs/lean.md, "Sandbox").

Submitted code runs in REPLs. Each REPL process, and each replay, runs under a uid of its own, leased from the range
``OPROVER_LEAN_SANDBOX_UID_BASE`` .. ``+ OPROVER_LEAN_SANDBOX_UID_COUNT - 1`` (the next COUNT uids are their reapers'),
never the worker's. The kernel then
keeps it out of the worker's ``/proc/<pid>/environ``, ``cwd``, ``fd`` and memory (they need ptrace access, which
another uid does not have), out of the worker's files and directories (mode 0700/0600), and out of other
REPLs' private dirs and handoff files. A uid is leased with an exclusive ``flock`` on a lock file in a
worker-owned directory, so every worker process on the machine (several Lean versions, test processes) leases
from the same table; the lease ends only once no process of that uid runs any more.

Switching uids needs root with CAP_SETUID and CAP_SETGID (the Lean image runs the worker so, with every other
capability dropped). Everything the worker does with a sandbox uid's processes and files, it does through
`sandbox_launch.py` running as that uid: it kills them with ``kill(-1)`` (no CAP_KILL) and hands files out on a pipe
(no CAP_DAC_OVERRIDE or CAP_CHOWN). A worker that cannot switch uids refuses to start unless
``OPROVER_LEAN_SANDBOX_SHARED_UID=true`` lets its REPLs run under its own uid (weaker: docs/lean.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import random
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from services.lean.sandbox_launch import (
    EXIT_LEFTOVER,
    EXIT_REFUSED,
    EXIT_SANDBOX,
    HandoffRefused,
    copy_capped,
    open_handoff,
)
from services.settings import LeanSettings

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("sandbox_launch.py")
CAP_SETGID, CAP_SETUID = 6, 7
PR_SET_DUMPABLE = 4
HELPER_TIMEOUT_S = 30.0
# What a Lean process may see of the worker's environment: only what finds and runs the toolchain. Everything else
# (OPROVER_*, REDIS*, API keys, cloud credentials, anything the deployment adds) stays with the worker.
_ALLOWED_ENV = re.compile(
    r"^(PATH|LANG|LANGUAGE|LC_[A-Z_]+|TZ|LD_LIBRARY_PATH|ELAN_[A-Z_]+|LEAN_[A-Z_]+|LAKE_?[A-Z_]*)$"
)
# Never hand on a value under a name that says it is one (even an allowed prefix).
_SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "REDIS", "OPROVER")


class SandboxUnavailable(Exception):
    """This worker cannot give its Lean processes the configured isolation: it must not start them. `transient`:
    a retry may succeed (every uid of the range is leased right now)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class PickleError(Exception):
    """The environment file a REPL wrote cannot be handed to the replay (missing, not a regular file, another
    owner, too big)."""


class HandoffFailed(Exception):
    """The worker's side of a handoff failed (the launcher could not run or timed out, the copy's destination could
    not be created): nothing is known about the REPL's file, so this is no verdict on the proof; a retry may
    succeed."""


@dataclass(frozen=True)
class SandboxConfig:
    enabled: bool = True
    network: bool = True  # require a network namespace
    uid_base: int = 50000
    uid_count: int = 1000
    shared_uid: bool = False  # allow the worker's own uid when it cannot switch uids
    max_processes: int = 4096  # RLIMIT_NPROC of a sandbox uid (threads count: Lean runs one per core and a few more)
    max_file_mb: int = 4096  # RLIMIT_FSIZE: no file larger (an environment file is at most max_pickle_mb)
    address_space_mb: int = 0
    cpu_limit_s: int = 0

    @classmethod
    def from_settings(cls, settings: LeanSettings) -> SandboxConfig:
        return cls(
            enabled=settings.sandbox,
            network=settings.sandbox_network,
            uid_base=settings.sandbox_uid_base,
            uid_count=settings.sandbox_uid_count,
            shared_uid=settings.sandbox_shared_uid,
            address_space_mb=settings.address_space_mb,
            cpu_limit_s=settings.cpu_limit_s,
        )


def can_switch_uids() -> bool:
    """Whether this process holds CAP_SETUID and CAP_SETGID (root in the Lean image, with the rest dropped)."""
    try:
        with open("/proc/self/status") as handle:
            line = next(line for line in handle if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return os.geteuid() == 0
    effective = int(line.split()[1], 16)
    return bool(effective & (1 << CAP_SETUID)) and bool(effective & (1 << CAP_SETGID))


def require_isolation(cfg: SandboxConfig) -> bool:
    """Fail closed: raise `SandboxUnavailable` (one line) unless Lean processes can get uids of their own (True;
    the range is checked) or the shared-uid mode is explicitly allowed (False)."""
    if not cfg.enabled:
        return False
    if can_switch_uids():
        first, last = cfg.uid_base, cfg.uid_base + 2 * cfg.uid_count - 1  # the second half: the reapers
        if first <= 0 or last >= 2**32 - 1:
            raise SandboxUnavailable(f"OPROVER_LEAN_SANDBOX_UID_BASE/COUNT give uids {first}..{last}: not usable")
        if first <= os.geteuid() <= last or first <= os.getegid() <= last:
            raise SandboxUnavailable(
                f"the sandbox uid range {first}..{last} holds the worker's own uid or gid; move "
                "OPROVER_LEAN_SANDBOX_UID_BASE"
            )
        return True
    if cfg.shared_uid:
        return False
    raise SandboxUnavailable(
        f"this worker (uid {os.geteuid()}) cannot run REPLs under uids of their own: it needs root with CAP_SETUID "
        "and CAP_SETGID (docs/lean.md, Sandbox); set OPROVER_LEAN_SANDBOX_SHARED_UID=true to run them under the "
        "worker's uid, which lets submitted code read the worker's files"
    )


def protect_worker() -> None:
    """Make this process non-dumpable: its /proc entries (environ, cwd, fds, memory) then need CAP_SYS_PTRACE even
    from its own uid, which is what guards them in the shared-uid mode. The children it starts are dumpable
    again after their `exec` (the kernel resets the flag), so nothing of the REPLs changes; only debuggers that
    attach to the worker (py-spy, gdb) then need CAP_SYS_PTRACE."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_DUMPABLE, 0) failed: errno %s", ctypes.get_errno())


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment reduced to what Lean needs (`_ALLOWED_ENV`), without anything named like a secret."""
    env = dict(os.environ if base is None else base)
    return {
        key: value
        for key, value in env.items()
        if _ALLOWED_ENV.match(key) and not any(marker in key.upper() for marker in _SECRET_MARKERS)
    }


# -- uid leases --------------------------------------------------------------------------------------------------
class UidLease:
    """One sandbox uid, held (an exclusive flock) until `release`, which only the code that saw its processes end
    may call."""

    def __init__(self, uid: int, locks: list[IO[bytes]]) -> None:
        self.uid = uid
        self._locks = locks

    def release(self) -> None:
        for lock in self._locks:
            lock.close()  # drops the flock
        self._locks = []


_cursor_lock = threading.Lock()
_cursor: dict[tuple[int, int], int] = {}


def _lock_dir() -> Path:
    """`/tmp/oprover-sandbox-uids-<euid>`: created by the worker, 0700, refused if anyone else owns it."""
    path = Path("/tmp") / f"oprover-sandbox-uids-{os.geteuid()}"  # not TMPDIR: one table for every worker
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise SandboxUnavailable(f"{path} is not a private directory of this worker's uid")
    return path


def _try_lock(path: Path) -> IO[bytes] | None:
    handle = open(path, "ab")  # noqa: SIM115 - held for the lease
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def lease_uid(cfg: SandboxConfig) -> UidLease:
    """A uid of the range that no live sandbox holds, taken round-robin from a random start so a uid is reused as
    late as possible."""
    directory = _lock_dir()
    key = (cfg.uid_base, cfg.uid_count)
    with _cursor_lock:
        start = _cursor.setdefault(key, random.randrange(cfg.uid_count))
    for step in range(cfg.uid_count):
        offset = (start + step) % cfg.uid_count
        uid = cfg.uid_base + offset
        # The uid and its reaper's partner uid, both: a worker configured with another range must lease neither.
        locks = [_try_lock(directory / str(uid)), _try_lock(directory / str(uid + cfg.uid_count))]
        if not all(locks):
            for lock in locks:
                if lock is not None:
                    lock.close()
            continue
        with _cursor_lock:
            _cursor[key] = offset + 1
        return UidLease(uid, [lock for lock in locks if lock is not None])
    raise SandboxUnavailable(f"all {cfg.uid_count} sandbox uids from {cfg.uid_base} are in use", transient=True)


# -- one sandbox -----------------------------------------------------------------------------------------------
def take_own_file(source: Path, destination: Path, max_bytes: int) -> Path:
    """Copy `source`, which must belong to this process's uid (a sandbox without a uid of its own), to a new,
    read-only `destination`, trusting nothing about it (`sandbox_launch.open_handoff`: a regular file of
    1..`max_bytes` bytes with one link, opened without following a symlink or blocking on a FIFO)."""
    try:
        fd = open_handoff(str(source.parent), source.name, os.geteuid(), max_bytes)
    except HandoffRefused as exc:
        raise PickleError(str(exc)) from exc
    try:
        out = open(destination, "xb")  # noqa: SIM115 - closed below; never a file someone else left there
    except OSError as exc:
        os.close(fd)
        raise HandoffFailed(f"the copy of the environment file cannot be created: {exc}") from exc
    try:
        with out:
            copy_capped(fd, out.fileno(), max_bytes)
    except HandoffRefused as exc:
        destination.unlink(missing_ok=True)
        raise PickleError(str(exc)) from exc
    finally:
        os.close(fd)
    destination.chmod(0o444)
    return destination


class Sandbox:
    """One Lean process's isolation: its uid lease (None: disabled, or the shared-uid mode), its private dir
    (`TMPDIR`/`HOME`, made by the launcher as that uid), and its ending."""

    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg
        self.lease: UidLease | None = None
        if cfg.enabled:
            if require_isolation(cfg):
                self.lease = lease_uid(cfg)
            # made by the launcher, after the uid switch; the name is unguessable, and mkdir fails if taken
            self.private_dir = Path(tempfile.gettempdir()) / f"oprover-sandbox-{secrets.token_hex(12)}"
        else:
            self.private_dir = Path(tempfile.mkdtemp(prefix="oprover-lean-"))
        self.reaped = False

    @property
    def uid(self) -> int | None:
        return self.lease.uid if self.lease else None

    @property
    def _reaper_uid(self) -> int:
        """The partner of the leased uid, in the range's second half: what its reaper runs as (real and saved uid),
        so processes of the leased uid cannot signal or trace it (`sandbox_launch.reap_as`)."""
        assert self.lease is not None
        return self.lease.uid + self.cfg.uid_count

    def argv(self, cmd: list[str], copy_in: Sequence[Path] = ()) -> list[str]:
        """`cmd` behind the launcher (or as is when the sandbox is off: then `copy_in` is not copied)."""
        if not self.cfg.enabled:
            return list(cmd)
        launcher = [sys.executable, "-I", "-S", str(LAUNCHER), "--net", "isolate" if self.cfg.network else "keep"]
        launcher += ["--as-mb", str(self.cfg.address_space_mb), "--cpu-s", str(self.cfg.cpu_limit_s)]
        if self.lease is not None:
            launcher += ["--uid", str(self.lease.uid), "--gid", str(self.lease.uid)]
            launcher += ["--reaper-uid", str(self._reaper_uid), "--nproc", str(self.cfg.max_processes)]
        launcher += ["--fsize-mb", str(self.cfg.max_file_mb)]
        launcher += ["--make-tmpdir"]  # $TMPDIR: the name stays off the world-readable command line
        for path in copy_in:
            launcher += ["--copy-in", str(path)]
        return [*launcher, "--", *cmd]

    def environment(self) -> dict[str, str]:
        env = child_environment()
        env.update({"TMPDIR": str(self.private_dir), "HOME": str(self.private_dir)})
        return env

    def _helper(self, *args: str, stdout: int | IO[bytes] = subprocess.DEVNULL) -> subprocess.CompletedProcess[bytes]:
        assert self.lease is not None
        uid = str(self.lease.uid)
        argv = [sys.executable, "-I", "-S", str(LAUNCHER), "--uid", uid, "--gid", uid]
        argv += ["--reaper-uid", str(self._reaper_uid), *args]
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, timeout=HELPER_TIMEOUT_S, env={}
        )

    def stop(self, process: subprocess.Popen[bytes]) -> bool:
        """End every process of this sandbox: with its own uid, each one of that uid wherever it went (`setsid`,
        double fork); else the process group. Reaps `process`. False if some survive (the uid is then kept)."""
        ok = True
        if self.lease is not None:
            ok = self._reap_without_process()
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        return ok

    def take(self, name: str, destination: Path, max_bytes: int, *, process: subprocess.Popen[bytes] | None) -> Path:
        """Copy the file `name` its process wrote into the private dir to `destination` (new, read-only), trusting
        nothing about it (`sandbox_launch.open_handoff`). With `process`, everything of the sandbox is ended first,
        so nothing can change the file while it is read; without, the file is taken from a live process (only for
        files written before the process was sent any submitted code)."""
        if self.lease is None:
            if process is not None:
                self.stop(process)
            return take_own_file(self.private_dir / name, destination, max_bytes)
        args = ["--take", name, "--max-bytes", str(max_bytes), "--private-dir", str(self.private_dir)]
        if process is not None:
            args.append("--reap")
        try:
            out = open(destination, "xb")  # noqa: SIM115 - closed below; never a file someone else left there
        except OSError as exc:
            raise HandoffFailed(f"the copy of the environment file cannot be created: {exc}") from exc
        try:
            with out:
                result = self._helper(*args, stdout=out)
        except (OSError, subprocess.SubprocessError) as exc:  # e.g. the helper timed out on a loaded machine
            destination.unlink(missing_ok=True)
            raise HandoffFailed(f"the handoff failed: {exc}") from exc
        if process is not None:
            self.reaped = result.returncode in (0, EXIT_REFUSED)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if result.returncode == EXIT_SANDBOX:  # the launcher could not become the uid: it never saw the file
            destination.unlink(missing_ok=True)
            why = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise HandoffFailed(why[-1] if why else "the handoff launcher failed")
        if result.returncode not in (0, EXIT_LEFTOVER) or destination.stat().st_size > max_bytes:
            destination.unlink(missing_ok=True)
            why = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise PickleError(why[-1] if why else f"the handoff failed (exit {result.returncode})")
        destination.chmod(0o444)
        return destination

    def close(self, process: subprocess.Popen[bytes] | None) -> None:
        """End the sandbox's processes, remove its private dir, and give the uid back (only if nothing of it runs)."""
        ok = self.stop(process) if process is not None else self._reap_without_process()
        if self.lease is None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        elif ok:
            self.lease.release()
            self.lease = None
        else:
            logger.error("sandbox uid %s stays leased: its processes or private dir outlived it", self.lease.uid)

    def _reap_without_process(self) -> bool:
        """`--reap` as the sandbox uid: kill all its processes, remove the private dir."""
        if self.lease is None or self.reaped:
            return True
        try:
            result = self._helper("--reap", "--private-dir", str(self.private_dir))
        except (OSError, subprocess.SubprocessError) as exc:
            logger.error("sandbox uid %s: the reaper failed: %s", self.lease.uid, exc)
            return False
        self.reaped = result.returncode == 0
        if not self.reaped:
            logger.error("sandbox uid %s: %s", self.lease.uid, result.stderr.decode("utf-8", "replace").strip())
        return self.reaped
