"""Every `oprover` command's --help: each option says what it does and its default, and the commands that read
a file say what the file holds (the benchmark's and the memory import's fields)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from api.cli import build_parser
from services.memory.importer import FIELD_ALIASES, VERIFIED_FLAGS
from tests.harness import ROOT

COMMANDS = [
    ["serve"], ["worker"], ["up"], ["prove"], ["verify"], ["eval"], ["export", "trajectories"], ["memory"],
    ["lean", "setup"],
]  # fmt: skip


def _subparser(path: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _help(path: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", *path, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_command_is_listed_here() -> None:
    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {path[0] for path in COMMANDS} == set(top.choices)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_each_option_says_what_it_does_and_its_default(path: list[str]) -> None:
    text = _help(path)
    for action in _subparser(path)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"oprover {' '.join(path)}: {action.dest} has no help"
        takes_value = action.option_strings and action.nargs != 0
        if takes_value and not action.required and action.nargs != 2:
            assert "default" in action.help, f"oprover {' '.join(path)} {action.option_strings[0]}: no default"
        for option in action.option_strings:
            assert option in text


@pytest.mark.parametrize("path", [["prove"], ["verify"]], ids=" ".join)
def test_lean_file_commands_say_what_the_file_holds(path: list[str]) -> None:
    text = _help(path)
    assert "input: a Lean file, or - for stdin" in text and "header" in text


def test_eval_help_names_the_benchmark_fields() -> None:
    text = _help(["eval"])
    for field in ("formal_statement", "name", "header", "informal_statement"):
        assert f"\n  {field} " in text


def test_memory_help_names_every_field_the_import_reads() -> None:
    text = _help(["memory"])
    for field, aliases in FIELD_ALIASES.items():
        line = next((line for line in text.splitlines() if line.startswith(f"  {field} ")), None)
        assert line is not None, field
        assert line.split()[-len(aliases) * 2 + 1 :][::2] == list(aliases), line
    assert " | ".join(VERIFIED_FLAGS) in text
