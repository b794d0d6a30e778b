"""The `oprover` command: run the service's processes, and talk to a running service.

Server commands (`serve`, `worker`, `up`, `memory`, `lean setup`) read `OPROVER_*` settings; client commands
(`prove`, `verify`, `eval`) reach the gateway at `--url` / `OPROVER_URL` and send `OPROVER_API_KEY` if set.

Every failure a user can expect (a missing file, the gateway unreachable, a bad benchmark line, an HTTP error, a
dependency down, Ctrl-C) ends as one line on stderr, `oprover <command>: <what happened and what to do>`, never
a traceback. Exit codes: 0 done (proved, passed); 1 answered but negative (not proved, did not pass), or a
server process that could not start; 2 the command could not do its work; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
# Seconds the gateway keeps an idle client connection open (see cmd_serve).
SERVE_KEEP_ALIVE_S = 75
logger = logging.getLogger("oprover")
# How often a client command retries a gateway that does not answer.
RETRY_EVERY_S = 2.0


class CommandFailed(Exception):
    """An expected failure: `main` prints it as one line on stderr and exits 2."""


def _setup_logging(verbose: bool = False) -> None:
    from services import jsonlog

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )
    try:
        jsonlog.install(logging.DEBUG if verbose else logging.INFO)  # OPROVER_LOG_FORMAT=json: one JSON object a line
    except ValueError as exc:
        raise SystemExit(f"oprover: {exc}") from None


def _settings() -> Any:
    from services.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        raise SystemExit(f"oprover: {exc}") from None


# --- server processes -----------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from services import jsonlog

    _setup_logging(args.verbose)
    app = create_app(_settings())
    # Keep-alive above the 60 s idle timeout of common load balancers and proxies, so they close an idle connection
    # first: uvicorn's 5 s default races a client or proxy reusing its pooled connection (a request sent as the
    # server closes it fails). A long `?wait=` or event stream is a response in progress, not bound by it.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        timeout_keep_alive=SERVE_KEEP_ALIVE_S,
        timeout_graceful_shutdown=10,
        log_config=jsonlog.uvicorn_log_config(),  # OPROVER_LOG_FORMAT=json: uvicorn's lines as JSON too
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from services import keys
    from services.errors import DependencyError
    from services.settings import SettingsError, require
    from workers.context import WorkerContext
    from workers.runner import WorkerPool

    _setup_logging(args.verbose)
    settings = _settings()
    try:
        if args.kind == "generate":
            require(settings.generator.url, "OPROVER_GENERATOR_URL", "the generate worker calls the model there")
            concurrency = args.concurrency or settings.generator.concurrency
            ctx = WorkerContext.build(settings, generator=True, memory=not args.no_memory, concurrency=concurrency)
            # Memory additions first: they are quick and must not wait behind a long generate backlog.
            queues = ([keys.MEMORY_QUEUE] if ctx.memory is not None else []) + [
                keys.GENERATE_INTERACTIVE_QUEUE,  # before the plain queue: RQ takes queues in order
                keys.GENERATE_QUEUE,
            ]
        else:
            require(settings.lean.cmd, "OPROVER_LEAN_CMD", "the verify worker starts its Lean REPLs with it")
            require(settings.lean.replay_cmd, "OPROVER_LEAN_REPLAY_CMD", "only its kernel replay can confirm a pass")
            concurrency = args.concurrency or settings.lean.pool_size or os.cpu_count() or 1
            ctx = WorkerContext.build(settings, checker=True, pool_size=concurrency, concurrency=concurrency)
            queues = [keys.versioned_verify_queue(settings.lean.version)]
            if settings.lean.serve_default_queue:
                queues.append(keys.VERIFY_QUEUE)
    except SettingsError as exc:
        raise SystemExit(f"oprover worker {args.kind}: {exc}") from None
    except DependencyError as exc:
        # e.g. the REPL runs another Lean than OPROVER_LEAN_VERSION, or no REPL can start: one line, no service.
        logger.error("oprover worker %s: not starting: %s", args.kind, _with_location(exc))
        return 1
    from services import metrics

    metrics.serve_for_worker(ctx, args.metrics_port)  # /metrics (--metrics-port or OPROVER_METRICS_PORT), once warm
    return WorkerPool(ctx, queues, concurrency, kind=args.kind).run()


def cmd_up(args: argparse.Namespace) -> int:
    """Gateway and one worker of each kind on this machine; Ctrl-C stops them all.

    A Redis that `up` started is kept running: if it dies, it is started again on the same port and data
    directory (AOF on, so queued rounds and job records survive), and the gateway and workers reconnect by
    themselves. Any other process that exits stops the rest: a gateway or worker that dies needs a look.
    """
    _setup_logging(args.verbose)
    demo = _prepare_demo() if args.demo else None
    settings = _settings() if demo is None else _demo_settings()  # fail fast, once, with a clear message
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: Any) -> None:
        """First signal: SIGTERM to the service processes (they finish what is in flight). Second: SIGKILL them.
        A Redis that `up` started is stopped last, gracefully, whatever happens, so nothing it holds is lost."""
        nonlocal stopping
        services = {name: child for name, child in children.items() if name != "redis"}
        if stopping:
            for child in services.values():
                child.kill()
            return
        stopping = True
        logger.info("stopping %s", ", ".join(services) or "(nothing started yet)")
        for child in services.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    # Installed before anything starts, so a Ctrl-C during start-up cannot leave an orphan behind.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    from api.launch import LaunchError, lean_env_for_up, model_server_for_up

    try:  # checked before anything starts: a missing Lean project or model server is one line, not a crash later
        if demo is not None:
            model_server = demo.model_server()  # the stand-in model, started and stopped like SGLang
        else:
            os.environ.update(lean_env_for_up(settings.lean.cmd))  # the project `oprover lean setup data/lean` made
            model_server = model_server_for_up(settings.generator.url)  # no OPROVER_GENERATOR_URL: SGLang runs here
    except LaunchError as exc:
        raise SystemExit(f"oprover up: {exc}") from None
    if demo is not None:
        redis_server = LocalRedis.start_if_needed(settings.redis.url, data=demo.directory / "redis")
    else:
        redis_server = LocalRedis.start_if_needed(settings.redis.url)
    if redis_server is not None:
        children["redis"] = redis_server.process
    if model_server is not None:
        children["model-server"] = model_server.start()
        if demo is not None:  # while the stand-in model starts; before a worker opens the memory (then it is theirs)
            demo.seed_memory(settings.qdrant)
        os.environ["OPROVER_GENERATOR_URL"] = model_server.url  # inherited by the gateway and the workers
        if not model_server.wait_ready(lambda: stopping):
            code = model_server.stop()
            if "redis" in children:
                children["redis"].terminate()
                children["redis"].wait(timeout=30)
            if stopping:
                return 0
            raise SystemExit(f"oprover up: the model server exited with code {code}:\n{model_server.log_tail()}")
    base = [sys.executable, "-m", "api.cli"]
    commands = {
        "gateway": [*base, "serve", "--host", args.host, "--port", str(args.port)],
        # /metrics of the workers beside the gateway's port (docs/deployment.md)
        "generate-worker": [*base, "worker", "generate", "--metrics-port", str(args.port + 1)],
        "verify-worker": [*base, "worker", "verify", "--metrics-port", str(args.port + 2)],
    }
    for name, command in commands.items():
        if stopping:
            break
        # Own sessions: a terminal's Ctrl-C reaches only `up`, which stops each child once, in order. The demo's
        # run in its directory, where no `.env` is read.
        cwd = demo.directory if demo is not None else None
        children[name] = subprocess.Popen(command, start_new_session=True, cwd=cwd)
        logger.info("started %s (pid %d)", name, children[name].pid)
    logger.info("oprover up: gateway on http://%s:%d (Ctrl-C stops everything)", args.host, args.port)
    exit_code = 0
    url = f"http://{args.host}:{args.port}"
    announce_ready = demo is not None
    while any(name != "redis" for name in children):
        if announce_ready and not stopping and _ready(url):
            announce_ready = False
            print(demo.ready(url, f"http://{args.host}:{args.port + 1}", DEFAULT_URL), flush=True)  # type: ignore[union-attr]
        for name, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            if name == "redis" and redis_server is not None and not stopping:
                try:
                    children["redis"] = redis_server.restart(code)
                    continue
                except SystemExit as exc:
                    logger.error("%s", exc)
            del children[name]
            if not stopping:
                logger.error("%s exited with code %s; stopping the rest", name, code)
                exit_code = 1
                stop()
        time.sleep(0.2)
    if model_server is not None:  # its whole process group (SGLang's scheduler and detokenizer too)
        model_server.stop()
    if "redis" in children:  # last, so the workers could still write what they finished
        children["redis"].terminate()
        children["redis"].wait(timeout=30)
    return exit_code


def _prepare_demo() -> Any:
    """`up --demo`: the demo's directory and settings (api/demo.py); the caller's OPROVER_* variables are dropped,
    so the demo never reaches a real service's Redis, model or Lean."""
    from api.demo import Demo
    from api.launch import LaunchError

    try:
        demo = Demo.prepare()
    except LaunchError as exc:
        raise SystemExit(f"oprover up --demo: {exc}") from None
    for key in [key for key in os.environ if key.startswith("OPROVER_")]:
        del os.environ[key]
    os.environ.update(demo.env)  # inherited by the gateway, the workers and the stand-ins
    print(demo.starting(), flush=True)
    return demo


