"""What routes reach through FastAPI dependencies: the caller, the gateway's resources and the serving objects.

Both the resources (`Gateway`, api/gateway.py) and the serving objects (`Serving`) are built once, in the app's
lifespan (api/app.py), and kept on `app.state`; a route names the one it needs (`ServingProveDep`, ...) and
passes the caller (`CallerDep`) to each call. The semantics live in the serving classes (api/serving_*.py);
routes parse HTTP and map results, as vLLM's entrypoints call its `OpenAIServing*` objects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.gateway import Gateway
from api.lean_versions import LeanVersions
from api.serving_chat import OpenAIServingChat
from api.serving_prove import ServingProve
from api.serving_verify import ServingVerify
from api.tenancy import Caller, authenticate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    """The gateway's serving objects, one of each for the process's life."""

    lean: LeanVersions
    prove: ServingProve
    verify: ServingVerify
    chat: OpenAIServingChat

    @classmethod
    def build(cls, gateway: Gateway) -> Serving:
        lean = LeanVersions(gateway)
        prove = ServingProve(gateway, lean)
        return cls(lean=lean, prove=prove, verify=ServingVerify(gateway, lean), chat=OpenAIServingChat(gateway, prove))


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def get_serving(request: Request) -> Serving:
    return request.app.state.serving


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
ServingDep = Annotated[Serving, Depends(get_serving)]


def get_serving_prove(serving: ServingDep) -> ServingProve:
    return serving.prove


def get_serving_verify(serving: ServingDep) -> ServingVerify:
    return serving.verify


def get_serving_chat(serving: ServingDep) -> OpenAIServingChat:
    return serving.chat


def get_lean_versions(serving: ServingDep) -> LeanVersions:
    return serving.lean


ServingProveDep = Annotated[ServingProve, Depends(get_serving_prove)]
ServingVerifyDep = Annotated[ServingVerify, Depends(get_serving_verify)]
ServingChatDep = Annotated[OpenAIServingChat, Depends(get_serving_chat)]
LeanVersionsDep = Annotated[LeanVersions, Depends(get_lean_versions)]


def require_api_key(request: Request, gateway: GatewayDep) -> Caller:
    """Bearer-key check for /v1 (api/tenancy.py); open when no keys are configured (the gateway warns at start).

    The caller is kept on the request, so routes read it through `CallerDep` without checking the key twice."""
    api = gateway.settings.api
    caller = authenticate(request.headers.get("authorization", ""), api.keys, api.admin_keys)
    request.state.caller = caller
    gateway.quotas.count_request(caller.owner)  # a 429 once the key's requests per minute are spent
    return caller


def current_caller(request: Request, gateway: GatewayDep) -> Caller:
    caller = getattr(request.state, "caller", None)
    return caller if isinstance(caller, Caller) else require_api_key(request, gateway)


CallerDep = Annotated[Caller, Depends(current_caller)]
