"""Only the kernel replay can say `pass`: the trusted path against stand-ins at the protocol boundary.

The stand-in REPL (standins/fake_repl.py) writes the environment it really holds on `pickleTo`, and can lie
in its replies (`lie`), keep lying after a check (`plant`) or forge a reply ahead (`forge`); the stand-in replay
(standins/fake_replay.py) is a real executable speaking the replay program's protocol, its "kernel" judging
each constant by its own table. The `lean`-marked tests at the end run the real replay program on real Lean in the
Lean image and fail loudly elsewhere.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from services.domain import Verdict
from services.lean.protocol import decode_reply, encode_pickle, split_replies
from services.lean.replay import name_parts, new_workdir, read_verdict, run_replay
from services.lean.sandbox import PickleError, take_own_file
from services.settings import LeanSettings
from standins.fake_repl import lean_cmd, write_table
from standins.fake_replay import replay_cmd, write_replay_table
from tests.lean_cases import GOOD_PROOF, PASS_POSITIVITY, STATEMENT, stand_in_checker
from tests.shared_data import shared_path

GARBAGE = "theorem target_thm (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  simp_all [garbage_lemma]\n"


def kernel(tmp_path: Path, rules: list[dict] | None = None, **options) -> str:
    """The OPROVER_LEAN_REPLAY_CMD of a stand-in replay whose kernel follows `rules`."""
    name = f"replay-{len(list(tmp_path.glob('replay-*')))}.json"
    return replay_cmd(write_replay_table(tmp_path / name, rules, **options))


# ---------------------------------------------------------------------------------------------------------------
# The replay's verdict alone decides
# ---------------------------------------------------------------------------------------------------------------
def test_a_pass_needs_the_kernel_replay_to_accept(tmp_path) -> None:
    with stand_in_checker(tmp_path, [PASS_POSITIVITY]) as checker:
        result = checker.check(GOOD_PROOF, formal_statement=STATEMENT)
    assert result.verdict is Verdict.PASS and result.axioms == ["propext", "Classical.choice", "Quot.sound"]
    refusing = kernel(tmp_path, [{"match": "positivity", "message": "(kernel) declaration type mismatch"}])
    with stand_in_checker(tmp_path, [PASS_POSITIVITY], replay_cmd=refusing) as checker:
        result = checker.check(GOOD_PROOF, formal_statement=STATEMENT)
    assert result.verdict is Verdict.FAIL  # Lean's REPL accepted it; the kernel replay did not
    assert "kernel replay refused the proof" in result.detail and "declaration type mismatch" in result.detail
    assert "kernel replay refused" in result.feedback


@pytest.mark.parametrize(
    ("truth", "kernel_rules", "why"),
    [
        pytest.param({}, [], "sorryAx", id="hidden-sorry"),
        pytest.param({"axioms": ["propext", "cheat"]}, [], "cheat", id="hidden-axiom"),
        pytest.param({"axioms": ["propext"], "type": "∀ (x : ℝ) (h : 0 < x), True"}, [], "type", id="other-type"),
        pytest.param({"axioms": ["propext"]}, [{"match": "garbage_lemma"}], "kernel replay failed", id="bad-term"),
    ],
)
def test_a_repl_that_lies_about_everything_does_not_make_a_pass(tmp_path, truth, kernel_rules, why) -> None:
    """The REPL claims a clean pass: no messages, standard `#print axioms`, the requested `#check` type. Only the
    environment it wrote says otherwise, and that is what the replay judges."""
    rules = [{"match": "garbage_lemma", "outcome": "lie", "truth": truth}, PASS_POSITIVITY]
    with stand_in_checker(tmp_path, rules, replay_cmd=kernel(tmp_path, kernel_rules)) as checker:
        result = checker.check(GARBAGE, formal_statement=STATEMENT)
        assert result.verdict is Verdict.FAIL, result.detail
        assert "kernel replay refused the proof" in result.detail and why in result.detail
        assert not [m for m in result.messages if m.source == "lean" and m.is_error]  # Lean "said" nothing wrong
        assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS


def test_plain_code_without_a_statement_is_replayed_too(tmp_path) -> None:
    rules = [{"match": "garbage_lemma", "outcome": "lie"}, PASS_POSITIVITY]
    code = "theorem a (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  simp_all [garbage_lemma]\n"
    with stand_in_checker(tmp_path, rules) as checker:
        lying = checker.check(code)
        honest = checker.check(code.replace("simp_all [garbage_lemma]", "positivity"))
    assert lying.verdict is Verdict.FAIL and "sorryAx" in lying.detail
    assert honest.verdict is Verdict.PASS


def test_a_header_importing_part_of_mathlib_is_replayed_on_what_the_repls_imported(tmp_path) -> None:
    header = "import Mathlib.Tactic\n\nopen Real"  # allowed: the REPLs import all of Mathlib
    with stand_in_checker(tmp_path, [PASS_POSITIVITY]) as checker:
        result = checker.check(GOOD_PROOF, formal_statement=STATEMENT, header=header)
    assert result.verdict is Verdict.PASS, result.detail


# ---------------------------------------------------------------------------------------------------------------
# REPL isolation: code a check ran cannot answer for a later check
# ---------------------------------------------------------------------------------------------------------------
def test_code_planted_by_one_check_cannot_pass_the_next(tmp_path) -> None:
    """Check 1 leaves code running in its REPL that makes every later reply a clean pass. Check 2 (another user's
    garbage) lands on that REPL and is claimed to pass; it is repeated in a REPL that ran no other check, which
    tells the truth, and the pass never happens."""
    rules = [
        {"match": "PLANT", "outcome": "plant"},
        {"match": "garbage_lemma", "outcome": "error", "message": "unknown identifier 'garbage_lemma'"},
        PASS_POSITIVITY,
    ]
    planted = GOOD_PROOF.replace("positivity", "PLANT")
    with stand_in_checker(tmp_path, rules, pool_size=1, spares=0) as checker:
        assert checker.check(planted, formal_statement=STATEMENT).verdict is Verdict.FAIL
        victim = checker.check(GARBAGE, formal_statement=STATEMENT)
        assert victim.verdict is Verdict.FAIL
        assert "in a REPL that ran no other check" in victim.detail
        assert "unknown identifier 'garbage_lemma'" in "\n".join(m.data for m in victim.messages)
        assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS


def test_a_reply_forged_ahead_on_stdout_ends_the_repl(tmp_path) -> None:
    """A check that writes a second reply for whatever request comes next. Seen with the reply or before the next
    request, it ends the check as unreadable; read as the next request's reply, it ends it as a failure, and the
    real reply left over is seen when the REPL is handed back. Either way that REPL is killed and the next check,
    in another one, is judged normally."""
    rules = [{"match": "FORGE", "outcome": "forge"}, PASS_POSITIVITY]
    with stand_in_checker(tmp_path, rules, pool_size=1, spares=0) as checker:
        result = checker.check(GOOD_PROOF.replace("positivity", "FORGE"), formal_statement=STATEMENT)
        if result.verdict is Verdict.ERROR:
            assert "output after the reply" in result.detail or "output outside a reply" in result.detail
        else:
            assert result.verdict is Verdict.FAIL and "no standard answer" in result.detail
        deadline = time.monotonic() + 10
        while checker.pool.stats["killed"] < 1 and time.monotonic() < deadline:
            checker.check("theorem other : True := trivial")  # a REPL with pending output is never handed on
        assert checker.pool.stats["killed"] == 1
        assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS


def test_reference_types_come_only_from_a_repl_that_saw_no_model_code(tmp_path) -> None:
    rules = [{"match": "WEAKER", "outcome": "pass", "type": "∀ (x : ℝ) (h : 0 < x), True"}, PASS_POSITIVITY]
    with stand_in_checker(tmp_path, rules, pool_size=1, spares=0) as checker:
        checker.start()
        assert checker.check("theorem other : True := trivial").verdict is not Verdict.PASS  # the REPL is used
        weaker = checker.check(GOOD_PROOF.replace("positivity", "WEAKER"), formal_statement=STATEMENT)
        assert weaker.verdict is Verdict.FAIL and "is not the requested theorem" in weaker.detail
        assert checker._reference_types == {}  # printed by a used REPL for the filter, never kept
        assert checker.check(GOOD_PROOF, formal_statement=STATEMENT).verdict is Verdict.PASS
        assert list(checker._reference_types.values()) == ["target_thm : ∀ (x : ℝ) (h : 0 < x), 0 < x ^ 2"]


# ---------------------------------------------------------------------------------------------------------------
# Hostile environment files and a misbehaving replay program
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "verdict", "why"),
    [
        ("missing", Verdict.ERROR, "wrote no environment file"),
        ("huge", Verdict.ERROR, "larger than 64 MB"),
        ("symlink", Verdict.ERROR, "cannot be opened safely"),
        ("fifo", Verdict.ERROR, "not a regular file"),
        ("error", Verdict.ERROR, "`pickleTo` failed"),
        ("garbage", Verdict.FAIL, "cannot read the environment file"),
    ],
)
def test_a_hostile_environment_file_never_passes(tmp_path, mode, verdict, why) -> None:
    table = {"pickle": mode, "pickle_bytes": 100 << 20}
    with stand_in_checker(tmp_path, [PASS_POSITIVITY], table=table) as checker:
        started = time.monotonic()
        result = checker.check(GOOD_PROOF, formal_statement=STATEMENT)
    assert result.verdict is verdict and why in result.detail, result.detail
    assert time.monotonic() - started < 8  # a FIFO is never waited on


@pytest.mark.parametrize(
    ("mode", "why"),
    [("garbage", "gave no verdict"), ("silent", "gave no verdict"), ("crash", "signal 11"), ("hang", "longer than")],
)
def test_a_replay_without_a_verdict_is_an_error_never_a_pass(tmp_path, mode, why) -> None:
    replay = kernel(tmp_path, [], verdict=mode)
    limit = 1.0 if mode == "hang" else 30.0
    with stand_in_checker(tmp_path, [PASS_POSITIVITY], replay_cmd=replay, replay_timeout_s=limit) as checker:
        result = checker.check(GOOD_PROOF, formal_statement=STATEMENT)
    assert result.verdict is Verdict.ERROR and "could not judge" in result.detail and why in result.detail


def test_the_checker_refuses_to_start_without_a_replay_program(tmp_path) -> None:
    from services.errors import LeanError
    from services.lean import LeanChecker

    table = write_table(tmp_path / "t.json", [PASS_POSITIVITY])
    with pytest.raises(LeanError) as caught:
        LeanChecker(LeanSettings(cmd=lean_cmd(table)))
    assert not caught.value.transient and "OPROVER_LEAN_REPLAY_CMD" in str(caught.value)


def test_take_own_file_trusts_nothing_about_the_file(tmp_path) -> None:
    source, out = tmp_path / "env.olean", new_workdir()
    try:
        source.write_bytes(b"x" * 2048)
        copy = take_own_file(source, out / "a.olean", max_bytes=4096)
        assert copy.read_bytes() == b"x" * 2048 and (copy.stat().st_mode & 0o777) == 0o444
        assert (out.stat().st_mode & 0o777) == 0o700  # the worker's alone: the launcher copies the files in
        with pytest.raises(PickleError, match="larger than"):
            take_own_file(source, out / "b.olean", max_bytes=1024)
        link = tmp_path / "link.olean"
        link.symlink_to(source)
        with pytest.raises(PickleError, match="opened safely"):
            take_own_file(link, out / "c.olean", max_bytes=4096)
        (tmp_path / "empty.olean").write_bytes(b"")
        with pytest.raises(PickleError, match="empty"):
            take_own_file(tmp_path / "empty.olean", out / "d.olean", max_bytes=4096)
        with pytest.raises(PickleError, match="no environment file"):
            take_own_file(tmp_path / "none.olean", out / "e.olean", max_bytes=4096)
    finally:
        subprocess.run(["rm", "-rf", str(out)], check=True)


def test_a_verdict_is_read_again_and_must_cover_every_theorem() -> None:
    good = json.dumps({"ok": True, "theorems": [{"name": "t", "axioms": ["propext"], "typeMatches": True}]})
    assert read_verdict(good.encode(), b"", 0, ["t"], with_reference=True).ok
    assert not read_verdict(good.encode(), b"", 1, ["t"], with_reference=True).ok  # exit status must be 0
    missing = read_verdict(good.encode(), b"", 0, ["t", "u"], with_reference=True)
    assert not missing.ok and "did not judge u" in missing.reason
    untyped = json.dumps({"ok": True, "theorems": [{"name": "t", "axioms": []}]}).encode()
    assert not read_verdict(untyped, b"", 0, ["t"], with_reference=True).ok  # no type comparison, no pass
    assert read_verdict(untyped, b"", 0, ["t"], with_reference=False).ok
    extra = json.dumps({"ok": True, "theorems": [{"name": "t", "axioms": ["Lean.ofReduceBool"], "typeMatches": True}]})
    assert "Lean.ofReduceBool" in read_verdict(extra.encode(), b"", 0, ["t"], with_reference=True).reason
    assert name_parts("Ns.«odd.name».t") == ["Ns", "odd.name", "t"]


# ---------------------------------------------------------------------------------------------------------------
# The protocol against the real repl's transcripts
# ---------------------------------------------------------------------------------------------------------------
PICKLE_TRANSCRIPT = "repl_transcripts/repl/v4.15.0/test/pickle_environment"


def test_pickle_requests_and_replies_are_the_real_repls(tmp_path) -> None:
    """repl v4.15.0 test/pickle_environment: `{"pickleTo": PATH, "env": 0}` is answered `{"env": 0}`."""
    transcript = shared_path(PICKLE_TRANSCRIPT + ".in").with_suffix("")
    requests = split_replies(transcript.with_suffix(".in").read_text(encoding="utf-8"))
    expected = split_replies(transcript.with_suffix(".expected.out").read_text(encoding="utf-8"))
    assert json.loads(requests[1]) == json.loads(encode_pickle("test/a.olean", 0))
    assert decode_reply(expected[1]).env == 0 and decode_reply(expected[1]).error is None
    # the stand-in answers the same two requests byte for byte, and writes the file
    table = write_table(tmp_path / "t.json", [{"always": True, "outcome": "pass"}])
    path = tmp_path / "a.olean"
    stdin = requests[0] + "\n\n" + encode_pickle(str(path), 0).decode()
    done = subprocess.run(shlex.split(lean_cmd(table)), input=stdin, capture_output=True, text=True, timeout=30)
    assert split_replies(done.stdout) == expected[:2]
    assert json.loads(path.read_text())["constants"][0]["name"] == "f"


# ---------------------------------------------------------------------------------------------------------------
# At real latencies with the shipped defaults
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_trusted_path_at_real_latencies_with_shipped_defaults(tmp_path) -> None:
    """Mathlib-like costs: 2 s to import per REPL, 0.5 s per command that elaborates, 2 s per replay (its own
    import). Shipped defaults otherwise (pool size = cores, one spare, 120 s checks, 600 s replays)."""
    table = write_table(
        tmp_path / "t.json",
        [{"match": "positivity", "outcome": "pass", "check_s": 0.5}, {"match": "garbage_lemma", "outcome": "lie"}],
        default="error",
        import_s=2.0,
    )
    settings = LeanSettings(cmd=lean_cmd(table), replay_cmd=kernel(tmp_path, [], replay_s=2.0))
    from services.lean import LeanChecker

    checker = LeanChecker(settings)
    try:
        checker.start()
        timings = {}
        for name, code in [("pass-fresh", GOOD_PROOF), ("lie", GARBAGE), ("pass-reused", GOOD_PROOF)]:
            started = time.monotonic()
            result = checker.check(code, formal_statement=STATEMENT)
            timings[name] = (result.verdict, time.monotonic() - started)
    finally:
        checker.close()
    assert timings["pass-fresh"][0] is Verdict.PASS and timings["pass-reused"][0] is Verdict.PASS
    assert timings["lie"][0] is Verdict.FAIL
    assert 2.0 < timings["pass-fresh"][1] < 30  # the replay's import is paid per pass


# ---------------------------------------------------------------------------------------------------------------
# With real Lean (the Lean image): fail loudly elsewhere
# ---------------------------------------------------------------------------------------------------------------
HEADER_IMPORTS = ["Mathlib", "Aesop"]


def real_settings() -> LeanSettings:
    names = ("OPROVER_LEAN_CMD", "OPROVER_LEAN_CWD", "OPROVER_LEAN_REPLAY_CMD")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        pytest.fail(f"the `lean` tests run in the Lean image: {', '.join(missing)} must be set")
    return LeanSettings(
        cmd=os.environ["OPROVER_LEAN_CMD"],
        cwd=os.environ["OPROVER_LEAN_CWD"],
        replay_cmd=os.environ["OPROVER_LEAN_REPLAY_CMD"],
        pool_size=1,
        spares=0,
        timeout_s=600,
    )


def replay_commands(settings: LeanSettings, commands: list[str], reference: str | None, names: list[str]):
    """Drive a real REPL directly (no text policy: these commands are what the policy would refuse), pickle its
    environments, and run the real replay program on them."""
    from services.lean.process import ReplProcess, SandboxConfig

    process = ReplProcess(settings.cmd or "", cwd=settings.cwd, sandbox=SandboxConfig(), max_output_bytes=1 << 24)
    workdir = new_workdir()
    try:
        deadline = time.monotonic() + 1200
        env = process.request("\n".join(f"import {m}" for m in HEADER_IMPORTS), None, deadline=deadline).env
        assert env is not None
        header_env = env
        ref_path = None
        if reference is not None:
            ref_env = process.request(reference, header_env, deadline=deadline).env
            assert ref_env is not None
            process.pickle(ref_env, process.tmpdir / "ref.olean", deadline=deadline)
            ref_path = process.take_file("ref.olean", workdir / "reference.olean", 64 << 20, stop=False)
        for command in commands:
            reply = process.request(command, env, deadline=deadline)
            assert reply.env is not None, reply
            env = reply.env
        process.pickle(env, process.tmpdir / "cand.olean", deadline=deadline)
        candidate = process.take_file("cand.olean", workdir / "candidate.olean", 64 << 20, stop=True)
        return run_replay(
            settings, workdir=workdir, candidate=candidate, reference=ref_path, imports=HEADER_IMPORTS, theorems=names
        )
    finally:
        process.kill()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


REFERENCE = "theorem replay_t (a b : ℕ) : a + b = b + a := by\n  sorry"


@pytest.mark.lean
@pytest.mark.timeout(2400)
def test_real_replay_accepts_a_genuine_proof() -> None:
    verdict = replay_commands(
        real_settings(), ["theorem replay_t (a b : ℕ) : a + b = b + a := by\n  omega"], REFERENCE, ["replay_t"]
    )
    assert verdict.ok, verdict.reason
    assert set(verdict.axioms) <= {"propext", "Classical.choice", "Quot.sound"}


@pytest.mark.lean
@pytest.mark.timeout(2400)
def test_real_replay_refuses_a_declaration_added_without_kernel_checking() -> None:
    """What the REPL accepts under `debug.skipKernelTC` (here: `cheat : False` proved by `trivial`'s term) the
    kernel refuses on replay, and with it the theorem that uses it."""
    cheat = (
        "open Lean in\nset_option debug.skipKernelTC true in\nrun_cmd Lean.Elab.Command.liftCoreM do\n"
        "  Lean.addDecl (.thmDecl { name := `cheat, levelParams := [], type := mkConst ``False,\n"
        "    value := mkConst ``True.intro })"
    )
    target = "theorem replay_t (a b : ℕ) : a + b = b + a := cheat.elim"
    verdict = replay_commands(real_settings(), [cheat, target], REFERENCE, ["replay_t"])
    assert not verdict.ok and "kernel" in verdict.reason, verdict.reason


@pytest.mark.lean
@pytest.mark.timeout(2400)
def test_real_replay_refuses_another_statement_and_a_new_axiom() -> None:
    other = replay_commands(
        real_settings(), ["theorem replay_t (a b : ℕ) : a + b = a + b := rfl"], REFERENCE, ["replay_t"]
    )
    assert not other.ok and "not the requested statement" in other.reason
    axiom = replay_commands(
        real_settings(),
        ["axiom cheat : False", "theorem replay_t (a b : ℕ) : a + b = b + a := cheat.elim"],
        REFERENCE,
        ["replay_t"],
    )
    assert not axiom.ok and "cheat" in axiom.reason


@pytest.mark.lean
@pytest.mark.timeout(2400)
def test_real_replay_cost_per_pass() -> None:
    """The cost the trusted path adds to a pass (docs/lean.md): printed, and bounded loosely."""
    started = time.monotonic()
    verdict = replay_commands(
        real_settings(), ["theorem replay_t (a b : ℕ) : a + b = b + a := by\n  omega"], REFERENCE, ["replay_t"]
    )
    assert verdict.ok, verdict.reason
    elapsed = time.monotonic() - started
    print(f"REPL import + check + pickle + replay: {elapsed:.1f} s")
    assert elapsed < 1200


def test_stand_in_replay_is_not_lean(tmp_path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"candidate": str(tmp_path / "none"), "reference": None, "imports": []}))
    done = subprocess.run(
        [*shlex.split(kernel(tmp_path)), str(request)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tempfile.gettempdir(),
    )
    assert done.returncode == 1 and "NOT Lean" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["ok"] is False
