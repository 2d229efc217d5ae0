"""Governance on the registry, on a real broker and real databases: approvals and their deadline, semantic
versions, operators' aliases, JWT bearer tokens, the MLflow-compatible surface, and an approval end to end."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from driftloop.auth import Role
from driftloop.bus import Bus
from driftloop.cli.main import app as cli
from driftloop.config import DriftloopConfig, load_config
from driftloop.contracts import (
    DriftDetected,
    ModelPromoted,
    ModelVersionRegistered,
    PromotionRejected,
    RolloutCompleted,
    parse_internal,
    utcnow,
)
from driftloop.services.deployment.main import create_app as deployment_app
from driftloop.services.deployment.settings import DeploymentSettings
from driftloop.services.registry.main import create_app
from driftloop.services.registry.settings import RegistrySettings
from driftloop.settings import DriftloopSettings
from tests.support import APPLICATION, announced_run, issue_token, read_topic, running, serving

REPO = Path(__file__).resolve().parents[2]


def _config(**promotion: object) -> DriftloopConfig:
    config = load_config(REPO / "driftloop.yaml")
    return config.model_copy(update={"promotion": config.promotion.model_copy(update=promotion)})


@pytest.fixture(params=["sqlite", "postgres"])
def registry_settings(request: pytest.FixtureRequest, settings: DriftloopSettings) -> RegistrySettings:
    url = settings.db_url if request.param == "sqlite" else request.getfixturevalue("postgres_db_url")
    return RegistrySettings(**{**settings.model_dump(), "database_url": url, "approval_check_seconds": 0.2})


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _events(settings: DriftloopSettings, topic: str, count: int, timeout: float = 30.0) -> list[object]:
    return [parse_internal(r.value) for r in await read_topic(settings, topic, count, timeout)]


async def test_an_approval_end_to_end_drift_run_gate_pending_approved_rolled_out(
    registry_settings: RegistrySettings, bus: Bus
) -> None:
    """Drift, run, gate passed, pending, approved by an approver, rolled out by deployment.

    Training and monitoring are stood in for by the events they publish (the drift, the run); the
    registry and deployment run for real on the broker and the database.
    """
    config = _config(require_approval=True)
    deployment = DeploymentSettings(**{**registry_settings.model_dump(), "service": "deployment"})
    big_loan = {**APPLICATION, "loan": 190_000.0}
    async with (
        running(create_app(registry_settings, config)) as registry,
        running(deployment_app(deployment, config)) as serving_client,
    ):
        approver = await asyncio.to_thread(issue_token, registry_settings, Role.approver, "bob")
        operator = await asyncio.to_thread(issue_token, registry_settings, Role.operator, "olga")
        await bus.publish(announced_run(registry_settings, "first", flip=False, seed=1), "loan-approval")
        await _events(registry_settings, "registry.events", 1)
        first = await registry.post(
            "/v1/models/loan-approval/versions/1/approve", json={"reason": "first model"}, headers=_bearer(approver)
        )
        assert first.status_code == 200 and first.json()["version"] == 1

        drift = DriftDetected(
            model_name="loan-approval",
            model_version=1,
            kind="concept",
            detector="cusum",
            observations=900,
            window=200,
            accuracy_before=0.95,
            accuracy_after=0.2,
            change_point_time=utcnow(),
        )
        await bus.publish(drift, "loan-approval")
        await bus.publish(
            announced_run(registry_settings, "after-drift", flip=True, seed=2, correlation=drift), "loan-approval"
        )
        events = await _events(registry_settings, "registry.events", 3)
        registered = events[2]
        assert isinstance(registered, ModelVersionRegistered) and registered.version == 2
        assert registered.correlation_id == drift.correlation_id

        pending = (await registry.get("/v1/approvals")).json()
        assert [(p["model_name"], p["version"], p["gate"]["passed"]) for p in pending] == [("loan-approval", 2, True)]
        assert pending[0]["correlation_id"] == drift.correlation_id and pending[0]["due_at"] is None
        versions = (await registry.get("/v1/models/loan-approval/versions")).json()
        assert [(v["version"], v["status"], v["aliases"]) for v in versions][1] == (2, "challenger", ["challenger"])
        served = await serving_client.post("/v1/models/loan-approval/predict", json={"instances": [big_loan]})
        assert served.json()["model_version"] == 1, "a pending version must not be served"

        by_operator = await registry.post(
            "/v1/models/loan-approval/versions/2/approve", json={"reason": "looks fine"}, headers=_bearer(operator)
        )
        no_reason = await registry.post(
            "/v1/models/loan-approval/versions/2/approve", json={"reason": ""}, headers=_bearer(approver)
        )
        assert (by_operator.status_code, no_reason.status_code) == (403, 422)
        approved = await registry.post(
            "/v1/models/loan-approval/versions/2/approve",
            json={"reason": "the new regime is real", "actor": "mallory"},
            headers=_bearer(approver),
        )
        assert approved.status_code == 200 and approved.json()["version"] == 2
        assert approved.json()["aliases"] == ["champion"]

        events = await _events(registry_settings, "registry.events", 4)
        promoted = events[3]
        assert isinstance(promoted, ModelPromoted)
        assert (promoted.version, promoted.previous_version, promoted.actor) == (2, 1, "bob")
        assert promoted.correlation_id == drift.correlation_id
        assert promoted.decision is not None and promoted.decision.model_dump(mode="json") == pending[0]["gate"]

        rollouts: list[object] = []
        while not any(isinstance(r, RolloutCompleted) and r.version == 2 for r in rollouts):
            rollouts = await _events(registry_settings, "deployment.events", len(rollouts) + 1)
        answer = await serving_client.post("/v1/models/loan-approval/predict", json={"instances": [big_loan]})
        assert answer.json()["model_version"] == 2 and answer.json()["predictions"] == [0]

        audit = (await registry.get("/v1/audit", params={"model": "loan-approval"})).json()
        assert (await registry.get("/v1/approvals")).json() == []
    top = audit[0]
    assert (top["action"], top["version"], top["actor"], top["actor_role"]) == ("promoted", 2, "bob", "approver")
    assert top["reason"] == "approved: the new regime is real" and top["decision"] == pending[0]["gate"]
    assert [a["action"] for a in audit] == [
        "promoted",
        "awaiting_approval",
        "registered",
        "promoted",
        "awaiting_approval",
        "registered",
    ]


async def test_rejecting_a_pending_version_ends_the_turn_unresolved_and_the_cli_speaks_for_the_approver(
    registry_settings: RegistrySettings, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    async with serving(create_app(registry_settings, _config(require_approval=True))) as url:
        approver = await asyncio.to_thread(issue_token, registry_settings, Role.approver, "bob")
        monkeypatch.setenv("DRIFTLOOP_REGISTRY_URL", url)
        monkeypatch.setenv("DRIFTLOOP_TOKEN", approver)
        await bus.publish(announced_run(registry_settings, "one", flip=False, seed=1), "loan-approval")
        await bus.publish(announced_run(registry_settings, "two", flip=True, seed=2), "loan-approval")
        await _events(registry_settings, "registry.events", 2)

        listed = await asyncio.to_thread(runner.invoke, cli, ["approvals", "--json"])
        approve = await asyncio.to_thread(
            runner.invoke, cli, ["approve", "loan-approval", "1", "--reason", "first model"]
        )
        reject = await asyncio.to_thread(
            runner.invoke, cli, ["reject", "loan-approval", "2", "--reason", "labels look wrong"]
        )
        again = await asyncio.to_thread(runner.invoke, cli, ["approve", "loan-approval", "2", "--reason", "oops"])
        events = await _events(registry_settings, "registry.events", 4)
    # Both passed the gate with no champion to beat, so both wait.
    assert listed.exit_code == 0 and [p["version"] for p in json.loads(listed.output)] == [1, 2]
    assert approve.exit_code == 0 and "loan-approval v1 approved and champion" in approve.output
    assert reject.exit_code == 0 and "loan-approval v2 rejected" in reject.output
    assert again.exit_code == 1 and "409" in again.output and "not awaiting approval" in again.output
    rejected = events[-1]
    assert isinstance(rejected, PromotionRejected) and (rejected.version, rejected.champion_version) == (2, 1)
    assert not rejected.decision.passed and rejected.decision.reason == "rejected by bob: labels look wrong"


@pytest.mark.parametrize("on_timeout", ["reject", "escalate"])
async def test_a_version_waiting_past_the_approval_timeout_is_rejected_or_escalated_once(
    registry_settings: RegistrySettings, bus: Bus, on_timeout: str
) -> None:
    config = _config(
        require_approval=True, approval_timeout=timedelta(milliseconds=300), on_approval_timeout=on_timeout
    )
    escalations = REGISTRY.get_sample_value("driftloop_approval_escalations_total", {"model": "loan-approval"}) or 0.0
    async with running(create_app(registry_settings, config)) as client:
        await bus.publish(announced_run(registry_settings, "slow", flip=False, seed=1), "loan-approval")
        if on_timeout == "reject":
            events = await _events(registry_settings, "registry.events", 2)
            rejected = events[1]
            assert isinstance(rejected, PromotionRejected)
            assert rejected.decision.reason == "rejected by registry: approval timed out"
            assert (await client.get("/v1/approvals")).json() == []
            return
        audit: list[dict[str, object]] = []
        while not any(a["action"] == "approval_escalated" for a in audit):
            await asyncio.sleep(0.1)
            audit = (await client.get("/v1/audit")).json()
        # Several more checks pass over the overdue version: it is escalated once and keeps waiting.
        checked = time.monotonic()
        while time.monotonic() - checked < 1.0:
            await asyncio.sleep(0.2)
        audit = (await client.get("/v1/audit")).json()
        pending = (await client.get("/v1/approvals")).json()
    assert [a["action"] for a in audit].count("approval_escalated") == 1
    assert [p["version"] for p in pending] == [1] and pending[0]["escalated_at"] is not None
    after = REGISTRY.get_sample_value("driftloop_approval_escalations_total", {"model": "loan-approval"})
    assert after == escalations + 1


async def test_semantic_versions_and_operators_aliases(registry_settings: RegistrySettings, bus: Bus) -> None:
    config = _config()
    async with running(create_app(registry_settings, config)) as client:
        await bus.publish(announced_run(registry_settings, "s1", flip=False, seed=1), "loan-approval")
        await bus.publish(announced_run(registry_settings, "s2", flip=True, seed=2), "loan-approval")
        fewer = [f for f in APPLICATION if f != "zipcode"]
        await bus.publish(announced_run(registry_settings, "s3", flip=False, seed=3, features=fewer), "loan-approval")
        events = await _events(registry_settings, "registry.events", 6)
        registered = [e for e in events if isinstance(e, ModelVersionRegistered)]
        assert [(e.version, e.semver) for e in registered] == [(1, "1.0.0"), (2, "1.1.0"), (3, "2.0.0")]
        promoted = [e for e in events if isinstance(e, ModelPromoted)]
        assert [(e.version, e.semver) for e in promoted][:2] == [(1, "1.0.0"), (2, "1.1.0")]
        champion = (await client.get("/v1/models/loan-approval/aliases/champion")).json()["version"]

        operator = await asyncio.to_thread(issue_token, registry_settings, Role.operator, "olga")
        viewer = await asyncio.to_thread(issue_token, registry_settings, Role.viewer, "vera")
        path = "/v1/models/loan-approval/aliases"
        set_stable = await client.put(
            f"{path}/stable", json={"version": 1, "reason": "audited"}, headers=_bearer(operator)
        )
        by_viewer = await client.put(f"{path}/stable", json={"version": 2}, headers=_bearer(viewer))
        on_champion = await client.put(f"{path}/champion", json={"version": 1}, headers=_bearer(operator))
        bad_name = await client.put(f"{path}/no%20spaces", json={"version": 1}, headers=_bearer(operator))
        missing = await client.put(f"{path}/stable", json={"version": 9}, headers=_bearer(operator))
        listed = (await client.get(path)).json()
        assert set_stable.status_code == 200 and set_stable.json()["version"] == 1
        assert set_stable.json()["aliases"] == ["stable"] and set_stable.json()["semver"] == "1.0.0"
        assert (by_viewer.status_code, on_champion.status_code, bad_name.status_code, missing.status_code) == (
            403,
            409,
            422,
            404,
        )
        assert listed == {"champion": champion, "stable": 1}
        assert (await client.get("/v1/models/loan-approval/aliases/champion")).json()["version"] == champion
        deleted = await client.delete(f"{path}/stable", headers=_bearer(operator))
        gone = await client.delete(f"{path}/stable", headers=_bearer(operator))
        assert (deleted.status_code, gone.status_code) == (204, 404)
        assert (await client.get(path)).json() == {"champion": champion}
        audit = (await client.get("/v1/audit")).json()
        # No alias of an operator's reaches registry.events: deployment never sees it. The outbox's relay,
        # woken by each write, polls every second at the latest.
        assert len(await _events(registry_settings, "registry.events", 7, timeout=5)) == 6
    assert [(a["action"], a["version"], a["previous_version"], a["actor"]) for a in audit[:2]] == [
        ("alias_deleted:stable", None, 1, "olga"),
        ("alias_set:stable", 1, None, "olga"),
    ]

    # The dataset's schema changes (a new feature): the next version is a major one, though its features are not.
    dataset = config.dataset.model_copy(
        update={"features": {**config.dataset.features, "region": config.dataset.features["zipcode"]}}
    )
    async with running(create_app(registry_settings, config.model_copy(update={"dataset": dataset}))):
        await bus.publish(announced_run(registry_settings, "s4", flip=False, seed=4, features=fewer), "loan-approval")
        events = await _events(registry_settings, "registry.events", 7)
    registered = [e for e in events if isinstance(e, ModelVersionRegistered)]
    assert (registered[-1].version, registered[-1].semver) == (4, "3.0.0")


async def test_jwt_bearer_tokens_name_the_audits_actor_and_expired_or_foreign_ones_get_401(
    settings: DriftloopSettings, bus: Bus
) -> None:
    secret = "s3cret-shared-with-the-identity-provider"
    registry_settings = RegistrySettings(
        **{
            **settings.model_dump(),
            "jwt_secret": secret,
            "jwt_issuer": "https://idp.example",
            "jwt_audience": "driftloop",
            "jwt_role_claim": "realm_access.roles",
        }
    )

    def mint(role: str, *, expires_in: float = 300, issuer: str = "https://idp.example") -> str:
        claims = {
            "sub": "carol@example.com",
            "iss": issuer,
            "aud": "driftloop",
            "exp": int(time.time() + expires_in),
            "realm_access": {"roles": ["offline_access", role]},
        }
        return jwt.encode(claims, secret, algorithm="HS256")

    async with running(create_app(registry_settings), role=None) as client:
        await bus.publish(announced_run(registry_settings, "j1", flip=False, seed=1), "loan-approval")
        await _events(registry_settings, "registry.events", 2)
        expired = await client.post("/v1/models/loan-approval/pin", headers=_bearer(mint("operator", expires_in=-60)))
        foreign = await client.post(
            "/v1/models/loan-approval/pin", headers=_bearer(mint("operator", issuer="https://evil.example"))
        )
        forged = await client.post("/v1/models/loan-approval/pin", headers=_bearer(mint("operator") + "x"))
        small = await client.post("/v1/models/loan-approval/pin", headers=_bearer(mint("viewer")))
        pinned = await client.post(
            "/v1/models/loan-approval/pin", json={"reason": "freeze"}, headers=_bearer(mint("operator"))
        )
        api_token = await asyncio.to_thread(issue_token, registry_settings, Role.operator, "olga")
        unpinned = await client.post("/v1/models/loan-approval/unpin", headers=_bearer(api_token))
        audit = (await client.get("/v1/audit")).json()
    assert (expired.status_code, foreign.status_code, forged.status_code) == (401, 401, 401)
    assert "expired" in expired.json()["detail"] and "issuer" in foreign.json()["detail"]
    assert small.status_code == 403
    assert pinned.status_code == 200 and pinned.json()["actor"] == "carol@example.com"
    assert unpinned.status_code == 204
    assert [(a["action"], a["actor"], a["actor_role"]) for a in audit[:2]] == [
        ("unpinned", "olga", "operator"),
        ("pinned", "carol@example.com", "operator"),
    ]


async def test_the_mlflow_client_lists_versions_and_resolves_the_champion_alias(
    registry_settings: RegistrySettings, bus: Bus
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    async with serving(create_app(registry_settings, _config())) as url:
        await bus.publish(announced_run(registry_settings, "m1", flip=False, seed=1), "loan-approval")
        await bus.publish(announced_run(registry_settings, "m2", flip=True, seed=2), "loan-approval")
        await _events(registry_settings, "registry.events", 4)
        client = MlflowClient(tracking_uri=url, registry_uri=url)

        def read() -> dict[str, object]:
            missing: list[str] = []
            try:
                client.get_model_version_by_alias("loan-approval", "nope")
            except MlflowException as exc:
                missing.append(exc.error_code)
            return {
                "models": [m.name for m in client.search_registered_models()],
                "filtered": [m.name for m in client.search_registered_models(filter_string="name LIKE 'loan%'")],
                "versions": sorted(
                    (v.version, v.current_stage, v.source, tuple(v.aliases))
                    for v in client.search_model_versions("name='loan-approval'")
                ),
                "model": client.get_registered_model("loan-approval"),
                "v1": client.get_model_version("loan-approval", "1"),
                "champion": client.get_model_version_by_alias("loan-approval", "champion"),
                "missing": missing,
            }

        seen = await asyncio.to_thread(read)
    versions = seen["versions"]
    assert isinstance(versions, list)
    assert seen["models"] == ["loan-approval"] and seen["filtered"] == ["loan-approval"]
    assert [(v[0], v[1], v[3]) for v in versions] == [("1", "Archived", ()), ("2", "Production", ("champion",))]
    champion = seen["champion"]
    assert champion.version == "2" and champion.run_id == "m2" and champion.tags["driftloop.semver"] == "1.1.0"
    assert seen["v1"].source == versions[0][2] and seen["v1"].run_id == "m1"
    assert seen["model"].aliases == {"champion": "2"}
    assert seen["missing"] == ["RESOURCE_DOES_NOT_EXIST"]
