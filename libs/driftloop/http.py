"""What every service's HTTP face has in common: health, readiness, metrics, input limits.

``/healthz`` says the process is alive; ``/readyz`` says its dependencies
(broker, database, loaded model) are usable, so a load balancer or
``driftloop up`` only sends traffic to a replica that can serve it.

Every request body is held to the limits in ``DriftloopSettings``: its size
while it streams in (413 past ``max_body_bytes``, FastAPI's own limit), then,
before any endpoint or parser sees it, its JSON nesting (422 past
``max_json_depth``) and its longest array (413 past ``max_batch``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftloop.limits import InputRefused, check_json
from driftloop.settings import DriftloopSettings

#: Each check is True when fine; False, or a string saying why, when not.
ReadinessCheck = Callable[[], Awaitable[Mapping[str, bool | str]]]


#: Bodies up to this size are measured on the event loop; larger ones in a thread, so the loop keeps serving.
_INLINE_BODY_BYTES = 64 * 1024


class JsonLimits:
    """Refuses a request body nested too deep or with too long an array before the app reads it.

    The body is read here (under the size limit outside) and handed on
    unchanged, so endpoints that parse it themselves and FastAPI's models
    are covered alike.
    """

    def __init__(self, app: ASGIApp, max_depth: int, max_items: int) -> None:
        self.app = app
        self.max_depth = max_depth
        self.max_items = max_items

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away: nothing to check, the app sees the disconnect.
                await self.app(scope, _replay(b"", message, receive), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            if len(body) <= _INLINE_BODY_BYTES:
                check_json(body, max_depth=self.max_depth, max_items=self.max_items)
            else:
                await asyncio.to_thread(check_json, body, max_depth=self.max_depth, max_items=self.max_items)
        except InputRefused as exc:
            detail = [{"loc": ["body"], "msg": str(exc), "type": "value_error"}] if exc.status == 422 else str(exc)
            await JSONResponse({"detail": detail}, status_code=exc.status)(scope, receive, send)
            return
        await self.app(scope, _replay(body, None, receive), send)


def _replay(body: bytes, then: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that gives the whole body (or ``then``) once, and the client's messages after it."""
    first: list[Message] = [then or {"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return first.pop() if first else await receive()

    return replayed


def service_app(
    name: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    readiness: ReadinessCheck,
    settings: DriftloopSettings,
    **kwargs: Any,
) -> FastAPI:
    app = FastAPI(title=f"driftloop {name}", lifespan=lifespan, max_body_size=settings.max_body_bytes, **kwargs)
    app.add_middleware(JsonLimits, max_depth=settings.max_json_depth, max_items=settings.max_batch)

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
