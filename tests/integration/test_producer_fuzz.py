"""Hypothesis-generated producer records on events.raw and labels: each one ends validated or dead-lettered.

Ingestion and monitoring (whose routing stage checks the labels it reads from Kafka) run in-process on the
real broker; the test produces as any client would, with a plain Kafka producer. Each example is a batch of
records: valid events and labels drawn from the configured dataset schema, and every kind of bad one a
producer can write (arbitrary bytes, tombstones, malformed or truncated JSON, JSON of the wrong shape,
nesting past the depth limit, numbers no float holds, NaN and Infinity, wrong types, missing and unknown
fields, lone surrogates, records over the size limit), with arbitrary keys and headers, and valid ones
stamped by their producer with a record timestamp of its own (the epoch, or past the year 9999).

The accounting is exact. Once both consumer groups have committed past the batch, every output they made
is on the broker; the test reads the outputs to their end and then requires of each record: an event on
``events.validated`` under its event id, or a label on monitoring's join topic under its event id, or a
dead letter naming the record's topic, partition and offset with a reason, its key and its payload -
exactly one of those. A record built valid must be validated, one built broken must be dead-lettered, and
after all of them a valid event and label still pass and both services are still ready.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx
import hypothesis
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st

from driftloop.bus.metadata import topic_partitions
from driftloop.config import DatasetSchema, FeatureSpec, LabelSpec, load_config
from driftloop.contracts import DeadLetter, EventValidated, utcnow
from driftloop.limits import RECORD_HEAD_BYTES
from driftloop.services.ingestion.main import create_app as ingestion_app
from driftloop.services.ingestion.settings import IngestionSettings
from driftloop.services.monitoring.join import LabelRecord, join_records
from driftloop.services.monitoring.main import create_app as monitoring_app
from driftloop.services.monitoring.routing import JOIN_TOPIC
from driftloop.services.monitoring.settings import MonitoringSettings
from driftloop.settings import DriftloopSettings
from tests.support import APPLICATION, running

#: Batches per run, and records per batch at most: a few hundred records in all.
BATCHES = 15
RECORDS = 40
#: Small enough that a record over it is cheap to draw, large enough for the deepest nesting drawn.
MAX_RECORD_BYTES = 16 * 1024
OUTPUTS = ("events.validated", "events.deadletter", JOIN_TOPIC)
Verdict = Literal["valid", "invalid", "either"]


@dataclass(frozen=True)
class Ago:
    """An event time this many seconds before the record is produced: fresh whenever the example runs."""

    seconds: int


@dataclass(frozen=True)
class Draft:
    """One record to produce. ``value`` is sent as is when bytes (None: a tombstone), else as JSON made at
    send time: each ``Ago`` becomes a timestamp, and a top-level ``event_id`` string gets a suffix no other
    record has, so no record is skipped as a repeat of another (the idempotency key is the event id)."""

    topic: Literal["events.raw", "labels"]
    value: Any
    verdict: Verdict
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    #: The producer's own record timestamp, in milliseconds; None lets the client stamp it.
    timestamp_ms: int | None = None


def _encoded(value: Any, ids: Iterator[int], now: datetime) -> tuple[bytes | None, str | None]:
    """The record's value, and the event id its outputs carry if it passes."""
    if value is None or isinstance(value, bytes):
        return value, None
    event_id = None
    if isinstance(value, dict):
        value = {
            k: (now - timedelta(seconds=v.seconds)).isoformat() if isinstance(v, Ago) else v for k, v in value.items()
        }
        if isinstance(value.get("event_id"), str) and value["event_id"]:
            value["event_id"] = event_id = f"{value['event_id']}~{next(ids)}"
    # Python's encoder writes NaN and Infinity and 400-digit integers; a lone surrogate becomes invalid UTF-8.
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"), event_id


TEXT = st.text(max_size=12)
SOME_TEXT = st.text(min_size=1, max_size=12)
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
#: Numbers a float cannot hold, written as JSON text or as strings that look like numbers.
NOT_A_FLOAT = st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400, "NaN", "Infinity", "1e999", "-inf"])
#: Record timestamps a producer may set: the epoch, far ahead, the last millisecond of year 9999, and past it.
TIMESTAMPS = st.sampled_from([0, 1, 2**41, 253_402_300_799_999, 253_402_300_800_000])
HEADERS = st.lists(st.tuples(TEXT.filter(lambda name: name != "ce_id"), st.binary(max_size=16)), max_size=3).map(tuple)


def _value_of(spec: FeatureSpec | LabelSpec) -> st.SearchStrategy[Any]:
    if spec.allowed is not None:
        return st.sampled_from(spec.allowed)
    low = spec.min if isinstance(spec, FeatureSpec) else None
    high = spec.max if isinstance(spec, FeatureSpec) else None
    if spec.type == "float":
        return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    if spec.type == "int":
        return st.integers(min_value=None if low is None else int(low), max_value=None if high is None else int(high))
    return st.booleans() if spec.type == "bool" else SOME_TEXT


