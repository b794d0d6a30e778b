"""The gateway's shared resources: its Redis clients, the job store, the dispatcher and the quotas.

Opened once in the app's lifespan (api/app.py) and closed when it ends; the serving classes (api/serving_*.py)
are built over them, and routes reach both through api/deps.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.asyncio import Redis as AsyncRedis

from api.quotas import Quotas
from services import redis_clients
from services.settings import Settings
from services.store import JobStore
from workers.dispatch import Dispatcher


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