def _demo_settings() -> Any:
    from services.settings import SettingsError, load_settings

    try:
        return load_settings(_env_file=None)  # the demo's variables alone: no `.env` of the directory `up` runs in
    except SettingsError as exc:
        raise SystemExit(f"oprover: {exc}") from None


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class LocalRedis:
    """A redis-server that `oprover up` started for a local Redis URL that nobody serves, and restarts."""

    # More deaths than this within RESTART_WINDOW_S is not something a restart fixes (port taken, disk full).
    MAX_RESTARTS = 5
    RESTART_WINDOW_S = 600.0

    def __init__(self, url: str, command: list[str], data: Path) -> None:
        self.url = url
        self.command = command
        self.data = data
        self.process = self._spawn()
        self._restarts: list[float] = []

    @classmethod
    def start_if_needed(cls, url: str, data: Path = Path("data/redis")) -> LocalRedis | None:
        """None when Redis at `url` answers already; a started one (its files in `data`) when it is local and
        redis-server exists."""
        import shutil
        from urllib.parse import urlparse

        if cls._answers(url):
            return None
        parsed = urlparse(url)
        binary = shutil.which("redis-server")
        if parsed.hostname not in ("127.0.0.1", "localhost") or binary is None:
            raise SystemExit(f"oprover up: Redis at {url} is not reachable (and no local redis-server to start)")
        data = data.resolve()
        data.mkdir(parents=True, exist_ok=True)
        # AOF on and eviction off, as in deployment: queued rounds and job records must survive a restart.
        command = [
            binary,
            "--port",
            str(parsed.port or 6379),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--maxmemory-policy",
            "noeviction",
        ]
        return cls(url, command, data)

    @staticmethod
    def _answers(url: str) -> bool:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
            return True
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Own session: a terminal's Ctrl-C must not stop Redis before the workers finished writing to it.
        process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30  # replaying a large AOF takes a while
        while time.monotonic() < deadline and process.poll() is None:
            if self._answers(self.url):
                logger.info("started redis-server on %s (pid %d, data in %s)", self.url, process.pid, self.data)
                return process
            time.sleep(0.1)
        process.kill()
        process.wait()
        raise SystemExit(f"oprover up: could not start redis-server for {self.url} (exit code {process.returncode})")

    def restart(self, exit_code: int) -> subprocess.Popen[bytes]:
        """Start it again on the same port and data directory; SystemExit when it keeps dying."""
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < self.RESTART_WINDOW_S] + [now]
        if len(self._restarts) > self.MAX_RESTARTS:
            raise SystemExit(
                f"oprover up: redis-server died {len(self._restarts)} times in {self.RESTART_WINDOW_S:.0f} s "
                f"(last exit code {exit_code}); not restarting it again"
            )
        logger.warning(
            "redis-server exited with code %s; restarting it on the same port and data (the workers reconnect)",
            exit_code,
        )
        self.process = self._spawn()
        return self.process


