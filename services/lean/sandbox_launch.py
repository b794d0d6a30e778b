"""Sandbox launcher: isolates this process, then `exec`s a Lean command; or ends a sandbox uid's processes and hands
one file of its private dir to the worker. Standard library only.

Run by the worker as ``python -I -S sandbox_launch.py [options] -- CMD ARGS...`` (a fresh process, so no threads
are forked and nothing here needs the project importable). To start a REPL or the replay, in order:

1. files the worker hands to the command (``--copy-in``, the replay's request and environment files) are opened
   while this process still has the worker's uid: they stay in a directory only the worker can read;
2. a network namespace (``--net isolate``) and an IPC namespace when we hold CAP_SYS_ADMIN
   (``unshare(CLONE_NEWNET | CLONE_NEWIPC)``, the root-with-all-capabilities case): System V shared memory, message
   queues and semaphores the command creates then end with its last process, instead of outliving the sandbox;
3. resource limits: RLIMIT_AS (address space), RLIMIT_CPU, no core files;
4. ``--uid``/``--gid``: drop to that uid and gid (the worker holds CAP_SETUID/CAP_SETGID), no supplementary
   groups; then every process already running under that uid is killed (the pool leases the uid to this process
   alone; a leftover can only come from a worker that died holding it);
5. ``--make-tmpdir``: ``$TMPDIR`` (the private dir; its name is in the environment, which no other uid may read, not
   on the command line, which every process may read) is created here, mode 0700, owned by the uid the command runs
   as; the ``--copy-in`` files are
   copied into it, read-only;
6. without those namespaces yet: ``unshare(CLONE_NEWUSER | CLONE_NEWIPC [| CLONE_NEWNET])`` as that unprivileged
   uid. If they cannot be made and ``--net isolate`` was asked, exit 126 with a message (fails closed); with
   ``--net keep`` (no namespace allowed at all) the command starts in the worker's IPC namespace;
7. ``PR_SET_NO_NEW_PRIVS``: nothing the command runs can gain privileges through a setuid binary, so every
   process it leaves behind keeps its uid and is found by the reaping below;
8. ``exec`` the command (it keeps the pid, so the pool's process group and RSS accounting see the REPL itself).

``--reap`` (with ``--uid``): drop to the uid, become non-dumpable (no process of that uid may trace this one),
kill every process running under the uid (``kill(-1)`` as that uid, repeated until none is left), optionally hand
the file ``--take NAME`` of ``--private-dir`` out on stdout, then remove the private dir. ``--take`` without
``--reap`` hands the file out while the uid's process still runs (the reference environment, written before that
process was sent any model code). A file is handed out only if it is a regular file (no symlink, FIFO or device)
owned by the uid with one link, 1..``--max-bytes`` bytes; else exit 3 with the reason on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import resource
import signal
import stat
import sys
import time

CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
EXIT_SANDBOX = 126
EXIT_REFUSED = 3
EXIT_LEFTOVER = 4  # the file was handed out, but the private dir could not be removed
MARK = "oprover-sandbox:"
REAP_TIMEOUT_S = 10.0
# Where any uid may create files: what a sandbox uid left there goes with it.
SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")


class HandoffRefused(Exception):
    """A file a sandboxed process left for the worker is not one the worker may read."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> int:
    if _libc().unshare(flags) != 0:
        return ctypes.get_errno()
    return 0


def _prctl(option: int, value: int) -> None:
    if _libc().prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise OSError(f"still running as uid {os.geteuid()} gid {os.getegid()}")


def reap_as(uid: int, gid: int, reaper_uid: int) -> list[int]:
    """Kill every process of `uid`, untouchable by them: real and saved uid `reaper_uid` (the sandbox uid's own
    partner, which no other process has), effective uid `uid`. Our `kill(-1)` reaches every process whose real uid
    is `uid` (our effective one) and, of the rest, only processes of `reaper_uid`; theirs cannot reach us (a signal
    needs their real or effective uid to be our real or saved one) nor can they trace us. Files are then accessed
    as `uid`. Returns the survivors (empty on success)."""
    os.setgroups([])
    os.setgid(gid)
    os.setresuid(reaper_uid, uid, reaper_uid)
    if os.geteuid() != uid or os.getuid() != reaper_uid:
        raise OSError(f"running as uid {os.getuid()}/{os.geteuid()}, not {reaper_uid}/{uid}")
    _prctl(PR_SET_DUMPABLE, 0)
    return kill_uid_processes(uid)


