"""api/launch.py: the model server `oprover up` starts and stops, and the Lean project it finds.

The launched server is the stand-in generator (a real HTTP server process) through OPROVER_SGLANG_CMD, exactly
as a user would point it at another server; SGLang's own command line is compared with the Docker image's.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from api.launch import LaunchError, ModelServer, SGLangLaunch, lean_env_for_up, model_server_for_up
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
STANDIN = f"{sys.executable} -m standins.openai_server --port {{port}}"


def test_sglang_command_has_the_images_flags(tmp_path):
    """`up` and Dockerfile.gpu launch SGLang alike: every flag of deploy/sglang/entrypoint.sh, the same defaults."""
    script = (ROOT / "deploy" / "sglang" / "entrypoint.sh").read_text()
    image_flags = set(re.findall(r"^\s+(--[a-z-]+)", script.split("args=(")[1].split(")")[0], flags=re.M))
    image_flags |= {"--quantization"}  # added when OPROVER_SGLANG_QUANTIZATION is set, in both
    launch = SGLangLaunch.from_env({"OPROVER_SGLANG_QUANTIZATION": "fp8", "OPROVER_SGLANG_EXTRA_ARGS": "--x 1"})
    argv = launch.sglang_argv()
    assert argv[1:3] == ["-m", "sglang.launch_server"]
    assert {a for a in argv if a.startswith("--")} - {"--x"} == image_flags
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # never listens beyond this machine
    assert argv[-2:] == ["--x", "1"]
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    checked = 0
    for name, value in re.findall(r"^(?:ENV)?\s+OPROVER_SGLANG_(\w+)=(\S*) \\$", dockerfile, flags=re.M):
        if name in ("TP", "CONTEXT_LENGTH", "MEM_FRACTION", "MAX_RUNNING", "SERVED_NAME", "MODEL_ID", "PORT"):
            assert str(getattr(SGLangLaunch(), name.lower())) == value, name
            checked += 1
    assert checked == 7
    # the hub id until local weights exist
    assert argv[argv.index("--model-path") + 1] == "m-a-p/OProver-8B"
    weights = tmp_path / "OProver-8B"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    local = SGLangLaunch.from_env({"OPROVER_SGLANG_MODEL_DIR": str(weights)}).sglang_argv()
    assert local[local.index("--model-path") + 1] == str(weights)


def test_without_sglang_or_a_url_up_says_what_to_do():
    import importlib.util

    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("sglang is installed here: the message for a box without it cannot be shown")
    with pytest.raises(LaunchError, match=r"pip install -e \.\[gpu\]"):
        SGLangLaunch.from_env({}).argv()


def test_a_configured_url_launches_nothing(monkeypatch):
    assert model_server_for_up("http://gpu-box:30000/v1") is None
    monkeypatch.setenv("OPROVER_SGLANG_CMD", "my-server --port {port}")
    monkeypatch.setenv("OPROVER_SGLANG_PORT", "31234")
    server = model_server_for_up(None)
    assert server is not None and server.argv == ["my-server", "--port", "31234"]
    assert server.url == "http://127.0.0.1:31234/v1"


def test_bad_numbers_are_named():
    with pytest.raises(LaunchError, match="not a number"):
        SGLangLaunch.from_env({"OPROVER_SGLANG_PORT": "thirty"})


def _group(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if _pgid(p) == pid]


def _pgid(process: psutil.Process) -> int | None:
    import os

    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, psutil.Error):
        return None


def test_started_server_answers_and_its_whole_group_stops(tmp_path):
    port = free_port()
    # Like SGLang, the command leaves helper processes beside the server (its scheduler, its detokenizer).
    command = f"bash -c 'sleep 300 & {STANDIN.replace('{port}', str(port))}'"
    launch = SGLangLaunch.from_env({"OPROVER_SGLANG_CMD": command, "OPROVER_SGLANG_PORT": str(port)})
    server = ModelServer(launch, log_path=tmp_path / "sglang.log")
    process = server.start()
    try:
        assert server.wait_ready() is True
        models = httpx.get(f"{server.url}/models", timeout=5).json()
        assert models["data"][0]["id"].startswith("standin-")
        assert len(_group(process.pid)) >= 2
    finally:
        code = server.stop(timeout_s=10)
    assert code is not None
    deadline = time.monotonic() + 5
    while _group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group(process.pid) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/models", timeout=2)


def test_a_server_that_exits_is_not_waited_for(tmp_path):
    launch = SGLangLaunch.from_env({"OPROVER_SGLANG_CMD": f"{sys.executable} -c 'print(\"no GPU\"); exit(3)'"})
    server = ModelServer(launch, log_path=tmp_path / "sglang.log")
    server.start()
    started = time.monotonic()
    assert server.wait_ready() is False
    assert time.monotonic() - started < 10
    assert server.stop() == 3
    assert "no GPU" in server.log_tail()


def test_waiting_stops_when_up_is_stopping(tmp_path):
    launch = SGLangLaunch.from_env({"OPROVER_SGLANG_CMD": "sleep 60", "OPROVER_SGLANG_PORT": str(free_port())})
    server = ModelServer(launch, log_path=tmp_path / "sglang.log")
    server.start()
    asked = time.monotonic() + 1.0
    assert server.wait_ready(should_stop=lambda: time.monotonic() > asked) is False
    assert server.stop(timeout_s=5) is not None


def test_lean_project_of_lean_setup_is_found(tmp_path):
    with pytest.raises(LaunchError, match="oprover lean setup data/lean"):
        lean_env_for_up(None, directory=tmp_path / "lean")
    binary = tmp_path / "lean" / "repl" / ".lake" / "build" / "bin" / "repl"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    (tmp_path / "lean" / "mathlib4").mkdir()
    (tmp_path / "lean" / "mathlib4" / "lean-toolchain").write_text("leanprover/lean4:v4.15.0\n")
    with pytest.raises(LaunchError, match="oprover lean setup data/lean"):  # no kernel replay built yet
        lean_env_for_up(None, directory=tmp_path / "lean")
    replay = tmp_path / "lean" / "replay" / ".lake" / "build" / "bin" / "oprover-replay"
    replay.parent.mkdir(parents=True)
    replay.write_text("")
    env = lean_env_for_up(None, directory=tmp_path / "lean")
    assert env == {
        "OPROVER_LEAN_CMD": f"lake env {binary.resolve()}",
        "OPROVER_LEAN_REPLAY_CMD": f"lake env {replay.resolve()}",
        "OPROVER_LEAN_CWD": str((tmp_path / "lean" / "mathlib4").resolve()),
        "OPROVER_LEAN_VERSION": "v4.15.0",
    }
    assert lean_env_for_up("lake env /opt/repl", directory=tmp_path / "nothing") == {}


def test_gpu_extra_is_the_sglang_of_the_image():
    """`pip install -e .[gpu]` (what `make up` installs on a GPU box) and Dockerfile.gpu run the same SGLang."""
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    image = re.search(r"^ARG SGLANG_IMAGE=lmsysorg/sglang:v(\S+)$", (ROOT / "Dockerfile.gpu").read_text(), re.M)
    assert image and extra == [f"sglang=={image.group(1)}"]
    makefile = (ROOT / "Makefile").read_text()
    assert "nvidia-smi" in makefile and "'.[gpu]'" in makefile
