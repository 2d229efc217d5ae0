"""What every service's HTTP face has in common: health, readiness, metrics, input limits, who may call.

``/healthz`` says the process is alive; ``/readyz`` says its dependencies
(broker, database, loaded model) are usable, so a load balancer or
``driftloop up`` only sends traffic to a replica that can serve it.

Every request body is held to the limits in ``DriftloopSettings``: its size
while it streams in (413 past ``max_body_bytes``, FastAPI's own limit), then,
before any endpoint or parser sees it, its JSON nesting (422 past
``max_json_depth``) and its longest array (413 past ``max_batch``).

Every endpoint but health, readiness and metrics declares the least role it
needs with ``require(role)``: a mutating one always wants an
``Authorization: Bearer`` token (401 without, 403 below the role), a reading
one (``require(Role.viewer)``) only when ``read_access`` is ``viewer``. The
role shows in the OpenAPI document as the scope of the bearer requirement,
so a client (or a test) can read what each operation needs.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, Generic, TypeVar

from aiokafka.errors import KafkaError
from fastapi import FastAPI, HTTPException, Query, Request, Response, Security, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.params import Security as SecurityParam
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftloop.auth import Identity, Role, allows, token_hash, token_id_of
from driftloop.bearer import JwtSettings, JwtVerifier, TokenRefused
from driftloop.db import TokenStore, make_engine
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


class Gatekeeper:
    """Checks bearer tokens: API tokens against the shared token table, JWTs against the provider's key.

    An API token's answer is trusted for ``cache_seconds``: the cache spares
    the database a read per request, and bounds how long a revoked token
    still works on a service that saw it a moment before. The engine is
    opened on the first check, so a service nobody calls with a token never
    touches the database. A JWT is checked afresh each time (a signature
    check costs no round trip), so it stops working the moment it expires.
    """

    def __init__(self, settings: DriftloopSettings) -> None:
        self.settings = settings
        self.reads_open = settings.read_access == "open"
        self._store: TokenStore | None = None
        self._known: dict[str, tuple[Identity, float]] = {}
        jwt_settings = JwtSettings(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            role_claim=settings.jwt_role_claim,
            secret=settings.jwt_secret.get_secret_value(),
            public_key_file=settings.jwt_public_key_file,
            jwks_file=settings.jwt_jwks_file,
        )
        self._jwt = JwtVerifier(jwt_settings) if jwt_settings.enabled else None

    def _lookup(self, token: str) -> Identity | None:
        if self._store is None:
            self._store = TokenStore(make_engine(self.settings.db_url))
        return self._store.identify(token)

    async def identify(self, token: str) -> Identity | None:
        """The token's identity; None for an unknown API token. A refused JWT raises ``TokenRefused``."""
        if self._jwt is not None and token_id_of(token) is None:
            return self._jwt.identify(token)
        key = token_hash(token)
        known = self._known.get(key)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        identity = await asyncio.to_thread(self._lookup, token)
        if identity is None:
            self._known.pop(key, None)
        else:
            self._known[key] = (identity, time.monotonic() + self.settings.token_cache_seconds)
        return identity

    def close(self) -> None:
        if self._store is not None:
            self._store.engine.dispose()


_bearer = HTTPBearer(
    auto_error=False,
    description="An API token (`driftloop token create --role ROLE`) or, when configured, the identity provider's JWT.",
)


def require(role: Role) -> Any:
    """A dependency that lets a request through only with a token of ``role`` or above; it yields the identity.

    ``Role.viewer`` marks a reading endpoint: open (identity None) unless the
    service's ``read_access`` asks for a token.
    """

    async def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
    ) -> Identity | None:
        gate: Gatekeeper = request.app.state.gatekeeper
        if role is Role.viewer and gate.reads_open:
            return None
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"needs a bearer token of role {role}", challenge)
        try:
            identity = await gate.identify(credentials.credentials)
        except TokenRefused as exc:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), challenge) from exc
        if identity is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked token", challenge)
        if not allows(identity.role, role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"token {identity.name!r} has role {identity.role}, this needs {role}"
            )
        return identity

    security: SecurityParam = Security(check, scopes=[role.value])
    return security


#: The dependency of every reading endpoint.
READ = require(Role.viewer)

#: The most rows one listing answers with, as MLflow bounds its ``max_results``. Past it, or below 1, a
#: ``limit`` is a 422 naming it: unbounded, a 2**70 reached the database, which cannot hold it (a 500).
MAX_LIMIT = 10_000

#: The ``limit`` query parameter of every listing.
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"How many rows, newest first; at most {MAX_LIMIT}.")]


#: Why a NUL character is refused where the database would see it: PostgreSQL's text cannot hold one, and its
#: driver raises before the query runs (a 500), while SQLite would have stored it.
NUL_REFUSED = "holds a NUL character, which the database cannot store"


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError(NUL_REFUSED)
    return value


#: A body's text that a service writes to its database (a reason in the audit log).
StoredText = Annotated[str, AfterValidator(_storable)]


async def stored_parameters(request: Request) -> None:
    """Refuses a request whose path or query holds a NUL, on routers whose endpoints look their parameters up
    in the database: a 422 naming the parameter."""
    values = [("path", request.path_params.items()), ("query", request.query_params.multi_items())]
    errors = [
        {"type": "value_error", "loc": (where, name), "msg": NUL_REFUSED, "input": value}
        for where, pairs in values
        for name, value in pairs
        if "\x00" in value
    ]
    if errors:
        raise RequestValidationError(errors)


M = TypeVar("M", bound=BaseModel)


class JsonBody(Generic[M]):
    """A request body read by pydantic's own JSON parser, in one pass with its validation, for a hot endpoint.

    FastAPI parses a body with Python's ``json`` and then validates the
    objects it built: for a 100-row prediction request that is three times
    what ``model_validate_json`` costs. Use the instance as the parameter's
    dependency and ``openapi`` as the route's ``openapi_extra``, so the
    document still shows the body (FastAPI cannot see a body it does not
    parse). Errors are FastAPI's own 422, each located under ``body``. The
    model's schema must be self-contained (no nested models), since the
    document inlines it.
    """

    def __init__(self, model: type[M]) -> None:
        self.model = model
        schema = model.model_json_schema()
        if "$defs" in schema:
            raise ValueError(f"{model.__name__} nests models; its inlined schema could not resolve them")
        self.openapi = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

    async def __call__(self, request: Request) -> M:
        try:
            return self.model.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from exc


def _json_number(value: float) -> float | str:
    """A float as JSON can hold it: ``Infinity`` and ``NaN``, which Python's parser reads from a body, as text."""
    return value if math.isfinite(value) else json.dumps(value)


def service_app(
    name: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    readiness: ReadinessCheck,
    settings: DriftloopSettings,
    **kwargs: Any,
) -> FastAPI:
    gatekeeper = Gatekeeper(settings)

    @asynccontextmanager
    async def guarded(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with lifespan(app):
                yield
        finally:
            gatekeeper.close()

    app = FastAPI(title=f"driftloop {name}", lifespan=guarded, max_body_size=settings.max_body_bytes, **kwargs)
    app.add_middleware(JsonLimits, max_depth=settings.max_json_depth, max_items=settings.max_batch)
    app.state.gatekeeper = gatekeeper

    @app.exception_handler(RequestValidationError)
    async def unprocessable(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each refused input and cannot render an Infinity a body sent: a 500.
        detail = jsonable_encoder(exc.errors(), custom_encoder={float: _json_number})
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

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
