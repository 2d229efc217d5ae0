"""The registry on a real broker and a real database (SQLite and PostgreSQL): gate, aliases, audit, restarts."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from driftloop.artifacts import open_store, sha256_hex
from driftloop.auth import Role
from driftloop.bus import Bus
from driftloop.cli.main import app as cli
from driftloop.config import ModelSpec
from driftloop.contracts import (
    DeadLetter,
    ModelPromoted,
    ModelRolledBack,
    ModelVersionRegistered,
    PromotionRejected,
    TrainingRunCompleted,
    parse_internal,
    utcnow,
)
from driftloop.contracts.events import DataWindow
from driftloop.db import make_engine
from driftloop.offline import TrainingRow
from driftloop.services.registry.main import create_app
from driftloop.services.registry.settings import RegistrySettings
from driftloop.services.registry.store import Registry, create_tables
from driftloop.services.training.domain import fit, holdout_record, refit, time_split
from driftloop.settings import DriftloopSettings
from tests.support import issue_token, read_topic, running

SPEC = ModelSpec(name="m", feature_view="v", features=["x", "y"], estimator="logistic_regression")


@pytest.fixture(params=["sqlite", "postgres"])
def registry_settings(request: pytest.FixtureRequest, settings: DriftloopSettings) -> RegistrySettings:
    url = settings.db_url if request.param == "sqlite" else request.getfixturevalue("postgres_db_url")
    return RegistrySettings(**{**settings.model_dump(), "database_url": url})


def _rows(n: int, rule: str, seed: int) -> list[TrainingRow]:
    """Points labelled by ``x > y`` (or its opposite): two concepts a linear model can learn."""
    rng = random.Random(seed)
    start = utcnow() - timedelta(hours=1)
    rows = []
    for i in range(n):
        x, y = rng.random(), rng.random()
        label = int(x > y) if rule == "x>y" else int(x <= y)
        rows.append(TrainingRow(f"{seed}-{i}", "e", start + timedelta(seconds=i), {"x": x, "y": y}, label))
    return rows


def _run(
    settings: DriftloopSettings, run_id: str, train_rule: str, holdout_rule: str, reference_uri: str | None = None
) -> TrainingRunCompleted:
    """A real fitted artifact and a holdout in the artifact store, announced like the training service does.

    The holdout is written as before rows carried event times (and the run has
    no refit), so these tests also cover runs recorded by earlier versions: the
    gate scores such a holdout whole and the version serves the judged model.
    """
    store = open_store(settings)
    train, _ = time_split(_rows(400, train_rule, seed=1), 0.3)
    _, holdout = time_split(_rows(400, holdout_rule, seed=2), 0.3)
    result = fit(SPEC, run_id, train, holdout)
    model = result.artifact.to_bytes()
    artifact_uri = store.put(f"models/m/{run_id}/model.skops", model)
    holdout_uri = store.put(
        f"models/m/{run_id}/holdout.jsonl",
        "\n".join(json.dumps({"features": r.features, "label": r.label}) for r in holdout).encode(),
    )
    return TrainingRunCompleted(
        run_id=run_id,
        model_name="m",
        trigger="drift",
        estimator=SPEC.estimator,
        feature_names=SPEC.features,
        data_window=DataWindow(
            start=train[0].event_time, end=train[-1].event_time, rows=400, train_rows=280, holdout_rows=120
        ),
        metrics=result.metrics,
        artifact_uri=artifact_uri,
        artifact_sha256=sha256_hex(model),
        holdout_uri=holdout_uri,
        duration_seconds=0.1,
        reference_uri=reference_uri,
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _registry_events(settings: DriftloopSettings, count: int) -> list[object]:
    return [parse_internal(r.value) for r in await read_topic(settings, "registry.events", count)]


async def test_gate_promotes_better_versions_rejects_worse_and_survives_a_restart(
    registry_settings: RegistrySettings, bus: Bus
) -> None:
    first = _run(registry_settings, "run-1", "x>y", "x>y")
    worse = _run(registry_settings, "run-2", "x<=y", "x>y")
    drift_fix = _run(registry_settings, "run-3", "x<=y", "x<=y", reference_uri="file:///models/m/run-3/reference.json")
    async with running(create_app(registry_settings)) as client:
        await bus.publish(first, "m")
        await bus.publish(first, "m")  # redelivered: must not make a second version
        await bus.publish(worse, "m")
        events = await _registry_events(registry_settings, 4)
        assert [type(e) for e in events] == [
            ModelVersionRegistered,
            ModelPromoted,
            ModelVersionRegistered,
            PromotionRejected,
        ]
        rejected = events[3]
        assert isinstance(rejected, PromotionRejected)
        assert rejected.version == 2 and rejected.champion_version == 1 and not rejected.decision.passed
        assert rejected.decision.champion is not None and rejected.decision.challenger < rejected.decision.champion

        await bus.publish(drift_fix, "m")
        events = await _registry_events(registry_settings, 6)
        registered, promoted = events[4:6]
        assert isinstance(registered, ModelVersionRegistered) and registered.reference_uri == drift_fix.reference_uri
        assert isinstance(promoted, ModelPromoted)
        assert (promoted.version, promoted.previous_version, promoted.actor) == (3, 1, "gate")
        assert promoted.correlation_id == drift_fix.correlation_id and promoted.causation_id == drift_fix.event_id
        assert promoted.decision is not None and promoted.decision.challenger > 0.9 > promoted.decision.champion

        versions = (await client.get("/v1/models/m/versions")).json()
        assert [(v["version"], v["status"], v["aliases"]) for v in versions] == [
            (1, "archived", []),
            (2, "rejected", []),
            (3, "champion", ["champion"]),
        ]
        assert versions[2]["parent_version"] == 1 and versions[2]["run_id"] == "run-3"
        assert [v["reference_uri"] for v in versions] == [None, None, drift_fix.reference_uri]
        assert (await client.get("/v1/models")).json() == [
            {"name": "m", "champion": 3, "latest_version": 3, "versions": 3}
        ]

    async with running(create_app(registry_settings)) as client:
        champion = (await client.get("/v1/models/m/aliases/champion")).json()
        assert champion["version"] == 3, "the champion did not survive a restart"


def _windowed_run(
    settings: DriftloopSettings, run_id: str, train: list[TrainingRow], holdout: list[TrainingRow]
) -> TrainingRunCompleted:
    """A run as the training service now writes it: timed holdout rows and a refit on the whole window."""
    store = open_store(settings)
    result = fit(SPEC, run_id, train, holdout)
    rows = sorted([*train, *holdout], key=lambda r: r.event_time)
    holdout_uri = store.put(
        f"models/m/{run_id}/holdout.jsonl", "\n".join(json.dumps(holdout_record(r)) for r in holdout).encode()
    )
    return TrainingRunCompleted(
        run_id=run_id,
        model_name="m",
        trigger="drift",
        estimator=SPEC.estimator,
        feature_names=SPEC.features,
        data_window=DataWindow(
            start=rows[0].event_time,
            end=rows[-1].event_time,
            rows=len(rows),
            train_rows=len(train),
            holdout_rows=len(holdout),
        ),
        metrics=result.metrics,
        artifact_uri=store.put(f"models/m/{run_id}/model.joblib", result.artifact.to_bytes()),
        refit_artifact_uri=store.put(f"models/m/{run_id}/model-refit.joblib", refit(SPEC, run_id, rows).to_bytes()),
        holdout_uri=holdout_uri,
        duration_seconds=0.1,
    )


async def test_the_gate_leaves_out_rows_the_champion_trained_on_and_the_version_serves_its_refit(
    registry_settings: RegistrySettings, bus: Bus
) -> None:
    """The challenger's holdout reaches back into the champion's window; those rows must not be scored.

    On them the champion is right (it learnt them) and the challenger wrong, so
    counting them would hide the challenger's gain; outside, the new concept holds.
    """
    old = _rows(600, "x>y", seed=1)
    first = _windowed_run(registry_settings, "old", *time_split(old, 0.3))
    seen = old[-100:]
    new = [
        TrainingRow(f"n{i}", "e", old[-1].event_time + timedelta(seconds=1 + i), r.features, r.label)
        for i, r in enumerate(_rows(600, "x<=y", seed=3))
    ]
    second = _windowed_run(registry_settings, "new", new[:400], [*seen, *new[400:]])
    async with running(create_app(registry_settings)) as client:
        await bus.publish(first, "m")
        await bus.publish(second, "m")
        events = await _registry_events(registry_settings, 4)
        promoted = events[3]
        assert isinstance(promoted, ModelPromoted) and promoted.version == 2
        decision = promoted.decision
        assert decision is not None and decision.passed and decision.method == "paired_bootstrap"
        assert (decision.rows, decision.excluded_rows) == (200, 100)
        assert decision.champion is not None and decision.champion < 0.1 < 0.9 < decision.challenger
        assert decision.lower_bound is not None and decision.difference is not None
        assert decision.min_improvement <= decision.lower_bound < decision.difference
        assert decision.p_value is not None and decision.p_value < 0.01
        assert decision.floor is not None and decision.floor.passed
        assert promoted.artifact_uri == second.refit_artifact_uri

        versions = (await client.get("/v1/models/m/versions")).json()
        assert versions[1]["artifact_uri"] == second.refit_artifact_uri
        assert versions[1]["evaluated_artifact_uri"] == second.artifact_uri
        assert versions[1]["gate"]["excluded_rows"] == 100
        audit = (await client.get("/v1/audit", params={"model": "m"})).json()
        gate_rows = [a for a in audit if a["action"] == "promoted"]
        assert [a["version"] for a in gate_rows] == [2, 1]
        assert gate_rows[0]["decision"] == decision.model_dump(mode="json")
        assert gate_rows[1]["decision"]["champion"] is None and gate_rows[1]["decision"]["floor"]["passed"]


async def test_rollback_and_manual_promotion_go_through_the_audit_log_and_the_topic(
    registry_settings: RegistrySettings, bus: Bus
) -> None:
    async with running(create_app(registry_settings)) as client:
        await bus.publish(_run(registry_settings, "a", "x>y", "x>y"), "m")
        await bus.publish(_run(registry_settings, "b", "x<=y", "x<=y"), "m")
        await _registry_events(registry_settings, 4)

        alice = await asyncio.to_thread(issue_token, registry_settings, Role.operator, "alice")
        bob = await asyncio.to_thread(issue_token, registry_settings, Role.approver, "bob")
        rolled = await client.post(
            "/v1/models/m/rollback", json={"reason": "bad canary", "actor": "mallory"}, headers=_bearer(alice)
        )
        assert rolled.status_code == 200 and rolled.json()["version"] == 1
        again = await client.post("/v1/models/m/versions/1/promote", json={})
        assert again.status_code == 409
        manual = await client.post("/v1/models/m/versions/2/promote", json={"reason": "fixed"}, headers=_bearer(bob))
        assert manual.status_code == 200 and manual.json()["version"] == 2
        missing = await client.post("/v1/models/m/versions/9/promote", json={})
        assert missing.status_code == 404

        events = await _registry_events(registry_settings, 6)
        rollback, promotion = events[4], events[5]
        assert isinstance(rollback, ModelRolledBack)
        assert (rollback.from_version, rollback.to_version, rollback.actor) == (2, 1, "alice")
        assert isinstance(promotion, ModelPromoted) and (promotion.version, promotion.actor) == (2, "bob")

        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        # The page draws itself from the API read above (the e2e loop test looks at it in Chromium).
        assert 'data-monitoring-port="' in page.text and "fetch(url" in page.text

        audit = (await client.get("/v1/audit", params={"model": "m"})).json()
        assert [(a["action"], a["version"], a["actor"], a["actor_role"]) for a in audit] == [
            ("promoted", 2, "bob", "approver"),
            ("rolled_back", 1, "alice", "operator"),
            ("promoted", 2, "gate", None),
            ("registered", 2, "training", None),
            ("promoted", 1, "gate", None),
            ("registered", 1, "training", None),
        ]


async def test_unknown_model_is_404_and_readiness_checks_the_database(registry_settings: RegistrySettings) -> None:
    async with running(create_app(registry_settings)) as client:
        ready = (await client.get("/readyz")).json()
        # Ready only once its consumers are in their groups; the database is checked from the start.
        while "joining its group" in (ready["checks"]["consumer"], ready["checks"]["rollouts"]):
            await asyncio.sleep(0.2)
            ready = (await client.get("/readyz")).json()
        assert ready == {"ready": True, "checks": {"consumer": True, "rollouts": True, "database": True}}
        assert (await client.get("/v1/models/nope/versions")).status_code == 404
        assert (await client.get("/v1/models/nope/aliases/champion")).status_code == 404
        assert (await client.post("/v1/models/nope/rollback")).status_code == 404
    await asyncio.sleep(0)


async def test_a_tampered_challenger_is_dead_lettered_and_a_tampered_champion_is_not_scored(
    registry_settings: RegistrySettings, bus: Bus
) -> None:
    store = open_store(registry_settings)
    first = _run(registry_settings, "run-a", "x>y", "x>y")
    forged = _run(registry_settings, "run-b", "x>y", "x>y").model_copy(update={"artifact_sha256": sha256_hex(b"")})
    after = _run(registry_settings, "run-c", "x>y", "x>y")
    async with running(create_app(registry_settings)) as client:
        await bus.publish(first, "m")
        await _registry_events(registry_settings, 2)
        # The champion's bytes are replaced after registration.
        store.put(first.artifact_uri, store.get(after.artifact_uri))
        await bus.publish(forged, "m")
        await bus.publish(after, "m")
        events = await _registry_events(registry_settings, 4)
        letters = [
            DeadLetter.model_validate_json(r.value) for r in await read_topic(registry_settings, "events.deadletter", 1)
        ]
        versions = (await client.get("/v1/models/m/versions")).json()
    assert [type(e) for e in events] == [ModelVersionRegistered, ModelPromoted, ModelVersionRegistered, ModelPromoted]
    assert len(letters) == 1 and letters[0].source_topic == "training.runs"
    assert "model of run run-b refused" in letters[0].reason and "SHA-256" in letters[0].reason
    promoted = events[3]
    assert isinstance(promoted, ModelPromoted) and promoted.version == 2
    assert promoted.decision is not None and promoted.decision.champion is None
    assert promoted.decision.reason.startswith("champion v1 not scored, its artifact is refused")
    assert [(v["run_id"], v["artifact_sha256"]) for v in versions] == [
        ("run-a", first.artifact_sha256),
        ("run-c", after.artifact_sha256),
    ]
    assert promoted.artifact_sha256 == after.artifact_sha256


async def _three_champions(registry_settings: RegistrySettings, bus: Bus) -> None:
    """v1, v2, v3 each promoted by the gate: the concepts alternate, so each beats the one before on its holdout."""
    for run_id, rule in (("g1", "x>y"), ("g2", "x<=y"), ("g3", "x>y")):
        await bus.publish(_run(registry_settings, run_id, rule, rule), "m")
    events = await _registry_events(registry_settings, 6)
    assert [(type(e), getattr(e, "version", None)) for e in events][1::2] == [
        (ModelPromoted, 1),
        (ModelPromoted, 2),
        (ModelPromoted, 3),
    ]


async def test_rolling_back_twice_goes_two_versions_back_and_never_forward(
    registry_settings: RegistrySettings, bus: Bus
) -> None:
    async with running(create_app(registry_settings)) as client:
        await _three_champions(registry_settings, bus)
        first = await client.post("/v1/models/m/rollback", json={"reason": "one"})
        second = await client.post("/v1/models/m/rollback", json={"reason": "two"})
        third = await client.post("/v1/models/m/rollback", json={"reason": "three"})
        versions = (await client.get("/v1/models/m/versions")).json()
        events = await _registry_events(registry_settings, 8)
    assert (first.json()["version"], second.json()["version"]) == (2, 1)
    assert third.status_code == 409 and "no previous champion" in third.json()["detail"]
    assert [(v["version"], v["status"]) for v in versions] == [(1, "champion"), (2, "rolled_back"), (3, "rolled_back")]
    rollbacks = [e for e in events if isinstance(e, ModelRolledBack)]
    assert [(e.from_version, e.to_version) for e in rollbacks] == [(3, 2), (2, 1)]
    assert rollbacks[0].revision < rollbacks[1].revision


async def test_a_pinned_champion_is_not_replaced_by_a_better_challenger(
    registry_settings: RegistrySettings, bus: Bus
) -> None:
    async with running(create_app(registry_settings)) as client:
        await bus.publish(_run(registry_settings, "p1", "x>y", "x>y"), "m")
        await _registry_events(registry_settings, 2)
        pinned = await client.post("/v1/models/m/pin", json={"reason": "quarter close"})
        await bus.publish(_run(registry_settings, "p2", "x<=y", "x<=y"), "m")
        events = await _registry_events(registry_settings, 4)
        champion = (await client.get("/v1/models/m/aliases/champion")).json()
        manual = await client.post("/v1/models/m/versions/2/promote", json={})
        unpinned = await client.post("/v1/models/m/unpin", json={"reason": "closed"})
        after = await client.post("/v1/models/m/versions/2/promote", json={})
        audit = (await client.get("/v1/audit", params={"model": "m"})).json()
    assert pinned.status_code == 200 and pinned.json()["version"] == 1 and pinned.json()["actor"] == "tests"
    refused = events[3]
    assert isinstance(refused, PromotionRejected) and refused.version == 2 and not refused.decision.passed
    assert refused.decision.challenger > 0.9 > (refused.decision.champion or 0.0)
    assert "champion v1 is pinned by tests: quarter close" in refused.decision.reason
    assert champion["version"] == 1
    assert manual.status_code == 409 and "unpin it first" in manual.json()["detail"]
    assert unpinned.status_code == 204 and after.status_code == 200 and after.json()["version"] == 2
    assert [a["action"] for a in audit][:4] == ["promoted", "unpinned", "rejected", "registered"]


async def test_the_audit_is_append_only_and_a_tampered_row_fails_audit_verify(
    registry_settings: RegistrySettings, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(create_app(registry_settings)) as client:
        await bus.publish(_run(registry_settings, "t1", "x>y", "x>y"), "m")
        await _registry_events(registry_settings, 2)
        await client.post("/v1/models/m/pin", json={"reason": "audit test"})
        audit = (await client.get("/v1/audit", params={"model": "m"})).json()
    monkeypatch.setenv("DRIFTLOOP_DATABASE_URL", registry_settings.db_url)
    runner = CliRunner()
    intact = runner.invoke(cli, ["audit", "verify"])
    assert intact.exit_code == 0 and "audit chain intact: 3 rows" in intact.output

    engine = make_engine(registry_settings.db_url)
    promoted = next(a for a in audit if a["action"] == "promoted")
    forge = text("UPDATE audit_log SET actor = 'mallory' WHERE id = :id")
    try:
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(forge, {"id": promoted["id"]})
        # Someone with the database's owner rights removes the guard and edits the row anyway.
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("DROP TRIGGER audit_log_append_only ON audit_log"))
            else:
                connection.execute(text("DROP TRIGGER audit_log_no_update"))
            connection.execute(forge, {"id": promoted["id"]})
    finally:
        engine.dispose()
    broken = runner.invoke(cli, ["audit", "verify"])
    assert broken.exit_code == 1
    assert f"audit chain broken at row {promoted['id']}" in broken.output
    assert "does not match its hash" in broken.output


def test_a_champion_pinned_while_a_challenger_rolls_out_stays_and_the_rollout_ends_aborted(
    registry_settings: RegistrySettings,
) -> None:
    engine = make_engine(registry_settings.db_url)
    create_tables(engine)
    registry = Registry(engine)
    with registry.session() as s:
        for run_id, rule in (("r1", "x>y"), ("r2", "x<=y")):
            row = registry.register(s, _run(registry_settings, run_id, rule, rule), "0" * 64, "")
            registry.adopt(s, row, "canary", actor="gate", reason="passed", causation_id=None, decision=None)
        staged = (registry.champion(s, "m"), registry.version(s, "m", 2).status)
        registry.pin(s, "m", actor="ops", actor_role="operator", reason="freeze")
        ended = registry.complete_rollout(s, "m", 2, reason="passed", evidence={"lower": -0.2}, causation_id="c")
        s.commit()
    with registry.session() as s:
        assert staged[0] is not None and staged[0].version == 1 and staged[1] == "rolling_out"
        assert isinstance(ended, PromotionRejected) and "champion v1 was pinned by ops" in ended.decision.reason
        assert registry.version(s, "m", 2).status == "aborted"
        champion = registry.champion(s, "m")
        assert champion is not None and champion.version == 1
    assert registry.aliases("m") == {"champion": 1}
    engine.dispose()
