"""Stateful stream stages: tables split like the topic a stage reads, each kept in a changelog topic.

features and monitoring keep state per key: an entity's aggregates, an
event's join entry, a model's monitors. A stateful stage is a bus
``ConsumerLoop`` over one topic with ``Tables``: its batch handler reads and
writes ``Table`` entries of the partition the batch came from, and the loop

1. runs the handler, whose output records leave as batches and are
   acknowledged (a handler that raises changes no table: its writes are
   staged in a layer that is dropped);
2. sends the batch's table changes to the changelog topics, to the same
   partition number, and waits for their acknowledgement;
3. applies the changes in memory and commits the batch's offsets.

Outputs before changes: a crash after step 1 repeats the batch's outputs
(their consumers are idempotent by event id), while changes recorded before
their outputs could say "scored" or "seen" of something never sent. A
partition assigned to this process is paused until every table has read its
changelog partition from where this process last stood (from the start the
first time), so no batch ever sees a table that is still being rebuilt, and
a partition handed back and forth between replicas is caught up, not read
again whole. A revoked partition's batch in hand is finished and committed
before the partition goes (``ConsumerLoop``).

Changelog topics are named as Kafka Streams and faust name them,
``<group>-<table>-changelog``, with ``cleanup.policy=compact``: Apache
Kafka keeps the newest value of each key, so a rebuild reads the table, not
its history (Tansu does not compact; there a rebuild reads every change).
Values are JSON; a deleted entry is a tombstone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import OffsetOutOfRangeError

from driftloop.bus import Bus
from driftloop.bus.topics import create_missing
from driftloop.contracts import TOPICS
from driftloop.logging import get_logger
from driftloop.settings import ServiceSettings

log = get_logger(__name__)

#: Stream state is co-partitioned with the data topics it is keyed like.
PARTITIONS = TOPICS["events.validated"].partitions

_DELETED = object()


class StreamSettings(ServiceSettings):
    stream_replication_factor: int = 1


class Table:
    """A map of string keys to JSON values, split by partition; its changes reach a changelog topic.

    During a batch (``Tables.begin``) reads and writes see the batch's
    partition, through the layers of writes staged by the batch and by the
    handler's current attempt; outside one (an HTTP lookup) reads see every
    partition held here, as last committed. Values are replaced, never
    changed in place: a value read may be the one a reader elsewhere holds.

    >>> table = Table("t")
    >>> tables = Tables.detached(table)
    >>> tables.begin(0)
    >>> table["a"] = {"n": 1}
    >>> with tables.attempt():
    ...     table["b"] = {"n": 2}
    >>> try:
    ...     with tables.attempt():
    ...         table["c"] = {"n": 3}
    ...         raise RuntimeError("the handler failed")
    ... except RuntimeError:
    ...     pass
    >>> sorted(table.keys()), table.get("c")
    (['a', 'b'], None)
    >>> tables.park(); tables.apply()
    >>> tables.begin(0)
    >>> table.get("b"), len(table)
    ({'n': 2}, 2)
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._stores: dict[int, dict[str, Any]] = {}
        #: The partitions this process owns and has rebuilt (shared with its ``Tables``).
        self._ready: set[int] = set()
        self._partition: int | None = None
        #: Writes staged by the batch in hand, then by each attempt of its handler (innermost last).
        self._layers: list[dict[str, Any]] = []
        #: Per partition, the changes of a batch whose handler is done, until the poll's outputs are acknowledged.
        self._parked: dict[int, dict[str, Any]] = {}

    def get(self, key: str, default: Any = None) -> Any:
        for layer in reversed(self._layers):
            if key in layer:
                value = layer[key]
                return default if value is _DELETED else value
        if self._partition is not None:
            return self._stores.get(self._partition, {}).get(key, default)
        for partition, store in list(self._stores.items()):
            if partition in self._ready and key in store:
                return store[key]
        return default

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _DELETED)
        if value is _DELETED:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _DELETED) is not _DELETED

    def __setitem__(self, key: str, value: Any) -> None:
        self._staging()[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._staging()[key] = _DELETED

    def keys(self) -> list[str]:
        return [key for key, _ in self.items()]

    def items(self) -> Iterator[tuple[str, Any]]:
        """The entries of the batch's partition during a batch, else of every partition held here."""
        if self._partition is None:
            for partition, store in list(self._stores.items()):
                if partition in self._ready:
                    yield from list(store.items())
            return
        merged = dict(self._stores.get(self._partition, {}))
        for layer in self._layers:
            merged.update(layer)
        yield from ((key, value) for key, value in merged.items() if value is not _DELETED)

    def partition_items(self, partition: int) -> list[tuple[str, Any]]:
        """One partition's committed entries (what a recovery rebuilt)."""
        return list(self._stores.get(partition, {}).items())

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def _staging(self) -> dict[str, Any]:
        if self._partition is None or not self._layers:
            raise RuntimeError(f"table {self.name} is written outside a batch")
        return self._layers[-1]


class Tables:
    """The tables of one stateful stage: rebuilt where partitions are assigned, written once per batch.

    The ``ConsumerLoop`` drives it (``begin``, ``attempt``, ``park``,
    ``flush``, ``apply``, ``discard``, ``recover``, ``revoke``). A stage that keeps
    indexes or caches beside its tables gives ``reindex``: it is called with
    a partition whenever the partition's committed entries are the only
    truth left, after a recovery and after a batch of which a run failed
    (whatever that run changed in the indexes did not reach the tables).
    ``stage`` names the application the tables belong to: its changelogs are
    ``driftloop-<stage>-<table>-changelog``, the names faust gave them in
    earlier versions, so a stack upgraded in place keeps its state.
    """

    def __init__(
        self,
        settings: StreamSettings,
        stage: str,
        *tables: Table,
        reindex: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.tables = tables
        self.reindex = reindex
        #: Partitions a run of whose handler failed in the batch in hand: their indexes are rebuilt after it.
        self._failed: set[int] = set()
        #: Per table and partition, the next changelog offset not yet applied here.
        self._read_to: dict[tuple[str, int], int] = {}
        self._ready: set[int] = set()
        self._partition: int | None = None
        for table in tables:
            table._ready = self._ready

    @classmethod
    def detached(cls, *tables: Table) -> Tables:
        """Tables with no changelog, driven by hand: for pure tests of the staging."""
        return cls(StreamSettings(), "detached", *tables)

    def changelog(self, table: Table) -> str:
        """The changelog topic's name, without the prefix (``settings.group`` carries it)."""
        return f"{self.settings.group(self.stage)}-{table.name}-changelog".removeprefix(self.settings.topic_prefix)

    async def create_topics(self) -> None:
        await create_missing(
            self.settings.bootstrap,
            [
                NewTopic(
                    self.settings.topic(self.changelog(table)),
                    PARTITIONS,
                    self.settings.stream_replication_factor,
                    topic_configs={"cleanup.policy": "compact"},
                )
                for table in self.tables
            ],
        )

    # The batch's life, driven by the consumer loop: begin, attempt(s), park; then flush, apply (or discard).

    def ready(self, partition: int) -> bool:
        return partition in self._ready

    def begin(self, partition: int) -> None:
        self._partition = partition
        for table in self.tables:
            table._partition = partition
            table._layers = [{}]

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """One run of the handler: its writes join the batch's if it returns, and are dropped if it raises."""
        for table in self.tables:
            table._layers.append({})
        try:
            yield
        except BaseException:
            if self._partition is not None:
                self._failed.add(self._partition)
            for table in self.tables:
                table._layers.pop()
            raise
        for table in self.tables:
            top = table._layers.pop()
            table._layers[-1].update(top)

    def park(self) -> None:
        """The partition's handler is done: keep its changes aside until the poll's outputs are acknowledged."""
        partition = self._partition
        assert partition is not None
        for table in self.tables:
            table._parked[partition] = table._layers[0] if table._layers else {}
        self._close()

    def flush(self, bus: Bus) -> int:
        """Defer the parked changes to the enclosing ``bus.acknowledged()`` block; the number of changes."""
        changes = 0
        for table in self.tables:
            topic = self.changelog(table)
            for partition, staged in table._parked.items():
                encoded = ((key, None if value is _DELETED else orjson.dumps(value)) for key, value in staged.items())
                bus.defer(topic, [(key.encode(), value, [], partition) for key, value in encoded])
                changes += len(staged)
        return changes

    def apply(self) -> None:
        """The parked changes are on the broker: make them the tables' committed state."""
        partitions: set[int] = set()
        for table in self.tables:
            for partition, staged in table._parked.items():
                partitions.add(partition)
                store = table._stores.setdefault(partition, {})
                for key, value in staged.items():
                    if value is _DELETED:
                        store.pop(key, None)
                    else:
                        store[key] = value
            table._parked = {}
        self._reindex(partitions & self._failed)

    def discard(self) -> None:
        """The partition's batch failed: its changes go; it will be read again."""
        partition = self._partition
        if partition is not None:
            self._close()
            self._reindex({partition})

    def discard_all(self) -> None:
        """The poll's outputs failed: every change of it goes, the batch in hand and the parked ones."""
        partitions = {p for table in self.tables for p in table._parked}
        if self._partition is not None:
            partitions.add(self._partition)
            self._close()
        for table in self.tables:
            table._parked = {}
        self._reindex(partitions)

    def _close(self) -> None:
        self._partition = None
        for table in self.tables:
            table._partition = None
            table._layers = []

    def _reindex(self, partitions: set[int]) -> None:
        self._failed -= partitions
        if self.reindex is not None:
            for partition in sorted(partitions):
                self.reindex(partition)

    # Assignment.

    async def revoke(self, partitions: set[int]) -> None:
        """Another replica may write these partitions now: not ready until caught up again, from where they end.

        Their entries stay in memory, so a partition that comes back reads
        only what its other owners wrote meanwhile. Everything before the
        changelog's end now was written by this process and is applied here;
        where the end cannot be asked for, the next recovery reads from the
        last one's position, which only repeats changes.
        """
        self._ready.difference_update(partitions)
        if not partitions:
            return
        targets = {
            TopicPartition(self.settings.topic(self.changelog(table)), partition): (table.name, partition)
            for table in self.tables
            for partition in partitions
        }
        reader = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap, enable_auto_commit=False)
        try:
            await reader.start()
            ends = await reader.end_offsets(list(targets))
        except Exception as exc:
            log.warning("changelog ends unknown at revocation", stage=self.stage, error=repr(exc))
            return
        finally:
            await reader.stop()
        for tp, key in targets.items():
            self._read_to[key] = max(self._read_to.get(key, 0), ends[tp])

    async def recover(self, partitions: set[int]) -> None:
        """Read each table's changelog partitions from where this process last stood to their end."""
        targets = {
            (table.name, partition): TopicPartition(self.settings.topic(self.changelog(table)), partition)
            for table in self.tables
            for partition in partitions
        }
        by_tp = {tp: key for key, tp in targets.items()}
        tables = {table.name: table for table in self.tables}
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="none",
            client_id=f"driftloop-{self.settings.service}-recovery",
        )
        await reader.start()
        try:
            tps = list(by_tp)
            reader.assign(tps)
            for tp, key in by_tp.items():
                reader.seek(tp, self._read_to.get(key, 0))
            ends = await reader.end_offsets(tps)
            left = set(tps)
            read = 0
            while left:
                try:
                    fetched = await reader.getmany(*left, timeout_ms=200, max_records=20_000)
                except OffsetOutOfRangeError:
                    # A changelog shorter than where this process stood (the topic was recreated): read it all.
                    for tp in left:
                        name, partition = by_tp[tp]
                        tables[name]._stores.pop(partition, None)
                        reader.seek(tp, 0)
                    continue
                for tp, records in fetched.items():
                    store = tables[by_tp[tp][0]]._stores.setdefault(tp.partition, {})
                    for record in records:
                        entry = (record.key or b"").decode()
                        if record.value is None:
                            store.pop(entry, None)
                        else:
                            store[entry] = orjson.loads(record.value)
                    read += len(records)
                for tp in list(left):
                    position = await reader.position(tp)
                    # Tansu 0.6 reports the end offset of a partition as its last batch's first offset + 1, while
                    # fetches carry the true high watermark: done once both are reached.
                    highwater = reader.highwater(tp)
                    if position >= ends[tp] and (highwater is None or position >= highwater):
                        self._read_to[by_tp[tp]] = position
                        left.discard(tp)
        finally:
            await reader.stop()
        for partition in partitions:
            if self.reindex is not None:
                self.reindex(partition)
            self._ready.add(partition)
        log.info("tables recovered", stage=self.stage, partitions=sorted(partitions), changes_read=read)


async def create_internal(settings: StreamSettings, *names: str) -> None:
    """A stage's own topics between its stages, partitioned like the data topics (before anything sends)."""
    await create_missing(
        settings.bootstrap,
        [NewTopic(settings.topic(name), PARTITIONS, settings.stream_replication_factor) for name in names],
    )
