"""Single writers by the database, on SQLite and PostgreSQL: leases, claimed training runs, one outbox relay.

Replicas share one database, so each mechanism is raced here by several
engines at once, the way several processes would, and expiry is driven by
the clock the code is given rather than by waiting.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from threading import Barrier
from typing import TypeVar

import pytest
from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, String, Table, inspect
from sqlmodel import Session

from driftloop.bus import Bus
from driftloop.contracts import TrainingRunFailed, parse_internal, utcnow
from driftloop.db import Lease, OutboxRelay, enqueue, make_engine
from driftloop.services.training.store import RunStore, TrainingRun, create_tables
from driftloop.settings import DriftloopSettings
from tests.support import read_topic

CONTENDERS = 4
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, settings: DriftloopSettings) -> str:
    return settings.db_url if request.param == "sqlite" else str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def engines(db_url: str) -> Iterator[list[Engine]]:
    """One engine per contender, as separate replicas would have; the first one creates the tables."""
    engines = [make_engine(db_url) for _ in range(CONTENDERS)]
    create_tables(engines[0])
    yield engines
    for engine in engines:
        engine.dispose()


def _race(calls: list[Callable[[], T]]) -> list[T]:
    """Run the calls in threads released together, so they really contend."""
    barrier = Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _queue_runs(engine: Engine, count: int, start: datetime) -> list[str]:
    ids = [f"run-{i:03d}" for i in range(count)]
    with Session(engine) as session:
        for i, run_id in enumerate(ids):
            session.add(
                TrainingRun(
                    run_id=run_id,
                    request_event_id=f"request-{i}",
                    model_name="m",
                    status="queued",
                    trigger="manual",
                    requested_by="test",
                    correlation_id="c",
                    created_at=start + timedelta(seconds=i),
                )
            )
        session.commit()
    return ids


# --- the lease ---------------------------------------------------------------------------------------------------


def test_of_many_racing_for_a_free_lease_exactly_one_gets_it(engines: list[Engine]) -> None:
    leases = [Lease(engine, "job", f"holder-{i}", 30.0) for i, engine in enumerate(engines)]
    won = _race([lease.acquire for lease in leases])
    assert won.count(True) == 1
    assert [lease.held() for lease in leases] == won


def test_a_lease_is_renewed_by_its_holder_and_taken_over_only_once_it_expires(engines: list[Engine]) -> None:
    start = utcnow()
    now = {"a": start, "b": start}
    a = Lease(engines[0], "job", "a", 10.0, clock=lambda: now["a"])
    b = Lease(engines[1], "job", "b", 10.0, clock=lambda: now["b"])
    assert a.acquire()
    now["b"] = start + timedelta(seconds=9)
    assert not b.acquire()
    now["a"] = start + timedelta(seconds=8)
    assert a.acquire()  # renewed: now held until start + 18 s
    now["b"] = start + timedelta(seconds=17)
    assert not b.acquire()
    now["b"] = start + timedelta(seconds=19)
    assert b.acquire()
    assert not a.acquire(), "the old holder must not get the lease back while the new one holds it"


def test_a_released_lease_is_free_at_once(engines: list[Engine]) -> None:
    a, b = Lease(engines[0], "job", "a", 3600.0), Lease(engines[1], "job", "b", 3600.0)
    assert a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()
    assert not a.held()


# --- the additive migration --------------------------------------------------------------------------------------


def test_a_training_table_from_before_claims_gets_the_new_columns_and_its_runs_are_claimable(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        old = Table(
            "training_runs",
            MetaData(),
            Column("run_id", String, primary_key=True),
            Column("request_event_id", String, unique=True, nullable=False),
            Column("model_name", String, nullable=False),
            Column("status", String, nullable=False),
            Column("trigger", String, nullable=False),
            Column("requested_by", String, nullable=False),
            Column("correlation_id", String, nullable=False),
            Column("created_at", DateTime, nullable=False),
            Column("attempts", Integer),
        )
        old.create(engine)
        with engine.begin() as connection:
            connection.execute(
                old.insert().values(
                    run_id="old",
                    request_event_id="r",
                    model_name="m",
                    status="running",
                    trigger="manual",
                    requested_by="ops",
                    correlation_id="c",
                    created_at=utcnow(),
                )
            )

        create_tables(engine)
        create_tables(engine)  # a second start-up finds nothing to add

        columns = {c["name"] for c in inspect(engine).get_columns("training_runs")}
        assert {"owner", "lease_until", "started_at", "metrics", "attempts"} <= columns
        claimed = RunStore(engine).claim_next("replica-a", 30.0)
        assert claimed is not None and (claimed.run_id, claimed.owner) == ("old", "replica-a")
    finally:
        engine.dispose()


# --- claimed training runs ---------------------------------------------------------------------------------------


def test_a_deferred_run_is_claimed_by_nobody_before_its_time_and_then_once(engines: list[Engine]) -> None:
    now = utcnow()
    (run_id,) = _queue_runs(engines[0], 1, now)
    with Session(engines[0]) as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        run.not_before = now + timedelta(minutes=2)
        session.add(run)
        session.commit()
    stores = [RunStore(engine) for engine in engines]
    early = _race([lambda s=s, i=i: s.claim_next(f"replica-{i}", 60, now) for i, s in enumerate(stores)])
    assert early == [None] * CONTENDERS
    due = now + timedelta(minutes=2, seconds=1)
    claimed = _race([lambda s=s, i=i: s.claim_next(f"replica-{i}", 60, due) for i, s in enumerate(stores)])
    assert [run.run_id for run in claimed if run is not None] == [run_id]


def test_racing_replicas_claim_each_run_exactly_once(engines: list[Engine]) -> None:
    ids = _queue_runs(engines[0], 24, utcnow() - timedelta(minutes=5))

    def replica(engine: Engine, owner: str) -> Callable[[], list[str]]:
        def work() -> list[str]:
            store, done = RunStore(engine), []
            while (run := store.claim_next(owner, 60.0)) is not None:
                assert run.owner == owner and run.status == "running"
                with store.session() as session:
                    assert store.finish(session, run.run_id, owner, status="completed")
                    session.commit()
                done.append(run.run_id)
            return done

        return work

    results = _race([replica(engine, f"replica-{i}") for i, engine in enumerate(engines)])

    claimed = [run_id for done in results for run_id in done]
    assert sorted(claimed) == ids, "every run claimed, none twice"
    store = RunStore(engines[0])
    owners = {run.run_id: run.owner for run in store.list(limit=100)}
    for i, done in enumerate(results):
        assert all(owners[run_id] == f"replica-{i}" for run_id in done)
    assert {run.status for run in store.list(limit=100)} == {"completed"}


def test_a_run_whose_owner_stopped_renewing_is_taken_over_and_the_old_owner_cannot_finish_it(
    engines: list[Engine],
) -> None:
    start = utcnow()
    _queue_runs(engines[0], 1, start - timedelta(minutes=1))
    a, b = RunStore(engines[0]), RunStore(engines[1])

    run = a.claim_next("a", 30.0, now=start)
    assert run is not None and run.owner == "a"
    assert b.claim_next("b", 30.0, now=start + timedelta(seconds=20)) is None
    assert a.renew(run.run_id, "a", 30.0, now=start + timedelta(seconds=20))  # held until start + 50 s
    assert b.claim_next("b", 30.0, now=start + timedelta(seconds=45)) is None

    taken = b.claim_next("b", 30.0, now=start + timedelta(seconds=51))
    assert taken is not None and (taken.run_id, taken.owner) == (run.run_id, "b")
    assert not a.renew(run.run_id, "a", 30.0)
    with a.session() as session:
        assert not a.finish(session, run.run_id, "a", status="completed")
        session.commit()
    with b.session() as session:
        assert b.finish(session, run.run_id, "b", status="failed", error="boom")
        session.commit()
    finished = a.get(run.run_id)
    assert finished is not None and (finished.status, finished.owner, finished.error) == ("failed", "b", "boom")
    assert b.claim_next("b", 30.0, now=start + timedelta(hours=1)) is None, "a finished run is never claimed again"


def test_a_restarted_replica_resumes_the_run_it_held_under_the_same_instance_id(engines: list[Engine]) -> None:
    _queue_runs(engines[0], 2, utcnow() - timedelta(minutes=1))
    before = RunStore(engines[0]).claim_next("host:8003", 3600.0)
    assert before is not None
    assert RunStore(engines[1]).claim_next("host:8013", 3600.0) is not None  # the other run, to another replica

    after = RunStore(engines[2]).claim_next("host:8003", 3600.0)
    assert after is not None and after.run_id == before.run_id
    assert RunStore(engines[3]).claim_next("host:8023", 3600.0) is None


# --- one outbox relay --------------------------------------------------------------------------------------------


def _failed(i: int) -> TrainingRunFailed:
    return TrainingRunFailed(run_id=f"{i:04d}", model_name="m", trigger="manual", error="e")


def _enqueue(engine: Engine, first: int, count: int) -> None:
    with Session(engine) as session:
        for i in range(first, first + count):
            enqueue(session, "training", _failed(i), "m")
        session.commit()


async def _published(settings: DriftloopSettings, expected: int, timeout: float = 30.0) -> list[str]:
    records = await read_topic(settings, "training.runs", expected, timeout)
    return [parse_internal(r.value).run_id for r in records]  # type: ignore[union-attr]


async def test_two_relays_on_one_outbox_publish_each_record_once_and_in_id_order(
    engines: list[Engine], bus: Bus, settings: DriftloopSettings
) -> None:
    relays = [
        OutboxRelay(engine, bus, "training", poll_seconds=0.05, holder=f"relay-{i}", lease_seconds=30.0)
        for i, engine in enumerate(engines[:2])
    ]
    for relay in relays:
        relay.start()
    try:
        for batch in range(6):
            await asyncio.to_thread(_enqueue, engines[batch % 2], batch * 10, 10)
            for relay in relays:
                relay.wakeup.set()
            await asyncio.sleep(0.02)
        await _published(settings, 60)
    finally:
        for relay in relays:
            await relay.stop()

    # Every send was acknowledged before the relays stopped: one more than expected reads all there is.
    assert await _published(settings, 61, timeout=5.0) == [f"{i:04d}" for i in range(60)]


async def test_a_standby_relay_publishes_only_once_the_holders_lease_has_expired(
    engines: list[Engine], bus: Bus, settings: DriftloopSettings
) -> None:
    dead = Lease(engines[0], "outbox:training", "dead-replica", 600.0)
    assert await asyncio.to_thread(dead.acquire)
    await asyncio.to_thread(_enqueue, engines[0], 0, 5)
    standby = OutboxRelay(engines[1], bus, "training", holder=f"standby-{uuid.uuid4().hex[:4]}", lease_seconds=30.0)

    assert await standby.flush() == 0

    standby.lease.clock = lambda: utcnow() + timedelta(minutes=11)
    assert await standby.flush() == 5
    assert not await asyncio.to_thread(dead.acquire)
    assert await _published(settings, 5) == [f"{i:04d}" for i in range(5)]
