"""All configuration of oprover-serve: one settings class, one sub-model per service.

Every value comes from an environment variable `OPROVER_<SERVICE>_<FIELD>` (or a `.env` file), so the
names in README's settings table hold: `OPROVER_REDIS_URL` is `redis.url`, `OPROVER_LEAN_TIMEOUT_S` is
`lean.timeout_s`.
The nesting is split once on `_` (`env_nested_max_split=1`), which is why every field lives in a
sub-model: a top-level field would be read as a service name.

Settings are built once at process start and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, HttpUrl, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

# A finished job stays readable this long by default (OPROVER_PROVE_JOB_TTL_S): clients poll and resume event
# streams well within a week, and audits want the attempts afterwards.
DEFAULT_JOB_TTL_S = 7 * 24 * 3600

DEFAULT_LEAN_HEADER = (
    "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen BigOperators Real Nat Topology Rat"
)


class RedisSettings(BaseModel):
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis for queues, job records and events.")
    gateway_connections: int = Field(
        512,
        ge=8,
        description="Async Redis connections of the gateway: one per open event stream, `?wait=` or /v1/verify "
        "in progress; more wait up to 20 s for a free one (docs/operations.md).",
    )

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class GeneratorSettings(BaseModel):
    url: HttpUrl | None = Field(
        None, description="OpenAI-compatible base URL including /v1, e.g. http://sglang:30000/v1."
    )
    model: str | None = Field(None, description="Model name to request; default: the first the server lists.")
    api_key: str | None = Field(None, description="Bearer token for the generator, if it wants one.")
    request_timeout_s: float = Field(1800.0, gt=0, description="Limit of one completion (long proofs are slow).")
    connect_timeout_s: float = Field(10.0, gt=0, description="Limit of opening a connection.")
    max_retries: int = Field(4, ge=0, description="Retries of one request on transient failures.")
    retry_budget_s: float = Field(300.0, gt=0, description="Total time one request may spend retrying.")
    backoff_base_s: float = Field(1.0, ge=0, description="First backoff; doubles per retry (0 in tests).")
    concurrency: int = Field(64, ge=1, description="Generations in flight per generate worker process.")
    max_connections: int = Field(256, ge=1, description="HTTP connection pool size of one worker.")
    stream: bool = Field(
        True, description="Stream completions (a dropped request is noticed, a cancelled one aborts on the GPU)."
    )
    send_rid: bool = Field(
        False, description="Also send the request id as SGLang's `rid` body field (servers that reject extras: off)."
    )


class LeanSettings(BaseModel):
    cmd: str | None = Field(
        None,
        description="Command that starts one REPL speaking leanprover-community/repl JSON on stdin/stdout, "
        "e.g. `lake env /opt/repl/.lake/build/bin/repl`.",
    )
    cwd: Path | None = Field(None, description="The Lean project the REPL runs in.")
    timeout_s: float = Field(120.0, gt=0, description="Wall-clock limit of one check.")
    header: str = Field(DEFAULT_LEAN_HEADER, description="Imported once per REPL; every proof is checked on it.")
    pool_size: int = Field(0, ge=0, description="REPL processes per verify worker; 0 = one per core.")
    spares: int = Field(1, ge=0, description="Warm REPLs kept ready to replace a killed one.")
    max_checks_per_repl: int = Field(200, ge=1, description="Recycle a REPL after this many checks.")
    max_rss_mb: int = Field(16384, ge=64, description="Recycle a REPL whose resident memory exceeds this.")
    address_space_mb: int = Field(
        0, ge=0, description="RLIMIT_AS of a REPL; 0 = unlimited (Mathlib needs ~9-12 GB of address space)."
    )
    cpu_limit_s: int = Field(0, ge=0, description="RLIMIT_CPU of a REPL process; 0 = unlimited.")
    max_output_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest REPL reply accepted.")
    sandbox: bool = Field(True, description="Run each REPL without network, in a private temp dir.")
    feedback_errors: int = Field(8, ge=1, description="Errors shown to the model in the next round.")
    import_timeout_s: float = Field(900.0, gt=0, description="Limit of starting one REPL (importing the header).")
    sandbox_network: bool = Field(True, description="Give each REPL its own network namespace (fails closed).")
    sandbox_uid_base: int = Field(
        50000, ge=1, description="First uid (and gid) of the range each REPL and replay gets one of its own from."
    )
    sandbox_uid_count: int = Field(
        1000,
        ge=1,
        description="Uids in that range (at least the REPLs and replays alive at once, across workers); "
        "the next as many are their reapers'.",
    )
    sandbox_shared_uid: bool = Field(
        False,
        description="Let a worker that cannot switch uids (not root with CAP_SETUID/CAP_SETGID) run REPLs under its "
        "own uid, where submitted code can read its files; otherwise it refuses to start.",
    )
    replay_cmd: str | None = Field(
        None,
        description="Command that starts the kernel replay program (services/lean/lean_files), which alone decides a "
        "pass, e.g. `lake env /opt/lean/replay/.lake/build/bin/oprover-replay`.",
    )
    replay_timeout_s: float = Field(
        600.0, gt=0, description="Wall-clock limit of one replay (a fresh process importing the header's modules)."
    )
    max_pickle_mb: int = Field(64, ge=1, description="Largest environment file a REPL may hand to the replay.")
    mathlib_version: str | None = Field(None, description="Mathlib revision announced (default: lake-manifest).")
    repl_version: str | None = Field(None, description="repl revision announced (default: unknown).")
    version: str = Field(
        "v4.15.0",
        description="Lean version this verify worker serves (queue `verify-<version>`); for the gateway, "
        "the deployment's default.",
    )
    serve_default_queue: bool = Field(
        True, description="Also take jobs that name no version (queue `verify`); false for extra-version workers."
    )


class QdrantSettings(BaseModel):
    url: str | None = Field(None, description="A Qdrant server; when unset the embedded store at `path` is used.")
    path: Path = Field(
        Path("./data/qdrant"),
        description="Embedded memory directory (Qdrant Edge); one process opens it, imports are handed to it.",
    )
    api_key: str | None = Field(None, description="API key of the Qdrant server.")
    collection: str = Field("oprover_proofs", description="Collection holding the verified proofs.")
    top_k: int = Field(4, ge=0, le=32, description="Proofs retrieved per round unless a request says otherwise.")
    exclude_file: Path | None = Field(
        None, description="JSONL of statements never to retrieve (e.g. a benchmark), field formal_statement."
    )
    embeddings_url: HttpUrl | None = Field(
        None, description="OpenAI-compatible /v1 base for dense embeddings; off unless set."
    )
    embeddings_model: str | None = Field(None, description="Model name for the embeddings endpoint.")
    embeddings_api_key: str | None = Field(None, description="Bearer token for the embeddings endpoint.")
    embeddings_timeout_s: float = Field(30.0, gt=0, description="Limit of one embeddings request.")
    timeout_s: float = Field(30.0, gt=0, description="Limit of one request to a Qdrant server.")
    hnsw_m: int = Field(32, ge=4, description="Server only: HNSW links per node of the dense vector index.")
    hnsw_ef_construct: int = Field(256, ge=4, description="Server only: HNSW build-time candidate list.")
    hnsw_ef: int = Field(128, ge=4, description="Server only: HNSW search-time candidate list.")
    int8: bool = Field(True, description="Server only: int8 scalar quantization in RAM, originals on disk.")


class ApiSettings(BaseModel):
    keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated bearer keys; empty = open (warned at start)."
    )
    max_wait_s: float = Field(600.0, gt=0, description="Largest `?wait=` a client may ask for.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins browsers may call the API from; empty = none."
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer keys that may read and cancel every key's jobs (also valid as keys).",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above it); batches are the largest."
    )
    idempotency_ttl_s: int = Field(
        24 * 3600, ge=60, description="How long an `Idempotency-Key` keeps returning the job it created."
    )
    demo: bool = Field(
        False, description="Set by `oprover up --demo`: /readyz says the service runs on stand-ins (no real proofs)."
    )

    @field_validator("keys", "cors_origins", "admin_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class QuotaSettings(BaseModel):
    """Per-key limits, counted in Redis so every gateway replica shares them; 0 switches one off."""

    requests_per_minute: int = Field(0, ge=0, description="Requests one key may send per minute; 0 = unlimited.")
    jobs_in_flight: int = Field(0, ge=0, description="Unfinished proof jobs one key may hold; 0 = unlimited.")
    daily_tokens: int = Field(
        0, ge=0, description="Generated (completion) tokens one key may spend per UTC day; 0 = unlimited."
    )


class AdmissionSettings(BaseModel):
    """Backpressure: when the queues are this far behind, new jobs get a 503 instead of joining them."""

    max_queued_rounds: int = Field(
        100_000, ge=0, description="New jobs get a 503 while more rounds than this wait in the queues; 0 = no limit."
    )
    max_queue_age_s: float = Field(
        0.0, ge=0, description="New jobs get a 503 while the oldest queued round waited longer than this; 0 = off."
    )
    retry_after_s: int = Field(30, ge=1, description="The `retry-after` a refused job is told.")


class PromptSettings(BaseModel):
    profile: str = Field("oprover", description="Default prompt profile.")
    retrieved_max_chars: int = Field(
        12_000,
        ge=0,
        description="Characters of retrieved proofs one prompt may show (~3.5 per token); proofs "
        "past it are left out so prompt + max_tokens fit the model's context.",
    )
    dir: Path | None = Field(None, description="Extra folder of profile files; same names override built-ins.")


class ProveSettings(BaseModel):
    rounds: int = Field(4, ge=1, description="Default rounds per chain.")
    attempts: int = Field(1, ge=1, description="Default independent chains per job (pass@k).")
    max_rounds: int = Field(32, ge=1, description="Largest `rounds` a request may ask for.")
    max_attempts: int = Field(64, ge=1, description="Largest `attempts` a request may ask for.")
    temperature: float | None = Field(None, ge=0, le=2, description="Overrides the prompt profile's temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Overrides the prompt profile's top_p.")
    max_tokens: int | None = Field(None, ge=1, description="Overrides the prompt profile's max_tokens.")
    max_statement_chars: int = Field(20_000, ge=100, description="Longest formal statement accepted.")
    job_ttl_s: int = Field(DEFAULT_JOB_TTL_S, ge=60, description="How long a finished job stays readable.")
    max_batch: int = Field(1000, ge=1, description="Most statements one POST /v1/prove/batch may hold.")


class WorkerSettings(BaseModel):
    maintenance_interval_s: int = Field(
        30, ge=1, description="How often RQ looks for rounds whose worker died (RQ's default is 600)."
    )
    abandoned_after_s: int = Field(
        30, ge=2, description="A running round whose worker sent no heartbeat for this long is retried elsewhere."
    )
    round_retries: int = Field(3, ge=0, description="Retries of a round that hit an infrastructure failure.")
    retry_intervals_s: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [2, 10, 30], description="Waits between those retries (comma-separated)."
    )

    @field_validator("retry_intervals_s", mode="before")
    @classmethod
    def _split_ints(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("retry_intervals_s")
    @classmethod
    def _intervals(cls, value: list[int]) -> list[int]:
        if not value or any(v < 0 for v in value):
            raise ValueError("must be one or more whole seconds >= 0, comma-separated")
        return value


class ChatSettings(BaseModel):
    keepalive_s: float = Field(
        5.0, gt=0, le=60, description="A streamed chat answer sends an SSE comment after this long without output."
    )
    relay_models_timeout_s: float = Field(
        3.0, gt=0, description="Limit of asking the generator for its models (listed by /v1/models)."
    )


class CallbackSettings(BaseModel):
    secret: str | None = Field(
        None, description="HMAC-SHA256 key signing callback deliveries; jobs with a callback_url need it."
    )
    timeout_s: float = Field(10.0, gt=0, description="Limit of one delivery POST.")
    max_attempts: int = Field(8, ge=1, description="Deliveries tried before a callback is given up.")
    backoff_base_s: float = Field(2.0, ge=0, description="Wait after the first failed delivery; doubles each time.")
    backoff_max_s: float = Field(600.0, ge=0, description="Longest wait between two deliveries.")
    poll_interval_s: float = Field(1.0, gt=0, description="How often the gateway looks for due deliveries.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OPROVER_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_file=".env",
        extra="ignore",
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    lean: LeanSettings = Field(default_factory=LeanSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    prove: ProveSettings = Field(default_factory=ProveSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    callback: CallbackSettings = Field(default_factory=CallbackSettings)


class SettingsError(Exception):
    """Raised at start when the configuration is unusable; the message names each bad variable."""


def load_settings(**overrides: object) -> Settings:
    """Read the environment once, turning pydantic's report into one line per `OPROVER_` variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = [str(part) for part in error["loc"]]
            env = "OPROVER_" + "_".join(loc[:2]).upper() if loc else "OPROVER_?"
            lines.append(f"{env}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def require(value: object, env: str, why: str) -> None:
    """Fail start-up of a process that cannot work without `env`, saying what it is for."""
    if value in (None, ""):
        raise SettingsError(f"{env} is not set: {why}")


def env_reference() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the source of README's settings table."""
    rows = []
    for service, field in Settings.model_fields.items():
        model = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        for name, sub in type(model).model_fields.items():
            default = getattr(model, name)
            if isinstance(default, list):
                default = ",".join(str(v) for v in default)
            shown = "(unset)" if default in (None, "") else str(default).replace("\n", "\\n")
            rows.append((f"OPROVER_{service.upper()}_{name.upper()}", shown, sub.description or ""))
    return rows


if __name__ == "__main__":  # `python -m services.settings` prints the table README documents
    print("| variable | default | meaning |\n| --- | --- | --- |")
    for env, default, description in env_reference():
        print(f"| `{env}` | `{default}` | {description} |")
