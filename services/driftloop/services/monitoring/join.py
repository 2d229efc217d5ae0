"""The prediction-label join, one event id at a time, and the expiry that bounds it.

Predictions and labels of one event meet in one entry, keyed by the event id;
the entry lives in a changelog-backed table, so it is one record there and is
written whole. Every record handled changes only its own event's entry, which
is what makes a replay after a crash safe: a record whose effect reached the
changelog finds its entry already updated and does nothing again.

>>> entry, outcomes = join(None, PredictionRecord("e1", "m", 1, 1, None, 10.0), 0)
>>> outcomes, entry.waiting
([], {'m:1': [1, 10.0]})
>>> entry, outcomes = join(entry, LabelRecord("e1", 0, 12.0), 0)
>>> [(o.model, o.version, o.correct) for o in outcomes], entry.waiting, entry.done
([('m', 1, False)], {}, ['m:1'])
>>> join(entry, PredictionRecord("e1", "m", 1, 1, None, 10.0), 0)[1]
[]
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from driftloop.bus.partitioner import partitions_for
from driftloop.contracts.events import LabelValue


@dataclass(frozen=True)
class PredictionRecord:
    event_id: str
    model: str
    version: int
    prediction: LabelValue
    #: The label when the scored event carried one; the prediction is then scored at once.
    label: LabelValue | None
    event_time: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": "p",
            "e": self.event_id,
            "m": self.model,
            "v": self.version,
            "y": self.prediction,
            "l": self.label,
            "t": self.event_time,
        }


@dataclass(frozen=True)
class LabelRecord:
    event_id: str
    label: LabelValue
    #: When the label became known (its ``label_time``, else the record's timestamp).
    label_time: float

    def to_dict(self) -> dict[str, Any]:
        return {"k": "l", "e": self.event_id, "l": self.label, "t": self.label_time}


JoinRecord = PredictionRecord | LabelRecord


def record_from_dict(data: dict[str, Any]) -> JoinRecord:
    if data["k"] == "p":
        return PredictionRecord(data["e"], data["m"], int(data["v"]), data["y"], data["l"], float(data["t"]))
    return LabelRecord(data["e"], data["l"], float(data["t"]))


#: Join records (or outcomes) per record of monitoring's internal topics: a batch's travel together, a few
#: hundred at a time, so a record stays far below any broker's size limit (about 100 bytes each).
PER_MESSAGE = 500


def chunked(items: Sequence[dict[str, Any]]) -> list[bytes]:
    """Items as JSON arrays of at most ``PER_MESSAGE``: the values of the records that carry them."""
    return [orjson.dumps(items[start : start + PER_MESSAGE]) for start in range(0, len(items), PER_MESSAGE)]


def join_messages(records: Sequence[JoinRecord], partitions: int) -> list[tuple[int, bytes]]:
    """Join records as the fewest records of the join topic: each partition's, in order, as JSON arrays.

    A record goes to the partition a record keyed by its event id would go
    to (Kafka's default partitioner), so an event's records meet there
    whichever form, one or many to a record, each was sent in.

    >>> [(p, orjson.loads(v)) for p, v in join_messages([LabelRecord("e1", 1, 5.0)], 1)]
    [(0, [{'k': 'l', 'e': 'e1', 'l': 1, 't': 5.0}])]
    """
    by_partition: dict[int, list[dict[str, Any]]] = {}
    chosen = partitions_for([record.event_id.encode() for record in records], partitions)
    for record, partition in zip(records, chosen, strict=True):
        by_partition.setdefault(partition, []).append(record.to_dict())
    return [(partition, value) for partition, items in by_partition.items() for value in chunked(items)]


def join_records(value: bytes) -> list[JoinRecord]:
    """The join records one record of the join topic carries: an array of them, or one (as earlier versions
    sent them). Raises ``ValueError`` (or ``KeyError``, ``TypeError``) for anything else; then none is used.

    >>> label = b'{"k": "l", "e": "e1", "l": 1, "t": 5.0}'
    >>> join_records(b"[" + label + b"]") == join_records(label) == [LabelRecord("e1", 1, 5.0)]
    True
    """
    data = orjson.loads(value)
    return [record_from_dict(item) for item in data] if isinstance(data, list) else [record_from_dict(data)]


@dataclass(frozen=True)
class Outcome:
    """A prediction met its label. ``source`` names it by the join record that completed it: partition,
    offset, and its place among that record's outcomes."""

    model: str
    version: int
    correct: bool
    event_time: float
    event_id: str
    source: tuple[int, int, int] = (0, -1, 0)

    def to_dict(self, source: tuple[int, int, int] | None = None) -> dict[str, Any]:
        """As JSON, named by ``source`` when given (the record that completed it), else by its own."""
        partition, offset, place = source or self.source
        return {
            "m": self.model,
            "v": self.version,
            "c": self.correct,
            "t": self.event_time,
            "e": self.event_id,
            "p": partition,
            "o": offset,
            "i": place,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            data["m"], int(data["v"]), bool(data["c"]), float(data["t"]), data["e"], (data["p"], data["o"], data["i"])
        )


def outcome_dicts(value: bytes) -> list[dict[str, Any]]:
    """The outcomes one record of the outcomes topic carries, as JSON objects: an array of them, or one as
    earlier versions sent them; none for the control records riding the same topic (they have a ``k``).

    >>> outcome_dicts(b'[{"m": "m", "e": "e1"}, {"m": "m", "e": "e2"}]'), outcome_dicts(b'{"k": "champion"}')
    ([{'m': 'm', 'e': 'e1'}, {'m': 'm', 'e': 'e2'}], [])
    """
    data = orjson.loads(value)
    if isinstance(data, list):
        return data
    return [] if "k" in data else [data]


@dataclass
class JoinEntry:
    """What one event id has seen: its label, the predictions waiting for it, the ones already scored.

    ``at`` is the event time the entry was first written at and ``partition``
    where it lives; expiry needs both after a recovery. A prediction is known
    by ``model:version``: each version scores an event at most once, and the
    first prediction (like the first label) wins over duplicates.
    """

    at: float
    partition: int
    has_label: bool = False
    label: LabelValue | None = None
    waiting: dict[str, list[Any]] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    #: The join-topic offset at which the entry was first settled (see ``settle``).
    settled_at: int | None = None

    @property
    def settled(self) -> bool:
        """Labelled, something scored and nothing waiting: the entry only guards against duplicates now."""
        return self.has_label and bool(self.done) and not self.waiting

    def settle(self, offset: int) -> bool:
        """Stamp the entry with the offset that first settled it; True only that first time."""
        if self.settled_at is not None or not self.settled:
            return False
        self.settled_at = offset
        return True

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"at": self.at, "p": self.partition, "done": self.done}
        if self.waiting:
            data["waiting"] = self.waiting
        if self.has_label:
            data["label"] = self.label
        if self.settled_at is not None:
            data["s"] = self.settled_at
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JoinEntry:
        return cls(
            at=data["at"],
            partition=data["p"],
            has_label="label" in data,
            label=data.get("label"),
            waiting=dict(data.get("waiting", {})),
            done=list(data.get("done", [])),
            settled_at=data.get("s"),
        )


