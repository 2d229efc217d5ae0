"""What every service's HTTP face has in common: health, readiness, metrics.

``/healthz`` says the process is alive; ``/readyz`` says its dependencies
(broker, database, loaded model) are usable, so a load balancer or
``driftloop up`` only sends traffic to a replica that can serve it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

#: Each check is True when fine; False, or a string saying why, when not.
ReadinessCheck = Callable[[], Awaitable[Mapping[str, bool | str]]]


def service_app(
    name: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    readiness: ReadinessCheck,
    **kwargs: Any,
) -> FastAPI:
    app = FastAPI(title=f"driftloop {name}", lifespan=lifespan, **kwargs)

    @app.exception_handler(KafkaError)
    async def broker_refused(_request: Request, exc: KafkaError) -> JSONResponse:
        # Nothing of the request is acknowledged as a whole: the caller may retry it (event ids dedupe).
        return JSONResponse({"detail": f"the broker did not take the records: {exc!r}"}, status_code=503)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": name}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        checks = await readiness()
        ready = all(check is True for check in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
