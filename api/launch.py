"""What `oprover up` starts besides the service itself: a model server, and the Lean project it finds.

On one GPU box without Docker, `oprover up` with `OPROVER_GENERATOR_URL` unset starts SGLang itself, with the
launch flags of the Docker image (deploy/sglang/entrypoint.sh, read from the same `OPROVER_SGLANG_*` variables),
waits until it answers, hands its URL to the gateway and the workers, and stops it (its whole process group:
SGLang runs a scheduler and a detokenizer beside its HTTP server) when `up` stops. `OPROVER_SGLANG_CMD` replaces
the command, e.g. with another server speaking the same API; `{port}` in it is replaced by the port.

With `OPROVER_LEAN_CMD` unset, `up` uses the Lean project `oprover lean setup data/lean` makes, if it is there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger("oprover")

DEFAULT_LEAN_DIR = Path("data/lean")
LEAN_SETUP_HINT = "oprover lean setup data/lean"


class LaunchError(Exception):
    """`up` cannot start what it needs; the message says what to do, in one line."""


@dataclass(frozen=True)
class SGLangLaunch:
    """The model server `up` starts: the same variables and defaults as deploy/sglang/entrypoint.sh."""

    model_id: str = "m-a-p/OProver-8B"
    model_dir: str = "models/OProver-8B"
    served_name: str = "OProver-8B"
    port: int = 30000
    tp: int = 1
    context_length: int = 40960
    mem_fraction: str = "0.88"
    quantization: str = ""
    max_running: int = 128
    extra_args: str = ""
    command: str = ""  # OPROVER_SGLANG_CMD: replaces the whole command
    ready_timeout_s: float = 3600.0  # first start: the weights download (~16 GB) and CUDA-graph capture

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SGLangLaunch:
        def get(name: str, default: object) -> str:
            return env.get(f"OPROVER_SGLANG_{name}") or str(default)

        defaults = cls()
        try:
            return cls(
                model_id=get("MODEL_ID", defaults.model_id),
                model_dir=get("MODEL_DIR", defaults.model_dir),
                served_name=get("SERVED_NAME", defaults.served_name),
                port=int(get("PORT", defaults.port)),
                tp=int(get("TP", defaults.tp)),
                context_length=int(get("CONTEXT_LENGTH", defaults.context_length)),
                mem_fraction=get("MEM_FRACTION", defaults.mem_fraction),
                quantization=env.get("OPROVER_SGLANG_QUANTIZATION", ""),
                max_running=int(get("MAX_RUNNING", defaults.max_running)),
                extra_args=env.get("OPROVER_SGLANG_EXTRA_ARGS", ""),
                command=env.get("OPROVER_SGLANG_CMD", ""),
                ready_timeout_s=float(get("READY_TIMEOUT_S", defaults.ready_timeout_s)),
            )
        except ValueError as exc:
            raise LaunchError(f"an OPROVER_SGLANG_* variable is not a number: {exc}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def argv(self) -> list[str]:
        """The command line: OPROVER_SGLANG_CMD, or SGLang's launcher with the image's flags."""
        if self.command:
            return [part.replace("{port}", str(self.port)) for part in shlex.split(self.command)]
        if importlib.util.find_spec("sglang") is None:
            raise LaunchError(
                "OPROVER_GENERATOR_URL is not set and SGLang is not installed: `pip install -e .[gpu]` (make up "
                "does it on a box with an NVIDIA GPU), or point OPROVER_GENERATOR_URL at a running model server"
            )
        return self.sglang_argv()

    def sglang_argv(self) -> list[str]:
        """SGLang's launcher with the flags of deploy/sglang/entrypoint.sh."""
        # Local weights when they are there (as in the image), else the hub id: SGLang downloads on first start.
        model = self.model_dir if (Path(self.model_dir) / "config.json").is_file() else self.model_id
        args = [
            sys.executable,
            "-m",
            "sglang.launch_server",
            "--model-path",
            model,
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--tp",
            str(self.tp),
            "--context-length",
            str(self.context_length),
            "--mem-fraction-static",
            self.mem_fraction,
            "--max-running-requests",
            str(self.max_running),
            "--reasoning-parser",
            "qwen3",
            "--enable-metrics",
            "--enable-cache-report",
        ]
        if self.quantization:
            args += ["--quantization", self.quantization]
        return args + shlex.split(self.extra_args)