def join(entry: JoinEntry | None, record: JoinRecord, partition: int) -> tuple[JoinEntry, list[Outcome]]:
    """Fold one record into its event's entry; the outcomes it completes come back in a stable order.

    A prediction that carries its event's label labels the event as a label
    record would, for the predictions of other models waiting there too.
    """
    at = record.event_time if isinstance(record, PredictionRecord) else record.label_time
    entry = entry or JoinEntry(at=at, partition=partition)
    outcomes = _labelled(entry, record.label, record.event_id) if record.label is not None else []
    if isinstance(record, LabelRecord):
        return entry, outcomes
    key = f"{record.model}:{record.version}"
    if key in entry.done or key in entry.waiting:
        return entry, outcomes
    if not entry.has_label:
        entry.waiting[key] = [record.prediction, record.event_time]
        return entry, outcomes
    entry.done.append(key)
    correct = record.prediction == entry.label
    return entry, [*outcomes, Outcome(record.model, record.version, correct, record.event_time, record.event_id)]


def _labelled(entry: JoinEntry, label: LabelValue, event_id: str) -> list[Outcome]:
    """The first label an event gets is its label; it scores every prediction waiting for it."""
    if entry.has_label:
        return []
    entry.has_label, entry.label = True, label
    outcomes = []
    for key, (prediction, event_time) in sorted(entry.waiting.items()):
        model, _, version = key.rpartition(":")
        outcomes.append(Outcome(model, int(version), prediction == label, event_time, event_id))
        entry.done.append(key)
    entry.waiting = {}
    return outcomes


