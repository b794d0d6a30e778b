"""The gateway's shared resources and the small typed dependencies routes reach them through."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

import redis
import redis.asyncio
from fastapi import Depends, Request

from services import redis_clients
from services.errors import RequestError
from services.settings import Settings
from services.store import JobStore
from workers.dispatch import Dispatcher

logger = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    redis: redis.Redis  # sync client: store and RQ calls, always through the thread pool
    aredis: redis.asyncio.Redis  # async client: blocking event reads on the event loop
    store: JobStore
    dispatch: Dispatcher

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
        )

    async def close(self) -> None:
        await self.aredis.aclose()
        self.redis.close()


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


class Unauthorized(RequestError):
    status_code = 401
    type = "authentication_error"


def require_api_key(request: Request, gateway: GatewayDep) -> None:
    """Bearer-key check for /v1; open when no keys are configured (the gateway warns at start)."""
    allowed = gateway.settings.api.keys
    if not allowed:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip(), key) for key in allowed):
        raise Unauthorized("missing or invalid API key (send `Authorization: Bearer <key>`)", code="invalid_api_key")
