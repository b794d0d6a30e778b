"""The gateway's shared resources and the small typed dependencies routes reach them through."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

import redis
import redis.asyncio
from fastapi import Depends, Request
from redis.asyncio import Redis as AsyncRedis

from api.quotas import Quotas
from api.tenancy import Caller, authenticate
from services import redis_clients
from services.settings import Settings
from services.store import JobStore
from workers.dispatch import Dispatcher

logger = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    redis: redis.Redis  # sync client: store and RQ calls, always through the thread pool
    aredis: AsyncRedis  # async client: blocking event reads on the event loop
    store: JobStore
    dispatch: Dispatcher
    quotas: Quotas

    @classmethod
    def open(cls, settings: Settings) -> Gateway:
        """Two pools (services/redis_clients.py): plain commands from the thread pool, and the event loop's
        blocking reads, each of which holds a connection for up to one `MAX_BLOCK_S` block."""
        url = settings.redis.url
        client = redis_clients.sync_client(
            url, name="oprover-gateway", max_connections=redis_clients.GATEWAY_SYNC_CONNECTIONS
        )
        return cls(
            settings=settings,
            redis=client,
            aredis=redis_clients.async_client(
                url,
                name="oprover-gateway-wait",
                max_connections=settings.redis.gateway_connections,
                block_s=redis_clients.MAX_BLOCK_S,
            ),
            store=JobStore(client, job_ttl_s=settings.prove.job_ttl_s),
            dispatch=Dispatcher(client, settings),
            quotas=Quotas(client, settings.quota),
        )

    async def close(self) -> None:
        await self.aredis.aclose()
        self.redis.close()


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


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