def expired(index: list[tuple[float, str]], watermark: float) -> list[str]:
    """Pop from the heap ``index`` of (event time, key) every key stamped before ``watermark``, oldest first.

    >>> index = [(10.0, "a"), (30.0, "c"), (20.0, "b")]
    >>> heapq.heapify(index)
    >>> expired(index, 25.0), index
    (['a', 'b'], [(30.0, 'c')])
    """
    keys = []
    while index and index[0][0] < watermark:
        keys.append(heapq.heappop(index)[1])
    return keys


@dataclass
class JoinExpiry:
    """Which join entries of one partition a label can no longer reach.

    A prediction waits for its label at most ``horizon`` of event time: once
    the partition has seen an event ``horizon`` later than it, the entry is
    dropped, whether it still waits (no label will come: a REST call without
    one, a producer that never sends it), holds a label that no prediction
    claimed, or only marks the event as scored. Event time rather than the
    clock, so a replay or a backlog expires exactly what live traffic would;
    the state then holds at most the entries of one horizon per partition.

    >>> expiry = JoinExpiry(horizon=60.0)
    >>> expiry.track("e1", 0.0); expiry.track("e2", 30.0); expiry.track("e1", 50.0)
    >>> expiry.advance(61.0), expiry.advance(10.0), expiry.advance(95.0), len(expiry)
    (['e1'], [], ['e2'], 0)
    """

    horizon: float
    latest: float | None = None
    _index: list[tuple[float, str]] = field(default_factory=list)
    _tracked: set[str] = field(default_factory=set)

    def track(self, key: str, at: float) -> None:
        """Stamp ``key`` with the event time it was first written at; rewrites keep the first stamp."""
        if key not in self._tracked:
            self._tracked.add(key)
            heapq.heappush(self._index, (at, key))

    def advance(self, at: float) -> list[str]:
        """Move the partition's stream time to ``at`` (it never goes back) and return the keys that expired."""
        self.latest = at if self.latest is None else max(self.latest, at)
        keys = [key for key in expired(self._index, self.latest - self.horizon) if key in self._tracked]
        self._tracked.difference_update(keys)
        return keys

    def forget(self, key: str) -> None:
        """Stop tracking ``key`` (its entry went early); the index sheds forgotten keys once they are half of it.

        >>> expiry = JoinExpiry(horizon=60.0)
        >>> for k in "abc": expiry.track(k, 0.0)
        >>> expiry.forget("a"); expiry.forget("b"); len(expiry), len(expiry._index), expiry.advance(100.0)
        (1, 1, ['c'])
        """
        self._tracked.discard(key)
        if len(self._index) > 2 * len(self._tracked):
            self._index = [item for item in self._index if item[1] in self._tracked]
            heapq.heapify(self._index)

    def __len__(self) -> int:
        return len(self._tracked)


@dataclass
class SettledMarks:
    """The settled entries of one partition, oldest first, of which only the newest ``keep`` stay.

    A settled entry exists only to recognise duplicates: a prediction or label
    sent again, or routing repeating a batch after a crash, which would
    otherwise score an event twice. Those repeats come within a batch or two
    of the original, so the entry need not wait out the label horizon; kept
    for the horizon, settled entries were nearly all of the join's memory
    (an hour of traffic). Counting by entries rather than by time bounds the
    memory whatever the event rate.

    >>> marks = SettledMarks(keep=2)
    >>> marks.mark("a", 10); marks.mark("b", 11); marks.mark("c", 12)
    >>> marks.overflow(), len(marks)
    (['a'], 2)
    """

    keep: int
    _order: deque[tuple[int, str]] = field(default_factory=deque)

    def mark(self, key: str, offset: int) -> None:
        self._order.append((offset, key))

    def overflow(self) -> list[str]:
        """Forget and return the oldest marks beyond ``keep``: their entries may go, if still settled."""
        gone = []
        while len(self._order) > self.keep:
            gone.append(self._order.popleft()[1])
        return gone

    @classmethod
    def rebuilt(cls, keep: int, entries: list[tuple[str, JoinEntry]]) -> SettledMarks:
        """The marks of a partition's recovered entries, in the order they were settled."""
        marks = cls(keep)
        for offset, key in sorted((e.settled_at, k) for k, e in entries if e.settled_at is not None and e.settled):
            marks.mark(key, offset)
        return marks

    def __len__(self) -> int:
        return len(self._order)
