"""Request and response models of the public HTTP API (README, "HTTP API").

Unknown fields are accepted and logged, not rejected (clients send extras; OpenAI's clients do too).
Bounds that depend on the deployment (largest `rounds`, `attempts`) are checked by the service, which names
the field in its error.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StringConstraints, model_validator

logger = logging.getLogger(__name__)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_extras(self) -> _Lenient:
        if self.model_extra:
            logger.info("%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra))
        return self


class SamplingParams(_Lenient):
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=262_144)


class RetrievalExclusion(_Lenient):
    """Proofs never retrieved into this job's prompts: e.g. a benchmark's own problems while it is evaluated."""

    formal_statements: list[str] = Field(
        default_factory=list,
        max_length=100_000,
        description="Statements whose proofs are left out, compared up to name, comments and layout.",
    )
    statement_hashes: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=list,
        max_length=100_000,
        description="The same, precomputed: SHA-256 hex of the statement with its name blanked "
        "(services.memory.body_hash, what `oprover eval` sends).",
    )
    names: list[str] = Field(
        default_factory=list,
        max_length=100_000,
        description="Problem names whose stored proofs are left out (a re-worded statement of the same "
        "problem is still stored under its name).",
    )

    def body_hashes(self) -> list[str]:
        """What the job keeps (JobSpec.exclude_hashes): every statement as the memory's body hash, once."""
        from services.memory.schema import body_hash  # the memory's own key: what its search filters on

        return sorted({body_hash(statement) for statement in self.formal_statements} | set(self.statement_hashes))


class ProveRequest(_Lenient):
    formal_statement: str = Field(
        ..., description="A Lean 4 `theorem`/`lemma` ending in `:= by sorry`, `:= by` or `:=`."
    )
    header: str | None = Field(None, description="Imports/opens/options; default: the deployment's Lean header.")
    informal_statement: str | None = None
    rounds: int | None = Field(None, ge=1, description="Rounds per chain (revisions after Lean's feedback).")
    attempts: int | None = Field(None, ge=1, description="Independent chains (pass@k).")
    top_k: int | None = Field(None, ge=0, le=32, description="Verified proofs retrieved into each prompt.")
    sampling: SamplingParams | None = None
    prompt_profile: str | None = Field(None, description="Prompt profile; default: the deployment's.")
    lean_version: str | None = Field(None, description="Lean version to check with; default: the deployment's.")
    metadata: dict[str, Any] | None = Field(None, description="Kept on the job and returned as is.")
    callback_url: HttpUrl | None = Field(
        None, description="The finished job is POSTed here once, signed (X-Oprover-Signature: sha256=HMAC of the body)."
    )
    exclude: RetrievalExclusion | None = Field(
        None, description="Proofs never retrieved into this job's prompts, by statement and by problem name."
    )


class VerifyRequest(_Lenient):
    code: str = Field(..., description="Lean 4 code to check.")
    header: str | None = None
    formal_statement: str | None = Field(
        None, description="If given, the code must prove exactly this statement (it is imposed, not trusted)."
    )
    lean_version: str | None = None
    timeout_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds Lean may spend on this check; default and largest: the deployment's "
        "OPROVER_LEAN_TIMEOUT_S (a larger value is a 400 naming `timeout_s`).",
    )


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
