"""Reading the dead-letter topic back, choosing letters, and re-publishing what they hold.

A dead letter keeps the record's payload, key and headers, so once its cause
is fixed (a model registered, a schema relaxed, a bug deployed away) the
record can go back to its source topic as it was. Consumers dedupe by event
id, so replaying a letter whose record was handled after all does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from driftloop.bus.consumer import as_record, still_behind
from driftloop.bus.metadata import topic_partitions
from driftloop.bus.producer import Bus
from driftloop.contracts import DeadLetter
from driftloop.logging import get_logger
from driftloop.settings import DriftloopSettings

log = get_logger(__name__)


@dataclass(frozen=True)
class LetterFilter:
    """Which letters an operator means: all given conditions hold (None: no condition)."""

    topic: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __call__(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` is one of them: its source topic, a reason containing the text, its time in range.

        >>> from datetime import UTC
        >>> letter = DeadLetter(source_topic="labels", payload="{}", reason="label: out of range", stage="s",
        ...                     occurred_at=datetime(2026, 11, 22, 10, tzinfo=UTC))
        >>> LetterFilter(topic="labels", reason="OUT OF", since=datetime(2026, 11, 22, tzinfo=UTC))(letter)
        True
        >>> LetterFilter(until=datetime(2026, 11, 22, 9, tzinfo=UTC))(letter), LetterFilter(topic="events.raw")(letter)
        (False, False)
        """
        return (
            (self.topic is None or letter.source_topic == self.topic)
            and (self.reason is None or self.reason.casefold() in letter.reason.casefold())
            and (self.since is None or letter.occurred_at >= self.since)
            and (self.until is None or letter.occurred_at < self.until)
        )


def replayable(letter: DeadLetter) -> bool:
    """A letter holding only the head of an oversized record cannot give the record back."""
    return not letter.payload_truncated


async def read_letters(settings: DriftloopSettings, wanted: LetterFilter, timeout: float = 30.0) -> list[DeadLetter]:
    """Every letter on the dead-letter topic up to its current end that ``wanted`` chooses, oldest first per partition.

    Read without a group: listing commits nothing and moves no one's offsets.
    """
    topic = settings.topic("events.deadletter")
    tps = await topic_partitions(settings.bootstrap, [topic], timeout)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        behind = still_behind(await consumer.end_offsets(tps), {})
        while behind:
            for messages in (await consumer.getmany(*behind, timeout_ms=500)).values():
                for message in messages:
                    record = as_record(message, settings.topic_prefix)
                    try:
                        letter = DeadLetter.model_validate_json(record.value)
                    except ValidationError:
                        log.warning("not a dead letter", partition=record.partition, offset=record.offset)
                        continue
                    if wanted(letter):
                        letters.append(letter)
            behind = still_behind(behind, {tp: await consumer.position(tp) for tp in behind})
    finally:
        await consumer.stop()
    return letters


async def replay_letters(bus: Bus, letters: list[DeadLetter]) -> int:
    """Re-publish each replayable letter's record to its source topic with its key and headers; how many were."""
    replayable_ones = [letter for letter in letters if replayable(letter)]
    async with bus.acknowledged():
        for letter in replayable_ones:
            headers = [(name, value.encode()) for name, value in letter.headers.items()]
            await bus.send(letter.source_topic, letter.payload.encode(), letter.key, headers, wait=False)
    return len(replayable_ones)
