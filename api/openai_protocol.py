"""OpenAI's chat-completions request, as `/v1/chat/completions` accepts it.

The fields follow OpenAI's API reference in its order, so a reader can hold them side by side; our own options
come after them in one fenced block. Unknown fields are accepted and logged (clients send extras, and a request
relayed to the generator may carry fields of its own server). Bounds are OpenAI's: what an OpenAI-compatible
server would refuse is refused here too, before anything runs. Fields we read only for the `oprover` model are
typed loosely enough that a request meant for the raw generator is not refused on our account.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.protocol import _Lenient

# The model id of the proving loop; every other model name is relayed to the generator.
OPROVER_MODEL = "oprover"


class ChatMessage(BaseModel):
    """One message; `content` is text or a list of content parts (only their text is read)."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(..., description="system, developer, user, assistant or tool.")
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "\n".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ChatCompletionRequest(_Lenient):
    # --- OpenAI's fields, in the order of its API reference ---------------------------------------------------
    messages: list[ChatMessage] = Field(..., min_length=1)
    model: str = Field(..., min_length=1, description="`oprover` for the proving loop; any other name is relayed.")
    audio: dict[str, Any] | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    function_call: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    metadata: dict[str, Any] | None = None
    modalities: list[str] | None = None
    n: int | None = Field(None, ge=1, le=128, description="For `oprover`: independent chains, one choice each.")
    parallel_tool_calls: bool | None = None
    prediction: dict[str, Any] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    reasoning_effort: str | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    service_tier: str | None = None
    stop: str | list[str] | None = None
    store: bool | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = None

    # --- oprover's extras (SDKs send them in `extra_body`) ------------------------------------------------------
    rounds: int | None = Field(None, ge=1, description="Rounds per chain (revisions after Lean's feedback).")
    attempts: int | None = Field(None, ge=1, description="Independent chains; `n` > 1 sets it too.")
    top_k: int | None = Field(None, ge=0, le=32, description="Verified proofs retrieved into each prompt.")
    prompt_profile: str | None = Field(None, description="Prompt profile; default: the deployment's.")
    lean_version: str | None = Field(None, description="Lean version to check with; default: the deployment's.")
    header: str | None = Field(
        None, description="Lean header; default: the statement block's own, else the deployment's."
    )
    background: bool | None = Field(
        None, description="Keep proving when the client disconnects (the job stays readable at /v1/prove/{id})."
    )
    # --- end of oprover's extras ---------------------------------------------------------------------------------

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)
