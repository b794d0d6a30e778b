"""Every Redis client oprover-serve creates, built here with its timeouts and pool size chosen on purpose.

redis-py 8.1 (pinned) gives a client three defaults that break this service at real latencies:
- a 5 s socket timeout on every read (`redis/_defaults.py`), so a BLPOP or XREAD BLOCK longer than 5 s fails
  with `Timeout reading from ...` although Redis was about to answer;
- a pool capped at 100 connections when `max_connections=None`, past which a thread gets
  `MaxConnectionsError: Too many connections` at once instead of waiting for a free connection;
- 10 retries of a command that timed out, so a Redis that stopped answering holds a request for minutes.

The rules here instead:
- A plain command (answered in milliseconds) times out after `COMMAND_TIMEOUT_S`: a dead or black-holed Redis
  fails the request with a clear error rather than hanging it.
- A client that also runs blocking reads is built for the longest block it asks for: its socket timeout is that
  block plus `BLOCK_MARGIN_S`, so a block always ends with Redis's own answer (nil on timeout), never with a
  socket timeout. Callers cut long waits into blocks of at most `MAX_BLOCK_S` (a slice is also when a waiting
  gateway notices a gone client or an expired job), which keeps that timeout short.
- Pools are `BlockingConnectionPool`s of a stated size: a thread that finds every connection busy waits up to
  `POOL_WAIT_S` for one. Sizes follow from what the process runs (`worker_pool_size`), and docs/operations.md
  adds them up so an operator can size Redis `maxclients`.
- A dropped connection is retried twice with a short backoff (a Redis restart, an idle connection a proxy
  closed); a timeout is not retried: it means Redis is not answering, and a retry would only multiply the wait
  (each retry reconnects and times out again in its handshake: 45 s for one command with redis-py's defaults).
- Every connection names itself (`CLIENT SETNAME`), so `redis-cli client list` shows who holds what.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

# A plain command answers in milliseconds; this long means Redis is gone or wedged.
COMMAND_TIMEOUT_S = 5.0
# Opening a TCP connection to Redis.
CONNECT_TIMEOUT_S = 5.0
# Socket timeout of a blocking read = its block + this margin (RQ uses the same 10 s margin for its dequeue).
BLOCK_MARGIN_S = 10.0
# The longest single block the gateway asks for; longer waits loop over blocks this long.
MAX_BLOCK_S = 15.0
# The longest block a worker process asks for: RQ's dequeue, cut short so a stop request is seen quickly.
WORKER_BLOCK_S = 2.0
# How long a thread or task waits for a pooled connection before the call fails.
POOL_WAIT_S = 20.0
# A connection idle this long is PINGed before use, so a connection a restart broke is replaced, not used.
HEALTH_CHECK_INTERVAL_S = 30
# Retries of a command after its connection dropped (redis-py's default: 10, on timeouts as well).
RETRIES = 2

# Connections a worker process holds besides one per job slot: RQ's dequeue loop, its pub/sub listener, the
# scheduler, the heartbeat thread, the cancellation watcher, the main thread's announcements, and spare.
WORKER_EXTRA_CONNECTIONS = 8
# The gateway's synchronous client serves its thread pool (anyio's default: 40 threads) plus spare.
GATEWAY_SYNC_CONNECTIONS = 48


# Only a dropped connection is retried (see above); the asyncio client raises the same exception classes.
_RETRIED = (redis.exceptions.ConnectionError,)


def socket_timeout_for(block_s: float) -> float:
    """The socket timeout of a client whose longest blocking read is `block_s` (0: no blocking reads)."""
    return max(COMMAND_TIMEOUT_S, block_s + BLOCK_MARGIN_S) if block_s > 0 else COMMAND_TIMEOUT_S


def worker_pool_size(concurrency: int) -> int:
    """Connections of a worker process running `concurrency` jobs at once: one per job, plus its own threads."""
    return concurrency + WORKER_EXTRA_CONNECTIONS


def _pool_options(*, name: str, max_connections: int, block_s: float) -> dict[str, Any]:
    """What every pool here is built with, sync or async (the module's docstring says why each)."""
    return {
        "max_connections": max_connections,
        "timeout": POOL_WAIT_S,
        "socket_timeout": socket_timeout_for(block_s),
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "client_name": name,
    }


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.1, cap=1.0)


def sync_client(url: str, *, name: str, max_connections: int, block_s: float = 0) -> redis.Redis:
    """A thread-safe client for `max_connections` concurrent users whose longest blocking read is `block_s`."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        **_pool_options(name=name, max_connections=max_connections, block_s=block_s),
        retry=Retry(_backoff(), RETRIES, supported_errors=_RETRIED),
    )
    return redis.Redis.from_pool(pool)  # the client owns the pool: close() disconnects it


def async_client(url: str, *, name: str, max_connections: int, block_s: float = 0) -> redis.asyncio.Redis:
    """The asyncio counterpart of `sync_client`, for the gateway's event loop."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        **_pool_options(name=name, max_connections=max_connections, block_s=block_s),
        retry=redis.asyncio.retry.Retry(_backoff(), RETRIES, supported_errors=_RETRIED),
    )
    return redis.asyncio.Redis.from_pool(pool)  # aclose() disconnects the pool