def map_own_ids(uid: int, gid: int) -> None:
    """In a user namespace just made: map our uid and gid (as they were outside: inside, unmapped, they read as
    65534) to themselves, one id each, the only mapping an unprivileged process may write; so the process sees the
    ids it has outside. What it may touch is the same either way, and a non-zero uid keeps no capability across
    `exec`."""
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(f"{uid} {uid} 1\n")
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny\n")
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(f"{gid} {gid} 1\n")


def _live_pids_of(uid: int) -> list[int]:
    """Processes of `uid` other than this one that still run (zombies cannot run anything)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:  # gone meanwhile
            continue
        uids = fields.get("Uid", "").split()
        state = fields.get("State", "").strip()[:1]
        if uid in {int(u) for u in uids} and state not in {"Z", "X"}:
            found.append(int(entry))
    return found


def kill_uid_processes(uid: int, timeout_s: float = REAP_TIMEOUT_S) -> list[int]:
    """Kill every process of `uid` (this process must run as `uid`): `kill(-1)` signals all of them at once (the
    kernel holds the process list while it does, so a fork cannot slip through), repeated until none runs.
    Returns the pids that survived the timeout (empty on success)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        survivors = _live_pids_of(uid)
        if not survivors or time.monotonic() > deadline:
            return survivors
        time.sleep(0.01)


def open_handoff(directory: str, name: str, owner: int, max_bytes: int) -> int:
    """An fd of `directory`/`name`, refused (`HandoffRefused`) unless the directory and file are no symlinks,
    the file is a regular file of 1..`max_bytes` bytes owned by `owner` with a single link. Never blocks on a
    FIFO. The caller closes the fd."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise HandoffRefused("the private directory is gone") from exc
    except OSError as exc:
        raise HandoffRefused(f"the private directory cannot be opened safely: {exc.strerror}") from exc
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError as exc:
        raise HandoffRefused("the REPL wrote no environment file") from exc
    except OSError as exc:  # ELOOP: a symlink
        raise HandoffRefused(f"the environment file cannot be opened safely: {exc.strerror}") from exc
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HandoffRefused("the environment file is not a regular file")
        if info.st_uid != owner:
            raise HandoffRefused(f"the environment file belongs to uid {info.st_uid}, not to uid {owner}")
        if info.st_nlink != 1:
            raise HandoffRefused("the environment file has more than one link")
        if info.st_size == 0:
            raise HandoffRefused("the environment file is empty")
        if info.st_size > max_bytes:
            raise HandoffRefused(f"the environment file is larger than {max_bytes // (1 << 20)} MB")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def copy_capped(source_fd: int, out_fd: int, max_bytes: int) -> int:
    """Copy until EOF; `HandoffRefused` past `max_bytes` (a file that grew while it was read)."""
    copied = 0
    while chunk := os.read(source_fd, 1 << 20):
        copied += len(chunk)
        if copied > max_bytes:
            raise HandoffRefused(f"the environment file is larger than {max_bytes // (1 << 20)} MB")
        view = memoryview(chunk)
        while view:
            view = view[os.write(out_fd, view) :]
    return copied


def remove_tree(path: str) -> None:
    """Remove `path` (a file or a whole tree) as its owner, whatever its depth or permissions: iterative, relative
    to the current directory (no recursion to overflow, no path too long), making each directory ours to list.
    A directory of another uid inside (another sandbox planted it in a directory this one opened to all) is left
    in place, with the directories holding it: that uid's reaper answers for it, and nothing of ours stays there.
    Safe without races only once no process of the owner runs (`reap_as`)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    os.chmod(path, 0o700)
    os.chdir(path)
    me = os.geteuid()
    names: list[str] = []  # the directories entered below `path`
    kept: set[tuple[int, int]] = set()  # another uid's directories, and ours that hold one
    try:
        while True:
            below = None
            with os.scandir(".") as entries:
                for entry in entries:
                    found = entry.stat(follow_symlinks=False)
                    if (found.st_dev, found.st_ino) in kept:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if found.st_uid != me:
                            kept.add((found.st_dev, found.st_ino))
                            continue
                        below = entry.name
                        break
                    os.unlink(entry.name)  # (in our directory, whoever owns the file)
            if below is not None:
                os.chmod(below, 0o700, follow_symlinks=False)
                os.chdir(below)
                names.append(below)
                continue
            if not names:
                break
            os.chdir("..")
            name = names.pop()
            try:
                os.rmdir(name)
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY or not kept:
                    raise
                held = os.lstat(name)
                kept.add((held.st_dev, held.st_ino))
    finally:
        os.chdir("/")
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY or not kept:
            raise