class ModelServer:
    """A model server process `up` owns: started in its own session, stopped with its whole process group."""

    def __init__(self, launch: SGLangLaunch, *, log_path: Path) -> None:
        self.launch = launch
        self.argv = launch.argv()  # raises LaunchError now, before `up` starts anything else
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.launch.url

    def start(self) -> subprocess.Popen[bytes]:
        argv = self.argv
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OPROVER_SGLANG_PORT": str(self.launch.port)},
                start_new_session=True,  # Ctrl-C reaches `up` only; `up` stops this group itself
            )
        logger.info("started the model server (pid %d): %s; log: %s", self.process.pid, argv[0], self.log_path)
        return self.process

    def wait_ready(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Block until the server answers (True), or it exited or `up` is stopping (False); raise on timeout."""
        assert self.process is not None, "start() first"
        root = self.url.removesuffix("/v1")
        deadline = time.monotonic() + self.launch.ready_timeout_s
        next_note = time.monotonic() + 30
        with httpx.Client(timeout=5.0) as client:
            while True:
                if should_stop() or self.process.poll() is not None:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{root}/health").status_code == 200 and client.get(f"{self.url}/models").is_success:
                        logger.info("the model server answers on %s", self.url)
                        return True
                now = time.monotonic()
                if now > deadline:
                    raise LaunchError(
                        f"the model server did not answer within {self.launch.ready_timeout_s:.0f} s "
                        f"(OPROVER_SGLANG_READY_TIMEOUT_S); see {self.log_path}"
                    )
                if now > next_note:
                    logger.info("waiting for the model server (first start: weights download, CUDA graphs) ...")
                    next_note = now + 60
                time.sleep(0.5)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after `timeout_s`; returns the exit code."""
        if self.process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("the model server did not stop within %.0f s; killing it", timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # stragglers of the group (scheduler, detokenizer)
        code = self.process.wait()
        logger.info("stopped the model server (exit code %s)", code)
        return code

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def model_server_for_up(generator_url: object, *, log_dir: Path = Path("data/logs")) -> ModelServer | None:
    """The model server `up` must start, or None when OPROVER_GENERATOR_URL names one already; LaunchError when
    there is nothing to start (SGLang not installed, no OPROVER_SGLANG_CMD)."""
    if generator_url:
        return None
    return ModelServer(SGLangLaunch.from_env(), log_path=log_dir / "sglang.log")


def lean_env_for_up(lean_cmd: object, *, directory: Path = DEFAULT_LEAN_DIR) -> dict[str, str]:
    """OPROVER_LEAN_* for the verify worker from `oprover lean setup`'s project, when OPROVER_LEAN_CMD is unset."""
    if lean_cmd:
        return {}
    mathlib = (directory / "mathlib4").resolve()
    binary = (directory / "repl" / ".lake" / "build" / "bin" / "repl").resolve()
    replay = (directory / "replay" / ".lake" / "build" / "bin" / "oprover-replay").resolve()
    if not binary.is_file() or not replay.is_file() or not (mathlib / "lean-toolchain").is_file():
        raise LaunchError(
            f"OPROVER_LEAN_CMD is not set and there is no Lean project in {directory}: run `{LEAN_SETUP_HINT}`"
        )
    toolchain = (mathlib / "lean-toolchain").read_text().strip()
    env = {
        "OPROVER_LEAN_CMD": f"lake env {binary}",
        "OPROVER_LEAN_REPLAY_CMD": f"lake env {replay}",  # the kernel replay, which alone decides a pass
        "OPROVER_LEAN_CWD": str(mathlib),
    }
    if ":" in toolchain:
        env["OPROVER_LEAN_VERSION"] = toolchain.split(":", 1)[1]
    return env
