"""The gateway: `create_app(settings)` builds the FastAPI app; the lifespan opens and closes its clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import batch, chat, health, models, prove, verify
from api.deps import Serving
from api.errors import install_error_handlers
from api.gateway import Gateway
from api.input_limits import BodySizeLimit
from api.relay import GeneratorRelay
from services.settings import Settings
from workers.callbacks import CallbackDelivery

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api.keys:
            logger.warning("OPROVER_API_KEYS is empty: the API is open to anyone who can reach it")
        if settings.generator.url is None:
            logger.warning("OPROVER_GENERATOR_URL is not set: /readyz will report the generator as down")
        app.state.gateway = Gateway.open(settings)
        app.state.serving = Serving.build(app.state.gateway)  # once: routes reach it through api/deps.py
        app.state.relay = GeneratorRelay(settings)
        callbacks = CallbackDelivery(app.state.gateway.aredis, app.state.gateway.store, settings.callback)
        callbacks.start()
        try:
            yield
        finally:
            await callbacks.stop()
            await app.state.relay.aclose()
            await app.state.gateway.close()

    app = FastAPI(
        title="oprover-serve",
        version="0.1.0",
        summary="Send a Lean 4 theorem, get back a proof that Lean has checked.",
        lifespan=lifespan,
    )
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Location", "x-oprover-job-id"],
        )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api.max_body_bytes)  # api/input_limits.py
    app.include_router(batch.router)  # before prove's: `/v1/prove/batch` is not a job id
    app.include_router(prove.router)
    app.include_router(chat.router)
    app.include_router(verify.router)
    app.include_router(models.router)
    app.include_router(health.router)
    return app
