"""Opt-in structured logs: one JSON object per line, carrying the proof job's id, in every process.

`OPROVER_LOG_FORMAT=json` (default `text`) switches the root logger (and uvicorn's loggers, through
`uvicorn_log_config`) to `JsonFormatter`. A line gets a `job_id` when it belongs to a proof job:
- bound: while a worker runs one RQ step of a job, `bind` sets the job id for everything that thread logs
  (the Lean pool, the generation client and RQ itself log without naming the job);
- named: a line whose message names a job id (`prf_` + 24 hex digits: the gateway's access log of
  `/v1/prove/{id}`, the workers' `job prf_...: proved`) carries that id.
So `job_id` follows one job from its POST through every round in every worker to its end.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import os
import re
from typing import Any

LOG_FORMAT_ENV = "OPROVER_LOG_FORMAT"
# services/store.py's new_job_id(): "prf_" + secrets.token_hex(12)
JOB_ID = re.compile(r"\bprf_[0-9a-f]{24}\b")

_current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("oprover_job_id", default=None)


def json_requested(env: dict[str, str] | None = None) -> bool:
    value = (env if env is not None else os.environ).get(LOG_FORMAT_ENV, "text").strip().lower()
    if value not in ("json", "text", ""):
        raise ValueError(f"{LOG_FORMAT_ENV} must be json or text (got {value!r})")
    return value == "json"


def bind(rq_job_id: str | None) -> contextvars.Token[str | None]:
    """Lines this thread logs from now on belong to the proof job that `rq_job_id` (`prf_...-c0-r1-gen`) is part
    of; an id of no proof job (a /v1/verify request) binds nothing."""
    match = JOB_ID.match(rq_job_id or "")
    return _current_job.set(match.group(0) if match else None)


def unbind(token: contextvars.Token[str | None]) -> None:
    _current_job.reset(token)


def job_id_of(record: logging.LogRecord) -> str | None:
    explicit = getattr(record, "job_id", None)
    if explicit:
        return str(explicit)
    bound = _current_job.get()
    if bound:
        return bound
    match = JOB_ID.search(record.getMessage())
    return match.group(0) if match else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        job_id = job_id_of(record)
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def install(level: int = logging.INFO) -> bool:
    """With OPROVER_LOG_FORMAT=json, make every handler of the root logger write JSON; True if it did."""
    if not json_requested():
        return False
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())
    root.setLevel(level)
    return True


def uvicorn_log_config() -> dict[str, Any] | None:
    """uvicorn's `log_config`: its default (text), or None with JSON so its loggers reach the root's handler."""
    if json_requested():
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
