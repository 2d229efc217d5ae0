"""The registry numbers alias changes per model, on SQLite and PostgreSQL, and the events carry the number."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from driftloop.contracts import ModelPromoted, ModelRolledBack, TrainingRunCompleted, parse_internal, utcnow
from driftloop.contracts.events import DataWindow, GateDecision
from driftloop.db import OutboxRecord, make_engine
from driftloop.services.registry.store import Registry, create_tables
from driftloop.settings import DriftloopSettings

DECISION = GateDecision(metric="accuracy", challenger=0.9, champion=None, min_improvement=0.0, passed=True, reason="")


@pytest.fixture(params=["sqlite", "postgres"])
def engines(request: pytest.FixtureRequest, settings: DriftloopSettings) -> Iterator[list[Engine]]:
    url = settings.db_url if request.param == "sqlite" else str(request.getfixturevalue("postgres_db_url"))
    engines = [make_engine(url) for _ in range(2)]
    create_tables(engines[0])
    yield engines
    for engine in engines:
        engine.dispose()


def _register(registry: Registry, model: str, runs: int) -> None:
    now = utcnow()
    with registry.session() as s:
        for i in range(runs):
            run = TrainingRunCompleted(
                run_id=f"{model}-{i}",
                model_name=model,
                trigger="manual",
                estimator="logistic_regression",
                feature_names=["x"],
                data_window=DataWindow(start=now, end=now, rows=10, train_rows=7, holdout_rows=3),
                metrics={"accuracy": 0.9},
                artifact_uri=f"file:///{model}/{i}",
                holdout_uri=f"file:///{model}/{i}/holdout",
                duration_seconds=0.1,
            )
            registry.register(s, run, "0" * 64, "schema")
            s.flush()
        s.commit()


def _promote(registry: Registry, model: str, version: int) -> ModelPromoted:
    with registry.session() as s:
        event = registry.promote(
            s,
            registry.version(s, model, version),
            actor="ops",
            reason="test",
            causation_id=None,
            correlation_id="c",
            decision=DECISION,
        )
        s.commit()
    return event


def _announced(engine: Engine) -> list[ModelPromoted | ModelRolledBack]:
    with Session(engine) as s:
        rows = s.exec(select(OutboxRecord).order_by(col(OutboxRecord.id))).all()
    events = [parse_internal(row.value.encode()) for row in rows]
    return [e for e in events if isinstance(e, ModelPromoted | ModelRolledBack)]


def test_every_alias_move_of_a_model_gets_the_next_revision_and_its_event_carries_it(engines: list[Engine]) -> None:
    registry = Registry(engines[0])
    _register(registry, "m", 3)
    _register(registry, "other", 1)

    assert _promote(registry, "m", 1).revision == 1
    assert _promote(registry, "m", 2).revision == 2
    assert _promote(registry, "other", 1).revision == 1, "each model counts on its own"
    with registry.session() as s:
        rolled = registry.rollback(s, "m", actor="ops", reason="bad")
        s.commit()
    assert (rolled.to_version, rolled.revision) == (1, 3)
    with registry.session() as s:
        registry.hold_for_approval(s, registry.version(s, "m", 3), DECISION)
        s.commit()
    assert registry.alias_revision("m") == 4
    assert _promote(registry, "m", 3).revision == 5

    announced = [(e.model_name, e.revision) for e in _announced(engines[0])]
    assert announced == [("m", 1), ("m", 2), ("other", 1), ("m", 3), ("m", 5)]


def test_a_refused_alias_move_uses_no_revision(engines: list[Engine]) -> None:
    registry = Registry(engines[0])
    _register(registry, "m", 1)
    _promote(registry, "m", 1)
    with pytest.raises(RuntimeError, match="already champion"):
        _promote(registry, "m", 1)
    assert registry.alias_revision("m") == 1


def test_racing_promotions_from_two_replicas_get_distinct_revisions_and_the_higher_one_is_the_champion(
    engines: list[Engine],
) -> None:
    _register(Registry(engines[0]), "m", 5)
    _promote(Registry(engines[0]), "m", 1)
    barrier = Barrier(2)

    def replica(engine: Engine, versions: list[int]) -> list[ModelPromoted]:
        barrier.wait()
        return [_promote(Registry(engine), "m", v) for v in versions]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(replica, engines, [[2, 4], [3, 5]]))

    events = [e for result in results for e in result]
    revisions = sorted(e.revision or 0 for e in events)
    assert revisions == [2, 3, 4, 5]
    last = max(events, key=lambda e: e.revision or 0)
    with Registry(engines[0]).session() as s:
        champion = Registry(engines[0]).champion(s, "m")
    assert champion is not None and champion.version == last.version
    # Each promotion saw the one committed before it as its previous champion: the moves form one chain.
    ordered = sorted(events, key=lambda e: e.revision or 0)
    assert [e.previous_version for e in ordered[1:]] == [e.version for e in ordered[:-1]]
