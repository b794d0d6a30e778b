"""`GET /v1/models`: OpenAI's model list, with what a prover client also needs to know.

The service is one "model" to OpenAI-style clients: the proving loop, whose id is `oprover`. Beside the
standard fields each entry reports the generator's model and the Lean versions (with their Mathlib and repl
revisions) that live verify workers announce, and the prompt profiles a request may name.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from api.deps import Gateway, GatewayDep, require_api_key
from api.prove import ProveService
from services.prompts import available_profiles

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])
_STARTED = int(time.time())


def _models(gateway: Gateway) -> dict[str, Any]:
    settings = gateway.settings
    return {
        "object": "list",
        "data": [
            {
                "id": "oprover",
                "object": "model",
                "created": _STARTED,
                "owned_by": "oprover-serve",
                "generator_model": settings.generator.model,
                "lean": ProveService(gateway).lean_versions(),
                "default_lean_version": settings.lean.version,
                "prompt_profiles": available_profiles(settings.prompt.dir),
                "default_prompt_profile": settings.prompt.profile,
            }
        ],
    }


@router.get("/models")
async def models(gateway: GatewayDep) -> dict[str, Any]:
    return await run_in_threadpool(_models, gateway)
