"""The REST scoring path: where a batch is scored, how concurrent requests share a model call, how predictions leave.

A request's time goes to three places: the model call, the event loop's own
work (parsing, building the predictions), and waiting for the broker. The
model call is made once per batch (``Scorer``); the broker wait is taken off
the response unless ``prediction_acks=wait`` asks for it; and concurrent
requests may share one model call, since a tree ensemble scores eight rows
in about the time it scores one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from driftloop.bus import Bus, Outgoing
from driftloop.contracts import Prediction, topic_for
from driftloop.contracts.events import Features, LabelValue
from driftloop.logging import get_logger
from driftloop.services.deployment.domain import Served
from driftloop.services.deployment.metrics import BATCH_ROWS, PUBLISH_FAILURES, QUEUED

log = get_logger(__name__)

Scores = tuple[list[LabelValue], list[float | None]]
_TOPIC = topic_for(Prediction)


class PublishFailed(Exception):
    """The broker did not take every prediction of a request."""


@dataclass
class _Publication:
    model_name: str
    #: Encoded ``Prediction`` records (``Bus.encode_many``).
    records: list[Outgoing]
    #: Resolved once the broker has them, for a caller that waits (``prediction_acks=wait``).
    acknowledged: asyncio.Future[None] | None


class PredictionLog:
    """Publishes REST predictions to ``predictions`` from one sender task, up to ``chunk`` records at a time.

    A chunk's records are encoded by the caller (``Bus.encode_many``) and
    handed to the producer as whole batches (``Bus.publish_batch``), with one
    callback per chunk to settle them: no coroutine or future per record. A
    backlog of thousands of concurrent sends (eight connections of 100-row
    requests) spent the loop waking itself, about ten times the cost per
    record of sending in chunks. The sender does not wait for a chunk's
    acknowledgement before it hands over the next: waiting for the broker
    a chunk at a time bounded the whole endpoint by the broker's round trip.

    With ``async`` acks ``record`` returns once the predictions are queued; a
    failure is logged and counted in ``driftloop_prediction_publish_failures_total``.
    With ``wait`` it returns once the broker has them, and raises
    ``PublishFailed`` otherwise. At most ``max_queued`` records are queued or
    unacknowledged: past that, ``record`` waits for room, so a broker that
    falls behind slows responses instead of growing memory. ``stop`` sends
    what is queued before it returns.
    """

    def __init__(self, bus: Bus, acks: Literal["wait", "async"], chunk: int = 1024, max_queued: int = 20_000) -> None:
        self.bus = bus
        self.acks = acks
        self.chunk = chunk
        self.max_queued = max_queued
        self._queue: deque[_Publication] = deque()
        #: Records recorded and not yet settled (acknowledged or failed).
        self._queued = 0
        self._work = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sender: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sender = asyncio.create_task(self._run(), name="prediction-sender")

    async def stop(self) -> None:
        await self.drain()
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until everything recorded so far has been sent (acknowledged or failed)."""
        await self._idle.wait()

    async def record(self, model_name: str, records: list[Outgoing]) -> None:
        while self._queued >= self.max_queued:
            self._room.clear()
            await self._room.wait()
        acknowledged = asyncio.get_running_loop().create_future() if self.acks == "wait" else None
        self._queue.append(_Publication(model_name, records, acknowledged))
        self._queued += len(records)
        QUEUED.set(self._queued)
        self._idle.clear()
        self._work.set()
        if acknowledged is not None:
            await acknowledged

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._work.clear()
                await self._work.wait()
                continue
            batch = [self._queue.popleft()]
            size = len(batch[0].records)
            while self._queue and size + len(self._queue[0].records) <= self.chunk:
                size += len(self._queue[0].records)
                batch.append(self._queue.popleft())
            records = [r for publication in batch for r in publication.records]
            try:
                futures = await self.bus.publish_batch(_TOPIC, records)
            except Exception as exc:
                self._settle_chunk(batch, [exc] * len(records))
                continue
            distinct = list(dict.fromkeys(futures))
            acknowledged = asyncio.gather(*distinct, return_exceptions=True)
            acknowledged.add_done_callback(partial(self._acknowledged, batch, futures, distinct))

    def _acknowledged(
        self,
        batch: list[_Publication],
        futures: list[asyncio.Future[object]],
        distinct: list[asyncio.Future[object]],
        gathered: asyncio.Future[list[object]],
    ) -> None:
        if gathered.cancelled():
            self._settle_chunk(batch, [asyncio.CancelledError()] * len(futures))
            return
        outcomes = dict(zip(distinct, gathered.result(), strict=True))
        self._settle_chunk(batch, [outcomes[future] for future in futures])

    def _settle_chunk(self, batch: list[_Publication], results: list[object]) -> None:
        self._queued -= len(results)
        QUEUED.set(self._queued)
        self._room.set()
        if not self._queued:
            self._idle.set()
        start = 0
        for publication in batch:
            end = start + len(publication.records)
            self._settle(publication, [r for r in results[start:end] if isinstance(r, BaseException)])
            start = end

    def _settle(self, publication: _Publication, failures: list[BaseException]) -> None:
        done = publication.acknowledged
        if failures:
            total = len(publication.records)
            PUBLISH_FAILURES.labels(publication.model_name).inc(len(failures))
            error = PublishFailed(f"{len(failures)} of {total} predictions not published: {failures[0]!r}")
            if done is None:
                log.error("predictions not published", error=str(error))
            elif not done.done():
                done.set_exception(error)
        elif done is not None and not done.done():
            done.set_result(None)


