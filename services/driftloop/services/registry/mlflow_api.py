"""A read-only MLflow model-registry surface, so MLflow clients and tools list versions and resolve aliases.

Its endpoints are plain functions, which FastAPI runs in its thread pool, so
their database reads never hold up the event loop.

The paths and JSON shapes are MLflow's REST API 2.0 (``/api/2.0/mlflow/...``),
the ones ``MlflowClient`` calls for ``search_registered_models``,
``get_registered_model``, ``search_model_versions``, ``get_model_version``
and ``get_model_version_by_alias``. Nothing here changes the registry: MLflow's
writing calls find no route (404), as driftloop's own API and the loop are
how versions and aliases move.

Mapping: a driftloop model is a registered model; its integer version is the
MLflow version (as a string, as MLflow has it); ``source`` is the artifact the
version serves; every alias, the system's and the operators', is an MLflow
alias; the status maps onto MLflow's old stages (champion ``Production``,
awaiting approval ``Staging``, replaced or rolled back ``Archived``). The
semantic version, the gate's verdict and the artifact checksum are tags.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from driftloop.http import READ, stored_parameters
from driftloop.services.registry.store import ModelVersion, Registry

router = APIRouter(prefix="/api/2.0/mlflow", tags=["mlflow"], dependencies=[READ, Depends(stored_parameters)])

STAGES = {
    "champion": "Production",
    "challenger": "Staging",
    "rolling_out": "Staging",
    "archived": "Archived",
    "rolled_back": "Archived",
}

#: MLflow's own default page size for both searches.
DEFAULT_PAGE = 100


class MlflowError(Exception):
    """An error as MLflow's REST API reports it: its code and message, the status MLflow would use."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def not_found(message: str) -> MlflowError:
    return MlflowError("RESOURCE_DOES_NOT_EXIST", message, 404)


def invalid(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message, 400)


_CLAUSE = re.compile(r"""^\s*(tags?\.(?:`[^`]+`|[\w.]+)|\w+)\s*(=|!=|LIKE|ILIKE)\s*(['"])(.*)\3\s*$""", re.IGNORECASE)


def name_filter(filter_string: str | None, fields: Sequence[str] = ("name",)) -> Callable[[dict[str, str]], bool]:
    """A predicate for MLflow's filter string on names (or run ids) and tags: clauses joined by AND.

    A row's tags are its ``tag.<key>`` entries. A tag a row lacks is unequal
    to any value, which is how MLflow's own client asks for "not a prompt"
    (``tag.`mlflow.prompt.is_prompt` != 'true'``) on every search.

    >>> keep = name_filter("name LIKE 'cred%' AND name != 'credit-old'")
    >>> keep({"name": "credit"}), keep({"name": "credit-old"}), keep({"name": "churn"})
    (True, False, False)
    >>> name_filter("name ILIKE '%IT'")({"name": "credit"}), name_filter("")({"name": "x"})
    (True, True)
    >>> prompts = name_filter("tag.`mlflow.prompt.is_prompt` != 'true'")
    >>> prompts({"name": "m"}), prompts({"name": "m", "tag.mlflow.prompt.is_prompt": "true"})
    (True, False)
    >>> name_filter("creation_timestamp = '1'")
    Traceback (most recent call last):
    ...
    driftloop.services.registry.mlflow_api.MlflowError: unsupported filter clause: creation_timestamp = '1'
    """
    tests: list[Callable[[dict[str, str]], bool]] = []
    for clause in re.split(r"\s+AND\s+", filter_string or "", flags=re.IGNORECASE):
        if not clause.strip():
            continue
        match = _CLAUSE.match(clause)
        field = match[1] if match else ""
        if field.lower().startswith("tag"):
            field = "tag." + field.partition(".")[2].strip("`")
        elif field not in fields:
            raise invalid(f"unsupported filter clause: {clause.strip()}")
        assert match is not None
        op, value = match[2].upper(), match[4]
        tests.append(_clause(field, op, value))
    return lambda row: all(test(row) for test in tests)


def _clause(field: str, op: str, value: str) -> Callable[[dict[str, str]], bool]:
    if op in {"LIKE", "ILIKE"}:
        pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in value)
        regex = re.compile(f"^{pattern}$", re.IGNORECASE if op == "ILIKE" else 0)
        return lambda row: regex.match(row.get(field, "")) is not None
    if op == "=":
        return lambda row: row.get(field) == value
    return lambda row: row.get(field) != value


def page(items: list[Any], max_results: int, page_token: str | None) -> tuple[list[Any], str | None]:
    """One page of ``items`` and the token of the next; the token is the offset, as a string.

    >>> page([1, 2, 3], 2, None), page([1, 2, 3], 2, "2")
    (([1, 2], '2'), ([3], None))
    """
    try:
        start = int(page_token) if page_token else 0
    except ValueError as exc:
        raise invalid(f"invalid page_token {page_token!r}") from exc
    end = start + max_results
    return items[start:end], (str(end) if end < len(items) else None)


