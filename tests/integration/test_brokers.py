"""Where Tansu and Apache Kafka differ, driftloop takes the path that is right on Apache Kafka.

Some behaviour can only be provoked on Apache Kafka: Tansu 0.6 (in memory)
grants no producer id, so it has no transactions, and it accepts records over
a topic's ``max.message.bytes``, so no send can be made to fail. Those tests
need the Kafka tier (``DRIFTLOOP_TEST_BROKER=kafka``), which CI runs on every
change; on Tansu they are skipped with that reason.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber
from aiokafka.partitioner import DefaultPartitioner

from driftloop.bus import Bus, ConsumerLoop, Record, TopicUnavailable, replay, topic_partitions
from driftloop.bus.faults import Verdict, classify
from driftloop.contracts import TOPICS, LabelEvent, RetrainRequested
from driftloop.services.ingestion.main import create_app
from driftloop.services.ingestion.settings import IngestionSettings
from driftloop.settings import DriftloopSettings
from tests.support import committed_offsets, read_topic, running

#: A topic's record-batch limit in the tests that need a send to fail; normal records stay far below it.
TINY = 16 * 1024


@pytest.fixture
def on_kafka(broker_kind: str) -> bool:
    return broker_kind == "kafka" or bool(os.environ.get("DRIFTLOOP_TEST_KAFKA_BOOTSTRAP"))


@pytest.fixture
def kafka_only(on_kafka: bool) -> None:
    if not on_kafka:
        pytest.skip("needs Apache Kafka (the Kafka tier): Tansu 0.6 cannot provoke this")


async def _create(settings: DriftloopSettings, topic: str, partitions: int = 1, **config: str) -> str:
    name = settings.topic(topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config)])
    finally:
        await admin.close()
    await topic_partitions(settings.bootstrap, [name])
    return name


async def test_producer_idempotence_is_on_exactly_when_the_broker_grants_it(bus: Bus, on_kafka: bool) -> None:
    assert bus.idempotent is on_kafka


async def test_a_producer_whose_sequence_the_broker_refuses_is_replaced_and_the_records_go_out_on_a_retry(
    settings: DriftloopSettings, bus: Bus, kafka_only: None
) -> None:
    """aiokafka 0.14 leaves an idempotent producer refused when a batch expires while its partition has no
    leader, as when Apache Kafka restarts after an outage longer than the request timeout: the batch took its
    sequence numbers without reaching the broker. The same state is made here by taking numbers by hand."""
    first = RetrainRequested(model_name="m", reason="manual", requested_by="before")
    await bus.publish(first, key="m")
    refused = bus._producer
    assert refused is not None
    for tp in await topic_partitions(settings.bootstrap, [settings.topic("training.requests")]):
        refused._txn_manager.increment_sequence_number(tp, 5)
    second = RetrainRequested(model_name="m", reason="manual", requested_by="after")
    with pytest.raises(OutOfOrderSequenceNumber) as raised:
        await bus.publish(second, key="m")
    assert classify(raised.value) == Verdict("retry", "broker"), "a consumer holds its partition and retries"
    for _ in range(50):
        try:
            await bus.publish(second, key="m")
            break
        except OutOfOrderSequenceNumber:
            await asyncio.sleep(0.2)
    assert bus._producer is not refused and bus.idempotent
    records = await read_topic(settings, "training.requests", 2)
    assert [RetrainRequested.model_validate_json(r.value) for r in records] == [first, second]


async def test_partitions_are_found_by_asking_for_the_topic_by_name(settings: DriftloopSettings) -> None:
    tps = await topic_partitions(settings.bootstrap, [settings.topic("labels"), settings.topic("drift")])
    assert {tp.topic for tp in tps} == {settings.topic("labels"), settings.topic("drift")}
    assert sorted(tp.partition for tp in tps if tp.topic == settings.topic("labels")) == list(
        range(TOPICS["labels"].partitions)
    )


async def test_a_missing_topic_is_named_in_the_error(settings: DriftloopSettings, kafka_only: None) -> None:
    with pytest.raises(TopicUnavailable, match=settings.topic("no-such-topic")):
        await topic_partitions(settings.bootstrap, [settings.topic("no-such-topic")], timeout=1.0)


async def test_replay_catches_up_on_a_topic_written_in_transactions(
    settings: DriftloopSettings, kafka_only: None
) -> None:
    """Commit markers take offsets: the last record of a partition sits below its end offset for good."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, transactional_id=settings.topic("tx"))
    await producer.start()
    try:
        for batch in range(3):
            async with producer.transaction():
                for i in range(2):
                    event = RetrainRequested(model_name="m", reason="manual", requested_by=f"ops{batch}-{i}")
                    await producer.send(settings.topic("registry.events"), event.model_dump_json().encode(), b"m")
        await producer.begin_transaction()
        aborted = RetrainRequested(model_name="m", reason="manual", requested_by="aborted")
        await producer.send(settings.topic("registry.events"), aborted.model_dump_json().encode(), b"m")
        await producer.abort_transaction()
    finally:
        await producer.stop()

    seen: list[tuple[str, bool]] = []
    caught_up = asyncio.Event()

    async def on_record(record: Record, live: bool) -> None:
        seen.append((record.parse(RetrainRequested).requested_by, live))

    async def on_caught_up() -> None:
        caught_up.set()

    follower = asyncio.create_task(replay(settings, "registry.events", on_record, on_caught_up))
    try:
        await asyncio.wait_for(caught_up.wait(), 20)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    assert seen == [(f"ops{b}-{i}", False) for b in range(3) for i in range(2)]


