"""Sandbox launcher: isolates this process, then `exec`s the REPL command. Standard library only.

Run by the pool as ``python -I -S sandbox_launch.py [options] -- CMD ARGS...`` (a fresh process, so no threads
are forked and nothing here needs the project importable). In order:

1. a new network namespace, so the REPL sees only a loopback that is down: ``unshare(CLONE_NEWNET)`` when we hold
   CAP_SYS_ADMIN (root), else ``unshare(CLONE_NEWUSER | CLONE_NEWNET)`` (unprivileged user namespaces). If neither
   works and ``--net isolate`` was asked, it exits 126 with a message: the sandbox fails closed;
2. resource limits: RLIMIT_AS (address space), RLIMIT_CPU, no core files;
3. when running as root, drop to the unprivileged ``--uid``/``--gid`` with no supplementary groups, so the
   toolchain, Mathlib and everything outside the private temp dir are read-only to it;
4. ``exec`` the command (it keeps the pid, so the pool's process group and RSS accounting see the REPL itself).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
EXIT_SANDBOX = 126
MARK = "oprover-sandbox:"


def _unshare(flags: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        return ctypes.get_errno()
    return 0


def isolate_network() -> str:
    errno_root = _unshare(CLONE_NEWNET)
    if errno_root == 0:
        return "netns"
    errno_user = _unshare(CLONE_NEWUSER | CLONE_NEWNET)
    if errno_user == 0:
        return "userns+netns"
    raise OSError(
        f"cannot create a network namespace (unshare: {os.strerror(errno_root)}; with a user namespace: "
        f"{os.strerror(errno_user)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--net", choices=["isolate", "keep"], default="isolate")
    parser.add_argument("--as-mb", type=int, default=0)
    parser.add_argument("--cpu-s", type=int, default=0)
    parser.add_argument("--uid", type=int, default=-1)
    parser.add_argument("--gid", type=int, default=-1)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command to run")

    if args.net == "isolate":
        try:
            isolate_network()
        except OSError as exc:
            sys.stderr.write(f"{MARK} {exc}; refusing to start the REPL without network isolation\n")
            return EXIT_SANDBOX
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if args.as_mb > 0:
        limit = args.as_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.cpu_s > 0:  # SIGXCPU at the soft limit, SIGKILL at the hard one
        resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_s, args.cpu_s + 5))
    if args.uid >= 0 and os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(args.gid if args.gid >= 0 else args.uid)
            os.setuid(args.uid)
        except OSError as exc:
            sys.stderr.write(f"{MARK} cannot drop to uid {args.uid}: {exc}\n")
            return EXIT_SANDBOX
        if os.geteuid() != args.uid:
            sys.stderr.write(f"{MARK} still running as uid {os.geteuid()}\n")
            return EXIT_SANDBOX
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        sys.stderr.write(f"{MARK} cannot start {cmd[0]!r}: {exc}\n")
        return 127
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
