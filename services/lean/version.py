"""Does a REPL run the Lean its verify worker announces?

A verify worker announces `OPROVER_LEAN_VERSION` (e.g. `v4.15.0`): the gateway routes `lean_version` requests
by it and job records say which Lean checked a proof. A worker whose REPL runs another Lean (a stale image, a
wrong `OPROVER_LEAN_CMD`) would answer `pass` in that other Lean's name, so it must refuse to start instead.

The REPL reports `Lean.versionString`: `MAJOR.MINOR.PATCH`, then `-DESC` when the build has a special
description. Two versions are the same Lean when
- MAJOR.MINOR.PATCH are equal (a leading `v` is ignored on either side), and
- their pre-release tags are equal: `rcN` and `nightly-…` name a different Lean than the release
  (`4.15.0-rc1` is not `v4.15.0`), so they count; any other description is a build label (the stand-in
  REPL's `4.15.0-fake_repl`) and does not.
A version that cannot be read is never the same as anything: the worker fails closed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from services.errors import LeanError

_VERSION = re.compile(r"\s*v?(\d+)\.(\d+)\.(\d+)(?:-(\S+))?\s*")
_PRE_RELEASE = re.compile(r"rc\d+|nightly(?:-\S*)?")


class LeanVersion(NamedTuple):
    release: tuple[int, int, int]
    pre_release: str | None  # "rc1", "nightly-2024-12-01"; None for a release (build labels dropped)


def parse_lean_version(text: str) -> LeanVersion | None:
    match = _VERSION.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, description = match.groups()
    pre_release = description if description is not None and _PRE_RELEASE.fullmatch(description) else None
    return LeanVersion((int(major), int(minor), int(patch)), pre_release)


def same_lean(announced: str, reported: str | None) -> bool:
    ours = parse_lean_version(announced)
    theirs = parse_lean_version(reported) if reported is not None else None
    return ours is not None and ours == theirs


def require_same_lean(announced: str, reported: str | None) -> None:
    """Raise a non-transient `LeanError` unless the REPL (`reported`) runs the announced Lean."""
    if same_lean(announced, reported):
        return
    if reported is None:
        raise LeanError(
            f"the REPL did not report its Lean version (`#eval Lean.versionString`), so this worker cannot "
            f"confirm it runs OPROVER_LEAN_VERSION={announced}; refusing to serve",
            transient=False,
        )
    raise LeanError(
        f"the REPL runs Lean {reported}, but OPROVER_LEAN_VERSION is {announced}; refusing to serve it as "
        f"{announced} (set OPROVER_LEAN_VERSION to the REPL's version, or point OPROVER_LEAN_CMD at a "
        f"{announced} toolchain)",
        transient=False,
    )