def _valid_event(schema: DatasetSchema) -> st.SearchStrategy[dict[str, Any]]:
    features = st.fixed_dictionaries(
        {name: _value_of(spec) for name, spec in schema.features.items() if spec.required},
        optional={name: _value_of(spec) for name, spec in schema.features.items() if not spec.required},
    )
    return st.fixed_dictionaries(
        {
            "event_id": SOME_TEXT,
            "entity_id": SOME_TEXT,
            "event_time": st.builds(Ago, st.integers(0, 3600)),
            "features": features,
        },
        optional={"label": st.none() | _value_of(schema.label)},
    )


def _valid_label(schema: DatasetSchema) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"event_id": SOME_TEXT, "label": _value_of(schema.label)},
        optional={"label_time": st.none() | st.builds(Ago, st.integers(0, 3600))},
    )


#: The fields of the two producer contracts, and those each requires.
FIELDS = {"event_id", "entity_id", "event_time", "features", "label", "label_time"}
REQUIRED = {"events.raw": ["event_id", "entity_id", "event_time", "features"], "labels": ["event_id", "label"]}


@st.composite
def _broken(draw: st.DrawFn, valid: dict[str, Any], topic: str, schema: DatasetSchema) -> dict[str, Any]:
    """A valid payload with one thing wrong that the contract or the schema always refuses."""
    broken = dict(valid)
    hows = ["missing", "unknown field", "empty id", "bad label"]
    if topic == "events.raw":
        hows += ["not a float", "out of range", "features not an object"]
    how = draw(st.sampled_from(hows))
    if how == "missing":
        del broken[draw(st.sampled_from(REQUIRED[topic]))]
    elif how == "unknown field":
        broken[draw(TEXT.filter(lambda name: name not in FIELDS))] = draw(JSON_VALUES)
    elif how == "empty id":
        broken["event_id"] = ""
    elif how == "bad label":
        broken["label"] = draw(NOT_A_FLOAT | st.sampled_from(["1", 1.5, True, [1]]))
    elif how == "not a float":
        numeric = sorted(n for n, spec in schema.features.items() if spec.type in ("float", "int") and not spec.allowed)
        broken["features"] = {**valid["features"], draw(st.sampled_from(numeric)): draw(NOT_A_FLOAT)}
    elif how == "out of range":
        bounded = sorted(n for n, spec in schema.features.items() if spec.type == "float" and spec.max is not None)
        name = draw(st.sampled_from(bounded))
        above = st.floats(min_value=schema.features[name].max, exclude_min=True, allow_infinity=False)
        broken["features"] = {**valid["features"], name: draw(above)}
    else:
        broken["features"] = draw(st.lists(JSON_VALUES, max_size=3) | st.none() | TEXT)
    return broken