# --- client commands ------------------------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    import httpx

    headers = {}
    if key := os.environ.get("OPROVER_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    return httpx.Client(base_url=args.url, headers=headers, timeout=httpx.Timeout(30.0, read=None))


def _read_input(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CommandFailed(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CommandFailed(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CommandFailed(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def split_lean_file(text: str) -> tuple[str | None, str]:
    """A whole .lean file → (header, theorem); a bare theorem → (None, theorem)."""
    from services.leantext import blank_comments_and_strings, first_declaration_offset

    offset = first_declaration_offset(text)
    if offset is None:
        return None, text
    before = blank_comments_and_strings(text[:offset])
    if not before.strip():
        return None, text
    # Keep a doc comment that sits right above the theorem with the theorem.
    cut = offset
    doc = text.rfind("/--", 0, offset)
    if doc != -1 and not blank_comments_and_strings(text[doc:offset]).strip():
        cut = doc
    return text[:cut].strip() or None, text[cut:]


def _lean_body(path: str, field: str) -> dict[str, Any]:
    """A request body from a Lean file: its theorem (or code) under `field`, its import/open lines as `header`."""
    header, text = split_lean_file(_read_input(path))
    return {field: text, **({"header": header} if header else {})}


def _error_line(response: Any) -> str:
    """The gateway's error envelope as one line: status, message, and the field it names."""
    try:
        error = response.json()["error"]
        return f"error {response.status_code}: {error['message']}" + (
            f" (param: {error['param']})" if error.get("param") else ""
        )
    except Exception:
        return f"error {response.status_code}: {response.text[:500]}"


def _fail(response: Any) -> int:
    print(_error_line(response), file=sys.stderr)
    return 2


def _unreachable(url: str, exc: BaseException) -> str:
    return (
        f"cannot reach the gateway at {url} ({exc or type(exc).__name__}); is the service running at {url}? "
        "(`oprover up` starts it; --url or OPROVER_URL points elsewhere)"
    )


class _Outage:
    """Says once that the gateway stopped answering (and once that it is back), not once per retry."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.down = False

    def failed(self, why: str) -> None:
        """`why`: the transport error, or the gateway's 5xx answer (e.g. 503 while its Redis restarts)."""
        if not self.down:
            state = f"answers {why}" if why.startswith("error ") else f"does not answer ({why})"
            print(f"  the gateway at {self.url} {state}; retrying every {RETRY_EVERY_S:g} s", file=sys.stderr)
        self.down = True

    def answered(self) -> None:
        if self.down:
            print(f"  the gateway at {self.url} answers again", file=sys.stderr)
        self.down = False


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def cmd_prove(args: argparse.Namespace) -> int:
    body = _lean_body(args.file, "formal_statement")
    for name in ("rounds", "attempts", "top_k", "prompt_profile", "lean_version"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    with _client(args) as client:
        response = client.post("/v1/prove", json=body)
        if response.status_code not in (200, 202):
            return _fail(response)
        job_id = response.json()["id"]
        print(f"job {job_id}: {response.json()['status']}", file=sys.stderr)
        outage = _Outage(args.url)
        try:
            job = _follow(client, job_id, outage, deadline)
        except KeyboardInterrupt:
            _cancel(client, job_id, args.url)
            return 130
        if job is None:
            print(f"job {job_id}: no result within --timeout {args.timeout:g} s", file=sys.stderr)
            _cancel(client, job_id, args.url)
            return 2
    return _report(job)


def _cancel(client: Any, job_id: str, url: str) -> None:
    """Best effort: the job was this command's, and nobody waits for it any more."""
    import httpx

    try:
        client.delete(f"/v1/prove/{job_id}", timeout=10)
        print(f"job {job_id}: cancelled", file=sys.stderr)
    except httpx.TransportError:
        print(
            f"job {job_id}: could not cancel it, the gateway at {url} does not answer "
            f"(`curl -X DELETE {url}/v1/prove/{job_id}` once it is back)",
            file=sys.stderr,
        )


def _follow(client: Any, job_id: str, outage: _Outage, deadline: float | None) -> dict[str, Any] | None:
    """Print progress from the job's event stream until it ends, then return the job object; None at the deadline.

    A dropped stream or a gateway that does not answer is retried (said once per outage), resuming with
    Last-Event-ID, until the job ends or the deadline passes.
    """
    import httpx

    last_id: str | None = None
    ended = False
    while True:
        remaining = _remaining(deadline)
        if remaining is not None and remaining <= 0:
            return None
        # Keep-alive comments arrive every 15 s; a read limit bounds the wait at the deadline.
        timeout = httpx.Timeout(30.0, read=None if remaining is None else max(1.0, remaining))
        try:
            if ended:
                response = client.get(f"/v1/prove/{job_id}", timeout=timeout)
                if response.status_code == 200:
                    outage.answered()
                    return response.json()
                if response.status_code < 500:
                    raise CommandFailed(f"job {job_id}: {_error_line(response)}")
                outage.failed(_error_line(response))
            else:
                headers = {"Last-Event-ID": last_id} if last_id else {}
                with client.stream("GET", f"/v1/prove/{job_id}/events", headers=headers, timeout=timeout) as stream:
                    if stream.status_code == 404:
                        ended = True  # expired: read (and report) what is left
                        continue
                    if stream.status_code != 200:
                        stream.read()
                        if stream.status_code < 500:
                            raise CommandFailed(f"job {job_id}: {_error_line(stream)}")
                        outage.failed(_error_line(stream))
                    else:
                        outage.answered()
                        event: dict[str, str] = {}
                        for line in stream.iter_lines():
                            # Keep-alive comments reset the read limit, so the deadline is looked at per line.
                            if (left := _remaining(deadline)) is not None and left <= 0:
                                return None
                            if line.startswith(":"):
                                continue
                            if line:
                                field, _, value = line.partition(":")
                                event[field] = value.lstrip(" ")
                                continue
                            if "id" in event:
                                last_id = event["id"]
                            if _print_event(event):
                                ended = True
                                break
                            event = {}
                        if ended:
                            continue
        except httpx.TransportError as exc:
            left = _remaining(deadline)
            if isinstance(exc, httpx.ReadTimeout) and left is not None and left < 1.0:
                return None  # the read limit set at the deadline: no outage, just time up
            outage.failed(str(exc) or type(exc).__name__)
        time.sleep(RETRY_EVERY_S if outage.down else 0.5)


def _print_event(event: dict[str, str]) -> bool:
    kind = event.get("event", "message")
    data = json.loads(event.get("data", "{}") or "{}")
    if kind == "attempt.generated":
        verdict = data.get("verdict")
        print(
            f"  chain {data['chain']} round {data['round']}: generated" + (f" ({verdict})" if verdict else ""),
            file=sys.stderr,
        )
    elif kind == "attempt.verified":
        print(f"  chain {data['chain']} round {data['round']}: {data['verdict']}", file=sys.stderr)
    elif kind == "round.retrying":
        print(f"  chain {data['chain']} round {data['round']}: retrying ({data['error']})", file=sys.stderr)
    return (kind.startswith("job.") and kind not in ("job.created", "job.running")) or kind == "error"


def _say_if_demo(result: dict[str, Any]) -> None:
    """The demo's banner beside a result of a server running `oprover up --demo` (it says so in the result's
    `demo` field), so that output copied from a terminal never shows a stand-in's verdict as Lean's."""
    if result.get("demo") is True:
        from api.demo import BANNER

        print(f"{BANNER} (this server runs `oprover up --demo`)", file=sys.stderr)


def _report(job: dict[str, Any]) -> int:
    _say_if_demo(job)
    print(f"job {job['id']}: {job['status']} after {job['usage']['generations']} generation(s)", file=sys.stderr)
    if job["status"] == "proved":
        print(job["proof"])
        return 0
    if job.get("error"):
        print(f"error: {job['error']}", file=sys.stderr)
    last = job["attempts"][-1] if job["attempts"] else None
    if last and last.get("feedback"):
        print(
            f"last feedback (chain {last['chain']} round {last['round']}, {last['verdict']}):\n{last['feedback']}",
            file=sys.stderr,
        )
    return 1


def cmd_verify(args: argparse.Namespace) -> int:
    body = _lean_body(args.file, "code")
    if args.statement:
        body["formal_statement"] = _read_input(args.statement)
    with _client(args) as client:
        response = client.post("/v1/verify", json=body)
    if response.status_code != 200:
        return _fail(response)
    result = response.json()
    _say_if_demo(result)
    print(f"verdict: {result['verdict']}" + (f" ({result['time_ms']} ms)" if "time_ms" in result else ""))
    for message in result.get("messages", []):
        pos = message.get("pos") or {}
        print(f"  {message.get('severity')} {pos.get('line', '?')}:{pos.get('column', '?')}: {message.get('data')}")
    if result.get("axioms") is not None:
        print(f"axioms: {', '.join(result['axioms']) or '(none)'}")
    return 0 if result["verdict"] == "pass" else 1


def read_benchmark(path: str) -> list[dict[str, Any]]:
    """Every problem of a JSONL benchmark, checked before anything is submitted: a bad line names its number."""
    problems = []
    for number, line in enumerate(_read_input(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            problem = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CommandFailed(f"{path} line {number} is not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(problem, dict):
            raise CommandFailed(f"{path} line {number} is not a JSON object")
        statement = problem.get("formal_statement")
        if not isinstance(statement, str) or not statement.strip():
            raise CommandFailed(f"{path} line {number} has no formal_statement")
        problems.append(problem)
    if not problems:
        raise CommandFailed(f"{path} holds no problem")
    return problems


def cmd_eval(args: argparse.Namespace) -> int:
    """Run a JSONL benchmark against the service (or compare two results files): api/evaluate.py."""
    from api.evaluate import EvalFailed, command

    try:
        return command(args)
    except EvalFailed as exc:
        raise CommandFailed(str(exc)) from None


def cmd_export(args: argparse.Namespace) -> int:
    """Finished jobs' rounds as chat-format training examples, and their proofs: api/export.py."""
    from api.export import command

    return command(args)


# --- memory and Lean setup ------------------------------------------------------------------------------------------
def cmd_memory(args: argparse.Namespace) -> int:
    from services.errors import MemoryError_
    from services.memory import ProofMemory, export_proofs, format_stats, import_proofs
    from services.memory.handoff import import_through_owner, owned_elsewhere

    _setup_logging(args.verbose)
    settings = _settings().qdrant
    try:
        if args.action == "import" and owned_elsewhere(settings):
            # The service (or another process) owns the embedded memory: stage the import beside it and hand it
            # over, so nobody has to stop the service to grow the memory (services/memory/handoff.py).
            print(f"{settings.path} is open in a running process: staging the import and handing it over")
            summary, receipt = import_through_owner(settings, Path(args.path), wait_s=args.wait)
            print(summary)
            if receipt is None:
                print(
                    f"not taken in within {args.wait:.0f} s: it stays in {settings.path}/inbox and is taken in "
                    "when a process opens the memory"
                )
                return 1
            print(receipt)
            return 0
        memory = ProofMemory(settings)
        try:
            if args.action == "import":
                print(import_proofs(memory, Path(args.path)))
            elif args.action == "export":
                print(f"exported {export_proofs(memory, Path(args.path))} proofs to {args.path}")
            elif args.action == "rescreen":
                result = memory.rescreen()
                print(
                    f"re-read {result.read} proofs with the checker's policy: {result.admitted} re-admitted, "
                    f"{result.flagged} newly screened out, {sum(result.reasons.values())} screened out in all"
                )
                for reason, count in result.reasons.most_common():
                    print(f"    {count:>8}  {reason}")
            else:
                print(format_stats(memory.stats()))
        finally:
            memory.close()
    except MemoryError_ as exc:
        raise SystemExit(f"oprover memory: {_with_location(exc)}") from None
    return 0


def cmd_lean_setup(args: argparse.Namespace) -> int:
    from services.lean.setup import setup_lean_project

    return setup_lean_project(Path(args.dir), args.lean_version)


# --- argument parsing -----------------------------------------------------------------------------------------------
# What the file arguments of `prove` and `verify` may hold (shown in their --help).
_LEAN_INPUT = """input: a Lean file, or - for stdin. The lines before the first declaration (import, set_option,
open) are sent as the header; without them the gateway's default header is used (OPROVER_LEAN_HEADER)."""


def build_parser() -> argparse.ArgumentParser:
    # Line breaks of descriptions and epilogs are kept: they lay out input formats field by field.
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="oprover", description=__doc__, formatter_class=formatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (default: info)")
    sub = parser.add_subparsers(dest="command", required=True)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url",
            default=os.environ.get("OPROVER_URL", DEFAULT_URL),
            help=f"gateway base URL (default: OPROVER_URL, else {DEFAULT_URL}); OPROVER_API_KEY is sent if set",
        )

    def listen_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1", help="address the gateway listens on (default: 127.0.0.1)")
        p.add_argument("--port", type=int, default=8000, help="port the gateway listens on (default: 8000)")

    p = sub.add_parser("serve", help="run the HTTP gateway", description="Run the HTTP gateway (OPROVER_* settings).")
    listen_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "worker",
        help="run RQ workers: generate (model calls) or verify (Lean)",
        description="Run one worker process: `generate` calls the model (and serves memory additions), `verify` "
        "checks proofs with its Lean REPLs on the queue of OPROVER_LEAN_VERSION.",
    )
    p.add_argument("kind", choices=["generate", "verify"], help="which stage this process runs")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="jobs in flight (default: OPROVER_GENERATOR_CONCURRENCY / one per REPL)",
    )
    p.add_argument(
        "--metrics-port", type=int, default=None, help="serve /metrics on this port (default: OPROVER_METRICS_PORT)"
    )
    p.add_argument(
        "--no-memory",
        action="store_true",
        help="generate: do not open the memory (another process owns the embedded store); default: open it",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "up",
        help="gateway + one worker of each kind on this machine",
        description="Start the gateway and one generate and one verify worker here; Redis, and SGLang when "
        'OPROVER_GENERATOR_URL is unset, are started too (README, "Two commands").',
    )
    listen_args(p)
    p.add_argument(
        "--demo",
        action="store_true",
        help="run on the stand-in model and stand-in Lean with a scripted MiniF2F sample: no GPU, no Lean, no "
        'settings needed; no result is a real proof (state in ./data/demo; README, "Try it without a GPU"); '
        "default: off",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "prove",
        help="submit a theorem (file or - for stdin), follow it, print the proof",
        description="Submit a theorem to POST /v1/prove, follow its events, print the proof on stdout. "
        "Exit 0 proved, 1 not proved, 2 could not run.",
        epilog=_LEAN_INPUT + "\nThe theorem ends in `:= by sorry` or `:= by`; the proof replaces it.",
        formatter_class=formatter,
    )
    p.add_argument("file", help="the theorem's Lean file, or - for stdin")
    for name, kind, what in (
        ("rounds", int, "generate-check-repair rounds per chain (default: the deployment's, OPROVER_PROVE_ROUNDS)"),
        ("attempts", int, "independent chains, pass@k (default: the deployment's, OPROVER_PROVE_ATTEMPTS)"),
        ("top-k", int, "verified proofs retrieved into each prompt (default: OPROVER_QDRANT_TOP_K)"),
        ("prompt-profile", str, "prompt profile name (default: OPROVER_PROMPT_PROFILE)"),
        ("lean-version", str, "Lean version to check with (default: the deployment's, OPROVER_LEAN_VERSION)"),
    ):
        p.add_argument(f"--{name}", type=kind, default=None, dest=name.replace("-", "_"), help=what)
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="give up after this many seconds, gateway outages included (the job is cancelled); default: wait",
    )
    client_args(p)
    p.set_defaults(func=cmd_prove)

    p = sub.add_parser(
        "verify",
        help="check a Lean file; exit 0 only if it passes",
        description="Check Lean code with POST /v1/verify and print the verdict with Lean's messages. "
        "Exit 0 pass, 1 any other verdict, 2 could not run.",
        epilog=_LEAN_INPUT,
        formatter_class=formatter,
    )
    p.add_argument("file", help="the Lean code to check, or - for stdin")
    p.add_argument(
        "--statement",
        help="file holding the theorem statement the code must prove, which is imposed on the code "
        "(default: none, the code is checked as it is)",
    )
    client_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "eval",
        help="run a JSONL benchmark (name, header, formal_statement): pass@k, solves by round, cost",
        description="Prove every problem of a benchmark through the service, print pass@k, solves by round and "
        "cost; or compare two results files.",
        epilog="""input: JSONL, one problem per line:
  formal_statement     (required) the Lean theorem, ending in `:= by sorry` or `:= by`
  name                 the problem's name (default: its 0-based index)
  header               imports/options/opens (default: the gateway's OPROVER_LEAN_HEADER)
  informal_statement   the problem in words, shown to the model when present
Other fields are ignored. A bad line is refused with its number before anything is submitted.""",
        formatter_class=formatter,
    )
    p.add_argument("bench", nargs="?", help="the benchmark JSONL, or - for stdin (not needed with --compare)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems (default: all)")
    p.add_argument(
        "--attempts", type=int, default=1, help="independent samples per problem, pass@k up to it (default: 1)"
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds per sample (default: the deployment's)")
    p.add_argument(
        "--top-k", type=int, default=None, dest="top_k", help="retrieved proofs per prompt (default: the deployment's)"
    )
    p.add_argument(
        "--prompt-profile", default=None, dest="prompt_profile", help="prompt profile (default: the deployment's)"
    )
    p.add_argument(
        "--lean-version",
        default=None,
        dest="lean_version",
        help="Lean version to check with (default: the deployment's)",
    )
    p.add_argument("--concurrency", type=int, default=8, help="proof jobs in flight (default: 8)")
    p.add_argument(
        "--out", default=None, help="results JSONL, one line per problem; an existing one is resumed (default: none)"
    )
    p.add_argument(
        "--plot", default=None, metavar="DIR", help="write pass@k and solves-by-round PNGs here (default: none)"
    )
    p.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="compare two `--out` results files instead of running"
    )
    p.add_argument("--poll-s", type=float, default=2.0, help="seconds between job status reads (default: 2.0)")
    p.add_argument(
        "--no-exclude-benchmark",
        action="store_true",
        dest="no_exclude_benchmark",
        help="let a problem's prompts show proofs of the benchmark's other problems (default: every job excludes "
        "the whole benchmark from retrieval, by statement hash and by problem name)",
    )
    client_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="training data from finished jobs: export trajectories --out FILE")
    export_sub = p.add_subparsers(dest="export_command", required=True)
    q = export_sub.add_parser(
        "trajectories",
        help="round-level repair examples (chat JSONL, the job's prompt profile) and proofs",
        description="Write finished jobs' rounds (read from Redis, OPROVER_REDIS_URL) as chat-format examples "
        "and their verified proofs.",
    )
    q.add_argument("--out", required=True, help="rounds JSONL (required; resumed when it exists)")
    q.add_argument("--proofs", default=None, help="verified proofs JSONL (default: OUT's stem + .proofs.jsonl)")
    q.add_argument(
        "--results", default=None, help="only the jobs of this `oprover eval --out` file (default: every finished job)"
    )
    q.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "memory",
        help="the retrieval memory: import PATH | export PATH | stats | rescreen",
        description="Manage the retrieval memory of OPROVER_QDRANT_PATH (embedded) or OPROVER_QDRANT_URL. "
        "import: add verified proofs; export: write them as JSONL; stats: counts; rescreen: re-apply the "
        "checker's policy.",
        # the names of services/memory/importer.py's FIELD_ALIASES and VERIFIED_FLAGS, written out so that --help
        # does not import the memory (tests/test_cli_help.py keeps them in step)
        epilog="""import reads JSONL, Parquet, or a Hugging Face datasets folder. Fields, first name found wins:
  formal_statement  (required) formal_statement | statement | lean4_statement | theorem | formal
  proof             (required) proof | formal_proof | full_proof | lean4_proof | lean_code | code
  header            header | lean_header | imports
  source            source | dataset | origin
  model             model | prover | generator
  lean_version      lean_version | lean_env | lean_toolchain | toolchain
  job_id            job_id
  created_at        created_at | timestamp
  name              name | theorem_name | problem_name | id
A record with verified | is_verified | correct | pass | passed false, a sorry/admit, or no theorem is skipped
and counted with its reason. An interrupted import resumes where it stopped when rerun.""",
        formatter_class=formatter,
    )
    p.add_argument("action", choices=["import", "export", "stats", "rescreen"], help="what to do")
    p.add_argument("path", nargs="?", help="import: the file or folder to read; export: the JSONL to write")
    p.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        help="import while another process owns the memory: seconds to wait for it to take the import in "
        "(default: 3600)",
    )
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("lean", help="Lean toolchain helpers")
    lean_sub = p.add_subparsers(dest="lean_command", required=True)
    q = lean_sub.add_parser("setup", help="create the pinned Lean project (Mathlib + repl) in DIR")
    q.add_argument("dir", help="the folder to create the project in")
    q.add_argument("--lean-version", default="v4.15.0", help="Lean and Mathlib version (default: v4.15.0)")
    q.set_defaults(func=cmd_lean_setup)
    return parser


def main(argv: list[str] | None = None) -> int:
    import httpx
    import redis

    from services.errors import DependencyError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "action", None) in ("import", "export") and not args.path:
        parser.error(f"memory {args.action} needs a PATH")

    def say(message: str) -> None:
        print(f"oprover {args.command}: {message}", file=sys.stderr)

    try:
        return int(args.func(args) or 0)
    except CommandFailed as exc:
        say(str(exc))
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except httpx.TransportError as exc:
        if not hasattr(args, "url"):
            raise
        say(_unreachable(args.url, exc))
    except DependencyError as exc:
        say(_with_location(exc))
    except redis.exceptions.ConnectionError as exc:
        say(f"Redis at {_settings().redis.url} is not reachable ({exc})")
    return 2


def _with_location(exc: BaseException) -> str:
    """A dependency's error with where that dependency is configured to be, unless it says so already."""
    from services.errors import GeneratorError, MemoryError_

    text = str(exc)
    try:
        settings = _settings()
    except SystemExit:
        return text
    where = None
    if isinstance(exc, GeneratorError):
        where = f"the generator at {settings.generator.url}" if settings.generator.url else None
    elif isinstance(exc, MemoryError_):
        qdrant = settings.qdrant
        where = f"Qdrant at {qdrant.url}" if qdrant.url else f"the embedded store at {qdrant.path}"
    if where is None or where.split(" at ")[-1] in text:
        return text
    return f"{text} ({where})"


if __name__ == "__main__":
    sys.exit(main())
