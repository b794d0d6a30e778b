"""Checks per second of the Lean checker, with the stand-in REPL made to cost like Lean.

    python bench/bench_lean.py [--repls N] [--proofs M] [--import-s 2.0] [--check-s 0.2] [--kimina]

The stand-in sleeps `import_s` when a process imports the header (Mathlib: seconds) and `check_s` per proof
(a typical proof: a fraction of a second to seconds). Rows:

* pool: `LeanChecker` with N warm REPLs (+1 spare), M proofs submitted from N threads; the whole integrity
  policy runs (text policy, imposed statement, compile, `#print axioms`). Target: >= 90% of N / check_s.
* fresh process per proof: N workers, each proof in a new sandboxed REPL that imports the header first (what a
  harness without a pool does): N / (import_s + check_s) at best.
* Kimina Lean Server (`kimina-ast-server` from PyPI, installed in its own venv: `--kimina VENV/bin/python`),
  driving the same stand-in through a `lake env` shim; if it cannot start, the row says why.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.domain import Verdict
from services.lean import LeanChecker
from services.lean.process import ReplProcess, SandboxConfig
from services.settings import DEFAULT_LEAN_HEADER, LeanSettings
from standins.fake_repl import lean_cmd, write_table
from standins.fake_replay import replay_cmd, write_replay_table

STATEMENT = "theorem bench_thm (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by sorry"
PROOF = "theorem bench_thm (x : ℝ) (h : 0 < x) : 0 < x ^ 2 := by\n  positivity\n"


def bench_pool(table: Path, repls: int, proofs: int, sandbox: bool) -> tuple[float, str]:
    replay = replay_cmd(write_replay_table(table.with_name("replay-table.json")))  # the stand-in kernel replay
    settings = LeanSettings(
        cmd=lean_cmd(table), replay_cmd=replay, pool_size=repls, spares=1, sandbox=sandbox, timeout_s=60
    )
    checker = LeanChecker(settings)
    try:
        checker.start()
        while checker.pool._ready.qsize() < repls:  # all warm before the clock starts
            time.sleep(0.01)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=repls) as executor:
            results = list(executor.map(lambda _: checker.check(PROOF, formal_statement=STATEMENT), range(proofs)))
        elapsed = time.monotonic() - started
    finally:
        checker.close()
    passed = sum(r.verdict is Verdict.PASS for r in results)
    return proofs / elapsed, f"{passed}/{proofs} pass"


def bench_fresh(table: Path, repls: int, proofs: int, sandbox: bool) -> tuple[float, str]:
    cmd = lean_cmd(table)
    config = SandboxConfig(enabled=sandbox)

    def one(_: int) -> bool:
        process = ReplProcess(cmd, cwd=None, sandbox=config, max_output_bytes=1 << 22)
        try:
            deadline = time.monotonic() + 120
            env = process.request(DEFAULT_LEAN_HEADER, None, deadline=deadline).env
            reply = process.request(PROOF, env, deadline=deadline)
            return reply.env is not None and not reply.messages
        finally:
            process.close(grace_s=0.5)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=repls) as executor:
        ok = sum(executor.map(one, range(proofs)))
    return proofs / (time.monotonic() - started), f"{ok}/{proofs} pass"


def bench_kimina_style(table: Path, repls: int, proofs: int, sandbox: bool) -> tuple[float, str]:
    """The same stand-in REPLs driven the way Kimina Lean Server drives its REPLs: each process imports the header
    once and keeps that environment (header reuse), and takes one check at a time, sent as a plain command on the
    header's env: no text policy, no imposed statement, no `#print axioms`, no kernel replay. The gap to the pool
    row is what the pool's integrity steps cost per check."""
    cmd = lean_cmd(table)
    config = SandboxConfig(enabled=sandbox)
    processes = [ReplProcess(cmd, cwd=None, sandbox=config, max_output_bytes=1 << 22) for _ in range(repls)]
    try:
        envs = [p.request(DEFAULT_LEAN_HEADER, None, deadline=time.monotonic() + 120).env for p in processes]

        def worker(k: int) -> int:
            ok = 0
            for _ in range(k, proofs, repls):
                reply = processes[k].request(PROOF, envs[k], deadline=time.monotonic() + 120)
                ok += reply.env is not None and not reply.messages
            return ok

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=repls) as executor:
            ok = sum(executor.map(worker, range(repls)))
        elapsed = time.monotonic() - started
    finally:
        for process in processes:
            process.close(grace_s=0.5)
    return proofs / elapsed, f"{ok}/{proofs} compiled"