def owned_entries(uid: int, roots: tuple[str, ...]) -> list[str]:
    """Entries of `roots` (directories every uid may write in) that belong to `uid`."""
    found = []
    for root in roots:
        try:
            with os.scandir(root) as entries:
                for entry in entries:
                    try:
                        if entry.stat(follow_symlinks=False).st_uid == uid:
                            found.append(entry.path)
                    except OSError:
                        continue
        except OSError:
            continue
    return found


def hand_out(args: argparse.Namespace) -> int:
    """`--reap` / `--take`: run as the sandbox uid (reaping: as its partner, `reap_as`), never as the worker."""
    gid = args.gid if args.gid >= 0 else args.uid
    try:
        if args.reap:
            survivors = reap_as(args.uid, gid, args.reaper_uid)
            if survivors:
                sys.stderr.write(f"{MARK} processes of uid {args.uid} survive SIGKILL: {survivors[:10]}\n")
                return EXIT_SANDBOX
        else:
            drop_to(args.uid, gid)
            _prctl(PR_SET_DUMPABLE, 0)
    except OSError as exc:
        sys.stderr.write(f"{MARK} cannot switch to uid {args.uid}: {exc}\n")
        return EXIT_SANDBOX
    status = 0
    if args.take:
        try:
            fd = open_handoff(args.private_dir, args.take, args.uid, args.max_bytes)
            try:
                copy_capped(fd, sys.stdout.fileno(), args.max_bytes)
            finally:
                os.close(fd)
        except HandoffRefused as exc:
            sys.stderr.write(f"{exc}\n")
            status = EXIT_REFUSED
    if args.reap:
        leftovers = [args.private_dir] if args.private_dir else []
        leftovers += owned_entries(args.uid, SHARED_WRITABLE)  # what it wrote where every uid may write
        for path in leftovers:
            try:
                remove_tree(path)
            except (OSError, RuntimeError) as exc:
                sys.stderr.write(f"{MARK} cannot remove {path}: {exc}\n")
                status = status or EXIT_LEFTOVER
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--net", choices=["isolate", "keep"], default="isolate")
    parser.add_argument("--as-mb", type=int, default=0)
    parser.add_argument("--cpu-s", type=int, default=0)
    parser.add_argument("--uid", type=int, default=-1)
    parser.add_argument("--gid", type=int, default=-1)
    parser.add_argument("--reaper-uid", type=int, default=-1)
    parser.add_argument("--nproc", type=int, default=0)
    parser.add_argument("--fsize-mb", type=int, default=0)
    parser.add_argument("--private-dir", default="")
    parser.add_argument("--make-tmpdir", action="store_true")
    parser.add_argument("--copy-in", action="append", default=[])
    parser.add_argument("--reap", action="store_true")
    parser.add_argument("--take", default="")
    parser.add_argument("--max-bytes", type=int, default=64 << 20)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.reap or args.take:
        if args.uid < 0 or (args.reap and args.reaper_uid < 0):
            parser.error("--reap and --take need --uid (--reap also --reaper-uid)")
        return hand_out(args)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command to run")

    try:
        handed = [(os.path.basename(p), os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)) for p in args.copy_in]
    except OSError as exc:
        sys.stderr.write(f"{MARK} cannot open a file to hand over: {exc}\n")
        return EXIT_SANDBOX
    # Namespaces while we may (CAP_SYS_ADMIN: the root-with-all-capabilities case); else step 6 makes them in a user
    # namespace. The IPC namespace always: System V segments, queues and semaphores belong to no file and no
    # process, so only the end of their namespace (with its last process, i.e. the reaper's kill) removes them.
    wanted = CLONE_NEWIPC | (CLONE_NEWNET if args.net == "isolate" else 0)
    namespaced = _unshare(wanted) == 0
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if args.as_mb > 0:
        limit = args.as_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.cpu_s > 0:  # SIGXCPU at the soft limit, SIGKILL at the hard one
        resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_s, args.cpu_s + 5))
    if args.uid >= 0:
        gid = args.gid if args.gid >= 0 else args.uid
        try:
            if args.reaper_uid >= 0:  # the uid is leased to us alone: what runs under it is a leftover
                survivors = reap_as(args.uid, gid, args.reaper_uid)
                if survivors:
                    raise OSError(f"processes of uid {args.uid} survive SIGKILL: {survivors[:10]}")
                os.setresuid(args.uid, args.uid, args.uid)  # (groups and gid are set; no capability is left)
            else:
                drop_to(args.uid, gid)
        except OSError as exc:
            sys.stderr.write(f"{MARK} cannot drop to uid {args.uid}: {exc}\n")
            return EXIT_SANDBOX
    if args.nproc > 0:  # per uid: with a uid of its own, the processes and threads this command may have
        resource.setrlimit(resource.RLIMIT_NPROC, (args.nproc, args.nproc))
    if args.fsize_mb > 0:
        limit = args.fsize_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    if args.make_tmpdir:
        private = os.environ.get("TMPDIR", "")
        try:
            if not private:
                raise OSError("TMPDIR is not set")
            os.mkdir(private, 0o700)  # fails if anyone made it first
            os.chmod(private, 0o700)  # whatever the umask
            for name, fd in handed:
                out = os.open(os.path.join(private, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
                try:
                    copy_capped(fd, out, 1 << 40)
                finally:
                    os.close(out)
        except OSError as exc:
            sys.stderr.write(f"{MARK} cannot prepare the private directory: {exc}\n")
            return EXIT_SANDBOX
    for _, fd in handed:
        os.close(fd)
    if not namespaced:
        uid, gid = os.geteuid(), os.getegid()
        errno_user = _unshare(CLONE_NEWUSER | wanted)
        if errno_user != 0 and args.net == "isolate":
            sys.stderr.write(
                f"{MARK} cannot create a network and IPC namespace (unshare: no CAP_SYS_ADMIN; with a user "
                f"namespace: {os.strerror(errno_user)}); refusing to start without them\n"
            )
            return EXIT_SANDBOX
        # (`--net keep` is the operator's fallback where no namespace may be made, docs/lean.md "Sandbox": the
        # command then also shares the IPC namespace.)
        if errno_user == 0:
            try:
                # The uid switch made this process non-dumpable, which makes its /proc files root's; the command
                # will be dumpable after `exec` anyway, and no other process of this uid is left to trace it.
                _prctl(PR_SET_DUMPABLE, 1)
                map_own_ids(uid, gid)
            except OSError as exc:
                sys.stderr.write(f"{MARK} cannot map the uid into the user namespace: {exc}\n")
                return EXIT_SANDBOX
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        sys.stderr.write(f"{MARK} cannot set no_new_privs: {exc}\n")
        return EXIT_SANDBOX
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        sys.stderr.write(f"{MARK} cannot start {cmd[0]!r}: {exc}\n")
        return 127
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