@st.composite
def _mangled(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    """A valid payload with one field replaced by any JSON value at all: valid or not, by chance."""
    return {**valid, draw(st.sampled_from(sorted(valid))): draw(JSON_VALUES)}


def _bytes(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes | None]:
    """Values that are no payload at all: never valid."""
    levels = st.integers(33, 5000)
    return st.one_of(
        st.binary(max_size=64),
        st.none(),
        levels.map(lambda n: b"[" * n + b"]" * n),
        levels.map(lambda n: b'{"a": ' * n + b"1" + b"}" * n),
        st.tuples(valid, st.floats(0, 0.99)).map(
            lambda pair: (text := json.dumps(pair[0], default=str).encode())[: int(len(text) * pair[1])]
        ),
        st.integers(MAX_RECORD_BYTES, MAX_RECORD_BYTES + 4096).map(lambda n: b'{"event_id": "' + b"x" * n + b'"}'),
        st.lists(SURROGATE, min_size=1, max_size=3).map(
            lambda chars: json.dumps({"event_id": "".join(chars)}, ensure_ascii=False).encode("utf-8", "surrogatepass")
        ),
    )


def _weighted(*choices: tuple[int, st.SearchStrategy[Draft]]) -> st.SearchStrategy[Draft]:
    """One of the strategies, each drawn as often as its weight says."""
    return st.sampled_from([strategy for weight, strategy in choices for _ in range(weight)]).flatmap(lambda s: s)


def _drafts(
    topic: Literal["events.raw", "labels"], valid: st.SearchStrategy[dict[str, Any]], schema: DatasetSchema
) -> st.SearchStrategy[Draft]:
    def drafts(values: st.SearchStrategy[Any], verdict: Verdict) -> st.SearchStrategy[Draft]:
        # A tombstone needs a key: Kafka has no record with neither.
        return st.builds(
            lambda value, key, headers: Draft(topic, value, verdict, key or (b"" if value is None else None), headers),
            values,
            st.none() | st.binary(max_size=16),
            HEADERS,
        )

    # Freshness is judged by the record's timestamp, so a valid payload stamped by its producer may pass or not.
    stamped = st.builds(lambda value, at: Draft(topic, value, "either", timestamp_ms=at), valid, TIMESTAMPS)
    return _weighted(
        (3, drafts(valid, "valid")),
        (2, drafts(valid.flatmap(lambda v: _broken(v, topic, schema)), "invalid")),
        (2, drafts(_bytes(valid), "invalid")),
        (1, drafts(JSON_VALUES, "either")),
        (1, drafts(valid.flatmap(_mangled), "either")),
        (1, stamped),
    )


def batches(schema: DatasetSchema) -> st.SearchStrategy[list[Draft]]:
    return st.lists(
        _drafts("events.raw", _valid_event(schema), schema) | _drafts("labels", _valid_label(schema), schema),
        min_size=RECORDS // 4,
        max_size=RECORDS,
    )


@dataclass(frozen=True)
class Sent:
    draft: Draft
    value: bytes | None
    event_id: str | None
    partition: int
    offset: int


@dataclass
class Outputs:
    """Everything the two services wrote, read from the start of their output topics."""

    validated: dict[str, list[EventValidated]] = field(default_factory=dict)
    joined: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    letters: dict[tuple[str, int | None, int | None], list[DeadLetter]] = field(default_factory=dict)
    #: How far the reader has come, by partition.
    positions: dict[TopicPartition, int] = field(default_factory=dict)


class Harness:
    """Produces batches and waits for their accounting; runs on the event loop the services run on."""

    def __init__(self, settings: DriftloopSettings) -> None:
        self.settings = settings
        self.ids = itertools.count()
        self.outputs = Outputs()
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
        self.reader = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
        #: Consumers of the services' groups that never join them: they only read what each group committed.
        self.checkers = {
            topic: AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=group, enable_auto_commit=False)
            for topic, group in (
                ("events.raw", settings.group("ingestion")),
                ("labels", settings.group("monitoring-route")),
            )
        }
        self.partitions: list[TopicPartition] = []
        self._reading: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def started(self) -> AsyncIterator[Harness]:
        await self.producer.start()
        for checker in self.checkers.values():
            await checker.start()
        await self.reader.start()
        self.partitions = await topic_partitions(self.settings.bootstrap, [self.settings.topic(t) for t in OUTPUTS])
        self.reader.assign(self.partitions)
        await self.reader.seek_to_beginning(*self.partitions)
        self._reading = asyncio.create_task(self._read())
        try:
            yield self
        finally:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
            await self.reader.stop()
            for checker in self.checkers.values():
                await checker.stop()
            await self.producer.stop()

    async def _read(self) -> None:
        prefix = self.settings.topic_prefix
        while True:
            for tp, messages in (await self.reader.getmany(timeout_ms=100)).items():
                topic = tp.topic.removeprefix(prefix)
                for m in messages:
                    if topic == "events.validated":
                        event = EventValidated.model_validate_json(m.value or b"")
                        self.outputs.validated.setdefault(event.event_id, []).append(event)
                    elif topic == JOIN_TOPIC:
                        for joined in join_records(m.value or b""):
                            if isinstance(joined, LabelRecord):
                                self.outputs.joined.setdefault(joined.event_id, []).append(joined.to_dict())
                    else:
                        letter = DeadLetter.model_validate_json(m.value or b"")
                        where = (letter.source_topic, letter.partition, letter.offset)
                        self.outputs.letters.setdefault(where, []).append(letter)
            for tp in self.partitions:
                self.outputs.positions[tp] = await self.reader.position(tp)

    async def send(self, drafts: list[Draft]) -> list[Sent]:
        now = utcnow()
        encoded = [_encoded(d.value, self.ids, now) for d in drafts]
        futures = [
            await self.producer.send(
                self.settings.topic(d.topic), value, key=d.key, headers=list(d.headers), timestamp_ms=d.timestamp_ms
            )
            for d, (value, _) in zip(drafts, encoded, strict=True)
        ]
        return [
            Sent(d, value, event_id, (meta := await f).partition, meta.offset)
            for d, (value, event_id), f in zip(drafts, encoded, futures, strict=True)
        ]

    async def settled(self, sent: list[Sent]) -> None:
        """Once both groups committed past every record sent, and the reader reached the outputs' end."""
        ends: dict[TopicPartition, tuple[str, int]] = {}
        for s in sent:
            tp = TopicPartition(self.settings.topic(s.draft.topic), s.partition)
            ends[tp] = (s.draft.topic, max(ends.get(tp, ("", 0))[1], s.offset + 1))
        async with asyncio.timeout(120):
            for tp, (topic, end) in ends.items():
                while ((await self.checkers[topic].committed(tp)) or 0) < end:
                    await asyncio.sleep(0.05)
            outputs = await self.reader.end_offsets(self.partitions)
            while any(self.outputs.positions.get(tp, 0) < end for tp, end in outputs.items()):
                await asyncio.sleep(0.05)


