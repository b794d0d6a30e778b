"""No secret of the verify worker reaches the code a REPL runs, end to end.

A real verify worker (real Redis with a password, real RQ, the shipped pool settings, stand-ins at seconds per
step) runs with only the capabilities the shipped deployments give it (root with CAP_SETUID/CAP_SETGID, via
`setpriv`), its environment holding the Redis password, an API key, a token and an innocuously named secret, and a
secret file on disk. Its REPL is `standins/probing_repl.py`, which on every command reads every process's
environment, the worker's command line, cwd and fds, the secret file, the Redis configuration and other REPLs'
private and handoff dirs, and writes what it got into the Lean messages. Checks go through the gateway's
`/v1/verify`, and a proving job through `/v1/prove`. No byte of any secret may appear in a response, the job
record, its events, a prompt sent to the model, Redis or a log; the probe's reports show why (denied, each REPL a
uid of its own). Needs root (to switch uids); skipped elsewhere, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.lean.sandbox import can_switch_uids
from services.settings import LeanSettings
from standins.probing_repl import probing_cmd
from tests.harness import ROOT, ServiceHarness, free_port
from tests.shared_data import golden_record

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not can_switch_uids() or shutil.which("setpriv") is None,
        reason="needs root with CAP_SETUID/CAP_SETGID and setpriv (the worker gives each REPL a uid of its own)",
    ),
]

PROOF = golden_record("verified_proofs.jsonl", "mathd_numbertheory_48")
STATEMENT = PROOF["formal_statement"]
FAILING = STATEMENT + "  omega\n"
SECRETS = {
    "redis_password": "redis-pw-7c1f9e2ab4d8",
    "api_key": "sk-oprover-3b9d2e71f0aa",
    "hf_token": "hf_tok_5e8a1c0d9b72",
    "innocuous": "quietly-secret-4f2b8d",
    "file": "file-secret-91ac3e7d02b6",
}
SHIPPED = LeanSettings()


@pytest.fixture
def secret_dir() -> Iterator[Path]:
    """A directory every uid may enter (as a real deployment's /run/secrets or /app), holding worker-only files."""
    directory = Path(tempfile.mkdtemp(prefix="oprover-test-secrets-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def protected_redis(secret_dir: Path) -> Iterator[str]:
    """A redis-server whose password is in a 0600 configuration file (never on a command line: those are public)."""
    port = free_port()
    conf = secret_dir / "redis.conf"
    conf.write_text(f'port {port}\nbind 127.0.0.1\nrequirepass {SECRETS["redis_password"]}\nsave ""\nappendonly no\n')
    conf.chmod(0o600)
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=secret_dir,
    )
    url = f"redis://:{SECRETS['redis_password']}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    client.close()
    yield url
    server.kill()
    server.wait()


def _start_worker(harness: ServiceHarness, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`oprover worker verify` as the Lean image's deployments run it: root with every capability dropped but
    CAP_SETUID/CAP_SETGID (the container runtime's `cap_drop: [ALL]` + `cap_add`), no new privileges."""
    caps = ["setpriv", "--bounding-set", "-all,+setuid,+setgid", "--inh-caps", "-all", "--no-new-privs", "--"]
    log = open(harness.workdir / "verify-worker.log", "ab")  # noqa: SIM115 - the child owns it until it exits
    process = subprocess.Popen(
        [*caps, sys.executable, "-m", "api.cli", "worker", "verify"],
        cwd=ROOT,
        env={**os.environ, **harness.env, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    harness.processes["verify-worker"] = process
    harness._wait(lambda: harness.worker_registered("verify", process.pid), "verify-worker", 90, process)
    return process


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _everything_in(client: redis.Redis) -> str:
    """Every value Redis holds, decoded (job records, events, RQ's jobs and results)."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = _text(client.type(key))
        if kind == "string":
            values: Any = [client.get(key)]
        elif kind == "hash":
            values = [item for pair in client.hgetall(key).items() for item in pair]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "stream":
            entries: Any = client.xrange(key)
            values = [item for _, fields in entries for pair in fields.items() for item in pair]
        else:
            values = []
        out.append(_text(key))
        out += [_text(v) for v in values if v is not None]
    return "\n".join(out)


def _block(code: str) -> str:
    return f"Let me prove it.\n\n```lean4\n{code}\n```\n"


def _reports(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        json.loads(m["data"]) for m in result.get("messages", []) if m["data"].startswith('{"probe": "probing_repl"')
    ]


def test_a_probing_repl_reads_no_secret_of_the_worker(protected_redis: str, secret_dir: Path) -> None:
    secret_file = secret_dir / "api-keys.txt"
    secret_file.write_text(f"OPROVER_API_KEYS={SECRETS['file']}\n")
    secret_file.chmod(0o600)
    (secret_dir / "work").mkdir(mode=0o700)
    harness = ServiceHarness(redis_url=protected_redis, workdir=secret_dir / "work")
    try:
        table = {
            "rules": [
                {"match": "nlinarith [sq_nonneg (b : ℤ), h₀, h₁]", "outcome": "pass"},
                {"match": "omega", "outcome": "error", "message": "omega could not prove the goal"},
            ],
            "default": "error",
            "import_s": 2.0,  # a REPL importing the header (Mathlib: a minute)
            "check_s": 1.0,  # Lean elaborating a proof
            "probe": {"files": [str(secret_file), str(secret_dir / "redis.conf")]},
        }
        harness.env["OPROVER_LEAN_CMD"] = probing_cmd(table)
        worker = _start_worker(
            harness,
            {
                # the shipped pool settings (the harness lowers them for its other tests)
                "OPROVER_LEAN_POOL_SIZE": str(SHIPPED.pool_size),
                "OPROVER_LEAN_SPARES": str(SHIPPED.spares),
                "OPROVER_LEAN_TIMEOUT_S": str(SHIPPED.timeout_s),
                "OPROVER_API_KEYS": SECRETS["api_key"],
                "HF_TOKEN": SECRETS["hf_token"],
                "DEPLOY_NOTE": SECRETS["innocuous"],
            },
        )
        harness.generator.script(
            [{"match": "omega could not prove", "content": _block(PROOF["proof"])}],
            default={"content": _block(FAILING)},
        )
        harness.start_worker("generate")
        harness.start_gateway()
        # A proving job: round 1 fails (its Lean messages, the probe's reports among them, go into the job record,
        # its events and the next round's prompt), round 2 passes.
        job_id = harness.submit({"formal_statement": STATEMENT, "rounds": 2, "attempts": 1})["id"]
        bodies = [{"code": PROOF["proof"], "formal_statement": STATEMENT}, {"code": FAILING}] * 2
        gateway = httpx.Client(base_url=harness.gateway_url or "", timeout=300)
        with gateway as client, ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda body: client.post("/v1/verify", json=body), bodies))
        results = [response.json() for response in responses]
        assert [r["verdict"] for r in results] == ["pass", "fail", "pass", "fail"], [r.get("detail") for r in results]

        reports = [report for result in results for report in _reports(result)]
        assert reports, "the probe ran in every check and reported"
        uids = {report["uid"] for report in reports}
        first, count = SHIPPED.sandbox_uid_base, SHIPPED.sandbox_uid_count
        assert all(first <= uid < first + count for uid in uids), uids
        assert len(uids) >= 2  # the checks ran in several REPLs, each under a uid of its own
        for report in reports:
            assert report["wrote"] == []
            denied = report["denied"]
            assert denied[f"/proc/{worker.pid}/environ"].startswith("PermissionError")  # the worker's environment
            assert denied[f"/proc/{worker.pid}/cwd"].startswith("PermissionError")
            assert denied[str(secret_file)].startswith("PermissionError")
            assert denied[str(secret_dir / "redis.conf")].startswith("PermissionError")
            own = [path for path in report["read"] if path.endswith("/environ")]
            assert len(own) == 1  # its own environment only: the allow-list (PATH, HOME, TMPDIR, …)
            assert "OPROVER_" not in report["read"][own[0]] and "REDIS" not in report["read"][own[0]]
        tried = {path for report in reports for path in report["denied"] if path.startswith("write /tmp/oprover-")}
        assert tried  # other REPLs' private dirs and the worker's replay dirs were there to try, and refused

        job = harness.wait_job(job_id, timeout_s=300)
        assert job["status"] == "proved", json.dumps(job)[:2000]
        with httpx.Client(base_url=harness.gateway_url or "", timeout=30) as client:
            events = client.get(f"/v1/prove/{job_id}/events", headers={"accept": "text/event-stream"})
        time.sleep(1)  # the job records' last writes
        seen = {
            "responses": "\n".join(response.text for response in responses),
            "job": json.dumps(job, ensure_ascii=False),
            "events": events.text,
            "prompts sent to the model": json.dumps(harness.chat_requests(), ensure_ascii=False),
            "redis": _everything_in(harness.redis),
            "worker log": harness.log("verify-worker"),
            "gateway log": harness.log("gateway"),
        }
        for where, text in seen.items():
            for name, secret in SECRETS.items():
                assert secret not in text, f"the {name} secret is in the {where}"
        # the reports were stored (readable, not compressed: the scan above saw them), secret-free
        assert "probing_repl" in seen["redis"] and "PermissionError" in seen["redis"]
    finally:
        harness.close()