@dataclass
class Scoring:
    """Scores in place below ``thread_rows`` rows and in a worker thread from there on."""

    thread_rows: int

    async def __call__(self, served: Served, rows: Sequence[Features]) -> Scores:
        BATCH_ROWS.observe(len(rows))
        if len(rows) >= self.thread_rows:
            return await asyncio.to_thread(served.artifact.predict, rows)
        return served.artifact.predict(rows)


@dataclass
class _Request:
    served: Served
    rows: Sequence[Features]
    result: asyncio.Future[Scores]


@dataclass
class MicroBatcher:
    """Scores the requests that queued while the previous model call ran, together, up to ``max_rows`` rows.

    Requests for different versions (a hot swap in between) are scored by
    their own version: a batch is split by the ``Served`` each request
    resolved, so no response reports a version that did not score it.
    """

    score: Scoring
    max_rows: int
    max_wait: float
    _queue: asyncio.Queue[_Request] = field(default_factory=asyncio.Queue)

    async def __call__(self, served: Served, rows: Sequence[Features]) -> Scores:
        result: asyncio.Future[Scores] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(served, rows, result))
        return await result

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size, deadline = len(batch[0].rows), loop.time() + self.max_wait
            while size < self.max_rows:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        request = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    request = self._queue.get_nowait()
                batch.append(request)
                size += len(request.rows)
            await self._score(batch)

    async def _score(self, batch: list[_Request]) -> None:
        by_version: dict[int, list[_Request]] = {}
        for request in batch:
            by_version.setdefault(id(request.served), []).append(request)
        for requests in by_version.values():
            rows = [row for request in requests for row in request.rows]
            try:
                labels, probabilities = await self.score(requests[0].served, rows)
            except Exception:
                # One request the model rejects must not fail the others it was batched with.
                await self._score_alone(requests)
                continue
            start = 0
            for request in requests:
                end = start + len(request.rows)
                if not request.result.done():
                    request.result.set_result((labels[start:end], probabilities[start:end]))
                start = end

    async def _score_alone(self, requests: list[_Request]) -> None:
        for request in requests:
            try:
                scores = await self.score(request.served, request.rows)
            except Exception as exc:
                if not request.result.done():
                    request.result.set_exception(exc)
            else:
                if not request.result.done():
                    request.result.set_result(scores)


@dataclass
class Serving:
    """What a REST prediction goes through, as the settings chose it."""

    score: Scoring | MicroBatcher
    log: PredictionLog
    #: Work a response does not wait for (a shadow's scoring), held here until it ends.
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    @classmethod
    def configure(
        cls, bus: Bus, acks: Literal["wait", "async"], thread_rows: int, batch_rows: int, batch_wait_ms: float
    ) -> Serving:
        scoring = Scoring(thread_rows)
        score: Scoring | MicroBatcher = scoring
        if batch_rows > 1:
            score = MicroBatcher(scoring, batch_rows, batch_wait_ms / 1000)
        return cls(score, PredictionLog(bus, acks))
