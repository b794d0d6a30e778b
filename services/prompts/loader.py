"""Find and load prompt profiles: the built-in files, and a deployment's own folder (`OPROVER_PROMPT_DIR`).

A file in the extra folder with the same name as a built-in replaces it. Loaded profiles are cached by
path, modification time and size, so a worker may call `load_profile` every round and an edited file is
picked up without a restart.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from services.errors import RequestError
from services.prompts.feedback import FEEDBACK_RENDERERS
from services.prompts.profile import PromptProfile, PromptProfileError, parse_profile

BUILTIN_DIR = Path(__file__).parent / "profiles"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_SUFFIX = ".toml"

_cache: dict[tuple[str, int, int], PromptProfile] = {}
_cache_lock = threading.Lock()


def _dirs(extra_dir: Path | None) -> list[Path]:
    # The extra folder first: its files override built-ins of the same name.
    return ([Path(extra_dir)] if extra_dir is not None else []) + [BUILTIN_DIR]


def available_profiles(extra_dir: Path | None = None) -> list[str]:
    """Names of every profile file found (built-in and extra), sorted."""
    names: set[str] = set()
    for folder in _dirs(extra_dir):
        if folder.is_dir():
            names.update(p.stem for p in folder.glob(f"*{_SUFFIX}") if _NAME.match(p.stem))
    return sorted(names)


def profile_path(name: str, extra_dir: Path | None = None) -> Path | None:
    if not isinstance(name, str) or not _NAME.match(name):
        return None
    for folder in _dirs(extra_dir):
        candidate = folder / f"{name}{_SUFFIX}"
        if candidate.is_file():
            return candidate
    return None


def load_profile(name: str, *, extra_dir: Path | None = None) -> PromptProfile:
    """The profile called `name`; an unknown name is the caller's error and lists the known ones.

    A file that exists but cannot be used raises `PromptProfileError` (a deployment problem, not the
    request's); `validate_profiles` lists those (tests run it over the shipped profiles; nothing runs it at start-up).
    """
    path = profile_path(name, extra_dir)
    if path is None:
        known = ", ".join(available_profiles(extra_dir)) or "none"
        raise RequestError(
            f"unknown prompt profile {name!r}; available: {known}",
            param="prompt_profile",
            code="unknown_prompt_profile",
        )
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    profile = parse_profile(
        path.read_bytes(), where=str(path), expected_name=name, feedback_renderers=FEEDBACK_RENDERERS
    )
    with _cache_lock:
        for stale in [k for k in _cache if k[0] == key[0]]:
            del _cache[stale]
        _cache[key] = profile
    return profile


def validate_profiles(extra_dir: Path | None = None) -> dict[str, str]:
    """Load every profile; returns {name: error} for the broken ones (empty when all are usable)."""
    problems: dict[str, str] = {}
    for name in available_profiles(extra_dir):
        try:
            load_profile(name, extra_dir=extra_dir)
        except PromptProfileError as exc:
            problems[name] = str(exc)
    return problems