async def test_a_failed_send_fails_only_the_http_request_that_made_it(
    settings: DriftloopSettings, kafka_only: None
) -> None:
    # A fresh prefix, so `labels` is created here with a size limit before the service creates the rest.
    settings = settings.model_copy(update={"topic_prefix": f"small-{settings.topic_prefix}"})
    await _create(settings, "labels", TOPICS["labels"].partitions, **{"max.message.bytes": str(TINY)})
    oversized = {"event_id": "x" * (2 * TINY), "label": 1}
    # Records of one partition share a producer batch, and a broker rejects a batch whole: keep the good
    # labels off the oversized one's partition, so only the pending-send bookkeeping could tie them.
    partitions = list(range(TOPICS["labels"].partitions))
    taken = DefaultPartitioner()(str(oversized["event_id"]).encode(), partitions, partitions)
    ids = [f"e{i}" for i in range(200)]
    good = [
        {"event_id": i, "label": 1} for i in ids if DefaultPartitioner()(i.encode(), partitions, partitions) != taken
    ]
    good = good[:50]
    async with running(create_app(IngestionSettings(**settings.model_dump()))) as client:
        responses = await asyncio.gather(
            client.post("/v1/labels", json=good),
            client.post("/v1/labels", json=oversized),
            client.post("/v1/labels", json=good[:10]),
        )
    assert [r.status_code for r in responses] == [202, 503, 202]
    assert "MessageSizeTooLarge" in responses[1].json()["detail"]
    labels = [LabelEvent.model_validate_json(r.value) for r in await read_topic(settings, "labels", 60)]
    assert sorted(label.event_id for label in labels) == sorted(str(g["event_id"]) for g in good + good[:10])


async def test_a_consumer_never_commits_past_a_record_whose_output_was_not_acknowledged(
    settings: DriftloopSettings, bus: Bus, kafka_only: None
) -> None:
    await _create(settings, "tiny", **{"max.message.bytes": str(TINY)})
    for i in range(3):
        await bus.publish(RetrainRequested(model_name="m", reason="manual", requested_by=f"ops{i}"), "m")
    attempts: list[str] = []

    async def handler(record: Record) -> None:
        request = record.parse(RetrainRequested)
        attempts.append(request.requested_by)
        size = 2 * TINY if request.requested_by == "ops1" else 10
        await bus.send("tiny", b"x" * size, None, [], wait=False)

    loop = ConsumerLoop(settings, bus, service="test", topics=["training.requests"], group="acks", handler=handler)
    await loop.start()
    try:
        for _ in range(100):
            if attempts.count("ops0") >= 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await loop.stop()
    # The whole batch was read again: its output never all reached the broker, so nothing was committed.
    assert attempts.count("ops0") >= 2

    committed = await committed_offsets(settings, loop.group, "training.requests")
    assert committed == {}, committed
    with pytest.raises(MessageSizeTooLargeError):
        async with bus.acknowledged():
            await bus.send("tiny", b"x" * 2 * TINY, None, [], wait=False)


async def test_sends_outside_an_acknowledged_block_must_wait(bus: Bus) -> None:
    with pytest.raises(RuntimeError, match="acknowledged"):
        await bus.send("training.requests", b"{}", None, [], wait=False)
