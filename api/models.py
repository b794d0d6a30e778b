"""`GET /v1/models`: OpenAI's model list, with what a prover client also needs to know.

Two kinds of model answer at `/v1/chat/completions`, and each entry's `oprover_kind` says which: the proving
loop (`proving_loop`, id `oprover`), and the generator's own model(s) (`raw_generator`), relayed unchanged —
a raw model's answer is not checked by Lean. Beside the standard fields the `oprover` entry reports the
generator's model and the Lean versions (with their Mathlib and repl revisions) that live verify workers
announce, and the prompt profiles a request may name.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from api.deps import LeanVersionsDep, require_api_key
from api.lean_versions import LeanVersions
from api.openai_protocol import OPROVER_MODEL
from api.relay import RelayDep
from services.prompts import available_profiles

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])
_STARTED = int(time.time())


def _models(lean: LeanVersions) -> dict[str, Any]:
    settings = lean.settings
    return {
        "object": "list",
        "data": [
            {
                "id": OPROVER_MODEL,
                "object": "model",
                "created": _STARTED,
                "owned_by": "oprover-serve",
                "oprover_kind": "proving_loop",
                "generator_model": settings.generator.model,
                "lean": lean.served(),
                "default_lean_version": settings.lean.version,
                "prompt_profiles": available_profiles(settings.prompt.dir),
                "default_prompt_profile": settings.prompt.profile,
            }
        ],
    }


@router.get("/models")
async def models(lean: LeanVersionsDep, relay: RelayDep) -> dict[str, Any]:
    listing = await run_in_threadpool(_models, lean)
    for entry in await relay.models():
        if entry["id"] != OPROVER_MODEL:  # the loop's id wins: a request for it is never relayed
            listing["data"].append({**entry, "oprover_kind": "raw_generator", "relayed": True})
    return listing