def bench_kimina(python: str, table: Path, repls: int, proofs: int, workdir: Path) -> tuple[float | None, str]:
    """Start Kimina Lean Server (installed for `python`) on the stand-in and time /api/check.

    Kimina runs `lake env <repl_path>` in `project_dir`, so a stand-in `lake` that execs its arguments and a
    `repl` script that starts the stand-in are put in front of it. Returns (rate or None, note)."""
    import json
    import shlex
    import subprocess
    import urllib.error
    import urllib.request

    bin_dir = workdir / "kimina-bin"
    bin_dir.mkdir()
    (bin_dir / "lake").write_text('#!/bin/sh\n[ "$1" = env ] && shift && exec "$@"\nexit 1\n')
    (bin_dir / "repl").write_text("#!/bin/sh\nexec " + lean_cmd(table) + "\n")
    for tool in ("lake", "repl"):
        (bin_dir / tool).chmod(0o755)
    port = 18765
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "LEAN_SERVER_REPL_PATH": str(bin_dir / "repl"),
        "LEAN_SERVER_PROJECT_DIR": str(workdir),
        "LEAN_SERVER_SKIP_VALIDATION": "1",
        "LEAN_SERVER_MAX_REPLS": str(repls),
        "LEAN_SERVER_HOST": "127.0.0.1",
        "LEAN_SERVER_PORT": str(port),
    }
    log = workdir / "kimina.log"
    with log.open("w") as handle:
        server = subprocess.Popen([python, "-m", "server"], cwd=workdir, env=env, stdout=handle, stderr=handle)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.poll() is not None:
                lines = [line for line in log.read_text().splitlines() if line.strip()]
                why = next((line for line in lines if "ENOTFOUND" in line or "Error:" in line), lines[-1:])
                return None, f"did not start (exit {server.returncode}): {str(why).strip()[:240]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        else:
            return None, "did not answer /health within 120 s"
        code = DEFAULT_LEAN_HEADER + "\n\n" + PROOF

        def one(k: int) -> bool:
            body = json.dumps({"snippets": [{"id": str(k), "code": code}], "timeout": 60, "reuse": True})
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/check", body.encode(), {"Content-Type": "application/json"}
            )
            reply = json.loads(urllib.request.urlopen(request, timeout=120).read())
            return not reply["results"][0].get("error")

        one(-1)  # warm: the first call imports the header
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=repls) as executor:
            ok = sum(executor.map(one, range(proofs)))
        return proofs / (time.monotonic() - started), f"{ok}/{proofs} ok ({shlex.quote(python)})"
    finally:
        server.terminate()
        server.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repls", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--proofs", type=int, default=0, help="default: 20 per REPL")
    parser.add_argument("--import-s", type=float, default=2.0)
    parser.add_argument("--check-s", type=float, default=0.2)
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument(
        "--kimina", metavar="PYTHON", help="a Python with kimina-ast-server installed: also time Kimina on the stand-in"
    )
    args = parser.parse_args(argv)
    proofs = args.proofs or 20 * args.repls
    sandbox = not args.no_sandbox
    with tempfile.TemporaryDirectory() as tmp:
        table = write_table(
            Path(tmp) / "table.json",
            [{"match": "positivity", "outcome": "pass"}],
            import_s=args.import_s,
            check_s=args.check_s,
        )
        ideal = args.repls / args.check_s
        pool_rate, pool_note = bench_pool(table, args.repls, proofs, sandbox)
        fresh_n = max(args.repls, min(proofs, 2 * args.repls))
        fresh_rate, fresh_note = bench_fresh(table, args.repls, fresh_n, sandbox)
        style_rate, style_note = bench_kimina_style(table, args.repls, proofs, sandbox)
        kimina_rate, kimina_note = (
            None,
            "not run here: its server downloads engine binaries when it starts and this machine has no internet "
            "(run with --kimina PYTHON where it can); the row above drives the same REPLs its way",
        )
        if args.kimina:
            kimina_rate, kimina_note = bench_kimina(args.kimina, table, args.repls, proofs, Path(tmp))
    rows = [
        ("stand-in ideal (REPLs / check_s)", ideal, "upper bound"),
        ("pool (LeanChecker)", pool_rate, f"{pool_note}; {100 * pool_rate / ideal:.1f}% of ideal"),
        ("fresh process per proof", fresh_rate, f"{fresh_note}; {100 * fresh_rate / ideal:.1f}% of ideal"),
        (
            "Kimina-style: warm REPLs, header reused, one check per process, no integrity steps",
            style_rate,
            f"{style_note}; pool / this = {pool_rate / style_rate:.2f}",
        ),
        ("Kimina Lean Server (kimina-ast-server 2.1.3)", kimina_rate, kimina_note),
    ]
    print(
        f"REPLs={args.repls} proofs={proofs} import_s={args.import_s} check_s={args.check_s} "
        f"sandbox={'on' if sandbox else 'off'} cpus={os.cpu_count()}"
    )
    print("| mode | checks/s | notes |")
    print("| --- | ---: | --- |")
    for name, rate, note in rows:
        print(f"| {name} | {'-' if rate is None else f'{rate:.2f}'} | {note} |")
    return 0 if pool_rate >= 0.9 * ideal else 1


if __name__ == "__main__":
    sys.exit(main())