def millis(moment: datetime) -> int:
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


def version_tags(row: ModelVersion) -> dict[str, str]:
    tags = {"driftloop.status": row.status, "driftloop.correlation_id": row.correlation_id}
    if row.semver:
        tags["driftloop.semver"] = row.semver
    if row.artifact_sha256:
        tags["driftloop.artifact_sha256"] = row.artifact_sha256
    if row.gate:
        tags["driftloop.gate"] = "passed" if row.gate.get("passed") else "failed"
    return tags


def model_version(row: ModelVersion, aliases: dict[str, int]) -> dict[str, Any]:
    tags = version_tags(row)
    return {
        "name": row.model_name,
        "version": str(row.version),
        "creation_timestamp": millis(row.created_at),
        "last_updated_timestamp": millis(row.created_at),
        "current_stage": STAGES.get(row.status, "None"),
        "description": "",
        "source": row.artifact_uri,
        "run_id": row.run_id,
        "status": "READY",
        "tags": [{"key": key, "value": value} for key, value in tags.items()],
        "aliases": sorted(alias for alias, version in aliases.items() if version == row.version),
    }


def registered_model(name: str, versions: list[ModelVersion], aliases: dict[str, int]) -> dict[str, Any]:
    latest: dict[str, ModelVersion] = {}
    for row in versions:
        latest[STAGES.get(row.status, "None")] = row
    return {
        "name": name,
        "creation_timestamp": millis(versions[0].created_at),
        "last_updated_timestamp": millis(versions[-1].created_at),
        "description": "",
        "latest_versions": [model_version(row, aliases) for row in latest.values()],
        "tags": [],
        "aliases": [{"alias": alias, "version": str(version)} for alias, version in sorted(aliases.items())],
    }


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def _model(registry: Registry, name: str) -> dict[str, Any]:
    versions = registry.versions(name)
    if not versions:
        raise not_found(f"Registered Model with name={name} not found")
    return registered_model(name, versions, registry.aliases(name))


def _answer(build: Callable[[], dict[str, Any]]) -> JSONResponse:
    try:
        return JSONResponse(build())
    except MlflowError as exc:
        return JSONResponse({"error_code": exc.code, "message": exc.message}, status_code=exc.status)


MaxResults = Annotated[int, Query(ge=1, le=10_000)]


@router.get("/registered-models/search")
def search_registered_models(
    request: Request,
    filter: str | None = None,
    max_results: MaxResults = DEFAULT_PAGE,
    page_token: str | None = None,
) -> JSONResponse:
    registry = _registry(request)

    def build() -> dict[str, Any]:
        keep = name_filter(filter)
        names = [name for name in registry.models() if keep({"name": name})]
        chosen, token = page(names, max_results, page_token)
        body: dict[str, Any] = {"registered_models": [_model(registry, name) for name in chosen]}
        return {**body, "next_page_token": token} if token else body

    return _answer(build)


@router.get("/registered-models/get")
def get_registered_model(request: Request, name: str) -> JSONResponse:
    registry = _registry(request)
    return _answer(lambda: {"registered_model": _model(registry, name)})


@router.get("/model-versions/search")
def search_model_versions(
    request: Request,
    filter: str | None = None,
    max_results: MaxResults = DEFAULT_PAGE,
    page_token: str | None = None,
) -> JSONResponse:
    registry = _registry(request)

    def build() -> dict[str, Any]:
        keep = name_filter(filter, ("name", "run_id"))
        found = [
            model_version(row, aliases)
            for name in registry.models()
            for aliases in [registry.aliases(name)]
            for row in reversed(registry.versions(name))
            if keep({"name": name, "run_id": row.run_id, **{f"tag.{k}": v for k, v in version_tags(row).items()}})
        ]
        chosen, token = page(found, max_results, page_token)
        return {"model_versions": chosen, **({"next_page_token": token} if token else {})}

    return _answer(build)


@router.get("/model-versions/get")
def get_model_version(request: Request, name: str, version: str) -> JSONResponse:
    registry = _registry(request)

    def build() -> dict[str, Any]:
        row = next((v for v in registry.versions(name) if str(v.version) == version), None)
        if row is None:
            raise not_found(f"Model Version (name={name}, version={version}) not found")
        return {"model_version": model_version(row, registry.aliases(name))}

    return _answer(build)


@router.get("/registered-models/alias")
def get_model_version_by_alias(request: Request, name: str, alias: str) -> JSONResponse:
    registry = _registry(request)

    def build() -> dict[str, Any]:
        aliases = registry.aliases(name)
        if alias not in aliases:
            raise not_found(f"Registered model alias {alias} not found.")
        row = next(v for v in registry.versions(name) if v.version == aliases[alias])
        return {"model_version": model_version(row, aliases)}

    return _answer(build)
