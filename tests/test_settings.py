"""Settings: the `OPROVER_<SERVICE>_<FIELD>` variable names, clear start-up errors, and README's table kept true."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.settings import Settings, SettingsError, env_reference, load_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_design_variable_names_reach_their_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "OPROVER_REDIS_URL": "redis://db:6380/2",
        "OPROVER_GENERATOR_URL": "http://sglang:30000/v1",
        "OPROVER_GENERATOR_MODEL": "m-a-p/OProver-8B",
        "OPROVER_GENERATOR_API_KEY": "sk-x",
        "OPROVER_LEAN_CMD": "lake env /opt/repl/.lake/build/bin/repl",
        "OPROVER_LEAN_CWD": "/opt/lean-project",
        "OPROVER_LEAN_TIMEOUT_S": "60",
        "OPROVER_LEAN_HEADER": "import Mathlib",
        "OPROVER_QDRANT_URL": "http://qdrant:6333",
        "OPROVER_QDRANT_PATH": "/var/qdrant",
        "OPROVER_API_KEYS": "k1, k2,,",
        "OPROVER_PROMPT_PROFILE": "kimina",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.redis.url == "redis://db:6380/2"
    assert str(settings.generator.url) == "http://sglang:30000/v1"
    assert settings.generator.model == "m-a-p/OProver-8B"
    assert settings.generator.api_key == "sk-x"
    assert settings.lean.cmd.startswith("lake env") and str(settings.lean.cwd) == "/opt/lean-project"
    assert settings.lean.timeout_s == 60 and settings.lean.header == "import Mathlib"
    assert settings.qdrant.url == "http://qdrant:6333" and str(settings.qdrant.path) == "/var/qdrant"
    assert settings.api.keys == ["k1", "k2"]
    assert settings.prompt.profile == "kimina"


def test_defaults_match_design() -> None:
    settings = Settings(_env_file=None)
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert settings.lean.timeout_s == 120
    assert settings.lean.header.startswith("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000")
    assert settings.qdrant.url is None and str(settings.qdrant.path) == "data/qdrant"
    assert settings.api.keys == [] and settings.prompt.profile == "oprover"


def test_bad_values_are_reported_per_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPROVER_REDIS_URL", "http://not-redis")
    monkeypatch.setenv("OPROVER_LEAN_TIMEOUT_S", "soon")
    monkeypatch.setenv("OPROVER_GENERATOR_URL", "not a url")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    for name in ("OPROVER_REDIS_URL", "OPROVER_LEAN_TIMEOUT_S", "OPROVER_GENERATOR_URL"):
        assert name in message
    assert "'soon'" in message


def test_readme_documents_every_setting() -> None:
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- settings-table:start -->")[1].split("<!-- settings-table:end -->")[0]
    for env, default, _description in env_reference():
        assert f"`{env}`" in table, f"README's settings table lacks {env} (regenerate: python -m services.settings)"
        assert f"`{default}`" in table.split(f"`{env}`")[1].split("\n")[0], f"README shows a stale default of {env}"
