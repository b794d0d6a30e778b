"""Which verify workers are alive and which Lean they serve.

Each verify worker re-announces itself every few seconds: a record with its versions (expiring) and its name
in a sorted set scored by that expiry. Readers (the gateway's version routing, /readyz, /v1/models) drop the
expired names and read the rest in two round trips, instead of scanning the keyspace on every request.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from services import keys


def announce(client: redis.Redis, name: str, info: dict[str, Any], *, ttl_s: int = keys.LEAN_WORKER_TTL_S) -> None:
    with client.pipeline() as pipe:
        pipe.set(keys.lean_worker_key(name), json.dumps(info), ex=ttl_s)
        pipe.zadd(keys.LEAN_WORKERS, {name: time.time() + ttl_s})
        pipe.execute()


def withdraw(client: redis.Redis, name: str) -> None:
    with client.pipeline() as pipe:
        pipe.delete(keys.lean_worker_key(name))
        pipe.zrem(keys.LEAN_WORKERS, name)
        pipe.execute()


def live(client: redis.Redis) -> list[dict[str, Any]]:
    client.zremrangebyscore(keys.LEAN_WORKERS, "-inf", time.time())
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in client.zrange(keys.LEAN_WORKERS, 0, -1)]
    if not names:
        return []
    records = client.mget([keys.lean_worker_key(name) for name in names])
    return [json.loads(raw) for raw in records if raw]