def _same(passed: EventValidated | dict[str, Any], payload: dict[str, Any]) -> bool:
    """Whether what passed carries what was sent: the entity and features of an event, a label's label."""
    if isinstance(passed, EventValidated):
        return (passed.entity_id, passed.features) == (payload["entity_id"], payload["features"])
    return bool(passed["l"] == payload["label"])


def accounting(sent: list[Sent], outputs: Outputs) -> list[str]:
    """What is wrong with the fate of each record sent; empty when each had exactly the one it should."""
    wrong = []
    for s in sent:
        letters = outputs.letters.get((s.draft.topic, s.partition, s.offset), [])
        passed: list[EventValidated] | list[dict[str, Any]] = (
            outputs.validated if s.draft.topic == "events.raw" else outputs.joined
        ).get(s.event_id or "", [])
        where = f"{s.draft.topic}/{s.partition}@{s.offset} {s.value if s.value is None else s.value[:120]!r}"
        if len(letters) + len(passed) != 1:
            wrong.append(f"{where}: {len(passed)} passed and {len(letters)} dead letters")
        elif s.draft.verdict == "valid" and not passed:
            wrong.append(f"{where}: valid, dead-lettered: {letters[0].reason}")
        elif s.draft.verdict == "invalid" and not letters:
            wrong.append(f"{where}: invalid, passed")
        elif s.draft.verdict == "valid" and not _same(passed[0], s.draft.value):
            wrong.append(f"{where}: passed as {passed[0]!r}")
        elif letters:
            letter = letters[0]
            value = s.value or b""
            kept = value if len(value) <= MAX_RECORD_BYTES else value[:RECORD_HEAD_BYTES]
            key = None if s.draft.key is None else s.draft.key.decode("utf-8", "replace")
            if not letter.reason or letter.payload != kept.decode("utf-8", "backslashreplace") or letter.key != key:
                wrong.append(f"{where}: dead letter without its reason, payload or key: {letter!r}")
            elif letter.payload_truncated != (len(value) > MAX_RECORD_BYTES):
                wrong.append(f"{where}: dead letter says truncated={letter.payload_truncated}")
    return wrong


async def _ready(*clients: httpx.AsyncClient) -> list[int]:
    return [(await client.get("/readyz")).status_code for client in clients]


# The services' Kafka clients draw from Python's global random while Hypothesis draws in its thread, which
# Hypothesis takes for a strategy using it.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_every_producer_record_is_validated_or_dead_lettered_exactly_once(settings: DriftloopSettings) -> None:
    schema = load_config(settings.config).dataset
    limited = {**settings.model_dump(), "max_record_bytes": MAX_RECORD_BYTES}
    loop = asyncio.get_running_loop()
    counted: list[Sent] = []
    async with (
        running(ingestion_app(IngestionSettings(**limited)), role=None) as ingestion,
        running(monitoring_app(MonitoringSettings(**limited)), role=None) as monitoring,
    ):
        async with asyncio.timeout(60):
            while await _ready(ingestion, monitoring) != [200, 200]:
                await asyncio.sleep(0.1)
        async with Harness(settings).started() as harness:

            async def produce(drafts: list[Draft]) -> list[Sent]:
                sent = await harness.send(drafts)
                await harness.settled(sent)
                return sent

            # The failing records are named in the assertion; shrinking a batch would only cost minutes.
            @hypothesis.settings(
                max_examples=BATCHES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(drafts=batches(schema))
            def each_batch(drafts: list[Draft]) -> None:
                sent = asyncio.run_coroutine_threadsafe(produce(drafts), loop).result()
                counted.extend(sent)
                assert accounting(sent, harness.outputs) == []

            # Hypothesis draws and checks in a thread; the producer and the services stay on this event loop.
            await asyncio.to_thread(each_batch)
            event = {"event_id": "after", "entity_id": "a-1", "event_time": Ago(0), "features": dict(APPLICATION)}
            after = await produce(
                [Draft("events.raw", event, "valid"), Draft("labels", {"event_id": "after", "label": 1}, "valid")]
            )
            assert accounting(after, harness.outputs) == []
        ready = await _ready(ingestion, monitoring)
    assert {s.draft.verdict for s in counted} == {"valid", "invalid", "either"}
    assert {s.draft.topic for s in counted} == {"events.raw", "labels"}
    assert ready == [200, 200]
